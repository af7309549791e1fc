//! Socket-level load balancing end to end: the real cgroup hooks attached to
//! a child cgroup, clients in that cgroup and in a fresh network namespace,
//! real listeners behind a ClusterIP that no interface holds, and service
//! entries written into the pinned maps the way the agent's sync loop does.
//!
//! Cgroup membership is per process, so every client runs in a child
//! process: this test binary re-executed with `KESTREL_SOCKLB_HELPER` set
//! (see [`helper_process`]), which moves itself into the cgroup and the
//! namespace before it opens a socket.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuHashMap};
use kestrel_dataplane::{
    Dataplane, Error, LoadOptions, MapSizes, SOCK_LB_PROGRAMS, SockLbStatus, detach_sock_lb,
    sock_lb_status,
};
use kestrel_ebpf_common::{
    lb::{
        AffinityKey, AffinityValue, Backend, RevNat, ServiceKey, ServiceValue, backend_flags,
        scope, svc_flags,
    },
    map_names,
};
use kestrel_testkit::{
    BpfFs, CGROUP2_ROOT, Cgroup, MountedTempDir, Netns, privileged_test_can_run, unique_name,
};

const HELPER_ENV: &str = "KESTREL_SOCKLB_HELPER";
const ARGS_ENV: &str = "KESTREL_SOCKLB_ARGS";
const CGROUP_ENV: &str = "KESTREL_SOCKLB_CGROUP";
const NETNS_ENV: &str = "KESTREL_SOCKLB_NETNS";
const RESULT: &str = "RESULT ";

const VIP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
const TCP: u8 = 6;
const UDP: u8 = 17;
const BACKEND_PORT: u16 = 8080;
const CONNECTIONS: usize = 3_000;
const HELPER_DEADLINE: Duration = Duration::from_secs(120);

/// Small maps: several tests load in parallel, and hash maps are
/// preallocated. Every load over one bpffs must use the same sizes.
fn test_options(pin_dir: &Path) -> LoadOptions {
    let mut options = LoadOptions::new(pin_dir);
    options.sizes = MapSizes {
        services: 1024,
        backends: 256,
        rev_nat: 256,
        sock_rev_nat: 16_384,
        affinity: 256,
        conntrack: 1024,
        ipcache: 1024,
        policy_endpoints: 64,
        policy: 1024,
    };
    options
}

fn can_run(test: &str) -> bool {
    let built = (
        kestrel_dataplane::object_is_built(),
        "the eBPF object was not built (AYA_BUILD_SKIP=1)",
    );
    let cgroup2 = (
        Path::new(CGROUP2_ROOT).join("cgroup.procs").exists(),
        "no cgroup2 hierarchy at /sys/fs/cgroup/unified",
    );
    privileged_test_can_run(test, &[built, cgroup2])
}

/// Backend `i` listens on 127.0.0.(11 + i): loopback addresses of the
/// test's namespace, distinct so the client can tell them apart.
fn backend_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 11 + i)
}

fn backend_id(i: u8) -> u32 {
    u32::from(i) + 1
}

// ---------------------------------------------------------------- fixture

/// One test's world: a namespace, a child cgroup, a bpffs. On drop the
/// pinned links are detached first, then servers stop, then the namespace,
/// cgroup (killing any helper left in it) and bpffs go.
struct World {
    servers: Vec<Server>,
    ns: Netns,
    cgroup: Cgroup,
    bpffs: BpfFs,
}

impl World {
    fn new() -> Self {
        let name = unique_name("ksl");
        Self {
            servers: Vec::new(),
            ns: Netns::new(name.clone()),
            cgroup: Cgroup::new(name),
            bpffs: BpfFs::new(),
        }
    }

    /// A world with three backends serving and the hooks attached.
    fn attached() -> (Self, Dataplane) {
        let mut world = Self::new();
        world.start_backends(3);
        let dataplane = world.load_and_attach();
        (world, dataplane)
    }

    fn pin_dir(&self) -> &Path {
        self.bpffs.path()
    }

    fn cgroup_dir(&self) -> PathBuf {
        self.cgroup.v2_dir()
    }

    fn load(&self) -> Dataplane {
        Dataplane::load(&test_options(self.pin_dir())).expect("loading the dataplane")
    }

    /// Loads the object and attaches the hooks to this world's cgroup.
    fn load_and_attach(&self) -> Dataplane {
        let mut dataplane = self.load();
        dataplane
            .attach_sock_lb(&self.cgroup_dir())
            .expect("attaching the socket hooks");
        dataplane
    }

    fn status(&self) -> SockLbStatus {
        sock_lb_status(self.pin_dir(), &self.cgroup_dir()).expect("reading the hooks' status")
    }

    fn maps(&self) -> Maps {
        Maps::open(self.pin_dir())
    }

    /// Starts a TCP and a UDP server on each of `n` backend addresses.
    fn start_backends(&mut self, n: u8) {
        for i in 0..n {
            let server = self.ns.enter(|| Server::start(i));
            self.servers.push(server);
        }
    }

    /// A helper process in this world's namespace; in its cgroup too when
    /// `in_cgroup`.
    fn helper(&self, mode: &str, args: &[String], in_cgroup: bool) -> Command {
        let mut command = Command::new(std::env::current_exe().expect("test binary path"));
        command
            .args([
                "--exact",
                "helper_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, mode)
            .env(ARGS_ENV, args.join(" "))
            .env(NETNS_ENV, format!("/run/netns/{}", self.ns.name))
            .env_remove(CGROUP_ENV);
        if in_cgroup {
            command.env(CGROUP_ENV, self.cgroup_dir());
        }
        command
    }

    /// Runs a helper to completion and returns its result lines.
    fn run(&self, mode: &str, args: &[String], in_cgroup: bool) -> Results {
        run_to_end(self.helper(mode, args, in_cgroup))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Err(e) = detach_sock_lb(self.pin_dir()) {
            eprintln!("detaching the socket hooks: {e}");
        }
        for server in self.servers.drain(..) {
            server.stop(&self.ns);
        }
    }
}

/// The pinned service maps, opened by path as any process can.
struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    rev_nat: HashMap<MapData, u16, RevNat>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    conns: PerCpuHashMap<MapData, u32, u64>,
}

/// Opens a map pinned under `dir` as the typed map `T`.
fn open_pinned<T: TryFrom<Map, Error = MapError>>(dir: &Path, name: &str) -> T {
    let data = MapData::from_pin(dir.join(name)).unwrap_or_else(|e| panic!("opening {name}: {e}"));
    let map = Map::from_map_data(data).unwrap_or_else(|e| panic!("reading {name}: {e}"));
    T::try_from(map).unwrap_or_else(|e| panic!("typing {name}: {e}"))
}

impl Maps {
    fn open(dir: &Path) -> Self {
        Self {
            services: open_pinned(dir, map_names::SERVICES),
            backends: open_pinned(dir, map_names::BACKENDS),
            rev_nat: open_pinned(dir, map_names::REV_NAT),
            affinity: open_pinned(dir, map_names::AFFINITY),
            conns: open_pinned(dir, map_names::BACKEND_CONNS),
        }
    }

    fn set_backend(&mut self, i: u8, port: u16, proto: u8, flags: u8) {
        let backend = Backend {
            addr_be: u32::from(backend_addr(i)).to_be(),
            port_be: port.to_be(),
            proto,
            flags,
        };
        self.backends
            .insert(backend_id(i), backend, 0)
            .expect("writing a backend");
    }

    /// Writes one frontend in the internal scope, as the sync loop would:
    /// backends, then slots, then the master entry that makes them live.
    fn set_service(&mut self, svc: &Svc, backends: &[u8]) {
        for &i in backends {
            self.set_backend(i, svc.backend_port, svc.proto, 0);
        }
        let frontend = svc.key(0);
        for (slot, &i) in (1u16..).zip(backends) {
            let value = ServiceValue {
                backend_id: backend_id(i),
                rev_nat_id: svc.rev_nat_id,
                ..ServiceValue::default()
            };
            self.services
                .insert(svc.key(slot), value, 0)
                .expect("writing a slot");
        }
        self.rev_nat
            .insert(
                svc.rev_nat_id,
                RevNat {
                    addr_be: frontend.addr_be,
                    port_be: frontend.port_be,
                    _pad: 0,
                },
                0,
            )
            .expect("writing reverse NAT");
        let master = ServiceValue {
            backend_id: 0,
            count: u16::try_from(backends.len()).expect("few backends"),
            rev_nat_id: svc.rev_nat_id,
            flags: svc.flags,
            _pad: 0,
            affinity_timeout_s: svc.affinity_timeout_s,
        };
        self.services
            .insert(frontend, master, 0)
            .expect("writing the master entry");
    }

    /// New connections counted for backend `i`, summed over CPUs.
    fn connections(&self, i: u8) -> u64 {
        match self.conns.get(&backend_id(i), 0) {
            Ok(per_cpu) => per_cpu.iter().sum(),
            Err(MapError::KeyNotFound) => 0,
            Err(e) => panic!("reading BACKEND_CONNS: {e}"),
        }
    }
}

/// A service frontend in the test.
struct Svc {
    vip: Ipv4Addr,
    port: u16,
    proto: u8,
    backend_port: u16,
    rev_nat_id: u16,
    flags: u16,
    affinity_timeout_s: u32,
}

impl Svc {
    fn tcp(vip: Ipv4Addr, port: u16, rev_nat_id: u16) -> Self {
        Self {
            vip,
            port,
            proto: TCP,
            backend_port: BACKEND_PORT,
            rev_nat_id,
            flags: 0,
            affinity_timeout_s: 0,
        }
    }

    fn key(&self, slot: u16) -> ServiceKey {
        ServiceKey {
            addr_be: u32::from(self.vip).to_be(),
            port_be: self.port.to_be(),
            proto: self.proto,
            scope: scope::INTERNAL,
            slot,
            _pad: [0; 2],
        }
    }

    fn target(&self) -> String {
        SocketAddrV4::new(self.vip, self.port).to_string()
    }
}

// ---------------------------------------------------------------- servers

/// A backend: a TCP listener that sends its index, then echoes, and a UDP
/// socket that answers every datagram with its index.
struct Server {
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts backend `i`; call inside the test's namespace.
    fn start(i: u8) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = SocketAddrV4::new(backend_addr(i), BACKEND_PORT);
        let tcp = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        let udp = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding udp {addr}: {e}"));
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("udp timeout");
        let tcp_stop = Arc::clone(&stop);
        let tcp_thread = std::thread::spawn(move || {
            for conn in tcp.incoming() {
                if tcp_stop.load(Ordering::Relaxed) {
                    return;
                }
                match conn {
                    Ok(conn) => {
                        std::thread::spawn(move || serve_tcp(conn, i));
                    }
                    Err(e) => panic!("accept on backend {i}: {e}"),
                }
            }
        });
        let udp_stop = Arc::clone(&stop);
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !udp_stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&[i], from);
                }
            }
        });
        Self {
            addr,
            stop,
            threads: vec![tcp_thread, udp_thread],
        }
    }

    /// Stops the threads; `ns` is the namespace the server runs in, where
    /// one last connection wakes the blocked accept.
    fn stop(self, ns: &Netns) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = ns.enter(|| TcpStream::connect(self.addr));
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn serve_tcp(mut conn: TcpStream, i: u8) {
    let _ = conn.set_nonblocking(false);
    if conn.write_all(&[i]).is_err() {
        return;
    }
    let mut buf = [0u8; 64];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        if conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------- helpers

/// A helper's `RESULT key value...` lines, by key.
#[derive(Debug, Default)]
struct Results(BTreeMap<String, Vec<String>>);

impl Results {
    fn add(&mut self, line: &str) {
        if let Some(rest) = result_of(line) {
            let mut words = rest.split_whitespace().map(str::to_owned);
            if let Some(key) = words.next() {
                self.0.insert(key, words.collect());
            }
        }
    }

    #[track_caller]
    fn get(&self, key: &str) -> &[String] {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("helper printed no {key:?}: {self:?}"))
    }

    #[track_caller]
    fn num(&self, key: &str, index: usize) -> u64 {
        self.get(key)[index]
            .parse()
            .unwrap_or_else(|e| panic!("{key}[{index}] in {self:?}: {e}"))
    }

    /// The per-backend counts printed as `backends c0 c1 c2`.
    fn backends(&self) -> [u64; 3] {
        self.backends_of("backends")
    }

    fn backends_of(&self, key: &str) -> [u64; 3] {
        [0, 1, 2].map(|i| self.num(key, i))
    }
}

/// The result in one line of a helper's output. The test harness prints
/// `test helper_process ... ` without a newline before the test's own
/// output, so a result may start mid-line.
fn result_of(line: &str) -> Option<&str> {
    line.find(RESULT).map(|at| &line[at + RESULT.len()..])
}

/// Kills a helper by PID on drop, whatever happened.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a helper to the end with a deadline and collects its results.
fn run_to_end(mut command: Command) -> Results {
    let mut child = Reaped(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning a helper"),
    );
    let lines = line_reader(child.0.stdout.take().expect("stdout"));
    let mut stderr = child.0.stderr.take().expect("stderr");
    let deadline = Instant::now() + HELPER_DEADLINE;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("waiting for a helper") {
            break status;
        }
        assert!(Instant::now() < deadline, "helper {command:?} timed out");
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut results = Results::default();
    let mut output = String::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        results.add(&line);
        output.push_str(&line);
        output.push('\n');
    }
    let mut errors = String::new();
    let _ = stderr.read_to_string(&mut errors);
    assert!(
        status.success(),
        "helper {command:?} failed: {status}\n{output}\n{errors}"
    );
    results
}

/// Forwards a child's stdout lines over a channel, so reads can time out.
fn line_reader(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// A long-running helper the test talks to line by line.
struct Interactive {
    child: Reaped,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Interactive {
    fn spawn(mut command: Command) -> Self {
        let mut child = Reaped(
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawning a helper"),
        );
        let stdin = child.0.stdin.take().expect("stdin");
        let lines = line_reader(child.0.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The next result line, within a deadline.
    #[track_caller]
    fn next(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("the helper answers in time");
            if let Some(rest) = result_of(&line) {
                return rest.split_whitespace().map(str::to_owned).collect();
            }
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("writing to the helper");
        self.stdin.flush().expect("flushing to the helper");
    }

    /// SIGKILL, as an agent crash would be.
    fn kill_9(mut self) {
        self.child.0.kill().expect("kill -9");
        let status = self.child.0.wait().expect("reaping");
        assert!(!status.success(), "it was killed: {status}");
    }
}

/// The entry point of re-executed helpers; a no-op in a normal test run.
#[test]
fn helper_process() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    let args: Vec<String> = std::env::var(ARGS_ENV)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // Sockets take the cgroup of the process that creates them, so join it
    // before anything else; the whole process moves.
    if let Some(cgroup) = std::env::var_os(CGROUP_ENV) {
        let procs = Path::new(&cgroup).join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .unwrap_or_else(|e| panic!("joining {}: {e}", procs.display()));
    }
    if let Some(netns) = std::env::var_os(NETNS_ENV) {
        let file = std::fs::File::open(&netns).expect("opening the netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("entering the netns");
    }
    let targets = || -> Vec<SocketAddr> {
        args[0]
            .split(',')
            .map(|t| t.parse().expect("target address"))
            .collect()
    };
    let target = || targets()[0];
    let count = || -> usize { args[1].parse().expect("count") };
    match mode.as_str() {
        "tcp" => client_tcp(&targets(), count()),
        "udp" => client_udp(target(), count()),
        "tcp-fail" => client_tcp_fail(target()),
        "tcp-hold" => client_tcp_hold(target()),
        "agent" => agent(Path::new(&args[0]), Path::new(&args[1])),
        other => panic!("unknown helper mode {other}"),
    }
}

fn result(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{RESULT}{line}").expect("stdout");
    out.flush().expect("stdout");
}

/// `n` connections, to each of `targets` in turn: which backend answered
/// each, and whether getpeername showed the target.
fn client_tcp(targets: &[SocketAddr], n: usize) {
    let mut backends = [0u64; 3];
    let mut peer_is_target = 0;
    let start = Instant::now();
    for &target in targets.iter().cycle().take(n) {
        let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {target}: {e}"));
        let mut id = [0u8; 1];
        conn.read_exact(&mut id)
            .expect("reading the backend's index");
        backends[usize::from(id[0])] += 1;
        if conn.peer_addr().expect("getpeername") == target {
            peer_is_target += 1;
        }
    }
    let elapsed = start.elapsed();
    result(format_args!(
        "backends {} {} {}",
        backends[0], backends[1], backends[2]
    ));
    result(format_args!("peer_is_target {peer_is_target}"));
    result(format_args!("elapsed_ns {}", elapsed.as_nanos()));
}

/// `n` request/response exchanges with `target` over a connected socket,
/// then `n` over an unconnected one: which backends answered, and whether
/// every reply (and getpeername) showed `target`.
fn client_udp(target: SocketAddr, n: usize) {
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let exchange = |socket: &UdpSocket, connected: bool, backends: &mut [u64; 3]| -> u64 {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut from_target = 0;
        for i in 0..n {
            let request = [i as u8];
            if connected {
                socket.send(&request).expect("send");
            } else {
                socket.send_to(&request, target).expect("send_to");
            }
            let mut reply = [0u8; 8];
            let (len, from) = socket.recv_from(&mut reply).expect("a reply");
            assert_eq!(len, 1);
            backends[usize::from(reply[0])] += 1;
            if from == target {
                from_target += 1;
            }
        }
        from_target
    };

    let connected = UdpSocket::bind(any).expect("bind");
    connected.connect(target).expect("connect");
    let peer = connected.peer_addr().expect("getpeername");
    let mut backends = [0u64; 3];
    let from_target = exchange(&connected, true, &mut backends);
    result(format_args!("connected_peer {peer}"));
    result(format_args!("connected_from_target {from_target}"));
    result(format_args!(
        "connected_backends {} {} {}",
        backends[0], backends[1], backends[2]
    ));

    let unconnected = UdpSocket::bind(any).expect("bind");
    let mut backends = [0u64; 3];
    let from_target = exchange(&unconnected, false, &mut backends);
    result(format_args!("unconnected_from_target {from_target}"));
    result(format_args!(
        "unconnected_backends {} {} {}",
        backends[0], backends[1], backends[2]
    ));
}

/// One connection attempt: its error number, or where it got.
fn client_tcp_fail(target: SocketAddr) {
    match TcpStream::connect_timeout(&target, Duration::from_secs(3)) {
        Ok(mut conn) => {
            let mut id = [0u8; 1];
            let _ = conn.read_exact(&mut id);
            result(format_args!("connected {}", id[0]));
        }
        Err(e) => result(format_args!("error {}", e.raw_os_error().unwrap_or(-1))),
    }
}

/// One long-lived connection: prints its backend, then for every line on
/// stdin sends a byte and prints whether it came back.
fn client_tcp_hold(target: SocketAddr) {
    let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {target}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut id = [0u8; 1];
    conn.read_exact(&mut id)
        .expect("reading the backend's index");
    let peer = conn.peer_addr().expect("getpeername");
    result(format_args!("connected {} {peer}", id[0]));
    for (n, line) in std::io::stdin().lines().enumerate() {
        if line.is_err() {
            break;
        }
        let byte = [n as u8];
        let echoed = conn
            .write_all(&byte)
            .and_then(|()| {
                let mut back = [0u8; 1];
                conn.read_exact(&mut back).map(|()| back)
            })
            .map(|back| back == byte);
        match echoed {
            Ok(true) => result(format_args!("echo ok")),
            Ok(false) => result(format_args!("echo wrong")),
            Err(e) => result(format_args!("echo failed {e}")),
        }
    }
}

/// A stand-in for the agent: loads, attaches, and waits to be killed.
fn agent(pin_dir: &Path, cgroup: &Path) {
    let mut dataplane = Dataplane::load(&test_options(pin_dir)).expect("agent: loading");
    dataplane.attach_sock_lb(cgroup).expect("agent: attaching");
    result(format_args!("attached"));
    // Blocks until the test kills this process.
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
}

/// The one backend that answered, asserting there was only one.
#[track_caller]
fn only_backend(counts: [u64; 3]) -> u8 {
    let used: Vec<_> = (0u8..3).filter(|&i| counts[usize::from(i)] > 0).collect();
    assert_eq!(used.len(), 1, "one backend only: {counts:?}");
    used[0]
}

fn assert_even(counts: [u64; 3], total: u64, what: &str) {
    let even = total as f64 / 3.0;
    for (i, &c) in counts.iter().enumerate() {
        assert!(
            (c as f64 - even).abs() <= 0.15 * even,
            "{what}: backend {i} got {c} of {total}, outside ±15% of {even:.0}: {counts:?}"
        );
    }
    assert_eq!(counts.iter().sum::<u64>(), total, "{what}: {counts:?}");
}

// ---------------------------------------------------------------- tests

#[test]
fn tcp_connects_to_a_cluster_ip_spread_evenly_and_getpeername_shows_it() {
    if !can_run("tcp_connects_to_a_cluster_ip_spread_evenly_and_getpeername_shows_it") {
        return;
    }
    let (world, mut dataplane) = World::attached();
    assert!(world.status().is_active(), "{:?}", world.status());
    let svc = Svc::tcp(VIP, 80, 1);
    let mut maps = world.maps();
    maps.set_service(&svc, &[0, 1, 2]);

    let n = CONNECTIONS.to_string();
    let through = world.run("tcp", &[svc.target(), n.clone()], true);
    let counts = through.backends();
    assert_even(counts, CONNECTIONS as u64, "connects to the ClusterIP");
    assert_eq!(
        through.num("peer_is_target", 0),
        CONNECTIONS as u64,
        "getpeername returns the ClusterIP on every connection"
    );
    for i in 0..3 {
        assert_eq!(
            maps.connections(i),
            counts[usize::from(i)],
            "BACKEND_CONNS counts backend {i}'s new connections"
        );
    }

    report_costs(&world, &mut dataplane, &svc);
}

/// Measures, for the record (nothing is asserted): the kernel's run time
/// of each hook per call (BPF_ENABLE_STATS), and the connect rate through
/// the ClusterIP against straight to the backends, from inside the cgroup
/// (the hook runs and finds no service) and from outside (no hook). The
/// rates are medians of interleaved rounds, since the machine is shared.
fn report_costs(world: &World, dataplane: &mut Dataplane, svc: &Svc) {
    const ROUNDS: usize = 5;
    const PER_ROUND: usize = 400;
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enabling bpf stats");
    let run_stats = |dataplane: &mut Dataplane| -> Vec<(Duration, u64)> {
        SOCK_LB_PROGRAMS
            .iter()
            .map(|&name| {
                let info = dataplane
                    .ebpf_mut()
                    .program(name)
                    .expect("program")
                    .info()
                    .expect("program info");
                (info.run_time(), info.run_count())
            })
            .collect()
    };
    let before = run_stats(dataplane);
    let direct = (0..3)
        .map(|i| SocketAddrV4::new(backend_addr(i), BACKEND_PORT).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let n = PER_ROUND.to_string();
    let modes = [
        ("via the ClusterIP", svc.target(), true),
        ("direct, in the cgroup", direct.clone(), true),
        ("direct, outside the cgroup", direct, false),
    ];
    let mut rates = vec![Vec::new(); modes.len()];
    for _ in 0..ROUNDS {
        for ((_, target, in_cgroup), rates) in modes.iter().zip(&mut rates) {
            let r = world.run("tcp", &[target.clone(), n.clone()], *in_cgroup);
            rates.push(PER_ROUND as f64 / (r.num("elapsed_ns", 0) as f64 / 1e9));
        }
    }
    let after = run_stats(dataplane);
    drop(stats);
    for ((name, b), a) in SOCK_LB_PROGRAMS.iter().zip(&before).zip(&after) {
        let calls = a.1 - b.1;
        let ns = (a.0 - b.0).as_nanos() as f64 / calls.max(1) as f64;
        eprintln!("{name}: {calls} calls, {ns:.0} ns per call");
    }
    for ((what, _, _), mut rates) in modes.iter().zip(rates) {
        rates.sort_by(f64::total_cmp);
        eprintln!(
            "connect+read+getpeername+close {what}: median {:.0}/s (min {:.0}, max {:.0}) over {ROUNDS} rounds of {PER_ROUND}",
            rates[ROUNDS / 2],
            rates[0],
            rates[ROUNDS - 1]
        );
    }
}

#[test]
fn udp_replies_come_from_the_cluster_ip() {
    if !can_run("udp_replies_come_from_the_cluster_ip") {
        return;
    }
    let (world, _dataplane) = World::attached();
    let svc = Svc {
        proto: UDP,
        ..Svc::tcp(VIP, 53, 2)
    };
    world.maps().set_service(&svc, &[0, 1, 2]);

    let n = 20;
    let r = world.run("udp", &[svc.target(), n.to_string()], true);
    assert_eq!(
        r.get("connected_peer"),
        [svc.target()],
        "getpeername on UDP"
    );
    assert_eq!(r.num("connected_from_target", 0), n, "connected recv_from");
    assert_eq!(
        r.num("unconnected_from_target", 0),
        n,
        "unconnected recv_from"
    );
    // One socket talks to one backend, connected or not.
    only_backend(r.backends_of("connected_backends"));
    only_backend(r.backends_of("unconnected_backends"));
}

#[test]
fn session_affinity_keeps_a_client_on_one_backend() {
    if !can_run("session_affinity_keeps_a_client_on_one_backend") {
        return;
    }
    let (world, _dataplane) = World::attached();
    let svc = Svc {
        flags: svc_flags::AFFINITY,
        affinity_timeout_s: 600,
        ..Svc::tcp(VIP, 80, 3)
    };
    let mut maps = world.maps();
    maps.set_service(&svc, &[0, 1, 2]);

    let r = world.run("tcp", &[svc.target(), "60".into()], true);
    let first = only_backend(r.backends());
    let entries: Vec<_> = maps
        .affinity
        .iter()
        .map(|entry| entry.expect("reading AFFINITY"))
        .filter(|(key, _)| key.rev_nat_id == svc.rev_nat_id)
        .collect();
    assert_eq!(entries.len(), 1, "one client namespace: {entries:?}");
    let (key, value) = entries[0];
    assert_eq!(value.backend_id, backend_id(first));

    // A terminating backend takes no new connections, affinity or not.
    let rest: Vec<u8> = (0..3).filter(|&i| i != first).collect();
    maps.set_service(&svc, &rest);
    maps.set_backend(first, BACKEND_PORT, TCP, backend_flags::TERMINATING);
    let r = world.run("tcp", &[svc.target(), "30".into()], true);
    let second = only_backend(r.backends());
    assert_ne!(second, first);

    // A fresh entry is honoured even for a backend outside the slots; an
    // expired one is not.
    maps.set_backend(first, BACKEND_PORT, TCP, 0);
    let fresh = AffinityValue {
        backend_id: backend_id(first),
        last_used_s: value.last_used_s,
    };
    maps.affinity.insert(key, fresh, 0).expect("affinity");
    let r = world.run("tcp", &[svc.target(), "10".into()], true);
    assert_eq!(only_backend(r.backends()), first, "a fresh entry holds");
    let expired = AffinityValue {
        last_used_s: value.last_used_s.wrapping_sub(svc.affinity_timeout_s + 100),
        ..fresh
    };
    maps.affinity.insert(key, expired, 0).expect("affinity");
    let r = world.run("tcp", &[svc.target(), "10".into()], true);
    assert_ne!(
        only_backend(r.backends()),
        first,
        "an expired entry is ignored"
    );
}

#[test]
fn no_backends_and_processes_outside_the_cgroup_are_left_alone() {
    if !can_run("no_backends_and_processes_outside_the_cgroup_are_left_alone") {
        return;
    }
    let (world, _dataplane) = World::attached();
    let empty = Svc::tcp(VIP, 80, 4);
    let full = Svc::tcp(Ipv4Addr::new(10, 43, 0, 11), 80, 5);
    let mut maps = world.maps();
    maps.set_service(&empty, &[]);
    maps.set_service(&full, &[0, 1, 2]);

    // Nothing in the namespace routes 10.43/16: an untranslated connect
    // fails at once with ENETUNREACH (the per-packet programs answer the
    // empty service with a reset on a real node).
    let r = world.run("tcp-fail", &[empty.target()], true);
    assert_eq!(
        r.get("error"),
        [libc::ENETUNREACH.to_string()],
        "a service with no backend is not balanced"
    );
    let r = world.run("tcp-fail", &[full.target()], false);
    assert_eq!(
        r.get("error"),
        [libc::ENETUNREACH.to_string()],
        "a process outside the cgroup is not balanced"
    );
    let r = world.run("tcp-fail", &[full.target()], true);
    assert!(
        r.0.contains_key("connected"),
        "the same service from inside the cgroup is: {r:?}"
    );
    let counted: u64 = (0..3).map(|i| maps.connections(i)).sum();
    assert_eq!(counted, 1, "only the balanced connect is counted");
}

#[test]
fn the_root_cgroup_and_non_cgroups_are_refused() {
    if !can_run("the_root_cgroup_and_non_cgroups_are_refused") {
        return;
    }
    let world = World::new();
    let mut dataplane = world.load();
    let links = world.pin_dir().join(kestrel_dataplane::LINKS_DIR);
    let plain = MountedTempDir::new();
    let other = plain.path().join("plain");
    std::fs::create_dir(&other).expect("a plain directory");
    let alias = plain.path().join("root-alias");
    std::os::unix::fs::symlink(CGROUP2_ROOT, &alias).expect("symlink");
    for root in [
        PathBuf::from(CGROUP2_ROOT),
        Path::new(CGROUP2_ROOT).join("."),
        world.cgroup_dir().join(".."),
        alias,
    ] {
        match dataplane.attach_sock_lb(&root) {
            Err(Error::RootCgroup(_)) => {}
            other => panic!("{} must be refused as the root: {other:?}", root.display()),
        }
    }
    match dataplane.attach_sock_lb(&other) {
        Err(Error::NotCgroup2(_)) => {}
        other => panic!("a plain directory must be refused: {other:?}"),
    }
    assert!(
        std::fs::read_dir(&links).map_or(true, |mut d| d.next().is_none()),
        "nothing was pinned"
    );
}

#[test]
fn links_survive_the_agent_and_a_restart_adopts_them() {
    if !can_run("links_survive_the_agent_and_a_restart_adopts_them") {
        return;
    }
    let mut world = World::new();
    world.start_backends(3);
    let svc = Svc::tcp(VIP, 80, 6);

    // The first agent is another process, so that it can die by SIGKILL.
    let agent = Interactive::spawn(world.helper(
        "agent",
        &[
            world.pin_dir().display().to_string(),
            world.cgroup_dir().display().to_string(),
        ],
        false,
    ));
    assert_eq!(agent.next(), ["attached"]);
    world.maps().set_service(&svc, &[0, 1, 2]);
    let first = world.status();
    assert!(first.is_active(), "{first:?}");

    let mut held = Interactive::spawn(world.helper("tcp-hold", &[svc.target()], true));
    let connected = held.next();
    assert_eq!(connected[0], "connected");
    assert_eq!(
        connected[2],
        svc.target(),
        "getpeername on the held connection"
    );
    let echo = |held: &mut Interactive, when: &str| {
        held.send("ping");
        assert_eq!(held.next(), ["echo", "ok"], "held connection {when}");
    };
    echo(&mut held, "before the crash");

    agent.kill_9();
    let orphaned = world.status();
    assert_eq!(orphaned, first, "the links outlive their agent");
    echo(&mut held, "after the crash");
    let r = world.run("tcp", &[svc.target(), "30".into()], true);
    assert_eq!(
        r.num("peer_is_target", 0),
        30,
        "still balanced with no agent"
    );

    // The restarted agent: a second load over the same pins.
    let mut restarted = world.load();
    restarted
        .attach_sock_lb(&world.cgroup_dir())
        .expect("adopting the links");
    let adopted = world.status();
    assert!(adopted.is_active(), "one program per hook: {adopted:?}");
    for (before, after) in first.hooks.iter().zip(&adopted.hooks) {
        let (b, a) = (before.link.expect("link"), after.link.expect("link"));
        assert_eq!(a.id, b.id, "{}: the same link", after.program);
        assert_ne!(a.prog_id, b.prog_id, "{}: the new program", after.program);
    }
    echo(&mut held, "after the restart");
    let r = world.run("tcp", &[svc.target(), "30".into()], true);
    assert_eq!(
        r.num("peer_is_target", 0),
        30,
        "balanced by the new programs"
    );

    // Attaching again changes nothing; dropping the loader keeps the links.
    restarted
        .attach_sock_lb(&world.cgroup_dir())
        .expect("attaching twice");
    assert_eq!(world.status(), adopted);
    drop(restarted);
    assert_eq!(world.status(), adopted, "the links outlive the loader");
    echo(&mut held, "after the loader is dropped");

    // `kestrel down`: everything goes, and the ClusterIP is dark again.
    detach_sock_lb(world.pin_dir()).expect("detaching");
    let gone = world.status();
    for hook in &gone.hooks {
        assert_eq!(hook.link, None, "{}", hook.program);
        assert!(hook.attached_prog_ids.is_empty(), "{}", hook.program);
    }
    let r = world.run("tcp-fail", &[svc.target()], true);
    assert_eq!(r.get("error"), [libc::ENETUNREACH.to_string()]);
    assert_eq!(SOCK_LB_PROGRAMS.len(), gone.hooks.len());
}

#[test]
fn links_follow_the_node_cgroup_when_it_changes() {
    if !can_run("links_follow_the_node_cgroup_when_it_changes") {
        return;
    }
    let world = World::new();
    let mut dataplane = world.load_and_attach();
    let first = world.status();
    assert!(first.is_active(), "{first:?}");

    // The node's cgroup is now another one (a reconfigured node): the
    // pinned links move, and the old cgroup is left with nothing.
    let moved = Cgroup::new(unique_name("ksl-moved"));
    dataplane
        .attach_sock_lb(&moved.v2_dir())
        .expect("attaching to the new cgroup");
    let there = sock_lb_status(world.pin_dir(), &moved.v2_dir()).expect("status");
    assert!(there.is_active(), "{there:?}");
    for hook in &world.status().hooks {
        assert!(hook.attached_prog_ids.is_empty(), "{hook:?} left behind");
    }

    // The new cgroup is removed under the links (a node torn down without
    // `kestrel down`): the next attach replaces the dead links.
    drop(moved);
    dataplane
        .attach_sock_lb(&world.cgroup_dir())
        .expect("attaching after the cgroup went away");
    let back = world.status();
    assert!(back.is_active(), "{back:?}");
    for (old, new) in first.hooks.iter().zip(&back.hooks) {
        assert_ne!(
            old.link.map(|l| l.id),
            new.link.map(|l| l.id),
            "{}: a new link",
            new.program
        );
    }
}
