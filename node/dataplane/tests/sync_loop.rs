//! The sync loop end to end: a real API server (in process, on SQLite),
//! Services and EndpointSlices created through it, the loop's watchers,
//! and the real maps pinned in a private bpffs. It checks the first full
//! sync, that single endpoint changes reach the maps (and how fast, from
//! the API write to the map), a deletion, and that a restarted loop adopts
//! the pinned state and writes nothing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kestrel_apiserver::testing::TestServer;
use kestrel_dataplane::sync::{
    FrontendView, NodeIdentity, PinnedMaps, ServiceSync, SyncConfig, read_services,
};
use kestrel_dataplane::{Dataplane, LoadOptions};
use kestrel_testkit::{BpfFs, privileged_test_can_run};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use tokio::sync::oneshot;

const NODE: &str = "node-a";
const DEADLINE: Duration = Duration::from_secs(20);

fn endpoint(ip: Ipv4Addr, node: &str) -> Endpoint {
    Endpoint {
        addresses: vec![ip.to_string()],
        node_name: Some(node.to_owned()),
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        ..Endpoint::default()
    }
}

fn web_service() -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some("web".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: 80,
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            selector: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn web_slice(pods: &[Ipv4Addr]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some("web-1".to_owned()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_owned(),
                "web".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints: Some(
            pods.iter()
                .enumerate()
                .map(|(i, ip)| endpoint(*ip, if i % 2 == 0 { NODE } else { "node-b" }))
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("http".to_owned()),
            port: Some(8080),
            protocol: Some("TCP".to_owned()),
            app_protocol: None,
        }]),
    }
}

/// The backends addresses of a frontend's internal scope, as the maps hold them.
fn backends_of(bpffs: &BpfFs, vip: Ipv4Addr) -> Option<Vec<Ipv4Addr>> {
    let maps = PinnedMaps::open(bpffs.path()).expect("open pins");
    let view = read_services(&maps).expect("read the maps");
    let fe: &FrontendView = view
        .frontends
        .iter()
        .find(|f| f.key.addr == vip && f.key.port == 80)?;
    let mut addrs: Vec<Ipv4Addr> = fe.scopes[0]
        .iter()
        .filter_map(|b| b.backend.map(|b| b.addr))
        .collect();
    addrs.sort();
    Some(addrs)
}

/// Polls the maps every millisecond until `want` holds; the time it took.
async fn until(bpffs: &BpfFs, vip: Ipv4Addr, want: Option<&[Ipv4Addr]>) -> Duration {
    let started = Instant::now();
    loop {
        let got = backends_of(bpffs, vip);
        if got.as_deref() == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the maps still hold {got:?} for {vip}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn pod(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, 0, 10 + i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_follows_services_and_endpoint_slices() {
    let built = (
        kestrel_dataplane::object_is_built(),
        "the eBPF object was not built (AYA_BUILD_SKIP=1)",
    );
    if !privileged_test_can_run("the_loop_follows_services_and_endpoint_slices", &[built]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_in(&dir.path().join("api"), |_| {}).await;
    let client = server.client().await;
    let bpffs = BpfFs::new();
    let _dataplane = Dataplane::load(&LoadOptions::new(bpffs.path())).expect("load");

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let created = services
        .create(&PostParams::default(), &web_service())
        .await
        .expect("create the Service");
    let vip: Ipv4Addr = created
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .expect("the API server allocated a ClusterIP");
    let mut pods = vec![pod(0), pod(1), pod(2)];
    slices
        .create(&PostParams::default(), &web_slice(&pods))
        .await
        .expect("create the EndpointSlice");

    let node = NodeIdentity {
        name: NODE.to_owned(),
        ips: vec![Ipv4Addr::new(10, 41, 0, 2)],
    };
    let run = |stop: oneshot::Receiver<()>| {
        let sync = ServiceSync::new(client.clone(), node.clone(), bpffs.path())
            .with_config(SyncConfig::default());
        let status = sync.status();
        let task = tokio::spawn(sync.run(async {
            let _ = stop.await;
        }));
        (status, task)
    };
    let (stop, stop_rx) = oneshot::channel();
    let (mut status, task) = run(stop_rx);
    tokio::time::timeout(DEADLINE, status.wait_synced())
        .await
        .expect("first full sync in time")
        .expect("the loop runs");
    // Synced means written: no polling needed.
    assert_eq!(backends_of(&bpffs, vip), Some(pods.clone()));

    // Single endpoint changes, one after another: API write → maps.
    let mut samples = Vec::new();
    let mut batches_before_last = 0;
    for round in 0..20u8 {
        pods[usize::from(round % 3)] = Ipv4Addr::new(10, 42, 1, round);
        let mut want = pods.clone();
        want.sort();
        let mut slice = slices.get("web-1").await.expect("get the slice");
        slice.endpoints = web_slice(&pods).endpoints;
        batches_before_last = status.progress().batches;
        let started = Instant::now();
        slices
            .replace("web-1", &PostParams::default(), &slice)
            .await
            .expect("replace the slice");
        until(&bpffs, vip, Some(&want)).await;
        samples.push(started.elapsed());
        pods = want;
    }
    samples.sort();
    // The maps show the change before the loop publishes its report.
    let report = tokio::time::timeout(DEADLINE, async {
        loop {
            let p = status.progress();
            if p.batches > batches_before_last {
                return p.last.expect("a batch report");
            }
            status.changed().await.expect("the loop runs");
        }
    })
    .await
    .expect("the last change's batch report in time");
    println!(
        "one endpoint change, API write to maps: median {:.1} ms, max {:.1} ms over {} changes; \
         last batch: watch event to maps {:.2} ms ({} writes, {} deletes)",
        samples[samples.len() / 2].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len(),
        report.latency.as_secs_f64() * 1e3,
        report.writes,
        report.deletes,
    );
    // Only the difference is written: the new backend and its slot (a
    // ClusterIP has one written scope; a master may be rewritten too),
    // against the half dozen entries a full rewrite of this service would
    // take.
    assert!(
        (2..=3).contains(&report.writes) && report.deletes == 1,
        "one backend and its slot, not the whole service: {report:?}"
    );

    // A restart: stop the loop, start another over the same pins. It adopts
    // everything and its first sync writes nothing.
    stop.send(()).expect("the loop is running");
    task.await.expect("join").expect("the loop ends cleanly");
    let (stop, stop_rx) = oneshot::channel();
    let (mut status, task) = run(stop_rx);
    tokio::time::timeout(DEADLINE, status.wait_synced())
        .await
        .expect("first full sync after the restart")
        .expect("the loop runs");
    let first = status.progress().last.expect("a batch report");
    assert_eq!((first.writes, first.deletes), (0, 0), "{first:?}");
    assert_eq!(backends_of(&bpffs, vip), Some(pods.clone()));

    // Deleting the Service removes its frontend.
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete the Service");
    until(&bpffs, vip, None).await;
    stop.send(()).expect("the loop is running");
    task.await.expect("join").expect("the loop ends cleanly");
    server.stop().await;
}
