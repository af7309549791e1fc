//! Unit tests for the plugins: pure logic over k8s-openapi objects, run
//! through the same [`Profile::schedule`] the scheduler uses.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

use super::*;

fn node(name: &str, cpu: &str, labels: Value) -> Value {
    let mut l = labels;
    l["kubernetes.io/hostname"] = json!(name);
    json!({
        "metadata": {"name": name, "labels": l},
        "spec": {},
        "status": {
            "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "10"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

fn cache_of(nodes: Vec<Value>) -> Cache {
    let mut c = Cache::default();
    for n in nodes {
        let n: Node = serde_json::from_value(n).expect("node");
        c.set_node(&n).expect("valid node");
    }
    c
}

fn pod(name: &str, spec: Value) -> Arc<PodInfo> {
    pod_labeled(name, json!({}), spec)
}

fn pod_labeled(name: &str, labels: Value, spec: Value) -> Arc<PodInfo> {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c"}]);
    }
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": spec
    }))
    .expect("pod");
    PodInfo::new(&p).expect("valid pod")
}

fn cpu(req: &str) -> Value {
    json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": req}}}]})
}

fn schedule(c: &mut Cache, p: &Arc<PodInfo>) -> Result<String, String> {
    Profile::default().schedule(p, c).map_err(|e| e.to_string())
}

/// Schedule and assume, as the loop does.
fn place(c: &mut Cache, p: Arc<PodInfo>) -> String {
    let n = schedule(c, &p).unwrap_or_else(|e| panic!("{} unschedulable: {e}", p.name));
    c.assume(p, &n);
    n
}

#[test]
fn insufficient_cpu_counts_assumed_pods_and_reads_like_upstream() {
    let mut c = cache_of(vec![node("a", "1", json!({})), node("b", "1", json!({}))]);
    place(&mut c, pod("p1", cpu("600m")));
    place(&mut c, pod("p2", cpu("600m")));
    // Least-allocated spread them; neither node has 600m left.
    assert_eq!(
        schedule(&mut c, &pod("p3", cpu("600m"))),
        Err("0/2 nodes are available: 2 Insufficient cpu.".into())
    );
    assert!(schedule(&mut c, &pod("p4", cpu("400m"))).is_ok());
}

#[test]
fn reasons_are_counted_per_node_and_sorted_as_strings() {
    let mut c = cache_of(vec![
        node("a", "1", json!({"disk": "ssd"})),
        node("b", "1", json!({"disk": "ssd"})),
        node("c", "4", json!({"disk": "hdd"})),
    ]);
    let p = pod(
        "p",
        json!({"nodeSelector": {"disk": "ssd"},
               "containers": [{"name": "c", "resources": {"requests": {"cpu": "2", "memory": "9Gi"}}}]}),
    );
    assert_eq!(
        schedule(&mut c, &p),
        Err(
            "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
             2 Insufficient cpu, 2 Insufficient memory."
                .into()
        )
    );
    let e = FitError {
        num_nodes: 12,
        reasons: [
            (Reason::Static("Insufficient cpu"), 10),
            (Reason::Static("Too many pods"), 2),
        ]
        .into(),
        pre_filter: None,
        post_filter: None,
    };
    // "10 ..." sorts before "2 ...", as upstream's string sort does.
    assert_eq!(
        e.to_string(),
        "0/12 nodes are available: 10 Insufficient cpu, 2 Too many pods."
    );
    assert_eq!(
        FitError {
            num_nodes: 0,
            reasons: HashMap::new(),
            pre_filter: None,
            post_filter: None,
        }
        .to_string(),
        "no nodes available to schedule pods"
    );
}

#[test]
fn pod_count_is_a_resource() {
    let mut c = cache_of(vec![node("a", "100", json!({}))]);
    for i in 0..10 {
        place(&mut c, pod(&format!("p{i}"), json!({})));
    }
    assert_eq!(
        schedule(&mut c, &pod("p10", json!({}))),
        Err("0/1 nodes are available: 1 Too many pods.".into())
    );
}

#[test]
fn taints_need_tolerations() {
    let mut tainted = node("t", "1", json!({}));
    tainted["spec"]["taints"] =
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
    let mut c = cache_of(vec![tainted]);
    assert_eq!(
        schedule(&mut c, &pod("plain", json!({}))),
        Err("0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}.".into())
    );
    for tol in [
        json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}),
        json!({"key": "dedicated", "operator": "Exists"}),
        json!({"operator": "Exists"}),
    ] {
        let p = pod("tol", json!({"tolerations": [tol.clone()]}));
        assert_eq!(schedule(&mut c, &p), Ok("t".into()), "{tol}");
    }
    for tol in [
        json!({"key": "dedicated", "value": "cpu", "effect": "NoSchedule"}),
        json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "other", "operator": "Exists"}),
    ] {
        let p = pod("wrong", json!({"tolerations": [tol.clone()]}));
        assert!(schedule(&mut c, &p).is_err(), "{tol}");
    }
}

#[test]
fn no_execute_filters_and_prefer_no_schedule_only_scores() {
    let mut noexec = node("x", "1", json!({}));
    noexec["spec"]["taints"] = json!([{"key": "k", "effect": "NoExecute"}]);
    let mut prefer = node("p", "1", json!({}));
    prefer["spec"]["taints"] = json!([{"key": "k", "effect": "PreferNoSchedule"}]);
    let plain = node("n", "1", json!({}));
    let mut c = cache_of(vec![noexec, prefer.clone()]);
    assert_eq!(schedule(&mut c, &pod("a", json!({}))), Ok("p".into()));
    let mut c = cache_of(vec![prefer, plain]);
    for i in 0..10 {
        assert_eq!(
            schedule(&mut c, &pod(&format!("b{i}"), json!({}))),
            Ok("n".into())
        );
    }
}

#[test]
fn not_ready_and_cordoned_nodes_are_skipped() {
    let mut not_ready = node("nr", "1", json!({}));
    not_ready["status"]["conditions"][0]["status"] = json!("False");
    let mut cordoned = node("cd", "1", json!({}));
    cordoned["spec"]["unschedulable"] = json!(true);
    let mut c = cache_of(vec![not_ready, cordoned]);
    assert_eq!(
        schedule(&mut c, &pod("p", json!({}))),
        Err("0/2 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
             1 node(s) were unschedulable."
            .into())
    );
    let p = pod(
        "tolerant",
        json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}),
    );
    assert_eq!(schedule(&mut c, &p), Ok("cd".into()));
}

#[test]
fn required_node_affinity_operators() {
    let mut c = cache_of(vec![
        node("small", "1", json!({"gen": "3", "zone": "a"})),
        node("big", "1", json!({"gen": "5", "zone": "b"})),
    ]);
    let with = |exprs: Value, fields: Value| {
        pod(
            "p",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": exprs, "matchFields": fields}]}}}}),
        )
    };
    let cases = [
        (
            json!([{"key": "gen", "operator": "Gt", "values": ["4"]}]),
            json!([]),
            Some("big"),
        ),
        (
            json!([{"key": "gen", "operator": "Lt", "values": ["4"]}]),
            json!([]),
            Some("small"),
        ),
        (
            json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}]),
            json!([]),
            Some("big"),
        ),
        (
            json!([{"key": "zone", "operator": "In", "values": ["a"]}]),
            json!([]),
            Some("small"),
        ),
        (
            json!([{"key": "gpu", "operator": "Exists"}]),
            json!([]),
            None,
        ),
        (
            json!([]),
            json!([{"key": "metadata.name", "operator": "In", "values": ["small"]}]),
            Some("small"),
        ),
        // A term with no requirements selects nothing.
        (json!([]), json!([]), None),
    ];
    for (exprs, fields, want) in cases {
        let got = schedule(&mut c, &with(exprs.clone(), fields)).ok();
        assert_eq!(got.as_deref(), want, "{exprs}");
    }
}

#[test]
fn preferred_node_affinity_wins_the_score() {
    let mut c = cache_of(vec![
        node("a", "1", json!({"zone": "a"})),
        node("b", "1", json!({"zone": "b"})),
        node("c", "1", json!({"zone": "c"})),
    ]);
    let p = pod(
        "p",
        json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 80, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}}
        ]}}}),
    );
    for _ in 0..5 {
        assert_eq!(schedule(&mut c, &p), Ok("b".into()));
    }
}

#[test]
fn host_ports_are_taken_once_per_node() {
    let mut c = cache_of(vec![node("a", "4", json!({})), node("b", "4", json!({}))]);
    let web = |n: &str| {
        pod(
            n,
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
        )
    };
    let first = place(&mut c, web("w1"));
    let second = place(&mut c, web("w2"));
    assert_ne!(first, second);
    assert_eq!(
        schedule(&mut c, &web("w3")),
        Err("0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports.".into())
    );
}

#[test]
fn least_allocated_spreads_by_requests() {
    let mut c = cache_of(vec![node("a", "4", json!({})), node("b", "4", json!({}))]);
    place(&mut c, pod("big", cpu("3")));
    let busy = c.node("a").expect("a").requested.milli_cpu > 0;
    let empty = if busy { "b" } else { "a" };
    for i in 0..3 {
        assert_eq!(
            schedule(&mut c, &pod(&format!("s{i}"), cpu("100m"))),
            Ok(empty.into())
        );
    }
}

fn anti(key: &str) -> Value {
    json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": key}
    ]}}})
}

#[test]
fn required_anti_affinity_over_hostname_and_zone() {
    let zones = |n: &str, z: &str| node(n, "4", json!({"topology.kubernetes.io/zone": z}));
    let mut c = cache_of(vec![zones("a1", "a"), zones("a2", "a"), zones("b1", "b")]);
    let db = |n: &str, key: &str| pod_labeled(n, json!({"app": "db"}), anti(key));
    let mut used: Vec<String> = (0..3)
        .map(|i| place(&mut c, db(&format!("db{i}"), "kubernetes.io/hostname")))
        .collect();
    used.sort();
    assert_eq!(used, ["a1", "a2", "b1"]);
    assert_eq!(
        schedule(&mut c, &db("db3", "kubernetes.io/hostname")),
        Err("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.".into())
    );
    // A pod that is not a db but is repelled by the dbs' own anti-affinity
    // would be fine; a db-labelled pod without its own rule is not.
    let plain_db = pod_labeled("sneaky", json!({"app": "db"}), json!({}));
    assert_eq!(
        schedule(&mut c, &plain_db),
        Err(
            "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
                .into()
        )
    );
    assert!(schedule(&mut c, &pod("web", json!({}))).is_ok());

    let mut c = cache_of(vec![zones("a1", "a"), zones("a2", "a"), zones("b1", "b")]);
    let z = "topology.kubernetes.io/zone";
    let first = place(&mut c, db("z0", z));
    let second = place(&mut c, db("z1", z));
    assert!(
        (first == "b1") != (second == "b1"),
        "one per zone: {first} {second}"
    );
    assert!(schedule(&mut c, &db("z2", z)).is_err());
}

#[test]
fn required_affinity_follows_the_group_and_the_first_may_go_anywhere() {
    let zones = |n: &str, z: &str| node(n, "4", json!({"topology.kubernetes.io/zone": z}));
    let mut c = cache_of(vec![zones("a1", "a"), zones("b1", "b"), zones("b2", "b")]);
    let follower = |n: &str| {
        pod_labeled(
            n,
            json!({"app": "cache"}),
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone"}
            ]}}}),
        )
    };
    let first = place(&mut c, follower("c0"));
    let zone = |n: &str| c.node(n).expect("node").labels["topology.kubernetes.io/zone"].clone();
    let z0 = zone(&first);
    for i in 1..4 {
        let n = place(&mut c, follower(&format!("c{i}")));
        assert_eq!(
            c.node(&n).expect("node").labels["topology.kubernetes.io/zone"],
            z0
        );
    }
    // A pod that wants the group but is not of it needs the group to exist.
    let outsider = pod(
        "o",
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "nothing"}}, "topologyKey": "kubernetes.io/hostname"}
        ]}}}),
    );
    assert_eq!(
        schedule(&mut c, &outsider),
        Err("0/3 nodes are available: 3 node(s) didn't match pod affinity rules.".into())
    );
}

#[test]
fn preferred_pod_anti_affinity_scores_away() {
    let mut c = cache_of(vec![node("a", "4", json!({})), node("b", "4", json!({}))]);
    // "b" is busy, so resources alone favour "a"...
    c.assume(pod("big", cpu("3")), "b");
    c.assume(pod_labeled("x0", json!({"app": "x"}), json!({})), "a");
    assert_eq!(schedule(&mut c, &pod("plain", json!({}))), Ok("a".into()));
    // ...but a soft anti-affinity to x0 outweighs that.
    let soft = pod_labeled(
        "x1",
        json!({"app": "x"}),
        json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": "kubernetes.io/hostname"}}
        ]}}}),
    );
    assert_eq!(schedule(&mut c, &soft), Ok("b".into()));
}

fn spread(max_skew: i32, key: &str, when: &str) -> Value {
    json!({"topologySpreadConstraints": [{
        "maxSkew": max_skew, "topologyKey": key, "whenUnsatisfiable": when,
        "labelSelector": {"matchLabels": {"app": "web"}}
    }]})
}

#[test]
fn hard_topology_spread_keeps_the_skew() {
    let zones = |n: &str, z: &str| node(n, "100", json!({"topology.kubernetes.io/zone": z}));
    let mut c = cache_of(vec![
        zones("a1", "a"),
        zones("a2", "a"),
        zones("a3", "a"),
        zones("b1", "b"),
        node("nozone", "100", json!({})),
    ]);
    let web = |i: usize| {
        pod_labeled(
            &format!("w{i}"),
            json!({"app": "web"}),
            spread(1, "topology.kubernetes.io/zone", "DoNotSchedule"),
        )
    };
    let mut per_zone = HashMap::<String, i32>::new();
    for i in 0..8 {
        let n = place(&mut c, web(i));
        let z = c.node(&n).expect("node").labels["topology.kubernetes.io/zone"].clone();
        *per_zone.entry(z).or_default() += 1;
        let (a, b) = (
            per_zone.get("a").copied().unwrap_or(0),
            per_zone.get("b").copied().unwrap_or(0),
        );
        assert!((a - b).abs() <= 1, "skew after {i}: a={a} b={b}");
    }
    assert_eq!(per_zone["a"], 4);
    // The node without the key is never a candidate.
    assert!(c.node("nozone").expect("nozone").pods.is_empty());
}

#[test]
fn hard_spread_failure_message_and_missing_label() {
    let mut c = cache_of(vec![
        node("a", "100", json!({"zone": "a"})),
        node("z", "100", json!({})),
    ]);
    let web = |i: usize| {
        pod_labeled(
            &format!("w{i}"),
            json!({"app": "web"}),
            spread(1, "zone", "DoNotSchedule"),
        )
    };
    // One domain only: it can always take more (skew vs itself is 1).
    place(&mut c, web(0));
    place(&mut c, web(1));
    let mut c = cache_of(vec![
        node("a", "100", json!({"zone": "a"})),
        node("b", "1", json!({"zone": "b"})),
        node("z", "100", json!({})),
    ]);
    place(&mut c, web(0));
    place(&mut c, web(1));
    // Zone b is full by cpu, so zone a can take no more than one above b.
    let big = |i: usize| {
        let mut s = spread(1, "zone", "DoNotSchedule");
        s["containers"] = json!([{"name": "c", "resources": {"requests": {"cpu": "2"}}}]);
        pod_labeled(&format!("big{i}"), json!({"app": "web"}), s)
    };
    let counts = |c: &Cache, n: &str| c.node(n).expect("node").pods.len();
    assert_eq!((counts(&c, "a"), counts(&c, "b")), (1, 1));
    place(&mut c, big(0));
    assert_eq!(
        schedule(&mut c, &big(1)),
        Err("0/3 nodes are available: 1 Insufficient cpu, \
             1 node(s) didn't match pod topology spread constraints, \
             1 node(s) didn't match pod topology spread constraints (missing required label)."
            .into())
    );
}

#[test]
fn soft_spread_prefers_the_emptier_domain() {
    let mut c = cache_of(vec![
        node("a", "100", json!({"zone": "a"})),
        node("b", "100", json!({"zone": "b"})),
    ]);
    for i in 0..3 {
        c.assume(
            pod_labeled(&format!("old{i}"), json!({"app": "web"}), json!({})),
            "a",
        );
    }
    let p = pod_labeled(
        "new",
        json!({"app": "web"}),
        spread(1, "zone", "ScheduleAnyway"),
    );
    for _ in 0..5 {
        assert_eq!(schedule(&mut c, &p), Ok("b".into()));
    }
}

#[test]
fn sampling_follows_upstreams_adaptive_percentage() {
    let p = Profile::default();
    assert_eq!(p.feasible_nodes_to_find(50), 50);
    assert_eq!(p.feasible_nodes_to_find(100), 100);
    assert_eq!(p.feasible_nodes_to_find(1000), 420);
    assert_eq!(p.feasible_nodes_to_find(5000), 500);
    assert_eq!(p.feasible_nodes_to_find(20_000), 1000);
    let fixed = Profile {
        percentage_of_nodes_to_score: Some(100),
        ..Profile::default()
    };
    assert_eq!(fixed.feasible_nodes_to_find(5000), 5000);
}

#[test]
fn sampling_rotates_the_start_so_all_nodes_get_used() {
    let nodes: Vec<Value> = (0..1000)
        .map(|i| node(&format!("n{i:04}"), "32", json!({})))
        .collect();
    let mut c = cache_of(nodes);
    for i in 0..2000 {
        place(&mut c, pod(&format!("p{i}"), cpu("100m")));
    }
    let used = c.nodes().filter(|n| !n.pods.is_empty()).count();
    assert!(used > 900, "only {used} of 1000 nodes used");
}

/// A pod of ReplicaSet `rs` (labels app=web), with `extra` metadata.
fn replica(name: &str, rs: &str, extra: Value, spec: Value) -> Arc<PodInfo> {
    let mut meta = json!({
        "name": name, "namespace": "default", "labels": {"app": "web"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                             "uid": "u", "controller": true}]
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        meta[k] = v.clone();
    }
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c"}]);
    }
    let p: Pod = serde_json::from_value(json!({"metadata": meta, "spec": spec})).expect("pod");
    PodInfo::new(&p).expect("valid pod")
}

/// A cache whose workloads know ReplicaSet `web` (selector app=web).
fn with_replica_set(nodes: Vec<Value>) -> Cache {
    let mut c = cache_of(nodes);
    c.workloads.set_replica_set(
        &serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {}}
        }))
        .expect("replica set"),
    );
    c
}

/// The spreading plugin's normalized scores of every node, or `None`
/// when it has nothing to say.
fn spread_scores(c: &Cache, p: &PodInfo) -> Option<Vec<(String, i64)>> {
    let nodes: Vec<&NodeInfo> = c.nodes().collect();
    let mut out = vec![0; nodes.len()];
    PodTopologySpread
        .score(p, &nodes, c, &mut out)
        .then(|| nodes.iter().map(|n| n.name.clone()).zip(out).collect())
}

fn scores(v: &[(&str, i64)]) -> Option<Vec<(String, i64)>> {
    Some(v.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect())
}

#[test]
fn system_default_spreading_scores_as_upstream() {
    let mut c = with_replica_set(vec![
        node("a", "100", json!({})),
        node("b", "100", json!({})),
        node("c", "100", json!({})),
    ]);
    for i in 0..5 {
        let n = if i == 0 { "b" } else { "c" };
        c.assume(replica(&format!("old{i}"), "web", json!({}), json!({})), n);
    }
    // Another namespace, or not selected: not counted.
    c.assume(pod_labeled("plain", json!({"app": "db"}), json!({})), "a");
    // hostname, maxSkew 3, three nodes: count * ln(5) + 2 = 2, 3.6, 8.4,
    // rounded 2, 4, 8; normalized 100 * (8 + 2 - s) / 8.
    let p = replica("new", "web", json!({}), json!({}));
    assert_eq!(
        spread_scores(&c, &p),
        scores(&[("a", 100), ("b", 75), ("c", 25)])
    );
    // Terminating pods no longer count: c has 3 of its 4, 3 * ln(5) + 2
    // rounds to 7; normalized 100 * (7 + 2 - s) / 7.
    c.assume(
        replica(
            "old4",
            "web",
            json!({"deletionTimestamp": "2026-01-01T00:00:00Z"}),
            json!({}),
        ),
        "c",
    );
    assert_eq!(
        spread_scores(&c, &p),
        scores(&[("a", 100), ("b", 71), ("c", 28)])
    );
}

#[test]
fn system_defaults_need_a_selector() {
    let mut c = with_replica_set(vec![
        node("a", "100", json!({})),
        node("b", "100", json!({})),
    ]);
    c.assume(replica("old", "web", json!({}), json!({})), "a");
    // No Service, no known controller: no default spreading.
    let orphan = pod_labeled("orphan", json!({"app": "web"}), json!({}));
    assert_eq!(spread_scores(&c, &orphan), None);
    let unknown = replica("unknown", "gone", json!({}), json!({}));
    assert_eq!(spread_scores(&c, &unknown), None);
    // A Service that selects it is enough. Two nodes: ln(4) per pod, + 2:
    // 3 and 2; normalized 100 * (3 + 2 - s) / 3.
    c.workloads.set_service(
        &serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}}
        }))
        .expect("service"),
    );
    assert_eq!(spread_scores(&c, &orphan), scores(&[("a", 66), ("b", 100)]));
}

#[test]
fn system_defaults_score_nodes_without_a_zone_on_hostname_alone() {
    let zone = |n: &str| node(n, "100", json!({"topology.kubernetes.io/zone": "z1"}));
    let mut c = with_replica_set(vec![zone("a"), zone("b"), node("c", "100", json!({}))]);
    for i in 0..2 {
        c.assume(
            replica(&format!("old{i}"), "web", json!({}), json!({})),
            "a",
        );
    }
    // hostname: ln(5) per pod, + 2; zone: domains {z1, none} so ln(4) per
    // pod, + 4, only on nodes with a zone. a: 5.2 + 6.8 = 12, b: 2 + 6.8
    // = 9, c: 2 (no zone term). Normalized 100 * (12 + 2 - s) / 12.
    let p = replica("new", "web", json!({}), json!({}));
    assert_eq!(
        spread_scores(&c, &p),
        scores(&[("a", 16), ("b", 41), ("c", 100)])
    );
    // The pod's own constraint needs its key on every scored node: c
    // scores 0, and a and b tie (2 * ln(3) rounds to 2 for both zones'
    // single domain).
    let own = replica(
        "own",
        "web",
        json!({}),
        spread(1, "topology.kubernetes.io/zone", "ScheduleAnyway"),
    );
    assert_eq!(
        spread_scores(&c, &own),
        scores(&[("a", 100), ("b", 100), ("c", 0)])
    );
}

#[test]
fn own_constraints_replace_the_system_defaults() {
    let mut c = with_replica_set(vec![
        node("a", "100", json!({})),
        node("b", "100", json!({})),
    ]);
    for i in 0..3 {
        c.assume(
            replica(&format!("old{i}"), "web", json!({}), json!({})),
            "a",
        );
    }
    // Only a DoNotSchedule constraint of its own: nothing to score, even
    // though its ReplicaSet would give it defaults.
    let hard = replica(
        "hard",
        "web",
        json!({}),
        json!({"topologySpreadConstraints": [{
            "maxSkew": 5, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}
        }]}),
    );
    assert_eq!(spread_scores(&c, &hard), None);
    // A soft constraint of its own counts by its own selector: no app=db
    // pods anywhere, so no preference.
    let soft = replica(
        "soft",
        "web",
        json!({}),
        json!({"topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app": "db"}}
        }]}),
    );
    assert_eq!(spread_scores(&c, &soft), scores(&[("a", 100), ("b", 100)]));
}

#[test]
fn replicas_spread_evenly_over_equal_nodes() {
    let nodes: Vec<Value> = (0..50)
        .map(|i| node(&format!("n{i:02}"), "32", json!({})))
        .collect();
    let mut c = with_replica_set(nodes);
    for i in 0..200 {
        place(
            &mut c,
            replica(&format!("web-{i}"), "web", json!({}), json!({})),
        );
    }
    let most = c.nodes().map(|n| n.pods.len()).max().unwrap_or(0);
    assert_eq!(most, 4, "200 replicas on 50 nodes");
}

// Preemption (upstream's DefaultPreemption PostFilter).

fn prio_pod(name: &str, priority: i32, cpu: &str, started: Option<&str>) -> Arc<PodInfo> {
    let mut p = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"priority": priority,
                 "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}
    });
    if let Some(t) = started {
        p["status"] = json!({"startTime": t});
    }
    PodInfo::new(&serde_json::from_value(p).expect("pod")).expect("valid pod")
}

/// Schedule; on failure preempt, as the loop does, and give the message.
fn schedule_or_preempt(c: &mut Cache, p: &Arc<PodInfo>) -> (Result<String, String>, Preemption) {
    let profile = Profile::default();
    match profile.schedule(p, c) {
        Ok(n) => (Ok(n), Preemption::default()),
        Err(mut fit) => {
            let pre = profile.preempt(p, c);
            fit.post_filter = pre.message.clone();
            (Err(fit.to_string()), pre)
        }
    }
}

fn names(pods: &[Arc<PodInfo>]) -> Vec<&str> {
    pods.iter().map(|p| p.name.as_str()).collect()
}

#[test]
fn preemption_takes_the_fewest_lower_priority_victims_and_leaves_the_cache_alone() {
    let mut c = cache_of(vec![node("a", "4", json!({}))]);
    c.assume(prio_pod("low1", 1, "1", None), "a");
    c.assume(prio_pod("low2", 2, "1", None), "a");
    c.assume(prio_pod("high", 100, "2", None), "a");
    let before = c.node("a").expect("a").requested;
    let p = prio_pod("p", 10, "1", None);
    let (r, pre) = schedule_or_preempt(&mut c, &p);
    assert_eq!(
        r,
        Err("0/1 nodes are available: 1 Insufficient cpu.".into())
    );
    assert_eq!(pre.node.as_deref(), Some("a"));
    // low2 (the more important) is reprieved; "high" is never a victim.
    assert_eq!(names(&pre.victims), ["low1"]);
    assert_eq!(pre.message, None);
    let n = c.node("a").expect("a");
    assert_eq!(n.requested, before);
    assert_eq!(n.pods.len(), 3);
    // Equal priority is not lower: nothing to take.
    let same = prio_pod("same", 2, "3", None);
    let (r, pre) = schedule_or_preempt(&mut c, &same);
    assert_eq!(
        r,
        Err(
            "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: \
             1 Insufficient cpu."
                .into()
        )
    );
    assert!(pre.node.is_none() && pre.victims.is_empty());
}

#[test]
fn preemption_picks_the_node_as_upstream() {
    // Lowest highest-priority victim.
    let mut c = cache_of(vec![node("a", "2", json!({})), node("b", "2", json!({}))]);
    c.assume(prio_pod("a1", 5, "2", None), "a");
    c.assume(prio_pod("b1", 3, "2", None), "b");
    let (_, pre) = schedule_or_preempt(&mut c, &prio_pod("p", 10, "2", None));
    assert_eq!(
        (pre.node.as_deref(), names(&pre.victims)),
        (Some("b"), vec!["b1"])
    );
    // Same highest priority: the smaller sum (here, fewer victims) wins.
    let mut c = cache_of(vec![node("a", "2", json!({})), node("b", "2", json!({}))]);
    c.assume(prio_pod("a1", 3, "1", None), "a");
    c.assume(prio_pod("a2", 1, "1", None), "a");
    c.assume(prio_pod("b1", 3, "2", None), "b");
    let (_, pre) = schedule_or_preempt(&mut c, &prio_pod("p", 10, "2", None));
    assert_eq!(
        (pre.node.as_deref(), names(&pre.victims)),
        (Some("b"), vec!["b1"])
    );
    // All else equal: the latest-started highest-priority victim.
    let mut c = cache_of(vec![node("a", "2", json!({})), node("b", "2", json!({}))]);
    c.assume(prio_pod("old", 3, "2", Some("2020-01-01T00:00:00Z")), "a");
    c.assume(prio_pod("new", 3, "2", Some("2024-01-01T00:00:00Z")), "b");
    let (_, pre) = schedule_or_preempt(&mut c, &prio_pod("p", 10, "2", None));
    assert_eq!(
        (pre.node.as_deref(), names(&pre.victims)),
        (Some("b"), vec!["new"])
    );
    // Reprieve goes by priority, then the longest-running first.
    let mut c = cache_of(vec![node("a", "2", json!({}))]);
    c.assume(prio_pod("young", 3, "1", Some("2024-01-01T00:00:00Z")), "a");
    c.assume(prio_pod("aged", 3, "1", Some("2020-01-01T00:00:00Z")), "a");
    let (_, pre) = schedule_or_preempt(&mut c, &prio_pod("p", 10, "1", None));
    assert_eq!(names(&pre.victims), ["young"]);
}

#[test]
fn preemption_policy_never_and_nothing_to_take_read_like_upstream() {
    let mut c = cache_of(vec![
        node("a", "1", json!({})),
        node("b", "1", json!({})),
        node("c", "1", json!({})),
    ]);
    for n in ["a", "b", "c"] {
        c.assume(prio_pod(&format!("{n}1"), 10, "1", None), n);
    }
    let (r, _) = schedule_or_preempt(&mut c, &prio_pod("p", 10, "1", None));
    assert_eq!(
        r,
        Err(
            "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: \
             3 No preemption victims found for incoming pod."
                .into()
        )
    );
    let never: Pod = serde_json::from_value(json!({
        "metadata": {"name": "never", "namespace": "default"},
        "spec": {"priority": 100, "preemptionPolicy": "Never",
                 "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}
    }))
    .expect("pod");
    let never = PodInfo::new(&never).expect("valid");
    let (r, pre) = schedule_or_preempt(&mut c, &never);
    assert_eq!(
        r,
        Err(
            "0/3 nodes are available: 3 Insufficient cpu. preemption: not eligible due to \
             preemptionPolicy=Never."
                .into()
        )
    );
    assert!(pre.node.is_none());
}

#[test]
fn preemption_skips_nodes_it_cannot_help() {
    let mut tainted = node("t", "1", json!({}));
    tainted["spec"]["taints"] = json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]);
    let mut c = cache_of(vec![tainted, node("full", "1", json!({}))]);
    // Lower-priority pods on the tainted node do not help...
    c.assume(prio_pod("low", 1, "1", None), "t");
    c.assume(prio_pod("peer", 10, "1", None), "full");
    let (r, pre) = schedule_or_preempt(&mut c, &prio_pod("p", 10, "1", None));
    assert_eq!(
        r,
        Err(
            "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint \
             {k: v}. preemption: 0/2 nodes are available: 1 No preemption victims found for \
             incoming pod, 1 Preemption is not helpful for scheduling."
                .into()
        )
    );
    assert!(pre.node.is_none());
    // ...nor on a node the pod's selector rules out.
    let mut c = cache_of(vec![node("x", "1", json!({"disk": "hdd"}))]);
    c.assume(prio_pod("low", 1, "1", None), "x");
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"priority": 10, "nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c"}]}
    }))
    .expect("pod");
    let (r, _) = schedule_or_preempt(&mut c, &PodInfo::new(&p).expect("valid"));
    assert_eq!(
        r,
        Err(
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. \
             preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
                .into()
        )
    );
}

#[test]
fn a_nominated_pod_holds_its_room_and_goes_there() {
    let mut c = cache_of(vec![node("a", "2", json!({})), node("b", "2", json!({}))]);
    c.assume(prio_pod("a-low", 1, "2", None), "a");
    c.assume(prio_pod("b-high", 100, "2", None), "b");
    let p = prio_pod("p", 10, "2", None);
    let (_, pre) = schedule_or_preempt(&mut c, &p);
    assert_eq!(pre.node.as_deref(), Some("a"));
    assert_eq!(c.nominated_node("default/p"), Some("a"));
    // The victim goes; a pod of lower priority may not take the room...
    c.remove_pod("default/a-low");
    assert_eq!(
        schedule(&mut c, &prio_pod("sneak", 5, "1", None)),
        Err("0/2 nodes are available: 2 Insufficient cpu.".into())
    );
    // ...one of higher priority may, and the preemptor goes to its node.
    assert_eq!(
        schedule(&mut c, &prio_pod("vip", 50, "1", None)),
        Ok("a".into())
    );
    assert_eq!(schedule(&mut c, &p), Ok("a".into()));
    c.assume(p, "a");
    assert!(!c.has_nominated());
}
