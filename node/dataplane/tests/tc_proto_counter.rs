//! The eBPF pipeline end to end: the real classifier, built by aya-build and
//! embedded in the binary, is attached to a veth in a fresh namespace, real
//! traffic crosses it, and its per-CPU counters and aya-log records are read back.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::programs::TcAttachType;
use kestrel_dataplane::{EbpfLogLevel, ProtoCounter, spawn_log_pump};
use kestrel_ebpf_common::{PacketCount, ProtoSlot};
use kestrel_testkit::{BpfFs, Netns, privileged_test_can_run, run, unique_name};

const UDP_DATAGRAMS: u64 = 10;
const UDP_PAYLOAD: usize = 32;
const PINGS: u64 = 3;

/// Collects everything the tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_packets_per_protocol_on_a_veth() {
    let built = (
        kestrel_dataplane::object_is_built(),
        "the eBPF object was not built (AYA_BUILD_SKIP=1)",
    );
    if !privileged_test_can_run("counts_packets_per_protocol_on_a_veth", &[built]) {
        return;
    }
    let logs = Captured::default();
    let writer = logs.clone();
    // Global, because the log pump runs on a runtime worker thread.
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_env_filter("ebpf=debug")
            .with_writer(move || writer.clone())
            .finish(),
    )
    .expect("the only subscriber in this test binary");

    let base = unique_name("kt");
    let ns_a = Netns::new(format!("{base}-a"));
    let ns_b = Netns::new(format!("{base}-b"));
    let (veth_a, veth_b) = (format!("{base}a"), format!("{base}b"));
    run(&[
        "ip", "link", "add", &veth_a, "netns", &ns_a.name, "type", "veth", "peer", "name", &veth_b,
        "netns", &ns_b.name,
    ]);
    let (addr_a, addr_b) = (Ipv4Addr::new(10, 254, 7, 1), Ipv4Addr::new(10, 254, 7, 2));
    ns_a.exec(&["ip", "addr", "add", &format!("{addr_a}/30"), "dev", &veth_a]);
    ns_b.exec(&["ip", "addr", "add", &format!("{addr_b}/30"), "dev", &veth_b]);
    ns_a.exec(&["ip", "link", "set", &veth_a, "up"]);
    ns_b.exec(&["ip", "link", "set", &veth_b, "up"]);

    let bpffs = BpfFs::new();
    let mut counter =
        ProtoCounter::load(EbpfLogLevel::Debug, bpffs.path()).expect("loading the classifier");
    let pump = spawn_log_pump(counter.ebpf_mut()).expect("starting the log pump");
    ns_a.enter(|| counter.attach(&veth_a, TcAttachType::Ingress))
        .expect("attaching");
    assert_eq!(
        counter
            .counts()
            .expect("reading counters")
            .get(ProtoSlot::UDP),
        PacketCount::default()
    );

    // Servers live in A, clients in B, so every request crosses A's ingress.
    let (udp_server, tcp_server) = ns_a.enter(|| {
        (
            UdpSocket::bind(SocketAddrV4::new(addr_a, 0)).expect("udp bind"),
            TcpListener::bind(SocketAddrV4::new(addr_a, 0)).expect("tcp bind"),
        )
    });
    let (udp_port, tcp_port) = (
        udp_server.local_addr().expect("udp addr").port(),
        tcp_server.local_addr().expect("tcp addr").port(),
    );
    udp_server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");

    ns_b.exec(&[
        "ping",
        "-q",
        "-c",
        &PINGS.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        &addr_a.to_string(),
    ]);

    let udp_client = ns_b.enter(|| UdpSocket::bind((addr_b, 0)).expect("udp client bind"));
    let mut buf = [0u8; 64];
    for i in 0..UDP_DATAGRAMS {
        udp_client
            .send_to(&[i as u8; UDP_PAYLOAD], SocketAddrV4::new(addr_a, udp_port))
            .expect("udp send");
        let (n, _) = udp_server
            .recv_from(&mut buf)
            .expect("udp datagram should arrive");
        assert_eq!(n, UDP_PAYLOAD);
    }

    let mut client = ns_b
        .enter(|| TcpStream::connect(SocketAddrV4::new(addr_a, tcp_port)))
        .expect("tcp connect");
    client.write_all(b"hello").expect("tcp write");
    let (mut conn, _) = tcp_server.accept().expect("tcp accept");
    let mut got = [0u8; 5];
    conn.read_exact(&mut got).expect("tcp read");
    assert_eq!(&got, b"hello");
    drop(client);

    let counts = counter.counts().expect("reading counters");
    let udp = counts.get(ProtoSlot::UDP);
    assert_eq!(
        udp.packets, UDP_DATAGRAMS,
        "every datagram and nothing else: {counts:?}"
    );
    let frame = (14 + 20 + 8 + UDP_PAYLOAD) as u64;
    assert_eq!(
        udp.bytes,
        UDP_DATAGRAMS * frame,
        "bytes count whole frames: {counts:?}"
    );
    assert_eq!(
        counts.get(ProtoSlot::ICMP).packets,
        PINGS,
        "echo requests only: {counts:?}"
    );
    let tcp = counts.get(ProtoSlot::TCP).packets;
    assert!(
        tcp >= 3,
        "handshake and data should be counted, got {tcp}: {counts:?}"
    );
    assert!(
        counts.get(ProtoSlot::NON_IP).packets >= 1,
        "ARP from B: {counts:?}"
    );
    assert_eq!(counts.get(ProtoSlot::OTHER_IP).packets, 0, "{counts:?}");

    // The kernel's debug records reach tracing through the ring buffer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logs.text().contains("proto_counter: ethertype 800 slot 1") {
        assert!(
            Instant::now() < deadline,
            "no aya-log record in tracing output:\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pump.abort();
}
