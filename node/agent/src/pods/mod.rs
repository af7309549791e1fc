//! Pods on this node: a reflector of the Pods bound here, one worker task
//! per pod, and a relist of CRI state every second (upstream's PLEG) that
//! wakes the workers whose containers changed and finds orphaned sandboxes.

mod claims;
mod cri;
pub mod dns;
mod env;
mod probe;
mod resources;
mod status;
mod tokens;
mod volumes;
mod worker;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash as _, Hasher as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use kestrel_client::events::Recorder;
use kestrel_cri::{ImageClient, RuntimeClient, v1};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::{Notify, mpsc};

pub use cri::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID};

/// How often CRI state is relisted.
const RELIST: Duration = Duration::from_secs(1);
/// Every this many relists, addresses of vanished sandboxes are released.
const IP_GC_ROUNDS: u64 = 30;
/// An allocation younger than this may belong to a sandbox being created.
const IP_GC_MIN_AGE: Duration = Duration::from_secs(60);

fn release_orphan_ips(dir: &std::path::Path, cidr: ipnet::Ipv4Net, live: &HashSet<String>) {
    match kestrel_cni::ipam::Ipam::open(dir, cidr)
        .and_then(|i| i.release_orphans(live, IP_GC_MIN_AGE))
    {
        Ok(ips) => {
            for ip in ips {
                tracing::info!(%ip, "released the address of a sandbox that is gone");
            }
        }
        Err(e) => tracing::warn!(error = %e, "releasing orphaned pod addresses"),
    }
}

/// What every pod worker shares.
pub(crate) struct Shared {
    pub client: kube::Client,
    pub cri: RuntimeClient,
    pub images: ImageClient,
    pub node_ip: String,
    pub pods_root: PathBuf,
    pub logs_root: PathBuf,
    pub cgroup_parent: String,
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub recorder: Recorder,
    pub status_tx: status::StatusTx,
    pub probe_results: probe::ResultMap,
    pub dns: dns::NodeDns,
    pub tokens: tokens::TokenManager,
}

/// Where and how the pod manager runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name.
    pub node: String,
    /// This node's IP (hostIP, and podIP of hostNetwork pods).
    pub node_ip: String,
    /// Pod volumes live under here.
    pub pods_root: PathBuf,
    /// Container logs live under here.
    pub logs_root: PathBuf,
    /// cgroup parent of pod cgroups (cgroupfs path, e.g. `/kestrel/node1/pods`).
    pub cgroup_parent: String,
    /// The CNI plugin's data dir and this node's pod CIDR, to release the
    /// addresses of sandboxes that are gone.
    pub ipam: Option<(PathBuf, ipnet::Ipv4Net)>,
    /// What the pods' resolv.conf is made of.
    pub dns: dns::NodeDns,
}

type Workers = Arc<Mutex<HashMap<String, Arc<Notify>>>>;

fn spawn_worker(shared: &Arc<Shared>, workers: &Workers, uid: &str, ns: &str, name: &str) {
    let mut map = workers.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(w) = map.get(uid) {
        w.notify_one();
        return;
    }
    let wake = Arc::new(Notify::new());
    map.insert(uid.to_owned(), wake.clone());
    let w = worker::Worker::new(
        shared.clone(),
        uid.to_owned(),
        ns.to_owned(),
        name.to_owned(),
        wake,
    );
    let workers = workers.clone();
    tokio::spawn(async move {
        let uid = w.uid.clone();
        w.run().await;
        workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
    });
}

/// Run the pods bound to `config.node` until the process ends.
pub async fn run(
    client: kube::Client,
    cri: RuntimeClient,
    images: ImageClient,
    recorder: Recorder,
    config: Config,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.pods_root)?;
    std::fs::create_dir_all(&config.logs_root)?;
    let (pods, pod_writer) = reflector::store();
    let (services, svc_writer) = reflector::store();
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    tokio::spawn(status::writer(client.clone(), status_rx));
    let shared = Arc::new(Shared {
        client: client.clone(),
        cri,
        images,
        node_ip: config.node_ip.clone(),
        pods_root: config.pods_root.clone(),
        logs_root: config.logs_root.clone(),
        cgroup_parent: config.cgroup_parent.clone(),
        pods,
        services,
        recorder,
        status_tx,
        probe_results: Arc::default(),
        dns: config.dns.clone(),
        tokens: tokens::TokenManager::new(client.clone()),
    });
    let workers: Workers = Arc::default();

    // Services, for the environment of new containers.
    let svc_api: Api<Service> = Api::all(client.clone());
    tokio::spawn(async move {
        let mut s = std::pin::pin!(
            reflector::reflector(svc_writer, watcher(svc_api, watcher::Config::default()))
                .default_backoff()
                .touched_objects()
        );
        while s.next().await.is_some() {}
    });

    // Wait for the first list of Services so new pods get their variables.
    shared.services.wait_until_ready().await.ok();

    // Pods bound to this node.
    let pod_api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", config.node));
    let events = reflector::reflector(pod_writer, watcher(pod_api, cfg)).default_backoff();
    let pleg = tokio::spawn(relist(shared.clone(), workers.clone(), config.ipam.clone()));
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Apply(p) | watcher::Event::Delete(p)) => {
                if let (Some(uid), Some(ns), Some(name)) =
                    (&p.metadata.uid, &p.metadata.namespace, &p.metadata.name)
                {
                    spawn_worker(&shared, &workers, uid, ns, name);
                }
            }
            Ok(watcher::Event::InitDone) => {
                // The store shows a (re)list only now: until then it holds
                // the previous one, empty after a restart, and a worker
                // started on a listed pod would find no pod and tear down
                // its running containers. So every pod of the list gets
                // its worker here, and the other workers look again: a
                // relist may have dropped pods deleted while we were away.
                for w in workers.lock().unwrap_or_else(|p| p.into_inner()).values() {
                    w.notify_one();
                }
                for p in shared.pods.state() {
                    if let (Some(uid), Some(ns), Some(name)) =
                        (&p.metadata.uid, &p.metadata.namespace, &p.metadata.name)
                    {
                        spawn_worker(&shared, &workers, uid, ns, name);
                    }
                }
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(e) => tracing::warn!(error = %e, "watching pods"),
        }
    }
    pleg.abort();
    Ok(())
}

/// Relist CRI every second; wake workers whose containers changed, and
/// start workers for sandboxes no pod owns (orphans from deleted pods).
async fn relist(shared: Arc<Shared>, workers: Workers, ipam: Option<(PathBuf, ipnet::Ipv4Net)>) {
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut rounds: u64 = 0;
    // Orphans are only judged once the pod list has arrived.
    let _ = shared.pods.wait_until_ready().await;
    let mut tick = tokio::time::interval(RELIST);
    loop {
        tick.tick().await;
        let mut cri = shared.cri.clone();
        let Ok(sandboxes) = cri
            .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
            .await
        else {
            continue;
        };
        let Ok(containers) = cri
            .list_containers(v1::ListContainersRequest { filter: None })
            .await
        else {
            continue;
        };
        let mut now: HashMap<String, std::collections::hash_map::DefaultHasher> = HashMap::new();
        let mut names: HashMap<String, (String, String)> = HashMap::new();
        let sandboxes = sandboxes.into_inner().items;
        let live_sandboxes: HashSet<String> = sandboxes.iter().map(|s| s.id.clone()).collect();
        for s in sandboxes {
            let Some(uid) = s.labels.get(POD_UID).cloned() else {
                continue;
            };
            let h = now.entry(uid.clone()).or_default();
            (&s.id, s.state).hash(h);
            names.insert(
                uid,
                (
                    s.labels.get(POD_NAMESPACE).cloned().unwrap_or_default(),
                    s.labels.get(POD_NAME).cloned().unwrap_or_default(),
                ),
            );
        }
        for c in containers.into_inner().containers {
            let Some(uid) = c.labels.get(POD_UID).cloned() else {
                continue;
            };
            (&c.id, c.state).hash(now.entry(uid).or_default());
        }
        rounds += 1;
        if rounds.is_multiple_of(IP_GC_ROUNDS)
            && let Some((dir, cidr)) = &ipam
        {
            release_orphan_ips(dir, *cidr, &live_sandboxes);
        }
        let now: HashMap<String, u64> = now.into_iter().map(|(k, h)| (k, h.finish())).collect();
        let known: HashSet<String> = shared
            .pods
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        for (uid, h) in &now {
            if last.get(uid) == Some(h) {
                continue;
            }
            let running = workers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(uid)
                .cloned();
            match running {
                Some(w) => w.notify_one(),
                None if !known.contains(uid) => {
                    let (ns, name) = names.get(uid).cloned().unwrap_or_default();
                    tracing::info!(uid, pod = %format!("{ns}/{name}"), "cleaning up an orphaned pod sandbox");
                    spawn_worker(&shared, &workers, uid, &ns, &name);
                }
                None => {}
            }
        }
        last = now;
    }
}
