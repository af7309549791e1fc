//! The node API behind the API server, driven by the real kubectl 1.35:
//! a real containerd runs a busybox pod labelled as the pod workers label
//! theirs, a Node object points at the node API on loopback, and
//! `kubectl logs` / `kubectl exec` go kubectl → API server → node API →
//! CRI / containerd's streaming server.
//!
//! kubectl is `$KESTREL_KUBECTL` or `<repo>/.cache/bin/kubectl`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kestrel_agent::nodeapi::{self, NodeApiTls};
use kestrel_apiserver::testing::TestServer;
use kestrel_cri::{
    RuntimeClient,
    containerd::{Containerd, ContainerdConfig, Placement},
    v1,
};
use kestrel_testkit::{
    Cgroup, MountedTempDir, eventually, images_dir, privileged_test_can_run, unique_name,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;

const PAUSE: &str = "docker.io/kestrel/pause:0.1.0";
const BUSYBOX: &str = "docker.io/library/busybox:1.35";
const NODE: &str = "node-a";
const POD: &str = "web";
const CONTAINER: &str = "app";
/// A second container, reading stdin, for attach.
const TALK: &str = "talk";
/// Longer than containerd's 16 KiB log line buffer, so it is written as
/// partial records and must come back joined.
const LONG: usize = 20_000;

fn kubectl_path() -> PathBuf {
    std::env::var_os("KESTREL_KUBECTL").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/bin/kubectl"),
        PathBuf::from,
    )
}

/// The node API on a loopback port, stopped on drop.
struct NodeApi {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl NodeApi {
    async fn start(dir: &std::path::Path, ca_pem: &str, runtime: RuntimeClient) -> Self {
        let tls = NodeApiTls::load_or_create(
            dir,
            ca_pem,
            &["127.0.0.1".parse().expect("ip")],
            &[NODE.to_owned()],
        )
        .expect("node API credentials");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the node API");
        let port = listener.local_addr().expect("addr").port();
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            nodeapi::serve(listener, &tls, runtime, async {
                let _ = rx.await;
            })
            .await
            .expect("node API serves");
        });
        Self {
            port,
            stop: Some(stop),
            task,
        }
    }
}

impl Drop for NodeApi {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: PathBuf,
}

#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = self.command(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(input) = stdin {
            let mut si = child.stdin.take().expect("stdin");
            si.write_all(input.as_bytes()).await.expect("write stdin");
            drop(si);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("kubectl output");
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let o = self.run(args, stdin).await;
        assert_eq!(o.code, Some(0), "kubectl {args:?}: {o:?}");
        o.stdout
    }
}

fn labels(container: Option<&str>) -> std::collections::HashMap<String, String> {
    let mut l = std::collections::HashMap::from([
        ("io.kubernetes.pod.name".to_owned(), POD.to_owned()),
        (
            "io.kubernetes.pod.namespace".to_owned(),
            "default".to_owned(),
        ),
        ("io.kubernetes.pod.uid".to_owned(), "uid-web".to_owned()),
    ]);
    if let Some(c) = container {
        l.insert("io.kubernetes.container.name".to_owned(), c.to_owned());
    }
    l
}

fn host_network() -> Option<v1::NamespaceOption> {
    Some(v1::NamespaceOption {
        network: v1::NamespaceMode::Node as i32,
        ..Default::default()
    })
}

/// Run the pod's sandbox and its container; returns the container id.
async fn run_pod(cri: &mut RuntimeClient, logs: &std::path::Path, cgroup: &str) -> String {
    let sandbox_config = v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: POD.into(),
            uid: "uid-web".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.to_string_lossy().into_owned(),
        labels: labels(None),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{cgroup}/pods"),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: host_network(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = cri
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let script = format!(
        "echo line-1; head -c {LONG} /dev/zero | tr '\\0' x; echo; echo line-2; echo line-3; \
         while [ ! -e /tmp/go ]; do sleep 1; done; echo line-4; exec sleep 3600"
    );
    let app = start_container(cri, &sandbox, &sandbox_config, CONTAINER, &script, false).await;
    // A second container keeps stdin open, for attach.
    let talk = "while read l; do echo got-$l; done";
    start_container(cri, &sandbox, &sandbox_config, TALK, talk, true).await;
    app
}

async fn start_container(
    cri: &mut RuntimeClient,
    sandbox: &str,
    sandbox_config: &v1::PodSandboxConfig,
    name: &str,
    script: &str,
    stdin: bool,
) -> String {
    let container = cri
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: sandbox.to_owned(),
            config: Some(v1::ContainerConfig {
                metadata: Some(v1::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(v1::ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                command: vec!["sh".into(), "-c".into(), script.into()],
                log_path: format!("{name}/0.log"),
                labels: labels(Some(name)),
                stdin,
                linux: Some(v1::LinuxContainerConfig {
                    security_context: Some(v1::LinuxContainerSecurityContext {
                        namespace_options: host_network(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.start_container(v1::StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .expect("StartContainer");
    container
}

/// Create the Node (pointing at the node API) and the Pod bound to it.
async fn register(client: &kube::Client, port: u16) {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NODE}})).expect("node"),
        )
        .await
        .expect("create the Node");
    nodes
        .patch_status(
            NODE,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": NODE}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            }})),
        )
        .await
        .expect("Node status");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": POD},
            "spec": {"nodeName": NODE, "containers": [
                {"name": CONTAINER, "image": "busybox:1.35"},
                {"name": TALK, "image": "busybox:1.35", "stdin": true},
            ]},
        }))
        .expect("pod"),
    )
    .await
    .expect("create the Pod");
    pods.patch_status(
        POD,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .expect("Pod status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_and_exec_reach_the_container() {
    let images = images_dir();
    let kubectl = kubectl_path();
    let needs = [
        (
            std::path::Path::new("/usr/bin/containerd").exists(),
            "containerd is not installed",
        ),
        (
            images.join("busybox.tar").exists(),
            "image archives missing: run `cargo xtask images`",
        ),
        (
            kubectl.exists(),
            "kubectl 1.35 missing: run `cargo xtask setup` or set KESTREL_KUBECTL",
        ),
        (
            std::path::Path::new("/usr/bin/script").exists(),
            "script(1) from util-linux is missing",
        ),
    ];
    if !privileged_test_can_run("kubectl_logs_and_exec_reach_the_container", &needs) {
        return;
    }
    // Dropped in reverse: node API, API server, containerd, cgroup (kills
    // whatever is left), then the directory and its mounts.
    let dir = MountedTempDir::new();
    let name = unique_name("kestrel-nodeapi-");
    let cgroup = Cgroup::new(name.clone());
    // containerd stays in the test's network namespace: its streaming server
    // listens on loopback there, where the node API (this process) reaches
    // it, as the agent does inside a node's namespace. The pod is
    // host-network, so nothing else touches the network.
    let containerd = Containerd::start(
        ContainerdConfig::under(&dir.path().join("containerd"), PAUSE),
        Placement {
            netns: None,
            cgroup: Some(&cgroup.v2_dir()),
        },
    )
    .await
    .expect("containerd starts");
    for archive in ["pause.tar", "busybox.tar"] {
        containerd
            .import_archive(&images.join(archive))
            .await
            .expect("import");
    }
    let mut cri = containerd.runtime_client().expect("CRI client");
    let container = run_pod(&mut cri, &dir.path().join("pods/web"), &name).await;

    std::fs::create_dir_all(dir.path().join("api")).expect("mkdir");
    let server = TestServer::start_in(&dir.path().join("api"), |_| {}).await;
    let node_api = NodeApi::start(&dir.path().join("agent"), &server.ca_pem, cri.clone()).await;
    register(&server.client().await, node_api.port).await;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let k = Kubectl {
        bin: kubectl,
        kubeconfig: server.kubeconfig.clone(),
        home,
    };
    let long = "x".repeat(LONG);
    let all = format!("line-1\n{long}\nline-2\nline-3\n");

    // The whole log, partial records joined, stdout and stderr merged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let o = k.run(&["logs", POD], None).await;
        if o.code == Some(0) && o.stdout == all {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "kubectl logs never showed the whole log: {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(k.ok(&["logs", "--tail=1", POD], None).await, "line-3\n");
    assert_eq!(
        k.ok(&["logs", "--tail=2", "-c", CONTAINER, POD], None)
            .await,
        "line-2\nline-3\n"
    );
    let stamped = k.ok(&["logs", "--timestamps", "--tail=1", POD], None).await;
    let (ts, rest) = stamped.split_once(' ').expect("timestamp prefix");
    assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{stamped}");
    assert_eq!(rest, "line-3\n");
    assert_eq!(
        k.ok(&["logs", "--limit-bytes=9", POD], None).await,
        "line-1\nxx"
    );
    // Upstream's errors.
    let o = k.run(&["logs", "-c", "nope", POD], None).await;
    assert_ne!(o.code, Some(0));
    assert!(
        o.stderr.contains("container nope is not valid for pod web"),
        "{o:?}"
    );
    let o = k.run(&["logs", "--previous", POD], None).await;
    assert!(
        o.stderr
            .contains("previous terminated container \"app\" in pod \"web\" not found"),
        "{o:?}"
    );
    let o = k.run(&["logs", "missing"], None).await;
    assert!(o.stderr.contains("pods \"missing\" not found"), "{o:?}");

    // Through the API without kubectl's container defaulting.
    let pods: Api<Pod> = Api::namespaced(server.client().await, "default");
    match pods.logs(POD, &Default::default()).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 400, "{e:?}");
            assert_eq!(
                e.message,
                "a container name must be specified for pod web, choose one of: [app talk]"
            );
        }
        other => panic!("logs without a container: {other:?}"),
    }

    // Exec: output and exit code, then stdin.
    let o = k
        .run(
            &[
                "exec",
                POD,
                "--",
                "sh",
                "-c",
                "echo hi; echo err >&2; exit 3",
            ],
            None,
        )
        .await;
    assert_eq!(o.stdout, "hi\n", "{o:?}");
    assert!(o.stderr.contains("err"), "{o:?}");
    assert_eq!(o.code, Some(3), "{o:?}");
    assert_eq!(
        k.ok(&["exec", "-i", POD, "--", "cat"], Some("hello\nworld\n"))
            .await,
        "hello\nworld\n"
    );

    // Attach to the running shell that reads stdin: it answers our line.
    let mut attach = k
        .command(&["attach", "-i", "-c", TALK, POD])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kubectl attach");
    let mut attach_in = attach.stdin.take().expect("stdin");
    attach_in.write_all(b"ping\n").await.expect("write");
    let mut attach_out = tokio::io::BufReader::new(attach.stdout.take().expect("stdout")).lines();
    let answer = tokio::time::timeout(Duration::from_secs(30), attach_out.next_line())
        .await
        .expect("attach answers in time")
        .expect("read");
    assert_eq!(answer.as_deref(), Some("got-ping"));
    drop(attach_in);
    attach.kill().await.expect("stop kubectl attach");

    // A terminal (-it): kubectl needs a tty of its own, which script(1)
    // gives it, and the container's shell gets one too.
    let cmdline = format!(
        "{} exec -it {POD} -- sh -c 'tty; echo ok-$((6*7))'",
        k.bin.display()
    );
    let o = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("script")
            .args(["-qec", &cmdline, "/dev/null"])
            .env("KUBECONFIG", &k.kubeconfig)
            .env("HOME", &k.home)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("kubectl exec -it in time")
    .expect("script");
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && shown.contains("/dev/pts/") && shown.contains("ok-42"),
        "{o:?}"
    );

    // A follower that goes away releases its stream on the node: the API
    // server's connection to the node API closes.
    let mut gone = k
        .command(&["logs", "-f", "--tail=1", "-c", CONTAINER, POD])
        .stdin(Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let mut gone_out = tokio::io::BufReader::new(gone.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), gone_out.next_line())
        .await
        .expect("a first line in time")
        .expect("read");
    assert_eq!(first.as_deref(), Some("line-3"));
    assert!(node_connections(node_api.port) > 0);
    gone.kill().await.expect("kill kubectl logs -f");
    eventually(
        Duration::from_secs(30),
        "the node API connection to close",
        || async { (node_connections(node_api.port) == 0).then_some(()) },
    )
    .await;

    // Follow: a line written after kubectl started arrives, and kubectl
    // ends when the container exits.
    let mut follow = k
        .command(&["logs", "-f", "--tail=1", POD])
        .stdin(Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let next = async |lines: &mut tokio::io::Lines<_>, what: &str| {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("logs -f: no {what} in time"))
            .expect("read")
    };
    assert_eq!(
        next(&mut lines, "first line").await.as_deref(),
        Some("line-3")
    );
    let wrote = cri
        .exec_sync(v1::ExecSyncRequest {
            container_id: container.clone(),
            cmd: vec!["touch".into(), "/tmp/go".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(wrote.exit_code, 0, "{wrote:?}");
    eventually(Duration::from_secs(30), "line-4 in the log", || async {
        let o = k.run(&["logs", "--tail=1", POD], None).await;
        (o.stdout == "line-4\n").then_some(())
    })
    .await;
    assert_eq!(
        next(&mut lines, "line written later").await.as_deref(),
        Some("line-4")
    );
    cri.stop_container(v1::StopContainerRequest {
        container_id: container.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    assert_eq!(
        next(&mut lines, "end of stream").await,
        None,
        "logs -f ends at exit"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), follow.wait())
        .await
        .expect("kubectl logs -f exits")
        .expect("wait");
    assert!(status.success(), "{status}");
    // An exited container's log is still served.
    assert!(
        k.ok(&["logs", POD], None)
            .await
            .ends_with("line-3\nline-4\n")
    );

    drop(node_api);
    server.stop().await;
    containerd.stop().await.expect("stop containerd");
}

/// Established TCP connections to the node API's port (IPv4 loopback).
fn node_connections(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{port:04X}");
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local address, remote address, state (01: established)
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "01"
        })
        .count()
}

/// A raw HTTPS request to the node API with the given client identity;
/// returns the status line, or the TLS error.
async fn node_get(
    port: u16,
    identity: Option<(&str, &str)>,
    path: &str,
) -> Result<(u16, String), String> {
    // The API server's own client configuration, with other identities.
    let cfg = kestrel_apiserver::node_api_client_config(identity).expect("client TLS");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let io = async {
        let mut tls = connector
            .connect(
                ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
                tcp,
            )
            .await?;
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .expect("node API answers")
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Only the API server's kubelet client certificate gets in. Needs no root:
/// the CRI runtime is never dialled for these requests.
#[tokio::test]
async fn only_the_api_servers_client_certificate_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = kestrel_apiserver::pki::Pki::load_or_create(&dir.path().join("api"), &[], &[])
        .expect("cluster PKI");
    let other = kestrel_apiserver::pki::Pki::load_or_create(&dir.path().join("other"), &[], &[])
        .expect("another cluster's PKI");
    let runtime = RuntimeClient::new(
        kestrel_cri::connect(&dir.path().join("no-runtime.sock")).expect("lazy channel"),
    );
    let node_api = NodeApi::start(&dir.path().join("agent"), &pki.ca_pem, runtime).await;
    let port = node_api.port;
    let apiserver = Some((
        pki.kubelet_client_cert_pem.as_str(),
        pki.kubelet_client_key_pem.as_str(),
    ));

    assert_eq!(
        node_get(port, apiserver, "/healthz").await,
        Ok((200, "ok".to_owned()))
    );
    // Same CA, another identity: authenticated, not authorized.
    let admin = Some((pki.admin_cert_pem.as_str(), pki.admin_key_pem.as_str()));
    let (code, body) = node_get(port, admin, "/healthz").await.expect("answer");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("user=admin"), "{body}");
    // The right name from another CA, and no certificate at all: no TLS.
    let foreign = Some((
        other.kubelet_client_cert_pem.as_str(),
        other.kubelet_client_key_pem.as_str(),
    ));
    assert!(node_get(port, foreign, "/healthz").await.is_err());
    assert!(node_get(port, None, "/healthz").await.is_err());

    // Bad requests get clear errors, and the server keeps serving.
    let (code, _) = node_get(port, apiserver, "/nope").await.expect("answer");
    assert_eq!(code, 404);
    let (code, body) = node_get(
        port,
        apiserver,
        "/containerLogs/default/web/app?tailLines=-1",
    )
    .await
    .expect("answer");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("tailLines"), "{body}");
    let (code, body) = node_get(port, apiserver, "/exec/default/web/app?output=1")
        .await
        .expect("answer");
    assert_eq!(code, 400, "{body}");
    let (code, body) = node_get(port, apiserver, "/exec/default/web/app?command=sh&output=1")
        .await
        .expect("answer");
    assert_eq!((code, body.as_str()), (400, "Upgrade request required"));
    assert_eq!(
        node_get(port, apiserver, "/healthz").await,
        Ok((200, "ok".to_owned()))
    );
}
