//! Runs one containerd per node, each with its own root, state, sockets and
//! CNI directories, so several nodes can share one machine.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use nix::{sys::signal, unistd::Pid};
use tokio::{
    process::{Child, Command},
    time::Instant,
};

use crate::{Error, Result, RuntimeClient, connect, v1};

/// How long containerd gets to answer its first CRI call.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long containerd gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where one node's containerd keeps everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerdConfig {
    /// Persistent data: content store, snapshots, metadata.
    pub root: PathBuf,
    /// Runtime state: sockets of shims, task bundles.
    pub state: PathBuf,
    /// The gRPC socket the CRI client dials.
    pub socket: PathBuf,
    /// Where containerd finds CNI plugin binaries.
    pub cni_bin_dir: PathBuf,
    /// Where the agent writes the CNI network configuration.
    pub cni_conf_dir: PathBuf,
    /// The image every pod sandbox runs (the pause image).
    pub sandbox_image: String,
}

impl ContainerdConfig {
    /// The conventional layout under a node's data directory.
    pub fn under(dir: &Path, sandbox_image: &str) -> Self {
        Self {
            root: dir.join("root"),
            state: dir.join("state"),
            socket: dir.join("containerd.sock"),
            cni_bin_dir: dir.join("cni/bin"),
            cni_conf_dir: dir.join("cni/net.d"),
            sandbox_image: sandbox_image.to_owned(),
        }
    }

    /// The containerd 1.6 configuration file (schema version 2).
    pub fn render(&self) -> String {
        let q = |p: &Path| toml_string(&p.to_string_lossy());
        let mut out = String::new();
        // `write!` into a String cannot fail.
        let _ = write!(
            out,
            r#"# Written by Kestrel; one containerd per node.
version = 2
root = {root}
state = {state}

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

# No debug or metrics listeners: nodes share the machine's loopback.
[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  # Port 0: each node's streaming server (exec, attach, port-forward) gets
  # its own ephemeral loopback port instead of all fighting over 10010.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Some hosts (this project's CI among them) refuse to lower oom_score_adj
  # below 0 even for root, which makes runc fail every sandbox at its -998.
  # Clamp to containerd's own score instead; QoS ordering above it still holds.
  restrict_oom_score_adj = true
  # Pod network namespaces are mounted under this node's state directory,
  # not /run/netns, so tearing a node down finds every one of them.
  netns_mounts_under_state_dir = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}

  # One `<registry>/hosts.toml` per registry that needs more than the
  # default (HTTPS to the registry itself), e.g. plain HTTP. containerd
  # reads the directory at every pull, so entries may be added while it runs.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {registry}
"#,
            root = q(&self.root),
            state = q(&self.state),
            socket = q(&self.socket),
            ttrpc = q(&self.socket.with_extension("sock.ttrpc")),
            opt = q(&self.root.join("opt")),
            sandbox = toml_string(&self.sandbox_image),
            cni_bin = q(&self.cni_bin_dir),
            cni_conf = q(&self.cni_conf_dir),
            registry = q(&self.registry_dir()),
        );
        out
    }

    /// Where the rendered configuration is written.
    pub fn config_path(&self) -> PathBuf {
        self.root.with_file_name("containerd.toml")
    }

    /// Where containerd's output goes.
    pub fn log_path(&self) -> PathBuf {
        self.root.with_file_name("containerd.log")
    }

    /// The registry hosts directory (containerd's `config_path`): one
    /// subdirectory per registry, named as in image references (`host` or
    /// `host:port`), holding a `hosts.toml`.
    pub fn registry_dir(&self) -> PathBuf {
        self.root.with_file_name("certs.d")
    }

    /// Declares that images named `<registry>/…` are pulled and resolved
    /// over plain HTTP from `endpoint` (`host` or `host:port`), by writing
    /// `<registry_dir>/<registry>/hosts.toml`. Returns that file's path.
    ///
    /// With `endpoint == registry` the registry itself speaks plain HTTP.
    /// Otherwise `endpoint` is a mirror tried first, and containerd falls back
    /// to the registry's own default (HTTPS) server when the mirror fails.
    /// A running containerd picks the file up at its next pull; the file is
    /// replaced atomically, so a pull never reads half of it.
    pub fn add_plain_http_registry(&self, registry: &str, endpoint: &str) -> Result<PathBuf> {
        let text = plain_http_hosts_toml(registry, endpoint)?;
        let dir = self.registry_dir().join(registry);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        let path = dir.join("hosts.toml");
        let tmp = dir.join(".hosts.toml.tmp");
        std::fs::write(&tmp, text).map_err(|source| Error::Io {
            what: "writing",
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| Error::Io {
            what: "renaming into place",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

/// containerd's `hosts.toml` that sends pulls of `<registry>/…` to
/// `endpoint` over plain HTTP (see [`ContainerdConfig::add_plain_http_registry`]).
pub fn plain_http_hosts_toml(registry: &str, endpoint: &str) -> Result<String> {
    check_registry_host(registry)?;
    check_registry_host(endpoint)?;
    let url = toml_string(&format!("http://{endpoint}"));
    let mut out = format!("# Written by Kestrel: {registry} over plain HTTP from {endpoint}.\n");
    if registry == endpoint {
        let _ = writeln!(out, "server = {url}");
    }
    let _ = write!(
        out,
        "\n[host.{url}]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    Ok(out)
}

/// Accepts `host` or `host:port` as it appears in an image reference. It
/// names a directory, so nothing that could climb out of it gets through.
fn check_registry_host(host: &str) -> Result<()> {
    let reason = if host.is_empty() {
        Some("it is empty")
    } else if host.starts_with(['.', '-', ':']) {
        Some("it must start with a letter or digit")
    } else if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
    {
        Some("only letters, digits, '.', '-', '_' and ':' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidRegistry {
            host: host.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Imports an image archive into the CRI namespace of the containerd
/// listening on `socket` (see [`Containerd::import_archive`]).
pub async fn import_archive(socket: &Path, archive: &Path) -> Result<()> {
    let output = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io", "images", "import"])
        .arg(archive)
        .output()
        .await
        .map_err(|source| Error::Spawn {
            program: "ctr images import".into(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Import {
            archive: archive.to_path_buf(),
            output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// A TOML basic string with the characters TOML requires escaped.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where a node's containerd runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Placement<'a> {
    /// The node's network namespace (a name under /run/netns).
    pub netns: Option<&'a str>,
    /// The node's cgroup v2 directory.
    pub cgroup: Option<&'a Path>,
}

/// A running containerd. Dropping it kills the process.
#[derive(Debug)]
pub struct Containerd {
    child: Child,
    config: ContainerdConfig,
}

impl Containerd {
    /// Writes the configuration, starts containerd, and waits until it
    /// answers CRI `Version`.
    ///
    /// `placement.netns` puts it in the node's network namespace, and
    /// `placement.cgroup` (a cgroup v2 directory, never the root) in the node's
    /// cgroup before it execs, so every shim it forks lands there too and the
    /// node can be torn down with one `cgroup.kill`.
    pub async fn start(config: ContainerdConfig, placement: Placement<'_>) -> Result<Self> {
        for dir in [
            &config.root,
            &config.state,
            &config.cni_bin_dir,
            &config.cni_conf_dir,
            &config.registry_dir(),
        ] {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                what: "creating",
                path: dir.clone(),
                source,
            })?;
        }
        let config_path = config.config_path();
        std::fs::write(&config_path, config.render()).map_err(|source| Error::Io {
            what: "writing",
            path: config_path.clone(),
            source,
        })?;
        let log_path = config.log_path();
        let log = std::fs::File::create(&log_path).map_err(|source| Error::Io {
            what: "creating",
            path: log_path.clone(),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| Error::Io {
            what: "duplicating",
            path: log_path.clone(),
            source,
        })?;

        // Every step execs the next (`sh` joins the cgroup, `nsenter` the
        // network namespace), so the PID we hold ends up containerd's own.
        // Not `ip netns exec`: it also unshares the mount namespace and
        // remounts /sys, which hides /sys/fs/cgroup from containerd and runc.
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = placement.netns {
            argv.extend([
                "nsenter".into(),
                format!("--net=/run/netns/{ns}").into(),
                "--".into(),
            ]);
        }
        argv.push("containerd".into());
        argv.push("--config".into());
        argv.push(config_path.clone().into());
        let mut cmd = match placement.cgroup {
            Some(cgroup) => {
                let procs = cgroup.join("cgroup.procs");
                let mut cmd = Command::new("sh");
                cmd.args([
                    "-c",
                    r#"echo $$ > "$1" && shift && exec "$@""#,
                    "kestrel-containerd",
                ])
                .arg(procs)
                .args(&argv);
                cmd
            }
            None => {
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        let program = format!("{:?}", cmd.as_std());
        let child = cmd
            .spawn()
            .map_err(|source| Error::Spawn { program, source })?;
        let mut containerd = Self { child, config };
        containerd.wait_ready().await?;
        tracing::info!(socket = %containerd.config.socket.display(), pid = ?containerd.pid(), "containerd ready");
        Ok(containerd)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut client = RuntimeClient::new(connect(&self.config.socket)?);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.not_ready(format!("it exited with {status}")));
            }
            if self.config.socket.exists() {
                let version = client
                    .version(v1::VersionRequest {
                        version: "v1".into(),
                    })
                    .await;
                if version.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(format!("no answer within {READY_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn not_ready(&self, reason: String) -> Error {
        Error::NotReady {
            reason,
            log: self.config.log_path(),
        }
    }

    /// The configuration this containerd runs with.
    pub fn config(&self) -> &ContainerdConfig {
        &self.config
    }

    /// containerd's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// A CRI runtime client on this containerd's socket.
    pub fn runtime_client(&self) -> Result<RuntimeClient> {
        Ok(RuntimeClient::new(connect(&self.config.socket)?))
    }

    /// Imports an OCI or Docker image archive into the CRI namespace
    /// (`k8s.io`), so pods can use the image without a registry.
    ///
    /// CRI has no import call, so this uses containerd's own client, `ctr`,
    /// which ships with containerd.
    pub async fn import_archive(&self, archive: &Path) -> Result<()> {
        import_archive(&self.config.socket, archive).await
    }

    /// Asks containerd to exit (SIGTERM), and kills it if it has not within
    /// ten seconds.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGTERM);
            if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
                .await
                .is_ok()
            {
                return Ok(());
            }
            tracing::warn!(pid, "containerd ignored SIGTERM; killing it");
        }
        let _ = self.child.kill().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_valid_toml_with_every_path_per_node() {
        let config = ContainerdConfig::under(
            Path::new("/var/lib/kestrel/node-1/containerd"),
            "kestrel/pause:1",
        );
        let text = config.render();
        let doc: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(doc["version"].as_integer(), Some(2));
        assert_eq!(
            doc["root"].as_str(),
            Some("/var/lib/kestrel/node-1/containerd/root")
        );
        assert_eq!(
            doc["grpc"]["address"].as_str(),
            Some("/var/lib/kestrel/node-1/containerd/containerd.sock")
        );
        let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["sandbox_image"].as_str(), Some("kestrel/pause:1"));
        assert_eq!(cri["stream_server_port"].as_str(), Some("0"));
        assert_eq!(
            cri["cni"]["conf_dir"].as_str(),
            Some("/var/lib/kestrel/node-1/containerd/cni/net.d")
        );
        assert_eq!(doc["debug"]["address"].as_str(), Some(""));
    }

    #[test]
    fn registry_hosts_directory_is_a_sibling_of_root() {
        let config = ContainerdConfig::under(Path::new("/var/lib/kestrel/n1/containerd"), "p");
        assert_eq!(
            config.registry_dir(),
            Path::new("/var/lib/kestrel/n1/containerd/certs.d")
        );
        let doc: toml::Table = config.render().parse().expect("valid TOML");
        let registry = &doc["plugins"]["io.containerd.grpc.v1.cri"]["registry"];
        assert_eq!(
            registry["config_path"].as_str(),
            Some("/var/lib/kestrel/n1/containerd/certs.d")
        );
        // Only config_path: containerd 1.6 refuses it next to the old
        // `mirrors`/`configs` tables.
        assert_eq!(registry.as_table().map(toml::Table::len), Some(1));
    }

    #[test]
    fn a_plain_http_registry_is_its_own_server() {
        let text = plain_http_hosts_toml("127.0.0.1:5000", "127.0.0.1:5000").expect("valid");
        let doc: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(doc["server"].as_str(), Some("http://127.0.0.1:5000"));
        let host = &doc["host"]["http://127.0.0.1:5000"];
        let capabilities: Vec<&str> = host["capabilities"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(toml::Value::as_str)
            .collect();
        assert_eq!(capabilities, ["pull", "resolve"]);
        assert_eq!(doc.len(), 2, "{text}");
    }

    #[test]
    fn a_plain_http_mirror_keeps_the_default_server() {
        let text = plain_http_hosts_toml("docker.io", "10.41.0.1:5000").expect("valid");
        let doc: toml::Table = text.parse().expect("valid TOML");
        assert!(!doc.contains_key("server"), "{text}");
        assert!(doc["host"]["http://10.41.0.1:5000"]["capabilities"].is_array());
    }

    #[test]
    fn registry_names_that_are_not_hosts_are_refused() {
        for bad in ["", "..", "../etc", "a/b", "reg istry", ":5000", "x\ny"] {
            assert!(
                matches!(
                    plain_http_hosts_toml(bad, "127.0.0.1:5000"),
                    Err(Error::InvalidRegistry { .. })
                ),
                "{bad:?} accepted as a registry"
            );
            assert!(
                plain_http_hosts_toml("docker.io", bad).is_err(),
                "{bad:?} accepted as an endpoint"
            );
        }
    }

    #[test]
    fn adding_a_registry_writes_its_hosts_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ContainerdConfig::under(dir.path(), "p");
        let path = config
            .add_plain_http_registry("127.0.0.1:5000", "127.0.0.1:5000")
            .expect("written");
        assert_eq!(
            path,
            dir.path().join("certs.d/127.0.0.1:5000/hosts.toml"),
            "where containerd looks for it"
        );
        let doc: toml::Table = std::fs::read_to_string(&path)
            .expect("read")
            .parse()
            .expect("valid TOML");
        assert_eq!(doc["server"].as_str(), Some("http://127.0.0.1:5000"));
        // Writing again replaces it; no temporary file is left behind.
        config
            .add_plain_http_registry("127.0.0.1:5000", "127.0.0.1:5000")
            .expect("rewritten");
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, ["hosts.toml"]);
    }

    #[test]
    fn awkward_paths_are_escaped() {
        let config = ContainerdConfig::under(Path::new("/tmp/a \"quoted\" \\ dir"), "p");
        let doc: toml::Table = config.render().parse().expect("valid TOML");
        assert_eq!(doc["root"].as_str(), Some("/tmp/a \"quoted\" \\ dir/root"));
    }
}
