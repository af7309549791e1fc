//! Real etcd processes for tests and benchmarks: members on loopback ports,
//! each in its own temporary directory, killed by PID when the guard drops.
//! Behind the `test-util` feature; these helpers panic on failure, as a test
//! should.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD: &str = "/usr/bin/etcd";

/// One etcd member's fixed identity; it can be stopped and started again
/// with the same data.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

/// A cluster of etcd members. Dropping it kills every member.
#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    // The port is released before etcd binds it; another process could take
    // it in between, which would show as a start failure, not a wrong pass.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Whether etcd is installed; tests that need it print why they skip. In CI
/// (`CI` set) a missing etcd is a failure, not a skip.
pub fn available() -> bool {
    if Path::new(ETCD).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{ETCD} is missing in CI: install the Debian package etcd-server"
    );
    eprintln!("SKIP: {ETCD} is missing (Debian package etcd-server)");
    false
}

impl EtcdCluster {
    /// Starts `n` members and waits until they answer.
    pub async fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = format!("kestrel-test-{}", dir.path().display());
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            _dir: dir,
        };
        for i in 0..n {
            cluster.spawn(i, &token);
        }
        cluster.wait_ready().await;
        cluster
    }

    fn spawn(&mut self, i: usize, token: &str) {
        let initial_cluster = self.initial_cluster.clone();
        let m = &mut self.members[i];
        std::fs::create_dir_all(&m.data_dir).expect("member dir");
        let log = std::fs::File::create(m.data_dir.with_extension("log")).expect("log file");
        let child = Command::new(ETCD)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.data_dir.join("data"))
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", token])
            .args(["--initial-cluster-state", "new"])
            // The suite stores 1.5 MiB values; etcd's default cap is 1.5 MiB
            // for the whole request.
            .args(["--max-request-bytes", "4194304"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        m.child = Some(child);
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Polls every running member's health endpoint until all answer.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            loop {
                let ok = async {
                    let client = etcd_client::Client::connect([m.client_url.as_str()], None)
                        .await
                        .ok()?;
                    let mut kv = client.kv_client();
                    kv.get("health", None).await.ok()
                };
                if tokio::time::timeout(Duration::from_secs(2), ok)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} did not become ready; see {}",
                    m.name,
                    m.data_dir.with_extension("log").display()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// SIGKILLs member `i` by its PID and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill().expect("kill etcd");
            child.wait().expect("reap etcd");
        }
    }

    /// Starts member `i` again on its old data directory.
    pub async fn restart(&mut self, i: usize) {
        let token = String::from("unused-on-restart");
        self.spawn(i, &token);
        self.wait_ready().await;
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if let Some(mut child) = self.members[i].child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
