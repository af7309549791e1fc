//! What a node may do: upstream's Node authorizer and NodeRestriction
//! admission plugin, for users `system:node:NAME` in group `system:nodes`.
//!
//! - Secrets, ConfigMaps and ServiceAccount tokens are readable only
//!   through a pod bound to the node that references them (the graph
//!   below, kept from the watch cache's pods).
//! - Everything else a node agent needs is a fixed rule set ([`node_rules`]),
//!   upstream's `system:node` rules plus what Kestrel's agent does that
//!   kube-proxy, a CNI plugin and a local-path provisioner do upstream
//!   (Services, EndpointSlices, Namespaces and NetworkPolicies, read-only;
//!   PersistentVolumeClaims and StorageClasses read, PersistentVolumes read,
//!   created and deleted). Claims are therefore not limited to the node's
//!   pods as upstream's: every agent's provisioner watches them all.
//! - NodeRestriction narrows the writes: a node changes only its own Node and
//!   Lease, and only the pods bound to it.

use std::collections::HashMap;

use k8s_openapi::api::rbac::v1::PolicyRule;
use kestrel_api::ApiError;
use serde_json::Value;

use super::request::Attributes;
use crate::auth::User;

/// Group of node credentials.
pub const NODES_GROUP: &str = "system:nodes";
const NODE_PREFIX: &str = "system:node:";
const PODS_PREFIX: &str = "/registry/core/pods/";

/// The node a user speaks for, if it is a node credential.
pub fn node_name(user: &User) -> Option<&str> {
    let n = user.name.strip_prefix(NODE_PREFIX)?;
    (user.in_group(NODES_GROUP) && !n.is_empty()).then_some(n)
}

/// Kinds of object a pod can give its node access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RefKind {
    Secret,
    ConfigMap,
    ServiceAccount,
}

type Ref = (RefKind, String, String);

/// Which node may read what, through which pods.
#[derive(Debug, Default)]
pub struct NodeGraph {
    /// pod key → (node, references).
    pods: HashMap<String, (String, Vec<Ref>)>,
    /// node → reference → how many of its pods hold it.
    by_node: HashMap<String, HashMap<Ref, usize>>,
}

/// Whether a key is one the graph keeps.
pub fn is_pod_key(key: &str) -> bool {
    key.starts_with(PODS_PREFIX)
}

fn names<'a>(v: &'a Value, ptrs: &[&str]) -> impl Iterator<Item = &'a str> {
    ptrs.iter()
        .filter_map(|p| v.pointer(p).and_then(Value::as_str))
        .collect::<Vec<_>>()
        .into_iter()
}

/// Everything a pod spec references by name, as upstream's graph populator
/// reads it: volumes (direct and projected), env and envFrom of every
/// container kind, image pull secrets and the ServiceAccount.
fn references(ns: &str, spec: &Value) -> Vec<Ref> {
    let mut out: Vec<Ref> = Vec::new();
    let mut add = |k: RefKind, n: &str| {
        if !n.is_empty() {
            let r = (k, ns.to_owned(), n.to_owned());
            if !out.contains(&r) {
                out.push(r);
            }
        }
    };
    let arr = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for s in arr(spec, "imagePullSecrets") {
        names(&s, &["/name"]).for_each(|n| add(RefKind::Secret, n));
    }
    if let Some(sa) = spec.get("serviceAccountName").and_then(Value::as_str) {
        add(RefKind::ServiceAccount, sa);
    }
    for vol in arr(spec, "volumes") {
        names(&vol, &["/secret/secretName"]).for_each(|n| add(RefKind::Secret, n));
        names(&vol, &["/configMap/name"]).for_each(|n| add(RefKind::ConfigMap, n));
        for src in vol
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            names(src, &["/secret/name"]).for_each(|n| add(RefKind::Secret, n));
            names(src, &["/configMap/name"]).for_each(|n| add(RefKind::ConfigMap, n));
        }
    }
    for kind in ["initContainers", "containers", "ephemeralContainers"] {
        for c in arr(spec, kind) {
            for e in arr(&c, "env") {
                names(&e, &["/valueFrom/secretKeyRef/name"]).for_each(|n| add(RefKind::Secret, n));
                names(&e, &["/valueFrom/configMapKeyRef/name"])
                    .for_each(|n| add(RefKind::ConfigMap, n));
            }
            for e in arr(&c, "envFrom") {
                names(&e, &["/secretRef/name"]).for_each(|n| add(RefKind::Secret, n));
                names(&e, &["/configMapRef/name"]).for_each(|n| add(RefKind::ConfigMap, n));
            }
        }
    }
    out
}

impl NodeGraph {
    /// Apply a put (`Some`) or delete (`None`) of a pod key.
    pub fn apply(&mut self, key: &str, pod: Option<&Value>) {
        if let Some((node, refs)) = self.pods.remove(key)
            && let Some(m) = self.by_node.get_mut(&node)
        {
            for r in refs {
                if let Some(c) = m.get_mut(&r) {
                    *c -= 1;
                    if *c == 0 {
                        m.remove(&r);
                    }
                }
            }
            if m.is_empty() {
                self.by_node.remove(&node);
            }
        }
        let Some(pod) = pod else { return };
        let Some(node) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        else {
            return;
        };
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let refs = references(ns, pod.get("spec").unwrap_or(&Value::Null));
        let m = self.by_node.entry(node.to_owned()).or_default();
        for r in &refs {
            *m.entry(r.clone()).or_default() += 1;
        }
        self.pods.insert(key.to_owned(), (node.to_owned(), refs));
    }

    fn reaches(&self, node: &str, kind: RefKind, ns: &str, name: &str) -> bool {
        self.by_node
            .get(node)
            .is_some_and(|m| m.contains_key(&(kind, ns.to_owned(), name.to_owned())))
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let own = |l: &[&str]| Some(l.iter().map(|s| (*s).to_owned()).collect());
    PolicyRule {
        api_groups: own(groups),
        resources: own(resources),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];

/// The fixed rules of every node (upstream's `NodeRules`, plus Kestrel's
/// service proxy, DNS and NetworkPolicy reads).
pub fn node_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &[""],
            &["nodes"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
        rule(&[""], &["nodes/status"], &["patch", "update"]),
        rule(
            &[""],
            &["pods"],
            &["get", "list", "watch", "create", "delete"],
        ),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(&[""], &["services", "endpoints", "namespaces"], READ),
        // The built-in local-path provisioner.
        rule(&[""], &["persistentvolumeclaims"], READ),
        rule(
            &[""],
            &["persistentvolumes"],
            &["get", "list", "watch", "create", "delete"],
        ),
        rule(&["storage.k8s.io"], &["storageclasses"], READ),
        rule(
            &["", "events.k8s.io"],
            &["events"],
            &["create", "patch", "update"],
        ),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "create", "update", "patch", "delete"],
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(&["networking.k8s.io"], &["networkpolicies"], READ),
        rule(
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
            &["create", "get", "list", "watch"],
        ),
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
            &["create"],
        ),
    ]
}

/// The Node authorizer's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied, with upstream's reason; no other authorizer is asked.
    Deny(String),
    /// Not this authorizer's business.
    NoOpinion,
}

/// Upstream's Node authorizer.
pub fn authorize(graph: &NodeGraph, rules: &[PolicyRule], user: &User, a: &Attributes) -> Decision {
    let Some(node) = node_name(user) else {
        return Decision::NoOpinion;
    };
    if !a.resource_request || !a.api_group.is_empty() {
        return by_rules(rules, a);
    }
    let kind = match (a.resource.as_str(), a.subresource.as_str()) {
        ("secrets", "") => RefKind::Secret,
        ("configmaps", "") => RefKind::ConfigMap,
        ("serviceaccounts", "token") => {
            if a.verb != "create" {
                return Decision::Deny(
                    "can only create tokens for individual service accounts".to_owned(),
                );
            }
            RefKind::ServiceAccount
        }
        _ => return by_rules(rules, a),
    };
    if kind != RefKind::ServiceAccount {
        if !matches!(a.verb.as_str(), "get" | "list" | "watch") {
            return Decision::Deny("can only read resources of this type".to_owned());
        }
        if a.name.is_empty() {
            return Decision::Deny("can only read individual resources of this type".to_owned());
        }
    }
    if graph.reaches(node, kind, &a.namespace, &a.name) {
        Decision::Allow
    } else {
        Decision::Deny(format!(
            "no relationship found between node '{node}' and this object"
        ))
    }
}

fn by_rules(rules: &[PolicyRule], a: &Attributes) -> Decision {
    if rules.iter().any(|r| super::rbac::rule_allows(a, r)) {
        Decision::Allow
    } else {
        Decision::NoOpinion
    }
}

fn forbidden(resource: &str, name: &str, why: String) -> ApiError {
    if name.is_empty() {
        ApiError::Forbidden(format!("{resource} is forbidden: {why}"))
    } else {
        ApiError::Forbidden(format!("{resource} \"{name}\" is forbidden: {why}"))
    }
}

fn bound_to(pod: &Value) -> &str {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// NodeRestriction for requests that name an existing object (update,
/// patch, delete, eviction): `current` is the object as the cache has it.
pub fn restrict(user: &User, a: &Attributes, current: Option<&Value>) -> Result<(), ApiError> {
    let Some(node) = node_name(user) else {
        return Ok(());
    };
    let writes = matches!(
        a.verb.as_str(),
        "create" | "update" | "patch" | "delete" | "deletecollection"
    );
    if !a.resource_request || !writes {
        return Ok(());
    }
    match (a.api_group.as_str(), a.resource.as_str()) {
        ("", "nodes") if !a.name.is_empty() && a.name != node => Err(forbidden(
            "nodes",
            &a.name,
            format!(
                "node \"{node}\" is not allowed to modify node \"{}\"",
                a.name
            ),
        )),
        ("coordination.k8s.io", "leases")
            if !a.name.is_empty() && (a.name != node || a.namespace != "kube-node-lease") =>
        {
            Err(forbidden(
                "leases.coordination.k8s.io",
                &a.name,
                "can only access node lease with the same name as the requesting node".to_owned(),
            ))
        }
        ("", "pods") if !a.name.is_empty() => {
            let Some(pod) = current else { return Ok(()) };
            if bound_to(pod) == node {
                return Ok(());
            }
            let what = match (a.subresource.as_str(), a.verb.as_str()) {
                ("status", _) => "update pod status",
                ("eviction", _) => "evict pods",
                (_, "delete") => "delete pods",
                _ => "modify pods",
            };
            Err(forbidden(
                "pods",
                &a.name,
                format!("node \"{node}\" can only {what} with spec.nodeName set to itself"),
            ))
        }
        ("", "pods") if a.verb == "deletecollection" => Err(forbidden(
            "pods",
            "",
            format!("node \"{node}\" can only delete pods with spec.nodeName set to itself"),
        )),
        _ => Ok(()),
    }
}

/// NodeRestriction for creates, which name their object in the body.
pub fn admit_create(user: &User, kind: &str, obj: &Value) -> Result<(), ApiError> {
    let Some(node) = node_name(user) else {
        return Ok(());
    };
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match kind {
        "Node" if name != node => Err(forbidden(
            "nodes",
            name,
            format!("node \"{node}\" is not allowed to modify node \"{name}\""),
        )),
        "Lease" if name != node || ns != "kube-node-lease" => Err(forbidden(
            "leases.coordination.k8s.io",
            name,
            "can only access node lease with the same name as the requesting node".to_owned(),
        )),
        "Pod" => {
            let mirror = obj
                .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                .is_some();
            if !mirror {
                return Err(forbidden(
                    "pods",
                    name,
                    format!(
                        "pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"
                    ),
                ));
            }
            if bound_to(obj) != node {
                return Err(forbidden(
                    "pods",
                    name,
                    format!(
                        "node \"{node}\" can only create pods with spec.nodeName set to itself"
                    ),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// NodeRestriction for TokenRequests: a node asks only for tokens bound to a
/// pod scheduled on it. `bound_pod` is the pod the request binds to, if any.
pub fn admit_token_request(user: &User, bound_pod: Option<&Value>) -> Result<(), ApiError> {
    let Some(node) = node_name(user) else {
        return Ok(());
    };
    match bound_pod {
        None => Err(ApiError::Forbidden(format!(
            "serviceaccounts is forbidden: node \"{node}\" requested token not bound to a pod"
        ))),
        Some(p) if bound_to(p) != node => Err(ApiError::Forbidden(format!(
            "serviceaccounts is forbidden: node \"{node}\" requested token bound to a pod scheduled on a different node"
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(n: &str) -> User {
        User::new(format!("system:node:{n}"), [NODES_GROUP])
    }

    fn graph() -> NodeGraph {
        let mut g = NodeGraph::default();
        g.apply(
            "/registry/core/pods/app/web",
            Some(&json!({
                "metadata": {"namespace": "app", "name": "web"},
                "spec": {
                    "nodeName": "n1",
                    "serviceAccountName": "web",
                    "imagePullSecrets": [{"name": "pull"}],
                    "volumes": [
                        {"name": "a", "secret": {"secretName": "tls"}},
                        {"name": "b", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}},
                        {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                    ],
                    "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}}],
                                    "envFrom": [{"configMapRef": {"name": "settings"}}]}],
                },
            })),
        );
        g
    }

    #[test]
    fn a_node_reads_what_its_pods_use() {
        let g = graph();
        let rules = node_rules();
        let get = |kind: &str, name: &str| Attributes::resource("get", "", kind, "app", name);
        for (kind, name) in [
            ("secrets", "tls"),
            ("secrets", "pull"),
            ("secrets", "env-secret"),
            ("configmaps", "kube-root-ca.crt"),
            ("configmaps", "settings"),
        ] {
            assert_eq!(
                authorize(&g, &rules, &node("n1"), &get(kind, name)),
                Decision::Allow,
                "{kind}/{name}"
            );
            assert!(matches!(
                authorize(&g, &rules, &node("n2"), &get(kind, name)),
                Decision::Deny(_)
            ));
        }
        assert!(matches!(
            authorize(&g, &rules, &node("n1"), &get("secrets", "other")),
            Decision::Deny(_)
        ));
        let list = Attributes::resource("list", "", "secrets", "app", "");
        assert!(matches!(
            authorize(&g, &rules, &node("n1"), &list),
            Decision::Deny(_)
        ));
        let token = Attributes::resource("create", "", "serviceaccounts", "app", "web")
            .with_subresource("token");
        assert_eq!(authorize(&g, &rules, &node("n1"), &token), Decision::Allow);
        assert!(matches!(
            authorize(&g, &rules, &node("n2"), &token),
            Decision::Deny(_)
        ));
        // Not a node: no opinion.
        assert_eq!(
            authorize(
                &g,
                &rules,
                &User::new("bob", ["system:authenticated"]),
                &get("secrets", "tls")
            ),
            Decision::NoOpinion
        );
        // Fixed rules: claims, volumes and classes, for the provisioner.
        for a in [
            get("persistentvolumeclaims", "data"),
            Attributes::resource("watch", "", "persistentvolumeclaims", "", ""),
            Attributes::resource("list", "", "persistentvolumes", "", ""),
            Attributes::resource("create", "", "persistentvolumes", "", ""),
            Attributes::resource("delete", "", "persistentvolumes", "", "pvc-1"),
            Attributes::resource("watch", "storage.k8s.io", "storageclasses", "", ""),
        ] {
            assert_eq!(
                authorize(&g, &rules, &node("n2"), &a),
                Decision::Allow,
                "{a:?}"
            );
        }
        assert_eq!(
            authorize(
                &g,
                &rules,
                &node("n2"),
                &Attributes::resource("update", "", "persistentvolumeclaims", "app", "data")
            ),
            Decision::NoOpinion
        );
        assert_eq!(
            authorize(
                &g,
                &rules,
                &node("n2"),
                &Attributes::resource("watch", "", "pods", "", "")
            ),
            Decision::Allow
        );
        assert_eq!(
            authorize(
                &g,
                &rules,
                &node("n2"),
                &Attributes::resource("delete", "apps", "deployments", "app", "d")
            ),
            Decision::NoOpinion
        );
    }

    #[test]
    fn deleting_the_pod_removes_the_path() {
        let mut g = graph();
        g.apply("/registry/core/pods/app/web", None);
        let a = Attributes::resource("get", "", "secrets", "app", "tls");
        assert!(matches!(
            authorize(&g, &node_rules(), &node("n1"), &a),
            Decision::Deny(_)
        ));
        assert!(g.by_node.is_empty());
    }

    #[test]
    fn restriction() {
        let pod = json!({"spec": {"nodeName": "n1"}});
        let upd =
            Attributes::resource("update", "", "pods", "app", "web").with_subresource("status");
        assert!(restrict(&node("n1"), &upd, Some(&pod)).is_ok());
        let e = restrict(&node("n2"), &upd, Some(&pod)).expect_err("other node");
        assert_eq!(
            e.to_string(),
            r#"pods "web" is forbidden: node "n2" can only update pod status with spec.nodeName set to itself"#
        );
        let patch_node = Attributes::resource("patch", "", "nodes", "", "n1");
        assert!(restrict(&node("n1"), &patch_node, None).is_ok());
        assert!(restrict(&node("n2"), &patch_node, None).is_err());
        let lease = Attributes::resource(
            "update",
            "coordination.k8s.io",
            "leases",
            "kube-node-lease",
            "n2",
        );
        assert!(restrict(&node("n1"), &lease, None).is_err());
        assert!(
            admit_create(
                &node("n1"),
                "Pod",
                &json!({"metadata": {"name": "x"}, "spec": {"nodeName": "n1"}})
            )
            .is_err()
        );
        assert!(admit_create(&node("n1"), "Node", &json!({"metadata": {"name": "n1"}})).is_ok());
        assert!(admit_create(&node("n1"), "Node", &json!({"metadata": {"name": "n2"}})).is_err());
        assert!(admit_token_request(&node("n1"), Some(&pod)).is_ok());
        assert!(admit_token_request(&node("n2"), Some(&pod)).is_err());
        assert!(admit_token_request(&node("n1"), None).is_err());
    }
}
