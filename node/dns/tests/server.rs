//! The DNS server over real sockets on loopback: answers, truncation and
//! TCP, hostile input, the rate limit, and forwarding to an upstream the
//! test starts itself (`kestrel_testkit::dns`, never the host's resolvers).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use kestrel_dns::forward::Forwarder;
use kestrel_dns::metrics::Drop;
use kestrel_dns::zone::{EndpointInfo, PortInfo, ServiceInfo, ServiceKind, SliceInfo};
use kestrel_dns::{Server, Zone};
use kestrel_testkit::dns::Upstream;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn zone() -> Zone {
    let mut z = Zone::new("cluster.local", 5, None).expect("zone");
    z.set_service(
        "default",
        "web",
        Some(ServiceInfo {
            kind: ServiceKind::ClusterIp(vec![Ipv4Addr::new(10, 43, 0, 50)]),
            ports: vec![PortInfo {
                name: "http".into(),
                protocol: "tcp".into(),
                port: 80,
            }],
            publish_not_ready: false,
        }),
    );
    z.set_service(
        "default",
        "big",
        Some(ServiceInfo {
            kind: ServiceKind::Headless,
            ports: vec![],
            publish_not_ready: false,
        }),
    );
    // 300 endpoints in three slices, as the EndpointSlice controller packs them.
    for s in 0..3u8 {
        let endpoints = (0..100u8)
            .map(|i| EndpointInfo {
                addresses: vec![Ipv4Addr::new(10, 42, s, i + 1)],
                hostname: None,
                ready: true,
            })
            .collect();
        z.set_slice(
            "default",
            "big",
            &format!("big-{s}"),
            Some(SliceInfo {
                endpoints,
                ports: vec![],
            }),
        );
    }
    z.set_service(
        "default",
        "ext",
        Some(ServiceInfo {
            kind: ServiceKind::ExternalName("www.example.test".into()),
            ports: vec![],
            publish_not_ready: false,
        }),
    );
    z
}

/// A server on 127.0.0.1 (UDP and TCP on one port).
async fn serve(upstreams: Vec<SocketAddr>, rate_limit: u32) -> (Arc<Server>, SocketAddr) {
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let addr = udp.local_addr().expect("addr");
    let tcp = TcpListener::bind(addr).await.expect("tcp");
    let server = Arc::new(Server::new(
        Arc::new(RwLock::new(zone())),
        Forwarder::new(upstreams, 100),
        rate_limit,
    ));
    tokio::spawn(server.clone().serve_udp(udp, 2));
    tokio::spawn(server.clone().serve_tcp(tcp));
    (server, addr)
}

fn query(name: &str, t: RecordType, edns: bool) -> Message {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m
}

async fn udp_raw(from: &str, to: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind(from).await.expect("client");
    s.send_to(bytes, to).await.expect("send");
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn udp(to: SocketAddr, m: &Message) -> Message {
    let out = udp_raw("127.0.0.1:0", to, &m.to_vec().expect("encode"))
        .await
        .expect("an answer");
    Message::from_vec(&out).expect("decode")
}

async fn tcp(to: SocketAddr, m: &Message) -> Message {
    let mut s = TcpStream::connect(to).await.expect("connect");
    let bytes = m.to_vec().expect("encode");
    s.write_all(&u16::try_from(bytes.len()).expect("len").to_be_bytes())
        .await
        .expect("write");
    s.write_all(&bytes).await.expect("write");
    let n = usize::from(s.read_u16().await.expect("len"));
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await.expect("read");
    Message::from_vec(&buf).expect("decode")
}

#[tokio::test]
async fn answers_over_udp_and_tcp_with_edns() {
    let (_server, addr) = serve(vec![], 0).await;
    for edns in [false, true] {
        let q = query("web.default.svc.cluster.local.", RecordType::A, edns);
        let r = udp(addr, &q).await;
        assert_eq!(r.metadata.id, q.metadata.id);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data.to_string(), "10.43.0.50");
        assert_eq!(r.edns.is_some(), edns, "OPT answered with OPT");
        let r = tcp(addr, &q).await;
        assert_eq!(r.answers[0].data.to_string(), "10.43.0.50");
    }
    let r = udp(
        addr,
        &query("nope.default.svc.cluster.local.", RecordType::A, false),
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let (server, addr) = serve(vec![], 0).await;
    let q = query("big.default.svc.cluster.local.", RecordType::A, true);
    let r = udp(addr, &q).await;
    assert!(
        r.metadata.truncation,
        "300 A records do not fit 1,232 bytes"
    );
    assert!(r.answers.is_empty());
    let r = tcp(addr, &q).await;
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 300);
    let text = server.metrics().clone();
    let mut out = String::new();
    text.render(&mut out);
    assert!(out.contains("kestrel_dns_truncated_total 1"), "{out}");
}

#[tokio::test]
async fn hostile_input_gets_formerr_or_nothing_and_the_server_keeps_answering() {
    let (server, addr) = serve(vec![], 0).await;
    // Shorter than a header: nothing comes back.
    assert!(udp_raw("127.0.0.1:0", addr, &[1, 2, 3]).await.is_none());
    // A question whose name points at itself (a compression loop).
    let mut looped = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    // A label of 64 bytes.
    let mut long = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 64];
    long.extend(std::iter::repeat_n(b'a', 64));
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    // Counts that promise more than there is.
    let lying = vec![0x55, 0x66, 0x01, 0x00, 0, 9, 0, 9, 0, 0, 0, 0, 0];
    for bad in [looped, long, lying] {
        let out = udp_raw("127.0.0.1:0", addr, &bad).await.expect("FORMERR");
        assert_eq!(out[..2], bad[..2], "the id is echoed");
        assert_eq!(out[2] & 0x80, 0x80, "QR");
        assert_eq!(out[3] & 0x0f, 1, "FORMERR");
    }
    // A response sent to us is not answered.
    let mut resp = query("web.default.svc.cluster.local.", RecordType::A, false);
    resp.metadata.message_type = MessageType::Response;
    assert!(
        udp_raw("127.0.0.1:0", addr, &resp.to_vec().expect("enc"))
            .await
            .is_none()
    );
    // Two questions: FORMERR. Another opcode: NOTIMP.
    let mut two = query("web.default.svc.cluster.local.", RecordType::A, false);
    two.add_query(Query::query(
        Name::from_ascii("x.").expect("n"),
        RecordType::A,
    ));
    assert_eq!(
        udp(addr, &two).await.metadata.response_code,
        ResponseCode::FormErr
    );
    let mut status = query("web.default.svc.cluster.local.", RecordType::A, false);
    status.metadata.op_code = OpCode::Status;
    assert_eq!(
        udp(addr, &status).await.metadata.response_code,
        ResponseCode::NotImp
    );
    // Random garbage, a bounded amount: the server stays up.
    for i in 0..200u32 {
        let len = 12 + (i as usize * 7) % 300;
        let junk: Vec<u8> = (0..len).map(|_| rand::random()).collect();
        let _ = udp_raw("127.0.0.1:0", addr, &junk).await;
    }
    let r = udp(
        addr,
        &query("web.default.svc.cluster.local.", RecordType::A, false),
    )
    .await;
    assert_eq!(r.answers.len(), 1);
    let m = server.metrics();
    assert_eq!(m.drops(Drop::Short), 1);
    assert!(m.drops(Drop::Malformed) >= 3);
    assert!(m.drops(Drop::NotQuery) >= 1);
}

#[tokio::test]
async fn a_flooding_source_is_limited_and_others_are_still_answered() {
    let (server, addr) = serve(vec![], 100).await;
    let flood = UdpSocket::bind("127.0.0.2:0").await.expect("flooder");
    let bytes = query("web.default.svc.cluster.local.", RecordType::A, false)
        .to_vec()
        .expect("enc");
    for _ in 0..1000 {
        flood.send_to(&bytes, addr).await.expect("send");
    }
    // The flooder's bucket holds 100; most of the 1,000 are dropped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.metrics().drops(Drop::RateLimited) < 500 {
        assert!(Instant::now() < deadline, "the flood was not limited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another source is answered at once.
    let out = udp_raw("127.0.0.3:0", addr, &bytes)
        .await
        .expect("answered");
    assert_eq!(Message::from_vec(&out).expect("dec").answers.len(), 1);
    // Over TCP an over-limit source is REFUSED, not silently dropped.
    let r = tcp(
        addr,
        &query("web.default.svc.cluster.local.", RecordType::A, false),
    )
    .await;
    assert!(matches!(
        r.metadata.response_code,
        ResponseCode::NoError | ResponseCode::Refused
    ));
}

#[tokio::test]
async fn other_names_are_forwarded_cached_and_chased() {
    let up =
        Upstream::start("127.0.0.1:0".parse().expect("addr"), "example.test").expect("upstream");
    let (server, addr) = serve(vec![up.addr()], 0).await;
    let q = query("www.example.test.", RecordType::A, false);
    let r = udp(addr, &q).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(!r.metadata.authoritative);
    assert_eq!(r.answers[0].data.to_string(), "192.0.2.10");
    let r = udp(addr, &query("WWW.example.TEST.", RecordType::A, false)).await;
    assert_eq!(r.answers.len(), 1);
    assert_eq!(up.queries(), 1, "the second came from the cache");
    let r = udp(addr, &query("missing.invalid.", RecordType::A, false)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    // Truncated upstream answer: the forwarder retries over TCP.
    let r = tcp(addr, &query("big.example.test.", RecordType::A, false)).await;
    assert_eq!(r.answers.len(), 200);
    // An ExternalName Service: CNAME, then the target's address.
    let r = udp(
        addr,
        &query("ext.default.svc.cluster.local.", RecordType::A, false),
    )
    .await;
    let data: Vec<String> = r.answers.iter().map(|a| a.data.to_string()).collect();
    assert_eq!(data, ["www.example.test.", "192.0.2.10"]);
    let mut out = String::new();
    server.metrics().render(&mut out);
    assert!(out.contains("kestrel_dns_cache_hits_total 2"), "{out}");
}

#[tokio::test]
async fn a_dead_upstream_is_servfail_not_a_hang() {
    // A port nobody listens on: refused at once.
    let dead = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let (_server, addr) = serve(vec![dead_addr], 0).await;
    let started = Instant::now();
    let r = udp(addr, &query("www.example.test.", RecordType::A, false)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(3));
}
