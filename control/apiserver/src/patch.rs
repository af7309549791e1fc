//! The three patch formats: RFC 6902 JSON patch, RFC 7386 merge patch, and
//! Kubernetes strategic merge patch with the list merge keys and strategies
//! of the built-in types.

use serde_json::{Map, Value};

/// Why a patch could not be applied (always a 4xx to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A JSON patch `test` failed or a path is missing.
    #[error("{0}")]
    Failed(String),
}

/// RFC 7386: objects merge, `null` deletes, everything else replaces
/// (the json-patch crate's implementation).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902, with the json-patch crate. Operations apply in order; any
/// failure leaves `doc` untouched. Failures use the wording of upstream's
/// JSON patch library (evanphx/json-patch), which clients see in the 422.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    if !patch.is_array() {
        return Err(PatchError::Invalid(
            "json patch must be a JSON array of operations".to_owned(),
        ));
    }
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::Invalid(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(doc, &ops).map_err(|e| {
        let path = e.path.as_str();
        PatchError::Failed(match e.kind {
            json_patch::PatchErrorKind::TestFailed => format!("testing value {path:?} failed"),
            json_patch::PatchErrorKind::InvalidFromPointer => {
                let from = match &ops[e.operation] {
                    json_patch::PatchOperation::Move(m) => m.from.to_string(),
                    json_patch::PatchOperation::Copy(c) => c.from.to_string(),
                    _ => String::new(),
                };
                format!("doc is missing from path: {from:?}")
            }
            json_patch::PatchErrorKind::CannotMoveInsideItself => {
                format!("cannot move {path:?} inside itself")
            }
            _ => format!("doc is missing path: {path:?}"),
        })
    })
}

/// The merge key of a list field of the built-in types, chosen by field
/// name and, where one name has two meanings, by the elements' shape.
pub fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    let has = |k: &str| sample.is_some_and(|s| s.get(k).is_some());
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        "ports" if has("containerPort") => "containerPort",
        "ports" if has("port") && !has("containerPort") => "port",
        _ => return None,
    })
}

/// Primitive lists that merge as sets rather than replace.
fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

/// Strategic merge patch.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    smp_value(target, patch, "")
}

fn smp_value(target: &mut Value, patch: &Value, _field: &str) -> Result<(), PatchError> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            *target = Value::Object(m);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) if other != "merge" => {
            return Err(PatchError::Invalid(format!(
                "unknown patch type: {other:?}"
            )));
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    let retain: Option<Vec<String>> = p.get("$retainKeys").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect()
    });
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (t.get_mut(field), v.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match v {
            Value::Array(items) => {
                let key = merge_key(k, items.iter().find(|i| i.is_object()));
                let cur = t.entry(k.clone()).or_insert(Value::Array(Vec::new()));
                if !cur.is_array() {
                    *cur = Value::Array(Vec::new());
                }
                let Value::Array(cur_items) = cur else {
                    continue;
                };
                match key {
                    Some(key) => merge_list(cur_items, items, key)?,
                    None if is_set_list(k) => {
                        for i in items {
                            if !cur_items.contains(i) {
                                cur_items.push(i.clone());
                            }
                        }
                    }
                    None => {
                        *cur_items = items
                            .iter()
                            .filter(|i| !is_directive_item(i))
                            .cloned()
                            .collect()
                    }
                }
                // Keep the order the client asked for, when it said.
                if let Some(Value::Array(order)) = p.get(&format!("$setElementOrder/{k}"))
                    && let Some(key) = key
                {
                    reorder(cur_items, order, key);
                }
            }
            Value::Object(_) => {
                let cur = t.entry(k.clone()).or_insert(Value::Null);
                smp_value(cur, v, k)?;
                if cur.is_null() {
                    t.remove(k);
                }
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(keep) = retain {
        t.retain(|k, _| keep.contains(k));
    }
    Ok(())
}

fn is_directive_item(v: &Value) -> bool {
    v.get("$patch").is_some()
}

fn merge_list(cur: &mut Vec<Value>, patch: &[Value], key: &str) -> Result<(), PatchError> {
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *cur = patch
            .iter()
            .filter(|i| !is_directive_item(i))
            .cloned()
            .collect();
        return Ok(());
    }
    for item in patch {
        let Some(kv) = item.get(key) else {
            return Err(PatchError::Invalid(format!(
                "map: {item} does not contain declared merge key: {key}"
            )));
        };
        let pos = cur.iter().position(|c| c.get(key) == Some(kv));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                cur.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => smp_value(&mut cur[i], item, key)?,
            None => {
                let mut fresh = Value::Object(Map::new());
                smp_value(&mut fresh, item, key)?;
                cur.push(fresh);
            }
        }
    }
    Ok(())
}

fn reorder(items: &mut Vec<Value>, order: &[Value], key: &str) {
    let mut out = Vec::with_capacity(items.len());
    for o in order {
        if let Some(kv) = o.get(key)
            && let Some(i) = items.iter().position(|c| c.get(key) == Some(kv))
        {
            out.push(items.remove(i));
        }
    }
    out.append(items);
    *items = out;
}

#[cfg(test)]
mod tests;
