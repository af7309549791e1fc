//! ReplicationController defaulting and validation, as upstream's: the
//! selector and the controller's own labels default to the template's
//! labels, the selector must be non-empty and pick the template, and its
//! pods always restart. The controller is kestrel-controllers'
//! `replicationcontroller.rs`.

use kestrel_api::FieldError;
use kestrel_api::labels;
use serde_json::{Value, json};

use crate::admission::{check_pod_spec, check_replicas, default_pod_spec};

fn labels_at(obj: &Value, ptr: &str) -> Option<serde_json::Map<String, Value>> {
    obj.pointer(ptr)
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
        .cloned()
}

/// Upstream's defaults for a ReplicationController.
pub fn set_defaults(obj: &mut Value) {
    if let Some(tl) = labels_at(obj, "/spec/template/metadata/labels") {
        if labels_at(obj, "/spec/selector").is_none()
            && let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
        {
            spec.insert("selector".into(), json!(tl));
        }
        if labels_at(obj, "/metadata/labels").is_none()
            && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.insert("labels".into(), json!(tl));
        }
    }
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.entry("replicas").or_insert(json!(1));
    }
    if let Some(t) = obj
        .pointer_mut("/spec/template/spec")
        .and_then(Value::as_object_mut)
    {
        default_pod_spec(t);
    }
}

fn string_map(v: &serde_json::Map<String, Value>) -> std::collections::BTreeMap<String, String> {
    v.iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// Check a ReplicationController.
pub fn validate(obj: &Value, errs: &mut Vec<FieldError>) {
    let selector = labels_at(obj, "/spec/selector");
    if selector.is_none() {
        errs.push(FieldError::required("spec.selector", ""));
    }
    check_replicas(obj, errs);
    let Some(template) = obj.pointer("/spec/template") else {
        errs.push(FieldError::required("spec.template", ""));
        return;
    };
    let tl = labels_at(obj, "/spec/template/metadata/labels").unwrap_or_default();
    if let Some(sel) = &selector
        && !labels::set_matches(&string_map(sel), &string_map(&tl))
    {
        errs.push(FieldError::invalid(
            "spec.template.metadata.labels",
            &Value::Object(tl.clone()).to_string(),
            "selector does not match template labels",
        ));
    }
    check_pod_spec(template.get("spec"), "spec.template.spec", errs);
    let rp = template
        .pointer("/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("");
    if rp != "Always" {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            rp,
            &["Always"],
        ));
    }
}
