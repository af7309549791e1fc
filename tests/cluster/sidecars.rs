//! Native sidecars, lifecycle hooks and ephemeral containers on real
//! nodes: a Job-like pod whose sidecar starts before and stops after its
//! main container, postStart hooks that run before a container counts as
//! started (and kill it when they fail), and `kubectl debug` adding a
//! container to a running pod that `kubectl logs` reads.

use super::*;

/// Deletes what the scenario made, even when it fails half way.
struct Cleanup<'a> {
    c: &'a Cluster,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.c.kubectl_raw(
            &[
                "delete",
                "pod/sidecar-job",
                "pod/poststart-fails",
                "pod/debug-me",
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
    }
}

fn status_of<'a>(pod: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    pod["status"][list]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

pub fn sidecars_hooks_and_ephemeral_containers(c: &Cluster) {
    let _guard = Cleanup { c };

    // The sidecar's postStart takes 2 s and its startup probe waits for
    // its first tick: the main container finds both already there. Its
    // own postStart runs beside its command, which waits for the file.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: sidecar-job}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 5
  initContainers:
  - name: ticker
    image: {BUSYBOX}
    imagePullPolicy: Never
    restartPolicy: Always
    command: [sh, -c, 'trap "exit 0" TERM; while true; do date +%s >> /shared/ticks; sleep 1 & wait; done']
    lifecycle: {{postStart: {{exec: {{command: [sh, -c, 'sleep 2; echo hooked > /shared/sidecar-hook']}}}}}}
    startupProbe: {{exec: {{command: [test, -s, /shared/ticks]}}, periodSeconds: 1}}
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sh, -c, 'test -f /shared/sidecar-hook && test -s /shared/ticks || exit 3; for i in $(seq 100); do [ -f /shared/main-hook ] && break; sleep 0.1; done; test -f /shared/main-hook || exit 4; sleep 4; echo main-done']
    lifecycle: {{postStart: {{exec: {{command: [sh, -c, 'echo hooked > /shared/main-hook']}}}}}}
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  volumes: [{{name: shared, emptyDir: {{}}}}]
"#
    ));
    // While the main container runs, the sidecar is reported running,
    // started and ready among the init containers, and the pod Ready.
    c.wait(
        Duration::from_secs(60),
        "sidecar-job running with its sidecar started",
        || {
            let p = c.pod("sidecar-job")?;
            let side = status_of(&p, "initContainerStatuses", "ticker")?;
            let main = status_of(&p, "containerStatuses", "main")?;
            (p["status"]["phase"] == "Running"
                && side["state"]["running"].is_object()
                && side["started"] == true
                && side["ready"] == true
                && main["state"]["running"].is_object()
                && ready(&p))
            .then_some(())
        },
    );
    let p = c.wait(Duration::from_secs(60), "sidecar-job Succeeded", || {
        let p = c.pod("sidecar-job")?;
        (p["status"]["phase"] == "Succeeded").then_some(p)
    });
    let side = status_of(&p, "initContainerStatuses", "ticker").expect("sidecar status");
    let main = status_of(&p, "containerStatuses", "main").expect("main status");
    assert_eq!(main["state"]["terminated"]["exitCode"], 0, "{p}");
    assert_eq!(side["restartCount"], 0, "{p}");
    let side_end = str_at(side, "/state/terminated/finishedAt");
    let main_end = str_at(main, "/state/terminated/finishedAt");
    assert!(!side_end.is_empty(), "the sidecar was stopped: {p}");
    assert!(
        side_end >= main_end,
        "the sidecar stopped after the main container: {side_end} < {main_end}"
    );
    let logs = c.kubectl(&["logs", "sidecar-job", "-c", "main"]);
    assert!(logs.contains("main-done"), "{logs}");

    // A failing postStart kills its container, in upstream's words.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: poststart-fails}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sleep, "3600"]
    lifecycle: {{postStart: {{exec: {{command: [sh, -c, 'exit 1']}}}}}}
"#
    ));
    c.wait(
        Duration::from_secs(60),
        "poststart-fails Failed with a FailedPostStartHook event",
        || {
            let p = c.pod("poststart-fails")?;
            if p["status"]["phase"] != "Failed" {
                return None;
            }
            let (ok, ev, _) = c.kubectl_raw(
                &[
                    "get",
                    "events",
                    "--field-selector",
                    "involvedObject.name=poststart-fails,reason=FailedPostStartHook",
                    "-o",
                    "json",
                ],
                None,
            );
            let ev: Value = ok.then(|| serde_json::from_str(&ev).ok()).flatten()?;
            let e = ev["items"].as_array()?.first()?.clone();
            assert_eq!(e["type"], "Warning", "{e}");
            assert_eq!(e["message"], "PostStartHook failed", "{e}");
            Some(())
        },
    );

    // kubectl debug adds an ephemeral container that sees the target's
    // processes; its output is in `kubectl logs`.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: debug-me}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: {BUSYBOX}, imagePullPolicy: Never, command: [sleep, "3601"]}}
"#
    ));
    c.wait(Duration::from_secs(60), "debug-me Ready", || {
        c.pod("debug-me").filter(ready)
    });
    c.kubectl(&[
        "debug",
        "debug-me",
        &format!("--image={BUSYBOX}"),
        "--image-pull-policy=Never",
        "--attach=false",
        "-c",
        "dbg",
        "--target=c",
        "--",
        "sh",
        "-c",
        "echo debug-says-hi; ps",
    ]);
    c.wait(
        Duration::from_secs(60),
        "the ephemeral container ran to completion",
        || {
            let p = c.pod("debug-me")?;
            let s = status_of(&p, "ephemeralContainerStatuses", "dbg")?;
            (s["state"]["terminated"]["exitCode"] == 0).then_some(())
        },
    );
    let logs = c.kubectl(&["logs", "debug-me", "-c", "dbg"]);
    assert!(logs.contains("debug-says-hi"), "{logs}");
    assert!(
        logs.contains("sleep 3601"),
        "the target's processes are visible: {logs}"
    );
    // The pod itself is untouched and still Ready.
    let p = c.pod("debug-me").expect("debug-me");
    assert!(ready(&p), "{p}");
    assert_eq!(
        status_of(&p, "containerStatuses", "c").expect("c")["restartCount"],
        0
    );

    // Ephemeral containers are never removed, nor changed by a pod update.
    let mut body = p.clone();
    body["spec"]["ephemeralContainers"] = serde_json::json!([]);
    let (ok, _, err) = c.kubectl_raw(
        &[
            "replace",
            "--raw",
            "/api/v1/namespaces/default/pods/debug-me/ephemeralcontainers",
            "-f",
            "-",
        ],
        Some(&body.to_string()),
    );
    assert!(!ok, "removing an ephemeral container was refused");
    assert!(
        err.contains("existing ephemeral containers \\\"dbg\\\" may not be removed")
            || err.contains("existing ephemeral containers \"dbg\" may not be removed"),
        "{err}"
    );
    let (ok, _, err) = c.kubectl_raw(
        &[
            "replace",
            "--raw",
            "/api/v1/namespaces/default/pods/debug-me",
            "-f",
            "-",
        ],
        Some(&body.to_string()),
    );
    assert!(!ok, "a pod update may not drop ephemeral containers");
    assert!(err.contains("pod updates may not change fields"), "{err}");
}
