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

/// Whether an init container is a sidecar: `restartPolicy: Always` makes
/// it run beside the main containers (upstream's restartable init
/// container).
pub fn is_sidecar(c: &k8s_openapi::api::core::v1::Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

fn has(v: &Value, p: &str) -> bool {
    v.pointer(p).is_some_and(|x| !x.is_null())
}

fn code(v: &Value, p: &str) -> Option<i64> {
    v.pointer(p).and_then(Value::as_i64)
}

/// Whether any main container has started (is running or has run): the
/// pod has been initialized before, and restarting sidecars do not make
/// it Pending or uninitialized again (upstream's
/// `HasAnyRegularContainerStarted`).
pub fn any_regular_started(containers: &[Value]) -> bool {
    containers.iter().any(|s| {
        has(s, "/state/running") || has(s, "/state/terminated") || has(s, "/lastState/terminated")
    })
}

/// The Initialized condition: every plain init container succeeded and
/// every sidecar has started, or a main container has already started.
/// `inits` pairs each init container's status with whether it is a sidecar.
pub fn initialized(inits: &[(bool, Value)], containers: &[Value]) -> bool {
    any_regular_started(containers)
        || inits.iter().all(|(sidecar, s)| {
            if *sidecar {
                s.get("started") == Some(&json!(true))
            } else {
                code(s, "/state/terminated/exitCode") == Some(0)
            }
        })
}

/// The pod phase from its container statuses, as upstream's `getPhase`:
/// sidecars keep a pod Running while they run but never decide whether it
/// succeeded; only the main containers do.
pub fn phase(inits: &[(bool, Value)], containers: &[Value], policy: &str) -> &'static str {
    let (mut pending_init, mut failed_init, mut pending_sidecar) = (0, 0, 0);
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for (sidecar, s) in inits {
        if *sidecar {
            if has(s, "/state/running") {
                if s.get("started") != Some(&json!(true)) {
                    pending_sidecar += 1;
                }
                running += 1;
            } else if !has(s, "/state/terminated") && !has(s, "/lastState/terminated") {
                // Exited sidecars do not count toward the phase.
                pending_sidecar += 1;
                waiting += 1;
            }
        } else if has(s, "/state/running") {
            pending_init += 1;
        } else if let Some(c) = code(s, "/state/terminated/exitCode") {
            if c != 0 {
                failed_init += 1;
            }
        } else if let Some(c) = code(s, "/lastState/terminated/exitCode") {
            if c != 0 {
                failed_init += 1;
            }
        } else {
            pending_init += 1;
        }
    }
    for s in containers {
        if has(s, "/state/running") {
            running += 1;
        } else if let Some(c) = code(s, "/state/terminated/exitCode")
            .or_else(|| code(s, "/lastState/terminated/exitCode"))
        {
            stopped += 1;
            if c == 0 {
                succeeded += 1;
            }
        } else {
            waiting += 1;
        }
    }
    if failed_init > 0 && policy == "Never" {
        return "Failed";
    }
    if pending_init > 0 || (pending_sidecar > 0 && !any_regular_started(containers)) || waiting > 0
    {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if policy == "Always" {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    }
}

/// Whether the main containers are all done for good: they exited and the
/// restart policy brings none back. `exits` has each main container's exit
/// code, `None` while it has not exited. Then the sidecars are stopped.
pub fn main_containers_done(policy: &str, exits: &[Option<i32>]) -> bool {
    policy != "Always"
        && !exits.is_empty()
        && exits
            .iter()
            .all(|e| e.is_some_and(|c| policy == "Never" || c == 0))
}

/// Sidecars stop after the main containers, last started first.
pub fn sidecar_stop_order(inits: &[k8s_openapi::api::core::v1::Container]) -> Vec<String> {
    inits
        .iter()
        .rev()
        .filter(|c| is_sidecar(c))
        .map(|c| c.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;

    fn running(started: bool) -> Value {
        json!({"state": {"running": {}}, "lastState": {}, "started": started})
    }
    fn exited(code: i64) -> Value {
        json!({"state": {"terminated": {"exitCode": code}}, "lastState": {}, "started": false})
    }
    fn creating() -> Value {
        json!({"state": {"waiting": {"reason": "ContainerCreating"}}, "lastState": {}})
    }

    #[test]
    fn sidecars_do_not_decide_the_phase() {
        // Main done, sidecar still running: Running until it is stopped.
        let inits = vec![(true, running(true))];
        assert_eq!(phase(&inits, &[exited(0)], "Never"), "Running");
        // Sidecar stopped (143 on SIGTERM): the main container decides.
        let inits = vec![(true, exited(143))];
        assert_eq!(phase(&inits, &[exited(0)], "Never"), "Succeeded");
        assert_eq!(phase(&inits, &[exited(1)], "Never"), "Failed");
        assert_eq!(phase(&inits, &[exited(1)], "OnFailure"), "Running");
        assert_eq!(phase(&inits, &[exited(0)], "Always"), "Running");
    }

    #[test]
    fn unstarted_sidecars_keep_the_pod_pending() {
        let inits = vec![(true, running(false)), (false, creating())];
        assert_eq!(phase(&inits, &[creating()], "Never"), "Pending");
        assert!(!initialized(&inits, &[creating()]));
        let inits = vec![(true, running(true)), (false, exited(0))];
        assert_eq!(phase(&inits, &[running(true)], "Never"), "Running");
        assert!(initialized(&inits, &[creating()]));
        // A restarting sidecar does not undo initialization.
        let inits = vec![(true, running(false)), (false, exited(0))];
        assert!(initialized(&inits, &[running(true)]));
        assert_eq!(phase(&inits, &[running(true)], "Always"), "Running");
    }

    #[test]
    fn failed_init_containers_fail_never_pods() {
        let inits = vec![(false, exited(2))];
        assert_eq!(phase(&inits, &[creating()], "Never"), "Failed");
        assert_eq!(phase(&inits, &[creating()], "OnFailure"), "Pending");
        assert!(!initialized(&inits, &[creating()]));
    }

    #[test]
    fn main_containers_done_follows_the_restart_policy() {
        assert!(main_containers_done("Never", &[Some(0), Some(1)]));
        assert!(!main_containers_done("Never", &[Some(0), None]));
        assert!(main_containers_done("OnFailure", &[Some(0)]));
        assert!(!main_containers_done("OnFailure", &[Some(1)]));
        assert!(!main_containers_done("Always", &[Some(0)]));
    }

    #[test]
    fn sidecars_stop_in_reverse_order() {
        let c = |name: &str, always: bool| Container {
            name: name.into(),
            restart_policy: always.then(|| "Always".into()),
            ..Default::default()
        };
        let inits = [c("a", true), c("setup", false), c("b", true)];
        assert_eq!(sidecar_stop_order(&inits), ["b", "a"]);
        assert!(is_sidecar(&inits[0]) && !is_sidecar(&inits[1]));
    }
}
