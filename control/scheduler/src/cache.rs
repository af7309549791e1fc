//! The scheduler's view of the cluster: one [`NodeInfo`] per node with the
//! resources its pods request, kept up to date from watch events and from
//! the scheduler's own assumptions (a pod is counted on its node from the
//! moment it is chosen, before the API server confirms the binding).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Taint};
use kestrel_api::labels::Selector;
use kestrel_api::quantity;

use crate::pod_info::{HOSTNAME_KEY, HostPort, InvalidPod, PodInfo, Resources, ZONE_KEY};
use crate::volumes::Volumes;
use crate::workloads::Workloads;

/// One node and what is placed on it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    /// Its index among the cache's slots (see [`Cache::matching_pods`]).
    pub slot: usize,
    /// False for a slot that only holds pods of a node we have not seen
    /// (or that was deleted); such slots are never candidates.
    pub present: bool,
    pub labels: BTreeMap<String, String>,
    /// The `kubernetes.io/hostname` label, copied out of `labels`:
    /// spreading reads it on many nodes every cycle, and a map lookup
    /// there costs a cache miss per key it compares.
    pub hostname_label: Option<String>,
    /// The `topology.kubernetes.io/zone` label, likewise.
    pub zone_label: Option<String>,
    pub allocatable: Resources,
    /// Sum of the requests of the pods here.
    pub requested: Resources,
    /// The same with upstream's non-zero defaults, for scoring.
    pub non_zero_requested: Resources,
    /// The node's taints, plus `node.kubernetes.io/not-ready` (or
    /// `unreachable`) NoSchedule when its Ready condition is not True, the
    /// taint upstream's node lifecycle controller would add.
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    /// Pods bound or assumed here.
    pub pods: Vec<Arc<PodInfo>>,
    pub used_ports: Vec<HostPort>,
    /// How many of `pods` carry required pod anti-affinity.
    pub pods_with_required_anti_affinity: usize,
    /// How many of `pods` carry any pod affinity or anti-affinity.
    pub pods_with_affinity: usize,
}

impl NodeInfo {
    /// Build from a Node object. A bad allocatable quantity is an error.
    pub fn set_node(&mut self, node: &Node) -> Result<(), InvalidPod> {
        self.name = node.metadata.name.clone().unwrap_or_default();
        self.present = true;
        self.labels = node.metadata.labels.clone().unwrap_or_default();
        self.hostname_label = self.labels.get(HOSTNAME_KEY).cloned();
        self.zone_label = self.labels.get(ZONE_KEY).cloned();
        let spec = node.spec.as_ref();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let mut taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        let synthetic = match ready {
            Some("True") => None,
            Some("False") => Some("node.kubernetes.io/not-ready"),
            _ => Some("node.kubernetes.io/unreachable"),
        };
        if let Some(key) = synthetic
            && !taints
                .iter()
                .any(|t| t.key == key && t.effect == "NoSchedule")
        {
            taints.push(Taint {
                key: key.to_owned(),
                effect: "NoSchedule".to_owned(),
                ..Default::default()
            });
        }
        self.taints = taints;
        let list = status
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
            .cloned()
            .unwrap_or_default();
        let mut a = Resources::default();
        for (name, q) in &list {
            let bad = |source| InvalidPod {
                field: format!("status.allocatable[{name}]"),
                source,
            };
            match name.as_str() {
                "cpu" => a.milli_cpu = quantity::milli(&q.0).map_err(bad)?,
                "memory" => a.memory = quantity::units(&q.0).map_err(bad)?,
                "ephemeral-storage" => a.ephemeral_storage = quantity::units(&q.0).map_err(bad)?,
                "pods" => a.pods = quantity::units(&q.0).map_err(bad)?,
                _ => {}
            }
        }
        self.allocatable = a;
        Ok(())
    }

    /// A copy with `pods` added, for filtering with nominated pods
    /// counted (upstream's addNominatedPods).
    pub fn with_pods(&self, pods: &[Arc<PodInfo>]) -> Self {
        let mut n = self.clone();
        for p in pods {
            n.add_pod(p.clone());
        }
        n
    }

    fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests);
        self.non_zero_requested.add(&p.non_zero);
        self.used_ports.extend(p.host_ports.iter().cloned());
        if !p.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity += 1;
        }
        if p.has_pod_affinity() {
            self.pods_with_affinity += 1;
        }
        self.pods.push(p);
    }

    fn remove_pod(&mut self, key_ns: &str, key_name: &str) -> Option<Arc<PodInfo>> {
        let i = self
            .pods
            .iter()
            .position(|p| p.namespace == key_ns && p.name == key_name)?;
        let p = self.pods.swap_remove(i);
        self.requested.sub(&p.requests);
        self.non_zero_requested.sub(&p.non_zero);
        for hp in &p.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        if !p.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity -= 1;
        }
        if p.has_pod_affinity() {
            self.pods_with_affinity -= 1;
        }
        Some(p)
    }
}

/// How many pods of one namespace one selector picks on each node slot
/// (terminating pods aside), kept up to date as pods come and go.
#[derive(Debug)]
struct SelectorCounts {
    namespace: String,
    selector: Selector,
    /// Shared with the cycle that asked; copied on write only if a caller
    /// still holds it.
    per_slot: Arc<Vec<u32>>,
    last_used: u64,
}

impl SelectorCounts {
    fn picks(&self, p: &PodInfo) -> bool {
        !p.terminating && p.namespace == self.namespace && self.selector.matches(&p.labels)
    }
}

/// Selectors counted at once; the least recently used goes first.
const MAX_SELECTOR_COUNTS: usize = 32;

#[derive(Debug, Default)]
struct SelectorIndex {
    counts: Vec<SelectorCounts>,
    clock: u64,
}

/// The values one node label takes, numbered, and each slot's.
#[derive(Debug, Clone, Default)]
pub struct LabelValues {
    /// Per slot, an index into `names`, or [`NO_VALUE`] when the node
    /// lacks the label; a slot past the end lacks it too.
    pub ids: Vec<u32>,
    /// Every value seen, in order of first sight (never forgotten).
    pub names: Vec<String>,
    by_name: HashMap<String, u32>,
}

/// A node without the label, in [`LabelValues::ids`].
pub const NO_VALUE: u32 = u32::MAX;

impl LabelValues {
    /// The id of slot `i`'s value.
    pub fn of(&self, i: usize) -> Option<u32> {
        self.ids.get(i).copied().filter(|&id| id != NO_VALUE)
    }

    fn set(&mut self, i: usize, v: Option<&String>) {
        let id = match v {
            None => NO_VALUE,
            Some(v) => match self.by_name.get(v) {
                Some(&id) => id,
                None => {
                    let id = self.names.len() as u32;
                    self.names.push(v.clone());
                    self.by_name.insert(v.clone(), id);
                    id
                }
            },
        };
        if self.ids.len() <= i {
            self.ids.resize(i + 1, NO_VALUE);
        }
        self.ids[i] = id;
    }
}

/// Label keys numbered at once; the least recently used goes first.
const MAX_LABEL_INDEXES: usize = 8;

#[derive(Debug)]
struct LabelIndex {
    key: String,
    values: Arc<LabelValues>,
    last_used: u64,
}

#[derive(Debug)]
struct PlacedPod {
    node: usize,
    assumed: bool,
}

/// All nodes and every pod placed on one.
#[derive(Debug, Default)]
pub struct Cache {
    slots: Vec<NodeInfo>,
    by_name: HashMap<String, usize>,
    /// Slots of present nodes, in a stable order for the rotating start.
    present: Vec<usize>,
    placed: HashMap<String, PlacedPod>,
    /// Where the next cycle starts looking, as upstream rotates it so that
    /// sampling does not always favour the first nodes.
    pub next_start: usize,
    /// Selectors of Services and controllers, for default spreading.
    pub workloads: Workloads,
    /// Claims, volumes and classes, for the volume plugins.
    pub volumes: Volumes,
    /// Per-node counts for the spreading selectors recently asked about.
    /// Filled in from `&self` while a cycle reads the cache, hence the
    /// cell; the cache is only ever used under the scheduler's lock.
    selector_counts: RefCell<SelectorIndex>,
    /// Numbered values of the topology keys recently asked about.
    label_indexes: RefCell<(Vec<LabelIndex>, u64)>,
    /// Pending pods with a nominated node (`status.nominatedNodeName`),
    /// by node name: they hold their room there against pods of lower or
    /// equal priority.
    nominated: HashMap<String, Vec<Arc<PodInfo>>>,
    /// Pod key → its nominated node.
    nominated_of: HashMap<String, String>,
}

impl Cache {
    fn slot(&mut self, name: &str) -> usize {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let i = self.slots.len();
        self.slots.push(NodeInfo {
            name: name.to_owned(),
            slot: i,
            ..Default::default()
        });
        self.by_name.insert(name.to_owned(), i);
        i
    }

    /// Add or update a node. Returns whether pods that did not fit before
    /// might fit now (a new node, or more room, labels, fewer taints...).
    pub fn set_node(&mut self, node: &Node) -> Result<bool, InvalidPod> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let i = self.slot(&name);
        let info = &mut self.slots[i];
        let was_present = info.present;
        let before = (
            info.labels.clone(),
            info.allocatable,
            info.taints.clone(),
            info.unschedulable,
        );
        let set = info.set_node(node);
        self.index_labels(i);
        let info = &mut self.slots[i];
        if let Err(e) = set {
            // Keep the pods; stop offering the node.
            info.present = false;
            self.present.retain(|&j| j != i);
            return Err(e);
        }
        if !was_present {
            self.present.push(i);
            return Ok(true);
        }
        Ok(before
            != (
                info.labels.clone(),
                info.allocatable,
                info.taints.clone(),
                info.unschedulable,
            ))
    }

    /// Keep the label indexes in step with slot `i`'s labels.
    fn index_labels(&mut self, i: usize) {
        let labels = &self.slots[i].labels;
        for ix in &mut self.label_indexes.get_mut().0 {
            Arc::make_mut(&mut ix.values).set(i, labels.get(&ix.key));
        }
    }

    /// The values of node label `key`, numbered, with each slot's: for
    /// counting per topology domain over every node with dense arrays
    /// rather than a string lookup per node. Built on first use, then
    /// kept up to date as nodes change.
    pub fn label_values(&self, key: &str) -> Arc<LabelValues> {
        let mut guard = self.label_indexes.borrow_mut();
        let (indexes, clock) = &mut *guard;
        *clock += 1;
        if let Some(ix) = indexes.iter_mut().find(|ix| ix.key == key) {
            ix.last_used = *clock;
            return ix.values.clone();
        }
        let mut values = LabelValues::default();
        for (i, n) in self.slots.iter().enumerate() {
            values.set(i, n.labels.get(key));
        }
        let values = Arc::new(values);
        if indexes.len() >= MAX_LABEL_INDEXES
            && let Some(oldest) = (0..indexes.len()).min_by_key(|&i| indexes[i].last_used)
        {
            indexes.swap_remove(oldest);
        }
        indexes.push(LabelIndex {
            key: key.to_owned(),
            values: values.clone(),
            last_used: *clock,
        });
        values
    }

    /// Slots of the present nodes, in their stable order.
    pub fn present_slots(&self) -> &[usize] {
        &self.present
    }

    /// The node (present or not) in slot `i`.
    pub fn slot_node(&self, i: usize) -> &NodeInfo {
        &self.slots[i]
    }

    /// The node is gone; its slot stays while pods still name it.
    pub fn remove_node(&mut self, name: &str) {
        if let Some(&i) = self.by_name.get(name) {
            self.slots[i].present = false;
            self.present.retain(|&j| j != i);
        }
    }

    /// Present nodes in their stable order.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &NodeInfo> + Clone {
        self.present.iter().map(|&i| &self.slots[i])
    }

    /// The `i`th present node.
    pub fn node_at(&self, i: usize) -> &NodeInfo {
        &self.slots[self.present[i]]
    }

    /// Number of present nodes.
    pub fn node_count(&self) -> usize {
        self.present.len()
    }

    /// A node by name, present or not.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.by_name.get(name).map(|&i| &self.slots[i])
    }

    /// Whether some placed pod has required anti-affinity (so every
    /// incoming pod must be checked against it).
    pub fn any_required_anti_affinity(&self) -> bool {
        self.nodes().any(|n| n.pods_with_required_anti_affinity > 0)
    }

    /// Record an observed pod on `node`. Confirms an assumption.
    pub fn set_bound(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.place(pod, node, false);
    }

    /// Count `pod` on `node` before the binding is confirmed.
    pub fn assume(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.place(pod, node, true);
    }

    fn place(&mut self, pod: Arc<PodInfo>, node: &str, assumed: bool) {
        let key = pod.key();
        self.remove_pod(&key);
        if !self.nominated_of.is_empty() {
            self.unnominate(&key);
        }
        let i = self.slot(node);
        self.count_pod(i, &pod, true);
        self.slots[i].add_pod(pod);
        self.placed.insert(key, PlacedPod { node: i, assumed });
    }

    /// Keep the selector counts in step with a pod added to or removed
    /// from slot `i`.
    fn count_pod(&mut self, i: usize, pod: &PodInfo, added: bool) {
        for c in &mut self.selector_counts.get_mut().counts {
            if !c.picks(pod) {
                continue;
            }
            let v = Arc::make_mut(&mut c.per_slot);
            if v.len() <= i {
                v.resize(i + 1, 0);
            }
            if added {
                v[i] += 1;
            } else {
                v[i] = v[i].saturating_sub(1);
            }
        }
    }

    /// How many pods in `namespace` that `selector` picks (terminating
    /// ones aside) each node slot holds, indexed by [`NodeInfo::slot`]
    /// (a slot past the end holds none). Counted once per selector and
    /// then kept up to date, so spreading a pod of a large group does not
    /// walk every pod of every node each cycle.
    pub fn matching_pods(&self, namespace: &str, selector: &Selector) -> Arc<Vec<u32>> {
        let mut index = self.selector_counts.borrow_mut();
        index.clock += 1;
        let now = index.clock;
        if let Some(c) = index
            .counts
            .iter_mut()
            .find(|c| c.namespace == namespace && c.selector == *selector)
        {
            c.last_used = now;
            return c.per_slot.clone();
        }
        let mut c = SelectorCounts {
            namespace: namespace.to_owned(),
            selector: selector.clone(),
            per_slot: Arc::new(Vec::new()),
            last_used: now,
        };
        let per_slot: Vec<u32> = self
            .slots
            .iter()
            .map(|n| n.pods.iter().filter(|p| c.picks(p)).count() as u32)
            .collect();
        c.per_slot = Arc::new(per_slot);
        let out = c.per_slot.clone();
        if index.counts.len() >= MAX_SELECTOR_COUNTS
            && let Some(oldest) = (0..index.counts.len()).min_by_key(|&i| index.counts[i].last_used)
        {
            index.counts.swap_remove(oldest);
        }
        index.counts.push(c);
        out
    }

    /// Record where a pending pod is nominated (`None` clears it).
    pub fn nominate(&mut self, pod: &Arc<PodInfo>, node: Option<&str>) {
        let key = pod.key();
        self.unnominate(&key);
        if let Some(node) = node {
            self.nominated
                .entry(node.to_owned())
                .or_default()
                .push(pod.clone());
            self.nominated_of.insert(key, node.to_owned());
        }
    }

    /// The pod is no longer nominated anywhere (bound, deleted, cleared).
    pub fn unnominate(&mut self, key: &str) {
        let Some(node) = self.nominated_of.remove(key) else {
            return;
        };
        if let Some(v) = self.nominated.get_mut(&node) {
            v.retain(|p| p.key() != key);
            if v.is_empty() {
                self.nominated.remove(&node);
            }
        }
    }

    /// Whether any pod is nominated anywhere (cheap; checked each cycle).
    pub fn has_nominated(&self) -> bool {
        !self.nominated_of.is_empty()
    }

    /// The node `key` is nominated to.
    pub fn nominated_node(&self, key: &str) -> Option<&str> {
        self.nominated_of.get(key).map(String::as_str)
    }

    /// Pods nominated to `node`.
    pub fn nominated_on(&self, node: &str) -> &[Arc<PodInfo>] {
        self.nominated.get(node).map_or(&[], Vec::as_slice)
    }

    /// Take a placed pod off its node for a preemption dry run: the pod,
    /// its slot and whether it was assumed, to [`Cache::put_back`].
    pub(crate) fn take_out(&mut self, key: &str) -> Option<(Arc<PodInfo>, usize, bool)> {
        let p = self.placed.remove(key)?;
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let pod = self.slots[p.node].remove_pod(ns, name)?;
        self.count_pod(p.node, &pod, false);
        Some((pod, p.node, p.assumed))
    }

    /// Undo [`Cache::take_out`].
    pub(crate) fn put_back(&mut self, pod: Arc<PodInfo>, slot: usize, assumed: bool) {
        let key = pod.key();
        self.count_pod(slot, &pod, true);
        self.slots[slot].add_pod(pod);
        self.placed.insert(
            key,
            PlacedPod {
                node: slot,
                assumed,
            },
        );
    }

    /// Undo an assumption whose binding failed (no-op if it was observed).
    pub fn forget(&mut self, key: &str) {
        if self.placed.get(key).is_some_and(|p| p.assumed) {
            self.remove_pod(key);
        }
    }

    /// Whether `key` is assumed (or observed) on some node.
    pub fn is_placed(&self, key: &str) -> bool {
        self.placed.contains_key(key)
    }

    /// Keys of every placed pod.
    pub fn pod_keys(&self) -> impl Iterator<Item = &String> {
        self.placed.keys()
    }

    /// The pod is gone (deleted or finished).
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(p) = self.placed.remove(key) else {
            return false;
        };
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        if let Some(pod) = self.slots[p.node].remove_pod(ns, name) {
            self.count_pod(p.node, &pod, false);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ready: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "10"},
                       "conditions": [{"type": "Ready", "status": ready}]}
        }))
        .expect("node")
    }

    fn pod(name: &str, cpu: &str) -> Arc<PodInfo> {
        PodInfo::new(
            &serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}
            }))
            .expect("pod"),
        )
        .expect("valid")
    }

    #[test]
    fn assumed_pods_count_until_forgotten_and_confirmation_does_not_double_count() {
        let mut c = Cache::default();
        assert!(c.set_node(&node("n1", "True")).expect("node"));
        c.assume(pod("a", "500m"), "n1");
        assert_eq!(c.node("n1").expect("n1").requested.milli_cpu, 500);
        // The watch confirms it: still counted once.
        c.set_bound(pod("a", "500m"), "n1");
        assert_eq!(c.node("n1").expect("n1").requested.milli_cpu, 500);
        // A confirmed pod is not forgotten by a late bind failure.
        c.forget("ns/a");
        assert_eq!(c.node("n1").expect("n1").requested.milli_cpu, 500);
        c.assume(pod("b", "1"), "n1");
        c.forget("ns/b");
        let n = c.node("n1").expect("n1");
        assert_eq!((n.requested.milli_cpu, n.requested.pods), (500, 1));
        assert!(c.remove_pod("ns/a"));
        assert_eq!(c.node("n1").expect("n1").requested, Resources::default());
    }

    #[test]
    fn pods_of_an_unseen_node_wait_for_it() {
        let mut c = Cache::default();
        c.set_bound(pod("a", "1"), "later");
        assert_eq!(c.node_count(), 0);
        c.set_node(&node("later", "True")).expect("node");
        assert_eq!(c.node_count(), 1);
        assert_eq!(c.node_at(0).requested.milli_cpu, 1000);
        c.remove_node("later");
        assert_eq!(c.node_count(), 0);
    }

    #[test]
    fn a_node_that_is_not_ready_carries_the_not_ready_taint() {
        let mut c = Cache::default();
        c.set_node(&node("n", "False")).expect("node");
        let n = c.node("n").expect("n");
        assert_eq!(n.taints.len(), 1);
        assert_eq!(n.taints[0].key, "node.kubernetes.io/not-ready");
        assert_eq!(n.allocatable.pods, 10);
        // Becoming ready is a change worth retrying pods for.
        assert!(c.set_node(&node("n", "True")).expect("node"));
        assert!(c.node("n").expect("n").taints.is_empty());
        assert!(!c.set_node(&node("n", "True")).expect("node"));
    }
    fn labeled(name: &str, ns: &str, app: &str, terminating: bool) -> Arc<PodInfo> {
        let mut meta = json!({"name": name, "namespace": ns, "labels": {"app": app}});
        if terminating {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        PodInfo::new(
            &serde_json::from_value(json!({"metadata": meta, "spec": {"containers": []}}))
                .expect("pod"),
        )
        .expect("valid")
    }

    #[test]
    fn selector_counts_follow_pods_as_they_come_and_go() {
        let mut c = Cache::default();
        for n in ["n1", "n2"] {
            c.set_node(&node(n, "True")).expect("node");
        }
        let web = Selector::parse("app=web").expect("selector");
        c.assume(labeled("a", "ns", "web", false), "n1");
        c.assume(labeled("other-ns", "x", "web", false), "n1");
        c.assume(labeled("db", "ns", "db", false), "n2");
        let slot = |c: &Cache, n: &str| c.node(n).expect("node").slot;
        let count = |c: &Cache, n: &str| {
            let s = slot(c, n);
            c.matching_pods("ns", &web).get(s).copied().unwrap_or(0)
        };
        // Counted on first use...
        assert_eq!((count(&c, "n1"), count(&c, "n2")), (1, 0));
        // ...then kept up to date: placed, moved, terminating, forgotten.
        c.assume(labeled("b", "ns", "web", false), "n2");
        assert_eq!((count(&c, "n1"), count(&c, "n2")), (1, 1));
        c.set_bound(labeled("a", "ns", "web", false), "n2");
        assert_eq!((count(&c, "n1"), count(&c, "n2")), (0, 2));
        c.set_bound(labeled("a", "ns", "web", true), "n2");
        assert_eq!(count(&c, "n2"), 1);
        c.forget("ns/b");
        assert_eq!(count(&c, "n2"), 0);
        // A node seen after the counting started.
        c.set_node(&node("n3", "True")).expect("node");
        c.assume(labeled("c", "ns", "web", false), "n3");
        assert_eq!(count(&c, "n3"), 1);
        // A held snapshot does not change under the caller.
        let held = c.matching_pods("ns", &web);
        c.assume(labeled("d", "ns", "web", false), "n1");
        assert_eq!(held.get(slot(&c, "n1")).copied(), Some(0));
        assert_eq!(count(&c, "n1"), 1);
        // Evicted selectors are counted afresh when asked again.
        for i in 0..=MAX_SELECTOR_COUNTS {
            let s = Selector::parse(&format!("app=x{i}")).expect("selector");
            c.matching_pods("ns", &s);
        }
        assert_eq!(count(&c, "n1"), 1);
        assert_eq!(count(&c, "n3"), 1);
    }
}
