//! `cargo xtask test`: the whole suite, as CI runs it.

use std::{path::Path, process::Command};

use anyhow::bail;

use crate::sh;

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip `setup` (when you know the machine is ready).
    #[arg(long)]
    no_setup: bool,
    /// Extra arguments for cargo-nextest (a filter, for example).
    #[arg(last = true)]
    nextest_args: Vec<String>,
}

pub fn run_suite(root: &Path, args: &TestArgs) -> anyhow::Result<()> {
    let cargo = || {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root);
        cmd
    };
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    sh(cargo()
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            "kestrel-ebpf",
            "--all-targets",
            "--",
        ])
        .args(["-D", "warnings"]))?;
    sh(cargo()
        .args([
            "+nightly",
            "clippy",
            "--package",
            "kestrel-ebpf",
            "--release",
        ])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))?;
    sh(cargo().args(["test", "--workspace", "--exclude", "kestrel-ebpf", "--doc"]))?;
    sh(cargo()
        .args([
            "nextest",
            "run",
            "--workspace",
            "--exclude",
            "kestrel-ebpf",
            "--profile",
            "ci",
        ])
        .args(&args.nextest_args))?;
    // The packet-path benchmark's quick mode, as a smoke test that every
    // path still carries every workload (it fails when a cell fails). It
    // needs root; without it the privileged tests above skipped too.
    if args.nextest_args.is_empty() && is_root() {
        sh(cargo().args([
            "run",
            "--package",
            "kestrel-bench",
            "--bin",
            "dataplane-bench",
            "--",
            "--quick",
        ]))?;
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

pub fn run(root: &Path, args: &TestArgs) -> anyhow::Result<()> {
    let root_user = is_root();
    let may_skip = std::env::var("KESTREL_SKIP_PRIVILEGED").is_ok_and(|v| v == "1");
    if !root_user && !may_skip {
        bail!(
            "the suite includes privileged tests (netns, eBPF, containerd) and must run as root; \
             set KESTREL_SKIP_PRIVILEGED=1 to skip them on a machine without root"
        );
    }
    if std::env::var_os("CI").is_some() && may_skip {
        bail!("KESTREL_SKIP_PRIVILEGED is not allowed in CI: privileged tests always run there");
    }
    if !args.no_setup {
        crate::setup::run(root)?;
    }
    // The CRI tests run containers from the offline images.
    crate::images::run(root, &crate::images::ImagesArgs::default())?;
    run_suite(root, args)
}
