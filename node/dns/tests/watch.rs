//! The watch path against the real (in-process) API server: Services and
//! EndpointSlices written through the API appear in the answers, changes
//! replace them and deletes take them back. Each step polls a real UDP
//! query with a deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kestrel_apiserver::testing::TestServer;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

async fn ask(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
    sock.send_to(&m.to_vec().expect("enc"), server)
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .expect("an answer in time")
        .expect("recv");
    Message::from_vec(&buf[..n]).expect("dec")
}

/// Polls until the answer's data (sorted) is `want`.
async fn until(server: SocketAddr, name: &str, t: RecordType, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ask(server, name, t).await;
        let mut got: Vec<String> = r.answers.iter().map(|a| a.data.to_string()).collect();
        got.sort();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} {t}: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_slices_from_the_api_server() {
    let dir = tempfile::tempdir().expect("dir");
    let api = TestServer::start_in(dir.path(), |_| {}).await;
    let client = api.client().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let mut running = kestrel_dns::start(
        client,
        &kestrel_dns::Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            domain: "cluster.local".into(),
            ttl: 5,
            upstreams: vec![],
            rate_limit: 0,
            cache_size: 10,
        },
    )
    .await
    .expect("start");
    running.wait_synced().await.expect("synced");
    let addr = running.local_addr();

    // The API server's own Service is there from the first list.
    until(
        addr,
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
        &["10.43.0.1"],
    )
    .await;

    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]},
    }))
    .expect("svc");
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create svc");
    let r = ask(addr, "db.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::NXDomain,
        "no endpoints yet"
    );
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "db-x", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.42.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.42.0.8"], "hostname": "db-1", "conditions": {"ready": false}},
        ],
    }))
    .expect("slice");
    slices
        .create(&PostParams::default(), &slice)
        .await
        .expect("create slice");
    until(
        addr,
        "db.default.svc.cluster.local.",
        RecordType::A,
        &["10.42.0.7"],
    )
    .await;
    until(
        addr,
        "db-0.db.default.svc.cluster.local.",
        RecordType::A,
        &["10.42.0.7"],
    )
    .await;
    until(
        addr,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
        &["0 100 5432 db-0.db.default.svc.cluster.local."],
    )
    .await;

    // The second endpoint turns ready.
    let mut s = slices.get("db-x").await.expect("get");
    if let Some(e) = s.endpoints.as_mut().and_then(|e| e.get_mut(1)) {
        e.conditions.as_mut().expect("conditions").ready = Some(true);
    }
    slices
        .replace("db-x", &PostParams::default(), &s)
        .await
        .expect("replace");
    until(
        addr,
        "db.default.svc.cluster.local.",
        RecordType::A,
        &["10.42.0.7", "10.42.0.8"],
    )
    .await;

    // Deleting the slice, then the Service, takes everything back.
    slices
        .delete("db-x", &DeleteParams::default())
        .await
        .expect("delete");
    until(
        addr,
        "db-0.db.default.svc.cluster.local.",
        RecordType::A,
        &[],
    )
    .await;
    services
        .delete("db", &DeleteParams::default())
        .await
        .expect("delete");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask(addr, "db.default.svc.cluster.local.", RecordType::SRV)
        .await
        .metadata
        .response_code
        != ResponseCode::NXDomain
    {
        assert!(
            Instant::now() < deadline,
            "the deleted Service still answers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(running);
    api.stop().await;
}
