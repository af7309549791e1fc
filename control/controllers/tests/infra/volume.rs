//! The volume controllers: the PersistentVolume binder, PVC and PV
//! protection, and ephemeral volumes. Objects that admission would give
//! protection finalizers get them here explicitly, so these tests do not
//! depend on admission.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kestrel_testkit::eventually;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::common::{Cluster, WAIT, obj};

fn pv(name: &str, size: &str, extra: serde_json::Value) -> PersistentVolume {
    let mut spec = json!({
        "capacity": {"storage": size},
        "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Retain",
        "hostPath": {"path": format!("/tmp/{name}")},
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    obj(json!({"metadata": {"name": name}, "spec": spec}))
}

fn pvc(name: &str, size: &str, extra: serde_json::Value) -> PersistentVolumeClaim {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
        "storageClassName": "",
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    obj(json!({"metadata": {"name": name}, "spec": spec}))
}

fn ann<K: kube::Resource>(o: &K, key: &str) -> Option<String> {
    o.meta().annotations.as_ref()?.get(key).cloned()
}

fn pv_phase(v: &PersistentVolume) -> Option<String> {
    v.status.as_ref()?.phase.clone()
}

fn pvc_phase(c: &PersistentVolumeClaim) -> Option<String> {
    c.status.as_ref()?.phase.clone()
}

fn claim_uid_of(v: &PersistentVolume) -> Option<String> {
    v.spec.as_ref()?.claim_ref.as_ref()?.uid.clone()
}

async fn events_about(c: &Cluster, name: &str) -> Vec<(String, String)> {
    Api::<Event>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("events")
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// The events about `name` once one with `reason` is among them.
async fn events_once(c: &Cluster, name: &str, reason: &str) -> Vec<(String, String)> {
    eventually(WAIT, &format!("a {reason} event about {name}"), || async {
        let e = events_about(c, name).await;
        e.iter().any(|(r, _)| r == reason).then_some(e)
    })
    .await
}

async fn bound(claims: &Api<PersistentVolumeClaim>, name: &str) -> PersistentVolumeClaim {
    eventually(WAIT, &format!("claim {name} Bound"), || async {
        let c = claims.get(name).await.ok()?;
        (pvc_phase(&c).as_deref() == Some("Bound")).then_some(c)
    })
    .await
}

#[tokio::test]
async fn a_claim_binds_the_smallest_volume_that_fits() {
    let c = Cluster::start(|_| {}).await;
    let pvs: Api<PersistentVolume> = Api::all(c.client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let pp = PostParams::default();
    for (n, size) in [("big", "10Gi"), ("small", "500Mi"), ("fit", "2Gi")] {
        pvs.create(&pp, &pv(n, size, json!({}))).await.expect("pv");
    }
    pvs.create(
        &pp,
        &pv("many", "1Gi", json!({"accessModes": ["ReadWriteMany"]})),
    )
    .await
    .expect("pv");
    let created = claims
        .create(&pp, &pvc("data", "1Gi", json!({})))
        .await
        .expect("pvc");
    let claim = bound(&claims, "data").await;
    let spec = claim.spec.clone().unwrap_or_default();
    assert_eq!(spec.volume_name.as_deref(), Some("fit"));
    assert_eq!(
        ann(&claim, "pv.kubernetes.io/bind-completed").as_deref(),
        Some("yes")
    );
    assert_eq!(
        ann(&claim, "pv.kubernetes.io/bound-by-controller").as_deref(),
        Some("yes")
    );
    let status = claim.status.clone().unwrap_or_default();
    assert_eq!(
        status
            .capacity
            .unwrap_or_default()
            .get("storage")
            .map(|q| q.0.clone()),
        Some("2Gi".to_owned())
    );
    assert_eq!(status.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
    let vol = eventually(WAIT, "the volume Bound", || async {
        let v = pvs.get("fit").await.ok()?;
        (pv_phase(&v).as_deref() == Some("Bound")).then_some(v)
    })
    .await;
    assert_eq!(claim_uid_of(&vol), created.uid());
    assert_eq!(
        ann(&vol, "pv.kubernetes.io/bound-by-controller").as_deref(),
        Some("yes")
    );
    // The others stay free.
    for n in ["big", "small", "many"] {
        let v = eventually(WAIT, "the others Available", || async {
            let v = pvs.get(n).await.ok()?;
            (pv_phase(&v).as_deref() == Some("Available")).then_some(v)
        })
        .await;
        assert!(v.spec.and_then(|s| s.claim_ref).is_none(), "{n}");
    }
}

#[tokio::test]
async fn pre_bound_volumes_and_claims_bind_to_each_other() {
    let c = Cluster::start(|_| {}).await;
    let pvs: Api<PersistentVolume> = Api::all(c.client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let pp = PostParams::default();
    // A volume whose claimRef names a claim (as the scheduler or an admin
    // writes it) wins over a smaller one that fits.
    pvs.create(&pp, &pv("small", "1Gi", json!({})))
        .await
        .expect("pv");
    pvs.create(
        &pp,
        &pv(
            "reserved",
            "5Gi",
            json!({"claimRef": {"namespace": "default", "name": "wants-reserved"}}),
        ),
    )
    .await
    .expect("pv");
    // A claim naming a volume gets that one.
    pvs.create(&pp, &pv("named", "3Gi", json!({})))
        .await
        .expect("pv");
    claims
        .create(&pp, &pvc("wants-reserved", "1Gi", json!({})))
        .await
        .expect("pvc");
    claims
        .create(
            &pp,
            &pvc("wants-named", "1Gi", json!({"volumeName": "named"})),
        )
        .await
        .expect("pvc");

    let a = bound(&claims, "wants-reserved").await;
    assert_eq!(
        a.spec.as_ref().and_then(|s| s.volume_name.as_deref()),
        Some("reserved")
    );
    // The controller chose the claim's side, not the volume's.
    assert_eq!(
        ann(&a, "pv.kubernetes.io/bound-by-controller").as_deref(),
        Some("yes")
    );
    let v = pvs.get("reserved").await.expect("pv");
    assert_eq!(claim_uid_of(&v), a.uid());
    assert_eq!(ann(&v, "pv.kubernetes.io/bound-by-controller"), None);

    let b = bound(&claims, "wants-named").await;
    assert_eq!(
        b.spec.as_ref().and_then(|s| s.volume_name.as_deref()),
        Some("named")
    );
    assert_eq!(ann(&b, "pv.kubernetes.io/bound-by-controller"), None);
    assert_eq!(
        ann(&b, "pv.kubernetes.io/bind-completed").as_deref(),
        Some("yes")
    );
    let v = eventually(WAIT, "the named volume Bound", || async {
        let v = pvs.get("named").await.ok()?;
        (pv_phase(&v).as_deref() == Some("Bound")).then_some(v)
    })
    .await;
    assert_eq!(claim_uid_of(&v), b.uid());
    assert_eq!(
        ann(&v, "pv.kubernetes.io/bound-by-controller").as_deref(),
        Some("yes")
    );
    let small = pvs.get("small").await.expect("pv");
    assert!(small.spec.and_then(|s| s.claim_ref).is_none());
}

#[tokio::test]
async fn claims_of_a_provisioner_class_are_handed_to_it() {
    let c = Cluster::start(|_| {}).await;
    let classes: Api<StorageClass> = Api::all(c.client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let pp = PostParams::default();
    classes
        .create(
            &pp,
            &obj(json!({
                "metadata": {"name": "now"},
                "provisioner": "example.com/now",
                "volumeBindingMode": "Immediate",
            })),
        )
        .await
        .expect("class");
    classes
        .create(
            &pp,
            &obj(json!({
                "metadata": {"name": "later"},
                "provisioner": "example.com/later",
                "volumeBindingMode": "WaitForFirstConsumer",
            })),
        )
        .await
        .expect("class");
    claims
        .create(&pp, &pvc("im", "1Gi", json!({"storageClassName": "now"})))
        .await
        .expect("pvc");
    claims
        .create(&pp, &pvc("wf", "1Gi", json!({"storageClassName": "later"})))
        .await
        .expect("pvc");
    let im = eventually(WAIT, "the provisioner annotation", || async {
        let c = claims.get("im").await.ok()?;
        ann(&c, "volume.kubernetes.io/storage-provisioner").map(|_| c)
    })
    .await;
    assert_eq!(
        ann(&im, "volume.kubernetes.io/storage-provisioner").as_deref(),
        Some("example.com/now")
    );
    assert_eq!(
        ann(&im, "volume.beta.kubernetes.io/storage-provisioner").as_deref(),
        Some("example.com/now")
    );
    let evs = events_once(&c, "im", "ExternalProvisioning").await;
    assert!(
        evs.iter().any(|(_, m)| m.contains(
            "Waiting for a volume to be created either by the external provisioner 'example.com/now'"
        )),
        "{evs:?}"
    );
    // WaitForFirstConsumer: nothing until the scheduler picks a node.
    let evs = events_once(&c, "wf", "WaitForFirstConsumer").await;
    assert!(
        evs.iter()
            .any(|(_, m)| m == "waiting for first consumer to be created before binding"),
        "{evs:?}"
    );
    let wf = claims.get("wf").await.expect("pvc");
    assert_eq!(ann(&wf, "volume.kubernetes.io/storage-provisioner"), None);
    assert_eq!(pvc_phase(&wf).as_deref(), Some("Pending"));
    claims
        .patch(
            "wf",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "volume.kubernetes.io/selected-node": "node-a",
            }}})),
        )
        .await
        .expect("select node");
    eventually(
        WAIT,
        "the provisioner annotation after selection",
        || async {
            let c = claims.get("wf").await.ok()?;
            (ann(&c, "volume.kubernetes.io/storage-provisioner").as_deref()
                == Some("example.com/later"))
            .then_some(())
        },
    )
    .await;
    // A claim without class or volume says so.
    claims
        .create(&pp, &pvc("none", "1Gi", json!({})))
        .await
        .expect("pvc");
    eventually(WAIT, "a FailedBinding event", || async {
        let e = events_about(&c, "none").await;
        e.iter()
            .any(|(r, m)| {
                r == "FailedBinding"
                    && m == "no persistent volumes available for this claim and no storage class is set"
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_provisioned_volume_binds_and_is_released_when_its_claim_goes() {
    let c = Cluster::start(|_| {}).await;
    let pvs: Api<PersistentVolume> = Api::all(c.client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let pp = PostParams::default();
    // What a provisioner does: a volume with a claimRef (uid included).
    let claim = claims
        .create(&pp, &pvc("dyn", "1Gi", json!({})))
        .await
        .expect("pvc");
    let name = format!("pvc-{}", claim.uid().unwrap_or_default());
    let mut vol = pv(
        &name,
        "1Gi",
        json!({
            "persistentVolumeReclaimPolicy": "Delete",
            "claimRef": {
                "kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": "default", "name": "dyn", "uid": claim.uid(),
            },
        }),
    );
    vol.annotations_mut().insert(
        "pv.kubernetes.io/provisioned-by".to_owned(),
        "example.com/local".to_owned(),
    );
    pvs.create(&pp, &vol).await.expect("pv");
    let bound_claim = bound(&claims, "dyn").await;
    assert_eq!(
        bound_claim.spec.and_then(|s| s.volume_name).as_deref(),
        Some(name.as_str())
    );
    // And a static Retain volume bound the usual way.
    pvs.create(&pp, &pv("kept", "1Gi", json!({})))
        .await
        .expect("pv");
    claims
        .create(&pp, &pvc("static", "1Gi", json!({"volumeName": "kept"})))
        .await
        .expect("pvc");
    bound(&claims, "static").await;

    for n in ["dyn", "static"] {
        claims
            .delete(n, &DeleteParams::default())
            .await
            .expect("delete pvc");
    }
    // Released, claimRef kept; the external provisioner's volume is left
    // to it (nobody deletes it here).
    for n in [name.as_str(), "kept"] {
        let v = eventually(WAIT, "the volume Released", || async {
            let v = pvs.get(n).await.ok()?;
            (pv_phase(&v).as_deref() == Some("Released")).then_some(v)
        })
        .await;
        assert!(v.spec.and_then(|s| s.claim_ref).is_some());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        pv_phase(&pvs.get(&name).await.expect("pv")).as_deref(),
        Some("Released")
    );
    // Recycling is not supported: such a volume fails.
    pvs.create(
        &pp,
        &pv(
            "recycled",
            "1Gi",
            json!({
                "persistentVolumeReclaimPolicy": "Recycle",
                "claimRef": {"namespace": "default", "name": "gone", "uid": "no-such-uid"},
            }),
        ),
    )
    .await
    .expect("pv");
    let v = eventually(WAIT, "the recycled volume Failed", || async {
        let v = pvs.get("recycled").await.ok()?;
        (pv_phase(&v).as_deref() == Some("Failed")).then_some(v)
    })
    .await;
    assert_eq!(
        v.status.and_then(|s| s.message).as_deref(),
        Some("No recycler plugin found for the volume!")
    );
}

#[tokio::test]
async fn protection_finalizers_go_only_once_nothing_uses_the_objects() {
    let c = Cluster::start(|_| {}).await;
    let pvs: Api<PersistentVolume> = Api::all(c.client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pp = PostParams::default();
    let mut vol = pv("guarded", "1Gi", json!({}));
    vol.finalizers_mut()
        .push("kubernetes.io/pv-protection".into());
    pvs.create(&pp, &vol).await.expect("pv");
    let mut claim = pvc("used", "1Gi", json!({"volumeName": "guarded"}));
    claim
        .finalizers_mut()
        .push("kubernetes.io/pvc-protection".into());
    claims.create(&pp, &claim).await.expect("pvc");
    bound(&claims, "used").await;
    pods.create(
        &pp,
        &obj(json!({
            "metadata": {"name": "user"},
            "spec": {
                "nodeName": "node-a",
                "containers": [{"name": "c", "image": "busybox"}],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "used"}}],
            },
        })),
    )
    .await
    .expect("pod");
    pods.patch_status(
        "user",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .expect("pod status");

    // Neither goes while in use.
    pvs.delete("guarded", &DeleteParams::default())
        .await
        .expect("delete pv");
    claims
        .delete("used", &DeleteParams::default())
        .await
        .expect("delete pvc");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = claims.get("used").await.expect("claim still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(
        held.finalizers()
            .iter()
            .any(|f| f == "kubernetes.io/pvc-protection")
    );
    let v = pvs.get("guarded").await.expect("volume still there");
    assert!(
        v.finalizers()
            .iter()
            .any(|f| f == "kubernetes.io/pv-protection")
    );

    // The pod finishes: the claim goes, the volume is Released, then goes.
    pods.patch_status(
        "user",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .expect("pod status");
    eventually(WAIT, "the claim gone", || async {
        matches!(claims.get("used").await, Err(kube::Error::Api(s)) if s.code == 404).then_some(())
    })
    .await;
    eventually(WAIT, "the volume gone", || async {
        matches!(pvs.get("guarded").await, Err(kube::Error::Api(s)) if s.code == 404).then_some(())
    })
    .await;
}

#[tokio::test]
async fn ephemeral_volumes_get_claims_owned_by_their_pod() {
    let c = Cluster::start(|_| {}).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pp = PostParams::default();
    let pod = |name: &str| -> Pod {
        obj(json!({
            "metadata": {"name": name},
            "spec": {
                "containers": [{"name": "c", "image": "busybox"}],
                "volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
                    "metadata": {"labels": {"kind": "scratch"}, "annotations": {"note": "x"}},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                        "storageClassName": "",
                    },
                }}}],
            },
        }))
    };
    let p = pods.create(&pp, &pod("eph")).await.expect("pod");
    let claim = eventually(WAIT, "the ephemeral claim", || async {
        claims.get("eph-scratch").await.ok()
    })
    .await;
    assert_eq!(
        claim.labels().get("kind").map(String::as_str),
        Some("scratch")
    );
    assert_eq!(
        claim.annotations().get("note").map(String::as_str),
        Some("x")
    );
    let owner = &claim.owner_references()[0];
    assert_eq!(owner.kind, "Pod");
    assert_eq!(Some(&owner.uid), p.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));
    assert_eq!(owner.block_owner_deletion, Some(true));
    assert_eq!(
        claim
            .spec
            .and_then(|s| s.resources)
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").map(|q| q.0.clone())),
        Some("1Gi".to_owned())
    );

    // A claim of that name that is not the pod's is left alone.
    claims
        .create(&pp, &pvc("taken-scratch", "1Gi", json!({})))
        .await
        .expect("pvc");
    pods.create(&pp, &pod("taken")).await.expect("pod");
    let evs = events_once(&c, "taken", "FailedBinding").await;
    assert!(
        evs.iter().any(|(_, m)| m
            == "ephemeral volume scratch: PVC default/taken-scratch was not created for pod \
                default/taken (pod is not owner)"),
        "{evs:?}"
    );
    assert!(
        claims
            .get("taken-scratch")
            .await
            .expect("pvc")
            .owner_references()
            .is_empty()
    );
}

#[tokio::test]
async fn a_claim_whose_volume_is_gone_is_lost() {
    let c = Cluster::start(|_| {}).await;
    let pvs: Api<PersistentVolume> = Api::all(c.client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let pp = PostParams::default();
    pvs.create(&pp, &pv("short-lived", "1Gi", json!({})))
        .await
        .expect("pv");
    claims
        .create(&pp, &pvc("orphan", "1Gi", json!({})))
        .await
        .expect("pvc");
    bound(&claims, "orphan").await;
    // Protection holds a Bound volume back; an admin forces it out.
    pvs.delete("short-lived", &DeleteParams::default())
        .await
        .expect("delete pv");
    pvs.patch(
        "short-lived",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop finalizers");
    eventually(WAIT, "the claim Lost", || async {
        let c = claims.get("orphan").await.ok()?;
        (pvc_phase(&c).as_deref() == Some("Lost")).then_some(())
    })
    .await;
    let evs = events_once(&c, "orphan", "ClaimLost").await;
    assert!(
        evs.iter().any(|(r, m)| r == "ClaimLost"
            && m == "Bound claim has lost its PersistentVolume. Data on the volume is lost!"),
        "{evs:?}"
    );
}
