//! The compile checked against a reference evaluator written straight from
//! the NetworkPolicy API documentation (no identities, no tries: it looks
//! at pods, namespaces and policies for every flow), through an emulation
//! of the kernel's lookups over the compiled maps; then the stability of
//! ids, and the syncer's ordering and minimality over the fake maps.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde_json::{self, Value, json};
use kestrel_api::labels::Selector;
use kestrel_ebpf_common::policy::{NO_POLICY, PolicyKey, direction, endpoint_flags, identity};

use super::compile::{PolicyCompiler, PolicyNames, PolicyNode, PolicyState, key_bytes};
use super::diff::PolicySyncer;
use super::fake::{FakePolicyMaps, Op};

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

// ---------------------------------------------------------------------------
// Fixtures.

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A running pod; `ports` are (name, number, protocol).
fn pod(
    ns: &str,
    name: &str,
    ip: [u8; 4],
    node: &str,
    l: &[(&str, &str)],
    ports: &[(&str, u16, &str)],
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.to_owned()),
            name: Some(name.to_owned()),
            labels: Some(labels(l)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            containers: vec![Container {
                name: "c".to_owned(),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ContainerPort {
                            name: Some((*n).to_owned()),
                            container_port: i32::from(*p),
                            protocol: Some((*proto).to_owned()),
                            ..ContainerPort::default()
                        })
                        .collect(),
                ),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            pod_ip: Some(Ipv4Addr::from(ip).to_string()),
            ..PodStatus::default()
        }),
    }
}

/// A namespace with the label the API server adds.
fn namespace(name: &str, l: &[(&str, &str)]) -> Namespace {
    let mut all = labels(l);
    all.insert("kubernetes.io/metadata.name".to_owned(), name.to_owned());
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(all),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }))
    .expect("a valid NetworkPolicy")
}

fn node() -> PolicyNode {
    PolicyNode {
        name: "n1".to_owned(),
        ips: vec![NODE_IP],
    }
}

#[derive(Clone)]
struct World {
    pods: Vec<Pod>,
    namespaces: Vec<Namespace>,
    policies: Vec<NetworkPolicy>,
    node: PolicyNode,
}

/// Pods on the local node (n1) and elsewhere, in three namespaces, with
/// named ports that differ between pods of the same labels, a host-network
/// pod and a finished one.
fn base_world() -> World {
    let mut host = pod("a", "host", [10, 0, 0, 1], "n1", &[("app", "agent")], &[]);
    if let Some(s) = host.spec.as_mut() {
        s.host_network = Some(true);
    }
    let mut done = pod("a", "done", [10, 1, 0, 9], "n1", &[("app", "web")], &[]);
    if let Some(s) = done.status.as_mut() {
        s.phase = Some("Succeeded".to_owned());
    }
    World {
        pods: vec![
            pod(
                "a",
                "a1",
                [10, 1, 0, 1],
                "n1",
                &[("app", "web")],
                &[("http", 80, "TCP")],
            ),
            pod(
                "a",
                "a2",
                [10, 1, 0, 2],
                "n1",
                &[("app", "db")],
                &[("db", 5432, "TCP")],
            ),
            pod(
                "a",
                "a3",
                [10, 2, 0, 3],
                "n2",
                &[("app", "web")],
                &[("http", 8080, "TCP")],
            ),
            pod(
                "b",
                "b1",
                [10, 1, 0, 4],
                "n1",
                &[("app", "web")],
                &[("http", 80, "TCP")],
            ),
            pod("b", "b2", [10, 2, 0, 5], "n2", &[("app", "client")], &[]),
            pod(
                "c",
                "c1",
                [10, 1, 0, 6],
                "n1",
                &[("app", "client"), ("tier", "x")],
                &[
                    ("dns", 53, "UDP"),
                    ("sctp", 9000, "SCTP"),
                    ("http", 81, "UDP"),
                ],
            ),
            pod(
                "c",
                "c2",
                [192, 168, 1, 7],
                "n2",
                &[("app", "client")],
                &[("http", 80, "TCP")],
            ),
            host,
            done,
        ],
        namespaces: vec![
            namespace("a", &[("team", "x")]),
            namespace("b", &[("team", "y")]),
            namespace("c", &[]),
        ],
        policies: vec![],
        node: node(),
    }
}

fn probe_addrs(w: &World) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = w
        .pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
        .collect();
    out.extend([
        NODE_IP,
        Ipv4Addr::new(192, 168, 1, 1),
        Ipv4Addr::new(192, 168, 1, 200),
        Ipv4Addr::new(192, 168, 2, 1),
        Ipv4Addr::new(8, 8, 8, 8),
        Ipv4Addr::new(172, 16, 0, 1),
        Ipv4Addr::new(10, 1, 0, 200),
        Ipv4Addr::new(10, 9, 9, 9),
    ]);
    out.sort();
    out.dedup();
    out
}

const PROBE_PORTS: &[(u8, u16)] = &[
    (TCP, 80),
    (TCP, 81),
    (TCP, 443),
    (TCP, 5432),
    (TCP, 8080),
    (TCP, 1),
    (TCP, 65535),
    (TCP, 32000),
    (UDP, 53),
    (UDP, 80),
    (UDP, 81),
    (SCTP, 9000),
    (SCTP, 80),
];

// ---------------------------------------------------------------------------
// The reference evaluator: the API's words, one flow at a time.

fn ref_selector(sel: Option<&LabelSelector>, l: &BTreeMap<String, String>) -> bool {
    // Selector semantics are kestrel_api::labels' (tested there); this
    // model checks what the compiler builds from them.
    sel.is_none_or(|s| Selector::from_label_selector(s).is_ok_and(|s| s.matches(l)))
}

fn pod_ip(p: &Pod) -> Option<Ipv4Addr> {
    let spec = p.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let st = p.status.as_ref()?;
    if matches!(st.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    st.pod_ip.as_ref()?.parse().ok()
}

fn ns_labels(w: &World, ns: &str) -> BTreeMap<String, String> {
    w.namespaces
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(ns))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default()
}

fn pod_at(w: &World, addr: Ipv4Addr) -> Option<&Pod> {
    if w.node.ips.contains(&addr) {
        return None;
    }
    w.pods.iter().find(|p| pod_ip(p) == Some(addr))
}

fn proto_num(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(TCP),
        "UDP" => Some(UDP),
        "SCTP" => Some(SCTP),
        _ => None,
    }
}

fn container_port(p: &Pod, name: &str, proto: u8) -> Option<u16> {
    p.spec.as_ref()?.containers.iter().find_map(|c| {
        c.ports.iter().flatten().find_map(|cp| {
            (cp.name.as_deref() == Some(name) && proto_num(cp.protocol.as_deref()) == Some(proto))
                .then_some(cp.container_port as u16)
        })
    })
}

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("a test prefix")
}

fn in_net(addr: Ipv4Addr, cidr: &str) -> bool {
    cidr.parse::<Ipv4Net>().is_ok_and(|n| n.contains(&addr))
}

/// Whether `dir` traffic between local pod `local` and `peer` on
/// (`proto`, `port`) is allowed by the policies of `local`'s side.
fn reference(w: &World, dir: u8, local: &Pod, peer: Ipv4Addr, proto: u8, port: u16) -> bool {
    if dir == direction::INGRESS && w.node.ips.contains(&peer) {
        return true;
    }
    let ns = local.metadata.namespace.as_deref().unwrap_or_default();
    let local_labels = local.metadata.labels.clone().unwrap_or_default();
    let peer_pod = pod_at(w, peer);
    let mut isolated = false;
    for np in &w.policies {
        if np.metadata.namespace.as_deref() != Some(ns) {
            continue;
        }
        let spec = np.spec.as_ref().expect("spec");
        if !ref_selector(
            Some(spec.pod_selector.clone().unwrap_or_default()).as_ref(),
            &local_labels,
        ) {
            continue;
        }
        let types = spec.policy_types.clone().unwrap_or_default();
        let applies = if types.is_empty() {
            dir == direction::INGRESS || spec.egress.as_ref().is_some_and(|e| !e.is_empty())
        } else {
            types.iter().any(|t| {
                t == if dir == direction::INGRESS {
                    "Ingress"
                } else {
                    "Egress"
                }
            })
        };
        if !applies {
            continue;
        }
        isolated = true;
        let rules: Vec<(Option<Vec<_>>, Option<Vec<_>>)> = if dir == direction::INGRESS {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.clone(), r.ports.clone()))
                .collect()
        } else {
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.clone(), r.ports.clone()))
                .collect()
        };
        for (peers, ports) in rules {
            let peers = peers.unwrap_or_default();
            let no_peers = peers.is_empty();
            // Peers that match, and whether one matched by selector.
            let mut by_block = false;
            let mut by_selector = no_peers && peer_pod.is_some();
            for p in &peers {
                if let Some(b) = &p.ip_block {
                    if in_net(peer, &b.cidr) && !b.except.iter().flatten().any(|e| in_net(peer, e))
                    {
                        by_block = true;
                    }
                } else if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                    let Some(pp) = peer_pod else { continue };
                    let pns = pp.metadata.namespace.as_deref().unwrap_or_default();
                    let ns_ok = match &p.namespace_selector {
                        None => pns == ns,
                        Some(sel) => ref_selector(Some(sel), &ns_labels(w, pns)),
                    };
                    let pl = pp.metadata.labels.clone().unwrap_or_default();
                    if ns_ok && ref_selector(p.pod_selector.as_ref(), &pl) {
                        by_selector = true;
                    }
                }
            }
            let peer_ok = no_peers || by_block || by_selector;
            if !peer_ok {
                continue;
            }
            let ports = ports.unwrap_or_default();
            let port_ok = ports.is_empty()
                || ports.iter().any(|p| {
                    if proto_num(p.protocol.as_deref()) != Some(proto) {
                        return false;
                    }
                    match &p.port {
                        None => true,
                        Some(IntOrString::Int(n)) => {
                            let end = p.end_port.unwrap_or(*n);
                            i32::from(port) >= *n && i32::from(port) <= end
                        }
                        // Ingress: the selected pod's own port. Egress: the
                        // destination pod's, and only for a pod a selector
                        // (or the absence of peers) matched.
                        Some(IntOrString::String(name)) => {
                            if dir == direction::INGRESS {
                                container_port(local, name, proto) == Some(port)
                            } else {
                                by_selector
                                    && peer_pod.is_some_and(|pp| {
                                        container_port(pp, name, proto) == Some(port)
                                    })
                            }
                        }
                    }
                });
            if port_ok {
                return true;
            }
        }
    }
    !isolated
}

// ---------------------------------------------------------------------------
// The kernel's lookups, emulated over the compiled maps.

struct Kernel {
    ipcache: BTreeMap<Ipv4Net, u32>,
    endpoints: HashMap<Ipv4Addr, kestrel_ebpf_common::policy::PolicyEndpoint>,
    /// (key bits as a 96-bit number, prefix length) → policy id.
    entries: HashMap<(u128, u32), u32>,
}

fn bits(key: &PolicyKey) -> u128 {
    key_bytes(key)
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
}

fn mask(v: u128, len: u32) -> u128 {
    if len == 0 {
        0
    } else {
        v & (((1u128 << 96) - 1) & !((1u128 << (96 - len)) - 1))
    }
}

impl Kernel {
    fn new(state: &PolicyState) -> Self {
        let entries = state
            .entries
            .iter()
            .map(|(k, id)| {
                let b = bits(&k.key);
                assert_eq!(b, mask(b, k.prefix_len), "bits past the prefix in {k:?}");
                ((b, k.prefix_len), *id)
            })
            .collect();
        Self {
            ipcache: state.ipcache.clone(),
            endpoints: state.endpoints.iter().map(|(a, e)| (*a, *e)).collect(),
            entries,
        }
    }

    fn identity(&self, addr: Ipv4Addr) -> u32 {
        (0..=32u8)
            .rev()
            .find_map(|len| {
                let net = Ipv4Net::new(addr, len).ok()?.trunc();
                self.ipcache.get(&net).copied()
            })
            .unwrap_or(identity::WORLD)
    }

    fn lookup(&self, key: PolicyKey) -> Option<u32> {
        let b = bits(&key);
        (0..=96u32)
            .rev()
            .find_map(|len| self.entries.get(&(mask(b, len), len)).copied())
    }

    /// The verdict for `dir` traffic of local pod `local` with `peer`.
    fn allows(&self, dir: u8, local: Ipv4Addr, peer: Ipv4Addr, proto: u8, port: u16) -> bool {
        let peer_id = self.identity(peer);
        if dir == direction::INGRESS && peer_id == identity::HOST {
            return true;
        }
        let ep = self
            .endpoints
            .get(&local)
            .expect("every local pod has an endpoint");
        if !ep.isolated(dir) {
            return true;
        }
        let local_be = u32::from_ne_bytes(local.octets());
        self.lookup(PolicyKey::lookup(
            local_be,
            peer_id,
            dir,
            proto,
            port.to_be(),
        ))
        .or_else(|| {
            self.lookup(PolicyKey::lookup(
                local_be,
                identity::ANY,
                dir,
                proto,
                port.to_be(),
            ))
        })
        .is_some()
    }
}

/// Compiles `w` and compares every (local pod, probe address, probe port,
/// direction) between the kernel emulation and the reference.
fn check_world(w: &World, compiler: &mut PolicyCompiler) -> PolicyState {
    let compiled = compiler.compile(&w.node, &w.pods, &w.namespaces, &w.policies);
    let kernel = Kernel::new(&compiled.state);
    let addrs = probe_addrs(w);
    let locals: Vec<&Pod> = w
        .pods
        .iter()
        .filter(|p| {
            pod_ip(p).is_some()
                && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&w.node.name)
        })
        .collect();
    for local in &locals {
        let ip = pod_ip(local).expect("ip");
        for &peer in &addrs {
            for &(proto, port) in PROBE_PORTS {
                for dir in [direction::INGRESS, direction::EGRESS] {
                    let want = reference(w, dir, local, peer, proto, port);
                    let got = kernel.allows(dir, ip, peer, proto, port);
                    assert_eq!(
                        got,
                        want,
                        "{} {:?} {ip} {} {peer} proto {proto} port {port}: kernel {got}, reference {want}\npolicies: {:#?}",
                        if dir == direction::INGRESS {
                            "ingress"
                        } else {
                            "egress"
                        },
                        local.metadata.name,
                        if dir == direction::INGRESS {
                            "<-"
                        } else {
                            "->"
                        },
                        w.policies.iter().map(|p| &p.spec).collect::<Vec<_>>(),
                    );
                }
            }
        }
    }
    compiled.state
}

fn check(policies: Vec<NetworkPolicy>) -> PolicyState {
    let mut w = base_world();
    w.policies = policies;
    check_world(&w, &mut PolicyCompiler::new())
}

// ---------------------------------------------------------------------------
// Scenarios.

#[test]
fn no_policy_leaves_every_pod_open_with_an_endpoint() {
    let state = check(vec![]);
    assert_eq!(state.endpoints.len(), 4, "a1, a2, b1, c1");
    assert!(
        state
            .endpoints
            .values()
            .all(|e| e.flags == 0 && e.ingress_policy == NO_POLICY && e.egress_policy == NO_POLICY)
    );
    assert!(state.entries.is_empty());
    // Pods cluster-wide and the node; not the host-network or finished pod.
    assert_eq!(
        state.ipcache.get(&net("10.0.0.1/32")),
        Some(&identity::HOST)
    );
    assert!(!state.ipcache.contains_key(&net("10.1.0.9/32")));
    assert_eq!(state.ipcache.len(), 7 + 1);
}

#[test]
fn default_deny_ingress_and_egress() {
    let state = check(vec![policy(
        "a",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    )]);
    let a1 = state.endpoints[&Ipv4Addr::new(10, 1, 0, 1)];
    assert_eq!(
        a1.flags,
        endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED
    );
    assert_eq!(a1.ingress_policy, 1);
    assert!(state.entries.is_empty());
    check(vec![policy("a", "deny", json!({"podSelector": {}}))]);
    check(vec![policy(
        "a",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    )]);
}

#[test]
fn pod_and_namespace_selectors() {
    check(vec![policy(
        "a",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]}),
    )]);
    check(vec![policy(
        "a",
        "ns",
        json!({"podSelector": {},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]}),
    )]);
    check(vec![policy(
        "a",
        "both",
        json!({"podSelector": {},
               "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}]}],
               "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [
                   {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["c"]}]}}]}]}),
    )]);
    check(vec![policy(
        "c",
        "exprs",
        json!({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
               "ingress": [{"from": [
                   {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["x"]}]},
                    "podSelector": {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}},
                   {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}}]}]}),
    )]);
}

#[test]
fn ip_blocks_with_nested_exceptions_and_pods_inside() {
    check(vec![policy(
        "a",
        "cidr",
        json!({"podSelector": {},
               "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}],
               "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}},
                                  {"ipBlock": {"cidr": "10.1.0.0/24", "except": ["10.1.0.0/30"]}}],
                           "ports": [{"port": 443}, {"port": 53, "protocol": "UDP"}]}]}),
    )]);
    // Nested: a block inside another policy's exception, and the node's
    // own address inside a block.
    check(vec![
        policy(
            "a",
            "outer",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}]}),
        ),
        policy(
            "a",
            "inner",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"ipBlock": {"cidr": "192.168.1.128/25"}},
                                      {"ipBlock": {"cidr": "10.0.0.0/24"}}]}]}),
        ),
        policy(
            "b",
            "hostless",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/24", "10.2.0.0/16"]}}]}]}),
        ),
    ]);
}

#[test]
fn named_ports_resolve_per_pod() {
    let state = check(vec![
        policy(
            "a",
            "in",
            json!({"podSelector": {},
                   "ingress": [{"ports": [{"port": "http"}, {"port": "db"}]}]}),
        ),
        policy(
            "c",
            "out",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}},
                                      {"ipBlock": {"cidr": "192.168.0.0/16"}}],
                               "ports": [{"port": "http"}]},
                              {"ports": [{"port": "dns", "protocol": "UDP"}, {"port": "sctp", "protocol": "SCTP"}]}]}),
        ),
        policy(
            "b",
            "nowhere",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"ports": [{"port": "http"}]}]}),
        ),
    ]);
    assert!(!state.entries.is_empty());
}

#[test]
fn port_ranges_protocols_and_stacking() {
    check(vec![
        policy(
            "a",
            "range",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"namespaceSelector": {}}],
                                "ports": [{"port": 80, "endPort": 443}, {"protocol": "UDP"}]}]}),
        ),
        policy(
            "a",
            "stacked",
            json!({"podSelector": {},
                   "ingress": [{"ports": [{"port": 5432}, {"protocol": "SCTP", "port": 9000}]},
                               {"from": [{"podSelector": {}}]}],
                   "egress": [{"to": [{"ipBlock": {"cidr": "8.8.8.0/24"}}], "ports": [{"port": 1, "endPort": 32000}]},
                              {"ports": [{"protocol": "SCTP"}]}]}),
        ),
        policy(
            "b",
            "allow-all",
            json!({"podSelector": {}, "ingress": [{}], "egress": [{}],
                   "policyTypes": ["Ingress", "Egress"]}),
        ),
    ]);
}

#[test]
fn policies_apply_only_in_their_namespace_and_lowest_id_names_entries() {
    let state = check(vec![
        policy(
            "b",
            "z-second",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        ),
        policy(
            "b",
            "a-first",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        ),
    ]);
    // Only b1 is isolated; the ids follow (namespace, name).
    let isolated: Vec<_> = state
        .endpoints
        .iter()
        .filter(|(_, e)| e.flags != 0)
        .collect();
    assert_eq!(isolated.len(), 1);
    assert_eq!(isolated[0].1.ingress_policy, 1, "b/a-first");
    assert!(state.entries.values().all(|&id| id == 1));
}

// ---------------------------------------------------------------------------
// Randomized worlds.

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const APPS: &[&str] = &["web", "db", "client"];
const NAMESPACES: &[&str] = &["a", "b", "c"];
const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.0.0/24",
    "10.1.0.0/30",
    "10.2.0.0/16",
    "192.168.0.0/16",
    "192.168.1.0/24",
    "192.168.1.128/25",
    "0.0.0.0/0",
    "10.0.0.1/32",
    "8.8.8.0/24",
];

fn random_selector(r: &mut Rng) -> Value {
    match r.below(5) {
        0 => json!({}),
        1 => json!({"matchLabels": {"app": r.pick(APPS)}}),
        2 => {
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": [r.pick(APPS), r.pick(APPS)]}]})
        }
        3 => {
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": [r.pick(APPS)]}]})
        }
        _ => {
            json!({"matchExpressions": [{"key": "tier", "operator": if r.chance(50) { "Exists" } else { "DoesNotExist" }}]})
        }
    }
}

fn random_ns_selector(r: &mut Rng) -> Value {
    match r.below(4) {
        0 => json!({}),
        1 => json!({"matchLabels": {"team": if r.chance(50) { "x" } else { "y" }}}),
        2 => json!({"matchLabels": {"kubernetes.io/metadata.name": r.pick(NAMESPACES)}}),
        _ => json!({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}),
    }
}

fn random_peer(r: &mut Rng) -> Value {
    match r.below(4) {
        0 => json!({"podSelector": random_selector(r)}),
        1 => json!({"namespaceSelector": random_ns_selector(r)}),
        2 => json!({"namespaceSelector": random_ns_selector(r), "podSelector": random_selector(r)}),
        _ => {
            let cidr = *r.pick(CIDRS);
            let block = net(cidr);
            let except: Vec<&str> = CIDRS
                .iter()
                .copied()
                .filter(|e| {
                    let e = net(e);
                    e != block && block.contains(&e)
                })
                .filter(|_| r.chance(40))
                .collect();
            json!({"ipBlock": {"cidr": cidr, "except": except}})
        }
    }
}

fn random_port(r: &mut Rng) -> Value {
    let proto = *r.pick(&["TCP", "UDP", "SCTP", "TCP"]);
    match r.below(5) {
        0 => json!({"protocol": proto}),
        1 => json!({"protocol": proto, "port": *r.pick(&[80, 53, 443, 9000, 5432])}),
        2 => {
            let start = *r.pick(&[1, 80, 81, 443, 30000]);
            json!({"protocol": proto, "port": start, "endPort": start + *r.pick(&[0, 1, 400, 2000])})
        }
        _ => json!({"protocol": proto, "port": *r.pick(&["http", "dns", "db", "sctp", "none"])}),
    }
}

fn random_rules(r: &mut Rng) -> Value {
    let n = r.below(3);
    let rules: Vec<Value> = (0..n)
        .map(|_| {
            let mut rule = serde_json::Map::new();
            if r.chance(70) {
                let peers: Vec<Value> = (0..1 + r.below(2)).map(|_| random_peer(r)).collect();
                rule.insert("peers".to_owned(), Value::Array(peers));
            }
            if r.chance(70) {
                let ports: Vec<Value> = (0..1 + r.below(2)).map(|_| random_port(r)).collect();
                rule.insert("ports".to_owned(), Value::Array(ports));
            }
            Value::Object(rule)
        })
        .collect();
    Value::Array(rules)
}

fn rename_peers(rules: Value, to: &str) -> Value {
    let Value::Array(rules) = rules else {
        return rules;
    };
    Value::Array(
        rules
            .into_iter()
            .map(|rule| {
                let Value::Object(mut m) = rule else {
                    return rule;
                };
                if let Some(p) = m.remove("peers") {
                    m.insert(to.to_owned(), p);
                }
                Value::Object(m)
            })
            .collect(),
    )
}

fn random_world(r: &mut Rng) -> World {
    let mut w = base_world();
    // Random extra pods, some local, some in ipBlocks.
    for i in 0..r.below(8) {
        let ns = *r.pick(NAMESPACES);
        let ip = *r.pick(&[
            [10, 1, 0, 20 + i as u8],
            [192, 168, 1, 130 + i as u8],
            [10, 2, 1, i as u8 + 1],
        ]);
        let mut l = vec![("app", *r.pick(APPS))];
        if r.chance(30) {
            l.push(("tier", "x"));
        }
        let node = if r.chance(50) { "n1" } else { "n2" };
        let ports: &[(&str, u16, &str)] = match r.below(3) {
            0 => &[("http", 80, "TCP")],
            1 => &[("http", 443, "TCP"), ("dns", 53, "UDP")],
            _ => &[],
        };
        w.pods.push(pod(ns, &format!("r{i}"), ip, node, &l, ports));
    }
    for i in 0..1 + r.below(4) {
        let ns = *r.pick(NAMESPACES);
        let mut spec = serde_json::Map::new();
        spec.insert("podSelector".to_owned(), random_selector(r));
        spec.insert("ingress".to_owned(), rename_peers(random_rules(r), "from"));
        if r.chance(60) {
            spec.insert("egress".to_owned(), rename_peers(random_rules(r), "to"));
        }
        match r.below(4) {
            0 => {
                spec.insert("policyTypes".to_owned(), json!(["Ingress", "Egress"]));
            }
            1 => {
                spec.insert("policyTypes".to_owned(), json!(["Egress"]));
            }
            _ => {}
        }
        w.policies
            .push(policy(ns, &format!("p{i}"), Value::Object(spec)));
    }
    w
}

#[test]
fn randomized_worlds_match_the_reference() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut compiler = PolicyCompiler::new();
    let (mut isolated, mut entries) = (0, 0);
    for _ in 0..150 {
        let w = random_world(&mut r);
        // The same compiler across worlds: reused ids must not leak.
        let state = check_world(&w, &mut compiler);
        isolated += state.endpoints.values().filter(|e| e.flags != 0).count();
        entries += state.entries.len();
    }
    // The worlds exercise something.
    assert!(
        isolated > 150 && entries > 1_000,
        "{isolated} isolated, {entries} entries"
    );
}

// ---------------------------------------------------------------------------
// Stability.

fn stacked_world() -> World {
    let mut w = base_world();
    w.policies = vec![
        policy(
            "a",
            "web",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": "http"}]}],
                   "egress": [{"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}]}),
        ),
        policy("b", "deny", json!({"podSelector": {}})),
    ];
    w
}

#[test]
fn ids_are_stable_across_recompiles_and_freed_when_unused() {
    let mut w = stacked_world();
    let mut c = PolicyCompiler::new();
    let first = c
        .compile(&w.node, &w.pods, &w.namespaces, &w.policies)
        .state;
    let again = c
        .compile(&w.node, &w.pods, &w.namespaces, &w.policies)
        .state;
    assert_eq!(first, again);

    // A new pod, a new policy sorted first: nothing else renumbers.
    w.pods.push(pod(
        "c",
        "new",
        [10, 1, 0, 50],
        "n1",
        &[("app", "new")],
        &[],
    ));
    w.policies.push(policy(
        "a",
        "aaa",
        json!({"podSelector": {"matchLabels": {"app": "none"}}}),
    ));
    let more = c
        .compile(&w.node, &w.pods, &w.namespaces, &w.policies)
        .state;
    for (net, id) in &first.ipcache {
        assert_eq!(more.ipcache.get(net), Some(id), "{net}");
    }
    assert_eq!(c.policy_id("a", "web"), Some(1));
    assert_eq!(c.policy_id("b", "deny"), Some(2));
    assert_eq!(c.policy_id("a", "aaa"), Some(3));
    for (k, id) in &first.entries {
        assert_eq!(more.entries.get(k), Some(id));
    }

    // Removing the new pod frees its identity; a later one gets a fresh id
    // (ids come back only after the counter goes round).
    let new_id = more.ipcache[&net("10.1.0.50/32")];
    w.pods.pop();
    let fewer = c
        .compile(&w.node, &w.pods, &w.namespaces, &w.policies)
        .state;
    assert!(!fewer.ipcache.values().any(|&id| id == new_id));
    w.pods.push(pod(
        "c",
        "new2",
        [10, 1, 0, 51],
        "n1",
        &[("app", "other")],
        &[],
    ));
    let later = c
        .compile(&w.node, &w.pods, &w.namespaces, &w.policies)
        .state;
    assert!(later.ipcache[&net("10.1.0.51/32")] > new_id);
}

#[test]
fn names_cover_old_and_new_numbers_while_the_maps_are_written() {
    let mut w = stacked_world();
    let mut c = PolicyCompiler::new();
    let names = PolicyNames::default();
    names.set(
        c.compile(&w.node, &w.pods, &w.namespaces, &w.policies)
            .names,
    );
    let web = c.policy_id("a", "web").expect("an id for a/web");
    assert_eq!(names.policy(web).as_deref(), Some("a/web"));

    // a/web goes and a/aaa comes: during the write both are named.
    w.policies
        .retain(|p| p.metadata.name.as_deref() != Some("web"));
    w.policies.push(policy(
        "a",
        "aaa",
        json!({"podSelector": {"matchLabels": {"app": "none"}}}),
    ));
    let next = c
        .compile(&w.node, &w.pods, &w.namespaces, &w.policies)
        .names;
    let aaa = c.policy_id("a", "aaa").expect("an id for a/aaa");
    assert_ne!(aaa, web);
    names.overlay(&next);
    assert_eq!(names.policy(web).as_deref(), Some("a/web"));
    assert_eq!(names.policy(aaa).as_deref(), Some("a/aaa"));

    // Once written, only what the maps now hold.
    names.set(next);
    assert_eq!(names.policy(web), None);
    assert_eq!(names.policy(aaa).as_deref(), Some("a/aaa"));
}

#[test]
fn restart_adopts_identities_from_the_pinned_ipcache() {
    let w = stacked_world();
    let mut before = PolicyCompiler::new();
    // Churn first so that identities are not simply 256, 257, ...
    let mut churn = w.clone();
    churn
        .pods
        .insert(0, pod("0", "x", [10, 3, 0, 1], "n2", &[("z", "z")], &[]));
    before.compile(&churn.node, &churn.pods, &churn.namespaces, &churn.policies);
    let old = before
        .compile(&w.node, &w.pods, &w.namespaces, &w.policies)
        .state;

    let mut maps = FakePolicyMaps::default();
    let mut syncer = PolicySyncer::adopt(std::mem::take(&mut maps)).expect("fake maps adopt");
    syncer.sync(&old).expect("fake maps sync");

    // A new agent: fresh compiler, adopted from the maps.
    let mut fresh =
        PolicySyncer::adopt(std::mem::take(syncer.maps_mut())).expect("fake maps adopt");
    let mut compiler = PolicyCompiler::new();
    compiler.adopt_ipcache(fresh.programmed().ipcache.clone());
    let new = compiler
        .compile(&w.node, &w.pods, &w.namespaces, &w.policies)
        .state;
    assert_eq!(new.ipcache, old.ipcache);
    assert_eq!(new.endpoints, old.endpoints);
    assert_eq!(new.entries, old.entries);
    let stats = fresh.sync(&new).expect("fake maps sync");
    assert_eq!(stats.writes() + stats.deletes(), 0, "{stats:?}");
}

// ---------------------------------------------------------------------------
// The syncer.

fn apply(state: &mut PolicyState, op: &Op) {
    match *op {
        Op::PutIpcache(n, id) => {
            state.ipcache.insert(n, id);
        }
        Op::DeleteIpcache(n) => {
            state.ipcache.remove(&n);
        }
        Op::PutEndpoint(a, e) => {
            state.endpoints.insert(a, e);
        }
        Op::DeleteEndpoint(a) => {
            state.endpoints.remove(&a);
        }
        Op::PutEntry(k, id) => {
            state.entries.insert(k, id);
        }
        Op::DeleteEntry(k) => {
            state.entries.remove(&k);
        }
    }
}

/// Every (dir, local, peer, proto, port) the kernel allows in `state`, for
/// local pods present in both `a` and `b`.
fn allowed_flows(
    state: &PolicyState,
    locals: &[Ipv4Addr],
    peers: &[Ipv4Addr],
) -> Vec<(u8, Ipv4Addr, Ipv4Addr, u8, u16)> {
    let k = Kernel::new(state);
    let mut out = Vec::new();
    for &l in locals {
        if !state.endpoints.contains_key(&l) {
            continue;
        }
        for &p in peers {
            for &(proto, port) in PROBE_PORTS {
                for dir in [direction::INGRESS, direction::EGRESS] {
                    if k.allows(dir, l, p, proto, port) {
                        out.push((dir, l, p, proto, port));
                    }
                }
            }
        }
    }
    out
}

/// Syncs `from` then `to` through the fake maps and checks that every flow
/// allowed in both stays allowed after every single write; returns the
/// ops of the second sync.
fn transition(from: &World, to: &World) -> Vec<Op> {
    let mut c = PolicyCompiler::new();
    let a = c
        .compile(&from.node, &from.pods, &from.namespaces, &from.policies)
        .state;
    let b = c
        .compile(&to.node, &to.pods, &to.namespaces, &to.policies)
        .state;
    let mut syncer = PolicySyncer::adopt(FakePolicyMaps::default()).expect("fake maps adopt");
    syncer.sync(&a).expect("fake maps sync");
    syncer.maps_mut().ops.clear();
    let stats = syncer.sync(&b).expect("fake maps sync");
    let ops = syncer.maps().ops.clone();
    assert_eq!(stats.writes() + stats.deletes(), ops.len());
    assert_eq!(syncer.maps().ipcache, b.ipcache);
    assert_eq!(syncer.maps().endpoints, b.endpoints);
    assert_eq!(syncer.maps().entries, b.entries);

    let locals: Vec<Ipv4Addr> = a
        .endpoints
        .keys()
        .filter(|l| b.endpoints.contains_key(l))
        .copied()
        .collect();
    let mut peers = probe_addrs(from);
    peers.extend(probe_addrs(to));
    peers.sort();
    peers.dedup();
    let before = allowed_flows(&a, &locals, &peers);
    let after: std::collections::HashSet<_> =
        allowed_flows(&b, &locals, &peers).into_iter().collect();
    let kept: Vec<_> = before.into_iter().filter(|f| after.contains(f)).collect();
    let mut mid = a.clone();
    for op in &ops {
        apply(&mut mid, op);
        let k = Kernel::new(&mid);
        for &(dir, l, p, proto, port) in &kept {
            assert!(
                k.allows(dir, l, p, proto, port),
                "after {op:?}: {l} {p} {proto}/{port} dir {dir} denied mid-update"
            );
        }
    }
    // Minimal: a second sync writes nothing.
    assert_eq!(syncer.sync(&b).expect("fake maps sync"), Default::default());
    ops
}

/// The phase of an op in the syncer's order (endpoint writes happen in
/// two phases: loosening, then the rest; both sit between entry adds and
/// entry removals).
fn kind(op: &Op) -> usize {
    match op {
        Op::PutEntry(..) => 0,
        Op::PutIpcache(..) => 1,
        Op::DeleteIpcache(..) => 2,
        Op::PutEndpoint(..) => 3,
        Op::DeleteEndpoint(..) => 4,
        Op::DeleteEntry(..) => 5,
    }
}

#[test]
fn label_change_moves_identity_without_denying_kept_flows() {
    let from = stacked_world();
    let mut to = from.clone();
    // b2 (remote client) gains a label: a new identity, still matched by
    // the namespaceSelector peer of a/web.
    to.pods[4]
        .metadata
        .labels
        .as_mut()
        .expect("labels")
        .insert("v".to_owned(), "2".to_owned());
    let ops = transition(&from, &to);
    let kinds: Vec<usize> = ops.iter().map(kind).collect();
    assert!(kinds.windows(2).all(|w| w[0] <= w[1]), "ordered: {kinds:?}");
    // The new identity's allows (one per ingress-isolated web pod: a1),
    // the /32, and the old identity's allows removed.
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::PutIpcache(n, _) if n.addr() == Ipv4Addr::new(10, 2, 0, 5)))
    );
    assert!(!ops.iter().any(|o| matches!(o, Op::DeleteIpcache(_))));
    assert!(ops.len() <= 4, "{ops:?}");
}

#[test]
fn policy_and_pod_changes_are_ordered_and_minimal() {
    let from = base_world();
    let to = stacked_world();
    let ops = transition(&from, &to);
    let kinds: Vec<usize> = ops.iter().map(kind).collect();
    assert!(kinds.windows(2).all(|w| w[0] <= w[1]), "ordered: {kinds:?}");
    transition(&to, &from);
    // Pods come and go, a policy loosens.
    let mut more = to.clone();
    more.pods.remove(0);
    more.pods.push(pod(
        "a",
        "a9",
        [10, 1, 0, 60],
        "n1",
        &[("app", "web")],
        &[("http", 80, "TCP")],
    ));
    more.policies[1] = policy("b", "deny", json!({"podSelector": {}, "ingress": [{}]}));
    transition(&to, &more);
    let mut r = Rng(7);
    for _ in 0..20 {
        let a = random_world(&mut r);
        let b = random_world(&mut r);
        transition(&a, &b);
    }
}

#[test]
fn a_failed_write_is_finished_by_the_next_sync() {
    let w = stacked_world();
    let state = PolicyCompiler::new()
        .compile(&w.node, &w.pods, &w.namespaces, &w.policies)
        .state;
    let mut syncer = PolicySyncer::adopt(FakePolicyMaps {
        fail_after: Some(3),
        ..FakePolicyMaps::default()
    })
    .expect("fake maps adopt");
    assert!(syncer.sync(&state).is_err());
    assert_eq!(syncer.maps().ops.len(), 3);
    syncer.maps_mut().fail_after = None;
    let stats = syncer.sync(&state).expect("fake maps sync");
    let total = state.ipcache.len() + state.endpoints.len() + state.entries.len();
    assert_eq!(stats.writes(), total - 3);
    assert_eq!(syncer.maps().entries, state.entries);
    assert_eq!(syncer.maps().ipcache, state.ipcache);
}

// ---------------------------------------------------------------------------
// Scale.

/// 5,000 pods (110 local) in 50 namespaces of 10 Deployments each, and
/// 1,000 policies (20 per namespace: default deny, per-app allows from
/// other apps and namespaces, named ports, egress to CIDRs).
fn scale_world() -> World {
    let mut pods = Vec::new();
    let mut namespaces = Vec::new();
    let mut policies = Vec::new();
    for n in 0..50u32 {
        let ns = format!("ns{n}");
        let team = ["red", "blue", "green"][n as usize % 3];
        namespaces.push(namespace(&ns, &[("team", team)]));
        for p in 0..100u32 {
            let i = n * 100 + p;
            let app = format!("app{}", p % 10);
            let ip = [
                10,
                100 + (i / 65536) as u8,
                (i / 256 % 256) as u8,
                (i % 256) as u8,
            ];
            let node = if i % 45 == 0 && i < 4_950 { "n1" } else { "n2" };
            pods.push(pod(
                &ns,
                &format!("pod{p}"),
                ip,
                node,
                &[("app", &app), ("pod-template-hash", "abc123")],
                &[("http", 8080, "TCP"), ("metrics", 9090, "TCP")],
            ));
        }
        policies.push(policy(
            &ns,
            "default-deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        ));
        policies.push(policy(
            &ns,
            "allow-dns",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns0"}},
                                       "podSelector": {"matchLabels": {"app": "app0"}}}],
                               "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}]}),
        ));
        for a in 0..10u32 {
            policies.push(policy(
                &ns,
                &format!("app{a}-in"),
                json!({"podSelector": {"matchLabels": {"app": format!("app{a}")}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("app{}", (a + 1) % 10)}}},
                                             {"namespaceSelector": {"matchLabels": {"team": team}},
                                              "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["app1", "app2"]}]}}],
                                   "ports": [{"port": "http"}, {"port": 9000, "endPort": 9010}]}]}),
            ));
        }
        for a in 0..8u32 {
            policies.push(policy(
                &ns,
                &format!("app{a}-out"),
                json!({"podSelector": {"matchLabels": {"app": format!("app{a}")}}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"podSelector": {"matchLabels": {"app": format!("app{}", (a + 2) % 10)}}}],
                                   "ports": [{"port": "metrics"}]},
                                  {"to": [{"ipBlock": {"cidr": format!("172.{}.0.0/16", a + 16), "except": [format!("172.{}.1.0/24", a + 16)]}}],
                                   "ports": [{"port": 443}]}]}),
            ));
        }
    }
    World {
        pods,
        namespaces,
        policies,
        node: node(),
    }
}

#[test]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
fn measure_compile_and_diff_at_scale() {
    use std::time::Instant;
    let mut w = scale_world();
    assert_eq!(w.pods.len(), 5_000);
    assert_eq!(w.policies.len(), 1_000);
    let mut c = PolicyCompiler::new();
    let mut syncer = PolicySyncer::adopt(FakePolicyMaps::default()).expect("fake maps adopt");

    let t = Instant::now();
    let full = c
        .compile(&w.node, &w.pods, &w.namespaces, &w.policies)
        .state;
    let compiled = t.elapsed();
    let t = Instant::now();
    let stats = syncer.sync(&full).expect("fake maps sync");
    let synced = t.elapsed();
    println!(
        "full: compile {compiled:?}, diff+write {synced:?}: {} ipcache, {} endpoints ({} local), {} entries, {} writes",
        full.ipcache.len(),
        full.endpoints.len(),
        full.endpoints.len(),
        full.entries.len(),
        stats.writes()
    );

    let t = Instant::now();
    let same = c
        .compile(&w.node, &w.pods, &w.namespaces, &w.policies)
        .state;
    let compiled = t.elapsed();
    let t = Instant::now();
    let stats = syncer.sync(&same).expect("fake maps sync");
    println!(
        "unchanged: compile {compiled:?}, diff {:?}, {} writes",
        t.elapsed(),
        stats.writes() + stats.deletes()
    );

    // One remote pod changes app: its identity moves.
    w.pods[1]
        .metadata
        .labels
        .as_mut()
        .expect("labels")
        .insert("app".to_owned(), "app2".to_owned());
    let t = Instant::now();
    let one = c
        .compile(&w.node, &w.pods, &w.namespaces, &w.policies)
        .state;
    let compiled = t.elapsed();
    let t = Instant::now();
    let stats = syncer.sync(&one).expect("fake maps sync");
    println!(
        "one label change: compile {compiled:?}, diff+write {:?}, {} writes, {} deletes",
        t.elapsed(),
        stats.writes(),
        stats.deletes()
    );
    // A fresh label value: a new identity.
    w.pods[1]
        .metadata
        .labels
        .as_mut()
        .expect("labels")
        .insert("canary".to_owned(), "yes".to_owned());
    let t = Instant::now();
    let two = c
        .compile(&w.node, &w.pods, &w.namespaces, &w.policies)
        .state;
    let compiled = t.elapsed();
    let t = Instant::now();
    let stats = syncer.sync(&two).expect("fake maps sync");
    println!(
        "new label value: compile {compiled:?}, diff+write {:?}, {} writes, {} deletes",
        t.elapsed(),
        stats.writes(),
        stats.deletes()
    );
}
