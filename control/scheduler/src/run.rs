//! The running scheduler: watchers feeding the cache and queue, the
//! scheduling loop, concurrent binding, and leader election.

use std::collections::HashSet;
use std::hash::{Hash as _, Hasher as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Binding, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
    ReplicationController, Service,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kestrel_client::events::EventType;
use kestrel_client::leader::LeaderElector;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::cache::Cache;
use crate::plugins::{Plan, Profile};
use crate::pod_info::PodInfo;
use crate::queue::Queue;
use crate::report::Reporter;
use crate::workloads::Kind;
use crate::{Config, Result};

/// Counters a caller can read while the scheduler runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Pods bound by this replica.
    pub bound: AtomicU64,
    /// Scheduling attempts that found no node.
    pub unschedulable: AtomicU64,
    /// Bindings the API server refused or that failed in transit.
    pub bind_errors: AtomicU64,
    /// Whether this replica is scheduling (holds the Lease, or runs
    /// without leader election) and its caches are synced.
    pub leading: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    cache: Cache,
    queue: Queue,
}

struct Shared {
    client: kube::Client,
    config: Config,
    profile: Profile,
    state: Mutex<State>,
    /// Woken when a pod becomes active.
    wake: Notify,
    /// Woken (all waiters) on every claim, volume or class event, for
    /// bindings that wait for the PV controller.
    volume_events: Notify,
    reporter: Reporter,
    stats: Arc<Stats>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts that are still
        // consistent enough to keep scheduling; do not cascade it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A scheduler, ready to [`run`](Scheduler::run).
pub struct Scheduler {
    client: kube::Client,
    config: Config,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler that talks to the API server through `client`.
    pub fn new(client: kube::Client, config: Config) -> Self {
        Self {
            client,
            config,
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Watch, and schedule (when leading) until `shutdown` resolves. With
    /// leader election the Lease is released on shutdown. Returns
    /// [`crate::Error::LostLease`] if the Lease is lost; the caller should
    /// then start afresh or exit, as upstream exits.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let shutdown = shutdown.boxed().shared();
        let (reporter, report_worker) =
            Reporter::new(self.client.clone(), &self.config.scheduler_name);
        let mut profile = Profile::default();
        profile.percentage_of_nodes_to_score = self.config.percentage_of_nodes_to_score;
        let shared = Arc::new(Shared {
            client: self.client,
            profile,
            state: Mutex::default(),
            wake: Notify::new(),
            volume_events: Notify::new(),
            reporter,
            stats: self.stats,
            config: self.config,
        });
        // Dropping the set aborts these when run returns.
        let mut tasks = JoinSet::new();
        let (synced_tx, mut synced_rx) = tokio::sync::watch::channel(0usize);
        let synced_tx = Arc::new(synced_tx);
        tasks.spawn(watch::<Node>(shared.clone(), synced_tx.clone()));
        tasks.spawn(watch::<Pod>(shared.clone(), synced_tx.clone()));
        // What default spreading selects by.
        tasks.spawn(watch::<Service>(shared.clone(), synced_tx.clone()));
        tasks.spawn(watch::<ReplicaSet>(shared.clone(), synced_tx.clone()));
        tasks.spawn(watch::<StatefulSet>(shared.clone(), synced_tx.clone()));
        tasks.spawn(watch_replication_controllers(shared.clone(), synced_tx));
        let watchers = 6;
        // Claims, volumes and classes: only pods that use claims wait for
        // these, so a storage kind that is slow to list (or not served)
        // holds up no other pod.
        tasks.spawn(watch_storage(shared.clone()));
        tasks.spawn(report_worker);
        tasks.spawn(flush_loop(shared.clone()));

        let synced = async {
            // Every watcher has listed; a closed channel cannot happen
            // while `tasks` holds them, but never spin if it does.
            let _ = synced_rx.wait_for(|&n| n >= watchers).await;
        };
        tokio::select! {
            () = synced => {}
            () = shutdown.clone() => return Ok(()),
        }
        tracing::info!(
            nodes = shared.lock().cache.node_count(),
            "scheduler caches synced"
        );
        // Set once the Lease is held; unlike `leading` it stays set while
        // the elector releases the Lease after the work ends.
        let acquired = Arc::new(AtomicBool::new(false));
        let work = {
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            let acquired = acquired.clone();
            async move {
                acquired.store(true, Ordering::SeqCst);
                shared.stats.leading.store(true, Ordering::SeqCst);
                tokio::select! {
                    () = schedule_loop(shared.clone()) => {}
                    () = shutdown => {}
                }
                shared.stats.leading.store(false, Ordering::SeqCst);
            }
        };
        let Some(le) = &shared.config.leader_election else {
            work.await;
            return Ok(());
        };
        let mut elector =
            LeaderElector::new(shared.client.clone(), &le.namespace, &le.name, &le.identity);
        elector.lease_duration = le.lease_duration;
        elector.renew_deadline = le.renew_deadline;
        elector.retry = le.retry;
        let lead = elector.lead(work);
        tokio::pin!(lead);
        tokio::select! {
            r = &mut lead => {
                shared.stats.leading.store(false, Ordering::SeqCst);
                return r.map_err(Into::into);
            }
            () = shutdown => {}
        }
        if acquired.load(Ordering::SeqCst) {
            // The work saw the same shutdown and returns; let the elector
            // release the Lease so a standby need not wait for it.
            let _ = tokio::time::timeout(Duration::from_secs(5), lead).await;
        }
        Ok(())
    }
}

/// What identifies a pending pod's scheduling inputs: its spec and labels.
/// A change there retries an unschedulable pod; a status change does not.
fn fingerprint(pod: &Pod) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(&(&pod.spec, &pod.metadata.labels))
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

fn key_of(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

fn on_pod(shared: &Shared, pod: &Pod) {
    let key = key_of(pod);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        on_pod_gone(shared, &key);
        return;
    }
    let spec = pod.spec.as_ref();
    if let Some(node) = spec
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
    {
        let info = match PodInfo::new(pod) {
            Ok(i) => i,
            Err(e) => {
                // Someone else placed it; count what can be counted.
                tracing::warn!(pod = %key, error = %e, "bound pod with invalid requests");
                Arc::new(PodInfo {
                    namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                    name: pod.metadata.name.clone().unwrap_or_default(),
                    labels: pod.metadata.labels.clone().unwrap_or_default(),
                    requests: crate::pod_info::Resources {
                        pods: 1,
                        ..Default::default()
                    },
                    ..Default::default()
                })
            }
        };
        let mut st = shared.lock();
        st.queue.remove(&key);
        st.cache.set_bound(info, node);
        return;
    }
    let ours = spec
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or(crate::DEFAULT_SCHEDULER_NAME)
        == shared.config.scheduler_name;
    if !ours {
        return;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        let mut st = shared.lock();
        st.queue.remove(&key);
        st.cache.unnominate(&key);
        return;
    }
    match PodInfo::new(pod) {
        Ok(info) => {
            let fp = fingerprint(pod);
            let mut st = shared.lock();
            // Assumed by us and being bound: not pending any more.
            if st.cache.is_placed(&key) {
                return;
            }
            // status.nominatedNodeName: set holds room on that node; a
            // cleared one (seen set before) releases it.
            let was_nominated = st
                .queue
                .get(&key)
                .is_some_and(|p| p.nominated_node.is_some());
            if let Some(n) = info.nominated_node.as_deref() {
                st.cache.nominate(&info, Some(n));
            } else if was_nominated {
                st.cache.unnominate(&key);
            }
            if st.queue.upsert(info, fp) {
                drop(st);
                shared.wake.notify_one();
            }
        }
        Err(e) => {
            shared.lock().queue.remove(&key);
            let info = PodInfo {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                scheduled_condition: PodInfo::scheduled_condition_of(pod),
                ..Default::default()
            };
            tracing::warn!(pod = %key, error = %e, "cannot schedule an invalid pod");
            shared
                .reporter
                .not_scheduled(&info, "SchedulerError", format!("invalid pod: {e}"));
        }
    }
}

fn on_pod_gone(shared: &Shared, key: &str) {
    let mut st = shared.lock();
    st.queue.remove(key);
    st.cache.unnominate(key);
    // Its resources are free: pods waiting for room may fit now.
    if st.cache.remove_pod(key) && st.queue.move_all() {
        drop(st);
        shared.wake.notify_one();
    }
}

fn on_node(shared: &Shared, node: &Node) {
    let mut st = shared.lock();
    match st.cache.set_node(node) {
        Ok(true) => {
            if st.queue.move_all() {
                drop(st);
                shared.wake.notify_one();
            }
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(node = ?node.metadata.name, error = %e, "ignoring a node with invalid allocatable");
        }
    }
}

/// An object kind the scheduler watches, and what its events do.
trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn key(&self) -> String;
    fn applied(shared: &Shared, obj: &Self);
    fn gone(shared: &Shared, key: &str);
    /// Keys the scheduler holds, to find what a relist no longer has.
    fn known(st: &State) -> Vec<String>;
}

impl Watched for Node {
    fn key(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }
    fn applied(shared: &Shared, n: &Self) {
        on_node(shared, n);
    }
    fn gone(shared: &Shared, key: &str) {
        shared.lock().cache.remove_node(key);
    }
    fn known(st: &State) -> Vec<String> {
        st.cache.nodes().map(|n| n.name.clone()).collect()
    }
}

impl Watched for Pod {
    fn key(&self) -> String {
        key_of(self)
    }
    fn applied(shared: &Shared, p: &Self) {
        on_pod(shared, p);
    }
    fn gone(shared: &Shared, key: &str) {
        on_pod_gone(shared, key);
    }
    fn known(st: &State) -> Vec<String> {
        st.cache
            .pod_keys()
            .chain(st.queue.keys())
            .cloned()
            .collect()
    }
}

/// Namespaced objects are keyed `namespace/name`, as pods are.
fn namespaced_key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

macro_rules! watched_workload {
    ($ty:ty, $kind:expr, $set:ident) => {
        impl Watched for $ty {
            fn key(&self) -> String {
                namespaced_key(&self.metadata)
            }
            fn applied(shared: &Shared, o: &Self) {
                shared.lock().cache.workloads.$set(o);
            }
            fn gone(shared: &Shared, key: &str) {
                shared.lock().cache.workloads.remove($kind, key);
            }
            fn known(st: &State) -> Vec<String> {
                st.cache.workloads.keys($kind)
            }
        }
    };
}

watched_workload!(Service, Kind::Service, set_service);
watched_workload!(
    ReplicationController,
    Kind::ReplicationController,
    set_replication_controller
);
watched_workload!(ReplicaSet, Kind::ReplicaSet, set_replica_set);
watched_workload!(StatefulSet, Kind::StatefulSet, set_stateful_set);

/// A claim, volume or class changed: pods waiting for one may fit now,
/// and bindings waiting for the PV controller look again.
fn storage_changed(shared: &Shared, mut st: MutexGuard<'_, State>) {
    let woke = st.queue.move_all();
    drop(st);
    shared.volume_events.notify_waiters();
    if woke {
        shared.wake.notify_one();
    }
}

impl Watched for PersistentVolumeClaim {
    fn key(&self) -> String {
        namespaced_key(&self.metadata)
    }
    fn applied(shared: &Shared, o: &Self) {
        let mut st = shared.lock();
        st.cache.volumes.set_claim(o);
        storage_changed(shared, st);
    }
    fn gone(shared: &Shared, key: &str) {
        let mut st = shared.lock();
        st.cache.volumes.remove_claim(key);
        storage_changed(shared, st);
    }
    fn known(st: &State) -> Vec<String> {
        st.cache.volumes.claim_keys()
    }
}

impl Watched for PersistentVolume {
    fn key(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }
    fn applied(shared: &Shared, o: &Self) {
        let mut st = shared.lock();
        st.cache.volumes.set_volume(o);
        storage_changed(shared, st);
    }
    fn gone(shared: &Shared, key: &str) {
        let mut st = shared.lock();
        st.cache.volumes.remove_volume(key);
        storage_changed(shared, st);
    }
    fn known(st: &State) -> Vec<String> {
        st.cache.volumes.volume_names()
    }
}

impl Watched for StorageClass {
    fn key(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }
    fn applied(shared: &Shared, o: &Self) {
        let mut st = shared.lock();
        st.cache.volumes.set_class(o);
        storage_changed(shared, st);
    }
    fn gone(shared: &Shared, key: &str) {
        let mut st = shared.lock();
        st.cache.volumes.remove_class(key);
        storage_changed(shared, st);
    }
    fn known(st: &State) -> Vec<String> {
        st.cache.volumes.class_names()
    }
}

/// Which of `names` the API server serves in `group_version` (`v1` for
/// the core group), retrying discovery until it answers. A group it does
/// not know serves none.
async fn served(client: &kube::Client, group_version: &str, names: &[&str]) -> Vec<bool> {
    let mut delay = Duration::from_millis(500);
    loop {
        let list = if group_version == "v1" {
            client.list_core_api_resources("v1").await
        } else {
            client.list_api_group_resources(group_version).await
        };
        match list {
            Ok(list) => {
                return names
                    .iter()
                    .map(|n| list.resources.iter().any(|r| r.name == *n))
                    .collect();
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return vec![false; names.len()],
            Err(e) => {
                tracing::warn!(%group_version, error = %e, "API discovery failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Watch claims, volumes and classes (those served), and mark the volume
/// cache synced once each has listed; pods with claims wait until then.
async fn watch_storage(shared: Arc<Shared>) {
    let core = served(
        &shared.client,
        "v1",
        &["persistentvolumeclaims", "persistentvolumes"],
    )
    .await;
    let storage = served(&shared.client, "storage.k8s.io/v1", &["storageclasses"]).await;
    let (tx, mut rx) = tokio::sync::watch::channel(0usize);
    let tx = Arc::new(tx);
    let mut set = JoinSet::new();
    if core[0] {
        set.spawn(watch::<PersistentVolumeClaim>(shared.clone(), tx.clone()));
    }
    if core[1] {
        set.spawn(watch::<PersistentVolume>(shared.clone(), tx.clone()));
    }
    if storage[0] {
        set.spawn(watch::<StorageClass>(shared.clone(), tx.clone()));
    }
    let n = set.len();
    let _ = rx.wait_for(|&k| k >= n).await;
    tracing::info!(kinds = n, "scheduler volume caches synced");
    {
        let mut st = shared.lock();
        st.cache.volumes.synced = true;
        storage_changed(&shared, st);
    }
    while set.join_next().await.is_some() {}
}

/// Watch ReplicationControllers if the API server serves them (Kestrel's
/// does not, and the watch of a kind that is not served would never
/// sync); if it does not, count them as synced at once.
async fn watch_replication_controllers(
    shared: Arc<Shared>,
    synced: Arc<tokio::sync::watch::Sender<usize>>,
) {
    let mut delay = Duration::from_millis(500);
    let served = loop {
        match shared.client.list_core_api_resources("v1").await {
            Ok(list) => {
                break list
                    .resources
                    .iter()
                    .any(|r| r.name == "replicationcontrollers");
            }
            Err(e) => {
                tracing::warn!(error = %e, "core API discovery failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    };
    if served {
        watch::<ReplicationController>(shared, synced).await;
    } else {
        synced.send_modify(|n| *n += 1);
    }
}

/// Feed one kind's watch events to the cache and queue. A relist (after
/// the first list, or after the watch expired) removes what it no longer
/// returns, since deletions in between were never seen as events.
async fn watch<K: Watched>(shared: Arc<Shared>, synced: Arc<tokio::sync::watch::Sender<usize>>) {
    let api: Api<K> = Api::all(shared.client.clone());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut seen: Option<HashSet<String>> = None;
    let mut synced_once = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => seen = Some(HashSet::new()),
            Ok(Event::InitApply(o)) => {
                if let Some(s) = &mut seen {
                    s.insert(o.key());
                }
                K::applied(&shared, &o);
            }
            Ok(Event::Apply(o)) => K::applied(&shared, &o),
            Ok(Event::Delete(o)) => K::gone(&shared, &o.key()),
            Ok(Event::InitDone) => {
                let seen = seen.take().unwrap_or_default();
                let known = K::known(&shared.lock());
                for k in known.iter().filter(|k| !seen.contains(*k)) {
                    K::gone(&shared, k);
                }
                if !synced_once {
                    synced_once = true;
                    synced.send_modify(|n| *n += 1);
                }
            }
            Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying"),
        }
    }
}

async fn flush_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.lock().queue.flush(Instant::now()) {
            shared.wake.notify_one();
        }
    }
}

async fn pop(shared: &Shared) -> Arc<PodInfo> {
    loop {
        if let Some(p) = shared.lock().queue.pop() {
            return p;
        }
        shared.wake.notified().await;
    }
}

async fn schedule_loop(shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(shared.config.bind_concurrency.max(1)));
    // Dropping the set (when leadership or the process ends) aborts the
    // bindings in flight.
    let mut binds = JoinSet::new();
    loop {
        while binds.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let pod = pop(&shared).await;
        let key = pod.key();
        let chosen = {
            let mut st = shared.lock();
            let st = &mut *st;
            // Deleted, or bound by someone else, since it was popped.
            if !st.queue.contains(&key) {
                continue;
            }
            // Its claims are not known yet: it waits, unreported, for the
            // volume caches to sync.
            if !pod.claims.is_empty() && !st.cache.volumes.synced {
                st.queue.unschedulable(&key);
                continue;
            }
            match shared.profile.schedule(&pod, &mut st.cache) {
                Ok(node) => {
                    let plan = crate::plugins::plan(&pod, &node, &st.cache);
                    if let Some(p) = &plan {
                        p.assume(&mut st.cache.volumes, &node);
                    }
                    st.cache.assume(pod.clone(), &node);
                    st.queue.done(&key);
                    Ok((node, plan))
                }
                Err(fit) => {
                    st.queue.unschedulable(&key);
                    // Upstream's PostFilter: only after a failed cycle.
                    let pre = (fit.num_nodes > 0).then(|| {
                        let pre = shared.profile.preempt(&pod, &mut st.cache);
                        if pre.clear_own {
                            st.cache.unnominate(&key);
                        }
                        pre
                    });
                    Err((fit, pre))
                }
            }
        };
        match chosen {
            Ok((node, plan)) => {
                binds.spawn(bind(shared.clone(), pod, node, plan, permit));
            }
            Err((mut fit, pre)) => {
                shared.stats.unschedulable.fetch_add(1, Ordering::Relaxed);
                if let Some(pre) = pre {
                    fit.post_filter = pre.message.clone();
                    if pre.node.is_some() || pre.clear_own {
                        binds.spawn(preempt(shared.clone(), pod.clone(), pre));
                    }
                }
                let message = fit.to_string();
                tracing::debug!(pod = %key, %message, "unschedulable");
                shared
                    .reporter
                    .not_scheduled(&pod, "Unschedulable", message);
            }
        }
    }
}

/// Set (or clear, with `None`) a pending pod's `status.nominatedNodeName`.
async fn patch_nominated(shared: &Shared, p: &PodInfo, node: Option<&str>) {
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &p.namespace);
    let patch = serde_json::json!({"status": {"nominatedNodeName": node}});
    if let Err(e) = api
        .patch_status(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(pod = %p.key(), error = %e, "could not set nominatedNodeName");
    }
}

/// Carry out a preemption: as upstream's prepareCandidate, mark each
/// victim with a `DisruptionTarget` condition, delete it and record a
/// `Preempted` Event on it; clear the nomination of lower-priority pods
/// nominated to the node; then nominate the preemptor. Deletions bring
/// the preemptor back to the queue (a placed pod gone moves pods).
async fn preempt(shared: Arc<Shared>, pod: Arc<PodInfo>, pre: crate::plugins::Preemption) {
    let Some(node) = pre.node else {
        if pre.clear_own {
            patch_nominated(&shared, &pod, None).await;
        }
        return;
    };
    let mut failed = false;
    for v in pre.victims.iter().filter(|v| !v.terminating) {
        let api: Api<Pod> = Api::namespaced(shared.client.clone(), &v.namespace);
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "PreemptionByScheduler",
            "message": format!(
                "{}: preempting to accommodate a higher priority pod",
                shared.config.scheduler_name
            ),
            "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now()
            ),
        }]}});
        match api
            .patch_status(&v.name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => {
                tracing::warn!(victim = %v.key(), error = %e, "could not add DisruptionTarget condition");
                failed = true;
                continue;
            }
        }
        let mut dp = kube::api::DeleteParams::default();
        if !v.uid.is_empty() {
            dp.preconditions = Some(kube::api::Preconditions {
                uid: Some(v.uid.clone()),
                resource_version: None,
            });
        }
        match api.delete(&v.name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => continue,
            Err(e) => {
                tracing::warn!(victim = %v.key(), error = %e, "could not preempt");
                failed = true;
                continue;
            }
        }
        tracing::debug!(preemptor = %pod.key(), victim = %v.key(), %node, "preempted");
        shared.reporter.event(
            v,
            EventType::Normal,
            "Preempted",
            format!("Preempted by pod {} on node {node}", pod.uid),
        );
    }
    for p in &pre.clear_nominated {
        patch_nominated(&shared, p, None).await;
    }
    patch_nominated(&shared, &pod, Some(&node)).await;
    if failed {
        // Upstream activates the preemptor when a victim could not be
        // deleted, rather than leave it waiting for a deletion.
        let mut st = shared.lock();
        if st.queue.contains(&pod.key()) {
            st.queue.error(pod.clone(), 0);
        }
    }
}

/// How long a binding waits for the PV controller to bind the pod's
/// claims (upstream's `bindTimeoutSeconds`).
const VOLUME_BIND_TIMEOUT: Duration = Duration::from_secs(600);

/// Upstream's VolumeBinding PreBind: write the plan (a volume's claimRef
/// for a claim matched to it, the selected node on a claim to provision)
/// and wait until the PV controller has bound every claim.
async fn bind_volumes(shared: &Shared, node: &str, plan: &Plan) -> Result<(), String> {
    let failed = |e: kube::Error| format!("binding volumes: {e}");
    let pvs: Api<PersistentVolume> = Api::all(shared.client.clone());
    for b in plan.bindings.iter().filter(|b| b.write) {
        let mut patch = serde_json::json!({
            "metadata": {"annotations": {crate::volumes::ANN_BOUND_BY_CONTROLLER: "yes"}},
            "spec": {"claimRef": {
                "kind": "PersistentVolumeClaim",
                "apiVersion": "v1",
                "namespace": b.claim.namespace,
                "name": b.claim.name,
                "uid": b.claim.uid,
            }},
        });
        // Fails if the volume changed since it was chosen (taken by
        // another claim, say).
        if !b.resource_version.is_empty() {
            patch["metadata"]["resourceVersion"] = b.resource_version.clone().into();
        }
        pvs.patch(&b.volume, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(failed)?;
    }
    for key in &plan.annotate {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), ns);
        let patch = serde_json::json!({
            "metadata": {"annotations": {crate::volumes::ANN_SELECTED_NODE: node}},
        });
        pvcs.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(failed)?;
    }
    let deadline = Instant::now() + VOLUME_BIND_TIMEOUT;
    let mut seen = HashSet::new();
    loop {
        let changed = shared.volume_events.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if plan.check(&shared.lock().cache, node, &mut seen)? {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("binding volumes: context deadline exceeded".to_owned());
        }
        // Events wake it; the timer only bounds a missed one.
        let _ = tokio::time::timeout(left.min(Duration::from_secs(5)), changed).await;
    }
}

async fn bind(
    shared: Arc<Shared>,
    pod: Arc<PodInfo>,
    node: String,
    plan: Option<Plan>,
    _permit: OwnedSemaphorePermit,
) {
    let key = pod.key();
    if let Some(plan) = &plan {
        let r = bind_volumes(&shared, &node, plan).await;
        {
            let mut st = shared.lock();
            // Bound or not, the watch now says what is true.
            plan.forget(&mut st.cache.volumes);
            if r.is_err() {
                st.cache.forget(&key);
                st.queue.error(pod.clone(), 0);
            }
        }
        if let Err(e) = r {
            shared.stats.bind_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(pod = %key, %node, error = %e, "binding volumes failed; will retry");
            shared.reporter.not_scheduled(
                &pod,
                "SchedulerError",
                format!("running PreBind plugin \"VolumeBinding\": {e}"),
            );
            return;
        }
    }
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &pod.namespace);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()).filter(|u| !u.is_empty()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            ..Default::default()
        },
    };
    let res = api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &pod.name,
            &PostParams::default(),
            &binding,
        )
        .await;
    match res {
        Ok(_) => {
            shared.stats.bound.fetch_add(1, Ordering::Relaxed);
            shared.reporter.event(
                &pod,
                EventType::Normal,
                "Scheduled",
                format!(
                    "Successfully assigned {}/{} to {}",
                    pod.namespace, pod.name, node
                ),
            );
        }
        // Deleted, or bound meanwhile (by us on an earlier try, or by
        // someone else): the watch tells us where it is.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
            tracing::debug!(pod = %key, code = s.code, "binding not needed: {}", s.message);
            shared.lock().cache.forget(&key);
        }
        Err(e) => {
            shared.stats.bind_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(pod = %key, %node, error = %e, "binding failed; will retry");
            {
                let mut st = shared.lock();
                st.cache.forget(&key);
                st.queue.error(pod.clone(), 0);
            }
            shared
                .reporter
                .not_scheduled(&pod, "SchedulerError", format!("Binding rejected: {e}"));
        }
    }
}
