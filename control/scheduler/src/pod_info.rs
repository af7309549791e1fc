//! What the scheduler needs of a Pod, computed once when the Pod is seen
//! rather than on every node of every cycle.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, Pod, PodAffinityTerm, PodSpec, Toleration, TopologySpreadConstraint,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kestrel_api::labels::{NodeTerm, Selector};
use kestrel_api::quantity;

/// Requests of the resources the scheduler accounts for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub milli_cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Bytes.
    pub ephemeral_storage: i64,
    /// Pod slots.
    pub pods: i64,
}

impl Resources {
    fn max(self, o: Self) -> Self {
        Self {
            milli_cpu: self.milli_cpu.max(o.milli_cpu),
            memory: self.memory.max(o.memory),
            ephemeral_storage: self.ephemeral_storage.max(o.ephemeral_storage),
            pods: self.pods.max(o.pods),
        }
    }

    /// Adds `o` (saturating: accounting never overflows on silly input).
    pub fn add(&mut self, o: &Self) {
        self.milli_cpu = self.milli_cpu.saturating_add(o.milli_cpu);
        self.memory = self.memory.saturating_add(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_add(o.ephemeral_storage);
        self.pods = self.pods.saturating_add(o.pods);
    }

    /// Subtracts `o`.
    pub fn sub(&mut self, o: &Self) {
        self.milli_cpu = self.milli_cpu.saturating_sub(o.milli_cpu);
        self.memory = self.memory.saturating_sub(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_sub(o.ephemeral_storage);
        self.pods = self.pods.saturating_sub(o.pods);
    }
}

/// Upstream's defaults for scoring a container that requests nothing, so
/// that many zero-request pods do not all pile onto one node.
const DEFAULT_MILLI_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 << 20;

/// A host port a pod asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// "0.0.0.0" when unset.
    pub ip: String,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    /// Two host ports conflict on the same port and protocol when their
    /// addresses are equal or either is the wildcard.
    pub fn conflicts(&self, o: &Self) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || self.ip == "0.0.0.0" || o.ip == "0.0.0.0")
    }
}

/// An inter-pod affinity term with its namespaces resolved.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    /// Namespaces the term selects pods in; empty with `all_namespaces`.
    pub namespaces: Vec<String>,
    /// An empty namespaceSelector: every namespace.
    pub all_namespaces: bool,
    /// Converted once; a missing or invalid selector selects nothing, as
    /// upstream.
    pub selector: Selector,
    /// The node label that defines the topology domain.
    pub topology_key: String,
    /// For preferred terms; 1 for required ones.
    pub weight: i64,
}

impl AffinityTerm {
    fn new(t: &PodAffinityTerm, own_ns: &str, weight: i32) -> Self {
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        // An empty selector selects every namespace. A non-empty one needs
        // namespace labels, which this scheduler does not watch; the listed
        // namespaces still apply (documented in docs/architecture.md).
        let all_namespaces = t.namespace_selector.as_ref().is_some_and(|s| {
            s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
        });
        if namespaces.is_empty() && t.namespace_selector.is_none() {
            namespaces.push(own_ns.to_owned());
        }
        Self {
            namespaces,
            all_namespaces,
            selector: selector(t.label_selector.as_ref()),
            topology_key: t.topology_key.clone(),
            weight: i64::from(weight),
        }
    }

    /// Whether this term selects the pod `ns`/`labels`.
    pub fn matches(&self, ns: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.all_namespaces || self.namespaces.iter().any(|n| n == ns))
            && self.selector.matches(labels)
    }
}

/// A topology spread constraint, ready to count with.
#[derive(Debug, Clone)]
pub struct SpreadConstraint {
    /// Allowed difference from the least loaded domain.
    pub max_skew: i64,
    /// The node label that defines a domain.
    pub topology_key: String,
    /// DoNotSchedule (true) or ScheduleAnyway.
    pub hard: bool,
    /// Which pods count (matchLabelKeys already merged in); a missing or
    /// invalid selector counts none.
    pub selector: Selector,
    /// Fewer eligible domains than this make the global minimum 0.
    pub min_domains: i64,
    /// nodeAffinityPolicy: Honor (default) counts only nodes the pod's
    /// nodeSelector/affinity accepts.
    pub honor_node_affinity: bool,
    /// nodeTaintsPolicy: Honor counts only nodes whose taints it tolerates
    /// (default Ignore).
    pub honor_taints: bool,
}

/// The node label of upstream's per-node topology, which spreading counts
/// on the node itself rather than over the whole cluster.
pub const HOSTNAME_KEY: &str = "kubernetes.io/hostname";
/// The node label of zones.
pub const ZONE_KEY: &str = "topology.kubernetes.io/zone";

impl SpreadConstraint {
    fn new(c: &TopologySpreadConstraint, labels: &BTreeMap<String, String>) -> Self {
        let mut ls = c.label_selector.clone();
        if let (Some(sel), Some(keys)) = (ls.as_mut(), c.match_label_keys.as_ref()) {
            let ml = sel.match_labels.get_or_insert_with(BTreeMap::new);
            for k in keys {
                if let Some(v) = labels.get(k) {
                    ml.insert(k.clone(), v.clone());
                }
            }
        }
        Self {
            max_skew: i64::from(c.max_skew),
            topology_key: c.topology_key.clone(),
            hard: c.when_unsatisfiable != "ScheduleAnyway",
            selector: selector(ls.as_ref()),
            min_domains: i64::from(c.min_domains.unwrap_or(1)),
            honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        }
    }

    /// One of upstream's system default constraints (`defaultingType:
    /// System`): ScheduleAnyway over `topology_key` with the pod's default
    /// selector, default policies.
    pub fn system_default(topology_key: &str, max_skew: i64, selector: Selector) -> Self {
        Self {
            max_skew,
            topology_key: topology_key.to_owned(),
            hard: false,
            selector,
            min_domains: 1,
            honor_node_affinity: true,
            honor_taints: false,
        }
    }

    /// Whether this constraint counts the pod `ns`/`labels`. Only pods in
    /// the incoming pod's namespace count, as upstream.
    pub fn counts(&self, own_ns: &str, ns: &str, labels: &BTreeMap<String, String>) -> bool {
        own_ns == ns && self.selector.matches(labels)
    }
}

/// A pod selector of an affinity term or spread constraint, converted once
/// per pod rather than per node. `nil` selects nothing, as upstream.
fn selector(s: Option<&LabelSelector>) -> Selector {
    s.and_then(|s| Selector::from_label_selector(s).ok())
        .unwrap_or_else(Selector::nothing)
}

/// A preferred node affinity term, converted once.
#[derive(Debug, Clone)]
pub struct PreferredNodeTerm {
    /// What a node that matches adds to its score.
    pub weight: i64,
    /// The term; an invalid one matches no node.
    pub term: NodeTerm,
}

/// The pod's controller (the owner reference with `controller: true`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerRef {
    /// `apps/v1`, `v1`...
    pub api_version: String,
    /// `ReplicaSet`, `StatefulSet`...
    pub kind: String,
    /// In the pod's namespace.
    pub name: String,
}

/// A volume of the pod that a PersistentVolumeClaim backs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodClaim {
    /// The claim's name; for an ephemeral volume, `<pod>-<volume>`.
    pub claim: String,
    /// From `ephemeral` (the claim must be the pod's own), not from
    /// `persistentVolumeClaim`.
    pub ephemeral: bool,
}

/// The scheduling-relevant summary of a Pod.
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub labels: BTreeMap<String, String>,
    /// Its controller, for the default spreading selector (boxed: most
    /// placed pods are only counted, and this keeps them small).
    pub controller: Option<Box<ControllerRef>>,
    /// Has a deletionTimestamp: spreading no longer counts it, as upstream.
    pub terminating: bool,
    /// `spec.priority` (0 when unset, as upstream's PodPriority).
    pub priority: i32,
    /// `spec.preemptionPolicy: Never`: it may not preempt others.
    pub never_preempts: bool,
    /// `status.nominatedNodeName`, where an earlier preemption made room.
    pub nominated_node: Option<String>,
    /// `status.startTime` in Unix nanoseconds; preemption takes a pod
    /// without one as started now, as upstream.
    pub start_time: Option<i128>,
    /// Terminating with a `DisruptionTarget` condition of reason
    /// `PreemptionByScheduler`: being preempted.
    pub preempted: bool,
    /// Requests, as the fit filter counts them.
    pub requests: Resources,
    /// Requests with upstream's non-zero defaults, for scoring.
    pub non_zero: Resources,
    pub node_selector: BTreeMap<String, String>,
    /// The required node selector terms (ORed), converted once; an invalid
    /// term matches no node.
    pub required_node_affinity: Option<Vec<NodeTerm>>,
    pub preferred_node_affinity: Vec<PreferredNodeTerm>,
    pub tolerations: Vec<Toleration>,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<AffinityTerm>,
    pub preferred_anti_affinity: Vec<AffinityTerm>,
    pub spread: Vec<SpreadConstraint>,
    pub host_ports: Vec<HostPort>,
    /// Its volumes backed by claims, in `spec.volumes` order.
    pub claims: Vec<PodClaim>,
    /// The PodScheduled condition as last seen: (status, reason, message).
    pub scheduled_condition: Option<(String, String, String)>,
}

/// A Pod the scheduler cannot make sense of.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {source}")]
pub struct InvalidPod {
    /// Where in the Pod.
    pub field: String,
    /// What is wrong there.
    #[source]
    pub source: quantity::InvalidQuantity,
}

impl PodInfo {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Summarise `pod`. Fails on a request that is not a quantity, so the
    /// scheduler can say so instead of placing the pod wrongly.
    pub fn new(pod: &Pod) -> Result<Arc<Self>, InvalidPod> {
        let meta = &pod.metadata;
        let no_spec = PodSpec::default();
        let spec = pod.spec.as_ref().unwrap_or(&no_spec);
        let namespace = meta.namespace.clone().unwrap_or_default();
        let labels = meta.labels.clone().unwrap_or_default();

        let mut sum = Resources::default();
        let mut sum_nz = Resources::default();
        for (i, c) in spec.containers.iter().enumerate() {
            let (r, nz) = container_requests(c, &format!("spec.containers[{i}]"))?;
            sum.add(&r);
            sum_nz.add(&nz);
        }
        // Init containers run one at a time before the app containers;
        // sidecars (restartPolicy Always) keep running alongside.
        let mut sidecars = Resources::default();
        let mut sidecars_nz = Resources::default();
        let mut init_peak = Resources::default();
        let mut init_peak_nz = Resources::default();
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            let (r, nz) = container_requests(c, &format!("spec.initContainers[{i}]"))?;
            if c.restart_policy.as_deref() == Some("Always") {
                sidecars.add(&r);
                sidecars_nz.add(&nz);
                init_peak = init_peak.max(sidecars);
                init_peak_nz = init_peak_nz.max(sidecars_nz);
            } else {
                let mut at = sidecars;
                at.add(&r);
                init_peak = init_peak.max(at);
                let mut at = sidecars_nz;
                at.add(&nz);
                init_peak_nz = init_peak_nz.max(at);
            }
        }
        sum.add(&sidecars);
        sum_nz.add(&sidecars_nz);
        let mut requests = sum.max(init_peak);
        let mut non_zero = sum_nz.max(init_peak_nz);
        if let Some(o) = &spec.overhead {
            let r = resource_list(o, "spec.overhead")?;
            requests.add(&r);
            non_zero.add(&r);
        }
        requests.pods = 1;
        non_zero.pods = 1;

        let affinity = spec.affinity.clone().unwrap_or_default();
        let na = affinity.node_affinity.unwrap_or_default();
        let pa = affinity.pod_affinity.unwrap_or_default();
        let paa = affinity.pod_anti_affinity.unwrap_or_default();
        let required = |v: Option<Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            v.unwrap_or_default()
                .iter()
                .map(|t| AffinityTerm::new(t, &namespace, 1))
                .collect()
        };
        let preferred = |v: Option<Vec<WeightedPodAffinityTerm>>| -> Vec<AffinityTerm> {
            v.unwrap_or_default()
                .iter()
                .map(|w| AffinityTerm::new(&w.pod_affinity_term, &namespace, w.weight))
                .collect()
        };

        let mut host_ports = Vec::new();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|&hp| hp > 0) {
                    host_ports.push(HostPort {
                        ip: p
                            .host_ip
                            .clone()
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "0.0.0.0".into()),
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        port: hp,
                    });
                }
            }
        }

        let pod_name = meta.name.as_deref().unwrap_or_default();
        let claims = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| {
                if let Some(c) = &v.persistent_volume_claim {
                    Some(PodClaim {
                        claim: c.claim_name.clone(),
                        ephemeral: false,
                    })
                } else {
                    v.ephemeral.as_ref().map(|_| PodClaim {
                        claim: format!("{pod_name}-{}", v.name),
                        ephemeral: true,
                    })
                }
            })
            .collect();

        let scheduled_condition = Self::scheduled_condition_of(pod);

        Ok(Arc::new(Self {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            controller: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| {
                    Box::new(ControllerRef {
                        api_version: o.api_version.clone(),
                        kind: o.kind.clone(),
                        name: o.name.clone(),
                    })
                }),
            terminating: meta.deletion_timestamp.is_some(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            priority: spec.priority.unwrap_or(0),
            never_preempts: spec.preemption_policy.as_deref() == Some("Never"),
            nominated_node: pod
                .status
                .as_ref()
                .and_then(|s| s.nominated_node_name.clone())
                .filter(|n| !n.is_empty()),
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.as_nanosecond()),
            preempted: meta.deletion_timestamp.is_some()
                && pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionTarget"))
                    .is_some_and(|c| {
                        c.status == "True" && c.reason.as_deref() == Some("PreemptionByScheduler")
                    }),
            requests,
            non_zero,
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required_node_affinity: na.required_during_scheduling_ignored_during_execution.map(
                |s| {
                    s.node_selector_terms
                        .iter()
                        .map(|t| NodeTerm::new(t).unwrap_or_default())
                        .collect()
                },
            ),
            preferred_node_affinity: na
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .map(|p| PreferredNodeTerm {
                    weight: i64::from(p.weight),
                    term: NodeTerm::new(&p.preference).unwrap_or_default(),
                })
                .collect(),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            required_affinity: required(pa.required_during_scheduling_ignored_during_execution),
            required_anti_affinity: required(
                paa.required_during_scheduling_ignored_during_execution,
            ),
            preferred_affinity: preferred(pa.preferred_during_scheduling_ignored_during_execution),
            preferred_anti_affinity: preferred(
                paa.preferred_during_scheduling_ignored_during_execution,
            ),
            spread: spec
                .topology_spread_constraints
                .iter()
                .flatten()
                .map(|c| SpreadConstraint::new(c, &labels))
                .collect(),
            host_ports,
            claims,
            scheduled_condition,
            namespace,
            labels,
        }))
    }

    /// The PodScheduled condition of `pod`: (status, reason, message).
    pub fn scheduled_condition_of(pod: &Pod) -> Option<(String, String, String)> {
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
            .map(|c| {
                (
                    c.status.clone(),
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default(),
                )
            })
    }

    /// Whether anything about this pod needs the inter-pod affinity plugin.
    pub fn has_pod_affinity(&self) -> bool {
        !(self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty())
    }
}

type ResourceList = BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>;

fn resource_list(list: &ResourceList, field: &str) -> Result<Resources, InvalidPod> {
    let mut r = Resources::default();
    for (name, q) in list {
        let get = |f: fn(&str) -> Result<i64, quantity::InvalidQuantity>| {
            f(&q.0).map_err(|source| InvalidPod {
                field: format!("{field}[{name}]"),
                source,
            })
        };
        match name.as_str() {
            "cpu" => r.milli_cpu = get(quantity::milli)?,
            "memory" => r.memory = get(quantity::units)?,
            "ephemeral-storage" => r.ephemeral_storage = get(quantity::units)?,
            _ => {}
        }
    }
    Ok(r)
}

/// A container's requests, and the same with upstream's non-zero defaults.
/// A limit without a request counts as the request, as API defaulting does.
fn container_requests(c: &Container, field: &str) -> Result<(Resources, Resources), InvalidPod> {
    let res = c.resources.clone().unwrap_or_default();
    let mut merged = res.limits.unwrap_or_default();
    merged.extend(res.requests.unwrap_or_default());
    let r = resource_list(&merged, &format!("{field}.resources.requests"))?;
    let mut nz = r;
    if !merged.contains_key("cpu") {
        nz.milli_cpu = DEFAULT_MILLI_CPU;
    }
    if !merged.contains_key("memory") {
        nz.memory = DEFAULT_MEMORY;
    }
    Ok((r, nz))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn requests_sum_containers_and_take_the_init_peak() {
        let p = PodInfo::new(&pod(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {
                "initContainers": [
                    {"name": "big-init", "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}},
                    {"name": "sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}}
                ],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "1", "memory": "100Mi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "250m", "memory": "50Mi"}}}
                ],
                "overhead": {"cpu": "10m"}
            }
        })))
        .expect("valid");
        // containers 1.25 + sidecar 0.5 = 1.75 < init 3; memory 150Mi < 1Gi.
        assert_eq!(p.requests.milli_cpu, 3010);
        assert_eq!(p.requests.memory, 1 << 30);
        assert_eq!(p.requests.pods, 1);
    }

    #[test]
    fn non_zero_defaults_apply_to_scoring_only() {
        let p = PodInfo::new(&pod(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}
        })))
        .expect("valid");
        assert_eq!((p.requests.milli_cpu, p.requests.memory), (0, 0));
        assert_eq!(p.non_zero.milli_cpu, 200);
        assert_eq!(p.non_zero.memory, 400 << 20);
    }

    #[test]
    fn bad_quantity_names_the_field() {
        let e = PodInfo::new(&pod(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "lots"}}}]}
        })))
        .expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "spec.containers[0].resources.requests[cpu]: \"lots\" is not a valid quantity"
        );
    }

    #[test]
    fn host_ports_conflict_on_wildcards() {
        let any = HostPort {
            ip: "0.0.0.0".into(),
            protocol: "TCP".into(),
            port: 80,
        };
        let one = HostPort {
            ip: "10.0.0.1".into(),
            ..any.clone()
        };
        let two = HostPort {
            ip: "10.0.0.2".into(),
            ..any.clone()
        };
        let udp = HostPort {
            protocol: "UDP".into(),
            ..any.clone()
        };
        assert!(any.conflicts(&one) && one.conflicts(&any));
        assert!(!one.conflicts(&two));
        assert!(!any.conflicts(&udp));
    }
}
