use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kestrel_testkit::eventually;
use kube::ResourceExt as _;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use super::*;

fn replicaset(name: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": template(name, "busybox:1.35", json!({})),
        }
    }))
    .expect("replicaset")
}

#[tokio::test]
async fn a_replicaset_runs_its_replicas_and_reports_them() {
    let c = Cluster::start().await;
    let rss = c.api::<ReplicaSet>();
    let pods = c.api::<Pod>();
    rss.create(&PostParams::default(), &replicaset("web", 3))
        .await
        .expect("create rs");
    let st = eventually(WAIT, "3 ready replicas in status", || async {
        let rs = rss.get("web").await.ok()?;
        let s = rs.status?;
        (s.ready_replicas == Some(3) && s.available_replicas == Some(3)).then_some(s)
    })
    .await;
    assert_eq!(st.replicas, 3);
    assert_eq!(st.fully_labeled_replicas, Some(3));
    assert_eq!(st.observed_generation, Some(1));
    let got = live_pods(&pods, "app=web").await;
    assert_eq!(got.len(), 3, "exactly the replicas, never more");
    for p in &got {
        let name = p.name_any();
        let suffix = name.strip_prefix("web-").expect("named after the rs");
        assert_eq!(suffix.len(), 5, "{name}: generateName adds 5 chars");
        let r = &p.owner_references()[0];
        assert_eq!((r.kind.as_str(), r.name.as_str()), ("ReplicaSet", "web"));
        assert_eq!(r.controller, Some(true));
        assert_eq!(r.block_owner_deletion, Some(true));
    }
    let events = events_about(&c, "web").await;
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "SuccessfulCreate" && m.starts_with("Created pod: web-")),
        "{events:?}"
    );

    // Scale down: the spare pods go, with an Event each.
    rss.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .expect("scale");
    eventually(WAIT, "one pod left and status 1", || async {
        let left = live_pods(&pods, "app=web").await.len();
        let s = rss.get("web").await.ok()?.status?;
        (left == 1 && s.replicas == 1 && s.observed_generation == Some(2)).then_some(())
    })
    .await;
    assert!(
        events_about(&c, "web")
            .await
            .iter()
            .any(|(r, m)| r == "SuccessfulDelete" && m.starts_with("Deleted pod: web-"))
    );
}

#[tokio::test]
async fn orphans_are_adopted_and_unselected_pods_released() {
    // The orphan and the ReplicaSet exist before the controllers start, so
    // the controller sees the orphan in its first list rather than racing
    // its creation (it would then create a third pod and, owning four,
    // delete the not-ready orphan).
    let mut c = Cluster::without_controllers().await;
    let rss = c.api::<ReplicaSet>();
    let pods = c.api::<Pod>();
    // An orphan that will never be ready: the cheapest to scale down.
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray", "labels": {"app": "web", "fake-kubelet/outcome": "pending"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.35"}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &orphan)
        .await
        .expect("orphan");
    rss.create(&PostParams::default(), &replicaset("web", 3))
        .await
        .expect("create rs");
    c.start_controllers();
    eventually(
        WAIT,
        "the orphan adopted and two more pods ready",
        || async {
            let ps = live_pods(&pods, "app=web").await;
            let stray = ps.iter().find(|p| p.name_any() == "stray")?;
            let owned = ps
                .iter()
                .filter(|p| owner_name(*p, "ReplicaSet").as_deref() == Some("web"))
                .count();
            let others_ready = ps.iter().filter(|p| ready(p)).count() == 2;
            (owner_name(stray, "ReplicaSet").as_deref() == Some("web")
                && owned == 3
                && ps.len() == 3
                && others_ready)
                .then_some(())
        },
    )
    .await;

    // Scaling down removes the not-ready pod first.
    rss.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await
    .expect("scale");
    eventually(WAIT, "the pending pod deleted first", || async {
        let ps = live_pods(&pods, "app=web").await;
        (ps.len() == 2 && ps.iter().all(|p| p.name_any() != "stray")).then_some(())
    })
    .await;

    // A pod relabelled out of the selector is released and replaced.
    let victim = live_pods(&pods, "app=web").await[0].name_any();
    pods.patch(
        &victim,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "debug"}}})),
    )
    .await
    .expect("relabel");
    eventually(WAIT, "released and replaced", || async {
        let p = pods.get(&victim).await.ok()?;
        let ps = live_pods(&pods, "app=web").await;
        (p.owner_references().is_empty() && ps.len() == 2).then_some(())
    })
    .await;
}
