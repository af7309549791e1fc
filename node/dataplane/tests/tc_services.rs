//! Service NAT in the per-packet programs, with the socket hooks absent:
//! ClusterIP from a pod, NodePort and external IPs from outside the
//! cluster (with SNAT to a backend on the other node, without to a local
//! one, and keeping the client's address under eTP=Local), UDP both ways,
//! refusal when no backend is ready, session affinity, terminating
//! backends, conntrack GC, and a NodePort connection that lives through a
//! restart of the dataplane.

mod tc_topo;

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use aya::{
    maps::HashMap,
    programs::{SchedClassifier, TcAttachType},
};
use kestrel_dataplane::tc::{Attach, monotonic_now};
use kestrel_ebpf_common::{
    drop::DropReason,
    lb::{Backend, backend_flags, scope, svc_flags},
    map_names,
};
use tc_topo::{Cluster, Server, TCP, UDP, echo, echo_bulk, greet, in_ns, udp_ask};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
const PORT: u16 = 8080;

/// Node 1 holds a client (pod 0) and two backends; node 2 a third.
/// Backends 1 and 2 are on node 1, backend 3 on node 2; both nodes know
/// all three.
fn three_backends() -> (Cluster, Vec<Server>) {
    let mut c = Cluster::new();
    c.nodes[0].add_pod(5);
    let b1 = c.nodes[0].add_pod(6);
    let b2 = c.nodes[0].add_pod(7);
    let b3 = c.nodes[1].add_pod(8);
    c.load();
    let servers = vec![
        Server::start(c.pod(0, b1), PORT),
        Server::start(c.pod(0, b2), PORT),
        Server::start(c.pod(1, b3), PORT),
    ];
    let ips = [c.pod(0, b1).ip, c.pod(0, b2).ip, c.pod(1, b3).ip];
    for node in &mut c.nodes {
        for (i, ip) in ips.iter().enumerate() {
            for proto in [TCP, UDP] {
                // Ids: 1..=3 TCP, 11..=13 UDP.
                let id = i as u32 + 1 + if proto == UDP { 10 } else { 0 };
                node.put_backend(id, *ip, PORT, proto);
            }
        }
    }
    (c, servers)
}

#[test]
fn cluster_ip_spreads_over_three_backends_on_both_nodes() {
    if !tc_topo::can_run("cluster_ip_spreads_over_three_backends_on_both_nodes") {
        return;
    }
    const CONNECTIONS: usize = 3_000;
    let (mut c, _servers) = three_backends();
    c.nodes[0].put_service(VIP, 80, TCP, scope::INTERNAL, 0, 1, &[1, 2, 3], 0);
    let client = c.pod(0, 0);
    let started = Instant::now();
    // Every flow is seen after this, however long the loop takes.
    let before = monotonic_now().expect("clock");
    let seen: BTreeMap<String, usize> = client.enter(|| {
        let mut seen = BTreeMap::new();
        for _ in 0..CONNECTIONS {
            let (g, stream) =
                greet(SocketAddrV4::new(VIP, 80)).expect("connecting to the ClusterIP");
            assert_eq!(
                g.peer_ip(),
                client.ip,
                "a ClusterIP keeps the client's address"
            );
            drop(stream);
            *seen.entry(g.server).or_insert(0) += 1;
        }
        seen
    });
    let elapsed = started.elapsed();
    eprintln!("{CONNECTIONS} connections in {elapsed:?}: {seen:?}");
    assert_eq!(
        seen.len(),
        3,
        "every backend, incl. the other node's: {seen:?}"
    );
    let even = CONNECTIONS / 3;
    for (server, n) in &seen {
        assert!(
            n.abs_diff(even) * 100 <= even * 15,
            "{server} got {n} of {CONNECTIONS}, more than 15% off {even}: {seen:?}"
        );
    }
    // The kernel counted each backend's new connections.
    let node = &mut c.nodes[0];
    let counted: Vec<u64> = (1..=3).map(|id| node.backend_conns(id)).collect();
    assert_eq!(
        counted.iter().sum::<u64>(),
        CONNECTIONS as u64,
        "{counted:?}"
    );
    assert_eq!(counted[2] as usize, seen["n2p8"]);

    // Conntrack holds the (closed) flows until a sweep after their closing
    // lifetime; the sweep then takes both directions of every flow.
    let dp = node.dp();
    let flows = dp.conntrack().expect("conntrack");
    assert!(flows.len() >= CONNECTIONS, "{} flows", flows.len());
    let now = monotonic_now().expect("clock");
    let line = flows[0].display(now);
    assert!(
        line.contains("10.43.0.10:80 =>") && line.contains("[dnat"),
        "{line}"
    );
    let early = dp.conntrack_gc(before).expect("gc");
    assert_eq!(early.removed, 0, "nothing had expired yet: {early:?}");
    let after = monotonic_now().expect("clock");
    let late = dp
        .conntrack_gc(after + Duration::from_secs(11))
        .expect("gc");
    assert_eq!(late.removed, late.scanned, "{late:?}");
    assert!(dp.conntrack().expect("conntrack").is_empty());
}

#[test]
fn udp_through_a_cluster_ip_comes_back_from_the_frontend() {
    if !tc_topo::can_run("udp_through_a_cluster_ip_comes_back_from_the_frontend") {
        return;
    }
    let (mut c, _servers) = three_backends();
    // One frontend per backend: the local ones and the remote one.
    for (i, id) in [11u32, 12, 13].into_iter().enumerate() {
        let vip = Ipv4Addr::new(10, 43, 0, 50 + i as u8);
        c.nodes[0].put_service(vip, 53, UDP, scope::INTERNAL, 0, 10 + i as u16, &[id], 0);
    }
    let client = c.pod(0, 0);
    for (i, expected) in ["n1p6", "n1p7", "n2p8"].into_iter().enumerate() {
        let frontend = SocketAddrV4::new(Ipv4Addr::new(10, 43, 0, 50 + i as u8), 53);
        let (g, from) = client.enter(|| udp_ask(frontend)).expect("a UDP answer");
        assert_eq!(g.server, expected);
        assert_eq!(g.peer_ip(), client.ip);
        assert_eq!(
            from,
            SocketAddr::V4(frontend),
            "the reply comes from the frontend"
        );
    }
}

#[test]
fn node_ports_and_external_ips_from_outside() {
    if !tc_topo::can_run("node_ports_and_external_ips_from_outside") {
        return;
    }
    let (mut c, _servers) = three_backends();
    let (n1, n2, outside) = (c.nodes[0].ip, c.nodes[1].ip, c.outside_ip);
    let any = Ipv4Addr::UNSPECIFIED;
    let ext = |node: &mut tc_topo::Node, addr, port, proto, flags, rev, ids: &[u32]| {
        node.put_service(addr, port, proto, scope::EXTERNAL, flags, rev, ids, 0);
    };
    // Node 1: to node 2's backend (SNAT), to its own (no SNAT), UDP to node 2's.
    ext(
        &mut c.nodes[0],
        any,
        30080,
        TCP,
        svc_flags::NODE_PORT,
        1,
        &[3],
    );
    ext(
        &mut c.nodes[0],
        any,
        30081,
        TCP,
        svc_flags::NODE_PORT,
        2,
        &[1],
    );
    ext(
        &mut c.nodes[0],
        any,
        30082,
        UDP,
        svc_flags::NODE_PORT,
        3,
        &[13],
    );
    // Node 2: externalTrafficPolicy Local, its own backend only.
    let local = svc_flags::NODE_PORT | svc_flags::EXT_LOCAL;
    ext(&mut c.nodes[1], any, 30083, TCP, local, 4, &[3]);
    // An external IP routed to node 1, served by node 2's backend.
    let external_ip = Ipv4Addr::new(10, 41, 0, 200);
    ext(
        &mut c.nodes[0],
        external_ip,
        80,
        TCP,
        svc_flags::EXTERNAL_IP,
        5,
        &[3],
    );
    // Written only in the INTERNAL scope, as the sync writes a frontend
    // whose two scopes hold the same backends: traffic from outside reads
    // it. Where both scopes are written, it reads the EXTERNAL one.
    let np = svc_flags::NODE_PORT;
    c.nodes[0].put_service(any, 30084, TCP, scope::INTERNAL, np, 6, &[3], 0);
    c.nodes[0].put_service(any, 30085, TCP, scope::INTERNAL, np, 7, &[1], 0);
    ext(&mut c.nodes[0], any, 30085, TCP, np, 7, &[3]);
    in_ns(
        &c.outside,
        &[
            "ip",
            "route",
            "add",
            "10.41.0.200/32",
            "via",
            &n1.to_string(),
        ],
    );

    let out = &c.outside;
    let (g, mut stream) = out
        .enter(|| greet(SocketAddrV4::new(n1, 30080)))
        .expect("NodePort to the other node's backend");
    assert_eq!(g.server, "n2p8");
    assert_eq!(g.peer_ip(), n1, "SNATed to the node so replies come back");
    assert_eq!(echo(&mut stream, "ping").expect("echo"), "ping");
    // A bulk transfer through the same NodePort flow: its large GSO
    // packets are forwarded by the FIB redirect too (a FIB lookup given
    // the GSO packet's full length refuses it as too big for the MTU).
    echo_bulk(&mut stream, 4 << 20).expect("4 MiB through the NodePort and back");

    let (g, _) = out
        .enter(|| greet(SocketAddrV4::new(n1, 30081)))
        .expect("NodePort to a local backend");
    assert_eq!(g.server, "n1p6");
    assert_eq!(g.peer_ip(), outside, "a local backend sees the client");

    let (g, from) = out
        .enter(|| udp_ask(SocketAddrV4::new(n1, 30082)))
        .expect("UDP NodePort to the other node");
    assert_eq!(g.server, "n2p8");
    assert_eq!(g.peer_ip(), n1);
    assert_eq!(from, SocketAddr::V4(SocketAddrV4::new(n1, 30082)));

    let (g, _) = out
        .enter(|| greet(SocketAddrV4::new(n2, 30083)))
        .expect("eTP=Local NodePort");
    assert_eq!(g.server, "n2p8");
    assert_eq!(g.peer_ip(), outside, "eTP=Local keeps the client's address");

    let (g, _) = out
        .enter(|| greet(SocketAddrV4::new(n1, 30084)))
        .expect("a NodePort with only the INTERNAL scope written");
    assert_eq!(g.server, "n2p8");
    let (g, _) = out
        .enter(|| greet(SocketAddrV4::new(n1, 30085)))
        .expect("a NodePort with both scopes written");
    assert_eq!(g.server, "n2p8", "the EXTERNAL scope's backend");

    let (g, mut stream) = out
        .enter(|| greet(SocketAddrV4::new(external_ip, 80)))
        .expect("external IP");
    assert_eq!(g.server, "n2p8");
    assert_eq!(echo(&mut stream, "hello").expect("echo"), "hello");

    // The NodePort flow is tracked with its SNAT.
    let flows = c.nodes[0].dp().conntrack().expect("conntrack");
    let now = monotonic_now().expect("clock");
    assert!(
        flows.iter().any(|f| {
            let l = f.display(now);
            l.contains("-> 10.41.0.10:30080 => 10.41.0.10:") && l.contains("snat")
        }),
        "{:#?}",
        flows.iter().map(|f| f.display(now)).collect::<Vec<_>>()
    );
}

#[test]
fn a_service_without_ready_backends_refuses_at_once() {
    if !tc_topo::can_run("a_service_without_ready_backends_refuses_at_once") {
        return;
    }
    let (mut c, _servers) = three_backends();
    let empty = Ipv4Addr::new(10, 43, 0, 99);
    c.nodes[0].put_service(empty, 80, TCP, scope::INTERNAL, 0, 1, &[], 0);
    c.nodes[0].put_service(empty, 53, UDP, scope::INTERNAL, 0, 2, &[], 0);
    let any = Ipv4Addr::UNSPECIFIED;
    c.nodes[0].put_service(
        any,
        30090,
        TCP,
        scope::EXTERNAL,
        svc_flags::NODE_PORT,
        3,
        &[],
        0,
    );

    let refused_quickly = |result: std::io::Result<TcpStream>, started: Instant, what: &str| {
        let err = result.expect_err(what);
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{what}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: too slow"
        );
    };
    let client = c.pod(0, 0);
    let started = Instant::now();
    let result = client.enter(|| {
        TcpStream::connect_timeout(&SocketAddrV4::new(empty, 80).into(), Duration::from_secs(5))
    });
    refused_quickly(result, started, "ClusterIP without backends");

    let udp = client.enter(|| {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.connect(SocketAddrV4::new(empty, 53)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s.send(b"hello").expect("send");
        let mut buf = [0u8; 64];
        s.recv(&mut buf)
    });
    let err = udp.expect_err("no UDP answer");
    assert_eq!(
        err.kind(),
        ErrorKind::ConnectionRefused,
        "ICMP port unreachable: {err}"
    );

    let n1 = c.nodes[0].ip;
    let started = Instant::now();
    let result = c.outside.enter(|| {
        TcpStream::connect_timeout(&SocketAddrV4::new(n1, 30090).into(), Duration::from_secs(5))
    });
    refused_quickly(result, started, "NodePort without backends");

    let drops = c.nodes[0].dp().drops().expect("drops");
    let answered = drops
        .iter()
        .find(|(r, _)| *r == DropReason::NO_BACKEND)
        .map_or(0, |(_, n)| *n);
    assert!(answered >= 3, "{drops:?}");

    // Scaling back up restores the service.
    c.nodes[0].put_service(empty, 80, TCP, scope::INTERNAL, 0, 1, &[1], 0);
    let (g, _) = c
        .pod(0, 0)
        .enter(|| greet(SocketAddrV4::new(empty, 80)))
        .expect("a backend again");
    assert_eq!(g.server, "n1p6");
}

#[test]
fn session_affinity_keeps_a_client_on_one_backend() {
    if !tc_topo::can_run("session_affinity_keeps_a_client_on_one_backend") {
        return;
    }
    let (mut c, _servers) = three_backends();
    c.nodes[0].put_service(
        VIP,
        80,
        TCP,
        scope::INTERNAL,
        svc_flags::AFFINITY,
        1,
        &[1, 2, 3],
        60,
    );
    let servers: Vec<String> = c.pod(0, 0).enter(|| {
        (0..60)
            .map(|_| greet(SocketAddrV4::new(VIP, 80)).expect("connect").0.server)
            .collect()
    });
    assert!(servers.iter().all(|s| *s == servers[0]), "{servers:?}");
}

#[test]
fn a_terminating_backend_finishes_its_flows() {
    if !tc_topo::can_run("a_terminating_backend_finishes_its_flows") {
        return;
    }
    let (mut c, _servers) = three_backends();
    c.nodes[0].put_service(VIP, 80, TCP, scope::INTERNAL, 0, 1, &[1], 0);
    let client = c.pod(0, 0);
    let (g, mut stream) = client
        .enter(|| greet(SocketAddrV4::new(VIP, 80)))
        .expect("connect");
    assert_eq!(g.server, "n1p6");
    // Backend 1 terminates: out of the slots, flagged in the backends map.
    let node = &mut c.nodes[0];
    node.put_service(VIP, 80, TCP, scope::INTERNAL, 0, 1, &[2], 0);
    {
        let mut backends: HashMap<_, u32, Backend> = HashMap::try_from(
            node.dp()
                .ebpf_mut()
                .map_mut(map_names::BACKENDS)
                .expect("BACKENDS"),
        )
        .expect("typing");
        let mut b = backends.get(&1, 0).expect("backend 1");
        b.flags |= backend_flags::TERMINATING;
        backends.insert(1, b, 0).expect("flagging");
    }
    let client = c.pod(0, 0);
    assert_eq!(
        echo(&mut stream, "still here").expect("the old flow works"),
        "still here"
    );
    let news: Vec<String> = client.enter(|| {
        (0..20)
            .map(|_| greet(SocketAddrV4::new(VIP, 80)).expect("connect").0.server)
            .collect()
    });
    assert!(news.iter().all(|s| s == "n1p7"), "{news:?}");
    assert_eq!(
        echo(&mut stream, "and now").expect("the old flow works"),
        "and now"
    );
}

#[test]
fn a_node_port_connection_survives_a_dataplane_restart() {
    if !tc_topo::can_run("a_node_port_connection_survives_a_dataplane_restart") {
        return;
    }
    let (mut c, _servers) = three_backends();
    let any = Ipv4Addr::UNSPECIFIED;
    c.nodes[0].put_service(
        any,
        30080,
        TCP,
        scope::EXTERNAL,
        svc_flags::NODE_PORT,
        1,
        &[3],
        0,
    );
    let n1 = c.nodes[0].ip;
    let (g, mut stream) = c
        .outside
        .enter(|| greet(SocketAddrV4::new(n1, 30080)))
        .expect("connect");
    assert_eq!((g.server.as_str(), g.peer_ip()), ("n2p8", n1));
    assert_eq!(echo(&mut stream, "before").expect("echo"), "before");
    let programs = |c: &Cluster| {
        let ns = &c.nodes[0].ns;
        ns.enter(|| SchedClassifier::query_tcx("eth0", TcAttachType::Ingress))
            .expect("query")
            .1
            .iter()
            .map(|p| p.id())
            .collect::<Vec<_>>()
    };
    let before = programs(&c);
    assert_eq!(before.len(), 1);

    // The agent dies: nothing of its process is left, the pins are.
    for node in &mut c.nodes {
        node.dp = None;
    }
    assert_eq!(echo(&mut stream, "orphaned").expect("echo"), "orphaned");
    assert_eq!(
        programs(&c),
        before,
        "the pinned link keeps the program attached"
    );

    // A new agent loads over the same pins and adopts the links.
    for node in &mut c.nodes {
        node.load();
    }
    let after = programs(&c);
    assert_eq!(after.len(), 1, "adopted, not attached twice");
    assert_ne!(after, before, "the new program runs in the old link");
    let veth = c.nodes[0].pods[0].host_if.clone();
    let adopted = {
        let node = &mut c.nodes[0];
        let ns = &node.ns;
        let dp = node.dp.as_mut().expect("loaded");
        ns.enter(|| dp.attach_pod_veth(&veth)).expect("attach")
    };
    assert_eq!(adopted, Attach::Adopted);
    for i in 0..20 {
        let text = format!("after {i}");
        assert_eq!(echo(&mut stream, &text).expect("no reset"), text);
    }
    // The flow, SNAT port and all, is the one from before the restart.
    let flows = c.nodes[0].dp().conntrack().expect("conntrack");
    let client_port = stream.local_addr().expect("addr").port();
    assert!(
        flows
            .iter()
            .any(|f| u16::from_be(f.key.sport_be) == client_port),
        "{flows:?}"
    );
    let (g, _) = c
        .outside
        .enter(|| greet(SocketAddrV4::new(n1, 30080)))
        .expect("a new connection after the restart");
    assert_eq!(g.server, "n2p8");
}
