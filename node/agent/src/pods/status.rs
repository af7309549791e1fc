//! Pod status: computed from what CRI reports, written by one task that
//! coalesces updates so a busy node never floods the API server.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// One pod's desired status.
#[derive(Debug, Clone)]
pub struct Update {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (a recreated pod of the same name is a different pod).
    pub uid: String,
    /// The status object.
    pub status: Value,
}

/// The handle workers send status through.
pub type StatusTx = mpsc::UnboundedSender<Update>;

/// RFC 3339 from CRI's nanoseconds since the epoch.
pub fn time_of(nanos: i64) -> Option<String> {
    (nanos > 0)
        .then(|| jiff::Timestamp::from_nanosecond(i128::from(nanos)).ok())
        .flatten()
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Now, RFC 3339.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Drop the volatile parts before comparing two statuses.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(cs) = v.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in cs {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastProbeTime");
                o.remove("lastTransitionTime");
            }
        }
    }
    v
}

/// Status writes in flight at once (each for a different pod).
const WRITES_IN_FLIGHT: usize = 16;

/// Write statuses, at most one in flight per pod, latest wins.
pub async fn writer(client: kube::Client, mut rx: mpsc::UnboundedReceiver<Update>) {
    let mut written: HashMap<String, Value> = HashMap::new();
    let mut pending: HashMap<String, Update> = HashMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(u) => {
                    pending.insert(u.uid.clone(), u);
                }
                None => return,
            }
        }
        // Take everything queued right now: only the newest per pod is written.
        while let Ok(u) = rx.try_recv() {
            pending.insert(u.uid.clone(), u);
        }
        // Each pod appears once in a batch, so the writes can run side by
        // side without reordering any pod's statuses: a burst of pods
        // starting at once must not queue behind one another's round trips.
        let batch: Vec<Update> = pending
            .drain()
            .map(|(_, u)| u)
            .filter(|u| written.get(&u.uid) != Some(&comparable(&u.status)))
            .collect();
        let results: Vec<(Update, Result<(), kube::Error>)> = futures::stream::iter(batch)
            .map(|u| {
                let client = client.clone();
                async move {
                    let api: Api<Pod> = Api::namespaced(client, &u.namespace);
                    let patch = json!({"metadata": {"uid": u.uid}, "status": u.status});
                    let r = api
                        .patch_status(&u.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(drop);
                    (u, r)
                }
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        let mut failed = false;
        for (u, r) in results {
            match r {
                Ok(()) => {
                    written.insert(u.uid.clone(), comparable(&u.status));
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                    // Gone, or replaced by a pod with another uid.
                    written.remove(&u.uid);
                }
                Err(e) => {
                    tracing::warn!(pod = %u.name, error = %e, "writing pod status; retrying");
                    pending.entry(u.uid.clone()).or_insert(u);
                    failed = true;
                }
            }
        }
        if failed {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if written.len() > 10_000 {
            written.clear();
        }
    }
}
