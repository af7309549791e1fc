//! Runs the CNI benchmark and writes its section of docs/benchmarks.md.

use std::path::PathBuf;

use clap::Parser;
use kestrel_bench::cni::{Options, run_bench};

/// CNI ADD and DEL latency of the real plugin.
#[derive(Debug, Parser)]
struct Args {
    /// The kestrel-cni executable (release build).
    #[arg(long)]
    plugin: PathBuf,
    /// Repetitions.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Pods per repetition.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// A short run for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Write the report into this markdown file's "CNI" section.
    #[arg(long)]
    write: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (reps, pods) = if args.quick {
        (1, 10)
    } else {
        (args.reps.max(1), args.pods.max(1))
    };
    let report = run_bench(Options {
        plugin: args.plugin,
        reps,
        pods,
    })?;
    let section = report.to_markdown();
    print!("{section}");
    if let Some(path) = args.write {
        kestrel_bench::report::write_section(&path, "## CNI", &section)?;
    }
    Ok(())
}
