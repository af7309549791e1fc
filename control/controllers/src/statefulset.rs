//! The StatefulSet controller: pods with stable names `<set>-0` to
//! `<set>-(N-1)`, created in order and each only once the one before is
//! Running and Ready (OrderedReady) or all at once (Parallel), removed from
//! the highest ordinal down, and rolled to a new template from the highest
//! ordinal down to `partition`.
//!
//! Kestrel has no storage yet, so a StatefulSet with volumeClaimTemplates
//! is refused: a Warning Event and a status condition say so, and no pod is
//! created. Kestrel has no ControllerRevision objects yet either: a
//! revision is `<set>-<template hash>`, and a pod below the partition that
//! has to be recreated comes back on the update revision.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetCondition};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kestrel_client::events::EventType;
use kube::ResourceExt as _;
use kube::runtime::controller::Action;
use serde_json::json;

use crate::workload::pods::{
    create_pod, delete_pod, is_available, is_ready, is_terminal, phase, pod_from_template,
};
use crate::workload::{
    Context, Result, controller_ref, drive, now, owned_pods, owning_pods, template_hash,
    write_status,
};

/// The label naming the revision a pod was created from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// The condition (and Event reason) that refuses volumeClaimTemplates.
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
    let _uid = set.uid().unwrap_or_default();
    if set
        .spec
        .volume_claim_templates
        .as_ref()
        .is_some_and(|v| !v.is_empty())
    {
        return refuse_volume_claims(set, ctx).await;
    }
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
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.hostname = Some(name);
    if let Some(svc) = set.spec.service_name.as_ref().filter(|s| !s.is_empty()) {
        spec.subdomain = Some(svc.clone());
    }
    match create_pod(ctx, &ctx.events.statefulset, set, pod).await {
        Ok(_) => Ok(()),
        // Our store is behind: the pod is there already.
        Err(crate::workload::Error::Kube(kube::Error::Api(s))) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// volumeClaimTemplates need storage, which Kestrel does not have yet: say
/// so where a user looks, and create nothing.
async fn refuse_volume_claims(set: &StatefulSet, ctx: &Context) -> Result<Action> {
    let message = "spec.volumeClaimTemplates is not supported yet: Kestrel has no persistent \
                   volumes, so no pods are created; remove volumeClaimTemplates (and use \
                   emptyDir or hostPath volumes) to run this StatefulSet";
    let status = set.status.clone().unwrap_or_default();
    let mut conditions: Vec<StatefulSetCondition> = status.conditions.clone().unwrap_or_default();
    if !conditions
        .iter()
        .any(|c| c.type_.as_deref() == Some(UNSUPPORTED))
    {
        ctx.events
            .statefulset
            .publish(set, EventType::Warning, UNSUPPORTED, message)
            .await;
        conditions.push(StatefulSetCondition {
            type_: Some(UNSUPPORTED.to_owned()),
            status: Some("True".to_owned()),
            reason: Some(UNSUPPORTED.to_owned()),
            message: Some(message.to_owned()),
            last_transition_time: Some(now()),
        });
    }
    let new = json!({
        "replicas": status.replicas,
        "observedGeneration": set.metadata.generation,
        "conditions": conditions,
    });
    update_status(set, ctx, new).await?;
    Ok(Action::await_change())
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
