//! Upstream's storage admission plugins:
//!
//! - DefaultStorageClass: a new claim that names no class (neither
//!   `spec.storageClassName` nor the beta annotation) gets the default
//!   StorageClass, the one annotated `is-default-class: "true"`; of several,
//!   the newest, then the first by name, as upstream since 1.28. An
//!   explicit `storageClassName: ""` asks for no class and is kept.
//! - StorageObjectInUseProtection: new claims and volumes carry the
//!   `kubernetes.io/pvc-protection` and `kubernetes.io/pv-protection`
//!   finalizers, which the protection controllers lift once nothing uses
//!   the object.

use kestrel_api::registry;
use serde_json::{Value, json};

use super::chain::{Attributes, Operation};
use crate::kinds::storage::BETA_CLASS_ANNOTATION;
use crate::state::AppState;

/// The annotation that marks the default class, and its beta form.
pub const DEFAULT_CLASS_ANNOTATIONS: [&str; 2] = [
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
];
/// The finalizer on claims.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The finalizer on volumes.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

fn is_default(class: &Value) -> bool {
    let ann = class.pointer("/metadata/annotations");
    DEFAULT_CLASS_ANNOTATIONS
        .iter()
        .any(|k| ann.and_then(|a| a.get(*k)).and_then(Value::as_str) == Some("true"))
}

/// The default class among `classes`: the newest of those marked default,
/// ties broken by name (upstream's `GetDefaultClass`).
pub fn default_class<'a>(classes: impl IntoIterator<Item = &'a Value>) -> Option<&'a str> {
    let field = |v: &'a Value, p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("");
    classes
        .into_iter()
        .filter(|c| is_default(c))
        .map(|c| {
            let created = field(c, "/metadata/creationTimestamp");
            // RFC 3339 in UTC sorts as text; parse anyway for other offsets.
            let t = created
                .parse::<jiff::Timestamp>()
                .map_or(i128::MIN, |t| t.as_nanosecond());
            (t, field(c, "/metadata/name"))
        })
        .min_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)))
        .map(|(_, name)| name)
}

/// Whether a claim names a class, possibly the empty one.
fn has_class(claim: &Value) -> bool {
    claim
        .pointer("/spec/storageClassName")
        .is_some_and(|c| !c.is_null())
        || claim
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(BETA_CLASS_ANNOTATION))
            .is_some()
}

fn applies(a: &Attributes<'_>, kind: &str) -> bool {
    a.operation == Operation::Create
        && a.subresource.is_none()
        && a.target.def.group.is_empty()
        && a.kind() == kind
}

/// DefaultStorageClass: give a new claim without a class the default one.
pub fn default_storage_class(state: &AppState, a: &Attributes<'_>, claim: &mut Value) {
    if !applies(a, "PersistentVolumeClaim") || has_class(claim) {
        return;
    }
    let Some(def) = registry::lookup("storage.k8s.io", "v1", "storageclasses") else {
        return;
    };
    let (classes, _) = state.cache.list(&def.key_prefix());
    let Some(name) = default_class(classes.iter().map(|e| &*e.value)).map(str::to_owned) else {
        return;
    };
    if let Some(spec) = claim
        .as_object_mut()
        .map(|o| o.entry("spec").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    {
        spec.insert("storageClassName".into(), json!(name));
    }
}

/// Add `finalizer` to an object's metadata, once.
fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let Some(meta) = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(l) = list.as_array_mut()
        && !l.iter().any(|f| f.as_str() == Some(finalizer))
    {
        l.push(json!(finalizer));
    }
}

/// StorageObjectInUseProtection: the protection finalizer on new claims
/// and volumes.
pub fn protect(a: &Attributes<'_>, obj: &mut Value) {
    if applies(a, "PersistentVolumeClaim") {
        add_finalizer(obj, PVC_PROTECTION);
    } else if applies(a, "PersistentVolume") {
        add_finalizer(obj, PV_PROTECTION);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, created: &str, default: Option<&str>) -> Value {
        let mut c = json!({"metadata": {"name": name, "creationTimestamp": created}});
        if let Some(d) = default {
            c["metadata"]["annotations"] = json!({DEFAULT_CLASS_ANNOTATIONS[0]: d});
        }
        c
    }

    #[test]
    fn the_newest_default_class_wins() {
        let none: [Value; 0] = [];
        assert_eq!(default_class(&none), None);
        let cs = [
            class("a", "2024-01-01T00:00:00Z", Some("true")),
            class("b", "2024-02-01T00:00:00Z", Some("false")),
            class("c", "2024-01-02T00:00:00Z", None),
        ];
        assert_eq!(default_class(&cs), Some("a"));
        let cs = [
            class("old", "2024-01-01T00:00:00Z", Some("true")),
            class("zz", "2024-03-01T00:00:00Z", Some("true")),
            class("new", "2024-03-01T00:00:00Z", Some("true")),
        ];
        assert_eq!(default_class(&cs), Some("new"));
        let mut beta = class("beta", "2025-01-01T00:00:00Z", None);
        beta["metadata"]["annotations"] = json!({DEFAULT_CLASS_ANNOTATIONS[1]: "true"});
        let cs = [class("a", "2024-01-01T00:00:00Z", Some("true")), beta];
        assert_eq!(default_class(&cs), Some("beta"));
    }

    #[test]
    fn classes_named_or_empty_are_kept() {
        assert!(!has_class(&json!({"spec": {}})));
        assert!(!has_class(&json!({"spec": {"storageClassName": null}})));
        assert!(has_class(&json!({"spec": {"storageClassName": ""}})));
        assert!(has_class(&json!({
            "metadata": {"annotations": {BETA_CLASS_ANNOTATION: "x"}}, "spec": {}
        })));
    }

    #[test]
    fn finalizers_are_added_once() {
        let mut o = json!({"metadata": {"finalizers": ["other"]}});
        add_finalizer(&mut o, PVC_PROTECTION);
        add_finalizer(&mut o, PVC_PROTECTION);
        assert_eq!(
            o["metadata"]["finalizers"],
            json!(["other", PVC_PROTECTION])
        );
    }
}
