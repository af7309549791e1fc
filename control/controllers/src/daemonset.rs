//! The DaemonSet controller: one pod on every node the pod template fits
//! (nodeSelector, required node affinity, taints against tolerations),
//! nodes that join later included, with RollingUpdate bounded by
//! `maxUnavailable`.
//!
//! Pods are pinned to their node as upstream pins them: the controller
//! replaces the pod's required node affinity with a `metadata.name` field
//! match and leaves binding to the scheduler, so that scheduling
//! (resources, ports) stays in one place.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use kestrel_api::labels::{self, NodeTerm};
use kube::ResourceExt as _;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::workload::pods::{
    create_pod, delete_pod, is_available, is_ready, phase, pod_from_template, slow_start,
};
use crate::workload::{
    Context, Result, controller_ref, drive, owned_pods, owning_pods, scaled_value, template_hash,
    write_status,
};

/// The label naming the template revision a daemon pod runs.
pub const REVISION_LABEL: &str = "controller-revision-hash";
const GENERATION_LABEL: &str = "pod-template-generation";

pub(crate) fn controller(ctx: Arc<Context>) -> BoxFuture<'static, ()> {
    let for_nodes = ctx.daemonsets.store().clone();
    let c = owning_pods(&ctx, &ctx.daemonsets, |ds: &DaemonSet| {
        Some(&ds.spec.selector)
    })
    // Any node change may change where every DaemonSet should run.
    .watches_shared_stream(ctx.nodes.subscribe(), move |_: Arc<Node>| {
        for_nodes
            .state()
            .iter()
            .map(|ds| ObjectRef::from_obj(&**ds))
            .collect::<Vec<_>>()
    });
    drive(c, ctx, |ds, ctx| async move { sync(&ds, &ctx).await })
}

/// Upstream's tolerations for daemon pods: they stay through node
/// conditions that evict or block other pods.
fn default_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut t = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        t.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    t.into_iter()
        .map(|(key, effect)| Toleration {
            key: Some(key.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some(effect.to_owned()),
            ..Default::default()
        })
        .collect()
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = t
        .key
        .as_deref()
        .is_none_or(|k| k.is_empty() || k == taint.key);
    let value_ok = match t.operator.as_deref() {
        Some("Exists") => true,
        _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    };
    // An empty key with Exists tolerates everything.
    effect_ok && key_ok && value_ok
}

/// Where a daemon pod belongs on `node`: (should run, may keep running).
fn placement(node: &Node, spec: &PodSpec) -> (bool, bool) {
    let labels = node.labels();
    let name = node.name_any();
    let selector_ok = spec
        .node_selector
        .as_ref()
        .is_none_or(|s| labels::set_matches(s, labels));
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.as_slice());
    // As upstream's nodeaffinity: a term that does not convert, or has no
    // requirements, selects no node.
    let affinity_ok = terms.is_none_or(|terms| {
        terms
            .iter()
            .any(|t| NodeTerm::new(t).unwrap_or_default().matches(labels, &name))
    });
    let fits = selector_ok && affinity_ok;
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(default_tolerations(spec));
    let untolerated = |effect: &str| {
        node.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.effect == effect)
            .any(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
    };
    let evicts = untolerated("NoExecute");
    let blocks = evicts || untolerated("NoSchedule");
    (fits && !blocks, fits && !evicts)
}

/// The node a daemon pod runs on, or is pinned to before binding.
fn node_of(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()?
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| pinned_node(p))
}

/// The node a pod's required node affinity pins it to by
/// `metadata.name`, as this controller pins daemon pods.
pub fn pinned_node(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// Pin `spec` to `node` (replacing any required node affinity: the
/// controller has already checked that the node satisfies it) and add the
/// daemon tolerations.
fn pin(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".to_owned(),
            operator: "In".to_owned(),
            values: Some(vec![node.to_owned()]),
        }]),
        ..Default::default()
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
    let defaults = default_tolerations(spec);
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in defaults {
        if !tolerations
            .iter()
            .any(|x| x.key == t.key && x.effect == t.effect)
        {
            tolerations.push(t);
        }
    }
}

async fn sync(ds: &DaemonSet, ctx: &Context) -> Result<Action> {
    let rec = &ctx.events.daemonset;
    let _ns = ds.namespace().unwrap_or_default();
    let _uid = ds.uid().unwrap_or_default();
    let deleting = ds.metadata.deletion_timestamp.is_some();
    let Some((satisfied, owned)) = owned_pods(ctx, rec, ds, &ds.spec.selector, |_| true).await?
    else {
        return Ok(Action::await_change());
    };
    let hash = template_hash(
        &ds.spec.template,
        ds.status.as_ref().and_then(|s| s.collision_count),
    );
    let template_spec = ds.spec.template.spec.clone().unwrap_or_default();
    let min_ready = ds.spec.min_ready_seconds.unwrap_or(0);

    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    let mut to_delete: Vec<Arc<Pod>> = Vec::new();
    for p in owned {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        // A failed daemon pod is replaced, as upstream does.
        if phase(&p) == "Failed" {
            to_delete.push(p);
            continue;
        }
        match node_of(&p) {
            Some(n) => by_node.entry(n).or_default().push(p),
            None => to_delete.push(p),
        }
    }
    let nodes = ctx.nodes.store().state();
    let mut to_create: Vec<String> = Vec::new();
    let (mut desired, mut current, mut misscheduled) = (0, 0, 0);
    let (mut ready, mut available, mut updated) = (0, 0, 0);
    // Per node that should run the daemon: whether its pod is available,
    // and its pod if that runs an old template.
    let mut old: Vec<(bool, Arc<Pod>)> = Vec::new();
    let mut unavailable_nodes = 0;
    for node in &nodes {
        let name = node.name_any();
        let (should_run, may_stay) = placement(node, &template_spec);
        let mut here = by_node.remove(&name).unwrap_or_default();
        here.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        });
        if should_run {
            desired += 1;
        } else if !here.is_empty() {
            misscheduled += 1;
        }
        if !may_stay {
            to_delete.append(&mut here);
            continue;
        }
        if here.len() > 1 {
            to_delete.extend(here.drain(1..));
        }
        match here.first() {
            None if should_run => {
                to_create.push(name);
                unavailable_nodes += 1;
            }
            None => {}
            Some(p) => {
                if !should_run {
                    continue;
                }
                current += 1;
                let up = is_available(p, min_ready);
                ready += i32::from(is_ready(p));
                available += i32::from(up);
                unavailable_nodes += usize::from(!up);
                if p.labels().get(REVISION_LABEL) == Some(&hash) {
                    updated += 1;
                } else {
                    old.push((up, p.clone()));
                }
            }
        }
    }
    // Pods on nodes that no longer exist.
    to_delete.extend(by_node.into_values().flatten());

    if satisfied && !deleting {
        let rolling = ds
            .spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .is_none_or(|t| t == "RollingUpdate");
        if rolling {
            let max_unavailable = scaled_value(
                ds.spec
                    .update_strategy
                    .as_ref()
                    .and_then(|s| s.rolling_update.as_ref())
                    .and_then(|r| r.max_unavailable.as_ref()),
                desired,
                true,
            )
            .unwrap_or(1)
            .max(1);
            // Old pods that are down anyway go first and cost nothing;
            // available ones only within the budget.
            let mut budget = usize::try_from(max_unavailable)
                .unwrap_or(1)
                .saturating_sub(unavailable_nodes);
            for (up, p) in old {
                if !up {
                    to_delete.push(p);
                } else if budget > 0 {
                    budget -= 1;
                    to_delete.push(p);
                }
            }
        }
        manage(ds, ctx, &hash, &to_create, &to_delete).await?;
    }

    let status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": available,
        "numberUnavailable": (desired - available).max(0),
        "updatedNumberScheduled": updated,
        "observedGeneration": ds.metadata.generation,
    });
    let old_status = ds.status.as_ref().map(|s| {
        json!({
            "desiredNumberScheduled": s.desired_number_scheduled,
            "currentNumberScheduled": s.current_number_scheduled,
            "numberMisscheduled": s.number_misscheduled,
            "numberReady": s.number_ready,
            "numberAvailable": s.number_available.unwrap_or(0),
            "numberUnavailable": s.number_unavailable.unwrap_or(0),
            "updatedNumberScheduled": s.updated_number_scheduled.unwrap_or(0),
            "observedGeneration": s.observed_generation,
        })
    });
    if old_status.as_ref() != Some(&status) {
        write_status(ctx, ds, status).await?;
    }
    Ok(Action::await_change())
}

async fn manage(
    ds: &DaemonSet,
    ctx: &Context,
    hash: &str,
    to_create: &[String],
    to_delete: &[Arc<Pod>],
) -> Result<()> {
    let rec = &ctx.events.daemonset;
    let deletes =
        futures::future::join_all(to_delete.iter().map(|p| delete_pod(ctx, rec, ds, p))).await;
    deletes.into_iter().collect::<Result<Vec<_>>>()?;
    let ns = ds.namespace().unwrap_or_default();
    let owner = controller_ref(ds)?;
    let labels = BTreeMap::from([
        (REVISION_LABEL.to_owned(), hash.to_owned()),
        (
            GENERATION_LABEL.to_owned(),
            ds.metadata.generation.unwrap_or(0).to_string(),
        ),
    ]);
    let generate = format!("{}-", ds.name_any());
    let (_, err) = slow_start(to_create.len(), |i| {
        let mut pod = pod_from_template(
            &ds.spec.template,
            owner.clone(),
            &ns,
            None,
            Some(generate.clone()),
            &labels,
        );
        pin(pod.spec.get_or_insert_with(PodSpec::default), &to_create[i]);
        async move { create_pod(ctx, rec, ds, pod).await.map(|_| ()) }
    })
    .await;
    err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn node(labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Default::default()
        }
    }

    #[test]
    fn placement_follows_selectors_affinity_and_taints() {
        let mut spec = PodSpec::default();
        assert_eq!(placement(&node(&[], vec![]), &spec), (true, true));
        spec.node_selector = Some(BTreeMap::from([("disk".into(), "ssd".into())]));
        assert_eq!(placement(&node(&[], vec![]), &spec), (false, false));
        assert_eq!(
            placement(&node(&[("disk", "ssd")], vec![]), &spec),
            (true, true)
        );
        // A NoSchedule taint keeps new pods off but lets a running one stay;
        // NoExecute does neither.
        let n = node(&[("disk", "ssd")], vec![taint("dedicated", "NoSchedule")]);
        assert_eq!(placement(&n, &spec), (false, true));
        let n = node(&[("disk", "ssd")], vec![taint("dedicated", "NoExecute")]);
        assert_eq!(placement(&n, &spec), (false, false));
        // Daemon pods tolerate a not-ready node by default.
        let n = node(
            &[("disk", "ssd")],
            vec![taint("node.kubernetes.io/not-ready", "NoExecute")],
        );
        assert_eq!(placement(&n, &spec), (true, true));
    }

    #[test]
    fn required_affinity_as_upstream() {
        let with = |term: serde_json::Value| -> PodSpec {
            serde_json::from_value(json!({"containers": [], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}}))
            .expect("spec")
        };
        let n = node(&[("gen", "5")], vec![]);
        let gt = |v: &str| json!({"matchExpressions": [{"key": "gen", "operator": "Gt", "values": [v]}]});
        assert_eq!(placement(&n, &with(gt("4"))), (true, true));
        assert_eq!(placement(&n, &with(gt("5"))), (false, false));
        // A term with no requirements, or one that does not convert,
        // selects no node.
        assert_eq!(placement(&n, &with(json!({}))), (false, false));
        assert_eq!(placement(&n, &with(gt("x"))), (false, false));
    }

    #[test]
    fn a_pinned_pod_fits_only_its_node() {
        let mut spec = PodSpec::default();
        pin(&mut spec, "n1");
        let n = node(&[], vec![]);
        assert_eq!(placement(&n, &spec), (true, true));
        let mut other = n.clone();
        other.metadata.name = Some("n2".into());
        assert_eq!(placement(&other, &spec), (false, false));
        assert!(
            spec.tolerations
                .iter()
                .flatten()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable"))
        );
    }
}
