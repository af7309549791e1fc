//! Namespace deletion: the namespace turns Terminating, everything in it is
//! deleted, and the namespace itself goes once it is empty.

use std::sync::Arc;
use std::time::Duration;

use kestrel_api::registry::{self, RESOURCES};
use kestrel_api::{ApiError, meta};
use serde_json::{Value, json};

use crate::cache::Entry;
use crate::handlers::{DeleteOpts, Target, delete_one};
use crate::server::AppState;

/// Mark the namespace Terminating and start emptying it.
pub async fn begin_delete(
    state: &Arc<AppState>,
    t: &Target,
    cur: &Entry,
    dry: bool,
) -> Result<Value, ApiError> {
    let name = t.name.clone().unwrap_or_default();
    if matches!(name.as_str(), "default" | "kube-system" | "kube-public") {
        return Err(ApiError::Forbidden(format!(
            "namespaces {name:?} is forbidden: this namespace may not be deleted"
        )));
    }
    if cur.value.pointer("/metadata/deletionTimestamp").is_some() {
        return Ok((*cur.value).clone());
    }
    let mut n = (*cur.value).clone();
    n["metadata"]["deletionTimestamp"] = json!(meta::now_rfc3339());
    n["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    n["status"] = json!({"phase": "Terminating"});
    if dry {
        return Ok(n);
    }
    let mut bytes = n.clone();
    if let Some(m) = bytes.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    let rev = state
        .store
        .update(
            &t.key(),
            serde_json::to_vec(&bytes).unwrap_or_default().into(),
            cur.mod_revision,
        )
        .await
        .map_err(|e| match e {
            kestrel_store::Error::Conflict { .. } => ApiError::stale("", "namespaces", &name),
            e => ApiError::Internal(e.to_string()),
        })?;
    crate::cache::set_resource_version(&mut n, rev);
    let _ = state.cache.wait_for(rev, Duration::from_secs(10)).await;
    spawn_cleanup(state.clone(), name);
    Ok(n)
}

/// Delete the namespace's contents, then the namespace, retrying until done.
pub fn spawn_cleanup(state: Arc<AppState>, ns: String) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            match cleanup_once(&state, &ns).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "namespace cleanup failed; retrying")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
}

/// One pass. `Ok(true)` once the namespace itself is gone.
async fn cleanup_once(state: &Arc<AppState>, ns: &str) -> Result<bool, ApiError> {
    let mut remaining = 0usize;
    for def in RESOURCES.iter().filter(|d| d.namespaced) {
        let (entries, _) = state.cache.list(&def.key_prefix_ns(Some(ns)));
        for e in entries {
            remaining += 1;
            let t = Target {
                def,
                ns: Some(ns.to_owned()),
                name: e
                    .value
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            };
            // Pods go without grace: nothing will run in a namespace being deleted.
            let opts = DeleteOpts {
                grace: Some(0),
                ..Default::default()
            };
            match delete_one(state, &t, &opts, false).await {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if remaining > 0 {
        // Objects with finalizers may still be around; look again.
        let left = RESOURCES
            .iter()
            .filter(|d| d.namespaced)
            .any(|d| !state.cache.keys(&d.key_prefix_ns(Some(ns))).is_empty());
        if left {
            return Ok(false);
        }
    }
    let Some(def) = registry::lookup("", "v1", "namespaces") else {
        return Ok(true);
    };
    let key = def.key(None, ns);
    let Some(cur) = state.cache.get(&key) else {
        return Ok(true);
    };
    match state.store.delete(&key, Some(cur.mod_revision)).await {
        Ok(d) => {
            let _ = state
                .cache
                .wait_for(d.revision, Duration::from_secs(10))
                .await;
            tracing::info!(namespace = %ns, "namespace deleted");
            Ok(true)
        }
        Err(kestrel_store::Error::NotFound { .. }) => Ok(true),
        Err(kestrel_store::Error::Conflict { .. }) => Ok(false),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}
