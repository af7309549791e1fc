//! Services through the eBPF dataplane, as a user sees them: a ClusterIP
//! balanced over backends on both nodes (TCP and UDP), NodePort from the
//! fabric, `externalTrafficPolicy: Local`, session affinity, a service with
//! no backend refusing connections, a TCP connection that outlives an agent
//! restart, no iptables or nftables rule anywhere, and the introspection
//! a user debugs with: `kestrel bpf services|conntrack|routes` and the
//! agent's `/metrics`.
//!
//! Clients inside pods are `kestrel-echo probe`, which prints one line per
//! (backend, client address seen, peer address seen) with a count.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpStream};

use super::*;

const SVC: &str = "svc-echo";
/// Node i's address on the fabric (`kestrel up`).
fn node_ip(i: u8) -> String {
    format!("10.41.0.{}", 10 + i)
}
/// The host namespace's address on the fabric: "outside the cluster".
const OUTSIDE_IP: &str = "10.41.0.1";

/// One line of `kestrel-echo probe` output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    count: u64,
    /// `pod=…`, or `error=…`.
    what: String,
    client: String,
    peer: String,
}

fn parse_probe(out: &str) -> Vec<Seen> {
    out.lines()
        .filter_map(|l| {
            let (count, rest) = l.split_once(' ')?;
            let field = |name: &str| {
                rest.split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .unwrap_or_default()
                    .to_owned()
            };
            Some(Seen {
                count: count.parse().ok()?,
                what: rest.split_whitespace().next()?.to_owned(),
                client: field("client="),
                peer: field("peer="),
            })
        })
        .collect()
}

/// Runs the probe in `pod`.
#[track_caller]
fn probe(c: &Cluster, pod: &str, proto: &str, target: &str, count: u32) -> Vec<Seen> {
    let out = c.kubectl(&[
        "exec",
        pod,
        "--",
        "/kestrel-echo",
        "probe",
        proto,
        target,
        &count.to_string(),
    ]);
    parse_probe(&out)
}

fn by_backend(seen: &[Seen]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for s in seen {
        *out.entry(s.what.clone()).or_default() += s.count;
    }
    out
}

fn cluster_ip(c: &Cluster) -> String {
    c.kubectl(&["get", "svc", SVC, "-o", "jsonpath={.spec.clusterIP}"])
}

fn node_port(c: &Cluster, proto: &str) -> u16 {
    c.kubectl(&[
        "get",
        "svc",
        SVC,
        "-o",
        &format!("jsonpath={{.spec.ports[?(@.protocol==\"{proto}\")].nodePort}}"),
    ])
    .trim()
    .parse()
    .expect("a node port")
}

/// `pod=… client=…` from a TCP connection made by the test process itself,
/// which runs in the host namespace: outside every node.
fn from_outside(addr: &str) -> std::io::Result<(String, String)> {
    let addr: SocketAddr = addr.parse().expect("address");
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_default()
            .to_owned()
    };
    let client = field("client=");
    let client_ip = client
        .rsplit_once(':')
        .map_or(client.clone(), |(ip, _)| ip.to_owned());
    Ok((field("pod="), client_ip))
}

/// Pod name → (node, IP) of the service's backends.
fn backends(c: &Cluster) -> BTreeMap<String, (String, String)> {
    let out = c.kubectl(&["get", "pods", "-l", "app=svc-echo", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("pods json");
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                str_at(p, "/metadata/name").to_owned(),
                (
                    str_at(p, "/spec/nodeName").to_owned(),
                    str_at(p, "/status/podIP").to_owned(),
                ),
            )
        })
        .collect()
}

fn wait_ready_backends(c: &Cluster, n: usize) {
    c.wait(
        Duration::from_secs(90),
        "the service's ready endpoints",
        || (ready_endpoints(c, SVC).len() == n).then_some(()),
    );
}

pub fn setup(c: &Cluster) {
    c.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {SVC}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: {SVC}}}}}
  template:
    metadata: {{labels: {{app: {SVC}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {{matchLabels: {{app: {SVC}}}}}
      containers:
      - name: echo
        image: {ECHO}
        env:
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
        readinessProbe: {{httpGet: {{port: 8080, path: /healthz}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {SVC}}}
spec:
  type: NodePort
  selector: {{app: {SVC}}}
  ports:
  - {{name: tcp, port: 9000, protocol: TCP}}
  - {{name: udp, port: 9000, protocol: UDP}}
---
{client}"#,
        client = echo_pod("svc-client", "node-1"),
    ));
    wait_ready_backends(c, 3);
    c.wait(Duration::from_secs(60), "svc-client Ready", || {
        c.pod("svc-client").filter(ready)
    });
    let nodes: std::collections::BTreeSet<String> =
        backends(c).into_values().map(|(n, _)| n).collect();
    assert_eq!(nodes.len(), 2, "backends on both nodes: {nodes:?}");
}

pub fn cluster_ip_spreads_tcp_evenly(c: &Cluster) {
    let vip = cluster_ip(c);
    let client_ip = str_at(&c.pod("svc-client").expect("client"), "/status/podIP").to_owned();
    let seen = probe(c, "svc-client", "tcp", &format!("{vip}:9000"), 3000);
    let counts = by_backend(&seen);
    assert_eq!(
        counts.len(),
        3,
        "three backends answered, no errors: {seen:?}"
    );
    for (backend, n) in &counts {
        assert!(
            (850..=1150).contains(n),
            "{backend} got {n} of 3000 connections, outside ±15% of even: {counts:?}"
        );
    }
    for s in &seen {
        assert_eq!(
            s.client, client_ip,
            "the backend saw the client pod's own IP"
        );
        assert_eq!(
            s.peer,
            format!("{vip}:9000"),
            "getpeername returns the ClusterIP"
        );
    }
}

pub fn cluster_ip_answers_udp(c: &Cluster) {
    let vip = cluster_ip(c);
    let seen = probe(c, "svc-client", "udp", &format!("{vip}:9000"), 300);
    let counts = by_backend(&seen);
    assert!(
        counts.keys().all(|k| k.starts_with("pod=")),
        "every datagram answered: {seen:?}"
    );
    assert!(counts.len() >= 2, "UDP is balanced too: {counts:?}");
    for s in &seen {
        assert_eq!(
            s.peer,
            format!("{vip}:9000"),
            "replies come from the ClusterIP, so a DNS-style client accepts them"
        );
    }
}

pub fn node_port_from_the_fabric(c: &Cluster) {
    let port = node_port(c, "TCP");
    let backends = backends(c);
    // Through node-1, every backend is reachable, including node-2's; a
    // backend on the other node sees node-1's address (SNAT), so its
    // replies come back the same way.
    let mut seen = BTreeMap::new();
    for _ in 0..60 {
        let (pod, client) = from_outside(&format!("{}:{port}", node_ip(1)))
            .unwrap_or_else(|e| panic!("NodePort {port} on node-1: {e}"));
        seen.insert(pod, client);
    }
    let remote: Vec<_> = seen
        .iter()
        .filter(|(pod, _)| backends.get(*pod).is_some_and(|(n, _)| n == "node-2"))
        .collect();
    assert!(
        !remote.is_empty(),
        "a node-2 backend answered through node-1: {seen:?}"
    );
    for (_, client) in remote {
        assert_eq!(client, &node_ip(1), "SNAT to node-1 for a remote backend");
    }
}

pub fn external_traffic_policy_local_keeps_the_client_ip(c: &Cluster) {
    c.kubectl(&[
        "patch",
        "svc",
        SVC,
        "--type=merge",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
    ]);
    let port = node_port(c, "TCP");
    let backends = backends(c);
    c.wait(
        Duration::from_secs(30),
        "only node-2's backends through node-2",
        || {
            let mut pods = std::collections::BTreeSet::new();
            for _ in 0..30 {
                let (pod, client) = from_outside(&format!("{}:{port}", node_ip(2))).ok()?;
                if client != OUTSIDE_IP {
                    return None;
                }
                pods.insert(pod);
            }
            pods.iter()
                .all(|p| backends.get(p).is_some_and(|(n, _)| n == "node-2"))
                .then_some(())
        },
    );
    c.kubectl(&[
        "patch",
        "svc",
        SVC,
        "--type=merge",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Cluster"}}"#,
    ]);
}

pub fn session_affinity_sticks(c: &Cluster) {
    c.kubectl(&[
        "patch",
        "svc",
        SVC,
        "--type=merge",
        "-p",
        r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
    ]);
    let vip = cluster_ip(c);
    c.wait(
        Duration::from_secs(30),
        "one backend for every connection",
        || {
            let counts = by_backend(&probe(c, "svc-client", "tcp", &format!("{vip}:9000"), 100));
            (counts.len() == 1 && counts.keys().all(|k| k.starts_with("pod="))).then_some(())
        },
    );
    c.kubectl(&[
        "patch",
        "svc",
        SVC,
        "--type=merge",
        "-p",
        r#"{"spec":{"sessionAffinity":"None"}}"#,
    ]);
    c.wait(Duration::from_secs(30), "balancing again", || {
        let counts = by_backend(&probe(c, "svc-client", "tcp", &format!("{vip}:9000"), 100));
        (counts.len() > 1).then_some(())
    });
}

pub fn no_backend_refuses_then_recovers(c: &Cluster) {
    let vip = cluster_ip(c);
    c.kubectl(&["scale", "deployment", SVC, "--replicas=0"]);
    wait_ready_backends(c, 0);
    c.wait(Duration::from_secs(30), "connections refused", || {
        let seen = probe(c, "svc-client", "tcp", &format!("{vip}:9000"), 5);
        (by_backend(&seen).keys().collect::<Vec<_>>() == ["error=refused"]).then_some(())
    });
    c.kubectl(&["scale", "deployment", SVC, "--replicas=3"]);
    wait_ready_backends(c, 3);
    c.wait(
        Duration::from_secs(30),
        "the service answering again",
        || {
            let seen = probe(c, "svc-client", "tcp", &format!("{vip}:9000"), 30);
            by_backend(&seen)
                .keys()
                .all(|k| k.starts_with("pod="))
                .then_some(())
        },
    );
}

/// Starts a client on node-1 that holds one TCP connection to the
/// ClusterIP and sends a line a second; the pod fails if the connection
/// ever ends. [`long_lived_connection_survived`] checks it after the agent
/// restart scenario.
pub fn start_long_lived_connection(c: &Cluster) {
    let vip = cluster_ip(c);
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: streamer}}
spec:
  nodeName: node-1
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: nc
    image: {BUSYBOX}
    command:
    - sh
    - -c
    - i=0; while [ $i -lt 3600 ]; do echo ping-$i; i=$((i+1)); sleep 1; done | nc {vip} 9000 | while read l; do echo "got $l"; done; echo CLOSED; exit 1
"#
    ));
    c.wait(Duration::from_secs(60), "the streamer's echoes", || {
        let (_, out, _) = c.kubectl_raw(&["logs", "streamer"], None);
        out.contains("got ping-2").then_some(())
    });
}

fn last_ping(c: &Cluster) -> Option<u64> {
    let (ok, out, err) = c.kubectl_raw(&["logs", "streamer"], None);
    if !ok {
        // Said once per distinct failure, for the log of a test that fails.
        static LAST: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
        let mut last = LAST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last != err {
            eprintln!("kubectl logs streamer: {}", err.trim());
            last.clone_from(&err);
        }
    }
    out.lines()
        .filter_map(|l| l.strip_prefix("got ping-"))
        .filter_map(|n| n.trim().parse().ok())
        .max()
}

pub fn long_lived_connection_survived(c: &Cluster) {
    // The restarted agent serves logs again once its node API is back.
    let at_restart = c.wait(Duration::from_secs(30), "the streamer's logs", || {
        last_ping(c)
    });
    c.wait(
        Duration::from_secs(30),
        "the streamer echoing after the restart",
        || last_ping(c).filter(|n| *n >= at_restart + 3),
    );
    let (_, logs, _) = c.kubectl_raw(&["logs", "streamer"], None);
    assert!(
        !logs.contains("CLOSED"),
        "the connection never ended:\n{logs}"
    );
    let p = c.pod("streamer").expect("streamer");
    assert_eq!(str_at(&p, "/status/phase"), "Running");
}

/// Runs `kestrel bpf ARGS --bpffs <node's bpffs>`; its stdout.
fn kestrel_bpf(c: &Cluster, node: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .arg("bpf")
        .args(args)
        .arg("--bpffs")
        .arg(c.node_dir(node).join("bpf"))
        .output()
        .expect("run kestrel bpf");
    assert!(
        out.status.success(),
        "kestrel bpf {args:?} on {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET `path` from 127.0.0.1:10249 inside `node`'s namespace, where its
/// agent serves `/metrics`; the body.
pub fn agent_http(c: &Cluster, node: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let ns = std::path::Path::new("/run/netns").join(netns_of(c, node));
    let path = path.to_owned();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).expect("open netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut s = TcpStream::connect("127.0.0.1:10249").expect("connect to /metrics");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    })
    .join()
    .expect("metrics thread")
}

/// The value of the sample `name{labels}` (or the sum over all samples of
/// `name` when `labels` is empty) in a Prometheus text body.
pub fn metric(body: &str, name: &str, labels: &str) -> u64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            series.split('{').next() == Some(name) && (labels.is_empty() || series.contains(labels))
        })
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// What a user debugging the dataplane sees: the service table, a tracked
/// NodePort flow, the routes, and the counters on `/metrics`, all agreeing
/// with the traffic the scenarios above sent.
pub fn introspection_shows_the_dataplane(c: &Cluster) {
    let vip = cluster_ip(c);
    let backends = backends(c);
    let services = kestrel_bpf(c, "node-1", &["services"]);
    assert!(services.contains(&format!("{vip}:9000/TCP")), "{services}");
    for (_, ip) in backends.values() {
        assert!(
            services.contains(&format!("{ip}:9000")),
            "{ip} in {services}"
        );
    }

    // A NodePort connection held open is tracked, translated to a backend.
    let port = node_port(c, "TCP");
    let held = TcpStream::connect_timeout(
        &format!("{}:{port}", node_ip(1)).parse().expect("addr"),
        Duration::from_secs(3),
    )
    .expect("NodePort connection");
    let local = held.local_addr().expect("local addr");
    let flows = c.wait(Duration::from_secs(30), "the flow in conntrack", || {
        let out = kestrel_bpf(c, "node-1", &["conntrack"]);
        out.lines()
            .find(|l| l.contains(&format!("{local} -> {}:{port}", node_ip(1))))
            .map(str::to_owned)
    });
    assert!(flows.contains("dnat"), "{flows}");
    assert!(
        flows.contains(" => ")
            && backends
                .values()
                .any(|(_, ip)| flows.contains(&format!("{ip}:9000"))),
        "translated to a backend: {flows}"
    );
    drop(held);

    // Routes: node-1's own backends by redirect, node-2's range by FIB.
    let routes = kestrel_bpf(c, "node-1", &["routes", "--netns", &netns_of(c, "node-1")]);
    for (node, ip) in backends.values() {
        if node == "node-1" {
            assert!(routes.contains(ip.as_str()), "local pod {ip} in {routes}");
        }
    }
    let node2 = c.kubectl(&["get", "node", "node-2", "-o", "jsonpath={.spec.podCIDR}"]);
    assert!(
        routes.contains(&format!("{} dev", node2.trim())),
        "node-2's pod range {node2} in {routes}"
    );

    // Counters: the 3,000 ClusterIP connections were balanced at connect()
    // on node-1, each counted against its backend.
    let body = agent_http(c, "node-1", "/metrics");
    let conns = metric(&body, "kestrel_service_backend_connections_total", "");
    assert!(conns >= 3000, "backend connections {conns}:\n{body}");
    assert!(
        body.contains("kestrel_dataplane_drops_total{reason=\"no_backend\"}"),
        "{body}"
    );
    assert!(metric(&body, "kestrel_local_endpoints", "") >= 1, "{body}");
    assert!(
        metric(
            &body,
            "kestrel_service_backends",
            &format!("frontend=\"{vip}:9000/TCP\"")
        ) == 3,
        "{body}"
    );
    assert_eq!(agent_http(c, "node-2", "/healthz"), "ok\n");
}

/// No Kestrel rule in iptables or nftables on any node: the forwarding path
/// is eBPF only, and everything above worked without them.
pub fn no_iptables_or_nftables_rules(c: &Cluster) {
    for node in ["node-1", "node-2"] {
        let ns = netns_of(c, node);
        for (tool, args) in [("iptables-save", vec![]), ("nft", vec!["list", "ruleset"])] {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, tool])
                .args(&args)
                .output()
                .unwrap_or_else(|e| panic!("{tool}: {e}"));
            let text = String::from_utf8_lossy(&out.stdout);
            // A fresh namespace has no rule at all; any NAT, jump or
            // address match would be something Kestrel put there.
            let rules: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.starts_with("-A ")
                        || ["dnat", "snat", "masquerade", "jump", "ip daddr", "ip saddr"]
                            .iter()
                            .any(|w| l.contains(w))
                })
                .collect();
            assert!(
                rules.is_empty(),
                "{tool} on {node} holds rules: {rules:?}\n{text}"
            );
        }
    }
}

#[test]
fn probe_output_parses() {
    let seen =
        parse_probe("1012 pod=web-1 client=10.42.1.4 peer=10.43.0.20:9000\n3 error=refused\n");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].count, 1012);
    assert_eq!(seen[0].what, "pod=web-1");
    assert_eq!(seen[0].client, "10.42.1.4");
    assert_eq!(seen[0].peer, "10.43.0.20:9000");
    assert_eq!(seen[1].what, "error=refused");
    assert_eq!(by_backend(&seen).len(), 2);
}
