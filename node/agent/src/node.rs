//! The Node object and its Lease.
//!
//! The agent creates its Node (or takes over the one a previous run left),
//! reports capacity, addresses, nodeInfo and conditions through
//! nodes/status, and renews `kube-node-lease/<node>` every 10 s. Status
//! is written when it changes and at least every minute; the Lease is the
//! cheap heartbeat the node lifecycle controller watches, as upstream.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::watch;

/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease duration the agent announces.
const LEASE_SECONDS: i32 = 40;
/// Status is rewritten at least this often even when nothing changed.
const STATUS_REFRESH: Duration = Duration::from_secs(60);
/// How often conditions are re-evaluated.
const STATUS_CHECK: Duration = Duration::from_secs(10);
/// Pods a node runs, as upstream's default --max-pods.
pub const MAX_PODS: u32 = 110;

/// What the agent knows about its node.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// The address other nodes and the API server reach it at.
    pub ip: Ipv4Addr,
    /// Port of the node API.
    pub kubelet_port: u16,
    /// containerd's version string, e.g. `containerd://1.6.20`.
    pub runtime_version: String,
    /// Where pod data lives, for ephemeral-storage.
    pub data_dir: std::path::PathBuf,
}

/// Machine facts read from /proc and the kernel.
struct Machine {
    cpus: usize,
    memory_bytes: u64,
    storage_bytes: u64,
    kernel: String,
    os_image: String,
    machine_id: String,
    boot_id: String,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A field from /proc/meminfo, in bytes.
fn meminfo(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// (total, available) bytes of the filesystem holding `dir`.
fn disk(dir: &Path) -> (u64, u64) {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| {
            let f = s.fragment_size();
            (s.blocks() * f, s.blocks_available() * f)
        })
        .unwrap_or((0, 0))
}

impl Machine {
    fn read(data_dir: &Path) -> Self {
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| "Linux".to_owned());
        Self {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            memory_bytes: meminfo("MemTotal:").unwrap_or(0),
            storage_bytes: disk(data_dir).0,
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            os_image,
            machine_id: read_trim("/etc/machine-id"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
        }
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn condition(
    kind: &str,
    on: bool,
    reason: &str,
    message: &str,
    prev: Option<&NodeCondition>,
) -> NodeCondition {
    let status = if on { "True" } else { "False" };
    let now = Time(jiff::Timestamp::now());
    let transition = prev
        .filter(|p| p.status == status)
        .and_then(|p| p.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    NodeCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(now),
        last_transition_time: Some(transition),
    }
}

/// The node's conditions from what the machine shows now.
fn conditions(
    facts: &NodeFacts,
    network_ready: bool,
    prev: &[NodeCondition],
) -> Vec<NodeCondition> {
    let p = |t: &str| prev.iter().find(|c| c.type_ == t);
    // Thresholds after upstream's default hard eviction signals.
    let mem_low = meminfo("MemAvailable:").is_some_and(|a| a < 100 << 20);
    let (total, avail) = disk(&facts.data_dir);
    let disk_low = total > 0 && avail * 10 < total;
    let pid_max: u64 = read_trim("/proc/sys/kernel/pid_max")
        .parse()
        .unwrap_or(u64::MAX);
    let pids = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter(|e| {
                e.as_ref().is_ok_and(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
            })
            .count() as u64
        })
        .unwrap_or(0);
    let pid_low = pids * 10 > pid_max * 9;
    vec![
        condition(
            "MemoryPressure",
            mem_low,
            if mem_low {
                "KubeletHasInsufficientMemory"
            } else {
                "KubeletHasSufficientMemory"
            },
            if mem_low {
                "kubelet has insufficient memory available"
            } else {
                "kubelet has sufficient memory available"
            },
            p("MemoryPressure"),
        ),
        condition(
            "DiskPressure",
            disk_low,
            if disk_low {
                "KubeletHasDiskPressure"
            } else {
                "KubeletHasNoDiskPressure"
            },
            if disk_low {
                "kubelet has disk pressure"
            } else {
                "kubelet has no disk pressure"
            },
            p("DiskPressure"),
        ),
        condition(
            "PIDPressure",
            pid_low,
            if pid_low {
                "KubeletHasInsufficientPID"
            } else {
                "KubeletHasSufficientPID"
            },
            if pid_low {
                "kubelet has insufficient PID available"
            } else {
                "kubelet has sufficient PID available"
            },
            p("PIDPressure"),
        ),
        condition(
            "NetworkUnavailable",
            !network_ready,
            if network_ready {
                "RouteCreated"
            } else {
                "NoRouteCreated"
            },
            if network_ready {
                "kestrel-cni is configured and routes are in place"
            } else {
                "waiting for the pod CIDR and the pod network"
            },
            p("NetworkUnavailable"),
        ),
        condition(
            "Ready",
            network_ready,
            if network_ready {
                "KubeletReady"
            } else {
                "KubeletNotReady"
            },
            if network_ready {
                "kubelet is posting ready status"
            } else {
                "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized"
            },
            p("Ready"),
        ),
    ]
}

fn status(facts: &NodeFacts, network_ready: bool, prev: &[NodeCondition]) -> NodeStatus {
    let m = Machine::read(&facts.data_dir);
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", m.cpus.to_string()),
        ("memory", format!("{}Ki", m.memory_bytes / 1024)),
        ("ephemeral-storage", format!("{}Ki", m.storage_bytes / 1024)),
        ("pods", MAX_PODS.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Quantity(v)))
    .collect();
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: facts.ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: facts.name.clone(),
            },
        ]),
        conditions: Some(conditions(facts, network_ready, prev)),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(facts.kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: arch().into(),
            boot_id: m.boot_id,
            container_runtime_version: facts.runtime_version.clone(),
            kernel_version: m.kernel,
            kube_proxy_version: String::new(),
            kubelet_version: kestrel_api::git_version(),
            machine_id: m.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: m.os_image,
            system_uuid: m.machine_id,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Create the Node if it does not exist; labels are (re)applied either way.
pub async fn register(client: &kube::Client, facts: &NodeFacts) -> anyhow::Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", facts.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let node = match nodes
        .get_opt(&facts.name)
        .await
        .context("reading the Node")?
    {
        Some(_) => {
            let patch = serde_json::json!({"metadata": {"labels": labels}});
            nodes
                .patch(&facts.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .context("labelling the Node")?
        }
        None => nodes
            .create(
                &PostParams::default(),
                &Node {
                    metadata: ObjectMeta {
                        name: Some(facts.name.clone()),
                        labels: Some(labels),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .context("creating the Node")?,
    };
    let st = status(facts, false, &[]);
    nodes
        .patch_status(
            &facts.name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "status": st })),
        )
        .await
        .context("reporting the Node's status")?;
    Ok(node)
}

/// Keep the Node's status and Lease fresh until the process ends.
/// `network_ready` flips NetworkUnavailable/Ready once the pod network is up.
pub async fn heartbeat(
    client: kube::Client,
    facts: NodeFacts,
    mut network_ready: watch::Receiver<bool>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut last_status: Option<(serde_json::Value, tokio::time::Instant)> = None;
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_CHECK);
    loop {
        tokio::select! {
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&nodes, &leases, &facts.name).await {
                    tracing::warn!(error = %format!("{e:#}"), "renewing the node lease");
                }
                continue;
            }
            _ = status_tick.tick() => {}
            r = network_ready.changed() => if r.is_err() { return; },
        }
        let ready = *network_ready.borrow();
        let prev = nodes
            .get_opt(&facts.name)
            .await
            .ok()
            .flatten()
            .and_then(|n| n.status?.conditions)
            .unwrap_or_default();
        let st = status(&facts, ready, &prev);
        // Compare without heartbeat times: only real changes write early.
        let mut key = serde_json::to_value(&st).unwrap_or_default();
        if let Some(cs) = key
            .pointer_mut("/conditions")
            .and_then(|c| c.as_array_mut())
        {
            for c in cs {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastHeartbeatTime");
                }
            }
        }
        let fresh = last_status
            .as_ref()
            .is_some_and(|(k, at)| *k == key && at.elapsed() < STATUS_REFRESH);
        if fresh {
            continue;
        }
        match nodes
            .patch_status(
                &facts.name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({ "status": st })),
            )
            .await
        {
            Ok(_) => last_status = Some((key, tokio::time::Instant::now())),
            Err(e) => tracing::warn!(error = %e, "reporting node status"),
        }
    }
}

async fn renew_lease(nodes: &Api<Node>, leases: &Api<Lease>, name: &str) -> anyhow::Result<()> {
    let now = MicroTime(jiff::Timestamp::now());
    if let Some(mut lease) = leases.get_opt(name).await? {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(name.to_owned());
        spec.lease_duration_seconds = Some(LEASE_SECONDS);
        spec.renew_time = Some(now);
        leases.replace(name, &PostParams::default(), &lease).await?;
        return Ok(());
    }
    let node = nodes.get(name).await?;
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("kube-node-lease".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: name.to_owned(),
                uid: node.metadata.uid.unwrap_or_default(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_owned()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(now),
            ..Default::default()
        }),
    };
    leases.create(&PostParams::default(), &lease).await?;
    Ok(())
}

/// Wait until the node controller gives this node a pod CIDR.
pub async fn wait_pod_cidr(client: &kube::Client, name: &str) -> anyhow::Result<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut logged = false;
    loop {
        if let Some(cidr) = nodes
            .get_opt(name)
            .await
            .context("reading the Node")?
            .and_then(|n| n.spec?.pod_cidr)
            .filter(|c| !c.is_empty())
        {
            return Ok(cidr);
        }
        if !logged {
            tracing::info!(
                node = name,
                "waiting for spec.podCIDR from the node IPAM controller"
            );
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
