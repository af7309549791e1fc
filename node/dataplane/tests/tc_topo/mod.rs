//! A two-node cluster in network namespaces, shaped like `kestrel up`'s:
//! a fabric namespace with a bridge; node namespaces with an uplink `eth0`
//! (10.41.0.10+i/24) on it, forwarding on, and routes to the other node's
//! pod range; pods as namespaces with a /32 on `eth0` behind a host-side
//! veth, a link-local gateway and permanent neighbour entries (as
//! kestrel-cni makes them); and an "outside" namespace on the fabric.
//!
//! Every node runs its own `Dataplane` from its own bpffs. The nodes'
//! FORWARD chains drop everything, so any packet that crosses a node does
//! so only because an eBPF program redirected it.
//!
//! Everything is torn down by guards: deleting the namespaces removes the
//! links, routes and TC attachments; dropping the bpffs frees the pins;
//! servers stop when their guards drop.

#![allow(dead_code, reason = "each test binary uses part of the topology")]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::HashMap;
use kestrel_dataplane::{
    Dataplane, LoadOptions,
    tc::{NodeNetwork, PodEndpoint, parse_mac},
};
use kestrel_ebpf_common::{
    lb::{Backend, RevNat, ServiceKey, ServiceValue, backend_flags},
    map_names,
};
use kestrel_testkit::{BpfFs, Netns, unique_name, wire_pod};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// Runs a command, panicking with its output on failure; returns stdout.
#[track_caller]
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command inside `ns`; returns stdout.
#[track_caller]
pub fn in_ns(ns: &Netns, args: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", &ns.name];
    full.extend_from_slice(args);
    sh(&full)
}

pub fn be(ip: Ipv4Addr) -> u32 {
    u32::from(ip).to_be()
}

/// A pod: its namespace, address and host-side veth.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    pub host_if: String,
    pub endpoint: PodEndpoint,
    pub ns: Netns,
}

impl Pod {
    /// Runs `f` inside the pod's namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.enter(f)
    }
}

/// A node: its namespace, bpffs, dataplane and pods.
#[derive(Debug)]
pub struct Node {
    pub index: u8,
    pub ip: Ipv4Addr,
    pub pod_cidr: ipnet::Ipv4Net,
    pub pods: Vec<Pod>,
    pub dp: Option<Dataplane>,
    // Field order is drop order: the dataplane's descriptors and the pods'
    // namespaces go before the node's namespace and its bpffs.
    pub ns: Netns,
    pub bpffs: BpfFs,
}

impl Node {
    pub fn dp(&mut self) -> &mut Dataplane {
        self.dp.as_mut().expect("the node's dataplane is loaded")
    }

    /// Loads the dataplane from the node's bpffs (adopting whatever is
    /// pinned there), configures it, attaches it to the uplink and every
    /// pod veth, and records the pods.
    pub fn load(&mut self) {
        let options = LoadOptions::new(self.bpffs.path());
        let mut dp = self
            .ns
            .enter(|| Dataplane::load(&options))
            .expect("loading the dataplane");
        dp.set_node_network(&NodeNetwork::new(self.ip, self.pod_cidr))
            .expect("configuring the node");
        let veths: Vec<String> = self.pods.iter().map(|p| p.host_if.clone()).collect();
        self.ns.enter(|| {
            dp.attach_uplink("eth0").expect("attaching to the uplink");
            for veth in &veths {
                dp.attach_pod_veth(veth).expect("attaching to a pod veth");
            }
        });
        for pod in &self.pods {
            dp.add_local_endpoint(&pod.endpoint)
                .expect("recording a local endpoint");
        }
        self.dp = Some(dp);
    }

    /// Adds a pod with address `10.42.<node>.<host>`.
    pub fn add_pod(&mut self, host: u8) -> usize {
        let ip = Ipv4Addr::new(10, 42, self.index, host);
        let name = unique_name("ktp");
        let ns = Netns::new(name.clone());
        let host_if = format!("kst{}x{host}", self.index);
        let link = wire_pod(&self.ns, &ns, &host_if, &[ip]).expect("wiring the pod");
        let endpoint = PodEndpoint {
            ip,
            ifindex: link.ifindex,
            pod_mac: parse_mac(&link.pod_mac).expect("pod mac"),
            host_mac: parse_mac(&link.host_mac).expect("host mac"),
        };
        self.pods.push(Pod {
            name: format!("n{}p{host}", self.index),
            ip,
            host_if,
            endpoint,
            ns,
        });
        self.pods.len() - 1
    }

    /// Writes a backend into this node's maps (LOCAL when it is one of
    /// this node's pods).
    pub fn put_backend(&mut self, id: u32, ip: Ipv4Addr, port: u16, proto: u8) {
        let local = self.pods.iter().any(|p| p.ip == ip);
        let dp = self.dp();
        let mut backends: HashMap<_, u32, Backend> = HashMap::try_from(
            dp.ebpf_mut()
                .map_mut(map_names::BACKENDS)
                .expect("BACKENDS"),
        )
        .expect("typing BACKENDS");
        let b = Backend {
            addr_be: be(ip),
            port_be: port.to_be(),
            proto,
            flags: if local { backend_flags::LOCAL } else { 0 },
        };
        backends.insert(id, b, 0).expect("writing a backend");
    }

    /// Writes a frontend (master and slots) and its reverse-NAT entry.
    /// `addr` 0.0.0.0 makes a NodePort.
    #[expect(
        clippy::too_many_arguments,
        reason = "a test helper mirroring the map's fields"
    )]
    pub fn put_service(
        &mut self,
        addr: Ipv4Addr,
        port: u16,
        proto: u8,
        scope: u8,
        flags: u16,
        rev_nat_id: u16,
        backend_ids: &[u32],
        affinity_timeout_s: u32,
    ) {
        let dp = self.dp();
        let key = |slot: u16| ServiceKey {
            addr_be: be(addr),
            port_be: port.to_be(),
            proto,
            scope,
            slot,
            _pad: [0; 2],
        };
        {
            let mut services: HashMap<_, ServiceKey, ServiceValue> = HashMap::try_from(
                dp.ebpf_mut()
                    .map_mut(map_names::SERVICES)
                    .expect("SERVICES"),
            )
            .expect("typing SERVICES");
            for (i, id) in backend_ids.iter().enumerate() {
                let slot = ServiceValue {
                    backend_id: *id,
                    rev_nat_id,
                    ..ServiceValue::default()
                };
                services
                    .insert(key(i as u16 + 1), slot, 0)
                    .expect("writing a slot");
            }
            let master = ServiceValue {
                count: backend_ids.len() as u16,
                rev_nat_id,
                flags,
                affinity_timeout_s,
                ..ServiceValue::default()
            };
            services
                .insert(key(0), master, 0)
                .expect("writing a master");
        }
        let mut rev: HashMap<_, u16, RevNat> =
            HashMap::try_from(dp.ebpf_mut().map_mut(map_names::REV_NAT).expect("REV_NAT"))
                .expect("typing REV_NAT");
        let value = RevNat {
            addr_be: be(addr),
            port_be: port.to_be(),
            _pad: 0,
        };
        rev.insert(rev_nat_id, value, 0).expect("writing a rev nat");
    }

    /// New connections counted per backend, summed over CPUs.
    pub fn backend_conns(&mut self, id: u32) -> u64 {
        let dp = self.dp();
        let map: aya::maps::PerCpuHashMap<_, u32, u64> = aya::maps::PerCpuHashMap::try_from(
            dp.ebpf_mut()
                .map_mut(map_names::BACKEND_CONNS)
                .expect("BACKEND_CONNS"),
        )
        .expect("typing BACKEND_CONNS");
        map.get(&id, 0).map_or(0, |v| v.iter().sum())
    }
}

/// The whole cluster.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub outside: Netns,
    pub outside_ip: Ipv4Addr,
    pub fabric: Netns,
}

impl Cluster {
    /// Two nodes (10.41.0.10 with pods 10.42.1.0/24, 10.41.0.11 with
    /// 10.42.2.0/24) and an outside host at 10.41.0.100, no pods yet.
    pub fn new() -> Self {
        let base = unique_name("kt");
        let fabric = Netns::new(format!("{base}-fab"));
        in_ns(&fabric, &["ip", "link", "add", "br0", "type", "bridge"]);
        in_ns(&fabric, &["ip", "link", "set", "br0", "up"]);
        let plug = |ns: &Netns, port: &str, ip: Ipv4Addr| {
            in_ns(
                &fabric,
                &[
                    "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
                    &ns.name,
                ],
            );
            in_ns(&fabric, &["ip", "link", "set", port, "master", "br0", "up"]);
            in_ns(
                ns,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            );
            in_ns(ns, &["ip", "link", "set", "eth0", "up"]);
        };
        let mut nodes = Vec::new();
        for i in 1..=2u8 {
            let ns = Netns::new(format!("{base}-n{i}"));
            let ip = Ipv4Addr::new(10, 41, 0, 9 + i);
            plug(&ns, &format!("n{i}"), ip);
            in_ns(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            // Only eBPF may move packets across a node.
            in_ns(&ns, &["iptables", "-P", "FORWARD", "DROP"]);
            nodes.push(Node {
                index: i,
                ip,
                pod_cidr: format!("10.42.{i}.0/24").parse().expect("cidr"),
                pods: Vec::new(),
                dp: None,
                ns,
                bpffs: BpfFs::new(),
            });
        }
        // Each node routes the other's pods via its address, as the agent does.
        for (me, other) in [(0, 1), (1, 0)] {
            let (cidr, via) = (
                nodes[other].pod_cidr.to_string(),
                nodes[other].ip.to_string(),
            );
            in_ns(
                &nodes[me].ns,
                &["ip", "route", "add", &cidr, "via", &via, "proto", "75"],
            );
        }
        let outside = Netns::new(format!("{base}-out"));
        let outside_ip = Ipv4Addr::new(10, 41, 0, 100);
        plug(&outside, "out", outside_ip);
        Self {
            nodes,
            outside,
            outside_ip,
            fabric,
        }
    }

    /// Loads every node's dataplane.
    pub fn load(&mut self) {
        for node in &mut self.nodes {
            node.load();
        }
    }

    pub fn pod(&self, node: usize, pod: usize) -> &Pod {
        &self.nodes[node].pods[pod]
    }

    /// Lets the outside host reach the pods directly, through their nodes.
    pub fn route_pods_from_outside(&self) {
        for n in &self.nodes {
            in_ns(
                &self.outside,
                &[
                    "ip",
                    "route",
                    "add",
                    &n.pod_cidr.to_string(),
                    "via",
                    &n.ip.to_string(),
                ],
            );
        }
    }
}

/// A TCP and UDP server in a namespace. Each TCP connection first gets a
/// line `<name> <peer>` and then has its lines echoed; each UDP datagram
/// is answered with `<name> <peer>`. Stops when dropped.
#[derive(Debug)]
pub struct Server {
    pub tcp: SocketAddrV4,
    pub udp: SocketAddrV4,
    stop: Arc<AtomicBool>,
    listener: TcpListener,
    socket: UdpSocket,
}

impl Server {
    /// A server on a pod's address.
    pub fn start(pod: &Pod, port: u16) -> Self {
        Self::start_in(&pod.ns, &pod.name, pod.ip, port)
    }

    /// A server named `name` on `ip:port` in `ns`.
    pub fn start_in(ns: &Netns, name: &str, ip: Ipv4Addr, port: u16) -> Self {
        let (listener, socket) = ns.enter(|| {
            (
                TcpListener::bind(SocketAddrV4::new(ip, port)).expect("tcp bind"),
                UdpSocket::bind(SocketAddrV4::new(ip, port)).expect("udp bind"),
            )
        });
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_owned();
        let l = listener.try_clone().expect("clone listener");
        let s = stop.clone();
        let n = name.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let n = n.clone();
                std::thread::spawn(move || serve_tcp(conn, &n));
            }
        });
        let u = socket.try_clone().expect("clone udp");
        let s = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((_, peer)) = u.recv_from(&mut buf) else {
                    continue;
                };
                let _ = u.send_to(format!("{name} {peer}\n").as_bytes(), peer);
            }
        });
        Self {
            tcp: SocketAddrV4::new(ip, port),
            udp: SocketAddrV4::new(ip, port),
            stop,
            listener,
            socket,
        }
    }
}

fn serve_tcp(conn: TcpStream, name: &str) {
    let Ok(peer) = conn.peer_addr() else { return };
    let mut writer = conn.try_clone().expect("clone stream");
    if writer
        .write_all(format!("{name} {peer}\n").as_bytes())
        .is_err()
    {
        return;
    }
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        if writer.write_all(line.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Shutting the sockets down wakes the blocked accept and recv.
        let how = nix::sys::socket::Shutdown::Both;
        let _ = nix::sys::socket::shutdown(self.listener.as_raw_fd(), how);
        let _ = nix::sys::socket::shutdown(self.socket.as_raw_fd(), how);
    }
}

/// What a TCP server's greeting says: its name and the client it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    pub server: String,
    pub peer: SocketAddr,
}

impl Greeting {
    pub fn parse(line: &str) -> Self {
        let (server, peer) = line
            .trim()
            .split_once(' ')
            .unwrap_or_else(|| panic!("bad greeting {line:?}"));
        Self {
            server: server.to_owned(),
            peer: peer.parse().expect("peer address"),
        }
    }

    pub fn peer_ip(&self) -> Ipv4Addr {
        match self.peer {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(_) => panic!("IPv6 peer"),
        }
    }
}

/// Connects (call inside the client's namespace) and reads the greeting.
pub fn greet(to: SocketAddrV4) -> std::io::Result<(Greeting, TcpStream)> {
    let stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut line = String::new();
    let mut reader = BufReader::new(stream.try_clone()?);
    reader.read_line(&mut line)?;
    Ok((Greeting::parse(&line), stream))
}

/// Sends one line on an established connection and reads the echo.
pub fn echo(stream: &mut TcpStream, text: &str) -> std::io::Result<String> {
    stream.write_all(format!("{text}\n").as_bytes())?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while buf.last() != Some(&b'\n') {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).trim().to_owned())
}

/// Sends one line of `len` bytes and reads its echo back: a bulk
/// transfer both ways, so the sender's stack hands the path large GSO
/// packets (veths keep TSO on) and the receiver's GRO merges them again.
pub fn echo_bulk(stream: &mut TcpStream, len: usize) -> std::io::Result<()> {
    let mut line: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    line.push(b'\n');
    // A stalled path fails the write rather than hanging the test.
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&line)?;
    let mut back = vec![0u8; line.len()];
    stream.read_exact(&mut back)?;
    if back != line {
        return Err(std::io::Error::other("the echo differs from what was sent"));
    }
    Ok(())
}

/// One UDP request/response (call inside the client's namespace): the
/// reply's text and the address it came from.
pub fn udp_ask(to: SocketAddrV4) -> std::io::Result<(Greeting, SocketAddr)> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    socket.send_to(b"hello", to)?;
    let mut buf = [0u8; 256];
    let (n, from) = socket.recv_from(&mut buf)?;
    Ok((Greeting::parse(&String::from_utf8_lossy(&buf[..n])), from))
}

/// Polls `f` until it returns `Some`, or panics with `what` at the deadline.
#[track_caller]
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether this machine can run the tests.
pub fn can_run(test: &str) -> bool {
    let built = (
        kestrel_dataplane::object_is_built(),
        "the eBPF object was not built (AYA_BUILD_SKIP=1)",
    );
    kestrel_testkit::privileged_test_can_run(test, &[built])
}
