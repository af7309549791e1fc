//! Runs the scheduler benchmark and writes its section of docs/benchmarks.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kestrel_bench::scheduler::{self, Options};

/// Pods scheduled per second through the API server, against a trivial
/// binder measured in the same run.
#[derive(Debug, Parser)]
struct Args {
    /// The `kestrel` binary whose `scheduler` subcommand is measured.
    #[arg(long, default_value = "target/release/kestrel")]
    kestrel: PathBuf,
    /// Node counts (repeatable).
    #[arg(long = "nodes")]
    nodes: Vec<usize>,
    /// Pending pods per repetition.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Repetitions per node count.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Give the scheduler's pods a ReplicaSet as their controller, so
    /// default (system) topology spreading applies to them.
    #[arg(long)]
    replica_set: bool,
    /// Spread the simulated nodes over this many zones (0: no zone label).
    #[arg(long, default_value_t = 0)]
    zones: usize,
    /// A short run: 100 and 500 nodes, 1,000 pods, 1 repetition.
    #[arg(long)]
    quick: bool,
    /// Write the report into this markdown file's "Scheduler" section.
    #[arg(long)]
    write: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut opts = Options {
        kestrel: args.kestrel,
        node_counts: if args.nodes.is_empty() {
            vec![1_000, 5_000]
        } else {
            args.nodes
        },
        pods: args.pods,
        reps: args.reps,
        bind_concurrency: 64,
        time_limit: Duration::from_secs(300),
        replica_set: args.replica_set,
        zones: args.zones,
    };
    if args.quick {
        opts.node_counts = vec![100, 500];
        opts.pods = 1_000;
        opts.reps = 1;
    }
    let report = scheduler::run(opts)
        .await
        .context("running the scheduler benchmark")?;
    kestrel_bench::report::publish(&report.to_markdown(), "## Scheduler", args.write.as_deref())
}
