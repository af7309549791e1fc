//! The CronJob controller (upstream's cronjob-controller v2): at each
//! scheduled time it creates a Job from `spec.jobTemplate`, named
//! `<cronjob>-<minutes since the epoch>` so a run is created once however
//! often the CronJob is synced, and owned by the CronJob. It honours
//! `suspend`, `concurrencyPolicy` (Allow, Forbid, Replace),
//! `startingDeadlineSeconds` (a run missed by longer is skipped, and caps
//! how far back missed runs are looked for), `timeZone`, and the two
//! history limits, deleting the oldest finished Jobs past them. Status
//! lists the running Jobs and the last scheduled and successful times.
//! Each sync requeues itself for the next scheduled time.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kestrel_api::cron::{Schedule, missed};
use kestrel_client::events::EventType;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use serde_json::json;

use crate::workload::{Context, Result, controller_of, controller_ref, drive, write_status};

/// Past this many missed runs upstream warns that the clock or the
/// deadline is off (and still starts the latest one).
const TOO_MANY_MISSED: usize = 100;

/// The annotation a Job carries with the time it was scheduled for.
const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub(crate) fn controller(ctx: Arc<Context>) -> BoxFuture<'static, ()> {
    let owners = ctx.cronjobs.store().clone();
    let c = Controller::for_shared_stream(ctx.cronjobs.subscribe(), owners.clone())
        .watches_shared_stream(ctx.jobs.subscribe(), move |job: Arc<Job>| {
            crate::workload::owners_of(&*job, &owners, |_: &CronJob| None)
        });
    drive(c, ctx, |cj, ctx| async move { sync(&cj, &ctx).await })
}

fn to_chrono(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.0.as_millisecond()).unwrap_or_default()
}

fn to_time(t: DateTime<Utc>) -> Time {
    Time(jiff::Timestamp::from_millisecond(t.timestamp_millis()).unwrap_or_default())
}

/// `Complete` or `Failed` when the Job has finished.
fn finished(job: &Job) -> Option<&'static str> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    ["Complete", "Failed"]
        .into_iter()
        .find(|t| conds.iter().any(|c| c.type_ == *t && c.status == "True"))
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".to_owned()),
        kind: Some("Job".to_owned()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// When a finished Job finished, for ordering the history.
fn finish_time(job: &Job) -> Option<jiff::Timestamp> {
    let s = job.status.as_ref()?;
    s.completion_time
        .as_ref()
        .or(s.start_time.as_ref())
        .or(job.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

async fn sync(cj: &CronJob, ctx: &Context) -> Result<Action> {
    let ns = cj.namespace().unwrap_or_default();
    let uid = cj.uid().unwrap_or_default();
    let rec = &ctx.events.cronjob;
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = &cj.spec;
    let status = cj.status.clone().unwrap_or_default();
    let mine: Vec<Arc<Job>> = ctx
        .jobs
        .store()
        .state()
        .into_iter()
        .filter(|j| j.namespace().as_deref() == Some(ns.as_str()))
        .filter(|j| controller_of(&**j).is_some_and(|r| r.uid == uid))
        .collect();

    // Our store may not have seen the status listing a Job we just
    // created: read the CronJob again before calling a Job unexpected.
    let unlisted = |status: &k8s_openapi::api::batch::v1::CronJobStatus, j: &Job| {
        finished(j).is_none() && !status.active.iter().flatten().any(|r| r.uid == j.uid())
    };
    let mut status = status;
    if mine.iter().any(|j| unlisted(&status, j)) {
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        match api.get_opt(&cj.name_any()).await? {
            Some(fresh) if fresh.uid() == cj.uid() => status = fresh.status.unwrap_or_default(),
            _ => return Ok(Action::await_change()),
        }
    }
    // Running Jobs: those listed that still run. One of ours that runs
    // but is not listed (made by hand with `kubectl create job --from`, or
    // created just before a crash) is reported, as upstream, not adopted.
    let mut active: Vec<ObjectReference> = Vec::new();
    for j in mine.iter().filter(|j| unlisted(&status, j)) {
        rec.publish(
            cj,
            EventType::Warning,
            "UnexpectedJob",
            &format!(
                "Saw a job that the controller did not create or forgot: {}",
                j.name_any()
            ),
        )
        .await;
    }
    for r in status.active.iter().flatten() {
        let job = mine.iter().find(|j| j.uid() == r.uid);
        match job {
            Some(j) => match finished(j) {
                Some(how) => {
                    rec.publish(
                        cj,
                        EventType::Normal,
                        "SawCompletedJob",
                        &format!("Saw completed job: {}, condition: {how}", j.name_any()),
                    )
                    .await;
                }
                None => active.push(reference(j)),
            },
            // Not in the store: keep it unless the API server agrees it
            // is gone (the store may not have seen a new Job yet).
            None => {
                let n = r.name.clone().unwrap_or_default();
                if let Some(j) = jobs_api.get_opt(&n).await?
                    && j.uid() == r.uid
                    && finished(&j).is_none()
                {
                    active.push(r.clone());
                }
            }
        }
    }
    let last_successful = mine
        .iter()
        .filter(|j| finished(j) == Some("Complete"))
        .filter_map(|j| j.status.as_ref()?.completion_time.clone())
        .max_by_key(|t| t.0)
        .or(status.last_successful_time.clone());

    cleanup_history(cj, ctx, &jobs_api, &mine, spec).await?;

    let (last_schedule, action) = start_due_run(
        cj,
        ctx,
        &jobs_api,
        &mut active,
        status.last_schedule_time.clone(),
    )
    .await?;
    write(
        ctx,
        cj,
        &status,
        &active,
        last_schedule.as_ref(),
        last_successful.as_ref(),
    )
    .await?;
    Ok(action)
}

/// Start the run that is due, if one is and the policy allows it: the
/// (possibly new) last scheduled time, and when to look again.
async fn start_due_run(
    cj: &CronJob,
    ctx: &Context,
    jobs_api: &Api<Job>,
    active: &mut Vec<ObjectReference>,
    mut last_schedule: Option<Time>,
) -> Result<(Option<Time>, Action)> {
    let spec = &cj.spec;
    let rec = &ctx.events.cronjob;
    let (ns, name, uid) = (
        cj.namespace().unwrap_or_default(),
        cj.name_any(),
        cj.uid().unwrap_or_default(),
    );
    let schedule = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            let reason = match e {
                kestrel_api::cron::ScheduleError::TimeZone(_) => "UnknownTimeZone",
                kestrel_api::cron::ScheduleError::Schedule(_) => "UnparseableSchedule",
            };
            rec.publish(cj, EventType::Warning, reason, &e.to_string())
                .await;
            return Ok((last_schedule, Action::await_change()));
        }
    };
    let now = Utc::now();
    let next = schedule.next_after(now);
    let requeue = next.map_or_else(Action::await_change, |n| {
        let wait = (n - now).to_std().unwrap_or_default();
        Action::requeue(wait + Duration::from_millis(100))
    });
    if spec.suspend == Some(true) {
        return Ok((last_schedule, Action::await_change()));
    }

    // The most recent run due since the last one (or since creation),
    // looking back no further than the starting deadline.
    let mut earliest = last_schedule
        .as_ref()
        .or(cj.metadata.creation_timestamp.as_ref())
        .map(to_chrono)
        .unwrap_or(now);
    let deadline = spec.starting_deadline_seconds;
    if let Some(d) = deadline {
        earliest = earliest.max(now - chrono::Duration::seconds(d));
    }
    let (count, due) = missed(&schedule, earliest, now, TOO_MANY_MISSED);
    if count > TOO_MANY_MISSED {
        rec.publish(
            cj,
            EventType::Warning,
            "TooManyMissedTimes",
            &format!(
                "too many missed start times: {count}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
            ),
        )
        .await;
    }
    let Some(due) = due else {
        return Ok((last_schedule, requeue));
    };
    if let Some(d) = deadline
        && due + chrono::Duration::seconds(d) < now
    {
        rec.publish(
            cj,
            EventType::Warning,
            "MissSchedule",
            &format!(
                "Missed scheduled time to start a job: {}",
                due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        )
        .await;
        return Ok((last_schedule, requeue));
    }
    let policy = cj.spec.concurrency_policy.as_deref().unwrap_or("Allow");
    if policy == "Forbid" && !active.is_empty() {
        tracing::debug!(%ns, %name, "not starting a job: the previous run is active and concurrencyPolicy is Forbid");
        return Ok((last_schedule, requeue));
    }
    if policy == "Replace" {
        for r in std::mem::take(active) {
            delete_job(cj, ctx, jobs_api, r.name.as_deref().unwrap_or_default()).await?;
        }
    }

    let job_name = format!("{name}-{}", due.timestamp().div_euclid(60));
    let template = spec.job_template.clone();
    let tm = template.metadata.unwrap_or_default();
    let mut annotations = tm.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_AT.to_owned(), schedule.local_rfc3339(due));
    let job = Job {
        metadata: ObjectMeta {
            name: Some(job_name.clone()),
            namespace: Some(ns.clone()),
            labels: tm.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cj)?]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    let created = match jobs_api.create(&PostParams::default(), &job).await {
        Ok(j) => {
            rec.publish(
                cj,
                EventType::Normal,
                "SuccessfulCreate",
                &format!("Created job {job_name}"),
            )
            .await;
            Some(j)
        }
        // This run was created before (a sync that did not get to write
        // status); count it if it is ours.
        Err(kube::Error::Api(s)) if s.code == 409 => jobs_api
            .get_opt(&job_name)
            .await?
            .filter(|j| controller_of(j).is_some_and(|r| r.uid == uid)),
        Err(e) => {
            rec.publish(
                cj,
                EventType::Warning,
                "FailedCreate",
                &format!("Error creating job: {e}"),
            )
            .await;
            return Err(e.into());
        }
    };
    if let Some(j) = created {
        if finished(&j).is_none() && !active.iter().any(|r| r.uid == j.uid()) {
            active.push(reference(&j));
        }
        last_schedule = Some(to_time(due));
    }
    Ok((last_schedule, requeue))
}

/// Delete the oldest finished Jobs past the history limits.
async fn cleanup_history(
    cj: &CronJob,
    ctx: &Context,
    api: &Api<Job>,
    mine: &[Arc<Job>],
    spec: &k8s_openapi::api::batch::v1::CronJobSpec,
) -> Result<()> {
    for (how, limit) in [
        ("Complete", spec.successful_jobs_history_limit),
        ("Failed", spec.failed_jobs_history_limit),
    ] {
        let Some(limit) = limit.and_then(|l| usize::try_from(l).ok()) else {
            continue;
        };
        let mut done: Vec<&Arc<Job>> = mine
            .iter()
            .filter(|j| finished(j) == Some(how) && j.metadata.deletion_timestamp.is_none())
            .collect();
        if done.len() <= limit {
            continue;
        }
        done.sort_by_key(|j| finish_time(j));
        let excess = done.len() - limit;
        for j in done.into_iter().take(excess) {
            delete_job(cj, ctx, api, &j.name_any()).await?;
        }
    }
    Ok(())
}

/// Delete one of the CronJob's Jobs (its pods in the background).
async fn delete_job(cj: &CronJob, ctx: &Context, api: &Api<Job>, name: &str) -> Result<()> {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {
            let msg = format!("Deleted job {name}");
            ctx.events
                .cronjob
                .publish(cj, EventType::Normal, "SuccessfulDelete", &msg)
                .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Write status if it changed.
async fn write(
    ctx: &Context,
    cj: &CronJob,
    cur: &k8s_openapi::api::batch::v1::CronJobStatus,
    active: &[ObjectReference],
    last_schedule: Option<&Time>,
    last_successful: Option<&Time>,
) -> Result<()> {
    let cur_active: Vec<_> = cur.active.iter().flatten().map(|r| &r.uid).collect();
    let new_active: Vec<_> = active.iter().map(|r| &r.uid).collect();
    if cur_active == new_active
        && cur.last_schedule_time.as_ref() == last_schedule
        && cur.last_successful_time.as_ref() == last_successful
    {
        return Ok(());
    }
    write_status(
        ctx,
        cj,
        json!({
            // Merge patch: null removes an emptied list.
            "active": if active.is_empty() { json!(null) } else { json!(active) },
            "lastScheduleTime": last_schedule,
            "lastSuccessfulTime": last_successful,
        }),
    )
    .await
}
