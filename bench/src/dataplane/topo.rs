//! The benchmark's two-node topology, in network namespaces of its own
//! (`kb8-<pid>-*`), in 10.200.0.0/16 only:
//!
//! - a fabric namespace with a bridge, node 1 at 10.200.255.10, node 2 at
//!   10.200.255.11 and an outside host at 10.200.255.100 plugged into it
//!   (veths; nothing is attached to the host's own interfaces);
//! - node namespaces with forwarding on and a route to the other node's
//!   pod range (10.200.1.0/24 on node 1, 10.200.2.0/24 on node 2), shaped
//!   as `kestrel-cni` makes pods: a /32 on the pod's `eth0` behind a host
//!   veth, a link-local gateway with a permanent neighbour entry;
//! - a client pod on node 1 (10.200.1.5) and a server pod on node 2 that
//!   holds ten addresses (10.200.2.10–19, the measured Service's ten
//!   endpoints; one set of listeners on 0.0.0.0 serves them all);
//! - a cgroup `kb8-<pid>` under the cgroup2 root (never the root itself)
//!   for the client processes, to which Kestrel's socket hooks attach.
//!
//! Each node has a private bpffs and its own Kestrel `Dataplane`, loaded
//! once; its TC programs and socket hooks are attached and detached as the
//! benchmark switches between the kernel paths (direct routing, iptables,
//! nftables) and Kestrel's. Dropping the topology detaches the hooks,
//! deletes the namespaces (with their links, routes, TC attachments and
//! netfilter state), removes the cgroup and unmounts the bpffs instances.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use ipnet::Ipv4Net;
use kestrel_dataplane::{
    Dataplane, LoadOptions, MapSizes, detach_sock_lb,
    tc::{NodeNetwork, PodEndpoint, Role, parse_mac},
};
use kestrel_testkit::{BpfFs, Cgroup, Netns, wire_pod};

/// The cluster's pod range.
pub const CLUSTER_CIDR: &str = "10.200.0.0/17";
/// The service range.
pub const SERVICE_CIDR: &str = "10.200.128.0/18";
/// The client pod's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 5);

/// Runs a command (in `ns` when given) and returns its stdout.
pub fn run_in(ns: Option<&Netns>, args: &[&str]) -> Result<String> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]);
            c.args(args);
            c
        }
        None => {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        }
    };
    let out = cmd.output().with_context(|| format!("spawning {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside `ns`.
pub fn ns_run(ns: &Netns, args: &[&str]) -> Result<String> {
    run_in(Some(ns), args)
}

/// A command that ran past its time limit and was killed.
#[derive(Debug)]
pub struct TimedOut(pub std::time::Duration);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "timed out after {:.0} s", self.0.as_secs_f64())
    }
}

impl std::error::Error for TimedOut {}

/// Feeds `input` to a command run inside `ns` (`iptables-restore`, `nft -f -`).
/// With `limit`, a command still running then is killed (by its PID) and
/// the error is a [`TimedOut`]; a stop request kills it too.
pub fn ns_pipe(
    ns: &Netns,
    args: &[&str],
    input: &str,
    limit: Option<std::time::Duration>,
) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let started = std::time::Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {args:?}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    // The reader sends the child's stderr when it closes, that is when the
    // child exits: the exit is seen at once (short runs are timed to the
    // microsecond, not to a polling interval), and the child is reaped and
    // killed only here, through its handle.
    let mut stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let (status, stderr) = loop {
        match rx.recv_timeout(std::time::Duration::from_millis(50)) {
            Ok(text) => break (child.wait().context("waiting")?, text),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!("lost the stderr of {args:?}")
            }
        }
        let over = limit.is_some_and(|l| started.elapsed() > l);
        if over || super::stopping() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = writer.join();
            return Err(TimedOut(started.elapsed()).into());
        }
    };
    let _ = writer.join();
    if !status.success() {
        bail!(
            "{args:?} failed ({status}): {}",
            stderr.lines().take(5).collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// Readies a client's namespace for many short connections (TCP_CRR):
/// TIME_WAIT ports may be reused and the whole port range is used. Without
/// it the ephemeral ports run out within seconds and every connect()
/// searches for a free one.
fn many_short_connections(ns: &Netns) -> Result<()> {
    ns_run(ns, &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
    ns_run(
        ns,
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"],
    )?;
    Ok(())
}

/// A pod: its namespace, addresses and host-side veth.
#[derive(Debug)]
pub struct Pod {
    pub ips: Vec<Ipv4Addr>,
    pub host_if: String,
    pub endpoints: Vec<PodEndpoint>,
    pub ns: Netns,
}

/// One node.
#[derive(Debug)]
pub struct Node {
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub pods: Vec<Pod>,
    /// Whether Kestrel's TC programs are attached now.
    pub attached: bool,
    // Drop order: the dataplane's descriptors, the pods, the node's
    // namespace, then its bpffs.
    pub dp: Dataplane,
    pub ns: Netns,
    pub bpffs: BpfFs,
}

impl Node {
    fn veths(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.host_if.clone()).collect()
    }

    /// Configures the node and attaches `tc_from_uplink` and `tc_from_pod`.
    pub fn attach(&mut self) -> Result<()> {
        let network = NodeNetwork {
            node_ip: self.ip,
            pod_cidr: self.pod_cidr,
            cluster_cidr: CLUSTER_CIDR.parse().context("cluster cidr")?,
            service_cidr: SERVICE_CIDR.parse().context("service cidr")?,
            node_ports: 30000..=32767,
            masquerade: true,
        };
        self.dp.set_node_network(&network)?;
        for pod in &self.pods {
            for ep in &pod.endpoints {
                self.dp.add_local_endpoint(ep)?;
            }
        }
        let veths = self.veths();
        let dp = &mut self.dp;
        self.ns.enter(|| -> Result<()> {
            dp.attach_uplink("eth0")?;
            for veth in &veths {
                dp.attach_pod_veth(veth)?;
            }
            Ok(())
        })?;
        self.attached = true;
        Ok(())
    }

    /// Detaches the TC programs (the kernel routes on its own again).
    pub fn detach(&mut self) -> Result<()> {
        let veths = self.veths();
        let dp = &mut self.dp;
        self.ns.enter(|| -> Result<()> {
            dp.detach("eth0", Role::Uplink)?;
            for veth in &veths {
                dp.detach(veth, Role::PodVeth)?;
            }
            Ok(())
        })?;
        self.attached = false;
        Ok(())
    }

    /// Adds a pod with addresses `ips` (the first names its veth).
    fn add_pod(&mut self, prefix: &str, index: usize, ips: &[Ipv4Addr]) -> Result<()> {
        let ns = Netns::new(format!("{prefix}-p{index}"));
        let host_if = format!("kb8p{index}");
        let link = wire_pod(&self.ns, &ns, &host_if, ips)
            .with_context(|| format!("wiring pod {index}"))?;
        many_short_connections(&ns)?;
        let pod_mac = parse_mac(&link.pod_mac).context("pod mac")?;
        let host_mac = parse_mac(&link.host_mac).context("host mac")?;
        let endpoints = ips
            .iter()
            .map(|&ip| PodEndpoint {
                ip,
                ifindex: link.ifindex,
                pod_mac,
                host_mac,
            })
            .collect();
        self.pods.push(Pod {
            ips: ips.to_vec(),
            host_if,
            endpoints,
            ns,
        });
        Ok(())
    }
}

/// The whole topology.
#[derive(Debug)]
pub struct Topology {
    pub nodes: Vec<Node>,
    pub outside: Netns,
    pub outside_ip: Ipv4Addr,
    pub cgroup: Cgroup,
    pub fabric: Netns,
    /// Whether the socket hooks are attached to the client cgroup now.
    pub sock_lb: bool,
}

impl Topology {
    /// Builds everything; node 1's maps are sized for `max_services`.
    pub fn new(max_services: usize) -> Result<Self> {
        let prefix = format!("kb8-{}", std::process::id());
        let fabric = Netns::new(format!("{prefix}-fab"));
        ns_run(&fabric, &["ip", "link", "add", "br0", "type", "bridge"])?;
        ns_run(&fabric, &["ip", "link", "set", "br0", "up"])?;
        let plug = |ns: &Netns, port: &str, ip: Ipv4Addr| -> Result<()> {
            ns_run(
                &fabric,
                &[
                    "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
                    &ns.name,
                ],
            )?;
            ns_run(&fabric, &["ip", "link", "set", port, "master", "br0", "up"])?;
            ns_run(
                ns,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            )?;
            ns_run(ns, &["ip", "link", "set", "eth0", "up"])?;
            Ok(())
        };
        let mut nodes = Vec::new();
        for i in 1..=2u8 {
            let ns = Netns::new(format!("{prefix}-n{i}"));
            let ip = Ipv4Addr::new(10, 200, 255, 9 + i);
            plug(&ns, &format!("n{i}"), ip)?;
            ns_run(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            let bpffs = BpfFs::new();
            let mut options = LoadOptions::new(bpffs.path());
            if i == 1 {
                options.sizes = sizes_for(max_services);
            }
            let dp = ns
                .enter(|| Dataplane::load(&options))
                .context("loading Kestrel's dataplane")?;
            nodes.push(Node {
                ip,
                pod_cidr: format!("10.200.{i}.0/24").parse().context("cidr")?,
                pods: Vec::new(),
                attached: false,
                dp,
                ns,
                bpffs,
            });
        }
        for (me, other) in [(0, 1), (1, 0)] {
            let (cidr, via) = (
                nodes[other].pod_cidr.to_string(),
                nodes[other].ip.to_string(),
            );
            ns_run(&nodes[me].ns, &["ip", "route", "add", &cidr, "via", &via])?;
        }
        nodes[0].add_pod(&prefix, 0, &[CLIENT_IP])?;
        let server_ips: Vec<Ipv4Addr> = (10..20).map(|h| Ipv4Addr::new(10, 200, 2, h)).collect();
        nodes[1].add_pod(&prefix, 1, &server_ips)?;
        let outside = Netns::new(format!("{prefix}-out"));
        let outside_ip = Ipv4Addr::new(10, 200, 255, 100);
        plug(&outside, "out", outside_ip)?;
        // The outside host is the NodePort client.
        many_short_connections(&outside)?;
        let cgroup = Cgroup::new(prefix.clone());
        Ok(Self {
            nodes,
            outside,
            outside_ip,
            cgroup,
            fabric,
            sock_lb: false,
        })
    }

    pub fn client(&self) -> &Pod {
        &self.nodes[0].pods[0]
    }

    pub fn server(&self) -> &Pod {
        &self.nodes[1].pods[0]
    }

    /// The server pod's addresses (the measured Service's endpoints).
    pub fn server_ips(&self) -> Vec<Ipv4Addr> {
        self.server().ips.clone()
    }

    pub fn cgroup_dir(&self) -> PathBuf {
        self.cgroup.v2_dir()
    }

    fn pin_dir(&self) -> &Path {
        self.nodes[0].bpffs.path()
    }

    /// The kernel's own forwarding: Kestrel detached everywhere.
    pub fn kernel_mode(&mut self) -> Result<()> {
        self.set_sock_lb(false)?;
        for node in &mut self.nodes {
            if node.attached {
                node.detach()?;
            }
        }
        Ok(())
    }

    /// Kestrel's TC programs on both nodes; socket hooks when `sock_lb`.
    pub fn ebpf_mode(&mut self, sock_lb: bool) -> Result<()> {
        for node in &mut self.nodes {
            if !node.attached {
                node.attach()?;
            }
        }
        self.set_sock_lb(sock_lb)
    }

    fn set_sock_lb(&mut self, on: bool) -> Result<()> {
        if on && !self.sock_lb {
            let dir = self.cgroup_dir();
            self.nodes[0].dp.attach_sock_lb(&dir)?;
        } else if !on && self.sock_lb {
            detach_sock_lb(self.pin_dir())?;
        }
        self.sock_lb = on;
        Ok(())
    }

    /// Empties Kestrel's conntrack on both nodes, so that one path's
    /// flows do not meet another's: with TIME_WAIT reuse a later flow may
    /// take the same ports, and a leftover TC reverse-NAT entry would then
    /// rewrite the replies of a socket-LB flow on the same tuple.
    pub fn flush_kestrel_conntrack(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            node.dp
                .conntrack_gc(std::time::Duration::from_nanos(u64::MAX))?;
        }
        Ok(())
    }

    /// Node 1's namespace (where the service rules live).
    pub fn node1(&self) -> &Netns {
        &self.nodes[0].ns
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(e) = detach_sock_lb(self.nodes[0].bpffs.path()) {
            eprintln!("detaching the socket hooks: {e}");
        }
        // Fields drop next: nodes (dataplanes, pods, namespaces, bpffs),
        // the outside host, the cgroup, the fabric.
    }
}

/// Map sizes for `n` Services of up to 3 ports and 10 endpoints (both
/// scopes of each frontend, one backend per endpoint and port).
pub fn sizes_for(n: usize) -> MapSizes {
    let d = MapSizes::default();
    let n = u32::try_from(n).unwrap_or(u32::MAX / 64);
    MapSizes {
        services: d.services.max((n + 8) * 2 * 11),
        backends: d.backends.max((n + 8) * 10 + 64),
        ..d
    }
}
