//! The scheduler against a real (in-process) API server: each scenario
//! creates nodes and pods, then observes through the API what a user would
//! see: where pods landed, their PodScheduled condition, their Events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kestrel_apiserver::testing::TestServer;
use kestrel_scheduler::{Config, LeaderElection, Scheduler, Stats};
use kestrel_testkit::eventually;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

/// A scheduler task; aborted when dropped, so a failing test stops it.
struct Running {
    task: tokio::task::JoinHandle<kestrel_scheduler::Result<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stats: Arc<Stats>,
}

impl Running {
    fn start(client: kube::Client, config: Config) -> Self {
        let s = Scheduler::new(client, config);
        let stats = s.stats();
        let (stop, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(s.run(async {
            let _ = rx.await;
        }));
        Self {
            task,
            stop: Some(stop),
            stats,
        }
    }

    /// Shut down cleanly (a leader releases its Lease).
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = (&mut self.task).await.expect("scheduler task");
        r.expect("scheduler ran without error");
    }

    fn bound(&self) -> u64 {
        self.stats.bound.load(Ordering::SeqCst)
    }
}

impl Drop for Running {
    /// Dies rather than shuts down: aborted first, so it never gets to
    /// release its Lease (the leader test relies on that).
    fn drop(&mut self) {
        self.task.abort();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

struct Cluster {
    server: TestServer,
    client: kube::Client,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestServer::start_in(dir.path(), |_| {}).await;
        let client = server.client().await;
        Self {
            server,
            client,
            _dir: dir,
        }
    }

    fn with_scheduler(&self) -> Running {
        Running::start(self.client.clone(), Config::default())
    }

    async fn node(&self, name: &str, cpu: &str, labels: Value, taints: Value) {
        let mut l = labels;
        l["kubernetes.io/hostname"] = json!(name);
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": l},
            "spec": {"taints": taints},
            "status": {
                "capacity": {"cpu": cpu, "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": cpu, "memory": "16Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
            }
        }))
        .expect("node");
        let api: Api<Node> = Api::all(self.client.clone());
        let created = api
            .create(&PostParams::default(), &n)
            .await
            .expect("create node");
        // Status is a subresource: set it explicitly in case create drops it.
        let mut with_status = created;
        with_status.status = n.status;
        api.replace_status(name, &PostParams::default(), &with_status)
            .await
            .expect("node status");
    }

    async fn pod(&self, name: &str, labels: Value, spec: Value) {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c", "image": "busybox:1.35"}]);
        }
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": spec
        }))
        .expect("pod");
        self.pods()
            .create(&PostParams::default(), &p)
            .await
            .expect("create pod");
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Waits until all `names` are bound; returns pod → node.
    async fn bound(&self, names: &[String]) -> HashMap<String, String> {
        eventually(WAIT, &format!("pods {names:?} bound"), || async {
            let list = self.pods().list(&ListParams::default()).await.ok()?;
            let m: HashMap<String, String> = list
                .items
                .into_iter()
                .filter_map(|p| Some((p.metadata.name?, p.spec?.node_name?)))
                .collect();
            names
                .iter()
                .map(|n| m.get(n).map(|node| (n.clone(), node.clone())))
                .collect()
        })
        .await
    }

    /// The pod's PodScheduled condition, once it has one: (status, reason, message).
    async fn condition(&self, pod: &str) -> (String, String, String) {
        eventually(WAIT, &format!("{pod} gets PodScheduled"), || async {
            let p = self.pods().get(pod).await.ok()?;
            let c = p
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")?;
            Some((c.status, c.reason?, c.message?))
        })
        .await
    }

    async fn events_for(&self, pod: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), "default");
        api.list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(pod))
            .collect()
    }

    async fn event(&self, pod: &str, reason: &str) -> Event {
        eventually(WAIT, &format!("{reason} event for {pod}"), || async {
            self.events_for(pod)
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
        })
        .await
    }
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn requests(cpu: &str) -> Value {
    json!({"containers": [{"name": "c", "image": "busybox:1.35", "resources": {"requests": {"cpu": cpu}}}]})
}

fn per_node(placed: &HashMap<String, String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in placed.values() {
        *m.entry(n.clone()).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn pods_are_placed_by_resources_and_get_a_scheduled_event() {
    let c = Cluster::new().await;
    for n in ["n1", "n2", "n3"] {
        c.node(n, "2", json!({}), json!([])).await;
    }
    let _s = c.with_scheduler();
    let pods = names("web", 6);
    for p in &pods {
        c.pod(p, json!({}), requests("1")).await;
    }
    let placed = c.bound(&pods).await;
    // 1 cpu each on 2-cpu nodes: exactly two per node, whatever the order.
    assert_eq!(
        per_node(&placed),
        BTreeMap::from([("n1".into(), 2), ("n2".into(), 2), ("n3".into(), 2)])
    );
    let ev = c.event("web0", "Scheduled").await;
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    assert_eq!(
        ev.message,
        Some(format!(
            "Successfully assigned default/web0 to {}",
            placed["web0"]
        ))
    );
    c.server.stop().await;
}

#[tokio::test]
async fn node_selector_and_taints_steer_pods() {
    let c = Cluster::new().await;
    c.node(
        "gpu",
        "8",
        json!({"accel": "gpu"}),
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    )
    .await;
    c.node("plain1", "8", json!({}), json!([])).await;
    c.node("plain2", "8", json!({}), json!([])).await;
    let _s = c.with_scheduler();
    c.pod(
        "trainer",
        json!({}),
        json!({"nodeSelector": {"accel": "gpu"},
               "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
    )
    .await;
    let plain = names("app", 6);
    for p in &plain {
        c.pod(p, json!({}), json!({})).await;
    }
    // Selector without a toleration: nowhere to go.
    c.pod(
        "stuck",
        json!({}),
        json!({"nodeSelector": {"accel": "gpu"}}),
    )
    .await;
    let mut all = plain.clone();
    all.push("trainer".into());
    let placed = c.bound(&all).await;
    assert_eq!(placed["trainer"], "gpu");
    for p in &plain {
        assert_ne!(placed[p], "gpu", "{p} landed on the tainted node");
    }
    let (status, reason, message) = c.condition("stuck").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Unschedulable")
    );
    assert_eq!(
        message,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
         2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are \
         available: 3 Preemption is not helpful for scheduling."
    );
    c.server.stop().await;
}

#[tokio::test]
async fn required_anti_affinity_over_hostname_puts_one_per_node() {
    let c = Cluster::new().await;
    for n in ["n1", "n2", "n3"] {
        c.node(n, "8", json!({}), json!([])).await;
    }
    let _s = c.with_scheduler();
    let spec = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}
    ]}}});
    let dbs = names("db", 4);
    for p in &dbs {
        c.pod(p, json!({"app": "db"}), spec.clone()).await;
    }
    // Three fit, one per node; which three depends on order, so wait for
    // three binds and one refusal.
    let placed = eventually(WAIT, "three dbs bound", || async {
        let list = c.pods().list(&ListParams::default()).await.ok()?;
        let m: HashMap<String, String> = list
            .items
            .into_iter()
            .filter_map(|p| Some((p.metadata.name?, p.spec?.node_name?)))
            .collect();
        (m.len() == 3).then_some(m)
    })
    .await;
    assert_eq!(per_node(&placed).len(), 3, "one per node: {placed:?}");
    let pending = dbs
        .iter()
        .find(|d| !placed.contains_key(*d))
        .expect("one pending");
    let (_, reason, message) = c.condition(pending).await;
    assert_eq!(reason, "Unschedulable");
    assert_eq!(
        message,
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
         preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    );
    c.server.stop().await;
}

#[tokio::test]
async fn topology_spread_balances_zones() {
    let c = Cluster::new().await;
    // Zone a has three nodes, zone b one: resources alone would favour a.
    for (n, z) in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")] {
        c.node(
            n,
            "16",
            json!({"topology.kubernetes.io/zone": z}),
            json!([]),
        )
        .await;
    }
    let _s = c.with_scheduler();
    let spec = json!({"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web"}}
    }]});
    let webs = names("web", 6);
    for p in &webs {
        c.pod(p, json!({"app": "web"}), spec.clone()).await;
    }
    let placed = c.bound(&webs).await;
    let in_b = placed.values().filter(|n| *n == "b1").count();
    assert_eq!(in_b, 3, "zones a and b get 3 each: {placed:?}");
    c.server.stop().await;
}

#[tokio::test]
async fn unschedulable_pod_reports_upstreams_message_then_fits_a_new_node() {
    let c = Cluster::new().await;
    for n in ["n1", "n2", "n3"] {
        c.node(n, "2", json!({}), json!([])).await;
    }
    let _s = c.with_scheduler();
    c.pod("big", json!({}), requests("4")).await;
    let want = "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are \
                available: 3 No preemption victims found for incoming pod.";
    let (status, reason, message) = c.condition("big").await;
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        ("False", "Unschedulable", want)
    );
    let ev = c.event("big", "FailedScheduling").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.message.as_deref(), Some(want));
    assert_eq!(
        ev.source.and_then(|s| s.component).as_deref(),
        Some("default-scheduler")
    );
    // A node with room arrives: the pod is moved back and bound there.
    c.node("roomy", "8", json!({}), json!([])).await;
    let placed = c.bound(&["big".into()]).await;
    assert_eq!(placed["big"], "roomy");
    let ev = c.event("big", "Scheduled").await;
    assert_eq!(
        ev.message.as_deref(),
        Some("Successfully assigned default/big to roomy")
    );
    c.server.stop().await;
}

#[tokio::test]
async fn an_invalid_pod_gets_an_error_and_does_not_stop_scheduling() {
    let c = Cluster::new().await;
    c.node("n1", "4", json!({}), json!([])).await;
    let s = c.with_scheduler();
    c.pod("broken", json!({}), requests("lots")).await;
    c.pod("fine", json!({}), requests("1")).await;
    c.bound(&["fine".into()]).await;
    let ev = c.event("broken", "FailedScheduling").await;
    assert_eq!(
        ev.message.as_deref(),
        Some(
            "invalid pod: spec.containers[0].resources.requests[cpu]: \"lots\" is not a valid quantity"
        )
    );
    let (status, reason, _) = c.condition("broken").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SchedulerError")
    );
    assert!(!s.task.is_finished(), "the scheduler is still running");
    c.server.stop().await;
}

/// Long enough that a slow store commit on a loaded machine (each renewal
/// is a committed write) does not cost the leader its lease.
const LEASE: Duration = Duration::from_secs(6);
const RETRY: Duration = Duration::from_millis(300);

fn fast_election(identity: &str) -> Config {
    Config {
        leader_election: Some(LeaderElection {
            identity: identity.into(),
            lease_duration: LEASE,
            renew_deadline: Duration::from_secs(4),
            retry: RETRY,
            ..LeaderElection::new("kube-system")
        }),
        ..Config::default()
    }
}

#[tokio::test]
async fn two_schedulers_with_leader_election_never_both_bind() {
    let c = Cluster::new().await;
    for n in ["n1", "n2"] {
        c.node(n, "8", json!({}), json!([])).await;
    }
    let a = Running::start(c.client.clone(), fast_election("a"));
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-system");
    let holder = || async {
        leases
            .get("kube-scheduler")
            .await
            .ok()
            .and_then(|l| l.spec?.holder_identity)
    };
    eventually(WAIT, "a leads", || async {
        (a.stats.leading.load(Ordering::SeqCst) && holder().await.as_deref() == Some("a"))
            .then_some(())
    })
    .await;
    let b = Running::start(c.client.clone(), fast_election("b"));
    let first = names("p", 8);
    for p in &first {
        c.pod(p, json!({}), json!({})).await;
    }
    c.bound(&first).await;
    assert_eq!((a.bound(), b.bound()), (8, 0));
    assert!(!b.stats.leading.load(Ordering::SeqCst));

    // The leader dies without releasing the Lease.
    drop(a);
    let died = Instant::now();
    let second = names("q", 4);
    for p in &second {
        c.pod(p, json!({}), json!({})).await;
    }
    c.bound(&second).await;
    let took = died.elapsed();
    assert_eq!(b.bound(), 4, "the standby bound the rest");
    assert_eq!(holder().await.as_deref(), Some("b"));
    assert!(
        took >= LEASE - 2 * RETRY,
        "b must wait out a's lease, took {took:?}"
    );
    c.server.stop().await;
}

#[tokio::test]
async fn a_leader_that_shuts_down_hands_over_at_once() {
    let c = Cluster::new().await;
    c.node("n1", "8", json!({}), json!([])).await;
    // A long lease: only a release lets b lead quickly.
    let slow = |id: &str| {
        let mut cfg = fast_election(id);
        if let Some(le) = cfg.leader_election.as_mut() {
            le.lease_duration = Duration::from_secs(30);
            le.renew_deadline = Duration::from_secs(20);
        }
        cfg
    };
    let a = Running::start(c.client.clone(), slow("a"));
    eventually(WAIT, "a leads", || async {
        a.stats.leading.load(Ordering::SeqCst).then_some(())
    })
    .await;
    let b = Running::start(c.client.clone(), slow("b"));
    let stopped = Instant::now();
    a.stop().await;
    c.pod("after", json!({}), json!({})).await;
    c.bound(&["after".into()]).await;
    assert_eq!(b.bound(), 1);
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "b led after {:?}, long before the 30 s lease ran out",
        stopped.elapsed()
    );
    c.server.stop().await;
}
