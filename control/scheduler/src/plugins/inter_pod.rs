//! Inter-pod affinity and anti-affinity over a topology key.
//!
//! Required terms are checked in both directions, as upstream: the
//! incoming pod's affinity and anti-affinity against the pods in each
//! node's domain, and existing pods' required anti-affinity against the
//! incoming pod. The pre-filter walks every placed pod once and counts
//! matches per (topology key, value); the per-node filter then only looks
//! up the node's own label values.

use std::collections::HashMap;

use super::{CycleState, Filter, Reason, Score};
use crate::cache::{Cache, NodeInfo};
use crate::pod_info::{AffinityTerm, PodInfo};

type Domain = (String, String);

#[derive(Debug, Default)]
pub(super) struct State {
    /// Pods matching all the incoming pod's required affinity terms.
    affinity: HashMap<Domain, i64>,
    /// The incoming pod matches its own affinity terms (the first pod of a
    /// group may go anywhere its topology keys exist).
    self_match: bool,
    /// Pods matching one of the incoming pod's anti-affinity terms.
    anti: HashMap<Domain, i64>,
    /// Domains where an existing pod's anti-affinity rejects the pod.
    existing_anti: HashMap<Domain, i64>,
}

fn domain(node: &NodeInfo, key: &str) -> Option<Domain> {
    node.labels.get(key).map(|v| (key.to_owned(), v.clone()))
}

/// The filter (required terms) and score (preferred terms).
#[derive(Debug, Clone, Copy)]
pub struct InterPodAffinity;

impl Filter for InterPodAffinity {
    fn pre_filter(&self, pod: &PodInfo, cache: &Cache, state: &mut CycleState) {
        let own = !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
        if !own && !cache.any_required_anti_affinity() {
            return;
        }
        let mut s = State {
            self_match: !pod.required_affinity.is_empty()
                && pod
                    .required_affinity
                    .iter()
                    .all(|t| t.matches(&pod.namespace, &pod.labels)),
            ..State::default()
        };
        for node in cache.nodes() {
            if !own && node.pods_with_required_anti_affinity == 0 {
                continue;
            }
            for e in &node.pods {
                for t in &e.required_anti_affinity {
                    if t.matches(&pod.namespace, &pod.labels)
                        && let Some(d) = domain(node, &t.topology_key)
                    {
                        *s.existing_anti.entry(d).or_default() += 1;
                    }
                }
                if !pod.required_affinity.is_empty()
                    && pod
                        .required_affinity
                        .iter()
                        .all(|t| t.matches(&e.namespace, &e.labels))
                {
                    for t in &pod.required_affinity {
                        if let Some(d) = domain(node, &t.topology_key) {
                            *s.affinity.entry(d).or_default() += 1;
                        }
                    }
                }
                for t in &pod.required_anti_affinity {
                    if t.matches(&e.namespace, &e.labels)
                        && let Some(d) = domain(node, &t.topology_key)
                    {
                        *s.anti.entry(d).or_default() += 1;
                    }
                }
            }
        }
        state.inter_pod = Some(s);
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        state: &CycleState,
    ) -> Result<(), Vec<Reason>> {
        let Some(s) = &state.inter_pod else {
            return Ok(());
        };
        let count = |m: &HashMap<Domain, i64>, key: &str| -> i64 {
            node.labels
                .get(key)
                .and_then(|v| m.get(&(key.to_owned(), v.clone())))
                .copied()
                .unwrap_or(0)
        };
        if !pod.required_affinity.is_empty() {
            let ok = pod
                .required_affinity
                .iter()
                .all(|t| count(&s.affinity, &t.topology_key) > 0);
            let first_of_group = s.affinity.is_empty()
                && s.self_match
                && pod
                    .required_affinity
                    .iter()
                    .all(|t| node.labels.contains_key(&t.topology_key));
            if !ok && !first_of_group {
                return Err(vec![Reason::Static(
                    "node(s) didn't match pod affinity rules",
                )]);
            }
        }
        if pod
            .required_anti_affinity
            .iter()
            .any(|t| count(&s.anti, &t.topology_key) > 0)
        {
            return Err(vec![Reason::Static(
                "node(s) didn't match pod anti-affinity rules",
            )]);
        }
        if s.existing_anti
            .keys()
            .any(|(k, v)| node.labels.get(k) == Some(v))
        {
            return Err(vec![Reason::Static(
                "node(s) didn't satisfy existing pods anti-affinity rules",
            )]);
        }
        Ok(())
    }
}

fn add_terms(
    scores: &mut HashMap<Domain, i64>,
    terms: &[AffinityTerm],
    sign: i64,
    node: &NodeInfo,
    ns: &str,
    labels: &std::collections::BTreeMap<String, String>,
) {
    for t in terms {
        if t.matches(ns, labels)
            && let Some(d) = domain(node, &t.topology_key)
        {
            *scores.entry(d).or_default() += sign * t.weight;
        }
    }
}

impl Score for InterPodAffinity {
    fn weight(&self) -> i64 {
        2
    }

    fn score(&self, pod: &PodInfo, nodes: &[&NodeInfo], cache: &Cache, out: &mut [i64]) -> bool {
        let own = !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
        let mut scores: HashMap<Domain, i64> = HashMap::new();
        for node in cache.nodes() {
            if !own && node.pods_with_affinity == 0 {
                continue;
            }
            for e in &node.pods {
                if own {
                    add_terms(
                        &mut scores,
                        &pod.preferred_affinity,
                        1,
                        node,
                        &e.namespace,
                        &e.labels,
                    );
                    let anti = &pod.preferred_anti_affinity;
                    add_terms(&mut scores, anti, -1, node, &e.namespace, &e.labels);
                }
                if e.has_pod_affinity() {
                    let (ns, l) = (&pod.namespace, &pod.labels);
                    add_terms(&mut scores, &e.preferred_affinity, 1, node, ns, l);
                    add_terms(&mut scores, &e.preferred_anti_affinity, -1, node, ns, l);
                    // Upstream's hardPodAffinityWeight (1) for existing
                    // pods' required affinity.
                    add_terms(&mut scores, &e.required_affinity, 1, node, ns, l);
                }
            }
        }
        if scores.is_empty() {
            return false;
        }
        for (o, n) in out.iter_mut().zip(nodes) {
            *o = scores
                .iter()
                .filter(|((k, v), _)| n.labels.get(k) == Some(v))
                .map(|(_, s)| s)
                .sum();
        }
        let (min, max) = (
            out.iter().copied().min().unwrap_or(0),
            out.iter().copied().max().unwrap_or(0),
        );
        for o in out.iter_mut() {
            *o = if max > min {
                (*o - min) * 100 / (max - min)
            } else {
                0
            };
        }
        true
    }
}
