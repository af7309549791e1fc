//! Kestrel's cluster state store.
//!
//! The [`Store`] trait gives etcd v3 semantics to the API server, whatever the
//! backend:
//!
//! - one global revision that every successful write raises by exactly one;
//! - every item carries its `create_revision` and `mod_revision`;
//! - reads at the current or at a past revision, prefix ranges with a limit and
//!   a continuation key;
//! - `create` fails when the key exists, `update` and `delete` are
//!   compare-and-swap on the expected `mod_revision`;
//! - `watch(prefix, start_revision)` yields every change at or after
//!   `start_revision`, in revision order, without gap or duplicate;
//! - after `compact(rev)`, reading below `rev`, or watching from `rev` or
//!   below, fails with [`Error::Compacted`] (the API server's 410 Gone). A
//!   watch must start after the compaction revision because etcd drops a
//!   delete that happened exactly at it.
//!
//! The API server holds the store as `Arc<dyn Store>`, so the trait is
//! object-safe: methods are `async_trait` and watches are boxed streams.

#![forbid(unsafe_code)]

pub mod compactor;
pub mod etcd;
pub mod sqlite;
#[cfg(feature = "test-util")]
pub mod testing;

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;

/// A store revision. Revisions start at 1 with the first write; 0 means
/// "none" (an empty store, or "from now" for a watch).
pub type Revision = i64;

/// The largest value a backend accepts. Kubernetes objects are capped at
/// 1.5 MiB by the API server; the margin leaves room for encoding overhead
/// while staying below gRPC's default 4 MiB message limit for etcd.
pub const MAX_VALUE_BYTES: usize = 2 * 1024 * 1024;

/// Errors returned by every backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key does not exist (update or delete of a missing key).
    #[error("key {key:?} not found")]
    NotFound {
        /// The key that was looked up.
        key: String,
    },
    /// `create` found the key already present.
    #[error("key {key:?} already exists")]
    AlreadyExists {
        /// The key that exists.
        key: String,
    },
    /// The compare-and-swap failed: the key's `mod_revision` is not the one
    /// the caller expected.
    #[error("key {key:?} was modified: expected mod_revision {expected}, found {current}")]
    Conflict {
        /// The key written.
        key: String,
        /// The `mod_revision` the caller expected.
        expected: Revision,
        /// The key's `mod_revision` at the time of the write.
        current: Revision,
    },
    /// The requested revision has been compacted away; start again from a
    /// fresh read (the API server answers 410 Gone).
    #[error("revision has been compacted; oldest available is {compact_revision}")]
    Compacted {
        /// The store's compaction revision: reads at or above it still work.
        compact_revision: Revision,
    },
    /// The requested revision is newer than the store's current revision.
    #[error("revision {requested} is in the future; current is {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The store's current revision.
        current: Revision,
    },
    /// A watcher fell too far behind the writers and was ended so that it
    /// could not stall the store. Watch again from `resume_from`: no event
    /// before it was lost.
    #[error("watcher fell behind; resume from revision {resume_from}")]
    WatcherLagged {
        /// The first revision this watcher has not delivered.
        resume_from: Revision,
    },
    /// The value is larger than [`MAX_VALUE_BYTES`].
    #[error("value of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The size of the rejected value.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The key is empty or otherwise unusable.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The rejected key.
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The store has been shut down.
    #[error("store is closed")]
    Closed,
    /// The backend failed (I/O, SQLite, etcd transport).
    #[error("{context}")]
    Backend {
        /// What the store was doing.
        context: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Error {
    /// Wraps a backend error with what the store was doing.
    pub fn backend(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Backend {
            context,
            source: source.into(),
        }
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One version of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value; empty in the `kv` of a delete event.
    pub value: Bytes,
    /// The revision at which the key was created (last created, if it was
    /// deleted and created again).
    pub create_revision: Revision,
    /// The revision of the write that produced this version (of the delete,
    /// in the `kv` of a delete event).
    pub mod_revision: Revision,
}

/// Options for [`Store::range`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// At most this many items; 0 means no limit.
    pub limit: usize,
    /// Start strictly after this key: pass the last key of the previous page.
    pub start_after: Option<String>,
    /// Read at this past revision; `None` reads at the current revision. Pass
    /// the first page's [`RangeResult::revision`] to page through one
    /// consistent snapshot.
    pub revision: Option<Revision>,
}

/// The answer of [`Store::range`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResult {
    /// The items, sorted by key.
    pub items: Vec<KeyValue>,
    /// Whether more items follow the last one returned.
    pub more: bool,
    /// The revision the range was read at.
    pub revision: Revision,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted (or expired).
    Delete,
}

/// One change delivered by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The new version; for a delete, the key with an empty value and the
    /// deletion's revision as `mod_revision`.
    pub kv: KeyValue,
    /// The version before this change, if the key existed.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision of the write that produced this event.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// The answer of [`Store::delete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The revision of the delete.
    pub revision: Revision,
    /// The key's last version before the delete.
    pub prev_kv: KeyValue,
}

/// A stream of watch events. It ends with an error (and nothing after it)
/// when the watch cannot go on: [`Error::WatcherLagged`], [`Error::Compacted`]
/// or a backend error.
pub type WatchStream = BoxStream<'static, Result<Event>>;

/// The store interface shared by the embedded and etcd backends.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The backend's name (`sqlite`, `etcd`), as health reports show it.
    fn backend_name(&self) -> &'static str;

    /// The latest revision written.
    async fn current_revision(&self) -> Result<Revision>;

    /// The revision of the last compaction: reads below it, and watches from
    /// it or below, fail with [`Error::Compacted`]. 0 if the store was never
    /// compacted.
    async fn compact_revision(&self) -> Result<Revision>;

    /// Reads one key at the current revision or at a past one.
    async fn get(&self, key: &str, revision: Option<Revision>) -> Result<Option<KeyValue>>;

    /// Reads the keys that start with `prefix`, sorted, paginated.
    async fn range(&self, prefix: &str, options: RangeOptions) -> Result<RangeResult>;

    /// Creates `key`; fails with [`Error::AlreadyExists`] if it exists.
    /// Returns the new revision (the item's create and mod revision).
    async fn create(&self, key: &str, value: Bytes) -> Result<Revision>;

    /// Creates `key` so that it is deleted (with a delete event) once `ttl`
    /// has passed. Later updates keep the expiry. Meant for Events.
    async fn create_with_ttl(&self, key: &str, value: Bytes, ttl: Duration) -> Result<Revision>;

    /// Replaces the value of `key` if its `mod_revision` is
    /// `expected_mod_revision`: [`Error::Conflict`] if not,
    /// [`Error::NotFound`] if the key is missing. Returns the new revision.
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Revision,
    ) -> Result<Revision>;

    /// Deletes `key`, guarded by its `mod_revision` when one is given.
    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<Deleted>;

    /// Watches the keys starting with `prefix` from `start_revision`
    /// (inclusive; 0 means "changes after now"). Events come in revision
    /// order, each once; history is replayed from the store before live
    /// events follow. `start_revision` must be above the compaction
    /// revision, or the watch fails with [`Error::Compacted`]: to follow a
    /// list read at revision `r`, watch from `r + 1`.
    async fn watch(&self, prefix: &str, start_revision: Revision) -> Result<WatchStream>;

    /// Discards the history below `revision`. The latest version of each key
    /// is kept.
    async fn compact(&self, revision: Revision) -> Result<()>;
}

/// Which backend to run, as chosen by `kestrel server --datastore`.
#[derive(Debug, Clone)]
pub enum Datastore {
    /// The embedded SQLite store (the default).
    Sqlite(sqlite::SqliteConfig),
    /// An etcd cluster.
    Etcd(etcd::EtcdConfig),
}

impl Datastore {
    /// Builds the choice from the server's flags: `kind` is `sqlite` or
    /// `etcd`; `sqlite_path` is the database file; `etcd_endpoints` is a
    /// comma-separated list of client URLs.
    pub fn from_flags(
        kind: &str,
        sqlite_path: impl Into<std::path::PathBuf>,
        etcd_endpoints: &str,
    ) -> Result<Self> {
        match kind {
            "sqlite" => Ok(Datastore::Sqlite(sqlite::SqliteConfig::new(sqlite_path))),
            "etcd" => {
                let endpoints: Vec<&str> = etcd_endpoints
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .collect();
                if endpoints.is_empty() {
                    return Err(Error::backend(
                        "choosing the datastore",
                        "--datastore etcd needs --etcd-endpoints URL[,URL...]",
                    ));
                }
                Ok(Datastore::Etcd(etcd::EtcdConfig::new(endpoints)))
            }
            other => Err(Error::backend(
                "choosing the datastore",
                format!("unknown datastore {other:?}: expected sqlite or etcd"),
            )),
        }
    }

    /// Opens the chosen backend. Must be called inside a tokio runtime.
    pub async fn open(self) -> Result<std::sync::Arc<dyn Store>> {
        Ok(match self {
            Datastore::Sqlite(config) => {
                std::sync::Arc::new(sqlite::SqliteStore::open(config).await?)
            }
            Datastore::Etcd(config) => std::sync::Arc::new(etcd::EtcdStore::connect(config).await?),
        })
    }
}

/// Checks a key and value against the limits shared by all backends.
pub fn validate(key: &str, value: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            key: key.to_owned(),
            reason: "empty",
        });
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::TooLarge {
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// The first key after every key that starts with `prefix`, or `None` when no
/// such key exists (empty prefix, or all bytes 0xff). Strings compare
/// bytewise in UTF-8, so this is the etcd "range end" of a prefix.
pub fn prefix_end(prefix: &str) -> Option<Vec<u8>> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(""), None);
    }

    #[test]
    fn datastore_flags() {
        assert!(matches!(
            Datastore::from_flags("sqlite", "/tmp/x.db", ""),
            Ok(Datastore::Sqlite(_))
        ));
        match Datastore::from_flags("etcd", "", "http://127.0.0.1:2379, http://127.0.0.1:22379") {
            Ok(Datastore::Etcd(c)) => assert_eq!(c.endpoints.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(Datastore::from_flags("etcd", "", " ").is_err());
        assert!(Datastore::from_flags("postgres", "", "").is_err());
    }

    #[test]
    fn validate_rejects_empty_keys_and_big_values() {
        assert!(matches!(validate("", b""), Err(Error::InvalidKey { .. })));
        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        assert!(matches!(validate("k", &big), Err(Error::TooLarge { .. })));
        assert!(validate("k", &big[..MAX_VALUE_BYTES]).is_ok());
    }
}
