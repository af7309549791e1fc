//! The controller manager: its options, starting every controller, and
//! leader election on the Lease `kube-system/kube-controller-manager`.
//!
//! `kestrel server` runs one in-process; `kestrel controller-manager` runs
//! one alone (several, with `--leader-elect`, for HA). Only the leader runs
//! controllers: a standby waits on the Lease and takes over once the leader
//! stops renewing it.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use kestrel_client::leader::LeaderElector;
use kube::Resource;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use serde::de::DeserializeOwned;

use crate::legacytoken::{self, LegacyTokenSigner};
use crate::rootca;

use crate::{
    clusterdns, clusterroleaggregation, disruption, endpointslice, gc, namespace, nodeipam,
    nodelifecycle, resourcequota, serviceaccount, volume,
};

/// Namespace of the leader-election Lease.
pub const LEASE_NAMESPACE: &str = "kube-system";
/// Name of the leader-election Lease, as upstream's.
pub const LEASE_NAME: &str = "kube-controller-manager";

/// Why a controller (or the manager) stopped or a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// An option is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// An object cannot be acted on as it is; the controller waits for it
    /// to change.
    #[error("{0}")]
    Invalid(String),
    /// Work is left that a later pass must finish.
    #[error("{0}")]
    Pending(String),
    /// Leadership was lost.
    #[error("leader election")]
    Leader(#[from] kestrel_client::leader::Error),
    /// A controller with an error type of its own stopped for good.
    #[error("{controller} stopped")]
    Stopped {
        /// Which controller.
        controller: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Leader-election timings (client-go's names).
#[derive(Debug, Clone)]
pub struct LeaderTimings {
    /// How long a Lease that is not renewed stays valid.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up.
    pub renew_deadline: Duration,
    /// How often candidates poll and the leader renews.
    pub retry: Duration,
}

impl Default for LeaderTimings {
    /// 12 s + 2 s: a standby leads within 15 s of the leader's death.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(12),
            renew_deadline: Duration::from_secs(8),
            retry: Duration::from_secs(2),
        }
    }
}

/// The controller manager's options (`kestrel controller-manager` flags).
#[derive(Debug, Clone)]
pub struct Options {
    /// Pod address range nodes get their podCIDRs from (`--cluster-cidr`).
    pub cluster_cidr: String,
    /// Prefix length of each node's podCIDR (`--node-cidr-mask-size`).
    pub node_cidr_mask_size: u8,
    /// How long a node may go without renewing its Lease before it is
    /// marked unreachable (`--node-monitor-grace-period`).
    pub node_monitor_grace_period: Duration,
    /// How often node health is checked (`--node-monitor-period`).
    pub node_monitor_period: Duration,
    /// Campaign for the Lease and run controllers only while leading.
    pub leader_elect: bool,
    /// Leader-election timings.
    pub leader_timings: LeaderTimings,
    /// This candidate's identity (default: host name, pid and a nonce).
    pub identity: Option<String>,
    /// The cluster CA bundle (PEM) the root CA publisher puts in every
    /// namespace's `kube-root-ca.crt` and the token controller in token
    /// Secrets (`--root-ca-file`, else the kubeconfig's CA). Without it the
    /// publisher does not run.
    pub root_ca: Option<String>,
    /// Signs legacy ServiceAccount tokens with the service account private
    /// key (`--service-account-private-key-file`). Without it the token
    /// controller does not run, as upstream.
    pub legacy_token_signer: Option<Arc<dyn LegacyTokenSigner>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cluster_cidr: "10.42.0.0/16".to_owned(),
            node_cidr_mask_size: 24,
            node_monitor_grace_period: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            leader_elect: false,
            leader_timings: LeaderTimings::default(),
            identity: None,
            root_ca: None,
            legacy_token_signer: None,
        }
    }
}

/// Runs every controller against one API server.
#[derive(Clone)]
pub struct Manager {
    client: kube::Client,
    opts: Options,
    leading: Arc<AtomicBool>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// A manager that talks to the server `client` points at. Fails on
    /// invalid options (a bad `--cluster-cidr`).
    pub fn new(client: kube::Client, opts: Options) -> Result<Self> {
        nodeipam::CidrSet::new(&opts.cluster_cidr, opts.node_cidr_mask_size)?;
        Ok(Self {
            client,
            opts,
            leading: Arc::default(),
        })
    }

    /// Whether this manager's controllers are running now (always, once
    /// started, without leader election).
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// Run until `shutdown` resolves. With leader election, controllers run
    /// only while this candidate leads; after losing the Lease it campaigns
    /// again (nothing half-done survives: every controller is level-based).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let work = async {
            if !self.opts.leader_elect {
                return self.run_controllers().await;
            }
            let identity = self.opts.identity.clone().unwrap_or_else(default_identity);
            let t = &self.opts.leader_timings;
            let mut elector =
                LeaderElector::new(self.client.clone(), LEASE_NAMESPACE, LEASE_NAME, &identity);
            elector.lease_duration = t.lease_duration;
            elector.renew_deadline = t.renew_deadline;
            elector.retry = t.retry;
            loop {
                match elector.lead(self.run_controllers()).await {
                    Ok(out) => return out,
                    Err(e) => tracing::error!(error = %e, "stopped leading; campaigning again"),
                }
            }
        };
        tokio::select! {
            r = work => r,
            () = shutdown => Ok(()),
        }
    }

    /// Every controller, concurrently. Each runs until it fails for good,
    /// which none does while the API server answers.
    async fn run_controllers(&self) -> Result<()> {
        /// Clears the flag however the controllers stop (also when the
        /// future is dropped on lost leadership or shutdown).
        struct Leading<'a>(&'a AtomicBool);
        impl Drop for Leading<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        self.leading.store(true, Ordering::SeqCst);
        let _leading = Leading(&self.leading);
        tracing::info!("starting controllers");
        // One task per controller: each polls its own watch streams and
        // decodes its own objects from a fresh stack (one task joining them
        // all nested every controller's poll frames on one stack, which a
        // debug build's Pod decoding overflowed). Dropping the set (lost
        // leadership, shutdown, one failing) aborts the others.
        let mut set: tokio::task::JoinSet<Result<()>> = tokio::task::JoinSet::new();
        macro_rules! spawn {
            (|$c:ident, $o:ident| $fut:expr) => {{
                let $c = self.client.clone();
                let $o = self.opts.clone();
                set.spawn(async move {
                    let _ = &$o;
                    $fut.await
                });
            }};
        }
        spawn!(|c, o| nodeipam::run(c, &o));
        spawn!(|c, _o| endpointslice::run(c));
        spawn!(|c, _o| clusterdns::run(c));
        spawn!(|c, _o| clusterroleaggregation::run(c));
        spawn!(|c, _o| resourcequota::run(c));
        spawn!(|c, _o| disruption::run(c));
        spawn!(|c, _o| volume::binder::run(c));
        spawn!(|c, _o| volume::protection::run_pvc(c));
        spawn!(|c, _o| volume::protection::run_pv(c));
        spawn!(|c, _o| volume::ephemeral::run(c));
        spawn!(|c, _o| gc::run(c));
        spawn!(|c, _o| namespace::run(c));
        spawn!(|c, _o| serviceaccount::run(c));
        spawn!(|c, o| async move {
            let Some(ca) = &o.root_ca else {
                tracing::warn!("no root CA: kube-root-ca.crt is not published");
                return Ok(());
            };
            rootca::run(c, ca.clone()).await
        });
        spawn!(|c, o| async move {
            let Some(signer) = &o.legacy_token_signer else {
                tracing::warn!("no service account private key: token Secrets are not filled");
                return Ok(());
            };
            legacytoken::run(c, signer.clone(), o.root_ca.clone()).await
        });
        spawn!(|c, o| nodelifecycle::run(c, &o));
        spawn!(|c, _o| async move {
            crate::workloads::run_workloads(c)
                .await
                .map_err(|e| Error::Stopped {
                    controller: "workloads",
                    source: e.into(),
                })
        });
        while let Some(done) = set.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    return Err(Error::Stopped {
                        controller: "a controller task",
                        source: e.into(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "kestrel".to_owned());
    let nonce = jiff::Timestamp::now().as_nanosecond().unsigned_abs() % 1_000_000;
    format!("{host}_{}_{nonce:06}", std::process::id())
}

/// A reflector for `api`: the store, and a stream that keeps it filled and
/// yields every object it sees change (to trigger reconciles with, or to
/// drain with [`drain`]).
pub(crate) fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, cfg)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// Wait until `store` has its first full list, like
/// [`Store::wait_until_ready`], but safe for several tasks waiting at once:
/// kube-runtime's readiness is a oneshot channel that keeps one waker, so
/// of several concurrent waiters only the last one polled is woken and the
/// others would wait forever (an EndpointSlice reconcile stuck for good at
/// start). Re-polling every 100 ms picks the readiness up regardless.
pub(crate) async fn wait_ready<K>(store: &Store<K>) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    loop {
        match tokio::time::timeout(READY_POLL, store.wait_until_ready()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(_)) => return Err(Error::Pending("a cache stopped".to_owned())),
            Err(_) => {}
        }
    }
}

/// How often [`wait_ready`] looks again.
const READY_POLL: Duration = Duration::from_millis(100);

/// Keep a reflector running; watch errors are retried with backoff by the
/// watcher and only logged here.
pub(crate) async fn drain<T, S>(stream: S, what: &str)
where
    S: Stream<Item = Result<T, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            tracing::debug!(watch = what, error = %e, "watch failed; retrying");
        }
    }
}

/// Drive a `Controller::run` stream to its end, logging reconcile errors
/// (which the error policy has already requeued).
pub(crate) async fn drive<T, E: std::error::Error, S>(stream: S, what: &str)
where
    S: Stream<Item = Result<T, E>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            tracing::debug!(controller = what, error = %e, "reconcile failed");
        }
    }
}

/// Per-object exponential requeue backoff: 200 ms doubling to 60 s, reset
/// by a success.
#[derive(Debug)]
pub(crate) struct Backoff<Key> {
    failures: Mutex<HashMap<Key, u32>>,
}

impl<Key> Default for Backoff<Key> {
    fn default() -> Self {
        Self {
            failures: Mutex::default(),
        }
    }
}

impl<Key: Hash + Eq> Backoff<Key> {
    /// The requeue after one more failure of `key`.
    pub(crate) fn failed(&self, key: Key) -> Action {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() > 10_000 {
            f.clear();
        }
        let n = f.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        let ms = 200u64.saturating_mul(1 << (*n - 1).min(9));
        Action::requeue(Duration::from_millis(ms.min(60_000)))
    }

    /// `key` succeeded: its next failure starts from the shortest delay.
    pub(crate) fn succeeded(&self, key: &Key) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// Delete options that only delete the object with this uid, never a
/// successor that took its name meanwhile.
pub(crate) fn only_uid(uid: Option<String>) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    }
}

/// Whether `e` is the API's 404.
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether `e` is the API's 409 (a stale resourceVersion or a name taken).
pub(crate) fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;

    /// Every one of several concurrent waiters sees the store turn ready
    /// (with `Store::wait_until_ready` only the last one polled would).
    #[tokio::test]
    async fn concurrent_waiters_all_see_readiness() {
        let (store, mut writer) = reflector::store::<Node>();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { wait_ready(&s).await })
            })
            .collect();
        // Let every waiter register before the store fills.
        tokio::time::sleep(Duration::from_millis(20)).await;
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiter was left waiting")
                .expect("join")
                .expect("ready");
        }
    }
}
