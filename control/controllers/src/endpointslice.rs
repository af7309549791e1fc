//! The EndpointSlice controller, which also keeps the legacy core/v1
//! Endpoints for older clients.
//!
//! For every Service with a selector, the pods it selects become endpoints:
//! with their address, node, zone and conditions (`ready`, `serving`,
//! `terminating`), and the Service's ports resolved per pod (a named target
//! port may be a different number in different pods, and each distinct set
//! of ports gets its own slices). A slice holds at most 100 endpoints.
//! Services without a selector keep Endpoints someone else writes (the API
//! server writes those of its own `kubernetes` Service); those are mirrored
//! into slices of their own, as upstream's EndpointSliceMirroring does, so
//! a consumer of slices alone (the node agent) sees every Service.
//!
//! Churn is kept low: existing slices are updated in place, endpoints stay
//! in the slice they are in, new ones fill free room before a slice is
//! created, and nothing is written that would not change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::future::ready;
use futures::stream::{self, BoxStream};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, Node, ObjectReference,
    Pod, Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kestrel_api::labels;
use kestrel_client::events::{EventType, Recorder};
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::controller::{ReconcileRequest, applier, trigger_self};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::CancelableJoinHandle;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::manager::{
    Backoff, Error, Result, drive, is_conflict, is_not_found, only_uid, reflect, wait_ready,
};

/// Label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// [`MANAGED_BY_LABEL`] of slices mirrored from the Endpoints of a Service
/// without a selector.
pub const MIRRORED_BY: &str = "endpointslicemirroring-controller.k8s.io";
/// Label on Endpoints that must not be mirrored into slices.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Label upstream's endpoints controller puts on the Endpoints it manages.
pub const ENDPOINTS_MANAGED_BY_LABEL: &str = "endpoints.kubernetes.io/managed-by";
/// Its value.
pub const ENDPOINTS_MANAGED_BY: &str = "endpoint-controller";
/// Label marking the slices and Endpoints of a headless Service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Most addresses in one Endpoints object, as upstream's.
pub const MAX_ENDPOINTS_ADDRESSES: usize = 1000;
/// Annotation on an Endpoints object that had to drop addresses.
pub const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Most endpoints in one slice (upstream's `--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Node label holding the zone.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// How long a reconcile waits for the caches to show its own last writes.
const SETTLE: Duration = Duration::from_secs(3);

struct Ctx {
    client: kube::Client,
    services: Store<Service>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
    endpoints: Store<Endpoints>,
    /// Per Service: what our last writes should look like in the caches.
    written: Mutex<HashMap<(String, String), Vec<Expect>>>,
    recorder: Recorder,
    backoff: Backoff<(String, String)>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").finish_non_exhaustive()
    }
}

/// A write the caches have yet to show.
#[derive(Debug, Clone)]
enum Expect {
    Slice(String, Option<u64>),
    Endpoints(String, Option<u64>),
}

/// Run the EndpointSlice (and Endpoints) controller.
pub async fn run(client: kube::Client) -> Result<()> {
    let cfg = watcher::Config::default;
    let (pods, pod_stream) = reflect(Api::<Pod>::all(client.clone()), cfg());
    let (nodes, node_stream) = reflect(Api::<Node>::all(client.clone()), cfg());
    // Every Endpoints: ours, and those of Services without a selector,
    // which are mirrored into slices.
    let (endpoints, ep_stream) = reflect(Api::<Endpoints>::all(client.clone()), cfg());
    let (slices, slice_stream) = reflect(
        Api::<EndpointSlice>::all(client.clone()),
        cfg().labels(MANAGED_BY_LABEL),
    );
    // Services through our own reflector: its stream triggers reconciles,
    // and its deletions (which a reconcile never sees) reach the Endpoints
    // sweeper.
    let (services, svc_writer) = reflector::store();
    let (gone_tx, gone_rx) = mpsc::unbounded_channel();
    let svc_stream = watcher(Api::<Service>::all(client.clone()), cfg())
        .default_backoff()
        .reflect(svc_writer)
        .inspect(move |ev| match ev {
            Ok(watcher::Event::Delete(s)) => {
                let _ = gone_tx.send(Some((s.namespace().unwrap_or_default(), s.name_any())));
            }
            Ok(watcher::Event::InitDone) => {
                let _ = gone_tx.send(None);
            }
            _ => {}
        })
        .touched_objects();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        services: services.clone(),
        pods,
        nodes,
        slices,
        endpoints,
        written: Mutex::default(),
        recorder: Recorder::new(client, "endpointslice-controller", None),
        backoff: Backoff::default(),
    });

    // The queue: every watched change, mapped to the Services it concerns.
    type Queue = BoxStream<'static, Result<ReconcileRequest<Service>, watcher::Error>>;
    let request = |r: ObjectRef<Service>| Ok(ReconcileRequest::from(r));
    let m = ctx.clone();
    let pod_refs = pod_stream
        .filter_map(move |p| ready(p.ok().map(|p| stream::iter(services_for_pod(&m, &p)))))
        .flatten()
        .map(request);
    let slice_refs = slice_stream.filter_map(move |s| {
        ready(s.ok().and_then(|s| {
            let svc = s.labels().get(SERVICE_NAME_LABEL)?.clone();
            Some(request(
                ObjectRef::new(&svc).within(&s.namespace().unwrap_or_default()),
            ))
        }))
    });
    let ep_refs = ep_stream.filter_map(move |e| {
        ready(e.ok().map(|e| {
            request(ObjectRef::new(&e.name_any()).within(&e.namespace().unwrap_or_default()))
        }))
    });
    // A node's zone label is copied into endpoints: a change resyncs all.
    let all = services.clone();
    let zone_changes = {
        let mut zones: HashMap<String, Option<String>> = HashMap::new();
        node_stream
            .filter_map(move |n| {
                let changed = match n {
                    Ok(n) => {
                        let zone = n.labels().get(ZONE_LABEL).cloned();
                        zones.insert(n.name_any(), zone.clone()) != Some(zone)
                    }
                    Err(_) => false,
                };
                ready(changed.then(|| {
                    stream::iter(
                        all.state()
                            .iter()
                            .map(|s| ObjectRef::from_obj(&**s))
                            .collect::<Vec<_>>(),
                    )
                }))
            })
            .flatten()
            .map(request)
    };
    let queue: Vec<Queue> = vec![
        trigger_self(svc_stream, ()).boxed(),
        pod_refs.boxed(),
        slice_refs.boxed(),
        ep_refs.boxed(),
        zone_changes.boxed(),
    ];
    let results = applier(
        |svc, ctx| CancelableJoinHandle::spawn(reconcile(svc, ctx), &Handle::current()),
        error_policy,
        ctx.clone(),
        services,
        stream::select_all(queue),
        kube::runtime::controller::Config::default(),
    );
    tokio::join!(
        drive(results, "endpointslice-controller"),
        sweep_endpoints(ctx, gone_rx),
    );
    Ok(())
}

/// The Services a pod change can matter to: those that select it now and
/// those whose slices still list it (its labels may have changed, or it
/// may be gone).
fn services_for_pod(ctx: &Ctx, pod: &Pod) -> Vec<ObjectRef<Service>> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let mut out: HashSet<String> = ctx
        .services
        .state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(&ns))
        .filter(|s| selector(s).is_some_and(|sel| selects(sel, pod)))
        .map(|s| s.name_any())
        .collect();
    for sl in ctx.slices.state() {
        if sl.namespace().as_deref() != Some(&ns) {
            continue;
        }
        let lists = sl.endpoints.iter().flatten().any(|e| {
            e.target_ref
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(&name))
        });
        if lists && let Some(svc) = sl.labels().get(SERVICE_NAME_LABEL) {
            out.insert(svc.clone());
        }
    }
    out.into_iter()
        .map(|s| ObjectRef::new(&s).within(&ns))
        .collect()
}

/// The selector of a Service this controller manages: one with a
/// selector, and not of type ExternalName (a DNS name has no endpoints).
fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    if external_name(svc) {
        return None;
    }
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

fn external_name(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName")
}

fn selects(sel: &BTreeMap<String, String>, pod: &Pod) -> bool {
    labels::set_matches(sel, pod.labels())
}

fn error_policy(svc: Arc<Service>, e: &Error, ctx: Arc<Ctx>) -> Action {
    tracing::warn!(service = %svc.name_any(), namespace = ?svc.namespace(), error = %e, "syncing endpoints failed");
    ctx.backoff
        .failed((svc.namespace().unwrap_or_default(), svc.name_any()))
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let key = (ns.clone(), name.clone());
    if svc.metadata.deletion_timestamp.is_some() || external_name(&svc) {
        return Ok(Action::await_change());
    }
    // Many reconciles wait at once: see `wait_ready`.
    wait_ready(&ctx.pods).await?;
    wait_ready(&ctx.slices).await?;
    wait_ready(&ctx.endpoints).await?;
    wait_ready(&ctx.nodes).await?;
    ctx.settle(&key).await;

    let Some(sel) = selector(&svc) else {
        let mut expects = Vec::new();
        let res = mirror(&ctx, &svc, &mut expects).await;
        ctx.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), expects);
        res?;
        ctx.backoff.succeeded(&key);
        return Ok(Action::await_change());
    };
    let mut pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(&ns) && selects(sel, p))
        .collect();
    pods.sort_by_key(|p| p.name_any());

    let mut expects = Vec::new();
    let res = async {
        sync_slices(&ctx, &svc, &pods, &mut expects).await?;
        sync_endpoints(&ctx, &svc, &pods, &mut expects).await
    }
    .await;
    ctx.written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.clone(), expects);
    if let Err(Error::Kube(e)) = &res
        && !is_conflict(e)
        && !is_not_found(e)
    {
        ctx.recorder
            .publish(
                &*svc,
                EventType::Warning,
                "FailedToUpdateEndpointSlices",
                &format!("Error updating Endpoint Slices for Service {ns}/{name}: {e}"),
            )
            .await;
    }
    res?;
    ctx.backoff.succeeded(&key);
    Ok(Action::await_change())
}

impl Ctx {
    /// Wait (briefly) until the caches show this Service's last writes, so
    /// a reconcile never acts on a view older than its own output (which
    /// would create a slice twice).
    async fn settle(&self, key: &(String, String)) {
        let Some(expects) = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
        else {
            return;
        };
        let ns = &key.0;
        let deadline = Instant::now() + SETTLE;
        let seen = |e: &Expect| -> bool {
            let (rv, want) = match e {
                Expect::Slice(n, want) => (
                    self.slices
                        .get(&ObjectRef::new(n).within(ns))
                        .map(|o| rv(&o.metadata)),
                    want,
                ),
                Expect::Endpoints(n, want) => (
                    self.endpoints
                        .get(&ObjectRef::new(n).within(ns))
                        .map(|o| rv(&o.metadata)),
                    want,
                ),
            };
            match (rv, want) {
                (None, None) => true,
                (Some(have), Some(want)) => have >= *want,
                _ => false,
            }
        };
        while !expects.iter().all(seen) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A resourceVersion as a number (0 when absent or not one).
pub(crate) fn rv(m: &ObjectMeta) -> u64 {
    m.resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// One pod as an endpoint, before it is put in a slice.
struct PodEndpoint {
    ports: Vec<EndpointPort>,
    endpoint: Endpoint,
    ready: bool,
}

fn pod_ipv4(pod: &Pod) -> Option<String> {
    let st = pod.status.as_ref()?;
    st.pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(st.pod_ip.as_deref())
        .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_owned)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The container port a Service port's target means in this pod, if any.
pub fn resolve_target_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    let proto = sp.protocol.as_deref().unwrap_or("TCP");
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(s)) => {
            if let Ok(n) = s.parse::<i32>() {
                return Some(n);
            }
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(s.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto
                })
                .map(|p| p.container_port)
        }
    }
}

fn pod_endpoint(svc: &Service, pod: &Pod, node_zone: Option<String>) -> Option<PodEndpoint> {
    if pod_terminal(pod) {
        return None;
    }
    let ip = pod_ipv4(pod)?;
    let spec = svc.spec.as_ref()?;
    let publish = spec.publish_not_ready_addresses.unwrap_or(false);
    let serving = publish || pod_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = publish || (serving && !terminating);
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|sp| {
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(resolve_target_port(sp, pod)?),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect();
    let pod_spec = pod.spec.as_ref();
    let hostname = pod_spec
        .and_then(|s| Some((s.hostname.as_deref()?, s.subdomain.as_deref()?)))
        .filter(|(_, sub)| Some(*sub) == svc.metadata.name.as_deref())
        .map(|(h, _)| h.to_owned());
    let endpoint = Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname,
        node_name: pod_spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        target_ref: Some(pod_ref(pod)),
        zone: node_zone,
        ..Default::default()
    };
    Some(PodEndpoint {
        ports,
        endpoint,
        ready,
    })
}

fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".to_owned()),
        namespace: pod.namespace(),
        name: Some(pod.name_any()),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

fn endpoint_id(e: &Endpoint) -> String {
    e.target_ref
        .as_ref()
        .and_then(|r| r.name.clone())
        .unwrap_or_else(|| e.addresses.join(","))
}

fn ports_key(ports: &[EndpointPort]) -> String {
    serde_json::to_string(ports).unwrap_or_default()
}

fn owner_ref(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Service".to_owned(),
        name: svc.name_any(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The Service's labels, marked as managed by `managed_by` (and headless
/// when it is), for its slices and its Endpoints alike.
fn derived_labels(svc: &Service, managed_by: (&str, &str)) -> BTreeMap<String, String> {
    let mut l = svc.labels().clone();
    l.remove(HEADLESS_LABEL);
    l.insert(managed_by.0.to_owned(), managed_by.1.to_owned());
    if headless(svc) {
        l.insert(HEADLESS_LABEL.to_owned(), String::new());
    }
    l
}

/// What one slice should hold.
#[derive(Debug, Clone, PartialEq)]
pub struct SlicePlan {
    /// The existing slice to update, or `None` to create one.
    pub existing: Option<String>,
    /// Its ports.
    pub ports: Vec<EndpointPort>,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// Distribute `wanted` (endpoints grouped by their ports, in a stable
/// order) over `current` slices (name, ports, endpoints): endpoints stay
/// where they are, new ones fill free room, then new slices are planned.
/// Returns the slices to keep or create and the names of those to delete.
pub fn plan_slices(
    current: &[(String, Vec<EndpointPort>, Vec<Endpoint>)],
    wanted: &BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)>,
    max: usize,
) -> (Vec<SlicePlan>, Vec<String>) {
    let mut plans: Vec<SlicePlan> = Vec::new();
    let mut delete = Vec::new();
    for (key, (ports, eps)) in wanted {
        let mut remaining: Vec<Option<&Endpoint>> = eps.iter().map(Some).collect();
        let index: HashMap<String, usize> = eps
            .iter()
            .enumerate()
            .map(|(i, e)| (endpoint_id(e), i))
            .collect();
        let first = plans.len();
        for (name, cur_ports, cur_eps) in current {
            if &ports_key(cur_ports) != key {
                continue;
            }
            let mut kept = Vec::new();
            for e in cur_eps {
                if let Some(&i) = index.get(&endpoint_id(e))
                    && let Some(w) = remaining[i].take()
                {
                    kept.push(w.clone());
                }
            }
            plans.push(SlicePlan {
                existing: Some(name.clone()),
                ports: ports.clone(),
                endpoints: kept,
            });
        }
        let mut rest = remaining.into_iter().flatten().cloned();
        // Fill the fullest slices first: fewer, fuller slices.
        let mut order: Vec<usize> = (first..plans.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(plans[i].endpoints.len()));
        for i in order {
            while plans[i].endpoints.len() < max {
                match rest.next() {
                    Some(e) => plans[i].endpoints.push(e),
                    None => break,
                }
            }
        }
        let rest: Vec<Endpoint> = rest.collect();
        for chunk in rest.chunks(max) {
            plans.push(SlicePlan {
                existing: None,
                ports: ports.clone(),
                endpoints: chunk.to_vec(),
            });
        }
    }
    // Slices left empty go, and so do slices whose ports no longer exist.
    let mut keep = Vec::new();
    for p in plans {
        if p.endpoints.is_empty() {
            if let Some(n) = p.existing {
                delete.push(n);
            }
        } else {
            keep.push(p);
        }
    }
    for (name, cur_ports, _) in current {
        if !wanted.contains_key(&ports_key(cur_ports)) {
            delete.push(name.clone());
        }
    }
    // A Service without endpoints keeps one empty placeholder slice, as
    // upstream's, so clients can tell "no endpoints" from "not synced".
    if keep.is_empty() {
        let reuse = current
            .iter()
            .find(|(_, p, e)| p.is_empty() && e.is_empty())
            .or_else(|| current.first())
            .map(|(n, ..)| n.clone());
        delete.retain(|n| Some(n) != reuse.as_ref());
        keep.push(SlicePlan {
            existing: reuse,
            ports: Vec::new(),
            endpoints: Vec::new(),
        });
    }
    delete.sort();
    delete.dedup();
    (keep, delete)
}

type Wanted = BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)>;

async fn sync_slices(
    ctx: &Ctx,
    svc: &Service,
    pods: &[Arc<Pod>],
    expects: &mut Vec<Expect>,
) -> Result<()> {
    let mut wanted = Wanted::new();
    for pod in pods {
        let zone = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .and_then(|n| ctx.nodes.get(&ObjectRef::new(n)))
            .and_then(|n| n.labels().get(ZONE_LABEL).cloned());
        if let Some(pe) = pod_endpoint(svc, pod, zone) {
            wanted
                .entry(ports_key(&pe.ports))
                .or_insert_with(|| (pe.ports.clone(), Vec::new()))
                .1
                .push(pe.endpoint);
        }
    }
    write_slices(ctx, svc, &wanted, MANAGED_BY, expects).await
}

/// Upstream's EndpointSliceMirroring: a Service without a selector whose
/// endpoints are kept by hand (or by the API server, for `kubernetes`)
/// gets slices mirroring its Endpoints, so consumers of slices alone (the
/// node agent's dataplane) see it too.
async fn mirror(ctx: &Ctx, svc: &Service, expects: &mut Vec<Expect>) -> Result<()> {
    let ns = svc.namespace().unwrap_or_default();
    let ep = ctx
        .endpoints
        .get(&ObjectRef::new(&svc.name_any()).within(&ns))
        .filter(|e| {
            e.labels().get(SKIP_MIRROR_LABEL).map(String::as_str) != Some("true")
                && !e.labels().contains_key(ENDPOINTS_MANAGED_BY_LABEL)
        });
    let wanted = ep.map(|e| mirrored(&e)).unwrap_or_default();
    write_slices(ctx, svc, &wanted, MIRRORED_BY, expects).await
}

/// Endpoints subsets as slice endpoints, grouped by port set.
fn mirrored(ep: &Endpoints) -> Wanted {
    let mut wanted = Wanted::new();
    for subset in ep.subsets.iter().flatten() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let addrs = [
            (&subset.addresses, true),
            (&subset.not_ready_addresses, false),
        ];
        for (list, ready) in addrs {
            for a in list.iter().flatten() {
                if a.ip.parse::<std::net::Ipv4Addr>().is_err() {
                    continue;
                }
                let e = Endpoint {
                    addresses: vec![a.ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(ready),
                        terminating: Some(false),
                    }),
                    hostname: a.hostname.clone(),
                    node_name: a.node_name.clone(),
                    target_ref: a.target_ref.clone(),
                    ..Default::default()
                };
                wanted
                    .entry(ports_key(&ports))
                    .or_insert_with(|| (ports.clone(), Vec::new()))
                    .1
                    .push(e);
            }
        }
    }
    wanted
}

/// Make the Service's slices managed by `managed_by` hold `wanted`.
async fn write_slices(
    ctx: &Ctx,
    svc: &Service,
    wanted: &Wanted,
    managed_by: &str,
    expects: &mut Vec<Expect>,
) -> Result<()> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    let mut existing: Vec<Arc<EndpointSlice>> = ctx
        .slices
        .state()
        .into_iter()
        .filter(|s| {
            s.namespace().as_deref() == Some(&ns)
                && s.labels().get(SERVICE_NAME_LABEL) == Some(&name)
                && s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(managed_by)
                && s.owner_references().iter().any(|o| o.uid == uid)
        })
        .collect();
    existing.sort_by_key(|s| s.name_any());
    let current: Vec<(String, Vec<EndpointPort>, Vec<Endpoint>)> = existing
        .iter()
        .map(|s| {
            (
                s.name_any(),
                s.ports.clone().unwrap_or_default(),
                s.endpoints.clone().unwrap_or_default(),
            )
        })
        .collect();
    let (plans, delete) = if wanted.is_empty() && managed_by == MIRRORED_BY {
        // Nothing to mirror: no placeholder, as upstream.
        (Vec::new(), current.iter().map(|c| c.0.clone()).collect())
    } else {
        plan_slices(&current, wanted, MAX_ENDPOINTS_PER_SLICE)
    };
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let mut labels = derived_labels(svc, (MANAGED_BY_LABEL, managed_by));
    labels.insert(SERVICE_NAME_LABEL.to_owned(), name.clone());
    let owner = owner_ref(svc);
    // Creates and updates before deletes, so no endpoint is ever missing
    // from every slice while it moves.
    for p in plans {
        let desired = |meta: ObjectMeta| EndpointSlice {
            metadata: meta,
            address_type: "IPv4".to_owned(),
            endpoints: Some(p.endpoints.clone()),
            ports: Some(p.ports.clone()),
        };
        match p.existing {
            Some(n) => {
                let Some(cur) = existing.iter().find(|s| s.name_any() == n) else {
                    continue;
                };
                let mut meta = cur.metadata.clone();
                meta.labels = Some(labels.clone());
                if !meta.owner_references.iter().flatten().any(|o| o.uid == uid) {
                    meta.owner_references = Some(vec![owner.clone()]);
                }
                let want = desired(meta);
                if slice_same(cur, &want) {
                    continue;
                }
                let out = api.replace(&n, &PostParams::default(), &want).await?;
                expects.push(Expect::Slice(n, Some(rv(&out.metadata))));
            }
            None => {
                let want = desired(ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    namespace: Some(ns.clone()),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                });
                let out = api.create(&PostParams::default(), &want).await?;
                expects.push(Expect::Slice(out.name_any(), Some(rv(&out.metadata))));
            }
        }
    }
    for n in delete {
        let uid = existing
            .iter()
            .find(|s| s.name_any() == n)
            .and_then(|s| s.metadata.uid.clone());
        match api.delete(&n, &only_uid(uid)).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        expects.push(Expect::Slice(n, None));
    }
    Ok(())
}

fn slice_same(cur: &EndpointSlice, want: &EndpointSlice) -> bool {
    cur.address_type == want.address_type
        && cur.endpoints.clone().unwrap_or_default() == want.endpoints.clone().unwrap_or_default()
        && cur.ports.clone().unwrap_or_default() == want.ports.clone().unwrap_or_default()
        && cur.metadata.labels == want.metadata.labels
        && cur.metadata.owner_references == want.metadata.owner_references
}

/// The legacy Endpoints subsets: one per distinct set of ports, ready
/// addresses apart from not-ready ones, sorted so equal content compares
/// equal.
fn endpoint_subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    // Per port set: the ports, ready addresses, not-ready addresses.
    type Subset = (Vec<CorePort>, Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut groups: BTreeMap<String, Subset> = BTreeMap::new();
    for pod in pods {
        // Terminating pods are left out unless not-ready ones are published.
        if pod.metadata.deletion_timestamp.is_some() && !publish {
            continue;
        }
        let Some(pe) = pod_endpoint(svc, pod, None) else {
            continue;
        };
        let addr = EndpointAddress {
            ip: pe.endpoint.addresses[0].clone(),
            hostname: pe.endpoint.hostname.clone(),
            node_name: pe.endpoint.node_name.clone(),
            target_ref: pe.endpoint.target_ref.clone(),
        };
        let mut ports: Vec<CorePort> = pe
            .ports
            .iter()
            .map(|p| CorePort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: p.port.unwrap_or_default(),
                protocol: p.protocol.clone(),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        ports.sort_by(|a, b| (&a.name, a.port).cmp(&(&b.name, b.port)));
        let g = groups
            .entry(serde_json::to_string(&ports).unwrap_or_default())
            .or_insert_with(|| (ports, Vec::new(), Vec::new()));
        if pe.ready {
            g.1.push(addr);
        } else {
            g.2.push(addr);
        }
    }
    groups
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            for v in [&mut ready, &mut not_ready] {
                v.sort_by(|a, b| {
                    (&a.ip, &a.target_ref.as_ref().map(|r| &r.name))
                        .cmp(&(&b.ip, &b.target_ref.as_ref().map(|r| &r.name)))
                });
            }
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

/// Keep at most `max` addresses, ready ones first, as upstream's endpoints
/// controller caps an Endpoints object. Returns whether any were dropped.
fn truncate_subsets(subsets: &mut Vec<EndpointSubset>, max: usize) -> bool {
    let count = |v: &Option<Vec<EndpointAddress>>| v.as_ref().map_or(0, Vec::len);
    let total: usize = subsets
        .iter()
        .map(|s| count(&s.addresses) + count(&s.not_ready_addresses))
        .sum();
    if total <= max {
        return false;
    }
    let mut left = max;
    for ready in [true, false] {
        for s in subsets.iter_mut() {
            let list = if ready {
                &mut s.addresses
            } else {
                &mut s.not_ready_addresses
            };
            if let Some(v) = list {
                v.truncate(left);
                left -= v.len();
                if v.is_empty() {
                    *list = None;
                }
            }
        }
    }
    subsets.retain(|s| s.addresses.is_some() || s.not_ready_addresses.is_some());
    true
}

async fn sync_endpoints(
    ctx: &Ctx,
    svc: &Service,
    pods: &[Arc<Pod>],
    expects: &mut Vec<Expect>,
) -> Result<()> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let mut subsets = endpoint_subsets(svc, pods);
    let truncated = truncate_subsets(&mut subsets, MAX_ENDPOINTS_ADDRESSES);
    let labels = derived_labels(svc, (ENDPOINTS_MANAGED_BY_LABEL, ENDPOINTS_MANAGED_BY));
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    // The store only holds Endpoints with our label; one without it (made
    // by hand, or before this controller ran) is taken over.
    let cur = match ctx.endpoints.get(&ObjectRef::new(&name).within(&ns)) {
        Some(e) => Some((*e).clone()),
        None => api.get_opt(&name).await?,
    };
    let want_subsets = (!subsets.is_empty()).then_some(subsets);
    let out = match cur {
        Some(cur) => {
            let mut annotations = cur.metadata.annotations.clone().unwrap_or_default();
            if truncated {
                annotations.insert(OVER_CAPACITY.to_owned(), "truncated".to_owned());
            } else {
                annotations.remove(OVER_CAPACITY);
            }
            let annotations = (!annotations.is_empty()).then_some(annotations);
            if cur.subsets == want_subsets
                && cur.metadata.labels.as_ref() == Some(&labels)
                && cur.metadata.annotations == annotations
            {
                return Ok(());
            }
            let mut want = cur.clone();
            want.metadata.labels = Some(labels);
            want.metadata.annotations = annotations;
            want.subsets = want_subsets;
            api.replace(&name, &PostParams::default(), &want).await?
        }
        None => {
            let want = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: truncated
                        .then(|| [(OVER_CAPACITY.to_owned(), "truncated".to_owned())].into()),
                    ..Default::default()
                },
                subsets: want_subsets,
            };
            api.create(&PostParams::default(), &want).await?
        }
    };
    expects.push(Expect::Endpoints(name, Some(rv(&out.metadata))));
    Ok(())
}

/// Endpoints have no owner reference (as upstream's), so the Endpoints of a
/// deleted Service are deleted here: on the Service's delete event, and on
/// every full resync for those a missed event left behind.
async fn sweep_endpoints(
    ctx: Arc<Ctx>,
    mut gone: mpsc::UnboundedReceiver<Option<(String, String)>>,
) {
    while let Some(which) = gone.recv().await {
        if wait_ready(&ctx.endpoints).await.is_err() {
            return;
        }
        // Only ours: hand-made Endpoints may exist without a Service.
        let ours = |e: &Endpoints| {
            e.labels()
                .get(ENDPOINTS_MANAGED_BY_LABEL)
                .map(String::as_str)
                == Some(ENDPOINTS_MANAGED_BY)
        };
        let candidates: Vec<(String, String, Option<String>)> = match which {
            Some((ns, name)) => ctx
                .endpoints
                .get(&ObjectRef::new(&name).within(&ns))
                .filter(|e| ours(e))
                .map(|e| vec![(ns, name, e.metadata.uid.clone())])
                .unwrap_or_default(),
            None => ctx
                .endpoints
                .state()
                .iter()
                .filter(|e| ours(e))
                .map(|e| {
                    (
                        e.namespace().unwrap_or_default(),
                        e.name_any(),
                        e.metadata.uid.clone(),
                    )
                })
                .collect(),
        };
        for (ns, name, uid) in candidates {
            if ctx
                .services
                .get(&ObjectRef::new(&name).within(&ns))
                .is_some()
            {
                continue;
            }
            // The cache may trail: ask the server before deleting.
            let svcs: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
            match svcs.get_opt(&name).await {
                Ok(None) => {}
                Ok(Some(_)) => continue,
                Err(e) => {
                    tracing::warn!(namespace = %ns, service = %name, error = %e, "cannot check for the Service of leftover Endpoints");
                    continue;
                }
            }
            let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
            match api.delete(&name, &only_uid(uid)).await {
                Ok(_) => {
                    tracing::debug!(namespace = %ns, endpoints = %name, "deleted Endpoints of a deleted Service")
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    tracing::warn!(namespace = %ns, endpoints = %name, error = %e, "deleting leftover Endpoints failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
