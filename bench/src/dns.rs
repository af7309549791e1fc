//! The cluster DNS benchmark: `kestrel-dns` holding 10,000 ClusterIP
//! Services (and a headless Service of 100 ready endpoints) learnt through
//! its real watch path from an in-process API server, against Debian's
//! `nsd` serving the same records from a zone file, both driven by
//! `dnsperf` with the same query files in the same repetition.
//!
//! The DNS server runs in a child process of its own (this executable
//! started with `--serve-dns`), so its RSS is its own. Each server under
//! test is pinned to CPU 1 and dnsperf to CPU 0 with `taskset`. All
//! traffic stays on 127.0.0.1: both servers listen there on free ports,
//! Kestrel's only upstream is the benchmark's own nsd (which also serves
//! `bench.test`, the names outside the cluster), and every query names its
//! server explicitly; nothing reads the host's resolv.conf.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kestrel_apiserver::testing::TestServer;
use kube::Api;
use kube::api::PostParams;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::net::UdpSocket;

use crate::report::{Summary, command_output, machine, percentile, rss_mib};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repetitions, each on a fresh API server, DNS server and nsd.
    pub reps: usize,
    /// ClusterIP Services.
    pub services: usize,
    /// Seconds of each dnsperf run.
    pub seconds: u64,
    /// Services created one at a time for the propagation figure.
    pub propagation: usize,
}

const DOMAIN: &str = "cluster.local";
const NAMESPACE: &str = "bench";
const HEADLESS: &str = "big";
const ENDPOINTS: u8 = 100;
/// Names under `bench.test`, the zone outside the cluster.
const OUTSIDE: usize = 1_000;
/// Lines in each random query file (dnsperf loops over it).
const QUERY_LINES: usize = 100_000;
/// dnsperf's outstanding queries.
const OUTSTANDING: u32 = 100;
/// The CPU the server under test gets, and dnsperf's.
const SERVER_CPU: &str = "1";
const CLIENT_CPU: &str = "0";
/// `nice` then `taskset` before a CPU: the servers and dnsperf get their
/// core at the highest CFS weight, so that other work on a shared machine
/// (builds) costs them little; both servers alike. Each execs the next, so
/// the PID is the program's.
const PINNED: [&str; 4] = ["-n", "-19", "taskset", "-c"];
/// Every wait ends by this deadline, whatever happens.
const TIME_LIMIT: Duration = Duration::from_secs(180);
/// Queries asked one at a time for the unloaded round trip.
const SERIAL: usize = 10_000;
/// The longest a created Service may take to answer.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);

/// One query file, run against both servers.
struct Set {
    label: &'static str,
    file: &'static str,
    edns: bool,
}

const SETS: [Set; 5] = [
    Set {
        label: "A, the Service names at random",
        file: "a.txt",
        edns: false,
    },
    Set {
        label: "SRV `_http._tcp.<svc>`, at random",
        file: "srv.txt",
        edns: false,
    },
    Set {
        label: "headless name (100 A), no EDNS",
        file: "headless.txt",
        edns: false,
    },
    Set {
        label: "headless name (100 A), EDNS0 4,096 B",
        file: "headless.txt",
        edns: true,
    },
    Set {
        label: "1,000 names outside the cluster",
        file: "outside.txt",
        edns: false,
    },
];
/// The set whose peak sets the half-rate run.
const A_SET: usize = 0;
const OUTSIDE_SET: usize = 4;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

fn fqdn(svc: &str) -> String {
    format!("{svc}.{NAMESPACE}.svc.{DOMAIN}.")
}

fn outside_name(i: usize) -> String {
    format!("host-{i}.bench.test.")
}

fn outside_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn endpoint_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, 0, i + 1)
}

// ---------------------------------------------------------------------------
// The child: Kestrel's DNS server.

/// The child side: `kestrel_dns::start` against the API server of
/// `kubeconfig`, on `listen`, forwarding to `upstream`. Prints `READY` once
/// synced; then `metrics` on stdin prints the counters and `END`; end of
/// stdin ends it.
pub async fn serve(kubeconfig: &Path, listen: SocketAddr, upstream: SocketAddr) -> Result<()> {
    let client = kestrel_client::client_from(kubeconfig).await?;
    let config = kestrel_dns::Config {
        listen,
        domain: DOMAIN.to_owned(),
        ttl: kestrel_dns::DEFAULT_TTL,
        upstreams: vec![upstream],
        // dnsperf is one source address: no per-source limit.
        rate_limit: 0,
        cache_size: 10_000,
    };
    let mut running = kestrel_dns::start(client, &config).await?;
    tokio::time::timeout(Duration::from_secs(60), running.wait_synced())
        .await
        .context("the first sync took over 60 s")??;
    println!("READY");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "metrics" {
            let mut out = String::new();
            running.server.metrics().render(&mut out);
            println!("{out}END");
        }
    }
    Ok(())
}

/// The DNS server child; killed on drop.
struct DnsChild {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl DnsChild {
    async fn start(
        exe: &Path,
        kubeconfig: &Path,
        addr: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<Self> {
        let mut child = tokio::process::Command::new("nice")
            .args(PINNED)
            .arg(SERVER_CPU)
            .arg(exe)
            .arg("--serve-dns")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--upstream")
            .arg(upstream.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the DNS server")?;
        let pid = child.id().context("DNS server pid")?;
        let stdin = child.stdin.take().context("DNS server stdin")?;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        tokio::time::timeout(Duration::from_secs(90), async {
            loop {
                match lines.next_line().await? {
                    Some(l) if l == "READY" => return Ok::<_, anyhow::Error>(()),
                    Some(_) => {}
                    None => bail!("the DNS server exited before it synced"),
                }
            }
        })
        .await
        .context("the DNS server did not sync within 90 s")??;
        Ok(Self {
            child,
            pid,
            addr,
            stdin,
            lines,
        })
    }

    /// Its counters without labels, by name.
    async fn metrics(&mut self) -> Result<HashMap<String, f64>> {
        self.stdin.write_all(b"metrics\n").await?;
        self.stdin.flush().await?;
        let mut out = HashMap::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(l) = self.lines.next_line().await? {
                if l == "END" {
                    return Ok(());
                }
                if let Some((k, v)) = l.split_once(' ')
                    && !k.starts_with('#')
                {
                    out.insert(k.to_owned(), v.parse().unwrap_or(0.0));
                }
            }
            bail!("the DNS server exited")
        })
        .await
        .context("the DNS server's metrics")??;
        Ok(out)
    }
}

impl Drop for DnsChild {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

// ---------------------------------------------------------------------------
// The baseline: nsd.

/// One nsd of the benchmark's own, on 127.0.0.1 only; stopped on drop.
struct Nsd {
    child: std::process::Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Nsd {
    fn start(dir: &Path, addr: SocketAddr) -> Result<Self> {
        let d = dir.display();
        let conf = format!(
            "server:\n  ip-address: {ip}@{port}\n  do-ip6: no\n  server-count: 1\n  \
             username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  \
             zonelistfile: \"{d}/zone.list\"\n  xfrdfile: \"{d}/xfrd.state\"\n  xfrdir: \"{d}\"\n  \
             pidfile: \"{d}/nsd.pid\"\n  logfile: \"{d}/nsd.log\"\n  verbosity: 1\n  \
             hide-version: yes\n  minimal-responses: yes\n  ipv4-edns-size: 4096\n  \
             rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n\
             remote-control:\n  control-enable: no\n\
             zone:\n  name: {DOMAIN}\n  zonefile: cluster.zone\n\
             zone:\n  name: bench.test\n  zonefile: outside.zone\n",
            ip = addr.ip(),
            port = addr.port(),
        );
        let path = dir.join("nsd.conf");
        std::fs::write(&path, conf)?;
        let child = std::process::Command::new("nice")
            .args(PINNED)
            .args([SERVER_CPU, "nsd", "-d", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nsd (apt-get install nsd)")?;
        Ok(Self {
            child,
            dir: dir.to_owned(),
            addr,
        })
    }

    /// Its processes: the one started and its descendants.
    fn pids(&self) -> Vec<u32> {
        let mut all = vec![self.child.id()];
        let mut i = 0;
        while i < all.len() && all.len() < 64 {
            all.extend(children(all[i]));
            i += 1;
        }
        all
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nsd.log")).unwrap_or_default()
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        // The process in the pidfile stops the others (and reaps them) on
        // SIGTERM; signal it only if it is ours.
        let tree = self.pids();
        let main = std::fs::read_to_string(self.dir.join("nsd.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|p| tree.contains(p));
        let first = main.unwrap_or(self.child.id());
        let _ = kill(Pid::from_raw(first as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) && tree[1..].iter().all(|p| !alive(*p))
            {
                reap(&tree[1..]);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in tree.iter().filter(|p| alive(**p)) {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        let _ = self.child.wait();
        reap(&tree[1..]);
    }
}

/// Reaps those of `pids` that were orphaned to us (the benchmark is their
/// subreaper), so that no zombie of nsd's outlives it.
fn reap(pids: &[u32]) {
    for pid in pids {
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(*pid as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}

// ---------------------------------------------------------------------------
// /proc.

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// The fields of /proc/PID/stat after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"))
}

/// CPU seconds (user + system) used so far by `pids`.
fn cpu_seconds(pids: &[u32], tick: f64) -> f64 {
    pids.iter()
        .filter_map(|p| stat_fields(*p))
        .map(|f| {
            // utime and stime are fields 14 and 15 of stat, 12 and 13 here.
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (n(11) + n(12)) / tick
        })
        .sum()
}

/// A loopback port free for both UDP and TCP.
fn free_port() -> Result<SocketAddr> {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let addr = udp.local_addr()?;
        if std::net::TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no free loopback port")
}

// ---------------------------------------------------------------------------
// A small DNS client (hickory-proto's wire format).

struct Client {
    sock: UdpSocket,
    buf: Vec<u8>,
    id: u16,
}

/// What one answer looked like.
#[derive(Debug, Clone, Default)]
struct Shape {
    rcode: String,
    truncated: bool,
    answers: usize,
    additionals: usize,
    bytes: usize,
}

impl Client {
    async fn new(to: SocketAddr) -> Result<Self> {
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        sock.connect(to).await?;
        Ok(Self {
            sock,
            buf: vec![0; 65_535],
            id: 0,
        })
    }

    /// One query; `None` when nothing answered within `wait`.
    async fn ask(
        &mut self,
        name: &str,
        t: RecordType,
        edns: bool,
        wait: Duration,
    ) -> Result<Option<(Message, usize)>> {
        self.id = self.id.wrapping_add(1);
        let mut m = Message::new(self.id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name)?, t));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            m.set_edns(e);
        }
        let deadline = Instant::now() + wait;
        // Refused (nothing listening yet) counts as no answer.
        if self.sock.send(&m.to_vec()?).await.is_err() {
            return Ok(None);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.sock.recv(&mut self.buf)).await {
                Err(_) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(n)) => {
                    if let Ok(r) = Message::from_vec(&self.buf[..n])
                        && r.metadata.id == self.id
                    {
                        return Ok(Some((r, n)));
                    }
                }
            }
        }
    }

    async fn shape(&mut self, name: &str, t: RecordType, edns: bool) -> Result<Shape> {
        let (m, bytes) = self
            .ask(name, t, edns, Duration::from_secs(2))
            .await?
            .with_context(|| format!("no answer to {name} {t}"))?;
        Ok(Shape {
            rcode: m.metadata.response_code.to_str().to_owned(),
            truncated: m.metadata.truncation,
            answers: m.answers.len(),
            additionals: m.additionals.len(),
            bytes,
        })
    }

    /// Asks (with EDNS0, so that 100 records fit) until `name` has the A
    /// record `ip` (true), or `limit` passes.
    async fn until_a(&mut self, name: &str, ip: Ipv4Addr, limit: Duration) -> Result<bool> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some((m, _)) = self
                .ask(name, RecordType::A, true, Duration::from_millis(50))
                .await?
                && m.answers
                    .iter()
                    .any(|r| matches!(&r.data, RData::A(a) if a.0 == ip))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

// ---------------------------------------------------------------------------
// The cluster.

fn service(name: &str) -> Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }))?)
}

fn cluster_ip(s: &Service) -> Result<Ipv4Addr> {
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .context("a Service without a ClusterIP")
}

/// Creates `names` 16 at a time; their ClusterIPs, in order.
async fn create_services(api: &Api<Service>, names: &[String]) -> Result<Vec<Ipv4Addr>> {
    let pp = PostParams::default();
    let mut ips: Vec<(usize, Ipv4Addr)> = tokio::time::timeout(
        TIME_LIMIT,
        futures::stream::iter(names.iter().enumerate())
            .map(|(i, n)| {
                let (api, pp) = (api.clone(), pp.clone());
                async move {
                    let s = api.create(&pp, &service(n)?).await?;
                    Ok::<_, anyhow::Error>((i, cluster_ip(&s)?))
                }
            })
            .buffer_unordered(16)
            .try_collect(),
    )
    .await
    .context("creating the Services")??;
    ips.sort_by_key(|(i, _)| *i);
    Ok(ips.into_iter().map(|(_, ip)| ip).collect())
}

/// The headless Service and its one slice of ready endpoints.
async fn create_headless(client: &kube::Client) -> Result<()> {
    let pp = PostParams::default();
    let svcs: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    svcs.create(
        &pp,
        &serde_json::from_value(json!({
            "metadata": {"name": HEADLESS},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]},
        }))?,
    )
    .await?;
    let endpoints: Vec<_> = (0..ENDPOINTS)
        .map(|i| json!({"addresses": [endpoint_ip(i).to_string()], "conditions": {"ready": true}}))
        .collect();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    slices
        .create(
            &pp,
            &serde_json::from_value(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": format!("{HEADLESS}-1"),
                             "labels": {"kubernetes.io/service-name": HEADLESS}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }))?,
        )
        .await?;
    Ok(())
}

/// nsd's zone files: the same Services, SRV and headless records as
/// Kestrel's zone, and `bench.test`.
fn write_zones(dir: &Path, ips: &[Ipv4Addr]) -> Result<()> {
    let mut z = format!(
        "$ORIGIN {DOMAIN}.\n$TTL {ttl}\n@ IN SOA ns.dns hostmaster 1 7200 1800 86400 {ttl}\n\
         @ IN NS ns.dns\nns.dns IN A 127.0.0.1\n",
        ttl = kestrel_dns::DEFAULT_TTL
    );
    for (i, ip) in ips.iter().enumerate() {
        let s = format!("{}.{NAMESPACE}.svc", service_name(i));
        let _ = writeln!(z, "{s} IN A {ip}\n_http._tcp.{s} IN SRV 0 100 80 {s}");
    }
    for i in 0..ENDPOINTS {
        let _ = writeln!(z, "{HEADLESS}.{NAMESPACE}.svc IN A {}", endpoint_ip(i));
    }
    std::fs::write(dir.join("cluster.zone"), z)?;
    let mut o = String::from(
        "$ORIGIN bench.test.\n$TTL 3600\n@ IN SOA ns hostmaster 1 7200 1800 86400 300\n\
         @ IN NS ns\nns IN A 127.0.0.1\n",
    );
    for i in 0..OUTSIDE {
        let _ = writeln!(o, "host-{i} IN A {}", outside_ip(i));
    }
    std::fs::write(dir.join("outside.zone"), o)?;
    Ok(())
}

/// The query files, the same for both servers.
fn write_queries(dir: &Path, services: usize) -> Result<()> {
    // xorshift64*, seeded: the same order every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    };
    let mut a = String::new();
    let mut srv = String::new();
    let mut outside = String::new();
    for _ in 0..QUERY_LINES {
        let svc = service_name(next(services));
        let _ = writeln!(a, "{svc}.{NAMESPACE}.svc.{DOMAIN} A");
        let svc = service_name(next(services));
        let _ = writeln!(srv, "_http._tcp.{svc}.{NAMESPACE}.svc.{DOMAIN} SRV");
        let _ = writeln!(outside, "{} A", outside_name(next(OUTSIDE)));
    }
    std::fs::write(dir.join("a.txt"), a)?;
    std::fs::write(dir.join("srv.txt"), srv)?;
    std::fs::write(dir.join("outside.txt"), outside)?;
    std::fs::write(
        dir.join("headless.txt"),
        format!("{HEADLESS}.{NAMESPACE}.svc.{DOMAIN} A\n"),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// dnsperf.

/// One dnsperf run.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    qps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    /// Responses whose code was not NOERROR.
    errors: f64,
    /// Lost queries, percent.
    lost: f64,
    /// Mean response size, bytes.
    bytes: f64,
    /// The server's CPU use over the run, percent of one core.
    busy: f64,
    /// Queries answered per CPU second of the server.
    per_cpu: f64,
}

/// Runs dnsperf (pinned to the client CPU) against `addr`, counting the CPU
/// time of `pids`; `rate` caps the queries a second.
async fn dnsperf(
    dir: &Path,
    addr: SocketAddr,
    pids: &[u32],
    file: &str,
    o: &Options,
    edns: bool,
    rate: Option<f64>,
) -> Result<Run> {
    let tick: f64 = command_output("getconf", &["CLK_TCK"])
        .parse()
        .unwrap_or(100.0);
    let out_path = dir.join("dnsperf.out");
    let out = std::fs::File::create(&out_path)?;
    let mut cmd = tokio::process::Command::new("nice");
    cmd.args(PINNED)
        .args([CLIENT_CPU, "dnsperf", "-s"])
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .arg("-d")
        .arg(dir.join(file))
        .args([
            "-l",
            &o.seconds.to_string(),
            "-c",
            "1",
            "-T",
            "1",
            "-t",
            "2",
        ])
        .args(["-q", &OUTSTANDING.to_string(), "-v"]);
    if edns {
        cmd.arg("-e");
    }
    if let Some(r) = rate {
        cmd.args(["-Q", &format!("{}", r.round().max(1.0))]);
    }
    cmd.stdout(out)
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let cpu0 = cpu_seconds(pids, tick);
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .context("starting dnsperf (apt-get install dnsperf)")?;
    let output = tokio::time::timeout(
        Duration::from_secs(o.seconds + 60),
        child.wait_with_output(),
    )
    .await
    .context("dnsperf ran past its time")??;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pids, tick) - cpu0;
    ensure!(
        output.status.success(),
        "dnsperf failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&out_path)?;
    let _ = std::fs::remove_file(&out_path);
    let mut lat = Vec::new();
    let mut run = Run::default();
    let (mut completed, mut lost) = (0.0, 0.0);
    let first = |s: &str| {
        s.split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    for line in text.lines() {
        if let Some(r) = line.strip_prefix("> ") {
            let mut words = r.split_whitespace();
            if words.next() != Some("NOERROR") {
                run.errors += 1.0;
            }
            if let Some(s) = words.last().and_then(|v| v.parse::<f64>().ok()) {
                lat.push(Duration::from_secs_f64(s));
            }
        } else if let Some(v) = line.trim().strip_prefix("Queries completed:") {
            completed = first(v);
        } else if let Some(v) = line.trim().strip_prefix("Queries lost:") {
            lost = first(v);
        } else if let Some(v) = line.trim().strip_prefix("Queries per second:") {
            run.qps = first(v);
        } else if let Some(v) = line.trim().strip_prefix("Average packet size:") {
            run.bytes = v
                .rsplit_once("response")
                .map_or(0.0, |(_, b)| first(b.trim()));
        }
    }
    ensure!(completed > 0.0, "dnsperf completed no query:\n{text}");
    lat.sort();
    run.p50 = percentile(&lat, 50.0);
    run.p90 = percentile(&lat, 90.0);
    run.p99 = percentile(&lat, 99.0);
    run.lost = lost / (completed + lost) * 100.0;
    run.busy = cpu / wall * 100.0;
    // Less than a clock tick of CPU says nothing.
    run.per_cpu = if cpu > 0.0 { completed / cpu } else { 0.0 };
    Ok(run)
}

// ---------------------------------------------------------------------------
// One repetition.

/// One repetition's figures.
#[derive(Debug, Clone, Default)]
struct Rep {
    /// Per set: Kestrel, nsd.
    runs: Vec<(Run, Run)>,
    /// At half of each server's own peak A rate: the rate, and the run.
    half: [(f64, Run); 2],
    /// Per set: Kestrel's truncated responses and forwarder cache misses
    /// during the run.
    truncated: Vec<f64>,
    misses: Vec<f64>,
    hits: Vec<f64>,
    /// Create call → answer visible, sorted.
    propagation: Vec<Duration>,
    /// Kestrel's DNS server RSS (MiB): synced on an empty cluster, after
    /// the Services, after the query runs.
    rss: [f64; 3],
    /// The last Service created → all of them answering, ms.
    sync_ms: f64,
    /// Per set: Kestrel's answer, nsd's.
    shapes: Vec<(Shape, Shape)>,
    /// One query at a time (A, random names): Kestrel's round trips, nsd's,
    /// sorted.
    serial: [Vec<Duration>; 2],
}

/// Round trips of `n` A queries asked one at a time.
async fn serial(q: &mut Client, services: usize, n: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let name = fqdn(&service_name(i * 7919 % services));
        let t = Instant::now();
        q.ask(&name, RecordType::A, false, Duration::from_secs(1))
            .await?
            .with_context(|| format!("no answer to {name}"))?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

/// A set's one query, for the shape of the answers.
fn sample(set: usize) -> (String, RecordType, bool) {
    let svc = fqdn(&service_name(0));
    match set {
        0 => (svc, RecordType::A, false),
        1 => (format!("_http._tcp.{svc}"), RecordType::SRV, false),
        2 => (fqdn(HEADLESS), RecordType::A, false),
        3 => (fqdn(HEADLESS), RecordType::A, true),
        _ => (outside_name(0), RecordType::A, false),
    }
}

/// One run of set `i` against Kestrel, with its counters' change: the run,
/// truncated responses, forwarder cache misses and hits.
async fn kestrel_run(
    dir: &Path,
    dns: &mut DnsChild,
    q: &mut Client,
    i: usize,
    o: &Options,
) -> Result<(Run, f64, f64, f64)> {
    let set = &SETS[i];
    if i == OUTSIDE_SET {
        // Fill the forwarder's cache (30 s at most) just before.
        for k in 0..OUTSIDE {
            ensure!(
                q.until_a(&outside_name(k), outside_ip(k), PROPAGATION_LIMIT)
                    .await?,
                "{} not forwarded",
                outside_name(k)
            );
        }
    }
    let before = dns.metrics().await?;
    let run = dnsperf(dir, dns.addr, &[dns.pid], set.file, o, set.edns, None).await?;
    let after = dns.metrics().await?;
    let delta = |k: &str| after.get(k).unwrap_or(&0.0) - before.get(k).unwrap_or(&0.0);
    Ok((
        run,
        delta("kestrel_dns_truncated_total"),
        delta("kestrel_dns_cache_misses_total"),
        delta("kestrel_dns_cache_hits_total"),
    ))
}

async fn one_rep(exe: &Path, o: &Options, rep_no: usize) -> Result<Rep> {
    let dir = tempfile::tempdir()?;
    let api_dir = dir.path().join("api");
    std::fs::create_dir_all(&api_dir)?;
    let api = TestServer::start_in(&api_dir, |_| {}).await;
    let client = api.client().await;
    let nsd_addr = free_port()?;
    let dns_addr = free_port()?;
    let mut dns = DnsChild::start(exe, &api.kubeconfig, dns_addr, nsd_addr).await?;
    let mut rep = Rep::default();
    rep.rss[0] = rss_mib(dns.pid);

    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
    )
    .await?;
    let svcs: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let names: Vec<String> = (0..o.services).map(service_name).collect();
    let t = Instant::now();
    let ips = create_services(&svcs, &names).await?;
    create_headless(&client).await?;
    let created = t.elapsed();
    eprintln!(
        "dns bench: rep {rep_no}: {} Services created in {:.1} s",
        o.services,
        created.as_secs_f64()
    );
    let t = Instant::now();
    let mut q = Client::new(dns.addr).await?;
    for (name, ip) in names.iter().zip(&ips) {
        ensure!(
            q.until_a(&fqdn(name), *ip, TIME_LIMIT.saturating_sub(t.elapsed()))
                .await?,
            "{name} did not answer with {ip}"
        );
    }
    ensure!(
        q.until_a(
            &fqdn(HEADLESS),
            endpoint_ip(ENDPOINTS - 1),
            PROPAGATION_LIMIT
        )
        .await?,
        "the headless Service did not answer"
    );
    rep.sync_ms = ms(t.elapsed());
    rep.rss[1] = rss_mib(dns.pid);

    // Propagation: create → the answer visible, polled without pause.
    for i in 0..o.propagation {
        let name = format!("prop-{i}");
        let t = Instant::now();
        let s = svcs
            .create(&PostParams::default(), &service(&name)?)
            .await?;
        let ip = cluster_ip(&s)?;
        ensure!(
            q.until_a(&fqdn(&name), ip, PROPAGATION_LIMIT).await?,
            "{name} was not visible within {PROPAGATION_LIMIT:?}"
        );
        rep.propagation.push(t.elapsed());
    }
    rep.propagation.sort();

    // The baseline, from the same records.
    let nsd_dir = dir.path().join("nsd");
    std::fs::create_dir_all(&nsd_dir)?;
    write_zones(&nsd_dir, &ips)?;
    let nsd = Nsd::start(&nsd_dir, nsd_addr)?;
    let mut nq = Client::new(nsd.addr).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while nq
        .ask(
            &format!("ns.dns.{DOMAIN}."),
            RecordType::A,
            false,
            Duration::from_millis(100),
        )
        .await?
        .is_none()
    {
        ensure!(
            Instant::now() < deadline,
            "nsd did not answer within 30 s:\n{}",
            nsd.log()
        );
    }
    ensure!(
        nq.until_a(
            &fqdn(&names[o.services - 1]),
            ips[o.services - 1],
            PROPAGATION_LIMIT
        )
        .await?,
        "nsd does not serve the zone:\n{}",
        nsd.log()
    );
    write_queries(dir.path(), o.services)?;
    for set in 0..SETS.len() {
        let (name, t, edns) = sample(set);
        rep.shapes.push((
            q.shape(&name, t, edns).await?,
            nq.shape(&name, t, edns).await?,
        ));
    }
    rep.serial = [
        serial(&mut q, o.services, SERIAL).await?,
        serial(&mut nq, o.services, SERIAL).await?,
    ];

    for (i, set) in SETS.iter().enumerate() {
        // Alternate who goes first.
        let (k, n) = if (rep_no + i).is_multiple_of(2) {
            let k = kestrel_run(dir.path(), &mut dns, &mut q, i, o).await?;
            let n = dnsperf(
                dir.path(),
                nsd.addr,
                &nsd.pids(),
                set.file,
                o,
                set.edns,
                None,
            )
            .await?;
            (k, n)
        } else {
            let n = dnsperf(
                dir.path(),
                nsd.addr,
                &nsd.pids(),
                set.file,
                o,
                set.edns,
                None,
            )
            .await?;
            let k = kestrel_run(dir.path(), &mut dns, &mut q, i, o).await?;
            (k, n)
        };
        eprintln!(
            "dns bench: rep {rep_no}: {}: Kestrel {:.0} q/s ({:.0}% CPU), nsd {:.0} q/s ({:.0}% CPU)",
            set.label, k.0.qps, k.0.busy, n.qps, n.busy
        );
        rep.runs.push((k.0, n));
        rep.truncated.push(k.1);
        rep.misses.push(k.2);
        rep.hits.push(k.3);
    }

    let (kpeak, npeak) = (rep.runs[A_SET].0.qps, rep.runs[A_SET].1.qps);
    let file = SETS[A_SET].file;
    let k = dnsperf(
        dir.path(),
        dns.addr,
        &[dns.pid],
        file,
        o,
        false,
        Some(kpeak / 2.0),
    )
    .await?;
    let n = dnsperf(
        dir.path(),
        nsd.addr,
        &nsd.pids(),
        file,
        o,
        false,
        Some(npeak / 2.0),
    )
    .await?;
    rep.half = [(kpeak / 2.0, k), (npeak / 2.0, n)];
    rep.rss[2] = rss_mib(dns.pid);
    drop(nsd);
    drop(dns);
    api.stop().await;
    Ok(rep)
}

// ---------------------------------------------------------------------------
// The run and its report.

/// The results.
#[derive(Debug, Clone)]
pub struct Report {
    machine: String,
    kernel: String,
    date: String,
    load: (String, String),
    versions: (String, String),
    options: Options,
    reps: Vec<Rep>,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs the benchmark; `exe` is this benchmark's own executable, which
/// serves DNS when started with `--serve-dns`.
pub async fn run_bench(exe: &Path, options: Options) -> Result<Report> {
    ensure!(options.services > 0, "at least one Service");
    for tool in ["dnsperf", "nsd", "taskset"] {
        ensure!(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing: cargo xtask setup (or apt-get install dnsperf nsd)"
        );
    }
    // nsd's server processes outlive its main one by a moment: be their
    // reaper rather than leave zombies to init.
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    let load = load_average();
    let mut reps = Vec::new();
    for i in 0..options.reps.max(1) {
        reps.push(one_rep(exe, &options, i).await?);
    }
    let last_word = |cmd: &str| {
        let out = command_output("sh", &["-c", cmd]);
        out.split_whitespace()
            .last()
            .unwrap_or("unknown")
            .to_owned()
    };
    let nsd_version = format!("nsd {}", last_word("nsd -v 2>&1 | head -1"));
    let dnsperf_version = format!(
        "dnsperf {}",
        last_word("dnsperf -H 2>&1 | grep -m1 Version")
    );
    Ok(Report {
        machine: machine(),
        kernel: command_output("uname", &["-r"]),
        date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        load: (load, load_average()),
        versions: (nsd_version, dnsperf_version),
        options,
        reps,
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**NOT met**" }
}

impl Report {
    fn summary(&self, f: impl Fn(&Rep) -> f64) -> Summary {
        Summary::of(self.reps.iter().map(f).collect())
    }

    /// Kestrel's queries/s over nsd's on the A set (median of the
    /// per-repetition ratios).
    pub fn a_ratio(&self) -> f64 {
        self.summary(|r| r.runs[A_SET].0.qps / r.runs[A_SET].1.qps.max(1e-9))
            .median
    }

    /// The docs/benchmarks.md section.
    pub fn to_markdown(&self) -> String {
        let o = &self.options;
        let mut s = String::from("## DNS\n\n");
        let _ = writeln!(
            s,
            "Run on {}, kernel {}, {}; load average {} at the start, {} at the end (the machine \
             was shared with other builds). {} repetition(s), each on a fresh in-process API \
             server (SQLite), a fresh `kestrel-dns` and a fresh nsd; each figure is the median \
             over repetitions with [min–max], each ratio the median of the per-repetition \
             ratios. {}; {}. Reproduce with `cargo xtask bench dns` (`-- --quick` for a smoke \
             run).\n",
            self.machine,
            self.kernel,
            self.date,
            self.load.0,
            self.load.1,
            self.reps.len(),
            self.versions.0,
            self.versions.1,
        );
        let _ = writeln!(
            s,
            "Kestrel's DNS server (`kestrel_dns::start`: watch + zone + UDP/TCP sockets, rate \
             limit off, 10,000-answer forwarder cache) runs in a child process of its own, fed \
             through its real watch path: {} ClusterIP Services (one named port each) and a \
             headless Service with one EndpointSlice of {ENDPOINTS} ready endpoints, created \
             through the API server. The baseline is NSD, the authoritative-only server of \
             NLnet Labs, serving the same records (A, SRV, the headless name's {ENDPOINTS} A) \
             from a zone file, with `server-count: 1`, `minimal-responses: yes` (no NS/glue \
             on positive answers, as Kestrel) and `ipv4-edns-size: 4096` (Kestrel honours a \
             client's EDNS size up to 4,096 B). NSD over Knot or unbound: authoritative only \
             and precompiled answers like Kestrel's zone (unbound's local-data is a \
             resolver's side path), and one server process pins to one core without \
             thread tuning. Each server is pinned to CPU {SERVER_CPU}, dnsperf to CPU \
             {CLIENT_CPU} (`taskset`), all three at `nice -n -19` so that the other builds \
             on the machine take little from them; everything is on 127.0.0.1. dnsperf: one client, \
             {OUTSTANDING} queries outstanding, {} s a run, `-v` for each query's latency \
             (p50/p99 from those); the same query files for both servers ({QUERY_LINES} \
             lines, names drawn at random with a fixed seed). Names outside the cluster are \
             `host-N.bench.test`, served by the same nsd: Kestrel answers them from its \
             forwarder's cache (filled just before the run; nsd is its only upstream), nsd \
             authoritatively.\n",
            o.services, o.seconds
        );

        s.push_str("### Queries per second on one core\n\n");
        s.push_str(
            "`CPU` is the server's CPU time over the run's wall time (100% = its core \
             saturated; below that dnsperf's core is the limit, not the server). `q per CPU-s` \
             is queries answered per CPU second of the server: its capacity on one core \
             whatever limits the run.\n\n",
        );
        s.push_str(
            "| queries | Kestrel q/s | nsd q/s | ratio | Kestrel CPU % | nsd CPU % | Kestrel q per CPU-s | nsd q per CPU-s | ratio |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for (i, set) in SETS.iter().enumerate() {
            let k = |f: fn(&Run) -> f64| self.summary(move |r| f(&r.runs[i].0));
            let n = |f: fn(&Run) -> f64| self.summary(move |r| f(&r.runs[i].1));
            let ratio = |f: fn(&Run) -> f64| {
                self.summary(move |r| f(&r.runs[i].0) / f(&r.runs[i].1).max(1e-9))
                    .median
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2}× | {} | {} | {} | {} | {:.2}× |",
                set.label,
                k(|r| r.qps).cell(0),
                n(|r| r.qps).cell(0),
                ratio(|r| r.qps),
                k(|r| r.busy).cell(0),
                n(|r| r.busy).cell(0),
                k(|r| r.per_cpu).cell(0),
                n(|r| r.per_cpu).cell(0),
                ratio(|r| r.per_cpu),
            );
        }
        s.push_str("\n### Latency at that peak, and the answers\n\n");
        s.push_str(
            "Latency in ms, dnsperf's (send → response, with 100 queries in flight: mostly \
             queueing). The answer columns are one query of the set asked by the benchmark \
             itself: response code, TC flag, answer and additional records, bytes.\n\n",
        );
        s.push_str(
            "| queries | Kestrel p50 | Kestrel p99 | nsd p50 | nsd p99 | lost % K / N | Kestrel answer | nsd answer |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        let shape = |x: &Shape| {
            format!(
                "{}{}, {} ans + {} add, {} B",
                x.rcode,
                if x.truncated { " TC" } else { "" },
                x.answers,
                x.additionals,
                x.bytes
            )
        };
        for (i, set) in SETS.iter().enumerate() {
            let k = |f: fn(&Run) -> f64| self.summary(move |r| f(&r.runs[i].0));
            let n = |f: fn(&Run) -> f64| self.summary(move |r| f(&r.runs[i].1));
            let (ks, ns) = &self.reps[0].shapes[i];
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.2} / {:.2} | {} | {} |",
                set.label,
                k(|r| r.p50).cell(2),
                k(|r| r.p99).cell(2),
                n(|r| r.p50).cell(2),
                n(|r| r.p99).cell(2),
                k(|r| r.lost).max,
                n(|r| r.lost).max,
                shape(ks),
                shape(ns),
            );
        }
        let trunc = self
            .summary(|r| r.truncated[2] / (r.runs[2].0.qps * o.seconds as f64).max(1.0) * 100.0);
        let misses = self.summary(|r| r.misses[OUTSIDE_SET]);
        let hits = self.summary(|r| r.hits[OUTSIDE_SET]);
        let _ = writeln!(
            s,
            "\nThe headless name's {ENDPOINTS} A records (about 1.6 KB) do not fit 512 bytes: \
             without EDNS both servers answer with TC set and no records (a real client then \
             retries over TCP; dnsperf does not), so that row measures the truncation path — \
             Kestrel counted {:.0}% of that run's queries as truncated. With EDNS0 (dnsperf's \
             4,096-byte buffer) both send the whole answer over UDP. In the outside-names runs \
             Kestrel's forwarder cache answered {} queries and missed {} (median per run).\n",
            trunc.median,
            hits.cell(0),
            misses.cell(0),
        );

        s.push_str("### Latency at 50% of the peak (A queries, `dnsperf -Q`)\n\n");
        s.push_str("Each server at half of its own peak A rate of the same repetition.\n\n");
        s.push_str(
            "| server | rate, q/s | p50, ms | p90, ms | p99, ms | lost % |\n|---|---|---|---|---|---|\n",
        );
        for (j, label) in ["Kestrel", "nsd"].into_iter().enumerate() {
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {:.2} |",
                self.summary(|r| r.half[j].0).cell(0),
                self.summary(|r| r.half[j].1.p50).cell(3),
                self.summary(|r| r.half[j].1.p90).cell(3),
                self.summary(|r| r.half[j].1.p99).cell(3),
                self.summary(|r| r.half[j].1.lost).max,
            );
        }
        let _ = writeln!(
            s,
            "\nThe tail of dnsperf's latency moves with whatever else runs on this shared \
             machine (the other builds), for both servers alike. As a check of the server's \
             own latency, {SERIAL} A queries asked one at a time by the benchmark (its client \
             unpinned; round trip in ms):\n\n\
             | server | p50 | p90 | p99 |\n|---|---|---|---|"
        );
        for (j, label) in ["Kestrel", "nsd"].into_iter().enumerate() {
            let p = |x: f64| self.summary(move |r| percentile(&r.serial[j], x)).cell(3);
            let _ = writeln!(s, "| {label} | {} | {} | {} |", p(50.0), p(90.0), p(99.0));
        }

        let p50 = self.summary(|r| percentile(&r.propagation, 50.0));
        let p99 = self.summary(|r| percentile(&r.propagation, 99.0));
        let max = self.summary(|r| percentile(&r.propagation, 100.0));
        let rss = |i: usize| self.summary(move |r| r.rss[i]);
        let growth = self.summary(|r| r.rss[1] - r.rss[0]);
        let _ = writeln!(
            s,
            "\n### Propagation and memory\n\n\
             Propagation: {} Services created one at a time through the API server (with the \
             {} others in place); the clock starts just before the create call and stops when \
             Kestrel's server answers the new name with its ClusterIP, asked over UDP in a \
             loop without pause (each query waits at most 50 ms for its answer). RSS is the \
             DNS server process's VmRSS: synced on a cluster without the Services, then once \
             all {} answer (checking them one by one took {} ms after the last create returned, \
             mostly the sequential queries themselves), \
             then after the query runs (forwarder cache full).\n\n\
             | figure | value |\n|---|---|\n\
             | propagation p50, ms | {} |\n| propagation p99, ms | {} |\n| propagation max, ms | {} |\n\
             | RSS synced, empty cluster, MiB | {} |\n| RSS with {} Services, MiB | {} |\n\
             | RSS growth for {} Services, MiB | {} |\n| RSS after the query runs, MiB | {} |\n",
            o.propagation,
            o.services,
            o.services,
            self.summary(|r| r.sync_ms).cell(0),
            p50.cell(1),
            p99.cell(1),
            max.cell(1),
            rss(0).cell(1),
            o.services,
            rss(1).cell(1),
            o.services,
            growth.cell(1),
            rss(2).cell(1),
        );

        let qps = self.a_ratio();
        let cpu_ratio = self
            .summary(|r| r.runs[A_SET].0.per_cpu / r.runs[A_SET].1.per_cpu.max(1e-9))
            .median;
        let half_p99 = self.summary(|r| r.half[0].1.p99).median;
        let _ = writeln!(
            s,
            "### Targets\n\n| target | value | |\n|---|---|---|\n\
             | ≥ 1.0× nsd's A queries/s on one core | {qps:.2}× (per CPU second: {cpu_ratio:.2}×) | {} |\n\
             | p99 < 1 ms at 50% of peak | {half_p99:.3} ms | {} |\n\
             | propagation p99 < 100 ms | {:.1} ms | {} |\n\
             | RSS growth ≤ 20 MiB for {} Services | {:.1} MiB | {} |",
            verdict(qps >= 1.0 && cpu_ratio >= 1.0),
            verdict(half_p99 < 1.0),
            p99.median,
            verdict(p99.median < 100.0),
            o.services,
            growth.median,
            verdict(growth.median <= 20.0),
        );
        let per_cpu: Vec<(f64, &str)> = SETS
            .iter()
            .enumerate()
            .map(|(i, set)| {
                let r = self.summary(|r| r.runs[i].0.per_cpu / r.runs[i].1.per_cpu.max(1e-9));
                (r.median, set.label)
            })
            .collect();
        let worst = per_cpu
            .iter()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map_or("", |w| w.1);
        let _ = writeln!(
            s,
            "\nPer CPU second of its core, Kestrel answers {} of what nsd does; it loses most \
             on \"{worst}\".",
            per_cpu
                .iter()
                .map(|(r, l)| format!("{r:.2}× ({l})"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        s
    }
}
