//! Pods on a real cluster: placement, probes, restarts, logs and exec,
//! teardown, and an agent restart that adopts running containers.

use super::*;

pub fn deployment_spreads_and_turns_ready(c: &Cluster) {
    c.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: echo
        image: {ECHO}
        env:
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
        readinessProbe: {{httpGet: {{port: 8080, path: /healthz}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#
    ));
    let pods = c.wait(Duration::from_secs(90), "4 web replicas Ready", || {
        let out = c.kubectl(&["get", "pods", "-l", "app=web", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        let items = v["items"].as_array()?.clone();
        (items.len() == 4 && items.iter().all(ready)).then_some(items)
    });
    let nodes: std::collections::BTreeSet<&str> =
        pods.iter().map(|p| str_at(p, "/spec/nodeName")).collect();
    assert_eq!(nodes.len(), 2, "replicas spread over both nodes: {nodes:?}");
    // The Deployment's status follows its pods a moment later.
    c.wait(
        Duration::from_secs(30),
        "the Deployment reporting 4 ready",
        || {
            let d = c.kubectl(&["get", "deployment", "web", "-o", "json"]);
            let d: Value = serde_json::from_str(&d).ok()?;
            (d["status"]["readyReplicas"] == 4).then_some(())
        },
    );
    c.wait(Duration::from_secs(30), "4 ready endpoints", || {
        (ready_endpoints(c, "web").len() == 4).then_some(())
    });
}

pub fn readiness_failure_leaves_the_endpointslice(c: &Cluster) {
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: flaky, labels: {{app: web}}}}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "touch /tmp/ready; sleep 3600"]
    readinessProbe:
      exec: {{command: [cat, /tmp/ready]}}
      periodSeconds: 1
      failureThreshold: 1
"#
    ));
    let p = c.wait(Duration::from_secs(60), "flaky Ready", || {
        c.pod("flaky").filter(ready)
    });
    let ip = str_at(&p, "/status/podIP").to_owned();
    c.wait(Duration::from_secs(30), "flaky in the slice", || {
        ready_endpoints(c, "web").contains(&ip).then_some(())
    });
    c.kubectl(&["exec", "flaky", "--", "rm", "/tmp/ready"]);
    c.wait(Duration::from_secs(30), "flaky not Ready", || {
        c.pod("flaky").filter(|p| !ready(p))
    });
    c.wait(
        Duration::from_secs(30),
        "flaky out of the ready endpoints",
        || {
            let eps = ready_endpoints(c, "web");
            (!eps.contains(&ip) && eps.len() == 4).then_some(())
        },
    );
    c.kubectl(&["delete", "pod", "flaky"]);
}

pub fn pod_to_pod_across_nodes_keeps_the_client_ip(c: &Cluster) {
    c.apply(&echo_pod("echo-a", "node-1"));
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: client-b}}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: sh, image: {BUSYBOX}, command: [sh, -c, "sleep 3600"]}}
"#
    ));
    let server = c.wait(Duration::from_secs(60), "echo-a Ready", || {
        c.pod("echo-a").filter(ready)
    });
    let client = c.wait(Duration::from_secs(60), "client-b Running", || {
        c.pod("client-b")
            .filter(|p| p["status"]["phase"] == "Running")
    });
    let server_ip = str_at(&server, "/status/podIP").to_owned();
    let client_ip = str_at(&client, "/status/podIP").to_owned();
    assert!(server_ip.starts_with("10.42.") && client_ip.starts_with("10.42."));
    assert_ne!(
        str_at(&server, "/status/hostIP"),
        str_at(&client, "/status/hostIP")
    );
    let url = format!("http://{server_ip}:8080/");
    let reply = c.wait(Duration::from_secs(20), "an answer across nodes", || {
        let (ok, out, _) = c.kubectl_raw(
            &[
                "exec", "client-b", "--", "timeout", "5", "wget", "-qO-", &url,
            ],
            None,
        );
        ok.then_some(out)
    });
    assert!(
        reply.starts_with(&format!("pod=echo-a ip={server_ip} client={client_ip}:")),
        "the server must see the client's own pod IP: {reply}"
    );
}

pub fn logs_and_exec_reach_the_container(c: &Cluster) {
    let logs = c.kubectl(&["logs", "echo-a"]);
    assert!(logs.contains("kestrel-echo: echo-a serving"), "{logs}");
    let (ok, out, err) = c.kubectl_raw(
        &[
            "exec",
            "client-b",
            "--",
            "sh",
            "-c",
            "echo hi; echo err >&2; exit 3",
        ],
        None,
    );
    assert!(!ok, "exit code 3 must fail kubectl exec");
    assert_eq!(out, "hi\n");
    assert!(err.contains("err"), "{err}");
    let (ok, out, _) = c.kubectl_raw(
        &["exec", "-i", "client-b", "--", "cat"],
        Some("through stdin\n"),
    );
    assert!(ok);
    assert_eq!(out, "through stdin\n");
    // logs -f follows lines written after it started.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: ticker}}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: t, image: {BUSYBOX}, command: [sh, -c, "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done"]}}
"#
    ));
    c.wait(Duration::from_secs(60), "ticker running", || {
        c.pod("ticker")
            .filter(|p| p["status"]["phase"] == "Running")
    });
    let mut follow = Command::new(kubectl_path())
        .args(["logs", "-f", "ticker", "--tail=1"])
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let stdout = follow.stdout.take().expect("stdout");
    let lines = std::thread::spawn(move || {
        use std::io::BufRead as _;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take(5)
            .collect::<Vec<String>>()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let lines = lines.join().expect("reader");
    assert_eq!(lines.len(), 5, "logs -f must keep streaming: {lines:?}");
    let n: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(
        n.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive lines: {lines:?}"
    );
    c.kubectl(&["delete", "pod", "ticker"]);
}

pub fn crash_loop_backs_off(c: &Cluster) {
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: crasher}}
spec:
  nodeName: node-1
  containers:
  - {{name: crash, image: {BUSYBOX}, command: [sh, -c, "exit 3"]}}
"#
    ));
    // Record when each attempt was seen running or exited.
    let mut seen_at: Vec<(i64, Instant)> = Vec::new();
    let mut backoff_reason = false;
    c.wait(Duration::from_secs(90), "three restarts of crasher", || {
        let p = c.pod("crasher")?;
        let cs = &p["status"]["containerStatuses"][0];
        let n = cs["restartCount"].as_i64().unwrap_or(0);
        if seen_at.last().is_none_or(|(m, _)| *m < n) {
            seen_at.push((n, Instant::now()));
        }
        backoff_reason |=
            cs.pointer("/state/waiting/reason") == Some(&Value::from("CrashLoopBackOff"));
        if n >= 1 {
            assert_eq!(
                cs.pointer("/lastState/terminated/exitCode"),
                Some(&Value::from(3)),
                "{cs}"
            );
        }
        (n >= 3).then_some(())
    });
    assert!(
        backoff_reason,
        "the waiting reason between restarts is CrashLoopBackOff"
    );
    let times: Vec<Instant> = seen_at.iter().map(|(_, t)| *t).collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // 10 s, 20 s, 40 s... measured at 200 ms resolution.
    let last = gaps.len() - 1;
    assert!(
        gaps[last] > gaps[last - 1] + Duration::from_secs(5),
        "restarts must back off more each time: {gaps:?}"
    );
    c.kubectl(&["delete", "pod", "crasher", "--grace-period=0", "--force"]);
}

pub fn liveness_failure_restarts(c: &Cluster) {
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: unhealthy}}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sh, -c, "touch /tmp/healthy; sleep 4; rm /tmp/healthy; sleep 3600"]
    livenessProbe:
      exec: {{command: [cat, /tmp/healthy]}}
      periodSeconds: 1
      failureThreshold: 2
"#
    ));
    c.wait(Duration::from_secs(60), "a liveness restart", || {
        let p = c.pod("unhealthy")?;
        (p.pointer("/status/containerStatuses/0/restartCount")
            .and_then(Value::as_i64)
            >= Some(1))
        .then_some(())
    });
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=unhealthy",
        "-o",
        "json",
    ]);
    assert!(events.contains("Liveness probe failed"), "{events}");
    assert!(
        events.contains("failed liveness probe, will be restarted"),
        "{events}"
    );
    c.kubectl(&["delete", "pod", "unhealthy", "--grace-period=0", "--force"]);
}

pub fn oom_is_reported(c: &Cluster) {
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  nodeName: node-1
  restartPolicy: Never
  containers:
  - name: hog
    image: {BUSYBOX}
    command: [sh, -c, "tail /dev/zero"]
    resources: {{limits: {{memory: 32Mi}}}}
"#
    ));
    let p = c.wait(Duration::from_secs(60), "hog to be OOMKilled", || {
        c.pod("hog").filter(|p| {
            p.pointer("/status/containerStatuses/0/state/terminated")
                .is_some()
        })
    });
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{t}");
    assert_eq!(t["exitCode"], 137, "{t}");
    c.wait(Duration::from_secs(20), "phase Failed", || {
        c.pod("hog").filter(|p| p["status"]["phase"] == "Failed")
    });
    c.kubectl(&["delete", "pod", "hog"]);
}

pub fn deleting_a_pod_removes_sandbox_veth_and_ip(c: &Cluster) {
    c.apply(&echo_pod("doomed", "node-2"));
    let p = c.wait(Duration::from_secs(60), "doomed Ready", || {
        c.pod("doomed").filter(ready)
    });
    let ip = str_at(&p, "/status/podIP").to_owned();
    let ipam = c.node_dir("node-2").join("cni/ipam");
    let held = |ip: &str| walk_names(&ipam).iter().any(|n| n == ip);
    assert!(held(&ip), "IPAM records {ip}");
    let ns = netns_of(c, "node-2");
    let veths_before = veths(&ns);
    c.kubectl(&["delete", "pod", "doomed", "--wait=true"]);
    assert!(c.pod("doomed").is_none());
    c.wait(Duration::from_secs(20), "the IP released", || {
        (!held(&ip)).then_some(())
    });
    c.wait(Duration::from_secs(20), "the veth removed", || {
        (veths(&ns).len() + 1 == veths_before.len()).then_some(())
    });
    let uid = str_at(&p, "/metadata/uid").to_owned();
    assert!(pod_pids(&uid).is_empty(), "no process of the pod survives");
}

pub fn agent_restart_adopts_running_containers(c: &Cluster) {
    let before = c.pod("echo-a").expect("echo-a");
    let ids = |p: &Value| -> Vec<(String, i64)> {
        p["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    str_at(s, "/containerID").to_owned(),
                    s["restartCount"].as_i64().unwrap_or(-1),
                )
            })
            .collect()
    };
    let want = ids(&before);
    assert!(!want.is_empty() && !want[0].0.is_empty());
    let pid = agent_pid(c, "node-1");
    let cmdline: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .expect("cmdline")
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let token = environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"KESTREL_NODE_TOKEN="))
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .expect("the agent's token");
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let cgroup = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("v2 cgroup")
        .to_owned();
    let ns = netns_of(c, "node-1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the agent");
    c.wait(Duration::from_secs(10), "the agent to die", || {
        (!Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")))
        .then_some(())
    });
    // Start it again the way `kestrel up` did: same cgroup, namespace, flags.
    let log = std::fs::File::options()
        .append(true)
        .open(c.node_dir("node-1").join("agent.log"))
        .expect("agent log");
    let procs = format!("/sys/fs/cgroup/unified{cgroup}/cgroup.procs");
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"echo $$ > "$1" && shift && exec "$@""#,
        "restart",
        &procs,
        "nsenter",
        &format!("--net=/run/netns/{ns}"),
        "--",
    ])
    .args(&cmdline)
    .env("KESTREL_NODE_TOKEN", token)
    .stdin(std::process::Stdio::null())
    .stdout(log.try_clone().expect("log"))
    .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("restart the agent");
    c.children.lock().expect("children").push(child);
    // The restarted agent relists and reports; its pods keep their containers.
    let since = Instant::now();
    c.wait(
        Duration::from_secs(60),
        "the restarted agent to report echo-a again",
        || {
            let log =
                std::fs::read_to_string(c.node_dir("node-1").join("agent.log")).unwrap_or_default();
            (log.matches("adopting the running containerd").count() >= 1
                && since.elapsed() > Duration::from_secs(5))
            .then_some(())
        },
    );
    let after = c.wait(
        Duration::from_secs(30),
        "echo-a Ready after the restart",
        || c.pod("echo-a").filter(ready),
    );
    assert_eq!(
        ids(&after),
        want,
        "container IDs and restart counts must not change"
    );
    // The status above is the API server's copy: also check that the new
    // agent tore nothing down (a worker started before its pod list
    // arrived once did, finding no pod).
    let log = std::fs::read_to_string(c.node_dir("node-1").join("agent.log")).unwrap_or_default();
    let since_restart = log
        .rsplit_once("adopting the running containerd")
        .map_or("", |(_, after)| after);
    assert!(
        !since_restart.contains("tearing it down"),
        "the restarted agent tore down a pod:\n{since_restart}"
    );
}
