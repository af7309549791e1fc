//! The real `kestrel-cni` executable, invoked the way containerd invokes it,
//! from inside a node namespace, wiring pods in their own namespaces.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

use kestrel_cni::{
    proto::{
        Ack, PodNetworkEvent,
        pod_network_server::{PodNetwork, PodNetworkServer},
    },
    spec::{AddResult, ErrorDoc},
};
use kestrel_testkit::{Netns, privileged_test_can_run, unique_name};

/// Records the notifications the plugin sends, as the node agent receives them.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(&'static str, PodNetworkEvent)>>>);

#[tonic::async_trait]
impl PodNetwork for Recorder {
    async fn added(
        &self,
        request: tonic::Request<PodNetworkEvent>,
    ) -> Result<tonic::Response<Ack>, tonic::Status> {
        self.0
            .lock()
            .expect("lock")
            .push(("added", request.into_inner()));
        Ok(tonic::Response::new(Ack {}))
    }
    async fn deleted(
        &self,
        request: tonic::Request<PodNetworkEvent>,
    ) -> Result<tonic::Response<Ack>, tonic::Status> {
        self.0
            .lock()
            .expect("lock")
            .push(("deleted", request.into_inner()));
        Ok(tonic::Response::new(Ack {}))
    }
}

struct Plugin {
    node: String,
    conf: String,
}

impl Plugin {
    /// Runs the plugin in the node namespace; returns (success, stdout).
    fn call(
        &self,
        command: &str,
        container: &str,
        pod_ns: Option<&Netns>,
        stdin: &str,
    ) -> (bool, String) {
        let netns = pod_ns
            .map(|ns| format!("/run/netns/{}", ns.name))
            .unwrap_or_default();
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_kestrel-cni"))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"),
            )
            .env("CNI_PATH", "/nonexistent")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning kestrel-cni");
        // The plugin may refuse a bad environment before reading stdin.
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes());
        let out = child.wait_with_output().expect("kestrel-cni output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[track_caller]
    fn add(&self, container: &str, pod: &Netns) -> Ipv4Addr {
        let (ok, out) = self.call("ADD", container, Some(pod), &self.conf);
        assert!(ok, "ADD {container} failed: {out}");
        let result: AddResult = serde_json::from_str(&out).expect("ADD result is CNI JSON");
        assert_eq!(result.interfaces[1].name, "eth0");
        assert_eq!(result.ips[0].address.prefix_len(), 32);
        result.ips[0].address.addr()
    }
}

fn ping(from: &Netns, to: Ipv4Addr) {
    from.exec(&["ping", "-q", "-c", "1", "-W", "2", &to.to_string()]);
}

fn link_exists(ns: &str, name: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "link", "show", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wires_pods_that_reach_the_node_and_each_other() {
    if !privileged_test_can_run("wires_pods_that_reach_the_node_and_each_other", &[]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let base = unique_name("kn");
    let node = Netns::new(format!("{base}-node"));
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // A node has an address of its own (its fabric address in a cluster).
    node.exec(&["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"]);
    let pods = [
        Netns::new(format!("{base}-p1")),
        Netns::new(format!("{base}-p2")),
    ];

    let socket: PathBuf = dir.path().join("agent.sock");
    let recorder = Recorder::default();
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind agent socket");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PodNetworkServer::new(recorder.clone()))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );

    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "kestrel", "type": "kestrel-cni",
        "podCIDR": "10.42.7.0/24", "dataDir": dir.path().join("cni"), "agentSocket": socket,
    })
    .to_string();
    let plugin = Plugin {
        node: node.name.clone(),
        conf,
    };

    let ip1 = plugin.add("sandbox-1", &pods[0]);
    let ip2 = plugin.add("sandbox-2", &pods[1]);
    assert_ne!(ip1, ip2);
    assert!(
        "10.42.7.0/24"
            .parse::<ipnet::Ipv4Net>()
            .expect("cidr")
            .contains(&ip1)
    );
    assert_eq!(
        plugin.add("sandbox-1", &pods[0]),
        ip1,
        "a repeated ADD keeps the address"
    );

    // Node to pod, pod to node's routes, and pod to pod through the node.
    ping(&node, ip1);
    ping(&pods[0], ip2);
    ping(&pods[1], ip1);

    let (ok, out) = plugin.call("CHECK", "sandbox-1", Some(&pods[0]), &plugin.conf);
    assert!(ok, "CHECK: {out}");

    let events = recorder.0.lock().expect("lock").clone();
    let added: Vec<&PodNetworkEvent> = events
        .iter()
        .filter(|(k, _)| *k == "added")
        .map(|(_, e)| e)
        .collect();
    assert_eq!(added.len(), 3, "one notification per ADD: {events:?}");
    assert_eq!(added[0].ip, ip1.to_string());
    assert_eq!(added[0].pod_name, "sandbox-1");
    assert!(link_exists(&node.name, &added[0].host_ifname));
    assert!(added[0].host_ifindex > 0);

    let host1 = added[0].host_ifname.clone();
    let (ok, out) = plugin.call("DEL", "sandbox-1", Some(&pods[0]), &plugin.conf);
    assert!(ok, "DEL: {out}");
    assert!(!link_exists(&node.name, &host1), "DEL removes the veth");
    assert!(!link_exists(&pods[0].name, "eth0"));
    let (ok, out) = plugin.call("DEL", "sandbox-1", None, &plugin.conf);
    assert!(ok, "a second DEL, namespace gone, still succeeds: {out}");
    let (ok, _) = plugin.call("CHECK", "sandbox-1", Some(&pods[0]), &plugin.conf);
    assert!(!ok, "CHECK after DEL fails");
    // The released address is not handed straight back out.
    let pod3 = Netns::new(format!("{base}-p3"));
    let ip3 = plugin.add("sandbox-3", &pod3);
    assert!(ip3 != ip1 && ip3 != ip2);
    let deleted = recorder
        .0
        .lock()
        .expect("lock")
        .iter()
        .filter(|(k, _)| *k == "deleted")
        .count();
    assert_eq!(deleted, 2);

    // Bad input: a CNI error document and nothing created.
    let (ok, out) = plugin.call("ADD", "sandbox-bad", Some(&pod3), "{not json");
    assert!(!ok);
    let doc: ErrorDoc = serde_json::from_str(&out).expect("error document");
    assert_eq!(doc.code, 6, "{doc:?}");
    let (ok, out) = plugin.call("FROB", "sandbox-bad", Some(&pod3), &plugin.conf);
    assert!(!ok);
    assert_eq!(
        serde_json::from_str::<ErrorDoc>(&out)
            .expect("error document")
            .code,
        4
    );
    // An unreachable agent fails ADD with "try again later" and rolls back.
    let unreachable = Plugin {
        node: node.name.clone(),
        conf: plugin.conf.replace(
            &socket.to_string_lossy().into_owned(),
            "/nonexistent/agent.sock",
        ),
    };
    let pod4 = Netns::new(format!("{base}-p4"));
    let (ok, out) = unreachable.call("ADD", "sandbox-4", Some(&pod4), &unreachable.conf);
    assert!(!ok, "{out}");
    assert_eq!(
        serde_json::from_str::<ErrorDoc>(&out)
            .expect("error document")
            .code,
        11,
        "{out}"
    );
    assert!(
        !link_exists(
            &node.name,
            &kestrel_cni::net::host_ifname("sandbox-4", "eth0")
        ),
        "veth rolled back"
    );
    assert!(!link_exists(&pod4.name, "eth0"), "pod end rolled back");
    let ipam = kestrel_cni::ipam::Ipam::open(
        &dir.path().join("cni"),
        "10.42.7.0/24".parse().expect("cidr"),
    )
    .expect("ipam");
    let owner = kestrel_cni::ipam::Owner {
        container_id: "sandbox-4".into(),
        ifname: "eth0".into(),
    };
    assert_eq!(
        ipam.find(&owner).expect("find"),
        None,
        "address rolled back"
    );

    let (ok, out) = plugin.call("VERSION", "", None, "");
    assert!(ok && out.contains("\"1.0.0\""), "{out}");

    for (container, pod) in [("sandbox-2", &pods[1]), ("sandbox-3", &pod3)] {
        let (ok, out) = plugin.call("DEL", container, Some(pod), &plugin.conf);
        assert!(ok, "DEL {container}: {out}");
    }
    let left = std::fs::read_dir(dir.path().join("cni/ipam/10.42.7.0_24"))
        .expect("ipam dir")
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(left, 0, "every address released");
    server.abort();
    let _ = Path::new(&socket);
}
