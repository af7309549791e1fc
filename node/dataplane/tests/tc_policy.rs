//! Network policy in the per-packet programs, with the policy maps written
//! by hand (the compile from NetworkPolicy objects has its own tests):
//! isolation and allow entries by identity, protocol, port and port range;
//! ICMP; the node's own probes through `tc_to_pod`; egress; a service flow
//! decided on its backend; replies and established flows; and every
//! verdict counted, with the decided ones on the flow event ring buffer.
//! The nodes' FORWARD chains drop everything, so whatever crosses a node
//! went through the programs.

mod tc_topo;

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::Duration;

use aya::maps::{HashMap, LpmTrie, lpm_trie::Key};
use kestrel_dataplane::flows::{FlowEvents, event_stats, verdicts};
use kestrel_ebpf_common::drop::DropReason;
use kestrel_ebpf_common::lb::scope;
use kestrel_ebpf_common::map_names;
use kestrel_ebpf_common::policy::{
    FlowEvent, IpcacheEntry, NO_POLICY, PolicyEndpoint, PolicyEntry, PolicyKey, direction,
    endpoint_flags, identity, port_range_prefixes, prefix, verdict,
};
use tc_topo::{Cluster, Node, Server, TCP, be, greet};

const A_ID: u32 = 300;
const B_ID: u32 = 301;
const R_ID: u32 = 302;
/// The policy that isolates b, and the one that lets a in.
const ISOLATING: u32 = 5;
const LETS_A_IN: u32 = 7;
const R_EGRESS: u32 = 9;

fn ipcache(node: &mut Node, ip: Ipv4Addr, len: u32, id: u32) {
    let mut map: LpmTrie<_, u32, IpcacheEntry> = LpmTrie::try_from(
        node.dp()
            .ebpf_mut()
            .map_mut(map_names::IPCACHE)
            .expect("IPCACHE"),
    )
    .expect("typing IPCACHE");
    let entry = IpcacheEntry {
        identity: id,
        _pad: 0,
    };
    map.insert(&Key::new(len, be(ip)), entry, 0)
        .expect("writing the ipcache");
}

fn endpoint(node: &mut Node, ip: Ipv4Addr, ep: PolicyEndpoint) {
    let mut map: HashMap<_, u32, PolicyEndpoint> = HashMap::try_from(
        node.dp()
            .ebpf_mut()
            .map_mut(map_names::POLICY_ENDPOINTS)
            .expect("POLICY_ENDPOINTS"),
    )
    .expect("typing POLICY_ENDPOINTS");
    map.insert(be(ip), ep, 0).expect("writing an endpoint");
}

#[expect(clippy::too_many_arguments, reason = "the key's fields")]
fn allow(
    node: &mut Node,
    ep: Ipv4Addr,
    peer: u32,
    dir: u8,
    proto: u8,
    port: u16,
    len: u32,
    policy: u32,
) {
    let mut map: LpmTrie<_, PolicyKey, PolicyEntry> = LpmTrie::try_from(
        node.dp()
            .ebpf_mut()
            .map_mut(map_names::POLICY)
            .expect("POLICY"),
    )
    .expect("typing POLICY");
    let key = PolicyKey::lookup(be(ep), peer, dir, proto, port.to_be());
    let entry = PolicyEntry {
        policy_id: policy,
        _pad: 0,
    };
    map.insert(&Key::new(len, key), entry, 0)
        .expect("writing a policy entry");
}

fn open(policy: u32) -> PolicyEndpoint {
    PolicyEndpoint {
        flags: 0,
        identity: policy,
        ingress_policy: NO_POLICY,
        egress_policy: NO_POLICY,
    }
}

/// How long a connection that should open may take: past a SYN
/// retransmit (1 s) on a loaded machine.
const OPENS: Duration = Duration::from_secs(3);
/// How long a connection that should be denied is given.
const DENIED: Duration = Duration::from_millis(400);

/// Whether a TCP connection opens within `wait` (call inside the client's
/// namespace).
fn tcp_reaches(to: SocketAddrV4, wait: Duration) -> bool {
    TcpStream::connect_timeout(&to.into(), wait).is_ok()
}

/// Whether a UDP datagram is answered.
fn udp_reaches(to: SocketAddrV4) -> bool {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    socket.set_read_timeout(Some(DENIED)).expect("timeout");
    socket.send_to(b"hi", to).expect("send");
    let mut buf = [0u8; 256];
    socket.recv_from(&mut buf).is_ok()
}

fn pings(ns: &tc_topo::Pod, to: Ipv4Addr) -> bool {
    ns.enter(|| {
        std::process::Command::new("ping")
            .args(["-c1", "-W1", &to.to_string()])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

fn count(node: &Node, policy: u32, dir: u8, v: u8) -> u64 {
    verdicts(node.bpffs.path())
        .expect("reading verdicts")
        .iter()
        .find(|(k, _)| k.policy_id == policy && k.direction == dir && k.verdict == v)
        .map_or(0, |(_, n)| *n)
}

#[test]
fn policy_decides_new_flows_and_reports_every_verdict() {
    if !tc_topo::can_run("policy_decides_new_flows_and_reports_every_verdict") {
        return;
    }
    let mut c = Cluster::new();
    let a = c.nodes[0].add_pod(5);
    let b = c.nodes[0].add_pod(6);
    let r = c.nodes[1].add_pod(7);
    let (a_ip, b_ip, r_ip) = (c.pod(0, a).ip, c.pod(0, b).ip, c.pod(1, r).ip);
    let b80 = Server::start(c.pod(0, b), 8080);
    let b90 = Server::start(c.pod(0, b), 9090);
    let a80 = Server::start(c.pod(0, a), 8080);
    c.load();

    // Every node knows every pod's identity, and its own address as HOST.
    for i in 0..2 {
        let node_ip = c.nodes[i].ip;
        let n = &mut c.nodes[i];
        ipcache(n, a_ip, 32, A_ID);
        ipcache(n, b_ip, 32, B_ID);
        ipcache(n, r_ip, 32, R_ID);
        ipcache(n, node_ip, 32, identity::HOST);
    }
    // Node 1: a is open; b is isolated for ingress and lets a in on TCP
    // 8080 only.
    let n1 = &mut c.nodes[0];
    endpoint(n1, a_ip, open(A_ID));
    endpoint(
        n1,
        b_ip,
        PolicyEndpoint {
            flags: endpoint_flags::INGRESS_ISOLATED,
            identity: B_ID,
            ingress_policy: ISOLATING,
            egress_policy: NO_POLICY,
        },
    );
    allow(
        n1,
        b_ip,
        A_ID,
        direction::INGRESS,
        TCP,
        8080,
        prefix::FULL,
        LETS_A_IN,
    );
    // Node 2: r is isolated for egress and may reach a on TCP 8000-8100.
    let n2 = &mut c.nodes[1];
    endpoint(
        n2,
        r_ip,
        PolicyEndpoint {
            flags: endpoint_flags::EGRESS_ISOLATED,
            identity: R_ID,
            ingress_policy: NO_POLICY,
            egress_policy: R_EGRESS,
        },
    );
    let mut ranges = [(0, 0); 32];
    let n = port_range_prefixes(8000, 8100, &mut ranges);
    for &(port, len) in &ranges[..n] {
        allow(
            n2,
            r_ip,
            A_ID,
            direction::EGRESS,
            TCP,
            port,
            prefix::ANY_PORT + u32::from(len),
            R_EGRESS,
        );
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut events = runtime
        .block_on(async { FlowEvents::open(c.nodes[0].bpffs.path()) })
        .expect("opening the flow events");

    // Ingress by identity, protocol and port.
    let pa = c.pod(0, a);
    let (hello, mut held) = pa.enter(|| greet(b80.tcp)).expect("a reaches b:8080");
    assert_eq!(hello.peer_ip(), a_ip);
    assert!(
        !pa.enter(|| tcp_reaches(b90.tcp, DENIED)),
        "a is denied b:9090"
    );
    assert!(!pa.enter(|| udp_reaches(b80.udp)), "a is denied UDP to b");
    assert!(!pings(pa, b_ip), "ICMP to an isolated pod needs a rule");
    assert!(
        pings(c.pod(0, b), a_ip),
        "b pings a: a is open, replies pass"
    );
    // The established connection keeps flowing (conntrack), both ways.
    assert_eq!(
        tc_topo::echo(&mut held, "still").expect("echo"),
        "still",
        "replies of an allowed flow pass"
    );

    // Egress from r (node 2): to a in the range, not to b.
    let pr = c.pod(1, r);
    assert!(
        pr.enter(|| tcp_reaches(a80.tcp, OPENS)),
        "r reaches a:8080 (egress range)"
    );
    assert!(
        !pr.enter(|| tcp_reaches(b80.tcp, DENIED)),
        "r's egress denies b"
    );

    // The node's own probes pass b's isolation (tc_to_pod, HOST).
    let host_probe = c.nodes[0].ns.enter(|| tcp_reaches(b90.tcp, OPENS));
    assert!(host_probe, "the node reaches an isolated pod on any port");

    // A ClusterIP flow from a (no socket LB here: the TC path) is decided
    // on its backend: b:8080 is allowed, b:9090 is not.
    let vip = Ipv4Addr::new(10, 43, 0, 10);
    let n1 = &mut c.nodes[0];
    n1.put_backend(1, b_ip, 8080, TCP);
    n1.put_backend(2, b_ip, 9090, TCP);
    n1.put_service(vip, 80, TCP, scope::INTERNAL, 0, 1, &[1], 0);
    n1.put_service(vip, 90, TCP, scope::INTERNAL, 0, 2, &[2], 0);
    let pa = c.pod(0, a);
    assert!(
        pa.enter(|| tcp_reaches(SocketAddrV4::new(vip, 80), OPENS)),
        "the ClusterIP to an allowed backend port"
    );
    assert!(
        !pa.enter(|| tcp_reaches(SocketAddrV4::new(vip, 90), DENIED)),
        "the ClusterIP to a denied backend port"
    );

    // Counted by policy, direction and verdict.
    let n1 = &c.nodes[0];
    assert!(count(n1, LETS_A_IN, direction::INGRESS, verdict::ALLOWED) >= 2);
    assert!(count(n1, ISOLATING, direction::INGRESS, verdict::DENIED) >= 4);
    assert!(count(n1, NO_POLICY, direction::INGRESS, verdict::HOST) >= 1);
    assert!(count(n1, NO_POLICY, direction::EGRESS, verdict::OPEN) >= 1);
    let n2 = &c.nodes[1];
    assert!(count(n2, R_EGRESS, direction::EGRESS, verdict::ALLOWED) >= 1);
    assert!(count(n2, R_EGRESS, direction::EGRESS, verdict::DENIED) >= 1);
    let drops = c.nodes[0].dp.as_ref().expect("dp").drops().expect("drops");
    let denied = drops
        .iter()
        .find(|(r, _)| *r == DropReason::POLICY_DENIED)
        .map_or(0, |(_, n)| *n);
    assert!(denied >= 4, "policy drops are counted: {drops:?}");

    // The decided verdicts reached the ring buffer, none lost.
    let mut got: Vec<FlowEvent> = Vec::new();
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !got.iter().any(|e| {
            e.verdict == verdict::DENIED && e.dport_be == 9090u16.to_be() && e.saddr_be == be(a_ip)
        }) {
            tokio::time::timeout_at(deadline, events.next_batch(&mut got))
                .await
                .expect("a denied event within 5 s")
                .expect("reading events");
        }
    });
    let allowed = got
        .iter()
        .find(|e| e.verdict == verdict::ALLOWED && e.dport_be == 8080u16.to_be())
        .expect("the allowed flow's event");
    assert_eq!(allowed.policy_id, LETS_A_IN);
    assert_eq!(allowed.src_identity, A_ID);
    assert_eq!(allowed.dst_identity, B_ID);
    assert_eq!(allowed.direction, direction::INGRESS);
    assert!(
        got.iter().all(|e| e.verdict != verdict::OPEN),
        "open flows are counted, not streamed"
    );
    let stats = event_stats(c.nodes[0].bpffs.path()).expect("event stats");
    assert!(stats.sent >= got.len() as u64, "{stats:?}");
    assert_eq!((stats.lost_rate, stats.lost_full), (0, 0));
}
