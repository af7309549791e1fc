use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use kestrel_testkit::eventually;
use kube::ResourceExt as _;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

use super::kubectl::Kubectl;
use super::*;

fn rc(name: &str, replicas: i32) -> ReplicationController {
    // No selector: it defaults to the template's labels, as upstream.
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "template": template(name, "busybox:1.35", json!({}))},
    }))
    .expect("rc")
}

#[tokio::test]
async fn a_replication_controller_keeps_its_pods_and_scales_with_kubectl() {
    let c = Cluster::start().await;
    let rcs = c.api::<ReplicationController>();
    let created = rcs
        .create(&PostParams::default(), &rc("legacy", 2))
        .await
        .expect("create");
    let spec = created.spec.clone().expect("spec");
    assert_eq!(
        spec.selector
            .as_ref()
            .and_then(|s| s.get("app"))
            .map(String::as_str),
        Some("legacy")
    );
    assert_eq!(
        created.labels().get("app").map(String::as_str),
        Some("legacy")
    );
    let pods = c.api::<Pod>();
    let ready = |n: i32| {
        let rcs = rcs.clone();
        async move {
            let s = rcs.get("legacy").await.ok()?.status?;
            (s.replicas == n && s.ready_replicas == Some(n)).then_some(())
        }
    };
    eventually(WAIT, "2 ready replicas", || ready(2)).await;
    let owned = live_pods(&pods, "app=legacy").await;
    assert_eq!(owned.len(), 2);
    let owner = &owned[0].owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.api_version.as_str()),
        ("ReplicationController", "v1")
    );
    // A deleted pod is replaced.
    pods.delete(&owned[0].name_any(), &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually(WAIT, "a replacement", || async {
        let now = live_pods(&pods, "app=legacy").await;
        (now.len() == 2 && now.iter().all(|p| p.name_any() != owned[0].name_any())).then_some(())
    })
    .await;
    // kubectl scales it through the scale subresource and lists it.
    let k = Kubectl::new(&c);
    k.ok(&["scale", "rc", "legacy", "--replicas=3"]).await;
    eventually(WAIT, "3 ready replicas", || ready(3)).await;
    let out = k.ok(&["get", "rc", "legacy", "-o", "wide"]).await;
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.first().copied(), Some("legacy"), "{out}");
    assert_eq!(row.get(1..4), Some(&["3", "3", "3"][..]), "{out}");
    assert_eq!(row.last().copied(), Some("app=legacy"), "{out}");
    // A template its selector does not pick is refused.
    let bad: ReplicationController = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "spec": {"selector": {"app": "other"}, "template": template("bad", "busybox:1.35", json!({}))},
    }))
    .expect("bad");
    let err = rcs
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("selector does not match template labels"),
        "{err}"
    );
}
