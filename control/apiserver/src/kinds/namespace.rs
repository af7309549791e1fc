//! Namespace deletion, the API server's part: the namespace turns
//! Terminating (and refuses new content). Emptying it is the namespace
//! controller's job (kestrel-controllers), which then removes the
//! `kubernetes` finalizer through `namespaces/{name}/finalize`; the update
//! that leaves no finalizer deletes the namespace. A namespace without
//! finalizers goes at once.

use std::sync::Arc;
use std::time::Duration;

use kestrel_api::{ApiError, meta};
use serde_json::{Value, json};

use crate::cache::Entry;
use crate::state::AppState;
use crate::state::Target;

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
    let no_finalizers = ["/spec/finalizers", "/metadata/finalizers"]
        .iter()
        .all(|p| {
            cur.value
                .pointer(p)
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
        });
    if no_finalizers {
        if dry {
            return Ok((*cur.value).clone());
        }
        return match state.store.delete(&t.key(), Some(cur.mod_revision)).await {
            Ok(d) => {
                let _ = state
                    .cache
                    .wait_for(d.revision, Duration::from_secs(10))
                    .await;
                let mut last = (*cur.value).clone();
                crate::cache::set_resource_version(&mut last, d.revision);
                Ok(last)
            }
            Err(kestrel_store::Error::Conflict { .. }) => {
                Err(ApiError::stale("", "namespaces", &name))
            }
            Err(e) => Err(ApiError::Internal(e.to_string())),
        };
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
    Ok(n)
}
