//! The policy sync loop: reflector stores of Pods, Namespaces and
//! NetworkPolicies, and a batch a few milliseconds after the first change
//! that recompiles the maps and writes the difference.
//!
//! A batch always recompiles the whole node: policy is a relation between
//! every policy and every identity, and a single label change can move a
//! pod between identities, change which peers a rule matches, and so touch
//! entries of many local pods. The compile is built to be cheap enough for
//! that (peers are resolved per identity, not per pod), and the diff
//! writes only what changed. Watch events that cannot change the maps (a
//! pod's readiness, a status heartbeat) are dropped before they start a
//! batch.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource};
use tokio::sync::{mpsc, watch};

use super::compile::{PolicyCompiler, PolicyNames, PolicyNode, pod_address};
use super::diff::PolicySyncer;
use super::maps::PinnedPolicyMaps;
use crate::batch::{AbortOnDrop, BatchConfig, BatchLoop, Batcher, blocking};
use crate::{Error, Result};

/// What a failed blocking task of this loop is called in errors.
const BLOCKING: &str = "the policy sync's blocking task";

/// Tuning of the loop.
pub type PolicySyncConfig = BatchConfig;

/// What one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyBatchReport {
    /// Local pods with an endpoint entry.
    pub endpoints: usize,
    /// Allow entries desired.
    pub entries: usize,
    /// Map entries written.
    pub writes: usize,
    /// Map entries deleted.
    pub deletes: usize,
    /// Time spent compiling.
    pub compile: Duration,
    /// Time spent diffing and writing the maps.
    pub apply: Duration,
    /// From the batch's first watch event to the maps being written.
    pub latency: Duration,
}

/// The policy loop's progress.
pub type PolicyProgress = crate::progress::Progress<PolicyBatchReport>;
/// A handle on the policy loop's progress.
pub type PolicySyncStatus = crate::progress::SyncStatus<PolicyBatchReport>;
pub use crate::progress::SyncEnded as PolicySyncEnded;

/// The policy map sync of one node.
pub struct PolicySync {
    client: kube::Client,
    node: PolicyNode,
    pin_dir: PathBuf,
    config: PolicySyncConfig,
    progress: watch::Sender<PolicyProgress>,
    names: PolicyNames,
}

impl std::fmt::Debug for PolicySync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySync")
            .field("node", &self.node)
            .field("pin_dir", &self.pin_dir)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PolicySync {
    /// A sync of the policy maps pinned in `pin_dir` (loaded there by
    /// [`crate::Dataplane::load`]) for `node`.
    pub fn new(client: kube::Client, node: PolicyNode, pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            client,
            node,
            pin_dir: pin_dir.into(),
            config: PolicySyncConfig::default(),
            progress: watch::Sender::new(PolicyProgress::default()),
            names: PolicyNames::default(),
        }
    }

    /// Replaces the tuning.
    pub fn with_config(mut self, config: PolicySyncConfig) -> Self {
        self.config = config;
        self
    }

    /// A handle that reports the first full sync and each batch.
    pub fn status(&self) -> PolicySyncStatus {
        PolicySyncStatus::new(self.progress.subscribe())
    }

    /// The names behind pod addresses, policy ids and identities, as of the
    /// latest batch.
    pub fn names(&self) -> PolicyNames {
        self.names.clone()
    }

    /// Runs until `shutdown` completes. Fails only if the maps cannot be
    /// opened or read; watch and write errors are logged and retried.
    ///
    /// The pinned maps are adopted first (their identities too), and
    /// nothing is written until Pods, Namespaces and NetworkPolicies have
    /// all been listed, so a restarted agent never opens or closes a pod
    /// on a partial view.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Self {
            client,
            node,
            pin_dir,
            config,
            progress,
            names,
        } = self;
        let (syncer, compiler) = blocking(BLOCKING, move || -> Result<_> {
            let syncer = PolicySyncer::adopt(PinnedPolicyMaps::open(&pin_dir)?)?;
            let mut compiler = PolicyCompiler::new();
            compiler.adopt_ipcache(
                syncer
                    .programmed()
                    .ipcache
                    .iter()
                    .map(|(net, id)| (*net, *id)),
            );
            Ok((syncer, compiler))
        })
        .await??;

        let (pod_store, pod_writer) = reflector::store();
        let (ns_store, ns_writer) = reflector::store();
        let (np_store, np_writer) = reflector::store();
        let (tx, rx) = mpsc::unbounded_channel();
        let tasks = [
            AbortOnDrop(tokio::spawn(watch_kind(
                Api::<Pod>::all(client.clone()),
                pod_writer,
                tx.clone(),
                0,
                pod_fingerprint,
            ))),
            AbortOnDrop(tokio::spawn(watch_kind(
                Api::<Namespace>::all(client.clone()),
                ns_writer,
                tx.clone(),
                1,
                |ns: &Namespace| hash_of(&ns.metadata.labels),
            ))),
            AbortOnDrop(tokio::spawn(watch_kind(
                Api::<NetworkPolicy>::all(client),
                np_writer,
                tx,
                2,
                // Policies change rarely: any new version counts.
                |np: &NetworkPolicy| hash_of(&np.metadata.resource_version),
            ))),
        ];
        let mut state = LoopState {
            work: Some(Work {
                syncer,
                compiler,
                node,
            }),
            pods: pod_store,
            namespaces: ns_store,
            policies: np_store,
            names,
            listed: [false; 3],
            dirty: true,
            first_event: None,
        };
        let mut batches = BatchLoop::new("policy maps", config, progress);
        let result = batches.run(&mut state, rx, shutdown).await;
        drop(tasks);
        result
    }
}

/// From the watchers to the loop.
#[derive(Debug)]
enum Msg {
    /// Something that may change the maps happened (at this instant).
    Dirty(Instant),
    /// A watcher finished a full list: 0 Pods, 1 Namespaces, 2 policies.
    Listed(usize),
}

fn hash_of<T: Hash>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// What of a Pod the compile reads: its address (and whether it counts),
/// labels, node and named container ports.
fn pod_fingerprint(pod: &Pod) -> u64 {
    let mut h = DefaultHasher::new();
    pod_address(pod).hash(&mut h);
    pod.metadata.labels.hash(&mut h);
    if let Some(spec) = &pod.spec {
        spec.node_name.hash(&mut h);
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                (&p.name, &p.protocol, p.container_port).hash(&mut h);
            }
        }
    }
    h.finish()
}

/// Watches one kind into its store, and tells the loop when an object
/// changed in a way `fingerprint` sees (or went away), and when a full
/// list is done.
async fn watch_kind<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    tx: mpsc::UnboundedSender<Msg>,
    which: usize,
    fingerprint: fn(&K) -> u64,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&());
    let key = |o: &K| {
        let m = o.meta();
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    };
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    let mut relisted: HashMap<(String, String), u64> = HashMap::new();
    let events =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let msg = match event {
            Ok(watcher::Event::Apply(o)) => {
                let fp = fingerprint(&o);
                (seen.insert(key(&o), fp) != Some(fp)).then(|| Msg::Dirty(Instant::now()))
            }
            Ok(watcher::Event::Delete(o)) => {
                seen.remove(&key(&o));
                Some(Msg::Dirty(Instant::now()))
            }
            Ok(watcher::Event::Init) => {
                relisted.clear();
                None
            }
            Ok(watcher::Event::InitApply(o)) => {
                relisted.insert(key(&o), fingerprint(&o));
                None
            }
            Ok(watcher::Event::InitDone) => {
                seen = std::mem::take(&mut relisted);
                Some(Msg::Listed(which))
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = %kind, "watching for the policy sync");
                None
            }
        };
        if let Some(msg) = msg
            && tx.send(msg).is_err()
        {
            return;
        }
    }
}

/// What a batch takes to the blocking pool and brings back.
struct Work {
    syncer: PolicySyncer<PinnedPolicyMaps>,
    compiler: PolicyCompiler,
    node: PolicyNode,
}

/// What the loop carries between batches.
struct LoopState {
    /// `None` only while a batch runs on the blocking pool.
    work: Option<Work>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    policies: Store<NetworkPolicy>,
    names: PolicyNames,
    /// Whether each watcher has finished a full list.
    listed: [bool; 3],
    /// Whether something changed since the last applied batch.
    dirty: bool,
    first_event: Option<Instant>,
}

impl Batcher for LoopState {
    type Msg = Msg;
    type Report = PolicyBatchReport;

    fn listed(&self) -> bool {
        self.listed == [true; 3]
    }

    fn pending(&self) -> bool {
        self.dirty
    }

    fn absorb(&mut self, msg: Msg) {
        let at = match msg {
            Msg::Dirty(at) => at,
            Msg::Listed(which) => {
                if let Some(l) = self.listed.get_mut(which) {
                    *l = true;
                }
                Instant::now()
            }
        };
        self.dirty = true;
        self.first_event = Some(self.first_event.map_or(at, |f| f.min(at)));
    }

    /// Recompiles and writes the difference.
    async fn batch(&mut self) -> Result<Result<PolicyBatchReport>> {
        let Some(mut work) = self.work.take() else {
            return Err(Error::Io {
                what: BLOCKING,
                source: std::io::Error::other("a batch is already running"),
            });
        };
        self.dirty = false;
        let first_event = self.first_event.take();
        let pods: Vec<Arc<Pod>> = self.pods.state();
        let namespaces: Vec<Arc<Namespace>> = self.namespaces.state();
        let policies: Vec<Arc<NetworkPolicy>> = self.policies.state();
        let published = self.names.clone();
        let (work, outcome, names) = blocking(BLOCKING, move || {
            let started = Instant::now();
            let compiled = work
                .compiler
                .compile(&work.node, &pods, &namespaces, &policies);
            let computed = Instant::now();
            // Names first: whoever reads a number from the maps can name it.
            published.overlay(&compiled.names);
            let flushed = work.syncer.sync(&compiled.state);
            let done = Instant::now();
            let report = flushed.map(|stats| PolicyBatchReport {
                endpoints: compiled.state.endpoints.len(),
                entries: compiled.state.entries.len(),
                writes: stats.writes(),
                deletes: stats.deletes(),
                compile: computed - started,
                apply: done - computed,
                latency: first_event.map_or(done - started, |f| done.saturating_duration_since(f)),
            });
            (work, report, compiled.names)
        })
        .await?;
        self.work = Some(work);
        self.names.set(names);
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn running(ip: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("a".to_owned()),
                name: Some("p".to_owned()),
                labels: Some([("app".to_owned(), "web".to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".to_owned()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".to_owned()),
                pod_ip: Some(ip.to_owned()),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn only_what_the_compile_reads_makes_a_pod_dirty() {
        let base = running("10.1.0.1");
        let fp = pod_fingerprint(&base);

        // Readiness and resource versions do not matter.
        let mut ready = base.clone();
        ready.metadata.resource_version = Some("42".to_owned());
        if let Some(st) = ready.status.as_mut() {
            st.conditions = Some(vec![PodCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                ..PodCondition::default()
            }]);
        }
        assert_eq!(pod_fingerprint(&ready), fp);

        // Labels, the address, and finishing do.
        let mut relabeled = base.clone();
        relabeled.metadata.labels = Some([("app".to_owned(), "db".to_owned())].into());
        assert_ne!(pod_fingerprint(&relabeled), fp);
        assert_ne!(pod_fingerprint(&running("10.1.0.2")), fp);
        let mut done = base.clone();
        if let Some(st) = done.status.as_mut() {
            st.phase = Some("Succeeded".to_owned());
        }
        assert_ne!(pod_fingerprint(&done), fp);
    }
}
