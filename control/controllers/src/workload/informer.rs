//! One watch per resource type, shared by every workload controller.
//!
//! kube-runtime's shared reflector streams do not pass deletions on, and a
//! ReplicaSet must hear that its pod is gone. So the informer here applies
//! each watch event to a reflector store first and only then hands the
//! object (deleted ones included) to every subscriber. A controller woken by
//! a subscriber therefore always reads a store at least as new as the event
//! that woke it.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt as _};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, reflector::store::Writer};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// A watched resource type: a store to read and a stream of changes.
pub struct Informer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    api: Api<K>,
    store: Store<K>,
    writer: Mutex<Option<Writer<K>>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Arc<K>>>>,
}

impl<K> Debug for Informer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("objects", &self.store.len())
            .finish_non_exhaustive()
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// An informer over every object `api` can see.
    pub fn new(api: Api<K>) -> Self {
        let (store, writer) = reflector::store();
        Self {
            api,
            store,
            writer: Mutex::new(Some(writer)),
            subscribers: Mutex::default(),
        }
    }

    /// The objects as last seen.
    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// Every change from now on, deletions included, each delivered after
    /// the store has applied it.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|o| (o, rx)) })
    }

    fn notify(&self, obj: Arc<K>) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|s| s.send(obj.clone()).is_ok());
    }

    /// Watch until the process ends. Watch errors are retried with
    /// backoff; this returns only if `run` is called twice.
    pub async fn run(&self) -> anyhow::Result<()> {
        let Some(mut writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            anyhow::bail!("informer for {} started twice", K::kind(&()));
        };
        let mut events = std::pin::pin!(
            watcher::watcher(self.api.clone(), watcher::Config::default()).default_backoff()
        );
        while let Some(ev) = events.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                    continue;
                }
            };
            // The store keeps its old contents until a relist is done: what
            // is missing afterwards vanished while the watch was down, and
            // its owners must hear of it too.
            let gone_before_relist: Vec<Arc<K>> = if matches!(ev, Event::InitDone) {
                let old = self.store.state();
                writer.apply_watcher_event(&ev);
                old.into_iter()
                    .filter(|o| self.store.get(&ObjectRef::from_obj(&**o)).is_none())
                    .collect()
            } else {
                writer.apply_watcher_event(&ev);
                Vec::new()
            };
            match ev {
                Event::Apply(o) | Event::Delete(o) => self.notify(Arc::new(o)),
                Event::InitDone => {
                    for o in gone_before_relist {
                        self.notify(o);
                    }
                    for o in self.store.state() {
                        self.notify(o);
                    }
                }
                Event::Init | Event::InitApply(_) => {}
            }
        }
        anyhow::bail!("the watch of {} ended", K::kind(&()))
    }
}
