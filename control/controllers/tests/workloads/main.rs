//! The workload controllers against the in-process API server, with a fake
//! kubelet standing in for nodes. Each test is a user story: create, watch
//! through the API, assert what a user would see.

mod deployment;
mod fake;
mod job;
mod kubectl;
mod replicaset;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};

pub use fake::Cluster;

/// How long any one expectation may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// Pods in "default" with `label_selector`, not being deleted.
pub async fn live_pods(api: &Api<Pod>, label_selector: &str) -> Vec<Pod> {
    api.list(&ListParams::default().labels(label_selector))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Whether the pod's Ready condition is true.
pub fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The (reason, message) of Events about the object `name`.
pub async fn events_about(c: &Cluster, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = c.api();
    api.list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("list events")
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// The name of the controller owner of `p`, if it is of `kind`.
pub fn owner_name(p: &impl kube::Resource, kind: &str) -> Option<String> {
    p.owner_references()
        .iter()
        .find(|r| r.controller == Some(true) && r.kind == kind)
        .map(|r| r.name.clone())
}

/// A pod template with labels `app=<app>` plus `extra`.
pub fn template(app: &str, image: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut labels = serde_json::json!({"app": app});
    if let (Some(l), Some(e)) = (labels.as_object_mut(), extra.as_object()) {
        l.extend(e.clone());
    }
    serde_json::json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "c", "image": image}]},
    })
}

#[allow(dead_code, reason = "kept for tests that need names")]
pub fn names<K: kube::Resource>(objs: &[K]) -> Vec<String> {
    let mut n: Vec<_> = objs.iter().map(|o| o.name_any()).collect();
    n.sort();
    n
}
