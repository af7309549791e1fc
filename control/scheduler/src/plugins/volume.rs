//! Volumes: upstream's VolumeRestrictions and VolumeBinding plugins.
//!
//! - **VolumeRestrictions** turns a pod down when a claim it names does
//!   not exist, or when a `ReadWriteOncePod` claim of it is already used by
//!   another pod. (Its inline-disk conflicts concern GCE PD, EBS, RBD and
//!   iSCSI volumes, which Kestrel does not run.)
//! - **VolumeBinding**: the pre-filter checks every claim the pod uses
//!   (`persistentVolumeClaim` and `ephemeral`, whose claim is
//!   `<pod>-<volume>` and must be the pod's own), turns the pod down while
//!   a claim of an Immediate class is unbound, and narrows the candidates
//!   to the nodes that bound local volumes name (`kubernetes.io/hostname
//!   In`, upstream's PreFilterResult). The filter then checks the node
//!   affinity of bound volumes, and for unbound claims of a
//!   WaitForFirstConsumer class finds an Available volume that fits on the
//!   node (smallest first) or, failing that, a class that can provision
//!   there. [`plan`] says what binding the pod to the chosen node takes
//!   (upstream's PreBind): claims to annotate with
//!   `volume.kubernetes.io/selected-node`, volumes to bind to claims, and
//!   the claims to wait for until the PV controller has bound them.

use std::collections::HashSet;

use super::{CycleState, Filter, Reason};
use crate::cache::{Cache, NodeInfo};
use crate::pod_info::PodInfo;
use crate::volumes::{ClaimInfo, ClaimRef, ClassInfo, READ_WRITE_ONCE_POD, VolumeInfo, Volumes};

const NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
const BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
const PV_NOT_EXIST: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";
const RWOP_CONFLICT: &str =
    "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode";
const UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";

/// Conflicting uses of one claim.
#[derive(Debug, Clone, Copy)]
pub struct VolumeRestrictions;

impl Filter for VolumeRestrictions {
    fn pre_filter(&self, pod: &PodInfo, cache: &Cache, state: &mut CycleState) {
        let mut rwop: Vec<&str> = Vec::new();
        for pc in pod.claims.iter().filter(|c| !c.ephemeral) {
            let Some(c) = cache.volumes.claim(&pod.namespace, &pc.claim) else {
                state.reject(
                    format!("persistentvolumeclaim \"{}\" not found", pc.claim),
                    true,
                );
                return;
            };
            if c.access_modes.iter().any(|m| m == READ_WRITE_ONCE_POD) {
                rwop.push(&pc.claim);
            }
        }
        if rwop.is_empty() {
            return;
        }
        let key = pod.key();
        let in_use = cache.nodes().any(|n| {
            n.pods.iter().any(|p| {
                p.namespace == pod.namespace
                    && p.key() != key
                    && p.claims.iter().any(|c| rwop.contains(&c.claim.as_str()))
            })
        });
        if in_use {
            state.reject(RWOP_CONFLICT.to_owned(), false);
        }
    }

    fn filter(&self, _: &PodInfo, _: &NodeInfo, _: &CycleState) -> Result<(), Vec<Reason>> {
        Ok(())
    }
}

/// One unbound claim of a WaitForFirstConsumer class.
#[derive(Debug)]
struct Delayed {
    claim: ClaimInfo,
    class: Option<ClassInfo>,
    /// The volumes of its class.
    candidates: Vec<VolumeInfo>,
}

/// What the pre-filter found out about the pod's claims.
#[derive(Debug, Default)]
pub(super) struct State {
    /// The volume of each bound claim (`None`: it does not exist).
    bound: Vec<Option<VolumeInfo>>,
    delayed: Vec<Delayed>,
}

/// What one node offers the pod's claims (upstream's FindPodVolumes).
#[derive(Debug, Default)]
struct Evaluation {
    bound_ok: bool,
    volumes_found: bool,
    unbound_ok: bool,
    /// Unbound claims matched to an Available volume on this node.
    bindings: Vec<(VolumeInfo, ClaimInfo)>,
    /// Unbound claims to provision on this node.
    provisions: Vec<ClaimInfo>,
}

impl State {
    /// Upstream's pre-filter: the claims must exist (and an ephemeral
    /// one be the pod's), not be lost or being deleted, and those of
    /// Immediate classes be bound. Returns the state and the node names
    /// bound local volumes allow, or upstream's message.
    fn new(pod: &PodInfo, vols: &Volumes) -> Result<(Self, Option<HashSet<String>>), String> {
        let mut claims = Vec::with_capacity(pod.claims.len());
        for pc in &pod.claims {
            let Some(c) = vols.claim(&pod.namespace, &pc.claim) else {
                return Err(if pc.ephemeral {
                    format!(
                        "waiting for ephemeral volume controller to create the persistentvolumeclaim \"{}\"",
                        pc.claim
                    )
                } else {
                    format!("persistentvolumeclaim \"{}\" not found", pc.claim)
                });
            };
            if c.phase == "Lost" {
                return Err(format!(
                    "persistentvolumeclaim \"{}\" bound to non-existent persistentvolume \"{}\"",
                    c.name, c.volume_name
                ));
            }
            if c.deleting {
                return Err(format!(
                    "persistentvolumeclaim \"{}\" is being deleted",
                    c.name
                ));
            }
            if pc.ephemeral && c.owner_pod.as_deref() != Some(pod.uid.as_str()) {
                return Err(format!(
                    "PVC {ns}/{} was not created for pod {ns}/{} (pod is not owner)",
                    c.name,
                    pod.name,
                    ns = pod.namespace
                ));
            }
            claims.push(c);
        }
        let mut s = Self::default();
        let mut immediate = false;
        let mut names: Option<HashSet<String>> = None;
        let mut missing = false;
        for c in claims {
            if c.fully_bound() {
                let v = vols.volume(&c.volume_name);
                match &v {
                    None => missing = true,
                    Some(v) if !v.node_names.is_empty() => {
                        let these: HashSet<String> = v.node_names.iter().cloned().collect();
                        names = Some(match names {
                            None => these,
                            Some(prev) => prev.intersection(&these).cloned().collect(),
                        });
                    }
                    Some(_) => {}
                }
                s.bound.push(v);
            } else if vols.delays_binding(&c) && c.volume_name.is_empty() {
                s.delayed.push(Delayed {
                    class: vols.class(&c.class).cloned(),
                    candidates: vols.volumes_of_class(&c.class),
                    claim: c,
                });
            } else {
                // Immediate, or pre-bound to a volume by name: the PV
                // controller binds those, not the scheduler.
                immediate = true;
            }
        }
        if immediate {
            return Err(UNBOUND_IMMEDIATE.to_owned());
        }
        if missing {
            names = None;
        }
        Ok((s, names))
    }

    fn evaluate(&self, node: &NodeInfo) -> Evaluation {
        let mut e = Evaluation {
            bound_ok: true,
            volumes_found: true,
            unbound_ok: true,
            ..Evaluation::default()
        };
        for v in &self.bound {
            match v {
                None => {
                    e.volumes_found = false;
                    break;
                }
                Some(v) if !v.node_affinity_matches(&node.labels) => {
                    e.bound_ok = false;
                    break;
                }
                Some(_) => {}
            }
        }
        if self.delayed.is_empty() {
            return e;
        }
        let mut to_provision: Vec<&Delayed> = Vec::new();
        let mut to_match: Vec<&Delayed> = Vec::new();
        for d in &self.delayed {
            match &d.claim.selected_node {
                // Already headed for another node.
                Some(n) if *n != node.name => {
                    e.unbound_ok = false;
                    return e;
                }
                Some(_) => to_provision.push(d),
                None => to_match.push(d),
            }
        }
        let mut chosen: HashSet<String> = HashSet::new();
        for d in to_match {
            match find_matching(&d.claim, &d.candidates, node, &chosen) {
                Some(v) => {
                    chosen.insert(v.name.clone());
                    e.bindings.push((v.clone(), d.claim.clone()));
                }
                None => to_provision.push(d),
            }
        }
        for d in to_provision {
            let ok = d
                .class
                .as_ref()
                .is_some_and(|c| c.provisions() && c.allows(&node.labels));
            if !ok {
                e.unbound_ok = false;
                e.provisions.clear();
                break;
            }
            e.provisions.push(d.claim.clone());
        }
        e
    }
}

/// The volume an unbound claim would get on `node` (upstream's
/// `FindMatchingVolume` on the scheduler's path): one pre-bound to the
/// claim if its node affinity allows the node, else the smallest Available
/// one of the claim's class that is large enough, of the same volume mode,
/// with every access mode the claim asks for, labels its selector accepts
/// and node affinity that allows the node.
fn find_matching<'a>(
    claim: &ClaimInfo,
    candidates: &'a [VolumeInfo],
    node: &NodeInfo,
    chosen: &HashSet<String>,
) -> Option<&'a VolumeInfo> {
    let mut best: Option<&VolumeInfo> = None;
    for v in candidates {
        if chosen.contains(&v.name) {
            continue;
        }
        let prebound = v.bound_to(claim);
        if (v.claim_ref.is_some() && !prebound)
            || v.capacity < claim.request
            || v.block != claim.block
            || v.deleting
        {
            continue;
        }
        let fits_node = v.node_affinity_matches(&node.labels);
        if prebound {
            return fits_node.then_some(v);
        }
        if v.phase != "Available"
            || claim
                .selector
                .as_ref()
                .is_some_and(|s| !s.matches(&v.labels))
            || !fits_node
            || !claim
                .access_modes
                .iter()
                .all(|m| v.access_modes.contains(m))
        {
            continue;
        }
        if best.is_none_or(|b| b.capacity > v.capacity) {
            best = Some(v);
        }
    }
    best
}

/// Bound volumes' node affinity; volumes for unbound claims.
#[derive(Debug, Clone, Copy)]
pub struct VolumeBinding;

impl Filter for VolumeBinding {
    fn pre_filter(&self, pod: &PodInfo, cache: &Cache, state: &mut CycleState) {
        if pod.claims.is_empty() {
            return;
        }
        match State::new(pod, &cache.volumes) {
            Ok((s, names)) => {
                state.volume = Some(s);
                if let Some(names) = names {
                    state.restrict(names, "VolumeBinding");
                }
            }
            Err(message) => state.reject(message, true),
        }
    }

    fn filter(&self, _: &PodInfo, node: &NodeInfo, state: &CycleState) -> Result<(), Vec<Reason>> {
        let Some(s) = &state.volume else {
            return Ok(());
        };
        let e = s.evaluate(node);
        let mut reasons = Vec::new();
        if !e.bound_ok {
            reasons.push(Reason::Static(NODE_CONFLICT));
        }
        if !e.unbound_ok {
            reasons.push(Reason::Static(BIND_CONFLICT));
        }
        if !e.volumes_found {
            reasons.push(Reason::Static(PV_NOT_EXIST));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

/// A claim the scheduler binds to an Available volume itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The volume.
    pub volume: String,
    /// Its resourceVersion when it was chosen: the write fails if it has
    /// changed since.
    pub resource_version: String,
    pub claim: ClaimRef,
    /// False for a volume its author pre-bound to the claim: the PV
    /// controller binds it, the scheduler only waits.
    pub write: bool,
}

/// What binding a pod to its node takes for its unbound claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Claims matched to an existing volume.
    pub bindings: Vec<Binding>,
    /// Claims (`namespace/name`) to be provisioned on the node.
    pub provisions: Vec<String>,
    /// Those of `provisions` whose `volume.kubernetes.io/selected-node` is
    /// not the node yet.
    pub annotate: Vec<String>,
}

impl Plan {
    /// Count the plan's bindings in `vols` until the cycle ends.
    pub fn assume(&self, vols: &mut Volumes, node: &str) {
        for c in &self.provisions {
            vols.assume_node(c, node);
        }
        for b in &self.bindings {
            vols.assume_volume(&b.volume, b.claim.clone());
        }
    }

    /// Drop what [`Self::assume`] counted.
    pub fn forget(&self, vols: &mut Volumes) {
        let volumes: Vec<String> = self.bindings.iter().map(|b| b.volume.clone()).collect();
        vols.forget(&self.provisions, &volumes);
    }

    /// Whether the PV controller has bound every claim of the plan, after
    /// the scheduler wrote its part (upstream's `checkBindings`). `Err`
    /// when a binding came undone: a volume's claimRef or a claim's
    /// selected node reset (a provisioner that gives up on a node removes
    /// the annotation, asking for another). The watch may not show the
    /// scheduler's own writes yet, so a value is only taken as reset once
    /// it has been seen set (`seen` remembers which).
    pub fn check(
        &self,
        cache: &Cache,
        node: &str,
        seen: &mut HashSet<String>,
    ) -> Result<bool, String> {
        let vols = &cache.volumes;
        let claim = |key: &str| {
            vols.stored_claim(key)
                .ok_or_else(|| format!("persistentvolumeclaim {key:?} not found"))
        };
        let mut done = true;
        for b in &self.bindings {
            let key = format!("pv/{}", b.volume);
            let Some(v) = vols.stored_volume(&b.volume) else {
                return Err(format!("persistentvolume {:?} not found", b.volume));
            };
            match &v.claim_ref {
                Some(r)
                    if r.name == b.claim.name
                        && r.namespace == b.claim.namespace
                        && (r.uid == b.claim.uid || (r.uid.is_empty() && !b.write)) =>
                {
                    seen.insert(key);
                }
                None if !seen.contains(&key) => done = false,
                _ => return Err(format!("ClaimRef got reset for pv {:?}", b.volume)),
            }
            let c = claim(&crate::volumes::claim_key(
                &b.claim.namespace,
                &b.claim.name,
            ))?;
            done &= c.fully_bound();
        }
        for key in &self.provisions {
            let c = claim(key)?;
            match c.selected_node.as_deref() {
                Some(n) if n == node => {
                    seen.insert(key.clone());
                }
                None if !seen.contains(key) => {
                    done = false;
                    continue;
                }
                None => {
                    return Err(format!(
                        "selectedNode annotation reset for PVC {:?}",
                        c.name
                    ));
                }
                Some(_) => return Err(format!("provisioning failed for PVC {:?}", c.name)),
            }
            if !c.volume_name.is_empty() {
                // A volume not seen yet may be a watch behind.
                let Some(v) = vols.stored_volume(&c.volume_name) else {
                    done = false;
                    continue;
                };
                let labels = cache.node(node).map(|n| &n.labels);
                if labels.is_some_and(|l| !v.node_affinity_matches(l)) {
                    return Err(format!(
                        "pv {:?} node affinity doesn't match node {node:?}: no matching NodeSelectorTerms",
                        v.name
                    ));
                }
            }
            done &= c.fully_bound();
        }
        Ok(done)
    }
}

/// What binding `pod` to `node` takes (upstream's AssumePodVolumes), or
/// `None` when every claim of it is bound already.
pub fn plan(pod: &PodInfo, node: &str, cache: &Cache) -> Option<Plan> {
    if pod.claims.is_empty() {
        return None;
    }
    let (s, _) = State::new(pod, &cache.volumes).ok()?;
    if s.delayed.is_empty() {
        return None;
    }
    let e = s.evaluate(cache.node(node)?);
    let vols = &cache.volumes;
    let mut p = Plan::default();
    for (v, c) in e.bindings {
        let stored = vols.stored_volume(&v.name);
        p.bindings.push(Binding {
            write: !stored.is_some_and(|s| s.bound_to(&c)),
            resource_version: stored
                .map(|s| s.resource_version.clone())
                .unwrap_or_default(),
            volume: v.name,
            claim: ClaimRef {
                namespace: c.namespace,
                name: c.name,
                uid: c.uid,
            },
        });
    }
    for c in e.provisions {
        let key = c.key();
        let annotated = vols
            .stored_claim(&key)
            .and_then(|s| s.selected_node.as_deref())
            == Some(node);
        if !annotated {
            p.annotate.push(key.clone());
        }
        p.provisions.push(key);
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
    use k8s_openapi::api::storage::v1::StorageClass;
    use serde_json::{Value, json};

    use super::*;
    use crate::plugins::Profile;

    fn cache(nodes: &[(&str, &str, Value)]) -> Cache {
        let mut c = Cache::default();
        for (name, cpu, labels) in nodes {
            let mut l = labels.clone();
            l["kubernetes.io/hostname"] = json!(name);
            let n: Node = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": l},
                "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "10"},
                           "conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .expect("node");
            c.set_node(&n).expect("node");
        }
        c.volumes.synced = true;
        c
    }

    fn class(c: &mut Cache, name: &str, provisioner: &str, mode: &str) {
        let sc: StorageClass = serde_json::from_value(json!({
            "metadata": {"name": name}, "provisioner": provisioner, "volumeBindingMode": mode
        }))
        .expect("class");
        c.volumes.set_class(&sc);
    }

    fn claim(c: &mut Cache, v: Value) {
        let mut v = v;
        v["metadata"]["namespace"] = json!("default");
        if v["metadata"].get("uid").is_none() {
            v["metadata"]["uid"] = json!(format!("uid-{}", v["metadata"]["name"]));
        }
        let pvc: PersistentVolumeClaim = serde_json::from_value(v).expect("pvc");
        c.volumes.set_claim(&pvc);
    }

    fn volume(c: &mut Cache, v: Value) {
        let pv: PersistentVolume = serde_json::from_value(v).expect("pv");
        c.volumes.set_volume(&pv);
    }

    fn on_node(key: &str, values: &[&str]) -> Value {
        json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": key, "operator": "In", "values": values}
        ]}]}})
    }

    fn pod_with(name: &str, cpu: &str, volumes: Value) -> Arc<PodInfo> {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("pod-{name}")},
            "spec": {
                "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}],
                "volumes": volumes
            }
        }))
        .expect("pod");
        PodInfo::new(&p).expect("valid pod")
    }

    fn using(name: &str, claim: &str) -> Arc<PodInfo> {
        pod_with(
            name,
            "100m",
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]),
        )
    }

    fn schedule(c: &mut Cache, p: &PodInfo) -> Result<String, String> {
        Profile::default().schedule(p, c).map_err(|e| e.to_string())
    }

    fn bound_claim(name: &str, pv: &str) -> Value {
        json!({
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
            "spec": {"storageClassName": "local-path", "volumeName": pv,
                     "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound"}
        })
    }

    #[test]
    fn missing_and_unbound_immediate_claims_read_like_upstream() {
        let mut c = cache(&[("a", "2", json!({})), ("b", "2", json!({}))]);
        assert_eq!(
            schedule(&mut c, &using("p", "data")),
            Err("0/2 nodes are available: persistentvolumeclaim \"data\" not found.".into())
        );
        let eph = pod_with(
            "web",
            "100m",
            json!([{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}]),
        );
        assert_eq!(
            schedule(&mut c, &eph),
            Err(
                "0/2 nodes are available: waiting for ephemeral volume controller to create \
                 the persistentvolumeclaim \"web-scratch\"."
                    .into()
            )
        );
        // Someone else's claim of that name is not the pod's.
        claim(
            &mut c,
            json!({"metadata": {"name": "web-scratch"}, "spec": {}}),
        );
        assert_eq!(
            schedule(&mut c, &eph),
            Err(
                "0/2 nodes are available: PVC default/web-scratch was not created for pod \
                 default/web (pod is not owner)."
                    .into()
            )
        );
        // No class, or an Immediate one: the PV controller must bind first.
        class(&mut c, "fast", "example.com/fast", "Immediate");
        claim(
            &mut c,
            json!({"metadata": {"name": "data"}, "spec": {"storageClassName": "fast"}}),
        );
        assert_eq!(
            schedule(&mut c, &using("p", "data")),
            Err(
                "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims.".into()
            )
        );
        claim(
            &mut c,
            json!({"metadata": {"name": "data", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {}}),
        );
        assert_eq!(
            schedule(&mut c, &using("p", "data")),
            Err("0/2 nodes are available: persistentvolumeclaim \"data\" is being deleted.".into())
        );
    }

    #[test]
    fn bound_local_volumes_pin_the_pod_to_their_node() {
        let mut c = cache(&[
            ("a", "2", json!({"topology.kubernetes.io/zone": "z1"})),
            ("b", "2", json!({"topology.kubernetes.io/zone": "z2"})),
            ("c", "2", json!({"topology.kubernetes.io/zone": "z2"})),
        ]);
        volume(
            &mut c,
            json!({"metadata": {"name": "pv-b"},
                   "spec": {"nodeAffinity": on_node("kubernetes.io/hostname", &["b"]),
                            "storageClassName": "local-path"}}),
        );
        claim(&mut c, bound_claim("data", "pv-b"));
        for _ in 0..10 {
            assert_eq!(schedule(&mut c, &using("p", "data")), Ok("b".into()));
        }
        // The other nodes are not even filtered: upstream's PreFilterResult.
        let big = pod_with(
            "big",
            "3",
            json!([{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]),
        );
        assert_eq!(
            schedule(&mut c, &big),
            Err("0/3 nodes are available: 1 Insufficient cpu, \
                 2 node(s) didn't satisfy plugin(s) [VolumeBinding]."
                .into())
        );
        // Affinity by zone goes through the filter.
        volume(
            &mut c,
            json!({"metadata": {"name": "pv-z1"},
                   "spec": {"nodeAffinity": on_node("topology.kubernetes.io/zone", &["z1"])}}),
        );
        claim(&mut c, bound_claim("zonal", "pv-z1"));
        assert_eq!(schedule(&mut c, &using("q", "zonal")), Ok("a".into()));
        let both = pod_with(
            "both",
            "100m",
            json!([{"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                   {"name": "z", "persistentVolumeClaim": {"claimName": "zonal"}}]),
        );
        assert_eq!(
            schedule(&mut c, &both),
            Err(
                "0/3 nodes are available: 1 node(s) had volume node affinity conflict, \
                 2 node(s) didn't satisfy plugin(s) [VolumeBinding]."
                    .into()
            )
        );
        // Two local volumes on different nodes: no node at all.
        volume(
            &mut c,
            json!({"metadata": {"name": "pv-c"},
                   "spec": {"nodeAffinity": on_node("kubernetes.io/hostname", &["c"])}}),
        );
        claim(&mut c, bound_claim("other", "pv-c"));
        let split = pod_with(
            "split",
            "100m",
            json!([{"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                   {"name": "o", "persistentVolumeClaim": {"claimName": "other"}}]),
        );
        assert_eq!(
            schedule(&mut c, &split),
            Err("0/3 nodes are available: node(s) didn't satisfy plugin VolumeBinding.".into())
        );
        // A claim bound to a volume that does not exist.
        claim(&mut c, bound_claim("orphan", "gone"));
        assert_eq!(
            schedule(&mut c, &using("r", "orphan")),
            Err(
                "0/3 nodes are available: 3 node(s) unavailable due to one or more pvc(s) \
                 bound to non-existent pv(s)."
                    .into()
            )
        );
    }

    #[test]
    fn wait_for_first_consumer_claims_are_provisioned_on_the_chosen_node() {
        let mut c = cache(&[("a", "2", json!({})), ("b", "4", json!({}))]);
        class(
            &mut c,
            "local-path",
            "kestrel.io/local-path",
            "WaitForFirstConsumer",
        );
        claim(
            &mut c,
            json!({"metadata": {"name": "data"},
                   "spec": {"storageClassName": "local-path", "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}}}}),
        );
        let p = using("p", "data");
        let node = schedule(&mut c, &p).expect("fits");
        let plan = plan(&p, &node, &c).expect("a plan");
        assert_eq!(plan.provisions, ["default/data"]);
        assert_eq!(plan.annotate, ["default/data"]);
        assert!(plan.bindings.is_empty());
        // Assumed: the next pod of the same claim follows it there.
        plan.assume(&mut c.volumes, &node);
        for _ in 0..10 {
            assert_eq!(schedule(&mut c, &using("q", "data")), Ok(node.clone()));
        }
        // Until the binding cycle ends; then the stored annotation counts.
        plan.forget(&mut c.volumes);
        claim(
            &mut c,
            json!({"metadata": {"name": "data", "annotations": {"volume.kubernetes.io/selected-node": "a"}},
                   "spec": {"storageClassName": "local-path"}}),
        );
        let mut q = pod_with(
            "q",
            "3",
            json!([{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]),
        );
        assert_eq!(
            schedule(&mut c, &q),
            Err(
                "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't find available \
                 persistent volumes to bind."
                    .into()
            )
        );
        q = using("q", "data");
        assert_eq!(schedule(&mut c, &q).as_deref(), Ok("a"));
        let plan = super::plan(&q, "a", &c).expect("a plan");
        assert_eq!(plan.provisions, ["default/data"]);
        assert!(plan.annotate.is_empty(), "already annotated: {plan:?}");
    }

    #[test]
    fn without_a_provisioner_only_nodes_with_a_matching_volume_pass() {
        let mut c = cache(&[
            ("a", "2", json!({})),
            ("b", "2", json!({})),
            ("c", "2", json!({})),
        ]);
        class(
            &mut c,
            "manual",
            "kubernetes.io/no-provisioner",
            "WaitForFirstConsumer",
        );
        claim(
            &mut c,
            json!({"metadata": {"name": "data"},
                   "spec": {"storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "5Gi"}}}}),
        );
        assert_eq!(
            schedule(&mut c, &using("p", "data")),
            Err(
                "0/3 nodes are available: 3 node(s) didn't find available persistent volumes \
                 to bind."
                    .into()
            )
        );
        let pv = |name: &str, node: &str, size: &str, phase: &str, modes: Value| {
            json!({"metadata": {"name": name, "resourceVersion": "7"},
                   "spec": {"storageClassName": "manual", "capacity": {"storage": size},
                            "accessModes": modes,
                            "nodeAffinity": on_node("kubernetes.io/hostname", &[node])},
                   "status": {"phase": phase}})
        };
        volume(
            &mut c,
            pv(
                "small-on-a",
                "a",
                "1Gi",
                "Available",
                json!(["ReadWriteOnce"]),
            ),
        );
        volume(
            &mut c,
            pv(
                "rox-on-a",
                "a",
                "10Gi",
                "Available",
                json!(["ReadOnlyMany"]),
            ),
        );
        volume(
            &mut c,
            pv("taken-on-c", "c", "10Gi", "Bound", json!(["ReadWriteOnce"])),
        );
        volume(
            &mut c,
            pv(
                "big-on-b",
                "b",
                "100Gi",
                "Available",
                json!(["ReadWriteOnce"]),
            ),
        );
        volume(
            &mut c,
            pv(
                "fit-on-b",
                "b",
                "8Gi",
                "Available",
                json!(["ReadWriteOnce"]),
            ),
        );
        let p = using("p", "data");
        assert_eq!(schedule(&mut c, &p), Ok("b".into()));
        let plan = plan(&p, "b", &c).expect("a plan");
        // The smallest that is large enough.
        assert_eq!(
            plan.bindings,
            [Binding {
                volume: "fit-on-b".into(),
                resource_version: "7".into(),
                claim: ClaimRef {
                    namespace: "default".into(),
                    name: "data".into(),
                    uid: "uid-\"data\"".into(),
                },
                write: true,
            }]
        );
        assert!(plan.provisions.is_empty());
        // Assumed, the volume is taken for another claim.
        plan.assume(&mut c.volumes, "b");
        claim(
            &mut c,
            json!({"metadata": {"name": "more"},
                   "spec": {"storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "5Gi"}}}}),
        );
        let q = using("q", "more");
        assert_eq!(schedule(&mut c, &q), Ok("b".into()));
        assert_eq!(
            super::plan(&q, "b", &c).expect("plan").bindings[0].volume,
            "big-on-b"
        );
    }

    #[test]
    fn a_read_write_once_pod_claim_takes_one_pod() {
        let mut c = cache(&[("a", "2", json!({})), ("b", "2", json!({}))]);
        volume(&mut c, json!({"metadata": {"name": "pv"}, "spec": {}}));
        let mut v = bound_claim("solo", "pv");
        v["spec"]["accessModes"] = json!(["ReadWriteOncePod"]);
        claim(&mut c, v);
        let first = using("first", "solo");
        let n = schedule(&mut c, &first).expect("fits");
        c.assume(first, &n);
        assert_eq!(
            schedule(&mut c, &using("second", "solo")),
            Err(
                "0/2 nodes are available: node has pod using PersistentVolumeClaim with the \
                 same name and ReadWriteOncePod access mode."
                    .into()
            )
        );
        assert!(c.remove_pod("default/first"));
        assert!(schedule(&mut c, &using("second", "solo")).is_ok());
    }

    #[test]
    fn a_binding_completes_once_the_pv_controller_has_bound_the_claim() {
        let mut c = cache(&[("a", "2", json!({}))]);
        class(
            &mut c,
            "local-path",
            "kestrel.io/local-path",
            "WaitForFirstConsumer",
        );
        let unbound = json!({"metadata": {"name": "data", "uid": "u"},
                             "spec": {"storageClassName": "local-path"}});
        claim(&mut c, unbound.clone());
        let p = using("p", "data");
        let plan = plan(&p, "a", &c).expect("plan");
        let mut seen = HashSet::new();
        // Our own annotation is not in the watch yet: wait.
        assert_eq!(plan.check(&c, "a", &mut seen), Ok(false));
        let mut annotated = unbound.clone();
        annotated["metadata"]["annotations"] = json!({"volume.kubernetes.io/selected-node": "a"});
        claim(&mut c, annotated.clone());
        assert_eq!(plan.check(&c, "a", &mut seen), Ok(false));
        let mut bound = annotated.clone();
        bound["spec"]["volumeName"] = json!("pvc-u");
        bound["status"] = json!({"phase": "Bound"});
        bound["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
        claim(&mut c, bound);
        // The volume is not seen yet.
        assert_eq!(plan.check(&c, "a", &mut seen), Ok(false));
        volume(
            &mut c,
            json!({"metadata": {"name": "pvc-u"},
                   "spec": {"nodeAffinity": on_node("kubernetes.io/hostname", &["a"])}}),
        );
        assert_eq!(plan.check(&c, "a", &mut seen), Ok(true));
        // A provisioner that gives up removes the annotation.
        claim(&mut c, unbound);
        assert_eq!(
            plan.check(&c, "a", &mut seen),
            Err("selectedNode annotation reset for PVC \"data\"".into())
        );
    }
}
