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

/// A Job of `outcome` pods that fail with `exit_code`, and whose template
/// carries `annotations`.
fn job_with(
    name: &str,
    outcome: &str,
    exit_code: i32,
    annotations: serde_json::Value,
    spec: serde_json::Value,
) -> Job {
    let mut j = job(name, outcome, spec);
    if let Some(m) = j.spec.as_mut().and_then(|s| s.template.metadata.as_mut()) {
        m.labels
            .get_or_insert_with(Default::default)
            .insert("fake-kubelet/exit-code".into(), exit_code.to_string());
        m.annotations = serde_json::from_value(annotations).expect("annotations");
    }
    j
}

fn index_of(p: &Pod) -> Option<String> {
    p.annotations()
        .get("batch.kubernetes.io/job-completion-index")
        .cloned()
}

#[tokio::test]
async fn an_indexed_job_runs_each_index_once() {
    let c = Cluster::start().await;
    let jobs = c.api::<Job>();
    let spec = json!({"completionMode": "Indexed", "completions": 5, "parallelism": 2});
    jobs.create(&PostParams::default(), &job("idx", "succeed", spec))
        .await
        .expect("create");
    let j = eventually(WAIT, "the indexed job to complete", || async {
        let j = jobs.get("idx").await.ok()?;
        condition(&j, "Complete").is_some().then_some(j)
    })
    .await;
    assert_eq!(
        condition(&j, "SuccessCriteriaMet").as_deref(),
        Some("CompletionsReached")
    );
    let s = j.status.expect("status");
    assert_eq!(s.completed_indexes.as_deref(), Some("0-4"));
    assert_eq!(s.succeeded, Some(5));
    assert_eq!(s.failed_indexes, None, "no backoffLimitPerIndex");
    let pods = job_pods(&c, "idx").await;
    let mut seen: Vec<String> = pods.iter().filter_map(index_of).collect();
    seen.sort();
    assert_eq!(seen, ["0", "1", "2", "3", "4"], "one pod per index");
    for p in &pods {
        let i = index_of(p).expect("index");
        assert_eq!(
            p.labels().get("batch.kubernetes.io/job-completion-index"),
            Some(&i)
        );
        assert!(
            p.name_any().starts_with(&format!("idx-{i}-")),
            "{}",
            p.name_any()
        );
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some(format!("idx-{i}").as_str()));
        let env = spec.containers[0].env.as_deref().unwrap_or_default();
        let var = env
            .iter()
            .find(|e| e.name == "JOB_COMPLETION_INDEX")
            .expect("JOB_COMPLETION_INDEX");
        let field = var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(
            field,
            Some("metadata.annotations['batch.kubernetes.io/job-completion-index']")
        );
    }
}

#[tokio::test]
async fn an_indexed_job_keeps_to_its_parallelism_lowest_indexes_first() {
    let c = Cluster::start().await;
    let jobs = c.api::<Job>();
    let spec = json!({"completionMode": "Indexed", "completions": 5, "parallelism": 2});
    jobs.create(&PostParams::default(), &job("par", "run", spec))
        .await
        .expect("create");
    let pods = eventually(WAIT, "two pods running", || async {
        let p = job_pods(&c, "par").await;
        (p.len() == 2 && p.iter().all(ready)).then_some(p)
    })
    .await;
    let mut seen: Vec<String> = pods.iter().filter_map(index_of).collect();
    seen.sort();
    assert_eq!(seen, ["0", "1"]);
    // A second pod for index 0 is removed.
    let mut dup = pods
        .iter()
        .find(|p| index_of(p).as_deref() == Some("0"))
        .cloned()
        .expect("index 0");
    dup.metadata = kube::api::ObjectMeta {
        generate_name: Some("par-0-".into()),
        labels: dup.metadata.labels.clone(),
        annotations: dup.metadata.annotations.clone(),
        owner_references: dup.metadata.owner_references.clone(),
        ..Default::default()
    };
    dup.status = None;
    if let Some(s) = dup.spec.as_mut() {
        s.node_name = None;
    }
    c.api::<Pod>()
        .create(&PostParams::default(), &dup)
        .await
        .expect("duplicate");
    eventually(WAIT, "the duplicate removed", || async {
        let live = live_pods(&c.api::<Pod>(), "batch.kubernetes.io/job-name=par").await;
        let zeros = live
            .iter()
            .filter(|p| index_of(p).as_deref() == Some("0"))
            .count();
        (zeros == 1 && live.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_failing_index_is_retried_up_to_its_limit_then_failed() {
    let c = Cluster::start().await;
    let jobs = c.api::<Job>();
    let spec = json!({"completionMode": "Indexed", "completions": 4, "parallelism": 2,
        "backoffLimitPerIndex": 1});
    let j = job_with(
        "perix",
        "succeed",
        1,
        json!({"fake-kubelet/fail-indexes": "1"}),
        spec,
    );
    let created = jobs
        .create(&PostParams::default(), &j)
        .await
        .expect("create");
    assert_eq!(
        created.spec.as_ref().and_then(|s| s.backoff_limit),
        Some(i32::MAX),
        "backoffLimit defaults to unlimited with backoffLimitPerIndex"
    );
    let j = eventually(WAIT, "the job to fail", || async {
        let j = jobs.get("perix").await.ok()?;
        condition(&j, "Failed").is_some().then_some(j)
    })
    .await;
    assert_eq!(condition(&j, "Failed").as_deref(), Some("FailedIndexes"));
    let s = j.status.expect("status");
    assert_eq!(s.failed_indexes.as_deref(), Some("1"));
    assert_eq!(s.completed_indexes.as_deref(), Some("0,2-3"));
    assert_eq!(s.failed, Some(2));
    let mut counts: Vec<String> = job_pods(&c, "perix")
        .await
        .iter()
        .filter(|p| index_of(p).as_deref() == Some("1"))
        .filter_map(|p| {
            p.annotations()
                .get("batch.kubernetes.io/job-index-failure-count")
                .cloned()
        })
        .collect();
    counts.sort();
    assert_eq!(counts, ["0", "1"], "index 1 ran twice: once and one retry");
    let j = jobs.get("perix").await.expect("get");
    let failed = j
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .and_then(|c| c.message);
    assert_eq!(failed.as_deref(), Some("Job has failed indexes"));
}

#[tokio::test]
async fn too_many_failed_indexes_fail_the_job() {
    let c = Cluster::start().await;
    let jobs = c.api::<Job>();
    let spec = json!({"completionMode": "Indexed", "completions": 4, "parallelism": 4,
        "backoffLimitPerIndex": 0, "maxFailedIndexes": 1});
    let j = job_with(
        "maxf",
        "pending",
        1,
        json!({"fake-kubelet/fail-indexes": "0,2"}),
        spec,
    );
    jobs.create(&PostParams::default(), &j)
        .await
        .expect("create");
    let j = eventually(WAIT, "the job to fail", || async {
        let j = jobs.get("maxf").await.ok()?;
        condition(&j, "Failed").is_some().then_some(j)
    })
    .await;
    assert_eq!(
        condition(&j, "Failed").as_deref(),
        Some("MaxFailedIndexesExceeded")
    );
    assert_eq!(
        j.status.and_then(|s| s.failed_indexes).as_deref(),
        Some("0,2")
    );
    assert!(
        events_once(&c, "maxf", "MaxFailedIndexesExceeded")
            .await
            .iter()
            .any(|(r, m)| r == "MaxFailedIndexesExceeded"
                && m == "Job has exceeded the specified maximal number of failed indexes")
    );
    eventually(WAIT, "the pending pods stopped", || async {
        live_pods(&c.api::<Pod>(), "batch.kubernetes.io/job-name=maxf")
            .await
            .iter()
            .all(|p| index_of(p).is_some_and(|i| i == "0" || i == "2"))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_fail_job_rule_fails_the_job_on_its_exit_code() {
    let c = Cluster::start().await;
    let jobs = c.api::<Job>();
    let spec = json!({"backoffLimit": 6, "podFailurePolicy": {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [42]}},
    ]}});
    let created = jobs
        .create(
            &PostParams::default(),
            &job_with("pfp", "fail", 42, json!({}), spec),
        )
        .await
        .expect("create");
    assert_eq!(
        created
            .spec
            .as_ref()
            .and_then(|s| s.pod_replacement_policy.as_deref()),
        Some("Failed")
    );
    let j = eventually(WAIT, "the job to fail", || async {
        let j = jobs.get("pfp").await.ok()?;
        condition(&j, "Failed").is_some().then_some(j)
    })
    .await;
    assert_eq!(condition(&j, "Failed").as_deref(), Some("PodFailurePolicy"));
    assert_eq!(
        condition(&j, "FailureTarget").as_deref(),
        Some("PodFailurePolicy")
    );
    let pods = job_pods(&c, "pfp").await;
    assert_eq!(pods.len(), 1, "no retry after a FailJob match");
    let message = j
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .and_then(|c| c.message);
    assert_eq!(
        message,
        Some(format!(
            "Container c for pod default/{} failed with exit code 42 matching FailJob rule at index 1",
            pods[0].name_any()
        ))
    );
}

#[tokio::test]
async fn an_ignored_failure_does_not_count_toward_the_backoff_limit() {
    let c = Cluster::start().await;
    let jobs = c.api::<Job>();
    let spec = json!({"backoffLimit": 0, "podFailurePolicy": {"rules": [
        {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}},
    ]}});
    jobs.create(
        &PostParams::default(),
        &job_with("ign", "fail", 3, json!({}), spec),
    )
    .await
    .expect("create");
    eventually(WAIT, "three ignored failures replaced", || async {
        let failed = job_pods(&c, "ign")
            .await
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
            .count();
        (failed >= 3).then_some(())
    })
    .await;
    let j = jobs.get("ign").await.expect("get");
    assert_eq!(condition(&j, "Failed"), None, "backoffLimit 0 not reached");
    assert_eq!(j.status.and_then(|s| s.failed).unwrap_or(0), 0);
}

#[tokio::test]
async fn invalid_jobs_are_refused_in_upstream_words() {
    let c = Cluster::start().await;
    let jobs = c.api::<Job>();
    let refused = |name: &'static str, spec: serde_json::Value| {
        let jobs = jobs.clone();
        async move {
            match jobs
                .create(&PostParams::default(), &job(name, "succeed", spec))
                .await
            {
                Err(kube::Error::Api(s)) => {
                    assert_eq!(s.code, 422, "{s:?}");
                    s.message
                }
                other => panic!("{name} was not refused: {other:?}"),
            }
        }
    };
    let m = refused(
        "noc",
        json!({"completionMode": "Indexed", "parallelism": 2}),
    )
    .await;
    assert!(
        m.contains("spec.completions: Required value: when completion mode is Indexed"),
        "{m}"
    );
    let m = refused("maxf", json!({"maxFailedIndexes": 1})).await;
    assert!(
        m.contains("spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified"),
        "{m}"
    );
    assert!(
        m.contains("spec.maxFailedIndexes: Invalid value: 1: requires indexed completion mode"),
        "{m}"
    );
    let m = refused(
        "fi",
        json!({"podFailurePolicy": {"rules": [
        {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [1]}}]}}),
    )
    .await;
    assert!(
        m.contains("spec.podFailurePolicy.rules[0].action: Invalid value: \"FailIndex\": requires the backoffLimitPerIndex to be set"),
        "{m}"
    );
    let mut on_failure = job("onf", "succeed", json!({"podFailurePolicy": {"rules": []}}));
    if let Some(s) = on_failure
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
    {
        s.restart_policy = Some("OnFailure".into());
    }
    match jobs.create(&PostParams::default(), &on_failure).await {
        Err(kube::Error::Api(s)) => assert!(
            s.message.contains("spec.template.spec.restartPolicy: Invalid value: \"OnFailure\": only \"Never\" is supported when podFailurePolicy is specified"),
            "{}",
            s.message
        ),
        other => panic!("OnFailure with a podFailurePolicy was not refused: {other:?}"),
    }
}
