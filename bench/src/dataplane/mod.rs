//! The packet-path benchmark (`cargo xtask bench dataplane`): one fresh
//! two-node topology in network namespaces (see [`topo`]), one service set
//! per scale (see [`services`]), and the same traffic (see [`load`]) over
//! every path:
//!
//! - (a) pod → pod IP, the kernel routing on its own (the physical limit),
//!   and (a′) the same through Kestrel's TC programs;
//! - (b) pod → ClusterIP through Kestrel with socket LB (the connect is
//!   rewritten, packets then travel as pod → pod);
//! - (c) pod → ClusterIP through Kestrel's TC per-packet NAT (socket LB off);
//! - (d) pod → ClusterIP through kube-proxy's iptables layout;
//! - (e) pod → ClusterIP through kube-proxy's nftables layout;
//! - (f) outside host → NodePort on node 1 → endpoint on node 2, through
//!   Kestrel and through (d).
//!
//! Besides the traffic, each scale times programming the Services from
//! scratch and changing one endpoint, for Kestrel's maps, `iptables-restore`
//! and `nft -f` (see [`program`]).

pub mod kubeproxy;
pub mod load;
pub mod plot;
pub mod program;
pub mod report;
pub mod services;
pub mod topo;

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Set (by the binary's signal thread) to stop the run: the current client
/// is killed, and the run returns an error, so the topology's guards
/// clean up before the process exits.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Whether the run was asked to stop.
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

pub use load::{Sample, Workload};

/// The paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum PathKind {
    /// (a) pod → pod, kernel routing.
    Direct,
    /// (a′) pod → pod through Kestrel's TC programs.
    DirectEbpf,
    /// (b) ClusterIP, Kestrel with socket LB.
    KestrelSock,
    /// (c) ClusterIP, Kestrel's TC path (socket LB off).
    KestrelTc,
    /// (d) ClusterIP, kube-proxy iptables.
    Iptables,
    /// (e) ClusterIP, kube-proxy nftables.
    Nftables,
    /// (f) NodePort from outside, Kestrel.
    NodePortKestrel,
    /// (f) NodePort from outside, kube-proxy iptables.
    NodePortIptables,
}

impl PathKind {
    pub const ALL: [Self; 8] = [
        Self::Direct,
        Self::DirectEbpf,
        Self::KestrelSock,
        Self::KestrelTc,
        Self::Iptables,
        Self::Nftables,
        Self::NodePortKestrel,
        Self::NodePortIptables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "(a) pod→pod IP, kernel routing",
            Self::DirectEbpf => "(a′) pod→pod IP, Kestrel TC",
            Self::KestrelSock => "(b) ClusterIP, Kestrel socket LB",
            Self::KestrelTc => "(c) ClusterIP, Kestrel TC (socket LB off)",
            Self::Iptables => "(d) ClusterIP, kube-proxy iptables",
            Self::Nftables => "(e) ClusterIP, kube-proxy nftables",
            Self::NodePortKestrel => "(f) NodePort from outside, Kestrel",
            Self::NodePortIptables => "(f) NodePort from outside, kube-proxy iptables",
        }
    }

    /// Whether its traffic depends on the number of Services.
    pub fn scales(self) -> bool {
        !matches!(self, Self::Direct | Self::DirectEbpf)
    }
}

/// How the rules were programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Programmer {
    Kestrel,
    Iptables(program::IptablesBackend),
    Nftables,
}

impl Programmer {
    /// Every programmer, in the report's column order.
    pub const ALL: [Self; 4] = [
        Self::Kestrel,
        Self::Iptables(program::IptablesBackend::Legacy),
        Self::Iptables(program::IptablesBackend::Nft),
        Self::Nftables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Kestrel => "Kestrel maps",
            Self::Iptables(b) => b.restore(),
            Self::Nftables => "nft -f",
        }
    }
}

/// The longest the iptables build that carries no traffic (the one not
/// chosen with `--iptables`) may take to program a scale from scratch.
const OTHER_IPTABLES_LIMIT: Duration = Duration::from_secs(120);

/// What the run does.
#[derive(Clone, Debug)]
pub struct Options {
    pub reps: usize,
    pub scales: Vec<usize>,
    pub workloads: Vec<Workload>,
    pub flows: Vec<usize>,
    pub paths: Vec<PathKind>,
    /// Seconds per measurement.
    pub secs: f64,
    /// A smoke run (labelled so in the report).
    pub quick: bool,
    /// The longest a from-scratch `iptables-restore` or `nft -f` may take;
    /// beyond it the tool is killed and the cell reads "timed out".
    pub program_limit: Duration,
    /// The iptables build kube-proxy's layout is loaded with.
    pub iptables: program::IptablesBackend,
}

impl Options {
    /// The `--quick` smoke run: under three minutes.
    pub fn quick() -> Self {
        Self {
            reps: 1,
            scales: vec![1, 1_000],
            workloads: vec![
                Workload::TcpRr,
                Workload::TcpCrr,
                Workload::TcpStream,
                Workload::UdpRr,
            ],
            flows: vec![1, 2],
            paths: PathKind::ALL.to_vec(),
            secs: 0.5,
            quick: true,
            program_limit: Duration::from_secs(120),
            iptables: program::IptablesBackend::Legacy,
        }
    }

    /// The full run.
    pub fn full(reps: usize) -> Self {
        Self {
            reps: reps.max(5),
            scales: vec![1, 1_000, 10_000, 50_000],
            secs: 5.0,
            quick: false,
            program_limit: Duration::from_secs(900),
            ..Self::quick()
        }
    }
}

/// One traffic cell's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub scale: usize,
    pub workload: Workload,
    pub path: PathKind,
    pub flows: usize,
}

/// Everything a run measured.
#[derive(Debug, Default)]
pub struct Results {
    pub traffic: BTreeMap<Key, Vec<Sample>>,
    /// Failures, by cell, with the error.
    pub failures: BTreeMap<Key, String>,
    /// (scale, programmer) → full-sync durations.
    pub program_full: BTreeMap<(usize, Programmer), Vec<Duration>>,
    /// (scale, programmer) → the limit a from-scratch programming ran into.
    pub program_timeouts: BTreeMap<(usize, Programmer), Duration>,
    /// (scale, programmer) → why programming failed (a timeout included).
    pub program_failures: BTreeMap<(usize, Programmer), String>,
    /// (scale, programmer) → one-endpoint-change durations.
    pub program_update: BTreeMap<(usize, Programmer), Vec<Duration>>,
    pub wall: Duration,
    /// Kestrel's drop counters at the end of the run: (node, reason, count),
    /// the nonzero ones.
    pub kestrel_drops: Vec<(usize, &'static str, u64)>,
}

struct Runner<'a> {
    exe: &'a Path,
    options: &'a Options,
    results: Results,
}

impl Runner<'_> {
    fn wants(&self, path: PathKind) -> bool {
        self.options.paths.contains(&path)
    }

    /// Runs every workload and flow count on `path`.
    fn measure(&mut self, topo: &topo::Topology, scale: usize, path: PathKind) {
        if !self.wants(path) || stopping() {
            return;
        }
        let cgroup = topo.cgroup_dir();
        for &workload in &self.options.workloads {
            for &flows in &self.options.flows {
                let key = Key {
                    scale,
                    workload,
                    path,
                    flows,
                };
                let server = topo.server_ips()[0];
                let (netns, cgroup, target) = match path {
                    PathKind::Direct | PathKind::DirectEbpf => (
                        topo.client().ns.name.clone(),
                        Some(cgroup.as_path()),
                        SocketAddrV4::new(server, workload.target_port()),
                    ),
                    PathKind::KestrelSock
                    | PathKind::KestrelTc
                    | PathKind::Iptables
                    | PathKind::Nftables => (
                        topo.client().ns.name.clone(),
                        Some(cgroup.as_path()),
                        SocketAddrV4::new(services::MEASURED_VIP, workload.service_port()),
                    ),
                    PathKind::NodePortKestrel | PathKind::NodePortIptables => (
                        topo.outside.name.clone(),
                        None,
                        SocketAddrV4::new(topo.nodes[0].ip, workload.node_port()),
                    ),
                };
                let run = load::ClientRun {
                    netns: &netns,
                    cgroup,
                    workload,
                    target,
                    flows,
                    secs: self.options.secs,
                };
                match load::run_client(self.exe, &run) {
                    Ok(s) => {
                        eprintln!(
                            "  N={scale:<6} {:<48} {:<10} flows={flows}: {}",
                            path.label(),
                            workload.label(),
                            report::describe(workload, &s)
                        );
                        self.results.traffic.entry(key).or_default().push(s);
                    }
                    Err(e) => {
                        eprintln!(
                            "  N={scale} {} {} flows={flows}: FAILED {e:#}",
                            path.label(),
                            workload.label()
                        );
                        self.results.failures.insert(key, format!("{e:#}"));
                    }
                }
            }
        }
    }

    /// Whether `p` already ran out of time at this scale or a smaller one
    /// (in any repetition): it is not tried again, so one slow tool cannot
    /// take the whole run.
    fn gave_up(&self, p: Programmer, scale: usize) -> bool {
        self.results
            .program_timeouts
            .keys()
            .any(|&(s, q)| q == p && s <= scale)
    }

    fn record(&mut self, full: bool, scale: usize, p: Programmer, d: Result<Duration>) {
        match d {
            Ok(d) => {
                eprintln!(
                    "  N={scale:<6} programming {p:?} {}: {:.1} ms",
                    if full { "from scratch" } else { "one endpoint" },
                    d.as_secs_f64() * 1e3
                );
                let map = if full {
                    &mut self.results.program_full
                } else {
                    &mut self.results.program_update
                };
                map.entry((scale, p)).or_default().push(d);
            }
            Err(e) => {
                eprintln!("  N={scale} programming {p:?}: FAILED {e:#}");
                self.results
                    .program_failures
                    .insert((scale, p), format!("{e:#}"));
                if let Some(t) = e.downcast_ref::<topo::TimedOut>() {
                    self.results.program_timeouts.insert((scale, p), t.0);
                }
            }
        }
    }

    fn one_scale(
        &mut self,
        topo: &mut topo::Topology,
        kestrel: &mut program::Kestrel,
        scale: usize,
    ) -> Result<()> {
        let set = services::service_set(scale, &topo.server_ips());
        let measured = set.last().context("an empty service set")?.clone();
        let changed = services::with_one_endpoint_changed(&measured);
        let mut after = set.clone();
        if let Some(last) = after.last_mut() {
            *last = changed.clone();
        }
        let node = program::node_rules(topo);

        // The kernel's paths.
        topo.kernel_mode()?;
        program::iptables_clear(topo.node1())?;
        program::nft_clear(topo.node1())?;
        self.measure(topo, scale, PathKind::Direct);

        let ipt = Programmer::Iptables(self.options.iptables);
        let wants_ipt = self.wants(PathKind::Iptables) || self.wants(PathKind::NodePortIptables);
        if wants_ipt && !self.gave_up(ipt, scale) {
            let ns = topo.node1();
            let limit = self.options.program_limit;
            let d = program::iptables_program(ns, self.options.iptables, &node, &set, limit);
            let ok = d.is_ok();
            self.record(true, scale, ipt, d);
            if ok {
                self.measure(topo, scale, PathKind::Iptables);
                self.measure(topo, scale, PathKind::NodePortIptables);
                let d = program::iptables_update(
                    topo.node1(),
                    self.options.iptables,
                    &node,
                    &after,
                    &measured,
                    &changed,
                );
                self.record(false, scale, ipt, d);
            }
            program::iptables_clear(topo.node1())?;
        }
        // The other build, programming only: the ratio users see depends
        // on which one their hosts run.
        let backend = self.options.iptables.other();
        let other = Programmer::Iptables(backend);
        if wants_ipt && !self.gave_up(other, scale) {
            let limit = OTHER_IPTABLES_LIMIT.min(self.options.program_limit);
            let d = program::iptables_program(topo.node1(), backend, &node, &set, limit);
            self.record(true, scale, other, d);
            program::iptables_clear(topo.node1())?;
        }
        if self.wants(PathKind::Nftables) && !self.gave_up(Programmer::Nftables, scale) {
            let limit = self.options.program_limit;
            let d = program::nft_program(topo.node1(), &node, &set, limit);
            let ok = d.is_ok();
            self.record(true, scale, Programmer::Nftables, d);
            if ok {
                self.measure(topo, scale, PathKind::Nftables);
                let d = program::nft_update(topo.node1(), &node, &measured, &changed);
                self.record(false, scale, Programmer::Nftables, d);
            }
            program::nft_clear(topo.node1())?;
        }

        // Kestrel's paths.
        let d = kestrel.program(topo, &set);
        self.record(true, scale, Programmer::Kestrel, d);
        topo.ebpf_mode(false)?;
        topo.flush_kestrel_conntrack()?;
        self.measure(topo, scale, PathKind::DirectEbpf);
        self.measure(topo, scale, PathKind::KestrelTc);
        self.measure(topo, scale, PathKind::NodePortKestrel);
        if self.wants(PathKind::KestrelSock) {
            topo.ebpf_mode(true)?;
            topo.flush_kestrel_conntrack()?;
            self.measure(topo, scale, PathKind::KestrelSock);
        }
        let d = kestrel.update(topo, &changed);
        self.record(false, scale, Programmer::Kestrel, d);
        topo.kernel_mode()?;
        Ok(())
    }
}

/// Runs the benchmark. `exe` is this binary (re-executed for clients).
pub fn run_bench(exe: &Path, options: &Options) -> Result<Results> {
    let started = Instant::now();
    let max = options.scales.iter().copied().max().unwrap_or(1);
    eprintln!("building the topology (maps sized for {max} services)");
    let mut topo = topo::Topology::new(max)?;
    let _server = load::Server::start(&topo.server().ns, &topo.server_ips())?;
    let mut kestrel = program::Kestrel::open(&topo)?;
    let mut runner = Runner {
        exe,
        options,
        results: Results::default(),
    };
    for rep in 0..options.reps {
        for &scale in &options.scales {
            eprintln!("rep {}/{} N={scale}", rep + 1, options.reps);
            runner.one_scale(&mut topo, &mut kestrel, scale)?;
            if stopping() {
                bail!("interrupted; the topology was cleaned up");
            }
        }
    }
    for (i, node) in topo.nodes.iter().enumerate() {
        if let Ok(drops) = node.dp.drops() {
            for (reason, n) in drops {
                if n > 0 {
                    runner.results.kestrel_drops.push((i + 1, reason.name(), n));
                }
            }
        }
    }
    let _ = kestrel.clear();
    drop(kestrel);
    drop(topo);
    runner.results.wall = started.elapsed();
    Ok(runner.results)
}

/// Where the report's plots go, next to the markdown file.
pub fn plot_dir(doc: &Path) -> PathBuf {
    doc.parent()
        .unwrap_or_else(|| Path::new("."))
        .join("benchmarks")
}
