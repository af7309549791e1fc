use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kestrel_testkit::eventually;
use kube::ResourceExt as _;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use super::*;
use crate::kubectl::Kubectl;

fn deployment(name: &str, replicas: i32, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": template(name, "busybox:1.35", json!({})),
        }
    }))
    .expect("deployment")
}

/// Wait until the Deployment reports a finished rollout of generation
/// `generation`, as `kubectl rollout status` judges it.
async fn rolled_out(api: &kube::Api<Deployment>, name: &str, generation: i64) -> Deployment {
    eventually(
        WAIT,
        &format!("{name} rolled out at generation {generation}"),
        || async {
            let d = api.get(name).await.ok()?;
            let want = d.spec.replicas?;
            let s = d.status.clone()?;
            (d.metadata.generation == Some(generation)
                && s.observed_generation == Some(generation)
                && s.updated_replicas == Some(want)
                && s.replicas == Some(want)
                && s.available_replicas == Some(want))
            .then_some(d)
        },
    )
    .await
}

fn condition(d: &Deployment, type_: &str) -> Option<(String, String)> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_.as_deref() == Some(type_))
        .map(|c| {
            (
                c.status.clone().unwrap_or_default(),
                c.reason.clone().unwrap_or_default(),
            )
        })
}

fn set_image(image: &str) -> Patch<serde_json::Value> {
    Patch::Merge(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}}),
    )
}

fn image_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_deployment_of_five_replaces_two_deleted_pods() {
    let c = Cluster::start().await;
    let deploys = c.api::<Deployment>();
    let pods = c.api::<Pod>();
    let rss = c.api::<ReplicaSet>();
    deploys
        .create(&PostParams::default(), &deployment("web", 5, json!({})))
        .await
        .expect("create");
    let d = rolled_out(&deploys, "web", 1).await;
    assert_eq!(
        d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        condition(&d, "Available"),
        Some(("True".into(), "MinimumReplicasAvailable".into()))
    );
    let rs = rss.list(&ListParams::default()).await.expect("rs").items;
    assert_eq!(rs.len(), 1);
    let rs = &rs[0];
    let hash = rs
        .labels()
        .get("pod-template-hash")
        .cloned()
        .expect("hash label");
    assert_eq!(rs.name_any(), format!("web-{hash}"));
    assert_eq!(
        rs.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(owner_name(rs, "Deployment").as_deref(), Some("web"));
    eventually(WAIT, "Progressing NewReplicaSetAvailable", || async {
        let d = deploys.get("web").await.ok()?;
        (condition(&d, "Progressing") == Some(("True".into(), "NewReplicaSetAvailable".into())))
            .then_some(())
    })
    .await;
    let before = live_pods(&pods, "app=web").await;
    assert_eq!(before.len(), 5);
    assert!(
        before
            .iter()
            .all(|p| p.labels().get("pod-template-hash") == Some(&hash))
    );
    let events = events_about(&c, "web").await;
    assert!(
        events.iter().any(|(r, m)| r == "ScalingReplicaSet"
            && *m == format!("Scaled up replica set web-{hash} from 0 to 5")),
        "{events:?}"
    );

    let gone: Vec<_> = before[..2].iter().map(|p| p.name_any()).collect();
    for n in &gone {
        pods.delete(n, &DeleteParams::default())
            .await
            .expect("delete pod");
    }
    eventually(WAIT, "five ready pods again, two of them new", || async {
        let now = live_pods(&pods, "app=web").await;
        let ready_count = now.iter().filter(|p| ready(p)).count();
        let fresh = now
            .iter()
            .filter(|p| !before.iter().any(|b| b.name_any() == p.name_any()))
            .count();
        let d = deploys.get("web").await.ok()?;
        (now.len() == 5
            && ready_count == 5
            && fresh == 2
            && now.iter().all(|p| !gone.contains(&p.name_any()))
            && d.status?.available_replicas == Some(5))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_rolling_update_keeps_replicas_minus_max_unavailable_available() {
    let c = Cluster::start().await;
    let deploys = c.api::<Deployment>();
    let pods = c.api::<Pod>();
    let rss = c.api::<ReplicaSet>();
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2, "maxSurge": "25%"}});
    deploys
        .create(&PostParams::default(), &deployment("web", 10, strategy))
        .await
        .expect("create");
    rolled_out(&deploys, "web", 1).await;

    // The lowest count of available pods, and of available replicas
    // reported, at any moment of the rollout.
    let pods_lowest = Lowest::watch(pods.clone(), "app=web");
    let lowest = Arc::new(Mutex::new(i32::MAX));
    let status_watch = {
        let lowest = lowest.clone();
        let api = deploys.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
            while let Some(ev) = events.next().await {
                if let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = ev
                    && let Some(a) = d.status.and_then(|s| s.available_replicas)
                {
                    let mut l = lowest.lock().expect("lock");
                    *l = (*l).min(a);
                }
            }
        })
    };
    // Let both watches see the steady state first.
    eventually(WAIT, "the watches to start", || async {
        (pods_lowest.get() == 10 && *lowest.lock().expect("lock") == 10).then_some(())
    })
    .await;

    deploys
        .patch("web", &PatchParams::default(), &set_image("busybox:1.36"))
        .await
        .expect("update image");
    let d = rolled_out(&deploys, "web", 2).await;
    eventually(WAIT, "only new pods left", || async {
        let ps = live_pods(&pods, "app=web").await;
        (ps.len() == 10 && ps.iter().all(|p| image_of(p) == "busybox:1.36")).then_some(())
    })
    .await;
    status_watch.abort();
    let (pods_low, status_low) = (pods_lowest.get(), *lowest.lock().expect("lock"));
    assert!(pods_low >= 8, "available pods fell to {pods_low}");
    assert!(
        status_low >= 8,
        "status.availableReplicas fell to {status_low}"
    );
    assert_eq!(
        d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("2")
    );
    let rs = rss.list(&ListParams::default()).await.expect("rs").items;
    let sizes: Vec<_> = rs
        .iter()
        .map(|r| {
            (
                r.annotations()
                    .get("deployment.kubernetes.io/revision")
                    .cloned()
                    .unwrap_or_default(),
                r.spec.replicas.unwrap_or(0),
            )
        })
        .collect();
    assert!(
        sizes.contains(&("1".into(), 0)) && sizes.contains(&("2".into(), 10)),
        "{sizes:?}"
    );
}

#[tokio::test]
async fn recreate_stops_old_pods_first_and_history_is_pruned() {
    let c = Cluster::start().await;
    let deploys = c.api::<Deployment>();
    let pods = c.api::<Pod>();
    let rss = c.api::<ReplicaSet>();
    let mut d = deployment("web", 3, json!({"type": "Recreate"}));
    d.spec.revision_history_limit = Some(1);
    deploys
        .create(&PostParams::default(), &d)
        .await
        .expect("create");
    rolled_out(&deploys, "web", 1).await;

    let mixed = Arc::new(Mutex::new(false));
    let watch = {
        let mixed = mixed.clone();
        let api = pods.clone();
        tokio::spawn(async move {
            let mut images: HashMap<String, String> = HashMap::new();
            let cfg = watcher::Config::default().labels("app=web");
            let mut events = std::pin::pin!(watcher::watcher(api, cfg));
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        images.insert(p.name_any(), image_of(&p));
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        images.remove(&p.name_any());
                    }
                    _ => continue,
                }
                let mut kinds: Vec<_> = images.values().collect();
                kinds.sort();
                kinds.dedup();
                if kinds.len() > 1 {
                    *mixed.lock().expect("lock") = true;
                }
            }
        })
    };
    for (generation, image) in [(2, "busybox:1.36"), (3, "busybox:1.37")] {
        deploys
            .patch("web", &PatchParams::default(), &set_image(image))
            .await
            .expect("update");
        rolled_out(&deploys, "web", generation).await;
    }
    watch.abort();
    assert!(
        !*mixed.lock().expect("lock"),
        "old and new pods ran together"
    );
    eventually(WAIT, "one old replica set kept", || async {
        let rs = rss.list(&ListParams::default()).await.ok()?.items;
        let mut revs: Vec<_> = rs
            .iter()
            .filter_map(|r| {
                r.annotations()
                    .get("deployment.kubernetes.io/revision")
                    .cloned()
            })
            .collect();
        revs.sort();
        (revs == ["2", "3"]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn kubectl_rollout_undo_brings_back_the_previous_template() {
    let c = Cluster::start().await;
    let kubectl = Kubectl::new(&c);
    let deploys = c.api::<Deployment>();
    let pods = c.api::<Pod>();
    deploys
        .create(&PostParams::default(), &deployment("web", 3, json!({})))
        .await
        .expect("create");
    rolled_out(&deploys, "web", 1).await;
    deploys
        .patch("web", &PatchParams::default(), &set_image("busybox:1.36"))
        .await
        .expect("update image");
    rolled_out(&deploys, "web", 2).await;
    let history = kubectl.ok(&["rollout", "history", "deployment/web"]).await;
    let revisions: Vec<_> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u32>().ok())
        .collect();
    assert_eq!(revisions, [1, 2], "{history}");

    let out = kubectl.ok(&["rollout", "undo", "deployment/web"]).await;
    assert!(out.contains("rolled back"), "{out}");
    let status = kubectl
        .ok(&["rollout", "status", "deployment/web", "--timeout=20s"])
        .await;
    assert!(status.contains("successfully rolled out"), "{status}");
    let d = rolled_out(&deploys, "web", 3).await;
    let image = d
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.containers[0].image.clone());
    assert_eq!(image.as_deref(), Some("busybox:1.35"));
    assert_eq!(
        d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("3"),
        "the old ReplicaSet comes back as the newest revision"
    );
    eventually(WAIT, "only pods of the first template", || async {
        let ps = live_pods(&pods, "app=web").await;
        (ps.len() == 3 && ps.iter().all(|p| image_of(p) == "busybox:1.35" && ready(p)))
            .then_some(())
    })
    .await;
    let history = kubectl.ok(&["rollout", "history", "deployment/web"]).await;
    let revisions: Vec<_> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u32>().ok())
        .collect();
    assert_eq!(revisions, [2, 3], "{history}");

    // kubectl scale goes through the scale subresource.
    kubectl
        .ok(&["scale", "deployment/web", "--replicas=4"])
        .await;
    let d = rolled_out(&deploys, "web", 4).await;
    assert_eq!(d.spec.replicas, Some(4));

    // A paused Deployment takes a new template but does not roll it out.
    kubectl.ok(&["rollout", "pause", "deployment/web"]).await;
    kubectl
        .ok(&["set", "image", "deployment/web", "c=busybox:1.37"])
        .await;
    eventually(WAIT, "the paused change observed", || async {
        let d = deploys.get("web").await.ok()?;
        let s = d.status.clone()?;
        (s.observed_generation == d.metadata.generation
            && condition(&d, "Progressing") == Some(("Unknown".into(), "DeploymentPaused".into())))
        .then_some(())
    })
    .await;
    let ps = live_pods(&pods, "app=web").await;
    assert!(
        ps.iter().all(|p| image_of(p) == "busybox:1.35"),
        "nothing rolled while paused"
    );
    kubectl.ok(&["rollout", "resume", "deployment/web"]).await;
    let status = kubectl
        .ok(&["rollout", "status", "deployment/web", "--timeout=20s"])
        .await;
    assert!(status.contains("successfully rolled out"), "{status}");
    eventually(WAIT, "the new template everywhere", || async {
        let ps = live_pods(&pods, "app=web").await;
        (ps.len() == 4 && ps.iter().all(|p| image_of(p) == "busybox:1.37" && ready(p)))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_rollout_that_stalls_exceeds_its_progress_deadline() {
    let c = Cluster::start().await;
    let deploys = c.api::<Deployment>();
    let mut d = deployment("stuck", 1, json!({}));
    d.spec.progress_deadline_seconds = Some(1);
    if let Some(l) = d
        .spec
        .template
        .metadata
        .as_mut()
        .and_then(|m| m.labels.as_mut())
    {
        l.insert("fake-kubelet/outcome".into(), "pending".into());
    }
    deploys
        .create(&PostParams::default(), &d)
        .await
        .expect("create");
    let d = eventually(WAIT, "ProgressDeadlineExceeded", || async {
        let d = deploys.get("stuck").await.ok()?;
        (condition(&d, "Progressing") == Some(("False".into(), "ProgressDeadlineExceeded".into())))
            .then_some(d)
    })
    .await;
    assert_eq!(
        condition(&d, "Available"),
        Some(("False".into(), "MinimumReplicasUnavailable".into()))
    );
    assert_eq!(d.status.and_then(|s| s.unavailable_replicas), Some(1));
}
