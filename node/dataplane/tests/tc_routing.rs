//! Pod routing by the per-packet programs: same node through
//! `bpf_redirect_peer`, across nodes through the FIB and a redirect to the
//! uplink, with the real source address kept; and masquerade for what
//! leaves the cluster. The nodes' FORWARD chains drop everything, so each
//! success here is the eBPF path's.

mod tc_topo;

use std::{net::SocketAddrV4, time::Duration};

use kestrel_dataplane::tc::{Attach, Role};
use tc_topo::{Cluster, Server, greet, in_ns, udp_ask};

#[test]
fn pods_reach_each_other_on_one_node_and_across_nodes() {
    if !tc_topo::can_run("pods_reach_each_other_on_one_node_and_across_nodes") {
        return;
    }
    let mut c = Cluster::new();
    let a = c.nodes[0].add_pod(5);
    let b = c.nodes[0].add_pod(6);
    let remote = c.nodes[1].add_pod(7);
    let server_b = Server::start(c.pod(0, b), 8080);
    let server_r = Server::start(c.pod(1, remote), 8080);

    // Without the programs the nodes forward nothing.
    let blocked = c.pod(0, a).enter(|| {
        std::net::TcpStream::connect_timeout(&server_b.tcp.into(), Duration::from_millis(300))
    });
    assert!(blocked.is_err(), "FORWARD drops pod traffic without eBPF");

    c.load();
    let client = c.pod(0, a);
    let (same, _) = client
        .enter(|| greet(server_b.tcp))
        .expect("same-node pod to pod");
    assert_eq!(same.server, "n1p6");
    assert_eq!(same.peer_ip(), client.ip, "the real source address");

    let (cross, _) = client
        .enter(|| greet(server_r.tcp))
        .expect("cross-node pod to pod");
    assert_eq!(cross.server, "n2p7");
    assert_eq!(
        cross.peer_ip(),
        client.ip,
        "the real source address across nodes"
    );

    // And back, over UDP.
    let (udp, from) = c
        .pod(1, remote)
        .enter(|| udp_ask(server_b.udp))
        .expect("cross-node UDP");
    assert_eq!(udp.server, "n1p6");
    assert_eq!(udp.peer_ip(), c.pod(1, remote).ip);
    assert_eq!(from, std::net::SocketAddr::V4(server_b.udp));

    // ICMP is routed too (no ports, no conntrack).
    in_ns(
        &c.pod(0, a).ns,
        &[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &c.pod(1, remote).ip.to_string(),
        ],
    );
    // Plain pod traffic leaves no conntrack state.
    assert!(c.nodes[0].dp().conntrack().expect("conntrack").is_empty());
}

#[test]
fn pods_leaving_the_cluster_are_masqueraded_and_inbound_flows_are_not() {
    if !tc_topo::can_run("pods_leaving_the_cluster_are_masqueraded_and_inbound_flows_are_not") {
        return;
    }
    let mut c = Cluster::new();
    let p = c.nodes[0].add_pod(5);
    c.load();
    c.route_pods_from_outside();
    let outside_server = Server::start_in(&c.outside, "outside", c.outside_ip, 9000);
    let node_ip = c.nodes[0].ip;
    let pod = c.pod(0, p);
    let (g, _) = pod
        .enter(|| greet(outside_server.tcp))
        .expect("pod to outside");
    assert_eq!(g.peer_ip(), node_ip, "masqueraded to the node's address");
    let (u, from) = pod
        .enter(|| udp_ask(outside_server.udp))
        .expect("pod to outside, UDP");
    assert_eq!(u.peer_ip(), node_ip);
    assert_eq!(from, std::net::SocketAddr::V4(outside_server.udp));

    // The outside host reaching the pod directly sees the pod's own
    // address in the replies: they are not masqueraded.
    let server = Server::start(pod, 8080);
    let (g, _) = c
        .outside
        .enter(|| greet(server.tcp))
        .expect("outside to pod");
    assert_eq!(g.peer_ip(), c.outside_ip);
    let (u, from) = c
        .outside
        .enter(|| udp_ask(SocketAddrV4::new(pod.ip, 8080)))
        .expect("outside to pod, UDP");
    assert_eq!(u.peer_ip(), c.outside_ip);
    assert_eq!(
        from,
        std::net::SocketAddr::V4(server.udp),
        "replies keep the pod's address"
    );
}

#[test]
fn attaching_twice_adopts_and_the_default_route_interface_is_refused() {
    if !tc_topo::can_run("attaching_twice_adopts_and_the_default_route_interface_is_refused") {
        return;
    }
    let mut c = Cluster::new();
    c.nodes[0].add_pod(5);
    c.load();
    let node = &mut c.nodes[0];
    let veth = node.pods[0].host_if.clone();
    let ns = &node.ns;
    let dp = node.dp.as_mut().expect("loaded");
    let again = ns
        .enter(|| dp.attach_pod_veth(&veth))
        .expect("second attach");
    assert_eq!(again, Attach::Adopted);
    let (_, progs) = ns
        .enter(|| {
            aya::programs::SchedClassifier::query_tcx(&veth, aya::programs::TcAttachType::Ingress)
        })
        .expect("querying TCX");
    assert_eq!(progs.len(), 1, "adopting never attaches twice");

    // A pod veth that carries the namespace's default route is refused.
    in_ns(ns, &["ip", "route", "add", "default", "dev", &veth]);
    let refused = ns.enter(|| dp.attach_pod_veth(&veth));
    assert!(
        matches!(refused, Err(kestrel_dataplane::Error::AttachRefused { .. })),
        "{refused:?}"
    );
    // Detaching removes the attachment with its pin.
    assert!(
        ns.enter(|| dp.detach(&veth, Role::PodVeth))
            .expect("detach")
    );
    // The kernel frees a link whose last reference went asynchronously.
    tc_topo::eventually(Duration::from_secs(5), "the link to go", || {
        let (_, progs) = ns
            .enter(|| {
                aya::programs::SchedClassifier::query_tcx(
                    &veth,
                    aya::programs::TcAttachType::Ingress,
                )
            })
            .expect("querying TCX");
        progs.is_empty().then_some(())
    });
}
