//! The PersistentVolume binder (`persistentvolume-binder`), upstream's
//! `pv_controller.go` without in-tree plugins.
//!
//! Claims: an unbound claim binds to the volume pre-bound to it (its
//! `spec.volumeName`, or a volume whose claimRef names it, which is how
//! the scheduler's static binding and a provisioner's new volume arrive),
//! else to the smallest Available volume that fits (class, access modes,
//! volume mode, selector, capacity). WaitForFirstConsumer claims are left
//! to the scheduler. With no volume, a claim of a class with a provisioner
//! is marked for it (`volume.kubernetes.io/storage-provisioner`) once it
//! may be provisioned (Immediate, or a node selected). A bound claim whose
//! volume is gone is Lost.
//!
//! Volumes: no claimRef is Available; a claimRef to a claim that is gone
//! (looked up against the API server before believing the cache) is
//! Released, then reclaimed: Retain keeps it, Delete leaves an externally
//! provisioned volume to its provisioner (and fails others: there is no
//! in-tree deleter), Recycle fails (no recycler).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kestrel_api::labels::Selector;
use kestrel_client::events::{EventType, Recorder};
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, ReconcileRequest, applier};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::CancelableJoinHandle;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use tokio::runtime::Handle;

use super::{
    ANN_BETA_STORAGE_PROVISIONER, ANN_BIND_COMPLETED, ANN_BOUND_BY_CONTROLLER, ANN_PROVISIONED_BY,
    ANN_SELECTED_NODE, ANN_STORAGE_PROVISIONER, NO_PROVISIONER, claim_class, has_annotation,
    volume_class,
};
use crate::manager::{Backoff, Error, Result, drive, is_conflict, is_not_found, wait_ready};

/// How often an unbound claim looks for a volume again without a change
/// (upstream's default `--pvclaimbinder-sync-period`).
const RESYNC: Duration = Duration::from_secs(15);

type Claim = PersistentVolumeClaim;
type Volume = PersistentVolume;

struct Ctx {
    client: kube::Client,
    volumes: Store<Volume>,
    claims: Store<Claim>,
    classes: Store<StorageClass>,
    recorder: Recorder,
    /// Asks for a claim to be synced (the volume side hands over).
    claim_queue: mpsc::UnboundedSender<ObjectRef<Claim>>,
    backoff: Backoff<String>,
}

type Queue<K> = BoxStream<'static, Result<ReconcileRequest<K>, watcher::Error>>;

fn claim_ref_of(v: &Volume) -> Option<ObjectRef<Claim>> {
    let r = v.spec.as_ref()?.claim_ref.as_ref()?;
    Some(ObjectRef::new(r.name.as_deref()?).within(r.namespace.as_deref().unwrap_or_default()))
}

fn unbound_claims(claims: &Store<Claim>) -> Vec<ObjectRef<Claim>> {
    claims
        .state()
        .into_iter()
        .filter(|c| !has_annotation(&**c, ANN_BIND_COMPLETED))
        .map(|c| ObjectRef::from_obj(&*c))
        .collect()
}

/// Run the binder until its watches stop.
pub async fn run(client: kube::Client) -> Result<()> {
    let (volumes, vol_writer) = reflector::store::<Volume>();
    let (claims, claim_writer) = reflector::store::<Claim>();
    let (classes, class_writer) = reflector::store::<StorageClass>();
    let (claim_tx, claim_rx) = mpsc::unbounded::<ObjectRef<Claim>>();
    let (vol_tx, vol_rx) = mpsc::unbounded::<ObjectRef<Volume>>();

    // A volume's change syncs it and the claim it points at; a volume
    // that may have become free wakes every unbound claim.
    let vol_feed = {
        let (claim_tx, vol_tx, claims) = (claim_tx.clone(), vol_tx.clone(), claims.clone());
        watcher(
            Api::<Volume>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(vol_writer)
        .touched_objects()
        .for_each(move |v| {
            if let Ok(v) = v {
                let _ = vol_tx.unbounded_send(ObjectRef::from_obj(&v));
                match claim_ref_of(&v) {
                    Some(c) => {
                        let _ = claim_tx.unbounded_send(c);
                    }
                    None => {
                        for c in unbound_claims(&claims) {
                            let _ = claim_tx.unbounded_send(c);
                        }
                    }
                }
            }
            async {}
        })
    };
    // A claim's change syncs it and the volumes bound or pre-bound to it.
    let claim_feed = {
        let (claim_tx, vol_tx, volumes) = (claim_tx.clone(), vol_tx.clone(), volumes.clone());
        watcher(
            Api::<Claim>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(claim_writer)
        .touched_objects()
        .for_each(move |c| {
            if let Ok(c) = c {
                let me = ObjectRef::from_obj(&c);
                let _ = claim_tx.unbounded_send(me.clone());
                let named = c.spec.as_ref().and_then(|s| s.volume_name.clone());
                for v in volumes.state() {
                    if named.as_deref() == Some(v.name_any().as_str())
                        || claim_ref_of(&v).as_ref() == Some(&me)
                    {
                        let _ = vol_tx.unbounded_send(ObjectRef::from_obj(&*v));
                    }
                }
            }
            async {}
        })
    };
    // A new or changed class may let pending claims provision.
    let class_feed = {
        let (claim_tx, claims) = (claim_tx.clone(), claims.clone());
        watcher(
            Api::<StorageClass>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(class_writer)
        .touched_objects()
        .for_each(move |_| {
            for c in unbound_claims(&claims) {
                let _ = claim_tx.unbounded_send(c);
            }
            async {}
        })
    };
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "persistentvolume-controller", None),
        client,
        volumes: volumes.clone(),
        claims: claims.clone(),
        classes: classes.clone(),
        claim_queue: claim_tx,
        backoff: Backoff::default(),
    });
    let controllers = async {
        wait_ready(&volumes).await?;
        wait_ready(&claims).await?;
        wait_ready(&classes).await?;
        tracing::info!("persistentvolume-binder started");
        let claim_queue: Queue<Claim> = claim_rx.map(|r| Ok(ReconcileRequest::from(r))).boxed();
        let vol_queue: Queue<Volume> = vol_rx.map(|r| Ok(ReconcileRequest::from(r))).boxed();
        let claim_results = applier(
            |c, ctx| CancelableJoinHandle::spawn(sync_claim_logged(c, ctx), &Handle::current()),
            claim_error,
            ctx.clone(),
            claims.clone(),
            claim_queue,
            kube::runtime::controller::Config::default(),
        );
        let vol_results = applier(
            |v, ctx| CancelableJoinHandle::spawn(sync_volume_logged(v, ctx), &Handle::current()),
            volume_error,
            ctx.clone(),
            volumes.clone(),
            vol_queue,
            kube::runtime::controller::Config::default(),
        );
        tokio::join!(
            drive(claim_results, "persistentvolume-binder (claims)"),
            drive(vol_results, "persistentvolume-binder (volumes)"),
        );
        Ok::<(), Error>(())
    };
    tokio::select! {
        () = vol_feed => {}
        () = claim_feed => {}
        () = class_feed => {}
        r = controllers => r?,
    }
    Ok(())
}

fn key<K: kube::Resource>(o: &K) -> String {
    format!(
        "{}/{}",
        o.meta().namespace.as_deref().unwrap_or_default(),
        o.meta().name.as_deref().unwrap_or_default()
    )
}

fn claim_error(c: Arc<Claim>, e: &Error, ctx: Arc<Ctx>) -> Action {
    tracing::warn!(claim = %key(&*c), error = %e, "syncing a claim failed");
    ctx.backoff.failed(format!("pvc/{}", key(&*c)))
}

fn volume_error(v: Arc<Volume>, e: &Error, ctx: Arc<Ctx>) -> Action {
    tracing::warn!(volume = %v.name_any(), error = %e, "syncing a volume failed");
    ctx.backoff.failed(format!("pv/{}", v.name_any()))
}

async fn sync_claim_logged(c: Arc<Claim>, ctx: Arc<Ctx>) -> Result<Action> {
    let k = format!("pvc/{}", key(&*c));
    match sync_claim(&c, &ctx).await {
        Ok(a) => {
            ctx.backoff.succeeded(&k);
            Ok(a)
        }
        // Someone wrote meanwhile: look again at what they wrote.
        Err(Error::Kube(e)) if is_conflict(&e) => Ok(Action::requeue(Duration::from_millis(100))),
        Err(e) => Err(e),
    }
}

async fn sync_volume_logged(v: Arc<Volume>, ctx: Arc<Ctx>) -> Result<Action> {
    let k = format!("pv/{}", v.name_any());
    match sync_volume(&v, &ctx).await {
        Ok(a) => {
            ctx.backoff.succeeded(&k);
            Ok(a)
        }
        Err(Error::Kube(e)) if is_conflict(&e) => Ok(Action::requeue(Duration::from_millis(100))),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------
// Matching.

/// A quantity in whole units (bytes); `None` when absent or invalid.
fn bytes(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> Option<i64> {
    kestrel_api::quantity::units(&q?.0).ok()
}

fn requested(c: &Claim) -> i64 {
    bytes(
        c.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage")),
    )
    .unwrap_or(0)
}

fn capacity(v: &Volume) -> Option<i64> {
    bytes(
        v.spec
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage")),
    )
}

fn claim_mode(c: &Claim) -> &str {
    c.spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem")
}

fn volume_mode(v: &Volume) -> &str {
    v.spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem")
}

fn phase_of(v: &Volume) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn claim_phase(c: &Claim) -> &str {
    c.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn volume_name_of(c: &Claim) -> &str {
    c.spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or_default()
}

/// Whether `v`'s claimRef names `c` (with its uid, or no uid yet), as
/// upstream's `IsVolumeBoundToClaim`.
pub fn is_volume_bound_to_claim(v: &Volume, c: &Claim) -> bool {
    let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    if r.name.as_deref() != c.metadata.name.as_deref()
        || r.namespace.as_deref().unwrap_or_default()
            != c.metadata.namespace.as_deref().unwrap_or_default()
    {
        return false;
    }
    match r.uid.as_deref() {
        None | Some("") => true,
        Some(uid) => Some(uid) == c.metadata.uid.as_deref(),
    }
}

/// Why `v` cannot serve `c`, if it cannot (upstream's
/// `checkVolumeSatisfyClaim`, for a claim pre-bound to `v`).
fn unsatisfied(v: &Volume, c: &Claim) -> Option<String> {
    if capacity(v).unwrap_or(0) < requested(c) {
        return Some("requested PV is too small".to_owned());
    }
    if volume_class(v) != claim_class(c) {
        return Some("storageClassName does not match".to_owned());
    }
    if claim_mode(c) != volume_mode(v) {
        return Some("incompatible volumeMode".to_owned());
    }
    if !access_modes_fit(v, c) {
        return Some("incompatible accessMode".to_owned());
    }
    None
}

fn access_modes_fit(v: &Volume, c: &Claim) -> bool {
    let have: Vec<&String> = v
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .into_iter()
        .flatten()
        .collect();
    c.spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .into_iter()
        .flatten()
        .all(|m| have.contains(&m))
}

/// The volume `c` should bind to: one pre-bound to it (whatever its phase),
/// else the smallest Available, unclaimed volume that fits. With delayed
/// binding only a pre-bound volume is chosen (the scheduler picks the
/// others, knowing the node), as upstream's `findMatchingVolume` without a
/// node.
pub fn find_best_match<'a>(
    c: &Claim,
    volumes: impl IntoIterator<Item = &'a Volume>,
    delay_binding: bool,
) -> Option<&'a Volume> {
    let want = requested(c);
    let class = claim_class(c);
    let selector = match c.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(ls) => match Selector::from_label_selector(ls) {
            Ok(s) => Some(s),
            Err(_) => return None,
        },
        None => None,
    };
    let mut best: Option<(&Volume, i64)> = None;
    for v in volumes {
        if claim_mode(c) != volume_mode(v) || v.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if is_volume_bound_to_claim(v, c) {
            return Some(v);
        }
        if delay_binding {
            continue;
        }
        if phase_of(v) != "Available"
            || v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some()
        {
            continue;
        }
        if let Some(sel) = &selector
            && !sel.matches(v.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
        {
            continue;
        }
        if volume_class(v) != class || !access_modes_fit(v, c) {
            continue;
        }
        let Some(cap) = capacity(v) else { continue };
        if cap >= want && best.is_none_or(|(_, b)| cap < b) {
            best = Some((v, cap));
        }
    }
    best.map(|(v, _)| v)
}

// ---------------------------------------------------------------------
// Claims.

fn class_of(ctx: &Ctx, c: &Claim) -> Option<Arc<StorageClass>> {
    let name = claim_class(c);
    if name.is_empty() {
        return None;
    }
    ctx.classes.get(&ObjectRef::new(&name))
}

fn is_delay_binding(ctx: &Ctx, c: &Claim) -> bool {
    class_of(ctx, c)
        .is_some_and(|cl| cl.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"))
}

async fn sync_claim(c: &Claim, ctx: &Ctx) -> Result<Action> {
    if has_annotation(c, ANN_BIND_COMPLETED) {
        sync_bound_claim(c, ctx).await?;
        return Ok(Action::await_change());
    }
    sync_unbound_claim(c, ctx).await?;
    Ok(Action::requeue(RESYNC))
}

async fn sync_unbound_claim(c: &Claim, ctx: &Ctx) -> Result<()> {
    let wanted = volume_name_of(c);
    if wanted.is_empty() {
        let delay = is_delay_binding(ctx, c);
        let volumes = ctx.volumes.state();
        if let Some(v) = find_best_match(c, volumes.iter().map(|v| &**v), delay) {
            return bind(ctx, v, c).await;
        }
        let class = claim_class(c);
        if delay && !has_annotation(c, ANN_SELECTED_NODE) {
            ctx.recorder
                .publish(
                    c,
                    EventType::Normal,
                    "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding",
                )
                .await;
        } else if !class.is_empty() {
            return provision(ctx, c, &class).await;
        } else {
            ctx.recorder
                .publish(
                    c,
                    EventType::Normal,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                .await;
        }
        return claim_status(ctx, c, "Pending", None).await;
    }
    // The user asked for one volume by name.
    let Some(v) = ctx.volumes.get(&ObjectRef::new(wanted)) else {
        return claim_status(ctx, c, "Pending", None).await;
    };
    let claim_ref = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    if claim_ref.is_none() {
        if let Some(why) = unsatisfied(&v, c) {
            ctx.recorder
                .publish(
                    c,
                    EventType::Warning,
                    "VolumeMismatch",
                    &format!("Cannot bind to requested volume {wanted:?}: {why}"),
                )
                .await;
            return claim_status(ctx, c, "Pending", None).await;
        }
        return bind(ctx, &v, c).await;
    }
    if is_volume_bound_to_claim(&v, c) {
        return bind(ctx, &v, c).await;
    }
    if has_annotation(c, ANN_BOUND_BY_CONTROLLER) {
        return Err(Error::Invalid(format!(
            "invalid binding of claim {:?} to volume {wanted:?}: volume already claimed by another claim",
            key(c)
        )));
    }
    // The volume the user asked for is someone else's: wait.
    ctx.recorder
        .publish(
            c,
            EventType::Warning,
            "FailedBinding",
            "volume is already bound to a different claim.",
        )
        .await;
    claim_status(ctx, c, "Pending", None).await
}

/// No volume fits: hand the claim to its class's provisioner.
async fn provision(ctx: &Ctx, c: &Claim, class_name: &str) -> Result<()> {
    let Some(class) = ctx.classes.get(&ObjectRef::new(class_name)) else {
        ctx.recorder
            .publish(
                c,
                EventType::Warning,
                "ProvisioningFailed",
                &format!("storageclass.storage.k8s.io {class_name:?} not found"),
            )
            .await;
        return claim_status(ctx, c, "Pending", None).await;
    };
    let provisioner = class.provisioner.clone();
    // No in-tree plugin exists here: a `kubernetes.io/` provisioner (the
    // no-provisioner of statically provisioned classes among them) has
    // nothing to provision with.
    if provisioner == NO_PROVISIONER || provisioner.starts_with("kubernetes.io/") {
        ctx.recorder
            .publish(
                c,
                EventType::Warning,
                "ProvisioningFailed",
                &format!("no volume plugin matched name: {provisioner}"),
            )
            .await;
        return claim_status(ctx, c, "Pending", None).await;
    }
    let annotations = c.metadata.annotations.clone().unwrap_or_default();
    if annotations.get(ANN_STORAGE_PROVISIONER) != Some(&provisioner)
        || annotations.get(ANN_BETA_STORAGE_PROVISIONER) != Some(&provisioner)
    {
        let patch = json!({"metadata": {
            "resourceVersion": c.resource_version(),
            "annotations": {
                ANN_STORAGE_PROVISIONER: provisioner,
                ANN_BETA_STORAGE_PROVISIONER: provisioner,
            },
        }});
        match claims_api(ctx, c)
            .patch(
                &c.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Err(e) if is_not_found(&e) => return Ok(()),
            r => {
                r?;
            }
        }
    }
    ctx.recorder
        .publish(
            c,
            EventType::Normal,
            "ExternalProvisioning",
            &format!(
                "Waiting for a volume to be created either by the external provisioner \
                 '{provisioner}' or manually by the system administrator. If volume creation \
                 is delayed, please verify that the provisioner is running and correctly \
                 registered."
            ),
        )
        .await;
    if claim_phase(c).is_empty() {
        claim_status(ctx, c, "Pending", None).await?;
    }
    Ok(())
}

async fn sync_bound_claim(c: &Claim, ctx: &Ctx) -> Result<()> {
    let name = volume_name_of(c);
    if name.is_empty() {
        return claim_lost(
            ctx,
            c,
            "ClaimLost",
            "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
        )
        .await;
    }
    let v = match ctx.volumes.get(&ObjectRef::new(name)) {
        Some(v) => Some(v),
        // The cache may be behind: ask before declaring data lost.
        None => match Api::<Volume>::all(ctx.client.clone()).get(name).await {
            Ok(v) => Some(Arc::new(v)),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(e.into()),
        },
    };
    let Some(v) = v else {
        return claim_lost(
            ctx,
            c,
            "ClaimLost",
            "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
        )
        .await;
    };
    let claim_ref = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    if claim_ref.is_none() || is_volume_bound_to_claim(&v, c) {
        // Finish (or confirm) the binding.
        return bind(ctx, &v, c).await;
    }
    claim_lost(
        ctx,
        c,
        "ClaimMisbound",
        "Two claims are bound to the same volume, this one is bound incorrectly",
    )
    .await
}

async fn claim_lost(ctx: &Ctx, c: &Claim, reason: &str, message: &str) -> Result<()> {
    if claim_phase(c) == "Lost" {
        return Ok(());
    }
    claim_status(ctx, c, "Lost", None).await?;
    ctx.recorder
        .publish(c, EventType::Warning, reason, message)
        .await;
    Ok(())
}

fn claims_api(ctx: &Ctx, c: &Claim) -> Api<Claim> {
    Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default())
}

/// Set the claim's phase (and, bound, what the volume gives it).
async fn claim_status(ctx: &Ctx, c: &Claim, phase: &str, v: Option<&Volume>) -> Result<()> {
    let status = c.status.clone().unwrap_or_default();
    let mut new = json!({"phase": phase});
    let mut unchanged = status.phase.as_deref() == Some(phase);
    if let Some(v) = v {
        let spec = v.spec.clone().unwrap_or_default();
        unchanged = unchanged
            && status.access_modes == spec.access_modes
            && status.capacity == spec.capacity;
        new["accessModes"] = json!(spec.access_modes);
        new["capacity"] = json!(spec.capacity);
    }
    if unchanged {
        return Ok(());
    }
    let patch = json!({
        "metadata": {"resourceVersion": c.resource_version()},
        "status": new,
    });
    match claims_api(ctx, c)
        .patch_status(
            &c.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Err(e) if is_not_found(&e) => Ok(()),
        r => r.map(|_| ()).map_err(Into::into),
    }
}

/// Write both halves of the binding of `v` and `c`, each step only if it
/// is not written yet (upstream's `bind`).
async fn bind(ctx: &Ctx, v: &Volume, c: &Claim) -> Result<()> {
    let v = bind_volume_to_claim(ctx, v, c).await?;
    let v = volume_phase(ctx, &v, "Bound", None).await?;
    let c = bind_claim_to_volume(ctx, c, &v).await?;
    claim_status(ctx, &c, "Bound", Some(&v)).await
}

async fn bind_volume_to_claim(ctx: &Ctx, v: &Volume, c: &Claim) -> Result<Volume> {
    let by_controller = !is_volume_bound_to_claim(v, c);
    let current = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let ref_ok = current.is_some_and(|r| {
        r.name.as_deref() == c.metadata.name.as_deref()
            && r.namespace.as_deref() == c.metadata.namespace.as_deref()
            && r.uid.as_deref() == c.metadata.uid.as_deref()
    });
    let ann_ok = !by_controller || has_annotation(v, ANN_BOUND_BY_CONTROLLER);
    if ref_ok && ann_ok {
        return Ok(v.clone());
    }
    let mut meta = json!({"resourceVersion": v.resource_version()});
    if by_controller {
        meta["annotations"] = json!({ANN_BOUND_BY_CONTROLLER: "yes"});
    }
    let patch = json!({
        "metadata": meta,
        "spec": {"claimRef": {
            "kind": "PersistentVolumeClaim",
            "apiVersion": "v1",
            "namespace": c.namespace(),
            "name": c.name_any(),
            "uid": c.uid(),
            "resourceVersion": c.resource_version(),
            "fieldPath": null,
        }},
    });
    Ok(Api::<Volume>::all(ctx.client.clone())
        .patch(
            &v.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?)
}

async fn volume_phase(ctx: &Ctx, v: &Volume, phase: &str, message: Option<&str>) -> Result<Volume> {
    let status = v.status.clone().unwrap_or_default();
    if status.phase.as_deref() == Some(phase) && status.message.as_deref() == message {
        return Ok(v.clone());
    }
    let patch = json!({
        "metadata": {"resourceVersion": v.resource_version()},
        "status": {"phase": phase, "message": message},
    });
    Ok(Api::<Volume>::all(ctx.client.clone())
        .patch_status(
            &v.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?)
}

async fn bind_claim_to_volume(ctx: &Ctx, c: &Claim, v: &Volume) -> Result<Claim> {
    let name = v.name_any();
    let should_bind = volume_name_of(c) != name;
    let ann_ok = (!should_bind || has_annotation(c, ANN_BOUND_BY_CONTROLLER))
        && has_annotation(c, ANN_BIND_COMPLETED);
    if !should_bind && ann_ok {
        return Ok(c.clone());
    }
    let mut annotations = json!({ANN_BIND_COMPLETED: "yes"});
    if should_bind {
        annotations[ANN_BOUND_BY_CONTROLLER] = json!("yes");
    }
    let patch = json!({
        "metadata": {"resourceVersion": c.resource_version(), "annotations": annotations},
        "spec": {"volumeName": name},
    });
    Ok(claims_api(ctx, c)
        .patch(
            &c.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?)
}

// ---------------------------------------------------------------------
// Volumes.

/// The claim `v` points at, if it still exists with the uid it names: the
/// cache first, the API server before believing it is gone.
async fn claim_for(ctx: &Ctx, v: &Volume) -> Result<Option<Claim>> {
    let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return Ok(None);
    };
    let (Some(name), ns) = (
        r.name.as_deref(),
        r.namespace.as_deref().unwrap_or_default(),
    ) else {
        return Ok(None);
    };
    let uid = r.uid.as_deref().unwrap_or_default();
    if let Some(c) = ctx.claims.get(&ObjectRef::new(name).within(ns))
        && c.metadata.uid.as_deref() == Some(uid)
    {
        return Ok(Some((*c).clone()));
    }
    match Api::<Claim>::namespaced(ctx.client.clone(), ns)
        .get(name)
        .await
    {
        Ok(c) if c.metadata.uid.as_deref() == Some(uid) => Ok(Some(c)),
        Ok(_) => Ok(None),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn sync_volume(v: &Volume, ctx: &Ctx) -> Result<Action> {
    let claim_ref = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let Some(r) = claim_ref else {
        volume_phase(ctx, v, "Available", None).await?;
        return Ok(Action::await_change());
    };
    if r.uid.as_deref().unwrap_or_default().is_empty() {
        // Pre-bound by the user to a claim not bound yet: the claim's
        // sync binds them.
        volume_phase(ctx, v, "Available", None).await?;
        return Ok(Action::await_change());
    }
    let Some(c) = claim_for(ctx, v).await? else {
        let v = if matches!(phase_of(v), "Released" | "Failed") {
            v.clone()
        } else {
            volume_phase(ctx, v, "Released", None).await?
        };
        reclaim(ctx, &v).await?;
        return Ok(Action::await_change());
    };
    let bound_to = volume_name_of(&c);
    if bound_to.is_empty() {
        // Pre-bound (by the scheduler, a provisioner or the user) to a
        // claim that is not bound yet: the claim's sync finishes it.
        let _ = ctx.claim_queue.unbounded_send(ObjectRef::from_obj(&c));
        return Ok(Action::await_change());
    }
    if bound_to == v.name_any() {
        volume_phase(ctx, v, "Bound", None).await?;
        return Ok(Action::await_change());
    }
    // The claim is bound to another volume.
    let delete = v
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        == Some("Delete");
    if has_annotation(v, ANN_PROVISIONED_BY) && delete {
        let v = if matches!(phase_of(v), "Released" | "Failed") {
            v.clone()
        } else {
            volume_phase(ctx, v, "Released", None).await?
        };
        reclaim(ctx, &v).await?;
    } else {
        unbind(ctx, v).await?;
    }
    Ok(Action::await_change())
}

/// Undo a binding the other side does not share: drop the claimRef this
/// controller wrote, or only its uid for one the user wrote.
async fn unbind(ctx: &Ctx, v: &Volume) -> Result<()> {
    let patch = if has_annotation(v, ANN_BOUND_BY_CONTROLLER) {
        json!({
            "metadata": {
                "resourceVersion": v.resource_version(),
                "annotations": {ANN_BOUND_BY_CONTROLLER: null},
            },
            "spec": {"claimRef": null},
        })
    } else {
        json!({
            "metadata": {"resourceVersion": v.resource_version()},
            "spec": {"claimRef": {"uid": null}},
        })
    };
    let v = Api::<Volume>::all(ctx.client.clone())
        .patch(
            &v.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    volume_phase(ctx, &v, "Available", None).await?;
    Ok(())
}

/// What a Released volume's reclaim policy asks for.
async fn reclaim(ctx: &Ctx, v: &Volume) -> Result<()> {
    let policy = v
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain");
    match policy {
        "Delete" => {
            let by = v
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANN_PROVISIONED_BY))
                .filter(|p| !p.is_empty());
            // An external provisioner deletes what it provisioned.
            if by.is_some_and(|p| !p.starts_with("kubernetes.io/")) || phase_of(v) == "Failed" {
                return Ok(());
            }
            let message = match by {
                Some(p) => format!("no deletable volume plugin matched name: {p}"),
                None => format!(
                    "error getting deleter volume plugin for volume {:?}: no deletable volume \
                     plugin matched",
                    v.name_any()
                ),
            };
            volume_phase(ctx, v, "Failed", Some(&message)).await?;
            ctx.recorder
                .publish(v, EventType::Warning, "VolumeFailedDelete", &message)
                .await;
        }
        "Recycle" => {
            if phase_of(v) == "Failed" {
                return Ok(());
            }
            let message = "No recycler plugin found for the volume!";
            volume_phase(ctx, v, "Failed", Some(message)).await?;
            ctx.recorder
                .publish(v, EventType::Warning, "VolumeFailedRecycle", message)
                .await;
        }
        // Retain (and anything unknown): the volume waits for an admin.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(name: &str, size: &str, extra: serde_json::Value) -> Volume {
        let mut spec = json!({
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/tmp"},
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"tier": name}},
            "spec": spec,
            "status": {"phase": "Available"},
        }))
        .expect("pv")
    }

    fn pvc(size: &str, extra: serde_json::Value) -> Claim {
        let mut spec = json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
            "storageClassName": "",
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(json!({
            "metadata": {"name": "c", "namespace": "default", "uid": "u1"},
            "spec": spec,
        }))
        .expect("pvc")
    }

    #[test]
    fn the_smallest_fitting_volume_wins() {
        let vols = [
            pv("big", "10Gi", json!({})),
            pv("small", "500Mi", json!({})),
            pv("mid", "2Gi", json!({})),
            pv("mid2", "3Gi", json!({})),
        ];
        let c = pvc("1Gi", json!({}));
        assert_eq!(
            find_best_match(&c, &vols, false).map(|v| v.name_any()),
            Some("mid".into())
        );
        // Delayed binding picks nothing that is not pre-bound.
        assert!(find_best_match(&c, &vols, true).is_none());
    }

    #[test]
    fn class_modes_selector_and_phase_filter() {
        let vols = [
            pv("rwx", "1Gi", json!({"accessModes": ["ReadWriteMany"]})),
            pv("fast", "1Gi", json!({"storageClassName": "fast"})),
            pv("block", "1Gi", json!({"volumeMode": "Block"})),
            pv("plain", "1Gi", json!({})),
        ];
        let c = pvc("1Gi", json!({}));
        assert_eq!(
            find_best_match(&c, &vols, false).map(|v| v.name_any()),
            Some("plain".into())
        );
        let c = pvc("1Gi", json!({"storageClassName": "fast"}));
        assert_eq!(
            find_best_match(&c, &vols, false).map(|v| v.name_any()),
            Some("fast".into())
        );
        let c = pvc("1Gi", json!({"volumeMode": "Block"}));
        assert_eq!(
            find_best_match(&c, &vols, false).map(|v| v.name_any()),
            Some("block".into())
        );
        let c = pvc("1Gi", json!({"accessModes": ["ReadWriteMany"]}));
        assert_eq!(
            find_best_match(&c, &vols, false).map(|v| v.name_any()),
            Some("rwx".into())
        );
        let c = pvc(
            "1Gi",
            json!({"selector": {"matchLabels": {"tier": "nope"}}}),
        );
        assert!(find_best_match(&c, &vols, false).is_none());
    }

    #[test]
    fn a_volume_pre_bound_to_the_claim_wins_even_when_delayed() {
        let vols = [
            pv("other", "1Gi", json!({})),
            pv(
                "mine",
                "5Gi",
                json!({"claimRef": {"namespace": "default", "name": "c"}}),
            ),
        ];
        let c = pvc("1Gi", json!({}));
        assert_eq!(
            find_best_match(&c, &vols, true).map(|v| v.name_any()),
            Some("mine".into())
        );
        assert_eq!(
            find_best_match(&c, &vols, false).map(|v| v.name_any()),
            Some("mine".into())
        );
    }
}
