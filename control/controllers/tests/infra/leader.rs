use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kestrel_controllers::manager::LeaderTimings;
use kestrel_controllers::{Manager, Options};
use kestrel_testkit::eventually;
use kube::api::Api;
use serde_json::json;

use crate::common::{Cluster, WAIT, create_node, fast_options};

/// Long enough that a slow store commit on a loaded machine (each renewal
/// is a committed write) does not cost the leader its lease.
const LEASE: Duration = Duration::from_secs(6);

fn candidate(client: &kube::Client, id: &str) -> (Manager, tokio::task::JoinHandle<()>) {
    let opts = Options {
        leader_elect: true,
        identity: Some(id.to_owned()),
        leader_timings: LeaderTimings {
            lease_duration: LEASE,
            renew_deadline: Duration::from_secs(4),
            retry: Duration::from_millis(300),
        },
        ..fast_options()
    };
    let m = Manager::new(client.clone(), opts).expect("manager");
    let run = m.clone();
    (
        m,
        tokio::spawn(async move {
            run.run(std::future::pending()).await.expect("runs");
        }),
    )
}

async fn pod_cidr(nodes: &Api<Node>, name: &str) -> Option<String> {
    nodes.get(name).await.ok()?.spec?.pod_cidr
}

#[tokio::test]
async fn only_the_leader_runs_controllers_and_a_standby_takes_over() {
    // The cluster's own manager stays off: the two candidates are the test.
    let mut c = Cluster::start(|_| {}).await;
    c.stop_manager().await;
    let client = c.client.clone();
    let (a, a_task) = candidate(&client, "a");
    let (b, b_task) = candidate(&client, "b");
    let leader = eventually(WAIT, "a leader", || async {
        match (a.is_leading(), b.is_leading()) {
            (true, false) => Some("a"),
            (false, true) => Some("b"),
            _ => None,
        }
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let l = leases.get("kube-controller-manager").await.expect("lease");
    assert_eq!(
        l.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(leader)
    );
    let nodes: Api<Node> = Api::all(client.clone());
    create_node(&client, "n1", json!({})).await;
    eventually(WAIT, "the leader allocates", || pod_cidr(&nodes, "n1")).await;
    // Never both, for several lease durations.
    let until = Instant::now() + 2 * LEASE;
    while Instant::now() < until {
        assert!(!(a.is_leading() && b.is_leading()), "two leaders");
        assert!(a.is_leading() || b.is_leading(), "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The leader dies without releasing the Lease.
    let (standby, dead) = if leader == "a" {
        (&b, a_task)
    } else {
        (&a, b_task)
    };
    dead.abort();
    let _ = dead.await;
    let died = Instant::now();
    eventually(4 * LEASE, "the standby leads", || async {
        standby.is_leading().then_some(())
    })
    .await;
    assert!(died.elapsed() < 4 * LEASE);
    create_node(&client, "n2", json!({})).await;
    eventually(WAIT, "the new leader allocates", || pod_cidr(&nodes, "n2")).await;
}
