use super::*;

fn ep(name: &str) -> Endpoint {
    Endpoint {
        addresses: vec![format!("10.42.0.{}", name.len())],
        target_ref: Some(ObjectReference {
            name: Some(name.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(n: i32) -> Vec<EndpointPort> {
    vec![EndpointPort {
        name: Some("http".into()),
        port: Some(n),
        protocol: Some("TCP".into()),
        app_protocol: None,
    }]
}

fn names(p: &SlicePlan) -> Vec<String> {
    p.endpoints.iter().map(endpoint_id).collect()
}

#[test]
fn endpoints_stay_put_and_new_ones_fill_room_first() {
    let current = vec![
        (
            "s-a".to_owned(),
            port(80),
            vec![ep("a"), ep("b"), ep("gone")],
        ),
        ("s-b".to_owned(), port(80), vec![ep("c")]),
    ];
    let mut wanted = BTreeMap::new();
    wanted.insert(
        ports_key(&port(80)),
        (port(80), vec![ep("a"), ep("b"), ep("c"), ep("d"), ep("e")]),
    );
    let (plans, delete) = plan_slices(&current, &wanted, 3);
    assert!(delete.is_empty());
    assert_eq!(plans.len(), 2);
    assert_eq!(plans[0].existing.as_deref(), Some("s-a"));
    assert_eq!(names(&plans[0]), ["a", "b", "d"]);
    assert_eq!(plans[1].existing.as_deref(), Some("s-b"));
    assert_eq!(names(&plans[1]), ["c", "e"]);
}

#[test]
fn distinct_ports_get_distinct_slices_and_big_groups_split() {
    let mut wanted = BTreeMap::new();
    let many: Vec<Endpoint> = (0..250).map(|i| ep(&format!("p{i}"))).collect();
    wanted.insert(ports_key(&port(80)), (port(80), many));
    wanted.insert(ports_key(&port(8080)), (port(8080), vec![ep("x")]));
    let current = vec![("old".to_owned(), port(9), vec![ep("y")])];
    let (plans, delete) = plan_slices(&current, &wanted, 100);
    assert_eq!(delete, ["old"]);
    let sizes: Vec<(i32, usize)> = plans
        .iter()
        .map(|p| (p.ports[0].port.unwrap_or(0), p.endpoints.len()))
        .collect();
    assert_eq!(sizes, [(80, 100), (80, 100), (80, 50), (8080, 1)]);
    assert!(plans.iter().all(|p| p.existing.is_none()));
}

#[test]
fn conditions_follow_readiness_termination_and_publish_not_ready() {
    let svc = |publish: bool| -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "publishNotReadyAddresses": publish,
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))
        .expect("svc")
    };
    let pod = |ready: bool, deleting: bool, port: Option<i32>| -> Pod {
        let ports = port.map(|p| serde_json::json!([{"name": "http", "containerPort": p}]));
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u1",
                "deletionTimestamp": if deleting { Some("2026-01-01T00:00:00Z") } else { None }},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIP": "10.42.0.5",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .expect("pod")
    };
    let conds = |svc: &Service, p: &Pod| -> (bool, bool, bool) {
        let c = pod_endpoint(svc, p, None)
            .expect("endpoint")
            .endpoint
            .conditions
            .expect("conditions");
        (
            c.ready == Some(true),
            c.serving == Some(true),
            c.terminating == Some(true),
        )
    };
    let plain = svc(false);
    assert_eq!(
        conds(&plain, &pod(true, false, Some(8080))),
        (true, true, false)
    );
    assert_eq!(
        conds(&plain, &pod(false, false, Some(8080))),
        (false, false, false)
    );
    assert_eq!(
        conds(&plain, &pod(true, true, Some(8080))),
        (false, true, true)
    );
    assert_eq!(
        conds(&plain, &pod(false, true, Some(8080))),
        (false, false, true)
    );
    let publish = svc(true);
    assert_eq!(
        conds(&publish, &pod(false, false, Some(8080))),
        (true, true, false)
    );
    // The named port resolves per pod; a pod without it has no port.
    let e = pod_endpoint(&plain, &pod(true, false, Some(9090)), None).expect("endpoint");
    assert_eq!(e.ports[0].port, Some(9090));
    let e = pod_endpoint(&plain, &pod(true, false, None), None).expect("endpoint");
    assert!(e.ports.is_empty());
    // Legacy Endpoints leave terminating pods out unless publishing.
    let p = Arc::new(pod(true, true, Some(8080)));
    assert!(endpoint_subsets(&plain, std::slice::from_ref(&p)).is_empty());
    assert_eq!(endpoint_subsets(&publish, &[p]).len(), 1);
}

#[test]
fn endpoints_keep_at_most_the_cap_ready_first() {
    let addrs = |n: usize, base: usize| -> Option<Vec<EndpointAddress>> {
        Some(
            (0..n)
                .map(|i| EndpointAddress {
                    ip: format!("10.42.{}.{}", base, i),
                    ..Default::default()
                })
                .collect(),
        )
    };
    let mut subsets = vec![
        EndpointSubset {
            addresses: addrs(3, 0),
            not_ready_addresses: addrs(4, 1),
            ports: None,
        },
        EndpointSubset {
            addresses: addrs(2, 2),
            not_ready_addresses: addrs(2, 3),
            ports: None,
        },
    ];
    assert!(!truncate_subsets(&mut subsets.clone(), 11));
    assert!(truncate_subsets(&mut subsets, 6));
    let n = |v: &Option<Vec<EndpointAddress>>| v.as_ref().map_or(0, Vec::len);
    let got: Vec<(usize, usize)> = subsets
        .iter()
        .map(|s| (n(&s.addresses), n(&s.not_ready_addresses)))
        .collect();
    assert_eq!(got, [(3, 1), (2, 0)], "all 5 ready, then 1 not ready");
}

#[test]
fn no_endpoints_leave_one_placeholder() {
    let current = vec![
        ("s-a".to_owned(), port(80), vec![ep("a")]),
        ("s-b".to_owned(), port(80), vec![ep("b")]),
    ];
    let (plans, delete) = plan_slices(&current, &BTreeMap::new(), 100);
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].existing.as_deref(), Some("s-a"));
    assert!(plans[0].endpoints.is_empty() && plans[0].ports.is_empty());
    assert_eq!(delete, ["s-b"]);
}
