//! End to end on a real cluster: `kestrel up --nodes 2` (network
//! namespaces, one containerd and agent per node) driven by the real
//! kubectl 1.35. Root only; CI runs it as root and never skips it.
//!
//! One cluster per test process (its fabric and pod ranges are fixed), so
//! the scenarios run in order inside one test. Each polls with a deadline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kestrel_testkit::{images_dir, kubectl_path, privileged_test_can_run};
use serde_json::Value;

mod access;
mod dns;
mod identity;
mod netpol;
mod pods;
mod portforward;
mod preemption;
mod services;
mod sidecars;
mod storage;
mod workloads;

/// A cluster made by `kestrel up`; `kestrel down` runs on drop, even when
/// the test fails.
struct Cluster {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    /// Processes the test started itself (a restarted agent); reaped after `down`.
    children: std::sync::Mutex<Vec<std::process::Child>>,
}

impl Cluster {
    fn up(nodes: u8) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kestrel-e2e-")
            .tempdir()
            .expect("temp dir");
        let cluster = Self {
            kubeconfig: dir.path().join("server/admin.kubeconfig"),
            dir,
            children: std::sync::Mutex::default(),
        };
        let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
            .args(["up", "--nodes", &nodes.to_string(), "--data-dir"])
            .arg(cluster.dir.path())
            .arg("--images-dir")
            .arg(images_dir())
            .args(["--dns-upstream", dns::UPSTREAM])
            .output()
            .expect("run kestrel up");
        assert!(
            out.status.success(),
            "kestrel up failed:\n{}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            cluster.log("server.log")
        );
        cluster
    }

    fn log(&self, rel: &str) -> String {
        let s = std::fs::read_to_string(self.dir.path().join(rel)).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join("nodes").join(node)
    }

    /// Run kubectl; returns (success, stdout, stderr).
    fn kubectl_raw(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use std::io::Write as _;
        let mut child = Command::new(kubectl_path())
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kubectl");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("write stdin");
        }
        drop(input);
        let out = child.wait_with_output().expect("kubectl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[track_caller]
    fn kubectl(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl_raw(args, None);
        assert!(ok, "kubectl {args:?} failed: {err}");
        out
    }

    #[track_caller]
    fn apply(&self, yaml: &str) {
        let (ok, _, err) = self.kubectl_raw(&["apply", "-f", "-"], Some(yaml));
        assert!(ok, "kubectl apply failed: {err}\n{yaml}");
    }

    fn pod(&self, name: &str) -> Option<Value> {
        let (ok, out, _) = self.kubectl_raw(&["get", "pod", name, "-o", "json"], None);
        ok.then(|| serde_json::from_str(&out).ok()).flatten()
    }

    /// Poll `f` every 200 ms until it returns Some, or fail with `what`
    /// and the agents' logs.
    #[track_caller]
    fn wait<T>(&self, timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\nserver:\n{}\nnode-1 agent:\n{}\nnode-2 agent:\n{}",
                    self.log("server.log"),
                    self.log("nodes/node-1/agent.log"),
                    self.log("nodes/node-2/agent.log")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
            .args(["down", "--data-dir"])
            .arg(self.dir.path())
            .output();
        if let Ok(out) = out
            && !out.status.success()
        {
            eprintln!("kestrel down: {}", String::from_utf8_lossy(&out.stderr));
        }
        // `down` killed everything in the cluster's cgroups; reap ours.
        for mut child in self
            .children
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
        {
            let _ = child.wait();
        }
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// PIDs of processes in a pod's containers, by the pod's uid (the agent
/// puts each pod in `<node cgroup>/pods/pod<uid>`).
fn pod_pids(uid: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup/unified")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        if d.to_string_lossy().contains(&format!("pod{uid}")) {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            out.extend(procs.lines().filter_map(|l| l.parse::<i32>().ok()));
        }
    }
    out
}

const ECHO: &str = "docker.io/kestrel/echo:0.1.0";
const BUSYBOX: &str = "docker.io/library/busybox:1.35";

fn echo_pod(name: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  nodeName: {node}
  containers:
  - name: echo
    image: {ECHO}
    env:
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    readinessProbe: {{httpGet: {{port: 8080, path: /healthz}}, periodSeconds: 1}}
"#
    )
}

#[test]
fn two_node_cluster_end_to_end() {
    let installed = (
        Path::new("/usr/bin/containerd").exists(),
        "containerd is not installed",
    );
    let built = (
        images_dir().join("kestrel-echo.tar").exists(),
        "image archives missing: run `cargo xtask images`",
    );
    if !privileged_test_can_run("two_node_cluster_end_to_end", &[installed, built]) {
        return;
    }
    let c = Cluster::up(2);
    let nodes = c.kubectl(&["get", "nodes", "-o", "json"]);
    let nodes: Value = serde_json::from_str(&nodes).expect("nodes json");
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(2));
    for n in nodes["items"].as_array().into_iter().flatten() {
        assert_eq!(str_at(n, "/metadata/labels/kubernetes.io~1os"), "linux");
        assert!(str_at(n, "/status/nodeInfo/containerRuntimeVersion").starts_with("containerd://"));
        assert_eq!(str_at(n, "/status/allocatable/pods"), "110");
        assert!(!str_at(n, "/spec/podCIDR").is_empty(), "{n}");
    }

    access::a_node_credential_is_not_an_admin(&c);
    access::components_hold_only_their_roles(&c);
    access::view_edit_admin(&c);
    pods::deployment_spreads_and_turns_ready(&c);
    pods::readiness_failure_leaves_the_endpointslice(&c);
    pods::pod_to_pod_across_nodes_keeps_the_client_ip(&c);
    pods::logs_and_exec_reach_the_container(&c);
    portforward::port_forward_and_proxy(&c);
    pods::crash_loop_backs_off(&c);
    pods::liveness_failure_restarts(&c);
    pods::oom_is_reported(&c);
    pods::deleting_a_pod_removes_sandbox_veth_and_ip(&c);
    workloads::cronjob_runs_by_hand_and_logs_pick_its_own_pod(&c);
    workloads::replication_controller_scales_on_real_nodes(&c);
    storage::statefulset_data_survives_its_pod(&c);
    sidecars::sidecars_hooks_and_ephemeral_containers(&c);
    preemption::a_high_priority_pod_preempts_a_low_priority_one(&c);
    identity::setup(&c);
    identity::pods_read_their_token_ca_and_namespace(&c);
    identity::in_cluster_kubectl_uses_the_mounted_token(&c);
    services::setup(&c);
    services::cluster_ip_spreads_tcp_evenly(&c);
    services::cluster_ip_answers_udp(&c);
    services::node_port_from_the_fabric(&c);
    services::introspection_shows_the_dataplane(&c);
    services::external_traffic_policy_local_keeps_the_client_ip(&c);
    services::session_affinity_sticks(&c);
    services::no_backend_refuses_then_recovers(&c);
    services::start_long_lived_connection(&c);
    let upstream = dns::setup(&c);
    dns::pods_get_cluster_resolv_conf(&c);
    dns::service_and_pod_records(&c);
    dns::external_names_through_the_upstream(&c, &upstream);
    dns::nxdomain_and_nodata(&c);
    dns::new_services_resolve_within_a_second(&c);
    dns::hostile_input_is_counted_and_others_still_answered(&c);
    dns::kubectl_run_busybox_works_offline(&c);
    dns::queries_are_observable(&c);
    dns::start_resolve_loop(&c);
    pods::agent_restart_adopts_running_containers(&c);
    dns::resolve_loop_survived(&c);
    services::long_lived_connection_survived(&c);
    let model = netpol::setup(&c);
    netpol::truth_tables(&c, &model);
    netpol::updates_while_traffic_flows(&c, &model);
    netpol::services_under_egress_policy(&c);
    netpol::verdicts_are_observable(&c, &model);
    services::no_iptables_or_nftables_rules(&c);
}

/// Addresses of the ready endpoints in a Service's EndpointSlices.
fn ready_endpoints(c: &Cluster, svc: &str) -> Vec<String> {
    let out = c.kubectl(&[
        "get",
        "endpointslices",
        "-l",
        &format!("kubernetes.io/service-name={svc}"),
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap_or_default();
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .filter_map(|e| e["addresses"][0].as_str().map(str::to_owned))
        .collect()
}

fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk_names(&e.path()));
        }
    }
    out
}

/// The name of the network namespace `node`'s agent runs in.
fn netns_of(c: &Cluster, node: &str) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(format!("/proc/{}/ns/net", agent_pid(c, node)))
        .expect("agent netns")
        .ino();
    std::fs::read_dir("/run/netns")
        .expect("/run/netns")
        .flatten()
        .find(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .expect("the node's namespace")
}

fn veths(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-br", "link"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(['@', ' ']).next())
        .filter(|n| n.starts_with("kst"))
        .map(str::to_owned)
        .collect()
}

/// The PID of `node`'s agent in this cluster.
fn agent_pid(c: &Cluster, node: &str) -> i32 {
    let dir = c.node_dir(node).to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .find(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.get(1).is_some_and(|a| a == "agent") && args.contains(&dir)
        })
        .expect("the agent's pid")
}
