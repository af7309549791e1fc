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

/// RFC 7386: objects merge, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn unescape_token(t: &str) -> String {
    t.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<Vec<String>, PatchError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    if !path.starts_with('/') {
        return Err(PatchError::Invalid(format!(
            "invalid JSON pointer {path:?}"
        )));
    }
    Ok(path[1..].split('/').map(unescape_token).collect())
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    toks: &[String],
    path: &str,
) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError::Failed(format!("doc is missing path: {path:?}")))?;
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    let toks = split_pointer(path)?;
    let Some((last, parents)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents, path)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| PatchError::Failed(format!("invalid array index in {path:?}")))?
            };
            a.insert(i, value);
            Ok(())
        }
        _ => Err(PatchError::Failed(format!("doc is missing path: {path:?}"))),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let toks = split_pointer(path)?;
    let Some((last, parents)) = toks.split_last() else {
        return Err(PatchError::Invalid(
            "cannot remove the whole document".to_owned(),
        ));
    };
    let missing = || PatchError::Failed(format!("doc is missing path: {path:?}"));
    match parent_mut(doc, parents, path)? {
        Value::Object(m) => m.remove(last).ok_or_else(missing),
        Value::Array(a) => {
            let i = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < a.len())
                .ok_or_else(missing)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

fn get<'a>(doc: &'a Value, path: &str) -> Result<&'a Value, PatchError> {
    let ptr = split_pointer(path)?
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect::<String>();
    doc.pointer(&ptr)
        .ok_or_else(|| PatchError::Failed(format!("doc is missing path: {path:?}")))
}

/// RFC 6902. Operations apply in order; any failure leaves `doc` untouched.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch.as_array().ok_or_else(|| {
        PatchError::Invalid("json patch must be a JSON array of operations".to_owned())
    })?;
    let mut work = doc.clone();
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError::Invalid(format!("operation {op} has no path")))?;
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                PatchError::Invalid(format!("operation {kind} on {path:?} has no value"))
            })
        };
        let from = || {
            op.get("from").and_then(Value::as_str).ok_or_else(|| {
                PatchError::Invalid(format!("operation {kind} on {path:?} has no from"))
            })
        };
        match kind {
            "add" => add(&mut work, path, value()?)?,
            "remove" => {
                remove(&mut work, path)?;
            }
            "replace" => {
                remove(&mut work, path)?;
                add(&mut work, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut work, from()?)?;
                add(&mut work, path, v)?;
            }
            "copy" => {
                let v = get(&work, from()?)?.clone();
                add(&mut work, path, v)?;
            }
            "test" => {
                if *get(&work, path)? != value()? {
                    return Err(PatchError::Failed(format!("testing value {path:?} failed")));
                }
            }
            other => {
                return Err(PatchError::Invalid(format!(
                    "unexpected kind of patch operation: {other:?}"
                )));
            }
        }
    }
    *doc = work;
    Ok(())
}

/// The merge key of a list field of the built-in types, chosen by field
/// name and, where one name has two meanings, by the elements' shape.
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
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
