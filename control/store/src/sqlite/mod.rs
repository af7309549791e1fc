//! The embedded backend: SQLite in WAL mode, an append-only revision log,
//! one writer thread with group commit, and in-process watch fan-out.

mod schema;
mod watch;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};

use self::schema::sql_err;
use self::writer::{Done, Op, Request, Shared};
use crate::compactor::CompactionPolicy;
use crate::{
    Deleted, Error, KeyValue, RangeOptions, RangeResult, Result, Revision, Store, WatchStream,
    validate,
};

/// Settings of the embedded backend.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file; its WAL sits beside it as `<path>-wal`.
    pub path: PathBuf,
    /// The most writes committed in one transaction (group commit).
    pub max_batch: usize,
    /// How many committed transactions a watcher may fall behind before it
    /// is ended with [`Error::WatcherLagged`].
    pub watch_buffer: usize,
    /// How often keys with a TTL are checked for expiry.
    pub expiry_interval: Duration,
    /// Periodic compaction (then vacuum and WAL truncation) while the store
    /// is open; `None` leaves compaction to the caller.
    pub compaction: Option<CompactionPolicy>,
}

impl SqliteConfig {
    /// Defaults for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            max_batch: 1024,
            // Slots are whole transactions; a slot's events are freed once
            // every watcher has seen them, so only a lagging watcher makes
            // the ring hold memory, and only up to this many transactions.
            watch_buffer: 1024,
            expiry_interval: Duration::from_secs(1),
            compaction: Some(CompactionPolicy::default()),
        }
    }
}

pub(crate) struct Inner {
    shared: Arc<Shared>,
    writes: mpsc::Sender<Request>,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("path", &self.path)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// The embedded SQLite store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// Connections wait this long for a lock instead of failing at once; only a
/// checkpoint or a reader's snapshot can hold one, briefly.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn open_connection(path: &Path, write: bool) -> Result<Connection> {
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(sql_err("opening the database"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sql_err("setting the busy timeout"))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (or creates) the database and starts the writer thread and the
    /// TTL sweeper. Must be called inside a tokio runtime.
    pub async fn open(config: SqliteConfig) -> Result<Self> {
        let cfg = config.clone();
        let (conn, revs) = tokio::task::spawn_blocking(move || -> Result<_> {
            if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::backend("creating the database directory", e))?;
            }
            let conn = open_connection(&cfg.path, true)?;
            // auto_vacuum only takes effect before the first table exists;
            // it lets compaction hand freed pages back to the file system.
            // synchronous=FULL fsyncs the WAL at every commit: an
            // acknowledged write survives power loss, not only kill -9.
            // journal_size_limit cuts the WAL file back after checkpoints.
            conn.execute_batch(
                "PRAGMA auto_vacuum = INCREMENTAL;
                 PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA journal_size_limit = 67108864;
                 PRAGMA foreign_keys = OFF;",
            )
            .map_err(sql_err("configuring the database"))?;
            conn.execute_batch(schema::SCHEMA)
                .map_err(sql_err("creating the schema"))?;
            let revs = schema::revisions(&conn)?;
            Ok((conn, revs))
        })
        .await
        .map_err(|e| Error::backend("opening the database", e))??;

        let (events, _) = broadcast::channel(config.watch_buffer.max(1));
        let shared = Arc::new(Shared {
            revision: revs.current.into(),
            compact_revision: revs.compact.into(),
            events,
        });
        let (writes, rx) = mpsc::channel(config.max_batch.max(1) * 4);
        let thread_shared = shared.clone();
        let max_batch = config.max_batch.max(1);
        std::thread::Builder::new()
            .name("kestrel-store-writer".into())
            .spawn(move || writer::run(conn, rx, thread_shared, max_batch))
            .map_err(|e| Error::backend("starting the writer thread", e))?;
        info!(path = %config.path.display(), revision = revs.current, compact_revision = revs.compact, "opened sqlite store");

        let inner = Arc::new(Inner {
            shared,
            writes,
            readers: Mutex::new(Vec::new()),
            path: config.path.clone(),
        });
        tokio::spawn(sweep_expired(
            Arc::downgrade(&inner),
            config.expiry_interval,
        ));
        if let Some(policy) = config.compaction {
            tokio::spawn(compact_periodically(Arc::downgrade(&inner), policy));
        }
        Ok(SqliteStore { inner })
    }
}

/// Keeps `policy.retain_revisions` of history, until the store is dropped.
/// Holds the store weakly so that it does not keep it open.
async fn compact_periodically(inner: Weak<Inner>, policy: CompactionPolicy) {
    let mut tick = tokio::time::interval(policy.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; skip it so that opening a store is not
    // followed by a compaction right away.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let current = inner.shared.revision.load(Ordering::SeqCst);
        let target = current - policy.retain_revisions.max(0);
        // Compaction runs in the writer's transaction; in steps, writes
        // queued behind it wait for one step, not for all of a long backlog.
        loop {
            let done = inner.shared.compact_revision.load(Ordering::SeqCst);
            if target <= done || target <= 0 {
                break;
            }
            let step = target.min(done + COMPACTION_STEP);
            if let Err(e) = inner.write(Op::Compact { revision: step }).await {
                warn!(error = %e, "periodic compaction failed");
                break;
            }
        }
    }
}

/// Revisions compacted per writer transaction by the periodic compaction.
const COMPACTION_STEP: Revision = 10_000;

/// Asks the writer to delete expired keys, until the store is dropped.
async fn sweep_expired(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.write(Op::Expire).await {
            warn!(error = %e, "expiring keys failed");
        }
    }
}

impl Inner {
    async fn write(&self, op: Op) -> Result<Done> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(Request { op, reply })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Runs `f` on a pooled read-only connection on the blocking pool.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner
                .readers
                .lock()
                .map_err(|_| Error::backend("taking a reader", "reader pool poisoned"))?
                .pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&inner.path, false)?,
            };
            let result = f(&conn);
            if let Ok(mut pool) = inner.readers.lock()
                && pool.len() < 16
            {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| Error::backend("running a read", e))?
    }

    /// Runs `f` inside one read transaction, so that everything it reads,
    /// revisions included, comes from the same snapshot.
    pub(crate) async fn snapshot<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, schema::Revisions) -> Result<T> + Send + 'static,
    {
        self.read(move |conn| {
            conn.execute_batch("BEGIN DEFERRED")
                .map_err(sql_err("starting a read transaction"))?;
            let result = schema::revisions(conn).and_then(|revs| f(conn, revs));
            // A read-only transaction has nothing to lose; ending it releases
            // the snapshot so checkpoints can proceed.
            conn.execute_batch("COMMIT")
                .map_err(sql_err("ending a read transaction"))?;
            result
        })
        .await
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.inner.shared.revision.load(Ordering::SeqCst))
    }

    async fn compact_revision(&self) -> Result<Revision> {
        Ok(self.inner.shared.compact_revision.load(Ordering::SeqCst))
    }

    async fn get(&self, key: &str, revision: Option<Revision>) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.inner
            .snapshot(move |conn, revs| match revision {
                None | Some(0) => Ok(schema::head(conn, &key)?.map(|(kv, _)| kv)),
                Some(_) => {
                    let rev = schema::read_revision(revs, revision)?;
                    schema::get_at(conn, &key, rev)
                }
            })
            .await
    }

    async fn range(&self, prefix: &str, options: RangeOptions) -> Result<RangeResult> {
        let prefix = prefix.to_owned();
        self.inner
            .snapshot(move |conn, revs| {
                let rev = schema::read_revision(revs, options.revision)?;
                let fetch = if options.limit == 0 {
                    0
                } else {
                    options.limit + 1
                };
                let mut items = schema::range(
                    conn,
                    &prefix,
                    options.start_after.as_deref(),
                    fetch,
                    rev,
                    rev == revs.current,
                )?;
                let more = options.limit != 0 && items.len() > options.limit;
                items.truncate(if more { options.limit } else { items.len() });
                Ok(RangeResult {
                    items,
                    more,
                    revision: rev,
                })
            })
            .await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Revision> {
        validate(key, &value)?;
        let op = Op::Create {
            key: key.to_owned(),
            value,
            expires_at: None,
        };
        expect_revision(self.inner.write(op).await?)
    }

    async fn create_with_ttl(&self, key: &str, value: Bytes, ttl: Duration) -> Result<Revision> {
        validate(key, &value)?;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let op = Op::Create {
            key: key.to_owned(),
            value,
            expires_at: Some(writer::now_ms().saturating_add(ttl_ms)),
        };
        expect_revision(self.inner.write(op).await?)
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Revision,
    ) -> Result<Revision> {
        validate(key, &value)?;
        let op = Op::Update {
            key: key.to_owned(),
            value,
            expected: expected_mod_revision,
        };
        expect_revision(self.inner.write(op).await?)
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<Deleted> {
        validate(key, b"")?;
        let op = Op::Delete {
            key: key.to_owned(),
            expected: expected_mod_revision,
        };
        match self.inner.write(op).await? {
            Done::Deleted(d) => Ok(d),
            other => Err(unexpected(other)),
        }
    }

    async fn watch(&self, prefix: &str, start_revision: Revision) -> Result<WatchStream> {
        watch::start(self.inner.clone(), prefix.to_owned(), start_revision).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.write(Op::Compact { revision }).await.map(|_| ())
    }
}

fn expect_revision(done: Done) -> Result<Revision> {
    match done {
        Done::Revision(r) => Ok(r),
        other => Err(unexpected(other)),
    }
}

fn unexpected(done: Done) -> Error {
    Error::backend(
        "the writer answered the wrong kind of result",
        format!("{done:?}"),
    )
}
