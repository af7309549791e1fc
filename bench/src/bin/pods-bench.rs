//! Runs the pod startup benchmark and writes its section of docs/benchmarks.md.

use std::path::PathBuf;

use clap::Parser;
use kestrel_bench::pods::{Options, run_bench};

/// Pod startup latency and agent RSS on a real two-node cluster (root).
#[derive(Debug, Parser)]
struct Args {
    /// The kestrel executable (release build).
    #[arg(long)]
    kestrel: PathBuf,
    /// The image archives (`cargo xtask images`).
    #[arg(long, default_value = "target/images")]
    images: PathBuf,
    /// Repetitions of the burst.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Pods per burst.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Creations per second in the paced run; 0 skips it.
    #[arg(long, default_value_t = 5.0)]
    paced_rate: f64,
    /// A short run for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Write the report into this markdown file's "Pod startup" section.
    #[arg(long)]
    write: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (reps, pods, baseline_pods) = if args.quick {
        (1, 10, 2)
    } else {
        (args.reps.max(1), args.pods.max(1), 5)
    };
    let report = run_bench(Options {
        kestrel: args.kestrel,
        images: args.images,
        reps,
        pods,
        baseline_pods,
        paced_rate: args.paced_rate,
    })
    .await?;
    let section = report.to_markdown();
    print!("{section}");
    if let Some(path) = args.write {
        kestrel_bench::report::write_section(&path, "## Pod startup", &section)?;
    }
    Ok(())
}
