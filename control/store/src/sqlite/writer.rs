//! The single writer thread.
//!
//! Every write goes through one thread that owns the only write connection.
//! That serialises compare-and-swap without retries or constraint-violation
//! tricks: the check and the write happen in the same transaction, with no
//! other writer in between. It also gives group commit for free: the thread
//! takes every request that is queued, applies them all in one transaction,
//! commits once (one fsync with `synchronous=FULL`), and only then answers
//! each request and publishes its events. An acknowledged write is therefore
//! durable, and a watcher never sees a write that could still roll back.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, warn};

use super::schema::{self, sql_err};
use crate::{Deleted, Error, Event, EventKind, KeyValue, Result, Revision};

/// One change to apply.
#[derive(Debug)]
pub(crate) enum Op {
    Create {
        key: String,
        value: Bytes,
        expires_at: Option<i64>,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    /// Deletes the keys whose TTL ran out.
    Expire,
    Compact {
        revision: Revision,
    },
}

/// What an applied op answers.
#[derive(Debug)]
pub(crate) enum Done {
    Revision(Revision),
    Deleted(Deleted),
    Nothing,
}

pub(crate) struct Request {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Done>>,
}

/// The events of one committed transaction, in revision order.
#[derive(Debug)]
pub(crate) struct Batch {
    pub events: Vec<Event>,
}

pub(crate) struct Shared {
    /// The last committed revision, raised before any answer goes out so that
    /// a caller's later read sees at least its own write.
    pub revision: AtomicI64,
    pub compact_revision: AtomicI64,
    pub events: broadcast::Sender<Arc<Batch>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("revision", &self.revision)
            .field("compact_revision", &self.compact_revision)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    max_batch: usize,
) {
    let mut revision = shared.revision.load(Ordering::SeqCst);
    while let Some(first) = next_request(&mut rx) {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let start = revision;
        let mut events = Vec::new();
        let mut compacted = None;
        let outcome = apply_batch(
            &mut conn,
            &batch,
            &mut revision,
            &mut events,
            &mut compacted,
        );
        match outcome {
            Ok(results) => {
                shared.revision.store(revision, Ordering::SeqCst);
                if let Some(c) = compacted {
                    shared.compact_revision.store(c, Ordering::SeqCst);
                }
                if !events.is_empty() {
                    // No receivers is fine: nobody is watching.
                    let _ = shared.events.send(Arc::new(Batch { events }));
                }
                for (req, result) in batch.into_iter().zip(results) {
                    // The caller may have given up (its future was dropped);
                    // the write stands regardless.
                    let _ = req.reply.send(result);
                }
                debug!(from = start, to = revision, "committed batch");
                if compacted.is_some() {
                    reclaim_space(&conn);
                }
            }
            Err(e) => {
                revision = start;
                warn!(error = %e, "write transaction failed; rolled back");
                let msg = e.to_string();
                for req in batch {
                    let _ = req
                        .reply
                        .send(Err(Error::backend("committing a write", msg.clone())));
                }
            }
        }
    }
    debug!("store writer stopped");
}

/// How long the writer polls for the next request before it parks. A writer
/// that has just answered usually gets its next request within
/// microseconds; parking and being woken costs a scheduler wake-up, which on
/// a busy machine is a whole tick (4 ms at HZ=250). It spins rather than
/// yields: on a busy machine a yield hands the CPU to another process for a
/// whole time slice.
const SPIN: Duration = Duration::from_micros(50);

fn next_request(rx: &mut mpsc::Receiver<Request>) -> Option<Request> {
    let until = Instant::now() + SPIN;
    loop {
        match rx.try_recv() {
            Ok(r) => return Some(r),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if Instant::now() < until => std::hint::spin_loop(),
            Err(TryRecvError::Empty) => return rx.blocking_recv(),
        }
    }
}

/// Applies the batch in one transaction. The outer error aborts the whole
/// transaction (SQLite failed); the inner results are per request (a failed
/// compare-and-swap leaves nothing behind and takes no revision).
fn apply_batch(
    conn: &mut Connection,
    batch: &[Request],
    revision: &mut Revision,
    events: &mut Vec<Event>,
    compacted: &mut Option<Revision>,
) -> Result<Vec<Result<Done>>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err("starting a write transaction"))?;
    let mut results = Vec::with_capacity(batch.len());
    for req in batch {
        let result = match &req.op {
            Op::Create {
                key,
                value,
                expires_at,
            } => create(&tx, revision, events, key, value, *expires_at),
            Op::Update {
                key,
                value,
                expected,
            } => update(&tx, revision, events, key, value, *expected),
            Op::Delete { key, expected } => {
                delete(&tx, revision, events, key, *expected).map(Done::Deleted)
            }
            Op::Expire => expire(&tx, revision, events).map(|()| Done::Nothing),
            Op::Compact { revision: target } => compact(&tx, *revision, *target).map(|c| {
                *compacted = Some(c);
                Done::Nothing
            }),
        };
        match result {
            Err(Error::Backend { context, source }) => {
                return Err(Error::Backend { context, source });
            }
            other => results.push(other),
        }
    }
    tx.commit()
        .map_err(sql_err("committing a write transaction"))?;
    Ok(results)
}

fn insert(
    tx: &Transaction<'_>,
    rev: Revision,
    key: &str,
    create_rev: Revision,
    prev_rev: Revision,
    deleted: bool,
    value: &[u8],
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO log (rev, key, create_rev, prev_rev, deleted, value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            rev,
            key.as_bytes(),
            create_rev,
            prev_rev,
            deleted,
            value
        ])
    })
    .map_err(sql_err("appending to the log"))?;
    Ok(())
}

fn set_head(tx: &Transaction<'_>, key: &str, rev: Revision, expires_at: Option<i64>) -> Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO head (key, rev, expires_at) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![key.as_bytes(), rev, expires_at]))
        .map_err(sql_err("updating the head index"))?;
    Ok(())
}

fn create(
    tx: &Transaction<'_>,
    revision: &mut Revision,
    events: &mut Vec<Event>,
    key: &str,
    value: &Bytes,
    expires_at: Option<i64>,
) -> Result<Done> {
    if schema::head(tx, key)?.is_some() {
        return Err(Error::AlreadyExists {
            key: key.to_owned(),
        });
    }
    let rev = *revision + 1;
    insert(tx, rev, key, rev, 0, false, value)?;
    set_head(tx, key, rev, expires_at)?;
    *revision = rev;
    events.push(Event {
        kind: EventKind::Put,
        kv: KeyValue {
            key: key.to_owned(),
            value: value.clone(),
            create_revision: rev,
            mod_revision: rev,
        },
        prev_kv: None,
    });
    Ok(Done::Revision(rev))
}

fn update(
    tx: &Transaction<'_>,
    revision: &mut Revision,
    events: &mut Vec<Event>,
    key: &str,
    value: &Bytes,
    expected: Revision,
) -> Result<Done> {
    let (current, expires_at) = checked_head(tx, key, Some(expected))?;
    let rev = *revision + 1;
    insert(
        tx,
        rev,
        key,
        current.create_revision,
        current.mod_revision,
        false,
        value,
    )?;
    set_head(tx, key, rev, expires_at)?;
    *revision = rev;
    events.push(Event {
        kind: EventKind::Put,
        kv: KeyValue {
            key: key.to_owned(),
            value: value.clone(),
            create_revision: current.create_revision,
            mod_revision: rev,
        },
        prev_kv: Some(current),
    });
    Ok(Done::Revision(rev))
}

/// The key's current head, checked against the caller's expected
/// mod_revision (compare-and-swap); `None` skips the check.
fn checked_head(
    tx: &Transaction<'_>,
    key: &str,
    expected: Option<Revision>,
) -> Result<(KeyValue, Option<i64>)> {
    let Some((current, expires_at)) = schema::head(tx, key)? else {
        return Err(Error::NotFound {
            key: key.to_owned(),
        });
    };
    if let Some(expected) = expected
        && current.mod_revision != expected
    {
        return Err(Error::Conflict {
            key: key.to_owned(),
            expected,
            current: current.mod_revision,
        });
    }
    Ok((current, expires_at))
}

fn delete(
    tx: &Transaction<'_>,
    revision: &mut Revision,
    events: &mut Vec<Event>,
    key: &str,
    expected: Option<Revision>,
) -> Result<Deleted> {
    let (current, _) = checked_head(tx, key, expected)?;
    let rev = *revision + 1;
    insert(
        tx,
        rev,
        key,
        current.create_revision,
        current.mod_revision,
        true,
        b"",
    )?;
    tx.prepare_cached("DELETE FROM head WHERE key = ?1")
        .and_then(|mut s| s.execute(params![key.as_bytes()]))
        .map_err(sql_err("updating the head index"))?;
    *revision = rev;
    events.push(Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.to_owned(),
            value: Bytes::new(),
            create_revision: 0,
            mod_revision: rev,
        },
        prev_kv: Some(current.clone()),
    });
    Ok(Deleted {
        revision: rev,
        prev_kv: current,
    })
}

fn expire(tx: &Transaction<'_>, revision: &mut Revision, events: &mut Vec<Event>) -> Result<()> {
    let due: Vec<Vec<u8>> = tx
        .prepare_cached(
            "SELECT key FROM head WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT 1000",
        )
        .and_then(|mut s| {
            s.query_map(params![now_ms()], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(sql_err("finding expired keys"))?;
    for raw in due {
        let Ok(key) = String::from_utf8(raw) else {
            continue;
        };
        delete(tx, revision, events, &key, None)?;
    }
    Ok(())
}

/// Drops the history below `target`: every row that was superseded before
/// `target`, and every tombstone before it. Rows at or after `target`, and
/// the rows they replaced, stay, so reads at `target` and watches from just
/// after it (with previous values) still work.
fn compact(tx: &Transaction<'_>, current: Revision, target: Revision) -> Result<Revision> {
    let old: Revision = tx
        .query_row(
            "SELECT value FROM meta WHERE name = 'compact_rev'",
            [],
            |r| r.get(0),
        )
        .map_err(sql_err("reading the compaction revision"))?;
    if target <= old {
        return Err(Error::Compacted {
            compact_revision: old,
        });
    }
    if target > current {
        return Err(Error::FutureRevision {
            requested: target,
            current,
        });
    }
    let superseded = tx
        .execute(
            "DELETE FROM log WHERE rev IN (
                 SELECT prev_rev FROM log WHERE rev >= ?1 AND rev < ?2 AND prev_rev > 0)",
            params![old, target],
        )
        .map_err(sql_err("compacting superseded versions"))?;
    let tombstones = tx
        .execute(
            "DELETE FROM log WHERE rev >= ?1 AND rev < ?2 AND deleted = 1",
            params![old, target],
        )
        .map_err(sql_err("compacting tombstones"))?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE name = 'compact_rev'",
        params![target],
    )
    .map_err(sql_err("recording the compaction revision"))?;
    debug!(target, superseded, tombstones, "compacted");
    Ok(target)
}

/// Gives the space of compacted rows back: the WAL is checkpointed and cut
/// to zero, and free pages are returned to the file system. Without this the
/// database and its WAL only ever grow under churn (k3s's most reported
/// problem). Failures are logged, not fatal: the next compaction retries.
fn reclaim_space(conn: &Connection) {
    if let Err(e) = conn.execute_batch("PRAGMA incremental_vacuum;") {
        warn!(error = %e, "incremental vacuum failed");
    }
    match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    }) {
        Ok((busy, log, done)) => debug!(busy, log, done, "checkpointed the WAL"),
        Err(e) => warn!(error = %e, "WAL checkpoint failed"),
    }
}
