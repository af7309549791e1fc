//! PodDisruptionBudgets: the disruption controller's status and evictions
//! that spend it, as `kubectl drain` meets them.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kestrel_testkit::eventually;
use kube::api::{Api, EvictParams, PostParams};
use serde_json::json;

use crate::common::{Cluster, WAIT, obj, pod_running};

fn pod(name: &str) -> Pod {
    obj(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
}

fn status_of(b: &PodDisruptionBudget) -> (i32, i32, i32, i32) {
    let s = b.status.clone().unwrap_or_default();
    (
        s.current_healthy.unwrap_or(-1),
        s.desired_healthy.unwrap_or(-1),
        s.expected_pods.unwrap_or(-1),
        s.disruptions_allowed.unwrap_or(-1),
    )
}

async fn wait_status(pdbs: &Api<PodDisruptionBudget>, want: (i32, i32, i32, i32)) {
    eventually(WAIT, &format!("budget status {want:?}"), || async {
        let b = pdbs.get("web").await.ok()?;
        (status_of(&b) == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn evictions_spend_the_budget_and_are_refused_when_it_is_spent() {
    let c = Cluster::start(|_| {}).await;
    // kube-rs retries 429s by default (up to 15 times, for minutes); a
    // refused eviction is what this test looks at, so it gets no retries.
    let kc = kube::config::Kubeconfig::read_from(&c._server.kubeconfig).expect("kubeconfig");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    cfg.default_retry = false;
    let client = kube::Client::try_from(cfg).expect("client");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.client.clone(), "default");

    // Both bounds at once: refused with upstream's message, nothing stored.
    let bad = pdbs
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "web"}, "spec": {
                "minAvailable": 1, "maxUnavailable": 1,
                "selector": {"matchLabels": {"app": "web"}}}})),
        )
        .await
        .expect_err("both set");
    assert!(
        bad.to_string()
            .contains("minAvailable and maxUnavailable cannot be both set"),
        "{bad}"
    );

    pdbs.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "web"}, "spec": {
            "minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}})),
    )
    .await
    .expect("budget");
    for (i, name) in ["web-0", "web-1", "web-2"].iter().enumerate() {
        pods.create(&PostParams::default(), &pod(name))
            .await
            .expect("pod");
        pod_running(&pods, name, &format!("10.42.0.{}", i + 10), true).await;
    }
    // Three healthy, two wanted: one disruption allowed.
    wait_status(&pdbs, (3, 2, 3, 1)).await;
    let b = pdbs.get("web").await.expect("budget");
    let cond = b
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "DisruptionAllowed")
        .expect("condition");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("True", "SufficientPods")
    );

    pods.evict("web-0", &EvictParams::default())
        .await
        .expect("first eviction");
    eventually(WAIT, "web-0 gone", || async {
        pods.get_opt("web-0").await.ok()?.is_none().then_some(())
    })
    .await;
    // The budget is spent: the next one is refused until the pods recover.
    let e = pods
        .evict("web-1", &EvictParams::default())
        .await
        .expect_err("budget spent");
    match e {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 429, "{s:?}");
            assert_eq!(s.reason, "TooManyRequests");
            assert_eq!(
                s.message,
                "Cannot evict pod as it would violate the pod's disruption budget."
            );
        }
        other => panic!("expected 429, got {other}"),
    }
    assert!(pods.get_opt("web-1").await.expect("get").is_some());
    wait_status(&pdbs, (2, 2, 2, 0)).await;

    // A replacement becomes Ready: a disruption is allowed again.
    pods.create(&PostParams::default(), &pod("web-3"))
        .await
        .expect("pod");
    pod_running(&pods, "web-3", "10.42.0.13", true).await;
    wait_status(&pdbs, (3, 2, 3, 1)).await;
    pods.evict("web-1", &EvictParams::default())
        .await
        .expect("eviction after recovery");

    // A pod that is not Ready goes while the budget holds (IfHealthyBudget),
    // and a pending one always.
    pods.create(&PostParams::default(), &pod("web-4"))
        .await
        .expect("pod");
    pod_running(&pods, "web-4", "10.42.0.14", false).await;
    wait_status(&pdbs, (2, 2, 3, 0)).await;
    pods.evict("web-4", &EvictParams::default())
        .await
        .expect("unhealthy pod while the budget holds");
    pods.create(&PostParams::default(), &pod("web-5"))
        .await
        .expect("pod");
    pods.evict("web-5", &EvictParams::default())
        .await
        .expect("pending pod");
    // Evicting what does not exist is a 404.
    let e = pods
        .evict("nope", &EvictParams::default())
        .await
        .expect_err("missing");
    assert!(matches!(e, kube::Error::Api(ref s) if s.code == 404), "{e}");
}
