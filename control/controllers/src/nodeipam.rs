//! Node IPAM: every Node gets `spec.podCIDR` (and `spec.podCIDRs`) carved
//! from `--cluster-cidr`, one `/--node-cidr-mask-size` each.
//!
//! The allocator keeps no state of its own that could drift: what is taken
//! is read from the Node reflector each time (so a deleted Node's range is
//! free again, and a restarted manager knows every range at once), plus the
//! ranges handed out but not yet seen back through the watch. Nodes that
//! already have a podCIDR keep it.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kestrel_client::events::{EventType, Recorder};
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::Mutex;

use crate::manager::{Backoff, Error, Options, Result, drive};

/// The cluster range cut into equal node ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrSet {
    base: u32,
    cluster_prefix: u8,
    node_prefix: u8,
}

impl CidrSet {
    /// `cluster` such as `10.42.0.0/16` cut into `/node_prefix` ranges.
    pub fn new(cluster: &str, node_prefix: u8) -> Result<Self> {
        let (addr, len) = cluster
            .split_once('/')
            .ok_or_else(|| Error::Config(format!("--cluster-cidr {cluster:?}: not a CIDR")))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| {
            Error::Config(format!("--cluster-cidr {cluster:?}: not an IPv4 address"))
        })?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| Error::Config(format!("--cluster-cidr {cluster:?}: bad prefix")))?;
        if node_prefix < len || node_prefix > 30 || node_prefix - len > 24 {
            return Err(Error::Config(format!(
                "--node-cidr-mask-size {node_prefix} must be between {len} (the cluster prefix) and 30, at most 24 bits longer"
            )));
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Ok(Self {
            base: u32::from(addr) & mask,
            cluster_prefix: len,
            node_prefix,
        })
    }

    /// How many node ranges there are.
    pub fn len(&self) -> u32 {
        1 << (self.node_prefix - self.cluster_prefix)
    }

    /// Always false: a set has at least one range.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `i`th node range, as `a.b.c.d/p`.
    pub fn range(&self, i: u32) -> String {
        let a = Ipv4Addr::from(self.base + (i << (32 - self.node_prefix)));
        format!("{a}/{}", self.node_prefix)
    }

    /// Which range `cidr` is, if it is exactly one of ours.
    pub fn index_of(&self, cidr: &str) -> Option<u32> {
        let (addr, len) = cidr.split_once('/')?;
        if len.parse::<u8>().ok()? != self.node_prefix {
            return None;
        }
        let a = u32::from(addr.parse::<Ipv4Addr>().ok()?);
        let off = a.checked_sub(self.base)?;
        let i = off >> (32 - self.node_prefix);
        (i < self.len() && off.trailing_zeros() >= u32::from(32 - self.node_prefix)).then_some(i)
    }

    /// The first free range at or after `from`, wrapping around, as
    /// upstream's allocator does, so a just-released range is not reused
    /// at once.
    pub fn next_free(&self, taken: &HashSet<u32>, from: u32) -> Option<u32> {
        let n = self.len();
        (0..n).map(|k| (from + k) % n).find(|i| !taken.contains(i))
    }
}

struct Ctx {
    api: Api<Node>,
    nodes: Store<Node>,
    set: CidrSet,
    /// Ranges written to Nodes the reflector has not shown back yet, and
    /// where the next search starts. One lock: allocations are serial.
    state: Mutex<State>,
    recorder: Recorder,
    backoff: Backoff<String>,
}

#[derive(Default)]
struct State {
    pending: HashMap<String, u32>,
    next: u32,
}

/// Run the node IPAM controller.
pub async fn run(client: kube::Client, opts: &Options) -> Result<()> {
    let set = CidrSet::new(&opts.cluster_cidr, opts.node_cidr_mask_size)?;
    let api: Api<Node> = Api::all(client.clone());
    let controller = Controller::new(api.clone(), watcher::Config::default());
    let ctx = Arc::new(Ctx {
        api,
        nodes: controller.store(),
        set,
        state: Mutex::default(),
        recorder: Recorder::new(client, "node-ipam-controller", None),
        backoff: Backoff::default(),
    });
    drive(
        controller.run(reconcile, error_policy, ctx),
        "node-ipam-controller",
    )
    .await;
    Ok(())
}

fn error_policy(node: Arc<Node>, e: &Error, ctx: Arc<Ctx>) -> Action {
    tracing::warn!(node = %node.name_any(), error = %e, "pod CIDR allocation failed");
    if matches!(e, Error::Pending(_)) {
        // The range is full: look again soon, a Node may have gone (a
        // deletion elsewhere does not trigger this Node).
        return Action::requeue(std::time::Duration::from_secs(1));
    }
    ctx.backoff.failed(node.name_any())
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = node.name_any();
    let has = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .is_some_and(|c| !c.is_empty());
    if has || node.metadata.deletion_timestamp.is_some() {
        ctx.backoff.succeeded(&name);
        return Ok(Action::await_change());
    }
    let mut st = ctx.state.lock().await;
    let all = ctx.nodes.state();
    // A pending range is settled once its Node shows one, or is gone.
    st.pending.retain(|n, _| {
        ctx.nodes
            .get(&ObjectRef::new(n))
            .is_some_and(|node| pod_cidr(&node).is_none())
    });
    let mut taken: HashSet<u32> = all
        .iter()
        .filter_map(|n| pod_cidr(n).and_then(|c| ctx.set.index_of(c)))
        .collect();
    taken.extend(st.pending.values().copied());
    let Some(i) = ctx.set.next_free(&taken, st.next) else {
        let msg = format!(
            "Node {name} status is now: CIDRNotAvailable (no /{} left in the cluster CIDR)",
            ctx.set.node_prefix
        );
        ctx.recorder
            .publish(&*node, EventType::Normal, "CIDRNotAvailable", &msg)
            .await;
        return Err(Error::Pending(msg));
    };
    let cidr = ctx.set.range(i);
    let patch = serde_json::json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    match ctx
        .api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            st.pending.insert(name.clone(), i);
            st.next = (i + 1) % ctx.set.len();
            tracing::info!(node = %name, pod_cidr = %cidr, "allocated pod CIDR");
            ctx.backoff.succeeded(&name);
            Ok(Action::await_change())
        }
        Err(e) => {
            ctx.recorder
                .publish(
                    &*node,
                    EventType::Warning,
                    "CIDRAssignmentFailed",
                    &format!("Node {name}: could not record pod CIDR {cidr}: {e}"),
                )
                .await;
            Err(e.into())
        }
    }
}

fn pod_cidr(n: &Node) -> Option<&str> {
    n.spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_the_cluster_range() {
        let s = CidrSet::new("10.42.0.0/16", 24).expect("set");
        assert_eq!(s.len(), 256);
        assert_eq!(s.range(0), "10.42.0.0/24");
        assert_eq!(s.range(255), "10.42.255.0/24");
        assert_eq!(s.index_of("10.42.7.0/24"), Some(7));
        assert_eq!(s.index_of("10.42.7.1/24"), None, "not a network address");
        assert_eq!(s.index_of("10.43.0.0/24"), None, "outside");
        assert_eq!(s.index_of("10.42.7.0/25"), None, "other size");
        let taken: HashSet<u32> = [0, 1, 3].into_iter().collect();
        assert_eq!(s.next_free(&taken, 0), Some(2));
        assert_eq!(s.next_free(&taken, 3), Some(4));
        let full: HashSet<u32> = (0..256).collect();
        assert_eq!(s.next_free(&full, 9), None);
        assert!(CidrSet::new("10.42.0.0/16", 8).is_err());
        assert!(CidrSet::new("10.42.0.0", 24).is_err());
        assert!(CidrSet::new("10.42.0.0/33", 24).is_err());
    }
}
