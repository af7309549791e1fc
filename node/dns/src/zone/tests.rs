//! The specification's records, case by case, including its examples.

use super::*;

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

fn port(name: &str, proto: &str, port: u16) -> PortInfo {
    PortInfo {
        name: name.into(),
        protocol: proto.into(),
        port,
    }
}

fn ep(addr: &str, hostname: Option<&str>, ready: bool) -> EndpointInfo {
    EndpointInfo {
        addresses: vec![ip(addr)],
        hostname: hostname.map(str::to_owned),
        ready,
    }
}

fn zone() -> Zone {
    let mut z = Zone::new("cluster.local", 5, Some(ip("10.41.0.11"))).expect("zone");
    z.set_service(
        "default",
        "kubernetes",
        Some(ServiceInfo {
            kind: ServiceKind::ClusterIp(vec![ip("10.43.0.1")]),
            ports: vec![port("https", "tcp", 443)],
            publish_not_ready: false,
        }),
    );
    z.set_service(
        "default",
        "headless",
        Some(ServiceInfo {
            kind: ServiceKind::Headless,
            ports: vec![port("https", "tcp", 443), port("", "udp", 53)],
            publish_not_ready: false,
        }),
    );
    z.set_slice(
        "default",
        "headless",
        "headless-abc",
        Some(SliceInfo {
            endpoints: vec![
                ep("10.42.0.100", Some("my-pet"), true),
                ep("10.42.0.101", Some("my-pet-2"), true),
                ep("10.42.0.102", None, true),
                ep("10.42.0.103", Some("sick"), false),
            ],
            ports: vec![port("https", "tcp", 8443)],
        }),
    );
    z.set_service(
        "default",
        "foo",
        Some(ServiceInfo {
            kind: ServiceKind::ExternalName("www.example.com".into()),
            ports: vec![],
            publish_not_ready: false,
        }),
    );
    z
}

fn answer(z: &Zone, q: &str, t: RecordType) -> Answer {
    match z.answer(&name(q), t) {
        Outcome::Answer(a) => a,
        Outcome::NotOurs => panic!("{q} {t}: not ours"),
    }
}

fn data(a: &Answer) -> Vec<String> {
    let mut v: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

fn assert_nodata(a: &Answer) {
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.answers.is_empty(), "{a:?}");
    assert!(matches!(a.authorities[0].data, RData::SOA(_)));
}

fn assert_nxdomain(a: &Answer) {
    assert_eq!(a.rcode, ResponseCode::NXDomain, "{a:?}");
    assert!(a.answers.is_empty());
    assert!(matches!(a.authorities[0].data, RData::SOA(_)));
}

#[test]
fn schema_version_txt() {
    let a = answer(&zone(), "dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(data(&a), [SCHEMA_VERSION]);
    assert_nodata(&answer(
        &zone(),
        "dns-version.cluster.local.",
        RecordType::A,
    ));
}

#[test]
fn cluster_ip_a_srv_ptr() {
    let z = zone();
    let a = answer(&z, "kubernetes.default.svc.cluster.local.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert_eq!(data(&a), ["10.43.0.1"]);
    assert_eq!(a.answers[0].ttl, 5);
    let srv = answer(
        &z,
        "_https._tcp.kubernetes.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        data(&srv),
        ["0 100 443 kubernetes.default.svc.cluster.local."]
    );
    assert_eq!(srv.additionals.len(), 1, "the target's A record");
    let ptr = answer(&z, "1.0.43.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&ptr), ["kubernetes.default.svc.cluster.local."]);
    // The name exists with no AAAA: NODATA, not NXDOMAIN.
    assert_nodata(&answer(
        &z,
        "kubernetes.default.svc.cluster.local.",
        RecordType::AAAA,
    ));
    // A port that is not there, and a protocol that does not match.
    assert_nxdomain(&answer(
        &z,
        "_http._tcp.kubernetes.default.svc.cluster.local.",
        RecordType::SRV,
    ));
    assert_nxdomain(&answer(
        &z,
        "_https._udp.kubernetes.default.svc.cluster.local.",
        RecordType::SRV,
    ));
}

#[test]
fn case_insensitive_and_keeps_the_question_spelling() {
    let z = zone();
    let a = answer(&z, "KuberNetes.DEFAULT.svc.Cluster.Local.", RecordType::A);
    assert_eq!(data(&a), ["10.43.0.1"]);
    assert_eq!(
        a.answers[0].name.to_ascii(),
        "KuberNetes.DEFAULT.svc.Cluster.Local."
    );
}

#[test]
fn headless_a_hostnames_srv_ptr() {
    let z = zone();
    let a = answer(&z, "headless.default.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&a), ["10.42.0.100", "10.42.0.101", "10.42.0.102"]);
    let pet = answer(
        &z,
        "my-pet.headless.default.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(data(&pet), ["10.42.0.100"]);
    // Without a hostname, the endpoint is named by its address.
    let anon = answer(
        &z,
        "10-42-0-102.headless.default.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(data(&anon), ["10.42.0.102"]);
    // Not ready: no records.
    assert_nxdomain(&answer(
        &z,
        "sick.headless.default.svc.cluster.local.",
        RecordType::A,
    ));
    let srv = answer(
        &z,
        "_https._tcp.headless.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        data(&srv),
        [
            "0 33 8443 10-42-0-102.headless.default.svc.cluster.local.",
            "0 33 8443 my-pet-2.headless.default.svc.cluster.local.",
            "0 33 8443 my-pet.headless.default.svc.cluster.local.",
        ]
    );
    assert_eq!(srv.additionals.len(), 3);
    let ptr = answer(&z, "100.0.42.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&ptr), ["my-pet.headless.default.svc.cluster.local."]);
    assert!(
        matches!(
            z.answer(&name("103.0.42.10.in-addr.arpa."), RecordType::PTR),
            Outcome::NotOurs
        ),
        "a not-ready endpoint has no PTR here"
    );
}

#[test]
fn headless_without_ready_endpoints_is_nxdomain() {
    let mut z = zone();
    z.set_slice("default", "headless", "headless-abc", None);
    assert_nxdomain(&answer(
        &z,
        "headless.default.svc.cluster.local.",
        RecordType::A,
    ));
    assert!(matches!(
        z.answer(&name("100.0.42.10.in-addr.arpa."), RecordType::PTR),
        Outcome::NotOurs
    ));
}

#[test]
fn publish_not_ready_counts_every_endpoint() {
    let mut z = zone();
    z.set_service(
        "default",
        "headless",
        Some(ServiceInfo {
            kind: ServiceKind::Headless,
            ports: vec![],
            publish_not_ready: true,
        }),
    );
    let a = answer(
        &z,
        "sick.headless.default.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(data(&a), ["10.42.0.103"]);
}

#[test]
fn external_name_is_a_cname_to_chase() {
    let z = zone();
    let a = answer(&z, "foo.default.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&a), ["www.example.com."]);
    assert_eq!(a.chase, Some(name("www.example.com.")));
    let c = answer(&z, "foo.default.svc.cluster.local.", RecordType::CNAME);
    assert_eq!(c.chase, None);
}

#[test]
fn pods_by_dashed_address() {
    let z = zone();
    let a = answer(&z, "10-42-1-7.any-ns.pod.cluster.local.", RecordType::A);
    assert_eq!(data(&a), ["10.42.1.7"]);
    assert_nxdomain(&answer(
        &z,
        "10-42-1-777.ns.pod.cluster.local.",
        RecordType::A,
    ));
    assert_nxdomain(&answer(&z, "10-42-1.ns.pod.cluster.local.", RecordType::A));
    assert_nodata(&answer(
        &z,
        "10-42-1-7.ns.pod.cluster.local.",
        RecordType::AAAA,
    ));
}

#[test]
fn nxdomain_and_nodata_for_the_tree() {
    let z = zone();
    for exists in [
        "cluster.local.",
        "svc.cluster.local.",
        "default.svc.cluster.local.",
        "pod.cluster.local.",
    ] {
        assert_nodata(&answer(&z, exists, RecordType::A));
    }
    for missing in [
        "nope.default.svc.cluster.local.",
        "kubernetes.other.svc.cluster.local.",
        "other.svc.cluster.local.",
        "x.y.z.w.v.svc.cluster.local.",
        "random.cluster.local.",
        "web.cluster.local.",
    ] {
        assert_nxdomain(&answer(&z, missing, RecordType::A));
    }
    assert!(matches!(
        z.answer(&name("example.com."), RecordType::A),
        Outcome::NotOurs
    ));
    assert!(matches!(
        z.answer(&name("cluster.local.example.com."), RecordType::A),
        Outcome::NotOurs
    ));
}

#[test]
fn apex_soa_and_ns() {
    let z = zone();
    let soa = answer(&z, "cluster.local.", RecordType::SOA);
    assert_eq!(soa.answers.len(), 1);
    let ns = answer(&z, "cluster.local.", RecordType::NS);
    assert_eq!(data(&ns), ["ns.dns.cluster.local."]);
    assert_eq!(ns.additionals[0].data.to_string(), "10.41.0.11");
    let a = answer(&z, "ns.dns.cluster.local.", RecordType::A);
    assert_eq!(data(&a), ["10.41.0.11"]);
}

#[test]
fn changes_and_deletes_take_their_records_back() {
    let mut z = zone();
    z.set_service(
        "default",
        "kubernetes",
        Some(ServiceInfo {
            kind: ServiceKind::ClusterIp(vec![ip("10.43.0.2")]),
            ports: vec![],
            publish_not_ready: false,
        }),
    );
    assert!(matches!(
        z.answer(&name("1.0.43.10.in-addr.arpa."), RecordType::PTR),
        Outcome::NotOurs
    ));
    assert_eq!(
        data(&answer(&z, "2.0.43.10.in-addr.arpa.", RecordType::PTR)),
        ["kubernetes.default.svc.cluster.local."]
    );
    z.set_service("default", "kubernetes", None);
    assert_nxdomain(&answer(
        &z,
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
    ));
    assert!(matches!(
        z.answer(&name("2.0.43.10.in-addr.arpa."), RecordType::PTR),
        Outcome::NotOurs
    ));
    // A slice seen before its Service answers nothing yet.
    z.set_slice(
        "late",
        "svc",
        "svc-1",
        Some(SliceInfo {
            endpoints: vec![ep("10.42.9.9", None, true)],
            ports: vec![],
        }),
    );
    assert_nxdomain(&answer(&z, "svc.late.svc.cluster.local.", RecordType::A));
    assert_eq!(z.services(), 2);
}

#[test]
fn another_cluster_domain() {
    let mut z = Zone::new("corp.example.", 30, None).expect("zone");
    z.set_service(
        "ns",
        "web",
        Some(ServiceInfo {
            kind: ServiceKind::ClusterIp(vec![ip("10.96.0.20")]),
            ports: vec![],
            publish_not_ready: false,
        }),
    );
    let a = answer(&z, "web.ns.svc.corp.example.", RecordType::A);
    assert_eq!(data(&a), ["10.96.0.20"]);
    assert_eq!(a.answers[0].ttl, 30);
    assert!(matches!(
        z.answer(&name("web.ns.svc.cluster.local."), RecordType::A),
        Outcome::NotOurs
    ));
    assert!(Zone::new(".", 5, None).is_err());
    assert!(Zone::new("bad..domain", 5, None).is_err());
}
