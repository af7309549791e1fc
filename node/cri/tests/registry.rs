//! CRI `PullImage` from a reachable registry: Debian's docker-registry serves
//! plain HTTP inside a fresh network namespace, with containerd in the same
//! namespace. busybox is pushed there with `ctr`, removed from containerd,
//! and pulled back over CRI: from 127.0.0.1, then from an address that only a
//! `hosts.toml` (written while containerd runs) makes reachable, then through
//! that address as a mirror of an unreachable registry. The pulled image
//! then runs.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use kestrel_cri::{ImageClient, containerd::Containerd, v1};
use kestrel_testkit::{
    Cgroup, MountedTempDir, Netns, eventually, images_dir, privileged_test_can_run, unique_name,
};

const BUSYBOX: &str = "docker.io/library/busybox:1.35";
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// The registry on loopback. It listens (on port 5000 of every address) in
/// the test's own network namespace, so a fixed port collides with nothing. containerd's CRI already speaks plain HTTP to
/// loopback registries, hosts.toml or not.
const LOOPBACK: &str = "127.0.0.1:5000";
/// The same registry at an address that is not loopback (TEST-NET-1, added to
/// the namespace's `lo`), for which containerd defaults to HTTPS: only a
/// hosts.toml makes it reachable.
const ROUTED_IP: &str = "192.0.2.1";
const ROUTED: &str = "192.0.2.1:5000";
/// A registry name nothing resolves, served only through its mirror.
const MIRRORED: &str = "registry.kestrel.test";
const REPOSITORY: &str = "library/busybox:1.35";

/// Starts docker-registry on every address of `ns`, inside `cgroup` (so
/// dropping the cgroup kills it whatever happens), storing blobs under `dir`.
fn start_registry(dir: &Path, ns: &Netns, cgroup: &Cgroup) -> tokio::process::Child {
    let storage = dir.join("registry");
    std::fs::create_dir_all(&storage).expect("registry storage");
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: '{}'\n\
             http:\n  addr: ':5000'\n",
            storage.display().to_string().replace('\'', "''"),
        ),
    )
    .expect("registry config");
    let log = std::fs::File::create(dir.join("registry.log")).expect("registry log");
    tokio::process::Command::new("sh")
        .args(["-c", r#"echo $$ > "$1" && shift && exec "$@""#, "registry"])
        .arg(cgroup.v2_dir().join("cgroup.procs"))
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args(["--", REGISTRY_BIN, "serve"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawning docker-registry")
}

/// One HTTP/1.0 GET to the registry from inside `ns`: the whole response,
/// or `None` if nothing answered.
fn registry_get(ns: &Netns, path: &str, accept: &str) -> Option<String> {
    ns.enter(|| {
        let mut stream = TcpStream::connect_timeout(
            &LOOPBACK.parse().expect("socket address"),
            Duration::from_secs(1),
        )
        .ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {LOOPBACK}\r\nAccept: {accept}\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    })
}

/// Runs `ctr` against this node's containerd in the CRI namespace, from
/// inside `ns` so that a push reaches the registry there. Returns stdout.
#[track_caller]
fn ctr(ns: &Netns, containerd: &Containerd, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args(["--", "ctr", "--address"])
        .arg(&containerd.config().socket)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .output()
        .expect("spawning ctr");
    assert!(
        out.status.success(),
        "ctr {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One node: containerd in the test's namespace, and a CRI image client.
struct Node<'a> {
    ns: &'a Netns,
    containerd: Containerd,
    images: ImageClient,
    registry_log: PathBuf,
}

impl Node<'_> {
    async fn image_status(&mut self, reference: &str) -> Option<v1::Image> {
        self.images
            .image_status(v1::ImageStatusRequest {
                image: Some(v1::ImageSpec {
                    image: reference.to_owned(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .expect("ImageStatus")
            .into_inner()
            .image
    }

    /// Removes the image `reference` names (every tag and its ID) over CRI,
    /// and waits until containerd's garbage collector has dropped the
    /// manifest `digest`: a later pull must fetch it from the registry.
    async fn remove_everywhere(&mut self, reference: &str, digest: &str) {
        let image = self
            .image_status(reference)
            .await
            .unwrap_or_else(|| panic!("{reference} is not a CRI image"));
        self.images
            .remove_image(v1::RemoveImageRequest {
                image: Some(v1::ImageSpec {
                    image: image.id.clone(),
                    ..Default::default()
                }),
            })
            .await
            .expect("RemoveImage");
        for tag in &image.repo_tags {
            assert!(self.image_status(tag).await.is_none(), "{tag} still there");
        }
        eventually(
            Duration::from_secs(30),
            "the image's content to be collected",
            || {
                let content = ctr(self.ns, &self.containerd, &["content", "ls", "--quiet"]);
                let gone = !content.contains(digest);
                async move { gone.then_some(()) }
            },
        )
        .await;
    }

    /// CRI PullImage, returning the image ref or the runtime's error.
    async fn pull(&mut self, reference: &str) -> Result<String, tonic::Status> {
        self.images
            .pull_image(v1::PullImageRequest {
                image: Some(v1::ImageSpec {
                    image: reference.to_owned(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await
            .map(|r| r.into_inner().image_ref)
    }

    fn registry_log(&self) -> String {
        std::fs::read_to_string(&self.registry_log).unwrap_or_default()
    }

    /// Pulls `<registry>/library/busybox:1.35` over CRI and checks that it
    /// is the pushed image (manifest `digest`) and that the registry served
    /// its blobs. Returns the image ID.
    async fn pull_from(&mut self, registry: &str, digest: &str) -> String {
        let reference = format!("{registry}/{REPOSITORY}");
        let log_before = self.registry_log().len();
        let image_ref = self.pull(&reference).await.unwrap_or_else(|e| {
            let log = common::log_tail(&self.containerd);
            panic!("PullImage {reference}: {e}\ncontainerd log:\n{log}")
        });
        assert!(image_ref.starts_with("sha256:"), "{image_ref}");
        let pulled = self
            .image_status(&reference)
            .await
            .expect("ImageStatus finds the pulled image");
        assert_eq!(pulled.id, image_ref);
        assert!(pulled.repo_tags.contains(&reference), "{pulled:?}");
        assert!(
            pulled
                .repo_digests
                .contains(&format!("{registry}/library/busybox@{digest}")),
            "pulled by the pushed manifest's digest {digest}: {pulled:?}"
        );
        let served = self.registry_log().split_off(log_before);
        assert!(
            served.contains(&format!("GET /v2/library/busybox/blobs/{image_ref}")),
            "the registry served the pull:\n{served}"
        );
        image_ref
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_over_cri_from_a_plain_http_registry() {
    let images_dir = images_dir();
    let needs = [
        (
            Path::new("/usr/bin/containerd").exists(),
            "containerd is not installed",
        ),
        (
            Path::new(REGISTRY_BIN).exists(),
            "docker-registry is not installed (cargo xtask setup)",
        ),
        (
            images_dir.join("busybox.tar").exists(),
            "image archives missing: run `cargo xtask images`",
        ),
    ];
    if !privileged_test_can_run("pulls_over_cri_from_a_plain_http_registry", &needs) {
        return;
    }
    // Dropped in reverse: containerd, the registry, the namespace, the
    // cgroup (killing whatever is left in it), then mounts and files.
    let dir = MountedTempDir::new();
    let name = unique_name("kestrel-reg-");
    let cgroup = Cgroup::new(name.clone());
    let ns = Netns::new(name.clone());
    ns.exec(&["ip", "addr", "add", &format!("{ROUTED_IP}/32"), "dev", "lo"]);
    let mut registry = start_registry(dir.path(), &ns, &cgroup);
    let registry_log = dir.path().join("registry.log");

    eventually(
        Duration::from_secs(30),
        "docker-registry to answer /v2/",
        || {
            if let Ok(Some(status)) = registry.try_wait() {
                let log = std::fs::read_to_string(&registry_log).unwrap_or_default();
                panic!("docker-registry exited with {status}:\n{log}");
            }
            let answer = registry_get(&ns, "/v2/", "*/*");
            async move {
                answer
                    .filter(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
                    .map(drop)
            }
        },
    )
    .await;

    let containerd = common::start_containerd(dir.path(), &ns, &cgroup).await;
    // Declared while containerd runs: it reads the hosts directory per pull.
    let hosts = containerd
        .config()
        .add_plain_http_registry(LOOPBACK, LOOPBACK)
        .expect("hosts.toml");
    assert!(hosts.ends_with(format!("certs.d/{LOOPBACK}/hosts.toml")));
    for archive in ["pause.tar", "busybox.tar"] {
        containerd
            .import_archive(&images_dir.join(archive))
            .await
            .expect("import");
    }
    let images =
        ImageClient::new(kestrel_cri::connect(&containerd.config().socket).expect("channel"));
    let mut node = Node {
        ns: &ns,
        containerd,
        images,
        registry_log,
    };

    // Push busybox to the registry, by ctr from inside the namespace.
    let pushed = format!("{LOOPBACK}/{REPOSITORY}");
    ctr(&ns, &node.containerd, &["images", "tag", BUSYBOX, &pushed]);
    ctr(
        &ns,
        &node.containerd,
        &["images", "push", "--plain-http", &pushed],
    );
    let manifest = registry_get(
        &ns,
        "/v2/library/busybox/manifests/1.35",
        "application/vnd.oci.image.manifest.v1+json",
    )
    .expect("registry answers");
    let digest = manifest
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("docker-content-digest:")
                .map(|d| d.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("the registry does not serve the pushed manifest:\n{manifest}"));

    // From loopback: gone from containerd, then pulled back over CRI.
    node.remove_everywhere(&pushed, &digest).await;
    let id = node.pull_from(LOOPBACK, &digest).await;

    // From a routed address: HTTPS by default, so the pull fails until a
    // hosts.toml declares plain HTTP; then it succeeds, without a restart.
    node.remove_everywhere(&pushed, &digest).await;
    let routed = format!("{ROUTED}/{REPOSITORY}");
    let refused = node
        .pull(&routed)
        .await
        .expect_err("no plain HTTP to a routed registry without hosts.toml");
    assert!(
        refused.message().contains("HTTPS"),
        "refused for speaking HTTP to an HTTPS client: {refused:?}"
    );
    node.containerd
        .config()
        .add_plain_http_registry(ROUTED, ROUTED)
        .expect("hosts.toml");
    assert_eq!(node.pull_from(ROUTED, &digest).await, id, "the same image");

    // The mirror form: images named after a registry nobody can reach come
    // from the plain-HTTP mirror.
    node.remove_everywhere(&routed, &digest).await;
    node.containerd
        .config()
        .add_plain_http_registry(MIRRORED, ROUTED)
        .expect("hosts.toml");
    assert_eq!(
        node.pull_from(MIRRORED, &digest).await,
        id,
        "the same image"
    );

    // And the pulled image runs.
    let exited = common::run_to_exit(
        &node.containerd,
        &name,
        &dir.path().join("pod-logs"),
        &format!("{MIRRORED}/{REPOSITORY}"),
        &["sh", "-c", "echo ran-the-pulled-image"],
    )
    .await;
    assert_eq!(exited.status.exit_code, 0, "{:?}", exited.status);
    assert!(
        exited.log.contains(" stdout F ran-the-pulled-image"),
        "{}",
        exited.log
    );
    node.containerd.stop().await.expect("stop");
    let _ = registry.kill().await;
}
