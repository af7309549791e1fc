use k8s_openapi::api::batch::v1::{CronJob, Job};
use kestrel_testkit::eventually;
use kube::ResourceExt as _;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::kubectl::Kubectl;
use super::*;

/// A CronJob running every minute whose pods end as `outcome` says.
fn cronjob(name: &str, outcome: &str, spec: serde_json::Value) -> CronJob {
    let mut t = template(
        name,
        "busybox:1.35",
        json!({"fake-kubelet/outcome": outcome}),
    );
    t["spec"]["restartPolicy"] = json!("Never");
    let mut s = json!({
        "schedule": "* * * * *",
        "jobTemplate": {"metadata": {"labels": {"run": name}}, "spec": {"template": t}},
    });
    if let (Some(m), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
        m.extend(extra.clone());
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": s})).expect("cronjob")
}

/// Pretend the last run was `mins` minutes ago, so a run is due now.
async fn backdate(c: &Cluster, name: &str, mins: i64) {
    let t = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(mins);
    let patch = json!({"status": {"lastScheduleTime": t.round(jiff::Unit::Second).expect("round").to_string()}});
    c.api::<CronJob>()
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("backdate");
}

async fn jobs_of(c: &Cluster, name: &str) -> Vec<Job> {
    c.api::<Job>()
        .list(&ListParams::default().labels(&format!("run={name}")))
        .await
        .expect("jobs")
        .items
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect()
}

#[tokio::test]
async fn a_due_run_creates_one_owned_job_and_its_success_is_recorded() {
    let c = Cluster::start().await;
    let cjs = c.api::<CronJob>();
    let cj = cjs
        .create(
            &PostParams::default(),
            &cronjob("tick", "succeed", json!({})),
        )
        .await
        .expect("create");
    let spec = &cj.spec;
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Allow"));
    assert_eq!(spec.successful_jobs_history_limit, Some(3));
    assert_eq!(spec.failed_jobs_history_limit, Some(1));
    backdate(&c, "tick", 3).await;
    let job = eventually(WAIT, "a job for the due run", || async {
        jobs_of(&c, "tick").await.into_iter().next()
    })
    .await;
    // Named by the scheduled minute, owned by the CronJob, annotated.
    let minute = jiff::Timestamp::now().as_second().div_euclid(60);
    let suffix: i64 = job
        .name_any()
        .strip_prefix("tick-")
        .and_then(|s| s.parse().ok())
        .expect("name");
    assert!(
        (minute - 1..=minute).contains(&suffix),
        "{}",
        job.name_any()
    );
    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("CronJob", Some(true))
    );
    assert_eq!(owner.uid, cj.uid().unwrap_or_default());
    assert!(
        job.annotations()
            .contains_key("batch.kubernetes.io/cronjob-scheduled-timestamp")
    );
    // The job succeeds: it leaves `active` and sets lastSuccessfulTime.
    let cj = eventually(WAIT, "the success recorded", || async {
        let cj = cjs.get("tick").await.ok()?;
        let s = cj.status.clone()?;
        (s.active.is_none() && s.last_successful_time.is_some()).then_some(cj)
    })
    .await;
    let last = cj
        .status
        .and_then(|s| s.last_schedule_time)
        .expect("lastScheduleTime");
    assert_eq!(last.0.as_second().div_euclid(60), suffix);
    let events = events_about(&c, "tick").await;
    assert!(
        events.iter().any(
            |(r, m)| r == "SuccessfulCreate" && m == &format!("Created job {}", job.name_any())
        ),
        "{events:?}"
    );
    assert!(
        events.iter().any(|(r, _)| r == "SawCompletedJob"),
        "{events:?}"
    );
    // The same run is never created twice.
    backdate(&c, "tick", 3).await;
    eventually(WAIT, "the re-sync settles", || async {
        let s = cjs.get("tick").await.ok()?.status?;
        (s.last_schedule_time?.0.as_second().div_euclid(60) == suffix).then_some(())
    })
    .await;
    assert_eq!(jobs_of(&c, "tick").await.len(), 1);
}

#[tokio::test]
async fn replace_deletes_the_running_job_at_the_next_minute() {
    let c = Cluster::start().await;
    let cjs = c.api::<CronJob>();
    cjs.create(
        &PostParams::default(),
        &cronjob("swap", "run", json!({"concurrencyPolicy": "Replace"})),
    )
    .await
    .expect("create");
    backdate(&c, "swap", 2).await;
    let first = eventually(WAIT, "the first run", || async {
        jobs_of(&c, "swap").await.into_iter().next()
    })
    .await;
    // The next run comes from the schedule itself, within a minute.
    let second = eventually(
        WAIT + std::time::Duration::from_secs(60),
        "the next run",
        || async {
            jobs_of(&c, "swap")
                .await
                .into_iter()
                .find(|j| j.name_any() != first.name_any())
        },
    )
    .await;
    eventually(WAIT, "the first run replaced", || async {
        let names: Vec<String> = jobs_of(&c, "swap")
            .await
            .iter()
            .map(|j| j.name_any())
            .collect();
        let s = cjs.get("swap").await.ok()?.status?;
        let active: Vec<String> = s.active?.into_iter().filter_map(|r| r.name).collect();
        (names == [second.name_any()] && active == names).then_some(())
    })
    .await;
    let events = events_about(&c, "swap").await;
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "SuccessfulDelete"
                && m == &format!("Deleted job {}", first.name_any())),
        "{events:?}"
    );
}

#[tokio::test]
async fn kubectl_creates_lists_and_runs_a_cronjob_by_hand() {
    let c = Cluster::start().await;
    let k = Kubectl::new(&c);
    k.ok(&[
        "create",
        "cronjob",
        "nightly",
        "--image=busybox:1.35",
        "--schedule=0 3 * * *",
        "--",
        "true",
    ])
    .await;
    let out = k.ok(&["get", "cj"]).await;
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ],
        "{out}"
    );
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with("nightly")
            && row.contains("0 3 * * *")
            && row.contains("<none>")
            && row.contains("False"),
        "{out}"
    );
    // `kubectl create job --from` instantiates the template now.
    k.ok(&["create", "job", "by-hand", "--from=cronjob/nightly"])
        .await;
    let job = c.api::<Job>().get("by-hand").await.expect("job");
    assert_eq!(
        job.annotations()
            .get("cronjob.kubernetes.io/instantiate")
            .map(String::as_str),
        Some("manual")
    );
    assert_eq!(job.owner_references()[0].kind, "CronJob");
    // The controller reports, and does not adopt, a Job it did not start.
    eventually(WAIT, "the hand-made job reported", || async {
        events_about(&c, "nightly")
            .await
            .into_iter()
            .find(|(r, m)| {
                r == "UnexpectedJob"
                    && m == "Saw a job that the controller did not create or forgot: by-hand"
            })
    })
    .await;
    // Bad schedules and zones are refused with upstream's field errors.
    let err = k
        .fails(&[
            "create",
            "cronjob",
            "bad",
            "--image=busybox:1.35",
            "--schedule=61 * * * *",
        ])
        .await;
    assert!(
        err.contains("spec.schedule: Invalid value: \"61 * * * *\""),
        "{err}"
    );
    let err = k
        .fails(&[
            "patch",
            "cronjob",
            "nightly",
            "--type=merge",
            "-p",
            r#"{"spec":{"timeZone":"Mars/Olympus"}}"#,
        ])
        .await;
    assert!(
        err.contains(
            "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus"
        ),
        "{err}"
    );
    c.api::<CronJob>()
        .delete("nightly", &DeleteParams::default())
        .await
        .expect("delete");
}
