//! Building CRI requests from a Pod: the sandbox config and each
//! container's config (command, env, mounts, resources, security).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, SecurityContext};
use kestrel_cri::v1;

use super::resources;

/// Label keys the kubelet puts on sandboxes and containers.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
/// Label: pod namespace.
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label: pod uid.
pub const POD_UID: &str = "io.kubernetes.pod.uid";
/// Label: container name.
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// Whether the pod shares the node's network namespace.
pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn ns_options(pod: &Pod) -> v1::NamespaceOption {
    let spec = pod.spec.as_ref();
    v1::NamespaceOption {
        network: if host_network(pod) {
            v1::NamespaceMode::Node
        } else {
            v1::NamespaceMode::Pod
        } as i32,
        pid: if spec.and_then(|s| s.host_pid).unwrap_or(false) {
            v1::NamespaceMode::Node
        } else if spec
            .and_then(|s| s.share_process_namespace)
            .unwrap_or(false)
        {
            v1::NamespaceMode::Pod
        } else {
            v1::NamespaceMode::Container
        } as i32,
        ipc: if spec.and_then(|s| s.host_ipc).unwrap_or(false) {
            v1::NamespaceMode::Node
        } else {
            v1::NamespaceMode::Pod
        } as i32,
        ..Default::default()
    }
}

fn meta(pod: &Pod) -> (String, String, String) {
    (
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.uid.clone().unwrap_or_default(),
    )
}

/// Where the pod's container logs go.
pub fn log_dir(logs_root: &Path, pod: &Pod) -> PathBuf {
    let (name, ns, uid) = meta(pod);
    logs_root.join(format!("{ns}_{name}_{uid}"))
}

/// The sandbox config.
pub fn sandbox(
    pod: &Pod,
    attempt: u32,
    logs_root: &Path,
    cgroup_parent: &str,
) -> v1::PodSandboxConfig {
    let (name, ns, uid) = meta(pod);
    let spec = pod.spec.as_ref();
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.insert(POD_NAME.into(), name.clone());
    labels.insert(POD_NAMESPACE.into(), ns.clone());
    labels.insert(POD_UID.into(), uid.clone());
    let hostname = if host_network(pod) {
        String::new()
    } else {
        spec.and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| name.clone())
    };
    let sysctls = spec
        .and_then(|s| s.security_context.as_ref()?.sysctls.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.name, s.value))
        .collect();
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name,
            uid: uid.clone(),
            namespace: ns,
            attempt,
        }),
        hostname,
        log_directory: log_dir(logs_root, pod).to_string_lossy().into_owned(),
        labels,
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: if cgroup_parent.is_empty() {
                String::new()
            } else {
                format!("{cgroup_parent}/pod{uid}")
            },
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(ns_options(pod)),
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn security(pod: &Pod, sc: Option<&SecurityContext>) -> v1::LinuxContainerSecurityContext {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let user = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|p| p.run_as_user));
    let group = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| psc.and_then(|p| p.run_as_group));
    v1::LinuxContainerSecurityContext {
        capabilities: caps.map(|c| v1::Capability {
            add_capabilities: c.add.clone().unwrap_or_default(),
            drop_capabilities: c.drop.clone().unwrap_or_default(),
            ..Default::default()
        }),
        privileged,
        namespace_options: Some(ns_options(pod)),
        run_as_user: user.map(|value| v1::Int64Value { value }),
        run_as_group: group.map(|value| v1::Int64Value { value }),
        readonly_rootfs: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        supplemental_groups: psc
            .and_then(|p| p.supplemental_groups.clone())
            .unwrap_or_default(),
        no_new_privs: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        // Upstream's default masks; privileged containers see everything.
        masked_paths: if privileged {
            vec![]
        } else {
            [
                "/proc/asound",
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ]
            .map(String::from)
            .to_vec()
        },
        readonly_paths: if privileged {
            vec![]
        } else {
            [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ]
            .map(String::from)
            .to_vec()
        },
        ..Default::default()
    }
}

/// One container's config.
pub fn container(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    env: Vec<(String, String)>,
    mounts: Vec<v1::Mount>,
) -> anyhow::Result<v1::ContainerConfig> {
    let (name, ns, uid) = meta(pod);
    let vars: std::collections::BTreeMap<String, String> = env.iter().cloned().collect();
    let expand = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter()
            .flatten()
            .map(|s| super::env::expand(s, &vars))
            .collect()
    };
    let labels: HashMap<String, String> = [
        (POD_NAME, name),
        (POD_NAMESPACE, ns),
        (POD_UID, uid),
        (CONTAINER_NAME, c.name.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(v1::ImageSpec {
            image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: expand(&c.command),
        args: expand(&c.args),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: env
            .into_iter()
            .map(|(key, value)| v1::KeyValue { key, value })
            .collect(),
        mounts,
        labels,
        annotations: [(
            "io.kubernetes.container.restartCount".to_owned(),
            attempt.to_string(),
        )]
        .into(),
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(v1::LinuxContainerConfig {
            resources: Some(resources::linux(c)?),
            security_context: Some(security(pod, c.security_context.as_ref())),
        }),
        ..Default::default()
    })
}
