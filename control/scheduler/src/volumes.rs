//! What the volume plugins need of PersistentVolumeClaims,
//! PersistentVolumes and StorageClasses, kept from their watches (the
//! objects themselves are not kept), plus the scheduler's own
//! assumptions for bindings in flight, as upstream's assume cache keeps
//! them: once a node is chosen for a pod, its claims count as annotated
//! with that node (and its statically matched volumes as taken) until the
//! binding cycle ends, so the next pod already sees them.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kestrel_api::labels::{NodeTerm, Selector};
use kestrel_api::quantity;

/// The node the scheduler chose for a claim of a WaitForFirstConsumer
/// class; the provisioner creates the volume there.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Set by the PV controller once it has bound a claim.
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// Set on a volume the scheduler (or the PV controller) bound.
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The class of claims and volumes that predate `storageClassName`.
const ANN_BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
/// A class whose volumes are only ever created by hand.
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
/// The access mode that allows one pod only.
pub const READ_WRITE_ONCE_POD: &str = "ReadWriteOncePod";
const HOSTNAME_KEY: &str = "kubernetes.io/hostname";

/// `namespace/name`.
pub fn claim_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Which claim a volume is bound (or pre-bound) to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
    /// Empty for a volume pre-bound by name only.
    pub uid: String,
}

/// A PersistentVolumeClaim, as scheduling reads it.
#[derive(Debug, Clone, Default)]
pub struct ClaimInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    /// The beta annotation, else `spec.storageClassName`, else "" (upstream's
    /// `GetPersistentVolumeClaimClass`).
    pub class: String,
    /// `spec.volumeName`.
    pub volume_name: String,
    /// `status.phase`.
    pub phase: String,
    pub bind_completed: bool,
    /// Has a deletionTimestamp.
    pub deleting: bool,
    /// `volume.kubernetes.io/selected-node`, as stored.
    pub selected_node: Option<String>,
    /// `spec.resources.requests.storage` in bytes (0 when missing or invalid).
    pub request: i64,
    pub access_modes: Vec<String>,
    /// `volumeMode: Block`.
    pub block: bool,
    /// `spec.selector`; an invalid one selects nothing.
    pub selector: Option<Selector>,
    /// The uid of the Pod that controls it (ephemeral volumes).
    pub owner_pod: Option<String>,
}

impl ClaimInfo {
    fn new(c: &PersistentVolumeClaim) -> Self {
        let meta = &c.metadata;
        let spec = c.spec.clone().unwrap_or_default();
        let annotations = meta.annotations.clone().unwrap_or_default();
        Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            class: annotations
                .get(ANN_BETA_CLASS)
                .cloned()
                .or(spec.storage_class_name)
                .unwrap_or_default(),
            volume_name: spec.volume_name.unwrap_or_default(),
            phase: c
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
            bind_completed: annotations.contains_key(ANN_BIND_COMPLETED),
            deleting: meta.deletion_timestamp.is_some(),
            selected_node: annotations.get(ANN_SELECTED_NODE).cloned(),
            request: spec
                .resources
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").map(|q| quantity::units(&q.0)))
                .and_then(Result::ok)
                .unwrap_or(0),
            access_modes: spec.access_modes.unwrap_or_default(),
            block: spec.volume_mode.as_deref() == Some("Block"),
            selector: spec
                .selector
                .map(|s| Selector::from_label_selector(&s).unwrap_or_else(|_| Selector::nothing())),
            owner_pod: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true) && o.kind == "Pod" && o.api_version == "v1")
                .map(|o| o.uid.clone()),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        claim_key(&self.namespace, &self.name)
    }

    /// Bound to a volume, and the PV controller has finished binding it
    /// (upstream reads only the `bind-completed` annotation; a claim whose
    /// phase says Bound counts too).
    pub fn fully_bound(&self) -> bool {
        !self.volume_name.is_empty() && (self.bind_completed || self.phase == "Bound")
    }
}

/// A PersistentVolume, as scheduling reads it.
#[derive(Debug, Clone, Default)]
pub struct VolumeInfo {
    pub name: String,
    pub resource_version: String,
    /// The beta annotation, else `spec.storageClassName`, else "".
    pub class: String,
    /// `spec.capacity.storage` in bytes.
    pub capacity: i64,
    pub access_modes: Vec<String>,
    pub block: bool,
    /// The required node affinity terms (ORed); `None` without affinity.
    /// An invalid term matches no node.
    pub node_affinity: Option<Vec<NodeTerm>>,
    /// The node names its affinity pins it to (upstream's
    /// `GetLocalPersistentVolumeNodeNames`: per term the `kubernetes.io/
    /// hostname In` values, intersected, over terms united); empty when
    /// it pins nothing by name.
    pub node_names: Vec<String>,
    pub claim_ref: Option<ClaimRef>,
    /// `status.phase`.
    pub phase: String,
    pub labels: BTreeMap<String, String>,
    pub deleting: bool,
}

impl VolumeInfo {
    fn new(pv: &PersistentVolume) -> Self {
        let meta = &pv.metadata;
        let spec = pv.spec.clone().unwrap_or_default();
        let required = spec
            .node_affinity
            .as_ref()
            .and_then(|a| a.required.as_ref());
        let mut node_names: Vec<String> = Vec::new();
        for t in required.iter().flat_map(|r| &r.node_selector_terms) {
            let mut term: Option<Vec<String>> = None;
            for e in t.match_expressions.iter().flatten() {
                if e.key == HOSTNAME_KEY && e.operator == "In" {
                    let vals = e.values.clone().unwrap_or_default();
                    term = Some(match term {
                        None => vals,
                        Some(prev) => prev.into_iter().filter(|v| vals.contains(v)).collect(),
                    });
                }
            }
            for v in term.into_iter().flatten() {
                if !node_names.contains(&v) {
                    node_names.push(v);
                }
            }
        }
        node_names.sort();
        Self {
            name: meta.name.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            class: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANN_BETA_CLASS).cloned())
                .or(spec.storage_class_name)
                .unwrap_or_default(),
            capacity: spec
                .capacity
                .as_ref()
                .and_then(|c| c.get("storage"))
                .and_then(|q| quantity::units(&q.0).ok())
                .unwrap_or(0),
            access_modes: spec.access_modes.unwrap_or_default(),
            block: spec.volume_mode.as_deref() == Some("Block"),
            node_affinity: required.map(|r| {
                r.node_selector_terms
                    .iter()
                    .map(|t| NodeTerm::new(t).unwrap_or_default())
                    .collect()
            }),
            node_names,
            claim_ref: spec.claim_ref.map(|r| ClaimRef {
                namespace: r.namespace.unwrap_or_default(),
                name: r.name.unwrap_or_default(),
                uid: r.uid.unwrap_or_default(),
            }),
            phase: pv
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
        }
    }

    /// Whether a node with `labels` satisfies the required node affinity
    /// (upstream's `CheckNodeAffinity`, which reads labels only).
    pub fn node_affinity_matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.node_affinity {
            None => true,
            Some(terms) => terms.iter().any(|t| t.matches(labels, "")),
        }
    }

    /// Bound or pre-bound to `claim` (by name, and by uid when it has one).
    pub fn bound_to(&self, claim: &ClaimInfo) -> bool {
        self.claim_ref.as_ref().is_some_and(|r| {
            r.name == claim.name
                && r.namespace == claim.namespace
                && (r.uid.is_empty() || r.uid == claim.uid)
        })
    }
}

/// A StorageClass, as scheduling reads it.
#[derive(Debug, Clone, Default)]
pub struct ClassInfo {
    pub provisioner: String,
    /// `volumeBindingMode: WaitForFirstConsumer` (unset is Immediate).
    pub wait_for_first_consumer: bool,
    /// `allowedTopologies`: ORed terms of ANDed (key, values).
    pub allowed_topologies: Vec<Vec<(String, Vec<String>)>>,
}

impl ClassInfo {
    fn new(sc: &StorageClass) -> Self {
        Self {
            provisioner: sc.provisioner.clone(),
            wait_for_first_consumer: sc.volume_binding_mode.as_deref()
                == Some("WaitForFirstConsumer"),
            allowed_topologies: sc
                .allowed_topologies
                .iter()
                .flatten()
                .map(|t| {
                    t.match_label_expressions
                        .iter()
                        .flatten()
                        .map(|e| (e.key.clone(), e.values.clone()))
                        .collect()
                })
                .collect(),
        }
    }

    /// Whether the class can provision at all.
    pub fn provisions(&self) -> bool {
        !self.provisioner.is_empty() && self.provisioner != NO_PROVISIONER
    }

    /// Whether a node with `labels` is in the class's allowed topologies
    /// (none listed allows every node).
    pub fn allows(&self, labels: &BTreeMap<String, String>) -> bool {
        self.allowed_topologies.is_empty()
            || self.allowed_topologies.iter().any(|term| {
                term.iter()
                    .all(|(k, vs)| labels.get(k).is_some_and(|v| vs.contains(v)))
            })
    }
}

/// The three storage kinds, as the scheduler sees them.
#[derive(Debug, Default)]
pub struct Volumes {
    claims: HashMap<String, ClaimInfo>,
    volumes: HashMap<String, VolumeInfo>,
    classes: HashMap<String, ClassInfo>,
    /// Claim key → the node a binding in flight annotates it with.
    assumed_nodes: HashMap<String, String>,
    /// Volume name → the claim a binding in flight binds it to.
    assumed_volumes: HashMap<String, ClaimRef>,
    /// All three kinds have been listed (or are not served).
    pub synced: bool,
}

impl Volumes {
    /// Add or update a claim.
    pub fn set_claim(&mut self, c: &PersistentVolumeClaim) {
        let info = ClaimInfo::new(c);
        self.claims.insert(info.key(), info);
    }

    /// Add or update a volume.
    pub fn set_volume(&mut self, pv: &PersistentVolume) {
        let info = VolumeInfo::new(pv);
        self.volumes.insert(info.name.clone(), info);
    }

    /// Add or update a class.
    pub fn set_class(&mut self, sc: &StorageClass) {
        self.classes.insert(
            sc.metadata.name.clone().unwrap_or_default(),
            ClassInfo::new(sc),
        );
    }

    /// A claim is gone (`namespace/name`).
    pub fn remove_claim(&mut self, key: &str) {
        self.claims.remove(key);
    }

    /// A volume is gone.
    pub fn remove_volume(&mut self, name: &str) {
        self.volumes.remove(name);
    }

    /// A class is gone.
    pub fn remove_class(&mut self, name: &str) {
        self.classes.remove(name);
    }

    /// Keys of every claim, volume and class, for a relist.
    pub fn claim_keys(&self) -> Vec<String> {
        self.claims.keys().cloned().collect()
    }

    /// Names of every volume.
    pub fn volume_names(&self) -> Vec<String> {
        self.volumes.keys().cloned().collect()
    }

    /// Names of every class.
    pub fn class_names(&self) -> Vec<String> {
        self.classes.keys().cloned().collect()
    }

    /// A claim, with the node an assumed binding gave it.
    pub fn claim(&self, namespace: &str, name: &str) -> Option<ClaimInfo> {
        let key = claim_key(namespace, name);
        let mut c = self.claims.get(&key)?.clone();
        if let Some(n) = self.assumed_nodes.get(&key) {
            c.selected_node = Some(n.clone());
        }
        Some(c)
    }

    /// A claim as stored (no assumption applied).
    pub fn stored_claim(&self, key: &str) -> Option<&ClaimInfo> {
        self.claims.get(key)
    }

    /// A volume, with the claim an assumed binding gave it.
    pub fn volume(&self, name: &str) -> Option<VolumeInfo> {
        let mut v = self.volumes.get(name)?.clone();
        if let Some(r) = self.assumed_volumes.get(name) {
            v.claim_ref = Some(r.clone());
        }
        Some(v)
    }

    /// A volume as stored (no assumption applied).
    pub fn stored_volume(&self, name: &str) -> Option<&VolumeInfo> {
        self.volumes.get(name)
    }

    /// Every volume of `class`, assumptions applied.
    pub fn volumes_of_class(&self, class: &str) -> Vec<VolumeInfo> {
        let mut out: Vec<VolumeInfo> = self
            .volumes
            .values()
            .filter(|v| v.class == class)
            .map(|v| self.volume(&v.name).unwrap_or_else(|| v.clone()))
            .collect();
        // A stable order, so equal candidates are chosen alike each time.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A class by name.
    pub fn class(&self, name: &str) -> Option<&ClassInfo> {
        self.classes.get(name)
    }

    /// Whether binding `claim` waits for its first consumer: its class
    /// exists and says WaitForFirstConsumer (upstream's
    /// `IsDelayBindingMode`; no class, or a class not found, is Immediate).
    pub fn delays_binding(&self, claim: &ClaimInfo) -> bool {
        !claim.class.is_empty()
            && self
                .classes
                .get(&claim.class)
                .is_some_and(|c| c.wait_for_first_consumer)
    }

    /// Count `claim_key` as annotated with `node` until [`Self::forget`].
    pub fn assume_node(&mut self, claim_key: &str, node: &str) {
        self.assumed_nodes
            .insert(claim_key.to_owned(), node.to_owned());
    }

    /// Count volume `name` as bound to `claim` until [`Self::forget`].
    pub fn assume_volume(&mut self, name: &str, claim: ClaimRef) {
        self.assumed_volumes.insert(name.to_owned(), claim);
    }

    /// Drop the assumptions of one binding cycle.
    pub fn forget(&mut self, claims: &[String], volumes: &[String]) {
        for c in claims {
            self.assumed_nodes.remove(c);
        }
        for v in volumes {
            self.assumed_volumes.remove(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(v: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(v).expect("pv")
    }

    #[test]
    fn local_node_names_follow_upstream() {
        // Per term the hostname In values intersect; terms unite; a term
        // without a hostname expression adds nothing.
        let v = VolumeInfo::new(&pv(json!({
            "metadata": {"name": "v"},
            "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["a", "b"]},
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["b", "c"]}
                ]},
                {"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["d"]}
                ]},
                {"matchExpressions": [
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z"]}
                ]}
            ]}}}
        })));
        assert_eq!(v.node_names, ["b", "d"]);
        let labels = |h: &str| BTreeMap::from([(HOSTNAME_KEY.to_owned(), h.to_owned())]);
        assert!(v.node_affinity_matches(&labels("d")));
        assert!(!v.node_affinity_matches(&labels("a")));
    }

    #[test]
    fn assumptions_show_until_forgotten() {
        let mut vs = Volumes::default();
        vs.set_claim(
            &serde_json::from_value(json!({
                "metadata": {"name": "c", "namespace": "ns", "uid": "u1",
                             "annotations": {"volume.beta.kubernetes.io/storage-class": "old"}},
                "spec": {"storageClassName": "new", "resources": {"requests": {"storage": "1Gi"}}}
            }))
            .expect("pvc"),
        );
        let c = vs.claim("ns", "c").expect("claim");
        assert_eq!((c.class.as_str(), c.request), ("old", 1 << 30));
        assert_eq!(c.selected_node, None);
        vs.assume_node("ns/c", "n1");
        assert_eq!(
            vs.claim("ns", "c").and_then(|c| c.selected_node).as_deref(),
            Some("n1")
        );
        assert_eq!(
            vs.stored_claim("ns/c")
                .and_then(|c| c.selected_node.clone()),
            None
        );
        vs.forget(&["ns/c".to_owned()], &[]);
        assert_eq!(vs.claim("ns", "c").and_then(|c| c.selected_node), None);
    }
}
