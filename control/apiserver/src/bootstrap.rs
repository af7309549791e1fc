//! What a fresh (or restarted) server puts in place before serving: the
//! system namespaces, the `kubernetes` Service and Endpoints, allocator
//! state rebuilt from stored Services.

use std::sync::Arc;

use kestrel_api::ApiError;
use kestrel_api::registry;
use serde_json::{Value, json};

use crate::handlers::{Target, create_object, update_with};
use crate::server::AppState;
use crate::{Error, admission};

fn target(plural: &str, ns: Option<&str>, name: &str) -> Result<Target, Error> {
    let def = registry::lookup("", "v1", plural)
        .ok_or_else(|| Error::Config(format!("{plural} missing from the registry")))?;
    Ok(Target {
        def,
        ns: ns.map(str::to_owned),
        name: Some(name.to_owned()),
    })
}

async fn ensure(state: &Arc<AppState>, t: &Target, obj: Value) -> Result<(), Error> {
    match create_object(state, None, t, obj, false).await {
        Ok(_) | Err(ApiError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(Error::Bootstrap(e.to_string())),
    }
}

/// Run the bootstrap steps.
pub async fn run(state: &Arc<AppState>) -> Result<(), Error> {
    // Allocations first, so the kubernetes Service's IP cannot collide.
    if let Some(svc) = registry::lookup("", "v1", "services") {
        let (items, _) = state.cache.list(&svc.key_prefix());
        for e in items {
            admission::reclaim_service(state, &e.value);
        }
    }
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let t = target("namespaces", None, ns)?;
        ensure(state, &t, json!({"metadata": {"name": ns}})).await?;
    }
    let ip = state.alloc.first_service_ip().to_string();
    let port = state.local_addr.port();
    let t = target("services", Some("default"), "kubernetes")?;
    ensure(
        state,
        &t,
        json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
        }),
    )
    .await?;
    let addr = state
        .config
        .advertise_addresses
        .first()
        .copied()
        .unwrap_or(state.local_addr.ip())
        .to_string();
    let subsets = json!([{"addresses": [{"ip": addr}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]);
    let t = target("endpoints", Some("default"), "kubernetes")?;
    ensure(
        state,
        &t,
        json!({"metadata": {"name": "kubernetes"}, "subsets": subsets}),
    )
    .await?;
    // The port may differ from the last run (tests bind port 0).
    update_with(state, None, &t, None, false, |cur| {
        let mut n = cur.clone();
        n["subsets"] = subsets.clone();
        Ok((n, None))
    })
    .await
    .map_err(|e| Error::Bootstrap(e.to_string()))?;
    let st = target("services", Some("default"), "kubernetes")?;
    update_with(state, None, &st, None, false, |cur| {
        let mut n = cur.clone();
        n["spec"]["ports"] =
            json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]);
        Ok((n, None))
    })
    .await
    .map_err(|e| Error::Bootstrap(e.to_string()))?;

    Ok(())
}
