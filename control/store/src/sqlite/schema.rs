//! The on-disk layout of the embedded backend and the SQL that reads it.
//!
//! `log` is append-only: every write adds one row whose `rev` (the rowid) is
//! the global revision, so the revision is strictly increasing by
//! construction and a revision is never reused. A delete adds a tombstone row.
//! `prev_rev` links a row to the version it replaced, which gives watch events
//! their previous value and tells compaction which rows are superseded.
//!
//! `head` maps each live key to its latest row. It is what makes the common
//! case (reads at the current revision) an index lookup instead of a
//! "latest row per key" aggregate over the whole history. Only the single
//! writer thread changes it, in the same transaction as `log`, so the two
//! cannot disagree.
//!
//! Keys are stored as BLOBs so that SQLite compares them bytewise (memcmp),
//! the same order as etcd, and a prefix's range end need not be valid UTF-8.

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{Error, Event, EventKind, KeyValue, Result, Revision, prefix_end};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    rev        INTEGER PRIMARY KEY,
    key        BLOB    NOT NULL,
    create_rev INTEGER NOT NULL,
    prev_rev   INTEGER NOT NULL,
    deleted    INTEGER NOT NULL,
    value      BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS log_key_rev ON log (key, rev);
CREATE TABLE IF NOT EXISTS head (
    key        BLOB    PRIMARY KEY,
    rev        INTEGER NOT NULL,
    expires_at INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS head_expiry ON head (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('compact_rev', 0);
";

pub(crate) fn sql_err(context: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |e| Error::backend(context, e)
}

fn key_string(raw: Vec<u8>) -> rusqlite::Result<String> {
    // Only the writer stores keys, and it only stores `&str`s, so this fails
    // only on a corrupted file.
    String::from_utf8(raw).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

/// Reads `rev, key, create_rev, deleted, value` starting at column `at`.
fn kv_at(row: &Row<'_>, at: usize) -> rusqlite::Result<(KeyValue, bool)> {
    let kv = KeyValue {
        mod_revision: row.get(at)?,
        key: key_string(row.get(at + 1)?)?,
        create_revision: row.get(at + 2)?,
        value: Bytes::from(row.get::<_, Vec<u8>>(at + 4)?),
    };
    Ok((kv, row.get::<_, i64>(at + 3)? != 0))
}

/// The store's revision and compaction revision as seen by one transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Revisions {
    pub current: Revision,
    pub compact: Revision,
}

pub(crate) fn revisions(conn: &Connection) -> Result<Revisions> {
    let compact: Revision = conn
        .query_row(
            "SELECT value FROM meta WHERE name = 'compact_rev'",
            [],
            |r| r.get(0),
        )
        .map_err(sql_err("reading the compaction revision"))?;
    let max: Option<Revision> = conn
        .query_row("SELECT max(rev) FROM log", [], |r| r.get(0))
        .map_err(sql_err("reading the current revision"))?;
    Ok(Revisions {
        current: max.unwrap_or(0).max(compact),
        compact,
    })
}

/// Resolves a requested read revision against the snapshot's revisions.
pub(crate) fn read_revision(revs: Revisions, requested: Option<Revision>) -> Result<Revision> {
    match requested {
        None | Some(0) => Ok(revs.current),
        Some(r) if r > revs.current => Err(Error::FutureRevision {
            requested: r,
            current: revs.current,
        }),
        Some(r) if r < revs.compact => Err(Error::Compacted {
            compact_revision: revs.compact,
        }),
        Some(r) => Ok(r),
    }
}

/// The live version of `key` at the current revision, with its expiry.
pub(crate) fn head(conn: &Connection, key: &str) -> Result<Option<(KeyValue, Option<i64>)>> {
    conn.prepare_cached(
        "SELECT l.rev, l.key, l.create_rev, l.deleted, l.value, h.expires_at
         FROM head h JOIN log l ON l.rev = h.rev WHERE h.key = ?1",
    )
    .and_then(|mut s| {
        s.query_row(params![key.as_bytes()], |r| Ok((kv_at(r, 0)?.0, r.get(5)?)))
            .optional()
    })
    .map_err(sql_err("reading a key"))
}

pub(crate) fn get_at(conn: &Connection, key: &str, rev: Revision) -> Result<Option<KeyValue>> {
    let found = conn
        .prepare_cached(
            "SELECT rev, key, create_rev, deleted, value FROM log
             WHERE key = ?1 AND rev <= ?2 ORDER BY rev DESC LIMIT 1",
        )
        .and_then(|mut s| {
            s.query_row(params![key.as_bytes(), rev], |r| kv_at(r, 0))
                .optional()
        })
        .map_err(sql_err("reading a key at a past revision"))?;
    Ok(found.and_then(|(kv, deleted)| (!deleted).then_some(kv)))
}

/// Up to `limit` (0: all) live items under `prefix` after `start_after`, at
/// `rev`, which is the current revision when `at_head`.
pub(crate) fn range(
    conn: &Connection,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
    rev: Revision,
    at_head: bool,
) -> Result<Vec<KeyValue>> {
    let end = prefix_end(prefix);
    let after: &[u8] = start_after.map(str::as_bytes).unwrap_or(b"");
    // SQLite treats a negative LIMIT as "no limit".
    let limit = if limit == 0 {
        -1
    } else {
        i64::try_from(limit).unwrap_or(i64::MAX)
    };
    let sql = if at_head {
        "SELECT l.rev, l.key, l.create_rev, l.deleted, l.value
         FROM head h JOIN log l ON l.rev = h.rev
         WHERE h.key >= ?1 AND (?2 IS NULL OR h.key < ?2) AND h.key > ?3
         ORDER BY h.key LIMIT ?4"
    } else {
        "SELECT l.rev, l.key, l.create_rev, l.deleted, l.value FROM log l
         WHERE l.key >= ?1 AND (?2 IS NULL OR l.key < ?2) AND l.key > ?3
           AND l.deleted = 0
           AND l.rev = (SELECT max(m.rev) FROM log m WHERE m.key = l.key AND m.rev <= ?5)
         ORDER BY l.key LIMIT ?4"
    };
    let mut stmt = conn
        .prepare_cached(sql)
        .map_err(sql_err("preparing a range"))?;
    let mut rows = if at_head {
        stmt.query(params![prefix.as_bytes(), end, after, limit])
    } else {
        stmt.query(params![prefix.as_bytes(), end, after, limit, rev])
    }
    .map_err(sql_err("reading a range"))?;
    let mut items = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err("reading a range"))? {
        items.push(kv_at(row, 0).map_err(sql_err("decoding a range row"))?.0);
    }
    Ok(items)
}

/// Up to `limit` events under `prefix` with revisions in `from..=to`.
pub(crate) fn events(
    conn: &Connection,
    prefix: &str,
    from: Revision,
    to: Revision,
    limit: usize,
) -> Result<Vec<Event>> {
    let end = prefix_end(prefix);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT l.rev, l.key, l.create_rev, l.deleted, l.value,
                    p.rev, p.key, p.create_rev, p.deleted, p.value
             FROM log l LEFT JOIN log p ON p.rev = l.prev_rev AND l.prev_rev > 0
             WHERE l.rev >= ?1 AND l.rev <= ?2
               AND l.key >= ?3 AND (?4 IS NULL OR l.key < ?4)
             ORDER BY l.rev LIMIT ?5",
        )
        .map_err(sql_err("preparing a watch replay"))?;
    let mut rows = stmt
        .query(params![from, to, prefix.as_bytes(), end, limit])
        .map_err(sql_err("replaying history"))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err("replaying history"))? {
        let decode = || -> rusqlite::Result<Event> {
            let (mut kv, deleted) = kv_at(row, 0)?;
            let prev_kv = match row.get::<_, Option<Revision>>(5)? {
                Some(_) => Some(kv_at(row, 5)?.0),
                None => None,
            };
            let kind = if deleted {
                // etcd reports a delete as the bare key at the delete's
                // revision; keep the backends indistinguishable.
                kv.create_revision = 0;
                EventKind::Delete
            } else {
                EventKind::Put
            };
            Ok(Event { kind, kv, prev_kv })
        };
        out.push(decode().map_err(sql_err("decoding a watch event"))?);
    }
    Ok(out)
}
