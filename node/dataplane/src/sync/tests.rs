//! Unit tests of the desired state, the slot planning, the ids and the
//! ordered diff, all against the in-memory maps.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kestrel_ebpf_common::lb::{
    Backend, RevNat, ServiceKey, ServiceValue, backend_flags, scope, svc_flags,
};

use super::desired::{DEFAULT_AFFINITY_TIMEOUT_S, SERVICE_NAME_LABEL, proto};
use super::diff::{plan_slots, service_key};
use super::fake::{FakeMaps, Op};
use super::ids::IdAllocator;
use super::*;
use crate::Error;

const NODE: &str = "node-a";

fn node() -> NodeIdentity {
    NodeIdentity {
        name: NODE.to_owned(),
        ips: vec![Ipv4Addr::new(10, 41, 0, 2)],
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.to_owned()),
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

fn port(name: &str, port: i32, protocol: &str) -> ServicePort {
    ServicePort {
        name: (!name.is_empty()).then(|| name.to_owned()),
        port,
        protocol: Some(protocol.to_owned()),
        ..ServicePort::default()
    }
}

fn service(name: &str, cluster_ip: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: meta("default", name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: Some(cluster_ip.to_owned()),
            cluster_ips: Some(vec![cluster_ip.to_owned()]),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn spec(s: &mut Service) -> &mut ServiceSpec {
    s.spec.get_or_insert_with(ServiceSpec::default)
}

#[derive(Clone, Copy)]
struct Cond {
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

const READY: Cond = Cond {
    ready: Some(true),
    serving: Some(true),
    terminating: Some(false),
};
const NOT_READY: Cond = Cond {
    ready: Some(false),
    serving: Some(false),
    terminating: Some(false),
};
/// Terminating but still passing its readiness probe.
const SERVING_TERMINATING: Cond = Cond {
    ready: Some(false),
    serving: Some(true),
    terminating: Some(true),
};
const GONE_TERMINATING: Cond = Cond {
    ready: Some(false),
    serving: Some(false),
    terminating: Some(true),
};
const NO_CONDITIONS: Cond = Cond {
    ready: None,
    serving: None,
    terminating: None,
};

fn ep(addr: &str, node: &str, c: Cond) -> Endpoint {
    Endpoint {
        addresses: vec![addr.to_owned()],
        node_name: Some(node.to_owned()),
        conditions: Some(EndpointConditions {
            ready: c.ready,
            serving: c.serving,
            terminating: c.terminating,
        }),
        ..Endpoint::default()
    }
}

fn slice(
    svc: &str,
    name: &str,
    ports: &[(&str, i32, &str)],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let mut m = meta("default", name);
    m.labels = Some(BTreeMap::from([(
        SERVICE_NAME_LABEL.to_owned(),
        svc.to_owned(),
    )]));
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".to_owned(),
        endpoints: Some(endpoints),
        ports: Some(
            ports
                .iter()
                .map(|&(n, p, proto)| EndpointPort {
                    name: (!n.is_empty()).then(|| n.to_owned()),
                    port: Some(p),
                    protocol: Some(proto.to_owned()),
                    app_protocol: None,
                })
                .collect(),
        ),
    }
}

fn fk(addr: &str, port: u16, proto: u8) -> FrontendKey {
    FrontendKey {
        addr: ip(addr),
        port,
        proto,
    }
}

fn bk(addr: &str, port: u16) -> BackendKey {
    BackendKey {
        addr: ip(addr),
        port,
        proto: proto::TCP,
    }
}

fn state(svc: &Service, slices: &[EndpointSlice]) -> ServiceState {
    let refs: Vec<&EndpointSlice> = slices.iter().collect();
    service_state(svc, &refs, &node())
}

fn web() -> Service {
    service("web", "10.43.0.10", vec![port("http", 80, "TCP")])
}

// ---------------------------------------------------------------- desired

#[test]
fn cluster_ip_ports_match_slice_ports_by_name_and_protocol() {
    let svc = service(
        "dns",
        "10.43.0.10",
        vec![
            port("dns", 53, "UDP"),
            port("dns-tcp", 53, "TCP"),
            port("metrics", 9153, "TCP"),
        ],
    );
    // The slice's port numbers differ from the Service's: named target ports.
    let slices = [slice(
        "dns",
        "dns-1",
        &[
            ("dns", 5353, "UDP"),
            ("dns-tcp", 5354, "TCP"),
            ("other", 9999, "TCP"),
        ],
        vec![
            ep("10.42.0.5", NODE, READY),
            ep("10.42.1.6", "node-b", READY),
        ],
    )];
    let s = state(&svc, &slices);
    assert_eq!(s.frontends.len(), 3);
    let udp = &s.frontends[&fk("10.43.0.10", 53, proto::UDP)];
    let want_udp = vec![
        BackendKey {
            addr: ip("10.42.0.5"),
            port: 5353,
            proto: proto::UDP,
        },
        BackendKey {
            addr: ip("10.42.1.6"),
            port: 5353,
            proto: proto::UDP,
        },
    ];
    assert_eq!(udp.scopes, [want_udp.clone(), want_udp]);
    assert_eq!(udp.flags, 0);
    let tcp = &s.frontends[&fk("10.43.0.10", 53, proto::TCP)];
    assert_eq!(
        tcp.scope(scope::INTERNAL),
        [bk("10.42.0.5", 5354), bk("10.42.1.6", 5354)]
    );
    // "metrics" has no slice port of that name: a frontend with no backend,
    // so the kernel refuses rather than sending to the wrong port.
    let metrics = &s.frontends[&fk("10.43.0.10", 9153, proto::TCP)];
    assert!(metrics.scopes.iter().all(Vec::is_empty));
    assert_eq!(s.backends.len(), 4);
    assert_eq!(s.backends[&bk("10.42.0.5", 5354)], backend_flags::LOCAL);
    assert_eq!(s.backends[&bk("10.42.1.6", 5354)], 0);
    assert!(!s.backends.keys().any(|b| b.port == 9999));
}

#[test]
fn an_unnamed_port_matches_only_an_unnamed_slice_port() {
    let svc = service("one", "10.43.0.11", vec![port("", 80, "TCP")]);
    let named = [slice(
        "one",
        "one-1",
        &[("http", 8080, "TCP")],
        vec![ep("10.42.0.5", NODE, READY)],
    )];
    assert!(state(&svc, &named).backends.is_empty());
    let unnamed = [slice(
        "one",
        "one-1",
        &[("", 8080, "TCP")],
        vec![ep("10.42.0.5", NODE, READY)],
    )];
    assert_eq!(
        state(&svc, &unnamed).frontends[&fk("10.43.0.11", 80, proto::TCP)].scopes[0],
        [bk("10.42.0.5", 8080)]
    );
}

#[test]
fn slices_of_other_services_and_namespaces_and_ipv6_slices_are_ignored() {
    let svc = web();
    let mut other_ns = slice(
        "web",
        "web-x",
        &[("http", 8080, "TCP")],
        vec![ep("10.42.0.9", NODE, READY)],
    );
    other_ns.metadata.namespace = Some("other".to_owned());
    let other_svc = slice(
        "api",
        "api-1",
        &[("http", 8080, "TCP")],
        vec![ep("10.42.0.8", NODE, READY)],
    );
    let mut v6 = slice(
        "web",
        "web-v6",
        &[("http", 8080, "TCP")],
        vec![ep("fd00::1", NODE, READY)],
    );
    v6.address_type = "IPv6".to_owned();
    let mine = slice(
        "web",
        "web-1",
        &[("http", 8080, "TCP")],
        vec![ep("10.42.0.5", NODE, READY)],
    );
    let s = state(&svc, &[other_ns, other_svc, v6, mine]);
    assert_eq!(
        s.backends.keys().copied().collect::<Vec<_>>(),
        [bk("10.42.0.5", 8080)]
    );
}

#[test]
fn ready_endpoints_take_the_slots_and_terminating_ones_stay_as_backends() {
    let slices = [slice(
        "web",
        "web-1",
        &[("http", 8080, "TCP")],
        vec![
            ep("10.42.0.1", NODE, READY),
            ep("10.42.0.2", NODE, SERVING_TERMINATING),
            ep("10.42.0.3", NODE, NOT_READY),
            ep("10.42.0.4", "node-b", NO_CONDITIONS),
        ],
    )];
    let s = state(&web(), &slices);
    let f = &s.frontends[&fk("10.43.0.10", 80, proto::TCP)];
    // A missing `ready` counts as ready.
    assert_eq!(f.scopes[0], [bk("10.42.0.1", 8080), bk("10.42.0.4", 8080)]);
    assert_eq!(f.scopes[1], f.scopes[0]);
    // Not chosen, but kept while the slice lists them.
    assert_eq!(
        s.backends[&bk("10.42.0.2", 8080)],
        backend_flags::LOCAL | backend_flags::TERMINATING
    );
    assert_eq!(s.backends[&bk("10.42.0.3", 8080)], backend_flags::LOCAL);
    assert_eq!(s.backends[&bk("10.42.0.4", 8080)], 0);
}

#[test]
fn without_ready_endpoints_serving_terminating_ones_are_used() {
    let slices = [slice(
        "web",
        "web-1",
        &[("http", 8080, "TCP")],
        vec![
            ep("10.42.0.2", NODE, SERVING_TERMINATING),
            ep("10.42.0.3", NODE, GONE_TERMINATING),
            ep("10.42.0.5", NODE, NOT_READY),
        ],
    )];
    let s = state(&web(), &slices);
    let f = &s.frontends[&fk("10.43.0.10", 80, proto::TCP)];
    assert_eq!(f.scopes[0], [bk("10.42.0.2", 8080)]);
    // No usable endpoint at all: an empty frontend (the kernel refuses).
    let none = [slice(
        "web",
        "web-1",
        &[("http", 8080, "TCP")],
        vec![ep("10.42.0.3", NODE, GONE_TERMINATING)],
    )];
    let s = state(&web(), &none);
    assert!(s.frontends[&fk("10.43.0.10", 80, proto::TCP)].scopes[0].is_empty());
    assert_eq!(s.backends.len(), 1);
}

#[test]
fn the_fallback_is_made_per_scope() {
    // eTP=Local: this node only has a serving-terminating endpoint while
    // another node has a ready one. The cluster-wide set uses the ready one,
    // the local set falls back to the local terminating one.
    let svc = web_node_port(true);
    let slices = web_slices(vec![
        ep("10.42.0.2", NODE, SERVING_TERMINATING),
        ep("10.42.1.3", "node-b", READY),
    ]);
    let s = state(&svc, &slices);
    let np = &s.frontends[&fk("0.0.0.0", 30080, proto::TCP)];
    assert_eq!(np.scope(scope::INTERNAL), [bk("10.42.1.3", 8080)]);
    assert_eq!(np.scope(scope::EXTERNAL), [bk("10.42.0.2", 8080)]);
}

#[test]
fn traffic_policies_fill_the_scopes() {
    let mut svc = service("web", "10.43.0.10", vec![port("http", 80, "TCP")]);
    {
        let sp = spec(&mut svc);
        sp.type_ = Some("LoadBalancer".to_owned());
        sp.internal_traffic_policy = Some("Local".to_owned());
        sp.external_traffic_policy = Some("Local".to_owned());
        sp.external_ips = Some(vec!["192.0.2.7".to_owned()]);
        sp.ports.as_mut().expect("ports")[0].node_port = Some(30080);
    }
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![
                LoadBalancerIngress {
                    ip: Some("198.51.100.4".to_owned()),
                    ..LoadBalancerIngress::default()
                },
                LoadBalancerIngress {
                    ip: Some("198.51.100.5".to_owned()),
                    ip_mode: Some("Proxy".to_owned()),
                    ..LoadBalancerIngress::default()
                },
                LoadBalancerIngress {
                    hostname: Some("lb.example".to_owned()),
                    ..LoadBalancerIngress::default()
                },
            ]),
        }),
        conditions: None,
    });
    let slices = [slice(
        "web",
        "web-1",
        &[("http", 8080, "TCP")],
        vec![
            ep("10.42.0.1", NODE, READY),
            ep("10.42.1.1", "node-b", READY),
        ],
    )];
    let s = state(&svc, &slices);
    let local = vec![bk("10.42.0.1", 8080)];
    let all = vec![bk("10.42.0.1", 8080), bk("10.42.1.1", 8080)];
    assert_eq!(s.frontends.len(), 4, "{:?}", s.frontends.keys());

    let cluster = &s.frontends[&fk("10.43.0.10", 80, proto::TCP)];
    assert_eq!(cluster.flags, svc_flags::INT_LOCAL);
    assert_eq!(cluster.scopes, [local.clone(), local.clone()]);

    let external = [all.clone(), local.clone()];
    let np = &s.frontends[&fk("0.0.0.0", 30080, proto::TCP)];
    assert_eq!(np.flags, svc_flags::NODE_PORT | svc_flags::EXT_LOCAL);
    assert_eq!(np.scopes, external);
    let eip = &s.frontends[&fk("192.0.2.7", 80, proto::TCP)];
    assert_eq!(eip.flags, svc_flags::EXTERNAL_IP | svc_flags::EXT_LOCAL);
    assert_eq!(eip.scopes, external);
    let lb = &s.frontends[&fk("198.51.100.4", 80, proto::TCP)];
    assert_eq!(lb.flags, svc_flags::LOAD_BALANCER | svc_flags::EXT_LOCAL);
    assert_eq!(lb.scopes, external);

    // Cluster policies: every scope holds everything.
    let mut cluster_svc = svc.clone();
    spec(&mut cluster_svc).internal_traffic_policy = Some("Cluster".to_owned());
    spec(&mut cluster_svc).external_traffic_policy = None;
    let s = state(&cluster_svc, &slices);
    for f in s.frontends.values() {
        assert_eq!(f.scopes, [all.clone(), all.clone()]);
        assert_eq!(f.flags & (svc_flags::INT_LOCAL | svc_flags::EXT_LOCAL), 0);
    }
}

#[test]
fn node_ports_only_for_node_port_and_load_balancer_services() {
    let mut svc = web();
    spec(&mut svc).ports.as_mut().expect("ports")[0].node_port = Some(30080);
    let np = fk("0.0.0.0", 30080, proto::TCP);
    assert!(!state(&svc, &[]).frontends.contains_key(&np));
    spec(&mut svc).type_ = Some("NodePort".to_owned());
    assert!(state(&svc, &[]).frontends.contains_key(&np));
    spec(&mut svc).type_ = Some("LoadBalancer".to_owned());
    assert!(state(&svc, &[]).frontends.contains_key(&np));
    // allocateLoadBalancerNodePorts: false leaves the port without one.
    spec(&mut svc).ports.as_mut().expect("ports")[0].node_port = None;
    assert_eq!(state(&svc, &[]).frontends.len(), 1);
}

#[test]
fn session_affinity_sets_the_flag_and_timeout() {
    let mut svc = web();
    spec(&mut svc).session_affinity = Some("ClientIP".to_owned());
    let f = &state(&svc, &[]).frontends[&fk("10.43.0.10", 80, proto::TCP)];
    assert_eq!(f.flags, svc_flags::AFFINITY);
    assert_eq!(f.affinity_timeout_s, DEFAULT_AFFINITY_TIMEOUT_S);
    spec(&mut svc).session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIPConfig {
            timeout_seconds: Some(60),
        }),
    });
    let f = &state(&svc, &[]).frontends[&fk("10.43.0.10", 80, proto::TCP)];
    assert_eq!(f.affinity_timeout_s, 60);
    spec(&mut svc).session_affinity = Some("None".to_owned());
    let f = &state(&svc, &[]).frontends[&fk("10.43.0.10", 80, proto::TCP)];
    assert_eq!((f.flags, f.affinity_timeout_s), (0, 0));
}

#[test]
fn endpoints_in_several_slices_are_deduplicated_preferring_the_ready_copy() {
    let slices = [
        slice(
            "web",
            "web-1",
            &[("http", 8080, "TCP")],
            vec![
                ep("10.42.0.1", NODE, NOT_READY),
                ep("10.42.0.2", NODE, READY),
            ],
        ),
        slice(
            "web",
            "web-2",
            &[("http", 8080, "TCP")],
            vec![ep("10.42.0.1", NODE, READY), ep("10.42.0.2", NODE, READY)],
        ),
    ];
    let s = state(&web(), &slices);
    let f = &s.frontends[&fk("10.43.0.10", 80, proto::TCP)];
    assert_eq!(f.scopes[0], [bk("10.42.0.1", 8080), bk("10.42.0.2", 8080)]);
    assert_eq!(s.backends.len(), 2);
}

#[test]
fn services_without_frontends() {
    let slices = [slice(
        "web",
        "web-1",
        &[("http", 8080, "TCP")],
        vec![ep("10.42.0.1", NODE, READY)],
    )];
    let mut headless = web();
    spec(&mut headless).cluster_ip = Some("None".to_owned());
    spec(&mut headless).cluster_ips = Some(vec!["None".to_owned()]);
    spec(&mut headless).external_ips = Some(vec!["192.0.2.7".to_owned()]);
    assert!(state(&headless, &slices).is_empty());

    let mut external_name = web();
    spec(&mut external_name).type_ = Some("ExternalName".to_owned());
    assert!(state(&external_name, &slices).is_empty());

    let mut v6_only = web();
    spec(&mut v6_only).cluster_ip = Some("fd00:43::10".to_owned());
    spec(&mut v6_only).cluster_ips = Some(vec!["fd00:43::10".to_owned()]);
    assert!(state(&v6_only, &slices).is_empty());

    let mut other_proxy = web();
    other_proxy.metadata.labels = Some(BTreeMap::from([(
        "service.kubernetes.io/service-proxy-name".to_owned(),
        "other".to_owned(),
    )]));
    assert!(state(&other_proxy, &slices).is_empty());

    let mut no_spec = web();
    no_spec.spec = None;
    assert!(state(&no_spec, &slices).is_empty());
}

#[test]
fn dual_stack_services_program_their_ipv4_addresses() {
    let mut svc = web();
    spec(&mut svc).cluster_ips = Some(vec!["fd00:43::10".to_owned(), "10.43.0.10".to_owned()]);
    spec(&mut svc).external_ips = Some(vec!["2001:db8::1".to_owned(), "192.0.2.7".to_owned()]);
    let keys: Vec<FrontendKey> = state(&svc, &[]).frontends.into_keys().collect();
    assert_eq!(
        keys,
        [
            fk("10.43.0.10", 80, proto::TCP),
            fk("192.0.2.7", 80, proto::TCP)
        ]
    );
}

#[test]
fn bad_input_is_skipped_and_never_panics() {
    let mut svc = service(
        "web",
        "10.43.0.10",
        vec![
            port("http", 80, "TCP"),
            port("weird", 81, "CARRIER-PIGEON"),
            port("neg", -1, "TCP"),
            port("big", 70_000, "TCP"),
        ],
    );
    spec(&mut svc).type_ = Some("NodePort".to_owned());
    spec(&mut svc).ports.as_mut().expect("ports")[0].node_port = Some(-5);
    spec(&mut svc).external_ips = Some(vec![
        "not-an-ip".to_owned(),
        "".to_owned(),
        "300.1.1.1".to_owned(),
    ]);
    let mut bad_port = slice(
        "web",
        "web-2",
        &[("http", 0, "TCP")],
        vec![ep("10.42.0.9", NODE, READY)],
    );
    bad_port.ports.as_mut().expect("ports")[0].port = None;
    let mut no_address = ep("10.42.0.8", NODE, READY);
    no_address.addresses.clear();
    let slices = [
        slice(
            "web",
            "web-1",
            &[("http", 8080, "TCP")],
            vec![
                ep("10.42.0.1", NODE, READY),
                ep("10.42.0.x", NODE, READY),
                ep("0.0.0.0", NODE, READY),
                no_address,
            ],
        ),
        bad_port,
    ];
    let s = state(&svc, &slices);
    assert_eq!(
        s.frontends.keys().copied().collect::<Vec<_>>(),
        [fk("10.43.0.10", 80, proto::TCP)]
    );
    assert_eq!(
        s.backends.keys().copied().collect::<Vec<_>>(),
        [bk("10.42.0.1", 8080)]
    );

    // A garbage ClusterIP makes the Service unusable, not the sync.
    let garbage = service("web", "10.43.0.300", vec![port("http", 80, "TCP")]);
    assert!(state(&garbage, &slices).is_empty());
    let mut nameless = web();
    nameless.metadata.name = None;
    assert!(state(&nameless, &slices).is_empty());
}

// ---------------------------------------------------------------- ids

#[test]
fn ids_are_never_zero_and_come_back_only_after_the_whole_range() {
    let mut ids = IdAllocator::new("test", 3);
    assert_eq!(ids.allocate().ok(), Some(1));
    assert_eq!(ids.allocate().ok(), Some(2));
    ids.release(1);
    // 1 is free again, but 3 is fresher.
    assert_eq!(ids.allocate().ok(), Some(3));
    assert_eq!(ids.allocate().ok(), Some(1));
    assert!(matches!(
        ids.allocate(),
        Err(Error::IdsExhausted {
            what: "test",
            max: 3
        })
    ));
    ids.release(2);
    assert_eq!(ids.allocate().ok(), Some(2));
}

#[test]
fn adopted_ids_are_skipped() {
    let mut ids = IdAllocator::new("test", 10);
    assert!(ids.adopt(4));
    assert!(ids.adopt(2));
    assert!(!ids.adopt(4), "already taken");
    assert!(!ids.adopt(0), "never 0");
    assert!(!ids.adopt(11), "out of range");
    assert_eq!(ids.allocate().ok(), Some(5));
    assert!(ids.is_used(2));
    assert_eq!(ids.len(), 3);
}

// ---------------------------------------------------------------- slots

#[test]
fn slot_planning_moves_as_little_as_possible() {
    // From scratch: the wanted order.
    assert_eq!(plan_slots(&[], &[1, 2, 3]), [1, 2, 3]);
    // Unchanged.
    assert_eq!(plan_slots(&[3, 1, 2], &[1, 2, 3]), [3, 1, 2]);
    // Grow: appended.
    assert_eq!(plan_slots(&[3, 1], &[1, 2, 3]), [3, 1, 2]);
    // Replace: the new one takes the hole.
    assert_eq!(plan_slots(&[1, 2, 3], &[1, 3, 4]), [1, 4, 3]);
    // Shrink: the last entry moves into the hole.
    assert_eq!(plan_slots(&[1, 2, 3, 4], &[1, 3, 4]), [1, 4, 3]);
    assert_eq!(plan_slots(&[1, 2, 3, 4], &[4]), [4]);
    assert_eq!(plan_slots(&[1, 2, 3, 4], &[1, 2]), [1, 2]);
    assert_eq!(plan_slots(&[1, 2, 3], &[]), Vec::<u32>::new());
    // Missing or duplicated current slots are repaired.
    assert_eq!(plan_slots(&[0, 2, 2], &[1, 2]), [1, 2]);
}

// ---------------------------------------------------------------- diff

fn web_slices(endpoints: Vec<Endpoint>) -> Vec<EndpointSlice> {
    vec![slice("web", "web-1", &[("http", 8080, "TCP")], endpoints)]
}

/// `web` as a NodePort on 30080, with `externalTrafficPolicy: Local` if
/// asked.
fn web_node_port(etp_local: bool) -> Service {
    let mut svc = web();
    spec(&mut svc).type_ = Some("NodePort".to_owned());
    spec(&mut svc).ports.as_mut().expect("ports")[0].node_port = Some(30080);
    if etp_local {
        spec(&mut svc).external_traffic_policy = Some("Local".to_owned());
    }
    svc
}

fn web_ref() -> ServiceRef {
    ServiceRef::new("default", "web")
}

fn syncer() -> Syncer<FakeMaps> {
    Syncer::adopt(FakeMaps::new(), IdLimits::default()).expect("adopting empty maps")
}

fn flush(s: &mut Syncer<FakeMaps>) -> FlushStats {
    let stats = s.flush().expect("flush");
    assert!(s.maps().violations.is_empty(), "{:#?}", s.maps().violations);
    stats
}

fn take_ops(s: &mut Syncer<FakeMaps>) -> Vec<Op> {
    std::mem::take(&mut s.maps_mut().ops)
}

fn three_ready() -> Vec<Endpoint> {
    vec![
        ep("10.42.0.1", NODE, READY),
        ep("10.42.0.2", NODE, READY),
        ep("10.42.1.3", "node-b", READY),
    ]
}

/// The frontend's slots that traffic of one scope finds, as backend
/// addresses, read back from the maps through the count of its master. As
/// in the kernel, EXTERNAL traffic reads the INTERNAL scope where no
/// EXTERNAL one is written.
fn slots_of(maps: &FakeMaps, f: FrontendKey, sc: u8) -> Vec<BackendKey> {
    let sc = if maps.services.contains_key(&service_key(&f, sc, 0)) {
        sc
    } else {
        scope::INTERNAL
    };
    let Some(master) = maps.services.get(&service_key(&f, sc, 0)) else {
        return Vec::new();
    };
    (1..=master.count)
        .map(|slot| {
            let id = maps.services[&service_key(&f, sc, slot)].backend_id;
            let b = maps.backends[&id];
            BackendKey {
                addr: Ipv4Addr::from(u32::from_be(b.addr_be)),
                port: u16::from_be(b.port_be),
                proto: b.proto,
            }
        })
        .collect()
}

#[test]
fn a_service_is_programmed_backends_first_and_masters_last() {
    let mut s = syncer();
    s.set_service(&web_ref(), state(&web(), &web_slices(three_ready())));
    let stats = flush(&mut s);
    let ops = take_ops(&mut s);
    // 3 backends, 1 rev-nat, 3 slots + master. A ClusterIP's EXTERNAL
    // scope would hold the same backends, so it is not written.
    assert_eq!((stats.writes, stats.deletes), (3 + 1 + 4, 0));
    assert_eq!(ops.len(), 8);
    assert!(ops[..3].iter().all(|o| matches!(o, Op::PutBackend(..))));
    assert!(matches!(ops[3], Op::PutRevNat(..)));
    let f = fk("10.43.0.10", 80, proto::TCP);
    assert!(
        !ops.iter()
            .any(|o| matches!(o, Op::PutService(k, _) if k.scope == scope::EXTERNAL))
    );
    let master_at = ops
        .iter()
        .position(
            |o| matches!(o, Op::PutService(k, _) if *k == service_key(&f, scope::INTERNAL, 0)),
        )
        .expect("master written");
    let last_slot_at = ops
        .iter()
        .rposition(|o| matches!(o, Op::PutService(_, v) if v.backend_id != 0))
        .expect("slots written");
    assert!(last_slot_at < master_at);
    // Both kinds of traffic find the three backends.
    for sc in [scope::INTERNAL, scope::EXTERNAL] {
        assert_eq!(
            slots_of(s.maps(), f, sc),
            [
                bk("10.42.0.1", 8080),
                bk("10.42.0.2", 8080),
                bk("10.42.1.3", 8080)
            ]
        );
    }
    let rev = s.rev_nat_id(&f).expect("rev-nat id");
    assert_ne!(rev, 0);
    assert_eq!(
        s.maps().rev_nat[&rev],
        RevNat {
            addr_be: u32::from(ip("10.43.0.10")).to_be(),
            port_be: 80u16.to_be(),
            _pad: 0
        }
    );
    let master = s.maps().services[&service_key(&f, scope::INTERNAL, 0)];
    assert_eq!(
        master,
        ServiceValue {
            backend_id: 0,
            count: 3,
            rev_nat_id: rev,
            flags: 0,
            _pad: 0,
            affinity_timeout_s: 0
        }
    );
    assert!(
        s.backend_id(&bk("10.42.0.1", 8080))
            .is_some_and(|id| id != 0)
    );
    let local = s.maps().backends[&s.backend_id(&bk("10.42.0.1", 8080)).unwrap_or(0)];
    assert_eq!(local.flags, backend_flags::LOCAL);

    // The same state again writes nothing.
    s.set_service(&web_ref(), state(&web(), &web_slices(three_ready())));
    assert!(!s.is_pending());
    assert_eq!(flush(&mut s), FlushStats::default());
    assert!(take_ops(&mut s).is_empty());
}

#[test]
fn growing_writes_the_new_slot_before_the_master() {
    let mut s = syncer();
    s.set_service(&web_ref(), state(&web(), &web_slices(three_ready())));
    flush(&mut s);
    take_ops(&mut s);
    let mut four = three_ready();
    four.push(ep("10.42.1.4", "node-b", READY));
    s.set_service(&web_ref(), state(&web(), &web_slices(four)));
    let stats = flush(&mut s);
    let ops = take_ops(&mut s);
    // One backend, then one slot and the master (one scope: a ClusterIP).
    assert_eq!((stats.writes, stats.deletes), (3, 0));
    assert!(matches!(ops[0], Op::PutBackend(..)));
    let f = fk("10.43.0.10", 80, proto::TCP);
    let sc = scope::INTERNAL;
    let slot = ops
        .iter()
        .position(|o| matches!(o, Op::PutService(k, _) if *k == service_key(&f, sc, 4)))
        .expect("slot 4 written");
    let master = ops
        .iter()
        .position(
            |o| matches!(o, Op::PutService(k, v) if *k == service_key(&f, sc, 0) && v.count == 4),
        )
        .expect("master written");
    assert!(slot < master);
}

#[test]
fn shrinking_writes_the_master_first_then_deletes_slots_then_the_backend() {
    let mut s = syncer();
    s.set_service(&web_ref(), state(&web(), &web_slices(three_ready())));
    flush(&mut s);
    take_ops(&mut s);
    let gone = s.backend_id(&bk("10.42.0.1", 8080)).expect("id");
    let moved = s.backend_id(&bk("10.42.1.3", 8080)).expect("id");
    // The first endpoint goes away.
    s.set_service(
        &web_ref(),
        state(
            &web(),
            &web_slices(vec![
                ep("10.42.0.2", NODE, READY),
                ep("10.42.1.3", "node-b", READY),
            ]),
        ),
    );
    let stats = flush(&mut s);
    let ops = take_ops(&mut s);
    let f = fk("10.43.0.10", 80, proto::TCP);
    let rev = s.rev_nat_id(&f).expect("rev");
    let key = |slot| service_key(&f, scope::INTERNAL, slot);
    // Step by step (a ClusterIP: one written scope): the last backend
    // moves into the freed slot 1, the master shrinks, and the surplus
    // slot goes.
    let mut expected = vec![
        Op::PutService(
            key(1),
            ServiceValue {
                backend_id: moved,
                rev_nat_id: rev,
                ..ServiceValue::default()
            },
        ),
        Op::PutService(
            key(0),
            ServiceValue {
                count: 2,
                rev_nat_id: rev,
                ..ServiceValue::default()
            },
        ),
        Op::DeleteService(key(3)),
    ];
    // The backend nothing names any more goes last, with its counters.
    expected.push(Op::DeleteBackend(gone));
    expected.push(Op::ClearConns(gone));
    assert_eq!(ops, expected);
    assert_eq!((stats.writes, stats.deletes), (2, 2));
}

#[test]
fn the_external_scope_is_written_only_while_it_differs() {
    let mut s = syncer();
    let (svc, local_svc) = (web_node_port(false), web_node_port(true));
    let slices = web_slices(vec![
        ep("10.42.0.1", NODE, READY),
        ep("10.42.1.1", "node-b", READY),
    ]);
    let np = fk("0.0.0.0", 30080, proto::TCP);
    let local = vec![bk("10.42.0.1", 8080)];
    let all = vec![bk("10.42.0.1", 8080), bk("10.42.1.1", 8080)];
    let external = |s: &Syncer<FakeMaps>| -> Vec<ServiceKey> {
        s.maps()
            .services
            .keys()
            .filter(|k| k.scope == scope::EXTERNAL)
            .copied()
            .collect()
    };
    let at = |ops: &[Op], want: &Op| ops.iter().position(|o| o == want);

    // Cluster policy: traffic from outside reads the INTERNAL scope.
    s.set_service(&web_ref(), state(&svc, &slices));
    flush(&mut s);
    take_ops(&mut s);
    assert_eq!(external(&s), []);
    assert_eq!(slots_of(s.maps(), np, scope::EXTERNAL), all);

    // Local: the NodePort gets an EXTERNAL scope, its slot before its
    // master. The ClusterIP frontend still has none.
    s.set_service(&web_ref(), state(&local_svc, &slices));
    flush(&mut s);
    let ops = take_ops(&mut s);
    let (ext_master, ext_slot) = (
        service_key(&np, scope::EXTERNAL, 0),
        service_key(&np, scope::EXTERNAL, 1),
    );
    assert_eq!(external(&s), [ext_master, ext_slot]);
    let slot_at = ops
        .iter()
        .position(|o| matches!(o, Op::PutService(k, _) if *k == ext_slot));
    let master_at = ops
        .iter()
        .position(|o| matches!(o, Op::PutService(k, _) if *k == ext_master));
    assert!(slot_at.is_some() && slot_at < master_at, "{ops:#?}");
    assert_eq!(slots_of(s.maps(), np, scope::EXTERNAL), local);
    assert_eq!(slots_of(s.maps(), np, scope::INTERNAL), all);

    // Cluster again: the EXTERNAL master goes before its slot, and outside
    // traffic reads the INTERNAL scope again.
    s.set_service(&web_ref(), state(&svc, &slices));
    flush(&mut s);
    let ops = take_ops(&mut s);
    let master_gone = at(&ops, &Op::DeleteService(ext_master));
    let slot_gone = at(&ops, &Op::DeleteService(ext_slot));
    assert!(master_gone.is_some() && master_gone < slot_gone, "{ops:#?}");
    assert_eq!(external(&s), []);
    assert_eq!(slots_of(s.maps(), np, scope::EXTERNAL), all);
    assert_eq!(
        s.maps().services[&service_key(&np, scope::INTERNAL, 0)].flags,
        svc_flags::NODE_PORT,
        "no EXT_LOCAL left"
    );
}

#[test]
fn a_terminating_endpoint_leaves_the_slots_but_stays_a_backend() {
    let mut s = syncer();
    s.set_service(&web_ref(), state(&web(), &web_slices(three_ready())));
    flush(&mut s);
    take_ops(&mut s);
    let id = s.backend_id(&bk("10.42.0.1", 8080)).expect("id");
    let mut eps = three_ready();
    eps[0] = ep("10.42.0.1", NODE, SERVING_TERMINATING);
    s.set_service(&web_ref(), state(&web(), &web_slices(eps)));
    flush(&mut s);
    let f = fk("10.43.0.10", 80, proto::TCP);
    assert!(!slots_of(s.maps(), f, scope::INTERNAL).contains(&bk("10.42.0.1", 8080)));
    assert_eq!(s.backend_id(&bk("10.42.0.1", 8080)), Some(id), "same id");
    assert_eq!(
        s.maps().backends[&id].flags,
        backend_flags::LOCAL | backend_flags::TERMINATING
    );
    // The slice drops it: now it goes.
    s.set_service(
        &web_ref(),
        state(&web(), &web_slices(three_ready()[1..].to_vec())),
    );
    flush(&mut s);
    assert!(!s.maps().backends.contains_key(&id));
}

#[test]
fn removing_a_service_deletes_masters_then_slots_then_rev_nat_then_backends() {
    let mut s = syncer();
    s.set_service(&web_ref(), state(&web(), &web_slices(three_ready())));
    flush(&mut s);
    take_ops(&mut s);
    s.set_service(&web_ref(), ServiceState::default());
    let stats = flush(&mut s);
    let ops = take_ops(&mut s);
    assert_eq!(stats.deletes, 4 + 1 + 3);
    let f = fk("10.43.0.10", 80, proto::TCP);
    let sc = scope::INTERNAL;
    let master = ops
        .iter()
        .position(|o| *o == Op::DeleteService(service_key(&f, sc, 0)))
        .expect("master deleted");
    let first_slot = ops
        .iter()
        .position(|o| matches!(o, Op::DeleteService(k) if k.scope == sc && k.slot != 0))
        .expect("slots deleted");
    assert!(master < first_slot);
    let last_service = ops
        .iter()
        .rposition(|o| matches!(o, Op::DeleteService(_)))
        .expect("service deletes");
    let rev = ops
        .iter()
        .position(|o| matches!(o, Op::DeleteRevNat(_)))
        .expect("rev-nat deleted");
    let first_backend = ops
        .iter()
        .position(|o| matches!(o, Op::DeleteBackend(_)))
        .expect("backends deleted");
    assert!(last_service < rev && rev < first_backend);
    assert!(s.maps().services.is_empty());
    assert!(s.maps().backends.is_empty());
    assert!(s.maps().rev_nat.is_empty());
    assert_eq!(s.services().count(), 0);
}

#[test]
fn a_backend_shared_by_two_services_stays_until_both_drop_it() {
    let mut s = syncer();
    let api = service("api", "10.43.0.20", vec![port("http", 80, "TCP")]);
    let api_ref = ServiceRef::new("default", "api");
    let shared = ep("10.42.0.1", NODE, READY);
    s.set_service(&web_ref(), state(&web(), &web_slices(vec![shared.clone()])));
    s.set_service(
        &api_ref,
        state(
            &api,
            &[slice(
                "api",
                "api-1",
                &[("http", 8080, "TCP")],
                vec![shared],
            )],
        ),
    );
    flush(&mut s);
    assert_eq!(s.maps().backends.len(), 1);
    s.set_service(&web_ref(), ServiceState::default());
    flush(&mut s);
    assert_eq!(s.maps().backends.len(), 1);
    assert_eq!(
        slots_of(s.maps(), fk("10.43.0.20", 80, proto::TCP), scope::INTERNAL),
        [bk("10.42.0.1", 8080)]
    );
    s.set_service(&api_ref, ServiceState::default());
    flush(&mut s);
    assert!(s.maps().backends.is_empty());
}

#[test]
fn a_frontend_two_services_claim_goes_to_the_first_and_then_to_the_other() {
    let mut s = syncer();
    let mut a = service("a", "10.43.0.30", vec![port("http", 80, "TCP")]);
    spec(&mut a).external_ips = Some(vec!["192.0.2.7".to_owned()]);
    a.metadata.name = Some("a".to_owned());
    let mut b = service("b", "10.43.0.31", vec![port("http", 80, "TCP")]);
    spec(&mut b).external_ips = Some(vec!["192.0.2.7".to_owned()]);
    let a_slices = [slice(
        "a",
        "a-1",
        &[("http", 8080, "TCP")],
        vec![ep("10.42.0.1", NODE, READY)],
    )];
    let b_slices = [slice(
        "b",
        "b-1",
        &[("http", 8080, "TCP")],
        vec![ep("10.42.0.2", NODE, READY)],
    )];
    let (a_ref, b_ref) = (
        ServiceRef::new("default", "a"),
        ServiceRef::new("default", "b"),
    );
    // b arrives first, then a, which sorts first and takes over.
    s.set_service(&b_ref, state(&b, &b_slices));
    flush(&mut s);
    let shared = fk("192.0.2.7", 80, proto::TCP);
    assert_eq!(
        slots_of(s.maps(), shared, scope::EXTERNAL),
        [bk("10.42.0.2", 8080)]
    );
    s.set_service(&a_ref, state(&a, &a_slices));
    flush(&mut s);
    assert_eq!(
        slots_of(s.maps(), shared, scope::EXTERNAL),
        [bk("10.42.0.1", 8080)]
    );
    s.set_service(&a_ref, ServiceState::default());
    flush(&mut s);
    assert_eq!(
        slots_of(s.maps(), shared, scope::EXTERNAL),
        [bk("10.42.0.2", 8080)]
    );
}

#[test]
fn a_restarted_syncer_adopts_the_ids_and_writes_nothing() {
    let mut s = syncer();
    let mut svc = web();
    spec(&mut svc).type_ = Some("NodePort".to_owned());
    spec(&mut svc).ports.as_mut().expect("ports")[0].node_port = Some(30080);
    spec(&mut svc).session_affinity = Some("ClientIP".to_owned());
    let st = state(&svc, &web_slices(three_ready()));
    s.set_service(&web_ref(), st.clone());
    flush(&mut s);
    let before: Vec<Option<u32>> = st.backends.keys().map(|b| s.backend_id(b)).collect();
    let revs: Vec<Option<u16>> = st.frontends.keys().map(|f| s.rev_nat_id(f)).collect();
    let mut maps = std::mem::take(s.maps_mut());
    maps.ops.clear();

    let mut again = Syncer::adopt(maps, IdLimits::default()).expect("adopt");
    assert_eq!(
        st.backends
            .keys()
            .map(|b| again.backend_id(b))
            .collect::<Vec<_>>(),
        before
    );
    assert_eq!(
        st.frontends
            .keys()
            .map(|f| again.rev_nat_id(f))
            .collect::<Vec<_>>(),
        revs
    );
    again.set_service(&web_ref(), st);
    assert_eq!(flush(&mut again), FlushStats::default());
    assert!(take_ops(&mut again).is_empty());

    // A new backend gets an id none of the adopted ones has.
    let mut four = three_ready();
    four.push(ep("10.42.1.9", "node-b", READY));
    again.set_service(&web_ref(), state(&svc, &web_slices(four)));
    flush(&mut again);
    let fresh = again.backend_id(&bk("10.42.1.9", 8080)).expect("id");
    assert!(!before.contains(&Some(fresh)));
}

#[test]
fn the_first_flush_after_adoption_removes_what_no_service_wants() {
    let mut s = syncer();
    s.set_service(&web_ref(), state(&web(), &web_slices(three_ready())));
    flush(&mut s);
    let maps = std::mem::take(s.maps_mut());
    // The Service was deleted while the agent was down.
    let mut again = Syncer::adopt(maps, IdLimits::default()).expect("adopt");
    assert!(again.is_pending());
    flush(&mut again);
    assert!(again.maps().services.is_empty());
    assert!(again.maps().backends.is_empty());
    assert!(again.maps().rev_nat.is_empty());
}

#[test]
fn adoption_repairs_leftovers_of_a_crash() {
    let mut s = syncer();
    s.set_service(&web_ref(), state(&web(), &web_slices(three_ready())));
    flush(&mut s);
    let mut maps = std::mem::take(s.maps_mut());
    maps.check = false;
    let f = fk("10.43.0.10", 80, proto::TCP);
    let rev = maps.services[&service_key(&f, scope::INTERNAL, 0)].rev_nat_id;
    // A slot beyond the count (a crash between master and slot delete), a
    // duplicate backend, an orphan reverse-NAT entry and a malformed key.
    maps.services.insert(
        service_key(&f, scope::INTERNAL, 9),
        ServiceValue {
            backend_id: 1,
            rev_nat_id: rev,
            ..ServiceValue::default()
        },
    );
    let dup = *maps.backends.values().next().expect("a backend");
    maps.backends.insert(500, dup);
    maps.rev_nat.insert(
        77,
        RevNat {
            addr_be: 1,
            port_be: 1,
            _pad: 0,
        },
    );
    let bad = ServiceKey {
        scope: 7,
        ..service_key(&f, scope::INTERNAL, 0)
    };
    maps.services.insert(bad, ServiceValue::default());
    maps.check = true;

    let mut again = Syncer::adopt(maps, IdLimits::default()).expect("adopt");
    again.set_service(&web_ref(), state(&web(), &web_slices(three_ready())));
    flush(&mut again);
    let m = again.maps();
    assert!(
        !m.services
            .contains_key(&service_key(&f, scope::INTERNAL, 9))
    );
    assert!(!m.services.contains_key(&bad));
    assert!(!m.backends.contains_key(&500));
    assert!(!m.rev_nat.contains_key(&77));
    assert_eq!(m.backends.len(), 3);
    assert_eq!(m.services.len(), 4, "one scope: a master and 3 slots");
    assert_eq!(again.rev_nat_id(&f), Some(rev));
}

#[test]
fn running_out_of_reverse_nat_ids_is_an_error_that_spares_the_rest() {
    let mut s = Syncer::adopt(
        FakeMaps::new(),
        IdLimits {
            backends: 100,
            rev_nat: 2,
        },
    )
    .expect("adopt");
    let svc = |name: &str, vip: &str| {
        let mut x = service(name, vip, vec![port("http", 80, "TCP")]);
        x.metadata.name = Some(name.to_owned());
        x
    };
    let refs: Vec<ServiceRef> = ["a", "b", "c"]
        .iter()
        .map(|n| ServiceRef::new("default", n))
        .collect();
    for (r, (name, vip)) in
        refs.iter()
            .zip([("a", "10.43.0.1"), ("b", "10.43.0.2"), ("c", "10.43.0.3")])
    {
        s.set_service(r, state(&svc(name, vip), &[]));
    }
    let err = s.flush().expect_err("three frontends, two ids");
    assert!(matches!(err, Error::IdsExhausted { max: 2, .. }), "{err}");
    assert!(s.maps().violations.is_empty());
    assert_eq!(s.maps().rev_nat.len(), 2);
    assert_eq!(s.maps().services.len(), 2, "two frontends, a master each");
    assert!(s.is_pending());
    // One goes: the third gets its id.
    s.set_service(&refs[0], ServiceState::default());
    flush(&mut s);
    assert_eq!(s.maps().rev_nat.len(), 2);
    assert!(s.rev_nat_id(&fk("10.43.0.3", 80, proto::TCP)).is_some());
    assert!(!s.is_pending());
}

#[test]
fn running_out_of_backend_ids_leaves_the_backend_out_of_the_slots() {
    let mut s = Syncer::adopt(
        FakeMaps::new(),
        IdLimits {
            backends: 2,
            rev_nat: 10,
        },
    )
    .expect("adopt");
    s.set_service(&web_ref(), state(&web(), &web_slices(three_ready())));
    assert!(matches!(
        s.flush(),
        Err(Error::IdsExhausted {
            what: "backend",
            ..
        })
    ));
    assert!(s.maps().violations.is_empty());
    let f = fk("10.43.0.10", 80, proto::TCP);
    assert_eq!(slots_of(s.maps(), f, scope::INTERNAL).len(), 2);
    s.set_service(
        &web_ref(),
        state(&web(), &web_slices(three_ready()[1..].to_vec())),
    );
    flush(&mut s);
    assert_eq!(
        slots_of(s.maps(), f, scope::INTERNAL),
        [bk("10.42.0.2", 8080), bk("10.42.1.3", 8080)]
    );
}

/// The SERVICES entries with backend ids replaced by what they name.
fn resolved(maps: &FakeMaps) -> BTreeMap<ServiceKey, (Option<BackendKey>, u16, u16)> {
    maps.services
        .iter()
        .map(|(k, v)| {
            let backend = maps.backends.get(&v.backend_id).map(|b| BackendKey {
                addr: Ipv4Addr::from(u32::from_be(b.addr_be)),
                port: u16::from_be(b.port_be),
                proto: b.proto,
            });
            (*k, (backend, v.count, v.flags))
        })
        .collect()
}

#[test]
fn a_failed_write_leaves_a_consistent_state_and_the_next_flush_finishes() {
    // Fail at every possible point of a from-scratch sync followed by an
    // update; each time the kernel's view stays whole and a retry converges.
    let first = state(&web(), &web_slices(three_ready()));
    let mut eps = three_ready();
    eps.remove(0);
    eps.push(ep("10.42.1.5", "node-b", READY));
    let second = state(&web(), &web_slices(eps));

    let mut clean = syncer();
    clean.set_service(&web_ref(), first.clone());
    flush(&mut clean);
    clean.set_service(&web_ref(), second.clone());
    flush(&mut clean);
    let want = resolved(clean.maps());

    for fail_at in 0..30 {
        let mut s = syncer();
        s.set_service(&web_ref(), first.clone());
        flush(&mut s);
        s.maps_mut().fail_after = Some(fail_at);
        s.set_service(&web_ref(), second.clone());
        let failed = s.flush().is_err();
        assert!(
            s.maps().violations.is_empty(),
            "fail at {fail_at}: {:#?}",
            s.maps().violations
        );
        s.maps_mut().fail_after = None;
        flush(&mut s);
        // Ids may differ (one handed out before a failed write is not
        // reused at once); what they name may not.
        assert_eq!(resolved(s.maps()), want, "fail at {fail_at} ({failed})");
        assert_eq!(s.maps().backends.len(), clean.maps().backends.len());
        assert_eq!(s.maps().rev_nat.len(), 1);
        assert!(!s.is_pending());
    }
}

#[test]
fn a_failed_batch_from_scratch_is_finished_by_the_next_flush() {
    // Two Services, so each step's batch holds several entries; fail at
    // every point of the from-scratch sync.
    let other = service("other", "10.43.0.11", vec![port("http", 80, "TCP")]);
    let other_ref = ServiceRef::new("default", "other");
    let other_slices = vec![slice(
        "other",
        "other-1",
        &[("http", 8080, "TCP")],
        three_ready(),
    )];
    let wanted = [
        (web_ref(), state(&web(), &web_slices(three_ready()))),
        (other_ref, state(&other, &other_slices)),
    ];
    let mut clean = syncer();
    for (svc, st) in &wanted {
        clean.set_service(svc, st.clone());
    }
    let full = flush(&mut clean);
    let want = resolved(clean.maps());
    // 3 shared backends, 2 reverse NATs, 2 × (master + 3 slots).
    assert_eq!(full.writes, 13, "{full:?}");

    for fail_at in 0..full.writes {
        let mut s = syncer();
        for (svc, st) in &wanted {
            s.set_service(svc, st.clone());
        }
        s.maps_mut().fail_after = Some(fail_at);
        assert!(s.flush().is_err(), "fail at {fail_at}");
        assert!(
            s.maps().violations.is_empty(),
            "fail at {fail_at}: {:#?}",
            s.maps().violations
        );
        s.maps_mut().fail_after = None;
        let rest = flush(&mut s);
        assert_eq!(
            rest.writes,
            full.writes - fail_at,
            "fail at {fail_at}: only the rest is written"
        );
        assert_eq!(resolved(s.maps()), want, "fail at {fail_at}");
        assert!(!s.is_pending());
    }
}

#[test]
fn the_view_lists_frontends_backends_and_connection_counts() {
    let mut s = syncer();
    let mut svc = web();
    spec(&mut svc).type_ = Some("NodePort".to_owned());
    spec(&mut svc).external_traffic_policy = Some("Local".to_owned());
    spec(&mut svc).ports.as_mut().expect("ports")[0].node_port = Some(30080);
    let mut eps = three_ready();
    eps.push(ep("10.42.0.9", NODE, SERVING_TERMINATING));
    s.set_service(&web_ref(), state(&svc, &web_slices(eps)));
    flush(&mut s);
    let id = s.backend_id(&bk("10.42.1.3", 8080)).expect("id");
    s.maps_mut().conns.insert(id, 42);
    let view = read_services(s.maps()).expect("view");
    assert_eq!(view.frontends.len(), 2);
    assert_eq!(view.unslotted.len(), 1);
    let text = view.to_string();
    let expected_lines = [
        "10.43.0.10:80/TCP rev-nat=",
        "  → 10.42.1.3:8080 id=",
        "conns=42",
        "*:30080/TCP rev-nat=",
        "nodeport external-local-only",
        "  internal → 10.42.1.3:8080",
        "  external → 10.42.0.1:8080",
        "backends in no slot",
        "10.42.0.9:8080",
        "local terminating",
    ];
    for line in expected_lines {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    assert!(!text.contains("  external → 10.42.1.3"), "{text}");
    let _ = Backend::default();
}
