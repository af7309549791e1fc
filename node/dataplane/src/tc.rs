//! The per-packet programs on one node: attaching `tc_from_pod` to pod
//! veths and `tc_from_uplink` to the node's uplink, the node's network
//! configuration, its local endpoints, conntrack inspection and garbage
//! collection, and the drop counters.
//!
//! Attachments are TCX links pinned under `<pin_dir>/links/<prog>-<ifindex>`,
//! so they outlive the agent (kill -9 included). A restarted agent that
//! attaches again finds the pin and atomically swaps its freshly loaded
//! program into the existing link (`bpf_link_update`): traffic never sees
//! an interface without a program, and nothing is attached twice.

use std::{
    collections::HashMap as StdHashMap,
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    ops::RangeInclusive,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use ipnet::Ipv4Net;
use kestrel_ebpf_common::{
    ct::{CtEntry, CtKey, ct_flags, expired, flow_expired, paired_key, tcp_seen, translate},
    drop::DropReason,
    map_names,
    packet::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    program_names,
    route::{Ipv4Cidr, LocalEndpoint, NodeConfig, node_flags},
};

use crate::{Dataplane, Error, Result, host};

#[cfg(test)]
mod tests;

/// The node's addresses and ranges, as the per-packet programs use them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNetwork {
    /// The node's address on its uplink (NodePorts, SNAT, masquerade).
    pub node_ip: Ipv4Addr,
    /// This node's pod range.
    pub pod_cidr: Ipv4Net,
    /// All pods of the cluster.
    pub cluster_cidr: Ipv4Net,
    /// ClusterIPs.
    pub service_cidr: Ipv4Net,
    /// NodePorts.
    pub node_ports: RangeInclusive<u16>,
    /// Masquerade pods' flows that leave the cluster.
    pub masquerade: bool,
}

impl NodeNetwork {
    /// Kestrel's defaults (cluster 10.42.0.0/16, services 10.43.0.0/16,
    /// NodePorts 30000–32767, masquerade on) for a node.
    pub fn new(node_ip: Ipv4Addr, pod_cidr: Ipv4Net) -> Self {
        Self {
            node_ip,
            pod_cidr,
            cluster_cidr: Ipv4Net::new(Ipv4Addr::new(10, 42, 0, 0), 16).unwrap_or_default(),
            service_cidr: Ipv4Net::new(Ipv4Addr::new(10, 43, 0, 0), 16).unwrap_or_default(),
            node_ports: 30000..=32767,
            masquerade: true,
        }
    }

    /// The kernel's view.
    pub fn to_config(&self) -> NodeConfig {
        NodeConfig {
            node_ip_be: addr_be(self.node_ip),
            flags: if self.masquerade {
                node_flags::MASQUERADE
            } else {
                0
            },
            pod_cidr: cidr(self.pod_cidr),
            cluster_cidr: cidr(self.cluster_cidr),
            service_cidr: cidr(self.service_cidr),
            node_port_min: *self.node_ports.start(),
            node_port_max: *self.node_ports.end(),
        }
    }

    /// Back from the kernel's view; `None` while unset.
    pub fn from_config(c: &NodeConfig) -> Option<Self> {
        if !c.is_set() {
            return None;
        }
        let net = |c: &Ipv4Cidr| Ipv4Net::new(addr(c.net_be), c.len()).unwrap_or_default();
        Some(Self {
            node_ip: addr(c.node_ip_be),
            pod_cidr: net(&c.pod_cidr),
            cluster_cidr: net(&c.cluster_cidr),
            service_cidr: net(&c.service_cidr),
            node_ports: c.node_port_min..=c.node_port_max,
            masquerade: c.flags & node_flags::MASQUERADE != 0,
        })
    }
}

fn cidr(n: Ipv4Net) -> Ipv4Cidr {
    Ipv4Cidr::new(addr_be(n.network()), n.prefix_len())
}

/// An address as the maps hold it (network order in a `u32`).
pub fn addr_be(ip: Ipv4Addr) -> u32 {
    u32::from(ip).to_be()
}

/// An address from the maps.
pub fn addr(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(be))
}

/// A pod on this node, as the programs deliver to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodEndpoint {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The host-side veth's index in the node's namespace.
    pub ifindex: u32,
    /// The pod end's MAC.
    pub pod_mac: [u8; 6],
    /// The host end's MAC (the pod's gateway).
    pub host_mac: [u8; 6],
}

/// Parses a MAC written as `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Which end of the node an interface is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A pod's host-side veth, ingress: what the pod sends.
    PodVeth,
    /// A pod's host-side veth, egress: what the node's stack delivers to
    /// the pod (network policy for the node's own connections).
    ToPod,
    /// The node's uplink.
    Uplink,
}

impl Role {
    fn program(self) -> &'static str {
        match self {
            Self::PodVeth => program_names::TC_FROM_POD,
            Self::ToPod => program_names::TC_TO_POD,
            Self::Uplink => program_names::TC_FROM_UPLINK,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Self::PodVeth | Self::Uplink => TcAttachType::Ingress,
            Self::ToPod => TcAttachType::Egress,
        }
    }
}

/// What attaching did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A new link was made and pinned.
    Created,
    /// A pinned link (an earlier agent's) now runs this program.
    Adopted,
}

/// Whether attaching `role` to `ifname` is allowed: never to an interface
/// carrying the namespace's default route, except the node's uplink in a
/// node's own namespace (the project made that link). In the initial
/// namespace the default route's interface is the host's own uplink.
pub fn check_attach(
    ifname: &str,
    role: Role,
    default_route_ifaces: &[String],
    in_initial_netns: bool,
) -> Result<()> {
    let carries_default = default_route_ifaces.iter().any(|i| i == ifname);
    let allowed = match role {
        Role::PodVeth | Role::ToPod => !carries_default,
        Role::Uplink => !(carries_default && in_initial_netns),
    };
    if allowed {
        Ok(())
    } else {
        Err(Error::AttachRefused {
            iface: ifname.to_owned(),
        })
    }
}

/// The inode number the kernel gives the initial network namespace
/// (`PROC_NET_INIT_INO` in `include/linux/proc_ns.h`): fixed, so the test
/// needs no access to PID 1's namespaces, which sandboxes often deny.
const PROC_NET_INIT_INO: u64 = 0xEFFF_FFF9;

/// Whether the calling thread is in the initial network namespace.
fn in_initial_netns() -> Result<bool> {
    let meta = std::fs::metadata("/proc/thread-self/ns/net").map_err(|source| Error::Io {
        what: "reading the network namespace's identity",
        source,
    })?;
    Ok(meta.ino() == PROC_NET_INIT_INO)
}

/// Interfaces with a default route in the calling thread's namespace
/// (`/proc/net` would show the process's, which a thread that entered a
/// node's namespace does not share).
fn default_route_ifaces() -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string("/proc/thread-self/net/route").map_err(|source| Error::Io {
            what: "reading /proc/thread-self/net/route",
            source,
        })?;
    Ok(host::default_route_interfaces(&text))
}

fn ifindex(ifname: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(ifname).map_err(|e| Error::Interface {
        name: ifname.to_owned(),
        source: e.into(),
    })
}

/// One tracked flow: its original entry and, when present, its reply entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackFlow {
    /// The original direction's key.
    pub key: CtKey,
    /// The original entry; `None` for a reply entry whose original is gone.
    pub original: Option<CtEntry>,
    /// The reply entry's key.
    pub reply_key: CtKey,
    /// The reply entry.
    pub reply: Option<CtEntry>,
}

impl ConntrackFlow {
    /// When either direction last saw a packet (CLOCK_MONOTONIC).
    pub fn last_seen(&self) -> Duration {
        let a = self.original.map_or(0, |e| e.last_seen_ns);
        let b = self.reply.map_or(0, |e| e.last_seen_ns);
        Duration::from_nanos(a.max(b))
    }

    /// A short state name: `syn`, `established`, `closing` or `-` (not TCP).
    pub fn state(&self) -> &'static str {
        if self.key.proto != IPPROTO_TCP {
            return "-";
        }
        let seen = self.original.map_or(0, |e| e.tcp_seen) | self.reply.map_or(0, |e| e.tcp_seen);
        if seen & tcp_seen::CLOSING != 0 {
            "closing"
        } else if self
            .reply
            .is_some_and(|r| r.tcp_seen & tcp_seen::ESTABLISHED != 0)
        {
            "established"
        } else {
            "syn"
        }
    }

    /// The flow as one line, relative to `now`: protocol, original tuple,
    /// translated tuple when there is one, flags, backend, state, age.
    pub fn display(&self, now: Duration) -> String {
        let proto = proto_name(self.key.proto);
        let tuple = |k: &CtKey| {
            format!(
                "{} -> {}",
                SocketAddrV4::new(addr(k.saddr_be), u16::from_be(k.sport_be)),
                SocketAddrV4::new(addr(k.daddr_be), u16::from_be(k.dport_be))
            )
        };
        let mut line = format!("{proto} {}", tuple(&self.key));
        let e = self.original.or(self.reply).unwrap_or_default();
        if let Some(o) = self.original
            && o.translates()
        {
            line.push_str(&format!(" => {}", tuple(&translate(&self.key, &o))));
        }
        let flags: Vec<&str> = [
            (ct_flags::DNAT, "dnat"),
            (ct_flags::SNAT, "snat"),
            (ct_flags::MASQUERADE, "masq"),
            (ct_flags::FROM_UPLINK, "uplink"),
            (ct_flags::LOCAL_BACKEND, "local"),
        ]
        .iter()
        .filter(|(bit, _)| e.flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
        if !flags.is_empty() {
            line.push_str(&format!(" [{}]", flags.join(",")));
        }
        if e.backend_id != 0 {
            line.push_str(&format!(" backend={}", e.backend_id));
        }
        if self.original.is_none() {
            line.push_str(" (reply only)");
        }
        let age = now.saturating_sub(self.last_seen());
        line.push_str(&format!(" {} idle={}s", self.state(), age.as_secs()));
        line
    }
}

fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        other => format!("proto{other}"),
    }
}

/// Groups raw entries into flows (originals with their replies, and
/// orphaned replies), sorted by original key.
pub fn group_flows(entries: &[(CtKey, CtEntry)]) -> Vec<ConntrackFlow> {
    let index: StdHashMap<CtKey, CtEntry> = entries.iter().copied().collect();
    let mut flows = Vec::new();
    for (key, e) in entries {
        if e.is_reply() {
            if original_of(&index, key, e).is_none() {
                flows.push(ConntrackFlow {
                    key: paired_key(key, e),
                    original: None,
                    reply_key: *key,
                    reply: Some(*e),
                });
            }
            continue;
        }
        let reply_key = paired_key(key, e);
        let reply = index.get(&reply_key).filter(|r| r.is_reply()).copied();
        flows.push(ConntrackFlow {
            key: *key,
            original: Some(*e),
            reply_key,
            reply,
        });
    }
    flows.sort_by_key(|f| f.key);
    flows
}

/// The live original entry a reply entry belongs to: it must point back
/// at the reply (a flow re-created with another backend leaves its old
/// reply entry orphaned).
fn original_of(index: &StdHashMap<CtKey, CtEntry>, key: &CtKey, e: &CtEntry) -> Option<CtEntry> {
    let okey = paired_key(key, e);
    index
        .get(&okey)
        .filter(|o| !o.is_reply() && paired_key(&okey, o) == *key)
        .copied()
}

/// The keys a sweep at `now_ns` removes: flows whose two directions have
/// both outlived their lifetimes, and expired orphans.
pub fn gc_plan(entries: &[(CtKey, CtEntry)], now_ns: u64) -> Vec<CtKey> {
    let mut remove = Vec::new();
    for flow in group_flows(entries) {
        let proto = flow.key.proto;
        match flow.original {
            Some(o) => {
                if flow_expired(proto, Some(&o), flow.reply.as_ref(), now_ns) {
                    remove.push(flow.key);
                    if flow.reply.is_some() {
                        remove.push(flow.reply_key);
                    }
                }
            }
            None => {
                if flow.reply.is_some_and(|r| expired(proto, &r, now_ns)) {
                    remove.push(flow.reply_key);
                }
            }
        }
    }
    remove
}

/// What a conntrack sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Entries read.
    pub scanned: usize,
    /// Entries removed.
    pub removed: usize,
}

/// CLOCK_MONOTONIC now: the clock of `bpf_ktime_get_ns`, which conntrack
/// timestamps use.
pub fn monotonic_now() -> Result<Duration> {
    let t =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(|e| Error::Io {
            what: "reading CLOCK_MONOTONIC",
            source: e.into(),
        })?;
    Ok(Duration::from(t))
}

fn map_err(what: &'static str, name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { what, name, source }
}

impl Dataplane {
    /// Writes the node's network configuration; until then the programs
    /// pass every packet to the kernel untouched.
    pub fn set_node_network(&mut self, network: &NodeNetwork) -> Result<()> {
        let name = map_names::NODE_CONFIG;
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        let mut array: Array<&mut MapData, NodeConfig> =
            Array::try_from(map).map_err(map_err("opening", name))?;
        array
            .set(0, network.to_config(), 0)
            .map_err(map_err("writing", name))
    }

    /// The configuration the programs use (`None` before the first write).
    pub fn node_network(&self) -> Result<Option<NodeNetwork>> {
        let name = map_names::NODE_CONFIG;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let array: Array<&MapData, NodeConfig> =
            Array::try_from(map).map_err(map_err("opening", name))?;
        let config = array.get(&0, 0).map_err(map_err("reading", name))?;
        Ok(NodeNetwork::from_config(&config))
    }

    /// Attaches `tc_from_pod` to the ingress of a pod's host-side veth and
    /// `tc_to_pod` to its egress, in the calling thread's namespace.
    /// `Adopted` when both links were already there.
    pub fn attach_pod_veth(&mut self, ifname: &str) -> Result<Attach> {
        let from = self.attach_tc(ifname, Role::PodVeth)?;
        let to = self.attach_tc(ifname, Role::ToPod)?;
        Ok(if from == Attach::Adopted && to == Attach::Adopted {
            Attach::Adopted
        } else {
            Attach::Created
        })
    }

    /// Attaches `tc_from_uplink` to the ingress of the node's uplink in the
    /// calling thread's namespace. In the initial namespace the interface
    /// with the default route (the host's own uplink) is refused.
    pub fn attach_uplink(&mut self, ifname: &str) -> Result<Attach> {
        self.attach_tc(ifname, Role::Uplink)
    }

    fn link_pin(&self, role: Role, ifindex: u32) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{}-{ifindex}", role.program()))
    }

    fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::Program {
                what: "typing".into(),
                name,
                source,
            })?;
        if program.fd().is_err() {
            program.load().map_err(|source| Error::Program {
                what: "loading".into(),
                name,
                source,
            })?;
        }
        Ok(program)
    }

    fn attach_tc(&mut self, ifname: &str, role: Role) -> Result<Attach> {
        check_attach(ifname, role, &default_route_ifaces()?, in_initial_netns()?)?;
        let index = ifindex(ifname)?;
        let pin = self.link_pin(role, index);
        if let Some(dir) = pin.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                what: "creating the links pin directory",
                source,
            })?;
        }
        let name = role.program();
        let program = self.classifier(name)?;
        if pin.exists() {
            match adopt(program, name, &pin) {
                Ok(()) => {
                    tracing::debug!(iface = ifname, program = name, "adopted pinned TC link");
                    return Ok(Attach::Adopted);
                }
                Err(error) => {
                    // The pinned link is dead (its interface went away and
                    // the index was reused) or not ours: start over.
                    tracing::warn!(iface = ifname, pin = %pin.display(), %error, "replacing a pinned TC link that cannot be adopted");
                    std::fs::remove_file(&pin).map_err(|source| Error::Io {
                        what: "removing a stale link pin",
                        source,
                    })?;
                }
            }
        }
        let what = || format!("attaching to {ifname}");
        let id = program
            .attach_with_options(
                ifname,
                role.attach_type(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| Error::Program {
                what: what(),
                name,
                source,
            })?;
        let link = program.take_link(id).map_err(|source| Error::Program {
            what: what(),
            name,
            source,
        })?;
        let link: FdLink = link.try_into().map_err(|source| Error::Link {
            path: pin.clone(),
            source,
        })?;
        link.pin(&pin).map_err(|source| Error::LinkPin {
            path: pin.clone(),
            source,
        })?;
        tracing::debug!(
            iface = ifname,
            program = name,
            "attached and pinned TC link"
        );
        Ok(Attach::Created)
    }

    /// Detaches the program from `ifname` (if attached) by removing its
    /// pin; the kernel frees the link, and so detaches, shortly after.
    pub fn detach(&mut self, ifname: &str, role: Role) -> Result<bool> {
        let pin = self.link_pin(role, ifindex(ifname)?);
        remove_link_pin(&pin)
    }

    /// Removes pinned links whose interface is gone (deleted pod veths).
    /// Returns how many were removed.
    pub fn prune_links(&mut self) -> Result<usize> {
        let dir = self.pin_dir.join("links");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(index) = name
                .to_str()
                .and_then(|n| n.rsplit_once('-'))
                .and_then(|(_, i)| i.parse::<u32>().ok())
            else {
                continue;
            };
            if nix::net::if_::if_indextoname(index).is_err() && remove_link_pin(&entry.path())? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Records a pod on this node: packets for `ep.ip` are delivered
    /// straight into its namespace.
    pub fn add_local_endpoint(&mut self, ep: &PodEndpoint) -> Result<()> {
        let mut map = self.endpoints_mut()?;
        let value = LocalEndpoint {
            ifindex: ep.ifindex,
            pod_mac: ep.pod_mac,
            host_mac: ep.host_mac,
        };
        map.insert(addr_be(ep.ip), value, 0)
            .map_err(map_err("writing", map_names::ENDPOINTS))
    }

    /// Forgets a pod; `false` if it was not recorded.
    pub fn remove_local_endpoint(&mut self, ip: Ipv4Addr) -> Result<bool> {
        let mut map = self.endpoints_mut()?;
        match map.remove(&addr_be(ip)) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_err("removing from", map_names::ENDPOINTS)(e)),
        }
    }

    /// The pods recorded on this node.
    pub fn local_endpoints(&self) -> Result<Vec<PodEndpoint>> {
        let name = map_names::ENDPOINTS;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let map: HashMap<&MapData, u32, LocalEndpoint> =
            HashMap::try_from(map).map_err(map_err("opening", name))?;
        let mut out: Vec<PodEndpoint> = map
            .iter()
            .filter_map(std::result::Result::ok)
            .map(|(ip, ep)| PodEndpoint {
                ip: addr(ip),
                ifindex: ep.ifindex,
                pod_mac: ep.pod_mac,
                host_mac: ep.host_mac,
            })
            .collect();
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }

    fn endpoints_mut(&mut self) -> Result<HashMap<&mut MapData, u32, LocalEndpoint>> {
        let name = map_names::ENDPOINTS;
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        HashMap::try_from(map).map_err(map_err("opening", name))
    }

    /// Every conntrack entry, raw. Entries the kernel evicts while this
    /// reads are skipped.
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        let name = map_names::CONNTRACK;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let map: HashMap<&MapData, CtKey, CtEntry> =
            HashMap::try_from(map).map_err(map_err("opening", name))?;
        Ok(map.iter().filter_map(std::result::Result::ok).collect())
    }

    /// The tracked flows, for `kestrel bpf conntrack`.
    pub fn conntrack(&self) -> Result<Vec<ConntrackFlow>> {
        Ok(group_flows(&self.conntrack_entries()?))
    }

    /// Removes flows idle beyond their lifetime at `now` (CLOCK_MONOTONIC;
    /// see [`monotonic_now`]). The LRU bounds the map regardless; this
    /// keeps dead flows from crowding out live ones.
    pub fn conntrack_gc(&mut self, now: Duration) -> Result<GcStats> {
        let entries = self.conntrack_entries()?;
        let plan = gc_plan(&entries, u64::try_from(now.as_nanos()).unwrap_or(u64::MAX));
        let name = map_names::CONNTRACK;
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        let mut map: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(map).map_err(map_err("opening", name))?;
        let mut removed = 0;
        for key in &plan {
            match map.remove(key) {
                Ok(()) => removed += 1,
                // Evicted or removed by the kernel meanwhile.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("removing from", name)(e)),
            }
        }
        Ok(GcStats {
            scanned: entries.len(),
            removed,
        })
    }

    /// Drops by reason, summed over CPUs.
    pub fn drops(&self) -> Result<Vec<(DropReason, u64)>> {
        let name = map_names::DROPS;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_err("opening", name))?;
        DropReason::ALL
            .iter()
            .map(|r| {
                let per_cpu = array.get(&r.0, 0).map_err(map_err("reading", name))?;
                Ok((*r, per_cpu.iter().copied().fold(0u64, u64::wrapping_add)))
            })
            .collect()
    }
}

/// Replaces the program of the link pinned at `pin` with `program`.
fn adopt(program: &mut SchedClassifier, name: &'static str, pin: &Path) -> Result<()> {
    let pinned = PinnedLink::from_pin(pin).map_err(|source| Error::Link {
        path: pin.to_path_buf(),
        source,
    })?;
    let link =
        SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|source| Error::Link {
            path: pin.to_path_buf(),
            source,
        })?;
    let id = program
        .attach_to_link(link)
        .map_err(|source| Error::Program {
            what: format!("adopting the link pinned at {}", pin.display()),
            name,
            source,
        })?;
    // The pin keeps the link (and so the attachment) alive; this process
    // needs no descriptor of its own.
    drop(program.take_link(id));
    Ok(())
}

/// Removes a link pin; the attachment goes with the last reference.
fn remove_link_pin(pin: &Path) -> Result<bool> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::Io {
            what: "removing a link pin",
            source,
        }),
    }
}

impl fmt::Display for PodEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mac = |m: &[u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        write!(
            f,
            "{} ifindex={} pod_mac={} host_mac={}",
            self.ip,
            self.ifindex,
            mac(&self.pod_mac),
            mac(&self.host_mac)
        )
    }
}
