//! The per-node plugins: cordoning, taints, node affinity, host ports and
//! resources. None needs to look beyond the node in question.

use k8s_openapi::api::core::v1::Taint;

use super::{
    CycleState, Filter, Reason, Score, node_affinity_matches, normalize, term_matches, tolerates,
    untolerated_taint,
};
use crate::cache::{Cache, NodeInfo};
use crate::pod_info::PodInfo;

/// A cordoned node (spec.unschedulable) takes only pods that tolerate
/// `node.kubernetes.io/unschedulable:NoSchedule`.
#[derive(Debug, Clone, Copy)]
pub struct NodeUnschedulable;

impl Filter for NodeUnschedulable {
    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Vec<Reason>> {
        if !node.unschedulable {
            return Ok(());
        }
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if pod.tolerations.iter().any(|t| tolerates(t, &taint)) {
            Ok(())
        } else {
            Err(vec![Reason::Static("node(s) were unschedulable")])
        }
    }
}

/// NoSchedule and NoExecute taints must be tolerated; untolerated
/// PreferNoSchedule taints lower the score.
#[derive(Debug, Clone, Copy)]
pub struct TaintToleration;

impl Filter for TaintToleration {
    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Vec<Reason>> {
        match untolerated_taint(pod, node) {
            None => Ok(()),
            Some(t) => Err(vec![Reason::Owned(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            ))]),
        }
    }
}

impl Score for TaintToleration {
    fn weight(&self) -> i64 {
        3
    }

    fn score(&self, pod: &PodInfo, nodes: &[&NodeInfo], _: &Cache, out: &mut [i64]) -> bool {
        let mut any = false;
        for (o, n) in out.iter_mut().zip(nodes) {
            *o = n
                .taints
                .iter()
                .filter(|taint| {
                    taint.effect == "PreferNoSchedule"
                        && !pod.tolerations.iter().any(|t| {
                            matches!(t.effect.as_deref(), None | Some("" | "PreferNoSchedule"))
                                && tolerates(t, taint)
                        })
                })
                .count() as i64;
            any |= *o > 0;
        }
        normalize(out, true);
        any
    }
}

/// nodeSelector and required node affinity filter; preferred node
/// affinity scores.
#[derive(Debug, Clone, Copy)]
pub struct NodeAffinity;

impl Filter for NodeAffinity {
    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Vec<Reason>> {
        if node_affinity_matches(pod, node) {
            Ok(())
        } else {
            Err(vec![Reason::Static(
                "node(s) didn't match Pod's node affinity/selector",
            )])
        }
    }
}

impl Score for NodeAffinity {
    fn weight(&self) -> i64 {
        2
    }

    fn score(&self, pod: &PodInfo, nodes: &[&NodeInfo], _: &Cache, out: &mut [i64]) -> bool {
        if pod.preferred_node_affinity.is_empty() {
            return false;
        }
        for (o, n) in out.iter_mut().zip(nodes) {
            *o = pod
                .preferred_node_affinity
                .iter()
                .filter(|p| term_matches(&p.term, n))
                .map(|p| p.weight)
                .sum();
        }
        normalize(out, false);
        true
    }
}

/// A host port can be taken once per node (per address and protocol).
#[derive(Debug, Clone, Copy)]
pub struct NodePorts;

impl Filter for NodePorts {
    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Vec<Reason>> {
        let clash = pod
            .host_ports
            .iter()
            .any(|w| node.used_ports.iter().any(|u| u.conflicts(w)));
        if clash {
            Err(vec![Reason::Static(
                "node(s) didn't have free ports for the requested pod ports",
            )])
        } else {
            Ok(())
        }
    }
}

/// Requests must fit in allocatable minus what the node's pods (observed
/// and assumed) already request.
#[derive(Debug, Clone, Copy)]
pub struct NodeResourcesFit;

impl Filter for NodeResourcesFit {
    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Vec<Reason>> {
        let (a, used, want) = (&node.allocatable, &node.requested, &pod.requests);
        let mut reasons = Vec::new();
        if used.pods + 1 > a.pods {
            reasons.push(Reason::Static("Too many pods"));
        }
        let short = |want: i64, used: i64, alloc: i64| want > 0 && want > alloc - used;
        if short(want.milli_cpu, used.milli_cpu, a.milli_cpu) {
            reasons.push(Reason::Static("Insufficient cpu"));
        }
        if short(want.memory, used.memory, a.memory) {
            reasons.push(Reason::Static("Insufficient memory"));
        }
        if short(
            want.ephemeral_storage,
            used.ephemeral_storage,
            a.ephemeral_storage,
        ) {
            reasons.push(Reason::Static("Insufficient ephemeral-storage"));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

/// Share of `alloc` left free after `used`, 0..=100.
fn free_share(used: i64, alloc: i64) -> i64 {
    if alloc <= 0 || used > alloc {
        0
    } else {
        (alloc - used) * 100 / alloc
    }
}

/// Prefers nodes with the most CPU and memory left (upstream's
/// LeastAllocated strategy, equal weights), counting non-zero requests.
#[derive(Debug, Clone, Copy)]
pub struct LeastAllocated;

impl Score for LeastAllocated {
    fn weight(&self) -> i64 {
        1
    }

    fn score(&self, pod: &PodInfo, nodes: &[&NodeInfo], _: &Cache, out: &mut [i64]) -> bool {
        for (o, n) in out.iter_mut().zip(nodes) {
            let cpu = free_share(
                n.non_zero_requested.milli_cpu + pod.non_zero.milli_cpu,
                n.allocatable.milli_cpu,
            );
            let mem = free_share(
                n.non_zero_requested.memory + pod.non_zero.memory,
                n.allocatable.memory,
            );
            *o = (cpu + mem) / 2;
        }
        true
    }
}

/// Prefers nodes whose CPU and memory would be used in equal shares.
#[derive(Debug, Clone, Copy)]
pub struct BalancedAllocation;

impl Score for BalancedAllocation {
    fn weight(&self) -> i64 {
        1
    }

    fn score(&self, pod: &PodInfo, nodes: &[&NodeInfo], _: &Cache, out: &mut [i64]) -> bool {
        let frac = |used: i64, alloc: i64| -> Option<f64> {
            (alloc > 0).then(|| (used as f64 / alloc as f64).min(1.0))
        };
        for (o, n) in out.iter_mut().zip(nodes) {
            let cpu = frac(
                n.requested.milli_cpu + pod.requests.milli_cpu,
                n.allocatable.milli_cpu,
            );
            let mem = frac(
                n.requested.memory + pod.requests.memory,
                n.allocatable.memory,
            );
            // With two resources the standard deviation is half the gap.
            let std = match (cpu, mem) {
                (Some(c), Some(m)) => (c - m).abs() / 2.0,
                _ => 0.0,
            };
            *o = ((1.0 - std) * 100.0) as i64;
        }
        true
    }
}
