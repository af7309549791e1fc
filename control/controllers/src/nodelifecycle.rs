//! Node lifecycle: notice nodes that stopped reporting, taint unhealthy
//! nodes, and evict pods whose tolerations for those taints run out.
//!
//! Node agents renew a Lease in `kube-node-lease` named after the node.
//! Health is judged on this controller's own clock: a node is heard from
//! when its Lease renewal or its Ready heartbeat changes, and a node not
//! heard from for `--node-monitor-grace-period` gets every condition set
//! to Unknown (reason `NodeStatusUnknown`). From the Ready condition come
//! the taints: `node.kubernetes.io/unreachable` for Unknown and
//! `node.kubernetes.io/not-ready` for False, each as NoSchedule and
//! NoExecute, removed once the node reports Ready again. Pods on a node
//! with a NoExecute taint are deleted when their toleration for it expires
//! (at once without one), and pods on an unreachable node are marked not
//! Ready, so their endpoints stop receiving traffic straight away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kestrel_client::events::{EventType, Recorder};
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::manager::{Options, Result, drain, is_conflict, is_not_found, only_uid, reflect};

/// Taint of a node whose Ready condition is Unknown.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of a node whose Ready condition is False.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Where node agents keep their Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

struct Ctx {
    client: kube::Client,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    grace: Duration,
    recorder: Recorder,
}

/// When a node was last heard from, and what was heard.
#[derive(Debug)]
struct Heard {
    probe: (Option<String>, Option<String>),
    at: Instant,
}

/// Run the node lifecycle controller.
pub async fn run(client: kube::Client, opts: &Options) -> Result<()> {
    let cfg = watcher::Config::default;
    let (nodes, node_stream) = reflect(Api::<Node>::all(client.clone()), cfg());
    let (leases, lease_stream) = reflect(
        Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE),
        cfg(),
    );
    let (pods, pod_stream) = reflect(Api::<Pod>::all(client.clone()), cfg());
    let ctx = Ctx {
        client: client.clone(),
        nodes,
        leases,
        pods,
        grace: opts.node_monitor_grace_period,
        recorder: Recorder::new(client, "node-controller", None),
    };
    let period = opts.node_monitor_period;
    tokio::join!(
        drain(node_stream, "nodes"),
        drain(lease_stream, "node leases"),
        drain(pod_stream, "pods"),
        ctx.monitor(period),
    );
    Ok(())
}

impl Ctx {
    async fn monitor(&self, period: Duration) {
        if self.nodes.wait_until_ready().await.is_err()
            || self.leases.wait_until_ready().await.is_err()
            || self.pods.wait_until_ready().await.is_err()
        {
            return;
        }
        let mut heard: HashMap<String, Heard> = HashMap::new();
        loop {
            let next = self.pass(&mut heard).await;
            let wait = next
                .map_or(period, |d| d.min(period))
                .max(Duration::from_millis(20));
            tokio::time::sleep(wait).await;
        }
    }

    /// One look at every node. Returns how soon the next eviction is due.
    async fn pass(&self, heard: &mut HashMap<String, Heard>) -> Option<Duration> {
        let nodes = self.nodes.state();
        heard.retain(|n, _| nodes.iter().any(|x| &x.name_any() == n));
        let mut next: Option<Duration> = None;
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for p in self.pods.state() {
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                by_node.entry(n).or_default().push(p);
            }
        }
        for node in nodes {
            let name = node.name_any();
            let probe = (
                self.leases
                    .get(&ObjectRef::new(&name).within(LEASE_NAMESPACE))
                    .and_then(|l| {
                        l.spec
                            .as_ref()?
                            .renew_time
                            .as_ref()
                            .map(|t| t.0.to_string())
                    }),
                ready_condition(&node)
                    .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0.to_string())),
            );
            let h = heard.entry(name.clone()).or_insert_with(|| Heard {
                probe: probe.clone(),
                at: Instant::now(),
            });
            if h.probe != probe {
                h.probe = probe;
                h.at = Instant::now();
            }
            let silent = h.at.elapsed() > self.grace;
            let mut ready = ready_condition(&node).map(|c| c.status.clone());
            if silent && ready.as_deref() != Some("Unknown") {
                match self.mark_unknown(&node).await {
                    Ok(()) => ready = Some("Unknown".to_owned()),
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e, "could not mark node status Unknown");
                        continue;
                    }
                }
            }
            let pods = by_node.remove(&name).unwrap_or_default();
            if ready.as_deref() == Some("Unknown") {
                for p in &pods {
                    self.mark_pod_not_ready(p).await;
                }
            }
            let taints = match self.sync_taints(&node, ready.as_deref()).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "could not update node taints");
                    node.spec
                        .as_ref()
                        .and_then(|s| s.taints.clone())
                        .unwrap_or_default()
                }
            };
            for p in &pods {
                if p.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                match eviction_due(&taints, pod_tolerations(p), jiff::Timestamp::now()) {
                    Some(d) if d.is_zero() => self.evict(p, &name).await,
                    Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                    None => {}
                }
            }
        }
        next
    }

    /// Set every condition Unknown, as upstream does when the kubelet goes
    /// silent.
    async fn mark_unknown(&self, node: &Node) -> Result<()> {
        let now = Time(jiff::Timestamp::now());
        let name = node.name_any();
        let mut conds: Vec<NodeCondition> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if !conds.iter().any(|c| c.type_ == "Ready") {
            conds.push(NodeCondition {
                type_: "Ready".to_owned(),
                status: "Unknown".to_owned(),
                reason: Some("NodeStatusNeverUpdated".to_owned()),
                message: Some("Kubelet never posted node status.".to_owned()),
                last_transition_time: Some(now.clone()),
                last_heartbeat_time: None,
            });
        }
        for c in &mut conds {
            if c.status != "Unknown" {
                c.status = "Unknown".to_owned();
                c.reason = Some("NodeStatusUnknown".to_owned());
                c.message = Some("Kubelet stopped posting node status.".to_owned());
                c.last_transition_time = Some(now.clone());
            }
        }
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": node.resource_version()},
            "status": {"conditions": conds},
        });
        Api::<Node>::all(self.client.clone())
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(node = %name, grace = ?self.grace, "node stopped reporting; status Unknown");
        self.recorder
            .publish(
                node,
                EventType::Normal,
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
            )
            .await;
        Ok(())
    }

    async fn mark_pod_not_ready(&self, pod: &Pod) {
        let Some(conds) = pod.status.as_ref().and_then(|s| s.conditions.clone()) else {
            return;
        };
        if !conds
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            return;
        }
        let now = Time(jiff::Timestamp::now());
        let conds: Vec<_> = conds
            .into_iter()
            .map(|mut c| {
                if c.type_ == "Ready" {
                    c.status = "False".to_owned();
                    c.reason = Some("NodeNotReady".to_owned());
                    c.message = None;
                    c.last_transition_time = Some(now.clone());
                }
                c
            })
            .collect();
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": pod.resource_version()},
            "status": {"conditions": conds},
        });
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                self.recorder
                    .publish(pod, EventType::Warning, "NodeNotReady", "Node is not ready")
                    .await;
            }
            Err(e) if is_not_found(&e) || is_conflict(&e) => {}
            Err(e) => {
                tracing::warn!(pod = %pod.name_any(), error = %e, "could not mark pod not ready")
            }
        }
    }

    /// Make the node's not-ready/unreachable taints match its Ready
    /// condition; returns the taints it now has.
    async fn sync_taints(&self, node: &Node, ready: Option<&str>) -> Result<Vec<Taint>> {
        let cur = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let want_key = match ready {
            Some("Unknown") => Some(TAINT_UNREACHABLE),
            Some("False") => Some(TAINT_NOT_READY),
            _ => None,
        };
        let now = Time(jiff::Timestamp::now());
        let mut out: Vec<Taint> = cur
            .iter()
            .filter(|t| {
                let ours = t.key == TAINT_UNREACHABLE || t.key == TAINT_NOT_READY;
                !ours || Some(t.key.as_str()) == want_key
            })
            .cloned()
            .collect();
        if let Some(key) = want_key {
            for effect in ["NoSchedule", "NoExecute"] {
                if !out.iter().any(|t| t.key == key && t.effect == effect) {
                    out.push(Taint {
                        key: key.to_owned(),
                        effect: effect.to_owned(),
                        time_added: Some(now.clone()),
                        value: None,
                    });
                }
            }
        }
        if out == cur {
            return Ok(out);
        }
        let name = node.name_any();
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": node.resource_version()},
            "spec": {"taints": out},
        });
        Api::<Node>::all(self.client.clone())
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(node = %name, taint = ?want_key, "node taints updated");
        Ok(out)
    }

    async fn evict(&self, pod: &Pod, node: &str) {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match api.delete(&name, &only_uid(pod.metadata.uid.clone())).await {
            Ok(_) => {
                tracing::info!(pod = %name, namespace = %ns, node, "evicted pod from a tainted node");
                self.recorder
                    .publish(
                        pod,
                        EventType::Normal,
                        "TaintManagerEviction",
                        &format!("Marking for deletion Pod {ns}/{name}"),
                    )
                    .await;
            }
            Err(e) if is_not_found(&e) || is_conflict(&e) => {}
            Err(e) => tracing::warn!(pod = %name, error = %e, "eviction failed"),
        }
    }
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn pod_tolerations(p: &Pod) -> &[Toleration] {
    p.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

/// Whether `t` tolerates `taint`, as upstream matches them.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = t.key.as_deref().unwrap_or("");
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => effect_ok && (key.is_empty() || key == taint.key),
        "Equal" => {
            effect_ok
                && key == taint.key
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// How long until a pod with `tolerations` must go from a node with
/// `taints`: zero when due (a NoExecute taint it does not tolerate, or a
/// toleration that ran out), `None` when it may stay for good.
pub fn eviction_due(
    taints: &[Taint],
    tolerations: &[Toleration],
    now: jiff::Timestamp,
) -> Option<Duration> {
    let mut due: Option<Duration> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // Forever, unless every matching toleration is bounded: then the
        // shortest one counts.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let secs = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let added = taint.time_added.as_ref().map_or(now, |t| t.0);
        let at = added + jiff::SignedDuration::from_secs(secs);
        let left = now.duration_until(at);
        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
        due = Some(due.map_or(left, |d| d.min(left)));
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str, added: jiff::Timestamp) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            time_added: Some(Time(added)),
            value: None,
        }
    }

    fn tol(key: Option<&str>, op: &str, effect: Option<&str>, secs: Option<i64>) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: Some(op.into()),
            effect: effect.map(Into::into),
            toleration_seconds: secs,
            value: None,
        }
    }

    #[test]
    fn eviction_follows_the_shortest_bounded_toleration() {
        let now = jiff::Timestamp::now();
        let t0 = now - jiff::SignedDuration::from_secs(10);
        let taints = [
            taint(TAINT_UNREACHABLE, "NoSchedule", t0),
            taint(TAINT_UNREACHABLE, "NoExecute", t0),
        ];
        assert_eq!(
            eviction_due(&taints, &[], now),
            Some(Duration::ZERO),
            "no toleration: now"
        );
        let forever = [tol(
            Some(TAINT_UNREACHABLE),
            "Exists",
            Some("NoExecute"),
            None,
        )];
        assert_eq!(eviction_due(&taints, &forever, now), None);
        let wildcard = [tol(None, "Exists", None, None)];
        assert_eq!(eviction_due(&taints, &wildcard, now), None);
        let long = [tol(
            Some(TAINT_UNREACHABLE),
            "Exists",
            Some("NoExecute"),
            Some(300),
        )];
        let left = eviction_due(&taints, &long, now).expect("bounded");
        assert!(
            left > Duration::from_secs(289) && left <= Duration::from_secs(290),
            "{left:?}"
        );
        let short = [tol(
            Some(TAINT_UNREACHABLE),
            "Exists",
            Some("NoExecute"),
            Some(5),
        )];
        assert_eq!(
            eviction_due(&taints, &short, now),
            Some(Duration::ZERO),
            "ran out"
        );
        let other = [tol(
            Some(TAINT_NOT_READY),
            "Exists",
            Some("NoExecute"),
            None,
        )];
        assert_eq!(
            eviction_due(&taints, &other, now),
            Some(Duration::ZERO),
            "wrong key"
        );
        assert_eq!(
            eviction_due(&taints[..1], &[], now),
            None,
            "NoSchedule never evicts"
        );
    }
}
