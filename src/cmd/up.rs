//! `kestrel up` and `kestrel down`: a real multi-node cluster on one
//! machine, each node a network namespace with its own containerd, agent,
//! cgroup subtree and bpffs directory, joined by a bridge in a namespace of
//! its own.
//!
//! Every name is derived from the data dir, so `down` (and an `up` after a
//! crash) finds everything an earlier `up` made without any state file:
//!
//! | what | name |
//! |---|---|
//! | fabric namespace (holds bridge `br0`) | `kst-<id>-fab` |
//! | node namespaces | `kst-<id>-n<i>` |
//! | host end of the fabric link | `kst<id>h` (10.41.0.1/24) |
//! | cgroup subtree (v2; v1 mirrors it) | `/kestrel-<id>/{server,n<i>}` |
//! | bpffs (one instance per node) | `<data-dir>/nodes/node-<i>/bpf` |
//!
//! The host's own uplink is never touched: the host namespace gets the
//! fabric link, a route per node's pod CIDR into the fabric, and
//! `unreachable` routes for the cluster and service ranges, so no packet for
//! them can leave through the default route.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Args;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use sha2::Digest as _;

/// The fabric subnet; the host is .1 and node i is .(10+i).
const FABRIC: &str = "10.41.0.0/24";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 41, 0, 1);
const CLUSTER_CIDR: &str = "10.42.0.0/16";
const SERVICE_CIDR: &str = "10.43.0.0/16";
/// The `kube-dns` Service's address: the service range's 10th.
const CLUSTER_DNS: &str = "10.43.0.10";
const CGROUP2: &str = "/sys/fs/cgroup/unified";
/// How long `up` waits for every node to be Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Args)]
pub struct UpArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=50))]
    nodes: u8,
    /// Where the cluster keeps everything.
    #[arg(long, default_value = "/var/lib/kestrel")]
    data_dir: PathBuf,
    /// Image archives every node imports (built by `cargo xtask images`).
    #[arg(long, env = "KESTREL_IMAGES_DIR", default_value = "target/images")]
    images_dir: PathBuf,
    /// Upstream resolvers for names outside the cluster domain, passed to
    /// every agent (IP or IP:PORT, comma-separated; they must be reachable
    /// from the node namespaces, for example on the host's fabric address
    /// 10.41.0.1). Default: the agents read /etc/resolv.conf.
    #[arg(long)]
    dns_upstream: Option<String>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// The data dir `up` used.
    #[arg(long, default_value = "/var/lib/kestrel")]
    data_dir: PathBuf,
}

/// The names of one cluster's resources.
#[derive(Debug, Clone)]
struct Names {
    dir: PathBuf,
    id: String,
}

impl Names {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating --data-dir {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let hash = sha2::Sha256::digest(dir.to_string_lossy().as_bytes());
        let id = hash.iter().take(3).map(|b| format!("{b:02x}")).collect();
        Ok(Self { dir, id })
    }
    fn fabric(&self) -> String {
        format!("kst-{}-fab", self.id)
    }
    fn node_ns(&self, i: u8) -> String {
        format!("kst-{}-n{i}", self.id)
    }
    fn host_link(&self) -> String {
        format!("kst{}h", self.id)
    }
    fn node_link(&self, i: u8) -> String {
        format!("kst{}n{i}", self.id)
    }
    fn cgroup(&self) -> String {
        format!("kestrel-{}", self.id)
    }
    fn node_name(i: u8) -> String {
        format!("node-{i}")
    }
    fn node_ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 41, 0, 10 + i)
    }
}

/// Run a command; its stderr becomes the error.
fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    ensure!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut v = vec!["ip", "-n", ns];
    v.extend_from_slice(args);
    sh(&v)
}

fn step(msg: &str) {
    println!("  • {msg}");
}

/// The interface carrying the host's default route; `up` must never touch it.
fn uplinks() -> Vec<String> {
    kestrel_dataplane::host::read_default_route_interfaces().unwrap_or_default()
}

fn build_fabric(n: &Names, nodes: u8) -> anyhow::Result<()> {
    let fab = n.fabric();
    let host = n.host_link();
    ensure!(
        !uplinks().contains(&host),
        "refusing to use {host}: it carries the default route"
    );
    sh(&["ip", "netns", "add", &fab])?;
    in_ns(&fab, &["link", "set", "lo", "up"])?;
    in_ns(&fab, &["link", "add", "br0", "type", "bridge"])?;
    in_ns(&fab, &["link", "set", "br0", "up"])?;
    sh(&[
        "ip", "link", "add", &host, "type", "veth", "peer", "name", "uplink", "netns", &fab,
    ])?;
    in_ns(&fab, &["link", "set", "uplink", "master", "br0", "up"])?;
    sh(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", &host])?;
    sh(&["ip", "link", "set", &host, "up"])?;
    // The cluster and service ranges never follow the default route.
    for cidr in [CLUSTER_CIDR, SERVICE_CIDR] {
        sh(&[
            "ip",
            "route",
            "replace",
            "unreachable",
            cidr,
            "metric",
            "4000",
        ])?;
    }
    for i in 1..=nodes {
        let ns = n.node_ns(i);
        let link = n.node_link(i);
        sh(&["ip", "netns", "add", &ns])?;
        in_ns(&ns, &["link", "set", "lo", "up"])?;
        in_ns(
            &fab,
            &[
                "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        in_ns(&fab, &["link", "set", &link, "master", "br0", "up"])?;
        in_ns(
            &ns,
            &[
                "addr",
                "add",
                &format!("{}/24", Names::node_ip(i)),
                "dev",
                "eth0",
            ],
        )?;
        in_ns(&ns, &["link", "set", "eth0", "up"])?;
        // Nodes route pods to each other; no default route: nothing from a
        // node can reach beyond the fabric.
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
    }
    Ok(())
}

fn cgroup_dir(n: &Names, sub: &str) -> PathBuf {
    Path::new(CGROUP2).join(n.cgroup()).join(sub)
}

/// Start `argv` detached, in network namespace `netns` (if any) and in the
/// v2 cgroup `cgroup`, logging to `log`; returns its PID.
fn spawn(
    argv: &[String],
    netns: Option<&str>,
    cgroup: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<u32> {
    std::fs::create_dir_all(cgroup)
        .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = std::process::Command::new("sh");
    // Join the cgroup, then exec (through nsenter for the namespace), so
    // the PID is the program's own and everything it forks stays inside.
    cmd.args([
        "-c",
        r#"echo $$ > "$1" && shift && exec "$@""#,
        "kestrel-up",
    ])
    .arg(cgroup.join("cgroup.procs"));
    if let Some(ns) = netns {
        cmd.args(["nsenter", &format!("--net=/run/netns/{ns}"), "--"]);
    }
    cmd.args(argv)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().context("starting a cluster process")?;
    Ok(child.id())
}

async fn wait_ready(kubeconfig: &Path, nodes: u8) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let client = loop {
        if let Ok(c) = kestrel_client::client_from(kubeconfig).await
            && c.apiserver_version().await.is_ok()
        {
            break c;
        }
        ensure!(
            Instant::now() < deadline,
            "the API server did not come up; see its log"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    step("API server is up");
    let api: Api<Node> = Api::all(client);
    let mut reported = std::collections::BTreeSet::new();
    loop {
        let list = api
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        for node in &list {
            let name = node.metadata.name.clone().unwrap_or_default();
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready && reported.insert(name.clone()) {
                step(&format!("{name} is Ready"));
            }
        }
        if reported.len() >= usize::from(nodes) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "only {} of {nodes} nodes became Ready within {READY_TIMEOUT:?}; see the logs under the data dir",
            reported.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Route each node's pod CIDR from the host into the fabric.
async fn host_routes(kubeconfig: &Path) -> anyhow::Result<()> {
    let client = kestrel_client::client_from(kubeconfig).await?;
    let api: Api<Node> = Api::all(client);
    for node in api.list(&Default::default()).await?.items {
        let cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.clone());
        let ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone());
        if let (Some(cidr), Some(ip)) = (cidr, ip) {
            sh(&["ip", "route", "replace", &cidr, "via", &ip])?;
        }
    }
    Ok(())
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "kestrel up needs root (network namespaces, cgroups, containerd)"
    );
    let images = args.images_dir.canonicalize().with_context(|| {
        format!(
            "--images-dir {} (build the images with `cargo xtask images`)",
            args.images_dir.display()
        )
    })?;
    ensure!(
        images.join("pause.tar").exists(),
        "{} has no pause.tar; run `cargo xtask images`",
        images.display()
    );
    let n = Names::new(&args.data_dir)?;
    println!(
        "Starting a {}-node Kestrel cluster in {}",
        args.nodes,
        n.dir.display()
    );
    if Path::new("/run/netns").join(n.fabric()).exists() || cgroup_dir(&n, "").exists() {
        step("removing what an earlier run left");
        teardown(&n)?;
    }
    // Another cluster would hold the fabric range.
    let routes = sh(&["ip", "route", "show", FABRIC])?;
    ensure!(
        routes.trim().is_empty(),
        "{FABRIC} is already routed ({}): is another Kestrel cluster up? `kestrel down --data-dir ...` it first",
        routes.trim()
    );
    build_fabric(&n, args.nodes).context("building the fabric")?;
    step(&format!(
        "fabric {FABRIC} with {} node namespaces",
        args.nodes
    ));
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let server_dir = n.dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    let server_argv: Vec<String> = [
        exe.as_str(),
        "server",
        "--data-dir",
        &server_dir.to_string_lossy(),
        "--bind-address",
        "127.0.0.1",
        "--bind-address",
        &HOST_IP.to_string(),
        "--advertise-address",
        &HOST_IP.to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let pid = spawn(
        &server_argv,
        None,
        &cgroup_dir(&n, "server"),
        &n.dir.join("server.log"),
        &[],
    )?;
    step(&format!(
        "control plane started (pid {pid}), log {}",
        n.dir.join("server.log").display()
    ));
    let kubeconfig = server_dir.join("admin.kubeconfig");
    let token_path = server_dir.join("node-token");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !token_path.exists() || !kubeconfig.exists() {
        ensure!(
            Instant::now() < deadline,
            "the server wrote no node token; see {}",
            n.dir.join("server.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = std::fs::read_to_string(&token_path)?.trim().to_owned();
    for i in 1..=args.nodes {
        let node_dir = n.dir.join("nodes").join(Names::node_name(i));
        std::fs::create_dir_all(&node_dir)?;
        mount_bpffs(&node_dir.join("bpf"))?;
        let mut argv: Vec<String> = [
            exe.as_str(),
            "agent",
            "--server",
            &format!("https://{HOST_IP}:6443"),
            "--node-name",
            &Names::node_name(i),
            "--data-dir",
            &node_dir.to_string_lossy(),
            "--images-dir",
            &images.to_string_lossy(),
            "--node-ip",
            &Names::node_ip(i).to_string(),
            "--cluster-dns",
            CLUSTER_DNS,
            "--cluster-domain",
            &args.cluster_domain,
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(up) = &args.dns_upstream {
            argv.extend(["--dns-upstream".to_owned(), up.clone()]);
        }
        let log = node_dir.join("agent.log");
        let pid = spawn(
            &argv,
            Some(&n.node_ns(i)),
            &cgroup_dir(&n, &format!("n{i}")),
            &log,
            &[("KESTREL_NODE_TOKEN", &token)],
        )?;
        step(&format!(
            "{} agent started (pid {pid}), log {}",
            Names::node_name(i),
            log.display()
        ));
    }
    wait_ready(&kubeconfig, args.nodes).await?;
    host_routes(&kubeconfig).await?;
    println!(
        "\nKestrel is up: {} nodes.\n\n  export KUBECONFIG={}\n  kubectl get nodes -o wide\n\nStop it with: kestrel down --data-dir {}",
        args.nodes,
        kubeconfig.display(),
        n.dir.display()
    );
    Ok(())
}

/// Give a node its own bpffs instance, where its dataplane pins maps.
fn mount_bpffs(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    if !mounts_under(dir.parent().unwrap_or(dir))
        .iter()
        .any(|m| m == dir)
    {
        nix::mount::mount(
            Some("bpf"),
            dir,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting bpffs at {}", dir.display()))?;
    }
    Ok(())
}

/// Every mount point under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Kill everything in the cluster's cgroup tree and wait until it is empty.
fn kill_cgroup(n: &Names) -> anyhow::Result<()> {
    let root = cgroup_dir(n, "");
    if !root.exists() {
        return Ok(());
    }
    std::fs::write(root.join("cgroup.kill"), "1")
        .with_context(|| format!("killing {}", root.display()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // `populated 0` only once every process has exited and been reaped.
        let busy = std::fs::read_to_string(root.join("cgroup.events"))
            .is_ok_and(|s| s.lines().any(|l| l == "populated 1"));
        if !busy {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "processes in {} survived cgroup.kill",
            root.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `dir` and every cgroup below it, deepest first.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            }
        }
    }
    out.push(dir.to_owned());
    out
}

/// Remove the cluster's cgroup directories in every hierarchy (runc
/// mirrors pod cgroups into the v1 controllers too).
fn remove_cgroups(n: &Names) {
    let Ok(hier) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hier.flatten() {
        let root = h.path().join(n.cgroup());
        if root.exists() {
            for d in walk(&root) {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

fn teardown(n: &Names) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    if let Err(e) = kill_cgroup(n) {
        errors.push(format!("{e:#}"));
    }
    for m in mounts_under(&n.dir) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            errors.push(format!("unmounting {}: {e}", m.display()));
        }
    }
    remove_cgroups(n);
    // Namespaces: the node ones and the fabric (deleting a namespace
    // deletes the veth ends inside it, and so their peers).
    let prefix = format!("kst-{}-", n.id);
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix)
                && let Err(e) = sh(&["ip", "netns", "del", &name])
            {
                errors.push(format!("{e:#}"));
            }
        }
    }
    let host = n.host_link();
    if sh(&["ip", "link", "show", &host]).is_ok()
        && let Err(e) = sh(&["ip", "link", "del", &host])
    {
        errors.push(format!("{e:#}"));
    }
    // Routes via the fabric went with the link; the unreachable ones stay
    // until no cluster needs them.
    for cidr in [CLUSTER_CIDR, SERVICE_CIDR] {
        let _ = sh(&["ip", "route", "del", "unreachable", cidr, "metric", "4000"]);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!(
            "some of the cluster could not be removed:\n  {}",
            errors.join("\n  ")
        )
    }
}

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "kestrel down needs root"
    );
    if !args.data_dir.exists() {
        println!("nothing to do: {} does not exist", args.data_dir.display());
        return Ok(());
    }
    let n = Names::new(&args.data_dir)?;
    teardown(&n)?;
    println!(
        "Kestrel cluster in {} is down (data kept; remove the directory to forget it).",
        n.dir.display()
    );
    Ok(())
}
