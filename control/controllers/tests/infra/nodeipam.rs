use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Event, Node};
use kestrel_testkit::eventually;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::common::{Cluster, WAIT, create_node, obj};

async fn cidr(nodes: &Api<Node>, name: &str) -> Option<String> {
    let n = nodes.get(name).await.ok()?;
    let spec = n.spec?;
    let c = spec.pod_cidr?;
    assert_eq!(
        spec.pod_cidrs,
        Some(vec![c.clone()]),
        "podCIDRs matches podCIDR"
    );
    Some(c)
}

#[tokio::test]
async fn nodes_get_distinct_ranges_released_on_delete() {
    let c = Cluster::start(|_| {}).await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    // A node that comes with a range keeps it, and nobody else gets it.
    nodes
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "preset"}, "spec": {"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24"]}})),
        )
        .await
        .expect("create");
    let mut got = HashSet::new();
    for n in ["a", "b", "c"] {
        create_node(&c.client, n, json!({})).await;
    }
    for n in ["a", "b", "c"] {
        let r = eventually(WAIT, "a pod CIDR", || cidr(&nodes, n)).await;
        assert!(r.starts_with("10.42.") && r.ends_with(".0/24"), "{r}");
        assert_ne!(r, "10.42.0.0/24");
        got.insert(r);
    }
    assert_eq!(got.len(), 3, "distinct: {got:?}");
    assert_eq!(
        cidr(&nodes, "preset").await.as_deref(),
        Some("10.42.0.0/24")
    );
}

async fn full_event(client: &kube::Client, node: &str) {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    eventually(WAIT, "a CIDRNotAvailable event", || async {
        let l = events
            .list(&ListParams::default().fields(&format!("involvedObject.name={node}")))
            .await
            .ok()?;
        l.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("CIDRNotAvailable"))
            .then_some(())
    })
    .await;
}

/// A two-range cluster: the third node waits for a range until one is
/// released, and a restarted manager knows which ranges are taken.
#[tokio::test]
async fn ranges_are_released_and_rebuilt_after_restart() {
    let small = |o: &mut kestrel_controllers::Options| o.cluster_cidr = "10.99.0.0/23".to_owned();
    let mut c = Cluster::start(small).await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    create_node(&c.client, "n1", json!({})).await;
    create_node(&c.client, "n2", json!({})).await;
    let r1 = eventually(WAIT, "n1 range", || cidr(&nodes, "n1")).await;
    let r2 = eventually(WAIT, "n2 range", || cidr(&nodes, "n2")).await;
    assert_ne!(r1, r2);
    create_node(&c.client, "n3", json!({})).await;
    // Full: n3 waits, and an event says why.
    full_event(&c.client, "n3").await;
    assert_eq!(cidr(&nodes, "n3").await, None);
    nodes
        .delete("n1", &DeleteParams::default())
        .await
        .expect("delete n1");
    let r3 = eventually(WAIT, "n3 gets n1's range", || cidr(&nodes, "n3")).await;
    assert_eq!(r3, r1);

    // A new manager starts from the Nodes: both ranges are taken, so n4
    // gets nothing until n2 goes, and then exactly n2's range.
    c.stop_manager().await;
    c.start_manager(small);
    create_node(&c.client, "n4", json!({})).await;
    full_event(&c.client, "n4").await;
    assert_eq!(cidr(&nodes, "n4").await, None, "no range handed out twice");
    nodes
        .delete("n2", &DeleteParams::default())
        .await
        .expect("delete n2");
    let r4 = eventually(WAIT, "n4 gets n2's range", || cidr(&nodes, "n4")).await;
    assert_eq!(r4, r2);
    assert_eq!(cidr(&nodes, "n3").await, Some(r1));
}
