//! The traffic: netperf-style workloads written here, so every path sees
//! exactly the same bytes.
//!
//! - `TCP_RR`: one connection per flow, 1-byte request, 1-byte response,
//!   back to back; transactions/s and the latency of each.
//! - `TCP_CRR`: per transaction a new connection: connect, 1-byte request,
//!   1-byte response, close; connections/s.
//! - `TCP_STREAM`: one connection per flow, 64 KiB writes for the whole
//!   period; the server counts what it read and reports it back after the
//!   client's FIN, so the rate is what arrived.
//! - `UDP_RR`: 1-byte datagram request/response on a connected socket.
//!
//! The server runs as threads of the benchmark process with its sockets in
//! the server pod's namespace; every client runs as a child process (the
//! benchmark re-executed with `client`) that first moves itself into the
//! client cgroup, where Kestrel's socket hooks act, and into the client's
//! namespace.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use kestrel_testkit::Netns;

use super::services::ports;

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Workload {
    #[value(name = "tcp_rr")]
    TcpRr,
    #[value(name = "tcp_crr")]
    TcpCrr,
    #[value(name = "tcp_stream")]
    TcpStream,
    #[value(name = "udp_rr")]
    UdpRr,
}

impl Workload {
    pub fn label(self) -> &'static str {
        match self {
            Self::TcpRr => "TCP_RR",
            Self::TcpCrr => "TCP_CRR",
            Self::TcpStream => "TCP_STREAM",
            Self::UdpRr => "UDP_RR",
        }
    }

    /// The server pod port it talks to.
    pub fn target_port(self) -> u16 {
        match self {
            Self::TcpRr | Self::TcpCrr => ports::RR,
            Self::TcpStream => ports::STREAM,
            Self::UdpRr => ports::UDP,
        }
    }

    /// The measured Service's port for it.
    pub fn service_port(self) -> u16 {
        match self {
            Self::TcpRr | Self::TcpCrr => ports::SVC_RR,
            Self::TcpStream => ports::SVC_STREAM,
            Self::UdpRr => ports::SVC_UDP,
        }
    }

    /// The measured Service's NodePort for it.
    pub fn node_port(self) -> u16 {
        match self {
            Self::TcpRr | Self::TcpCrr => ports::NODE_RR,
            Self::TcpStream => ports::NODE_STREAM,
            Self::UdpRr => ports::NODE_UDP,
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Self::TcpRr => "tcp_rr",
            Self::TcpCrr => "tcp_crr",
            Self::TcpStream => "tcp_stream",
            Self::UdpRr => "udp_rr",
        }
    }
}

/// What one client run measured (all flows together).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Transactions (RR), connections (CRR), or 0 (STREAM).
    pub ops: u64,
    /// Bytes that arrived (STREAM).
    pub bytes: u64,
    /// The measured period.
    pub secs: f64,
    /// Median and 99th percentile latency of one transaction, µs.
    pub p50_us: f64,
    pub p99_us: f64,
    /// Failed transactions (timeouts, refused connections).
    pub errors: u64,
}

impl Sample {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Gbit/s.
    pub fn gbps(&self) -> f64 {
        if self.secs > 0.0 {
            self.bytes as f64 * 8.0 / self.secs / 1e9
        } else {
            0.0
        }
    }

    fn to_line(self) -> String {
        format!(
            "RESULT {} {} {} {} {} {}",
            self.ops, self.bytes, self.secs, self.p50_us, self.p99_us, self.errors
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut f = line.strip_prefix("RESULT ")?.split(' ');
        Some(Self {
            ops: f.next()?.parse().ok()?,
            bytes: f.next()?.parse().ok()?,
            secs: f.next()?.parse().ok()?,
            p50_us: f.next()?.parse().ok()?,
            p99_us: f.next()?.parse().ok()?,
            errors: f.next()?.parse().ok()?,
        })
    }
}

// ------------------------------------------------------------------ server

/// The server pod's listeners; stopped when dropped.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    tcp: Vec<TcpListener>,
    /// Held for the server's lifetime (the threads poll `stop`).
    _udp: Vec<UdpSocket>,
}

/// A connection idle this long is dropped (a flow whose FIN was lost
/// must not hold a server thread forever).
const IDLE: Duration = Duration::from_secs(20);

/// Acceptor threads per TCP listener; each serves its connection inline
/// (no thread start per connection muddies TCP_CRR), and there are many
/// more of them than concurrent flows.
const ACCEPTORS: usize = 8;

impl Server {
    /// TCP listeners on 0.0.0.0 (all of the pod's addresses) and one UDP
    /// socket per address in `ips` (so that replies leave from the address
    /// the request went to, as the NAT paths need), in `ns`. Every TCP
    /// connection is served inline by one of a pool of acceptor threads.
    pub fn start(ns: &Netns, ips: &[std::net::Ipv4Addr]) -> Result<Self> {
        let (rr, stream, udp) = ns.enter(|| -> Result<_> {
            let udp = ips
                .iter()
                .map(|ip| UdpSocket::bind((*ip, ports::UDP)).context("binding the UDP port"))
                .collect::<Result<Vec<_>>>()?;
            Ok((
                TcpListener::bind(("0.0.0.0", ports::RR)).context("binding the RR port")?,
                TcpListener::bind(("0.0.0.0", ports::STREAM)).context("binding the STREAM port")?,
                udp,
            ))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        for (listener, handler) in [
            (&rr, serve_echo as fn(TcpStream)),
            (&stream, serve_sink as fn(TcpStream)),
        ] {
            for _ in 0..ACCEPTORS {
                let listener = listener.try_clone()?;
                let s = stop.clone();
                std::thread::spawn(move || {
                    while !s.load(Ordering::Relaxed) {
                        if let Ok((conn, _)) = listener.accept() {
                            let _ = conn.set_read_timeout(Some(IDLE));
                            handler(conn);
                        }
                    }
                });
            }
        }
        for u in &udp {
            u.set_read_timeout(Some(Duration::from_millis(100)))?;
            let u = u.try_clone()?;
            let s = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(&buf[..n], peer);
                    }
                }
            });
        }
        Ok(Self {
            stop,
            tcp: vec![rr, stream],
            _udp: udp,
        })
    }
}

/// Echoes 1-byte requests until EOF.
fn serve_echo(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut b = [0u8; 64];
    loop {
        match conn.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&b[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads until EOF, then reports how many bytes arrived (8 bytes, LE).
fn serve_sink(mut conn: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    let _ = conn.write_all(&total.to_le_bytes());
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Shutting the sockets down wakes the blocked accepts and receives.
        for l in &self.tcp {
            let _ = nix::sys::socket::shutdown(l.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
        // The UDP threads poll the stop flag (shutting a UDP socket down
        // makes std's recv_from panic on the empty address).
    }
}

// ------------------------------------------------------------------ client

/// One client run: where, what, how long.
#[derive(Clone, Debug)]
pub struct ClientRun<'a> {
    /// The namespace to run in.
    pub netns: &'a str,
    /// The cgroup to join first (where the socket hooks act).
    pub cgroup: Option<&'a Path>,
    pub workload: Workload,
    pub target: SocketAddrV4,
    pub flows: usize,
    pub secs: f64,
}

/// Runs the client as a child process of `exe` and parses its result. A
/// client that outlives its period by 10 s is killed (by its PID) and the
/// run fails.
pub fn run_client(exe: &Path, run: &ClientRun<'_>) -> Result<Sample> {
    let mut cmd = Command::new(exe);
    cmd.arg("client")
        .args(["--netns", &format!("/run/netns/{}", run.netns)])
        .args(["--workload", run.workload.arg()])
        .args(["--target", &run.target.to_string()])
        .args(["--flows", &run.flows.to_string()])
        .args(["--secs", &run.secs.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    if let Some(cg) = run.cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    let mut child = cmd.spawn().context("starting the client")?;
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().context("stdout")?));
    let stderr = drain(Box::new(child.stderr.take().context("stderr")?));
    let deadline = Instant::now() + Duration::from_secs_f64(run.secs) + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for the client")? {
            break Some(status);
        }
        if Instant::now() > deadline || super::stopping() {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        None => bail!(
            "client {:?} to {} hung and was killed: {}",
            run.workload,
            run.target,
            stderr.trim()
        ),
        Some(st) if !st.success() => bail!(
            "client {:?} to {} failed ({st}): {}",
            run.workload,
            run.target,
            stderr.trim()
        ),
        Some(_) => stdout
            .lines()
            .find_map(Sample::parse)
            .with_context(|| format!("no result from the client: {stdout}")),
    }
}

/// The client process's body: join the cgroup, enter the namespace, run
/// `flows` threads for `secs`, print one `RESULT` line.
pub fn client_main(
    netns: &Path,
    cgroup: Option<&Path>,
    workload: Workload,
    target: SocketAddrV4,
    flows: usize,
    secs: f64,
) -> Result<()> {
    if let Some(cg) = cgroup {
        std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining {}", cg.display()))?;
    }
    // Still single-threaded: the flows' threads inherit the namespace.
    let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("entering the netns")?;
    let period = Duration::from_secs_f64(secs);
    // Connections and warm-up first; every flow then starts together.
    let ready = Arc::new(std::sync::Barrier::new(flows.max(1)));
    let handles: Vec<_> = (0..flows.max(1))
        .map(|_| {
            let ready = ready.clone();
            std::thread::spawn(move || flow(workload, target, &ready, period))
        })
        .collect();
    let mut total = Sample::default();
    let mut lat: Vec<u32> = Vec::new();
    for h in handles {
        let (s, mut l) = h.join().map_err(|_| anyhow::anyhow!("a flow panicked"))??;
        total.ops += s.ops;
        total.bytes += s.bytes;
        total.errors += s.errors;
        total.secs = total.secs.max(s.secs);
        lat.append(&mut l);
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        f64::from(lat[rank.clamp(1, lat.len()) - 1]) / 1000.0
    };
    total.p50_us = pct(50.0);
    total.p99_us = pct(99.0);
    println!("{}", total.to_line());
    Ok(())
}

fn ns_of(d: Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

/// One flow: connects and warms up, waits for the other flows at `ready`,
/// runs for `period`. Returns its sample and per-transaction latencies in ns.
fn flow(
    workload: Workload,
    target: SocketAddrV4,
    ready: &std::sync::Barrier,
    period: Duration,
) -> Result<(Sample, Vec<u32>)> {
    let mut lat = Vec::with_capacity(1 << 16);
    let mut s = Sample::default();
    let timeout = Duration::from_secs(2);
    match workload {
        Workload::TcpRr => {
            let mut c = TcpStream::connect_timeout(&target.into(), timeout)
                .with_context(|| format!("connecting to {target}"))?;
            c.set_nodelay(true)?;
            c.set_read_timeout(Some(timeout))?;
            let mut b = [7u8; 1];
            // Warm up (neighbour resolution, caches) before the clock starts.
            let warm = Instant::now();
            for _ in 0..100 {
                if warm.elapsed() > WARMUP {
                    break;
                }
                c.write_all(&b)?;
                c.read_exact(&mut b)?;
            }
            let start = go(ready);
            let end = start + period;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                c.write_all(&b)?;
                c.read_exact(&mut b)?;
                lat.push(ns_of(t.elapsed()));
            }
            s.ops = lat.len() as u64;
            s.secs = start.elapsed().as_secs_f64();
        }
        Workload::TcpCrr => {
            let start = go(ready);
            let end = start + period;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                match crr_once(target, timeout) {
                    Ok(()) => lat.push(ns_of(t.elapsed())),
                    Err(_) => s.errors += 1,
                }
            }
            s.ops = lat.len() as u64;
            s.secs = start.elapsed().as_secs_f64();
        }
        Workload::TcpStream => {
            let mut c = TcpStream::connect_timeout(&target.into(), timeout)
                .with_context(|| format!("connecting to {target}"))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            c.set_write_timeout(Some(Duration::from_secs(3)))?;
            let buf = vec![0x5au8; 64 * 1024];
            let start = go(ready);
            let end = start + period;
            while Instant::now() < end {
                c.write_all(&buf)?;
            }
            c.shutdown(Shutdown::Write)?;
            let mut n = [0u8; 8];
            c.read_exact(&mut n).context("reading the byte count")?;
            s.bytes = u64::from_le_bytes(n);
            if s.bytes == 0 {
                bail!("the server received none of the stream's bytes");
            }
            s.secs = start.elapsed().as_secs_f64();
        }
        Workload::UdpRr => {
            let u = UdpSocket::bind("0.0.0.0:0")?;
            u.connect(target)?;
            u.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut b = [7u8; 1];
            let warm = Instant::now();
            for _ in 0..100 {
                if warm.elapsed() > WARMUP {
                    break;
                }
                u.send(&b)?;
                let _ = u.recv(&mut b);
            }
            let start = go(ready);
            let end = start + period;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                u.send(&b)?;
                match u.recv(&mut b) {
                    Ok(1) => lat.push(ns_of(t.elapsed())),
                    _ => s.errors += 1,
                }
            }
            s.ops = lat.len() as u64;
            s.secs = start.elapsed().as_secs_f64();
        }
    }
    Ok((s, lat))
}

fn crr_once(target: SocketAddrV4, timeout: Duration) -> Result<()> {
    let mut c = TcpStream::connect_timeout(&target.into(), timeout)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(timeout))?;
    let mut b = [7u8; 1];
    c.write_all(&b)?;
    c.read_exact(&mut b)?;
    Ok(())
}

/// The longest warm-up before a flow's period.
const WARMUP: Duration = Duration::from_millis(500);

/// Waits for every flow to be ready; returns when the period starts.
fn go(ready: &std::sync::Barrier) -> Instant {
    ready.wait();
    Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_round_trip() {
        let s = Sample {
            ops: 12,
            bytes: 34,
            secs: 1.5,
            p50_us: 20.25,
            p99_us: 80.5,
            errors: 1,
        };
        assert_eq!(Sample::parse(&s.to_line()), Some(s));
        assert_eq!(s.rate(), 8.0);
    }
}
