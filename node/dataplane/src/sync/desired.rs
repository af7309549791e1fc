//! What the service maps should hold for one Service, computed from the
//! Service and its EndpointSlices with kube-proxy's rules. Pure: no kernel,
//! no API server.
//!
//! Frontends: every IPv4 ClusterIP, every `externalIPs` entry, every
//! LoadBalancer ingress IP (unless its `ipMode` is `Proxy`: the load
//! balancer then delivers to the node itself) and, for NodePort and
//! LoadBalancer services, the NodePort (address 0), for each port of the
//! Service. Headless and ExternalName Services, and Services handed to
//! another proxy (`service.kubernetes.io/service-proxy-name`), have none.
//!
//! Backends of a Service port are the endpoints of its IPv4 EndpointSlices
//! whose slice port has the same name and protocol (upstream matches by
//! name, because a named target port may resolve to a different number on
//! each pod). Which of them take new connections:
//! - ready endpoints (a missing `ready` counts as ready);
//! - if there are none, the serving-and-terminating ones, so that a
//!   Service whose pods are all rolling over keeps answering.
//!
//! This choice is made per scope. The two scopes of a frontend:
//! - ClusterIP frontends. Both scopes hold the internal-policy set: every
//!   usable endpoint, or only this node's with `internalTrafficPolicy:
//!   Local` ([`svc_flags::INT_LOCAL`]). Upstream applies the internal policy
//!   to a ClusterIP whoever the client is, so the external scope (read by
//!   the per-packet programs for traffic from outside the node) is the same.
//! - NodePort, externalIP and LoadBalancer frontends. The external scope
//!   holds every usable endpoint, or only this node's with
//!   `externalTrafficPolicy: Local` ([`svc_flags::EXT_LOCAL`]). The internal
//!   scope (clients on this node and its pods) always holds every usable
//!   endpoint: upstream short-circuits such in-cluster traffic to the
//!   cluster-wide set, and the internal policy never applies to these
//!   frontends.
//!
//! Every matched endpoint with a usable address is also a backend of the
//! Service even when it is in no slot (not ready, or terminating and not
//! chosen): it stays in the backends map while its EndpointSlice lists it,
//! so connections already tracked to it finish and its id stays the same if
//! it becomes ready again. Such endpoints carry
//! [`backend_flags::TERMINATING`] when they are terminating.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kestrel_ebpf_common::lb::{backend_flags, scope, svc_flags};

/// The label that names an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services with this label belong to another proxy; upstream skips them too.
const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Upstream's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// IP protocol numbers, as they sit in the map keys.
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// SCTP.
    pub const SCTP: u8 = 132;

    /// The protocol number of a Kubernetes protocol name (default TCP).
    pub fn from_k8s(name: Option<&str>) -> Option<u8> {
        match name.unwrap_or("TCP") {
            "TCP" => Some(TCP),
            "UDP" => Some(UDP),
            "SCTP" => Some(SCTP),
            _ => None,
        }
    }

    /// The Kubernetes name of a protocol number.
    pub fn name(proto: u8) -> &'static str {
        match proto {
            TCP => "TCP",
            UDP => "UDP",
            SCTP => "SCTP",
            _ => "?",
        }
    }
}

/// This node, as the sync loop needs to know it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The Node's name: endpoints with this `nodeName` are local.
    pub name: String,
    /// The node's addresses. The maps do not need them (a NodePort frontend
    /// has address 0, meaning any local address); they travel with the
    /// identity for the programs that must recognise this node's addresses.
    pub ips: Vec<Ipv4Addr>,
}

/// A Service, as `namespace/name`; cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef(Arc<str>);

impl ServiceRef {
    /// The Service `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self(format!("{namespace}/{name}").into())
    }

    /// `namespace/name`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace and the name (a namespace never holds a `/`).
    pub fn parts(&self) -> (&str, &str) {
        self.0.split_once('/').unwrap_or(("", &self.0))
    }
}

impl fmt::Debug for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A frontend: what a client connects to. NodePorts have address 0.0.0.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// ClusterIP, externalIP, LoadBalancer IP, or 0.0.0.0 for a NodePort.
    pub addr: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.addr.is_unspecified() {
            write!(f, "*:{}/{}", self.port, proto::name(self.proto))
        } else {
            write!(f, "{}:{}/{}", self.addr, self.port, proto::name(self.proto))
        }
    }
}

/// A backend: one endpoint address and port. Backends are shared by every
/// Service that lists the same (address, port, protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// Endpoint address.
    pub addr: Ipv4Addr,
    /// Endpoint port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}

/// The desired master and slots of one frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    /// [`svc_flags`].
    pub flags: u16,
    /// ClientIP affinity timeout (0 without affinity).
    pub affinity_timeout_s: u32,
    /// The backends of each [`scope`], in slot order.
    pub scopes: [Vec<BackendKey>; 2],
}

impl Frontend {
    /// The backends of one scope.
    pub fn scope(&self, scope: u8) -> &[BackendKey] {
        &self.scopes[usize::from(scope.min(1))]
    }
}

/// Everything one Service puts in the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// Its frontends.
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    /// Every backend it keeps in the backends map, with [`backend_flags`];
    /// a superset of the backends in its frontends' slots.
    pub backends: BTreeMap<BackendKey, u8>,
}

impl ServiceState {
    /// Whether the Service puts nothing in the maps.
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty() && self.backends.is_empty()
    }
}

/// Computes what `service` puts in the maps, from the EndpointSlices that
/// name it (`slices` may include others; they are ignored). Never fails:
/// bad fields are skipped with a warning.
pub fn service_state(
    service: &Service,
    slices: &[&EndpointSlice],
    node: &NodeIdentity,
) -> ServiceState {
    let mut out = ServiceState::default();
    let (Some(namespace), Some(name)) = (
        service.metadata.namespace.as_deref(),
        service.metadata.name.as_deref(),
    ) else {
        return out;
    };
    let Some(spec) = service.spec.as_ref() else {
        return out;
    };
    let svc = ServiceRef::new(namespace, name);
    if spec.type_.as_deref() == Some("ExternalName") {
        return out;
    }
    if service
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
        return out;
    }
    // Headless (clusterIP None or unset) and IPv6-only Services: upstream's
    // IPv4 proxy programs nothing for them, not even externalIPs.
    let cluster_ips = cluster_ips(
        &svc,
        spec.cluster_ips.as_deref(),
        spec.cluster_ip.as_deref(),
    );
    if cluster_ips.is_empty() {
        return out;
    }
    let external_ips = parse_ips(&svc, "externalIPs", spec.external_ips.iter().flatten());
    let lb_ips = parse_ips(
        &svc,
        "status.loadBalancer.ingress",
        service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_ref()),
    );
    let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let int_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let ext_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let (affinity_flag, affinity_timeout_s) =
        if spec.session_affinity.as_deref() == Some("ClientIP") {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|&t| t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S);
            (svc_flags::AFFINITY, timeout)
        } else {
            (0, 0)
        };

    let ipv4_slices: Vec<&EndpointSlice> = slices
        .iter()
        .copied()
        .filter(|s| slice_belongs_to(s, namespace, name) && s.address_type == "IPv4")
        .collect();

    for port in spec.ports.iter().flatten() {
        let Some(proto) = proto::from_k8s(port.protocol.as_deref()) else {
            tracing::warn!(service = %svc, protocol = ?port.protocol, "skipping a port with an unknown protocol");
            continue;
        };
        let Some(svc_port) = port_number(port.port) else {
            tracing::warn!(service = %svc, port = port.port, "skipping an out-of-range port");
            continue;
        };
        let endpoints = port_endpoints(&svc, port, proto, &ipv4_slices, node);
        for (key, ep) in &endpoints {
            let mut flags = 0;
            if ep.local {
                flags |= backend_flags::LOCAL;
            }
            if ep.terminating {
                flags |= backend_flags::TERMINATING;
            }
            // The same endpoint behind two ports of one Service: it is the
            // same pod, so the flags agree; keep the first.
            out.backends.entry(*key).or_insert(flags);
        }
        let all = usable(&endpoints, false);
        let local = usable(&endpoints, true);
        let internal = if int_local { &local } else { &all };
        let external = if ext_local { &local } else { &all };
        let (mut cluster_flags, mut external_flags) = (affinity_flag, affinity_flag);
        if int_local {
            cluster_flags |= svc_flags::INT_LOCAL;
        }
        if ext_local {
            external_flags |= svc_flags::EXT_LOCAL;
        }
        let node_port = match port.node_port.filter(|_| node_ports) {
            Some(np) => match port_number(np) {
                Some(np) => Some(np),
                None => {
                    tracing::warn!(service = %svc, node_port = np, "skipping an out-of-range nodePort");
                    None
                }
            },
            None => None,
        };
        // (address, port, flags, scopes) of every frontend of this port.
        let cluster = cluster_ips
            .iter()
            .map(|&a| (a, svc_port, cluster_flags, [internal, internal]));
        let outside = external_ips
            .iter()
            .map(|&a| (a, svc_port, svc_flags::EXTERNAL_IP))
            .chain(
                lb_ips
                    .iter()
                    .map(|&a| (a, svc_port, svc_flags::LOAD_BALANCER)),
            )
            .chain(node_port.map(|np| (Ipv4Addr::UNSPECIFIED, np, svc_flags::NODE_PORT)))
            .map(|(a, p, kind)| (a, p, external_flags | kind, [&all, external]));
        for (addr, port, flags, [int, ext]) in cluster.chain(outside) {
            // One address may be both an externalIP and a LoadBalancer IP
            // of the same Service: one frontend with both kind flags.
            out.frontends
                .entry(FrontendKey { addr, port, proto })
                .and_modify(|f| f.flags |= flags)
                .or_insert_with(|| Frontend {
                    flags,
                    affinity_timeout_s,
                    scopes: [int.clone(), ext.clone()],
                });
        }
    }
    out
}

/// The IPv4 ClusterIPs; none for a headless Service.
fn cluster_ips(svc: &ServiceRef, ips: Option<&[String]>, ip: Option<&str>) -> Vec<Ipv4Addr> {
    let listed: Vec<&str> = match ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => ip.into_iter().collect(),
    };
    if listed
        .first()
        .is_none_or(|ip| ip.is_empty() || *ip == "None")
    {
        return Vec::new();
    }
    parse_ips(svc, "clusterIPs", listed)
}

fn parse_ips<'a, S: AsRef<str> + 'a>(
    svc: &ServiceRef,
    field: &'static str,
    ips: impl IntoIterator<Item = S>,
) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for ip in ips {
        let ip = ip.as_ref();
        // IPv6 addresses of a dual-stack Service are not bad input: this
        // dataplane is IPv4-only and leaves them alone.
        if ip.contains(':') {
            continue;
        }
        match ip.parse::<Ipv4Addr>() {
            Ok(a) if !a.is_unspecified() => {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            _ => tracing::warn!(service = %svc, field, ip, "skipping an address that is not IPv4"),
        }
    }
    out
}

fn port_number(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|&p| p != 0)
}

fn slice_belongs_to(slice: &EndpointSlice, namespace: &str, name: &str) -> bool {
    slice.metadata.namespace.as_deref() == Some(namespace)
        && slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .is_some_and(|n| n == name)
}

/// One endpoint of one Service port, after dedupe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EndpointInfo {
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

impl EndpointInfo {
    fn of(ep: &Endpoint, node: &NodeIdentity) -> Self {
        let c = ep.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        Self {
            ready,
            // Upstream: a missing `serving` falls back to true, like `ready`.
            serving: c.and_then(|c| c.serving).unwrap_or(true),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
            local: !node.name.is_empty() && ep.node_name.as_deref() == Some(node.name.as_str()),
        }
    }

    /// Which copy of a duplicated endpoint to believe: the most usable.
    fn rank(self) -> u8 {
        if self.ready {
            2
        } else if self.serving && self.terminating {
            1
        } else {
            0
        }
    }
}

/// The endpoints of `port` across the Service's slices, deduplicated.
fn port_endpoints(
    svc: &ServiceRef,
    port: &ServicePort,
    proto: u8,
    slices: &[&EndpointSlice],
    node: &NodeIdentity,
) -> BTreeMap<BackendKey, EndpointInfo> {
    let want_name = port.name.as_deref().unwrap_or("");
    let mut out: BTreeMap<BackendKey, EndpointInfo> = BTreeMap::new();
    for slice in slices {
        let Some(slice_port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == want_name
                && proto::from_k8s(p.protocol.as_deref()) == Some(proto)
        }) else {
            continue;
        };
        let Some(ep_port) = slice_port.port.and_then(port_number) else {
            tracing::warn!(service = %svc, slice = ?slice.metadata.name, port = ?slice_port.port, "skipping a slice port without a valid number");
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            // Upstream uses the first address only.
            let Some(raw) = ep.addresses.first() else {
                continue;
            };
            let Ok(addr) = raw.parse::<Ipv4Addr>() else {
                tracing::warn!(service = %svc, slice = ?slice.metadata.name, address = %raw, "skipping an endpoint whose address is not IPv4");
                continue;
            };
            if addr.is_unspecified() {
                continue;
            }
            let key = BackendKey {
                addr,
                port: ep_port,
                proto,
            };
            let info = EndpointInfo::of(ep, node);
            out.entry(key)
                .and_modify(|old| {
                    let local = old.local || info.local;
                    if info.rank() > old.rank() {
                        *old = info;
                    }
                    old.local = local;
                })
                .or_insert(info);
        }
    }
    out
}

/// The endpoints that take new connections: ready ones, or if there are
/// none the serving-and-terminating ones (upstream's fallback), optionally
/// only this node's.
fn usable(endpoints: &BTreeMap<BackendKey, EndpointInfo>, local_only: bool) -> Vec<BackendKey> {
    let candidates = || {
        endpoints
            .iter()
            .filter(move |(_, e)| !local_only || e.local)
    };
    let ready: Vec<BackendKey> = candidates()
        .filter(|(_, e)| e.ready)
        .map(|(k, _)| *k)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates()
        .filter(|(_, e)| e.serving && e.terminating)
        .map(|(k, _)| *k)
        .collect()
}

/// The Service an EndpointSlice belongs to, from its label.
pub fn slice_service(slice: &EndpointSlice) -> Option<ServiceRef> {
    let namespace = slice.metadata.namespace.as_deref()?;
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ServiceRef::new(namespace, name))
}

/// Which scope index an array position is.
pub(crate) const SCOPES: [u8; 2] = [scope::INTERNAL, scope::EXTERNAL];
