use k8s_openapi::api::core::v1::{Namespace, Pod, ResourceQuota};
use kestrel_testkit::eventually;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::common::{Cluster, WAIT, obj};

fn pod(name: &str, cpu: Option<&str>) -> Pod {
    let resources = cpu.map_or(json!({}), |c| json!({"requests": {"cpu": c}}));
    obj(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": resources}]},
    }))
}

fn used(q: &ResourceQuota, r: &str) -> Option<String> {
    q.status
        .as_ref()?
        .used
        .as_ref()?
        .get(r)
        .map(|v| v.0.clone())
}

fn refusal(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => s.message,
        other => panic!("expected 403, got {other}"),
    }
}

#[tokio::test]
async fn quota_refuses_what_does_not_fit_and_tracks_usage() {
    let c = Cluster::start(|_| {}).await;
    let nss: Api<Namespace> = Api::all(c.client.clone());
    nss.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "q"}})),
    )
    .await
    .expect("namespace");
    let quotas: Api<ResourceQuota> = Api::namespaced(c.client.clone(), "q");
    quotas
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "compute"}, "spec": {"hard": {"pods": "2", "requests.cpu": "1"}}})),
        )
        .await
        .expect("quota");
    eventually(WAIT, "quota status computed", || async {
        let q = quotas.get("compute").await.ok()?;
        (used(&q, "pods")? == "0").then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "q");
    let pp = PostParams::default();
    let msg = refusal(
        pods.create(&pp, &pod("bare", None))
            .await
            .expect_err("no cpu request"),
    );
    assert_eq!(
        msg,
        r#"pods "bare" is forbidden: failed quota: compute: must specify requests.cpu"#
    );
    pods.create(&pp, &pod("a", Some("600m")))
        .await
        .expect("fits");
    let msg = refusal(
        pods.create(&pp, &pod("b", Some("500m")))
            .await
            .expect_err("over cpu"),
    );
    assert_eq!(
        msg,
        r#"pods "b" is forbidden: exceeded quota: compute, requested: requests.cpu=500m, used: requests.cpu=600m, limited: requests.cpu=1"#
    );
    pods.create(&pp, &pod("b", Some("400m")))
        .await
        .expect("fits exactly");
    let msg = refusal(
        pods.create(&pp, &pod("c", Some("0")))
            .await
            .expect_err("over pods"),
    );
    assert!(
        msg.contains("exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"),
        "{msg}"
    );
    let q = quotas.get("compute").await.expect("quota");
    assert_eq!(used(&q, "requests.cpu").as_deref(), Some("1"));
    // Deleting frees the quota once the controller recounts.
    pods.delete(
        "a",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("delete");
    eventually(WAIT, "usage drops", || async {
        let q = quotas.get("compute").await.ok()?;
        (used(&q, "pods")? == "1" && used(&q, "requests.cpu")? == "400m").then_some(())
    })
    .await;
    pods.create(&pp, &pod("c", Some("600m")))
        .await
        .expect("fits again");
}
