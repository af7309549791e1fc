//! `cargo xtask bench <suite> [args]`: runs a benchmark from `bench/` in
//! release mode and writes its section of docs/benchmarks.md.

use std::{path::Path, process::Command};

use crate::sh;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[arg(value_enum)]
    suite: Suite,
    /// Arguments for the benchmark binary (for example `--quick`, `--reps 7`).
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Suite {
    /// The store backends: SQLite and etcd, side by side.
    Store,
    /// The CNI plugin: ADD and DEL latency against a no-op baseline (needs root).
    Cni,
    /// The API server: creates, LIST, watch fan-out, RSS. Prints its report;
    /// it does not yet write docs/benchmarks.md itself.
    Apiserver,
}

pub fn run(root: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let bin = match args.suite {
        Suite::Store => "store-bench",
        Suite::Cni => {
            sh(Command::new("cargo").current_dir(root).args([
                "build",
                "--release",
                "--package",
                "kestrel-cni",
                "--bin",
                "kestrel-cni",
            ]))?;
            return sh(Command::new("cargo")
                .current_dir(root)
                .args([
                    "run",
                    "--release",
                    "--package",
                    "kestrel-bench",
                    "--bin",
                    "cni-bench",
                    "--",
                ])
                .arg("--plugin")
                .arg(root.join("target/release/kestrel-cni"))
                .arg("--write")
                .arg(root.join("docs/benchmarks.md"))
                .args(&args.args));
        }
        Suite::Apiserver => {
            return sh(Command::new("cargo")
                .current_dir(root)
                .args([
                    "run",
                    "--release",
                    "--package",
                    "kestrel-apiserver",
                    "--example",
                    "bench",
                    "--",
                ])
                .args(&args.args));
        }
    };
    sh(Command::new("cargo")
        .current_dir(root)
        .args([
            "run",
            "--release",
            "--package",
            "kestrel-bench",
            "--bin",
            bin,
            "--",
            "--write",
        ])
        .arg(root.join("docs/benchmarks.md"))
        .args(&args.args))
}
