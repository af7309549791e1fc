//! Upstream's DefaultPreemption PostFilter, run only after a pod fit
//! nowhere.
//!
//! Nodes whose failure preemption cannot fix (UnschedulableAndUnresolvable
//! upstream: cordoned, untolerated taints, node affinity, the pod's own
//! pod affinity, missing topology labels, volumes, nodes a pre-filter left
//! out) are skipped. On each other node, starting at a random offset until
//! max(10% of them, 100) candidates are found, every pod of strictly lower
//! priority is taken off (in the cache itself, put back afterwards) and
//! the pod must then fit; victims are then reprieved from the most
//! important down (priority, then earliest start), keeping each one the
//! pod still fits with. The node is chosen as upstream's
//! pickOneNodeForPreemption does: lowest highest-victim priority, smallest
//! sum of victim priorities, fewest victims, latest earliest start among
//! the highest-priority victims, then the first found. PodDisruptionBudgets
//! are not known to the scheduler, so no victim counts as violating one.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng as _;

use super::{CycleState, Profile, Reason, histogram};
use crate::cache::Cache;
use crate::pod_info::PodInfo;

/// Upstream's DefaultPreemptionArgs defaults.
const MIN_CANDIDATE_NODES_PERCENTAGE: usize = 10;
const MIN_CANDIDATE_NODES_ABSOLUTE: usize = 100;

const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";

/// What preemption decided for a pod that fit nowhere.
#[derive(Debug, Clone, Default)]
pub struct Preemption {
    /// The node to nominate, with room once `victims` are gone.
    pub node: Option<String>,
    /// The pods to delete, most important first.
    pub victims: Vec<Arc<PodInfo>>,
    /// Pods of lower priority nominated to `node`, whose nomination is
    /// to be cleared (they may no longer fit there).
    pub clear_nominated: Vec<Arc<PodInfo>>,
    /// The pod's own nomination is to be cleared (preemption cannot help).
    pub clear_own: bool,
    /// Upstream's PostFilter message (`preemption: ...`), appended to the
    /// FailedScheduling message; none when a node was found.
    pub message: Option<String>,
}

/// Whether a filter reason is one preemption cannot fix (upstream's
/// UnschedulableAndUnresolvable codes).
fn unresolvable(r: &Reason) -> bool {
    let s = match r {
        Reason::Static(s) => *s,
        Reason::Owned(s) => s.as_str(),
    };
    s == "node(s) were unschedulable"
        || s.starts_with("node(s) had untolerated taint")
        || s == "node(s) didn't match Pod's node affinity/selector"
        || s == "node(s) didn't match pod affinity rules"
        || s == "node(s) didn't match pod topology spread constraints (missing required label)"
        || s.starts_with("node(s) didn't satisfy plugin")
        || s == "node(s) had volume node affinity conflict"
        || s == "node(s) didn't find available persistent volumes to bind"
        || s == "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)"
}

/// One node where preemption makes room.
#[derive(Debug)]
struct Candidate {
    slot: usize,
    victims: Vec<Arc<PodInfo>>,
}

impl Profile {
    /// Run upstream's pre-filters for `pod`: the state, or the reason it
    /// is turned down and whether that is final.
    fn pre_filter_state(&self, pod: &PodInfo, cache: &Cache) -> Result<CycleState, (String, bool)> {
        let mut state = CycleState::default();
        for f in &self.filters {
            f.pre_filter(pod, cache, &mut state);
            if state.rejected.as_ref().is_some_and(|r| r.1) {
                break;
            }
        }
        if let Some(r) = state.rejected.take() {
            return Err(r);
        }
        if let Some((names, plugins)) = &state.node_names
            && names.is_empty()
        {
            return Err((
                format!("node(s) didn't satisfy plugin(s) [{}]", plugins.join(" ")),
                true,
            ));
        }
        Ok(state)
    }

    /// Whether `pod` fits on slot `slot` as the cache now stands.
    fn fits_on(&self, pod: &PodInfo, cache: &Cache, slot: usize) -> Result<(), Vec<Reason>> {
        let state = self
            .pre_filter_state(pod, cache)
            .map_err(|(m, _)| vec![Reason::Owned(m)])?;
        let node = cache.slot_node(slot);
        if let Some((names, _)) = &state.node_names
            && !names.contains(&node.name)
        {
            return Err(vec![Reason::Static(
                "node(s) didn't satisfy plugin(s) [VolumeBinding]",
            )]);
        }
        self.fits(pod, node, &state, cache)
    }

    /// Upstream's SelectVictimsOnNode: the fewest lower-priority pods of
    /// slot `slot` whose removal lets `pod` fit, most important first.
    /// The cache is left as it was.
    fn select_victims(
        &self,
        pod: &PodInfo,
        cache: &mut Cache,
        slot: usize,
        now: i128,
    ) -> Result<Vec<Arc<PodInfo>>, Vec<Reason>> {
        let mut potential: Vec<Arc<PodInfo>> = cache
            .slot_node(slot)
            .pods
            .iter()
            .filter(|p| p.priority < pod.priority)
            .cloned()
            .collect();
        if potential.is_empty() {
            return Err(vec![Reason::Static(NO_VICTIMS)]);
        }
        // Most important first: higher priority, then longer running.
        potential.sort_by(|a, b| {
            b.priority.cmp(&a.priority).then(
                a.start_time
                    .unwrap_or(now)
                    .cmp(&b.start_time.unwrap_or(now)),
            )
        });
        let mut taken: Vec<(Arc<PodInfo>, bool)> = Vec::with_capacity(potential.len());
        for p in &potential {
            if let Some((p, _, assumed)) = cache.take_out(&p.key()) {
                taken.push((p, assumed));
            }
        }
        let result = match self.fits_on(pod, cache, slot) {
            Err(rs) => Err(rs),
            Ok(()) => {
                let mut victims = Vec::new();
                for (p, assumed) in &taken {
                    cache.put_back(p.clone(), slot, *assumed);
                    if self.fits_on(pod, cache, slot).is_err() {
                        cache.take_out(&p.key());
                        victims.push(p.clone());
                    }
                }
                // Put the victims back too: the cache is unchanged.
                for v in &victims {
                    let assumed = taken
                        .iter()
                        .find(|(p, _)| Arc::ptr_eq(p, v))
                        .is_some_and(|(_, a)| *a);
                    cache.put_back(v.clone(), slot, assumed);
                }
                return Ok(victims);
            }
        };
        for (p, assumed) in taken {
            cache.put_back(p, slot, assumed);
        }
        result
    }

    /// Upstream's DefaultPreemption PostFilter for `pod`, which just fit
    /// nowhere. Records the nomination in the cache when a node is found;
    /// the caller deletes the victims and writes the status.
    pub fn preempt(&self, pod: &Arc<PodInfo>, cache: &mut Cache) -> Preemption {
        let msg = |m: String| Preemption {
            message: Some(format!("preemption: {m}")),
            ..Default::default()
        };
        if pod.never_preempts {
            return msg("not eligible due to preemptionPolicy=Never.".into());
        }
        let n = cache.node_count();
        let key = pod.key();
        // Which nodes preemption could help on (the failed cycle's
        // statuses, recomputed: this runs only after a failure).
        let state = self.pre_filter_state(pod, cache);
        let mut potential: Vec<usize> = Vec::new();
        let mut unresolvable_slots: Vec<usize> = Vec::new();
        match &state {
            Err((_, true)) => {}
            Err((_, false)) => potential.extend(cache.present_slots().iter().copied()),
            Ok(state) => {
                for node in cache.nodes() {
                    if let Some((names, _)) = &state.node_names
                        && !names.contains(&node.name)
                    {
                        unresolvable_slots.push(node.slot);
                        continue;
                    }
                    match self.fits(pod, node, state, cache) {
                        Ok(()) => {}
                        Err(rs) if rs.iter().any(unresolvable) => {
                            unresolvable_slots.push(node.slot);
                        }
                        Err(_) => potential.push(node.slot),
                    }
                }
            }
        }
        // Victims of an earlier preemption are still terminating on the
        // nominated node: wait for them rather than preempt more.
        let nominated = cache
            .nominated_node(&key)
            .map(str::to_owned)
            .or_else(|| pod.nominated_node.clone());
        if let Some(nn) = &nominated
            && let Some(node) = cache.node(nn)
            && !unresolvable_slots.contains(&node.slot)
            && node
                .pods
                .iter()
                .any(|p| p.priority < pod.priority && p.preempted)
        {
            return msg("not eligible due to a terminating pod on the nominated node.".into());
        }
        let no_candidates = |reasons: HashMap<Reason, usize>| {
            let mut p = msg(format!(
                "0/{n} nodes are available: {}.",
                histogram(&reasons)
            ));
            p.clear_own = nominated.is_some();
            p
        };
        if potential.is_empty() {
            return no_candidates([(Reason::Static(NOT_HELPFUL), n)].into());
        }
        let want = (potential.len() * MIN_CANDIDATE_NODES_PERCENTAGE / 100)
            .max(MIN_CANDIDATE_NODES_ABSOLUTE)
            .min(potential.len());
        let offset = if want < potential.len() {
            rand::rng().random_range(0..potential.len())
        } else {
            0
        };
        let now = jiff::Timestamp::now().as_nanosecond();
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut reasons: HashMap<Reason, usize> = HashMap::new();
        let mut evaluated = 0;
        for i in 0..potential.len() {
            let slot = potential[(offset + i) % potential.len()];
            evaluated += 1;
            match self.select_victims(pod, cache, slot, now) {
                Ok(victims) if !victims.is_empty() => {
                    candidates.push(Candidate { slot, victims });
                    if candidates.len() >= want {
                        break;
                    }
                }
                Ok(_) => {}
                Err(rs) => {
                    for r in rs {
                        *reasons.entry(r).or_default() += 1;
                    }
                }
            }
        }
        if candidates.is_empty() {
            if n > evaluated {
                *reasons.entry(Reason::Static(NOT_HELPFUL)).or_default() += n - evaluated;
            }
            return no_candidates(reasons);
        }
        let best = pick_one(&candidates, now);
        let c = &candidates[best];
        let node = cache.slot_node(c.slot).name.clone();
        let clear_nominated = cache
            .nominated_on(&node)
            .iter()
            .filter(|p| p.priority < pod.priority && p.key() != key)
            .cloned()
            .collect::<Vec<_>>();
        for p in &clear_nominated {
            cache.unnominate(&p.key());
        }
        cache.nominate(pod, Some(&node));
        Preemption {
            node: Some(node),
            victims: c.victims.clone(),
            clear_nominated,
            clear_own: false,
            message: None,
        }
    }
}

/// Upstream's pickOneNodeForPreemption (no PDBs: none violated): each
/// criterion narrows the ties of the one before; the first remaining
/// candidate wins.
fn pick_one(candidates: &[Candidate], now: i128) -> usize {
    let highest = |c: &Candidate| c.victims[0].priority;
    let criteria: [&dyn Fn(&Candidate) -> i128; 4] = [
        // Lowest highest-priority victim.
        &|c| -i128::from(highest(c)),
        // Smallest sum of priorities (shifted to be non-negative).
        &|c| {
            -c.victims
                .iter()
                .map(|v| i128::from(v.priority) + (1i128 << 31))
                .sum::<i128>()
        },
        // Fewest victims.
        &|c| -(c.victims.len() as i128),
        // Latest earliest start among the highest-priority victims.
        &|c| {
            let top = highest(c);
            c.victims
                .iter()
                .filter(|v| v.priority == top)
                .map(|v| v.start_time.unwrap_or(now))
                .min()
                .unwrap_or(now)
        },
    ];
    let mut left: Vec<usize> = (0..candidates.len()).collect();
    for f in criteria {
        let scores: Vec<i128> = left.iter().map(|&i| f(&candidates[i])).collect();
        let max = scores.iter().copied().max().unwrap_or(0);
        left = left
            .iter()
            .zip(&scores)
            .filter(|(_, s)| **s == max)
            .map(|(&i, _)| i)
            .collect();
        if left.len() == 1 {
            break;
        }
    }
    left[0]
}
