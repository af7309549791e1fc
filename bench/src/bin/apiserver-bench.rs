//! Runs the API server benchmark and writes its section of docs/benchmarks.md.
//! Started with `--serve DIR`, it is the benchmark's server instead.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use kestrel_bench::apiserver::{Options, run_bench, serve};

/// Pod creates, LIST, watch fan-out and RSS of the API server (loopback only).
#[derive(Debug, Parser)]
struct Args {
    /// Serve from this directory (used by the benchmark itself).
    #[arg(long, hide = true)]
    serve: Option<PathBuf>,
    /// Repetitions, each on a fresh server.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// A short run for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Write the report into this markdown file's "API server" section.
    #[arg(long)]
    write: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = args.serve {
        return serve(dir).await;
    }
    let options = if args.quick {
        Options {
            reps: 1,
            pods: 500,
            clients: 8,
            baseline_pods: 50,
            watchers: 50,
            events: 5,
            custom: 200,
        }
    } else {
        Options {
            reps: args.reps.max(1),
            pods: 10_000,
            clients: 32,
            baseline_pods: 500,
            watchers: 1_000,
            events: 50,
            custom: 2_000,
        }
    };
    let exe = std::env::current_exe().context("finding this executable")?;
    let report = run_bench(&exe, options).await?;
    let section = report.to_markdown();
    print!("{section}");
    if let Some(path) = args.write {
        kestrel_bench::report::write_section(&path, "## API server", &section)?;
    }
    Ok(())
}
