//! The ReplicationController controller. As upstream, it is the
//! ReplicaSet controller run on a ReplicaSet view of each
//! ReplicationController: the map selector becomes `matchLabels`, and
//! pods, events and status belong to the ReplicationController itself.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{
    ReplicaSet, ReplicaSetCondition, ReplicaSetSpec, ReplicaSetStatus,
};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kestrel_api::labels;
use kube::ResourceExt as _;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;

use crate::workload::{Context, controller_of, drive};

/// The controller, ready to be polled. Subscribes to the informers now, so
/// build it before they start.
pub(crate) fn controller(ctx: Arc<Context>) -> BoxFuture<'static, ()> {
    let owners = ctx.replicationcontrollers.store().clone();
    let c = Controller::for_shared_stream(ctx.replicationcontrollers.subscribe(), owners.clone())
        .watches_shared_stream(ctx.pods.subscribe(), move |pod: Arc<Pod>| {
            owners_of(&pod, &owners.state())
        });
    drive(c, ctx, |rc, ctx| async move {
        crate::replicaset::sync(
            &*rc,
            &as_replica_set(&rc),
            &ctx.events.replicationcontroller,
            &ctx,
        )
        .await
    })
}

/// The ReplicationControllers that should look at `pod`: its controller,
/// or, for an orphan, those whose selector picks it.
fn owners_of(
    pod: &Pod,
    all: &[Arc<ReplicationController>],
) -> Vec<ObjectRef<ReplicationController>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(r) = controller_of(pod) {
        return if r.kind == "ReplicationController" && r.api_version == "v1" {
            vec![ObjectRef::new(&r.name).within(&ns)]
        } else {
            Vec::new()
        };
    }
    all.iter()
        .filter(|rc| rc.namespace().as_deref() == Some(ns.as_str()))
        .filter(|rc| {
            let sel = rc.spec.as_ref().and_then(|s| s.selector.as_ref());
            sel.is_some_and(|s| !s.is_empty() && labels::set_matches(s, pod.labels()))
        })
        .map(|rc| ObjectRef::from_obj(&**rc))
        .collect()
}

/// `rc` as the ReplicaSet the shared sync reads.
fn as_replica_set(rc: &ReplicationController) -> ReplicaSet {
    let spec = rc.spec.clone().unwrap_or_default();
    let status = rc.status.clone().unwrap_or_default();
    ReplicaSet {
        metadata: rc.metadata.clone(),
        spec: ReplicaSetSpec {
            replicas: spec.replicas,
            min_ready_seconds: spec.min_ready_seconds,
            selector: LabelSelector {
                match_labels: spec.selector,
                match_expressions: None,
            },
            template: spec.template,
        },
        status: Some(ReplicaSetStatus {
            replicas: status.replicas,
            fully_labeled_replicas: status.fully_labeled_replicas,
            ready_replicas: status.ready_replicas,
            available_replicas: status.available_replicas,
            observed_generation: status.observed_generation,
            conditions: status.conditions.map(|cs| {
                cs.into_iter()
                    .map(|c| ReplicaSetCondition {
                        type_: Some(c.type_),
                        status: Some(c.status),
                        reason: c.reason,
                        message: c.message,
                        last_transition_time: c.last_transition_time,
                    })
                    .collect()
            }),
            terminating_replicas: None,
        }),
    }
}
