//! Workload kinds beyond Deployments on real nodes: a CronJob's Job run by
//! hand and read back with `kubectl logs job/…`, and a ReplicationController
//! scaled with kubectl.

use std::time::Duration;

use serde_json::Value;

use crate::{BUSYBOX, Cluster, ready};

pub fn cronjob_runs_by_hand_and_logs_pick_its_own_pod(c: &Cluster) {
    c.apply(&format!(
        r#"apiVersion: batch/v1
kind: CronJob
metadata: {{name: report}}
spec:
  schedule: "0 3 * * *"
  timeZone: Europe/Paris
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - {{name: r, image: {BUSYBOX}, command: [sh, -c, "echo report from $HOSTNAME"]}}
"#
    ));
    // Two runs by hand: each Job's logs are its own pod's.
    for run in ["report-a", "report-b"] {
        c.kubectl(&["create", "job", run, "--from=cronjob/report"]);
    }
    for run in ["report-a", "report-b"] {
        c.kubectl(&[
            "wait",
            "--for=condition=complete",
            &format!("job/{run}"),
            "--timeout=60s",
        ]);
        let logs = c.kubectl(&["logs", &format!("job/{run}")]);
        assert!(
            logs.starts_with(&format!("report from {run}-")),
            "{run}: {logs}"
        );
    }
    let out = c.kubectl(&["get", "cronjob", "report"]);
    assert!(
        out.contains("Europe/Paris") && out.contains("0 3 * * *"),
        "{out}"
    );
    c.kubectl(&["delete", "cronjob", "report"]);
}

pub fn replication_controller_scales_on_real_nodes(c: &Cluster) {
    c.apply(&format!(
        r#"apiVersion: v1
kind: ReplicationController
metadata: {{name: legacy}}
spec:
  replicas: 1
  template:
    metadata: {{labels: {{app: legacy}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: s, image: {BUSYBOX}, command: [sleep, "3600"]}}
"#
    ));
    c.kubectl(&["scale", "rc", "legacy", "--replicas=3"]);
    c.wait(Duration::from_secs(60), "3 ready legacy pods", || {
        let out = c.kubectl(&["get", "pods", "-l", "app=legacy", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        let pods = v["items"].as_array()?;
        (pods.len() == 3 && pods.iter().all(ready)).then_some(())
    });
    let rc = c.kubectl(&[
        "get",
        "rc",
        "legacy",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    assert_eq!(rc, "3");
    c.kubectl(&["delete", "rc", "legacy"]);
}
