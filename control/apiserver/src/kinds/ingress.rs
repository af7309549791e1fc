//! Validation of networking.k8s.io/v1 Ingress and IngressClass and of
//! node.k8s.io/v1 RuntimeClass, as upstream's. Kestrel serves and stores
//! them; no Ingress controller ships yet, so nothing writes their status.

use kestrel_api::FieldError;
use kestrel_api::validation::{dns1123_label, dns1123_subdomain};
use serde_json::Value;

const PATH_TYPES: &[&str] = &["Exact", "Prefix", "ImplementationSpecific"];

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn items(v: Option<&Value>) -> impl Iterator<Item = (usize, &Value)> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

/// A host: a DNS subdomain, optionally `*.`-prefixed, not an IP address.
fn host(field: &str, h: &str, errs: &mut Vec<FieldError>) {
    if h.parse::<std::net::IpAddr>().is_ok() {
        errs.push(FieldError::invalid(
            field,
            h,
            "must be a DNS name, not an IP address",
        ));
        return;
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    for why in dns1123_subdomain(name) {
        errs.push(FieldError::invalid(field, h, why));
    }
}

fn backend(field: &str, b: &Value, errs: &mut Vec<FieldError>) {
    match (b.get("service"), b.get("resource")) {
        (Some(_), Some(_)) => errs.push(FieldError::invalid(
            field,
            "",
            "cannot set both service and resource backends",
        )),
        (None, None) => errs.push(FieldError::invalid(
            field,
            "",
            "resource or service backend is required",
        )),
        (Some(svc), None) => {
            let name = s(svc, "name").unwrap_or("");
            if name.is_empty() {
                errs.push(FieldError::required(format!("{field}.service.name"), ""));
            } else {
                for why in dns1123_label(name) {
                    errs.push(FieldError::invalid(
                        format!("{field}.service.name"),
                        name,
                        why,
                    ));
                }
            }
            let port = svc.get("port");
            let pf = format!("{field}.service.port");
            match (
                port.and_then(|p| s(p, "name")).filter(|n| !n.is_empty()),
                port.and_then(|p| p.get("number"))
                    .and_then(Value::as_i64)
                    .filter(|n| *n != 0),
            ) {
                (Some(_), Some(_)) => errs.push(FieldError::invalid(
                    &pf,
                    "",
                    "cannot set both port name & port number",
                )),
                (None, None) => errs.push(FieldError::invalid(
                    &pf,
                    "",
                    "port name or number is required",
                )),
                (None, Some(n)) if !(1..=65535).contains(&n) => errs.push(FieldError::invalid(
                    format!("{pf}.number"),
                    &n.to_string(),
                    "must be between 1 and 65535, inclusive",
                )),
                (Some(n), None) => {
                    for why in dns1123_label(n) {
                        errs.push(FieldError::invalid(format!("{pf}.name"), n, why));
                    }
                }
                _ => {}
            }
        }
        (None, Some(r)) => {
            for k in ["kind", "name"] {
                if s(r, k).is_none_or(str::is_empty) {
                    errs.push(FieldError::required(format!("{field}.resource.{k}"), ""));
                }
            }
        }
    }
}

/// An Ingress.
pub fn validate_ingress(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let rules = spec.get("rules").and_then(Value::as_array);
    match spec.get("defaultBackend") {
        Some(b) => backend("spec.defaultBackend", b, errs),
        None if rules.is_none_or(Vec::is_empty) => errs.push(FieldError::invalid(
            "spec",
            &spec.to_string(),
            "either `defaultBackend` or `rules` must be specified",
        )),
        None => {}
    }
    if let Some(class) = s(&spec, "ingressClassName") {
        for why in dns1123_subdomain(class) {
            errs.push(FieldError::invalid("spec.ingressClassName", class, why));
        }
    }
    for (i, rule) in items(spec.get("rules")) {
        let rf = format!("spec.rules[{i}]");
        if let Some(h) = s(rule, "host").filter(|h| !h.is_empty()) {
            host(&format!("{rf}.host"), h, errs);
        }
        let Some(http) = rule.get("http") else {
            continue;
        };
        let paths = http.get("paths").and_then(Value::as_array);
        if paths.is_none_or(Vec::is_empty) {
            errs.push(FieldError::required(format!("{rf}.http.paths"), ""));
        }
        for (j, p) in items(http.get("paths")) {
            let pf = format!("{rf}.http.paths[{j}]");
            let path = s(p, "path").unwrap_or("");
            match s(p, "pathType") {
                None | Some("") => errs.push(FieldError::required(
                    format!("{pf}.pathType"),
                    "pathType must be specified",
                )),
                Some(t) if !PATH_TYPES.contains(&t) => {
                    errs.push(FieldError::not_supported(
                        format!("{pf}.pathType"),
                        t,
                        PATH_TYPES,
                    ));
                }
                Some("Exact" | "Prefix") if !path.starts_with('/') => errs.push(
                    FieldError::invalid(format!("{pf}.path"), path, "must be an absolute path"),
                ),
                _ => {}
            }
            match p.get("backend") {
                Some(b) => backend(&format!("{pf}.backend"), b, errs),
                None => errs.push(FieldError::required(format!("{pf}.backend"), "")),
            }
        }
    }
    for (i, tls) in items(spec.get("tls")) {
        for (j, h) in items(tls.get("hosts")) {
            if let Some(h) = h.as_str() {
                host(&format!("spec.tls[{i}].hosts[{j}]"), h, errs);
            }
        }
    }
}

/// An IngressClass: a domain-prefixed controller name, immutable.
pub fn validate_ingress_class(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let controller = obj.pointer("/spec/controller").and_then(Value::as_str);
    match controller {
        None | Some("") => errs.push(FieldError::required("spec.controller", "")),
        Some(c) => {
            let (domain, path) = c.split_once('/').unwrap_or((c, ""));
            let mut why = dns1123_subdomain(domain);
            if path.is_empty() || c.len() > 250 {
                why.push(
                    "must be a domain-prefixed path (such as \"acme.io/foo\") of at most 250 characters".to_owned(),
                );
            }
            for w in why {
                errs.push(FieldError::invalid("spec.controller", c, w));
            }
        }
    }
    if let Some(old) = old
        && old.pointer("/spec/controller") != obj.pointer("/spec/controller")
    {
        errs.push(FieldError::immutable("spec.controller"));
    }
    if let Some(p) = obj.pointer("/spec/parameters") {
        for k in ["kind", "name"] {
            if s(p, k).is_none_or(str::is_empty) {
                errs.push(FieldError::required(format!("spec.parameters.{k}"), ""));
            }
        }
        let scope = s(p, "scope").unwrap_or("Cluster");
        match (scope, s(p, "namespace")) {
            ("Cluster", Some(_)) => errs.push(FieldError::forbidden(
                "spec.parameters.namespace",
                "`parameters.scope` is set to 'Cluster'",
            )),
            ("Namespace", None) => errs.push(FieldError::required(
                "spec.parameters.namespace",
                "`parameters.scope` is set to 'Namespace'",
            )),
            ("Cluster" | "Namespace", _) => {}
            (other, _) => errs.push(FieldError::not_supported(
                "spec.parameters.scope",
                other,
                &["Cluster", "Namespace"],
            )),
        }
    }
}

/// A RuntimeClass: a DNS-label handler, immutable.
pub fn validate_runtime_class(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    match s(obj, "handler") {
        None | Some("") => errs.push(FieldError::required("handler", "")),
        Some(h) => {
            for why in dns1123_label(h) {
                errs.push(FieldError::invalid("handler", h, why));
            }
        }
    }
    if let Some(old) = old
        && old.get("handler") != obj.get("handler")
    {
        errs.push(FieldError::immutable("handler"));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn msgs(f: impl Fn(&mut Vec<FieldError>)) -> Vec<String> {
        let mut errs = Vec::new();
        f(&mut errs);
        errs.iter().map(FieldError::to_message).collect()
    }

    #[test]
    fn ingresses_are_checked_as_upstream() {
        let good = json!({"spec": {"ingressClassName": "nginx", "rules": [{"host": "*.example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}],
            "tls": [{"hosts": ["example.com"]}]}});
        assert!(msgs(|e| validate_ingress(&good, e)).is_empty());
        assert!(
            msgs(|e| validate_ingress(&json!({"spec": {}}), e))[0]
                .contains("either `defaultBackend` or `rules` must be specified")
        );
        let bad = json!({"spec": {"rules": [{"host": "10.0.0.1", "http": {"paths": [
            {"path": "api", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {"name": "http", "number": 80}}}},
            {"path": "/", "backend": {"service": {"name": "web"}}}]}}]}});
        let m = msgs(|e| validate_ingress(&bad, e));
        let want = [
            "spec.rules[0].host: Invalid value: \"10.0.0.1\": must be a DNS name, not an IP address",
            "spec.rules[0].http.paths[0].path: Invalid value: \"api\": must be an absolute path",
            "spec.rules[0].http.paths[0].backend.service.port: Invalid value: \"\": cannot set both port name & port number",
            "spec.rules[0].http.paths[1].pathType: Required value: pathType must be specified",
            "spec.rules[0].http.paths[1].backend.service.port: Invalid value: \"\": port name or number is required",
        ];
        for w in want {
            assert!(m.iter().any(|x| x == w), "missing {w:?} in {m:#?}");
        }
    }

    #[test]
    fn classes_are_checked_as_upstream() {
        assert!(
            msgs(|e| validate_ingress_class(
                &json!({"spec": {"controller": "k8s.io/ingress-nginx"}}),
                None,
                e
            ))
            .is_empty()
        );
        assert_eq!(
            msgs(|e| validate_ingress_class(&json!({"spec": {}}), None, e)),
            ["spec.controller: Required value"]
        );
        assert!(
            msgs(|e| validate_ingress_class(&json!({"spec": {"controller": "nginx"}}), None, e))[0]
                .contains("domain-prefixed path")
        );
        let old = json!({"spec": {"controller": "a.io/x"}});
        assert!(
            msgs(|e| validate_ingress_class(
                &json!({"spec": {"controller": "b.io/x"}}),
                Some(&old),
                e
            ))
            .iter()
            .any(|m| m.contains("field is immutable"))
        );
        assert_eq!(
            msgs(|e| validate_runtime_class(&json!({}), None, e)),
            ["handler: Required value"]
        );
        assert!(
            msgs(|e| validate_runtime_class(&json!({"handler": "Run_C"}), None, e))[0]
                .starts_with("handler: Invalid value")
        );
    }
}
