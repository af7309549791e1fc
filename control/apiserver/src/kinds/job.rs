//! The Job strategy's create step, as upstream's: unless
//! `spec.manualSelector` is true, a Job's selector is generated from its
//! uid and its pod template labelled to match, so `kubectl logs job/x` and
//! other selector users pick exactly its pods.

use serde_json::{Value, json};

/// Label keys the generated selector and template carry (the legacy
/// names too, as upstream).
const UID_LABELS: [&str; 2] = ["batch.kubernetes.io/controller-uid", "controller-uid"];
const NAME_LABELS: [&str; 2] = ["batch.kubernetes.io/job-name", "job-name"];

/// Generate the selector of a new Job that does not pick its own.
pub fn prepare_create(obj: &mut Value) {
    if obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let uid = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let (Some(uid), Some(name)) = (uid, name) else {
        return;
    };
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("selector").is_some_and(|s| !s.is_null()) {
        return;
    }
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {UID_LABELS[0]: uid}}),
    );
    let template = spec.entry("template").or_insert_with(|| json!({}));
    let Some(meta) = template
        .as_object_mut()
        .map(|t| t.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if let Some(l) = labels.as_object_mut() {
        for k in UID_LABELS {
            l.insert(k.into(), json!(uid));
        }
        for k in NAME_LABELS {
            l.insert(k.into(), json!(name));
        }
    }
}
