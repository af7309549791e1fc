//! The scheduler benchmark: pods scheduled per second, end to end through
//! the API server, with simulated nodes and a backlog of pending pods.
//!
//! Each repetition starts a fresh API server (in this process, embedded
//! SQLite in a temp dir), creates the simulated nodes, then:
//! 1. **Baseline**: creates the pending pods in namespace `baseline` and
//!    binds them with a trivial binder (node `i % N`, no filtering or
//!    scoring) at the scheduler's bind concurrency: the API server's
//!    ceiling for pods/binding.
//! 2. **Scheduler**: creates the same number of pods in namespace `sched`,
//!    starts `kestrel scheduler` as a child process (so its RSS and CPU
//!    are its own), and watches the pods get bound. Throughput runs from
//!    the first observed binding to the last; the scheduler's start-up
//!    (list of nodes and pods) is reported apart.
//!
//! The baseline's bound pods stay, so the scheduler runs in a cluster
//! that already holds that many pods. Leases are not renewed and pods
//! are not marked Running: like upstream's scheduler_perf, this measures
//! scheduling, not kubelet traffic.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Binding, Namespace, ObjectReference, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kestrel_scheduler::sim;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use crate::report::{Summary, command_output, machine};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `kestrel` binary (for `kestrel scheduler`).
    pub kestrel: PathBuf,
    /// Node counts to run, in order.
    pub node_counts: Vec<usize>,
    /// Pending pods per repetition.
    pub pods: usize,
    /// Repetitions per node count.
    pub reps: usize,
    /// In-flight bindings, for the scheduler and the baseline alike.
    pub bind_concurrency: usize,
    /// Give up on a repetition after this long.
    pub time_limit: Duration,
    /// The scheduler's pods have a ReplicaSet as their controller, so
    /// default (system) topology spreading applies to them.
    pub replica_set: bool,
    /// Zones the simulated nodes are spread over (0: no zone label).
    pub zones: usize,
}

/// One repetition.
#[derive(Debug, Clone, Copy)]
struct Rep {
    create_pps: f64,
    baseline_pps: f64,
    sched_pps: f64,
    startup_s: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
    cpu_s: f64,
}

/// All repetitions of one node count.
#[derive(Debug, Clone)]
pub struct Row {
    nodes: usize,
    reps: Vec<Rep>,
}

/// The benchmark's results.
#[derive(Debug, Clone)]
pub struct Report {
    opts: Options,
    rows: Vec<Row>,
    started: String,
    load: String,
}

fn pod(name: &str, scheduler: &str, owner: Option<&serde_json::Value>) -> Result<Pod> {
    let mut meta = json!({"name": name, "labels": {"app": "bench"}});
    if let Some(o) = owner {
        meta["ownerReferences"] = json!([o]);
    }
    serde_json::from_value(json!({
        "metadata": meta,
        "spec": {
            "schedulerName": scheduler,
            "containers": [{"name": "c", "image": "registry.local/bench:1",
                            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}}]
        }
    }))
    .context("pod template")
}

/// A ReplicaSet `bench` selecting the pods (no controller acts on it);
/// returns the owner reference its pods carry.
async fn replica_set(
    client: &kube::Client,
    ns: &str,
    replicas: usize,
) -> Result<serde_json::Value> {
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "bench"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "bench"}},
            "template": {
                "metadata": {"labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "c", "image": "registry.local/bench:1"}]}
            }
        }
    }))?;
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &rs)
        .await
        .context("creating the ReplicaSet")?;
    Ok(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "bench",
        "uid": rs.metadata.uid.unwrap_or_default(), "controller": true
    }))
}

async fn create_pods(
    client: &kube::Client,
    ns: &str,
    n: usize,
    scheduler: &str,
    concurrency: usize,
    owned: bool,
) -> Result<f64> {
    let nss: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    nss.create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
    // No controller manager runs here to create the namespace's default
    // ServiceAccount, which the ServiceAccount admission waits for.
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    match Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).context("creating the default ServiceAccount"),
    }
    let owner = if owned {
        Some(replica_set(client, ns, n).await?)
    } else {
        None
    };
    let owner = owner.as_ref();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let p = pod(&format!("pod-{i}"), scheduler, owner)?;
                api.create(&PostParams::default(), &p)
                    .await
                    .context("creating a pod")?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// The trivial binder: pod i to node i % nodes.
async fn baseline_bind(
    client: &kube::Client,
    ns: &str,
    pods: usize,
    nodes: &sim::Nodes,
    concurrency: usize,
) -> Result<f64> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let t = Instant::now();
    futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            let node = format!("{}{}", nodes.prefix, i % nodes.count);
            async move {
                let name = format!("pod-{i}");
                let b = Binding {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                    target: ObjectReference {
                        kind: Some("Node".into()),
                        api_version: Some("v1".into()),
                        name: Some(node),
                        ..Default::default()
                    },
                };
                api.create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &b,
                )
                .await
                .context("baseline binding")?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    Ok(pods as f64 / t.elapsed().as_secs_f64())
}

/// A child process killed (by its own pid) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (VmRSS, VmHWM) in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields overall.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // /proc counts clock ticks; USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

async fn one_rep(opts: &Options, nodes: usize) -> Result<Rep> {
    let dir = tempfile::tempdir().context("tempdir")?;
    let store = kestrel_store::sqlite::SqliteStore::open(kestrel_store::sqlite::SqliteConfig::new(
        dir.path().join("state.db"),
    ))
    .await
    .context("opening the store")?;
    let mut cfg = kestrel_apiserver::Config::new(dir.path());
    cfg.bind_address = "127.0.0.1".parse()?;
    cfg.secure_port = 0;
    let server = kestrel_apiserver::ApiServer::bind(Arc::new(store), cfg)
        .await
        .context("starting the API server")?;
    let kubeconfig = server.admin_kubeconfig().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let result = measure(opts, nodes, &kubeconfig, dir.path()).await;
    let _ = stop.send(());
    let _ = serving.await;
    result
}

async fn measure(opts: &Options, nodes: usize, kubeconfig: &Path, dir: &Path) -> Result<Rep> {
    let client = kestrel_client::client_from(kubeconfig).await?;
    let sim = sim::Nodes {
        count: nodes,
        concurrency: 64,
        zones: opts.zones,
        ..sim::Nodes::default()
    };
    sim.create(&client)
        .await
        .context("creating simulated nodes")?;

    let c = opts.bind_concurrency;
    create_pods(&client, "baseline", opts.pods, "bench-baseline", c, false).await?;
    let baseline_pps = baseline_bind(&client, "baseline", opts.pods, &sim, c).await?;
    let owned = opts.replica_set;
    let create_pps =
        create_pods(&client, "sched", opts.pods, "default-scheduler", c, owned).await?;

    // Watch the pods get bound.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let watch = {
        let api: Api<Pod> = Api::namespaced(client.clone(), "sched");
        tokio::spawn(async move {
            let mut bound = HashSet::new();
            let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
            while let Some(ev) = events.next().await {
                let p = match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                    _ => continue,
                };
                let on_node = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                if on_node && bound.insert(p.metadata.name.unwrap_or_default()) {
                    let _ = tx.send(Instant::now());
                }
            }
        })
    };
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _watch = Abort(watch);

    let log = std::fs::File::create(dir.join("scheduler.log"))?;
    let started = Instant::now();
    let child = Child(
        std::process::Command::new(&opts.kestrel)
            .args([
                "--log",
                "warn",
                "scheduler",
                "--leader-elect=false",
                "--kubeconfig",
            ])
            .arg(kubeconfig)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} scheduler", opts.kestrel.display()))?,
    );
    let pid = child.0.id();
    let deadline = started + opts.time_limit;
    let (mut first, mut last, mut n) = (None, started, 0usize);
    let mut peak_rss: f64 = 0.0;
    while n < opts.pods {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(Duration::from_millis(200)), rx.recv()).await {
            Ok(Some(t)) => {
                first.get_or_insert(t);
                last = t;
                n += 1;
            }
            Ok(None) => bail!("the watch ended"),
            Err(_) if left.is_zero() => bail!(
                "only {n} of {} pods bound within {:?} (log: {})",
                opts.pods,
                opts.time_limit,
                dir.join("scheduler.log").display()
            ),
            Err(_) => {}
        }
        if n % 500 == 0 {
            peak_rss = peak_rss.max(rss_mib(pid).0);
        }
    }
    let (rss, hwm) = rss_mib(pid);
    let cpu_s = cpu_seconds(pid);
    drop(child);
    let first = first.unwrap_or(started);
    let window = last.duration_since(first).as_secs_f64().max(1e-3);
    Ok(Rep {
        create_pps,
        baseline_pps,
        sched_pps: (opts.pods.saturating_sub(1)) as f64 / window,
        startup_s: first.duration_since(started).as_secs_f64(),
        rss_mib: rss.max(peak_rss),
        peak_rss_mib: hwm,
        cpu_s,
    })
}

/// Run every node count `reps` times.
pub async fn run(opts: Options) -> Result<Report> {
    let started = jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M UTC")
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let mut rows = Vec::new();
    for &nodes in &opts.node_counts {
        let mut reps = Vec::new();
        for rep in 0..opts.reps {
            let r = one_rep(&opts, nodes)
                .await
                .with_context(|| format!("{nodes} nodes, repetition {}", rep + 1))?;
            eprintln!(
                "{nodes} nodes, rep {}: scheduler {:.0} pods/s, baseline {:.0} pods/s, start-up {:.2} s, RSS {:.0} MiB (peak {:.0}), CPU {:.1} s",
                rep + 1,
                r.sched_pps,
                r.baseline_pps,
                r.startup_s,
                r.rss_mib,
                r.peak_rss_mib,
                r.cpu_s
            );
            reps.push(r);
        }
        rows.push(Row { nodes, reps });
    }
    Ok(Report {
        opts,
        rows,
        started,
        load,
    })
}

impl Report {
    /// The "## Scheduler" section of docs/benchmarks.md.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("## Scheduler\n\n");
        let (mut pods, mut nodes, mut args) = (String::new(), String::new(), String::new());
        if self.opts.replica_set {
            pods.push_str(", owned by one ReplicaSet, so default topology spreading applies");
            args.push_str(" --replica-set");
        }
        if self.opts.zones > 0 {
            let _ = write!(nodes, ", in {} zones", self.opts.zones);
            let _ = write!(args, " --zones {}", self.opts.zones);
        }
        if !args.is_empty() {
            args.insert_str(0, " --");
        }
        let _ = writeln!(
            s,
            "Run on {}, kernel {}, {}, load average {} at the start. Each figure is the median of {} repetitions, with [min–max]. \
             {} pending pods (100m CPU, 256Mi each{pods}) per repetition; simulated nodes have 32 CPU, 256Gi, 110 pods{nodes}. \
             Reproduce with `AYA_BUILD_SKIP=1 cargo xtask bench scheduler{args}`.\n",
            machine(),
            command_output("uname", &["-r"]),
            self.started,
            self.load,
            self.opts.reps,
            self.opts.pods,
        );
        s.push_str("| nodes | scheduler pods/s | baseline binder pods/s | scheduler/baseline | pod creates/s | start-up s | scheduler RSS MiB (peak) | scheduler CPU s |\n");
        s.push_str("|---|---|---|---|---|---|---|---|\n");
        for row in &self.rows {
            let sum = |f: fn(&Rep) -> f64| Summary::of(row.reps.iter().map(f).collect());
            let ratio = Summary::of(
                row.reps
                    .iter()
                    .map(|r| r.sched_pps / r.baseline_pps)
                    .collect(),
            );
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} ({}) | {} |",
                row.nodes,
                sum(|r| r.sched_pps).cell(0),
                sum(|r| r.baseline_pps).cell(0),
                ratio.cell(2),
                sum(|r| r.create_pps).cell(0),
                sum(|r| r.startup_s).cell(2),
                sum(|r| r.rss_mib).cell(0),
                sum(|r| r.peak_rss_mib).cell(0),
                sum(|r| r.cpu_s).cell(1),
            );
        }
        let _ = write!(
            s,
            "\nThe API server runs in the benchmark process; `kestrel scheduler` runs as a child process \
             (`--leader-elect=false`), so RSS (VmRSS at the end, VmHWM in parentheses) and CPU are the scheduler's own. \
             Scheduler pods/s runs from the first observed binding to the last, as seen by a watch; start-up is from \
             spawning the process to the first binding (listing nodes and pods). The baseline binds the same number of \
             pods with a trivial binder (pod i to node i mod N, no filtering or scoring) at the same concurrency \
             ({} in flight), so scheduler/baseline is the share of the API server's binding ceiling the scheduler reaches. \
             The scheduler also writes a Scheduled Event per pod (dropped when its 1,000-deep event queue is full, as \
             upstream's broadcaster drops); the baseline writes none.\n",
            self.opts.bind_concurrency
        );
        s
    }
}
