//! Helpers for privileged tests: skip policy, network namespaces with Drop
//! guards, and running code inside a namespace. A dev-dependency only.
#![forbid(unsafe_code)]

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
