//! A quick measurement, not a gate: TCP request/response (RR, one
//! connection, 1-byte ping-pong) and connect/request/response/close (CRR)
//! rates between pods, over the kernel's own forwarding (no programs) and
//! over the eBPF path, direct and through a ClusterIP (TC service NAT
//! with conntrack, no socket LB). Bounded in count and in time.
//!
//! Run by hand: `cargo test -p kestrel-dataplane --test tc_bench -- --ignored --nocapture`.

mod tc_topo;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use kestrel_ebpf_common::lb::scope;
use tc_topo::{Cluster, Pod, TCP, in_ns};

const RR_MAX: usize = 50_000;
const CRR_MAX: usize = 5_000;
const BUDGET: Duration = Duration::from_secs(3);
const ROUNDS: usize = 5;
const PORT: u16 = 7000;

/// A 1-byte ping-pong server in a pod.
fn pong_server(pod: &Pod) -> SocketAddrV4 {
    let addr = SocketAddrV4::new(pod.ip, PORT);
    let listener = pod.enter(|| TcpListener::bind(addr).expect("bind"));
    // Clients are sequential, so one thread serves every connection in
    // turn; no per-connection thread start muddies the CRR numbers.
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_nodelay(true);
            let mut b = [0u8; 1];
            while matches!(conn.read(&mut b), Ok(1)) {
                if conn.write_all(&b).is_err() {
                    break;
                }
            }
        }
    });
    addr
}

fn rr(client: &Pod, to: SocketAddrV4) -> f64 {
    client.enter(|| {
        let mut s = TcpStream::connect(to).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let mut b = [7u8; 1];
        let start = Instant::now();
        let mut n = 0;
        while n < RR_MAX && start.elapsed() < BUDGET {
            s.write_all(&b).expect("write");
            s.read_exact(&mut b).expect("read");
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
}

fn crr(client: &Pod, to: SocketAddrV4) -> f64 {
    client.enter(|| {
        let start = Instant::now();
        let mut n = 0;
        while n < CRR_MAX && start.elapsed() < BUDGET {
            let mut s = TcpStream::connect(to).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            let mut b = [7u8; 1];
            s.write_all(&b).expect("write");
            s.read_exact(&mut b).expect("read");
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn measure(label: &str, client: &Pod, to: SocketAddrV4) {
    let rrs = (0..ROUNDS).map(|_| rr(client, to)).collect();
    let crrs = (0..ROUNDS).map(|_| crr(client, to)).collect();
    let (r, rmin, rmax) = median(rrs);
    let (c, cmin, cmax) = median(crrs);
    println!(
        "{label:<42} RR {r:>8.0}/s [{rmin:.0}-{rmax:.0}]  CRR {c:>7.0}/s [{cmin:.0}-{cmax:.0}]"
    );
}

/// Two nodes; node 1 has a client and a server, node 2 a server.
fn cluster(ebpf: bool) -> (Cluster, SocketAddrV4, SocketAddrV4) {
    let mut c = Cluster::new();
    c.nodes[0].add_pod(5);
    let local = c.nodes[0].add_pod(6);
    let remote = c.nodes[1].add_pod(7);
    if ebpf {
        c.load();
    } else {
        for n in &c.nodes {
            in_ns(&n.ns, &["iptables", "-P", "FORWARD", "ACCEPT"]);
        }
    }
    let l = pong_server(c.pod(0, local));
    let r = pong_server(c.pod(1, remote));
    (c, l, r)
}

#[test]
#[ignore = "a measurement; run by hand with --ignored --nocapture"]
fn tcp_rr_and_crr_rates() {
    if !tc_topo::can_run("tcp_rr_and_crr_rates") {
        return;
    }
    {
        let (c, local, remote) = cluster(false);
        measure("kernel forwarding, same node", c.pod(0, 0), local);
        measure("kernel forwarding, other node", c.pod(0, 0), remote);
    }
    let (mut c, local, remote) = cluster(true);
    measure("eBPF redirect_peer, same node", c.pod(0, 0), local);
    measure("eBPF fib+redirect, other node", c.pod(0, 0), remote);
    let vip_l = Ipv4Addr::new(10, 43, 0, 10);
    let vip_r = Ipv4Addr::new(10, 43, 0, 11);
    let node = &mut c.nodes[0];
    node.put_backend(1, *local.ip(), PORT, TCP);
    node.put_backend(2, *remote.ip(), PORT, TCP);
    node.put_service(vip_l, 80, TCP, scope::INTERNAL, 0, 1, &[1], 0);
    node.put_service(vip_r, 80, TCP, scope::INTERNAL, 0, 2, &[2], 0);
    measure(
        "eBPF ClusterIP (TC NAT + CT), same node",
        c.pod(0, 0),
        SocketAddrV4::new(vip_l, 80),
    );
    measure(
        "eBPF ClusterIP (TC NAT + CT), other node",
        c.pod(0, 0),
        SocketAddrV4::new(vip_r, 80),
    );
}
