//! The StatefulSet controller: pods with stable names `<set>-0` to
//! `<set>-(N-1)`, created in order and each only once the one before is
//! Running and Ready (OrderedReady) or all at once (Parallel), removed from
//! the highest ordinal down, and rolled to a new template from the highest
//! ordinal down to `partition`.
//!
//! Each member gets a claim per volumeClaimTemplate,
//! `<template>-<set>-<ordinal>`, created before the pod and mounted under
//! the template's name; claims outlive their pods unless
//! `persistentVolumeClaimRetentionPolicy` says Delete, which makes the set
//! (whenDeleted) or the scaled-down pod (whenScaled) their owner, for the
//! garbage collector. Kestrel has no ControllerRevision objects yet: a
//! revision is `<set>-<template hash>`, and a pod below the partition that
//! has to be recreated comes back on the update revision.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kestrel_client::events::EventType;
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;

use crate::workload::pods::{
    create_pod, delete_pod, is_available, is_ready, is_terminal, phase, pod_from_template,
};
use crate::workload::{
    Context, Error, Result, controller_ref, drive, owned_pods, owning_pods, template_hash,
    write_status,
};

/// The label naming the revision a pod was created from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// The condition earlier versions set to refuse volumeClaimTemplates;
/// cleared from status now that they are supported.
const UNSUPPORTED: &str = "VolumeClaimTemplatesUnsupported";

pub(crate) fn controller(ctx: Arc<Context>) -> BoxFuture<'static, ()> {
    let c = owning_pods(&ctx, &ctx.statefulsets, |s: &StatefulSet| {
        Some(&s.spec.selector)
    });
    drive(c, ctx, |set, ctx| async move { sync(&set, &ctx).await })
}

/// The ordinal in a member's name, `<set>-<ordinal>`.
fn ordinal(set: &str, pod: &str) -> Option<i32> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok().filter(|n| *n >= 0)
}

fn running_and_ready(p: &Pod) -> bool {
    phase(p) == "Running" && is_ready(p) && p.metadata.deletion_timestamp.is_none()
}

fn revision_of(p: &Pod) -> Option<&String> {
    p.labels().get(REVISION_LABEL)
}

async fn sync(set: &StatefulSet, ctx: &Context) -> Result<Action> {
    let rec = &ctx.events.statefulset;
    let _ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let deleting = set.metadata.deletion_timestamp.is_some();
    let Some((satisfied, owned)) = owned_pods(ctx, rec, set, &set.spec.selector, |_| true).await?
    else {
        return Ok(Action::await_change());
    };
    let status = set.status.clone().unwrap_or_default();
    let update_revision = format!(
        "{name}-{}",
        template_hash(&set.spec.template, status.collision_count)
    );
    let mut current_revision = status
        .current_revision
        .clone()
        .unwrap_or_else(|| update_revision.clone());
    let want = set.spec.replicas.unwrap_or(1).max(0);
    let mut members: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
    for p in owned {
        if let Some(o) = ordinal(&name, &p.name_any()) {
            members.insert(o, p);
        }
    }

    if satisfied && !deleting {
        // Claims of members about to go get their owners first.
        update_claim_owners(set, ctx, &members, want).await?;
        step(set, ctx, &members, want, &update_revision).await?;
    }

    let min_ready = set.spec.min_ready_seconds.unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(members.values().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let replicas = count(&|p| p.metadata.deletion_timestamp.is_none());
    let ready = count(&|p| is_ready(p) && p.metadata.deletion_timestamp.is_none());
    let updated = count(&|p| revision_of(p) == Some(&update_revision));
    // A finished rollout makes the update revision current.
    if updated == want && ready == want && replicas == want {
        current_revision = update_revision.clone();
    }
    let current = count(&|p| revision_of(p) == Some(&current_revision));
    let new = json!({
        "replicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": count(&|p| is_available(p, min_ready) && p.metadata.deletion_timestamp.is_none()),
        "currentReplicas": current,
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": update_revision,
        "observedGeneration": set.metadata.generation,
        "conditions": status.conditions.clone().map(|cs| cs.into_iter().filter(|c| c.type_.as_deref() != Some(UNSUPPORTED)).collect::<Vec<_>>()),
    });
    update_status(set, ctx, new).await?;
    Ok(Action::await_change())
}

/// One step toward the spec: create, replace, remove or update at most
/// what the pod management policy allows now.
async fn step(
    set: &StatefulSet,
    ctx: &Context,
    members: &BTreeMap<i32, Arc<Pod>>,
    want: i32,
    update_revision: &str,
) -> Result<()> {
    let rec = &ctx.events.statefulset;
    let ordered = set.spec.pod_management_policy.as_deref() != Some("Parallel");
    for ord in 0..want {
        match members.get(&ord) {
            None => {
                create_member(set, ctx, ord, update_revision).await?;
                if ordered {
                    return Ok(());
                }
            }
            // A member that stopped for good is replaced under its name.
            Some(p) if is_terminal(p) && p.metadata.deletion_timestamp.is_none() => {
                delete_pod(ctx, rec, set, p).await?;
                if ordered {
                    return Ok(());
                }
            }
            Some(p) if ordered && !running_and_ready(p) => return Ok(()),
            Some(_) => {}
        }
    }
    let healthy = (0..want).all(|o| members.get(&o).is_some_and(|p| running_and_ready(p)));
    // Scale down from the highest ordinal.
    for (_, p) in members.range(want..).rev() {
        if p.metadata.deletion_timestamp.is_some() {
            if ordered {
                return Ok(());
            }
            continue;
        }
        if ordered && !healthy {
            return Ok(());
        }
        delete_pod(ctx, rec, set, p).await?;
        if ordered {
            return Ok(());
        }
    }
    let strategy = set.spec.update_strategy.as_ref();
    if strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete") {
        return Ok(());
    }
    let partition = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);
    // Update from the highest ordinal down to the partition, one pod at a
    // time, and only while every member is Running and Ready.
    for ord in (partition..want).rev() {
        let Some(p) = members.get(&ord) else {
            return Ok(());
        };
        if revision_of(p).map(String::as_str) != Some(update_revision) {
            if healthy {
                delete_pod(ctx, rec, set, p).await?;
            }
            return Ok(());
        }
        if !running_and_ready(p) {
            return Ok(());
        }
    }
    Ok(())
}

async fn create_member(set: &StatefulSet, ctx: &Context, ord: i32, revision: &str) -> Result<()> {
    let name = format!("{}-{ord}", set.name_any());
    let labels = BTreeMap::from([
        (REVISION_LABEL.to_owned(), revision.to_owned()),
        (POD_NAME_LABEL.to_owned(), name.clone()),
        (POD_INDEX_LABEL.to_owned(), ord.to_string()),
    ]);
    let mut pod = pod_from_template(
        &set.spec.template,
        controller_ref(set)?,
        &set.namespace().unwrap_or_default(),
        Some(name.clone()),
        None,
        &labels,
    );
    // The member's claims come first, as upstream's CreateStatefulPod.
    let claims = claims_for(set, ord);
    create_claims(set, ctx, &name, &claims).await?;
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.hostname = Some(name);
    if let Some(svc) = set.spec.service_name.as_ref().filter(|s| !s.is_empty()) {
        spec.subdomain = Some(svc.clone());
    }
    // A volume per template, in place of any of the same name.
    let mut volumes: Vec<Volume> = claims
        .iter()
        .map(|(template, claim)| Volume {
            name: template.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.name_any(),
                read_only: Some(false),
            }),
            ..Volume::default()
        })
        .collect();
    if !claims.is_empty() {
        for v in spec.volumes.take().unwrap_or_default() {
            if !claims.iter().any(|(t, _)| *t == v.name) {
                volumes.push(v);
            }
        }
        spec.volumes = Some(volumes);
    }
    match create_pod(ctx, &ctx.events.statefulset, set, pod).await {
        Ok(_) => Ok(()),
        // Our store is behind: the pod is there already.
        Err(crate::workload::Error::Kube(kube::Error::Api(s))) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The claims of member `ord`, by template name: each template named
/// `<template>-<set>-<ordinal>`, with the set's selector labels added.
fn claims_for(set: &StatefulSet, ord: i32) -> Vec<(String, PersistentVolumeClaim)> {
    let selector = set.spec.selector.match_labels.clone().unwrap_or_default();
    set.spec
        .volume_claim_templates
        .iter()
        .flatten()
        .map(|t| {
            let template = t.name_any();
            let mut claim = t.clone();
            claim.metadata.name = Some(format!("{template}-{}-{ord}", set.name_any()));
            claim.metadata.namespace = set.namespace();
            let labels = claim.metadata.labels.get_or_insert_with(BTreeMap::new);
            labels.extend(selector.clone());
            claim.metadata.uid = None;
            claim.metadata.resource_version = None;
            claim.metadata.creation_timestamp = None;
            claim.metadata.managed_fields = None;
            claim.status = None;
            (template, claim)
        })
        .collect()
}

/// `(whenDeleted, whenScaled)`, each Retain unless it says Delete.
fn retention(set: &StatefulSet) -> (bool, bool) {
    let p = set.spec.persistent_volume_claim_retention_policy.as_ref();
    let delete = |v: Option<&String>| v.map(String::as_str) == Some("Delete");
    (
        delete(p.and_then(|p| p.when_deleted.as_ref())),
        delete(p.and_then(|p| p.when_scaled.as_ref())),
    )
}

fn owner_ref(api_version: &str, kind: &str, name: String, uid: Option<String>) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name,
        uid: uid.unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    }
}

fn set_ref(set: &StatefulSet) -> OwnerReference {
    owner_ref("apps/v1", "StatefulSet", set.name_any(), set.uid())
}

/// Create the member's claims that do not exist yet, with the set as owner
/// when whenDeleted is Delete. A claim being deleted holds the pod back.
async fn create_claims(
    set: &StatefulSet,
    ctx: &Context,
    pod: &str,
    claims: &[(String, PersistentVolumeClaim)],
) -> Result<()> {
    let rec = &ctx.events.statefulset;
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    let (when_deleted, _) = retention(set);
    let mut errors = Vec::new();
    for (_, claim) in claims {
        let name = claim.name_any();
        // (what failed, the error), reported once below.
        let failed = match api.get(&name).await {
            Ok(existing) => {
                if existing.metadata.deletion_timestamp.is_some() {
                    errors.push(format!("pvc {name} is being deleted"));
                }
                continue;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let mut claim = claim.clone();
                if when_deleted {
                    claim.metadata.owner_references = Some(vec![set_ref(set)]);
                }
                match api.create(&PostParams::default(), &claim).await {
                    Ok(_) => {
                        let message = format!(
                            "create Claim {name} Pod {pod} in StatefulSet {} success",
                            set.name_any()
                        );
                        rec.publish(set, EventType::Normal, "SuccessfulCreate", &message)
                            .await;
                        continue;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => ("create", e),
                }
            }
            Err(e) => ("retrieve", e),
        };
        let (what, e) = failed;
        let message = format!(
            "create Claim {name} for Pod {pod} in StatefulSet {} failed error: {e}",
            set.name_any()
        );
        rec.publish(set, EventType::Warning, "FailedCreate", &message)
            .await;
        errors.push(format!("failed to {what} PVC {name}: {e}"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(errors.join(", ")))
    }
}

/// Give every member's claims the owners the retention policy asks for
/// (upstream's `updateClaimOwnerRefForSetAndPod`): the set while the
/// member is in range and whenDeleted is Delete, the pod once it is
/// scaled away and whenScaled is Delete.
async fn update_claim_owners(
    set: &StatefulSet,
    ctx: &Context,
    members: &BTreeMap<i32, Arc<Pod>>,
    want: i32,
) -> Result<()> {
    let (when_deleted, when_scaled) = retention(set);
    if !when_deleted && !when_scaled {
        return Ok(());
    }
    if set
        .spec
        .volume_claim_templates
        .as_ref()
        .is_none_or(Vec::is_empty)
    {
        return Ok(());
    }
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    let set_uid = set.uid().unwrap_or_default();
    for (ord, pod) in members {
        let pod_uid = pod.uid().unwrap_or_default();
        let scaled_down = *ord >= want;
        let (own_set, own_pod) = match (when_deleted, when_scaled) {
            (true, false) => (true, false),
            (false, true) => (false, scaled_down),
            _ => (!scaled_down, scaled_down),
        };
        for (_, claim) in claims_for(set, *ord) {
            let existing = match api.get(&claim.name_any()).await {
                Ok(c) => c,
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(e) => return Err(e.into()),
            };
            let old = existing
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default();
            let mut refs: Vec<OwnerReference> = old
                .iter()
                .filter(|r| {
                    !((r.kind == "StatefulSet" && r.uid == set_uid && !own_set)
                        || (r.kind == "Pod" && r.uid == pod_uid && !own_pod))
                })
                .cloned()
                .collect();
            if own_set && !refs.iter().any(|r| r.uid == set_uid) {
                refs.push(set_ref(set));
            }
            if own_pod && !refs.iter().any(|r| r.uid == pod_uid) {
                refs.push(owner_ref("v1", "Pod", pod.name_any(), pod.uid()));
            }
            if refs == old {
                continue;
            }
            let patch = serde_json::json!({"metadata": {
                "resourceVersion": existing.resource_version(),
                "ownerReferences": refs,
            }});
            api.patch(
                &claim.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        }
    }
    Ok(())
}

/// Write `new` unless the status already says it.
async fn update_status(set: &StatefulSet, ctx: &Context, new: serde_json::Value) -> Result<()> {
    let old = serde_json::to_value(set.status.clone().unwrap_or_default()).unwrap_or_default();
    let unchanged = new
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| old.get(k).unwrap_or(&serde_json::Value::Null) == v);
    if unchanged {
        return Ok(());
    }
    write_status(ctx, set, new).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_the_name() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-01"), None);
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(ordinal("web", "webby-1"), None);
        assert_eq!(ordinal("web", "web-"), None);
    }
}
