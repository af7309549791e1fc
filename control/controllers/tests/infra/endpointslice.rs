use std::collections::BTreeMap;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kestrel_testkit::eventually;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::common::{Cluster, WAIT, create_node, obj, pod_running};

fn pod(name: &str, app: &str, port: i32, node: Option<&str>) -> Pod {
    obj(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "busybox:1.35",
                "ports": [{"name": "http", "containerPort": port}]}],
        },
    }))
}

async fn slices(client: &kube::Client, svc: &str) -> Vec<EndpointSlice> {
    let mut v = Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .expect("list slices")
        .items;
    v.sort_by_key(|s| s.name_any());
    v
}

/// (slice port, pod name, ready, serving, terminating) for every endpoint.
type Row = (i32, String, bool, bool, bool);

fn rows(slices: &[EndpointSlice]) -> Vec<Row> {
    let mut out = Vec::new();
    for s in slices {
        let port = s.ports.as_ref().and_then(|p| p.first()?.port).unwrap_or(0);
        for e in s.endpoints.iter().flatten() {
            let c = e.conditions.clone().unwrap_or_default();
            out.push((
                port,
                e.target_ref
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_default(),
                c.ready == Some(true),
                c.serving == Some(true),
                c.terminating == Some(true),
            ));
        }
    }
    out.sort();
    out
}

/// (port, ready ips, not-ready ips) per Endpoints subset.
fn subsets(ep: &Endpoints) -> Vec<(i32, Vec<String>, Vec<String>)> {
    let ips = |a: &Option<Vec<k8s_openapi::api::core::v1::EndpointAddress>>| {
        a.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>()
    };
    let mut v: Vec<_> = ep
        .subsets
        .iter()
        .flatten()
        .map(|s| {
            (
                s.ports
                    .as_ref()
                    .and_then(|p| Some(p.first()?.port))
                    .unwrap_or(0),
                ips(&s.addresses),
                ips(&s.not_ready_addresses),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn slices_and_endpoints_follow_pods_with_named_ports() {
    let c = Cluster::start(|_| {}).await;
    let client = &c.client;
    create_node(
        client,
        "n1",
        json!({"topology.kubernetes.io/zone": "zone-a"}),
    )
    .await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = svcs
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "web", "labels": {"tier": "front"}},
                "spec": {"selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
            })),
        )
        .await
        .expect("service");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // p0 and p1 name port 8080 "http", p2 names 9090: two slices.
    for (name, port) in [("p0", 8080), ("p1", 8080), ("p2", 9090)] {
        pods.create(&PostParams::default(), &pod(name, "web", port, Some("n1")))
            .await
            .expect("pod");
    }
    // A pod of another app never shows up.
    pods.create(
        &PostParams::default(),
        &pod("other", "db", 8080, Some("n1")),
    )
    .await
    .expect("pod");
    pod_running(&pods, "other", "10.42.0.99", true).await;
    pod_running(&pods, "p0", "10.42.0.10", true).await;
    pod_running(&pods, "p1", "10.42.0.11", false).await;
    pod_running(&pods, "p2", "10.42.0.12", true).await;

    let want = |r: &[(i32, &str, bool, bool, bool)]| -> Vec<Row> {
        r.iter()
            .map(|(p, n, a, b, t)| (*p, (*n).to_owned(), *a, *b, *t))
            .collect()
    };
    let first = eventually(WAIT, "two slices with three endpoints", || async {
        let s = slices(client, "web").await;
        (rows(&s)
            == want(&[
                (8080, "p0", true, true, false),
                (8080, "p1", false, false, false),
                (9090, "p2", true, true, false),
            ])
            && s.len() == 2)
            .then_some(s)
    })
    .await;
    let names: Vec<String> = first.iter().map(|s| s.name_any()).collect();
    for s in &first {
        let l = s.labels();
        assert_eq!(
            l.get("kubernetes.io/service-name").map(String::as_str),
            Some("web")
        );
        assert_eq!(
            l.get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("endpointslice-controller.k8s.io")
        );
        assert_eq!(
            l.get("tier").map(String::as_str),
            Some("front"),
            "service labels copied"
        );
        assert_eq!(s.address_type, "IPv4");
        let owner = &s.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", svc.uid().as_deref().unwrap_or(""))
        );
        assert_eq!(owner.controller, Some(true));
        let port = &s.ports.as_ref().expect("ports")[0];
        assert_eq!(
            (port.name.as_deref(), port.protocol.as_deref()),
            (Some("http"), Some("TCP"))
        );
        for e in s.endpoints.iter().flatten() {
            assert_eq!(e.node_name.as_deref(), Some("n1"));
            assert_eq!(e.zone.as_deref(), Some("zone-a"));
            let r = e.target_ref.as_ref().expect("targetRef");
            assert_eq!(r.kind.as_deref(), Some("Pod"));
            assert!(r.uid.is_some());
        }
    }
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    eventually(WAIT, "Endpoints mirror", || async {
        let ep = eps.get_opt("web").await.ok()??;
        (subsets(&ep)
            == vec![
                (
                    8080,
                    vec!["10.42.0.10".to_owned()],
                    vec!["10.42.0.11".to_owned()],
                ),
                (9090, vec!["10.42.0.12".to_owned()], vec![]),
            ])
        .then_some(())
    })
    .await;

    // p1 turns ready; p0 starts terminating (bound to a node: graceful).
    pod_running(&pods, "p1", "10.42.0.11", true).await;
    pods.delete("p0", &DeleteParams::default())
        .await
        .expect("delete p0");
    eventually(WAIT, "p1 ready, p0 terminating", || async {
        let s = slices(client, "web").await;
        (rows(&s)
            == want(&[
                (8080, "p0", false, true, true),
                (8080, "p1", true, true, false),
                (9090, "p2", true, true, false),
            ]))
        .then_some(())
    })
    .await;
    eventually(WAIT, "Endpoints drop the terminating pod", || async {
        let ep = eps.get_opt("web").await.ok()??;
        (subsets(&ep)
            == vec![
                (8080, vec!["10.42.0.11".to_owned()], vec![]),
                (9090, vec!["10.42.0.12".to_owned()], vec![]),
            ])
        .then_some(())
    })
    .await;
    // The kubelet finishes the delete; p2 goes unready.
    pods.delete("p0", &DeleteParams::default().grace_period(0))
        .await
        .expect("force delete p0");
    pod_running(&pods, "p2", "10.42.0.12", false).await;
    let last = eventually(WAIT, "p0 gone, p2 not ready", || async {
        let s = slices(client, "web").await;
        (rows(&s)
            == want(&[
                (8080, "p1", true, true, false),
                (9090, "p2", false, false, false),
            ]))
        .then_some(s)
    })
    .await;
    assert_eq!(
        last.iter().map(|s| s.name_any()).collect::<Vec<_>>(),
        names,
        "slices are updated in place"
    );

    // The Service goes: its slices (owned) and its Endpoints follow.
    svcs.delete("web", &DeleteParams::default())
        .await
        .expect("delete svc");
    eventually(WAIT, "slices and Endpoints gone", || async {
        (slices(client, "web").await.is_empty() && eps.get_opt("web").await.ok()?.is_none())
            .then_some(())
    })
    .await;
    // The API server's own Endpoints are left alone.
    assert!(eps.get_opt("kubernetes").await.expect("get").is_some());
}

#[tokio::test]
async fn more_than_a_hundred_pods_split_into_slices_of_at_most_a_hundred() {
    let c = Cluster::start(|_| {}).await;
    let client = &c.client;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    svcs.create(
        &PostParams::default(),
        &obj(json!({
            "metadata": {"name": "many"},
            "spec": {"selector": {"app": "many"}, "ports": [{"port": 80, "targetPort": 8080}]},
        })),
    )
    .await
    .expect("service");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    const N: usize = 230;
    futures::stream::iter(0..N)
        .for_each_concurrent(16, |i| {
            let pods = pods.clone();
            async move {
                let name = format!("m{i}");
                pods.create(&PostParams::default(), &pod(&name, "many", 8080, None))
                    .await
                    .expect("pod");
                pod_running(
                    &pods,
                    &name,
                    &format!("10.42.{}.{}", i / 200, i % 200 + 2),
                    true,
                )
                .await;
            }
        })
        .await;
    // Packed into full slices once the controller's cache has caught up
    // with its own writes (a transient extra slice may come and go).
    eventually(WAIT, "230 endpoints packed as 100 + 100 + 30", || async {
        let s = slices(client, "many").await;
        let mut sizes: Vec<usize> = s
            .iter()
            .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
            .collect();
        sizes.sort();
        (sizes == [30, 100, 100]).then_some(())
    })
    .await;
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let ep = eventually(WAIT, "Endpoints with every address", || async {
        let ep = eps.get_opt("many").await.ok()??;
        let n: usize = ep
            .subsets
            .iter()
            .flatten()
            .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
            .sum();
        (n == N).then_some(ep)
    })
    .await;
    let ports: BTreeMap<_, _> = ep
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| (p.port, p.protocol.clone()))
        .collect();
    assert_eq!(
        ports.into_iter().collect::<Vec<_>>(),
        [(8080, Some("TCP".to_owned()))]
    );
}

/// Services without a selector keep hand-made Endpoints; those are mirrored
/// into slices (upstream's EndpointSliceMirroring), the API server's own
/// `kubernetes` Service included, so slice consumers see them too.
#[tokio::test]
async fn endpoints_of_selectorless_services_are_mirrored_into_slices() {
    let c = Cluster::start(|_| {}).await;
    let client = &c.client;
    let mirrored = |s: &EndpointSlice| {
        s.labels()
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("endpointslicemirroring-controller.k8s.io")
    };
    let api = eventually(WAIT, "a slice for the kubernetes Service", || async {
        let s = slices(client, "kubernetes").await;
        (s.len() == 1 && mirrored(&s[0])).then(|| s[0].clone())
    })
    .await;
    let port = &api.ports.as_ref().expect("ports")[0];
    assert_eq!(port.name.as_deref(), Some("https"));
    assert_eq!(port.port, Some(i32::from(c._server.addr.port())));
    let e = &api.endpoints.as_ref().expect("endpoints")[0];
    assert_eq!(e.addresses, [c._server.addr.ip().to_string()]);
    assert_eq!(e.conditions.as_ref().and_then(|c| c.ready), Some(true));

    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    svcs.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "external"}, "spec": {"ports": [{"name": "db", "port": 5432}]}})),
    )
    .await
    .expect("service");
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    eps.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "external"}, "subsets": [{
            "addresses": [{"ip": "192.0.2.10"}],
            "notReadyAddresses": [{"ip": "192.0.2.11"}],
            "ports": [{"name": "db", "port": 5432}],
        }]})),
    )
    .await
    .expect("endpoints");
    let rows_of = |s: &[EndpointSlice]| -> Vec<(String, bool)> {
        let mut v: Vec<_> = s
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .map(|e| {
                (
                    e.addresses[0].clone(),
                    e.conditions.as_ref().and_then(|c| c.ready) == Some(true),
                )
            })
            .collect();
        v.sort();
        v
    };
    eventually(WAIT, "mirrored slice", || async {
        let s = slices(client, "external").await;
        (s.iter().all(mirrored)
            && rows_of(&s)
                == [
                    ("192.0.2.10".to_owned(), true),
                    ("192.0.2.11".to_owned(), false),
                ])
        .then_some(())
    })
    .await;
    // The Endpoints go: so do the mirrored slices. Ours never touched them.
    eps.delete("external", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(WAIT, "mirrored slices removed", || async {
        slices(client, "external").await.is_empty().then_some(())
    })
    .await;
    assert!(eps.get_opt("external").await.expect("get").is_none());
}
