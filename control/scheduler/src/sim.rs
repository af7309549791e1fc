//! Simulated nodes, for exercising the scheduler at scale: Node objects
//! with no agent behind them, kept alive the way KWOK keeps its nodes
//! (`kestrel sim nodes`, and the scheduler benchmark).
//!
//! A simulated node is Ready with a fixed allocatable. Its Lease in
//! `kube-node-lease` is renewed every `lease_interval`, and pods bound to
//! it are reported Running and Ready through pods/status.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use serde_json::json;

/// Namespace of node Leases, as upstream.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Label every simulated node carries, so they can be told apart.
pub const SIM_LABEL: &str = "kestrel.dev/simulated";

/// What the simulated nodes look like.
#[derive(Debug, Clone)]
pub struct Nodes {
    /// How many.
    pub count: usize,
    /// Names are `<prefix><index>`.
    pub prefix: String,
    /// Allocatable CPU (a quantity).
    pub cpu: String,
    /// Allocatable memory.
    pub memory: String,
    /// Allocatable pod slots.
    pub pods: String,
    /// Spread the nodes over this many `topology.kubernetes.io/zone`
    /// values (`zone-0`...); 0 for no zone label.
    pub zones: usize,
    /// Concurrent requests while creating and renewing.
    pub concurrency: usize,
}

impl Default for Nodes {
    fn default() -> Self {
        Self {
            count: 10,
            prefix: "sim-node-".into(),
            cpu: "32".into(),
            memory: "256Gi".into(),
            pods: "110".into(),
            zones: 0,
            concurrency: 32,
        }
    }
}

impl Nodes {
    /// The node names.
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.count).map(|i| format!("{}{i}", self.prefix))
    }

    /// The Node object for index `i`, with its status.
    pub fn node(&self, i: usize) -> Node {
        let name = format!("{}{i}", self.prefix);
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_owned(), name.clone()),
            ("kubernetes.io/os".to_owned(), "linux".to_owned()),
            ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
            ("type".to_owned(), "kwok".to_owned()),
            (SIM_LABEL.to_owned(), "true".to_owned()),
        ]);
        if self.zones > 0 {
            labels.insert(
                "topology.kubernetes.io/zone".into(),
                format!("zone-{}", i % self.zones),
            );
        }
        let now = Time(jiff::Timestamp::now());
        let resources = json!({"cpu": self.cpu, "memory": self.memory, "pods": self.pods, "ephemeral-storage": "100Gi"});
        let node = json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "message": "simulated node", "lastHeartbeatTime": now, "lastTransitionTime": now},
                    {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                     "lastHeartbeatTime": now, "lastTransitionTime": now},
                    {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
                     "lastHeartbeatTime": now, "lastTransitionTime": now},
                    {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
                     "lastHeartbeatTime": now, "lastTransitionTime": now}
                ],
                "nodeInfo": {"kubeletVersion": "kestrel-sim", "operatingSystem": "linux", "architecture": "amd64",
                             "containerRuntimeVersion": "", "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                             "machineID": "", "systemUUID": "", "bootID": ""}
            }
        });
        // Built from literals of the right shape; cannot fail.
        serde_json::from_value(node).unwrap_or_default()
    }

    /// Create (or, if they exist, refresh) the nodes and their status.
    pub async fn create(&self, client: &kube::Client) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(client.clone());
        futures::stream::iter(0..self.count)
            .map(|i| {
                let api = api.clone();
                async move {
                    let node = self.node(i);
                    let name = node.metadata.name.clone().unwrap_or_default();
                    match api.create(&PostParams::default(), &node).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 409 => {}
                        Err(e) => return Err(e),
                    }
                    // Status is a subresource: a create may not keep it.
                    let status = json!({"status": node.status});
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                        .map(drop)
                }
            })
            .buffer_unordered(self.concurrency.max(1))
            .try_collect::<()>()
            .await
    }

    /// Renew every node's Lease once (creating it if missing).
    pub async fn renew_leases(&self, client: &kube::Client) -> Result<(), kube::Error> {
        let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
        let now = MicroTime(jiff::Timestamp::now());
        futures::stream::iter(self.names())
            .map(|name| {
                let api = api.clone();
                let now = now.clone();
                async move {
                    let patch = json!({"spec": {"renewTime": now}});
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 404 => {
                            let lease: Lease = serde_json::from_value(json!({
                                "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
                                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}
                            }))
                            .unwrap_or_default();
                            api.create(&PostParams::default(), &lease).await.map(drop)
                        }
                        Err(e) => Err(e),
                    }
                }
            })
            .buffer_unordered(self.concurrency.max(1))
            .try_collect::<()>()
            .await
    }

    /// Keep the Leases fresh every `every` until the future is dropped.
    pub async fn keep_leases(&self, client: &kube::Client, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.renew_leases(client).await {
                tracing::warn!(error = %e, "renewing simulated node leases");
            }
        }
    }

    /// Report every pod bound to a simulated node Running and Ready,
    /// until the future is dropped.
    pub async fn run_pods(&self, client: &kube::Client) {
        let api: Api<Pod> = Api::all(client.clone());
        let stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        stream
            .for_each_concurrent(self.concurrency.max(1), |p| async move {
                let Ok(p) = p else { return };
                if let Err(e) = self.mark_running(client, &p).await {
                    tracing::debug!(pod = ?p.metadata.name, error = %e, "marking a simulated pod Running");
                }
            })
            .await;
    }

    async fn mark_running(&self, client: &kube::Client, p: &Pod) -> Result<(), kube::Error> {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            return Ok(());
        };
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if !node.starts_with(&self.prefix)
            || phase == Some("Running")
            || p.metadata.deletion_timestamp.is_some()
        {
            return Ok(());
        }
        let now = Time(jiff::Timestamp::now());
        let containers: Vec<_> = p
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| {
                json!({"name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true,
                       "restartCount": 0, "state": {"running": {"startedAt": now}}})
            })
            .collect();
        let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now, "lastProbeTime": null});
        let patch = json!({"status": {
            "phase": "Running",
            "startTime": now,
            "hostIP": "10.0.0.1",
            "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
            "containerStatuses": containers,
        }});
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        api.patch_status(
            p.metadata.name.as_deref().unwrap_or(""),
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
        .map(drop)
    }

    /// Delete the nodes and their Leases.
    pub async fn delete(&self, client: &kube::Client) -> Result<(), kube::Error> {
        let nodes: Api<Node> = Api::all(client.clone());
        let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
        futures::stream::iter(self.names())
            .map(|name| {
                let (nodes, leases) = (nodes.clone(), leases.clone());
                async move {
                    for r in [
                        nodes
                            .delete(&name, &DeleteParams::default())
                            .await
                            .map(drop),
                        leases
                            .delete(&name, &DeleteParams::default())
                            .await
                            .map(drop),
                    ] {
                        match r {
                            Ok(()) => {}
                            Err(kube::Error::Api(s)) if s.code == 404 => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                }
            })
            .buffer_unordered(self.concurrency.max(1))
            .try_collect::<()>()
            .await
    }
}
