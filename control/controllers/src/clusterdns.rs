//! The cluster DNS endpoints: every node agent serves DNS on its node's
//! InternalIP, port 53 over UDP and TCP, so the endpoints of the
//! `kube-system/kube-dns` Service (created by the API server, without a
//! selector, with `internalTrafficPolicy: Local`) are the nodes themselves.
//! Each node's service proxy then sends a pod's queries to its own node.
//!
//! This controller writes the legacy core/v1 Endpoints `kube-dns`: one
//! address per Node with an IPv4 InternalIP, with `nodeName`, ready exactly
//! when the Node's Ready condition is True (not-ready ones go to
//! `notReadyAddresses`), and the ports `dns` 53/UDP and `dns-tcp` 53/TCP.
//! The EndpointSliceMirroring half of the EndpointSlice controller turns
//! it into the slice the node agents read (copying `nodeName` and
//! readiness), so `kubectl get endpoints` and `kubectl get endpointslices`
//! agree by construction and the slice has one writer.
//!
//! Nothing is written while the Service is missing, when it has been given
//! a selector (its endpoints are then the EndpointSlice controller's), or
//! when the Endpoints already hold what they should.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::future::ready;
use futures::stream::{self, BoxStream};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Node, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kestrel_client::events::{EventType, Recorder};
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, ReconcileRequest, applier, trigger_self};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::CancelableJoinHandle;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::runtime::Handle;

use crate::endpointslice::{ENDPOINTS_MANAGED_BY_LABEL, rv};
use crate::manager::{Backoff, Error, Result, drive, is_conflict, is_not_found, wait_ready};

/// Namespace of the cluster DNS Service.
pub const NAMESPACE: &str = "kube-system";
/// Name of the cluster DNS Service and of its Endpoints.
pub const SERVICE: &str = "kube-dns";
/// The port every node agent's DNS server listens on.
pub const DNS_PORT: i32 = 53;
/// The endpoint ports: name and protocol, all on [`DNS_PORT`].
pub const PORTS: [(&str, &str); 2] = [("dns", "UDP"), ("dns-tcp", "TCP")];
/// This controller's name in Events.
const COMPONENT: &str = "cluster-dns-controller";
/// How long a reconcile waits for the cache to show its own last write.
const SETTLE: Duration = Duration::from_secs(3);

struct Ctx {
    client: kube::Client,
    nodes: Store<Node>,
    endpoints: Store<Endpoints>,
    /// The resourceVersion of our last write, until the cache shows it.
    written: Mutex<Option<u64>>,
    recorder: Recorder,
    backoff: Backoff<()>,
}

/// What a Node contributes: its IPv4 InternalIP and whether it is Ready.
/// `None` for a Node without an InternalIP (it is left out).
fn node_endpoint(node: &Node) -> Option<(String, bool)> {
    let status = node.status.as_ref()?;
    let ip = status
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find(|a| a.address.parse::<Ipv4Addr>().is_ok())?
        .address
        .clone();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    Some((ip, ready))
}

/// Run the cluster DNS endpoints controller.
pub async fn run(client: kube::Client) -> Result<()> {
    let named = || watcher::Config::default().fields(&format!("metadata.name={SERVICE}"));
    let (services, svc_writer) = reflector::store();
    let svc_stream = watcher(
        Api::<Service>::namespaced(client.clone(), NAMESPACE),
        named(),
    )
    .default_backoff()
    .reflect(svc_writer)
    .touched_objects();
    let (endpoints, ep_writer) = reflector::store();
    let ep_stream = watcher(
        Api::<Endpoints>::namespaced(client.clone(), NAMESPACE),
        named(),
    )
    .default_backoff()
    .reflect(ep_writer)
    .touched_objects();
    let (nodes, node_writer) = reflector::store();
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer);
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        nodes,
        endpoints,
        written: Mutex::default(),
        recorder: Recorder::new(client, COMPONENT, None),
        backoff: Backoff::default(),
    });

    type Queue = BoxStream<'static, Result<ReconcileRequest<Service>, watcher::Error>>;
    let the_service = || {
        Ok(ReconcileRequest::from(
            ObjectRef::new(SERVICE).within(NAMESPACE),
        ))
    };
    // Node heartbeats change nothing here: only a Node's arrival, removal,
    // address or readiness triggers a pass (and every completed relist,
    // which may have missed deletions).
    let node_refs = {
        let mut seen: HashMap<String, Option<(String, bool)>> = HashMap::new();
        let mut relist: HashMap<String, Option<(String, bool)>> = HashMap::new();
        node_events.filter_map(move |ev| {
            let fire = match ev {
                Ok(watcher::Event::Apply(n)) => {
                    let now = node_endpoint(&n);
                    seen.insert(n.name_any(), now.clone()) != Some(now)
                }
                Ok(watcher::Event::Delete(n)) => {
                    seen.remove(&n.name_any());
                    true
                }
                Ok(watcher::Event::Init) => {
                    relist.clear();
                    false
                }
                Ok(watcher::Event::InitApply(n)) => {
                    relist.insert(n.name_any(), node_endpoint(&n));
                    false
                }
                Ok(watcher::Event::InitDone) => {
                    seen = std::mem::take(&mut relist);
                    true
                }
                Err(_) => false,
            };
            ready(fire.then(the_service))
        })
    };
    let ep_refs = ep_stream.filter_map(move |e| ready(e.ok().map(|_| the_service())));
    let queue: Vec<Queue> = vec![
        trigger_self(svc_stream, ()).boxed(),
        node_refs.boxed(),
        ep_refs.boxed(),
    ];
    let results = applier(
        |svc, ctx| CancelableJoinHandle::spawn(reconcile(svc, ctx), &Handle::current()),
        error_policy,
        ctx,
        services,
        stream::select_all(queue),
        kube::runtime::controller::Config::default(),
    );
    drive(results, COMPONENT).await;
    Ok(())
}

fn error_policy(_svc: Arc<Service>, e: &Error, ctx: Arc<Ctx>) -> Action {
    tracing::warn!(service = %format!("{NAMESPACE}/{SERVICE}"), error = %e, "syncing the cluster DNS endpoints failed");
    ctx.backoff.failed(())
}

/// Whether this controller keeps the Service's endpoints: one without a
/// selector that is not an ExternalName. A selector hands them to the
/// EndpointSlice controller.
fn ours(svc: &Service) -> bool {
    let Some(spec) = svc.spec.as_ref() else {
        return true;
    };
    spec.type_.as_deref() != Some("ExternalName")
        && spec.selector.as_ref().is_none_or(BTreeMap::is_empty)
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action> {
    if svc.metadata.deletion_timestamp.is_some() || !ours(&svc) {
        return Ok(Action::await_change());
    }
    wait_ready(&ctx.nodes).await?;
    wait_ready(&ctx.endpoints).await?;
    ctx.settle().await;

    let nodes = ctx.nodes.state();
    let want = desired_subsets(nodes.iter().map(|n| &**n));
    let cur = ctx
        .endpoints
        .get(&ObjectRef::new(SERVICE).within(NAMESPACE));
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let (res, verb) = match cur {
        Some(cur) => match updated(&cur, &svc, &want) {
            None => {
                ctx.backoff.succeeded(&());
                return Ok(Action::await_change());
            }
            Some(next) => (
                api.replace(SERVICE, &PostParams::default(), &next).await,
                Verb::Update,
            ),
        },
        None => (
            api.create(&PostParams::default(), &created(&svc, want))
                .await,
            Verb::Create,
        ),
    };
    match res {
        Ok(out) => {
            *ctx.written.lock().unwrap_or_else(|p| p.into_inner()) = Some(rv(&out.metadata));
            tracing::debug!(addresses = count(&out), "updated the cluster DNS endpoints");
            ctx.backoff.succeeded(&());
            Ok(Action::await_change())
        }
        Err(e) => {
            // A stale cache (409) or a race with a delete (404) just retries.
            if !is_conflict(&e) && !is_not_found(&e) {
                let msg = match verb {
                    Verb::Create => {
                        format!("Failed to create endpoint for service {NAMESPACE}/{SERVICE}: {e}")
                    }
                    Verb::Update => format!("Failed to update endpoint {NAMESPACE}/{SERVICE}: {e}"),
                };
                let reason = match verb {
                    Verb::Create => "FailedToCreateEndpoint",
                    Verb::Update => "FailedToUpdateEndpoint",
                };
                ctx.recorder
                    .publish(&*svc, EventType::Warning, reason, &msg)
                    .await;
            }
            Err(e.into())
        }
    }
}

#[derive(Clone, Copy)]
enum Verb {
    Create,
    Update,
}

impl Ctx {
    /// Wait (briefly) until the cache shows our last write, so a pass never
    /// replaces the Endpoints from a view older than its own output.
    async fn settle(&self) {
        let Some(want) = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let deadline = Instant::now() + SETTLE;
        let r = ObjectRef::new(SERVICE).within(NAMESPACE);
        while self
            .endpoints
            .get(&r)
            .is_none_or(|e| rv(&e.metadata) < want)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn count(ep: &Endpoints) -> usize {
    ep.subsets
        .iter()
        .flatten()
        .map(|s| {
            s.addresses.as_ref().map_or(0, Vec::len)
                + s.not_ready_addresses.as_ref().map_or(0, Vec::len)
        })
        .sum()
}

/// The Endpoints subsets the nodes call for: one subset with both DNS
/// ports, ready and not-ready node addresses apart, each sorted by address
/// (an address two Nodes claim is listed once, for the first by name).
/// `None` when no Node has an InternalIP.
pub fn desired_subsets<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
) -> Option<Vec<EndpointSubset>> {
    let mut by_name: Vec<(String, String, bool)> = nodes
        .into_iter()
        .filter_map(|n| {
            let (ip, ready) = node_endpoint(n)?;
            Some((n.name_any(), ip, ready))
        })
        .collect();
    by_name.sort();
    let mut taken = HashSet::new();
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for (name, ip, is_ready) in by_name {
        if !taken.insert(ip.clone()) {
            continue;
        }
        let a = EndpointAddress {
            ip,
            node_name: Some(name),
            ..Default::default()
        };
        if is_ready {
            ready.push(a);
        } else {
            not_ready.push(a);
        }
    }
    if ready.is_empty() && not_ready.is_empty() {
        return None;
    }
    let by_ip = |a: &EndpointAddress, b: &EndpointAddress| {
        let key = |x: &EndpointAddress| x.ip.parse::<Ipv4Addr>().ok();
        key(a).cmp(&key(b))
    };
    ready.sort_by(by_ip);
    not_ready.sort_by(by_ip);
    let ports = PORTS
        .iter()
        .map(|(name, proto)| EndpointPort {
            name: Some((*name).to_owned()),
            port: DNS_PORT,
            protocol: Some((*proto).to_owned()),
            app_protocol: None,
        })
        .collect();
    Some(vec![EndpointSubset {
        addresses: (!ready.is_empty()).then_some(ready),
        not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
        ports: Some(ports),
    }])
}

/// The labels the Endpoints carry: the Service's, over whatever they have,
/// without the endpoints controller's managed-by label (the Service has no
/// selector, so that controller does not keep them, and mirroring skips
/// Endpoints that carry it).
fn labels(svc: &Service, cur: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let mut l = cur.cloned().unwrap_or_default();
    l.extend(svc.labels().clone());
    l.remove(ENDPOINTS_MANAGED_BY_LABEL);
    l
}

fn same_subsets(a: &Option<Vec<EndpointSubset>>, b: &Option<Vec<EndpointSubset>>) -> bool {
    let norm = |s: &Option<Vec<EndpointSubset>>| s.clone().filter(|v| !v.is_empty());
    norm(a) == norm(b)
}

/// The Endpoints to write over `cur`, or `None` when `cur` already holds
/// what it should.
pub fn updated(
    cur: &Endpoints,
    svc: &Service,
    want: &Option<Vec<EndpointSubset>>,
) -> Option<Endpoints> {
    let l = labels(svc, cur.metadata.labels.as_ref());
    let have = cur.metadata.labels.clone().unwrap_or_default();
    if same_subsets(&cur.subsets, want) && have == l {
        return None;
    }
    let mut next = cur.clone();
    next.metadata.labels = (!l.is_empty()).then_some(l);
    next.subsets = want.clone();
    Some(next)
}

/// New Endpoints for the Service, holding `want`.
pub fn created(svc: &Service, want: Option<Vec<EndpointSubset>>) -> Endpoints {
    let l = labels(svc, None);
    Endpoints {
        metadata: ObjectMeta {
            name: Some(SERVICE.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            labels: (!l.is_empty()).then_some(l),
            ..Default::default()
        },
        subsets: want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ip: Option<&str>, ready: Option<&str>) -> Node {
        let mut addresses = vec![json!({"type": "Hostname", "address": name})];
        if let Some(ip) = ip {
            addresses.push(json!({"type": "InternalIP", "address": ip}));
        }
        let conditions: Vec<_> = ready
            .map(|s| json!({"type": "Ready", "status": s}))
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"addresses": addresses, "conditions": conditions},
        }))
        .expect("node")
    }

    fn svc() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": SERVICE, "namespace": NAMESPACE,
                "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "KubeDNS"}},
            "spec": {"clusterIP": "10.43.0.10", "internalTrafficPolicy": "Local",
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]},
        }))
        .expect("svc")
    }

    /// (ip, node) of the ready and the not-ready addresses.
    type Split = (Vec<(String, String)>, Vec<(String, String)>);

    fn split(s: &Option<Vec<EndpointSubset>>) -> Split {
        let list = |v: &Option<Vec<EndpointAddress>>| {
            v.iter()
                .flatten()
                .map(|a| (a.ip.clone(), a.node_name.clone().unwrap_or_default()))
                .collect()
        };
        let s = &s.as_ref().expect("subsets")[0];
        (list(&s.addresses), list(&s.not_ready_addresses))
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn one_address_per_node_ready_by_the_ready_condition() {
        let nodes = [
            node("n3", Some("192.168.0.3"), Some("True")),
            node("n1", Some("192.168.0.10"), Some("True")),
            node("n2", Some("192.168.0.2"), Some("False")),
            node("n4", Some("192.168.0.4"), Some("Unknown")),
            node("n5", Some("192.168.0.5"), None),
            node("no-ip", None, Some("True")),
            node("v6-only", Some("fd00::1"), Some("True")),
        ];
        let want = desired_subsets(&nodes);
        let (ready, not_ready) = split(&want);
        // Sorted as addresses, not as strings.
        assert_eq!(
            ready,
            pairs(&[("192.168.0.3", "n3"), ("192.168.0.10", "n1")])
        );
        assert_eq!(
            not_ready,
            pairs(&[
                ("192.168.0.2", "n2"),
                ("192.168.0.4", "n4"),
                ("192.168.0.5", "n5")
            ])
        );
        let ports: Vec<_> = want.as_ref().expect("subsets")[0]
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port,
                    p.protocol.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                ("dns".to_owned(), 53, "UDP".to_owned()),
                ("dns-tcp".to_owned(), 53, "TCP".to_owned())
            ]
        );
    }

    #[test]
    fn no_nodes_means_no_subsets_and_duplicates_are_listed_once() {
        assert_eq!(desired_subsets(&[]), None);
        assert_eq!(desired_subsets(&[node("x", None, Some("True"))]), None);
        let nodes = [
            node("b", Some("10.0.0.1"), Some("True")),
            node("a", Some("10.0.0.1"), Some("False")),
        ];
        let (ready, not_ready) = split(&desired_subsets(&nodes));
        assert!(ready.is_empty());
        assert_eq!(not_ready, pairs(&[("10.0.0.1", "a")]));
        // Only the InternalIP counts, the first IPv4 one.
        let mut n = node("c", Some("10.0.0.7"), Some("True"));
        if let Some(s) = n.status.as_mut() {
            s.addresses.get_or_insert_default().insert(
                0,
                serde_json::from_value(json!({"type": "ExternalIP", "address": "1.2.3.4"}))
                    .expect("addr"),
            );
        }
        let (ready, _) = split(&desired_subsets([&n]));
        assert_eq!(ready, pairs(&[("10.0.0.7", "c")]));
    }

    #[test]
    fn writes_only_when_content_differs() {
        let svc = svc();
        let nodes = [node("n1", Some("10.0.0.1"), Some("True"))];
        let want = desired_subsets(&nodes);
        let mut cur = created(&svc, want.clone());
        let labels = cur.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("k8s-app").map(String::as_str), Some("kube-dns"));
        assert!(updated(&cur, &svc, &want).is_none());
        // A user's extra label stays and needs no write.
        cur.metadata
            .labels
            .get_or_insert_default()
            .insert("team".into(), "dns".into());
        assert!(updated(&cur, &svc, &want).is_none());
        // The endpoints controller's label goes: mirroring skips it.
        cur.metadata.labels.get_or_insert_default().insert(
            ENDPOINTS_MANAGED_BY_LABEL.into(),
            "endpoint-controller".into(),
        );
        let next = updated(&cur, &svc, &want).expect("label removed");
        let l = next.metadata.labels.clone().unwrap_or_default();
        assert!(!l.contains_key(ENDPOINTS_MANAGED_BY_LABEL));
        assert_eq!(l.get("team").map(String::as_str), Some("dns"));
        // A readiness change is a write; empty and missing subsets are equal.
        let flipped = desired_subsets(&[node("n1", Some("10.0.0.1"), Some("False"))]);
        assert!(updated(&next, &svc, &flipped).is_some());
        let mut empty = created(&svc, Some(Vec::new()));
        assert!(updated(&empty, &svc, &None).is_none());
        empty.subsets = None;
        assert!(updated(&empty, &svc, &want).is_some());
    }

    #[test]
    fn a_selector_or_external_name_hands_the_service_over() {
        let mut s = svc();
        assert!(ours(&s));
        if let Some(spec) = s.spec.as_mut() {
            spec.selector = Some([("k8s-app".to_owned(), "kube-dns".to_owned())].into());
        }
        assert!(!ours(&s));
        let mut s = svc();
        if let Some(spec) = s.spec.as_mut() {
            spec.type_ = Some("ExternalName".to_owned());
        }
        assert!(!ours(&s));
    }
}
