//! LimitRanger: the LimitRanges of a pod's namespace default its
//! containers' requests and limits (`type: Container`, `defaultRequest` and
//! `default`) and bound them (`min`, `max`, `maxLimitRequestRatio`, per
//! Container and, summed, per Pod), with upstream's messages.

use kestrel_api::ApiError;
use kestrel_api::quantity::milli;
use kestrel_api::registry;
use serde_json::{Map, Value, json};

use super::chain::Attributes;
use crate::state::AppState;

const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// The `spec.limits` items of every LimitRange in `ns`.
fn limit_items(state: &AppState, ns: &str) -> Vec<Value> {
    let Some(def) = registry::lookup("", "v1", "limitranges") else {
        return Vec::new();
    };
    let (items, _) = state.cache.list(&def.key_prefix_ns(Some(ns)));
    items
        .iter()
        .flat_map(|e| {
            e.value
                .pointer("/spec/limits")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

fn containers_mut(pod: &mut Value) -> Vec<&mut Map<String, Value>> {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in spec.iter_mut() {
        if k == "containers" || k == "initContainers" {
            for c in v.as_array_mut().into_iter().flatten() {
                if let Some(o) = c.as_object_mut() {
                    out.push(o);
                }
            }
        }
    }
    out
}

/// Fill missing requests and limits from `type: Container` defaults.
pub fn default_pod(state: &AppState, a: &Attributes<'_>, pod: &mut Value) -> Result<(), ApiError> {
    let items: Vec<Value> = limit_items(state, a.namespace())
        .into_iter()
        .filter(|l| l.get("type").and_then(Value::as_str) == Some("Container"))
        .collect();
    if items.is_empty() {
        return Ok(());
    }
    let mut notes: Vec<String> = Vec::new();
    for c in containers_mut(pod) {
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let res = c.entry("resources").or_insert_with(|| json!({}));
        let Some(res) = res.as_object_mut() else {
            continue;
        };
        let set = |field: &str, from: &str, res: &mut Map<String, Value>| -> Vec<String> {
            let mut names = Vec::new();
            for l in &items {
                for (r, q) in l.get(from).and_then(Value::as_object).into_iter().flatten() {
                    let m = res.entry(field).or_insert_with(|| json!({}));
                    if let Some(m) = m.as_object_mut()
                        && !m.contains_key(r)
                    {
                        m.insert(r.clone(), q.clone());
                        names.push(r.clone());
                    }
                }
            }
            names
        };
        let limits = set("limits", "default", res);
        // A request left unset defaults to the limit (API defaulting), else
        // to defaultRequest.
        let requests = set("requests", "defaultRequest", res);
        if !requests.is_empty() {
            notes.push(format!(
                "{} request for container {name}",
                requests.join(", ")
            ));
        }
        if !limits.is_empty() {
            notes.push(format!("{} limit for container {name}", limits.join(", ")));
        }
    }
    if !notes.is_empty() {
        let meta = pod
            .as_object_mut()
            .map(|o| o.entry("metadata").or_insert_with(|| json!({})));
        if let Some(Value::Object(m)) = meta {
            let ann = m.entry("annotations").or_insert_with(|| json!({}));
            if let Some(ann) = ann.as_object_mut() {
                ann.insert(
                    ANNOTATION.into(),
                    json!(format!("LimitRanger plugin set: {}", notes.join("; "))),
                );
            }
        }
    }
    Ok(())
}

fn q(v: &Value, ptr: &str, r: &str) -> Option<(i64, String)> {
    let s = v.pointer(ptr)?.get(r)?.as_str()?.to_owned();
    Some((milli(&s).ok()?, s))
}

/// Check min, max and maxLimitRequestRatio for one subject (a container, or
/// the pod's sums).
fn check(
    kind: &str,
    item: &Value,
    requests: &Map<String, Value>,
    limits: &Map<String, Value>,
    errs: &mut Vec<String>,
) {
    let get = |m: &Map<String, Value>, r: &str| {
        m.get(r)
            .and_then(Value::as_str)
            .and_then(|s| milli(s).ok().map(|v| (v, s.to_owned())))
    };
    for (r, min) in item
        .get("min")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Some(min_s) = min.as_str() else { continue };
        let Ok(min_v) = milli(min_s) else { continue };
        match get(requests, r) {
            Some((v, s)) if v < min_v => {
                errs.push(format!(
                    "minimum {r} usage per {kind} is {min_s}, but request is {s}"
                ));
            }
            None => errs.push(format!(
                "minimum {r} usage per {kind} is {min_s}.  No request is specified"
            )),
            _ => {}
        }
    }
    for (r, max) in item
        .get("max")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Some(max_s) = max.as_str() else { continue };
        let Ok(max_v) = milli(max_s) else { continue };
        match get(limits, r) {
            Some((v, s)) if v > max_v => {
                errs.push(format!(
                    "maximum {r} usage per {kind} is {max_s}, but limit is {s}"
                ));
            }
            None => errs.push(format!(
                "maximum {r} usage per {kind} is {max_s}.  No limit is specified"
            )),
            _ => {}
        }
    }
    for (r, ratio) in item
        .get("maxLimitRequestRatio")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Some(ratio_s) = ratio.as_str() else {
            continue;
        };
        let Ok(ratio_v) = milli(ratio_s) else {
            continue;
        };
        if let (Some((l, _)), Some((rq, _))) = (get(limits, r), get(requests, r))
            && rq > 0
        {
            let actual = l as f64 / rq as f64;
            if actual * 1000.0 > ratio_v as f64 {
                errs.push(format!(
                    "{r} max limit to request ratio per {kind} is {ratio_s}, but provided ratio is {actual:.6}"
                ));
            }
        }
    }
}

fn obj(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

/// Refuse a pod outside its namespace's LimitRanges.
pub fn validate_pod(state: &AppState, a: &Attributes<'_>, pod: &Value) -> Result<(), ApiError> {
    let items = limit_items(state, a.namespace());
    if items.is_empty() {
        return Ok(());
    }
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut errs = Vec::new();
    for item in &items {
        match item.get("type").and_then(Value::as_str) {
            Some("Container") => {
                for c in &containers {
                    check(
                        "Container",
                        item,
                        &obj(c.pointer("/resources/requests")),
                        &obj(c.pointer("/resources/limits")),
                        &mut errs,
                    );
                }
            }
            Some("Pod") => {
                let mut sums: [Map<String, Value>; 2] = Default::default();
                for (i, field) in ["/resources/requests", "/resources/limits"]
                    .iter()
                    .enumerate()
                {
                    let mut totals: std::collections::BTreeMap<String, i64> = Default::default();
                    for c in containers.iter().filter(|c| {
                        // Init containers run one at a time; regular ones together.
                        pod.pointer("/spec/containers")
                            .and_then(Value::as_array)
                            .is_some_and(|cs| cs.iter().any(|x| std::ptr::eq(x, **c)))
                    }) {
                        for (r, _) in obj(c.pointer(field)) {
                            if let Some((v, _)) = q(c, field, &r) {
                                *totals.entry(r).or_default() += v;
                            }
                        }
                    }
                    for (r, v) in totals {
                        sums[i].insert(r, json!(kestrel_api::quantity::format_milli(v)));
                    }
                }
                check("Pod", item, &sums[0], &sums[1], &mut errs);
            }
            _ => {}
        }
    }
    if errs.is_empty() {
        return Ok(());
    }
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Err(ApiError::Forbidden(format!(
        "pods \"{name}\" is forbidden: [{}]",
        errs.join(", ")
    )))
}
