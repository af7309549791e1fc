//! The protection controllers, upstream's `pvc-protection` and
//! `pv-protection`: a claim keeps `kubernetes.io/pvc-protection` while a
//! pod that is not finished uses it, a volume keeps
//! `kubernetes.io/pv-protection` while it is Bound. Both add their
//! finalizer to objects that lack it (admission normally has), and remove
//! it from an object being deleted once it is no longer in use.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::{self, BoxStream};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller, ReconcileRequest, applier, trigger_self};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::utils::CancelableJoinHandle;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use tokio::runtime::Handle;

use super::{PV_PROTECTION, PVC_PROTECTION};
use crate::manager::{Backoff, Error, Result, drive, is_conflict, is_not_found};

struct Ctx {
    client: kube::Client,
    backoff: Backoff<String>,
}

type Queue = BoxStream<'static, Result<ReconcileRequest<PersistentVolumeClaim>, watcher::Error>>;

/// The claims `pod` refers to: its persistentVolumeClaim volumes and the
/// claims of its ephemeral volumes (`<pod>-<volume>`).
pub(crate) fn claims_of(pod: &Pod) -> Vec<String> {
    let name = pod.name_any();
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| {
            if let Some(c) = &v.persistent_volume_claim {
                Some(c.claim_name.clone())
            } else if v.ephemeral.is_some() {
                Some(format!("{name}-{}", v.name))
            } else {
                None
            }
        })
        .collect()
}

fn finished(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether `pod` keeps `claim` in use: it is scheduled (a kubelet may run
/// it), not finished, and names the claim (upstream's `podUsesPVC`).
fn pod_uses(pod: &Pod, claim: &str) -> bool {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    scheduled && !finished(pod) && claims_of(pod).iter().any(|c| c == claim)
}

/// Run the PVC protection controller.
pub async fn run_pvc(client: kube::Client) -> Result<()> {
    let (claims, writer) = reflector::store();
    let claim_stream = watcher(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects();
    // A pod that changes or goes may release the claims it names.
    let pod_trigger: Queue = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .flat_map(|p| {
            let refs: Vec<ObjectRef<PersistentVolumeClaim>> = match &p {
                Ok(p) => {
                    let ns = p.namespace().unwrap_or_default();
                    claims_of(p)
                        .into_iter()
                        .map(|c| ObjectRef::new(&c).within(&ns))
                        .collect()
                }
                Err(_) => Vec::new(),
            };
            stream::iter(refs.into_iter().map(|r| Ok(ReconcileRequest::from(r))))
        })
        .boxed();
    let queue: Vec<Queue> = vec![trigger_self(claim_stream, ()).boxed(), pod_trigger];
    let ctx = Arc::new(Ctx {
        client,
        backoff: Backoff::default(),
    });
    let results = applier(
        |c, ctx| CancelableJoinHandle::spawn(reconcile_pvc(c, ctx), &Handle::current()),
        |c: Arc<PersistentVolumeClaim>, e: &Error, ctx: Arc<Ctx>| {
            tracing::warn!(claim = %c.name_any(), error = %e, "pvc protection failed");
            ctx.backoff.failed(format!(
                "{}/{}",
                c.namespace().unwrap_or_default(),
                c.name_any()
            ))
        },
        ctx,
        claims,
        stream::select_all(queue),
        kube::runtime::controller::Config::default(),
    );
    drive(results, "pvc-protection-controller").await;
    Ok(())
}

async fn reconcile_pvc(c: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action> {
    let ns = c.namespace().unwrap_or_default();
    let name = c.name_any();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let has = c.finalizers().iter().any(|f| f == PVC_PROTECTION);
    let r = if c.metadata.deletion_timestamp.is_some() {
        if !has {
            return Ok(Action::await_change());
        }
        // Ask the API server, not a cache: a pod created a moment ago
        // must keep the claim.
        let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default())
            .await?;
        if let Some(p) = pods.items.iter().find(|p| pod_uses(p, &name)) {
            tracing::debug!(claim = %name, pod = %p.name_any(), "claim still in use");
            return Ok(Action::await_change());
        }
        set_finalizer(&api, c.as_ref(), PVC_PROTECTION, false).await
    } else if !has {
        set_finalizer(&api, c.as_ref(), PVC_PROTECTION, true).await
    } else {
        Ok(())
    };
    settle(r, &ctx, &format!("{ns}/{name}"))
}

fn settle(r: Result<()>, ctx: &Ctx, key: &str) -> Result<Action> {
    match r {
        Ok(()) => {
            ctx.backoff.succeeded(&key.to_owned());
            Ok(Action::await_change())
        }
        Err(Error::Kube(e)) if is_conflict(&e) => Ok(Action::requeue(Duration::from_millis(100))),
        Err(Error::Kube(e)) if is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

/// Add (`keep`) or remove finalizer `which` on `obj`, at the
/// resourceVersion it was read at.
async fn set_finalizer<K>(api: &Api<K>, obj: &K, which: &str, keep: bool) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut all: Vec<&str> = obj
        .finalizers()
        .iter()
        .map(String::as_str)
        .filter(|f| *f != which)
        .collect();
    if keep {
        all.push(which);
    }
    let patch = json!({"metadata": {"resourceVersion": obj.resource_version(), "finalizers": all}});
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Run the PV protection controller.
pub async fn run_pv(client: kube::Client) -> Result<()> {
    let api = Api::<PersistentVolume>::all(client.clone());
    let ctx = Arc::new(Ctx {
        client,
        backoff: Backoff::default(),
    });
    let results = Controller::new(api, watcher::Config::default()).run(
        reconcile_pv,
        |v: Arc<PersistentVolume>, e: &Error, ctx: Arc<Ctx>| {
            tracing::warn!(volume = %v.name_any(), error = %e, "pv protection failed");
            ctx.backoff.failed(v.name_any())
        },
        ctx,
    );
    drive(results, "pv-protection-controller").await;
    Ok(())
}

async fn reconcile_pv(v: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = v.name_any();
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let has = v.finalizers().iter().any(|f| f == PV_PROTECTION);
    let r = if v.metadata.deletion_timestamp.is_some() {
        let bound = v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        if !has || bound {
            return Ok(Action::await_change());
        }
        set_finalizer(&api, v.as_ref(), PV_PROTECTION, false).await
    } else if !has {
        set_finalizer(&api, v.as_ref(), PV_PROTECTION, true).await
    } else {
        Ok(())
    };
    settle(r, &ctx, &name)
}
