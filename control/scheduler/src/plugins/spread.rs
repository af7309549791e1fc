//! topologySpreadConstraints: DoNotSchedule constraints filter,
//! ScheduleAnyway constraints score; a pod with no constraints of its own
//! is scored with upstream's system defaults.
//!
//! The filter counts matching pods per domain over the eligible nodes:
//! those that carry every constraint's topology key and, per each
//! constraint's policies, pass the pod's node affinity (Honor by default)
//! and taints (Ignore by default). A node may take the pod while its
//! domain's count plus one (if the pod matches its own selector) exceeds
//! the least loaded domain's by at most maxSkew. With fewer domains than
//! minDomains the least count is taken as 0.
//!
//! The score is upstream's: for each constraint whose key the node has,
//! the matching pods in the node's domain times log(domains + 2), plus
//! maxSkew - 1 (so small skews barely count); the domains are those of
//! the feasible nodes, and per-node (`kubernetes.io/hostname`) counts
//! are the node's own pods. Lower sums score higher, normalized as
//! `100 * (max + min - s) / max`. The system defaults (upstream's
//! `defaultingType: System`) are `kubernetes.io/hostname` with maxSkew 3
//! and `topology.kubernetes.io/zone` with maxSkew 5, both ScheduleAnyway,
//! selecting the pods of the pod's Services and controller
//! ([`crate::workloads`]); a node lacking one of their keys is scored on
//! the others, while with the pod's own constraints it scores 0.
//!
//! Both read per-node counts of matching pods from the cache's selector
//! index ([`Cache::matching_pods`]), kept up to date as pods are placed,
//! rather than walk every pod of every node each cycle.

use std::collections::HashMap;
use std::sync::Arc;

use super::{CycleState, Filter, Reason, Score, node_affinity_matches, untolerated_taint};
use crate::cache::{Cache, LabelValues, NodeInfo};
use crate::pod_info::{HOSTNAME_KEY, PodInfo, SpreadConstraint, ZONE_KEY};

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

/// A constraint's topology key, told apart once per cycle so that the
/// well-known ones are read from the node's copies rather than its map.
#[derive(Debug, Clone, Copy)]
enum Key<'a> {
    Hostname,
    Zone,
    Other(&'a str),
}

impl<'a> Key<'a> {
    fn of(c: &'a SpreadConstraint) -> Self {
        match c.topology_key.as_str() {
            HOSTNAME_KEY => Self::Hostname,
            ZONE_KEY => Self::Zone,
            k => Self::Other(k),
        }
    }

    fn value(self, node: &NodeInfo) -> Option<&str> {
        match self {
            Self::Hostname => node.hostname_label.as_deref(),
            Self::Zone => node.zone_label.as_deref(),
            Self::Other(k) => node.labels.get(k).map(String::as_str),
        }
    }
}

fn keys<'a>(cs: &[&'a SpreadConstraint]) -> Vec<Key<'a>> {
    cs.iter().map(|c| Key::of(c)).collect()
}

/// Whether the node carries every one of the topology keys.
fn has_keys(keys: &[Key<'_>], node: &NodeInfo) -> bool {
    keys.iter().all(|k| k.value(node).is_some())
}

/// The constraint's nodeAffinityPolicy and nodeTaintsPolicy admit `node`.
fn included(c: &SpreadConstraint, pod: &PodInfo, node: &NodeInfo) -> bool {
    (!c.honor_node_affinity || node_affinity_matches(pod, node))
        && (!c.honor_taints || untolerated_taint(pod, node).is_none())
}

/// For each constraint, the pods it counts on each node slot: in the
/// pod's namespace, matching the selector, not terminating.
fn matching(pod: &PodInfo, cs: &[&SpreadConstraint], cache: &Cache) -> Vec<Arc<Vec<u32>>> {
    cs.iter()
        .map(|c| cache.matching_pods(&pod.namespace, &c.selector))
        .collect()
}

fn on(per_slot: &[u32], node: &NodeInfo) -> i64 {
    i64::from(per_slot.get(node.slot).copied().unwrap_or(0))
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
    let keys = keys(&cs);
    let matching = matching(pod, &cs, cache);
    for node in cache.nodes() {
        if !has_keys(&keys, node) {
            continue;
        }
        for (((c, k), m), counted) in cs.iter().zip(&keys).zip(&matching).zip(out.iter_mut()) {
            if !included(c, pod, node) {
                continue;
            }
            let Some(v) = k.value(node) else {
                continue;
            };
            let n = on(m, node);
            match counted.counts.get_mut(v) {
                Some(total) => *total += n,
                None => {
                    counted.counts.insert(v.to_owned(), n);
                }
            }
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

/// Upstream's system default constraints for a pod with none of its own;
/// none when its default selector is empty (no Service or known
/// controller selects it).
pub fn system_defaults(pod: &PodInfo, cache: &Cache) -> Vec<SpreadConstraint> {
    let selector = cache.workloads.default_selector(pod);
    if selector.is_empty() {
        return Vec::new();
    }
    vec![
        SpreadConstraint::system_default(HOSTNAME_KEY, 3, selector.clone()),
        SpreadConstraint::system_default(ZONE_KEY, 5, selector),
    ]
}

/// One soft constraint's domains among the feasible nodes, for any key
/// but the hostname (whose counts are each node's own).
struct Domains {
    /// log(number of domains + 2).
    weight: f64,
    /// The key's values, numbered, and each slot's.
    values: Arc<LabelValues>,
    /// Matching pods per value id; only the values of feasible nodes
    /// (`wanted`) are counted.
    counts: Vec<i64>,
    wanted: Vec<bool>,
    /// A node without the key counts under the value "" (as upstream
    /// keys it), which matters only if some node has "" for a value.
    empty: Option<u32>,
}

impl Domains {
    /// The domain `slot` counts under, if it is one to count.
    fn of(&self, slot: usize) -> Option<usize> {
        let id = self.values.of(slot).or(self.empty)? as usize;
        self.wanted[id].then_some(id)
    }
}

/// Whether every node passes the constraint's inclusion policies for this
/// pod, so that counting needs no look at the nodes themselves.
fn includes_all(c: &SpreadConstraint, pod: &PodInfo) -> bool {
    !c.honor_taints
        && (!c.honor_node_affinity
            || (pod.node_selector.is_empty() && pod.required_node_affinity.is_none()))
}

/// Upstream's raw spreading scores of `nodes` (lower is better); `None`
/// for a node the pod's own constraints cannot score (a key missing).
fn raw_scores(
    pod: &PodInfo,
    cs: &[&SpreadConstraint],
    require_all_keys: bool,
    nodes: &[&NodeInfo],
    cache: &Cache,
) -> Vec<Option<i64>> {
    let keys = keys(cs);
    let ignored: Vec<bool> = nodes
        .iter()
        .map(|n| require_all_keys && !has_keys(&keys, n))
        .collect();
    let scored: Vec<&NodeInfo> = nodes
        .iter()
        .zip(&ignored)
        .filter(|(_, i)| !**i)
        .map(|(n, _)| *n)
        .collect();
    let matching = matching(pod, cs, cache);
    let domains: Vec<Option<Domains>> = cs
        .iter()
        .zip(&keys)
        .zip(&matching)
        .map(|((c, k), m)| {
            if matches!(k, Key::Hostname) {
                return None;
            }
            let values = cache.label_values(&c.topology_key);
            let empty = values
                .names
                .iter()
                .position(String::is_empty)
                .map(|e| e as u32);
            let mut wanted = vec![false; values.names.len()];
            let mut unlabeled = false;
            for n in &scored {
                match values.of(n.slot) {
                    Some(id) => wanted[id as usize] = true,
                    None => unlabeled = true,
                }
            }
            // A node without the key is a domain of its own ("") for the
            // weight, as upstream counts it, but never scored on it.
            let named = wanted.iter().filter(|&&w| w).count();
            let size = named + usize::from(unlabeled && !empty.is_some_and(|e| wanted[e as usize]));
            let mut d = Domains {
                weight: ((size + 2) as f64).ln(),
                counts: vec![0; values.names.len()],
                values,
                wanted,
                empty,
            };
            if named > 0 {
                let fast = !require_all_keys && includes_all(c, pod);
                for &slot in cache.present_slots() {
                    let n = i64::from(m.get(slot).copied().unwrap_or(0));
                    let Some(id) = (n > 0).then(|| d.of(slot)).flatten() else {
                        continue;
                    };
                    if !fast {
                        let node = cache.slot_node(slot);
                        if (require_all_keys && !has_keys(&keys, node)) || !included(c, pod, node) {
                            continue;
                        }
                    }
                    d.counts[id] += n;
                }
            }
            Some(d)
        })
        .collect();
    let hostname_weight = ((scored.len() + 2) as f64).ln();
    nodes
        .iter()
        .zip(&ignored)
        .map(|(n, &ignored)| {
            if ignored {
                return None;
            }
            let mut sum = 0.0;
            for (((c, k), m), d) in cs.iter().zip(&keys).zip(&matching).zip(&domains) {
                let (count, weight) = match d {
                    None if k.value(n).is_some() => (on(m, n), hostname_weight),
                    Some(d) => match d.values.of(n.slot) {
                        Some(id) => (d.counts[id as usize], d.weight),
                        None => continue,
                    },
                    None => continue,
                };
                sum += count as f64 * weight + (c.max_skew - 1) as f64;
            }
            Some(sum.round() as i64)
        })
        .collect()
}

impl Score for PodTopologySpread {
    fn weight(&self) -> i64 {
        2
    }

    fn score(&self, pod: &PodInfo, nodes: &[&NodeInfo], cache: &Cache, out: &mut [i64]) -> bool {
        let defaults;
        let cs: Vec<&SpreadConstraint> = if pod.spread.is_empty() {
            defaults = system_defaults(pod, cache);
            defaults.iter().collect()
        } else {
            pod.spread.iter().filter(|c| !c.hard).collect()
        };
        if cs.is_empty() {
            return false;
        }
        // Only the pod's own constraints need every key on a node; the
        // defaults spread by hostname on nodes without a zone.
        let raw = raw_scores(pod, &cs, !pod.spread.is_empty(), nodes, cache);
        let (mut min, mut max) = (i64::MAX, 0);
        for &s in raw.iter().flatten() {
            min = min.min(s);
            max = max.max(s);
        }
        for (o, r) in out.iter_mut().zip(&raw) {
            *o = match *r {
                None => 0,
                Some(_) if max == 0 => 100,
                Some(s) => 100 * (max + min - s) / max,
            };
        }
        true
    }
}
