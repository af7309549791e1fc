//! Real containerd, driven over CRI: two per-node instances run side by side,
//! each in its own network namespace, and both answer the CRI runtime service.

use std::path::Path;

use kestrel_cri::{
    containerd::{Containerd, ContainerdConfig, Placement},
    v1,
};
use kestrel_testkit::{Netns, privileged_test_can_run, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_containerds_answer_cri_side_by_side() {
    let installed = (
        Path::new("/usr/bin/containerd").exists(),
        "containerd is not installed",
    );
    if !privileged_test_can_run("two_node_containerds_answer_cri_side_by_side", &[installed]) {
        return;
    }
    let base = unique_name("kc");
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let namespaces = [
        Netns::new(format!("{base}-1")),
        Netns::new(format!("{base}-2")),
    ];

    let mut nodes = Vec::new();
    for (dir, ns) in dirs.iter().zip(&namespaces) {
        let config = ContainerdConfig::under(dir.path(), "kestrel.local/pause:test");
        let placement = Placement {
            netns: Some(&ns.name),
            cgroup: None,
        };
        let containerd = Containerd::start(config, placement)
            .await
            .expect("containerd starts");
        nodes.push(containerd);
    }

    let mut pids = Vec::new();
    for node in &nodes {
        let mut cri = node.runtime_client().expect("client");
        let version = cri
            .version(v1::VersionRequest {
                version: "v1".into(),
            })
            .await
            .expect("Version")
            .into_inner();
        assert_eq!(version.runtime_name, "containerd");
        assert_eq!(version.runtime_api_version, "v1");

        let status = cri
            .status(v1::StatusRequest { verbose: false })
            .await
            .expect("Status")
            .into_inner()
            .status
            .expect("status present");
        let runtime_ready = status
            .conditions
            .iter()
            .find(|c| c.r#type == "RuntimeReady");
        assert!(
            runtime_ready.is_some_and(|c| c.status),
            "runtime not ready: {status:?}"
        );
        // No CNI configuration has been written yet, so the network is not ready.
        let network_ready = status
            .conditions
            .iter()
            .find(|c| c.r#type == "NetworkReady");
        assert!(
            network_ready.is_some_and(|c| !c.status),
            "network should not be ready: {status:?}"
        );

        let sandboxes = cri
            .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
            .await
            .expect("ListPodSandbox")
            .into_inner();
        assert!(
            sandboxes.items.is_empty(),
            "a fresh node has no pods: {sandboxes:?}"
        );
        pids.push(node.pid().expect("running"));
    }
    assert_ne!(nodes[0].config().socket, nodes[1].config().socket);

    for node in nodes {
        node.stop().await.expect("stop");
    }
    for pid in pids {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits"));
        assert_eq!(
            nix::sys::signal::kill(pid, None),
            Err(nix::errno::Errno::ESRCH),
            "containerd {pid} should be gone after stop"
        );
    }
}
