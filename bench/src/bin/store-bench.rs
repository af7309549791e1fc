//! Runs the store benchmark and writes its section of docs/benchmarks.md.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kestrel_bench::store::{self, Backend, Options};

/// Benchmark both store backends in one run.
#[derive(Debug, Parser)]
struct Args {
    /// Repetitions of each scenario.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Backends to run (default: both).
    #[arg(long, value_enum)]
    backend: Vec<Backend>,
    /// A short run with fewer operations, for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Write the report into this markdown file's "Store" section.
    #[arg(long)]
    write: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut opts = Options {
        reps: args.reps,
        ..Options::default()
    };
    if !args.backend.is_empty() {
        opts.backends = args.backend;
    }
    if args.quick {
        opts.single_writer_ops = 50;
        opts.concurrent_ops = 640;
        opts.range_keys = 1000;
        opts.watch_events = 20;
    }
    let report = store::run(opts)
        .await
        .context("running the store benchmark")?;
    kestrel_bench::report::publish(&report.to_markdown(), "## Store", args.write.as_deref())
}
