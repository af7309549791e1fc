//! Persistent storage through the API: PersistentVolume, PersistentVolumeClaim
//! and StorageClass defaults and validation, the DefaultStorageClass and
//! StorageObjectInUseProtection admission plugins, the bootstrap
//! `local-path` class, and who may touch storage objects.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kestrel_apiserver::testing::{self, TestServer};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

async fn setup() -> (tempfile::TempDir, TestServer, kube::Client) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let c = s.client().await;
    (dir, s, c)
}

fn api_err(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn claim(name: &str, class: Option<&str>) -> PersistentVolumeClaim {
    let mut c = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    });
    if let Some(class) = class {
        c["spec"]["storageClassName"] = json!(class);
    }
    serde_json::from_value(c).expect("claim")
}

fn volume(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": spec})
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("json")
}

fn merge(v: Value) -> Patch<Value> {
    Patch::Merge(v)
}

#[tokio::test]
async fn bootstrap_makes_local_path_the_default_class_and_keeps_edits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let classes: Api<StorageClass> = Api::all(s.client().await);
    let sc = to_json(&classes.get("local-path").await.expect("local-path"));
    assert_eq!(
        sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"],
        "true"
    );
    assert_eq!(sc["provisioner"], "kestrel.io/local-path");
    assert_eq!(sc["reclaimPolicy"], "Delete");
    assert_eq!(sc["volumeBindingMode"], "WaitForFirstConsumer");
    // A user's change survives a restart.
    classes
        .patch(
            "local-path",
            &PatchParams::default(),
            &merge(json!({"metadata": {"annotations": {
                "storageclass.kubernetes.io/is-default-class": "false"}}})),
        )
        .await
        .expect("patch");
    s.stop().await;
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let classes: Api<StorageClass> = Api::all(s.client().await);
    let sc = to_json(&classes.get("local-path").await.expect("local-path"));
    assert_eq!(
        sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"],
        "false"
    );
    s.stop().await;
}

#[tokio::test]
async fn claims_get_the_default_class_defaults_and_protection() {
    let (_dir, s, c) = setup().await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), "default");
    let pp = PostParams::default();
    let made = to_json(&claims.create(&pp, &claim("a", None)).await.expect("a"));
    assert_eq!(made["spec"]["storageClassName"], "local-path");
    assert_eq!(made["spec"]["volumeMode"], "Filesystem");
    assert_eq!(made["status"]["phase"], "Pending");
    assert_eq!(
        made["metadata"]["finalizers"],
        json!(["kubernetes.io/pvc-protection"])
    );
    // An explicit empty class means none, and a named one is kept.
    let made = to_json(&claims.create(&pp, &claim("b", Some(""))).await.expect("b"));
    assert_eq!(made["spec"]["storageClassName"], "");
    let made = to_json(
        &claims
            .create(&pp, &claim("c", Some("fast")))
            .await
            .expect("c"),
    );
    assert_eq!(made["spec"]["storageClassName"], "fast");
    // Of several defaults the newest wins.
    let classes: Api<StorageClass> = Api::all(c.clone());
    let newer: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "newer", "annotations": {
            "storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "example.com/nfs",
    }))
    .expect("class");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let newer = to_json(&classes.create(&pp, &newer).await.expect("newer"));
    assert_eq!(newer["reclaimPolicy"], "Delete");
    assert_eq!(newer["volumeBindingMode"], "Immediate");
    let made = to_json(&claims.create(&pp, &claim("d", None)).await.expect("d"));
    assert_eq!(made["spec"]["storageClassName"], "newer");
    // No default: the claim has no class.
    for name in ["local-path", "newer"] {
        classes
            .patch(
                name,
                &PatchParams::default(),
                &merge(json!({"metadata": {"annotations": {
                    "storageclass.kubernetes.io/is-default-class": null}}})),
            )
            .await
            .expect("undefault");
    }
    let made = to_json(&claims.create(&pp, &claim("e", None)).await.expect("e"));
    assert!(made["spec"].get("storageClassName").is_none(), "{made}");
    // ... and may be given one once.
    let patched = claims
        .patch(
            "e",
            &PatchParams::default(),
            &merge(json!({"spec": {"storageClassName": "local-path"}})),
        )
        .await
        .expect("set the class once");
    assert_eq!(to_json(&patched)["spec"]["storageClassName"], "local-path");
    s.stop().await;
}

#[tokio::test]
async fn claim_validation_and_immutability() {
    let (_dir, s, c) = setup().await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), "default");
    let pp = PostParams::default();
    let bad: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "bad"},
        "spec": {"resources": {"requests": {"storage": "0"}}, "storageClassName": "Not_Valid"},
    }))
    .expect("claim");
    let e = api_err(claims.create(&pp, &bad).await.expect_err("invalid"));
    assert_eq!(e.code, 422);
    assert_eq!(
        e.message,
        "PersistentVolumeClaim \"bad\" is invalid: [spec.accessModes: Required value: at least 1 access mode is required, spec.resources[storage]: Invalid value: \"0\": must be greater than zero, spec.storageClassName: Invalid value: \"Not_Valid\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')]"
    );
    claims
        .create(&pp, &claim("data", Some("local-path")))
        .await
        .expect("create");
    let pps = PatchParams::default();
    let immutable = "PersistentVolumeClaim \"data\" is invalid: spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims";
    let e = api_err(
        claims
            .patch(
                "data",
                &pps,
                &merge(json!({"spec": {"accessModes": ["ReadWriteMany"]}})),
            )
            .await
            .expect_err("access modes are fixed"),
    );
    assert_eq!(e.message, immutable);
    // Unbound, the request is fixed too.
    let e = api_err(
        claims
            .patch(
                "data",
                &pps,
                &merge(json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}})),
            )
            .await
            .expect_err("unbound"),
    );
    assert_eq!(e.message, immutable);
    // The binder sets volumeName once and binds; then the request grows.
    claims
        .patch(
            "data",
            &pps,
            &merge(json!({"spec": {"volumeName": "pv-data"}})),
        )
        .await
        .expect("volumeName once");
    claims
        .patch_status(
            "data",
            &pps,
            &merge(json!({"status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}})),
        )
        .await
        .expect("bind");
    let e = api_err(
        claims
            .patch(
                "data",
                &pps,
                &merge(json!({"spec": {"volumeName": "other"}})),
            )
            .await
            .expect_err("volumeName twice"),
    );
    assert_eq!(e.message, immutable);
    let grown = claims
        .patch(
            "data",
            &pps,
            &merge(json!({"spec": {"resources": {"requests": {"storage": "3Gi"}}}})),
        )
        .await
        .expect("grow");
    assert_eq!(
        to_json(&grown)["spec"]["resources"]["requests"]["storage"],
        "3Gi"
    );
    let e = api_err(
        claims
            .patch(
                "data",
                &pps,
                &merge(json!({"spec": {"resources": {"requests": {"storage": "1Gi"}}}})),
            )
            .await
            .expect_err("shrink"),
    );
    assert_eq!(
        e.message,
        "PersistentVolumeClaim \"data\" is invalid: spec.resources.requests.storage: Forbidden: field can not be less than status.capacity"
    );
    s.stop().await;
}

#[tokio::test]
async fn volumes_defaults_validation_and_immutability() {
    let (_dir, s, c) = setup().await;
    let create = |body: Value| {
        let c = c.clone();
        async move { testing::request(&c, "POST", "/api/v1/persistentvolumes", Some(body)).await }
    };
    let (code, pv) = create(volume(
        "host",
        json!({"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"],
               "hostPath": {"path": "/srv/data"}}),
    ))
    .await;
    assert_eq!(code, 201, "{pv}");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(pv["spec"]["volumeMode"], "Filesystem");
    assert_eq!(pv["status"]["phase"], "Pending");
    assert_eq!(
        pv["metadata"]["finalizers"],
        json!(["kubernetes.io/pv-protection"])
    );
    let (code, e) = create(volume(
        "bad",
        json!({"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOncePod", "ReadOnlyMany"],
               "persistentVolumeReclaimPolicy": "Keep", "local": {"path": ""}}),
    ))
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        e["message"],
        "PersistentVolume \"bad\" is invalid: [spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes, spec.persistentVolumeReclaimPolicy: Unsupported value: \"Keep\": supported values: \"Delete\", \"Recycle\", \"Retain\", spec.local.path: Required value, spec.nodeAffinity: Required value: Local volume requires node affinity]"
    );
    let (code, e) = create(volume(
        "none",
        json!({"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}),
    ))
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        e["message"],
        "PersistentVolume \"none\" is invalid: spec: Required value: must specify a volume type"
    );
    let (code, _) = create(volume(
        "nfs",
        json!({"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
               "nfs": {"server": "10.0.0.1", "path": "/exports"}}),
    ))
    .await;
    assert_eq!(code, 201);
    let pvs: Api<PersistentVolume> = Api::all(c.clone());
    let pps = PatchParams::default();
    pvs.patch(
        "host",
        &pps,
        &merge(json!({"spec": {"capacity": {"storage": "10Gi"},
                                "persistentVolumeReclaimPolicy": "Delete"}})),
    )
    .await
    .expect("capacity and policy change");
    let e = api_err(
        pvs.patch(
            "host",
            &pps,
            &merge(json!({"spec": {"hostPath": {"path": "/elsewhere"}}})),
        )
        .await
        .expect_err("source"),
    );
    assert_eq!(
        e.message,
        "PersistentVolume \"host\" is invalid: spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is immutable after creation"
    );
    s.stop().await;
}

#[tokio::test]
async fn storage_class_updates_are_refused() {
    let (_dir, s, c) = setup().await;
    let classes: Api<StorageClass> = Api::all(c);
    let e = api_err(
        classes
            .patch(
                "local-path",
                &PatchParams::default(),
                &merge(
                    json!({"parameters": {"k": "v"}, "provisioner": "other.io/x",
                              "reclaimPolicy": "Retain", "volumeBindingMode": "Immediate"}),
                ),
            )
            .await
            .expect_err("fixed"),
    );
    assert_eq!(e.code, 422);
    assert_eq!(
        e.message,
        "StorageClass.storage.k8s.io \"local-path\" is invalid: [parameters: Forbidden: updates to parameters are forbidden., provisioner: Forbidden: updates to provisioner are forbidden., reclaimPolicy: Forbidden: updates to reclaimPolicy are forbidden., volumeBindingMode: Invalid value: \"Immediate\": field is immutable]"
    );
    let sc: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "odd"}, "provisioner": "",
        "reclaimPolicy": "Recycle", "volumeBindingMode": "Later",
    }))
    .expect("class");
    let e = api_err(
        classes
            .create(&PostParams::default(), &sc)
            .await
            .expect_err("invalid"),
    );
    assert_eq!(
        e.message,
        "StorageClass.storage.k8s.io \"odd\" is invalid: [provisioner: Required value, reclaimPolicy: Unsupported value: \"Recycle\": supported values: \"Delete\", \"Retain\", volumeBindingMode: Unsupported value: \"Later\": supported values: \"Immediate\", \"WaitForFirstConsumer\"]"
    );
    s.stop().await;
}

#[tokio::test]
async fn scheduler_and_nodes_reach_storage_objects() {
    let (_dir, s, c) = setup().await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c, "default");
    claims
        .create(&PostParams::default(), &claim("data", None))
        .await
        .expect("claim");
    // The scheduler records its node choice on the claim.
    let sched = s.user_client("system:kube-scheduler", &[]).await;
    let sc: Api<PersistentVolumeClaim> = Api::namespaced(sched.clone(), "default");
    sc.patch(
        "data",
        &PatchParams::default(),
        &merge(json!({"metadata": {"annotations": {
            "volume.kubernetes.io/selected-node": "n1"}}})),
    )
    .await
    .expect("scheduler annotates");
    let classes: Api<StorageClass> = Api::all(sched);
    classes
        .list(&ListParams::default())
        .await
        .expect("scheduler lists classes");
    // A node agent's provisioner watches every claim and makes volumes.
    let node = s.user_client("system:node:n1", &["system:nodes"]).await;
    let all: Api<PersistentVolumeClaim> = Api::all(node.clone());
    assert_eq!(
        all.list(&ListParams::default())
            .await
            .expect("node lists claims")
            .items
            .len(),
        1
    );
    Api::<StorageClass>::all(node.clone())
        .list(&ListParams::default())
        .await
        .expect("node lists classes");
    let pvs: Api<PersistentVolume> = Api::all(node.clone());
    let pv: PersistentVolume = serde_json::from_value(volume(
        "pvc-1",
        json!({"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
               "hostPath": {"path": "/var/lib/kestrel/storage/pvc-1", "type": "DirectoryOrCreate"},
               "storageClassName": "local-path",
               "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                   {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}),
    ))
    .expect("pv");
    pvs.create(&PostParams::default(), &pv)
        .await
        .expect("node creates a volume");
    pvs.delete("pvc-1", &Default::default())
        .await
        .expect("node deletes a volume");
    // But it changes no claim.
    let e = api_err(
        Api::<PersistentVolumeClaim>::namespaced(node, "default")
            .patch(
                "data",
                &PatchParams::default(),
                &merge(json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await
            .expect_err("node patches a claim"),
    );
    assert_eq!(e.code, 403);
    s.stop().await;
}
