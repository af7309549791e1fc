//! `cargo xtask bench <suite> [args]`: runs a benchmark from `bench/` in
//! release mode; each writes its section of docs/benchmarks.md.

use std::{ffi::OsString, path::Path, process::Command};

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
    /// Pod startup on a real two-node cluster, and agent RSS (needs root).
    Pods,
    /// The scheduler: pods/s at 1,000 and 5,000 simulated nodes against a
    /// trivial binder, with `kestrel scheduler`'s RSS.
    Scheduler,
    /// The API server: creates, LIST, watch fan-out, RSS.
    Apiserver,
    /// Network policy: map size and update cost at 5,000 pods / 1,000
    /// policies, in process and end to end through a real API server
    /// (needs root).
    Policy,
    /// The packet paths: pod→pod, ClusterIP and NodePort through Kestrel's
    /// eBPF and through kube-proxy's iptables and nftables layouts, at 1 to
    /// 50,000 Services, and the time to program them (needs root).
    Dataplane,
    /// Cluster DNS: queries/s and latency under dnsperf against nsd on one
    /// core, propagation from the API server, and RSS at 10,000 Services
    /// (needs dnsperf and nsd; loopback only).
    Dns,
}

pub fn run(root: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let docs = root.join("docs/benchmarks.md");
    let (target, mut extra): (&[&str], Vec<OsString>) = match args.suite {
        Suite::Store => (
            &["--package", "kestrel-bench", "--bin", "store-bench"],
            vec!["--write".into(), docs.into()],
        ),
        Suite::Cni => {
            cargo(
                root,
                &[
                    "build",
                    "--release",
                    "--package",
                    "kestrel-cni",
                    "--bin",
                    "kestrel-cni",
                ],
                &[],
            )?;
            let plugin = root.join("target/release/kestrel-cni");
            (
                &["--package", "kestrel-bench", "--bin", "cni-bench"],
                vec![
                    "--plugin".into(),
                    plugin.into(),
                    "--write".into(),
                    docs.into(),
                ],
            )
        }
        Suite::Pods | Suite::Scheduler => {
            if matches!(args.suite, Suite::Pods) {
                crate::images::run(root, &crate::images::ImagesArgs::default())?;
            }
            cargo(
                root,
                &[
                    "build",
                    "--release",
                    "--package",
                    "kestrel",
                    "--bin",
                    "kestrel",
                ],
                &[],
            )?;
            let mut extra: Vec<OsString> = vec![
                "--kestrel".into(),
                root.join("target/release/kestrel").into(),
                "--write".into(),
                docs.into(),
            ];
            let bin: &[&str] = if matches!(args.suite, Suite::Pods) {
                extra.extend(["--images".into(), root.join("target/images").into()]);
                &["--package", "kestrel-bench", "--bin", "pods-bench"]
            } else {
                &["--package", "kestrel-bench", "--bin", "scheduler-bench"]
            };
            (bin, extra)
        }
        Suite::Apiserver => (
            &["--package", "kestrel-bench", "--bin", "apiserver-bench"],
            vec!["--write".into(), docs.into()],
        ),
        Suite::Policy => (
            &["--package", "kestrel-bench", "--bin", "policy-bench"],
            vec!["--write".into(), docs.into()],
        ),
        Suite::Dataplane => (
            &["--package", "kestrel-bench", "--bin", "dataplane-bench"],
            vec!["--write".into(), docs.into()],
        ),
        Suite::Dns => (
            &["--package", "kestrel-bench", "--bin", "dns-bench"],
            vec!["--write".into(), docs.into()],
        ),
    };
    extra.extend(args.args.iter().map(OsString::from));
    let mut cargo_args = vec!["run", "--release"];
    cargo_args.extend_from_slice(target);
    cargo_args.push("--");
    cargo(root, &cargo_args, &extra)
}

fn cargo(root: &Path, args: &[&str], extra: &[OsString]) -> anyhow::Result<()> {
    sh(Command::new("cargo")
        .current_dir(root)
        .args(args)
        .args(extra))
}
