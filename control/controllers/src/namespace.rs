//! The namespace controller: a deleted namespace is emptied, then goes.
//!
//! Deleting a namespace only marks it (the API server sets its
//! deletionTimestamp and phase Terminating, and refuses new content). This
//! controller deletes everything in it, of every namespaced kind the server
//! serves, reports progress in the upstream conditions
//! (`NamespaceDeletionContentFailure`, `NamespaceContentRemaining`,
//! `NamespaceFinalizersRemaining`, ...), and once nothing is left removes
//! the `kubernetes` finalizer through the `finalize` subresource, at which
//! point the API server deletes the namespace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kestrel_client::events::{EventType, Recorder};
use kube::ResourceExt as _;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use tokio::sync::Mutex;

use crate::gc::discover;
use crate::manager::{Backoff, Error, Result, drive, is_not_found, only_uid};

/// The finalizer this controller owns in `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";
/// How soon a namespace with content left is looked at again.
const RECHECK: Duration = Duration::from_millis(500);
/// How long a discovery result is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(30);

type Resources = Vec<(ApiResource, ApiCapabilities)>;

struct Ctx {
    client: kube::Client,
    resources: Mutex<Option<(std::time::Instant, Arc<Resources>)>>,
    recorder: Recorder,
    backoff: Backoff<String>,
}

/// Run the namespace controller.
pub async fn run(client: kube::Client) -> Result<()> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        resources: Mutex::default(),
        recorder: Recorder::new(client.clone(), "namespace-controller", None),
        backoff: Backoff::default(),
    });
    let controller = Controller::new(Api::<Namespace>::all(client), watcher::Config::default());
    drive(
        controller.run(reconcile, error_policy, ctx),
        "namespace-controller",
    )
    .await;
    Ok(())
}

fn error_policy(ns: Arc<Namespace>, e: &Error, ctx: Arc<Ctx>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %e, "namespace deletion step failed");
    ctx.backoff.failed(ns.name_any())
}

impl Ctx {
    async fn resources(&self) -> Result<Arc<Resources>> {
        let mut cached = self.resources.lock().await;
        if let Some((at, r)) = cached.as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(r.clone());
        }
        let r: Arc<Resources> = Arc::new(
            discover(&self.client)
                .await?
                .into_iter()
                .filter(|(_, caps)| caps.scope == Scope::Namespaced)
                .collect(),
        );
        *cached = Some((std::time::Instant::now(), r.clone()));
        Ok(r)
    }
}

/// What one pass over a namespace's content found.
#[derive(Debug, Default)]
struct Sweep {
    /// Objects still there, by resource.
    remaining: BTreeMap<String, usize>,
    /// Finalizers holding objects back, with how many objects each holds.
    finalizers: BTreeMap<String, usize>,
    /// Deletes that failed.
    failures: Vec<String>,
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = ns.name_any();
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let ours = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    if !ours {
        return Ok(Action::await_change());
    }
    let resources = match ctx.resources().await {
        Ok(r) => r,
        Err(e) => {
            set_conditions(&ctx, &ns, &Sweep::default(), Some(&e.to_string())).await;
            return Err(e);
        }
    };
    let sweep = delete_content(&ctx, &name, &resources).await;
    set_conditions(&ctx, &ns, &sweep, None).await;
    if !sweep.failures.is_empty() {
        ctx.recorder
            .publish(
                &*ns,
                EventType::Warning,
                "NamespaceDeletionContentFailure",
                &format!(
                    "Failed to delete all content: {}",
                    sweep.failures.join("; ")
                ),
            )
            .await;
        return Err(Error::Pending(sweep.failures.join("; ")));
    }
    if !sweep.remaining.is_empty() {
        return Ok(Action::requeue(RECHECK));
    }
    finalize(&ctx, &ns).await?;
    ctx.backoff.succeeded(&name);
    tracing::info!(namespace = %name, "namespace emptied and finalized");
    Ok(Action::await_change())
}

async fn delete_content(ctx: &Ctx, ns: &str, resources: &Resources) -> Sweep {
    let mut sweep = Sweep::default();
    for (ar, _) in resources {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, ar);
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                sweep.failures.push(format!("listing {}: {e}", ar.plural));
                continue;
            }
        };
        for o in list.items {
            *sweep.remaining.entry(ar.plural.clone()).or_default() += 1;
            for f in o.finalizers() {
                *sweep.finalizers.entry(f.clone()).or_default() += 1;
            }
            if o.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match api
                .delete(&o.name_any(), &only_uid(o.metadata.uid.clone()))
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    sweep
                        .failures
                        .push(format!("deleting {} {}: {e}", ar.plural, o.name_any()))
                }
            }
        }
    }
    sweep
}

fn condition(
    type_: &str,
    on: bool,
    reason_on: &str,
    reason_off: &str,
    msg: String,
) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.to_owned(),
        status: if on { "True" } else { "False" }.to_owned(),
        reason: Some(if on { reason_on } else { reason_off }.to_owned()),
        message: Some(msg),
        last_transition_time: Some(Time(jiff::Timestamp::now())),
    }
}

fn summary(m: &BTreeMap<String, usize>) -> String {
    m.iter()
        .map(|(k, n)| format!("{k} has {n} resource instances"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Write upstream's deletion conditions, only when they changed.
async fn set_conditions(ctx: &Ctx, ns: &Namespace, sweep: &Sweep, discovery_error: Option<&str>) {
    let want = vec![
        condition(
            "NamespaceDeletionDiscoveryFailure",
            discovery_error.is_some(),
            "DiscoveryFailed",
            "ResourcesDiscovered",
            discovery_error
                .map(|e| format!("Discovery failed for some groups: {e}"))
                .unwrap_or_else(|| "All resources successfully discovered".to_owned()),
        ),
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "GroupVersionParsingFailed",
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".to_owned(),
        ),
        condition(
            "NamespaceDeletionContentFailure",
            !sweep.failures.is_empty(),
            "ContentDeletionFailed",
            "ContentDeleted",
            if sweep.failures.is_empty() {
                "All content successfully deleted, may be waiting on finalization".to_owned()
            } else {
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    sweep.failures.len(),
                    sweep.failures.join(", ")
                )
            },
        ),
        condition(
            "NamespaceContentRemaining",
            !sweep.remaining.is_empty(),
            "SomeResourcesRemain",
            "ContentRemoved",
            if sweep.remaining.is_empty() {
                "All content successfully removed".to_owned()
            } else {
                format!(
                    "Some resources are remaining: {}",
                    summary(&sweep.remaining)
                )
            },
        ),
        condition(
            "NamespaceFinalizersRemaining",
            !sweep.finalizers.is_empty(),
            "SomeFinalizersRemain",
            "ContentHasNoFinalizers",
            if sweep.finalizers.is_empty() {
                "All content-preserving finalizers finished".to_owned()
            } else {
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    sweep
                        .finalizers
                        .iter()
                        .map(|(f, n)| format!("{f} in {n} resource instances"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        ),
    ];
    let cur = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let same = |a: &NamespaceCondition, b: &NamespaceCondition| {
        a.type_ == b.type_ && a.status == b.status && a.reason == b.reason && a.message == b.message
    };
    let merged: Vec<NamespaceCondition> = want
        .into_iter()
        .map(|w| match cur.iter().find(|c| c.type_ == w.type_) {
            // Keep the transition time of a condition whose status holds.
            Some(c) if c.status == w.status => NamespaceCondition {
                last_transition_time: c.last_transition_time.clone(),
                ..w
            },
            _ => w,
        })
        .collect();
    if merged.len() == cur.len() && merged.iter().all(|m| cur.iter().any(|c| same(c, m))) {
        return;
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({"status": {"phase": "Terminating", "conditions": merged}});
    if let Err(e) = api
        .patch_status(
            &ns.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        && !is_not_found(&e)
    {
        tracing::warn!(namespace = %ns.name_any(), error = %e, "could not record namespace deletion conditions");
    }
}

/// Remove our finalizer through `namespaces/{name}/finalize`.
async fn finalize(ctx: &Ctx, ns: &Namespace) -> Result<()> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let mut n = ns.clone();
    // Unconditional: the status we wrote just before moved the
    // resourceVersion, and only this controller removes this finalizer.
    n.metadata.resource_version = None;
    if let Some(spec) = n.spec.as_mut() {
        spec.finalizers = Some(
            spec.finalizers
                .iter()
                .flatten()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect(),
        );
    }
    match api
        .replace_subresource("finalize", &ns.name_any(), &PostParams::default(), &n)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether a namespace takes new content (not being deleted).
pub(crate) fn is_active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

/// A controller of Namespaces that also wakes a namespace when its object
/// of kind `K` named `name` changes: the shape of the controllers that keep
/// one object in every namespace (the `default` ServiceAccount,
/// `kube-root-ca.crt`).
pub(crate) fn each_namespace_keeps<K>(client: &kube::Client, name: &str) -> Controller<Namespace>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<K>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
        |o| {
            o.namespace()
                .map(|ns| kube::runtime::reflector::ObjectRef::new(&ns))
        },
    )
}
