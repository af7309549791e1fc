//! What a request asks to do, in authorization terms: upstream's
//! `RequestInfo` (verb, API group, resource, subresource, namespace, name)
//! for resource paths, the path and a lowercase HTTP verb for the rest.

use std::collections::HashMap;

use hyper::Method;

/// The attributes an authorizer decides on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, or a lowercase HTTP method for non-resource paths;
    /// also `impersonate`, `bind`, `escalate` for the checks that ask for them.
    pub verb: String,
    /// Whether the path names an API resource (`/api/v1/...`, `/apis/g/v/...`).
    pub resource_request: bool,
    /// API group (empty for core).
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Plural resource name.
    pub resource: String,
    /// Subresource (`status`, `log`, `token`, ...).
    pub subresource: String,
    /// Namespace, empty at the cluster scope.
    pub namespace: String,
    /// Object name, empty for collections.
    pub name: String,
    /// The path of a non-resource request.
    pub path: String,
}

impl Attributes {
    /// A resource request.
    pub fn resource(
        verb: &str,
        api_group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        Self {
            verb: verb.to_owned(),
            resource_request: true,
            api_group: api_group.to_owned(),
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// A non-resource request.
    pub fn non_resource(verb: &str, path: &str) -> Self {
        Self {
            verb: verb.to_owned(),
            path: path.to_owned(),
            ..Self::default()
        }
    }

    /// With a subresource.
    pub fn with_subresource(mut self, sub: &str) -> Self {
        self.subresource = sub.to_owned();
        self
    }

    /// `resource` or `resource/subresource`, as RBAC rules name it.
    pub fn combined_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// Subresources of a namespace that are not resources in their own right.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Subresources whose every request (including a websocket upgrade over
/// GET) needs `create`, as upstream checks since 1.31.
const CREATE_ONLY_STREAMS: &[&str] = &["exec", "attach", "portforward"];

/// Parse a request as upstream's `RequestInfoFactory` does. `path` is the
/// percent-decoded path without a trailing `/`.
pub fn from_request(method: &Method, path: &str, query: &HashMap<String, String>) -> Attributes {
    let http_verb = method.as_str().to_ascii_lowercase();
    let non_resource = || Attributes::non_resource(&http_verb, path);
    let segs: Vec<String> = crate::state::path_segments(path);
    let segs: Vec<&str> = segs
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, mut parts) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return non_resource(),
    };
    let mut verb = match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => return non_resource(),
    }
    .to_owned();
    if parts.first() == Some(&"watch") {
        verb = "watch".to_owned();
        parts = &parts[1..];
    }
    let mut namespace = String::new();
    if parts.first() == Some(&"namespaces")
        && let Some(ns) = parts.get(1)
    {
        namespace = (*ns).to_owned();
        if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
            parts = &parts[2..];
        }
    }
    let resource = parts.first().copied().unwrap_or_default();
    let mut name = parts.get(1).copied().unwrap_or_default().to_owned();
    let subresource = parts.get(2).copied().unwrap_or_default();
    if name.is_empty() {
        match verb.as_str() {
            "get" => verb = "list".to_owned(),
            "delete" => verb = "deletecollection".to_owned(),
            _ => {}
        }
    }
    let watch_param = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if watch_param && (verb == "get" || verb == "list") {
        verb = "watch".to_owned();
    }
    // A list or watch of one object by field selector is a read of that
    // name (the agent watches its own Node that way).
    if (verb == "list" || verb == "watch")
        && name.is_empty()
        && let Some(n) = query.get("fieldSelector").and_then(|sel| {
            sel.split(',')
                .find_map(|t| t.trim().strip_prefix("metadata.name="))
        })
    {
        name = n.to_owned();
    }
    if CREATE_ONLY_STREAMS.contains(&subresource) && resource == "pods" {
        verb = "create".to_owned();
    }
    Attributes {
        verb,
        resource_request: true,
        api_group: group.to_owned(),
        api_version: version.to_owned(),
        resource: resource.to_owned(),
        subresource: subresource.to_owned(),
        namespace,
        name,
        path: path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, path: &str, query: &[(&str, &str)]) -> Attributes {
        let q = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        from_request(&method, path, &q)
    }

    #[test]
    fn resource_paths() {
        let a = parse(Method::GET, "/api/v1/namespaces/default/pods", &[]);
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.namespace.as_str()),
            ("list", "pods", "default")
        );
        let a = parse(Method::GET, "/api/v1/pods", &[("watch", "true")]);
        assert_eq!((a.verb.as_str(), a.namespace.as_str()), ("watch", ""));
        let a = parse(
            Method::GET,
            "/apis/apps/v1/watch/namespaces/x/deployments/d",
            &[],
        );
        assert_eq!(
            (a.verb.as_str(), a.api_group.as_str(), a.name.as_str()),
            ("watch", "apps", "d")
        );
        let a = parse(Method::PUT, "/api/v1/namespaces/x/pods/p/status", &[]);
        assert_eq!(
            (a.verb.as_str(), a.combined_resource().as_str()),
            ("update", "pods/status")
        );
        let a = parse(Method::DELETE, "/api/v1/namespaces/x/pods", &[]);
        assert_eq!(a.verb, "deletecollection");
        let a = parse(Method::GET, "/api/v1/namespaces/x/pods/p/exec", &[]);
        assert_eq!(a.verb, "create");
        let a = parse(
            Method::POST,
            "/api/v1/namespaces/x/serviceaccounts/default/token",
            &[],
        );
        assert_eq!(
            (
                a.verb.as_str(),
                a.combined_resource().as_str(),
                a.name.as_str()
            ),
            ("create", "serviceaccounts/token", "default")
        );
    }

    #[test]
    fn namespaces_are_their_own_namespace() {
        let a = parse(Method::GET, "/api/v1/namespaces/kube-system", &[]);
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.namespace.as_str()),
            ("namespaces", "kube-system", "kube-system")
        );
        let a = parse(Method::PUT, "/api/v1/namespaces/n/finalize", &[]);
        assert_eq!(
            (a.combined_resource().as_str(), a.name.as_str()),
            ("namespaces/finalize", "n")
        );
        let a = parse(Method::GET, "/api/v1/namespaces", &[]);
        assert_eq!((a.verb.as_str(), a.namespace.as_str()), ("list", ""));
    }

    #[test]
    fn field_selector_names_the_object() {
        let a = parse(
            Method::GET,
            "/api/v1/nodes",
            &[("watch", "1"), ("fieldSelector", "metadata.name=node-1")],
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", "node-1"));
    }

    #[test]
    fn non_resource_paths() {
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/healthz",
            "/openapi/v2",
        ] {
            let a = parse(Method::GET, p, &[]);
            assert!(!a.resource_request, "{p}");
            assert_eq!((a.verb.as_str(), a.path.as_str()), ("get", p));
        }
        let a = parse(Method::POST, "/kestrel/v1/node-join", &[]);
        assert_eq!(a.verb, "post");
    }
}
