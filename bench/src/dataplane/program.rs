//! Programming a node's service rules from scratch and changing one
//! endpoint, three ways, timed the same way (from the service set to rules
//! the kernel uses, generation included):
//!
//! - Kestrel: Services and EndpointSlices → `service_state` → `Syncer`
//!   diff → BPF map writes, exactly as the agent's sync loop does;
//! - kube-proxy iptables: the restore text → `iptables-restore --noflush
//!   --counters`, with the legacy (x_tables) or the nf_tables build of
//!   iptables (see [`IptablesBackend`]);
//! - kube-proxy nftables: the transaction → `nft -f -`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kestrel_dataplane::sync::{
    IdLimits, NodeIdentity, PinnedMaps, ServiceRef, ServiceState, Syncer, service_state,
};
use kestrel_testkit::Netns;

use super::{
    kubeproxy::{self, NodeRules},
    services::{NAMESPACE, Svc},
    topo::{self, Topology},
};

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(NAMESPACE.to_owned()),
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

/// The Service and its one EndpointSlice, as the API server would hold them.
pub fn k8s_objects(svc: &Svc) -> (Service, EndpointSlice) {
    let node_port = svc.ports.iter().any(|p| p.node_port.is_some());
    let service = Service {
        metadata: meta(&svc.name),
        spec: Some(ServiceSpec {
            type_: Some(if node_port { "NodePort" } else { "ClusterIP" }.to_owned()),
            cluster_ip: Some(svc.vip.to_string()),
            cluster_ips: Some(vec![svc.vip.to_string()]),
            ports: Some(
                svc.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.to_owned()),
                        port: i32::from(p.port),
                        protocol: Some(p.proto.upper().to_owned()),
                        target_port: Some(IntOrString::Int(i32::from(p.target))),
                        node_port: p.node_port.map(i32::from),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let mut m = meta(&format!("{}-1", svc.name));
    m.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_owned(),
        svc.name.clone(),
    )]));
    let slice = EndpointSlice {
        metadata: m,
        address_type: "IPv4".to_owned(),
        endpoints: Some(
            svc.endpoints
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    node_name: Some(svc.endpoint_node.to_owned()),
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Endpoint::default()
                })
                .collect(),
        ),
        ports: Some(
            svc.ports
                .iter()
                .map(|p| EndpointPort {
                    name: Some(p.name.to_owned()),
                    port: Some(i32::from(p.target)),
                    protocol: Some(p.proto.upper().to_owned()),
                    app_protocol: None,
                })
                .collect(),
        ),
    };
    (service, slice)
}

/// Node 1 as Kestrel's sync sees it.
fn identity(topo: &Topology) -> NodeIdentity {
    NodeIdentity {
        name: "node-1".to_owned(),
        ips: vec![topo.nodes[0].ip],
    }
}

fn state(svc: &Svc, node: &NodeIdentity) -> (ServiceRef, ServiceState) {
    let (service, slice) = k8s_objects(svc);
    (
        ServiceRef::new(NAMESPACE, &svc.name),
        service_state(&service, &[&slice], node),
    )
}

/// Kestrel's sync over node 1's pinned maps.
pub struct Kestrel {
    syncer: Syncer<PinnedMaps>,
    programmed: Vec<ServiceRef>,
}

impl std::fmt::Debug for Kestrel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kestrel")
            .field("programmed", &self.programmed.len())
            .finish_non_exhaustive()
    }
}

impl Kestrel {
    pub fn open(topo: &Topology) -> Result<Self> {
        let maps = PinnedMaps::open(topo.nodes[0].bpffs.path())?;
        Ok(Self {
            syncer: Syncer::adopt(maps, IdLimits::default())?,
            programmed: Vec::new(),
        })
    }

    /// Empties the maps (untimed).
    pub fn clear(&mut self) -> Result<()> {
        for svc in self.programmed.drain(..) {
            self.syncer.set_service(&svc, ServiceState::default());
        }
        self.syncer.flush()?;
        Ok(())
    }

    /// Programs `services` into empty maps; returns the time taken.
    pub fn program(&mut self, topo: &Topology, services: &[Svc]) -> Result<Duration> {
        self.clear()?;
        let node = identity(topo);
        let t = Instant::now();
        for svc in services {
            let (r, st) = state(svc, &node);
            self.syncer.set_service(&r, st);
            self.programmed.push(r);
        }
        self.syncer.flush()?;
        Ok(t.elapsed())
    }

    /// Applies one Service's new state; returns the time taken.
    pub fn update(&mut self, topo: &Topology, new: &Svc) -> Result<Duration> {
        let node = identity(topo);
        let t = Instant::now();
        let (r, st) = state(new, &node);
        self.syncer.set_service(&r, st);
        self.syncer.flush()?;
        Ok(t.elapsed())
    }
}

/// kube-proxy's view of node 1.
pub fn node_rules(topo: &Topology) -> NodeRules {
    NodeRules {
        cluster_cidr: topo::CLUSTER_CIDR.to_owned(),
        service_cidr: topo::SERVICE_CIDR.to_owned(),
        node_ip: topo.nodes[0].ip.to_string(),
    }
}

/// Which build of iptables loads kube-proxy's layout. kube-proxy uses the
/// one the host uses; Debian 12 defaults to `nft`, whose restore slows
/// down sharply with size (1,000 Services took seconds, 10,000 did not
/// finish in ten minutes on this benchmark's machine), so a run that goes
/// to 10,000 Services and beyond needs `legacy` for path (d) to exist at
/// all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum IptablesBackend {
    /// x_tables: the whole table is built in user space and swapped in.
    Legacy,
    /// nf_tables through the iptables syntax (`iptables-nft`).
    Nft,
}

impl IptablesBackend {
    pub fn iptables(self) -> &'static str {
        match self {
            Self::Legacy => "iptables-legacy",
            Self::Nft => "iptables-nft",
        }
    }

    /// The build not chosen.
    pub fn other(self) -> Self {
        match self {
            Self::Legacy => Self::Nft,
            Self::Nft => Self::Legacy,
        }
    }

    pub fn restore(self) -> &'static str {
        match self {
            Self::Legacy => "iptables-legacy-restore",
            Self::Nft => "iptables-nft-restore",
        }
    }
}

/// Removes every iptables rule and chain in `ns`, from both builds of
/// iptables (untimed).
pub fn iptables_clear(ns: &Netns) -> Result<()> {
    for backend in [IptablesBackend::Legacy, IptablesBackend::Nft] {
        for table in ["filter", "nat"] {
            topo::ns_run(ns, &[backend.iptables(), "-t", table, "-F"])?;
            topo::ns_run(ns, &[backend.iptables(), "-t", table, "-X"])?;
        }
    }
    Ok(())
}

/// kube-proxy's iptables layout from scratch: the one-time jumps
/// (untimed), then a full-sync restore (timed, generation included).
pub fn iptables_program(
    ns: &Netns,
    backend: IptablesBackend,
    node: &NodeRules,
    services: &[Svc],
    limit: Duration,
) -> Result<Duration> {
    iptables_clear(ns)?;
    topo::ns_pipe(
        ns,
        &[backend.restore(), "--noflush"],
        &kubeproxy::iptables_base(),
        None,
    )
    .context("installing kube-proxy's base jumps")?;
    let t = Instant::now();
    let text = kubeproxy::iptables_full(node, services);
    topo::ns_pipe(
        ns,
        &[backend.restore(), "--noflush", "--counters"],
        &text,
        Some(limit),
    )?;
    Ok(t.elapsed())
}

/// A partial sync for one changed Service (timed, generation included).
pub fn iptables_update(
    ns: &Netns,
    backend: IptablesBackend,
    node: &NodeRules,
    services: &[Svc],
    old: &Svc,
    new: &Svc,
) -> Result<Duration> {
    let t = Instant::now();
    let text = kubeproxy::iptables_partial(node, services, old, new);
    topo::ns_pipe(
        ns,
        &[backend.restore(), "--noflush", "--counters"],
        &text,
        None,
    )
    .context("iptables-restore of the partial sync")?;
    Ok(t.elapsed())
}

/// Deletes kube-proxy's nftables table if present (untimed).
pub fn nft_clear(ns: &Netns) -> Result<()> {
    let _ = topo::ns_pipe(ns, &["nft", "-f", "-"], &kubeproxy::nft_delete(), None);
    Ok(())
}

/// kube-proxy's nftables layout from scratch (timed, generation included).
pub fn nft_program(
    ns: &Netns,
    node: &NodeRules,
    services: &[Svc],
    limit: Duration,
) -> Result<Duration> {
    nft_clear(ns)?;
    let t = Instant::now();
    let text = kubeproxy::nft_full(node, services);
    topo::ns_pipe(ns, &["nft", "-f", "-"], &text, Some(limit))?;
    Ok(t.elapsed())
}

/// A partial nftables sync for one changed Service.
pub fn nft_update(ns: &Netns, node: &NodeRules, old: &Svc, new: &Svc) -> Result<Duration> {
    let t = Instant::now();
    let text = kubeproxy::nft_partial(node, old, new);
    topo::ns_pipe(ns, &["nft", "-f", "-"], &text, None).context("nft -f of the partial sync")?;
    Ok(t.elapsed())
}
