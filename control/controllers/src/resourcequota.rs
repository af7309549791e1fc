//! The ResourceQuota controller: every quota's `status.hard` mirrors its
//! `spec.hard` and `status.used` is recomputed from the objects in its
//! namespace, with the same accounting admission charges creates with
//! (`kestrel_api::quota`). It runs when a quota changes, when a counted
//! object in its namespace is deleted or stops using what it was charged
//! (a pod that finished or is terminating), and every 30 s. As upstream's
//! replenishment, a create does not trigger it, and neither does a status
//! write (only a new `spec.hard` does): admission charges a create to
//! `status.used` before it stores the object, and a recount started by
//! that charge would list before the object exists and undercount it. The
//! status write carries the resourceVersion of the quota read before the
//! recount, so a charge made meanwhile makes it conflict and retry.
//! Recomputing also gives back what a create charged but then failed to
//! store.

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::{self, BoxStream};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service,
};
use kestrel_api::quantity::format_milli;
use kestrel_api::quota::{COUNTED, count_name, usage};
use kube::ResourceExt as _;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, ReconcileRequest, applier, trigger_self};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::CancelableJoinHandle;
use kube::runtime::{PredicateConfig, WatchStreamExt as _, watcher};
use serde_json::json;
use tokio::runtime::Handle;

use crate::manager::{Backoff, Error, Result, drive, is_conflict};

/// How often quotas are recomputed without a triggering change.
const RESYNC: Duration = Duration::from_secs(30);

struct Ctx {
    client: kube::Client,
    backoff: Backoff<String>,
}

/// Every quota in `ns`, from the controller's store.
fn quotas_in(store: &Store<ResourceQuota>, ns: Option<String>) -> Vec<ObjectRef<ResourceQuota>> {
    store
        .state()
        .into_iter()
        .filter(|q| q.namespace() == ns)
        .map(|q| ObjectRef::from_obj(&*q))
        .collect()
}

/// What a quota change must alter to start a recount: its `spec.hard`.
fn hard_limits(q: &ResourceQuota) -> Option<u64> {
    let mut h = std::hash::DefaultHasher::new();
    for (k, v) in q
        .spec
        .as_ref()
        .and_then(|s| s.hard.as_ref())
        .into_iter()
        .flatten()
    {
        (k, &v.0).hash(&mut h);
    }
    Some(h.finish())
}

type Queue = BoxStream<'static, Result<ReconcileRequest<ResourceQuota>, watcher::Error>>;

/// Whether a changed object may now use less than it was charged: it is
/// terminating, or it is a pod that finished.
fn releases(v: &serde_json::Value) -> bool {
    v.pointer("/metadata/deletionTimestamp").is_some()
        || matches!(
            v.pointer("/status/phase").and_then(|p| p.as_str()),
            Some("Succeeded" | "Failed")
        )
}

/// Reconcile requests for the quotas of every namespace an object of `K`
/// is deleted or releases usage in. Boxed, so the trigger streams merge
/// flat (a chain of `Controller::watches` nests one poll frame per kind).
fn namespace_trigger<K>(client: &kube::Client, quotas: Store<ResourceQuota>) -> Queue
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .flat_map(move |e| {
            let ns = match e {
                Ok(watcher::Event::Delete(o)) => Some(o.namespace()),
                Ok(watcher::Event::Apply(o))
                    if serde_json::to_value(&o).is_ok_and(|v| releases(&v)) =>
                {
                    Some(o.namespace())
                }
                _ => None,
            };
            let refs = ns.map(|ns| quotas_in(&quotas, ns)).unwrap_or_default();
            stream::iter(refs.into_iter().map(|r| Ok(ReconcileRequest::from(r))))
        })
        .boxed()
}

/// Run the ResourceQuota controller.
pub async fn run(client: kube::Client) -> Result<()> {
    let (quotas, writer) = reflector::store();
    let quota_stream = watcher(
        Api::<ResourceQuota>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects()
    .predicate_filter(hard_limits, PredicateConfig::default());
    let queue: Vec<Queue> = vec![
        trigger_self(quota_stream, ()).boxed(),
        namespace_trigger::<Pod>(&client, quotas.clone()),
        namespace_trigger::<Service>(&client, quotas.clone()),
        namespace_trigger::<ConfigMap>(&client, quotas.clone()),
        namespace_trigger::<Secret>(&client, quotas.clone()),
        namespace_trigger::<PersistentVolumeClaim>(&client, quotas.clone()),
    ];
    let ctx = Arc::new(Ctx {
        client,
        backoff: Backoff::default(),
    });
    let results = applier(
        |q, ctx| CancelableJoinHandle::spawn(reconcile(q, ctx), &Handle::current()),
        error_policy,
        ctx,
        quotas,
        stream::select_all(queue),
        kube::runtime::controller::Config::default(),
    );
    drive(results, "resourcequota-controller").await;
    Ok(())
}

fn error_policy(q: Arc<ResourceQuota>, e: &Error, ctx: Arc<Ctx>) -> Action {
    tracing::warn!(quota = %q.name_any(), error = %e, "computing quota usage failed");
    ctx.backoff.failed(format!(
        "{}/{}",
        q.namespace().unwrap_or_default(),
        q.name_any()
    ))
}

/// Whether objects of `group`/`plural` can add to any of `hard`'s keys.
fn relevant(group: &str, plural: &str, hard: &BTreeMap<String, String>) -> bool {
    hard.keys().any(|k| {
        *k == count_name(group, plural)
            || (group.is_empty()
                && (k == plural
                    || (plural == "pods"
                        && (matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage")
                            || k.starts_with("requests.")
                            || k.starts_with("limits.")))
                    || (plural == "services" && k.starts_with("services."))))
    })
}

fn api_resource(group: &str, plural: &str) -> ApiResource {
    let version = "v1";
    let kind = match plural {
        "pods" => "Pod",
        "services" => "Service",
        "configmaps" => "ConfigMap",
        "secrets" => "Secret",
        "persistentvolumeclaims" => "PersistentVolumeClaim",
        "replicationcontrollers" => "ReplicationController",
        "deployments" => "Deployment",
        "replicasets" => "ReplicaSet",
        "statefulsets" => "StatefulSet",
        "daemonsets" => "DaemonSet",
        "jobs" => "Job",
        other => other,
    };
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

async fn reconcile(q: Arc<ResourceQuota>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = q.name_any();
    let Some(ns) = q.namespace() else {
        return Ok(Action::await_change());
    };
    // Read the quota before counting: every charge admission made up to
    // this resourceVersion is for an object the consistent list below sees
    // or a create that failed; a later charge makes the write conflict.
    let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(q) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let rv = q.resource_version();
    let hard: BTreeMap<String, String> = q
        .spec
        .as_ref()
        .and_then(|s| s.hard.as_ref())
        .map(|h| h.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    let mut used: BTreeMap<String, i64> = hard.keys().map(|k| (k.clone(), 0)).collect();
    for (group, plural) in COUNTED {
        if !relevant(group, plural, &hard) {
            continue;
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &ns, &api_resource(group, plural));
        for obj in api.list(&ListParams::default()).await? {
            let v = serde_json::to_value(&obj).map_err(|e| Error::Invalid(e.to_string()))?;
            for (r, amount) in usage(group, plural, &v) {
                if let Some(u) = used.get_mut(&r) {
                    *u += amount;
                }
            }
        }
    }
    let used: BTreeMap<String, String> = used
        .into_iter()
        .map(|(k, v)| (k, format_milli(v)))
        .collect();
    let current_used: BTreeMap<String, String> = q
        .status
        .as_ref()
        .and_then(|s| s.used.as_ref())
        .map(|u| u.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    let current_hard: BTreeMap<String, String> = q
        .status
        .as_ref()
        .and_then(|s| s.hard.as_ref())
        .map(|u| u.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    if current_used != used || current_hard != hard {
        // Merge patch replaces maps key by key: null out keys no longer hard.
        let mut status_used = json!(used);
        let mut status_hard = json!(hard);
        for k in current_used.keys().filter(|k| !used.contains_key(*k)) {
            status_used[k] = json!(null);
        }
        for k in current_hard.keys().filter(|k| !hard.contains_key(*k)) {
            status_hard[k] = json!(null);
        }
        let patch = json!({
            "metadata": {"resourceVersion": rv},
            "status": {"hard": status_hard, "used": status_used},
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            // Charged meanwhile: count again on top of the new charge.
            Err(e) if is_conflict(&e) => {
                return Ok(Action::requeue(Duration::from_millis(50)));
            }
            r => {
                r?;
            }
        }
    }
    ctx.backoff.succeeded(&format!("{ns}/{name}"));
    Ok(Action::requeue(RESYNC))
}
