//! The policy sync loop end to end: a real API server (in process, on
//! SQLite), Namespaces, Pods and a NetworkPolicy created through it, the
//! loop's watchers, and the real maps pinned in a private bpffs. It checks
//! the first full sync, that a new policy and a label change reach the maps
//! (and how fast), the names handle, and that a restarted loop adopts the
//! pinned state and writes nothing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::serde_json::{self, json};
use kestrel_apiserver::testing::TestServer;
use kestrel_dataplane::policy::{
    PinnedPolicyMaps, PolicyMaps, PolicyNode, PolicyState, PolicySync, PolicySyncConfig,
};
use kestrel_dataplane::{Dataplane, LoadOptions};
use kestrel_ebpf_common::policy::endpoint_flags;
use kestrel_testkit::{BpfFs, privileged_test_can_run};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::sync::oneshot;

const NODE: &str = "node-a";
const NS: &str = "pl";
const DEADLINE: Duration = Duration::from_secs(20);
const WEB: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 10);

fn pod(name: &str, node: &str, app: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            containers: vec![Container {
                name: "c".to_owned(),
                image: Some("busybox".to_owned()),
                ports: Some(vec![ContainerPort {
                    name: Some("http".to_owned()),
                    container_port: 8080,
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The maps as they are now.
fn read(bpffs: &BpfFs) -> PolicyState {
    let maps = PinnedPolicyMaps::open(bpffs.path()).expect("open pins");
    PolicyState {
        ipcache: maps.dump_ipcache().expect("dump").into_iter().collect(),
        endpoints: maps.dump_endpoints().expect("dump").into_iter().collect(),
        entries: maps.dump_entries().expect("dump").into_iter().collect(),
    }
}

/// Polls the maps every millisecond until `ok` holds; the time it took.
async fn until(bpffs: &BpfFs, what: &str, ok: impl Fn(&PolicyState) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let state = read(bpffs);
        if ok(&state) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: the maps hold {state:#?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_follows_pods_namespaces_and_policies() {
    let built = (
        kestrel_dataplane::object_is_built(),
        "the eBPF object was not built (AYA_BUILD_SKIP=1)",
    );
    if !privileged_test_can_run("the_loop_follows_pods_namespaces_and_policies", &[built]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_in(&dir.path().join("api"), |_| {}).await;
    let client = server.client().await;
    let bpffs = BpfFs::new();
    let _dataplane = Dataplane::load(&LoadOptions::new(bpffs.path())).expect("load");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(NS.to_owned()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("create the namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for (name, node, app, ip) in [
        ("web", NODE, "web", WEB),
        ("client", "node-b", "client", CLIENT),
    ] {
        pods.create(&PostParams::default(), &pod(name, node, app))
            .await
            .expect("create a pod");
        let status = Pod {
            status: Some(PodStatus {
                phase: Some("Running".to_owned()),
                pod_ip: Some(ip.to_string()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("set the pod's address");
    }

    let node = PolicyNode {
        name: NODE.to_owned(),
        ips: vec![Ipv4Addr::new(10, 41, 0, 2)],
    };
    let run = |stop: oneshot::Receiver<()>| {
        let sync = PolicySync::new(client.clone(), node.clone(), bpffs.path())
            .with_config(PolicySyncConfig::default());
        let status = sync.status();
        let names = sync.names();
        let task = tokio::spawn(sync.run(async {
            let _ = stop.await;
        }));
        (status, names, task)
    };
    let (stop, stop_rx) = oneshot::channel();
    let (mut status, names, task) = run(stop_rx);
    tokio::time::timeout(DEADLINE, status.wait_synced())
        .await
        .expect("first full sync in time")
        .expect("the loop runs");
    let state = read(&bpffs);
    assert_eq!(state.endpoints.len(), 1, "{state:#?}");
    assert_eq!(state.endpoints[&WEB].flags, 0, "open without policies");
    assert_eq!(state.ipcache.len(), 3, "two pods and the node: {state:#?}");
    assert_eq!(names.pod(WEB), Some((NS.to_owned(), "web".to_owned())));

    // A policy: the web pod becomes isolated, with an allow from clients.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), NS);
    let np: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-clients"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                              "ports": [{"port": "http"}]}]},
    }))
    .expect("a policy");
    let started = Instant::now();
    policies
        .create(&PostParams::default(), &np)
        .await
        .expect("create the policy");
    until(&bpffs, "the policy isolates web", |s| {
        s.endpoints
            .get(&WEB)
            .is_some_and(|e| e.flags == endpoint_flags::INGRESS_ISOLATED)
            && s.entries.len() == 1
    })
    .await;
    let policy_ms = started.elapsed().as_secs_f64() * 1e3;
    let state = read(&bpffs);
    let (key, id) = state.entries.iter().next().expect("one entry");
    assert_eq!(names.policy(*id).as_deref(), Some("pl/allow-clients"));
    let client_id = state.ipcache[&CLIENT.into()];
    assert_eq!(u32::from_be(key.key.identity_be), client_id);
    assert_eq!(u16::from_be(key.key.dport_be), 8080);
    assert_eq!(
        names.identity(client_id).as_deref(),
        Some("pl: app=client"),
        "the namespace label is the API server's: {:?}",
        names.identity(client_id)
    );

    // The client's label changes: it is no client any more.
    let started = Instant::now();
    pods.patch(
        "client",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .expect("relabel the client");
    until(&bpffs, "the allow goes", |s| s.entries.is_empty()).await;
    let label_ms = started.elapsed().as_secs_f64() * 1e3;
    let report = status.progress().last.expect("a batch report");
    println!(
        "API write to maps: new policy {policy_ms:.1} ms, label change {label_ms:.1} ms; \
         last batch: compile {:.2} ms, apply {:.2} ms, {} writes, {} deletes",
        report.compile.as_secs_f64() * 1e3,
        report.apply.as_secs_f64() * 1e3,
        report.writes,
        report.deletes,
    );

    // A restart adopts everything and writes nothing.
    stop.send(()).expect("the loop is running");
    task.await.expect("join").expect("the loop ends cleanly");
    let (stop, stop_rx) = oneshot::channel();
    let (mut status, _names, task) = run(stop_rx);
    tokio::time::timeout(DEADLINE, status.wait_synced())
        .await
        .expect("first full sync after the restart")
        .expect("the loop runs");
    let first = status.progress().last.expect("a batch report");
    assert_eq!((first.writes, first.deletes), (0, 0), "{first:?}");
    stop.send(()).expect("the loop is running");
    task.await.expect("join").expect("the loop ends cleanly");
    server.stop().await;
}
