//! The cluster DNS endpoints: the nodes themselves, in the kube-dns
//! Endpoints and (mirrored) EndpointSlice the node agents read.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Node};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::common::{Cluster, WAIT, obj};

/// (address, nodeName, ready) of one endpoint.
type Row = (String, String, bool);

fn want(rows: &[(&str, &str, bool)]) -> Vec<Row> {
    let mut v: Vec<Row> = rows
        .iter()
        .map(|(a, n, r)| ((*a).to_owned(), (*n).to_owned(), *r))
        .collect();
    v.sort();
    v
}

async fn slice_rows(client: &kube::Client) -> Option<Vec<Row>> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "kube-system")
        .list(&ListParams::default().labels("kubernetes.io/service-name=kube-dns"))
        .await
        .ok()?
        .items;
    let mut out = Vec::new();
    for s in &slices {
        let mut ports: Vec<_> = s
            .ports
            .iter()
            .flatten()
            .map(|p| Some((p.name.clone()?, p.port?, p.protocol.clone()?)))
            .collect::<Option<Vec<_>>>()?;
        ports.sort();
        if ports
            != [
                ("dns".to_owned(), 53, "UDP".to_owned()),
                ("dns-tcp".to_owned(), 53, "TCP".to_owned()),
            ]
        {
            return None;
        }
        for e in s.endpoints.iter().flatten() {
            out.push((
                e.addresses.first()?.clone(),
                e.node_name.clone()?,
                e.conditions.as_ref()?.ready?,
            ));
        }
    }
    out.sort();
    Some(out)
}

async fn endpoints_rows(client: &kube::Client) -> Option<Vec<Row>> {
    let ep = Api::<Endpoints>::namespaced(client.clone(), "kube-system")
        .get_opt("kube-dns")
        .await
        .ok()??;
    let mut out = Vec::new();
    for s in ep.subsets.iter().flatten() {
        for (list, ready) in [(&s.addresses, true), (&s.not_ready_addresses, false)] {
            for a in list.iter().flatten() {
                out.push((a.ip.clone(), a.node_name.clone()?, ready));
            }
        }
    }
    out.sort();
    Some(out)
}

/// Both views show exactly `rows` (polled until [`WAIT`] runs out; the
/// failure shows what was last seen).
async fn converge(client: &kube::Client, what: &str, rows: &[(&str, &str, bool)]) {
    let rows = want(rows);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let slices = slice_rows(client).await;
        let endpoints = endpoints_rows(client).await;
        if slices.as_ref() == Some(&rows) && endpoints.as_ref() == Some(&rows) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: want {rows:?}, slices show {slices:?}, Endpoints show {endpoints:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn status(ip: Option<&str>, ready: &str) -> serde_json::Value {
    let now = jiff::Timestamp::now().to_string();
    let mut addresses = vec![json!({"type": "Hostname", "address": "h"})];
    if let Some(ip) = ip {
        addresses.push(json!({"type": "InternalIP", "address": ip}));
    }
    json!({
        "addresses": addresses,
        "conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady",
            "lastHeartbeatTime": now, "lastTransitionTime": now}],
    })
}

async fn add_node(nodes: &Api<Node>, name: &str, ip: Option<&str>, ready: &str) {
    nodes
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": name}, "status": status(ip, ready)})),
        )
        .await
        .expect("create node");
}

async fn set_status(nodes: &Api<Node>, name: &str, ip: Option<&str>, ready: &str) {
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status(ip, ready)})),
        )
        .await
        .expect("node status");
}

#[tokio::test]
async fn kube_dns_endpoints_follow_the_nodes() {
    // No Leases are renewed here: keep node lifecycle from marking the
    // nodes Unknown mid-test.
    let c = Cluster::start(|o| o.node_monitor_grace_period = Duration::from_secs(3600)).await;
    let client = &c.client;
    let nodes: Api<Node> = Api::all(client.clone());
    add_node(&nodes, "n1", Some("192.168.50.1"), "True").await;
    add_node(&nodes, "n2", Some("192.168.50.2"), "True").await;
    add_node(&nodes, "n3", Some("192.168.50.3"), "False").await;
    // Without an InternalIP a node is left out.
    add_node(&nodes, "n4", None, "True").await;
    converge(
        client,
        "every node with an InternalIP, ready by its condition",
        &[
            ("192.168.50.1", "n1", true),
            ("192.168.50.2", "n2", true),
            ("192.168.50.3", "n3", false),
        ],
    )
    .await;
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "kube-system")
        .list(&ListParams::default().labels("kubernetes.io/service-name=kube-dns"))
        .await
        .expect("slices")
        .items;
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0].address_type, "IPv4");
    assert_eq!(
        slices[0]
            .labels()
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("endpointslicemirroring-controller.k8s.io")
    );
    assert_eq!(
        slices[0].labels().get("k8s-app").map(String::as_str),
        Some("kube-dns")
    );

    // n1 turns NotReady, n2 goes, n3 moves and turns Ready, n4 gets an
    // address, n5 joins.
    set_status(&nodes, "n1", Some("192.168.50.1"), "False").await;
    nodes
        .delete("n2", &DeleteParams::default())
        .await
        .expect("delete n2");
    set_status(&nodes, "n3", Some("192.168.50.33"), "True").await;
    set_status(&nodes, "n4", Some("192.168.50.4"), "True").await;
    add_node(&nodes, "n5", Some("192.168.50.5"), "True").await;
    converge(
        client,
        "readiness, removal, new address and new nodes",
        &[
            ("192.168.50.1", "n1", false),
            ("192.168.50.33", "n3", true),
            ("192.168.50.4", "n4", true),
            ("192.168.50.5", "n5", true),
        ],
    )
    .await;

    // Level-based: Endpoints deleted by hand come back.
    Api::<Endpoints>::namespaced(client.clone(), "kube-system")
        .delete("kube-dns", &DeleteParams::default())
        .await
        .expect("delete endpoints");
    converge(
        client,
        "the Endpoints recreated",
        &[
            ("192.168.50.1", "n1", false),
            ("192.168.50.33", "n3", true),
            ("192.168.50.4", "n4", true),
            ("192.168.50.5", "n5", true),
        ],
    )
    .await;
}
