//! topologySpreadConstraints: DoNotSchedule constraints filter,
//! ScheduleAnyway constraints score.
//!
//! Matching pods are counted per domain over the eligible nodes: those
//! that carry every constraint's topology key and, per the constraint's
//! policies, pass the pod's node affinity (Honor by default) and taints
//! (Ignore by default). A node may take the pod while its domain's count
//! plus one (if the pod matches its own selector) exceeds the least
//! loaded domain's by at most maxSkew. With fewer domains than minDomains
//! the least count is taken as 0.

use std::collections::HashMap;

use super::{CycleState, Filter, Reason, Score, node_affinity_matches, untolerated_taint};
use crate::cache::{Cache, NodeInfo};
use crate::pod_info::{PodInfo, SpreadConstraint};

#[derive(Debug)]
struct Counted {
    /// Index into the pod's `spread`.
    index: usize,
    counts: HashMap<String, i64>,
    min: i64,
    self_match: i64,
}

#[derive(Debug, Default)]
pub(super) struct State {
    constraints: Vec<Counted>,
}

fn eligible(pod: &PodInfo, cs: &[&SpreadConstraint], node: &NodeInfo) -> bool {
    cs.iter().all(|c| node.labels.contains_key(&c.topology_key))
        && cs
            .iter()
            .all(|c| !c.honor_node_affinity || node_affinity_matches(pod, node))
        && cs
            .iter()
            .all(|c| !c.honor_taints || untolerated_taint(pod, node).is_none())
}

/// Counts of matching pods per domain for each constraint in `which`.
fn count(pod: &PodInfo, cache: &Cache, which: &[usize]) -> Vec<Counted> {
    let cs: Vec<&SpreadConstraint> = which.iter().map(|&i| &pod.spread[i]).collect();
    let mut out: Vec<Counted> = which
        .iter()
        .map(|&index| Counted {
            index,
            counts: HashMap::new(),
            min: 0,
            self_match: i64::from(pod.spread[index].counts(
                &pod.namespace,
                &pod.namespace,
                &pod.labels,
            )),
        })
        .collect();
    for node in cache.nodes() {
        if !eligible(pod, &cs, node) {
            continue;
        }
        for (c, counted) in cs.iter().zip(out.iter_mut()) {
            let Some(v) = node.labels.get(&c.topology_key) else {
                continue;
            };
            let n = node
                .pods
                .iter()
                .filter(|e| c.counts(&pod.namespace, &e.namespace, &e.labels))
                .count() as i64;
            *counted.counts.entry(v.clone()).or_default() += n;
        }
    }
    for (c, counted) in cs.iter().zip(out.iter_mut()) {
        counted.min = if (counted.counts.len() as i64) < c.min_domains {
            0
        } else {
            counted.counts.values().copied().min().unwrap_or(0)
        };
    }
    out
}

/// The filter (DoNotSchedule) and score (ScheduleAnyway).
#[derive(Debug, Clone, Copy)]
pub struct PodTopologySpread;

impl Filter for PodTopologySpread {
    fn pre_filter(&self, pod: &PodInfo, cache: &Cache, state: &mut CycleState) {
        let hard: Vec<usize> = (0..pod.spread.len())
            .filter(|&i| pod.spread[i].hard)
            .collect();
        if hard.is_empty() {
            return;
        }
        state.spread = Some(State {
            constraints: count(pod, cache, &hard),
        });
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        state: &CycleState,
    ) -> Result<(), Vec<Reason>> {
        let Some(s) = &state.spread else {
            return Ok(());
        };
        for c in &s.constraints {
            let sc = &pod.spread[c.index];
            let Some(v) = node.labels.get(&sc.topology_key) else {
                return Err(vec![Reason::Static(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                )]);
            };
            let skew = c.counts.get(v).copied().unwrap_or(0) + c.self_match - c.min;
            if skew > sc.max_skew {
                return Err(vec![Reason::Static(
                    "node(s) didn't match pod topology spread constraints",
                )]);
            }
        }
        Ok(())
    }
}

impl Score for PodTopologySpread {
    fn weight(&self) -> i64 {
        2
    }

    /// Fewer matching pods in a node's domains is better; each constraint
    /// weighs by the log of its number of domains, as upstream, so a
    /// zone-level constraint is not drowned by a hostname-level one.
    fn score(&self, pod: &PodInfo, nodes: &[&NodeInfo], cache: &Cache, out: &mut [i64]) -> bool {
        let soft: Vec<usize> = (0..pod.spread.len())
            .filter(|&i| !pod.spread[i].hard)
            .collect();
        if soft.is_empty() {
            return false;
        }
        let counted = count(pod, cache, &soft);
        let mut raw = vec![None; nodes.len()];
        for (r, n) in raw.iter_mut().zip(nodes) {
            let mut total = 0.0;
            for c in &counted {
                let sc = &pod.spread[c.index];
                let Some(v) = n.labels.get(&sc.topology_key) else {
                    total = f64::NAN;
                    break;
                };
                let w = ((c.counts.len() + 2) as f64).ln();
                total += (c.counts.get(v).copied().unwrap_or(0) + sc.max_skew - 1) as f64 * w;
            }
            *r = (!total.is_nan()).then_some(total);
        }
        let vals = raw.iter().flatten();
        let min = vals.clone().copied().fold(f64::INFINITY, f64::min);
        let max = vals.copied().fold(f64::NEG_INFINITY, f64::max);
        for (o, r) in out.iter_mut().zip(&raw) {
            *o = match r {
                None => 0,
                Some(_) if max <= min => 100,
                Some(v) => (100.0 * (max - v) / (max - min)) as i64,
            };
        }
        true
    }
}
