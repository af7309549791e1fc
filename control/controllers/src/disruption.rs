//! The disruption controller: each PodDisruptionBudget's status from the
//! pods it selects, as upstream's. `minAvailable` as a number counts the
//! selected pods; a percentage, or `maxUnavailable`, counts the replicas
//! their controllers want (a Deployment's through its ReplicaSets, a
//! StatefulSet's, a ReplicaSet's or ReplicationController's own).
//! `currentHealthy` is the selected pods that are Ready, not terminating
//! and not just evicted; `disruptionsAllowed` is what it has above
//! `desiredHealthy`. Evictions (the API server's `pods/eviction`) spend
//! disruptions and record the pod in `disruptedPods`; an entry leaves once
//! the pod is gone or after two minutes. Status writes carry the budget's
//! resourceVersion, so an eviction in between makes them conflict and
//! recompute.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::{self, BoxStream};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kestrel_api::labels::Selector;
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, ReconcileRequest, applier, trigger_self};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::CancelableJoinHandle;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use tokio::runtime::Handle;

use crate::manager::{Backoff, Error, Result, drive, is_conflict};

/// How long an eviction the pod's deletion has not yet confirmed keeps
/// the pod out of `currentHealthy` (upstream's DeletionTimeout).
const DISRUPTION_TIMEOUT: Duration = Duration::from_secs(120);

struct Ctx {
    client: kube::Client,
    pods: Store<Pod>,
    backoff: Backoff<String>,
}

type Queue = BoxStream<'static, Result<ReconcileRequest<PodDisruptionBudget>, watcher::Error>>;

/// Run the disruption controller.
pub async fn run(client: kube::Client) -> Result<()> {
    let (budgets, writer) = reflector::store();
    let budget_stream = watcher(
        Api::<PodDisruptionBudget>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects();
    let (pods, pod_writer) = reflector::store();
    let in_ns = budgets.clone();
    // A pod's change touches the budgets of its namespace.
    let pod_trigger: Queue = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .flat_map(move |e| {
            let ns = match &e {
                Ok(watcher::Event::Apply(p) | watcher::Event::Delete(p)) => Some(p.namespace()),
                _ => None,
            };
            let refs: Vec<ObjectRef<PodDisruptionBudget>> = ns
                .map(|ns| {
                    in_ns
                        .state()
                        .into_iter()
                        .filter(|b| b.namespace() == ns)
                        .map(|b| ObjectRef::from_obj(&*b))
                        .collect()
                })
                .unwrap_or_default();
            stream::iter(refs.into_iter().map(|r| Ok(ReconcileRequest::from(r))))
        })
        .boxed();
    let queue: Vec<Queue> = vec![trigger_self(budget_stream, ()).boxed(), pod_trigger];
    let ctx = Arc::new(Ctx {
        client,
        pods,
        backoff: Backoff::default(),
    });
    let results = applier(
        |b, ctx| CancelableJoinHandle::spawn(reconcile(b, ctx), &Handle::current()),
        error_policy,
        ctx,
        budgets,
        stream::select_all(queue),
        kube::runtime::controller::Config::default(),
    );
    drive(results, "disruption-controller").await;
    Ok(())
}

fn error_policy(b: Arc<PodDisruptionBudget>, e: &Error, ctx: Arc<Ctx>) -> Action {
    tracing::warn!(budget = %b.name_any(), error = %e, "computing a disruption budget failed");
    ctx.backoff.failed(format!(
        "{}/{}",
        b.namespace().unwrap_or_default(),
        b.name_any()
    ))
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// A number, or a percentage of `total` rounded up, as upstream's
/// `GetScaledValueFromIntOrPercent(…, true)`.
fn scaled(v: &IntOrString, total: i32) -> Result<i32> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| Error::Invalid(format!("invalid value for IntOrString: {s:?}")))?;
            Ok(i32::try_from((pct * i64::from(total) + 99) / 100).unwrap_or(i32::MAX))
        }
    }
}

/// The replicas the pods' controllers want, each controller counted once.
/// Errors when a pod has no controller whose scale is known.
async fn expected_from_controllers(ctx: &Ctx, ns: &str, pods: &[Arc<Pod>]) -> Result<i32> {
    let mut seen = BTreeSet::new();
    let mut total = 0i32;
    for p in pods {
        let Some(owner) = p
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
        else {
            return Err(Error::Invalid(format!(
                "found no controllers for pod {:?}",
                p.name_any()
            )));
        };
        let replicas = match owner.kind.as_str() {
            "ReplicaSet" => {
                let rs = Api::<ReplicaSet>::namespaced(ctx.client.clone(), ns)
                    .get(&owner.name)
                    .await?;
                // A Deployment's ReplicaSets are counted as the Deployment.
                match rs
                    .owner_references()
                    .iter()
                    .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                {
                    Some(d) => {
                        if !seen.insert(d.uid.clone()) {
                            continue;
                        }
                        Api::<Deployment>::namespaced(ctx.client.clone(), ns)
                            .get(&d.name)
                            .await?
                            .spec
                            .replicas
                            .unwrap_or(1)
                    }
                    None => {
                        if !seen.insert(owner.uid.clone()) {
                            continue;
                        }
                        rs.spec.replicas.unwrap_or(1)
                    }
                }
            }
            "StatefulSet" | "ReplicationController" if !seen.insert(owner.uid.clone()) => continue,
            "StatefulSet" => Api::<StatefulSet>::namespaced(ctx.client.clone(), ns)
                .get(&owner.name)
                .await?
                .spec
                .replicas
                .unwrap_or(1),
            "ReplicationController" => {
                Api::<ReplicationController>::namespaced(ctx.client.clone(), ns)
                    .get(&owner.name)
                    .await?
                    .spec
                    .and_then(|s| s.replicas)
                    .unwrap_or(1)
            }
            other => {
                return Err(Error::Invalid(format!(
                    "pod {:?} is controlled by a {other}, whose scale is not known",
                    p.name_any()
                )));
            }
        };
        total = total.saturating_add(replicas);
    }
    Ok(total)
}

async fn reconcile(b: Arc<PodDisruptionBudget>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = b.name_any();
    let Some(ns) = b.namespace() else {
        return Ok(Action::await_change());
    };
    let spec = b.spec.clone().unwrap_or_default();
    let selector = spec
        .selector
        .as_ref()
        .map(Selector::from_label_selector)
        .transpose()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    // An absent or empty selector selects no pods, as upstream's policy/v1.
    let pods: Vec<Arc<Pod>> = match selector.filter(|s| !s.is_empty()) {
        Some(sel) => ctx
            .pods
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && sel.matches(p.labels()))
            .collect(),
        None => Vec::new(),
    };
    let counted = match (&spec.max_unavailable, &spec.min_available) {
        (Some(max), _) => expected_from_controllers(&ctx, &ns, &pods)
            .await
            .and_then(|expected| Ok((expected, (expected - scaled(max, expected)?).max(0)))),
        (None, Some(min @ IntOrString::String(_))) => expected_from_controllers(&ctx, &ns, &pods)
            .await
            .and_then(|expected| Ok((expected, scaled(min, expected)?))),
        (None, Some(IntOrString::Int(min))) => Ok((len(&pods), *min)),
        (None, None) => Ok((len(&pods), 0)),
    };
    let now = jiff::Timestamp::now();
    let status = b.status.clone().unwrap_or_default();
    // Evictions not yet seen through: the pod still exists, is not being
    // deleted, and the eviction is recent.
    let live: BTreeMap<String, &Arc<Pod>> = pods.iter().map(|p| (p.name_any(), p)).collect();
    let mut disrupted = BTreeMap::new();
    let mut expires = None::<Duration>;
    for (pod, at) in status.disrupted_pods.iter().flatten() {
        let age = Duration::try_from(now.duration_since(at.0)).unwrap_or_default();
        let pending = live
            .get(pod)
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none());
        if pending && age < DISRUPTION_TIMEOUT {
            disrupted.insert(pod.clone(), at.clone());
            let left = DISRUPTION_TIMEOUT - age;
            expires = Some(expires.map_or(left, |e| e.min(left)));
        }
    }
    let healthy = i32::try_from(
        pods.iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && is_ready(p)
                    && !disrupted.contains_key(&p.name_any())
            })
            .count(),
    )
    .unwrap_or(i32::MAX);
    let (expected, desired, allowed, reason) = match counted {
        Ok((expected, desired)) => {
            let allowed = (healthy - desired).max(0);
            let reason = if allowed > 0 {
                "SufficientPods"
            } else {
                "InsufficientPods"
            };
            (expected, desired, allowed, reason)
        }
        Err(e) => {
            tracing::warn!(budget = %name, error = %e, "disruption budget has no expected count");
            (0, 0, 0, "SyncFailed")
        }
    };
    let generation = b.metadata.generation.unwrap_or(0);
    let condition_status = if allowed > 0 { "True" } else { "False" };
    let old_condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed");
    let transition = match old_condition {
        Some(c) if c.status == condition_status => c.last_transition_time.0.to_string(),
        _ => kestrel_api::meta::now_rfc3339(),
    };
    let mut disrupted_json = serde_json::Map::new();
    for (pod, at) in &disrupted {
        disrupted_json.insert(pod.clone(), json!(at.0.to_string()));
    }
    for pod in status.disrupted_pods.iter().flatten().map(|(p, _)| p) {
        if !disrupted.contains_key(pod) {
            disrupted_json.insert(pod.clone(), serde_json::Value::Null);
        }
    }
    let unchanged = status.observed_generation == Some(generation)
        && status.current_healthy == Some(healthy)
        && status.desired_healthy == Some(desired)
        && status.expected_pods == Some(expected)
        && status.disruptions_allowed == Some(allowed)
        && disrupted_json.values().all(|v| !v.is_null())
        && old_condition.is_some_and(|c| c.status == condition_status && c.reason == reason);
    if !unchanged {
        let patch = json!({
            "metadata": {"resourceVersion": b.resource_version()},
            "status": {
                "observedGeneration": generation,
                "currentHealthy": healthy,
                "desiredHealthy": desired,
                "expectedPods": expected,
                "disruptionsAllowed": allowed,
                "disruptedPods": disrupted_json,
                "conditions": [{
                    "type": "DisruptionAllowed",
                    "status": condition_status,
                    "reason": reason,
                    "message": "",
                    "observedGeneration": generation,
                    "lastTransitionTime": transition,
                }],
            },
        });
        let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            // An eviction spent a disruption meanwhile: recompute from it.
            Err(e) if is_conflict(&e) => return Ok(Action::requeue(Duration::from_millis(50))),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            r => {
                r?;
            }
        }
    }
    ctx.backoff.succeeded(&format!("{ns}/{name}"));
    Ok(match expires {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

fn len(pods: &[Arc<Pod>]) -> i32 {
    i32::try_from(pods.len()).unwrap_or(i32::MAX)
}
