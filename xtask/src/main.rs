//! Project automation: `cargo xtask setup|images|test|bench`.
//!
//! Everything a fresh Debian 12 machine needs is installed by `setup`, which
//! is idempotent and prints what it did; `test` runs it first, so the README's
//! test command works on a new machine.

mod bench;
mod images;
mod setup;
mod test;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Kestrel project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what builds and tests need (apt packages, nightly rust-src,
    /// bpf-linker for LLVM 22, cargo-nextest, kubectl 1.35, helm, the Python
    /// client). Idempotent.
    Setup,
    /// Run a benchmark and write its results to docs/benchmarks.md.
    Bench(bench::BenchArgs),
    /// Build the offline OCI image archives (pause, busybox, kestrel-echo).
    Images(images::ImagesArgs),
    /// The whole suite: setup, fmt, clippy (userspace and eBPF), and every
    /// test including the privileged ones (run as root).
    Test(test::TestArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = repo_root()?;
    match cli.command {
        Command::Setup => setup::run(&root),
        Command::Images(args) => images::run(&root, &args),
        Command::Bench(args) => bench::run(&root, &args),
        Command::Test(args) => test::run(&root, &args),
    }
}

/// The workspace root: xtask lives one level below it.
fn repo_root() -> anyhow::Result<std::path::PathBuf> {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}

/// Runs a command, echoing it, and fails with context if it fails.
fn sh(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    eprintln!("+ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("spawning {}", display(cmd)))?;
    anyhow::ensure!(status.success(), "{} failed: {status}", display(cmd));
    Ok(())
}

/// Runs a command quietly and reports whether it succeeded.
fn succeeds(cmd: &mut std::process::Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn display(cmd: &std::process::Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}
