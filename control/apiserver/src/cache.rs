//! The watch cache: every object under `/registry/` held in memory, kept
//! current by one store watch, with a bounded history of recent events so
//! watches can resume from a resourceVersion. Lists, gets and watches are
//! served from here; only writes (and paged or exact-revision lists) reach
//! the store.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use kestrel_store::{Event, EventKind, Revision, Store};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

/// Root of every key the API server writes.
pub const REGISTRY_PREFIX: &str = "/registry/";
/// Slack for slow watchers before they are dropped (they then re-watch).
const FANOUT_CAPACITY: usize = 16_384;

/// One cached object, with `metadata.resourceVersion` already set.
#[derive(Debug)]
pub struct Entry {
    /// The object.
    pub value: Arc<Value>,
    /// The object encoded as JSON, once, so lists do not re-encode it.
    pub json: Bytes,
    /// Its store `mod_revision`.
    pub mod_revision: Revision,
}

/// Kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created or updated.
    Put,
    /// Deleted.
    Delete,
}

/// One change as watchers see it.
#[derive(Debug)]
pub struct Change {
    /// The store revision of the change.
    pub revision: Revision,
    /// The key.
    pub key: String,
    /// Put or delete.
    pub kind: ChangeKind,
    /// The object after the change; for a delete, its last state with the
    /// delete's revision as resourceVersion (as upstream sends it).
    pub object: Arc<Value>,
    /// The object before the change, if any.
    pub prev: Option<Arc<Value>>,
    /// `object` encoded as JSON, once for every watcher.
    pub json: Bytes,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Arc<Entry>>,
    revision: Revision,
    history: VecDeque<Arc<Change>>,
    /// Watches from below this revision cannot be served from history.
    oldest: Revision,
}

/// Where a watch starts: the history to replay, the live receiver, and the
/// cache revision at the moment of subscribing.
pub type WatchStart = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>, Revision);

/// Keyed objects under some prefixes, the receiver for what follows, and
/// the revision they were taken at.
pub type KeyedSnapshot = (
    Vec<(String, Arc<Entry>)>,
    broadcast::Receiver<Arc<Change>>,
    Revision,
);

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[source] kestrel_store::Error),
    /// The requested revision is older than the retained history.
    #[error("too old resource version: {requested} ({oldest})")]
    TooOld {
        /// Asked for.
        requested: Revision,
        /// Oldest servable.
        oldest: Revision,
    },
    /// The cache did not reach a revision in time.
    #[error("Too large resource version: {requested}, current resource version: {current}")]
    NotReached {
        /// Asked for.
        requested: Revision,
        /// Where the cache is.
        current: Revision,
    },
}

/// The shared cache.
#[derive(Debug)]
pub struct Cache {
    history: usize,
    state: RwLock<State>,
    revision_tx: watch::Sender<Revision>,
    fanout: broadcast::Sender<Arc<Change>>,
}

/// Parse a stored value and stamp its resourceVersion.
pub fn decode(bytes: &[u8], revision: Revision) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    set_resource_version(&mut v, revision);
    Some(v)
}

fn to_json(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Set `metadata.resourceVersion`.
pub fn set_resource_version(v: &mut Value, revision: Revision) {
    if let Some(o) = v.as_object_mut() {
        let meta = o
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(m) = meta.as_object_mut() {
            m.insert(
                "resourceVersion".into(),
                Value::String(revision.to_string()),
            );
        }
    }
}

impl Cache {
    /// Fill the cache from the store and keep it current in a background task.
    pub async fn start(store: Arc<dyn Store>, history: usize) -> Result<Arc<Self>, CacheError> {
        let (revision_tx, _) = watch::channel(0);
        let (fanout, _) = broadcast::channel(FANOUT_CAPACITY);
        let cache = Arc::new(Self {
            history: history.max(1),
            state: RwLock::new(State::default()),
            revision_tx,
            fanout,
        });
        let rev = cache.relist(store.as_ref()).await?;
        let weak = Arc::downgrade(&cache);
        tokio::spawn(async move {
            let mut from = rev + 1;
            loop {
                let Some(cache) = weak.upgrade() else { return };
                match store.watch(REGISTRY_PREFIX, from).await {
                    Ok(mut stream) => {
                        drop(cache);
                        while let Some(item) = stream.next().await {
                            let Some(cache) = weak.upgrade() else { return };
                            match item {
                                Ok(ev) => {
                                    from = ev.revision() + 1;
                                    cache.apply(&ev);
                                }
                                Err(kestrel_store::Error::WatcherLagged { resume_from }) => {
                                    from = resume_from;
                                    break;
                                }
                                Err(kestrel_store::Error::Compacted { .. }) => {
                                    match cache.relist(store.as_ref()).await {
                                        Ok(r) => from = r + 1,
                                        Err(e) => {
                                            tracing::warn!(error = %e, "watch cache relist failed")
                                        }
                                    }
                                    break;
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "watch cache stream failed; rewatching");
                                    break;
                                }
                            }
                        }
                    }
                    Err(kestrel_store::Error::Compacted { .. }) => {
                        match cache.relist(store.as_ref()).await {
                            Ok(r) => from = r + 1,
                            Err(e) => tracing::warn!(error = %e, "watch cache relist failed"),
                        }
                    }
                    Err(kestrel_store::Error::Closed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "watch cache could not watch the store");
                        drop(cache);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(cache)
    }

    /// Replace the contents with a fresh read of the store. History is
    /// dropped: watchers older than this get 410 and relist, as upstream.
    async fn relist(&self, store: &dyn Store) -> Result<Revision, CacheError> {
        let res = store
            .range(REGISTRY_PREFIX, Default::default())
            .await
            .map_err(CacheError::Store)?;
        let mut objects = BTreeMap::new();
        for kv in res.items {
            if let Some(v) = decode(&kv.value, kv.mod_revision) {
                objects.insert(
                    kv.key,
                    Arc::new(Entry {
                        json: to_json(&v),
                        value: Arc::new(v),
                        mod_revision: kv.mod_revision,
                    }),
                );
            }
        }
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        st.objects = objects;
        st.revision = st.revision.max(res.revision);
        st.history.clear();
        st.oldest = st.revision;
        let r = st.revision;
        drop(st);
        self.revision_tx.send_replace(r);
        Ok(r)
    }

    fn apply(&self, ev: &Event) {
        let rev = ev.revision();
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        if rev <= st.revision {
            return;
        }
        let prev = st.objects.get(&ev.kv.key).map(|e| e.value.clone());
        let change = match ev.kind {
            EventKind::Put => {
                let Some(v) = decode(&ev.kv.value, rev) else {
                    tracing::warn!(key = %ev.kv.key, "undecodable object in store");
                    st.revision = rev;
                    return;
                };
                let json = to_json(&v);
                let v = Arc::new(v);
                st.objects.insert(
                    ev.kv.key.clone(),
                    Arc::new(Entry {
                        value: v.clone(),
                        json: json.clone(),
                        mod_revision: rev,
                    }),
                );
                Change {
                    revision: rev,
                    key: ev.kv.key.clone(),
                    kind: ChangeKind::Put,
                    object: v,
                    prev,
                    json,
                }
            }
            EventKind::Delete => {
                st.objects.remove(&ev.kv.key);
                let last = prev
                    .clone()
                    .map(|p| (*p).clone())
                    .or_else(|| ev.prev_kv.as_ref().and_then(|kv| decode(&kv.value, rev)))
                    .unwrap_or(Value::Null);
                let mut last = last;
                set_resource_version(&mut last, rev);
                Change {
                    revision: rev,
                    key: ev.kv.key.clone(),
                    kind: ChangeKind::Delete,
                    json: to_json(&last),
                    object: Arc::new(last),
                    prev,
                }
            }
        };
        let change = Arc::new(change);
        st.revision = rev;
        st.history.push_back(change.clone());
        while st.history.len() > self.history {
            if let Some(old) = st.history.pop_front() {
                st.oldest = old.revision;
            }
        }
        // Sent under the lock so a watcher that snapshots history and
        // subscribes under the read lock sees every change exactly once.
        let _ = self.fanout.send(change);
        drop(st);
        self.revision_tx.send_replace(rev);
    }

    /// The revision the cache has caught up to.
    pub fn revision(&self) -> Revision {
        *self.revision_tx.borrow()
    }

    /// Wait until the cache has applied `revision` (read-your-writes).
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> Result<(), CacheError> {
        let mut rx = self.revision_tx.subscribe();
        let res = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await;
        match res {
            Ok(Ok(_)) => Ok(()),
            _ => Err(CacheError::NotReached {
                requested: revision,
                current: self.revision(),
            }),
        }
    }

    /// One object.
    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        st.objects.get(key).cloned()
    }

    /// Every object under `prefix`, sorted by key, and the cache revision.
    pub fn list(&self, prefix: &str) -> (Vec<Arc<Entry>>, Revision) {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let items = st
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect();
        (items, st.revision)
    }

    /// Start watching after `after`: the history since then, and a receiver
    /// for what follows. `after = None` means "from now".
    pub fn watch_from(&self, after: Option<Revision>) -> Result<WatchStart, CacheError> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let rx = self.fanout.subscribe();
        let Some(after) = after else {
            return Ok((Vec::new(), rx, st.revision));
        };
        if after < st.oldest {
            return Err(CacheError::TooOld {
                requested: after,
                oldest: st.oldest,
            });
        }
        let past = st
            .history
            .iter()
            .filter(|c| c.revision > after)
            .cloned()
            .collect();
        Ok((past, rx, st.revision))
    }

    /// A consistent snapshot of several prefixes, with keys, plus a receiver
    /// for the changes after it (for indexes that follow the cache).
    pub fn keyed_snapshot_and_watch(&self, prefixes: &[&str]) -> KeyedSnapshot {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let rx = self.fanout.subscribe();
        let items = prefixes
            .iter()
            .flat_map(|&prefix| {
                st.objects
                    .range(prefix.to_owned()..)
                    .take_while(move |(k, _)| k.starts_with(prefix))
                    .map(|(k, e)| (k.clone(), e.clone()))
            })
            .collect();
        (items, rx, st.revision)
    }

    /// A consistent snapshot of `prefix` plus a receiver for changes after it
    /// (for watches that start with the current state).
    pub fn snapshot_and_watch(
        &self,
        prefix: &str,
    ) -> (Vec<Arc<Entry>>, broadcast::Receiver<Arc<Change>>, Revision) {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let rx = self.fanout.subscribe();
        let items = st
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect();
        (items, rx, st.revision)
    }
}

/// How far a follower of the cache's change stream has got: the revision
/// it has applied, and a way to wait (bounded) until it reaches one.
#[derive(Debug, Default)]
pub struct Watermark {
    applied: std::sync::atomic::AtomicI64,
    notify: tokio::sync::Notify,
}

impl Watermark {
    /// The follower has applied everything up to `revision`.
    pub fn advance(&self, revision: Revision) {
        self.applied
            .fetch_max(revision, std::sync::atomic::Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Wait until the follower has applied `revision`, or `timeout` passed;
    /// whether it got there.
    pub async fn reached(&self, revision: Revision, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                if self.applied.load(std::sync::atomic::Ordering::Acquire) >= revision {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}
