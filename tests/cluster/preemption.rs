//! Pod priority and preemption on real nodes: a high-priority pod that
//! does not fit on a full node takes the place of a low-priority one, as
//! upstream's DefaultPreemption does.

use std::time::Duration;

use crate::{BUSYBOX, Cluster, str_at};

/// Deletes what the scenario made, even when it fails half way.
struct Cleanup<'a>(&'a Cluster);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.kubectl_raw(
            &[
                "delete",
                "pod/humble",
                "pod/urgent",
                "priorityclass/e2e-low",
                "priorityclass/e2e-high",
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
    }
}

/// Millicores of a cpu quantity (`2`, `1500m`, `0.5`).
fn millicores(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().expect("millicores"),
        None => (q.parse::<f64>().expect("cores") * 1000.0) as u64,
    }
}

fn pod(name: &str, class: &str, node: &str, cpu: u64) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  priorityClassName: {class}
  terminationGracePeriodSeconds: 1
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sleep, "3600"]
    resources: {{requests: {{cpu: {cpu}m}}}}
"#
    )
}

pub fn a_high_priority_pod_preempts_a_low_priority_one(c: &Cluster) {
    let _guard = Cleanup(c);
    let node = "node-1";
    let alloc = c.kubectl(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.status.allocatable.cpu}",
    ]);
    // Either pod takes 60% of the node: the second cannot fit beside it.
    let cpu = millicores(alloc.trim()) * 6 / 10;
    c.apply(
        r#"apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: e2e-low}
value: 100
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: e2e-high}
value: 100000
"#,
    );
    c.apply(&pod("humble", "e2e-low", node, cpu));
    let humble = c.wait(Duration::from_secs(60), "humble Running", || {
        c.pod("humble")
            .filter(|p| p["status"]["phase"] == "Running")
    });
    assert_eq!(str_at(&humble, "/spec/nodeName"), node);
    assert_eq!(humble["spec"]["priority"], 100);

    c.apply(&pod("urgent", "e2e-high", node, cpu));
    let urgent = c.wait(
        Duration::from_secs(90),
        "urgent Running on the node it preempted",
        || {
            c.pod("urgent")
                .filter(|p| p["status"]["phase"] == "Running")
        },
    );
    assert_eq!(str_at(&urgent, "/spec/nodeName"), node);
    let uid = str_at(&urgent, "/metadata/uid").to_owned();
    // The victim is gone, and says why, in upstream's words.
    assert!(c.pod("humble").is_none(), "humble still present");
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=humble",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events
            .lines()
            .any(|l| l == format!("Preempted: Preempted by pod {uid} on node {node}")),
        "{events}"
    );
}
