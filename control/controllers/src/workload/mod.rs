//! What the workload controllers share: the informers, expectations, the
//! error type and retry policy, and helpers for owning and ranking pods.

pub mod expectations;
pub mod informer;
pub mod pods;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kestrel_api::labels::Selector;
use kestrel_client::events::{EventType, Recorder};
use kube::Resource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use serde::de::DeserializeOwned;

pub use expectations::Expectations;
pub use informer::Informer;

/// Why a reconcile did not finish. Every error requeues the object with
/// backoff; none stops a controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("API call failed: {0}")]
    Kube(#[from] kube::Error),
    /// The object asks for something that cannot be done as written.
    #[error("{0}")]
    Invalid(String),
}

/// Results of reconciles.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Knobs for the workload controllers. The defaults are upstream's.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// First delay before a Job replaces a failed pod; doubles per failure
    /// up to six minutes (upstream: 10 s).
    pub job_backoff: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            job_backoff: Duration::from_secs(10),
        }
    }
}

/// Everything the workload controllers share.
pub struct Context {
    pub(crate) client: kube::Client,
    pub(crate) config: WorkloadConfig,
    pub(crate) pods: Informer<Pod>,
    pub(crate) nodes: Informer<Node>,
    pub(crate) replicasets: Informer<ReplicaSet>,
    pub(crate) replicationcontrollers: Informer<ReplicationController>,
    pub(crate) deployments: Informer<Deployment>,
    pub(crate) daemonsets: Informer<DaemonSet>,
    pub(crate) statefulsets: Informer<StatefulSet>,
    pub(crate) jobs: Informer<Job>,
    pub(crate) cronjobs: Informer<CronJob>,
    pub(crate) expectations: Expectations,
    pub(crate) events: Recorders,
    failures: crate::manager::Backoff<String>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("pods", &self.pods)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// One event recorder per controller, named as upstream names them.
#[derive(Debug)]
pub struct Recorders {
    pub(crate) replicaset: Recorder,
    pub(crate) replicationcontroller: Recorder,
    pub(crate) deployment: Recorder,
    pub(crate) daemonset: Recorder,
    pub(crate) statefulset: Recorder,
    pub(crate) job: Recorder,
    pub(crate) cronjob: Recorder,
}

impl Context {
    /// A context whose informers are not yet running.
    pub fn new(client: kube::Client, config: WorkloadConfig) -> Self {
        let rec = |name: &str| Recorder::new(client.clone(), name, None);
        Self {
            pods: Informer::new(kube::Api::all(client.clone())),
            nodes: Informer::new(kube::Api::all(client.clone())),
            replicasets: Informer::new(kube::Api::all(client.clone())),
            replicationcontrollers: Informer::new(kube::Api::all(client.clone())),
            deployments: Informer::new(kube::Api::all(client.clone())),
            daemonsets: Informer::new(kube::Api::all(client.clone())),
            statefulsets: Informer::new(kube::Api::all(client.clone())),
            jobs: Informer::new(kube::Api::all(client.clone())),
            cronjobs: Informer::new(kube::Api::all(client.clone())),
            expectations: Expectations::default(),
            events: Recorders {
                replicaset: rec("replicaset-controller"),
                replicationcontroller: rec("replication-controller"),
                deployment: rec("deployment-controller"),
                daemonset: rec("daemonset-controller"),
                statefulset: rec("statefulset-controller"),
                job: rec("job-controller"),
                cronjob: rec("cronjob-controller"),
            },
            failures: crate::manager::Backoff::default(),
            client,
            config,
        }
    }

    /// Requeue delay after a failed reconcile of `key`: the manager's
    /// per-object exponential backoff.
    pub(crate) fn backoff(&self, key: &str) -> Action {
        self.failures.failed(key.to_owned())
    }

    /// `key` reconciled cleanly: its next failure starts from the bottom.
    pub(crate) fn succeeded(&self, key: &str) {
        self.failures.succeeded(&key.to_owned());
    }
}

/// The error policy every workload controller uses: log and back off.
pub(crate) fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    tracing::warn!(
        kind = %K::kind(&()),
        namespace = obj.meta().namespace.as_deref().unwrap_or(""),
        name = obj.meta().name.as_deref().unwrap_or(""),
        error = %err,
        "reconcile failed; retrying"
    );
    ctx.backoff(obj.meta().uid.as_deref().unwrap_or_default())
}

/// A controller for `K`, woken by changes to `K` and to the pods it owns
/// or might adopt.
pub(crate) fn owning_pods<K>(
    ctx: &Context,
    informer: &Informer<K>,
    selector_of: fn(&K) -> Option<&LabelSelector>,
) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let owners = informer.store().clone();
    Controller::for_shared_stream(informer.subscribe(), informer.store().clone())
        .watches_shared_stream(ctx.pods.subscribe(), move |pod: Arc<Pod>| {
            owners_of(&*pod, &owners, selector_of)
        })
}

/// Run `controller` with `sync` as its reconciler: a failure requeues the
/// object with growing backoff, a success resets it.
pub(crate) fn drive<K, F, Fut>(
    controller: Controller<K>,
    ctx: Arc<Context>,
    sync: F,
) -> BoxFuture<'static, ()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action>> + Send + 'static,
{
    controller
        .run(
            move |obj: Arc<K>, ctx: Arc<Context>| {
                let uid = obj.meta().uid.clone().unwrap_or_default();
                // Boxed: a reconcile future is large in debug builds, and
                // the runtime may poll it on a small test-thread stack.
                let fut = Box::pin(sync(obj, ctx.clone()));
                async move {
                    let action = fut.await?;
                    ctx.succeeded(&uid);
                    Ok(action)
                }
            },
            error_policy,
            ctx,
        )
        .for_each(|_| async {})
        .boxed()
}

/// The pods `owner` controls among those `wanted` picks in its namespace
/// (adopting and releasing by `selector` on the way), and whether every
/// pod it created or deleted shows in the store yet. `None`, after a
/// Warning Event, when the selector does not parse.
pub(crate) async fn owned_pods<K>(
    ctx: &Context,
    rec: &Recorder,
    owner: &K,
    selector_spec: &LabelSelector,
    wanted: impl Fn(&Pod) -> bool,
) -> Result<Option<(bool, Vec<Arc<Pod>>)>>
where
    K: Resource<DynamicType = ()>,
{
    let Some(sel) = selector(Some(selector_spec)) else {
        rec.publish(
            owner,
            EventType::Warning,
            "InvalidSelector",
            "spec.selector does not parse as a label selector",
        )
        .await;
        return Ok(None);
    };
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let uid = owner.meta().uid.clone().unwrap_or_default();
    // Read the expectations before the pods, so a pod created in between
    // is counted rather than created twice.
    let satisfied = ctx.expectations.satisfied(&uid, &ns, ctx.pods.store());
    let candidates = pods::pods_in(ctx, &ns)
        .into_iter()
        .filter(|p| wanted(p))
        .collect();
    let claim = pods::Claim {
        owner: controller_ref(owner)?,
        selector: &sel,
        owner_deleting: owner.meta().deletion_timestamp.is_some(),
    };
    let api: kube::Api<Pod> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let owned = pods::claim(&api, &claim, candidates).await?;
    Ok(Some((satisfied, owned)))
}

/// Merge `status` into the status of `obj`; an object deleted meanwhile
/// has nothing left to report on.
pub(crate) async fn write_status<K>(ctx: &Context, obj: &K, status: serde_json::Value) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: kube::Api<K> = kube::Api::namespaced(
        ctx.client.clone(),
        obj.meta().namespace.as_deref().unwrap_or_default(),
    );
    let name = obj.meta().name.clone().unwrap_or_default();
    let patch = kube::api::Patch::Merge(serde_json::json!({ "status": status }));
    match api
        .patch_status(&name, &kube::api::PatchParams::default(), &patch)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A label selector, converted; `None` for a missing one or one that does
/// not convert (either selects nothing here).
pub(crate) fn selector(ls: Option<&LabelSelector>) -> Option<Selector> {
    ls.and_then(|ls| Selector::from_label_selector(ls).ok())
}

/// Whether `sel` picks an object with `labels`. An empty selector picks
/// nothing here: a workload that selects everything would adopt every pod
/// in its namespace, and the API server refuses such selectors anyway.
pub(crate) fn selects(sel: &Selector, labels: &BTreeMap<String, String>) -> bool {
    !sel.is_empty() && sel.matches(labels)
}

/// The owner reference a controller puts on what it creates or adopts.
pub(crate) fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Result<OwnerReference> {
    owner
        .controller_owner_ref(&())
        .map(|r| OwnerReference {
            block_owner_deletion: Some(true),
            ..r
        })
        .ok_or_else(|| Error::Invalid("owner has no name or uid yet".to_owned()))
}

/// The reference marked `controller: true`, if any.
pub(crate) fn controller_of<K: Resource>(obj: &K) -> Option<&OwnerReference> {
    obj.meta()
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Map a child (pod or ReplicaSet) to the owners of kind `O` that should
/// look at it: its controller if it has one, else every `O` in its
/// namespace whose selector picks it (an orphan someone may adopt).
pub(crate) fn owners_of<C, O>(
    child: &C,
    owners: &Store<O>,
    selector_of: impl Fn(&O) -> Option<&LabelSelector>,
) -> Vec<ObjectRef<O>>
where
    C: Resource,
    O: Resource<DynamicType = ()> + Clone,
{
    let ns = child.meta().namespace.clone().unwrap_or_default();
    if let Some(r) = controller_of(child) {
        let group_ok = r.api_version.split('/').next() == Some(O::group(&()).as_ref())
            || (O::group(&()).is_empty() && !r.api_version.contains('/'));
        if r.kind == O::kind(&()) && group_ok {
            return vec![ObjectRef::new(&r.name).within(&ns)];
        }
        return Vec::new();
    }
    let labels = child.meta().labels.clone().unwrap_or_default();
    owners
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns.as_str()))
        .filter(|o| selector(selector_of(o)).is_some_and(|s| selects(&s, &labels)))
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

/// `v` (an absolute count or a percentage of `total`) as a count.
pub(crate) fn scaled_value(v: Option<&IntOrString>, total: i32, round_up: bool) -> Result<i32> {
    match v {
        None => Ok(0),
        Some(IntOrString::Int(n)) => Ok(*n),
        Some(IntOrString::String(s)) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::Invalid(format!("invalid value for IntOrString: {s:?}")))?;
            let prod = pct * i64::from(total);
            let v = if round_up {
                (prod + 99).div_euclid(100)
            } else {
                prod.div_euclid(100)
            };
            Ok(i32::try_from(v).unwrap_or(i32::MAX))
        }
    }
}

/// A short, label-safe hash of `value` (a pod template) and a collision
/// count, spelled like upstream's pod-template-hash: FNV-1a over the
/// serialised template, its decimal digits mapped onto an alphabet without
/// vowels (so no hash spells a word).
pub(crate) fn template_hash<T: serde::Serialize>(
    value: &T,
    collision_count: Option<i32>,
) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(serde_json::to_string(value).unwrap_or_default().as_bytes());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    h.to_string()
        .bytes()
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

/// Now, as an API time.
pub(crate) fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Seconds from `t` to now (negative if `t` is in the future).
pub(crate) fn age_secs(t: &Time) -> f64 {
    (jiff::Timestamp::now().as_millisecond() - t.0.as_millisecond()) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_the_way_they_are_asked_to() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(scaled_value(Some(&pct), 10, true).ok(), Some(3));
        assert_eq!(scaled_value(Some(&pct), 10, false).ok(), Some(2));
        assert_eq!(
            scaled_value(Some(&IntOrString::Int(4)), 10, false).ok(),
            Some(4)
        );
        assert!(scaled_value(Some(&IntOrString::String("x".into())), 10, true).is_err());
    }

    #[test]
    fn template_hashes_are_stable_and_label_safe() {
        let a = template_hash(&serde_json::json!({"a": 1}), None);
        assert_eq!(a, template_hash(&serde_json::json!({"a": 1}), None));
        assert_ne!(a, template_hash(&serde_json::json!({"a": 1}), Some(1)));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()) && a.len() <= 10);
    }
}
