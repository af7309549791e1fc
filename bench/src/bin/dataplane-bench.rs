//! Runs the packet-path benchmark and writes its section of
//! docs/benchmarks.md. Needs root (namespaces, eBPF, cgroups).
//! `client` is the benchmark's own load generator, run by it.

use std::{net::SocketAddrV4, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kestrel_bench::dataplane::{
    Options, PathKind, Workload, load, plot, program::IptablesBackend, report, run_bench,
};

/// Pod→pod, ClusterIP and NodePort paths: Kestrel's eBPF against
/// kube-proxy's iptables and nftables layouts.
#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Repetitions (at least 5 for a full run).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// A short smoke run (under three minutes).
    #[arg(long)]
    quick: bool,
    /// Service counts to measure (default 1, 1000, 10000, 50000).
    #[arg(long, value_delimiter = ',')]
    scales: Option<Vec<usize>>,
    /// Workloads (default all).
    #[arg(long, value_delimiter = ',', value_enum)]
    workloads: Option<Vec<Workload>>,
    /// Paths (default all).
    #[arg(long, value_delimiter = ',', value_enum)]
    paths: Option<Vec<PathKind>>,
    /// Concurrent flows (default 1,2).
    #[arg(long, value_delimiter = ',')]
    flows: Option<Vec<usize>>,
    /// Seconds per measurement.
    #[arg(long)]
    secs: Option<f64>,
    /// The longest a from-scratch iptables-restore or nft -f may run, in
    /// seconds (then it is killed and reported as such).
    #[arg(long)]
    program_limit: Option<u64>,
    /// The iptables build that loads kube-proxy's layout.
    #[arg(long, value_enum)]
    iptables: Option<IptablesBackend>,
    /// Write the report into this markdown file's "Dataplane" section.
    #[arg(long)]
    write: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The load generator (run by the benchmark itself).
    #[command(hide = true)]
    Client {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long, value_enum)]
        workload: Workload,
        #[arg(long)]
        target: SocketAddrV4,
        #[arg(long, default_value_t = 1)]
        flows: usize,
        #[arg(long)]
        secs: f64,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Cmd::Client {
        netns,
        cgroup,
        workload,
        target,
        flows,
        secs,
    }) = args.command
    {
        return load::client_main(&netns, cgroup.as_deref(), workload, target, flows, secs);
    }
    let mut options = if args.quick {
        Options::quick()
    } else {
        Options::full(args.reps)
    };
    if let Some(v) = args.scales {
        options.scales = v;
    }
    if let Some(v) = args.workloads {
        options.workloads = v;
    }
    if let Some(v) = args.paths {
        options.paths = v;
    }
    if let Some(v) = args.flows {
        options.flows = v;
    }
    if let Some(v) = args.secs {
        options.secs = v;
    }
    if let Some(v) = args.iptables {
        options.iptables = v;
    }
    if let Some(v) = args.program_limit {
        options.program_limit = std::time::Duration::from_secs(v);
    }
    // SIGINT, SIGTERM and SIGHUP stop the run between measurements, so the
    // namespaces, cgroup and bpffs mounts are removed by their guards.
    let mut signals = nix::sys::signal::SigSet::empty();
    for s in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        signals.add(s);
    }
    signals
        .thread_block()
        .context("blocking the stop signals")?;
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            eprintln!("{sig}: stopping and cleaning up");
            kestrel_bench::dataplane::STOP.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    if !kestrel_dataplane::object_is_built() {
        anyhow::bail!("the eBPF object was not built (AYA_BUILD_SKIP=1); build without it");
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let results = run_bench(&exe, &options)?;
    let mut plots = Vec::new();
    if let Some(doc) = &args.write {
        let dir = kestrel_bench::dataplane::plot_dir(doc);
        match plot::write_plots(&dir, &options, &results) {
            Ok(files) => {
                for f in files {
                    if let Some(name) = f.file_name() {
                        plots.push(format!("benchmarks/{}", name.to_string_lossy()));
                    }
                }
            }
            Err(e) => eprintln!("plots: {e:#}"),
        }
    }
    let section = report::to_markdown(&options, &results, &plots);
    kestrel_bench::report::publish(&section, "## Dataplane", args.write.as_deref())?;
    // The quick run is CI's smoke test: every cell and every programming
    // must have worked.
    if options.quick && !(results.failures.is_empty() && results.program_failures.is_empty()) {
        anyhow::bail!(
            "the quick run had {} failed cell(s) and {} failed programming(s) (see above)",
            results.failures.len(),
            results.program_failures.len()
        );
    }
    Ok(())
}
