//! The conformance suite against real etcd processes, plus the etcd
//! backend's own tests: SIGKILL of the server, and losing one member of
//! three while writes and a watch continue.

mod conformance;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kestrel_store::etcd::{EtcdConfig, EtcdStore};
use kestrel_store::{Error, EventKind, Store};

use conformance::DEADLINE;
use kestrel_store::testing::{self as etcd_cluster, EtcdCluster};

async fn connect(cluster: &EtcdCluster) -> Arc<dyn Store> {
    Arc::new(
        EtcdStore::connect(EtcdConfig::new(cluster.endpoints()))
            .await
            .expect("connect to etcd"),
    )
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            if !etcd_cluster::available() {
                return;
            }
            let cluster = EtcdCluster::start(1).await;
            let store = connect(&cluster).await;
            conformance::$name(store).await;
        }
    )*};
}

conformance::for_each_case!(conformance);

/// Writers run until stopped; returns the numbers whose create was
/// acknowledged.
fn spawn_writers(
    store: &Arc<dyn Store>,
    tasks: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(Vec<u64>, usize)>> {
    (0..tasks)
        .map(|task| {
            let store = store.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut acked, mut failed) = (Vec::new(), 0usize);
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let i = n * tasks + task;
                    n += 1;
                    match store
                        .create(&conformance::crash_key(i), conformance::crash_value(i))
                        .await
                    {
                        Ok(_) => acked.push(i),
                        Err(Error::Backend { .. }) => {
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                (acked, failed)
            })
        })
        .collect()
}

async fn wait_for_acks(store: &Arc<dyn Store>, at_least: i64) {
    let base = store.current_revision().await.expect("revision");
    let deadline = Instant::now() + DEADLINE;
    while store.current_revision().await.expect("revision") < base + at_least {
        assert!(Instant::now() < deadline, "writers made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// etcd is SIGKILLed while 16 tasks write; after a restart every
/// acknowledged write is there and nothing is torn.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_of_etcd() {
    if !etcd_cluster::available() {
        return;
    }
    let mut cluster = EtcdCluster::start(1).await;
    let store = connect(&cluster).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&store, 16, &stop);
    wait_for_acks(&store, 200).await;
    cluster.kill(0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer").0);
    }
    assert!(acked.len() >= 200);
    cluster.restart(0).await;

    let present = conformance::read_all(store.as_ref(), "/crash/").await;
    for i in &acked {
        assert!(
            present.contains_key(&conformance::crash_key(*i)),
            "acknowledged write {i} lost"
        );
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
}

/// A 3-member cluster loses one member while writes and a watch go on:
/// writes keep being acknowledged, the watch carries on without gap or
/// duplicate, and every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survives_losing_one_member_of_three() {
    if !etcd_cluster::available() {
        return;
    }
    let mut cluster = EtcdCluster::start(3).await;
    let store = connect(&cluster).await;
    let start = store.current_revision().await.expect("revision") + 1;
    let mut watch = store.watch("/crash/", start).await.expect("watch");
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&store, 8, &stop);
    wait_for_acks(&store, 100).await;

    cluster.kill(0);
    // A request in flight on the dead member's connection fails, as the
    // writers' may; the client then moves to a live one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let killed_at = loop {
        match store.current_revision().await {
            Ok(r) => break r,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("revision after kill, retrying: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("revision after kill: {e:?}"),
        }
    };
    // Writes go on through the two remaining members.
    wait_for_acks(&store, 200).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    let mut failed = 0;
    for w in writers {
        let (a, f) = w.await.expect("writer");
        acked.extend(a);
        failed += f;
    }
    let end = store.current_revision().await.expect("revision");
    assert!(end > killed_at + 150, "writes continued after the kill");
    eprintln!(
        "{} writes acknowledged, {failed} failed during the failover",
        acked.len()
    );

    // The watch delivers every revision from start to end exactly once.
    let events =
        conformance::next_events(&mut watch, usize::try_from(end - start + 1).expect("count"))
            .await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.revision(),
            start + i64::try_from(i).expect("index"),
            "no gap, no duplicate"
        );
        assert_eq!(e.kind, EventKind::Put);
    }
    let present = conformance::read_all(store.as_ref(), "/crash/").await;
    for i in &acked {
        assert!(
            present.contains_key(&conformance::crash_key(*i)),
            "acknowledged write {i} lost"
        );
    }
    assert_eq!(present.len(), events.len());
}

/// With no etcd listening, requests fail with a backend error once the
/// retry window closes, instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cluster_fails_cleanly() {
    let store = EtcdStore::connect(EtcdConfig {
        endpoints: vec!["http://127.0.0.1:9".into()],
        request_timeout: Duration::from_secs(1),
        retry_for: Duration::from_millis(500),
        compaction: None,
    })
    .await;
    // Connecting may fail at once or lazily at the first request; either is
    // a clean failure.
    if let Ok(store) = store {
        let started = Instant::now();
        let err = store.get("/k", None).await.expect_err("no etcd there");
        assert!(matches!(err, Error::Backend { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
