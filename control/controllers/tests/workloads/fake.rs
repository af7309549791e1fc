//! The cluster a workload test runs in: the in-process API server, the
//! workload controllers, and a fake kubelet in place of nodes.
//!
//! The fake kubelet binds each pod (to the node its required node affinity
//! names, as DaemonSet pods carry, else to `fake-node`), then reports a
//! status chosen by the pod's `fake-kubelet/outcome` label: `fail` ends
//! the pod Failed, `succeed` ends it Succeeded, `pending` leaves it
//! Pending, and anything else makes it Running and Ready. A failed
//! container exits with the code in the `fake-kubelet/exit-code` label (1
//! if none), and a pod of an Indexed Job whose index is listed in its
//! `fake-kubelet/fail-indexes` annotation (`"1,3"`) fails whatever its
//! outcome. It also finishes graceful deletes, as a kubelet does once
//! containers have stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, Node, Pod,
};
use kestrel_apiserver::testing::TestServer;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::json;

/// The node pods without a pinned node are bound to.
pub const DEFAULT_NODE: &str = "fake-node";

/// A running test cluster. Dropping it stops everything.
pub struct Cluster {
    pub client: Client,
    pub server: TestServer,
    pub kubeconfig: std::path::PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start() -> Self {
        let mut c = Self::without_controllers().await;
        c.start_controllers();
        c
    }

    /// The server and the fake kubelet only: objects created before
    /// [`Cluster::start_controllers`] are in the controllers' first lists.
    pub async fn without_controllers() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestServer::start_in(dir.path(), |_| {}).await;
        let client = server.client().await;
        let kubelet = tokio::spawn(fake_kubelet(client.clone()));
        Self {
            kubeconfig: server.kubeconfig.clone(),
            client,
            server,
            tasks: vec![kubelet],
            _dir: dir,
        }
    }

    /// Starts the workload controllers.
    pub fn start_controllers(&mut self) {
        let cfg = kestrel_controllers::WorkloadConfig {
            job_backoff: Duration::from_millis(100),
        };
        let c = self.client.clone();
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = kestrel_controllers::run_workloads_with(c, cfg).await {
                panic!("workload controllers stopped: {e:#}");
            }
        }));
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Create a node the fake kubelet reports Ready.
    pub async fn add_node(&self, name: &str, labels: &[(&str, &str)]) -> Node {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain([("kubernetes.io/hostname".to_owned(), name.to_owned())])
            .collect();
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("create node")
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("addr", &self.server.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn fake_kubelet(client: Client) {
    let all: Api<Pod> = Api::all(client.clone());
    let mut events = std::pin::pin!(watcher::watcher(all, watcher::Config::default()));
    while let Some(ev) = events.next().await {
        let pods = match ev {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => vec![p],
            _ => continue,
        };
        for p in pods {
            let client = client.clone();
            // One task per event: a slow API call must not hold up others.
            tokio::spawn(async move {
                for _ in 0..20 {
                    if step(&client, &p).await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
    }
}

async fn step(client: &Client, p: &Pod) -> Result<(), kube::Error> {
    let ns = p.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let name = p.name_any();
    let ok_gone = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        r => r,
    };
    if p.metadata.deletion_timestamp.is_some() {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        return ok_gone(api.delete(&name, &dp).await.map(|_| ()));
    }
    let node = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    if node.is_none() {
        let target = kestrel_controllers::daemonset::pinned_node(p)
            .unwrap_or_else(|| DEFAULT_NODE.to_owned());
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"kind": "Node", "name": target},
        });
        return ok_gone(
            api.create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
            .map(|_| ()),
        );
    }
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase != "Pending" && !phase.is_empty() {
        return Ok(());
    }
    let index = p
        .annotations()
        .get("batch.kubernetes.io/job-completion-index")
        .cloned();
    let index_fails = p
        .annotations()
        .get("fake-kubelet/fail-indexes")
        .zip(index)
        .is_some_and(|(list, i)| list.split(',').any(|x| x.trim() == i));
    let outcome = if index_fails {
        "fail".to_owned()
    } else {
        p.labels()
            .get("fake-kubelet/outcome")
            .cloned()
            .unwrap_or_default()
    };
    let exit_code = p
        .labels()
        .get("fake-kubelet/exit-code")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let container = p
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .unwrap_or_default();
    let cs = |state: ContainerState, ready: bool| ContainerStatus {
        name: container.0.clone(),
        image: container.1.clone(),
        image_id: String::new(),
        ready,
        restart_count: 0,
        started: Some(ready),
        state: Some(state),
        ..Default::default()
    };
    let terminated = |code: i32| ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: code,
            finished_at: Some(now.clone()),
            reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let status = match outcome.as_str() {
        "pending" => return Ok(()),
        "fail" => {
            json!({"phase": "Failed", "containerStatuses": [cs(terminated(exit_code), false)],
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}]})
        }
        "succeed" => json!({"phase": "Succeeded", "containerStatuses": [cs(terminated(0), false)],
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}]}),
        _ => json!({
            "phase": "Running",
            "podIP": "10.42.0.10",
            "startTime": now,
            "containerStatuses": [cs(ContainerState {
                running: Some(ContainerStateRunning { started_at: Some(now.clone()) }),
                ..Default::default()
            }, true)],
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
            ],
        }),
    };
    ok_gone(
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .map(|_| ()),
    )
}
