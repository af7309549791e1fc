//! ResourceQuota admission: a create that would take a namespace past a
//! quota's `spec.hard` is refused with upstream's message; one that fits is
//! charged to the quota's `status.used` (compare-and-swap, retried) before
//! it is stored, so concurrent creates cannot overshoot together. The quota
//! controller recomputes `status.used` from what exists, which also returns
//! what a create that failed after charging took.

use std::collections::BTreeMap;

use kestrel_api::ApiError;
use kestrel_api::quantity::{format_milli, milli};
use kestrel_api::quota::{missing_compute, usage};
use kestrel_api::registry::{self, Subresource};
use serde_json::{Value, json};

use super::chain::{Attributes, Operation};
use crate::state::AppState;
use crate::state::Target;
use crate::write::update_with;

fn hard_of(q: &Value, at: &str) -> BTreeMap<String, String> {
    q.pointer(at)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

fn list(items: &[(String, i64)]) -> String {
    items
        .iter()
        .map(|(r, v)| format!("{r}={}", format_milli(*v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Check and charge a create against every quota of its namespace.
pub async fn admit(
    state: &std::sync::Arc<AppState>,
    a: &Attributes<'_>,
    obj: &Value,
    _old: Option<&Value>,
) -> Result<(), ApiError> {
    if a.operation != Operation::Create || a.subresource.is_some() || a.namespace().is_empty() {
        return Ok(());
    }
    let def = a.target.def;
    let delta = usage(def.group, def.plural, obj);
    if delta.is_empty() {
        return Ok(());
    }
    let Some(rq) = registry::lookup("", "v1", "resourcequotas") else {
        return Ok(());
    };
    let (quotas, _) = state.cache.list(&rq.key_prefix_ns(Some(a.namespace())));
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let resource = if def.group.is_empty() {
        def.plural.to_owned()
    } else {
        format!("{}.{}", def.plural, def.group)
    };
    let forbidden =
        |why: String| ApiError::Forbidden(format!("{resource} \"{name}\" is forbidden: {why}"));
    for q in &quotas {
        let qname = q
            .value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let hard = hard_of(&q.value, "/spec/hard");
        if def.group.is_empty() && def.plural == "pods" {
            let missing = missing_compute(&hard, obj);
            if !missing.is_empty() {
                return Err(forbidden(format!(
                    "failed quota: {qname}: must specify {}",
                    missing.join(",")
                )));
            }
        }
        if !hard.keys().any(|r| delta.contains_key(r)) {
            continue;
        }
        // Charge with compare-and-swap; the check reads the quota it writes.
        let t = Target {
            def: rq,
            ns: Some(a.namespace().to_owned()),
            name: Some(qname.clone()),
        };
        if a.dry_run {
            check(&q.value, &qname, &hard, &delta).map_err(forbidden)?;
            continue;
        }
        let charged = Box::pin(update_with(
            state,
            None,
            &t,
            Some(Subresource::Status),
            false,
            |cur| {
                let hard = hard_of(cur, "/spec/hard");
                check(cur, &qname, &hard, &delta).map_err(forbidden)?;
                let mut next = cur.clone();
                let mut used = hard_of(cur, "/status/used");
                for (r, d) in &delta {
                    if hard.contains_key(r) {
                        let have = used.get(r).and_then(|s| milli(s).ok()).unwrap_or(0);
                        used.insert(r.clone(), format_milli(have + d));
                    }
                }
                next["status"]["used"] = json!(used);
                next["status"]["hard"] = json!(hard);
                Ok((next, None))
            },
        ))
        .await;
        match charged {
            Ok(_) => {}
            Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `delta` fits `hard` on top of the quota's `status.used`.
fn check(
    quota: &Value,
    qname: &str,
    hard: &BTreeMap<String, String>,
    delta: &BTreeMap<String, i64>,
) -> Result<(), String> {
    let used = hard_of(quota, "/status/used");
    let mut requested = Vec::new();
    let mut using = Vec::new();
    let mut limited = Vec::new();
    for (r, h) in hard {
        let Some(d) = delta.get(r) else { continue };
        let Some(u) = used.get(r) else {
            // The controller has not computed this quota yet.
            return Err(format!("status unknown for quota: {qname}, resource: {r}"));
        };
        let (Ok(h), Ok(u)) = (milli(h), milli(u)) else {
            continue;
        };
        if u + d > h {
            requested.push((r.clone(), *d));
            using.push((r.clone(), u));
            limited.push((r.clone(), h));
        }
    }
    if requested.is_empty() {
        return Ok(());
    }
    Err(format!(
        "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
        list(&requested),
        list(&using),
        list(&limited)
    ))
}
