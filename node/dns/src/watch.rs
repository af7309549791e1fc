//! Services and EndpointSlices from the API server into the [`Zone`]: two
//! kube-rs watchers whose events are turned at once into the compact
//! records the zone keeps, so the agent holds no copy of the objects.
//!
//! A relist (the first list, or after a watch expired) is gathered whole
//! and swapped in, so a query never sees a half-listed zone, and objects
//! gone during a disconnect leave with it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::watch;

use crate::zone::{EndpointInfo, PortInfo, ServiceInfo, ServiceKind, SliceInfo, Zone};

/// The label naming a slice's Service.
const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// What DNS needs of a Service.
pub fn service_info(svc: &Service) -> Option<ServiceInfo> {
    let spec = svc.spec.as_ref()?;
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        ServiceKind::ExternalName(spec.external_name.clone().unwrap_or_default())
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        let mut ips: Vec<Ipv4Addr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.sort_unstable();
        ips.dedup();
        ServiceKind::ClusterIp(ips)
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| PortInfo {
            name: p.name.clone().unwrap_or_default().to_ascii_lowercase(),
            protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
            port: u16::try_from(p.port).unwrap_or(0),
        })
        .collect();
    Some(ServiceInfo {
        kind,
        ports,
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
    })
}

/// What DNS needs of an EndpointSlice (IPv4 slices only), and the Service
/// it belongs to.
pub fn slice_info(slice: &EndpointSlice) -> Option<(String, SliceInfo)> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME)?.clone();
    if slice.address_type != "IPv4" {
        return None;
    }
    let endpoints = slice
        .endpoints
        .iter()
        .flatten()
        .map(|e| EndpointInfo {
            addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            hostname: e.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
        })
        .collect();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .map(|p| PortInfo {
            name: p.name.clone().unwrap_or_default().to_ascii_lowercase(),
            protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
            port: p.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
        })
        .collect();
    Some((service, SliceInfo { endpoints, ports }))
}

/// The zone shared by the watchers and the server.
pub type SharedZone = Arc<RwLock<Zone>>;

/// How far the watchers have got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchProgress {
    /// Both kinds have been listed in full at least once.
    pub synced: bool,
    /// When the zone last changed.
    pub changed: Option<Instant>,
}

fn write(zone: &SharedZone) -> std::sync::RwLockWriteGuard<'_, Zone> {
    zone.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A kind the zone is fed from: how an object becomes its compact record,
/// how that is filed, and what taking it back needs.
trait DnsKind:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + 'static
{
    /// The compact record.
    type Info: Send;
    /// What removal needs besides the object's key.
    type Token: Send;
    fn info(&self) -> Self::Info;
    fn file(z: &mut Zone, ns: &str, name: &str, info: Self::Info) -> Self::Token;
    fn unfile(z: &mut Zone, ns: &str, name: &str, token: Self::Token);
}

impl DnsKind for Service {
    type Info = Option<ServiceInfo>;
    type Token = ();
    fn info(&self) -> Self::Info {
        service_info(self)
    }
    fn file(z: &mut Zone, ns: &str, name: &str, info: Self::Info) {
        z.set_service(ns, name, info);
    }
    fn unfile(z: &mut Zone, ns: &str, name: &str, (): ()) {
        z.set_service(ns, name, None);
    }
}

impl DnsKind for EndpointSlice {
    /// The Service it belongs to, and its endpoints (none for a slice DNS
    /// does not use, such as IPv6).
    type Info = Option<(String, Option<SliceInfo>)>;
    /// The Service it was filed under.
    type Token = Option<String>;
    fn info(&self) -> Self::Info {
        let svc = self.metadata.labels.as_ref()?.get(SERVICE_NAME)?.clone();
        Some((svc, slice_info(self).map(|(_, i)| i)))
    }
    fn file(z: &mut Zone, ns: &str, name: &str, info: Self::Info) -> Self::Token {
        let (svc, info) = info?;
        z.set_slice(ns, &svc, name, info);
        Some(svc)
    }
    fn unfile(z: &mut Zone, ns: &str, name: &str, token: Self::Token) {
        if let Some(svc) = token {
            z.set_slice(ns, &svc, name, None);
        }
    }
}

type Key = (String, String);

/// Keeps `zone` equal to the cluster's Services and EndpointSlices until
/// the future is dropped.
pub async fn run(client: kube::Client, zone: SharedZone, progress: watch::Sender<WatchProgress>) {
    let listed = Arc::new(std::sync::Mutex::new([false; 2]));
    let services = watch_kind::<Service>(
        Api::all(client.clone()),
        zone.clone(),
        progress.clone(),
        listed.clone(),
        0,
    );
    let slices = watch_kind::<EndpointSlice>(Api::all(client), zone, progress, listed, 1);
    futures::join!(services, slices);
}

/// One watcher, filing each event's compact record.
async fn watch_kind<K: DnsKind>(
    api: Api<K>,
    zone: SharedZone,
    progress: watch::Sender<WatchProgress>,
    listed: Arc<std::sync::Mutex<[bool; 2]>>,
    which: usize,
) {
    // What each object was filed under, so a delete (or a relist that no
    // longer returns it) takes back exactly that.
    let mut filed: HashMap<Key, K::Token> = HashMap::new();
    let mut relist: Option<Vec<(Key, K::Info)>> = None;
    let events = watcher(api, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    let key = |o: &K| {
        let m = o.meta();
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(o)) => {
                let k = key(&o);
                let info = o.info();
                let mut z = write(&zone);
                if let Some(old) = filed.remove(&k) {
                    K::unfile(&mut z, &k.0, &k.1, old);
                }
                let token = K::file(&mut z, &k.0, &k.1, info);
                drop(z);
                filed.insert(k, token);
                changed(&progress);
            }
            Ok(watcher::Event::Delete(o)) => {
                let k = key(&o);
                if let Some(old) = filed.remove(&k) {
                    K::unfile(&mut write(&zone), &k.0, &k.1, old);
                }
                changed(&progress);
            }
            Ok(watcher::Event::Init) => relist = Some(Vec::new()),
            Ok(watcher::Event::InitApply(o)) => {
                if let Some(r) = relist.as_mut() {
                    r.push((key(&o), o.info()));
                }
            }
            Ok(watcher::Event::InitDone) => {
                let fresh = relist.take().unwrap_or_default();
                let mut z = write(&zone);
                for (k, old) in filed.drain() {
                    K::unfile(&mut z, &k.0, &k.1, old);
                }
                for (k, info) in fresh {
                    let token = K::file(&mut z, &k.0, &k.1, info);
                    filed.insert(k, token);
                }
                drop(z);
                let all = {
                    let mut l = listed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    l[which] = true;
                    l.iter().all(|x| *x)
                };
                progress.send_modify(|p| {
                    p.synced |= all;
                    p.changed = Some(Instant::now());
                });
            }
            Err(e) => tracing::warn!(error = %e, kind = %K::kind(&()), "DNS watch"),
        }
    }
}

fn changed(progress: &watch::Sender<WatchProgress>) {
    progress.send_modify(|p| p.changed = Some(Instant::now()));
}
