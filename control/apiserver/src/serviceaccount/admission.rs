//! Upstream's ServiceAccount admission plugin, for pod CREATE: every pod
//! runs as a ServiceAccount that exists, and unless automounting is turned
//! off gets the `kube-api-access-XXXXX` projected volume (a bound token,
//! the cluster CA and its namespace) mounted in every container.

use std::sync::Arc;
use std::time::Duration;

use kestrel_api::{ApiError, meta};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::{def, str_at};
use crate::cache::ChangeKind;
use crate::state::AppState;
use crate::state::Target;

/// The ServiceAccount pods get when they name none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Where the token volume is mounted.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Prefix of the token volume's name.
const VOLUME_PREFIX: &str = "kube-api-access-";
/// The ConfigMap the root CA publisher keeps in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// Upstream's `WarnOnlyBoundTokenExpirationSeconds`: the projected token's
/// lifetime (one hour and seven seconds, so its use is recognisable).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// Upstream's mirror-pod annotation; mirror pods are left alone.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// How long a pod waits for its namespace's `default` ServiceAccount. The
/// ServiceAccount controller creates it right after the namespace; upstream
/// retries ten live lookups (1-2 s) before refusing, Kestrel waits on the
/// watch cache for up to 5 s.
const DEFAULT_SA_WAIT: Duration = Duration::from_secs(5);

/// Admit a pod being created in `t`'s namespace (its name already set).
pub async fn admit_pod(state: &AppState, t: &Target, pod: &mut Value) -> Result<(), ApiError> {
    if pod
        .pointer(&format!(
            "/metadata/annotations/{}",
            MIRROR_ANNOTATION.replace('/', "~1")
        ))
        .is_some()
    {
        return Ok(());
    }
    let Some(ns) = t.ns.as_deref() else {
        return Ok(());
    };
    // A missing or terminating namespace is refused by the namespace check
    // with its own message; do not wait for a ServiceAccount there.
    match state.cache.get(&def("namespaces").key(None, ns)) {
        Some(n) if str_at(&n.value, "/status/phase") != "Terminating" => {}
        _ => return Ok(()),
    }
    let pod_name = str_at(pod, "/metadata/name").to_owned();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    // The deprecated `serviceAccount` is an alias, read when the name is
    // unset and always written back equal, as upstream's conversion does.
    let sa_name = [spec.get("serviceAccountName"), spec.get("serviceAccount")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
        .to_owned();
    spec.insert("serviceAccountName".into(), json!(sa_name));
    spec.insert("serviceAccount".into(), json!(sa_name));

    let Some(sa) = service_account(state, ns, &sa_name).await else {
        return Err(ApiError::Forbidden(format!(
            "pods {pod_name:?} is forbidden: error looking up service account {ns}/{sa_name}: serviceaccount {sa_name:?} not found"
        )));
    };

    // Image pull secrets of the ServiceAccount, unless the pod names its own.
    let has_pull_secrets = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if !has_pull_secrets
        && let Some(secrets) = sa.get("imagePullSecrets").and_then(Value::as_array)
        && !secrets.is_empty()
    {
        let refs: Vec<Value> = secrets
            .iter()
            .map(|s| json!({"name": s.get("name").cloned().unwrap_or(json!(""))}))
            .collect();
        spec.insert("imagePullSecrets".into(), Value::Array(refs));
    }

    // The pod's own setting wins over the ServiceAccount's; default true.
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            sa.get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if automount {
        mount_token(spec);
    }
    Ok(())
}

/// The ServiceAccount from the watch cache; `default` is waited for.
async fn service_account(state: &AppState, ns: &str, name: &str) -> Option<Arc<Value>> {
    let key = def("serviceaccounts").key(Some(ns), name);
    // Subscribe before looking, so a create in between is not missed.
    let mut rx = state.cache.watch_from(None).ok().map(|(_, rx, _)| rx);
    if let Some(e) = state.cache.get(&key) {
        return Some(e.value.clone());
    }
    if name != DEFAULT_SERVICE_ACCOUNT {
        return None;
    }
    let rx = rx.as_mut()?;
    let deadline = tokio::time::Instant::now() + DEFAULT_SA_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) | Ok(Err(RecvError::Closed)) => return None,
            Ok(Ok(c)) if c.key == key && c.kind == ChangeKind::Put => {
                return Some(c.object.clone());
            }
            Ok(Ok(_)) => {}
            Ok(Err(RecvError::Lagged(_))) => {
                if let Some(e) = state.cache.get(&key) {
                    return Some(e.value.clone());
                }
            }
        }
    }
}

/// Upstream's `TokenVolumeSource`.
fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// Mount the token volume read-only at [`MOUNT_PATH`] in every init
/// container and container that mounts nothing there yet, and add the
/// volume if one of them needs it (reusing a `kube-api-access-*` volume the
/// pod already has).
fn mount_token(spec: &mut serde_json::Map<String, Value>) {
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .find(|n| n.starts_with(VOLUME_PREFIX))
        .map(str::to_owned);
    let name = existing
        .clone()
        .unwrap_or_else(|| meta::generate_name(VOLUME_PREFIX));
    let mount = json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(c) = c.as_object_mut() else { continue };
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            if mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH))
            {
                continue;
            }
            mounts.push(mount.clone());
            needed = true;
        }
    }
    if needed && existing.is_none() {
        let vols = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(vols) = vols.as_array_mut() {
            vols.push(token_volume(&name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn every_container_mounts_the_volume_once() {
        let mut s = spec(json!({
            "initContainers": [{"name": "i"}],
            "containers": [
                {"name": "a"},
                {"name": "b", "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]},
            ],
            "volumes": [{"name": "mine", "emptyDir": {}}],
        }));
        mount_token(&mut s);
        let vols = s["volumes"].as_array().expect("volumes");
        assert_eq!(vols.len(), 2);
        let name = vols[1]["name"].as_str().expect("name");
        let suffix = name.strip_prefix(VOLUME_PREFIX).expect("prefix");
        assert_eq!(suffix.len(), 5);
        assert!(
            suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_eq!(vols[1], token_volume(name));
        assert_eq!(vols[1]["projected"]["defaultMode"], 420);
        let mounts = |i: &str, c: usize| s[i][c]["volumeMounts"].clone();
        assert_eq!(
            mounts("initContainers", 0),
            json!([{"name": name, "readOnly": true, "mountPath": MOUNT_PATH}])
        );
        assert_eq!(mounts("containers", 0)[0]["name"], name);
        // b already mounts something there and keeps only that.
        assert_eq!(mounts("containers", 1).as_array().expect("b").len(), 1);
        assert_eq!(mounts("containers", 1)[0]["name"], "mine");
    }

    #[test]
    fn an_existing_token_volume_is_reused() {
        let mut s = spec(json!({
            "containers": [{"name": "a"}],
            "volumes": [{"name": "kube-api-access-abcde", "emptyDir": {}}],
        }));
        mount_token(&mut s);
        assert_eq!(s["volumes"].as_array().expect("v").len(), 1);
        assert_eq!(
            s["containers"][0]["volumeMounts"][0]["name"],
            "kube-api-access-abcde"
        );
        // Nobody needs it: no volume is added.
        let mut s = spec(json!({
            "containers": [{"name": "a", "volumeMounts": [{"name": "x", "mountPath": MOUNT_PATH}]}],
        }));
        mount_token(&mut s);
        assert!(s.get("volumes").is_none());
    }
}
