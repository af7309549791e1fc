//! `metadata.managedFields`: who owns which field, as FieldsV1 sets of
//! paths (`f:name`, `k:{"name":"a"}` for keyed list elements, `.` for the
//! element itself). Every write records its manager's `Update` entry here
//! ([`record_update`]); server-side apply (`apply.rs`) reads and rewrites
//! the same sets for its `Apply` entries and conflicts.

use std::collections::BTreeSet;

use kestrel_api::lists::ListTree;
use kestrel_api::meta;
use kestrel_api::registry::{ResourceDef, Subresource};
use serde_json::{Map, Value, json};

use crate::state::Ctx;

pub(crate) type Path = Vec<String>;

/// The `k:` path element of a keyed list's element: every list map key
/// with its value (or its default), in key order, as upstream writes them.
/// `None` when the list is not keyed or the element has none of its keys.
fn element_key(list: Option<&ListTree>, elem: &Value) -> Option<String> {
    let l = list?.list()?;
    let mut keys: Vec<&String> = l.map_keys()?.iter().collect();
    keys.sort();
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = l.key(elem, k) {
            m.insert(k.clone(), v.clone());
        }
    }
    (!m.is_empty()).then(|| format!("k:{}", Value::Object(m)))
}

/// Whether the list at `node` is keyed, so its elements are owned one by one.
fn keyed(node: Option<&ListTree>) -> bool {
    node.and_then(ListTree::list)
        .and_then(|l| l.map_keys())
        .is_some()
}

/// The leaf field paths set in `v` (FieldsV1 semantics).
fn collect(v: &Value, lists: Option<&ListTree>, prefix: &Path, out: &mut BTreeSet<Path>) {
    let Value::Object(m) = v else {
        out.insert(prefix.clone());
        return;
    };
    for (k, child) in m {
        let node = lists.and_then(|n| n.child(k));
        let mut p = prefix.clone();
        p.push(format!("f:{k}"));
        match child {
            Value::Object(cm) if !cm.is_empty() => collect(child, node, &p, out),
            Value::Array(items) if keyed(node) && !items.is_empty() => {
                for e in items {
                    let Some(key) = element_key(node, e) else {
                        continue;
                    };
                    let mut ep = p.clone();
                    ep.push(key);
                    let mut dot = ep.clone();
                    dot.push(".".into());
                    out.insert(dot);
                    collect(e, node, &ep, out);
                }
            }
            _ => {
                out.insert(p);
            }
        }
    }
}

/// FieldsV1 of everything set in `v`, built in one walk: what
/// `to_fields_v1(&collect(v))` gives, without the path sets (a create owns
/// every field, and this is on every create's path).
fn fields_v1_of(v: &Value, lists: Option<&ListTree>) -> Value {
    let Value::Object(m) = v else {
        return json!({});
    };
    let mut out = Map::new();
    for (k, child) in m {
        out.insert(
            format!("f:{k}"),
            field_v1(child, lists.and_then(|n| n.child(k))),
        );
    }
    Value::Object(out)
}

fn field_v1(child: &Value, node: Option<&ListTree>) -> Value {
    match child {
        Value::Object(cm) if !cm.is_empty() => fields_v1_of(child, node),
        Value::Array(items) if keyed(node) && !items.is_empty() => {
            let mut out = Map::new();
            for e in items {
                let Some(key) = element_key(node, e) else {
                    continue;
                };
                let mut entry = match fields_v1_of(e, node) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                entry.insert(".".into(), json!({}));
                out.insert(key, Value::Object(entry));
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

/// What a manager can own of a new object, as FieldsV1: everything but
/// identity and type (see [`owned_fields`]).
fn owned_fields_v1(obj: &Value, sub: Option<Subresource>, lists: &ListTree) -> Value {
    let mut out = Map::new();
    for (k, child) in obj.as_object().into_iter().flatten() {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "status" if sub != Some(Subresource::Status) => {}
            "metadata" => {
                let mut md = Map::new();
                for (mk, mv) in child.as_object().into_iter().flatten() {
                    if !OWNERLESS_METADATA.contains(&mk.as_str()) {
                        let node = lists.child("metadata").and_then(|n| n.child(mk));
                        md.insert(format!("f:{mk}"), field_v1(mv, node));
                    }
                }
                if !md.is_empty() {
                    out.insert("f:metadata".into(), Value::Object(md));
                }
            }
            _ => {
                out.insert(format!("f:{k}"), field_v1(child, lists.child(k)));
            }
        }
    }
    Value::Object(out)
}

/// Metadata no manager owns.
const OWNERLESS_METADATA: &[&str] = &[
    "name",
    "namespace",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
];

/// Fields a manager can own: everything but identity and type.
pub(crate) fn owned_fields(
    obj: &Value,
    sub: Option<Subresource>,
    lists: &ListTree,
) -> BTreeSet<Path> {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        if sub != Some(Subresource::Status) {
            m.remove("status");
        }
        if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in OWNERLESS_METADATA {
                md.remove(*k);
            }
            if md.is_empty() {
                m.remove("metadata");
            }
        }
    }
    let mut out = BTreeSet::new();
    collect(&o, Some(lists), &Vec::new(), &mut out);
    out
}

fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for seg in p {
            let next = cur.entry(seg.clone()).or_insert_with(|| json!({}));
            if !next.is_object() {
                *next = json!({});
            }
            cur = match next {
                Value::Object(m) => m,
                _ => unreachable!("made an object just above"),
            };
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value, prefix: &Path, out: &mut BTreeSet<Path>) {
    let Some(m) = v.as_object() else { return };
    for (k, child) in m {
        let mut p = prefix.clone();
        p.push(k.clone());
        if child.as_object().is_none_or(Map::is_empty) {
            out.insert(p);
        } else {
            from_fields_v1(child, &p, out);
        }
    }
}

pub(crate) fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = doc;
    for seg in path {
        if seg == "." {
            return Some(cur);
        }
        cur = if let Some(f) = seg.strip_prefix("f:") {
            cur.get(f)?
        } else if let Some(k) = seg.strip_prefix("k:") {
            let want: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur.as_array()?
                .iter()
                .find(|e| want.iter().all(|(wk, wv)| e.get(wk) == Some(wv)))?
        } else {
            return None;
        };
    }
    Some(cur)
}

pub(crate) fn remove_path(doc: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if last == "." {
        // The element itself: remove it from its list.
        if let Some((elem, lparents)) = parents.split_last()
            && let Some(k) = elem.strip_prefix("k:")
            && let Ok(want) = serde_json::from_str::<Map<String, Value>>(k)
            && let Some(Value::Array(items)) = lookup_mut(doc, lparents)
        {
            items.retain(|e| !want.iter().all(|(wk, wv)| e.get(wk) == Some(wv)));
        }
        return;
    }
    if let (Some(f), Some(Value::Object(m))) = (last.strip_prefix("f:"), lookup_mut(doc, parents)) {
        m.remove(f);
    }
}

fn lookup_mut<'a>(doc: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = doc;
    for seg in path {
        cur = if let Some(f) = seg.strip_prefix("f:") {
            cur.get_mut(f)?
        } else if let Some(k) = seg.strip_prefix("k:") {
            let want: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur.as_array_mut()?
                .iter_mut()
                .find(|e| want.iter().all(|(wk, wv)| e.get(wk) == Some(wv)))?
        } else {
            return None;
        };
    }
    Some(cur)
}

pub(crate) fn render(path: &[String]) -> String {
    let mut s = String::new();
    for seg in path {
        if let Some(f) = seg.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = seg.strip_prefix("k:")
            && let Ok(m) = serde_json::from_str::<Map<String, Value>>(k)
        {
            let parts: Vec<String> = m.iter().map(|(a, b)| format!("{a}={b}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        }
    }
    s
}

/// One `managedFields` entry, with its field set decoded.
pub(crate) struct ManagerEntry {
    /// The entry as stored.
    pub(crate) raw: Value,
    /// Its `manager`.
    pub(crate) manager: String,
    /// Its `fieldsV1`, as paths.
    pub(crate) fields: BTreeSet<Path>,
}

pub(crate) fn entries(cur: &Value) -> Vec<ManagerEntry> {
    cur.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let mut fields = BTreeSet::new();
            if let Some(f) = e.get("fieldsV1") {
                from_fields_v1(f, &Vec::new(), &mut fields);
            }
            ManagerEntry {
                raw: e.clone(),
                manager: e
                    .get("manager")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                fields,
            }
        })
        .collect()
}

/// The entries that still own fields, with their field sets written back.
pub(crate) fn kept(entries: Vec<ManagerEntry>) -> Vec<Value> {
    entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|mut e| {
            e.raw["fieldsV1"] = to_fields_v1(&e.fields);
            e.raw
        })
        .collect()
}

pub(crate) fn entry_json(
    manager: &str,
    op: &str,
    api_version: &str,
    sub: Option<Subresource>,
    fields: &BTreeSet<Path>,
) -> Value {
    let mut e = json!({
        "manager": manager,
        "operation": op,
        "apiVersion": api_version,
        "time": meta::now_rfc3339(),
        "fieldsType": "FieldsV1",
    });
    // Moved in, not through `json!`, which would serialize the set again.
    e["fieldsV1"] = to_fields_v1(fields);
    if sub == Some(Subresource::Status) {
        e["subresource"] = json!("status");
    }
    e
}

/// Who is writing, as upstream's field manager names them: the
/// `fieldManager` parameter, else the client's user agent up to its first
/// `/` (`kubectl/v1.35.0 (linux/amd64) …` is `kubectl`).
pub fn manager_of(ctx: &Ctx) -> String {
    if let Some(m) = ctx.q("fieldManager").filter(|m| !m.is_empty()) {
        return m.to_owned();
    }
    ctx.header(hyper::header::USER_AGENT)
        .and_then(|ua| ua.split('/').next())
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

/// Record a create or update in `new`'s `metadata.managedFields`, as
/// upstream's field manager does for every non-apply write: the writer's
/// `Update` entry owns the fields it set or changed, other managers lose
/// those fields, and fields that are gone leave every entry.
pub fn record_update(
    manager: &str,
    def: &ResourceDef,
    sub: Option<Subresource>,
    old: Option<&Value>,
    new: &mut Value,
) {
    let api_version = &def.api_version();
    let lists = def.lists();
    if old.is_none() {
        // A create: the writer owns every field it set.
        let fields = owned_fields_v1(new, sub, lists);
        let empty = fields.as_object().is_none_or(Map::is_empty);
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            if empty {
                m.remove("managedFields");
            } else {
                let mut e = entry_json(manager, "Update", api_version, sub, &BTreeSet::new());
                e["fieldsV1"] = fields;
                // Not `json!([e])`: that serializes `e` into a new value.
                m.insert("managedFields".into(), Value::Array(vec![e]));
            }
        }
        return;
    }
    let now = owned_fields(new, sub, lists);
    let changed: BTreeSet<Path> = match old {
        None => now.clone(),
        Some(old) => now
            .iter()
            // A keyed element's `.` is its existence: owned by the writer
            // that added it, not by every writer that changes a field in it.
            .filter(|p| match p.last().map(String::as_str) {
                Some(".") => lookup(old, p).is_none(),
                _ => lookup(old, p) != lookup(new, p),
            })
            .cloned()
            .collect(),
    };
    if let Some(old) = old
        && changed.is_empty()
    {
        // A write that changes nothing keeps the managers as they were, so
        // a no-op stays a no-op.
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            match old.pointer("/metadata/managedFields") {
                Some(mf) => m.insert("managedFields".into(), mf.clone()),
                None => m.remove("managedFields"),
            };
        }
        return;
    }
    let mut list = old.map(entries).unwrap_or_default();
    let subresource = |e: &ManagerEntry| {
        e.raw
            .get("subresource")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let sub_name = (sub == Some(Subresource::Status)).then(|| "status".to_owned());
    let mine = |e: &ManagerEntry| {
        e.manager == manager
            && e.raw.get("operation").and_then(Value::as_str) == Some("Update")
            && e.raw.get("apiVersion").and_then(Value::as_str) == Some(api_version)
            && subresource(e) == sub_name
    };
    let mut fields: BTreeSet<Path> = list
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    list.retain(|e| !mine(e));
    fields.extend(changed.iter().cloned());
    // Only the status subresource's fields are owned through /status, and
    // only the rest through the main resource.
    let in_scope = |p: &Path| {
        (p.first().map(String::as_str) == Some("f:status")) == (sub == Some(Subresource::Status))
    };
    let full = owned_fields(new, Some(Subresource::Status), lists);
    for e in &mut list {
        e.fields
            .retain(|p| !changed.contains(p) && (full.contains(p) || !in_scope(p)));
    }
    fields.retain(|p| now.contains(p));
    let mut mf = kept(list);
    if !fields.is_empty() {
        mf.push(entry_json(manager, "Update", api_version, sub, &fields));
    }
    if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        if mf.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(mf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_owns_what_the_path_sets_say() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "d", "uid": "u", "labels": {"a": "b"}, "annotations": {}},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}], "env": [{"name": "E", "value": "v"}]}],
                     "volumes": [], "nodeSelector": {"k": "v"}},
            "status": {"phase": "Pending"}});
        let lists = def("", "Pod").lists();
        for sub in [None, Some(Subresource::Status)] {
            assert_eq!(
                owned_fields_v1(&pod, sub, lists),
                to_fields_v1(&owned_fields(&pod, sub, lists)),
                "{sub:?}"
            );
        }
        // A port is keyed by all its list map keys, the defaulted protocol
        // included, as upstream.
        let f = owned_fields_v1(&pod, None, lists);
        let c = &f["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
        assert!(
            c["f:ports"]
                .get("k:{\"containerPort\":80,\"protocol\":\"TCP\"}")
                .is_some(),
            "{c}"
        );
        assert!(c["f:env"].get("k:{\"name\":\"E\"}").is_some(), "{c}");
    }

    #[test]
    fn an_update_owns_the_elements_it_adds_not_those_it_changes() {
        let d = def("", "Pod");
        let old = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "1"}]}]}});
        let mut old_rec = old.clone();
        record_update("creator", d, None, None, &mut old_rec);
        let mut new = old_rec.clone();
        new["spec"]["containers"][0]["env"] =
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]);
        record_update("patcher", d, None, Some(&old_rec), &mut new);
        let mf = new["metadata"]["managedFields"]
            .as_array()
            .expect("entries")
            .clone();
        let patcher = mf
            .iter()
            .find(|e| e["manager"] == "patcher")
            .expect("patcher");
        let c = &patcher["fieldsV1"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
        assert!(c.get(".").is_none(), "{c}");
        assert!(c["f:env"]["k:{\"name\":\"B\"}"].get(".").is_some(), "{c}");
        let creator = mf
            .iter()
            .find(|e| e["manager"] == "creator")
            .expect("creator");
        assert!(
            creator["fieldsV1"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]
                .get(".")
                .is_some()
        );
    }

    fn def(group: &str, kind: &str) -> &'static ResourceDef {
        kestrel_api::registry::RESOURCES
            .iter()
            .find(|d| d.group == group && d.kind == kind)
            .expect("kind")
    }

    #[test]
    fn fields_round_trip_and_render() {
        let obj = json!({"metadata": {"name": "x", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
        let f = owned_fields(&obj, None, def("apps", "Deployment").lists());
        let v1 = to_fields_v1(&f);
        assert_eq!(v1["f:metadata"]["f:labels"]["f:app"], json!({}));
        assert!(v1["f:metadata"].get("f:name").is_none());
        assert_eq!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"],
            json!({})
        );
        let mut back = BTreeSet::new();
        from_fields_v1(&v1, &Vec::new(), &mut back);
        assert_eq!(back, f);
        let p: Path = vec![
            "f:spec".into(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"c\"}".into(),
            "f:image".into(),
        ];
        assert_eq!(
            render(&p),
            ".spec.template.spec.containers[name=\"c\"].image"
        );
        assert_eq!(lookup(&obj, &p), Some(&json!("nginx")));
        let mut doc = obj.clone();
        remove_path(&mut doc, &p);
        assert!(
            doc.pointer("/spec/template/spec/containers/0/image")
                .is_none()
        );
    }
}
