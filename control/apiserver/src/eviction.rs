//! `pods/eviction`: a delete that a PodDisruptionBudget may refuse, as
//! upstream's eviction REST does. A pod that is not running (pending,
//! finished or already terminating) goes at once. Otherwise the one budget
//! selecting it must allow a disruption: the eviction takes one
//! (`status.disruptionsAllowed` down by one, the pod recorded in
//! `status.disruptedPods`, written with compare-and-swap so concurrent
//! evictions cannot both spend the last one) and then deletes the pod; a
//! budget with none left answers 429 with upstream's message and a
//! `DisruptionBudget` cause, which `kubectl drain` retries on.

use std::sync::Arc;

use axum::body::Body;
use hyper::{Response, StatusCode};
use kestrel_api::labels::Selector;
use kestrel_api::registry::{self, Subresource};
use kestrel_api::{ApiError, meta};
use serde_json::{Value, json};

use crate::state::{AppState, Ctx, Target, json_bytes};
use crate::write::{DeleteOpts, delete_one, str_at, update_with};

/// Upstream's bound on evictions the controller has not yet confirmed.
const MAX_DISRUPTED_PODS: usize = 2000;

/// Handle `POST .../pods/{name}/eviction`.
pub async fn evict(
    state: &Arc<AppState>,
    ctx: &Ctx,
    t: &Target,
    dry: bool,
) -> Result<Response<Body>, ApiError> {
    let name = t.name.clone().unwrap_or_default();
    let mut opts = DeleteOpts {
        requester: Some((ctx.user.clone(), ctx.warnings.clone())),
        ..DeleteOpts::default()
    };
    if !ctx.body.iter().all(u8::is_ascii_whitespace) {
        let b = crate::body::decode_object(ctx)?;
        if let Some(n) = str_at(&b, "/metadata/name")
            && n != name
        {
            return Err(ApiError::BadRequest(format!(
                "name in URL does not match name in Eviction object: {name:?} != {n:?}"
            )));
        }
        opts.grace = b
            .pointer("/deleteOptions/gracePeriodSeconds")
            .and_then(Value::as_i64);
        opts.uid = str_at(&b, "/deleteOptions/preconditions/uid").map(str::to_owned);
    }
    let pod = state.cache.get(&t.key()).ok_or_else(|| t.not_found())?;
    let pod = &pod.value;
    if !running(pod) {
        return finish(state, t, &opts, dry).await;
    }
    let budgets = budgets_of(state, pod);
    let budget = match budgets.as_slice() {
        [] => return finish(state, t, &opts, dry).await,
        [one] => one,
        _ => {
            return Err(ApiError::Internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".to_owned(),
            ));
        }
    };
    let budget_name = str_at(budget, "/metadata/name").unwrap_or("").to_owned();
    if !ready(pod) && unhealthy_may_go(budget) {
        return finish(state, t, &opts, dry).await;
    }
    let Some(pdb_def) = registry::lookup("policy", "v1", "poddisruptionbudgets") else {
        return finish(state, t, &opts, dry).await;
    };
    let pdb = Target {
        def: pdb_def,
        ns: t.ns.clone(),
        name: Some(budget_name.clone()),
    };
    update_with(state, None, &pdb, Some(Subresource::Status), dry, |cur| {
        take_disruption(cur, &budget_name, &name).map(|v| (v, None))
    })
    .await?;
    finish(state, t, &opts, dry).await
}

async fn finish(
    state: &Arc<AppState>,
    t: &Target,
    opts: &DeleteOpts,
    dry: bool,
) -> Result<Response<Body>, ApiError> {
    delete_one(state, t, opts, dry).await?;
    Ok(json_bytes(
        StatusCode::CREATED,
        kestrel_api::status::success_status(None),
        "application/json",
    ))
}

/// Upstream ignores budgets for pods that cannot be disrupted further:
/// pending, finished, or already being deleted.
fn running(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_none()
        && !matches!(
            str_at(pod, "/status/phase"),
            Some("Pending" | "Succeeded" | "Failed") | None
        )
}

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| str_at(c, "/type") == Some("Ready") && str_at(c, "/status") == Some("True"))
}

/// Whether a pod that is not Ready may be evicted without spending a
/// disruption: always with `AlwaysAllow`; with `IfHealthyBudget` (the
/// default) while the budget is met.
fn unhealthy_may_go(budget: &Value) -> bool {
    let n = |p: &str| budget.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    match str_at(budget, "/spec/unhealthyPodEvictionPolicy") {
        Some("AlwaysAllow") => true,
        _ => {
            let desired = n("/status/desiredHealthy");
            desired > 0 && n("/status/currentHealthy") >= desired
        }
    }
}

/// The budgets in the pod's namespace whose selector selects it.
fn budgets_of(state: &AppState, pod: &Value) -> Vec<Value> {
    let Some(def) = registry::lookup("policy", "v1", "poddisruptionbudgets") else {
        return Vec::new();
    };
    let ns = str_at(pod, "/metadata/namespace");
    let labels = pod.pointer("/metadata/labels");
    let (entries, _) = state.cache.list(&def.key_prefix_ns(ns));
    entries
        .iter()
        .filter(|e| {
            e.value
                .pointer("/spec/selector")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .and_then(|ls| Selector::from_label_selector(&ls).ok())
                // An empty selector selects no pod in policy/v1's eviction.
                .is_some_and(|sel| !sel.is_empty() && sel.matches_json(labels))
        })
        .map(|e| (*e.value).clone())
        .collect()
}

/// The budget with one disruption spent on `pod`, or upstream's refusal.
fn take_disruption(cur: &Value, budget: &str, pod: &str) -> Result<Value, ApiError> {
    let n = |p: &str| cur.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let refuse = |message: String, cause: String| ApiError::TooManyRequests {
        message,
        causes: vec![("DisruptionBudget".to_owned(), cause)],
    };
    if n("/status/observedGeneration") < n("/metadata/generation") {
        let m = format!("The disruption budget {budget} is still being processed by the server.");
        return Err(refuse(m.clone(), m));
    }
    let allowed = n("/status/disruptionsAllowed");
    if allowed < 0 {
        return Err(ApiError::Forbidden(
            "pdb disruptions allowed is negative".to_owned(),
        ));
    }
    let disrupted = cur
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object)
        .map_or(0, serde_json::Map::len);
    if disrupted > MAX_DISRUPTED_PODS {
        return Err(ApiError::Forbidden(
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller"
                .to_owned(),
        ));
    }
    if allowed == 0 {
        return Err(refuse(
            "Cannot evict pod as it would violate the pod's disruption budget.".to_owned(),
            format!(
                "The disruption budget {budget} needs {} healthy pods and has {} currently",
                n("/status/desiredHealthy"),
                n("/status/currentHealthy")
            ),
        ));
    }
    let mut out = cur.clone();
    out["status"]["disruptionsAllowed"] = json!(allowed - 1);
    if !out["status"]["disruptedPods"].is_object() {
        out["status"]["disruptedPods"] = json!({});
    }
    out["status"]["disruptedPods"][pod] = json!(meta::now_rfc3339());
    Ok(out)
}
