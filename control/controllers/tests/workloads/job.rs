use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kestrel_testkit::eventually;
use kube::ResourceExt as _;
use kube::api::{ListParams, PostParams};
use serde_json::json;

use super::*;

fn job(name: &str, outcome: &str, spec: serde_json::Value) -> Job {
    let mut t = template(
        name,
        "busybox:1.35",
        json!({"fake-kubelet/outcome": outcome}),
    );
    t["spec"]["restartPolicy"] = json!("Never");
    let mut s = json!({"template": t});
    if let (Some(m), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
        m.extend(extra.clone());
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": s})).expect("job")
}

fn condition(j: &Job, type_: &str) -> Option<String> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .and_then(|c| c.reason.clone())
}

async fn job_pods(c: &Cluster, name: &str) -> Vec<Pod> {
    c.api::<Pod>()
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
        .await
        .expect("pods")
        .items
}

#[tokio::test]
async fn a_job_whose_pods_fail_ends_failed_after_its_backoff_limit() {
    let c = Cluster::start().await;
    let jobs = c.api::<Job>();
    jobs.create(
        &PostParams::default(),
        &job("crash", "fail", json!({"backoffLimit": 2})),
    )
    .await
    .expect("create");
    let j = eventually(WAIT, "the job to fail", || async {
        let j = jobs.get("crash").await.ok()?;
        condition(&j, "Failed").is_some().then_some(j)
    })
    .await;
    assert_eq!(
        condition(&j, "Failed").as_deref(),
        Some("BackoffLimitExceeded")
    );
    let s = j.status.expect("status");
    assert_eq!(s.failed, Some(3), "three failures exceed a limit of two");
    assert_eq!(s.active.unwrap_or(0), 0);
    assert!(s.start_time.is_some());
    assert_eq!(
        job_pods(&c, "crash").await.len(),
        3,
        "no pod after the limit"
    );
    assert!(
        events_about(&c, "crash")
            .await
            .iter()
            .any(|(r, m)| r == "BackoffLimitExceeded"
                && m == "Job has reached the specified backoff limit")
    );
}

#[tokio::test]
async fn a_job_completes_its_completions_then_expires() {
    let c = Cluster::start().await;
    let jobs = c.api::<Job>();
    let spec = json!({"completions": 3, "parallelism": 2, "ttlSecondsAfterFinished": 1});
    let created = jobs
        .create(&PostParams::default(), &job("batch", "succeed", spec))
        .await
        .expect("create");
    let uid = created.uid().expect("uid");
    let j = eventually(WAIT, "the job to complete", || async {
        let j = jobs.get("batch").await.ok()?;
        condition(&j, "Complete").is_some().then_some(j)
    })
    .await;
    let s = j.status.clone().expect("status");
    assert_eq!(s.succeeded, Some(3));
    assert!(s.completion_time.is_some() && s.start_time.is_some());
    let pods = job_pods(&c, "batch").await;
    assert_eq!(pods.len(), 3);
    for p in &pods {
        let l = p.labels();
        assert_eq!(l.get("job-name").map(String::as_str), Some("batch"));
        assert_eq!(l.get("controller-uid"), Some(&uid));
        assert_eq!(l.get("batch.kubernetes.io/controller-uid"), Some(&uid));
        assert!(p.name_any().starts_with("batch-"));
    }
    assert!(
        events_about(&c, "batch")
            .await
            .iter()
            .any(|(r, _)| r == "Completed")
    );
    eventually(WAIT, "the finished job deleted after its TTL", || async {
        jobs.get_opt("batch").await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_job_past_its_deadline_fails_and_stops_its_pods() {
    let c = Cluster::start().await;
    let jobs = c.api::<Job>();
    let spec = json!({"activeDeadlineSeconds": 1, "parallelism": 2, "completions": 4});
    jobs.create(&PostParams::default(), &job("slow", "pending", spec))
        .await
        .expect("create");
    eventually(WAIT, "two pods running", || async {
        (job_pods(&c, "slow").await.len() == 2).then_some(())
    })
    .await;
    let j = eventually(WAIT, "the job to fail", || async {
        let j = jobs.get("slow").await.ok()?;
        condition(&j, "Failed").is_some().then_some(j)
    })
    .await;
    assert_eq!(condition(&j, "Failed").as_deref(), Some("DeadlineExceeded"));
    eventually(WAIT, "its pods gone", || async {
        job_pods(&c, "slow").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_job_gets_a_generated_selector_that_picks_only_its_pods() {
    let c = Cluster::start().await;
    let jobs = c.api::<Job>();
    let j = jobs
        .create(&PostParams::default(), &job("gen", "succeed", json!({})))
        .await
        .expect("create");
    let uid = j.uid().expect("uid");
    let spec = j.spec.expect("spec");
    let sel = spec
        .selector
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    assert_eq!(
        sel.get("batch.kubernetes.io/controller-uid"),
        Some(&uid),
        "{sel:?}"
    );
    let labels = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", uid.as_str()),
        ("controller-uid", uid.as_str()),
        ("batch.kubernetes.io/job-name", "gen"),
        ("job-name", "gen"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "{labels:?}");
    }
    // A manual selector is left as given.
    let mut manual = job("manual", "succeed", json!({"manualSelector": true}));
    if let Some(s) = manual.spec.as_mut() {
        s.selector =
            Some(serde_json::from_value(json!({"matchLabels": {"app": "manual"}})).expect("sel"));
    }
    let m = jobs
        .create(&PostParams::default(), &manual)
        .await
        .expect("manual");
    let sel = m
        .spec
        .and_then(|s| s.selector)
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    assert_eq!(sel.len(), 1, "{sel:?}");
}
