//! Pods through CRI on real containerd and runc, from the offline image
//! archives (`cargo xtask images`): import, run a sandbox on the Kestrel pause
//! image, run a busybox container, read its exit code, log and cgroups.

mod common;

use kestrel_cri::v1;
use kestrel_testkit::{
    Cgroup, MountedTempDir, Netns, images_dir, privileged_test_can_run, unique_name,
};

const BUSYBOX: &str = "docker.io/library/busybox:1.35";
const ECHO: &str = "docker.io/kestrel/echo:0.1.0";

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
    let containerd = common::start_containerd(dir.path(), &ns, &cgroup).await;

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
    for want in [common::PAUSE, BUSYBOX, ECHO] {
        assert!(
            tags.iter().any(|t| *t == want),
            "{want} not imported; have {tags:?}"
        );
    }

    let logs = dir.path().join("pod-logs");
    let common::Exited { status, log } = common::run_to_exit(
        &containerd,
        &name,
        &logs,
        BUSYBOX,
        &[
            "sh",
            "-c",
            "echo hello-from-busybox; cat /proc/self/cgroup; exit 3",
        ],
    )
    .await;
    assert_eq!(status.exit_code, 3, "{status:?}");
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

    let mut cri = containerd.runtime_client().expect("client");
    let left = cri
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner();
    assert!(left.items.is_empty(), "{left:?}");
    containerd.stop().await.expect("stop");
}
