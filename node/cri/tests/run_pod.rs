//! Pods through CRI on real containerd and runc, from the offline image
//! archives (`cargo xtask images`): import, run a sandbox on the Kestrel pause
//! image, run a busybox container, read its exit code, log and cgroups.

use std::time::Duration;

use kestrel_cri::{
    containerd::{Containerd, ContainerdConfig, Placement},
    v1,
};
use kestrel_testkit::{
    Cgroup, MountedTempDir, Netns, images_dir, privileged_test_can_run, unique_name,
};

const PAUSE: &str = "docker.io/kestrel/pause:0.1.0";
const BUSYBOX: &str = "docker.io/library/busybox:1.35";
const ECHO: &str = "docker.io/kestrel/echo:0.1.0";

/// The end of containerd's log, for failure messages.
fn log_tail(containerd: &Containerd) -> String {
    let log = std::fs::read_to_string(containerd.config().log_path()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

fn host_network() -> Option<v1::NamespaceOption> {
    // NODE mode: the pod shares the node's network namespace, which here is
    // the test's own, so no CNI plugin is needed for this test.
    Some(v1::NamespaceOption {
        network: v1::NamespaceMode::Node as i32,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_busybox_container_from_the_offline_images() {
    let images = images_dir();
    let built = (
        images.join("busybox.tar").exists(),
        "image archives missing: run `cargo xtask images`",
    );
    let installed = (
        std::path::Path::new("/usr/bin/containerd").exists(),
        "containerd is not installed",
    );
    if !privileged_test_can_run(
        "runs_a_busybox_container_from_the_offline_images",
        &[installed, built],
    ) {
        return;
    }
    // Declared so that they drop in reverse: containerd, namespace, cgroup
    // (killing any shim or container left), then the mounts and files.
    let dir = MountedTempDir::new();
    let name = unique_name("kestrel-test-");
    let cgroup = Cgroup::new(name.clone());
    let ns = Netns::new(name.clone());
    let config = ContainerdConfig::under(&dir.path().join("containerd"), PAUSE);
    let placement = Placement {
        netns: Some(&ns.name),
        cgroup: Some(&cgroup.v2_dir()),
    };
    let containerd = Containerd::start(config, placement)
        .await
        .expect("containerd starts");

    for archive in ["pause.tar", "busybox.tar", "kestrel-echo.tar"] {
        containerd
            .import_archive(&images.join(archive))
            .await
            .expect("import");
    }
    let mut images_client = kestrel_cri::ImageClient::new(
        kestrel_cri::connect(&containerd.config().socket).expect("channel"),
    );
    let listed = images_client
        .list_images(v1::ListImagesRequest { filter: None })
        .await
        .expect("ListImages")
        .into_inner();
    let tags: Vec<&String> = listed.images.iter().flat_map(|i| &i.repo_tags).collect();
    for want in [PAUSE, BUSYBOX, ECHO] {
        assert!(
            tags.iter().any(|t| *t == want),
            "{want} not imported; have {tags:?}"
        );
    }

    let mut cri = containerd.runtime_client().expect("client");
    let logs = dir.path().join("pod-logs");
    let sandbox_config = v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: "cri-test".into(),
            uid: name.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        // A host-network pod shares the node's UTS namespace, so it cannot
        // have a hostname of its own.
        hostname: String::new(),
        log_directory: logs.to_string_lossy().into_owned(),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{name}/pods"),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: host_network(),
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
                log_tail(&containerd)
            )
        })
        .into_inner()
        .pod_sandbox_id;

    let container_config = v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: "hello".into(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo hello-from-busybox; cat /proc/self/cgroup; exit 3".into(),
        ],
        log_path: "hello/0.log".into(),
        linux: Some(v1::LinuxContainerConfig {
            security_context: Some(v1::LinuxContainerSecurityContext {
                namespace_options: host_network(),
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
    assert_eq!(status.exit_code, 3, "{status:?}");

    let log = std::fs::read_to_string(logs.join("hello/0.log")).expect("container log");
    assert!(
        log.contains(" stdout F hello-from-busybox"),
        "CRI log format with our line:\n{log}"
    );
    // Limits are enforced in the v1 memory hierarchy under the node's subtree.
    let memory = log
        .lines()
        .find(|l| l.contains(":memory:"))
        .unwrap_or_default();
    assert!(
        memory.contains(&format!(":memory:/{name}/pods/")),
        "memory cgroup under the node: {log}"
    );
    // And the v2 hierarchy, where cgroup eBPF hooks attach, holds it under the node too.
    let unified = log.lines().find(|l| l.contains(" 0::")).unwrap_or_default();
    assert!(
        unified.contains(&format!(" 0::/{name}")),
        "v2 cgroup under the node: {log}"
    );

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
    let left = cri
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner();
    assert!(left.items.is_empty(), "{left:?}");
    containerd.stop().await.expect("stop");
}
