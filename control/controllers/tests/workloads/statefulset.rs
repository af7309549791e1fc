use std::collections::HashMap;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kestrel_testkit::eventually;
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use super::*;

fn statefulset(name: &str, replicas: i32, spec: serde_json::Value) -> StatefulSet {
    let mut s = json!({
        "replicas": replicas,
        "serviceName": name,
        "selector": {"matchLabels": {"app": name}},
        "template": template(name, "busybox:1.35", json!({})),
    });
    if let (Some(m), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
        m.extend(extra.clone());
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": s})).expect("statefulset")
}

fn image_of(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.containers[0].image.as_deref())
        .unwrap_or_default()
}

/// Every pod creation (by name) in the order the watch saw them, each with
/// the names of the pods that were Running and Ready at that moment.
///
/// Returns once the watch has listed, so that every pod created afterwards
/// is seen as an event rather than in the first list.
async fn record_creations(
    api: Api<Pod>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<String>)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (listed_tx, listed) = tokio::sync::oneshot::channel();
    let mut listed_tx = Some(listed_tx);
    let task = tokio::spawn(async move {
        let mut ready_now: HashMap<String, (String, bool)> = HashMap::new();
        let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev @ (watcher::Event::Apply(_) | watcher::Event::InitApply(_))) => {
                    let listing = matches!(ev, watcher::Event::InitApply(_));
                    let (watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
                        continue;
                    };
                    let uid = p.uid().unwrap_or_default();
                    let fresh = ready_now.get(&p.name_any()).is_none_or(|(u, _)| *u != uid);
                    // Pods in the first list were there before the watch.
                    if fresh && !listing {
                        let mut up: Vec<_> = ready_now
                            .iter()
                            .filter(|(_, (_, r))| *r)
                            .map(|(n, _)| n.clone())
                            .collect();
                        up.sort();
                        let _ = tx.send((p.name_any(), up));
                    }
                    ready_now.insert(
                        p.name_any(),
                        (uid, ready(&p) && p.metadata.deletion_timestamp.is_none()),
                    );
                }
                Ok(watcher::Event::Delete(p)) => {
                    ready_now.remove(&p.name_any());
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = listed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(WAIT, listed)
        .await
        .expect("the watch lists in time")
        .expect("the watch task runs");
    (task, rx)
}

#[tokio::test]
async fn ordered_ready_creates_pods_one_after_another() {
    let c = Cluster::start().await;
    let sets = c.api::<StatefulSet>();
    let pods = c.api::<Pod>();
    let (watch, mut created) = record_creations(pods.clone()).await;
    sets.create(&PostParams::default(), &statefulset("db", 3, json!({})))
        .await
        .expect("create");
    let st = eventually(WAIT, "three ready replicas", || async {
        let s = sets.get("db").await.ok()?.status?;
        (s.ready_replicas == Some(3)).then_some(s)
    })
    .await;
    watch.abort();
    let mut order = Vec::new();
    while let Ok(e) = created.try_recv() {
        order.push(e);
    }
    assert_eq!(
        order,
        [
            ("db-0".to_owned(), vec![]),
            ("db-1".to_owned(), vec!["db-0".to_owned()]),
            (
                "db-2".to_owned(),
                vec!["db-0".to_owned(), "db-1".to_owned()]
            ),
        ],
        "each pod created only once the lower ones were Running and Ready"
    );
    assert_eq!(st.replicas, 3);
    assert_eq!(st.current_replicas, Some(3));
    assert_eq!(st.updated_replicas, Some(3));
    assert_eq!(st.available_replicas, Some(3));
    assert_eq!(st.current_revision, st.update_revision);
    let p = pods.get("db-1").await.expect("db-1");
    assert_eq!(
        p.labels()
            .get("statefulset.kubernetes.io/pod-name")
            .map(String::as_str),
        Some("db-1")
    );
    assert_eq!(
        p.labels()
            .get("apps.kubernetes.io/pod-index")
            .map(String::as_str),
        Some("1")
    );
    let spec = p.spec.expect("spec");
    assert_eq!(
        (spec.hostname.as_deref(), spec.subdomain.as_deref()),
        (Some("db-1"), Some("db"))
    );

    // A deleted member comes back under its own name.
    let old_uid = pods.get("db-1").await.expect("db-1").uid();
    pods.delete("db-1", &Default::default())
        .await
        .expect("delete");
    eventually(WAIT, "a new db-1, ready", || async {
        let p = pods.get("db-1").await.ok()?;
        (p.uid() != old_uid && ready(&p)).then_some(())
    })
    .await;

    // Scale down removes the highest ordinal.
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .expect("scale");
    eventually(WAIT, "only db-0 left", || async {
        (names(&live_pods(&pods, "app=db").await) == ["db-0"]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_partitioned_rolling_update_goes_from_the_highest_ordinal_down() {
    let c = Cluster::start().await;
    let sets = c.api::<StatefulSet>();
    let pods = c.api::<Pod>();
    let spec = json!({
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
    });
    sets.create(&PostParams::default(), &statefulset("db", 3, spec))
        .await
        .expect("create");
    let before = eventually(WAIT, "three ready replicas", || async {
        let s = sets.get("db").await.ok()?.status?;
        (s.ready_replicas == Some(3)).then_some(s)
    })
    .await;
    let (watch, mut created) = record_creations(pods.clone()).await;
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}});
    sets.patch("db", &PatchParams::default(), &Patch::Merge(image))
        .await
        .expect("update");
    let st = eventually(WAIT, "ordinals 1 and 2 updated", || async {
        let s = sets.get("db").await.ok()?.status?;
        (s.updated_replicas == Some(2) && s.ready_replicas == Some(3)).then_some(s)
    })
    .await;
    assert_eq!(
        st.current_revision, before.current_revision,
        "below the partition stays current"
    );
    assert_ne!(st.update_revision, st.current_revision);
    assert_eq!(st.current_replicas, Some(1));
    let mut images: Vec<_> = live_pods(&pods, "app=db")
        .await
        .iter()
        .map(|p| (p.name_any(), image_of(p).to_owned()))
        .collect();
    images.sort();
    assert_eq!(
        images,
        [
            ("db-0".to_owned(), "busybox:1.35".to_owned()),
            ("db-1".to_owned(), "busybox:1.36".to_owned()),
            ("db-2".to_owned(), "busybox:1.36".to_owned()),
        ]
    );
    let mut order = Vec::new();
    while let Ok((n, _)) = created.try_recv() {
        order.push(n);
    }
    assert_eq!(order, ["db-2", "db-1"], "highest ordinal first");

    // Partition 0 finishes the rollout, and the update revision becomes current.
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await
    .expect("partition 0");
    let st = eventually(WAIT, "all updated", || async {
        let s = sets.get("db").await.ok()?.status?;
        (s.updated_replicas == Some(3)
            && s.ready_replicas == Some(3)
            && s.current_revision == s.update_revision)
            .then_some(s)
    })
    .await;
    watch.abort();
    assert_eq!(st.current_replicas, Some(3));
    let mut order = Vec::new();
    while let Ok((n, _)) = created.try_recv() {
        order.push(n);
    }
    assert_eq!(order, ["db-0"]);
}

fn claim_template() -> serde_json::Value {
    json!({"volumeClaimTemplates": [{
        "metadata": {"name": "data", "labels": {"tier": "db"}},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "",
        },
    }]})
}

#[tokio::test]
async fn members_get_their_own_claims_mounted_under_the_template_name() {
    let c = Cluster::start().await;
    let sets = c.api::<StatefulSet>();
    let pods = c.api::<Pod>();
    let claims = c.api::<PersistentVolumeClaim>();
    let mut spec = claim_template();
    // A template volume of the same name is replaced by the claim.
    spec["template"] = json!({
        "metadata": {"labels": {"app": "db"}},
        "spec": {
            "containers": [{"name": "c", "image": "busybox:1.35"}],
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "cache", "emptyDir": {}},
            ],
        },
    });
    sets.create(&PostParams::default(), &statefulset("db", 2, spec))
        .await
        .expect("create");
    let ready = eventually(WAIT, "two ready members", || async {
        let p = live_pods(&pods, "app=db").await;
        (p.len() == 2 && p.iter().all(ready)).then_some(p)
    })
    .await;
    for p in &ready {
        let n = p.name_any();
        let claim = claims
            .get(&format!("data-{n}"))
            .await
            .expect("the member's claim");
        let labels = claim.labels();
        assert_eq!(labels.get("tier").map(String::as_str), Some("db"));
        assert_eq!(labels.get("app").map(String::as_str), Some("db"));
        assert!(claim.owner_references().is_empty(), "retained by default");
        assert_eq!(
            claim.spec.and_then(|s| s.access_modes),
            Some(vec!["ReadWriteOnce".to_owned()])
        );
        let vols = p.spec.clone().and_then(|s| s.volumes).unwrap_or_default();
        let data: Vec<_> = vols.iter().filter(|v| v.name == "data").collect();
        assert_eq!(data.len(), 1, "{vols:?}");
        assert_eq!(
            data[0]
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.clone()),
            Some(format!("data-{n}"))
        );
        assert!(data[0].empty_dir.is_none());
        assert!(
            vols.iter()
                .any(|v| v.name == "cache" && v.empty_dir.is_some())
        );
    }
    let events = events_once(&c, "db", "SuccessfulCreate").await;
    assert!(
        events.iter().any(|(r, m)| r == "SuccessfulCreate"
            && m == "create Claim data-db-0 Pod db-0 in StatefulSet db success"),
        "{events:?}"
    );
    // Scaling down keeps the claims (Retain).
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .expect("scale");
    eventually(WAIT, "one member", || async {
        (live_pods(&pods, "app=db").await.len() == 1).then_some(())
    })
    .await;
    assert!(claims.get("data-db-1").await.is_ok());
}

#[tokio::test]
async fn the_retention_policy_makes_the_set_or_the_pod_the_claims_owner() {
    let c = Cluster::start().await;
    let sets = c.api::<StatefulSet>();
    let pods = c.api::<Pod>();
    let claims = c.api::<PersistentVolumeClaim>();
    let mut spec = claim_template();
    spec["persistentVolumeClaimRetentionPolicy"] =
        json!({"whenDeleted": "Delete", "whenScaled": "Delete"});
    let set = sets
        .create(&PostParams::default(), &statefulset("web", 2, spec))
        .await
        .expect("create");
    let set_uid = set.uid().expect("uid");
    eventually(WAIT, "two ready members", || async {
        let p = live_pods(&pods, "app=web").await;
        (p.len() == 2 && p.iter().all(ready)).then_some(())
    })
    .await;
    for n in ["data-web-0", "data-web-1"] {
        let claim = claims.get(n).await.expect("claim");
        let refs = claim.owner_references();
        assert_eq!(refs.len(), 1, "{refs:?}");
        assert_eq!(refs[0].kind, "StatefulSet");
        assert_eq!(refs[0].uid, set_uid);
    }
    let doomed = pods.get("web-1").await.expect("pod");
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .expect("scale");
    // The scaled-away member's claim now belongs to its pod alone.
    let refs = eventually(WAIT, "the claim owned by the pod", || async {
        let claim = claims.get("data-web-1").await.ok()?;
        let refs = claim.owner_references().to_vec();
        (refs.len() == 1 && refs[0].kind == "Pod").then_some(refs)
    })
    .await;
    assert_eq!(Some(&refs[0].uid), doomed.metadata.uid.as_ref());
    assert_eq!(refs[0].name, "web-1");
    let kept = claims.get("data-web-0").await.expect("claim");
    assert_eq!(kept.owner_references()[0].uid, set_uid);
}
