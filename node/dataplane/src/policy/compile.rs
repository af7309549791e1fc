//! From Pods, Namespaces and NetworkPolicies to the three policy maps, with
//! upstream `networking.k8s.io/v1` semantics and no kernel in sight.
//!
//! The kernel never sees a selector: it resolves each address to an
//! *identity* (longest-prefix match in the ipcache) and asks the policy trie
//! whether (local pod, peer identity, direction, protocol, port) is allowed,
//! with shorter prefixes as wildcards. Compiling therefore means:
//!
//! 1. **Identities.** Every pod with an address gets the identity of its
//!    (namespace, pod labels, namespace labels, *cidr class*), where the
//!    cidr class is the longest ipBlock prefix (over every `cidr` and
//!    `except` of every policy) that contains the pod's address. (Pods that
//!    number a named port differently, for a name some egress rule uses,
//!    also differ: an egress entry for a named port is per identity, and
//!    must mean one number.) Pods that
//!    look alike share an identity, so entries scale with distinct label
//!    sets rather than pods; the class makes ipBlocks exact for pod
//!    addresses too. Each ipBlock prefix gets a CIDR identity of its own,
//!    and the node's own addresses are [`identity::HOST`].
//! 2. **Peers.** A rule's peers become a set of identities (or
//!    [`identity::ANY`]). An ipBlock `C except E…` matches a prefix
//!    identity `P` iff `P ⊆ C` and `P ⊄ E` for every `E`: because every
//!    `C` and `E` is itself in the ipcache, the longest prefix containing an
//!    address decides its membership exactly.
//! 3. **Entries.** For every local pod a policy selects, every rule emits
//!    (pod, peer identity, direction, port prefix) keys; the lowest policy
//!    id wins a key that several policies allow.
//!
//! Identities and policy ids are kept across compiles by the
//! [`PolicyCompiler`] (unused ones are freed), and a restarted agent adopts
//! the identities already in the pinned ipcache
//! ([`PolicyCompiler::adopt_ipcache`]), so neither a label change nor a
//! restart renumbers what did not change.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kestrel_api::labels::Selector;
use kestrel_ebpf_common::policy::{
    NO_POLICY, PolicyEndpoint, PolicyKey, direction, endpoint_flags, identity, port_range_prefixes,
    prefix,
};
/// The node the maps are compiled for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyNode {
    /// The Node's name: pods with this `spec.nodeName` are local.
    pub name: String,
    /// The node's own addresses: [`identity::HOST`] in the ipcache.
    pub ips: Vec<Ipv4Addr>,
}

/// A POLICY trie key with its prefix length (bits of [`PolicyKey`]). Bits
/// past the prefix are always zero, so equal entries have equal keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// The key data.
    pub key: PolicyKey,
    /// Prefix length in bits, [`prefix::ANY_PROTO`]..=[`prefix::FULL`].
    pub prefix_len: u32,
}

impl RuleKey {
    /// The entry for local pod `endpoint`, `peer` identity and `dir`, with
    /// `proto` and `port` kept as far as `prefix_len` says (the rest is
    /// zeroed).
    pub fn new(
        endpoint: Ipv4Addr,
        peer: u32,
        dir: u8,
        proto: u8,
        port: u16,
        prefix_len: u32,
    ) -> Self {
        let key = PolicyKey::lookup(addr_be(endpoint), peer, dir, proto, port.to_be());
        Self::masked(key, prefix_len)
    }

    /// `key` with the bits past `prefix_len` zeroed.
    pub fn masked(key: PolicyKey, prefix_len: u32) -> Self {
        let prefix_len = prefix_len.min(prefix::FULL);
        let mut bytes = key_bytes(&key);
        for (i, b) in bytes.iter_mut().enumerate() {
            let start = (i as u32) * 8;
            if start >= prefix_len {
                *b = 0;
            } else if prefix_len - start < 8 {
                *b &= 0xffu8 << (8 - (prefix_len - start));
            }
        }
        Self {
            key: key_from_bytes(bytes),
            prefix_len,
        }
    }
}

/// The key's bytes in memory order: what the trie's prefix runs over.
pub fn key_bytes(key: &PolicyKey) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&key.endpoint_be.to_ne_bytes());
    b[4..8].copy_from_slice(&key.identity_be.to_ne_bytes());
    b[8] = key.direction;
    b[9] = key.proto;
    b[10..12].copy_from_slice(&key.dport_be.to_ne_bytes());
    b
}

fn key_from_bytes(b: [u8; 12]) -> PolicyKey {
    PolicyKey {
        endpoint_be: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        identity_be: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        direction: b[8],
        proto: b[9],
        dport_be: u16::from_ne_bytes([b[10], b[11]]),
    }
}

/// An address as the maps key it: a `u32` whose bytes are in network order.
pub fn addr_be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The inverse of [`addr_be`].
pub fn addr_from_be(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

/// What the three maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// IPCACHE: prefix → identity.
    pub ipcache: BTreeMap<Ipv4Net, u32>,
    /// POLICY_ENDPOINTS: local pod address → isolation.
    pub endpoints: BTreeMap<Ipv4Addr, PolicyEndpoint>,
    /// POLICY: allow entry → the (lowest) policy id allowing it.
    pub entries: BTreeMap<RuleKey, u32>,
}

/// The names behind the numbers of one compile, for logs and flow records.
#[derive(Clone, Debug, Default)]
pub struct NameTable {
    pods: HashMap<Ipv4Addr, (String, String)>,
    policies: HashMap<u32, String>,
    identities: HashMap<u32, String>,
}

/// A cheap, cloneable handle on the names of the latest compile (the sync
/// loop refreshes it after each batch).
#[derive(Clone, Debug, Default)]
pub struct PolicyNames {
    inner: Arc<RwLock<Arc<NameTable>>>,
}

impl PolicyNames {
    /// Replaces the table.
    pub fn set(&self, table: NameTable) {
        let table = Arc::new(table);
        match self.inner.write() {
            Ok(mut g) => *g = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
    }

    /// Publishes `next` over the current table, for the time the maps are
    /// being written: a reader that finds a number in the maps finds its
    /// name, whether the number is new or about to go. Ids are not reused
    /// soon (see `Ids`), so the overlay cannot name a number
    /// wrongly. Call [`set`](Self::set) with `next` once the writes are done.
    pub(crate) fn overlay(&self, next: &NameTable) {
        let current = self.table();
        let mut merged = (*current).clone();
        merged
            .pods
            .extend(next.pods.iter().map(|(k, v)| (*k, v.clone())));
        merged
            .policies
            .extend(next.policies.iter().map(|(k, v)| (*k, v.clone())));
        merged
            .identities
            .extend(next.identities.iter().map(|(k, v)| (*k, v.clone())));
        self.set(merged);
    }

    fn table(&self) -> Arc<NameTable> {
        match self.inner.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The pod (namespace, name) with this address.
    pub fn pod(&self, ip: Ipv4Addr) -> Option<(String, String)> {
        self.table().pods.get(&ip).cloned()
    }

    /// The policy with this id, as "namespace/name".
    pub fn policy(&self, id: u32) -> Option<String> {
        self.table().policies.get(&id).cloned()
    }

    /// What an identity stands for: "host", "world", "any",
    /// "cidr 10.0.0.0/8", or "namespace: labels".
    pub fn identity(&self, id: u32) -> Option<String> {
        match id {
            identity::ANY => Some("any".to_owned()),
            identity::HOST => Some("host".to_owned()),
            identity::WORLD => Some("world".to_owned()),
            _ => self.table().identities.get(&id).cloned(),
        }
    }
}

/// One compile's output.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// The maps' desired contents.
    pub state: PolicyState,
    /// The names behind its numbers.
    pub names: NameTable,
}

// ---------------------------------------------------------------------------
// Stable ids.

/// Ids in `first..=last` for keys, kept while the key is seen by each
/// compile, released when a compile no longer sees it. Released ids come
/// back only after the counter has gone round, so a flow record naming an
/// old id stays unambiguous for as long as possible.
#[derive(Debug)]
struct Ids<K> {
    first: u32,
    last: u32,
    next: u32,
    /// Key → (id, generation last seen).
    ids: HashMap<K, (u32, u64)>,
    used: HashSet<u32>,
    generation: u64,
}

impl<K: std::hash::Hash + Eq + Clone> Ids<K> {
    fn new(first: u32, last: u32) -> Self {
        Self {
            first,
            last,
            next: first,
            ids: HashMap::new(),
            used: HashSet::new(),
            generation: 0,
        }
    }

    fn get(&self, key: &K) -> Option<u32> {
        self.ids.get(key).map(|&(id, _)| id)
    }

    /// The key's id, allocating one (`hint` if it is free and in range).
    fn id(&mut self, key: &K, hint: Option<u32>) -> u32 {
        let generation = self.generation;
        if let Some(e) = self.ids.get_mut(key) {
            e.1 = generation;
            return e.0;
        }
        let id = match hint {
            Some(h) if (self.first..=self.last).contains(&h) && !self.used.contains(&h) => h,
            _ => self.fresh(),
        };
        self.used.insert(id);
        self.ids.insert(key.clone(), (id, generation));
        id
    }

    fn fresh(&mut self) -> u32 {
        // The space is far larger than anything a cluster holds; a full
        // space would loop forever, so give up after one round and reuse
        // the last id (the entry then names two things, which only
        // observability can notice).
        let span = u64::from(self.last - self.first) + 1;
        for _ in 0..span {
            let id = self.next;
            self.next = if id >= self.last { self.first } else { id + 1 };
            if !self.used.contains(&id) {
                return id;
            }
        }
        self.last
    }

    /// Starts a compile: keys not seen by its end are released by `sweep`.
    fn begin(&mut self) {
        self.generation += 1;
    }

    fn sweep(&mut self) {
        let generation = self.generation;
        let used = &mut self.used;
        self.ids.retain(|_, &mut (id, seen)| {
            let keep = seen == generation;
            if !keep {
                used.remove(&id);
            }
            keep
        });
    }
}

/// What a labels identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LabelsKey {
    namespace: String,
    labels: BTreeMap<String, String>,
    ns_labels: Arc<BTreeMap<String, String>>,
    /// The longest ipBlock prefix holding the pod's address.
    class: Option<Ipv4Net>,
    /// The pod's numbers for the named ports that egress rules name, so
    /// that an identity's named port has one number (pods alike but for
    /// those numbers get identities of their own).
    /// Only names the pod has count, so a policy naming a new port splits
    /// only the identities of pods that have it.
    named: Vec<(u8, String, u16)>,
}

// ---------------------------------------------------------------------------
// Parsed policies.

/// A policy's label selector, converted once per compile: a missing one
/// (an omitted `podSelector` of a peer) selects everything, as an empty
/// one does; one that does not convert selects nothing.
fn selector(sel: Option<&LabelSelector>) -> Selector {
    sel.map_or_else(Selector::everything, |s| {
        Selector::from_label_selector(s).unwrap_or_else(|_| Selector::nothing())
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Peer {
    /// Pods matching `pods` in the namespaces matching `namespaces` (the
    /// policy's own when `None`).
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    /// Addresses in `cidr` but in no `except`.
    Block { cidr: Ipv4Net, except: Vec<Ipv4Net> },
    /// Nothing (an IPv6 block, an empty peer).
    Nothing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PortSpec {
    /// Any protocol and port (no `ports`).
    All,
    /// Any port of a protocol.
    Proto(u8),
    /// Ports `start..=end` of a protocol.
    Range(u8, u16, u16),
    /// A container port by name and protocol.
    Named(u8, String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    /// `None`: every peer.
    peers: Option<Vec<Peer>>,
    ports: Vec<PortSpec>,
}

#[derive(Clone, Debug)]
struct Parsed {
    id: u32,
    namespace: String,
    select: Selector,
    /// `Some` when the policy isolates for ingress (an empty list denies all).
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

fn protocol(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(6),
        "UDP" => Some(17),
        "SCTP" => Some(132),
        _ => None,
    }
}

fn parse_ports(ports: Option<&Vec<NetworkPolicyPort>>) -> Vec<PortSpec> {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return vec![PortSpec::All];
    };
    ports
        .iter()
        .filter_map(|p| {
            let proto = protocol(p.protocol.as_deref())?;
            Some(match &p.port {
                None => PortSpec::Proto(proto),
                Some(IntOrString::Int(n)) => {
                    let start = u16::try_from(*n).ok().filter(|&s| s > 0)?;
                    let end = match p.end_port {
                        Some(e) => u16::try_from(e).ok().filter(|&e| e >= start)?,
                        None => start,
                    };
                    PortSpec::Range(proto, start, end)
                }
                Some(IntOrString::String(name)) => PortSpec::Named(proto, name.clone()),
            })
        })
        .collect()
}

fn parse_net(s: &str) -> Option<Ipv4Net> {
    s.parse::<Ipv4Net>().ok().map(|n| n.trunc())
}

fn parse_peers(peers: Option<&Vec<NetworkPolicyPeer>>) -> Option<Vec<Peer>> {
    let peers = peers.filter(|p| !p.is_empty())?;
    Some(
        peers
            .iter()
            .map(|p| {
                if let Some(block) = &p.ip_block {
                    return match parse_net(&block.cidr) {
                        Some(cidr) => Peer::Block {
                            cidr,
                            except: block
                                .except
                                .iter()
                                .flatten()
                                .filter_map(|e| parse_net(e))
                                .collect(),
                        },
                        None => Peer::Nothing,
                    };
                }
                match (&p.namespace_selector, &p.pod_selector) {
                    (None, None) => Peer::Nothing,
                    (ns, pods) => Peer::Pods {
                        namespaces: ns.as_ref().map(|s| selector(Some(s))),
                        pods: selector(pods.as_ref()),
                    },
                }
            })
            .collect(),
    )
}

fn parse_policy(np: &NetworkPolicy, id: u32) -> Option<Parsed> {
    let namespace = np.metadata.namespace.clone()?;
    let spec = np.spec.as_ref()?;
    let types: Vec<&str> = spec
        .policy_types
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let (ingress, egress) = if types.is_empty() {
        (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty()))
    } else {
        (types.contains(&"Ingress"), types.contains(&"Egress"))
    };
    Some(Parsed {
        id,
        namespace,
        select: selector(spec.pod_selector.as_ref()),
        ingress: ingress.then(|| {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| Rule {
                    peers: parse_peers(r.from.as_ref()),
                    ports: parse_ports(r.ports.as_ref()),
                })
                .collect()
        }),
        egress: egress.then(|| {
            spec.egress
                .iter()
                .flatten()
                .map(|r| Rule {
                    peers: parse_peers(r.to.as_ref()),
                    ports: parse_ports(r.ports.as_ref()),
                })
                .collect()
        }),
    })
}

// ---------------------------------------------------------------------------
// Pods.

/// A pod that has an address in the ipcache.
struct PodInfo<'a> {
    pod: &'a Pod,
    namespace: &'a str,
    ip: Ipv4Addr,
    labels: &'a BTreeMap<String, String>,
    local: bool,
    identity: u32,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// The pod's address if it takes part in policy: it has an IPv4 address,
/// is not on the host network and has not finished.
pub(crate) fn pod_address(pod: &Pod) -> Option<Ipv4Addr> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let from_list = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse::<Ipv4Addr>().ok())
        .next();
    status
        .pod_ip
        .as_deref()
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
        .or(from_list)
}

/// The number of the pod's container port `name` with protocol `proto`.
fn named_port(pod: &Pod, proto: u8, name: &str) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name) && protocol(p.protocol.as_deref()) == Some(proto))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .filter(|&p| p > 0)
}

/// The longest of `prefixes` (indexed by length) containing `ip`.
fn class_of(ip: Ipv4Addr, by_len: &[HashSet<Ipv4Net>; 33]) -> Option<Ipv4Net> {
    (0..=32u8).rev().find_map(|len| {
        if by_len[usize::from(len)].is_empty() {
            return None;
        }
        let net = Ipv4Net::new(ip, len).ok()?.trunc();
        by_len[usize::from(len)].contains(&net).then_some(net)
    })
}

// ---------------------------------------------------------------------------
// The compiler.

/// A peer identity set of one rule, with what a peer's named ports need.
#[derive(Debug, Default)]
struct PeerSet {
    /// Every identity the peers match (empty with `any`).
    ids: BTreeSet<u32>,
    /// Every peer (no `from`/`to`).
    any: bool,
    /// The identities matched by pod selectors (named egress ports resolve
    /// against their pods; ipBlocks never match a named port).
    pod_ids: BTreeSet<u32>,
}

/// Compiles Pods, Namespaces and NetworkPolicies into map contents,
/// keeping identities and policy ids stable across compiles.
#[derive(Debug)]
pub struct PolicyCompiler {
    labels: Ids<LabelsKey>,
    cidrs: Ids<Ipv4Net>,
    policies: Ids<(String, String)>,
    /// Identities found in the pinned ipcache, used by the first compile.
    hints: HashMap<Ipv4Net, u32>,
}

impl Default for PolicyCompiler {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyCompiler {
    /// A compiler with no ids handed out.
    pub fn new() -> Self {
        Self {
            labels: Ids::new(identity::FIRST_LABELS, identity::FIRST_CIDR - 1),
            cidrs: Ids::new(identity::FIRST_CIDR, u32::MAX),
            policies: Ids::new(1, NO_POLICY - 1),
            hints: HashMap::new(),
        }
    }

    /// Remembers the identities of a pinned ipcache: the next compile gives
    /// a pod /32 or an ipBlock prefix found there the same identity (when
    /// it is free and of the right kind), so a restart rewrites little.
    pub fn adopt_ipcache(&mut self, ipcache: impl IntoIterator<Item = (Ipv4Net, u32)>) {
        self.hints = ipcache.into_iter().collect();
    }

    /// The desired maps for `node`, given every Pod, Namespace and
    /// NetworkPolicy of the cluster.
    pub fn compile<P, N, Q>(
        &mut self,
        node: &PolicyNode,
        pods: &[P],
        namespaces: &[N],
        policies: &[Q],
    ) -> Compiled
    where
        P: Borrow<Pod>,
        N: Borrow<Namespace>,
        Q: Borrow<NetworkPolicy>,
    {
        self.labels.begin();
        self.cidrs.begin();
        self.policies.begin();
        let hints = std::mem::take(&mut self.hints);
        let mut state = PolicyState::default();
        let mut names = NameTable::default();

        // Policies, by (namespace, name) so that ids are handed out in a
        // stable order.
        let mut sorted: Vec<&NetworkPolicy> = policies.iter().map(Borrow::borrow).collect();
        sorted.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let mut parsed = Vec::with_capacity(sorted.len());
        for np in sorted {
            let (Some(ns), Some(name)) = (&np.metadata.namespace, &np.metadata.name) else {
                continue;
            };
            let key = (ns.clone(), name.clone());
            let id = self.policies.id(&key, None);
            if let Some(p) = parse_policy(np, id) {
                names.policies.insert(id, format!("{ns}/{name}"));
                parsed.push(p);
            }
        }

        // Every ipBlock prefix, with its identity.
        let mut by_len: [HashSet<Ipv4Net>; 33] = std::array::from_fn(|_| HashSet::new());
        let mut blocks = BTreeSet::new();
        for p in &parsed {
            for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
                for peer in rule.peers.iter().flatten() {
                    if let Peer::Block { cidr, except } = peer {
                        blocks.insert(*cidr);
                        blocks.extend(except.iter().copied());
                    }
                }
            }
        }
        // Named ports that egress rules resolve against destination pods.
        let egress_names: BTreeSet<(u8, &str)> = parsed
            .iter()
            .flat_map(|p| p.egress.iter().flatten())
            .flat_map(|r| r.ports.iter())
            .filter_map(|port| match port {
                PortSpec::Named(proto, name) => Some((*proto, name.as_str())),
                _ => None,
            })
            .collect();
        let mut cidr_ids = Vec::with_capacity(blocks.len());
        for net in &blocks {
            by_len[usize::from(net.prefix_len())].insert(*net);
            let id = self.cidrs.id(net, hints.get(net).copied());
            state.ipcache.insert(*net, id);
            names.identities.insert(id, format!("cidr {net}"));
            cidr_ids.push((*net, id));
        }

        // Namespace labels, shared by the keys of all its pods.
        let ns_labels: HashMap<&str, Arc<BTreeMap<String, String>>> = namespaces
            .iter()
            .map(Borrow::borrow)
            .filter_map(|n| {
                Some((
                    n.metadata.name.as_deref()?,
                    Arc::new(n.metadata.labels.clone().unwrap_or_default()),
                ))
            })
            .collect();
        let no_ns_labels = Arc::new(BTreeMap::new());

        // Pods and their identities.
        let host_ips: HashSet<Ipv4Addr> = node.ips.iter().copied().collect();
        let mut pod_list: Vec<PodInfo<'_>> = Vec::with_capacity(pods.len());
        let mut seen_ips = HashSet::new();
        let mut sorted_pods: Vec<&Pod> = pods.iter().map(Borrow::borrow).collect();
        sorted_pods.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        // Identity → its key (for peer matching).
        let mut id_keys: BTreeMap<u32, LabelsKey> = BTreeMap::new();
        for pod in sorted_pods {
            let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name)
            else {
                continue;
            };
            let Some(ip) = pod_address(pod) else {
                continue;
            };
            if host_ips.contains(&ip) || !seen_ips.insert(ip) {
                continue;
            }
            let labels = pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
            let key = LabelsKey {
                namespace: namespace.clone(),
                labels: labels.clone(),
                ns_labels: Arc::clone(ns_labels.get(namespace.as_str()).unwrap_or(&no_ns_labels)),
                class: class_of(ip, &by_len),
                named: egress_names
                    .iter()
                    .filter_map(|&(proto, name)| {
                        Some((proto, name.to_owned(), named_port(pod, proto, name)?))
                    })
                    .collect(),
            };
            let hint = hints.get(&Ipv4Net::from(ip)).copied();
            let id = self.labels.id(&key, hint);
            id_keys.entry(id).or_insert(key);
            state.ipcache.insert(Ipv4Net::from(ip), id);
            names.pods.insert(ip, (namespace.clone(), name.clone()));
            let local = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&node.name);
            pod_list.push(PodInfo {
                pod,
                namespace,
                ip,
                labels,
                local,
                identity: id,
            });
        }
        for ip in &node.ips {
            state.ipcache.insert(Ipv4Net::from(*ip), identity::HOST);
        }
        for (id, key) in &id_keys {
            names.identities.insert(*id, describe(key));
        }
        let mut pods_by_id: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, p) in pod_list.iter().enumerate() {
            pods_by_id.entry(p.identity).or_default().push(i);
        }

        // Endpoints: every local pod, isolated or not.
        let local: Vec<usize> = (0..pod_list.len()).filter(|&i| pod_list[i].local).collect();
        for &i in &local {
            let p = &pod_list[i];
            state.endpoints.insert(
                p.ip,
                PolicyEndpoint {
                    flags: 0,
                    identity: p.identity,
                    ingress_policy: NO_POLICY,
                    egress_policy: NO_POLICY,
                },
            );
        }

        let mut local_by_ns: HashMap<&str, Vec<usize>> = HashMap::new();
        for &i in &local {
            local_by_ns
                .entry(pod_list[i].namespace)
                .or_default()
                .push(i);
        }
        let ctx = PeerCtx::new(&id_keys, &cidr_ids, &node.ips);
        for policy in &parsed {
            let selected: Vec<usize> = local_by_ns
                .get(policy.namespace.as_str())
                .into_iter()
                .flatten()
                .copied()
                .filter(|&i| policy.select.matches(pod_list[i].labels))
                .collect();
            if selected.is_empty() {
                continue;
            }
            for (dir, rules) in [
                (direction::INGRESS, &policy.ingress),
                (direction::EGRESS, &policy.egress),
            ] {
                let Some(rules) = rules else {
                    continue;
                };
                for &i in &selected {
                    let ep = state.endpoints.get_mut(&pod_list[i].ip);
                    if let Some(ep) = ep {
                        let (flag, slot) = if dir == direction::INGRESS {
                            (endpoint_flags::INGRESS_ISOLATED, &mut ep.ingress_policy)
                        } else {
                            (endpoint_flags::EGRESS_ISOLATED, &mut ep.egress_policy)
                        };
                        ep.flags |= flag;
                        *slot = (*slot).min(policy.id);
                    }
                }
                for rule in rules {
                    let peers = ctx.resolve(rule, &policy.namespace);
                    let peer_ids: Vec<u32> = if peers.any {
                        vec![identity::ANY]
                    } else {
                        peers.ids.iter().copied().collect()
                    };
                    let fixed = fixed_entries(dir, rule, &peers, &peer_ids, &pod_list, &pods_by_id);
                    for &i in &selected {
                        let ep = pod_list[i].ip;
                        for &(peer, proto, port, len) in &fixed {
                            allow(
                                &mut state.entries,
                                RuleKey::new(ep, peer, dir, proto, port, len),
                                policy.id,
                            );
                        }
                        if dir == direction::INGRESS {
                            for port in &rule.ports {
                                let PortSpec::Named(proto, name) = port else {
                                    continue;
                                };
                                let Some(num) = named_port(pod_list[i].pod, *proto, name) else {
                                    continue;
                                };
                                for &peer in &peer_ids {
                                    allow(
                                        &mut state.entries,
                                        RuleKey::new(ep, peer, dir, *proto, num, prefix::FULL),
                                        policy.id,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }

        self.labels.sweep();
        self.cidrs.sweep();
        self.policies.sweep();
        Compiled { state, names }
    }

    /// The id of a policy, if the last compile saw it.
    pub fn policy_id(&self, namespace: &str, name: &str) -> Option<u32> {
        self.policies.get(&(namespace.to_owned(), name.to_owned()))
    }
}

/// The entries of one rule that are the same for every selected pod, as
/// (peer identity, protocol, port, prefix length): every port spec but
/// ingress named ports (which resolve against each selected pod).
fn fixed_entries(
    dir: u8,
    rule: &Rule,
    peers: &PeerSet,
    peer_ids: &[u32],
    pod_list: &[PodInfo<'_>],
    pods_by_id: &HashMap<u32, Vec<usize>>,
) -> Vec<(u32, u8, u16, u32)> {
    let mut fixed = Vec::new();
    for port in &rule.ports {
        match port {
            PortSpec::All => {
                for &peer in peer_ids {
                    fixed.push((peer, 0, 0, prefix::ANY_PROTO));
                }
            }
            PortSpec::Proto(proto) => {
                for &peer in peer_ids {
                    fixed.push((peer, *proto, 0, prefix::ANY_PORT));
                }
            }
            PortSpec::Range(proto, start, end) => {
                let mut out = [(0u16, 0u8); 32];
                let n = port_range_prefixes(*start, *end, &mut out);
                for &peer in peer_ids {
                    for &(port, len) in &out[..n] {
                        fixed.push((peer, *proto, port, prefix::ANY_PORT + u32::from(len)));
                    }
                }
            }
            PortSpec::Named(proto, name) if dir == direction::EGRESS => {
                // Against each destination pod matched by a selector; every
                // pod when the rule has no peers. Never an ipBlock or ANY.
                let mut add = |pi: &PodInfo<'_>| {
                    if let Some(port) = named_port(pi.pod, *proto, name) {
                        fixed.push((pi.identity, *proto, port, prefix::FULL));
                    }
                };
                if peers.any {
                    pod_list.iter().for_each(&mut add);
                } else {
                    for id in &peers.pod_ids {
                        for &pi in pods_by_id.get(id).into_iter().flatten() {
                            add(&pod_list[pi]);
                        }
                    }
                }
            }
            PortSpec::Named(..) => {}
        }
    }
    fixed
}

fn allow(entries: &mut BTreeMap<RuleKey, u32>, key: RuleKey, policy: u32) {
    entries
        .entry(key)
        .and_modify(|p| *p = (*p).min(policy))
        .or_insert(policy);
}

fn describe(key: &LabelsKey) -> String {
    let mut s = format!("{}:", key.namespace);
    for (i, (k, v)) in key.labels.iter().enumerate() {
        let _ = write!(s, "{}{k}={v}", if i == 0 { " " } else { "," });
    }
    if let Some(class) = key.class {
        let _ = write!(s, " (in {class})");
    }
    s
}

/// What peer resolution looks at: the identities grouped by namespace
/// (a namespace's identities share its labels, so a namespace selector is
/// evaluated once per namespace, and a pod selector alone looks at one
/// namespace only), and those with a cidr class apart.
struct PeerCtx<'a> {
    by_namespace: BTreeMap<&'a str, NamespaceIds<'a>>,
    classed: Vec<(u32, Ipv4Net)>,
    cidr_ids: &'a [(Ipv4Net, u32)],
    host_ips: &'a [Ipv4Addr],
}

struct NamespaceIds<'a> {
    labels: &'a BTreeMap<String, String>,
    ids: Vec<(u32, &'a BTreeMap<String, String>)>,
}

impl<'a> PeerCtx<'a> {
    fn new(
        id_keys: &'a BTreeMap<u32, LabelsKey>,
        cidr_ids: &'a [(Ipv4Net, u32)],
        host_ips: &'a [Ipv4Addr],
    ) -> Self {
        let mut by_namespace: BTreeMap<&str, NamespaceIds<'_>> = BTreeMap::new();
        let mut classed = Vec::new();
        for (id, key) in id_keys {
            by_namespace
                .entry(key.namespace.as_str())
                .or_insert_with(|| NamespaceIds {
                    labels: &key.ns_labels,
                    ids: Vec::new(),
                })
                .ids
                .push((*id, &key.labels));
            if let Some(class) = key.class {
                classed.push((*id, class));
            }
        }
        Self {
            by_namespace,
            classed,
            cidr_ids,
            host_ips,
        }
    }
}

impl PeerCtx<'_> {
    fn resolve(&self, rule: &Rule, policy_ns: &str) -> PeerSet {
        let mut set = PeerSet::default();
        let Some(peers) = &rule.peers else {
            set.any = true;
            return set;
        };
        for peer in peers {
            match peer {
                Peer::Nothing => {}
                Peer::Pods { namespaces, pods } => {
                    let groups: Vec<&NamespaceIds<'_>> = match namespaces {
                        None => self.by_namespace.get(policy_ns).into_iter().collect(),
                        Some(sel) => self
                            .by_namespace
                            .values()
                            .filter(|g| sel.matches(g.labels))
                            .collect(),
                    };
                    for group in groups {
                        for (id, labels) in &group.ids {
                            if pods.matches(labels) {
                                set.ids.insert(*id);
                                set.pod_ids.insert(*id);
                            }
                        }
                    }
                }
                Peer::Block { cidr, except } => {
                    let inside = |net: &Ipv4Net| {
                        cidr.contains(net) && !except.iter().any(|e| e.contains(net))
                    };
                    for (net, id) in self.cidr_ids {
                        if inside(net) {
                            set.ids.insert(*id);
                        }
                    }
                    for (id, class) in &self.classed {
                        if inside(class) {
                            set.ids.insert(*id);
                        }
                    }
                    if self.host_ips.iter().any(|ip| inside(&Ipv4Net::from(*ip))) {
                        set.ids.insert(identity::HOST);
                    }
                }
            }
        }
        set
    }
}
