//! The service sync against the real maps, pinned in a private bpffs by the
//! real object: a realistic set of Services is programmed and read back, one
//! endpoint change touches only its own entries, a second syncer over the
//! same pins adopts every id, and 10,000 Services × 10 endpoints are
//! programmed from scratch (the time is printed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kestrel_dataplane::sync::{
    BackendKey, FrontendKey, IdLimits, LbMaps, NodeIdentity, PinnedMaps, ServiceRef, ServiceState,
    Syncer, read_services, service_state,
};
use kestrel_dataplane::{Dataplane, LoadOptions, MapSizes};
use kestrel_ebpf_common::lb::{
    Backend, RevNat, ServiceKey, ServiceValue, backend_flags, scope, svc_flags,
};
use kestrel_testkit::{BpfFs, privileged_test_can_run};

const NODE: &str = "node-a";

fn node() -> NodeIdentity {
    NodeIdentity {
        name: NODE.to_owned(),
        ips: vec![Ipv4Addr::new(10, 41, 0, 2)],
    }
}

fn can_run(test: &str) -> bool {
    let built = (
        kestrel_dataplane::object_is_built(),
        "the eBPF object was not built (AYA_BUILD_SKIP=1)",
    );
    privileged_test_can_run(test, &[built])
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.to_owned()),
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

/// The i-th address of a /16, skipping .0 and .255 host parts.
fn addr(prefix: [u8; 2], i: u32) -> Ipv4Addr {
    let host = i % 250 + 1;
    let net = i / 250;
    Ipv4Addr::new(prefix[0], prefix[1], (net % 256) as u8, host as u8)
}

struct Spec {
    name: String,
    vip: Ipv4Addr,
    type_: &'static str,
    ports: Vec<(&'static str, u16, &'static str, Option<u16>)>,
    etp_local: bool,
    affinity: bool,
}

fn service(s: &Spec) -> Service {
    Service {
        metadata: meta("default", &s.name),
        spec: Some(ServiceSpec {
            type_: Some(s.type_.to_owned()),
            cluster_ip: Some(s.vip.to_string()),
            cluster_ips: Some(vec![s.vip.to_string()]),
            external_traffic_policy: s.etp_local.then(|| "Local".to_owned()),
            session_affinity: s.affinity.then(|| "ClientIP".to_owned()),
            ports: Some(
                s.ports
                    .iter()
                    .map(|&(name, port, proto, node_port)| ServicePort {
                        name: Some(name.to_owned()),
                        port: i32::from(port),
                        protocol: Some(proto.to_owned()),
                        node_port: node_port.map(i32::from),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn endpoint(ip: Ipv4Addr, node: &str, ready: bool, terminating: bool) -> Endpoint {
    Endpoint {
        addresses: vec![ip.to_string()],
        node_name: Some(node.to_owned()),
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready || terminating),
            terminating: Some(terminating),
        }),
        ..Endpoint::default()
    }
}

fn slice(
    svc: &str,
    name: &str,
    ports: &[(&str, u16, &str)],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let mut m = meta("default", name);
    m.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_owned(),
        svc.to_owned(),
    )]));
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".to_owned(),
        endpoints: Some(endpoints),
        ports: Some(
            ports
                .iter()
                .map(|&(name, port, proto)| EndpointPort {
                    name: Some(name.to_owned()),
                    port: Some(i32::from(port)),
                    protocol: Some(proto.to_owned()),
                    app_protocol: None,
                })
                .collect(),
        ),
    }
}

/// A realistic mix: ClusterIP web services with two ports, a DNS-like
/// Service (UDP and TCP), NodePorts with externalTrafficPolicy Local and
/// affinity, endpoints spread over two nodes in two slices, a terminating
/// endpoint per service.
fn realistic() -> Vec<(Service, Vec<EndpointSlice>)> {
    let mut out = Vec::new();
    let mut pod = 0;
    for i in 0..40u32 {
        let name = format!("svc-{i}");
        let spec = Spec {
            name: name.clone(),
            vip: addr([10, 43], i),
            type_: if i % 4 == 0 { "NodePort" } else { "ClusterIP" },
            ports: if i == 1 {
                vec![("dns", 53, "UDP", None), ("dns-tcp", 53, "TCP", None)]
            } else {
                vec![
                    ("http", 80, "TCP", (i % 4 == 0).then_some(30000 + i as u16)),
                    ("metrics", 9090, "TCP", None),
                ]
            },
            etp_local: i % 8 == 0,
            affinity: i % 5 == 0,
        };
        let ports: Vec<(&str, u16, &str)> = if i == 1 {
            vec![("dns", 5353, "UDP"), ("dns-tcp", 5353, "TCP")]
        } else {
            vec![("http", 8080, "TCP"), ("metrics", 9090, "TCP")]
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        for e in 0..5 {
            pod += 1;
            a.push(endpoint(addr([10, 42], pod), NODE, true, false));
            pod += 1;
            b.push(endpoint(
                addr([10, 42], 10_000 + pod),
                "node-b",
                e != 4,
                e == 4,
            ));
        }
        out.push((
            service(&spec),
            vec![
                slice(&name, &format!("{name}-a"), &ports, a),
                slice(&name, &format!("{name}-b"), &ports, b),
            ],
        ));
    }
    out
}

fn states(set: &[(Service, Vec<EndpointSlice>)]) -> Vec<(ServiceRef, ServiceState)> {
    set.iter()
        .map(|(svc, slices)| {
            let refs: Vec<&EndpointSlice> = slices.iter().collect();
            let name = svc.metadata.name.as_deref().unwrap_or_default();
            (
                ServiceRef::new("default", name),
                service_state(svc, &refs, &node()),
            )
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    services: BTreeMap<ServiceKey, ServiceValue>,
    backends: BTreeMap<u32, Backend>,
    rev_nat: BTreeMap<u16, RevNat>,
}

fn snapshot(maps: &impl LbMaps) -> Snapshot {
    Snapshot {
        services: maps
            .dump_services()
            .expect("dump SERVICES")
            .into_iter()
            .collect(),
        backends: maps
            .dump_backends()
            .expect("dump BACKENDS")
            .into_iter()
            .collect(),
        rev_nat: maps
            .dump_rev_nat()
            .expect("dump REV_NAT")
            .into_iter()
            .collect(),
    }
}

fn key(f: &FrontendKey, sc: u8, slot: u16) -> ServiceKey {
    ServiceKey {
        addr_be: u32::from(f.addr).to_be(),
        port_be: f.port.to_be(),
        proto: f.proto,
        scope: sc,
        slot,
        _pad: [0; 2],
    }
}

fn backend_of(b: &Backend) -> BackendKey {
    BackendKey {
        addr: Ipv4Addr::from(u32::from_be(b.addr_be)),
        port: u16::from_be(b.port_be),
        proto: b.proto,
    }
}

/// Checks that the maps hold exactly `want`, read back through the kernel.
fn assert_programmed(snap: &Snapshot, want: &[(ServiceRef, ServiceState)]) {
    let mut frontends = 0;
    let mut entries = 0;
    let mut backends = BTreeSet::new();
    for (svc, st) in want {
        backends.extend(st.backends.iter().map(|(k, f)| (*k, *f)));
        for (f, desired) in &st.frontends {
            frontends += 1;
            for sc in [scope::INTERNAL, scope::EXTERNAL] {
                if sc == scope::EXTERNAL && desired.scope(sc) == desired.scope(scope::INTERNAL) {
                    // Traffic from outside reads the INTERNAL scope.
                    assert!(
                        !snap.services.contains_key(&key(f, sc, 0)),
                        "{svc} {f}: an EXTERNAL scope like the INTERNAL one is written"
                    );
                    continue;
                }
                let master = snap
                    .services
                    .get(&key(f, sc, 0))
                    .unwrap_or_else(|| panic!("{svc}: no master for {f} scope {sc}"));
                assert_eq!(master.flags, desired.flags, "{svc} {f}");
                assert_eq!(
                    master.affinity_timeout_s, desired.affinity_timeout_s,
                    "{svc} {f}"
                );
                assert_eq!(
                    snap.rev_nat.get(&master.rev_nat_id),
                    Some(&RevNat {
                        addr_be: u32::from(f.addr).to_be(),
                        port_be: f.port.to_be(),
                        _pad: 0
                    }),
                    "{svc} {f}"
                );
                let got: BTreeSet<BackendKey> = (1..=master.count)
                    .map(|slot| {
                        let v = snap
                            .services
                            .get(&key(f, sc, slot))
                            .unwrap_or_else(|| panic!("{svc}: {f} misses slot {slot}"));
                        backend_of(&snap.backends[&v.backend_id])
                    })
                    .collect();
                let want: BTreeSet<BackendKey> = desired.scope(sc).iter().copied().collect();
                assert_eq!(got, want, "{svc} {f} scope {sc}");
                assert_eq!(usize::from(master.count), want.len());
                entries += 1 + want.len();
            }
        }
    }
    assert_eq!(
        snap.services.len(),
        entries,
        "no SERVICES entry beyond these"
    );
    assert_eq!(snap.rev_nat.len(), frontends);
    let got: BTreeSet<(BackendKey, u8)> = snap
        .backends
        .values()
        .map(|b| (backend_of(b), b.flags))
        .collect();
    assert_eq!(got, backends);
    assert_eq!(snap.backends.len(), backends.len(), "one id per backend");
    assert!(!snap.backends.contains_key(&0));
    assert!(!snap.rev_nat.contains_key(&0));
}

fn load(bpffs: &BpfFs, sizes: MapSizes) -> Dataplane {
    let mut options = LoadOptions::new(bpffs.path());
    options.sizes = sizes;
    Dataplane::load(&options).expect("loading the object with its maps pinned")
}

#[test]
fn programs_reads_back_updates_one_endpoint_and_adopts() {
    if !can_run("programs_reads_back_updates_one_endpoint_and_adopts") {
        return;
    }
    let bpffs = BpfFs::new();
    let _dataplane = load(&bpffs, MapSizes::default());

    let mut set = realistic();
    let want = states(&set);
    let mut syncer = Syncer::adopt(
        PinnedMaps::open(bpffs.path()).expect("open pins"),
        IdLimits::default(),
    )
    .expect("adopt empty maps");
    for (svc, st) in &want {
        syncer.set_service(svc, st.clone());
    }
    let stats = syncer.flush().expect("first sync");
    let before = snapshot(syncer.maps());
    assert_programmed(&before, &want);
    assert_eq!(
        stats.writes,
        before.services.len() + before.backends.len() + before.rev_nat.len()
    );
    // Spot checks of the semantics, read from the kernel.
    let np = FrontendKey {
        addr: Ipv4Addr::UNSPECIFIED,
        port: 30000,
        proto: 6,
    };
    let np_master = before.services[&key(&np, scope::EXTERNAL, 0)];
    assert_eq!(
        np_master.flags,
        svc_flags::NODE_PORT | svc_flags::EXT_LOCAL | svc_flags::AFFINITY
    );
    assert_eq!(np_master.affinity_timeout_s, 10_800);
    assert_eq!(np_master.count, 5, "eTP=Local: this node's 5 endpoints");
    assert_eq!(
        before.services[&key(&np, scope::INTERNAL, 0)].count,
        9,
        "all ready endpoints"
    );
    let terminating = before
        .backends
        .values()
        .filter(|b| b.flags & backend_flags::TERMINATING != 0)
        .count();
    assert_eq!(
        terminating,
        40 * 2,
        "one terminating pod per port of each service"
    );

    // One pod of svc-7 is replaced: its old address goes, a new one comes.
    let (svc7, slices7) = &mut set[7];
    let eps = slices7[0].endpoints.as_mut().expect("endpoints");
    let old_ip: Ipv4Addr = eps[2].addresses[0].parse().expect("ip");
    let new_ip = Ipv4Addr::new(10, 42, 250, 7);
    eps[2] = endpoint(new_ip, NODE, true, false);
    let svc7_ref = ServiceRef::new("default", "svc-7");
    let svc7_state = states(&[(svc7.clone(), slices7.clone())]).remove(0).1;
    syncer.set_service(&svc7_ref, svc7_state.clone());
    let stats = syncer.flush().expect("one endpoint");
    let after = snapshot(syncer.maps());
    let want: Vec<(ServiceRef, ServiceState)> = want
        .into_iter()
        .map(|(r, s)| {
            if r == svc7_ref {
                (r, svc7_state.clone())
            } else {
                (r, s)
            }
        })
        .collect();
    assert_programmed(&after, &want);

    // Exactly the entries of that endpoint changed: one backend out, one
    // in, and in each written scope of each of svc-7's two frontends the
    // one slot that held it now names the new one. Masters and reverse NAT: unchanged.
    let old_ids: Vec<u32> = before
        .backends
        .iter()
        .filter(|(_, b)| backend_of(b).addr == old_ip)
        .map(|(id, _)| *id)
        .collect();
    let new_ids: Vec<u32> = after
        .backends
        .iter()
        .filter(|(_, b)| backend_of(b).addr == new_ip)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        (old_ids.len(), new_ids.len()),
        (2, 2),
        "http and metrics ports"
    );
    let removed: Vec<u32> = before
        .backends
        .keys()
        .filter(|id| !after.backends.contains_key(id))
        .copied()
        .collect();
    let added: Vec<u32> = after
        .backends
        .keys()
        .filter(|id| !before.backends.contains_key(id))
        .copied()
        .collect();
    assert_eq!(removed, old_ids);
    assert_eq!(added, new_ids);
    let changed: Vec<(&ServiceKey, &ServiceValue, &ServiceValue)> = before
        .services
        .iter()
        .filter_map(|(k, v)| {
            let now = after.services.get(k).expect("no service entry disappears");
            (now != v).then_some((k, v, now))
        })
        .collect();
    assert_eq!(after.services.len(), before.services.len());
    // Each frontend's EXTERNAL scope is written only where it differs.
    let written_scopes: usize = svc7_state
        .frontends
        .values()
        .map(|f| {
            if f.scope(scope::EXTERNAL) == f.scope(scope::INTERNAL) {
                1
            } else {
                2
            }
        })
        .sum();
    assert_eq!(written_scopes, 2, "svc-7: two ClusterIP frontends");
    assert_eq!(
        changed.len(),
        written_scopes,
        "one slot per written scope per frontend: {changed:#?}"
    );
    for (k, old, new) in &changed {
        assert_ne!(k.slot, 0, "masters unchanged");
        assert!(old_ids.contains(&old.backend_id) && new_ids.contains(&new.backend_id));
        assert_eq!(
            Ipv4Addr::from(u32::from_be(k.addr_be)),
            Ipv4Addr::new(10, 43, 0, 8)
        );
    }
    assert_eq!(after.rev_nat, before.rev_nat);
    assert_eq!((stats.writes, stats.deletes), (2 + written_scopes, 2));

    // A restarted agent: a second syncer over the same pins adopts every id
    // and has nothing to write.
    drop(syncer);
    let _again = load(&bpffs, MapSizes::default());
    let mut adopted = Syncer::adopt(
        PinnedMaps::open(bpffs.path()).expect("open pins"),
        IdLimits::default(),
    )
    .expect("adopt");
    for (svc, st) in &want {
        for b in st.backends.keys() {
            let id = adopted.backend_id(b).expect("adopted backend");
            assert_eq!(backend_of(&after.backends[&id]), *b);
        }
        for f in st.frontends.keys() {
            let id = adopted.rev_nat_id(f).expect("adopted rev-nat");
            assert_eq!(
                after.services[&key(f, scope::INTERNAL, 0)].rev_nat_id,
                id,
                "{svc} {f}"
            );
        }
        adopted.set_service(svc, st.clone());
    }
    let stats = adopted.flush().expect("sync after adoption");
    assert_eq!((stats.writes, stats.deletes), (0, 0));
    assert_eq!(snapshot(adopted.maps()), after);

    let view = read_services(adopted.maps()).expect("view").to_string();
    assert!(view.contains("*:30000/TCP rev-nat="), "{view}");
    assert!(
        view.contains("nodeport external-local-only affinity=10800s"),
        "{view}"
    );
    println!("{}", view.lines().take(12).collect::<Vec<_>>().join("\n"));
}

#[test]
fn ten_thousand_services_from_scratch() {
    if !can_run("ten_thousand_services_from_scratch") {
        return;
    }
    const SERVICES: u32 = 10_000;
    const ENDPOINTS: u32 = 10;
    let bpffs = BpfFs::new();
    // 100,000 distinct backends do not fit the default 65,536.
    let sizes = MapSizes {
        backends: 131_072,
        ..MapSizes::default()
    };
    let _dataplane = load(&bpffs, sizes);

    let set: Vec<(Service, Vec<EndpointSlice>)> = (0..SERVICES)
        .map(|i| {
            let name = format!("svc-{i}");
            let spec = Spec {
                name: name.clone(),
                vip: addr([10, 43], i),
                type_: "ClusterIP",
                ports: vec![("http", 80, "TCP", None)],
                etp_local: false,
                affinity: false,
            };
            let eps = (0..ENDPOINTS)
                .map(|e| {
                    let n = if e % 2 == 0 { NODE } else { "node-b" };
                    // 100,000 distinct pod addresses from 10.64.0.1 on.
                    let pod = Ipv4Addr::from(
                        u32::from(Ipv4Addr::new(10, 64, 0, 0)) + i * ENDPOINTS + e + 1,
                    );
                    endpoint(pod, n, true, false)
                })
                .collect();
            let slices = vec![slice(
                &name,
                &format!("{name}-1"),
                &[("http", 8080, "TCP")],
                eps,
            )];
            (service(&spec), slices)
        })
        .collect();

    let started = Instant::now();
    let want = states(&set);
    let computed = started.elapsed();
    let maps = PinnedMaps::open(bpffs.path()).expect("open pins");
    let mut syncer = Syncer::adopt(maps, IdLimits::default()).expect("adopt");
    let t = Instant::now();
    for (svc, st) in &want {
        syncer.set_service(svc, st.clone());
    }
    let stats = syncer.flush().expect("from scratch");
    let applied = t.elapsed();
    let total = started.elapsed();
    // Per ClusterIP: one scope (its EXTERNAL one would be the same) of a
    // master and 10 slots; 10 backends; one reverse NAT.
    let entries = u64::from(SERVICES) * (1 + u64::from(ENDPOINTS))
        + u64::from(SERVICES * ENDPOINTS)
        + u64::from(SERVICES);
    assert_eq!(stats.writes as u64, entries);
    println!(
        "10,000 services x 10 endpoints from scratch: desired state {:.0} ms, diff + {} map writes {:.0} ms, total {:.0} ms",
        computed.as_secs_f64() * 1e3,
        stats.writes,
        applied.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    );

    // One endpoint change in the full set, five times over (each time a
    // new address for the same endpoint).
    let (svc, slices) = &set[1234];
    let mut slices = slices.clone();
    let mut times = Vec::new();
    for k in 1..=5 {
        slices[0].endpoints.as_mut().expect("eps")[3] =
            endpoint(Ipv4Addr::new(10, 44, 0, k), NODE, true, false);
        let refs: Vec<&EndpointSlice> = slices.iter().collect();
        let t = Instant::now();
        syncer.set_service(
            &ServiceRef::new("default", "svc-1234"),
            service_state(svc, &refs, &node()),
        );
        let stats = syncer.flush().expect("one endpoint");
        times.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(
            (stats.writes, stats.deletes),
            (2, 1),
            "a backend and its slot, the old backend out"
        );
    }
    println!(
        "one endpoint change among 10,000 services (2 writes, 1 delete), 5 times: {}",
        times
            .iter()
            .map(|ms| format!("{ms:.3} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // A restart: adoption reads everything back; the first sync writes nothing.
    drop(syncer);
    let t = Instant::now();
    let mut adopted = Syncer::adopt(
        PinnedMaps::open(bpffs.path()).expect("open pins"),
        IdLimits::default(),
    )
    .expect("adopt");
    let adopt_time = t.elapsed();
    let t = Instant::now();
    for (svc, st) in want.into_iter().skip(1) {
        adopted.set_service(&svc, st);
    }
    // svc-0 is gone meanwhile.
    let stats = adopted.flush().expect("resync");
    println!(
        "restart over 10,000 services: adopting {:.0} ms, resync {:.0} ms ({} writes, {} deletes)",
        adopt_time.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3,
        stats.writes,
        stats.deletes
    );
    // svc-1234 was handed in with its old endpoints again: a backend and
    // its slot written, 1 delete back; svc-0: its master and 10 slots, 1
    // rev-nat and 10 backends.
    assert_eq!((stats.writes, stats.deletes), (2, 1 + 11 + 1 + 10));
}

#[test]
fn a_full_map_stops_a_batch_part_way_and_nothing_is_lost_track_of() {
    if !can_run("a_full_map_stops_a_batch_part_way_and_nothing_is_lost_track_of") {
        return;
    }
    const ROOM: usize = 64;
    let bpffs = BpfFs::new();
    let sizes = MapSizes {
        services: ROOM as u32,
        ..MapSizes::default()
    };
    let _dataplane = load(&bpffs, sizes);
    let want = states(&realistic());
    let maps = PinnedMaps::open(bpffs.path()).expect("open pins");
    let mut syncer = Syncer::adopt(maps, IdLimits::default()).expect("adopt");
    for (svc, st) in &want {
        syncer.set_service(svc, st.clone());
    }

    // The kernel stops the slot batch when the map is full.
    let err = syncer
        .flush()
        .expect_err("64 entries cannot hold 40 services");
    let what = err.to_string();
    assert!(what.contains("SERVICES"), "{what}");
    let snap = snapshot(syncer.maps());
    assert_eq!(
        snap.services.len(),
        ROOM,
        "the batch went in up to the limit"
    );
    assert!(
        snap.services.keys().all(|k| k.slot != 0),
        "no master before every slot is in: {:?}",
        snap.services.keys().find(|k| k.slot == 0)
    );
    assert!(!snap.backends.is_empty() && !snap.rev_nat.is_empty());

    // Every entry the stopped batch wrote is known: removing every Service
    // leaves nothing behind.
    for (svc, _) in &want {
        syncer.set_service(svc, ServiceState::default());
    }
    let stats = syncer.flush().expect("deleting fits");
    let snap = snapshot(syncer.maps());
    assert!(
        snap.services.is_empty() && snap.backends.is_empty() && snap.rev_nat.is_empty(),
        "left behind: {snap:?}"
    );
    assert!(stats.deletes >= ROOM, "{stats:?}");

    // The maps work on: one Service fits.
    let one = &want[1..2];
    for (svc, st) in one {
        syncer.set_service(svc, st.clone());
    }
    syncer.flush().expect("one service fits");
    assert_programmed(&snapshot(syncer.maps()), one);
}
