//! The etcd backend: the [`Store`] semantics map one-to-one onto etcd v3.
//!
//! Compare-and-swap is an etcd transaction comparing `mod_revision`; create
//! compares `create_revision` with 0. The revision, compaction and watch are
//! etcd's own. The client balances over every endpoint; reads and watches
//! are retried on another endpoint when one dies. Writes are retried only
//! when the request never reached a server, because a write whose answer was
//! lost may have been applied, and a blind retry could apply it twice.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, KvClient, PutOptions, Txn, TxnOp, TxnOpResponse, WatchClient, WatchOptions,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::Code;
use tracing::{debug, warn};

use crate::compactor::{self, CompactionPolicy};
use crate::{
    Deleted, Error, Event, EventKind, KeyValue, RangeOptions, RangeResult, Result, Revision, Store,
    WatchStream, prefix_end, validate,
};

/// Settings of the etcd backend.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// How long a single request may take.
    pub request_timeout: Duration,
    /// How long reads and watches keep retrying while no endpoint answers.
    pub retry_for: Duration,
    /// Periodic compaction while the store is open (several API servers may
    /// all run it; a compaction someone else already did is skipped).
    /// `None` leaves compaction to the caller or to etcd's own
    /// `--auto-compaction-*`.
    pub compaction: Option<CompactionPolicy>,
}

impl EtcdConfig {
    /// Defaults for the given endpoints.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(30),
            compaction: Some(CompactionPolicy::default()),
        }
    }
}

/// A store backed by an etcd cluster.
#[derive(Debug, Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    kv: KvClient,
    watch: WatchClient,
    client: Client,
    config: EtcdConfig,
    /// The highest compaction revision seen; etcd has no call that reports
    /// it, so it is learnt from compactions and from compacted watches.
    compact_revision: AtomicI64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .field("compact_revision", &self.compact_revision)
            .finish_non_exhaustive()
    }
}

/// Messages are allowed well past [`crate::MAX_VALUE_BYTES`] so that a page
/// of large values still decodes.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

fn etcd_err(context: &'static str) -> impl FnOnce(etcd_client::Error) -> Error {
    move |e| Error::backend(context, e)
}

/// Whether `e` says the server could not be reached at all, so the request
/// was certainly not applied and may be sent again.
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == Code::Unavailable
                && (s.message().contains("connect") || s.message().contains("not ready"))
        }
        _ => false,
    }
}

/// Whether `e` is worth retrying for an idempotent request.
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
        ),
        _ => false,
    }
}

fn message_of(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_owned(),
        other => other.to_string(),
    }
}

fn to_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: String::from_utf8(kv.key().to_vec())
            .map_err(|e| Error::backend("decoding a key from etcd", e))?,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

impl EtcdStore {
    /// Connects to the cluster. Fails if no endpoint is given; endpoints that
    /// are down now are used once they come back.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(Error::backend(
                "connecting to etcd",
                "no etcd endpoints given",
            ));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // A member cut off from the leader fails requests and cancels
            // watches instead of serving stale data or going quiet; both
            // are then retried on another member.
            .with_require_leader(true);
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(etcd_err("connecting to etcd"))?;
        let kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let watch = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        let store = EtcdStore {
            inner: Arc::new(Inner {
                kv,
                watch,
                client,
                config,
                compact_revision: AtomicI64::new(0),
            }),
        };
        store.probe_compact_revision().await;
        if let Some(policy) = store.inner.config.compaction {
            tokio::spawn(compact_periodically(Arc::downgrade(&store.inner), policy));
        }
        Ok(store)
    }

    /// Runs `call` until it succeeds, fails for good, or the retry window
    /// closes. `idempotent` calls retry every transient failure; others only
    /// those that never reached a server.
    async fn retry<T, F, Fut>(
        &self,
        context: &'static str,
        idempotent: bool,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.config.retry_for;
        let mut backoff = Duration::from_millis(20);
        loop {
            let attempt = tokio::time::timeout(
                self.inner.config.request_timeout,
                call(self.inner.kv.clone()),
            )
            .await;
            let e = match attempt {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                // A write that timed out may still be applied: only reads
                // try again.
                Err(elapsed) if !idempotent || tokio::time::Instant::now() + backoff > deadline => {
                    return Err(Error::backend(context, elapsed));
                }
                Err(_) => {
                    debug!(context, "etcd request timed out; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let retry = if idempotent {
                transient(&e)
            } else {
                not_sent(&e)
            };
            if !retry || tokio::time::Instant::now() + backoff > deadline {
                return Err(self.classify(context, e).await);
            }
            debug!(context, error = %e, "retrying etcd request");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Turns etcd's revision errors into the store's own.
    async fn classify(&self, context: &'static str, e: etcd_client::Error) -> Error {
        let msg = message_of(&e);
        if msg.contains("required revision has been compacted") {
            return Error::Compacted {
                compact_revision: self.probe_compact_revision().await,
            };
        }
        if msg.contains("required revision is a future revision") {
            let current = self.current_revision().await.unwrap_or(0);
            return Error::FutureRevision {
                requested: 0,
                current,
            };
        }
        if msg.contains("request is too large") {
            return Error::TooLarge {
                size: 0,
                limit: crate::MAX_VALUE_BYTES,
            };
        }
        Error::backend(context, e)
    }

    fn note_compacted(&self, revision: Revision) -> Revision {
        self.inner
            .compact_revision
            .fetch_max(revision, Ordering::SeqCst)
            .max(revision)
    }

    /// Learns etcd's compaction revision: a watch from revision 1 is
    /// cancelled at once with it when history was compacted. No answer
    /// within a short wait means nothing was compacted beyond what is known.
    async fn probe_compact_revision(&self) -> Revision {
        let known = self.inner.compact_revision.load(Ordering::SeqCst);
        let mut client = self.inner.watch.clone();
        let opts = WatchOptions::new().with_start_revision(1);
        let probe = async {
            let mut stream = client
                .watch("\0kestrel-compact-probe", Some(opts))
                .await
                .ok()?;
            while let Ok(Some(resp)) = stream.message().await {
                if resp.compact_revision() > 0 {
                    return Some(resp.compact_revision());
                }
                if resp.canceled() {
                    return None;
                }
            }
            None
        };
        // etcd checks unsynced watchers every 100 ms.
        match tokio::time::timeout(Duration::from_millis(600), probe).await {
            Ok(Some(rev)) => self.note_compacted(rev),
            _ => known,
        }
    }

    async fn txn(&self, context: &'static str, txn: Txn) -> Result<etcd_client::TxnResponse> {
        self.retry(context, false, |mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// Builds the error of a failed compare, from the key's current state
    /// read in the transaction's failure branch.
    fn failed_compare(key: &str, expected: Revision, resp: &etcd_client::TxnResponse) -> Error {
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.mod_revision())),
            _ => None,
        });
        match current.flatten() {
            Some(current) => Error::Conflict {
                key: key.to_owned(),
                expected,
                current,
            },
            None => Error::NotFound {
                key: key.to_owned(),
            },
        }
    }

    async fn put_new(&self, key: &str, value: Bytes, lease: Option<i64>) -> Result<Revision> {
        validate(key, &value)?;
        let put = PutOptions::new().with_lease(lease.unwrap_or(0));
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), Some(put))]);
        let resp = self.txn("creating a key in etcd", txn).await?;
        if !resp.succeeded() {
            return Err(Error::AlreadyExists {
                key: key.to_owned(),
            });
        }
        revision_of(resp.header())
    }
}

/// Keeps `policy.retain_revisions` of history, until the store is dropped.
/// Holds the store weakly so that it does not keep the client alive.
async fn compact_periodically(inner: Weak<Inner>, policy: CompactionPolicy) {
    let mut tick = tokio::time::interval(policy.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; skip it so that opening a store is not
    // followed by a compaction right away.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let store = EtcdStore { inner };
        if let Err(e) = compactor::compact_once(&store, policy.retain_revisions).await {
            warn!(error = %e, "periodic etcd compaction failed");
        }
    }
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(etcd_client::ResponseHeader::revision)
        .ok_or_else(|| Error::backend("reading etcd's answer", "response without a header"))
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn backend_name(&self) -> &'static str {
        "etcd"
    }

    async fn current_revision(&self) -> Result<Revision> {
        let resp = self
            .retry(
                "reading the revision from etcd",
                true,
                |mut kv| async move {
                    kv.get("\0", Some(GetOptions::new().with_count_only()))
                        .await
                },
            )
            .await?;
        revision_of(resp.header())
    }

    async fn compact_revision(&self) -> Result<Revision> {
        Ok(self.probe_compact_revision().await)
    }

    async fn get(&self, key: &str, revision: Option<Revision>) -> Result<Option<KeyValue>> {
        let mut opts = GetOptions::new();
        if let Some(rev) = revision.filter(|r| *r > 0) {
            opts = opts.with_revision(rev);
        }
        let key = key.to_owned();
        let resp = self
            .retry("reading a key from etcd", true, |mut kv| {
                let (key, opts) = (key.clone(), opts.clone());
                async move { kv.get(key, Some(opts)).await }
            })
            .await
            .map_err(|e| with_requested(e, revision))?;
        resp.kvs().first().map(to_kv).transpose()
    }

    async fn range(&self, prefix: &str, options: RangeOptions) -> Result<RangeResult> {
        let start = match &options.start_after {
            // The smallest key after `after` is `after` followed by a NUL.
            Some(after) if after.as_str() >= prefix => {
                let mut k = after.as_bytes().to_vec();
                k.push(0);
                k
            }
            _ => prefix.as_bytes().to_vec(),
        };
        // etcd reads "\0" as range end "to the end of the key space".
        let end = prefix_end(prefix).unwrap_or_else(|| vec![0]);
        let mut opts = GetOptions::new().with_range(end);
        if options.limit > 0 {
            opts = opts.with_limit(i64::try_from(options.limit).unwrap_or(i64::MAX));
        }
        if let Some(rev) = options.revision.filter(|r| *r > 0) {
            opts = opts.with_revision(rev);
        }
        let resp = self
            .retry("reading a range from etcd", true, |mut kv| {
                let (start, opts) = (start.clone(), opts.clone());
                async move { kv.get(start, Some(opts)).await }
            })
            .await
            .map_err(|e| with_requested(e, options.revision))?;
        let items = resp.kvs().iter().map(to_kv).collect::<Result<Vec<_>>>()?;
        let revision = match options.revision.filter(|r| *r > 0) {
            Some(r) => r,
            None => revision_of(resp.header())?,
        };
        Ok(RangeResult {
            items,
            more: resp.more(),
            revision,
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Revision> {
        self.put_new(key, value, None).await
    }

    async fn create_with_ttl(&self, key: &str, value: Bytes, ttl: Duration) -> Result<Revision> {
        validate(key, &value)?;
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut lease = self.inner.client.lease_client();
        let grant = lease
            .grant(secs, None)
            .await
            .map_err(etcd_err("granting an etcd lease"))?;
        let result = self.put_new(key, value, Some(grant.id())).await;
        if result.is_err()
            && let Err(e) = lease.revoke(grant.id()).await
        {
            // The lease expires by itself; nothing is attached to it.
            warn!(error = %e, "revoking an unused etcd lease failed");
        }
        result
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Revision,
    ) -> Result<Revision> {
        validate(key, &value)?;
        // ignore_lease keeps the key's TTL, as the embedded backend does.
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key, CompareOp::Equal, expected_mod_revision),
                Compare::create_revision(key, CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::put(
                key,
                value.to_vec(),
                Some(PutOptions::new().with_ignore_lease()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn("updating a key in etcd", txn).await?;
        if !resp.succeeded() {
            return Err(Self::failed_compare(key, expected_mod_revision, &resp));
        }
        revision_of(resp.header())
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<Deleted> {
        validate(key, b"")?;
        let mut compares = vec![Compare::create_revision(key, CompareOp::Greater, 0)];
        if let Some(expected) = expected_mod_revision {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, expected));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn("deleting a key in etcd", txn).await?;
        if !resp.succeeded() {
            return Err(Self::failed_compare(
                key,
                expected_mod_revision.unwrap_or(0),
                &resp,
            ));
        }
        let prev = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Delete(d) => d.prev_kvs().first().cloned(),
            _ => None,
        });
        let prev = prev.ok_or_else(|| Error::NotFound {
            key: key.to_owned(),
        })?;
        Ok(Deleted {
            revision: revision_of(resp.header())?,
            prev_kv: to_kv(&prev)?,
        })
    }

    async fn watch(&self, prefix: &str, start_revision: Revision) -> Result<WatchStream> {
        let next = if start_revision <= 0 {
            self.current_revision().await? + 1
        } else {
            start_revision
        };
        let known = self.inner.compact_revision.load(Ordering::SeqCst);
        if next <= known {
            return Err(Error::Compacted {
                compact_revision: known,
            });
        }
        let (tx, rx) = mpsc::channel(256);
        let store = self.clone();
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let mut next = next;
            if let Err(e) = store.pump(&prefix, &mut next, &tx).await {
                debug!(prefix, next, error = %e, "etcd watch ended");
                let _ = tx.send(Err(e)).await;
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(stream.boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let known = self.inner.compact_revision.load(Ordering::SeqCst);
        if revision <= known {
            return Err(Error::Compacted {
                compact_revision: known,
            });
        }
        // Physical: return once the history is gone, so that the store's
        // answers after compact() are the same as the embedded backend's.
        let resp = self
            .retry("compacting etcd", true, |mut kv| async move {
                kv.compact(revision, Some(CompactionOptions::new().with_physical()))
                    .await
            })
            .await;
        match resp {
            Ok(_) => {
                self.note_compacted(revision);
                Ok(())
            }
            Err(Error::FutureRevision { current, .. }) => Err(Error::FutureRevision {
                requested: revision,
                current,
            }),
            Err(e) => Err(e),
        }
    }
}

/// Fills in the requested revision of a FutureRevision error.
fn with_requested(e: Error, requested: Option<Revision>) -> Error {
    match e {
        Error::FutureRevision { current, .. } => Error::FutureRevision {
            requested: requested.unwrap_or(0),
            current,
        },
        other => other,
    }
}

impl EtcdStore {
    /// Forwards etcd's watch to `tx`, re-establishing it from the next
    /// revision on another endpoint when the connection breaks.
    async fn pump(
        &self,
        prefix: &str,
        next: &mut Revision,
        tx: &mpsc::Sender<Result<Event>>,
    ) -> Result<()> {
        let end = prefix_end(prefix).unwrap_or_else(|| vec![0]);
        let mut broken_since: Option<tokio::time::Instant> = None;
        let mut backoff = Duration::from_millis(20);
        loop {
            let opts = WatchOptions::new()
                .with_range(end.clone())
                .with_start_revision(*next)
                .with_prev_key();
            let mut client = self.inner.watch.clone();
            let failure = match client.watch(prefix, Some(opts)).await {
                Ok(mut stream) => loop {
                    let msg = tokio::select! {
                        () = tx.closed() => return Ok(()),
                        msg = stream.message() => msg,
                    };
                    let resp = match msg {
                        Ok(Some(resp)) => resp,
                        Ok(None) => {
                            break etcd_client::Error::WatchError("watch stream closed".into());
                        }
                        Err(e) => break e,
                    };
                    if resp.compact_revision() > 0 {
                        return Err(Error::Compacted {
                            compact_revision: self.note_compacted(resp.compact_revision()),
                        });
                    }
                    if resp.canceled() {
                        break etcd_client::Error::WatchError(format!(
                            "watch cancelled: {}",
                            resp.cancel_reason()
                        ));
                    }
                    broken_since = None;
                    backoff = Duration::from_millis(20);
                    for ev in resp.events() {
                        let event = to_event(ev)?;
                        if event.revision() < *next {
                            continue;
                        }
                        *next = event.revision() + 1;
                        if tx.send(Ok(event)).await.is_err() {
                            return Ok(());
                        }
                    }
                },
                Err(e) => e,
            };
            let since = *broken_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > self.inner.config.retry_for {
                return Err(Error::backend("watching etcd", failure));
            }
            debug!(prefix, next = *next, error = %failure, "etcd watch broke; re-establishing");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

fn to_event(ev: &etcd_client::Event) -> Result<Event> {
    let kv = ev
        .kv()
        .ok_or_else(|| Error::backend("reading an etcd watch event", "event without a key"))?;
    let kind = match ev.event_type() {
        EventType::Put => EventKind::Put,
        EventType::Delete => EventKind::Delete,
    };
    Ok(Event {
        kind,
        kv: to_kv(kv)?,
        prev_kv: ev.prev_kv().map(to_kv).transpose()?,
    })
}
