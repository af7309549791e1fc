//! The conformance suite: what every backend must do, written once against
//! `Arc<dyn Store>`. Each backend's test file gives every function a fresh
//! store.

#![allow(
    dead_code,
    reason = "each backend's test binary uses a different subset"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kestrel_store::compactor::{self, CompactionPolicy};
use kestrel_store::{Error, Event, EventKind, MAX_VALUE_BYTES, RangeOptions, Store, WatchStream};

/// How long any single expectation may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

fn b(s: impl Into<String>) -> Bytes {
    Bytes::from(s.into())
}

/// Collects `n` events from `watch`, failing on an error or the deadline.
pub async fn next_events(watch: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(e))) => out.push(e),
            Ok(Some(Err(e))) => panic!("watch failed after {} events: {e}", out.len()),
            Ok(None) => panic!("watch ended after {} of {n} events", out.len()),
            Err(_) => panic!("timed out after {} of {n} events", out.len()),
        }
    }
    out
}

/// Asserts that nothing more arrives on `watch` for a short while.
pub async fn assert_quiet(watch: &mut WatchStream) {
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

pub async fn crud_and_revisions(store: Arc<dyn Store>) {
    let r0 = store.current_revision().await.expect("revision");
    let r1 = store.create("/crud/a", b("one")).await.expect("create");
    assert!(r1 > r0, "create raises the revision");
    assert!(matches!(
        store.create("/crud/a", b("again")).await,
        Err(Error::AlreadyExists { .. })
    ));
    let kv = store
        .get("/crud/a", None)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        (kv.value.as_ref(), kv.create_revision, kv.mod_revision),
        (&b"one"[..], r1, r1)
    );

    let r2 = store.update("/crud/a", b("two"), r1).await.expect("update");
    assert_eq!(r2, r1 + 1, "one write, one revision");
    match store.update("/crud/a", b("stale"), r1).await {
        Err(Error::Conflict {
            current, expected, ..
        }) => assert_eq!((current, expected), (r2, r1)),
        other => panic!("stale update must conflict, got {other:?}"),
    }
    assert!(matches!(
        store.update("/crud/missing", b("x"), r1).await,
        Err(Error::NotFound { .. })
    ));
    let kv = store
        .get("/crud/a", None)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        (kv.value.as_ref(), kv.create_revision, kv.mod_revision),
        (&b"two"[..], r1, r2)
    );

    // Reads at a past revision see the past.
    let old = store
        .get("/crud/a", Some(r1))
        .await
        .expect("get at r1")
        .expect("present at r1");
    assert_eq!(old.value.as_ref(), b"one");
    if r0 > 0 {
        assert!(
            store
                .get("/crud/a", Some(r0))
                .await
                .expect("get at r0")
                .is_none()
        );
    }
    assert!(matches!(
        store.get("/crud/a", Some(r2 + 1000)).await,
        Err(Error::FutureRevision { .. })
    ));

    assert!(matches!(
        store.delete("/crud/a", Some(r1)).await,
        Err(Error::Conflict { current, .. }) if current == r2
    ));
    let deleted = store.delete("/crud/a", Some(r2)).await.expect("delete");
    assert_eq!(deleted.revision, r2 + 1);
    assert_eq!(deleted.prev_kv.value.as_ref(), b"two");
    assert!(store.get("/crud/a", None).await.expect("get").is_none());
    assert!(matches!(
        store.delete("/crud/a", None).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(store.current_revision().await.expect("revision"), r2 + 1);

    // Created again: a new create_revision.
    let r4 = store.create("/crud/a", b("three")).await.expect("recreate");
    let kv = store
        .get("/crud/a", None)
        .await
        .expect("get")
        .expect("present");
    assert_eq!((kv.create_revision, kv.mod_revision), (r4, r4));
    assert!(
        store
            .get("/crud/a", Some(r2 + 1))
            .await
            .expect("get at delete")
            .is_none()
    );

    assert!(matches!(
        store.create("", b("x")).await,
        Err(Error::InvalidKey { .. })
    ));
}

/// 64 tasks increment one counter with compare-and-swap; no update is lost.
pub async fn concurrent_cas(store: Arc<dyn Store>) {
    const TASKS: usize = 64;
    const EACH: usize = 10;
    store.create("/cas/counter", b("0")).await.expect("create");
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0usize;
            for _ in 0..EACH {
                loop {
                    let kv = store
                        .get("/cas/counter", None)
                        .await
                        .expect("get")
                        .expect("present");
                    let n: usize = std::str::from_utf8(&kv.value)
                        .expect("utf8")
                        .parse()
                        .expect("int");
                    match store
                        .update("/cas/counter", b((n + 1).to_string()), kv.mod_revision)
                        .await
                    {
                        Ok(_) => break,
                        Err(Error::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("update failed: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.expect("task");
    }
    let kv = store
        .get("/cas/counter", None)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(kv.value.as_ref(), (TASKS * EACH).to_string().as_bytes());
    assert!(
        conflicts > 0,
        "64 concurrent writers should have collided at least once"
    );
}

/// Watch delivers every change in revision order with previous values, and a
/// watch from any retained revision resumes exactly there.
pub async fn watch_order_and_resume(store: Arc<dyn Store>) {
    let mut live = store.watch("/w/", 0).await.expect("watch");
    let first = store.create("/w/a", b("a1")).await.expect("create");
    let mut mod_revs = BTreeMap::new();
    mod_revs.insert("/w/a", first);
    let mut expected = vec![(EventKind::Put, "/w/a".to_owned(), first)];
    for i in 0..30 {
        let key = ["/w/a", "/w/b", "/w/c"][i % 3];
        let rev = match mod_revs.get(key) {
            Some(&m) if i % 7 == 6 => {
                let d = store.delete(key, Some(m)).await.expect("delete");
                mod_revs.remove(key);
                expected.push((EventKind::Delete, key.to_owned(), d.revision));
                continue;
            }
            Some(&m) => store
                .update(key, b(format!("v{i}")), m)
                .await
                .expect("update"),
            None => store.create(key, b(format!("v{i}"))).await.expect("create"),
        };
        mod_revs.insert(key, rev);
        expected.push((EventKind::Put, key.to_owned(), rev));
    }
    let got = next_events(&mut live, expected.len()).await;
    let seen: Vec<_> = got
        .iter()
        .map(|e| (e.kind, e.kv.key.clone(), e.revision()))
        .collect();
    assert_eq!(seen, expected, "live events in order");
    for pair in got.windows(2) {
        assert!(pair[0].revision() < pair[1].revision());
    }
    // Previous values: an update carries the value it replaced.
    for e in &got {
        match e.kind {
            EventKind::Put if e.kv.create_revision == e.kv.mod_revision => {
                assert!(e.prev_kv.is_none(), "a create has no previous value: {e:?}")
            }
            _ => {
                let prev = e.prev_kv.as_ref().expect("prev_kv on update/delete");
                assert_eq!(prev.key, e.kv.key);
                assert!(prev.mod_revision < e.revision());
            }
        }
    }
    assert_quiet(&mut live).await;

    // Resume from every retained revision: exactly the suffix.
    for (i, (_, _, rev)) in expected.iter().enumerate() {
        let mut w = store.watch("/w/", *rev).await.expect("watch from rev");
        let replay = next_events(&mut w, expected.len() - i).await;
        let seen: Vec<_> = replay
            .iter()
            .map(|e| (e.kind, e.kv.key.clone(), e.revision()))
            .collect();
        assert_eq!(seen, expected[i..], "replay from {rev}");
        assert_eq!(replay, got[i..], "replay equals live, prev values included");
    }
}

/// The switch from replay to live events under concurrent writes: every
/// revision exactly once.
pub async fn watch_switch_under_load(store: Arc<dyn Store>) {
    const WRITES: usize = 400;
    let start = store.create("/sw/k0", b("0")).await.expect("create");
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 1..WRITES {
                store
                    .create(&format!("/sw/k{i}"), b(i.to_string()))
                    .await
                    .expect("create");
            }
        })
    };
    // Watchers start at different moments during the writes.
    let mut watchers = Vec::new();
    for _ in 0..8 {
        watchers.push(store.watch("/sw/", start).await.expect("watch"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.await.expect("writer");
    for mut w in watchers {
        let events = next_events(&mut w, WRITES).await;
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.kv.key, format!("/sw/k{i}"), "no gap, no duplicate");
        }
        assert_quiet(&mut w).await;
    }
}

/// Watches started "from now" while writes go on: each sees a contiguous run
/// of revisions from its start, beginning no earlier than the revision read
/// just before it started.
pub async fn watch_from_now_under_load(store: Arc<dyn Store>) {
    const WRITES: usize = 300;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..WRITES {
                store
                    .create(&format!("/now/k{i:04}"), b(i.to_string()))
                    .await
                    .expect("create");
            }
        })
    };
    let mut watchers = Vec::new();
    for _ in 0..8 {
        let before = store.current_revision().await.expect("revision");
        watchers.push((before, store.watch("/now/", 0).await.expect("watch")));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    writer.await.expect("writer");
    let end = store.current_revision().await.expect("revision");
    let mut saw = 0;
    for (before, mut w) in watchers {
        // Drain until quiet: a watch that subscribed after the last write
        // rightly sees nothing.
        let mut revs = Vec::new();
        while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(500), w.next()).await
        {
            revs.push(item.expect("watch event").revision());
        }
        if let (Some(first), Some(last)) = (revs.first(), revs.last()) {
            assert!(*first > before, "event {first} precedes the watch");
            assert_eq!(*last, end, "the watch saw the last write");
            let expected: Vec<_> = (*first..=end).collect();
            assert_eq!(revs, expected, "no gap, no duplicate");
            saw += 1;
        }
    }
    assert!(saw > 0, "no watcher started before the writes ended");
}

/// A prefix sees only its own keys, in ranges and watches.
pub async fn prefix_isolation(store: Arc<dyn Store>) {
    let mut w = store.watch("/iso/a/", 0).await.expect("watch");
    for key in [
        "/iso/a", "/iso/a/1", "/iso/a/2", "/iso/ab", "/iso/a0", "/iso/b/1", "/iso/a/3",
    ] {
        store.create(key, b(key)).await.expect("create");
    }
    let range = store
        .range("/iso/a/", RangeOptions::default())
        .await
        .expect("range");
    let keys: Vec<_> = range.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/iso/a/1", "/iso/a/2", "/iso/a/3"]);
    assert!(!range.more);
    let events = next_events(&mut w, 3).await;
    let keys: Vec<_> = events.iter().map(|e| e.kv.key.as_str()).collect();
    assert_eq!(keys, ["/iso/a/1", "/iso/a/2", "/iso/a/3"]);
    assert_quiet(&mut w).await;
}

/// After compaction, reads below the compaction revision and watches from
/// at or below it fail with Compacted; above it they work, and current data
/// is intact.
pub async fn compaction(store: Arc<dyn Store>) {
    let r1 = store.create("/c/a", b("1")).await.expect("create");
    let mut rev = r1;
    for i in 2..=10 {
        rev = store
            .update("/c/a", b(i.to_string()), rev)
            .await
            .expect("update");
    }
    let r_b = store.create("/c/b", b("b")).await.expect("create");
    let d = store.delete("/c/b", None).await.expect("delete");
    let after = store.create("/c/c", b("c")).await.expect("create");
    let target = d.revision;
    store.compact(target).await.expect("compact");
    assert_eq!(store.compact_revision().await.expect("compact rev"), target);

    let compacted = |r: Result<_, Error>| matches!(r, Err(Error::Compacted { compact_revision }) if compact_revision == target);
    assert!(compacted(store.get("/c/a", Some(r1)).await.map(|_| ())));
    assert!(compacted(
        store
            .range(
                "/c/",
                RangeOptions {
                    revision: Some(r_b),
                    ..Default::default()
                }
            )
            .await
            .map(|_| ())
    ));
    match store.watch("/c/", r1).await {
        Err(e) => assert!(compacted(Err(e))),
        Ok(mut w) => match tokio::time::timeout(DEADLINE, w.next()).await {
            Ok(Some(Err(e))) => assert!(compacted(Err(e))),
            other => panic!("watch below the compaction must fail, got {other:?}"),
        },
    }
    // Compacting again at or below fails the same way.
    assert!(compacted(store.compact(target).await));

    // At the compaction revision and above, all is there.
    let at = store
        .range(
            "/c/",
            RangeOptions {
                revision: Some(target),
                ..Default::default()
            },
        )
        .await
        .expect("range at target");
    let keys: Vec<_> = at.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/c/a"]);
    assert_eq!(at.items[0].value.as_ref(), b"10");
    let now = store
        .range("/c/", RangeOptions::default())
        .await
        .expect("range");
    let keys: Vec<_> = now.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/c/a", "/c/c"]);
    // A watch must start after the compaction revision: etcd drops a
    // tombstone at exactly that revision, so the event there may be gone.
    match store.watch("/c/", target).await {
        Err(e) => assert!(compacted(Err(e))),
        Ok(mut w) => match tokio::time::timeout(DEADLINE, w.next()).await {
            Ok(Some(Err(e))) => assert!(compacted(Err(e))),
            other => panic!("watch at the compaction must fail, got {other:?}"),
        },
    }
    let mut w = store
        .watch("/c/", target + 1)
        .await
        .expect("watch after target");
    let events = next_events(&mut w, 1).await;
    assert_eq!(events[0].revision(), after);
    assert_quiet(&mut w).await;
    let kv = store
        .get("/c/a", None)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        kv.create_revision, r1,
        "create_revision survives compaction"
    );
}

/// The shared compactor keeps a fixed number of revisions: history below it
/// reads as Compacted, history within it still reads.
pub async fn periodic_compaction(store: Arc<dyn Store>) {
    let task = compactor::spawn(
        store.clone(),
        CompactionPolicy {
            interval: Duration::from_millis(200),
            retain_revisions: 10,
        },
    );
    let mut rev = store.create("/pc/k", b("0")).await.expect("create");
    let first = rev;
    for i in 1..=40 {
        rev = store
            .update("/pc/k", b(i.to_string()), rev)
            .await
            .expect("update");
    }
    let deadline = Instant::now() + DEADLINE;
    while store.compact_revision().await.expect("compact rev") < rev - 10 {
        assert!(Instant::now() < deadline, "the compactor did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    assert!(matches!(
        store.get("/pc/k", Some(first)).await,
        Err(Error::Compacted { .. })
    ));
    let kv = store
        .get("/pc/k", Some(rev - 5))
        .await
        .expect("within retention")
        .expect("present");
    assert_eq!(kv.mod_revision, rev - 5);
}

/// 1.5 MiB values round-trip through create, update, get, range and watch;
/// values over the limit are refused.
pub async fn large_values(store: Arc<dyn Store>) {
    let big: Bytes = (0..3 * 1024 * 1024 / 2)
        .map(|i: usize| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let mut w = store.watch("/big/", 0).await.expect("watch");
    let r1 = store
        .create("/big/a", big.clone())
        .await
        .expect("create 1.5 MiB");
    let mut other = big.to_vec();
    other[12345] ^= 0xff;
    let other = Bytes::from(other);
    let r2 = store
        .update("/big/a", other.clone(), r1)
        .await
        .expect("update 1.5 MiB");
    let kv = store
        .get("/big/a", None)
        .await
        .expect("get")
        .expect("present");
    assert!(kv.value == other);
    let old = store
        .get("/big/a", Some(r1))
        .await
        .expect("get old")
        .expect("present");
    assert!(old.value == big);
    let events = next_events(&mut w, 2).await;
    assert!(events[0].kv.value == big);
    assert!(events[1].kv.value == other);
    assert!(events[1].prev_kv.as_ref().expect("prev").value == big);
    assert_eq!(events[1].revision(), r2);
    let too_big = Bytes::from(vec![0u8; MAX_VALUE_BYTES + 1]);
    assert!(matches!(
        store.create("/big/b", too_big).await,
        Err(Error::TooLarge { .. })
    ));
}

/// 10,000 keys, paged 1,000 at a time through one consistent snapshot while
/// writes continue.
pub async fn range_10k_paginated(store: Arc<dyn Store>) {
    const KEYS: usize = 10_000;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("/r/{i:05}")).collect();
    let chunks: Vec<Vec<String>> = keys.chunks(KEYS / 32).map(<[String]>::to_vec).collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for k in chunk {
                store.create(&k, b(k.clone())).await.expect("create");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let first = store
        .range(
            "/r/",
            RangeOptions {
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .expect("first page");
    assert_eq!(first.items.len(), 1000);
    assert!(first.more);
    // Writes after the first page must not show in later pages.
    store
        .create("/r/00000x", b("late"))
        .await
        .expect("create late");
    let victim = store
        .get("/r/09999", None)
        .await
        .expect("get")
        .expect("present");
    store
        .delete("/r/09999", Some(victim.mod_revision))
        .await
        .expect("delete");

    let mut all: Vec<_> = first.items.clone();
    let mut more = first.more;
    while more {
        let page = store
            .range(
                "/r/",
                RangeOptions {
                    limit: 1000,
                    start_after: all.last().map(|kv| kv.key.clone()),
                    revision: Some(first.revision),
                },
            )
            .await
            .expect("page");
        assert_eq!(page.revision, first.revision);
        assert!(page.items.len() <= 1000);
        more = page.more;
        all.extend(page.items);
    }
    let got: Vec<_> = all.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(got, keys, "every key once, in order, as of the first page");
    assert!(all.iter().all(|kv| kv.value.as_ref() == kv.key.as_bytes()));

    let now = store
        .range("/r/", RangeOptions::default())
        .await
        .expect("range now");
    assert_eq!(now.items.len(), KEYS);
    assert!(now.items.iter().any(|kv| kv.key == "/r/00000x"));
    assert!(now.items.iter().all(|kv| kv.key != "/r/09999"));
}

/// A key created with a TTL disappears by itself, with a delete event.
pub async fn ttl_expiry(store: Arc<dyn Store>) {
    let mut w = store.watch("/ttl/", 0).await.expect("watch");
    let rev = store
        .create_with_ttl("/ttl/e", b("event"), Duration::from_secs(2))
        .await
        .expect("create with ttl");
    let rev2 = store
        .update("/ttl/e", b("event2"), rev)
        .await
        .expect("update keeps ttl");
    store.create("/ttl/keep", b("keep")).await.expect("create");
    let events = next_events(&mut w, 3).await;
    assert_eq!(events[1].revision(), rev2);
    let started = Instant::now();
    let gone = next_events(&mut w, 1).await.remove(0);
    assert_eq!(
        (gone.kind, gone.kv.key.as_str()),
        (EventKind::Delete, "/ttl/e")
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(store.get("/ttl/e", None).await.expect("get").is_none());
    assert!(store.get("/ttl/keep", None).await.expect("get").is_some());
}

/// Everything under `prefix` now, paged. The crash tests use it to check what
/// survived.
pub async fn read_all(store: &dyn Store, prefix: &str) -> BTreeMap<String, Bytes> {
    let mut out = BTreeMap::new();
    let mut start_after = None;
    loop {
        let page = store
            .range(
                prefix,
                RangeOptions {
                    limit: 1000,
                    start_after,
                    revision: None,
                },
            )
            .await
            .expect("range");
        start_after = page.items.last().map(|kv| kv.key.clone());
        out.extend(page.items.into_iter().map(|kv| (kv.key, kv.value)));
        if !page.more {
            return out;
        }
    }
}

/// The value the crash writers store under key number `i`: long enough to
/// span pages, and checkable, so a torn write cannot pass.
pub fn crash_value(i: u64) -> Bytes {
    let mut v = format!("value-{i}-").into_bytes();
    while v.len() < 6000 {
        v.extend_from_slice(format!("{i:x}").as_bytes());
    }
    Bytes::from(v)
}

pub fn crash_key(i: u64) -> String {
    format!("/crash/{i:08}")
}

/// Calls `$m!` with every case of the suite, so that each backend's test
/// file instantiates exactly the same list.
macro_rules! for_each_case {
    ($m:ident) => {
        $m!(
            crud_and_revisions,
            concurrent_cas,
            watch_order_and_resume,
            watch_switch_under_load,
            watch_from_now_under_load,
            prefix_isolation,
            compaction,
            large_values,
            range_10k_paginated,
            ttl_expiry,
            periodic_compaction,
        );
    };
}
pub(crate) use for_each_case;
