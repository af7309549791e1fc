//! The sync loop: reflector stores of Services and EndpointSlices, a set of
//! Services touched since the last batch, and a batch every few
//! milliseconds that recomputes only those Services and writes the
//! difference into the pinned maps.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::{mpsc, watch};

use super::desired::{NodeIdentity, ServiceRef, ServiceState, service_state, slice_service};
use super::diff::{IdLimits, Syncer};
use super::maps::PinnedMaps;
use crate::batch::{AbortOnDrop, BatchConfig, BatchLoop, Batcher, blocking};
use crate::{Error, Result};

/// What a failed blocking task of this loop is called in errors.
const BLOCKING: &str = "the service sync's blocking task";

/// Tuning of the loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncConfig {
    /// The batching: a burst (a Deployment rolling, a relist) is written
    /// once.
    pub batch: BatchConfig,
    /// Id ranges.
    pub ids: IdLimits,
}

/// What one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Services recomputed.
    pub services: usize,
    /// Map entries written.
    pub writes: usize,
    /// Map entries deleted.
    pub deletes: usize,
    /// Time spent computing the desired state.
    pub compute: Duration,
    /// Time spent writing the maps.
    pub apply: Duration,
    /// From the batch's first watch event to the maps being written.
    pub latency: Duration,
}

/// The service loop's progress.
pub type Progress = crate::progress::Progress<BatchReport>;
/// A handle on the service loop's progress.
pub type SyncStatus = crate::progress::SyncStatus<BatchReport>;
pub use crate::progress::SyncEnded;

/// The service map sync of one node.
pub struct ServiceSync {
    client: kube::Client,
    node: NodeIdentity,
    pin_dir: PathBuf,
    config: SyncConfig,
    progress: watch::Sender<Progress>,
}

impl std::fmt::Debug for ServiceSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSync")
            .field("node", &self.node)
            .field("pin_dir", &self.pin_dir)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ServiceSync {
    /// A sync of the maps pinned in `pin_dir` (loaded there by
    /// [`crate::Dataplane::load`]) for `node`.
    pub fn new(client: kube::Client, node: NodeIdentity, pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            client,
            node,
            pin_dir: pin_dir.into(),
            config: SyncConfig::default(),
            progress: watch::Sender::new(Progress::default()),
        }
    }

    /// Replaces the tuning.
    pub fn with_config(mut self, config: SyncConfig) -> Self {
        self.config = config;
        self
    }

    /// A handle that reports the first full sync and each batch.
    pub fn status(&self) -> SyncStatus {
        SyncStatus::new(self.progress.subscribe())
    }

    /// Runs until `shutdown` completes. Fails only if the maps cannot be
    /// opened or read; watch and write errors are logged and retried.
    ///
    /// The pinned state is adopted first and nothing is written until both
    /// Services and EndpointSlices have been listed in full, so a restarted
    /// agent never empties a frontend whose slices it has not seen yet.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Self {
            client,
            node,
            pin_dir,
            config,
            progress,
        } = self;
        let ids = config.ids;
        let syncer = blocking(BLOCKING, move || {
            Syncer::adopt(PinnedMaps::open(&pin_dir)?, ids)
        })
        .await??;

        let (svc_store, svc_writer) = reflector::store();
        let (slice_store, slice_writer) = reflector::store();
        let (tx, rx) = mpsc::unbounded_channel();
        let services = AbortOnDrop(tokio::spawn(watch_services(
            Api::all(client.clone()),
            svc_writer,
            tx.clone(),
        )));
        let slices = AbortOnDrop(tokio::spawn(watch_slices(
            Api::all(client),
            slice_writer,
            tx,
        )));
        let mut state = LoopState {
            syncer: Some(syncer),
            svc_store,
            slice_store,
            node,
            listed: [false; 2],
            full: true,
            dirty: HashSet::new(),
            first_event: None,
        };
        let mut batches = BatchLoop::new("service maps", config.batch, progress);
        let result = batches.run(&mut state, rx, shutdown).await;
        drop((services, slices));
        result
    }
}

/// From the watchers to the loop.
#[derive(Debug)]
enum Msg {
    /// This Service's object or one of its slices changed (at this instant).
    Dirty(ServiceRef, Instant),
    /// A watcher finished a full list: 0 Services, 1 EndpointSlices.
    Listed(usize),
}

fn service_ref(svc: &Service) -> Option<ServiceRef> {
    Some(ServiceRef::new(
        svc.metadata.namespace.as_deref()?,
        svc.metadata.name.as_deref()?,
    ))
}

async fn watch_services(
    api: Api<Service>,
    writer: reflector::store::Writer<Service>,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let events =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let msg = match event {
            Ok(watcher::Event::Apply(s) | watcher::Event::Delete(s)) => {
                service_ref(&s).map(|r| Msg::Dirty(r, Instant::now()))
            }
            Ok(watcher::Event::InitDone) => Some(Msg::Listed(0)),
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
            Err(e) => {
                tracing::warn!(error = %e, "watching Services");
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

async fn watch_slices(
    api: Api<EndpointSlice>,
    writer: reflector::store::Writer<EndpointSlice>,
    tx: mpsc::UnboundedSender<Msg>,
) {
    // The Service each slice belonged to when last seen, so that a slice
    // whose label changes (or that is deleted) also touches its old one.
    let mut owners: HashMap<(String, String), ServiceRef> = HashMap::new();
    let mut relisted: HashMap<(String, String), ServiceRef> = HashMap::new();
    let events =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let now = Instant::now();
        let mut touched = Vec::new();
        let mut listed = false;
        match event {
            Ok(watcher::Event::Apply(s)) => {
                let id = slice_id(&s);
                let new = slice_service(&s);
                let old = match &new {
                    Some(n) => owners.insert(id, n.clone()),
                    None => owners.remove(&id),
                };
                touched.extend(old.filter(|o| Some(o) != new.as_ref()));
                touched.extend(new);
            }
            Ok(watcher::Event::Delete(s)) => {
                touched.extend(owners.remove(&slice_id(&s)));
                touched.extend(slice_service(&s));
            }
            Ok(watcher::Event::Init) => relisted.clear(),
            Ok(watcher::Event::InitApply(s)) => {
                if let Some(svc) = slice_service(&s) {
                    relisted.insert(slice_id(&s), svc);
                }
            }
            Ok(watcher::Event::InitDone) => {
                // The store now holds exactly the relisted slices; the loop
                // recomputes every Service, so only the index is swapped.
                owners = std::mem::take(&mut relisted);
                listed = true;
            }
            Err(e) => tracing::warn!(error = %e, "watching EndpointSlices"),
        }
        for svc in touched {
            if tx.send(Msg::Dirty(svc, now)).is_err() {
                return;
            }
        }
        if listed && tx.send(Msg::Listed(1)).is_err() {
            return;
        }
    }
}

fn slice_id(slice: &EndpointSlice) -> (String, String) {
    (
        slice.metadata.namespace.clone().unwrap_or_default(),
        slice.metadata.name.clone().unwrap_or_default(),
    )
}

/// What the loop carries between batches.
struct LoopState {
    /// `None` only while a batch runs on the blocking pool.
    syncer: Option<Syncer<PinnedMaps>>,
    svc_store: Store<Service>,
    slice_store: Store<EndpointSlice>,
    node: NodeIdentity,
    /// Whether each watcher has finished a full list.
    listed: [bool; 2],
    /// Whether the next batch must recompute every Service (first sync,
    /// relist after a lost watch).
    full: bool,
    dirty: HashSet<ServiceRef>,
    first_event: Option<Instant>,
}

impl Batcher for LoopState {
    type Msg = Msg;
    type Report = BatchReport;

    fn listed(&self) -> bool {
        self.listed == [true; 2]
    }

    fn pending(&self) -> bool {
        self.full || !self.dirty.is_empty()
    }

    fn absorb(&mut self, msg: Msg) {
        match msg {
            Msg::Dirty(svc, at) => {
                self.dirty.insert(svc);
                self.first_event = Some(self.first_event.map_or(at, |f| f.min(at)));
            }
            Msg::Listed(which) => {
                if let Some(l) = self.listed.get_mut(which) {
                    *l = true;
                }
                self.full = true;
                self.first_event.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Recomputes the touched Services (or all) and writes the difference.
    async fn batch(&mut self) -> Result<Result<BatchReport>> {
        let Some(mut syncer) = self.syncer.take() else {
            return Err(Error::Io {
                what: BLOCKING,
                source: std::io::Error::other("a batch is already running"),
            });
        };
        let full = std::mem::take(&mut self.full);
        let dirty = std::mem::take(&mut self.dirty);
        let first_event = self.first_event.take();
        let svc_store = self.svc_store.clone();
        let slice_store = self.slice_store.clone();
        let node = self.node.clone();
        let (syncer, outcome) = blocking(BLOCKING, move || {
            let started = Instant::now();
            let services = recompute(&mut syncer, &svc_store, &slice_store, &node, full, dirty);
            let computed = Instant::now();
            let flushed = syncer.flush();
            let done = Instant::now();
            let report = flushed.map(|stats| BatchReport {
                services,
                writes: stats.writes,
                deletes: stats.deletes,
                compute: computed - started,
                apply: done - computed,
                latency: first_event.map_or(done - started, |f| done.saturating_duration_since(f)),
            });
            (syncer, report)
        })
        .await?;
        self.syncer = Some(syncer);
        Ok(outcome)
    }
}

/// Hands the new state of every touched Service (or every Service) to the
/// syncer; returns how many were recomputed.
fn recompute(
    syncer: &mut Syncer<PinnedMaps>,
    svc_store: &Store<Service>,
    slice_store: &Store<EndpointSlice>,
    node: &NodeIdentity,
    full: bool,
    mut dirty: HashSet<ServiceRef>,
) -> usize {
    let services = svc_store.state();
    if full {
        // Every Service the API has, and every one the maps still hold
        // (deleted while the watch was down).
        dirty.extend(services.iter().filter_map(|s| service_ref(s)));
        dirty.extend(syncer.services().cloned());
    }
    // One pass over the slices, keeping those of touched Services.
    let slices = slice_store.state();
    let mut by_service: HashMap<ServiceRef, Vec<&EndpointSlice>> = HashMap::new();
    for slice in &slices {
        if let Some(svc) = slice_service(slice)
            && dirty.contains(&svc)
        {
            by_service.entry(svc).or_default().push(slice);
        }
    }
    let count = dirty.len();
    for svc in dirty {
        let (namespace, name) = svc.parts();
        let state = match svc_store.get(&ObjectRef::new(name).within(namespace)) {
            Some(service) => service_state(
                &service,
                by_service.get(&svc).map_or(&[][..], Vec::as_slice),
                node,
            ),
            None => ServiceState::default(),
        };
        syncer.set_service(&svc, state);
    }
    count
}
