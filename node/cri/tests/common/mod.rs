//! What the CRI integration tests share: a node's containerd in the test's
//! namespace and cgroup, and running one container to completion in a pod
//! on the node's own network.

use std::{path::Path, time::Duration};

use kestrel_cri::{
    containerd::{Containerd, ContainerdConfig, Placement},
    v1,
};
use kestrel_testkit::{Cgroup, Netns};

/// The sandbox image, from the offline archives (`pause.tar`).
pub const PAUSE: &str = "docker.io/kestrel/pause:0.1.0";

/// Starts a node's containerd under `dir/containerd`, in `ns` and `cgroup`.
pub async fn start_containerd(dir: &Path, ns: &Netns, cgroup: &Cgroup) -> Containerd {
    let config = ContainerdConfig::under(&dir.join("containerd"), PAUSE);
    let placement = Placement {
        netns: Some(&ns.name),
        cgroup: Some(&cgroup.v2_dir()),
    };
    Containerd::start(config, placement)
        .await
        .expect("containerd starts")
}

/// The end of containerd's log, for failure messages.
pub fn log_tail(containerd: &Containerd) -> String {
    let log = std::fs::read_to_string(containerd.config().log_path()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// NODE mode: the pod shares the node's network namespace, which in these
/// tests is containerd's own, so no CNI plugin is needed.
fn node_network() -> Option<v1::NamespaceOption> {
    Some(v1::NamespaceOption {
        network: v1::NamespaceMode::Node as i32,
        ..Default::default()
    })
}

/// A container run to its end by [`run_to_exit`].
pub struct Exited {
    /// Its final CRI status.
    pub status: v1::ContainerStatus,
    /// Its log, in the CRI log format.
    pub log: String,
}

/// Runs `command` from `image` as the only container of a host-network pod
/// (pod cgroups under `/<uid>/pods`, logs under `logs`), waits for it to
/// exit, then stops and removes the pod.
pub async fn run_to_exit(
    containerd: &Containerd,
    uid: &str,
    logs: &Path,
    image: &str,
    command: &[&str],
) -> Exited {
    let mut cri = containerd.runtime_client().expect("client");
    let sandbox_config = v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: "cri-test".into(),
            uid: uid.to_owned(),
            namespace: "default".into(),
            attempt: 0,
        }),
        // A host-network pod shares the node's UTS namespace, so it cannot
        // have a hostname of its own.
        hostname: String::new(),
        log_directory: logs.to_string_lossy().into_owned(),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{uid}/pods"),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: node_network(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox_id = cri
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox: {e}\ncontainerd log:\n{}",
                log_tail(containerd)
            )
        })
        .into_inner()
        .pod_sandbox_id;

    let container_config = v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        command: command.iter().map(|&arg| arg.to_owned()).collect(),
        log_path: "main/0.log".into(),
        linux: Some(v1::LinuxContainerConfig {
            security_context: Some(v1::LinuxContainerSecurityContext {
                namespace_options: node_network(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let container_id = cri
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(container_config),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.start_container(v1::StartContainerRequest {
        container_id: container_id.clone(),
    })
    .await
    .expect("StartContainer");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = cri
            .container_status(v1::ContainerStatusRequest {
                container_id: container_id.clone(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status present");
        if status.state == v1::ContainerState::ContainerExited as i32 {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "container never exited: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(logs.join("main/0.log")).expect("container log");

    cri.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .expect("StopPodSandbox");
    cri.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox_id,
    })
    .await
    .expect("RemovePodSandbox");
    Exited { status, log }
}
