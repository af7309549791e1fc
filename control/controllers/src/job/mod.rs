//! The Job controller: runs pods until `completions` succeed (`parallelism`
//! at a time; with `completionMode: Indexed` one per index, see
//! [`indexed`]), fails the Job after more than `backoffLimit` failures
//! (`backoffLimitPerIndex` per index), on a `podFailurePolicy` FailJob rule
//! (see [`failure`]) or past `activeDeadlineSeconds`, and deletes a finished Job after
//! `ttlSecondsAfterFinished` (upstream's TTL-after-finished controller,
//! folded in here because it acts on the same objects).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, PodFailurePolicy};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kestrel_client::events::EventType;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use serde_json::json;

use crate::workload::pods::{
    create_pod, delete_pod, is_active, is_ready, phase, pod_from_template, slow_start,
    sort_for_deletion,
};
use crate::workload::{
    Context, Result, age_secs, controller_ref, drive, now, owned_pods, owning_pods, write_status,
};

mod failure;
mod indexed;

/// Labels every Job pod carries (the legacy names too, as upstream).
const JOB_NAME_LABELS: [&str; 2] = ["batch.kubernetes.io/job-name", "job-name"];
const UID_LABELS: [&str; 2] = ["batch.kubernetes.io/controller-uid", "controller-uid"];
/// The longest wait before replacing a failed pod.
const MAX_BACKOFF: Duration = Duration::from_secs(360);

pub(crate) fn controller(ctx: Arc<Context>) -> BoxFuture<'static, ()> {
    let c = owning_pods(&ctx, &ctx.jobs, |j: &Job| {
        j.spec.as_ref().and_then(|s| s.selector.as_ref())
    });
    drive(c, ctx, |job, ctx| async move { sync(&job, &ctx).await })
}

/// The Job's selector. The API server generates one for Jobs without
/// `manualSelector` (the controller-uid label); a Job stored without one
/// (`manualSelector: true` and none given) selects by that label too.
fn job_selector(job: &Job) -> LabelSelector {
    job.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_else(|| LabelSelector {
            match_labels: Some(BTreeMap::from([(
                UID_LABELS[0].to_owned(),
                job.uid().unwrap_or_default(),
            )])),
            ..Default::default()
        })
}

fn condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// When the Job finished, if it has.
fn finished_at(job: &Job) -> Option<Time> {
    let c = condition(job, "Complete").or_else(|| condition(job, "Failed"))?;
    job.status
        .as_ref()
        .and_then(|s| s.completion_time.clone())
        .or_else(|| c.last_transition_time.clone())
        .or_else(|| Some(now()))
}

fn new_condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    let t = now();
    JobCondition {
        type_: type_.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_probe_time: Some(t.clone()),
        last_transition_time: Some(t),
    }
}

/// When the latest failed pod of the Job stopped.
fn last_failure(pods: &[Arc<Pod>]) -> Option<Time> {
    pods.iter()
        .filter(|p| phase(p) == "Failed")
        .filter_map(|p| {
            let st = p.status.as_ref()?;
            st.container_statuses
                .iter()
                .flatten()
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.clone())
                .max_by_key(|t| t.0)
                .or_else(|| {
                    st.conditions
                        .iter()
                        .flatten()
                        .find(|c| c.type_ == "Ready")
                        .and_then(|c| c.last_transition_time.clone())
                })
        })
        .max_by_key(|t| t.0)
}

async fn sync(job: &Job, ctx: &Context) -> Result<Action> {
    let rec = &ctx.events.job;
    let Some(spec) = job.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    if let Some(done) = finished_at(job) {
        return expire(job, ctx, &done).await;
    }
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let policy = spec.pod_failure_policy.as_ref();
    let Some((satisfied, owned)) = owned_pods(ctx, rec, job, &job_selector(job), |_| true).await?
    else {
        return Ok(Action::await_change());
    };
    let mut active: Vec<_> = owned.iter().filter(|p| is_active(p)).cloned().collect();
    let status = job.status.clone().unwrap_or_default();
    // Indexed Jobs run the indexes [0, completions).
    let count = usize::try_from(spec.completions.unwrap_or(0)).unwrap_or(0);
    let per_index = spec.backoff_limit_per_index.filter(|_| indexed);

    // Failed pods, through the pod failure policy: Ignore'd failures do
    // not count, the first FailJob match fails the Job.
    let failed: Vec<&Arc<Pod>> = owned.iter().filter(|p| phase(p) == "Failed").collect();
    let mut fail_job: Option<String> = None;
    let mut counted_failed = 0usize;
    for p in &failed {
        match failure::matching(policy, p) {
            Some(failure::Action::Ignore) => {}
            Some(failure::Action::FailJob(m)) => {
                fail_job.get_or_insert(m);
                counted_failed += 1;
            }
            _ => counted_failed += 1,
        }
    }
    // One success per index counts, and an index once counted stays so.
    let succeeded_ix: BTreeSet<usize> = if indexed {
        let mut ix = indexed::parse(status.completed_indexes.as_deref().unwrap_or(""), count);
        ix.extend(
            owned
                .iter()
                .filter(|p| phase(p) == "Succeeded")
                .filter_map(|p| indexed::index_of(p))
                .filter(|i| *i < count),
        );
        ix
    } else {
        BTreeSet::new()
    };
    let succeeded = if indexed {
        succeeded_ix.len()
    } else {
        owned.iter().filter(|p| phase(p) == "Succeeded").count()
    };
    // With backoffLimitPerIndex an index fails once a pod of it fails
    // after that many earlier failures, or matches a FailIndex rule.
    let mut failed_ix = BTreeSet::new();
    if let Some(limit) = per_index {
        failed_ix = indexed::parse(status.failed_indexes.as_deref().unwrap_or(""), count);
        let limit = u32::try_from(limit).unwrap_or(0);
        for p in &failed {
            let Some(i) = indexed::index_of(p).filter(|i| *i < count) else {
                continue;
            };
            let index_failed = match failure::matching(policy, p) {
                Some(failure::Action::FailIndex) => true,
                Some(failure::Action::Ignore | failure::Action::FailJob(_)) => false,
                _ => indexed::failure_count(p) >= limit,
            };
            if index_failed {
                failed_ix.insert(i);
            }
        }
        failed_ix.retain(|i| !succeeded_ix.contains(i));
    }

    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    // With restartPolicy OnFailure the kubelet restarts containers in
    // place; each restart counts against backoffLimit, as upstream.
    let restarts: i32 = if on_failure {
        active
            .iter()
            .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
            .flatten()
            .map(|c| c.restart_count)
            .sum()
    } else {
        0
    };
    let failed_pods = failed.len();
    let failures = i32::try_from(counted_failed)
        .unwrap_or(i32::MAX)
        .saturating_add(restarts);
    let start = status.start_time.clone().unwrap_or_else(now);
    let mut conditions = status.conditions.clone().unwrap_or_default();
    let mut completion_time = status.completion_time.clone();
    let mut requeue: Option<Duration> = None;

    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let deadline_left = spec
        .active_deadline_seconds
        .map(|s| s as f64 - age_secs(&start));
    let completions = spec.completions;
    let parallelism = usize::try_from(spec.parallelism.unwrap_or(1)).unwrap_or(0);
    let complete = match completions {
        Some(_) if indexed => succeeded >= count,
        Some(c) => succeeded >= usize::try_from(c).unwrap_or(0),
        None => succeeded > 0 && active.is_empty(),
    };
    let max_failed = spec
        .max_failed_indexes
        .and_then(|m| usize::try_from(m).ok());
    let failure: Option<(&str, String)> = if let Some(m) = fail_job {
        Some(("PodFailurePolicy", m))
    } else if failures > backoff_limit {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".to_owned(),
        ))
    } else if deadline_left.is_some_and(|l| l <= 0.0) {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline".to_owned(),
        ))
    } else if per_index.is_some() && max_failed.is_some_and(|m| failed_ix.len() > m) {
        Some((
            "MaxFailedIndexesExceeded",
            "Job has exceeded the specified maximal number of failed indexes".to_owned(),
        ))
    } else if per_index.is_some() && !failed_ix.is_empty() && failed_ix.len() + succeeded >= count {
        Some(("FailedIndexes", "Job has failed indexes".to_owned()))
    } else {
        None
    };
    let suspended = spec.suspend == Some(true);

    if let Some((reason, message)) = failure {
        delete_all(job, ctx, &active).await?;
        active.clear();
        conditions.push(new_condition("FailureTarget", reason, &message));
        conditions.push(new_condition("Failed", reason, &message));
        rec.publish(job, EventType::Warning, reason, &message).await;
    } else if complete {
        delete_all(job, ctx, &active).await?;
        active.clear();
        conditions.push(new_condition(
            "SuccessCriteriaMet",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        ));
        conditions.push(new_condition(
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        ));
        completion_time = Some(now());
        rec.publish(job, EventType::Normal, "Completed", "Job completed")
            .await;
    } else if suspended {
        delete_all(job, ctx, &active).await?;
        active.clear();
        if !conditions
            .iter()
            .any(|c| c.type_ == "Suspended" && c.status == "True")
        {
            conditions.retain(|c| c.type_ != "Suspended");
            conditions.push(new_condition("Suspended", "JobSuspended", "Job suspended"));
            rec.publish(job, EventType::Normal, "Suspended", "Job suspended")
                .await;
        }
    } else {
        if conditions
            .iter()
            .any(|c| c.type_ == "Suspended" && c.status == "True")
        {
            conditions.retain(|c| c.type_ != "Suspended");
            rec.publish(job, EventType::Normal, "Resumed", "Job resumed")
                .await;
        }
        // Failed pods are replaced after an exponential backoff.
        let global_wait = if failed_pods > 0 {
            backoff_wait(ctx, failed_pods, last_failure(&owned))
        } else {
            0.0
        };
        if indexed {
            if satisfied {
                let plan = IndexPlan {
                    count,
                    parallelism,
                    succeeded: &succeeded_ix,
                    failed: &failed_ix,
                    per_index: per_index.is_some(),
                    global_wait,
                };
                let (kept, wait) =
                    manage_indexes(job, spec, ctx, &plan, &active, &failed, policy).await?;
                active = kept;
                requeue = wait;
            }
        } else {
            let want = match completions {
                Some(c) => {
                    parallelism.min(usize::try_from(c).unwrap_or(0).saturating_sub(succeeded))
                }
                None if succeeded > 0 => 0,
                None => parallelism,
            };
            if satisfied {
                if active.len() < want {
                    if global_wait > 0.0 {
                        requeue = Some(Duration::from_secs_f64(global_wait));
                    } else {
                        let name = job.name_any();
                        let pods = (0..want - active.len())
                            .map(|_| (spec.template.clone(), format!("{name}-")))
                            .collect();
                        create(job, ctx, pods).await?;
                    }
                } else if active.len() > want {
                    sort_for_deletion(&mut active);
                    let extra = active.len() - want;
                    delete_all(job, ctx, &active[..extra]).await?;
                }
            }
        }
        if let Some(left) = deadline_left {
            let at = Duration::from_secs_f64(left.max(0.0) + 0.05);
            requeue = Some(requeue.map_or(at, |r| r.min(at)));
        }
    }

    let new_status = json!({
        "startTime": if suspended && status.start_time.is_none() { None } else { Some(start) },
        "completionTime": completion_time,
        "active": active.len(),
        "ready": active.iter().filter(|p| is_ready(p)).count(),
        "succeeded": succeeded,
        "failed": counted_failed,
        "completedIndexes": indexed.then(|| indexed::format(&succeeded_ix)),
        "failedIndexes": per_index.map(|_| indexed::format(&failed_ix)),
        "conditions": if conditions.is_empty() { None } else { Some(conditions) },
    });
    let old_status = json!({
        "startTime": status.start_time,
        "completionTime": status.completion_time,
        "active": status.active.unwrap_or(0),
        "ready": status.ready.unwrap_or(0),
        "succeeded": status.succeeded.unwrap_or(0),
        "failed": status.failed.unwrap_or(0),
        "completedIndexes": status.completed_indexes,
        "failedIndexes": status.failed_indexes,
        "conditions": status.conditions,
    });
    if new_status != old_status {
        write_status(ctx, job, new_status).await?;
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Seconds left before replacing a pod after `failures` failures, the
/// latest at `last`: the configured backoff doubled per failure, at most
/// six minutes.
fn backoff_wait(ctx: &Context, failures: usize, last: Option<Time>) -> f64 {
    let exp = u32::try_from(failures.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    let delay = ctx
        .config
        .job_backoff
        .saturating_mul(1 << exp)
        .min(MAX_BACKOFF);
    let since = last.map_or(0.0, |t| age_secs(&t));
    delay.as_secs_f64() - since
}

/// What an Indexed Job's pods are managed against.
struct IndexPlan<'a> {
    count: usize,
    parallelism: usize,
    succeeded: &'a BTreeSet<usize>,
    failed: &'a BTreeSet<usize>,
    per_index: bool,
    global_wait: f64,
}

/// Keep one active pod per index still to run (at most `parallelism`),
/// delete the rest (duplicates, indexes done or out of range), and start
/// the lowest missing indexes. Returns the pods kept and when to look
/// again for indexes still backing off.
async fn manage_indexes(
    job: &Job,
    spec: &JobSpec,
    ctx: &Context,
    plan: &IndexPlan<'_>,
    active: &[Arc<Pod>],
    failed: &[&Arc<Pod>],
    policy: Option<&PodFailurePolicy>,
) -> Result<(Vec<Arc<Pod>>, Option<Duration>)> {
    let mut sorted = active.to_vec();
    sort_for_deletion(&mut sorted);
    let mut keep: BTreeMap<usize, Arc<Pod>> = BTreeMap::new();
    let mut remove = Vec::new();
    // The best pod of an index (last in deletion order) is kept.
    for p in sorted.into_iter().rev() {
        match indexed::index_of(&p) {
            Some(i)
                if i < plan.count
                    && !plan.succeeded.contains(&i)
                    && !plan.failed.contains(&i)
                    && !keep.contains_key(&i) =>
            {
                keep.insert(i, p);
            }
            _ => remove.push(p),
        }
    }
    let want = plan.parallelism.min(
        plan.count
            .saturating_sub(plan.succeeded.len())
            .saturating_sub(plan.failed.len()),
    );
    let mut kept: Vec<Arc<Pod>> = keep.values().cloned().collect();
    if kept.len() > want {
        sort_for_deletion(&mut kept);
        let extra = kept.len() - want;
        remove.extend(kept.drain(..extra));
    }
    if !remove.is_empty() {
        delete_all(job, ctx, &remove).await?;
    }
    let running: BTreeSet<usize> = kept.iter().filter_map(|p| indexed::index_of(p)).collect();
    let mut requeue: Option<f64> = None;
    let mut pods = Vec::new();
    if kept.len() < want && !plan.per_index && plan.global_wait > 0.0 {
        requeue = Some(plan.global_wait);
    } else if kept.len() < want {
        let name = job.name_any();
        let missing = (0..plan.count).filter(|i| {
            !plan.succeeded.contains(i) && !plan.failed.contains(i) && !running.contains(i)
        });
        for i in missing {
            if pods.len() + kept.len() >= want {
                break;
            }
            // The latest failed pod of the index, which this one replaces.
            let replaced = failed
                .iter()
                .filter(|p| indexed::index_of(p) == Some(i))
                .max_by_key(|p| indexed::failure_count(p) + indexed::ignored_count(p));
            let failures = plan.per_index.then(|| {
                replaced.map_or((0, 0), |p| {
                    if failure::counts(policy, p) {
                        (indexed::failure_count(p) + 1, indexed::ignored_count(p))
                    } else {
                        (indexed::failure_count(p), indexed::ignored_count(p) + 1)
                    }
                })
            });
            if let (Some((c, ig)), Some(p)) = (failures, replaced) {
                let n = usize::try_from(c + ig).unwrap_or(usize::MAX);
                let wait = backoff_wait(ctx, n, last_failure(&[Arc::clone(p)]));
                if wait > 0.0 {
                    requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
                    continue;
                }
            }
            let t = indexed::template_for(&spec.template, &name, i, failures);
            pods.push((t, indexed::generate_name(&name, i)));
        }
    }
    if !pods.is_empty() {
        create(job, ctx, pods).await?;
    }
    Ok((kept, requeue.map(Duration::from_secs_f64)))
}

/// Create a pod from each (template, generateName).
async fn create(job: &Job, ctx: &Context, pods: Vec<(PodTemplateSpec, String)>) -> Result<()> {
    let rec = &ctx.events.job;
    let ns = job.namespace().unwrap_or_default();
    let owner = controller_ref(job)?;
    let uid = job.uid().unwrap_or_default();
    let name = job.name_any();
    let labels: BTreeMap<String, String> = JOB_NAME_LABELS
        .iter()
        .map(|k| ((*k).to_owned(), name.clone()))
        .chain(UID_LABELS.iter().map(|k| ((*k).to_owned(), uid.clone())))
        .collect();
    let (_, err) = slow_start(pods.len(), |i| {
        let (template, generate) = &pods[i];
        let pod = pod_from_template(
            template,
            owner.clone(),
            &ns,
            None,
            Some(generate.clone()),
            &labels,
        );
        async move { create_pod(ctx, rec, job, pod).await.map(|_| ()) }
    })
    .await;
    err.map_or(Ok(()), Err)
}

async fn delete_all(job: &Job, ctx: &Context, pods: &[Arc<Pod>]) -> Result<()> {
    let results = futures::future::join_all(
        pods.iter()
            .map(|p| delete_pod(ctx, &ctx.events.job, job, p)),
    )
    .await;
    results.into_iter().collect::<Result<Vec<_>>>().map(|_| ())
}

/// A finished Job: delete it once `ttlSecondsAfterFinished` has passed.
async fn expire(job: &Job, ctx: &Context, done: &Time) -> Result<Action> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::await_change());
    };
    let left = f64::from(ttl) - age_secs(done);
    if left > 0.0 {
        return Ok(Action::requeue(Duration::from_secs_f64(left + 0.05)));
    }
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(&job.name_any(), &dp).await {
        Ok(_) => {
            tracing::info!(job = %job.name_any(), "deleted after ttlSecondsAfterFinished");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}
