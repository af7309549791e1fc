//! The `pods/ephemeralcontainers` subresource, as upstream's
//! `podEphemeralContainersStrategy`: an update through it changes only
//! `spec.ephemeralContainers`, whose entries may be added but never
//! removed or changed (`ValidatePodEphemeralContainersUpdate`), each an
//! ephemeral container upstream accepts. The main pod update leaves the
//! list alone: changing it there is the usual "pod updates may not
//! change fields" error.

use kestrel_api::FieldError;
use serde_json::{Map, Value, json};

const PATH: &str = "spec.ephemeralContainers";

/// What a container field may not be in an ephemeral container.
const FORBIDDEN: &[&str] = &[
    "lifecycle",
    "livenessProbe",
    "ports",
    "readinessProbe",
    "resizePolicy",
    "resources",
    "restartPolicy",
    "startupProbe",
];

/// The stored pod with only the ephemeral containers of `new` taken
/// (upstream's `dropNonEphemeralContainerUpdates`), each defaulted as
/// upstream defaults them.
pub fn merge_ephemeral(old: &Value, new: &Value) -> Value {
    let mut out = old.clone();
    let mut list = new
        .pointer("/spec/ephemeralContainers")
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(items) = list.as_array_mut() {
        for c in items.iter_mut().filter_map(Value::as_object_mut) {
            default_container(c);
        }
    }
    if let Some(o) = out.as_object_mut() {
        let spec = o.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            match list {
                Value::Array(a) if !a.is_empty() => {
                    spec.insert("ephemeralContainers".into(), Value::Array(a));
                }
                _ => {
                    spec.remove("ephemeralContainers");
                }
            }
        }
    }
    // A client's resourceVersion is its precondition, checked by the caller.
    if let (Some(rv), Some(m)) = (
        new.pointer("/metadata/resourceVersion").cloned(),
        out.get_mut("metadata").and_then(Value::as_object_mut),
    ) {
        m.insert("resourceVersion".into(), rv);
    }
    out
}

fn default_container(c: &mut Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    let tag = image
        .rsplit('/')
        .next()
        .unwrap_or("")
        .split_once(':')
        .map(|(_, t)| t.to_owned());
    let policy = if image.contains('@') || tag.as_deref().is_some_and(|t| t != "latest") {
        "IfNotPresent"
    } else {
        "Always"
    };
    for (k, v) in [
        ("imagePullPolicy", json!(policy)),
        ("terminationMessagePath", json!("/dev/termination-log")),
        ("terminationMessagePolicy", json!("File")),
    ] {
        c.entry(k).or_insert(v);
    }
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Upstream's `ValidatePodEphemeralContainersUpdate`, plus the checks
/// `validateEphemeralContainers` makes of each entry.
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mirror = old
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some();
    if mirror {
        return vec![FieldError::forbidden(
            "",
            "static pods do not support ephemeral containers",
        )];
    }
    let mut errs = Vec::new();
    let list = |v: &Value| {
        v.pointer("/spec/ephemeralContainers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (new_list, old_list) = (list(new), list(old));
    // Order is not kept by patches, so each is matched by name.
    for o in &old_list {
        let name = o.get("name").and_then(Value::as_str).unwrap_or("");
        match new_list
            .iter()
            .find(|n| n.get("name").and_then(Value::as_str) == Some(name))
        {
            None => errs.push(FieldError::forbidden(
                PATH,
                format!("existing ephemeral containers {name:?} may not be removed\n"),
            )),
            Some(n) if n != o => errs.push(FieldError::forbidden(
                format!("{PATH}[{name}]"),
                format!("existing ephemeral containers {name:?} may not be changed\n"),
            )),
            Some(_) => {}
        }
    }
    let mut taken: Vec<String> = names(new, "initContainers");
    taken.extend(names(new, "containers"));
    let targets = taken.clone();
    for (i, c) in new_list.iter().enumerate() {
        let at = format!("{PATH}[{i}]");
        let o = c.as_object().unwrap_or(&Map::new()).clone();
        let name = o.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{at}.name"), ""));
        } else {
            for why in kestrel_api::validation::dns1123_label(name) {
                errs.push(FieldError::invalid(format!("{at}.name"), name, why));
            }
            if taken.iter().any(|t| t == name) {
                errs.push(FieldError::duplicate(format!("{at}.name"), name));
            }
            taken.push(name.to_owned());
        }
        if o.get("image")
            .and_then(Value::as_str)
            .is_none_or(|s| s.trim().is_empty())
        {
            errs.push(FieldError::required(format!("{at}.image"), ""));
        }
        for f in FORBIDDEN {
            if o.get(*f)
                .is_some_and(|v| !v.is_null() && v != &json!({}) && v != &json!([]))
            {
                errs.push(FieldError::forbidden(
                    format!("{at}.{f}"),
                    "cannot be set for an Ephemeral Container",
                ));
            }
        }
        if let Some(t) = o.get("targetContainerName").and_then(Value::as_str)
            && !t.is_empty()
            && !targets.iter().any(|n| n == t)
        {
            errs.push(FieldError {
                reason: "FieldValueNotFound",
                field: format!("{at}.targetContainerName"),
                detail: format!("Not found: {t:?}"),
            });
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ephemeral: Value) -> Value {
        json!({
            "metadata": {"name": "p", "resourceVersion": "5"},
            "spec": {"containers": [{"name": "app", "image": "busybox"}], "ephemeralContainers": ephemeral},
            "status": {"phase": "Running"},
        })
    }

    #[test]
    fn only_ephemeral_containers_change() {
        let old = pod(json!([]));
        let mut new = pod(json!([{"name": "dbg", "image": "busybox:1.35"}]));
        new["spec"]["containers"][0]["image"] = json!("nginx");
        new["status"] = json!({});
        let merged = merge_ephemeral(&old, &new);
        assert_eq!(merged["spec"]["containers"][0]["image"], "busybox");
        assert_eq!(merged["status"]["phase"], "Running");
        let e = &merged["spec"]["ephemeralContainers"][0];
        assert_eq!(e["imagePullPolicy"], "IfNotPresent");
        assert_eq!(e["terminationMessagePolicy"], "File");
        assert!(validate_update(&merged, &old).is_empty());
    }

    #[test]
    fn entries_are_never_removed_or_changed() {
        let old = merge_ephemeral(
            &pod(json!([])),
            &pod(json!([{"name": "dbg", "image": "busybox:1.35"}])),
        );
        let gone = merge_ephemeral(&old, &pod(json!([])));
        let errs = validate_update(&gone, &old);
        assert_eq!(
            errs[0].to_message(),
            "spec.ephemeralContainers: Forbidden: existing ephemeral containers \"dbg\" may not be removed\n"
        );
        let changed = merge_ephemeral(
            &old,
            &pod(json!([{"name": "dbg", "image": "busybox:1.36"}])),
        );
        let errs = validate_update(&changed, &old);
        assert!(
            errs[0]
                .to_message()
                .starts_with("spec.ephemeralContainers[dbg]: Forbidden: existing ephemeral containers \"dbg\" may not be changed")
        );
    }

    #[test]
    fn new_entries_are_checked() {
        let old = pod(json!([]));
        let new = merge_ephemeral(
            &old,
            &pod(json!([
                {"name": "app", "image": "busybox", "ports": [{"containerPort": 80}]},
                {"name": "x", "image": "busybox", "targetContainerName": "nope"},
            ])),
        );
        let msgs: Vec<String> = validate_update(&new, &old)
            .iter()
            .map(FieldError::to_message)
            .collect();
        assert!(
            msgs.contains(&"spec.ephemeralContainers[0].name: Duplicate value: \"app\"".to_owned()),
            "{msgs:?}"
        );
        assert!(msgs.contains(&"spec.ephemeralContainers[0].ports: Forbidden: cannot be set for an Ephemeral Container".to_owned()), "{msgs:?}");
        assert!(
            msgs.contains(
                &"spec.ephemeralContainers[1].targetContainerName: Not found: \"nope\"".to_owned()
            ),
            "{msgs:?}"
        );
    }
}
