//! The deprecated `v1` ComponentStatus, read on each request as upstream
//! computes it rather than stored: the scheduler, the controller manager
//! and the store. Upstream probes the first two's `/healthz` on fixed local
//! ports; Kestrel's run as API clients anywhere (inside `kestrel server` or
//! alone), so their health is what they prove through the API: a Lease in
//! `kube-system` held and renewed within its duration. The store is healthy
//! when it answers a revision read in time.

use std::sync::Arc;
use std::time::Duration;

use kestrel_api::registry;
use serde_json::{Value, json};

use crate::state::AppState;

/// How long the store may take to answer.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// upstream's deprecation warning for the kind.
pub const WARNING: &str = "v1 ComponentStatus is deprecated in v1.19+";

/// Every component's status, in upstream's order.
pub async fn all(state: &Arc<AppState>) -> Vec<Value> {
    let now = jiff::Timestamp::now();
    let mut out = vec![
        lease_health(state, "scheduler", "kube-scheduler", now),
        lease_health(state, "controller-manager", "kube-controller-manager", now),
    ];
    let store = state.store.backend_name();
    let health = match tokio::time::timeout(STORE_TIMEOUT, state.store.current_revision()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{store}: {e}")),
        Err(_) => Err(format!(
            "{store}: no answer within {}s",
            STORE_TIMEOUT.as_secs()
        )),
    };
    out.push(status(&format!("{store}-0"), health));
    out
}

/// Healthy when the component's leader-election Lease is held and was
/// renewed within its lease duration.
fn lease_health(state: &AppState, name: &str, lease: &str, now: jiff::Timestamp) -> Value {
    let Some(def) = registry::lookup("coordination.k8s.io", "v1", "leases") else {
        return status(name, Err("leases are not served".to_owned()));
    };
    let Some(entry) = state.cache.get(&def.key(Some("kube-system"), lease)) else {
        return status(
            name,
            Err(format!(
                "no kube-system/{lease} Lease: the component has not started"
            )),
        );
    };
    let spec = entry.value.get("spec");
    let field = |k: &str| spec.and_then(|s| s.get(k));
    let holder = field("holderIdentity")
        .and_then(Value::as_str)
        .unwrap_or("");
    let duration = field("leaseDurationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let renewed = field("renewTime")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let health = match renewed {
        _ if holder.is_empty() => Err(format!(
            "the kube-system/{lease} Lease has no holder: no instance is leading"
        )),
        Some(r) if now.duration_since(r).as_secs() <= duration => Ok(()),
        Some(r) => Err(format!(
            "the kube-system/{lease} Lease held by {holder} was last renewed {}s ago (lease duration {duration}s)",
            now.duration_since(r).as_secs()
        )),
        None => Err(format!(
            "the kube-system/{lease} Lease held by {holder} has no renewTime"
        )),
    };
    status(name, health)
}

fn status(name: &str, health: Result<(), String>) -> Value {
    let condition = match health {
        Ok(()) => json!({"type": "Healthy", "status": "True", "message": "ok"}),
        Err(e) => json!({"type": "Healthy", "status": "False", "error": e}),
    };
    json!({
        "kind": "ComponentStatus",
        "apiVersion": "v1",
        "metadata": {"name": name},
        "conditions": [condition],
    })
}
