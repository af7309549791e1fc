//! What the default spreading selector is made of: the selectors of
//! Services, ReplicationControllers, ReplicaSets and StatefulSets, kept
//! from their watches (the objects themselves are not kept).
//!
//! A pod with no `topologySpreadConstraints` of its own is spread, as
//! upstream's PodTopologySpread with `defaultingType: System` spreads it,
//! over the pods that the same selector picks: the union of the selectors
//! of the Services in its namespace that select it, and of its
//! controller's selector (a ReplicationController, ReplicaSet or
//! StatefulSet, looked up by the owner reference with `controller: true`).
//! This is upstream's `DefaultSelector`.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ReplicationController, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kestrel_api::labels::{self, Selector};

use crate::pod_info::PodInfo;

type Labels = BTreeMap<String, String>;

/// Objects of one kind by namespace, then name.
#[derive(Debug)]
struct Namespaced<T>(HashMap<String, HashMap<String, T>>);

impl<T> Default for Namespaced<T> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<T> Namespaced<T> {
    fn set(&mut self, meta: &ObjectMeta, v: Option<T>) {
        let ns = meta.namespace.as_deref().unwrap_or("");
        let name = meta.name.as_deref().unwrap_or("");
        match v {
            Some(v) => {
                self.0
                    .entry(ns.to_owned())
                    .or_default()
                    .insert(name.to_owned(), v);
            }
            None => self.remove(ns, name),
        }
    }

    fn remove(&mut self, ns: &str, name: &str) {
        if let Some(m) = self.0.get_mut(ns) {
            m.remove(name);
            if m.is_empty() {
                self.0.remove(ns);
            }
        }
    }

    fn get(&self, ns: &str, name: &str) -> Option<&T> {
        self.0.get(ns)?.get(name)
    }

    fn in_namespace(&self, ns: &str) -> impl Iterator<Item = &T> {
        self.0.get(ns).into_iter().flat_map(HashMap::values)
    }

    fn keys(&self) -> impl Iterator<Item = String> + '_ {
        self.0
            .iter()
            .flat_map(|(ns, m)| m.keys().map(move |n| format!("{ns}/{n}")))
    }
}

/// A structured selector as the list of requirements it stands for
/// (`matchLabels` as `In` of one value), or `None` when it is invalid: an
/// invalid owner selector adds nothing, as upstream.
fn requirements(sel: &LabelSelector) -> Option<Vec<LabelSelectorRequirement>> {
    Selector::from_label_selector(sel).ok()?;
    let mut out: Vec<LabelSelectorRequirement> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| LabelSelectorRequirement {
            key: k.clone(),
            operator: "In".into(),
            values: Some(vec![v.clone()]),
        })
        .collect();
    out.extend(sel.match_expressions.iter().flatten().cloned());
    Some(out)
}

/// The kinds [`Workloads`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Service,
    ReplicationController,
    ReplicaSet,
    StatefulSet,
}

/// The selectors of the objects that make up a pod's default spreading
/// selector.
#[derive(Debug, Default)]
pub struct Workloads {
    /// Services with a selector (a Service without one selects nothing).
    services: Namespaced<Labels>,
    replication_controllers: Namespaced<Labels>,
    replica_sets: Namespaced<Option<Vec<LabelSelectorRequirement>>>,
    stateful_sets: Namespaced<Option<Vec<LabelSelectorRequirement>>>,
}

impl Workloads {
    /// Add or update a Service.
    pub fn set_service(&mut self, s: &Service) {
        let sel = s.spec.as_ref().and_then(|s| s.selector.clone());
        self.services.set(&s.metadata, sel);
    }

    /// Add or update a ReplicationController. A missing selector adds
    /// nothing to the pods' default selector.
    pub fn set_replication_controller(&mut self, rc: &ReplicationController) {
        let sel = rc
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        self.replication_controllers.set(&rc.metadata, Some(sel));
    }

    /// Add or update a ReplicaSet.
    pub fn set_replica_set(&mut self, rs: &ReplicaSet) {
        let sel = requirements(&rs.spec.selector);
        self.replica_sets.set(&rs.metadata, Some(sel));
    }

    /// Add or update a StatefulSet.
    pub fn set_stateful_set(&mut self, ss: &StatefulSet) {
        let sel = requirements(&ss.spec.selector);
        self.stateful_sets.set(&ss.metadata, Some(sel));
    }

    /// The object `namespace/name` of `kind` is gone.
    pub fn remove(&mut self, kind: Kind, key: &str) {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        match kind {
            Kind::Service => self.services.remove(ns, name),
            Kind::ReplicationController => self.replication_controllers.remove(ns, name),
            Kind::ReplicaSet => self.replica_sets.remove(ns, name),
            Kind::StatefulSet => self.stateful_sets.remove(ns, name),
        }
    }

    /// `namespace/name` of every object of `kind` held.
    pub fn keys(&self, kind: Kind) -> Vec<String> {
        match kind {
            Kind::Service => self.services.keys().collect(),
            Kind::ReplicationController => self.replication_controllers.keys().collect(),
            Kind::ReplicaSet => self.replica_sets.keys().collect(),
            Kind::StatefulSet => self.stateful_sets.keys().collect(),
        }
    }

    /// Upstream's `DefaultSelector` for `pod`: the pairs of every Service
    /// in its namespace that selects it, and its controller's selector. An
    /// empty result means the pod gets no default spreading.
    pub fn default_selector(&self, pod: &PodInfo) -> Selector {
        let mut set = Labels::new();
        for sel in self.services.in_namespace(&pod.namespace) {
            if labels::set_matches(sel, &pod.labels) {
                set.extend(sel.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        let mut exprs = Vec::new();
        if let Some(owner) = &pod.controller {
            let (ns, name) = (pod.namespace.as_str(), owner.name.as_str());
            match (owner.api_version.as_str(), owner.kind.as_str()) {
                ("v1", "ReplicationController") => {
                    if let Some(sel) = self.replication_controllers.get(ns, name) {
                        set.extend(sel.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                }
                ("apps/v1", "ReplicaSet") => {
                    if let Some(Some(reqs)) = self.replica_sets.get(ns, name) {
                        exprs.extend(reqs.iter().cloned());
                    }
                }
                ("apps/v1", "StatefulSet") => {
                    if let Some(Some(reqs)) = self.stateful_sets.get(ns, name) {
                        exprs.extend(reqs.iter().cloned());
                    }
                }
                _ => {}
            }
        }
        if set.is_empty() && exprs.is_empty() {
            return Selector::everything();
        }
        // The owner's requirements are added to the Services' pairs rather
        // than merged into them, as upstream adds them.
        Selector::from_label_selector(&LabelSelector {
            match_labels: Some(set),
            match_expressions: Some(exprs),
        })
        .unwrap_or_else(|_| Selector::everything())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: serde_json::Value, owner: Option<(&str, &str, &str)>) -> PodInfo {
        let mut meta = json!({"name": "p", "namespace": "ns", "labels": labels});
        if let Some((api_version, kind, name)) = owner {
            meta["ownerReferences"] = json!([
                {"apiVersion": "v1", "kind": "Node", "name": "other", "uid": "1"},
                {"apiVersion": api_version, "kind": kind, "name": name, "uid": "2", "controller": true}
            ]);
        }
        let p = serde_json::from_value(json!({"metadata": meta, "spec": {"containers": []}}))
            .expect("pod");
        std::sync::Arc::unwrap_or_clone(PodInfo::new(&p).expect("valid"))
    }

    fn labels(v: serde_json::Value) -> Labels {
        serde_json::from_value(v).expect("labels")
    }

    fn workloads() -> Workloads {
        let mut w = Workloads::default();
        for s in [
            json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": {"selector": {"app": "web"}}}),
            json!({"metadata": {"name": "tier", "namespace": "ns"}, "spec": {"selector": {"tier": "front"}}}),
            json!({"metadata": {"name": "other", "namespace": "ns"}, "spec": {"selector": {"app": "db"}}}),
            json!({"metadata": {"name": "elsewhere", "namespace": "x"}, "spec": {"selector": {"app": "web"}}}),
            json!({"metadata": {"name": "headless", "namespace": "ns"}, "spec": {}}),
        ] {
            w.set_service(&serde_json::from_value(s).expect("service"));
        }
        w.set_replica_set(
            &serde_json::from_value(json!({
                "metadata": {"name": "web-1", "namespace": "ns"},
                "spec": {"selector": {"matchLabels": {"app": "web", "hash": "1"},
                                      "matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}}
            }))
            .expect("rs"),
        );
        w.set_replica_set(
            &serde_json::from_value(json!({
                "metadata": {"name": "bad", "namespace": "ns"},
                "spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "Near"}]}}
            }))
            .expect("rs"),
        );
        w.set_stateful_set(
            &serde_json::from_value(json!({
                "metadata": {"name": "db", "namespace": "ns"},
                "spec": {"selector": {"matchLabels": {"app": "db"}}, "serviceName": "db",
                         "template": {}}
            }))
            .expect("ss"),
        );
        w
    }

    #[test]
    fn services_and_the_controller_make_the_selector() {
        let w = workloads();
        let p = pod(
            json!({"app": "web", "tier": "front", "hash": "1"}),
            Some(("apps/v1", "ReplicaSet", "web-1")),
        );
        let sel = w.default_selector(&p);
        assert!(sel.matches(&labels(json!({"app": "web", "tier": "front", "hash": "1"}))));
        // Every Service's pairs and the owner's requirements must hold.
        assert!(!sel.matches(&labels(json!({"app": "web", "hash": "1"}))));
        assert!(!sel.matches(&labels(json!({"app": "web", "tier": "front"}))));
        assert!(!sel.matches(&labels(
            json!({"app": "web", "tier": "front", "hash": "1", "canary": "y"})
        )));
    }

    #[test]
    fn no_service_and_no_known_controller_means_no_default_spreading() {
        let w = workloads();
        assert!(
            w.default_selector(&pod(json!({"app": "cache"}), None))
                .is_empty()
        );
        // A controller we have not seen, one of a kind without a
        // selector, or an invalid selector: nothing.
        for owner in [
            ("apps/v1", "ReplicaSet", "unknown"),
            ("batch/v1", "Job", "web-1"),
            ("extensions/v1beta1", "ReplicaSet", "web-1"),
            ("apps/v1", "ReplicaSet", "bad"),
        ] {
            let p = pod(json!({"app": "cache"}), Some(owner));
            assert!(w.default_selector(&p).is_empty(), "{owner:?}");
        }
        // Only a controller's selector: a StatefulSet's.
        let p = pod(
            json!({"app": "cache"}),
            Some(("apps/v1", "StatefulSet", "db")),
        );
        let sel = w.default_selector(&p);
        assert!(sel.matches(&labels(json!({"app": "db"}))));
        assert!(!sel.matches(&labels(json!({"app": "cache"}))));
    }

    #[test]
    fn removal_and_relist_keys() {
        let mut w = workloads();
        let p = pod(json!({"app": "web"}), None);
        assert!(!w.default_selector(&p).is_empty());
        let mut keys = w.keys(Kind::Service);
        keys.sort();
        assert_eq!(keys, ["ns/other", "ns/tier", "ns/web", "x/elsewhere"]);
        w.remove(Kind::Service, "ns/web");
        assert!(w.default_selector(&p).is_empty());
        // A Service updated to no selector stops selecting.
        w.set_service(
            &serde_json::from_value(
                json!({"metadata": {"name": "tier", "namespace": "ns"}, "spec": {}}),
            )
            .expect("service"),
        );
        assert!(!w.keys(Kind::Service).contains(&"ns/tier".to_owned()));
    }
}
