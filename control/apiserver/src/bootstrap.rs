//! What a fresh (or restarted) server puts in place before serving: the
//! system namespaces, the `kubernetes` Service and Endpoints, the cluster
//! DNS Service `kube-system/kube-dns`, allocator state rebuilt from stored
//! Services, the local APIServices, and the default StorageClass
//! `local-path` (the node agents' built-in provisioner).

use std::sync::Arc;

use kestrel_api::ApiError;
use kestrel_api::registry;
use serde_json::{Value, json};

use crate::state::AppState;
use crate::state::Target;
use crate::write::{create_object, update_with};
use crate::{Error, admission};

fn target(plural: &str, ns: Option<&str>, name: &str) -> Result<Target, Error> {
    target_in("", plural, ns, name)
}

fn target_in(group: &str, plural: &str, ns: Option<&str>, name: &str) -> Result<Target, Error> {
    let def = registry::lookup(group, "v1", plural)
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
    crate::serviceaccount::install(state)?;
    // Allocations first, so the kubernetes Service's IP cannot collide.
    if let Some(svc) = registry::lookup("", "v1", "services") {
        let (items, _) = state.cache.list(&svc.key_prefix());
        for e in items {
            admission::reclaim_service(state, &e.value);
        }
    }
    crate::authz::roles::reconcile_bootstrap(state).await?;
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
    ensure_dns_service(state).await?;
    let classes = registry::lookup("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or_else(|| Error::Config("priorityclasses missing from the registry".to_owned()))?;
    for (name, value, description) in admission::priority::SYSTEM_CLASSES {
        let t = Target {
            def: classes,
            ns: None,
            name: Some((*name).to_owned()),
        };
        ensure(
            state,
            &t,
            json!({"metadata": {"name": name}, "value": value, "description": description}),
        )
        .await?;
    }
    ensure_default_storage_class(state).await?;
    crate::apiservice::sync(state)
        .await
        .map_err(|e| Error::Bootstrap(e.to_string()))
}

/// Namespace and name of the cluster DNS Service.
const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// The cluster DNS Service, as kubeadm's: the 10th address of the service
/// range, no selector (the controller manager's cluster DNS controller
/// makes the nodes its endpoints: every node agent serves DNS), and
/// `internalTrafficPolicy: Local`, so a pod's queries stay on its node.
/// Only created when absent: a user's changes are kept.
fn dns_service(ip: &str) -> Value {
    json!({
        "metadata": {
            "name": DNS_SERVICE.1,
            "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "KubeDNS",
            },
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "internalTrafficPolicy": "Local",
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    })
}

async fn ensure_dns_service(state: &Arc<AppState>) -> Result<(), Error> {
    let (ns, name) = DNS_SERVICE;
    let Some(ip) = state.alloc.dns_service_ip().map(|ip| ip.to_string()) else {
        tracing::warn!(
            service_cidr = %state.config.service_cidr,
            "the service CIDR has no 10th address: not creating the {ns}/{name} Service"
        );
        return Ok(());
    };
    let t = target("services", Some(ns), name)?;
    if state.cache.get(&t.key()).is_some() {
        return Ok(());
    }
    // A store from before the static band may have handed the address to
    // a user's Service. Cluster DNS then waits, but the server starts.
    if let Some(holder) = service_holding(state, &ip) {
        tracing::warn!(
            service = %format!("{ns}/{name}"),
            cluster_ip = %ip,
            held_by = %holder,
            "not creating the cluster DNS Service: failed to allocate IP {ip}: provided IP is already allocated (to Service {holder}); delete or re-address that Service and restart the server, or create {ns}/{name} by hand"
        );
        return Ok(());
    }
    ensure(state, &t, dns_service(&ip)).await
}

/// The Service (`namespace/name`) whose ClusterIP is `ip`, if any.
fn service_holding(state: &AppState, ip: &str) -> Option<String> {
    let def = registry::lookup("", "v1", "services")?;
    let (items, _) = state.cache.list(&def.key_prefix());
    items.iter().find_map(|e| {
        let spec = e.value.get("spec")?;
        let holds = spec.get("clusterIP").and_then(Value::as_str) == Some(ip)
            || spec
                .get("clusterIPs")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(ip)));
        holds.then(|| {
            let m = &e.value["metadata"];
            format!(
                "{}/{}",
                m["namespace"].as_str().unwrap_or_default(),
                m["name"].as_str().unwrap_or_default()
            )
        })
    })
}

/// The default StorageClass, served by the provisioner every node agent
/// runs (k3s's `local-path`): volumes on the disk of the node the claim's
/// first pod is scheduled to, so binding waits for that pod. Only created
/// when absent, so a user's changes are kept.
pub const DEFAULT_STORAGE_CLASS: &str = "local-path";
/// Its provisioner, as the node agents name it.
pub const LOCAL_PATH_PROVISIONER: &str = "kestrel.io/local-path";

async fn ensure_default_storage_class(state: &Arc<AppState>) -> Result<(), Error> {
    let t = target_in(
        "storage.k8s.io",
        "storageclasses",
        None,
        DEFAULT_STORAGE_CLASS,
    )?;
    if state.cache.get(&t.key()).is_some() {
        return Ok(());
    }
    // Recreated after a user deleted it in favour of another default
    // class, it does not take the default back (the newest default wins).
    let (classes, _) = state.cache.list(&t.def.key_prefix());
    let other_default =
        admission::storage::default_class(classes.iter().map(|e| &*e.value)).is_some();
    let annotations = if other_default {
        json!({})
    } else {
        json!({admission::storage::DEFAULT_CLASS_ANNOTATIONS[0]: "true"})
    };
    ensure(
        state,
        &t,
        json!({
            "metadata": {"name": DEFAULT_STORAGE_CLASS, "annotations": annotations},
            "provisioner": LOCAL_PATH_PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
        }),
    )
    .await
}
