//! The node's eBPF dataplane as the agent runs it: the object loaded over
//! the node's bpffs pins (so a restarted agent adopts the maps, links and
//! connections the kernel already holds), the socket load balancer attached
//! to the node's own cgroup, and the service maps kept in sync with the
//! API server.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kestrel_cni::proto::PodNetworkEvent;
use kestrel_dataplane::policy::{PolicyNames, PolicyNode, PolicySync};
use kestrel_dataplane::tc::{NodeNetwork, PodEndpoint, monotonic_now, parse_mac};
use kestrel_dataplane::{Dataplane, EbpfLogLevel, LoadOptions};

/// How often idle conntrack entries, and links and endpoints of pods that
/// are gone, are swept.
const GC_INTERVAL: Duration = Duration::from_secs(30);

/// How the agent runs the dataplane.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node's bpffs directory.
    pub pin_dir: PathBuf,
    /// Whether east-west service traffic is balanced at connect() time.
    /// Off, the per-packet programs carry it (the packet benchmark compares
    /// the two).
    pub socket_lb: bool,
    /// The level of the programs' aya-log records (per-packet detail at
    /// debug), forwarded to the agent's log under the `ebpf` target.
    pub log_level: EbpfLogLevel,
}

/// The loaded dataplane, shared by the tasks that attach to it.
pub type Shared = Arc<Mutex<Dataplane>>;

/// Loads the object and attaches what belongs to the node as a whole.
pub fn start(options: &Options) -> anyhow::Result<Shared> {
    ensure_bpffs(&options.pin_dir)?;
    let mut load = LoadOptions::new(&options.pin_dir);
    load.log_level = options.log_level;
    let mut dp = Dataplane::load(&load).context("loading the eBPF dataplane")?;
    // The pump lives as long as the process: the programs log for as long
    // as they are attached.
    if let Err(e) = kestrel_dataplane::spawn_log_pump(dp.ebpf_mut()) {
        tracing::warn!(error = %e, "the programs' log records will not be shown");
    }
    let cgroup = kestrel_dataplane::host::own_cgroup_dir().context("finding the node's cgroup")?;
    if options.socket_lb {
        dp.attach_sock_lb(&cgroup).with_context(|| {
            format!("attaching the socket load balancer to {}", cgroup.display())
        })?;
        tracing::info!(cgroup = %cgroup.display(), "socket load balancer attached");
    } else {
        kestrel_dataplane::detach_sock_lb(&options.pin_dir)
            .context("detaching the socket load balancer")?;
        tracing::info!("socket load balancer off: services go through the per-packet path");
    }
    Ok(Arc::new(Mutex::new(dp)))
}

/// Pins only survive on a bpffs; anywhere else the kernel refuses them, so
/// say so up front.
fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let fs = nix::sys::statfs::statfs(dir).with_context(|| format!("statfs {}", dir.display()))?;
    anyhow::ensure!(
        fs.filesystem_type().0 == BPF_FS_MAGIC,
        "{} is not on a bpffs; mount one there (mount -t bpf bpffs {}) or pass --bpf-dir",
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn lock(dp: &Shared) -> std::sync::MutexGuard<'_, Dataplane> {
    dp.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Once the node's addresses are known: the network configuration the
/// per-packet programs need, and `tc_from_uplink` on the interface that
/// holds `node_ip` (the node's own link into the fabric).
pub fn attach_node(dp: &Shared, node_ip: Ipv4Addr, pod_cidr: &str) -> anyhow::Result<()> {
    let pod_cidr: ipnet::Ipv4Net = pod_cidr
        .parse()
        .with_context(|| format!("podCIDR {pod_cidr:?}"))?;
    let uplink = interface_with(node_ip)?;
    let mut dp = lock(dp);
    dp.set_node_network(&NodeNetwork::new(node_ip, pod_cidr))
        .context("writing the node network configuration")?;
    let how = dp
        .attach_uplink(&uplink)
        .with_context(|| format!("attaching to the uplink {uplink}"))?;
    tracing::info!(%uplink, ?how, "per-packet programs attached to the uplink");
    Ok(())
}

/// The name of the interface carrying `ip`.
fn interface_with(ip: Ipv4Addr) -> anyhow::Result<String> {
    nix::ifaddrs::getifaddrs()
        .context("listing interfaces")?
        .find(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|s| s.ip())) == Some(ip))
        .map(|a| a.interface_name)
        .with_context(|| format!("no interface holds the node address {ip}"))
}

/// A pod's interface is wired (CNI ADD): attach `tc_from_pod` to its node
/// end and record the pod as a local endpoint, before the plugin returns.
pub fn pod_added(dp: &Shared, e: &PodNetworkEvent) -> anyhow::Result<()> {
    let ip: Ipv4Addr = e.ip.parse().with_context(|| format!("pod IP {:?}", e.ip))?;
    let mac = |m: &str| parse_mac(m).with_context(|| format!("MAC {m:?}"));
    let endpoint = PodEndpoint {
        ip,
        ifindex: e.host_ifindex,
        pod_mac: mac(&e.pod_mac)?,
        host_mac: mac(&e.host_mac)?,
    };
    let mut dp = lock(dp);
    dp.attach_pod_veth(&e.host_ifname)
        .with_context(|| format!("attaching to {}", e.host_ifname))?;
    dp.add_local_endpoint(&endpoint)
        .with_context(|| format!("recording the endpoint {ip}"))?;
    Ok(())
}

/// A pod's interface is gone (CNI DEL).
pub fn pod_deleted(dp: &Shared, e: &PodNetworkEvent) -> anyhow::Result<()> {
    let mut dp = lock(dp);
    if let Ok(ip) = e.ip.parse::<Ipv4Addr>() {
        dp.remove_local_endpoint(ip)
            .with_context(|| format!("removing the endpoint {ip}"))?;
    }
    dp.prune_links().context("pruning links")?;
    Ok(())
}

/// Sweeps, until the task is dropped: idle conntrack entries, links of
/// interfaces that are gone, and endpoints whose veth is gone (a pod
/// deleted while the agent was down).
pub async fn gc(dp: Shared) {
    let mut tick = tokio::time::interval(GC_INTERVAL);
    loop {
        tick.tick().await;
        let mut dp = lock(&dp);
        let swept = monotonic_now()
            .and_then(|now| dp.conntrack_gc(now))
            .map_err(anyhow::Error::from)
            .and_then(|ct| {
                let links = dp.prune_links()?;
                let mut endpoints = 0;
                for ep in dp.local_endpoints()? {
                    if nix::net::if_::if_indextoname(ep.ifindex).is_err()
                        && dp.remove_local_endpoint(ep.ip)?
                    {
                        endpoints += 1;
                    }
                }
                Ok((ct, links, endpoints))
            });
        match swept {
            Ok((ct, links, endpoints)) => {
                tracing::debug!(?ct, links, endpoints, "dataplane garbage collected");
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "dataplane garbage collection"),
        }
    }
}

/// Starts the service map sync and waits for its first full sync, so the
/// node reports its network ready only once services work on it.
pub async fn sync_services(
    client: kube::Client,
    node_name: &str,
    node_ip: Ipv4Addr,
    pin_dir: &Path,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use kestrel_dataplane::sync::{NodeIdentity, ServiceSync};
    let sync = ServiceSync::new(
        client,
        NodeIdentity {
            name: node_name.to_owned(),
            ips: vec![node_ip],
        },
        pin_dir,
    );
    let mut status = sync.status();
    let task = tokio::spawn(async move {
        if let Err(e) = sync.run(std::future::pending()).await {
            tracing::error!(error = %e, "the service map sync stopped");
        }
    });
    status
        .wait_synced()
        .await
        .map_err(|_| anyhow::anyhow!("the service map sync ended before its first sync"))?;
    tracing::info!("service maps in sync");
    Ok(task)
}

/// Starts the network policy sync and waits for its first full sync, so
/// no pod on the node runs before its policy is in the kernel. Returns the
/// task and the names the sync keeps (pods, policies, identities).
pub async fn sync_policy(
    client: kube::Client,
    node_name: &str,
    node_ip: Ipv4Addr,
    pin_dir: &Path,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, PolicyNames)> {
    let sync = PolicySync::new(
        client,
        PolicyNode {
            name: node_name.to_owned(),
            ips: vec![node_ip],
        },
        pin_dir,
    );
    let names = sync.names();
    let mut status = sync.status();
    let task = tokio::spawn(async move {
        if let Err(e) = sync.run(std::future::pending()).await {
            tracing::error!(error = %e, "the network policy sync stopped");
        }
    });
    status
        .wait_synced()
        .await
        .map_err(|_| anyhow::anyhow!("the network policy sync ended before its first sync"))?;
    tracing::info!("network policy maps in sync");
    Ok((task, names))
}

impl crate::observe::Names for PolicyNames {
    fn pod(&self, ip: Ipv4Addr) -> Option<(String, String)> {
        PolicyNames::pod(self, ip)
    }

    fn policy(&self, id: u32) -> Option<String> {
        PolicyNames::policy(self, id)
    }

    fn identity(&self, id: u32) -> Option<String> {
        PolicyNames::identity(self, id)
    }
}
