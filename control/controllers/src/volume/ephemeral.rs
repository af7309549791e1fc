//! The ephemeral volume controller (`ephemeral-volume`): for every pod
//! volume with `ephemeral.volumeClaimTemplate`, the claim
//! `<pod>-<volume>`, made from the template and owned by the pod, so it
//! lives and goes with it. A claim of that name the pod does not own is
//! not taken over: the pod gets a Warning Event and waits.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kestrel_client::events::{EventType, Recorder};
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use crate::manager::{Backoff, Error, Result, drive, is_conflict, is_not_found};

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    backoff: Backoff<String>,
}

/// Run the ephemeral volume controller.
pub async fn run(client: kube::Client) -> Result<()> {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "ephemeral_volume", None),
        client: client.clone(),
        backoff: Backoff::default(),
    });
    let results = Controller::new(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .owns(
            Api::<PersistentVolumeClaim>::all(client),
            watcher::Config::default(),
        )
        .run(
            reconcile,
            |p: Arc<Pod>, e: &Error, ctx: Arc<Ctx>| {
                tracing::warn!(pod = %p.name_any(), error = %e, "ephemeral volume failed");
                ctx.backoff.failed(p.uid().unwrap_or_default())
            },
            ctx,
        );
    drive(results, "ephemeral-volume-controller").await;
    Ok(())
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Ctx>) -> Result<Action> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for vol in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let Some(template) = vol
            .ephemeral
            .as_ref()
            .and_then(|e| e.volume_claim_template.as_ref())
        else {
            continue;
        };
        let claim = format!("{}-{}", pod.name_any(), vol.name);
        if let Err(e) = handle_volume(&api, &pod, &claim, template).await {
            ctx.recorder
                .publish(
                    &*pod,
                    EventType::Warning,
                    "FailedBinding",
                    &format!("ephemeral volume {}: {e}", vol.name),
                )
                .await;
            return Err(e);
        }
    }
    ctx.backoff.succeeded(&pod.uid().unwrap_or_default());
    Ok(Action::await_change())
}

async fn handle_volume(
    api: &Api<PersistentVolumeClaim>,
    pod: &Pod,
    claim: &str,
    template: &k8s_openapi::api::core::v1::PersistentVolumeClaimTemplate,
) -> Result<()> {
    let not_ours = |pvc: &PersistentVolumeClaim| {
        let ours = pvc
            .owner_references()
            .iter()
            .any(|r| r.controller == Some(true) && Some(&r.uid) == pod.metadata.uid.as_ref());
        (!ours).then(|| {
            Error::Invalid(format!(
                "PVC {}/{} was not created for pod {}/{} (pod is not owner)",
                pvc.namespace().unwrap_or_default(),
                pvc.name_any(),
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            ))
        })
    };
    match api.get(claim).await {
        Ok(pvc) => return not_ours(&pvc).map_or(Ok(()), Err),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    let meta = template.metadata.clone().unwrap_or_default();
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim.to_owned()),
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Pod".to_owned(),
                name: pod.name_any(),
                uid: pod.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(template.spec.clone()),
        status: None,
    };
    match api.create(&PostParams::default(), &pvc).await {
        Ok(_) => Ok(()),
        // Created meanwhile (by us a moment ago, or by someone else).
        Err(e) if is_conflict(&e) => match api.get(claim).await {
            Ok(pvc) => not_ours(&pvc).map_or(Ok(()), Err),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(Error::Invalid(format!("create PVC {claim}: {e}"))),
    }
}
