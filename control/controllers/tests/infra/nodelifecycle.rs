use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kestrel_testkit::eventually;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::common::{Cluster, WAIT, create_node, obj, pod_running};

/// The node agent's part: renew the node's Lease while `alive`.
fn fake_kubelet(
    client: kube::Client,
    node: &str,
    alive: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let node = node.to_owned();
    tokio::spawn(async move {
        loop {
            if alive.load(Ordering::SeqCst) {
                let now = MicroTime(jiff::Timestamp::now());
                let lease: Lease = obj(json!({
                    "metadata": {"name": node},
                    "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now},
                }));
                let _ = leases
                    .patch(
                        &node,
                        &PatchParams::apply("kubelet").force(),
                        &Patch::Apply(&lease),
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

async fn post_ready(nodes: &Api<Node>, name: &str) {
    post_condition(nodes, name, "True").await;
}

async fn post_condition(nodes: &Api<Node>, name: &str, ready: &str) {
    let now = Time(jiff::Timestamp::now());
    let reason = if ready == "True" {
        "KubeletReady"
    } else {
        "KubeletNotReady"
    };
    let patch = json!({"status": {"conditions": [{
        "type": "Ready", "status": ready, "reason": reason,
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    }]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("node status");
}

fn taints(n: &Node) -> Vec<(String, String, bool)> {
    let mut v: Vec<_> = n
        .spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .map(|t| (t.key.clone(), t.effect.clone(), t.time_added.is_some()))
        .collect();
    v.sort();
    v
}

fn pod(name: &str, toleration_seconds: Option<i64>) -> Pod {
    obj(json!({
        "metadata": {"name": name, "labels": {"app": "lc"}},
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "c", "image": "busybox:1.35"}],
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": toleration_seconds}],
        },
    }))
}

/// Long enough that a slow store commit on a loaded machine does not make
/// the renewing node look silent.
const GRACE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_tainted_its_pods_unready_then_evicted_and_recovers() {
    let c = Cluster::start(|o| o.node_monitor_grace_period = GRACE).await;
    let client = &c.client;
    let nodes: Api<Node> = Api::all(client.clone());
    create_node(client, "n1", json!({})).await;
    post_ready(&nodes, "n1").await;
    let alive = Arc::new(AtomicBool::new(true));
    let kubelet = fake_kubelet(client.clone(), "n1", alive.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("short", Some(2)))
        .await
        .expect("pod");
    pods.create(&PostParams::default(), &pod("forever", None))
        .await
        .expect("pod");
    pod_running(&pods, "short", "10.42.0.20", true).await;
    pod_running(&pods, "forever", "10.42.0.21", true).await;
    Api::<Service>::namespaced(client.clone(), "default")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "lc"}, "spec": {"selector": {"app": "lc"}, "ports": [{"port": 80}]}})),
        )
        .await
        .expect("service");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let ready_endpoints = || async {
        slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=lc"))
            .await
            .ok()
            .map(|l| {
                l.items
                    .iter()
                    .flat_map(|s| s.endpoints.iter().flatten())
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .count()
            })
    };
    eventually(WAIT, "two ready endpoints", || async {
        (ready_endpoints().await? == 2).then_some(())
    })
    .await;
    // Renewing: healthy well past the grace period.
    tokio::time::sleep(GRACE + Duration::from_secs(1)).await;
    let n = nodes.get("n1").await.expect("node");
    assert!(taints(&n).is_empty(), "{:?}", taints(&n));

    // The agent dies.
    alive.store(false, Ordering::SeqCst);
    let n = eventually(WAIT, "node unreachable", || async {
        let n = nodes.get("n1").await.ok()?;
        (taints(&n).len() == 2).then_some(n)
    })
    .await;
    assert_eq!(
        taints(&n),
        [
            (
                "node.kubernetes.io/unreachable".to_owned(),
                "NoExecute".to_owned(),
                true
            ),
            (
                "node.kubernetes.io/unreachable".to_owned(),
                "NoSchedule".to_owned(),
                true
            ),
        ]
    );
    let ready = n
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "Unknown");
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        ready.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    // Endpoints stop at once, before any eviction.
    eventually(WAIT, "endpoints not ready", || async {
        (ready_endpoints().await? == 0).then_some(())
    })
    .await;
    // The short toleration runs out; the unbounded one never does.
    eventually(WAIT, "short-tolerating pod evicted", || async {
        pods.get("short")
            .await
            .ok()?
            .metadata
            .deletion_timestamp
            .map(drop)
    })
    .await;
    let forever = pods.get("forever").await.expect("pod");
    assert!(forever.metadata.deletion_timestamp.is_none());

    // The agent comes back and reports Ready: the taints go.
    alive.store(true, Ordering::SeqCst);
    post_ready(&nodes, "n1").await;
    eventually(WAIT, "taints removed", || async {
        taints(&nodes.get("n1").await.ok()?)
            .is_empty()
            .then_some(())
    })
    .await;

    // A node that reports NotReady itself gets the not-ready taints, and
    // loses them when it is Ready again.
    post_condition(&nodes, "n1", "False").await;
    eventually(WAIT, "not-ready taints", || async {
        let t = taints(&nodes.get("n1").await.ok()?);
        (t == [
            (
                "node.kubernetes.io/not-ready".to_owned(),
                "NoExecute".to_owned(),
                true,
            ),
            (
                "node.kubernetes.io/not-ready".to_owned(),
                "NoSchedule".to_owned(),
                true,
            ),
        ])
        .then_some(())
    })
    .await;
    post_ready(&nodes, "n1").await;
    eventually(WAIT, "not-ready taints removed", || async {
        taints(&nodes.get("n1").await.ok()?)
            .is_empty()
            .then_some(())
    })
    .await;
    // The default not-ready toleration (300 s, added at admission) kept
    // the pod through that.
    assert!(
        pods.get("forever")
            .await
            .expect("pod")
            .metadata
            .deletion_timestamp
            .is_none()
    );
    kubelet.abort();
}
