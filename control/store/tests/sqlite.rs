//! The conformance suite and the embedded backend's own tests: crash
//! consistency under SIGKILL, slow watchers, bounded files under churn.

mod conformance;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kestrel_store::compactor::CompactionPolicy;
use kestrel_store::sqlite::{SqliteConfig, SqliteStore};
use kestrel_store::{Error, Store};

use conformance::DEADLINE;

async fn open_at(path: &Path) -> Arc<dyn Store> {
    Arc::new(
        SqliteStore::open(SqliteConfig::new(path))
            .await
            .expect("open store"),
    )
}

/// A store in a fresh directory, kept alive as long as the store is used.
async fn fresh() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_at(&dir.path().join("state.db")).await;
    (dir, store)
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (_dir, store) = fresh().await;
            conformance::$name(store).await;
        }
    )*};
}

conformance::for_each_case!(conformance);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopen_keeps_revisions_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let (rev, compact) = {
        let store = open_at(&path).await;
        let r = store
            .create("/k", Bytes::from_static(b"1"))
            .await
            .expect("create");
        let r = store
            .update("/k", Bytes::from_static(b"2"), r)
            .await
            .expect("update");
        store.compact(r).await.expect("compact");
        (r, store.compact_revision().await.expect("compact rev"))
    };
    // The writer thread lets go of the file once its channel closes.
    let store = open_at(&path).await;
    assert_eq!(store.current_revision().await.expect("rev"), rev);
    assert_eq!(
        store.compact_revision().await.expect("compact rev"),
        compact
    );
    let next = store
        .create("/j", Bytes::from_static(b"x"))
        .await
        .expect("create");
    assert_eq!(next, rev + 1, "revisions continue after reopen");
}

/// A watcher that is never polled is ended with WatcherLagged while writers
/// carry on at full speed; resuming from its revision loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_watcher_is_dropped_not_waited_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = SqliteConfig::new(dir.path().join("state.db"));
    config.watch_buffer = 8;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(config).await.expect("open"));
    let first = store
        .create("/lag/0", Bytes::from_static(b"0"))
        .await
        .expect("create");
    let mut slow = store.watch("/lag/", first).await.expect("watch");
    const WRITES: i64 = 2000;
    let started = Instant::now();
    for i in 1..WRITES {
        store
            .create(&format!("/lag/{i}"), Bytes::from_static(b"x"))
            .await
            .expect("create");
    }
    assert!(started.elapsed() < DEADLINE, "writers were not stalled");

    let mut next = first;
    let resume = loop {
        match tokio::time::timeout(DEADLINE, slow.next())
            .await
            .expect("deadline")
        {
            Some(Ok(e)) => {
                assert_eq!(e.revision(), next, "no gap before the lag");
                next += 1;
            }
            Some(Err(Error::WatcherLagged { resume_from })) => break resume_from,
            other => panic!("expected WatcherLagged, got {other:?}"),
        }
    };
    assert_eq!(
        resume, next,
        "resume exactly after the last delivered event"
    );
    assert!(
        slow.next().await.is_none(),
        "the stream ends after the error"
    );
    let mut again = store.watch("/lag/", resume).await.expect("resume");
    let rest = conformance::next_events(
        &mut again,
        usize::try_from(first + WRITES - resume).expect("count"),
    )
    .await;
    for (i, e) in rest.iter().enumerate() {
        assert_eq!(e.revision(), resume + i64::try_from(i).expect("index"));
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Steady churn with periodic compaction: the database and its WAL stop
/// growing instead of growing with every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_stay_bounded_under_churn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.db");
    let wal = dir.path().join("state.db-wal");
    let mut config = SqliteConfig::new(&db);
    config.compaction = Some(CompactionPolicy {
        interval: Duration::from_millis(200),
        retain_revisions: 500,
    });
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(config).await.expect("open"));
    let value = Bytes::from(vec![7u8; 16 * 1024]);
    let mut revs = Vec::new();
    for i in 0..50 {
        revs.push(
            store
                .create(&format!("/churn/{i}"), value.clone())
                .await
                .expect("create"),
        );
    }
    let mut sizes = Vec::new();
    for round in 0..40 {
        for (i, rev) in revs.iter_mut().enumerate() {
            *rev = store
                .update(&format!("/churn/{i}"), value.clone(), *rev)
                .await
                .expect("update");
        }
        if round % 10 == 9 {
            // Let a compaction pass run at the end of each phase.
            let want = store.current_revision().await.expect("rev") - 600;
            let deadline = Instant::now() + DEADLINE;
            while store.compact_revision().await.expect("compact rev") < want {
                assert!(Instant::now() < deadline, "compaction did not run");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The writer publishes the compaction revision before it
            // reclaims space (vacuum, then a truncating checkpoint), so
            // wait for the WAL to be cut back before measuring.
            while file_size(&wal) > 1024 * 1024 {
                assert!(
                    Instant::now() < deadline,
                    "the WAL was not checkpointed after compaction: {} bytes",
                    file_size(&wal)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sizes.push(file_size(&db) + file_size(&wal));
        }
    }
    // 2,050 versions of 16 KiB were written (32 MiB). When a size is taken,
    // at most ~600 revisions plus the 50 live keys are retained, and a 16 KiB
    // value spans five 4 KiB pages: about 13 MiB that must stay. Allow twice
    // that for free pages not yet reused; growth with the writes would blow
    // through it (and through the plateau check below).
    let written = 2050 * 16 * 1024;
    let retained = 650 * 5 * 4096;
    let last = *sizes.last().expect("sizes");
    assert!(
        last < 2 * retained,
        "files hold {last} bytes after {written} bytes of churn: {sizes:?}"
    );
    assert!(
        last <= sizes[1] + sizes[1] / 2,
        "files keep growing: {sizes:?}"
    );
}

const CHILD_ENV: &str = "KESTREL_STORE_CRASH_CHILD_DB";

/// Not a test of its own: the child process of `acknowledged_writes_survive_sigkill`,
/// run by re-executing this test binary. It writes from 16 tasks at once and
/// prints each key after its write was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = open_at(Path::new(&path)).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    for task in 0..16u64 {
        let store = store.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let i = n * 16 + task;
                store
                    .create(&conformance::crash_key(i), conformance::crash_value(i))
                    .await
                    .expect("create");
                if tx.send(i).is_err() {
                    return;
                }
            }
        });
    }
    let mut out = std::io::stdout().lock();
    while let Some(i) = rx.recv().await {
        writeln!(out, "ACK {i}").expect("stdout");
        out.flush().expect("flush");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.db");
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen_by_reader = std::sync::Arc::clone(&seen);
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.strip_prefix("ACK ") {
                acked.push(i.parse::<u64>().expect("ack number"));
                seen_by_reader.store(acked.len(), std::sync::atomic::Ordering::Relaxed);
            }
        }
        acked
    });
    // Kill it mid-stream, once we have read a fair number of acknowledgements
    // and the WAL holds real work. Waiting on the WAL size alone raced with
    // reading the acknowledgements from the pipe on a loaded machine.
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "child made no progress");
        let acks = seen.load(std::sync::atomic::Ordering::Relaxed);
        if acks >= 200 && file_size(&dir.path().join("state.db-wal")) > 2 * 1024 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    let acked = reader.join().expect("reader");
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );

    let store = open_at(&db).await;
    let present = conformance::read_all(store.as_ref(), "/crash/").await;
    for i in &acked {
        let value = present.get(&conformance::crash_key(*i));
        assert!(value.is_some(), "acknowledged write {i} lost");
    }
    for (key, value) in &present {
        let i: u64 = key
            .trim_start_matches("/crash/")
            .parse()
            .expect("key number");
        assert!(
            *value == conformance::crash_value(i),
            "torn value under {key}"
        );
    }
    let rev = store.current_revision().await.expect("rev");
    assert_eq!(
        rev,
        i64::try_from(present.len()).expect("len"),
        "one revision per surviving write"
    );
}

/// A backlog of more revisions than one compaction step is worked off in
/// several steps, and the history below the target is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn periodic_compaction_works_off_a_backlog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = SqliteConfig::new(dir.path().join("state.db"));
    config.compaction = Some(CompactionPolicy {
        interval: Duration::from_millis(300),
        retain_revisions: 100,
    });
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(config).await.expect("open"));
    let mut tasks = Vec::new();
    for w in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..800 {
                store
                    .create(&format!("/backlog/{w}/{i}"), Bytes::from_static(b"v"))
                    .await
                    .expect("create");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let current = store.current_revision().await.expect("rev");
    assert!(current >= 25_600);
    let deadline = Instant::now() + DEADLINE;
    while store.compact_revision().await.expect("compact rev") < current - 100 {
        assert!(Instant::now() < deadline, "compaction did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(
        store.get("/backlog/0/0", Some(1)).await,
        Err(Error::Compacted { .. })
    ));
    assert_eq!(
        conformance::read_all(store.as_ref(), "/backlog/")
            .await
            .len(),
        25_600
    );
}
