//! apiregistration.k8s.io/v1 APIServices, as kube-apiserver keeps them:
//! one local APIService per served group version (`v1.apps`, `v1.` for
//! core, and one for each established CRD's group version), labelled
//! `kube-aggregator.kubernetes.io/automanaged`, always Available. An
//! APIService that points at a Service (an aggregated API server) is
//! stored and validated, but Kestrel does not proxy to aggregated servers,
//! so it reports Available=False with that reason.

use std::collections::BTreeSet;
use std::sync::Arc;

use kestrel_api::registry::{self, ResourceDef, Subresource};
use kestrel_api::{ApiError, FieldError, meta};
use serde_json::{Value, json};

use crate::state::AppState;
use crate::state::Target;
use crate::write;

const AUTOMANAGED: &str = "kube-aggregator.kubernetes.io/automanaged";

fn def() -> Option<&'static ResourceDef> {
    registry::lookup("apiregistration.k8s.io", "v1", "apiservices")
}

fn name_of(group: &str, version: &str) -> String {
    format!("{version}.{group}")
}

fn target(def: &'static ResourceDef, name: &str) -> Target {
    Target {
        def,
        ns: None,
        name: Some(name.to_owned()),
    }
}

/// Upstream's group priorities for the built-in groups it knows (higher
/// first in discovery); other groups get upstream's default for CRDs.
fn group_priority(group: &str) -> i64 {
    match group {
        "" => 18000,
        "apps" => 17800,
        "authentication.k8s.io" => 17700,
        "authorization.k8s.io" => 17600,
        "autoscaling" => 17500,
        "batch" => 17400,
        "certificates.k8s.io" => 17300,
        "networking.k8s.io" => 17200,
        "policy" => 17100,
        "rbac.authorization.k8s.io" => 17000,
        "storage.k8s.io" => 16800,
        "admissionregistration.k8s.io" => 16700,
        "apiextensions.k8s.io" => 16700,
        "scheduling.k8s.io" => 16600,
        "coordination.k8s.io" => 16500,
        "discovery.k8s.io" => 16200,
        "apiregistration.k8s.io" => 18000,
        _ => 1000,
    }
}

fn desired_status(obj: &Value) -> Value {
    let local = obj.pointer("/spec/service").is_none_or(Value::is_null);
    let (status, reason, message) = if local {
        ("True", "Local", "Local APIServices are always available")
    } else {
        (
            "False",
            "ServiceNotFound",
            "Kestrel does not proxy to aggregated API servers",
        )
    };
    let since = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter().find(|c| {
                c.get("type").and_then(Value::as_str) == Some("Available")
                    && c.get("status").and_then(Value::as_str) == Some(status)
            })
        })
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(meta::now_rfc3339()));
    json!({"conditions": [{
        "type": "Available",
        "status": status,
        "lastTransitionTime": since,
        "reason": reason,
        "message": message,
    }]})
}

/// Make the stored APIServices match what this server serves: create the
/// missing local ones, delete automanaged ones whose group version is no
/// longer served, and keep every APIService's Available condition true to
/// what Kestrel does with it. Idempotent, so every server may run it.
pub async fn sync(state: &Arc<AppState>) -> Result<(), ApiError> {
    let Some(def) = def() else { return Ok(()) };
    let mut want = BTreeSet::new();
    for (group, versions) in state.crds.groups() {
        for (i, v) in versions.iter().enumerate() {
            let name = name_of(group, v);
            want.insert(name.clone());
            if state.cache.get(&def.key(None, &name)).is_some() {
                continue;
            }
            let builtin = registry::RESOURCES.iter().any(|r| r.group == group);
            let obj = json!({
                "metadata": {"name": name, "labels": {AUTOMANAGED: if builtin { "onstart" } else { "true" }}},
                "spec": {
                    "group": group,
                    "version": v,
                    "groupPriorityMinimum": group_priority(group),
                    "versionPriority": i64::try_from(15 - i.min(14)).unwrap_or(1),
                },
            });
            match write::create_object(state, None, &target(def, &name), obj, false).await {
                Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let (items, _) = state.cache.list(&def.key_prefix());
    for e in items {
        let name = e
            .value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let automanaged = e
            .value
            .pointer(&format!(
                "/metadata/labels/{}",
                AUTOMANAGED.replace('/', "~1")
            ))
            .is_some();
        let t = target(def, &name);
        if automanaged && !want.contains(&name) {
            match write::delete_one(state, &t, &write::DeleteOpts::default(), false).await {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let status = desired_status(&e.value);
        if e.value.get("status") == Some(&status) {
            continue;
        }
        let r = write::update_with(state, None, &t, Some(Subresource::Status), false, |cur| {
            let mut n = cur.clone();
            n["status"] = desired_status(cur);
            Ok((n, None))
        })
        .await;
        match r {
            Ok(_) | Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Upstream's APIService validation.
pub fn validate(obj: &Value, errs: &mut Vec<FieldError>) {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("");
    let (group, version, name) = (s("/spec/group"), s("/spec/version"), s("/metadata/name"));
    if version.is_empty() {
        errs.push(FieldError::required("spec.version", ""));
    }
    if name != name_of(group, version) {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            format!(
                "must be `spec.version+\".\"+spec.group`: {:?}",
                name_of(group, version)
            ),
        ));
    }
    let gpm = obj
        .pointer("/spec/groupPriorityMinimum")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if !(1..=20000).contains(&gpm) {
        errs.push(FieldError::invalid(
            "spec.groupPriorityMinimum",
            &gpm.to_string(),
            "must be positive and less than 20000",
        ));
    }
    let vp = obj
        .pointer("/spec/versionPriority")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if !(1..=1000).contains(&vp) {
        errs.push(FieldError::invalid(
            "spec.versionPriority",
            &vp.to_string(),
            "must be positive and less than 1000",
        ));
    }
    let skip = obj
        .pointer("/spec/insecureSkipTLSVerify")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ca = !s("/spec/caBundle").is_empty();
    if obj.pointer("/spec/service").is_some_and(|v| !v.is_null()) {
        if s("/spec/service/name").is_empty() {
            errs.push(FieldError::required("spec.service.name", ""));
        }
        if s("/spec/service/namespace").is_empty() {
            errs.push(FieldError::required("spec.service.namespace", ""));
        }
        if !skip && !ca {
            errs.push(FieldError::required(
                "spec.caBundle",
                "must be present if insecureSkipTLSVerify is missing or false",
            ));
        }
    }
    if skip && ca {
        errs.push(FieldError::invalid(
            "spec.insecureSkipTLSVerify",
            "true",
            "may not be true if caBundle is present",
        ));
    }
}
