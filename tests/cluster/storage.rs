//! Persistent storage on real nodes: the default `local-path` class, a
//! StatefulSet whose volumeClaimTemplates the node agents provision on
//! their own disks, data that outlives the pod that wrote it, a claim
//! mounted read-only, and a deleted claim taking its volume and directory
//! with it.

use std::collections::BTreeMap;

use super::*;

/// Deletes what the scenario made, even when it fails half way.
struct Cleanup<'a> {
    c: &'a Cluster,
    claims: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.c.kubectl_raw(
            &[
                "delete",
                "statefulset/store",
                "pod/reader",
                "pod/no-claim",
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
        for claim in &self.claims {
            let _ = self.c.kubectl_raw(
                &["delete", "pvc", claim, "--ignore-not-found", "--wait=false"],
                None,
            );
        }
    }
}

const REPLICAS: usize = 3;

fn json(c: &Cluster, args: &[&str]) -> Option<Value> {
    let (ok, out, _) = c.kubectl_raw(args, None);
    ok.then(|| serde_json::from_str(&out).ok()).flatten()
}

/// The store-N pods, Ready, by name.
fn ready_store_pods(c: &Cluster) -> Option<BTreeMap<String, Value>> {
    let v = json(c, &["get", "pods", "-l", "app=store", "-o", "json"])?;
    let pods: BTreeMap<String, Value> = v["items"]
        .as_array()?
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && ready(p))
        .map(|p| (str_at(p, "/metadata/name").to_owned(), p.clone()))
        .collect();
    (pods.len() == REPLICAS).then_some(pods)
}

fn volumes_name(c: &Cluster, claim: &str) -> String {
    c.kubectl(&["get", "pvc", claim, "-o", "jsonpath={.spec.volumeName}"])
}

pub fn statefulset_data_survives_its_pod(c: &Cluster) {
    let mut guard = Cleanup {
        c,
        claims: (0..REPLICAS).map(|i| format!("data-store-{i}")).collect(),
    };

    // The default class, as k3s ships it.
    let sc = json(c, &["get", "storageclass", "local-path", "-o", "json"])
        .expect("the local-path StorageClass");
    assert_eq!(
        str_at(
            &sc,
            "/metadata/annotations/storageclass.kubernetes.io~1is-default-class"
        ),
        "true",
        "{sc}"
    );
    assert_eq!(str_at(&sc, "/provisioner"), "kestrel.io/local-path");
    assert_eq!(str_at(&sc, "/volumeBindingMode"), "WaitForFirstConsumer");
    assert_eq!(str_at(&sc, "/reclaimPolicy"), "Delete");
    let table = c.kubectl(&["get", "storageclass"]);
    assert!(table.contains("local-path (default)"), "{table}");

    // A pod whose claim does not exist is not scheduled, in upstream's words.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: no-claim}}
spec:
  containers:
  - {{name: c, image: {BUSYBOX}, imagePullPolicy: Never, command: [sleep, "3600"]}}
  volumes:
  - {{name: data, persistentVolumeClaim: {{claimName: nope}}}}
"#
    ));
    c.wait(
        Duration::from_secs(30),
        "no-claim reported unschedulable",
        || {
            let p = c.pod("no-claim")?;
            let cond = p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "PodScheduled")?
                .clone();
            (cond["status"] == "False"
                && cond["message"]
                    == "0/2 nodes are available: persistentvolumeclaim \"nope\" not found. \
                       preemption: 0/2 nodes are available: 2 Preemption is not helpful for \
                       scheduling.")
                .then_some(())
        },
    );
    c.kubectl(&["delete", "pod", "no-claim", "--wait=false"]);

    // Each replica records, once, who first wrote its volume and when.
    c.apply(&format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: store}}
spec:
  replicas: {REPLICAS}
  serviceName: store
  selector: {{matchLabels: {{app: store}}}}
  template:
    metadata: {{labels: {{app: store}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [sh, -c, "[ -f /data/stamp ] || {{ hostname > /data/writer; date +%s%N > /data/stamp; }}; exec sleep 3600"]
        readinessProbe: {{exec: {{command: [cat, /data/stamp]}}, periodSeconds: 1}}
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 64Mi}}}}
"#
    ));
    let pods = c.wait(Duration::from_secs(180), "3 store replicas Ready", || {
        ready_store_pods(c)
    });

    // Every claim is Bound to a volume the agent of the pod's node made.
    let mut volumes: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
    for (name, pod) in &pods {
        let node = str_at(pod, "/spec/nodeName").to_owned();
        let claim = format!("data-{name}");
        let pvc = json(c, &["get", "pvc", &claim, "-o", "json"]).expect("claim");
        assert_eq!(str_at(&pvc, "/status/phase"), "Bound", "{pvc}");
        assert_eq!(str_at(&pvc, "/spec/storageClassName"), "local-path");
        assert_eq!(
            str_at(
                &pvc,
                "/metadata/annotations/volume.kubernetes.io~1selected-node"
            ),
            node
        );
        let pv_name = str_at(&pvc, "/spec/volumeName").to_owned();
        assert_eq!(
            pv_name,
            format!("pvc-{}", str_at(&pvc, "/metadata/uid")),
            "{pvc}"
        );
        let pv = json(c, &["get", "pv", &pv_name, "-o", "json"]).expect("volume");
        assert_eq!(
            str_at(
                &pv,
                "/metadata/annotations/pv.kubernetes.io~1provisioned-by"
            ),
            "kestrel.io/local-path"
        );
        assert_eq!(str_at(&pv, "/spec/persistentVolumeReclaimPolicy"), "Delete");
        assert_eq!(str_at(&pv, "/spec/capacity/storage"), "64Mi");
        assert_eq!(str_at(&pv, "/spec/claimRef/name"), claim);
        assert_eq!(
            pv.pointer("/spec/nodeAffinity/required/nodeSelectorTerms/0/matchExpressions/0")
                .cloned(),
            Some(
                serde_json::json!({"key": "kubernetes.io/hostname", "operator": "In", "values": [node]})
            )
        );
        let dir = PathBuf::from(str_at(&pv, "/spec/hostPath/path"));
        let storage = c
            .node_dir(&node)
            .join("storage")
            .canonicalize()
            .expect("the node's storage dir");
        assert_eq!(dir.parent(), Some(storage.as_path()), "{pv}");
        assert_eq!(
            std::fs::read_to_string(dir.join("writer"))
                .expect("the file the pod wrote")
                .trim(),
            name
        );
        volumes.insert(name.clone(), (node, dir));
    }
    let out = c.kubectl(&["get", "pvc"]);
    for i in 0..REPLICAS {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("data-store-{i} ")))
            .unwrap_or_else(|| panic!("data-store-{i} in\n{out}"));
        assert!(
            line.contains("Bound") && line.contains("local-path"),
            "{out}"
        );
    }
    // The provisioner said so on the claim, as external provisioners do.
    let events = json(c, &["get", "events", "-o", "json"]).expect("events");
    let provisioned = events["items"].as_array().into_iter().flatten().any(|e| {
        str_at(e, "/involvedObject/name") == "data-store-0"
            && str_at(e, "/reason") == "ProvisioningSucceeded"
            && str_at(e, "/message")
                == format!(
                    "Successfully provisioned volume {}",
                    volumes_name(c, "data-store-0")
                )
    });
    assert!(provisioned, "{events}");

    // The pod goes; its successor lands on the same node and reads what
    // the first one wrote.
    let before = &pods["store-0"];
    let stamp = c.kubectl(&["exec", "store-0", "--", "cat", "/data/stamp"]);
    c.kubectl(&["delete", "pod", "store-0", "--wait=false"]);
    let after = c.wait(
        Duration::from_secs(120),
        "store-0 re-created and Ready",
        || {
            let p = c.pod("store-0")?;
            (p["metadata"]["uid"] != before["metadata"]["uid"]
                && p["metadata"]["deletionTimestamp"].is_null()
                && ready(&p))
            .then_some(p)
        },
    );
    assert_eq!(
        str_at(&after, "/spec/nodeName"),
        volumes["store-0"].0,
        "the volume's node affinity keeps the pod on its node"
    );
    assert_eq!(
        c.kubectl(&["exec", "store-0", "--", "cat", "/data/stamp"]),
        stamp
    );
    assert_eq!(
        c.kubectl(&["exec", "store-0", "--", "cat", "/data/writer"])
            .trim(),
        "store-0"
    );

    // Without the StatefulSet, the claims stay; one mounted read-only
    // still reads, and refuses writes.
    c.kubectl(&["delete", "statefulset", "store", "--wait=true"]);
    c.wait(Duration::from_secs(60), "the store pods gone", || {
        let v = json(c, &["get", "pods", "-l", "app=store", "-o", "json"])?;
        v["items"].as_array()?.is_empty().then_some(())
    });
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: reader}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: {BUSYBOX}, imagePullPolicy: Never, command: [sleep, "3600"],
      volumeMounts: [{{name: data, mountPath: /data}}]}}
  volumes:
  - {{name: data, persistentVolumeClaim: {{claimName: data-store-1, readOnly: true}}}}
"#
    ));
    let reader = c.wait(Duration::from_secs(60), "reader Running", || {
        c.pod("reader")
            .filter(|p| p["status"]["phase"] == "Running")
    });
    assert_eq!(str_at(&reader, "/spec/nodeName"), volumes["store-1"].0);
    assert_eq!(
        c.kubectl(&["exec", "reader", "--", "cat", "/data/writer"])
            .trim(),
        "store-1"
    );
    let (ok, _, err) = c.kubectl_raw(&["exec", "reader", "--", "touch", "/data/new"], None);
    assert!(!ok && err.contains("Read-only file system"), "{err}");
    c.kubectl(&["delete", "pod", "reader", "--wait=true"]);

    // Deleting a claim deletes its volume and the directory on the node.
    for (name, (_, dir)) in &volumes {
        c.kubectl(&["delete", "pvc", &format!("data-{name}"), "--wait=true"]);
        c.wait(
            Duration::from_secs(60),
            &format!("the volume of data-{name} and its directory gone"),
            || {
                let out = c.kubectl(&["get", "pv", "-o", "json"]);
                let v: Value = serde_json::from_str(&out).ok()?;
                let left = v["items"]
                    .as_array()?
                    .iter()
                    .any(|pv| str_at(pv, "/spec/claimRef/name") == format!("data-{name}"));
                (!left && !dir.exists()).then_some(())
            },
        );
    }
    guard.claims.clear();
}
