//! The ReplicaSet controller: keeps `spec.replicas` pods matching the
//! selector alive, adopting orphans it selects and releasing pods it no
//! longer selects, and reports how many are ready and available. The
//! ReplicationController controller runs the same sync on a ReplicaSet
//! view of each ReplicationController (`replicationcontroller.rs`), as
//! upstream does.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kestrel_api::labels;
use kestrel_client::events::Recorder;
use kube::Resource;
use kube::ResourceExt as _;
use kube::runtime::controller::Action;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::workload::pods::{
    create_pod, delete_pod, is_active, is_available, is_ready, pod_from_template, slow_start,
    sort_for_deletion, until_available,
};
use crate::workload::{
    Context, Error, Result, controller_ref, drive, owned_pods, owning_pods, write_status,
};

/// At most this many pods are created or deleted in one reconcile, as
/// upstream's burstReplicas.
const BURST: usize = 500;

/// The controller, ready to be polled. Subscribes to the informers now, so
/// build it before they start.
pub(crate) fn controller(ctx: Arc<Context>) -> BoxFuture<'static, ()> {
    let c = owning_pods(&ctx, &ctx.replicasets, |rs: &ReplicaSet| {
        Some(&rs.spec.selector)
    });
    drive(c, ctx, |rs, ctx| async move {
        sync(&*rs, &rs, &ctx.events.replicaset, &ctx).await
    })
}

/// Sync `owner` (a ReplicaSet, or a ReplicationController) whose spec and
/// status `rs` holds: pods are owned by, events are about, and status is
/// written to `owner`.
pub(crate) async fn sync<K>(
    owner: &K,
    rs: &ReplicaSet,
    rec: &Recorder,
    ctx: &Context,
) -> Result<Action>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let spec = &rs.spec;
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let Some((satisfied, mut active)) =
        owned_pods(ctx, rec, owner, &spec.selector, is_active).await?
    else {
        return Ok(Action::await_change());
    };

    let managed = if satisfied && !deleting {
        manage(owner, rs, rec, ctx, &mut active).await
    } else {
        Ok(())
    };
    update_status(owner, rs, ctx, &active, managed.as_ref().err()).await?;
    managed?;

    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let next = active
        .iter()
        .filter_map(|p| until_available(p, min_ready))
        .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.min(s))));
    Ok(match next {
        Some(s) => Action::requeue(Duration::from_secs_f64(s + 0.05)),
        None => Action::await_change(),
    })
}

/// Create or delete pods so that `replicas` are active.
async fn manage<K>(
    owner: &K,
    rs: &ReplicaSet,
    rec: &Recorder,
    ctx: &Context,
    active: &mut [Arc<Pod>],
) -> Result<()>
where
    K: Resource<DynamicType = ()>,
{
    let ns = rs.namespace().unwrap_or_default();
    let want = usize::try_from(rs.spec.replicas.unwrap_or(1)).unwrap_or(0);
    if active.len() < want {
        let Some(template) = rs.spec.template.as_ref() else {
            return Err(Error::Invalid("spec.template is missing".to_owned()));
        };
        let owner_ref = controller_ref(owner)?;
        let n = (want - active.len()).min(BURST);
        let generate = format!("{}-", rs.name_any());
        let none = BTreeMap::new();
        let (_, err) = slow_start(n, |_| {
            let pod = pod_from_template(
                template,
                owner_ref.clone(),
                &ns,
                None,
                Some(generate.clone()),
                &none,
            );
            async move { create_pod(ctx, rec, owner, pod).await.map(|_| ()) }
        })
        .await;
        if let Some(e) = err {
            return Err(e);
        }
    } else if active.len() > want {
        sort_for_deletion(active);
        let n = (active.len() - want).min(BURST);
        let results =
            futures::future::join_all(active[..n].iter().map(|p| delete_pod(ctx, rec, owner, p)))
                .await;
        results.into_iter().collect::<Result<Vec<_>>>()?;
    }
    Ok(())
}

async fn update_status<K>(
    owner: &K,
    rs: &ReplicaSet,
    ctx: &Context,
    active: &[Arc<Pod>],
    failure: Option<&Error>,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
    let template_labels = rs
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| labels::set_matches(&template_labels, p.labels()))
        .count();
    let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count();
    let old = rs.status.clone().unwrap_or_default();
    let mut conditions: Vec<_> = old
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_.as_deref() != Some("ReplicaFailure"))
        .collect();
    if let Some(e) = failure {
        let prior = old
            .conditions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|c| c.type_.as_deref() == Some("ReplicaFailure"))
            .cloned();
        conditions.push(k8s_openapi::api::apps::v1::ReplicaSetCondition {
            type_: Some("ReplicaFailure".into()),
            status: Some("True".into()),
            reason: Some("FailedCreate".into()),
            message: Some(e.to_string()),
            last_transition_time: prior
                .and_then(|c| c.last_transition_time)
                .or_else(|| Some(crate::workload::now())),
        });
    }
    let new = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": count(&is_ready),
        "availableReplicas": count(&|p| is_available(p, min_ready)),
        "observedGeneration": rs.metadata.generation,
        "conditions": if conditions.is_empty() { None } else { Some(conditions) },
    });
    let old_json = json!({
        "replicas": old.replicas,
        "fullyLabeledReplicas": old.fully_labeled_replicas.unwrap_or(0),
        "readyReplicas": old.ready_replicas.unwrap_or(0),
        "availableReplicas": old.available_replicas.unwrap_or(0),
        "observedGeneration": old.observed_generation,
        "conditions": old.conditions,
    });
    if new == old_json {
        return Ok(());
    }
    write_status(ctx, owner, new).await
}
