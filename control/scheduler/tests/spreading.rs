//! Default (system) topology spreading against a real (in-process) API
//! server: pods of one ReplicaSet, or behind one Service, are spread over
//! equal simulated nodes as upstream's PodTopologySpread with
//! `defaultingType: System` spreads them, with no constraints of their own.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kestrel_apiserver::testing::TestServer;
use kestrel_scheduler::sim::Nodes;
use kestrel_scheduler::{Config, Scheduler};
use kestrel_testkit::eventually;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

/// Generous: 200 bindings on a loaded two-core machine in a debug build.
const WAIT: Duration = Duration::from_secs(120);

/// Aborts the task when the test ends, pass or fail.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn pod(name: &str, labels: &Value, owner: Option<Value>) -> Pod {
    let mut meta = json!({"name": name, "labels": labels});
    if let Some(o) = owner {
        meta["ownerReferences"] = json!([o]);
    }
    serde_json::from_value(json!({
        "metadata": meta,
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}
    }))
    .expect("pod")
}

/// Create `pods` concurrently.
async fn create_all(api: &Api<Pod>, pods: Vec<Pod>) {
    futures::stream::iter(pods)
        .map(|p| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &p).await.map(drop) }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await
        .expect("create pods");
}

/// Waits until `n` pods of namespace default are bound; returns node → count.
async fn placement(api: &Api<Pod>, n: usize) -> BTreeMap<String, usize> {
    eventually(WAIT, &format!("{n} pods bound"), || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        let mut per_node = BTreeMap::new();
        let mut bound = 0;
        for p in list.items {
            if let Some(node) = p.spec.and_then(|s| s.node_name) {
                *per_node.entry(node).or_default() += 1;
                bound += 1;
            }
        }
        (bound == n).then_some(per_node)
    })
    .await
}

async fn start(count: usize) -> (TestServer, kube::Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let client = server.client().await;
    Nodes {
        count,
        ..Nodes::default()
    }
    .create(&client)
    .await
    .expect("create nodes");
    (server, client, dir)
}

#[tokio::test]
async fn replicas_of_a_replica_set_spread_over_equal_nodes() {
    let (server, client, _dir) = start(50).await;
    let labels = json!({"app": "web", "pod-template-hash": "5d8f7c"});
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web-5d8f7c", "labels": labels},
        "spec": {
            "replicas": 200,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}
            }
        }
    }))
    .expect("replica set");
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &rs)
        .await
        .expect("create replica set");
    let owner = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7c",
        "uid": rs.metadata.uid.expect("uid"), "controller": true, "blockOwnerDeletion": true
    });

    let sched = Scheduler::new(client.clone(), Config::default());
    let _sched = AbortOnDrop(tokio::spawn(sched.run(std::future::pending())));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let all = (0..200)
        .map(|i| pod(&format!("web-5d8f7c-{i:03}"), &labels, Some(owner.clone())))
        .collect();
    create_all(&pods, all).await;

    let per_node = placement(&pods, 200).await;
    let most = per_node.values().copied().max().unwrap_or(0);
    // Upstream keeps them within the hostname constraint's maxSkew (3) of
    // the mean of 4.
    assert!(most <= 7, "at most 7 on any node, got {most}: {per_node:?}");
    assert_eq!(per_node.len(), 50, "every node used: {per_node:?}");
    server.stop().await;
}

#[tokio::test]
async fn pods_behind_a_service_spread_without_an_owner() {
    let (server, client, _dir) = start(10).await;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "api"},
        "spec": {"selector": {"app": "api"}, "ports": [{"port": 80}]}
    }))
    .expect("service");
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");

    let sched = Scheduler::new(client.clone(), Config::default());
    let _sched = AbortOnDrop(tokio::spawn(sched.run(std::future::pending())));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let labels = json!({"app": "api", "tier": "backend"});
    let all = (0..40)
        .map(|i| pod(&format!("api-{i:02}"), &labels, None))
        .collect();
    create_all(&pods, all).await;

    let per_node = placement(&pods, 40).await;
    let most = per_node.values().copied().max().unwrap_or(0);
    assert!(most <= 7, "at most 7 on any node, got {most}: {per_node:?}");
    assert_eq!(per_node.len(), 10, "every node used: {per_node:?}");
    server.stop().await;
}
