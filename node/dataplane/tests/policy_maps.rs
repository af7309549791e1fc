//! The policy sync against the real maps, pinned in a private bpffs by the
//! real object: a compiled state is written and read back, the kernel's own
//! longest-prefix lookups on the pinned tries give the verdicts the compile
//! meant (so the key layout is the kernel's), and a second syncer over the
//! same pins, with a compiler that adopts the pinned identities, writes
//! nothing. A cluster of 5,000 pods and 1,000 policies is programmed
//! from scratch (the times are printed).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Map, MapData};
use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::serde_json::{self, json};
use kestrel_dataplane::policy::{
    PinnedPolicyMaps, PolicyCompiler, PolicyMaps, PolicyNode, PolicySyncer, addr_be,
};
use kestrel_dataplane::{Dataplane, LoadOptions};
use kestrel_ebpf_common::map_names;
use kestrel_ebpf_common::policy::{
    IpcacheEntry, PolicyEntry, PolicyKey, direction, endpoint_flags, identity,
};
use kestrel_testkit::{BpfFs, privileged_test_can_run};

fn can_run(test: &str) -> bool {
    let built = (
        kestrel_dataplane::object_is_built(),
        "the eBPF object was not built (AYA_BUILD_SKIP=1)",
    );
    privileged_test_can_run(test, &[built])
}

fn pod(ns: &str, name: &str, ip: Ipv4Addr, node: &str, app: &str, port: Option<u16>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.to_owned()),
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            containers: vec![Container {
                name: "c".to_owned(),
                ports: port.map(|p| {
                    vec![ContainerPort {
                        name: Some("http".to_owned()),
                        container_port: i32::from(p),
                        ..ContainerPort::default()
                    }]
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            pod_ip: Some(ip.to_string()),
            ..PodStatus::default()
        }),
    }
}

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                name.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }))
    .expect("a valid NetworkPolicy")
}

/// 60 local and 200 remote pods in 4 namespaces, and policies with
/// selectors, ipBlocks, named ports and ranges.
fn world() -> (PolicyNode, Vec<Pod>, Vec<Namespace>, Vec<NetworkPolicy>) {
    let node = PolicyNode {
        name: "n1".to_owned(),
        ips: vec![Ipv4Addr::new(10, 41, 0, 2)],
    };
    let apps = ["web", "db", "cache", "client"];
    let mut pods = Vec::new();
    for i in 0..260u32 {
        let ns = format!("ns{}", i % 4);
        let (host, ip) = if i < 60 {
            ("n1", Ipv4Addr::new(10, 244, 1, (i + 1) as u8))
        } else {
            (
                "n2",
                Ipv4Addr::new(10, 244, 2 + (i / 250) as u8, (i % 250 + 1) as u8),
            )
        };
        let app = apps[(i / 4) as usize % apps.len()];
        pods.push(pod(
            &ns,
            &format!("p{i}"),
            ip,
            host,
            app,
            Some(8000 + (i % 3) as u16),
        ));
    }
    let namespaces = (0..4).map(|i| namespace(&format!("ns{i}"))).collect();
    let mut policies = Vec::new();
    for i in 0..4 {
        let ns = format!("ns{i}");
        policies.push(policy(
            &ns,
            "web",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}],
                                "ports": [{"port": "http"}, {"port": 9000, "endPort": 9100}]},
                               {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}]}),
        ));
        policies.push(policy(
            &ns,
            "db-egress",
            json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.2.0/24"]}}],
                               "ports": [{"protocol": "UDP", "port": 53}]}]}),
        ));
    }
    (node, pods, namespaces, policies)
}

fn open_trie<K: aya::Pod, V: aya::Pod>(bpffs: &BpfFs, name: &str) -> LpmTrie<MapData, K, V> {
    let data = MapData::from_pin(bpffs.path().join(name)).expect("open the pinned trie");
    let map = Map::from_map_data(data).expect("a map");
    LpmTrie::try_from(map).expect("an LPM trie")
}

#[test]
fn programs_reads_back_looks_up_and_adopts() {
    if !can_run("programs_reads_back_looks_up_and_adopts") {
        return;
    }
    let bpffs = BpfFs::new();
    let _dataplane = Dataplane::load(&LoadOptions::new(bpffs.path())).expect("loading the object");

    let (node, pods, namespaces, policies) = world();
    let mut compiler = PolicyCompiler::new();
    let want = compiler.compile(&node, &pods, &namespaces, &policies).state;
    assert_eq!(want.endpoints.len(), 60);
    assert!(want.entries.len() > 100, "{} entries", want.entries.len());

    let mut syncer = PolicySyncer::adopt(PinnedPolicyMaps::open(bpffs.path()).expect("open pins"))
        .expect("adopt empty maps");
    let stats = syncer.sync(&want).expect("first sync");
    assert_eq!(
        stats.writes(),
        want.ipcache.len() + want.endpoints.len() + want.entries.len()
    );
    assert_eq!(stats.deletes(), 0);

    // Read back through a separate handle.
    let maps = PinnedPolicyMaps::open(bpffs.path()).expect("open pins again");
    assert_eq!(
        maps.dump_ipcache().expect("dump"),
        want.ipcache.clone().into_iter().collect::<Vec<_>>()
    );
    assert_eq!(
        maps.dump_endpoints().expect("dump"),
        want.endpoints.clone().into_iter().collect::<Vec<_>>()
    );
    assert_eq!(
        maps.dump_entries().expect("dump"),
        want.entries.clone().into_iter().collect::<Vec<_>>()
    );

    // The kernel's own longest-prefix lookups.
    let ipcache: LpmTrie<MapData, u32, IpcacheEntry> = open_trie(&bpffs, map_names::IPCACHE);
    let trie: LpmTrie<MapData, PolicyKey, PolicyEntry> = open_trie(&bpffs, map_names::POLICY);
    let ident = |addr: Ipv4Addr| {
        ipcache
            .get(&Key::new(32, addr_be(addr)), 0)
            .map_or(identity::WORLD, |e| e.identity)
    };
    let allowed = |local: Ipv4Addr, peer: Ipv4Addr, dir: u8, proto: u8, port: u16| {
        let look = |id: u32| {
            trie.get(
                &Key::new(
                    96,
                    PolicyKey::lookup(addr_be(local), id, dir, proto, port.to_be()),
                ),
                0,
            )
            .is_ok()
        };
        look(ident(peer)) || look(identity::ANY)
    };
    assert_eq!(ident(Ipv4Addr::new(10, 41, 0, 2)), identity::HOST);
    assert_eq!(ident(Ipv4Addr::new(8, 8, 8, 8)), identity::WORLD);
    assert!(ident(Ipv4Addr::new(192, 168, 7, 7)) >= identity::FIRST_CIDR);
    assert_ne!(
        ident(Ipv4Addr::new(192, 168, 1, 7)),
        ident(Ipv4Addr::new(192, 168, 7, 7)),
        "the exception is its own prefix"
    );

    // p0 (ns0, web, http 8000) is local; p2 (ns2, web)... find a client
    // pod in another namespace: apps cycle every 4 pods, clients are
    // i/4 % 4 == 3, e.g. p12..p15; p12 is in ns0, p13 in ns1.
    let web = Ipv4Addr::new(10, 244, 1, 1); // p0: ns0, web, http = 8000
    let client = Ipv4Addr::new(10, 244, 1, 14); // p13: ns1, client
    let db = Ipv4Addr::new(10, 244, 1, 5); // p4: ns0, db
    let tcp = 6;
    let ep = want.endpoints[&web];
    assert_eq!(ep.flags, endpoint_flags::INGRESS_ISOLATED);
    assert!(
        allowed(web, client, direction::INGRESS, tcp, 8000),
        "named port"
    );
    assert!(!allowed(web, client, direction::INGRESS, tcp, 8001));
    assert!(
        allowed(web, client, direction::INGRESS, tcp, 9000),
        "range start"
    );
    assert!(
        allowed(web, client, direction::INGRESS, tcp, 9077),
        "range middle"
    );
    assert!(
        allowed(web, client, direction::INGRESS, tcp, 9100),
        "range end"
    );
    assert!(!allowed(web, client, direction::INGRESS, tcp, 9101));
    assert!(
        !allowed(web, db, direction::INGRESS, tcp, 8000),
        "db is no client"
    );
    assert!(
        allowed(
            web,
            Ipv4Addr::new(192, 168, 7, 7),
            direction::INGRESS,
            17,
            5
        ),
        "ipBlock any port"
    );
    assert!(
        !allowed(
            web,
            Ipv4Addr::new(192, 168, 1, 7),
            direction::INGRESS,
            tcp,
            8000
        ),
        "except"
    );
    assert!(allowed(
        db,
        Ipv4Addr::new(10, 9, 9, 9),
        direction::EGRESS,
        17,
        53
    ));
    assert!(!allowed(
        db,
        Ipv4Addr::new(10, 9, 9, 9),
        direction::EGRESS,
        tcp,
        53
    ));
    assert!(
        !allowed(db, Ipv4Addr::new(10, 244, 2, 9), direction::EGRESS, 17, 53),
        "except"
    );
    assert!(
        allowed(db, Ipv4Addr::new(10, 244, 1, 40), direction::EGRESS, 17, 53),
        "a pod in the block"
    );

    // A restarted agent: adopt the pins, compile with the pinned
    // identities, write nothing.
    let mut second = PolicySyncer::adopt(PinnedPolicyMaps::open(bpffs.path()).expect("open pins"))
        .expect("adopt");
    let mut fresh = PolicyCompiler::new();
    fresh.adopt_ipcache(second.programmed().ipcache.clone());
    let again = fresh.compile(&node, &pods, &namespaces, &policies).state;
    assert_eq!(again, want);
    let stats = second.sync(&again).expect("second sync");
    assert_eq!(stats.writes() + stats.deletes(), 0, "{stats:?}");

    // Emptying removes everything.
    let stats = second.sync(&Default::default()).expect("empty");
    assert_eq!(stats.writes(), 0);
    assert!(maps.dump_entries().expect("dump").is_empty());
    assert!(maps.dump_ipcache().expect("dump").is_empty());
    assert!(maps.dump_endpoints().expect("dump").is_empty());
}

/// 5,000 pods (110 local) in 50 namespaces and 1,000 policies, written
/// into the real maps from scratch, then one label change (times printed).
#[test]
fn programs_a_large_cluster() {
    if !can_run("programs_a_large_cluster") {
        return;
    }
    let bpffs = BpfFs::new();
    let _dataplane = Dataplane::load(&LoadOptions::new(bpffs.path())).expect("loading the object");
    let node = PolicyNode {
        name: "n1".to_owned(),
        ips: vec![Ipv4Addr::new(10, 41, 0, 2)],
    };
    let mut pods = Vec::new();
    let mut namespaces = Vec::new();
    let mut policies = Vec::new();
    for n in 0..50u32 {
        let ns = format!("ns{n}");
        namespaces.push(namespace(&ns));
        for p in 0..100u32 {
            let i = n * 100 + p;
            let ip = Ipv4Addr::new(10, 100, (i / 256) as u8, (i % 256) as u8);
            let host = if i % 45 == 0 && i < 4_950 { "n1" } else { "n2" };
            pods.push(pod(
                &ns,
                &format!("pod{p}"),
                ip,
                host,
                &format!("app{}", p % 10),
                Some(8080),
            ));
        }
        policies.push(policy(
            &ns,
            "default-deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        ));
        policies.push(policy(
            &ns,
            "dns",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns0"}},
                                       "podSelector": {"matchLabels": {"app": "app0"}}}],
                               "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}]}),
        ));
        for a in 0..18u32 {
            policies.push(policy(
                &ns,
                &format!("app{a}"),
                json!({"podSelector": {"matchLabels": {"app": format!("app{}", a % 10)}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("app{}", (a + 1) % 10)}}},
                                             {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "app9"}}}],
                                    "ports": [{"port": "http"}, {"port": 9000 + a, "endPort": 9100}]}],
                       "egress": [{"to": [{"ipBlock": {"cidr": format!("172.{}.0.0/16", a + 16), "except": [format!("172.{}.1.0/24", a + 16)]}}],
                                   "ports": [{"port": 443}]}]}),
            ));
        }
    }
    assert_eq!((pods.len(), policies.len()), (5_000, 1_000));

    let mut compiler = PolicyCompiler::new();
    let started = std::time::Instant::now();
    let want = compiler.compile(&node, &pods, &namespaces, &policies).state;
    let compiled = started.elapsed();
    let mut syncer = PolicySyncer::adopt(PinnedPolicyMaps::open(bpffs.path()).expect("open pins"))
        .expect("adopt empty maps");
    let started = std::time::Instant::now();
    let stats = syncer.sync(&want).expect("first sync");
    let written = started.elapsed();
    assert_eq!(want.endpoints.len(), 110);
    println!(
        "5,000 pods / 1,000 policies into the kernel maps: compile {:.1} ms, write {:.1} ms \
         ({} writes: {} ipcache, {} endpoints, {} entries)",
        compiled.as_secs_f64() * 1e3,
        written.as_secs_f64() * 1e3,
        stats.writes(),
        want.ipcache.len(),
        want.endpoints.len(),
        want.entries.len(),
    );

    // One pod gets a new label value: a new identity.
    if let Some(l) = pods[1].metadata.labels.as_mut() {
        l.insert("canary".to_owned(), "yes".to_owned());
    }
    let started = std::time::Instant::now();
    let next = compiler.compile(&node, &pods, &namespaces, &policies).state;
    let compiled = started.elapsed();
    let started = std::time::Instant::now();
    let stats = syncer.sync(&next).expect("second sync");
    println!(
        "one label change: compile {:.1} ms, diff+write {:.1} ms ({} writes, {} deletes)",
        compiled.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3,
        stats.writes(),
        stats.deletes(),
    );
    let maps = PinnedPolicyMaps::open(bpffs.path()).expect("open pins again");
    assert_eq!(maps.dump_entries().expect("dump").len(), next.entries.len());
}
