//! Pod startup latency on a real two-node cluster (`kestrel up`): from the
//! create call to the pod's Ready condition as seen through a watch, for a
//! burst of pods scheduled by the scheduler onto both nodes, with the images
//! local. Also the agents' RSS while they hold the pods.
//!
//! The baseline, measured in the same run, is one pod at a time on the idle
//! cluster: what a single pod's path costs with nothing queued before it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};

use crate::report::{Summary, command_output, machine, percentile};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `kestrel` executable (release build).
    pub kestrel: PathBuf,
    /// The image archives.
    pub images: PathBuf,
    /// Repetitions of the burst.
    pub reps: usize,
    /// Pods per burst.
    pub pods: usize,
    /// Pods in the one-at-a-time baseline.
    pub baseline_pods: usize,
    /// Creations per second in the paced run (upstream's density tests
    /// create pods at a bounded rate); 0 skips it.
    pub paced_rate: f64,
}

/// The results.
#[derive(Debug, Clone)]
pub struct Report {
    machine: String,
    kernel: String,
    date: String,
    options: Options,
    baseline_ms: Summary,
    p50_ms: Summary,
    p99_ms: Summary,
    paced_p50_ms: Summary,
    paced_p99_ms: Summary,
    rss_mib: Summary,
    cpu: Vec<BurstCpu>,
    cores: usize,
    load: String,
}

/// Where the CPU went during one burst, from the cluster's cgroups.
#[derive(Debug, Clone, Copy, Default)]
struct BurstCpu {
    /// Wall time from the first create to the last Ready, ms.
    wall_ms: f64,
    /// CPU used by everything the cluster runs (control plane, agents,
    /// containerd, shims, runc, the pods), ms.
    cluster_ms: f64,
    /// Of which the control plane (`kestrel server`), ms.
    server_ms: f64,
    /// Of which the agents, ms.
    agents_ms: f64,
    /// Of which containerd itself, ms.
    containerd_ms: f64,
    /// Of which the processes containerd ran and reaped (the CNI plugin,
    /// each shim's launcher), ms.
    containerd_children_ms: f64,
    /// Of which the shims, with the runc runs they reaped, ms.
    shims_ms: f64,
    /// Of which the pods' own processes (their cgroups), ms.
    pods_ms: f64,
    /// Time some cluster task waited for a CPU (cgroup `cpu.pressure`), ms.
    stalled_ms: f64,
}

const NS: &str = "bench";
const CGROUP2: &str = "/sys/fs/cgroup/unified";
/// `/proc/<pid>/stat` times are in clock ticks of 1/100 s on Linux.
const TICK_MS: f64 = 10.0;

#[derive(Debug, Clone, Copy)]
struct CpuCounters {
    at: Instant,
    cluster_us: u64,
    server_us: u64,
    agents_ticks: u64,
    runtime: RuntimeTicks,
    pods_us: u64,
    stalled_us: u64,
}

/// CPU of the container runtime's processes in the cluster's cgroup, in
/// clock ticks: their own time, and the time of the children they reaped.
#[derive(Debug, Clone, Copy, Default)]
struct RuntimeTicks {
    containerd: u64,
    containerd_children: u64,
    shims: u64,
}

impl CpuCounters {
    fn since(&self, before: &Self) -> BurstCpu {
        let ms = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1000.0;
        let ticks = |a: u64, b: u64| a.saturating_sub(b) as f64 * TICK_MS;
        BurstCpu {
            wall_ms: self.at.duration_since(before.at).as_secs_f64() * 1000.0,
            cluster_ms: ms(self.cluster_us, before.cluster_us),
            server_ms: ms(self.server_us, before.server_us),
            agents_ms: self.agents_ticks.saturating_sub(before.agents_ticks) as f64 * TICK_MS,
            containerd_ms: ticks(self.runtime.containerd, before.runtime.containerd),
            containerd_children_ms: ticks(
                self.runtime.containerd_children,
                before.runtime.containerd_children,
            ),
            shims_ms: ticks(self.runtime.shims, before.runtime.shims),
            pods_ms: ms(self.pods_us, before.pods_us),
            stalled_ms: ms(self.stalled_us, before.stalled_us),
        }
    }
}

/// A row of the CPU table: its label and how to read it from a burst.
type Share = (&'static str, fn(&BurstCpu) -> f64);

/// utime, stime, cutime and cstime of a process, in clock ticks.
fn proc_times(pid: &str) -> Option<[u64; 4]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command: utime, stime, cutime and
    // cstime are the 12th to the 15th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some([field(11)?, field(12)?, field(13)?, field(14)?])
}

/// One `key value` line of a cgroup stat file.
fn cgroup_stat(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}
const IMAGE: &str = "docker.io/kestrel/echo:0.1.0";

/// `kestrel up` in a temp dir; `kestrel down` on drop.
struct Cluster {
    kestrel: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn up(kestrel: &Path, images: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kestrel-bench-")
            .tempdir()?;
        let c = Self {
            kestrel: kestrel.to_owned(),
            dir,
        };
        let out = Command::new(kestrel)
            .args(["up", "--nodes", "2", "--data-dir"])
            .arg(c.dir.path())
            .arg("--images-dir")
            .arg(images)
            .output()
            .context("running kestrel up")?;
        ensure!(
            out.status.success(),
            "kestrel up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(c)
    }

    /// PIDs of the cluster's agents.
    fn agent_pids(&self) -> Vec<String> {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.get(1).is_some_and(|a| a == "agent") && args.iter().any(|a| a.starts_with(&dir))
            {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out
    }

    /// The cluster's cgroup (v2) directory, found from an agent's
    /// membership: `kestrel up` puts everything under one subtree.
    fn cgroup_root(&self) -> Option<PathBuf> {
        let pid = self.agent_pids().into_iter().next()?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        let top = path.trim_start_matches('/').split('/').next()?;
        Some(Path::new(CGROUP2).join(top))
    }

    /// A snapshot of the CPU counters that [`BurstCpu`] is the difference of.
    fn cpu_counters(&self) -> CpuCounters {
        let root = self.cgroup_root();
        let usage = |sub: &str| {
            root.as_ref()
                .and_then(|r| cgroup_stat(&r.join(sub).join("cpu.stat"), "usage_usec"))
                .unwrap_or(0)
        };
        let stalled = root
            .as_ref()
            .and_then(|r| std::fs::read_to_string(r.join("cpu.pressure")).ok())
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("some "))?
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("total="))?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        let agents_ticks = self
            .agent_pids()
            .iter()
            .filter_map(|pid| proc_times(pid).map(|t| t[0] + t[1]))
            .sum();
        // Every node's pods live in `<node cgroup>/pods`.
        let pods_us = root
            .as_ref()
            .and_then(|r| std::fs::read_dir(r).ok())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| cgroup_stat(&e.path().join("pods").join("cpu.stat"), "usage_usec"))
            .sum();
        CpuCounters {
            at: Instant::now(),
            cluster_us: usage(""),
            server_us: usage("server"),
            agents_ticks,
            runtime: root.as_deref().map(runtime_ticks).unwrap_or_default(),
            pods_us,
            stalled_us: stalled,
        }
    }

    /// Resident memory of each node's agent, in MiB.
    fn agent_rss_mib(&self) -> Vec<f64> {
        self.agent_pids()
            .iter()
            .filter_map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let kb = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()?;
                Some(kb / 1024.0)
            })
            .collect()
    }
}

/// The runtime's CPU among the processes in the cgroup subtree `root`:
/// containerd by its command name, the shims by theirs (the kernel cuts
/// `containerd-shim-runc-v2` to 15 characters).
fn runtime_ticks(root: &Path) -> RuntimeTicks {
    let Ok(rel) = root.strip_prefix(CGROUP2) else {
        return RuntimeTicks::default();
    };
    let prefix = format!("0::/{}/", rel.display());
    let mut out = RuntimeTicks::default();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let in_cluster = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|c| c.lines().any(|l| l.starts_with(&prefix)));
        if !in_cluster {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let Some([utime, stime, cutime, cstime]) = proc_times(&pid) else {
            continue;
        };
        match comm.trim() {
            "containerd" => {
                out.containerd += utime + stime;
                out.containerd_children += cutime + cstime;
            }
            c if c.starts_with("containerd-shim") => {
                out.shims += utime + stime + cutime + cstime;
            }
            _ => {}
        }
    }
    out
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.kestrel)
            .args(["down", "--data-dir"])
            .arg(self.dir.path())
            .output();
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "startup-bench"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "echo", "image": IMAGE, "imagePullPolicy": "IfNotPresent"}]
        }
    }))
    .unwrap_or_default()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Create `names` (at most 32 requests in flight; with `gap`, the i-th
/// create no earlier than i × gap after the first) and return each pod's
/// create-to-Ready latency as seen through a watch started beforehand.
async fn startup(api: &Api<Pod>, names: &[String], gap: Duration) -> Result<Vec<Duration>> {
    let rv = api
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut watch = api
        .watch(&WatchParams::default().labels("app=startup-bench"), &rv)
        .await?
        .boxed();
    let mut created: HashMap<String, Instant> = HashMap::new();
    let start = tokio::time::Instant::now();
    let creates = futures::stream::iter(names.iter().cloned().enumerate())
        .map(|(i, n)| {
            let api = api.clone();
            let not_before = start + gap * u32::try_from(i).unwrap_or(u32::MAX);
            async move {
                tokio::time::sleep_until(not_before).await;
                let at = Instant::now();
                api.create(&PostParams::default(), &pod(&n))
                    .await
                    .map(|_| (n, at))
            }
        })
        .buffer_unordered(32);
    let mut creates = std::pin::pin!(creates);
    let mut ready: HashMap<String, Instant> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut creating = true;
    while ready.len() < names.len() {
        tokio::select! {
            c = creates.next(), if creating => match c {
                Some(r) => { let (n, at) = r?; created.insert(n, at); }
                None => creating = false,
            },
            ev = watch.try_next() => match ev? {
                Some(WatchEvent::Added(p) | WatchEvent::Modified(p)) if is_ready(&p) => {
                    let n = p.metadata.name.clone().unwrap_or_default();
                    ready.entry(n).or_insert_with(Instant::now);
                }
                Some(WatchEvent::Error(e)) => bail!("watch error: {}", e.message),
                Some(_) => {}
                None => bail!("the watch ended"),
            },
            () = tokio::time::sleep_until(deadline) => bail!("only {} of {} pods Ready within 180 s", ready.len(), names.len()),
        }
    }
    let mut out: Vec<Duration> = names
        .iter()
        .filter_map(|n| Some(ready.get(n)?.saturating_duration_since(*created.get(n)?)))
        .collect();
    out.sort();
    Ok(out)
}

async fn clear(api: &Api<Pod>) -> Result<()> {
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("app=startup-bench"),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !api
        .list(&ListParams::default().labels("app=startup-bench"))
        .await?
        .items
        .is_empty()
    {
        ensure!(
            Instant::now() < deadline,
            "pods were not removed within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Run the benchmark.
pub async fn run_bench(options: Options) -> Result<Report> {
    let cluster = Cluster::up(&options.kestrel, &options.images)?;
    let client =
        kestrel_client::client_from(&cluster.dir.path().join("server/admin.kubeconfig")).await?;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": NS}}))?,
    )
    .await?;
    let api: Api<Pod> = Api::namespaced(client, NS);

    let mut baseline = Vec::new();
    for i in 0..options.baseline_pods {
        let l = startup(&api, &[format!("single-{i}")], Duration::ZERO).await?;
        baseline.extend(l);
        clear(&api).await?;
    }
    let (mut p50s, mut p99s, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let (mut paced50, mut paced99, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..options.reps {
        let names: Vec<String> = (0..options.pods)
            .map(|i| format!("burst-{rep}-{i}"))
            .collect();
        let before = cluster.cpu_counters();
        let lat = startup(&api, &names, Duration::ZERO).await?;
        let used = cluster.cpu_counters().since(&before);
        p50s.push(percentile(&lat, 50.0));
        p99s.push(percentile(&lat, 99.0));
        rss.push(cluster.agent_rss_mib().into_iter().fold(0.0, f64::max));
        eprintln!(
            "rep {rep}: burst p50 {:.0} ms, p99 {:.0} ms; {used:?}",
            p50s[rep], p99s[rep]
        );
        cpu.push(used);
        clear(&api).await?;
        if options.paced_rate > 0.0 {
            let names: Vec<String> = (0..options.pods)
                .map(|i| format!("paced-{rep}-{i}"))
                .collect();
            let gap = Duration::from_secs_f64(1.0 / options.paced_rate);
            let lat = startup(&api, &names, gap).await?;
            paced50.push(percentile(&lat, 50.0));
            paced99.push(percentile(&lat, 99.0));
            eprintln!(
                "rep {rep}: paced p50 {:.0} ms, p99 {:.0} ms",
                paced50[rep], paced99[rep]
            );
            clear(&api).await?;
        }
    }
    baseline.sort();
    Ok(Report {
        machine: machine(),
        kernel: command_output("uname", &["-r"]),
        date: command_output("date", &["-u", "+%Y-%m-%d"]),
        options,
        baseline_ms: Summary::of(baseline.iter().map(|d| d.as_secs_f64() * 1000.0).collect()),
        p50_ms: Summary::of(p50s),
        p99_ms: Summary::of(p99s),
        paced_p50_ms: Summary::of(paced50),
        paced_p99_ms: Summary::of(paced99),
        rss_mib: Summary::of(rss),
        cpu,
        cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        load: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    })
}

impl Report {
    /// The docs/benchmarks.md section.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from("## Pod startup\n\n");
        let _ = writeln!(
            out,
            "Run on {}, kernel {}, {}; host load average at the end {}. A real two-node cluster \
             from `kestrel up` (release build): {} kestrel-echo pods created at once (32 requests \
             in flight), scheduled onto both nodes, started through CRI on each node's containerd \
             with the image local; latency from the create call to Ready seen through a watch. \
             The paced run creates the same number at a fixed rate, as upstream's density tests \
             do. {} repetitions; each figure is the median over repetitions with [min–max]. The \
             baseline is one pod at a time on the idle cluster ({} pods, median [min–max]). CPU \
             comes from the cluster's cgroup (`cpu.stat`, `cpu.pressure`) and the agents' \
             `/proc/PID/stat`. Agent RSS is the larger of the two agents with the pods running. \
             Reproduce with `cargo xtask bench pods`.\n",
            self.machine,
            self.kernel,
            self.date,
            self.load,
            self.options.pods,
            self.options.reps,
            self.options.baseline_pods
        );
        out.push_str("| figure | value | / baseline |\n|---|---|---|\n");
        let b = self.baseline_ms.median;
        let ratio = |v: f64| {
            if b > 0.0 {
                format!("{:.1}×", v / b)
            } else {
                "—".into()
            }
        };
        let _ = writeln!(
            out,
            "| one pod alone (baseline), ms | {} | 1.0× |",
            self.baseline_ms.cell(0)
        );
        let _ = writeln!(
            out,
            "| burst p50, ms | {} | {} |",
            self.p50_ms.cell(0),
            ratio(self.p50_ms.median)
        );
        let _ = writeln!(
            out,
            "| burst p99, ms | {} | {} |",
            self.p99_ms.cell(0),
            ratio(self.p99_ms.median)
        );
        if self.options.paced_rate > 0.0 {
            let _ = writeln!(
                out,
                "| paced ({:.0} pods/s) p50, ms | {} | {} |",
                self.options.paced_rate,
                self.paced_p50_ms.cell(0),
                ratio(self.paced_p50_ms.median)
            );
            let _ = writeln!(
                out,
                "| paced ({:.0} pods/s) p99, ms | {} | {} |",
                self.options.paced_rate,
                self.paced_p99_ms.cell(0),
                ratio(self.paced_p99_ms.median)
            );
        }
        let per_pod = |f: fn(&BurstCpu) -> f64| {
            Summary::of(
                self.cpu
                    .iter()
                    .map(|c| f(c) / self.options.pods.max(1) as f64)
                    .collect(),
            )
        };
        let shares: [Share; 8] = [
            ("cluster CPU per pod in the burst", |c| c.cluster_ms),
            ("of which the control plane", |c| c.server_ms),
            ("of which the agents", |c| c.agents_ms),
            ("of which containerd", |c| c.containerd_ms),
            (
                "of which what containerd ran and reaped (the CNI plugin, shim launchers)",
                |c| c.containerd_children_ms,
            ),
            ("of which the shims and the runc runs they reaped", |c| {
                c.shims_ms
            }),
            ("of which the pods' own processes", |c| c.pods_ms),
            (
                "of which the rest (processes that ended unreaped by the above)",
                // Process times count in 10 ms ticks: clamp the rounding.
                |c| {
                    (c.cluster_ms
                        - c.server_ms
                        - c.agents_ms
                        - c.containerd_ms
                        - c.containerd_children_ms
                        - c.shims_ms
                        - c.pods_ms)
                        .max(0.0)
                },
            ),
        ];
        for (what, f) in shares {
            let _ = writeln!(out, "| {what}, ms | {} | |", per_pod(f).cell(0));
        }
        let floor = Summary::of(
            self.cpu
                .iter()
                .map(|c| c.cluster_ms / self.cores as f64)
                .collect(),
        );
        let _ = writeln!(
            out,
            "| burst CPU ÷ {} cores (the floor for the last pod), ms | {} | |",
            self.cores,
            floor.cell(0)
        );
        let stalled = Summary::of(
            self.cpu
                .iter()
                .map(|c| 100.0 * c.stalled_ms / c.wall_ms.max(1.0))
                .collect(),
        );
        let _ = writeln!(
            out,
            "| time some cluster task waited for a CPU in the burst, % | {} | |",
            stalled.cell(0)
        );
        let _ = writeln!(
            out,
            "| agent RSS with {} pods on 2 nodes, MiB | {} | |",
            self.options.pods,
            self.rss_mib.cell(1)
        );
        let held = |ok: bool| if ok { "met" } else { "not met" };
        let _ = write!(
            out,
            "\nTargets: p99 ≤ 1.5 s (upstream's SLO is p99 ≤ 5 s); agent RSS ≤ 50 MiB with 100 pods. \
             In this run: burst p99 {:.2} s ({}), ",
            self.p99_ms.median / 1000.0,
            held(self.p99_ms.median <= 1500.0),
        );
        if self.options.paced_rate > 0.0 {
            let _ = write!(
                out,
                "paced p99 {:.2} s ({}), ",
                self.paced_p99_ms.median / 1000.0,
                held(self.paced_p99_ms.median <= 1500.0),
            );
        }
        let _ = writeln!(
            out,
            "agent RSS {:.1} MiB ({}).",
            self.rss_mib.median,
            held(self.rss_mib.median <= 50.0),
        );
        out
    }
}
