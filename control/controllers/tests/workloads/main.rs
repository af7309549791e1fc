//! The workload controllers against the in-process API server, with a fake
//! kubelet standing in for nodes. Each test is a user story: create, watch
//! through the API, assert what a user would see.

mod cronjob;
mod daemonset;
mod deployment;
mod fake;
mod job;
mod kubectl;
mod replicaset;
mod replicationcontroller;
mod statefulset;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kestrel_testkit::eventually;
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

/// The events about `name` once one with `reason` is among them (events
/// are written after the change they report, so they are polled for).
pub async fn events_once(c: &Cluster, name: &str, reason: &str) -> Vec<(String, String)> {
    eventually(WAIT, &format!("a {reason} event about {name}"), || async {
        let e = events_about(c, name).await;
        e.iter().any(|(r, _)| r == reason).then_some(e)
    })
    .await
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

/// The sorted names of `objs`.
pub fn names<K: kube::Resource>(objs: &[K]) -> Vec<String> {
    let mut n: Vec<_> = objs.iter().map(|o| o.name_any()).collect();
    n.sort();
    n
}

/// The lowest number of pods matching a selector that were available
/// (Ready and not being deleted) at any moment a watch saw, after its first
/// complete list. Stops watching when dropped.
pub struct Lowest {
    value: std::sync::Arc<std::sync::Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Lowest {
    pub fn watch(api: Api<Pod>, labels: &str) -> Self {
        use futures::StreamExt as _;
        let value = std::sync::Arc::new(std::sync::Mutex::new(usize::MAX));
        let low = value.clone();
        let cfg = kube::runtime::watcher::Config::default().labels(labels);
        let task = tokio::spawn(async move {
            use kube::runtime::watcher::{Event, watcher};
            let mut up: std::collections::HashMap<String, bool> = Default::default();
            let mut listed = false;
            let mut events = std::pin::pin!(watcher(api, cfg));
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(Event::Apply(p) | Event::InitApply(p)) => {
                        up.insert(
                            p.name_any(),
                            ready(&p) && p.metadata.deletion_timestamp.is_none(),
                        );
                    }
                    Ok(Event::Delete(p)) => {
                        up.remove(&p.name_any());
                    }
                    // A half-received list is no moment of the cluster.
                    Ok(Event::InitDone) => listed = true,
                    _ => continue,
                }
                if listed {
                    let n = up.values().filter(|u| **u).count();
                    let mut l = low.lock().expect("lock");
                    *l = (*l).min(n);
                }
            }
        });
        Self { value, task }
    }

    pub fn get(&self) -> usize {
        *self.value.lock().expect("lock")
    }
}

impl Drop for Lowest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Lowest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Lowest").field(&self.get()).finish()
    }
}
