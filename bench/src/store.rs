//! The store benchmark: both backends, same scenarios, same run.
//!
//! Scenarios: create and update throughput and latency with 1 and 64
//! concurrent writers, a 10,000-key range (whole and paginated), and watch
//! delivery latency to 100 watchers. Each scenario runs `reps` times; the
//! report gives the median with min and max, and the embedded/etcd ratio.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::StreamExt;
use kestrel_store::etcd::{EtcdConfig, EtcdStore};
use kestrel_store::sqlite::{SqliteConfig, SqliteStore};
use kestrel_store::testing::EtcdCluster;
use kestrel_store::{RangeOptions, Store};

use crate::report::{Summary, command_output, machine, percentile};

/// A backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The embedded SQLite store.
    Sqlite,
    /// A single-member etcd started for the run.
    Etcd,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Etcd => "etcd",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repetitions of each scenario.
    pub reps: usize,
    /// Writes per repetition with one writer.
    pub single_writer_ops: usize,
    /// Writes per repetition with `writers` writers.
    pub concurrent_ops: usize,
    /// Concurrent writers.
    pub writers: usize,
    /// Keys in the range scenario.
    pub range_keys: usize,
    /// Page size of the paginated range.
    pub page: usize,
    /// Watchers in the watch scenario.
    pub watchers: usize,
    /// Events written per repetition of the watch scenario.
    pub watch_events: usize,
    /// Backends to run, in order.
    pub backends: Vec<Backend>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reps: 5,
            single_writer_ops: 500,
            concurrent_ops: 6400,
            writers: 64,
            range_keys: 10_000,
            page: 500,
            watchers: 100,
            watch_events: 200,
            backends: vec![Backend::Sqlite, Backend::Etcd],
        }
    }
}

/// One scenario on one backend.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub scenario: String,
    /// On which backend.
    pub backend: Backend,
    /// Operations per second (for ranges: ranges per second).
    pub throughput: Summary,
    /// Per-operation latency median, in milliseconds.
    pub p50_ms: Summary,
    /// Per-operation latency 99th percentile, in milliseconds.
    pub p99_ms: Summary,
}

/// The results of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// CPU model and count.
    pub machine: String,
    /// `uname -r`.
    pub kernel: String,
    /// When the run started (UTC).
    pub date: String,
    /// The 1/5/15-minute load averages when the run started: the machine is
    /// shared, and other work skews the figures.
    pub load: String,
    /// The benchmark's nice value (etcd, its child, inherits it).
    pub nice: String,
    /// The options used.
    pub options: Options,
    /// One row per scenario and backend.
    pub rows: Vec<Row>,
}

/// One repetition's figures.
struct Sample {
    throughput: f64,
    p50: f64,
    p99: f64,
}

fn sample(ops: usize, wall: Duration, mut latencies: Vec<Duration>) -> Sample {
    latencies.sort();
    Sample {
        throughput: ops as f64 / wall.as_secs_f64(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
    }
}

fn row(scenario: &str, backend: Backend, samples: Vec<Sample>) -> Row {
    Row {
        scenario: scenario.to_owned(),
        backend,
        throughput: Summary::of(samples.iter().map(|s| s.throughput).collect()),
        p50_ms: Summary::of(samples.iter().map(|s| s.p50).collect()),
        p99_ms: Summary::of(samples.iter().map(|s| s.p99).collect()),
    }
}

/// A value of the size of a small Kubernetes object.
fn value() -> Bytes {
    Bytes::from(vec![b'x'; 512])
}

#[derive(Clone, Copy)]
enum WriteKind {
    Create,
    Update,
}

/// `writers` tasks share `total` writes under `prefix`; returns throughput
/// and per-write latency.
async fn writes(
    store: &Arc<dyn Store>,
    prefix: &str,
    writers: usize,
    total: usize,
    kind: WriteKind,
) -> Result<Sample> {
    let each = total / writers;
    // Updates go to one key per writer, created beforehand (not timed), so
    // that compare-and-swap never conflicts and every write counts.
    let mut revs = Vec::with_capacity(writers);
    if let WriteKind::Update = kind {
        for w in 0..writers {
            revs.push(store.create(&format!("{prefix}w{w}"), value()).await?);
        }
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let store = store.clone();
        let prefix = prefix.to_owned();
        let mut rev = revs.get(w).copied().unwrap_or(0);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(each);
            for i in 0..each {
                let t = Instant::now();
                match kind {
                    WriteKind::Create => {
                        store.create(&format!("{prefix}w{w}-{i}"), value()).await?;
                    }
                    WriteKind::Update => {
                        rev = store.update(&format!("{prefix}w{w}"), value(), rev).await?;
                    }
                }
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.extend(t.await.context("writer task")??);
    }
    Ok(sample(each * writers, started.elapsed(), latencies))
}

/// Times reading every key under `prefix`, whole (`page` 0) or paginated.
async fn range_once(
    store: &Arc<dyn Store>,
    prefix: &str,
    page: usize,
    keys: usize,
) -> Result<Sample> {
    let started = Instant::now();
    let mut seen = 0;
    let mut options = RangeOptions {
        limit: page,
        ..Default::default()
    };
    loop {
        let r = store.range(prefix, options.clone()).await?;
        seen += r.items.len();
        if !r.more {
            break;
        }
        options.start_after = r.items.last().map(|kv| kv.key.clone());
        options.revision = Some(r.revision);
    }
    if seen != keys {
        bail!("range returned {seen} keys, expected {keys}");
    }
    let took = started.elapsed();
    Ok(sample(1, took, vec![took]))
}

/// `watchers` watchers on one prefix; a single writer writes `events` keys,
/// one every 2 ms. Latency is from the start of each write to its delivery
/// to each watcher, so it includes the commit.
async fn watch_latency(
    store: &Arc<dyn Store>,
    prefix: &str,
    watchers: usize,
    events: usize,
) -> Result<Sample> {
    let mut tasks = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        let mut stream = store.watch(prefix, 0).await?;
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(events);
            while got.len() < events {
                let next = tokio::time::timeout(Duration::from_secs(60), stream.next()).await;
                let event = match next {
                    Ok(Some(Ok(e))) => e,
                    Ok(Some(Err(e))) => return Err(anyhow::Error::new(e).context("watch failed")),
                    Ok(None) => bail!("watch ended"),
                    Err(_) => bail!("watch stalled"),
                };
                let i: usize = event
                    .kv
                    .key
                    .strip_prefix(&prefix)
                    .context("key outside the prefix")?
                    .parse()
                    .context("key number")?;
                got.push((i, Instant::now()));
            }
            Ok(got)
        }));
    }
    let mut sent = Vec::with_capacity(events);
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let started = Instant::now();
    for i in 0..events {
        tick.tick().await;
        sent.push(Instant::now());
        store.create(&format!("{prefix}{i}"), value()).await?;
    }
    let mut latencies = Vec::with_capacity(events * watchers);
    for t in tasks {
        for (i, at) in t.await.context("watcher task")?? {
            latencies.push(at.saturating_duration_since(sent[i]));
        }
    }
    Ok(sample(events * watchers, started.elapsed(), latencies))
}

async fn bench_backend(
    backend: Backend,
    store: Arc<dyn Store>,
    opts: &Options,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let reps = opts.reps.max(1);
    let scenarios: [(&str, usize, usize, WriteKind); 4] = [
        (
            "create, 1 writer",
            1,
            opts.single_writer_ops,
            WriteKind::Create,
        ),
        (
            "create, 64 writers",
            opts.writers,
            opts.concurrent_ops,
            WriteKind::Create,
        ),
        (
            "update, 1 writer",
            1,
            opts.single_writer_ops,
            WriteKind::Update,
        ),
        (
            "update, 64 writers",
            opts.writers,
            opts.concurrent_ops,
            WriteKind::Update,
        ),
    ];
    for (s, (name, writers, ops, kind)) in scenarios.into_iter().enumerate() {
        let mut samples = Vec::with_capacity(reps);
        for rep in 0..reps {
            let prefix = format!("/bench/{s}/{rep}/");
            samples.push(
                writes(&store, &prefix, writers, ops, kind)
                    .await
                    .with_context(|| format!("{name} on {}", backend.name()))?,
            );
        }
        eprintln!("{}: {name}: done", backend.name());
        rows.push(row(name, backend, samples));
    }

    // The range keys are written once, with 64 writers, untimed.
    let prefix = "/bench/range/";
    let (keys, writers) = (opts.range_keys, opts.writers.max(1));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..keys).step_by(writers) {
                store.create(&format!("{prefix}{i:06}"), value()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("range loader")??;
    }
    for (name, page) in [
        (format!("range {keys} keys, one request"), 0),
        (
            format!("range {keys} keys, pages of {}", opts.page),
            opts.page,
        ),
    ] {
        let mut samples = Vec::with_capacity(reps);
        for _ in 0..reps {
            samples.push(range_once(&store, prefix, page, keys).await?);
        }
        eprintln!("{}: {name}: done", backend.name());
        rows.push(row(&name, backend, samples));
    }

    let name = format!("watch delivery to {} watchers", opts.watchers);
    let mut samples = Vec::with_capacity(reps);
    for rep in 0..reps {
        let prefix = format!("/bench/watch/{rep}/");
        samples.push(watch_latency(&store, &prefix, opts.watchers, opts.watch_events).await?);
    }
    eprintln!("{}: {name}: done", backend.name());
    rows.push(row(&name, backend, samples));
    Ok(())
}

/// Runs every scenario on every requested backend.
pub async fn run(opts: Options) -> Result<Report> {
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    // Field 19 of /proc/self/stat, counted after the parenthesised name,
    // which may itself contain spaces.
    let nice = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.to_owned()))
        .and_then(|rest| rest.split_whitespace().nth(16).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    let mut rows = Vec::new();
    for backend in opts.backends.clone() {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().context("temporary directory")?;
                let store: Arc<dyn Store> = Arc::new(
                    SqliteStore::open(SqliteConfig::new(dir.path().join("bench.db")))
                        .await
                        .context("opening the sqlite store")?,
                );
                bench_backend(backend, store, &opts, &mut rows).await?;
            }
            Backend::Etcd => {
                let cluster = EtcdCluster::start(1).await;
                let store: Arc<dyn Store> = Arc::new(
                    EtcdStore::connect(EtcdConfig::new(cluster.endpoints()))
                        .await
                        .context("connecting to etcd")?,
                );
                bench_backend(backend, store, &opts, &mut rows).await?;
            }
        }
    }
    Ok(Report {
        machine: machine(),
        kernel: command_output("uname", &["-r"]),
        date,
        load,
        nice,
        options: opts,
        rows,
    })
}

impl Report {
    /// The report as the "Store" section of `docs/benchmarks.md`.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let o = &self.options;
        let _ = writeln!(out, "## Store\n");
        let _ = writeln!(
            out,
            "Run on {}, kernel {}, {}, load average {} at the start, nice {}. Each figure is the median of {} repetitions, \
             with [min–max]. etcd is {} (one member, started by the benchmark, default \
             fsync), measured in the same run. Values are 512 bytes. Reproduce with \
             `cargo xtask bench store` (or `cargo run --release -p kestrel-bench --bin \
             store-bench`).\n",
            self.machine,
            self.kernel,
            self.date,
            self.load,
            self.nice,
            o.reps,
            command_output(kestrel_store::testing::ETCD, &["--version"])
                .lines()
                .next()
                .unwrap_or("etcd"),
        );
        let _ = writeln!(
            out,
            "| scenario | backend | ops/s | p50 ms | p99 ms | sqlite/etcd ops/s |\n|---|---|---|---|---|---|"
        );
        for r in &self.rows {
            // The watch scenario is paced by its writer, so its throughput
            // says nothing; compare its latency columns instead.
            let ratio = match r.backend {
                Backend::Sqlite if r.scenario.starts_with("watch") => String::new(),
                Backend::Sqlite => self
                    .rows
                    .iter()
                    .find(|e| e.backend == Backend::Etcd && e.scenario == r.scenario)
                    .map(|e| format!("{:.1}×", r.throughput.median / e.throughput.median))
                    .unwrap_or_default(),
                Backend::Etcd => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.backend.name(),
                r.throughput.cell(0),
                r.p50_ms.cell(2),
                r.p99_ms.cell(2),
                ratio
            );
        }
        let _ = writeln!(
            out,
            "\nWrites per repetition: {} with 1 writer, {} with {} writers. For ranges, \
             ops/s is whole ranges per second. For the watch, {} events are written one \
             every 2 ms by one writer, and latency runs from the start of each write to \
             its delivery to each of the {} watchers, so it includes the commit; ops/s \
             there is deliveries per second.",
            o.single_writer_ops, o.concurrent_ops, o.writers, o.watch_events, o.watchers
        );
        out
    }
}
