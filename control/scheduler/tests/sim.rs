//! Simulated nodes: created Ready, with fresh Leases, and the pods the
//! scheduler binds to them reported Running and Ready.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kestrel_apiserver::testing::TestServer;
use kestrel_scheduler::sim::{LEASE_NAMESPACE, Nodes};
use kestrel_scheduler::{Config, Scheduler};
use kestrel_testkit::eventually;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

/// Aborts the task when the test ends, pass or fail.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test]
async fn simulated_nodes_are_ready_leased_and_run_their_pods() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let client = s.client().await;
    let sim = Nodes {
        count: 3,
        zones: 2,
        ..Nodes::default()
    };
    sim.create(&client).await.expect("create nodes");
    // Creating twice refreshes rather than fails.
    sim.create(&client).await.expect("create nodes again");
    sim.renew_leases(&client).await.expect("leases");

    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes.list(&ListParams::default()).await.expect("nodes");
    assert_eq!(list.items.len(), 3);
    for n in &list.items {
        let st = n.status.clone().expect("status");
        let ready = st
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready condition");
        assert_eq!(ready.status, "True");
        assert_eq!(st.allocatable.expect("allocatable")["cpu"].0, "32");
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let first = leases.get("sim-node-0").await.expect("lease");
    let renewed_at = first.spec.and_then(|s| s.renew_time).expect("renewTime");
    tokio::time::sleep(Duration::from_millis(5)).await;
    sim.renew_leases(&client).await.expect("renew");
    let again = leases.get("sim-node-0").await.expect("lease");
    assert!(again.spec.and_then(|s| s.renew_time).expect("renewTime").0 > renewed_at.0);

    let sched = Scheduler::new(client.clone(), Config::default());
    let _sched = AbortOnDrop(tokio::spawn(sched.run(std::future::pending())));
    let runner = {
        let (client, sim) = (client.clone(), sim.clone());
        AbortOnDrop(tokio::spawn(async move { sim.run_pods(&client).await }))
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "work"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.35"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &p).await.expect("pod");
    let running = eventually(Duration::from_secs(15), "pod Running and Ready", || async {
        let p = pods.get("work").await.ok()?;
        let st = p.status?;
        let ready = st
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (st.phase.as_deref() == Some("Running") && ready).then_some(p.spec?.node_name?)
    })
    .await;
    assert!(running.starts_with("sim-node-"), "{running}");
    drop(runner);

    sim.delete(&client).await.expect("delete");
    let left = nodes.list(&ListParams::default()).await.expect("nodes");
    assert!(left.items.is_empty());
    s.stop().await;
}
