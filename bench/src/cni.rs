//! CNI ADD latency: the real `kestrel-cni` binary, invoked as containerd
//! invokes it, wiring pods in namespaces this benchmark creates and removes.
//!
//! The baseline, measured in the same run, is the same invocation doing
//! nothing (`VERSION`): process start, `nsenter` and the plugin's own start.
//! ADD minus that is what wiring a pod costs.

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::report::{Summary, command_output, machine, percentile};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `kestrel-cni` executable.
    pub plugin: PathBuf,
    /// Repetitions; each wires `pods` fresh pods.
    pub reps: usize,
    /// Pods per repetition.
    pub pods: usize,
}

/// One operation's latency over the repetitions.
#[derive(Debug, Clone)]
pub struct Row {
    /// `ADD`, `DEL` or `VERSION`.
    pub op: &'static str,
    /// Median and spread of each repetition's p50, in ms.
    pub p50_ms: Summary,
    /// Median and spread of each repetition's p99, in ms.
    pub p99_ms: Summary,
}

/// The benchmark's results.
#[derive(Debug, Clone)]
pub struct Report {
    /// CPU description.
    pub machine: String,
    /// `uname -r`.
    pub kernel: String,
    /// When it ran.
    pub date: String,
    /// The options used.
    pub options: Options,
    /// ADD, DEL and the VERSION baseline.
    pub rows: Vec<Row>,
}

/// Network namespaces made for one repetition, removed on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: String) -> Result<()> {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        self.0.push(name);
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Invokes the plugin once in the node namespace and returns how long it took.
fn invoke(
    plugin: &Path,
    node: &str,
    command: &str,
    container: &str,
    netns: &str,
    conf: &str,
) -> Result<Duration> {
    let start = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{node}"))
        .arg("--")
        .arg(plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning kestrel-cni")?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.as_bytes());
    }
    let out = child
        .wait_with_output()
        .context("waiting for kestrel-cni")?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "kestrel-cni {command} {container} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(took)
}

/// Runs the benchmark. Needs root.
pub fn run_bench(opts: Options) -> Result<Report> {
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let mut samples: [Vec<(f64, f64)>; 3] = Default::default();
    for rep in 0..opts.reps {
        let dir = tempfile::tempdir().context("temporary directory")?;
        let base = format!("kcb{}r{rep}", std::process::id() % 100_000);
        let mut namespaces = Namespaces(Vec::new());
        let node = format!("{base}-node");
        namespaces.add(node.clone())?;
        for i in 0..opts.pods {
            namespaces.add(format!("{base}-p{i}"))?;
        }
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "kestrel-cni",
            "podCIDR": "10.42.200.0/22", "dataDir": dir.path(),
        })
        .to_string();
        let mut times: [Vec<Duration>; 3] = Default::default();
        for i in 0..opts.pods {
            times[2].push(invoke(&opts.plugin, &node, "VERSION", "", "", "")?);
            let netns = format!("/run/netns/{base}-p{i}");
            times[0].push(invoke(
                &opts.plugin,
                &node,
                "ADD",
                &format!("c{i}"),
                &netns,
                &conf,
            )?);
        }
        for i in 0..opts.pods {
            let netns = format!("/run/netns/{base}-p{i}");
            times[1].push(invoke(
                &opts.plugin,
                &node,
                "DEL",
                &format!("c{i}"),
                &netns,
                &conf,
            )?);
        }
        for (op, mut t) in times.into_iter().enumerate() {
            t.sort();
            samples[op].push((percentile(&t, 50.0), percentile(&t, 99.0)));
        }
        eprintln!("cni: repetition {} of {} done", rep + 1, opts.reps);
    }
    let rows = ["ADD", "DEL", "VERSION"]
        .into_iter()
        .zip(samples)
        .map(|(op, s)| Row {
            op,
            p50_ms: Summary::of(s.iter().map(|x| x.0).collect()),
            p99_ms: Summary::of(s.iter().map(|x| x.1).collect()),
        })
        .collect();
    Ok(Report {
        machine: machine(),
        kernel: command_output("uname", &["-r"]),
        date,
        options: opts,
        rows,
    })
}

impl Report {
    /// The report as the "CNI" section of docs/benchmarks.md.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from("## CNI\n\n");
        let _ = writeln!(
            out,
            "Run on {}, kernel {}, {}. `kestrel-cni` (release build) invoked as containerd does, through \
             `nsenter` into a node namespace, wiring {} fresh pods per repetition; {} repetitions. Each \
             figure is the median over repetitions of that repetition's percentile, with [min–max]. The \
             baseline is VERSION: the same invocation doing no work, measured in the same run. \
             Reproduce with `cargo xtask bench cni`.\n",
            self.machine, self.kernel, self.date, self.options.pods, self.options.reps
        );
        out.push_str("| operation | p50 ms | p99 ms | p50 / baseline p50 |\n|---|---|---|---|\n");
        let baseline = self
            .rows
            .iter()
            .find(|r| r.op == "VERSION")
            .map_or(0.0, |r| r.p50_ms.median);
        for row in &self.rows {
            let ratio = if baseline > 0.0 {
                format!("{:.1}×", row.p50_ms.median / baseline)
            } else {
                "—".into()
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {ratio} |",
                row.op,
                row.p50_ms.cell(2),
                row.p99_ms.cell(2)
            );
        }
        out.push_str("\nTarget: CNI ADD p99 < 50 ms.\n");
        out
    }
}
