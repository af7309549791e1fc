//! The three patch formats: RFC 6902 JSON patch, RFC 7386 merge patch, and
//! Kubernetes strategic merge patch with the list merge keys and strategies
//! of the kind's schema (`kestrel_api::lists`).

use kestrel_api::lists::{ListSemantics, ListTree, ListType};
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

/// How lists merge: strategic merge patch follows the schema's patch
/// merge keys and strategies; server-side apply follows its list types
/// (`map` lists by all their keys, `set` lists as sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lists {
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// Merging an applied configuration.
    Apply,
}

/// Strategic merge patch of a kind whose lists are described by `lists`.
pub fn strategic_merge(
    target: &mut Value,
    patch: &Value,
    lists: &ListTree,
) -> Result<(), PatchError> {
    merge_value(target, patch, Some(lists), Lists::Strategic)
}

/// Merge an applied configuration into the live object by the kind's
/// list types.
pub fn apply_merge(
    target: &mut Value,
    applied: &Value,
    lists: &ListTree,
) -> Result<(), PatchError> {
    merge_value(target, applied, Some(lists), Lists::Apply)
}

/// How the list at `node` merges in `mode`: by these keys, as a set, or
/// replaced.
enum ListMerge<'a> {
    Keyed(&'a ListSemantics, Vec<&'a str>),
    Set,
    Replace,
}

fn list_merge(node: Option<&ListTree>, mode: Lists) -> ListMerge<'_> {
    let Some(l) = node.and_then(ListTree::list) else {
        return ListMerge::Replace;
    };
    match mode {
        Lists::Strategic => match l.patch_merge_key() {
            Some(k) => ListMerge::Keyed(l, vec![k]),
            None if l.merge => ListMerge::Set,
            None => ListMerge::Replace,
        },
        Lists::Apply => match (&l.list_type, l.map_keys()) {
            (_, Some(keys)) => ListMerge::Keyed(l, keys.iter().map(String::as_str).collect()),
            (ListType::Set, _) => ListMerge::Set,
            _ => ListMerge::Replace,
        },
    }
}

fn merge_value(
    target: &mut Value,
    patch: &Value,
    node: Option<&ListTree>,
    mode: Lists,
) -> Result<(), PatchError> {
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
        let child = node.and_then(|n| n.child(k));
        match v {
            Value::Array(items) => {
                let how = list_merge(child, mode);
                let cur = t.entry(k.clone()).or_insert(Value::Array(Vec::new()));
                if !cur.is_array() {
                    *cur = Value::Array(Vec::new());
                }
                let Value::Array(cur_items) = cur else {
                    continue;
                };
                match &how {
                    ListMerge::Keyed(l, keys) => {
                        merge_list(cur_items, items, (l, keys), child, mode)?
                    }
                    ListMerge::Set => {
                        for i in items {
                            if !cur_items.contains(i) {
                                cur_items.push(i.clone());
                            }
                        }
                    }
                    ListMerge::Replace => {
                        *cur_items = items
                            .iter()
                            .filter(|i| !is_directive_item(i))
                            .cloned()
                            .collect()
                    }
                }
                // Keep the order the client asked for, when it said.
                if let (Some(Value::Array(order)), ListMerge::Keyed(l, keys)) =
                    (p.get(&format!("$setElementOrder/{k}")), &how)
                {
                    reorder(cur_items, order, (l, keys));
                }
            }
            Value::Object(_) => {
                let cur = t.entry(k.clone()).or_insert(Value::Null);
                merge_value(cur, v, child, mode)?;
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

/// Whether the live element `cur` is the one `item` names: they agree on
/// every key, a key left out having its default (a port's protocol).
fn same_element(cur: &Value, item: &Value, keys: &[&str], l: &ListSemantics) -> bool {
    keys.iter().all(|k| l.key(cur, k) == l.key(item, k))
}

/// A keyed list's semantics and the keys its elements are told apart by.
type Keys<'a> = (&'a ListSemantics, &'a [&'a str]);

fn merge_list(
    cur: &mut Vec<Value>,
    patch: &[Value],
    (l, keys): Keys<'_>,
    node: Option<&ListTree>,
    mode: Lists,
) -> Result<(), PatchError> {
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
        // Strategic merge patch needs its merge key in every element.
        if let (Lists::Strategic, [key]) = (mode, keys)
            && item.get(key).is_none()
        {
            return Err(PatchError::Invalid(format!(
                "map: {item} does not contain declared merge key: {key}"
            )));
        }
        let pos = cur.iter().position(|c| same_element(c, item, keys, l));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                cur.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => merge_value(&mut cur[i], item, node, mode)?,
            None => {
                let mut fresh = Value::Object(Map::new());
                merge_value(&mut fresh, item, node, mode)?;
                cur.push(fresh);
            }
        }
    }
    Ok(())
}

fn reorder(items: &mut Vec<Value>, order: &[Value], (l, keys): Keys<'_>) {
    let mut out = Vec::with_capacity(items.len());
    for o in order {
        if let Some(i) = items.iter().position(|c| same_element(c, o, keys, l)) {
            out.push(items.remove(i));
        }
    }
    out.append(items);
    *items = out;
}

#[cfg(test)]
mod tests;
