//! Pods as the workload controllers see them: which are active, ready and
//! available; which to delete first; adopting and releasing children; and
//! creating pods in slow-start batches.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kestrel_api::labels::Selector;
use kestrel_client::events::{EventType, Recorder};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Context, Result, age_secs, controller_of, selects};

/// Running or waiting to run: not finished and not being deleted.
pub fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !is_terminal(p)
}

/// Succeeded or Failed: its containers will not run again.
pub fn is_terminal(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

/// The pod's phase, "" when unknown.
pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// When the pod's Ready condition last turned true, if it is true.
pub fn ready_since(p: &Pod) -> Option<Option<&Time>> {
    p.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref())
}

/// Whether the pod's Ready condition is true.
pub fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Ready for at least `min_ready_seconds`.
pub fn is_available(p: &Pod, min_ready_seconds: i32) -> bool {
    match ready_since(p) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(t)) => age_secs(t) >= f64::from(min_ready_seconds),
    }
}

/// Seconds until a ready pod becomes available, if it is not yet.
pub fn until_available(p: &Pod, min_ready_seconds: i32) -> Option<f64> {
    if min_ready_seconds <= 0 {
        return None;
    }
    let t = ready_since(p)??;
    let left = f64::from(min_ready_seconds) - age_secs(t);
    (left > 0.0).then_some(left)
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
}

fn phase_rank(p: &Pod) -> u8 {
    match phase(p) {
        "Pending" | "" => 0,
        "Unknown" => 1,
        _ => 2,
    }
}

/// Upstream's order for scaling down: the pod that costs least to lose
/// first. Unscheduled before scheduled, pending before running, not ready
/// before ready, ready for less time before longer, more restarts before
/// fewer, newer before older.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let bound = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    let ready_at = |p: &Pod| ready_since(p).flatten().map(|t| t.0);
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    bound(a)
        .cmp(&bound(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        // Later transition = ready for less time = goes first.
        .then_with(|| ready_at(b).cmp(&ready_at(a)))
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| created(b).cmp(&created(a)))
}

/// Sort `pods` so the first ones are the ones to delete.
pub fn sort_for_deletion(pods: &mut [Arc<Pod>]) {
    pods.sort_by(|a, b| deletion_order(a, b));
}

/// What an owner needs to claim its children.
#[derive(Debug)]
pub struct Claim<'a> {
    /// The owner's reference (controller, blockOwnerDeletion).
    pub owner: OwnerReference,
    /// The owner's selector.
    pub selector: &'a Selector,
    /// An owner being deleted adopts nothing and releases nothing.
    pub owner_deleting: bool,
}

/// The children among `candidates` that belong to the owner, adopting
/// orphans its selector picks and releasing its children it no longer
/// picks, as upstream's ControllerRefManager does.
pub async fn claim<C>(
    api: &Api<C>,
    claim: &Claim<'_>,
    candidates: Vec<Arc<C>>,
) -> Result<Vec<Arc<C>>>
where
    C: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let mut owned = Vec::new();
    for c in candidates {
        let labels = c.labels().clone();
        let matches = selects(claim.selector, &labels);
        match controller_of(&*c) {
            Some(r) if r.uid == claim.owner.uid => {
                if matches {
                    owned.push(c);
                } else if !claim.owner_deleting {
                    let refs: Vec<_> = c
                        .owner_references()
                        .iter()
                        .filter(|r| r.uid != claim.owner.uid)
                        .cloned()
                        .collect();
                    set_owner_refs(api, &*c, refs).await?;
                }
            }
            Some(_) => {}
            None => {
                if !matches || claim.owner_deleting || c.meta().deletion_timestamp.is_some() {
                    continue;
                }
                let mut refs = c.owner_references().to_vec();
                refs.push(claim.owner.clone());
                if let Some(adopted) = set_owner_refs(api, &*c, refs).await? {
                    owned.push(Arc::new(adopted));
                }
            }
        }
    }
    Ok(owned)
}

/// Replace the owner references of `c`, if it is still the version we saw.
/// A child that changed or vanished meanwhile is skipped: the next
/// reconcile sees it afresh.
async fn set_owner_refs<C>(api: &Api<C>, c: &C, refs: Vec<OwnerReference>) -> Result<Option<C>>
where
    C: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let patch = serde_json::json!({
        "metadata": {
            "ownerReferences": refs,
            "resourceVersion": c.resource_version(),
        }
    });
    match api
        .patch(
            &c.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A pod for `owner` from `template`, named `name` or generated from
/// `generate_name`.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    owner: OwnerReference,
    namespace: &str,
    name: Option<String>,
    generate_name: Option<String>,
    extra_labels: &BTreeMap<String, String>,
) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    let mut labels = tm.labels.unwrap_or_default();
    labels.extend(extra_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    Pod {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The initial batch size of slow-start creation.
const SLOW_START_INITIAL_BATCH: usize = 1;

/// Call `make(i)` for `count` items in batches of 1, 2, 4, ... and stop at
/// the first batch with a failure, as upstream does, so that a quota or
/// admission error costs one failed call and not hundreds. Returns how many
/// succeeded and the first error.
pub async fn slow_start<F, Fut, E>(count: usize, mut make: F) -> (usize, Option<E>)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = std::result::Result<(), E>>,
{
    let mut done = 0;
    let mut batch = SLOW_START_INITIAL_BATCH;
    while done < count {
        let n = batch.min(count - done);
        let results = futures::future::join_all((done..done + n).map(&mut make)).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let err = results.into_iter().find_map(std::result::Result::err);
        done += n;
        if let Some(e) = err {
            return (done - n + ok, Some(e));
        }
        batch *= 2;
    }
    (done, None)
}

/// Create one pod for `owner` and record it: an expectation (keyed by
/// the owner's uid) and a SuccessfulCreate or FailedCreate Event.
pub async fn create_pod<O>(ctx: &Context, rec: &Recorder, owner: &O, pod: Pod) -> Result<Pod>
where
    O: Resource<DynamicType = ()>,
{
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &pod).await {
        Ok(p) => {
            let uid = owner.meta().uid.clone().unwrap_or_default();
            ctx.expectations.created(&uid, &p.name_any());
            rec.publish(
                owner,
                EventType::Normal,
                "SuccessfulCreate",
                &format!("Created pod: {}", p.name_any()),
            )
            .await;
            Ok(p)
        }
        Err(e) => {
            let msg = match &e {
                kube::Error::Api(s) => s.message.clone(),
                e => e.to_string(),
            };
            rec.publish(
                owner,
                EventType::Warning,
                "FailedCreate",
                &format!("Error creating: {msg}"),
            )
            .await;
            Err(e.into())
        }
    }
}

/// Delete `pod` for `owner`, recording an expectation and an Event. A pod
/// already gone counts as deleted.
pub async fn delete_pod<O>(ctx: &Context, rec: &Recorder, owner: &O, pod: &Pod) -> Result<()>
where
    O: Resource<DynamicType = ()>,
{
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let name = pod.name_any();
    let dp = crate::manager::only_uid(pod.metadata.uid.clone());
    match api.delete(&name, &dp).await {
        Ok(_) => {
            let uid = owner.meta().uid.clone().unwrap_or_default();
            ctx.expectations
                .deleted(&uid, &name, pod.metadata.uid.as_deref().unwrap_or(""));
            rec.publish(
                owner,
                EventType::Normal,
                "SuccessfulDelete",
                &format!("Deleted pod: {name}"),
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => {
            rec.publish(
                owner,
                EventType::Warning,
                "FailedDelete",
                &format!("Error deleting: {e}"),
            )
            .await;
            Err(e.into())
        }
    }
}

/// The pods in `namespace`, from the shared store.
pub fn pods_in(ctx: &Context, namespace: &str) -> Vec<Arc<Pod>> {
    ctx.pods
        .store()
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: i64) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(
                    jiff::Timestamp::from_second(created).expect("time"),
                )),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_owned),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn scale_down_takes_the_cheapest_pod_first() {
        let mut pods = vec![
            pod("old-ready", Some("n"), "Running", true, 100),
            pod("new-ready", Some("n"), "Running", true, 200),
            pod("running-not-ready", Some("n"), "Running", false, 50),
            pod("pending", Some("n"), "Pending", false, 10),
            pod("unscheduled", None, "Pending", false, 5),
        ];
        sort_for_deletion(&mut pods);
        let names: Vec<_> = pods.iter().map(|p| p.name_any()).collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending",
                "running-not-ready",
                "new-ready",
                "old-ready"
            ]
        );
    }

    #[tokio::test]
    async fn slow_start_doubles_and_stops_at_the_first_failing_batch() {
        let calls = std::sync::Mutex::new(Vec::new());
        let (ok, err) = slow_start(10, |i| {
            calls.lock().expect("lock").push(i);
            async move { if i == 4 { Err("boom") } else { Ok(()) } }
        })
        .await;
        // Batches 1, 2, 4: the third (items 3..7) holds the failure.
        assert_eq!(ok, 6);
        assert_eq!(err, Some("boom"));
        assert_eq!(calls.lock().expect("lock").len(), 7);
    }
}
