use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kestrel_testkit::eventually;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::*;

fn daemonset(name: &str, update: serde_json::Value) -> DaemonSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": update,
            "template": template(name, "busybox:1.35", json!({})),
        }
    }))
    .expect("daemonset")
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// The nodes with a ready daemon pod, sorted.
async fn ready_nodes(pods: &Api<Pod>, labels: &str) -> Vec<String> {
    let mut n: Vec<_> = live_pods(pods, labels)
        .await
        .iter()
        .filter(|p| ready(p))
        .map(node_of)
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn a_daemonset_lands_on_a_node_that_joins_later() {
    let c = Cluster::start().await;
    let dss = c.api::<DaemonSet>();
    let pods = c.api::<Pod>();
    c.add_node("node-a", &[]).await;
    dss.create(&PostParams::default(), &daemonset("agent", json!({})))
        .await
        .expect("create");
    eventually(WAIT, "a pod on node-a", || async {
        (ready_nodes(&pods, "app=agent").await == ["node-a"]).then_some(())
    })
    .await;
    let p = &live_pods(&pods, "app=agent").await[0];
    let affinity =
        serde_json::to_value(p.spec.as_ref().and_then(|s| s.affinity.clone())).expect("json");
    assert_eq!(
        affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchFields"][0],
        json!({"key": "metadata.name", "operator": "In", "values": ["node-a"]}),
        "pinned by node affinity, as upstream"
    );
    let tolerations =
        serde_json::to_string(&p.spec.as_ref().and_then(|s| s.tolerations.clone())).expect("json");
    assert!(
        tolerations.contains("node.kubernetes.io/not-ready"),
        "{tolerations}"
    );

    // A node that joins later gets its pod; a tainted one does not.
    c.add_node("node-b", &[]).await;
    let tainted: Node = serde_json::from_value(json!({
        "metadata": {"name": "node-c"},
        "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]},
    }))
    .expect("node");
    Api::<Node>::all(c.client.clone())
        .create(&PostParams::default(), &tainted)
        .await
        .expect("node-c");
    let st = eventually(
        WAIT,
        "pods on node-a and node-b and status to match",
        || async {
            let s = dss.get("agent").await.ok()?.status?;
            (ready_nodes(&pods, "app=agent").await == ["node-a", "node-b"]
                && s.desired_number_scheduled == 2
                && s.number_available == Some(2))
            .then_some(s)
        },
    )
    .await;
    assert_eq!(st.current_number_scheduled, 2);
    assert_eq!(st.number_ready, 2);
    assert_eq!(st.updated_number_scheduled, Some(2));
    assert_eq!(st.number_misscheduled, 0);
    assert_eq!(st.observed_generation, Some(1));
}

#[tokio::test]
async fn a_daemonset_rolls_out_within_max_unavailable() {
    let c = Cluster::start().await;
    let dss = c.api::<DaemonSet>();
    let pods = c.api::<Pod>();
    for n in ["node-a", "node-b", "node-c"] {
        c.add_node(n, &[]).await;
    }
    let update = json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}});
    dss.create(&PostParams::default(), &daemonset("agent", update))
        .await
        .expect("create");
    eventually(WAIT, "three ready pods", || async {
        (ready_nodes(&pods, "app=agent").await.len() == 3).then_some(())
    })
    .await;
    let lowest = Lowest::watch(pods.clone(), "app=agent");
    eventually(WAIT, "the watch to list", || async {
        (lowest.get() == 3).then_some(())
    })
    .await;
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}});
    dss.patch("agent", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("update");
    eventually(WAIT, "every node on the new template", || async {
        let s = dss.get("agent").await.ok()?.status?;
        let ps = live_pods(&pods, "app=agent").await;
        let new = ps.iter().filter(|p| {
            ready(p)
                && p.spec
                    .as_ref()
                    .and_then(|s| s.containers[0].image.as_deref())
                    == Some("busybox:1.36")
        });
        (new.count() == 3
            && ps.len() == 3
            && s.updated_number_scheduled == Some(3)
            && s.number_available == Some(3))
        .then_some(())
    })
    .await;
    assert_eq!(lowest.get(), 2, "one node at a time");
}
