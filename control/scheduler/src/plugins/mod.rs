//! Filter and score plugins, and the cycle that runs them for one pod.
//!
//! The plugins and their order are upstream's default profile (of the
//! volume plugins, VolumeRestrictions and VolumeBinding). Each filter says
//! why a node does not fit in upstream's words, so the FailedScheduling
//! message reads exactly as kube-scheduler's.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Taint, Toleration};
use kestrel_api::labels::{self, NodeTerm};
use rand::Rng as _;

use crate::cache::{Cache, NodeInfo};
use crate::pod_info::PodInfo;

mod basic;
mod inter_pod;
mod preempt;
mod spread;
#[cfg(test)]
mod tests;
mod volume;

pub use basic::{
    BalancedAllocation, LeastAllocated, NodeAffinity, NodePorts, NodeResourcesFit,
    NodeUnschedulable, TaintToleration,
};
pub use inter_pod::InterPodAffinity;
pub use preempt::Preemption;
pub use spread::PodTopologySpread;
pub use volume::{Plan, VolumeBinding, VolumeRestrictions, plan};

/// Why one node does not fit, in upstream's words.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A fixed message.
    Static(&'static str),
    /// A message with details (the taint).
    Owned(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static(s) => f.write_str(s),
            Self::Owned(s) => f.write_str(s),
        }
    }
}

/// What pre-filters computed for this cycle.
#[derive(Debug, Default)]
pub struct CycleState {
    inter_pod: Option<inter_pod::State>,
    spread: Option<spread::State>,
    volume: Option<volume::State>,
    /// A pre-filter turned the pod down: upstream's message, and whether
    /// the refusal is final for this cycle (UnschedulableAndUnresolvable:
    /// the later pre-filters do not run).
    rejected: Option<(String, bool)>,
    /// Pre-filters narrowed the candidates to these node names (upstream's
    /// PreFilterResult), and which plugins did.
    node_names: Option<(HashSet<String>, Vec<&'static str>)>,
}

impl CycleState {
    /// A pre-filter turns the pod down with upstream's `message`.
    fn reject(&mut self, message: String, unresolvable: bool) {
        self.rejected = Some((message, unresolvable));
    }

    /// A pre-filter allows only the nodes named in `names`.
    fn restrict(&mut self, names: HashSet<String>, plugin: &'static str) {
        self.node_names = Some(match self.node_names.take() {
            None => (names, vec![plugin]),
            Some((prev, mut plugins)) => {
                plugins.push(plugin);
                (prev.intersection(&names).cloned().collect(), plugins)
            }
        });
    }
}

/// Decides whether one node can take the pod.
pub trait Filter: Send + Sync + fmt::Debug {
    /// Work done once per cycle over the whole cluster.
    fn pre_filter(&self, _pod: &PodInfo, _cache: &Cache, _state: &mut CycleState) {}
    /// `Err` with the reasons the node does not fit.
    fn filter(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState)
    -> Result<(), Vec<Reason>>;
}

/// Ranks the nodes that passed the filters.
pub trait Score: Send + Sync + fmt::Debug {
    /// How much this plugin counts against the others.
    fn weight(&self) -> i64;
    /// Write a score in 0..=100 per node into `out`. Returns false when
    /// it has nothing to say for this pod (`out` is then ignored).
    fn score(&self, pod: &PodInfo, nodes: &[&NodeInfo], cache: &Cache, out: &mut [i64]) -> bool;
}

/// A pod fits no node: how many nodes there were and why each failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    /// Nodes considered.
    pub num_nodes: usize,
    /// Reason → number of nodes that gave it.
    pub reasons: HashMap<Reason, usize>,
    /// A pre-filter turned the pod down before any node was looked at.
    pub pre_filter: Option<String>,
    /// What preemption (upstream's PostFilter) said, appended as
    /// upstream appends it: `preemption: ...`.
    pub post_filter: Option<String>,
}

impl fmt::Display for FitError {
    /// Upstream's message: "0/3 nodes are available: 1 node(s) didn't
    /// match Pod's node affinity/selector, 2 Insufficient cpu." The parts
    /// are sorted as strings, count included, as upstream sorts them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        if let Some(m) = &self.pre_filter {
            write!(f, "0/{} nodes are available: {m}.", self.num_nodes)?;
        } else {
            write!(
                f,
                "0/{} nodes are available: {}.",
                self.num_nodes,
                histogram(&self.reasons)
            )?;
        }
        if let Some(m) = &self.post_filter {
            write!(f, " {m}")?;
        }
        Ok(())
    }
}

/// `n reason` parts, sorted as strings (count included), as upstream
/// sorts them.
fn histogram(reasons: &HashMap<Reason, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    parts.join(", ")
}

/// The plugins one scheduler runs, and how many nodes it looks at.
#[derive(Debug)]
pub struct Profile {
    filters: Vec<Box<dyn Filter>>,
    scores: Vec<Box<dyn Score>>,
    /// Percentage of nodes to find feasible before scoring; `None` is
    /// upstream's adaptive default.
    pub percentage_of_nodes_to_score: Option<u32>,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            filters: vec![
                Box::new(NodeUnschedulable),
                Box::new(TaintToleration),
                Box::new(NodeAffinity),
                Box::new(NodePorts),
                Box::new(NodeResourcesFit),
                Box::new(VolumeRestrictions),
                Box::new(VolumeBinding),
                Box::new(PodTopologySpread),
                Box::new(InterPodAffinity),
            ],
            scores: vec![
                Box::new(TaintToleration),
                Box::new(NodeAffinity),
                Box::new(LeastAllocated),
                Box::new(BalancedAllocation),
                Box::new(InterPodAffinity),
                Box::new(PodTopologySpread),
            ],
            percentage_of_nodes_to_score: None,
        }
    }
}

/// Upstream never looks at fewer feasible nodes than this.
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;

impl Profile {
    /// How many feasible nodes to find among `all` before scoring: all of
    /// them below 100 nodes, else a percentage that shrinks as the cluster
    /// grows (50% minus 1% per 125 nodes, at least 5%), never under 100.
    pub fn feasible_nodes_to_find(&self, all: usize) -> usize {
        if all < MIN_FEASIBLE_NODES_TO_FIND {
            return all;
        }
        let pct = match self.percentage_of_nodes_to_score {
            Some(p) if p > 0 => (p as usize).min(100),
            _ => 50usize.saturating_sub(all / 125).max(5),
        };
        (all * pct / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
    }

    /// Choose a node for `pod`: filter (from the rotating start, until
    /// enough feasible nodes are found), score, take the best; ties are
    /// broken at random.
    pub fn schedule(&self, pod: &PodInfo, cache: &mut Cache) -> Result<String, FitError> {
        let n = cache.node_count();
        let mut reasons: HashMap<Reason, usize> = HashMap::new();
        if n == 0 {
            return Err(FitError {
                num_nodes: 0,
                reasons,
                pre_filter: None,
                post_filter: None,
            });
        }
        let mut state = CycleState::default();
        for f in &self.filters {
            f.pre_filter(pod, cache, &mut state);
            if state.rejected.as_ref().is_some_and(|r| r.1) {
                break;
            }
        }
        if state.rejected.is_none()
            && let Some((names, plugins)) = &state.node_names
            && names.is_empty()
        {
            let message = match plugins.as_slice() {
                [one] => format!("node(s) didn't satisfy plugin {one}"),
                many => format!(
                    "node(s) didn't satisfy plugin(s) [{}] simultaneously",
                    many.join(" ")
                ),
            };
            state.reject(message, true);
        }
        if let Some((message, _)) = state.rejected.take() {
            return Err(FitError {
                num_nodes: n,
                reasons,
                pre_filter: Some(message),
                post_filter: None,
            });
        }
        // Nodes a pre-filter left out fail with one reason, as upstream
        // gives them all one status.
        let left_out = state.node_names.as_ref().map(|(names, plugins)| {
            let mut plugins = plugins.clone();
            plugins.sort_unstable();
            plugins.dedup();
            (
                names,
                Reason::Owned(format!(
                    "node(s) didn't satisfy plugin(s) [{}]",
                    plugins.join(" ")
                )),
            )
        });
        // Pods nominated to a node (after preempting there) hold their
        // room against pods of lower or equal priority; a nominated pod
        // tries its own node first (upstream's evaluateNominatedNode).
        let nominated = cache.has_nominated();
        if nominated
            && let Some(node) = cache.nominated_node(&pod.key()).and_then(|n| cache.node(n))
            && node.present
            && left_out
                .as_ref()
                .is_none_or(|(names, _)| names.contains(&node.name))
            && self.fits(pod, node, &state, cache).is_ok()
        {
            return Ok(node.name.clone());
        }
        let want = self.feasible_nodes_to_find(n);
        let start = cache.next_start % n;
        let mut feasible: Vec<usize> = Vec::with_capacity(want.min(n));
        let mut processed = 0;
        for i in 0..n {
            processed = i + 1;
            let idx = (start + i) % n;
            let node = cache.node_at(idx);
            if let Some((names, reason)) = &left_out
                && !names.contains(&node.name)
            {
                *reasons.entry(reason.clone()).or_default() += 1;
                continue;
            }
            let mut fit = true;
            if nominated {
                if let Err(rs) = self.fits(pod, node, &state, cache) {
                    for r in rs {
                        *reasons.entry(r).or_default() += 1;
                    }
                    fit = false;
                }
            } else {
                for f in &self.filters {
                    if let Err(rs) = f.filter(pod, node, &state) {
                        for r in rs {
                            *reasons.entry(r).or_default() += 1;
                        }
                        fit = false;
                        break;
                    }
                }
            }
            if fit {
                feasible.push(idx);
                if feasible.len() >= want {
                    break;
                }
            }
        }
        cache.next_start = (start + processed) % n;
        if feasible.is_empty() {
            return Err(FitError {
                num_nodes: n,
                reasons,
                pre_filter: None,
                post_filter: None,
            });
        }
        if feasible.len() == 1 {
            return Ok(cache.node_at(feasible[0]).name.clone());
        }
        let nodes: Vec<&NodeInfo> = feasible.iter().map(|&i| cache.node_at(i)).collect();
        let mut total = vec![0i64; nodes.len()];
        let mut out = vec![0i64; nodes.len()];
        for s in &self.scores {
            out.iter_mut().for_each(|o| *o = 0);
            if s.score(pod, &nodes, cache, &mut out) {
                for (t, o) in total.iter_mut().zip(&out) {
                    *t += s.weight() * o;
                }
            }
        }
        Ok(nodes[select_best(&total)].name.clone())
    }

    /// Run the filters on one node with the pods nominated there of
    /// priority at least the pod's counted, then without them (both must
    /// pass, as upstream's RunFilterPluginsWithNominatedPods). The
    /// nominated pods count on the node itself (resources, pod count,
    /// host ports), not in the cycle's spreading and affinity counts.
    fn fits(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        state: &CycleState,
        cache: &Cache,
    ) -> Result<(), Vec<Reason>> {
        let extra: Vec<Arc<PodInfo>> = cache
            .nominated_on(&node.name)
            .iter()
            .filter(|p| {
                p.priority >= pod.priority && !(p.name == pod.name && p.namespace == pod.namespace)
            })
            .cloned()
            .collect();
        if !extra.is_empty() {
            let with = node.with_pods(&extra);
            self.run_filters(pod, &with, state)?;
        }
        self.run_filters(pod, node, state)
    }

    fn run_filters(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        state: &CycleState,
    ) -> Result<(), Vec<Reason>> {
        for f in &self.filters {
            f.filter(pod, node, state)?;
        }
        Ok(())
    }
}

/// Index of the highest score; ties broken uniformly at random (reservoir
/// sampling over the tied ones).
fn select_best(scores: &[i64]) -> usize {
    let mut rng = rand::rng();
    let mut best = 0;
    let mut ties = 0u32;
    for (i, &s) in scores.iter().enumerate() {
        if i == 0 || s > scores[best] {
            best = i;
            ties = 1;
        } else if s == scores[best] {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    best
}

/// Whether a node selector term selects `node`. A term with no
/// requirements selects nothing, as upstream.
pub fn term_matches(t: &NodeTerm, node: &NodeInfo) -> bool {
    t.matches(&node.labels, &node.name)
}

/// nodeSelector and required node affinity together.
pub fn node_affinity_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    if !labels::set_matches(&pod.node_selector, &node.labels) {
        return false;
    }
    match &pod.required_node_affinity {
        None => true,
        Some(terms) => terms.iter().any(|t| term_matches(t, node)),
    }
}

/// Whether one toleration tolerates `taint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref()
        && !e.is_empty()
        && e != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    let op = t.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        // An empty key with Exists tolerates everything.
        return op == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match op {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// The first NoSchedule/NoExecute taint of `node` the pod does not tolerate.
pub fn untolerated_taint<'a>(pod: &PodInfo, node: &'a NodeInfo) -> Option<&'a Taint> {
    node.taints.iter().find(|taint| {
        (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !pod.tolerations.iter().any(|t| tolerates(t, taint))
    })
}

/// Upstream's default score normalisation: scale so the highest is 100
/// (or, reversed, so the highest is 0).
fn normalize(out: &mut [i64], reverse: bool) {
    let max = out.iter().copied().max().unwrap_or(0);
    for o in out.iter_mut() {
        *o = match (max, reverse) {
            (0, true) => 100,
            (0, false) => 0,
            (m, false) => *o * 100 / m,
            (m, true) => 100 - *o * 100 / m,
        };
    }
}
