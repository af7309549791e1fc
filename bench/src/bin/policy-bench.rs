//! Runs the network policy benchmark and writes its section of
//! docs/benchmarks.md (needs root and the built eBPF object).

use std::path::PathBuf;

use clap::Parser;
use kestrel_bench::policy::{Options, Scale, run_bench};

/// Network policy update cost in the real pinned maps, in process and end
/// to end through a real API server.
#[derive(Debug, Parser)]
struct Args {
    /// Repetitions of the full program and of the in-process changes.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Changes of each kind (per repetition in process; in total end to end).
    #[arg(long, default_value_t = 25)]
    changes: usize,
    /// A short run at a smaller scale, for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Write the report into this markdown file's "Network policy" section.
    #[arg(long)]
    write: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let baseline = Scale {
        pods: 100,
        local: 10,
        namespaces: 1,
        policies: 1,
    };
    let (scale, reps, changes) = if args.quick {
        let scale = Scale {
            pods: 1_000,
            local: 22,
            namespaces: 10,
            policies: 200,
        };
        (scale, 2, 5)
    } else {
        let scale = Scale {
            pods: 5_000,
            local: 110,
            namespaces: 50,
            policies: 1_000,
        };
        (scale, args.reps.max(1), args.changes.max(1))
    };
    let report = run_bench(&Options {
        scale,
        baseline,
        reps,
        changes,
    })?;
    let section = report.to_markdown();
    kestrel_bench::report::publish(&section, "## Network policy", args.write.as_deref())?;
    eprintln!(
        "worst end-to-end change at the measured scale: {:.1} ms (target 200 ms)",
        report.worst_visible_ms()
    );
    Ok(())
}
