//! A server with the controller manager running against it, and the bits
//! of a fake kubelet the scenarios need.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kestrel_apiserver::testing::TestServer;
use kestrel_controllers::{Manager, Options};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Long enough for a loaded CI machine, short enough to fail fast.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Cluster {
    /// Kept alive (and stopped on drop) for the scenario.
    pub _server: TestServer,
    pub client: kube::Client,
    manager: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// A server plus the controller manager with `tweak`ed options.
    pub async fn start(tweak: impl FnOnce(&mut Options)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestServer::start_in(dir.path(), |_| {}).await;
        let client = server.client().await;
        let mut c = Self {
            _server: server,
            client,
            manager: None,
            _dir: dir,
        };
        c.start_manager(tweak);
        c
    }

    /// Start (another) controller manager.
    pub fn start_manager(&mut self, tweak: impl FnOnce(&mut Options)) {
        let mut opts = fast_options();
        tweak(&mut opts);
        let m = Manager::new(self.client.clone(), opts).expect("manager");
        self.manager = Some(tokio::spawn(async move {
            m.run(std::future::pending()).await.expect("manager runs");
        }));
    }

    /// Stop the controller manager (as if its process died).
    pub async fn stop_manager(&mut self) {
        if let Some(m) = self.manager.take() {
            m.abort();
            let _ = m.await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(m) = self.manager.take() {
            m.abort();
        }
    }
}

pub fn fast_options() -> Options {
    Options {
        node_monitor_period: Duration::from_millis(100),
        ..Options::default()
    }
}

pub fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("test object")
}

pub async fn create_node(client: &kube::Client, name: &str, labels: serde_json::Value) -> Node {
    Api::<Node>::all(client.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": name, "labels": labels}})),
        )
        .await
        .expect("create node")
}

/// What a kubelet reports for a running pod.
pub async fn pod_running(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    let patch = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "Ready", "status": status},
            {"type": "ContainersReady", "status": status},
        ],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("pod status");
}
