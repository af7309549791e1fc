//! NetworkPolicy enforced by the eBPF dataplane, in the style of upstream's
//! network-policy truth tables: namespaces x, y and z with pods a, b and c
//! in each (spread over both nodes), every pod serving TCP and UDP on ports
//! 80 and 81 (one container per port, ports named `serve-80-tcp`, ...).
//! Each scenario applies policies, then probes the full 9 × 9 matrix from
//! every pod to every pod and compares it with the matrix upstream's
//! semantics give, retrying until it matches or a deadline passes (a
//! policy takes effect asynchronously, as in any implementation).
//!
//! A pod can always reach itself (its own address never leaves the pod),
//! as upstream's tests allow for loopback.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::*;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// How long one probe waits for an answer.
const PROBE_MS: &str = "1500";
/// How long a policy change may take to show in the matrix.
const SETTLE: Duration = Duration::from_secs(30);

/// One of the nine pods.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    ns: &'static str,
    pod: &'static str,
    ip: String,
}

impl Peer {
    fn name(&self) -> String {
        format!("{}/{}", self.ns, self.pod)
    }
}

/// The nine pods, in matrix order.
pub struct Model {
    peers: Vec<Peer>,
}

/// Who may reach whom: `[from][to]`.
type Matrix = Vec<Vec<bool>>;

fn pod_yaml(ns: &str, pod: &str, node: &str) -> String {
    let container = |port: u16| {
        format!(
            r#"  - name: cont-{port}
    image: {ECHO}
    env:
    - {{name: ECHO_PORT, value: "{port}"}}
    - {{name: HTTP_PORT, value: "{http}"}}
    - {{name: POD_NAME, value: "{ns}/{pod}"}}
    ports:
    - {{name: serve-{port}-tcp, containerPort: {port}, protocol: TCP}}
    - {{name: serve-{port}-udp, containerPort: {port}, protocol: UDP}}
    readinessProbe: {{httpGet: {{port: {http}, path: /healthz}}, periodSeconds: 1}}
"#,
            http = 8000 + port
        )
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: "{ns}", labels: {{pod: {pod}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
{}{}---
"#,
        container(80),
        container(81)
    )
}

/// Creates the namespaces and pods and waits until all nine are Ready.
pub fn setup(c: &Cluster) -> Model {
    let mut yaml = String::new();
    for ns in NAMESPACES {
        let _ = write!(
            yaml,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: \"{ns}\", labels: {{ns: \"{ns}\"}}}}\n---\n"
        );
    }
    let mut i = 0;
    for ns in NAMESPACES {
        for pod in PODS {
            yaml.push_str(&pod_yaml(ns, pod, &format!("node-{}", i % 2 + 1)));
            i += 1;
        }
    }
    c.apply(&yaml);
    let mut peers = Vec::new();
    for ns in NAMESPACES {
        for pod in PODS {
            let ip = c.wait(
                Duration::from_secs(120),
                &format!("{ns}/{pod} Ready"),
                || {
                    let (ok, out, _) =
                        c.kubectl_raw(&["get", "pod", "-n", ns, pod, "-o", "json"], None);
                    let v: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
                    ready(&v).then(|| str_at(&v, "/status/podIP").to_owned())
                },
            );
            peers.push(Peer { ns, pod, ip });
        }
    }
    Model { peers }
}

impl Model {
    fn index(&self, ns: &str, pod: &str) -> usize {
        self.peers
            .iter()
            .position(|p| p.ns == ns && p.pod == pod)
            .expect("a model pod")
    }

    /// The matrix `allowed` gives, with loopback always allowed.
    fn expect(&self, allowed: impl Fn(&Peer, &Peer) -> bool) -> Matrix {
        self.peers
            .iter()
            .map(|f| self.peers.iter().map(|t| f == t || allowed(f, t)).collect())
            .collect()
    }

    /// Probes every pair once, on `port`/`proto`; each source pod asks all
    /// nine targets in parallel, and the nine sources run side by side.
    fn probe(&self, c: &Cluster, port: u16, proto: &str) -> Matrix {
        let targets: Vec<String> = self
            .peers
            .iter()
            .map(|p| format!("{}:{port}", p.ip))
            .collect();
        std::thread::scope(|s| {
            let rows: Vec<_> = self
                .peers
                .iter()
                .map(|from| {
                    let targets = &targets;
                    s.spawn(move || {
                        let container = format!("cont-{port}");
                        let mut args = vec![
                            "exec",
                            "-n",
                            from.ns,
                            from.pod,
                            "-c",
                            &container,
                            "--",
                            "/kestrel-echo",
                            "reach",
                            proto,
                            PROBE_MS,
                        ];
                        args.extend(targets.iter().map(String::as_str));
                        let (ok, out, err) = c.kubectl_raw(&args, None);
                        assert!(ok, "probing from {}: {err}", from.name());
                        let answers: BTreeMap<&str, bool> = out
                            .lines()
                            .filter_map(|l| l.split_once(' '))
                            .map(|(t, r)| (t, r == "ok"))
                            .collect();
                        targets
                            .iter()
                            .map(|t| answers.get(t.as_str()).copied().unwrap_or(false))
                            .collect::<Vec<bool>>()
                    })
                })
                .collect();
            rows.into_iter()
                .map(|h| h.join().expect("probe thread"))
                .collect()
        })
    }

    fn table(&self, m: &Matrix, want: &Matrix) -> String {
        let mut out = String::from("from\\to ");
        for p in &self.peers {
            let _ = write!(out, "{:>4}", p.name());
        }
        out.push('\n');
        for (i, f) in self.peers.iter().enumerate() {
            let _ = write!(out, "{:>7} ", f.name());
            for j in 0..self.peers.len() {
                let cell = match (m[i][j], want[i][j]) {
                    (true, true) => ".",
                    (false, false) => "X",
                    (true, false) => "!.",
                    (false, true) => "!X",
                };
                let _ = write!(out, "{cell:>4}");
            }
            out.push('\n');
        }
        out.push_str(
            "(. reaches, X is denied, ! marks a cell that differs from upstream's semantics)\n",
        );
        out
    }

    /// Probes until the matrix on `port`/`proto` equals `want`, or fails
    /// with the last matrix against the wanted one.
    #[track_caller]
    fn check(&self, c: &Cluster, scenario: &str, port: u16, proto: &str, want: &Matrix) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let got = self.probe(c, port, proto);
            if &got == want {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{scenario}: {proto}/{port} reachability differs after {SETTLE:?}:\n{}\nnode-1 agent:\n{}",
                    self.table(&got, want),
                    c.log("nodes/node-1/agent.log")
                );
            }
        }
    }
}

fn apply_policies(c: &Cluster, yaml: &str) {
    c.apply(yaml);
}

fn clear_policies(c: &Cluster) {
    for ns in NAMESPACES {
        c.kubectl(&["delete", "networkpolicy", "--all", "-n", ns, "--wait=true"]);
    }
}

/// Whether `from` reaches `to` on (port, protocol) under a scenario.
type Allowed = Box<dyn Fn(&Peer, &Peer, u16, &str) -> bool>;

/// One scenario: policies, then the expected matrices on the given
/// (port, protocol) pairs, then the policies removed again.
struct Scenario {
    name: &'static str,
    policies: String,
    checks: Vec<(u16, &'static str)>,
    allowed: Allowed,
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: \"{ns}\"}}\nspec:\n{spec}\n---\n"
    )
}

fn scenarios(m: &Model) -> Vec<Scenario> {
    let yb_ip = m.peers[m.index("y", "b")].ip.clone();
    let zc_ip = m.peers[m.index("z", "c")].ip.clone();
    let is = |p: &Peer, ns: &str, pod: &str| p.ns == ns && p.pod == pod;
    vec![
        Scenario {
            name: "default deny ingress in x",
            policies: policy(
                "x",
                "deny-in",
                "  podSelector: {}\n  policyTypes: [Ingress]",
            ),
            checks: vec![(80, "tcp"), (81, "udp")],
            allowed: Box::new(|_, t, _, _| t.ns != "x"),
        },
        Scenario {
            name: "default deny egress in x",
            policies: policy(
                "x",
                "deny-out",
                "  podSelector: {}\n  policyTypes: [Egress]",
            ),
            checks: vec![(80, "tcp"), (80, "udp")],
            allowed: Box::new(|f, _, _, _| f.ns != "x"),
        },
        Scenario {
            name: "allow x/a from pods b of its own namespace",
            policies: policy(
                "x",
                "a-from-b",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}",
            ),
            checks: vec![(80, "tcp")],
            allowed: Box::new(move |f, t, _, _| !is(t, "x", "a") || is(f, "x", "b")),
        },
        Scenario {
            name: "allow x/a from namespace y by label",
            policies: policy(
                "x",
                "a-from-y",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: \"y\"}}",
            ),
            checks: vec![(80, "tcp"), (81, "udp")],
            allowed: Box::new(move |f, t, _, _| !is(t, "x", "a") || f.ns == "y"),
        },
        Scenario {
            name: "allow x/a from namespace z by kubernetes.io/metadata.name",
            policies: policy(
                "x",
                "a-from-z",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"z\"}}",
            ),
            checks: vec![(80, "tcp")],
            allowed: Box::new(move |f, t, _, _| !is(t, "x", "a") || f.ns == "z"),
        },
        Scenario {
            name: "both selectors: pods c in namespaces other than x",
            policies: policy(
                "x",
                "a-from-c-elsewhere",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [\"x\"]}]}\n      podSelector: {matchLabels: {pod: c}}",
            ),
            checks: vec![(80, "tcp")],
            allowed: Box::new(move |f, t, _, _| !is(t, "x", "a") || (f.ns != "x" && f.pod == "c")),
        },
        Scenario {
            name: "ipBlock with except",
            policies: policy(
                "x",
                "a-from-cidr",
                &format!(
                    "  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.42.0.0/16, except: [{yb_ip}/32]}}"
                ),
            ),
            checks: vec![(80, "tcp")],
            allowed: Box::new(move |f, t, _, _| !is(t, "x", "a") || !is(f, "y", "b")),
        },
        Scenario {
            name: "named port: x/a open on serve-81-tcp only",
            policies: policy(
                "x",
                "a-named-81",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: serve-81-tcp}]",
            ),
            checks: vec![(80, "tcp"), (81, "tcp"), (81, "udp")],
            allowed: Box::new(move |_, t, port, proto| {
                !is(t, "x", "a") || (port == 81 && proto == "tcp")
            }),
        },
        Scenario {
            name: "endPort range 81-90 over TCP and UDP",
            policies: policy(
                "x",
                "a-range",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports:\n    - {protocol: TCP, port: 81, endPort: 90}\n    - {protocol: UDP, port: 81, endPort: 90}",
            ),
            checks: vec![(80, "tcp"), (81, "tcp"), (81, "udp")],
            allowed: Box::new(move |_, t, port, _| !is(t, "x", "a") || port == 81),
        },
        Scenario {
            name: "stacked policies are a union",
            policies: policy(
                "x",
                "a-from-b",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}",
            ) + &policy(
                "x",
                "a-from-z",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: \"z\"}}",
            ),
            checks: vec![(80, "tcp")],
            allowed: Box::new(move |f, t, _, _| !is(t, "x", "a") || is(f, "x", "b") || f.ns == "z"),
        },
        Scenario {
            name: "allow-all ingress rule beside a default deny",
            policies: policy(
                "x",
                "deny-in",
                "  podSelector: {}\n  policyTypes: [Ingress]",
            ) + &policy("x", "allow-all", "  podSelector: {}\n  ingress:\n  - {}"),
            checks: vec![(80, "tcp")],
            allowed: Box::new(|_, _, _, _| true),
        },
        Scenario {
            name: "egress from x/a to namespace y pods b only",
            policies: policy(
                "x",
                "a-to-yb",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: \"y\"}}\n      podSelector: {matchLabels: {pod: b}}",
            ),
            checks: vec![(80, "tcp"), (81, "udp")],
            allowed: Box::new(move |f, t, _, _| !is(f, "x", "a") || is(t, "y", "b")),
        },
        Scenario {
            name: "egress from x to a single CIDR on port 81",
            policies: policy(
                "x",
                "to-zc",
                &format!(
                    "  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {{cidr: {zc_ip}/32}}\n    ports: [{{protocol: TCP, port: 81}}]"
                ),
            ),
            checks: vec![(80, "tcp"), (81, "tcp")],
            allowed: Box::new(move |f, t, port, _| f.ns != "x" || (is(t, "z", "c") && port == 81)),
        },
        Scenario {
            name: "ingress and egress together: x/b reaches y/a only",
            policies: policy(
                "x",
                "b-out",
                "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: \"y\"}}\n      podSelector: {matchLabels: {pod: a}}",
            ) + &policy(
                "y",
                "a-in",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: \"x\"}}",
            ),
            checks: vec![(80, "tcp")],
            allowed: Box::new(move |f, t, _, _| {
                (!is(f, "x", "b") || is(t, "y", "a")) && (!is(t, "y", "a") || f.ns == "x")
            }),
        },
    ]
}

/// Every scenario, then the scenarios that change things while traffic
/// flows.
pub fn truth_tables(c: &Cluster, m: &Model) {
    let open = m.expect(|_, _| true);
    m.check(c, "no policy", 80, "tcp", &open);
    for s in scenarios(m) {
        apply_policies(c, &s.policies);
        for (port, proto) in &s.checks {
            let want = m.expect(|f, t| (s.allowed)(f, t, *port, proto));
            m.check(c, s.name, *port, proto, &want);
        }
        clear_policies(c);
        m.check(c, &format!("{} removed", s.name), 80, "tcp", &open);
    }
    // Health probes from the node are never blocked: under a default deny
    // of everything, every pod stays Ready.
    apply_policies(
        c,
        &policy(
            "x",
            "deny-all",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
        ),
    );
    let host_verdicts = || {
        ["node-1", "node-2"]
            .iter()
            .map(|n| {
                let body = services::agent_http(c, n, "/metrics");
                services::metric(&body, "kestrel_policy_verdicts_total", "verdict=\"host\"")
            })
            .sum::<u64>()
    };
    let before = host_verdicts();
    let denied = m.expect(|f, t| f.ns != "x" && t.ns != "x");
    m.check(c, "deny all in x", 80, "tcp", &denied);
    // The probes (every second, two per pod) keep passing as HOST verdicts.
    c.wait(SETTLE, "probes through the isolated pods", || {
        (host_verdicts() >= before + 12).then_some(())
    });
    for pod in PODS {
        let v: Value =
            serde_json::from_str(&c.kubectl(&["get", "pod", "-n", "x", pod, "-o", "json"]))
                .expect("pod json");
        assert!(
            ready(&v),
            "x/{pod} stays Ready under deny-all: kubelet probes pass"
        );
    }
    clear_policies(c);
}

/// The highest `got ping-N` in the streamer's log, and whether it ended.
fn streamed(c: &Cluster) -> (Option<u64>, bool) {
    let (_, out, _) = c.kubectl_raw(&["logs", "-n", "y", "streamer"], None);
    let last = out
        .lines()
        .filter_map(|l| l.strip_prefix("got ping-"))
        .filter_map(|n| n.trim().parse().ok())
        .max();
    (last, out.contains("CLOSED"))
}

/// A policy updated, and a pod relabelled into and out of a policy, while
/// a long-lived connection that stays allowed keeps flowing.
pub fn updates_while_traffic_flows(c: &Cluster, m: &Model) {
    // y/streamer holds a TCP connection to x/a:80 through every change
    // below, each of which keeps namespace y allowed.
    let xa = m.peers[m.index("x", "a")].ip.clone();
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: streamer, namespace: "y", labels: {{pod: streamer}}}}
spec:
  nodeName: node-2
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: nc
    image: {BUSYBOX}
    command:
    - sh
    - -c
    - i=0; while [ $i -lt 3600 ]; do echo ping-$i; i=$((i+1)); sleep 1; done | nc {xa} 80 | while read l; do echo "got $l"; done; echo CLOSED; exit 1
"#
    ));
    c.wait(Duration::from_secs(60), "the streamer's echoes", || {
        (streamed(c).0? >= 2).then_some(())
    });

    let is = |p: &Peer, ns: &str, pod: &str| p.ns == ns && p.pod == pod;
    apply_policies(
        c,
        &policy(
            "x",
            "a-in",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: \"y\"}}",
        ),
    );
    let want = m.expect(|f, t| !is(t, "x", "a") || f.ns == "y");
    m.check(c, "x/a open to namespace y", 80, "tcp", &want);
    // Widen the policy in place: y and z.
    apply_policies(
        c,
        &policy(
            "x",
            "a-in",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [\"y\", \"z\"]}]}",
        ),
    );
    let want = m.expect(|f, t| !is(t, "x", "a") || f.ns == "y" || f.ns == "z");
    m.check(c, "policy widened", 80, "tcp", &want);
    // Relabel x/c into the policy's selector: it becomes isolated too.
    c.kubectl(&["label", "pod", "-n", "x", "c", "pod=a", "--overwrite"]);
    let want = m.expect(|f, t| !(is(t, "x", "a") || is(t, "x", "c")) || f.ns == "y" || f.ns == "z");
    m.check(c, "x/c relabelled into the policy", 80, "tcp", &want);
    // And out again.
    c.kubectl(&["label", "pod", "-n", "x", "c", "pod=c", "--overwrite"]);
    let want = m.expect(|f, t| !is(t, "x", "a") || f.ns == "y" || f.ns == "z");
    m.check(c, "x/c relabelled out of the policy", 80, "tcp", &want);

    // The held connection never broke and is still echoing.
    let (before, closed) = streamed(c);
    assert!(!closed, "the allowed connection was cut by a policy change");
    let before = before.expect("echoes");
    c.wait(
        Duration::from_secs(30),
        "the streamer still echoing",
        || (streamed(c).0? > before).then_some(()),
    );
    clear_policies(c);
    c.kubectl(&["delete", "pod", "-n", "y", "streamer", "--wait=false"]);
}

/// A DNS-style UDP exchange and a ClusterIP connection from a pod under an
/// egress policy: the policy sees the backend, after service translation.
pub fn services_under_egress_policy(c: &Cluster) {
    let svc = |name: &str, ns: &str, pod: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: \"{ns}\"}}\nspec:\n  selector: {{pod: {pod}}}\n  ports:\n  - {{name: udp, port: 53, targetPort: 80, protocol: UDP}}\n  - {{name: tcp, port: 8080, targetPort: 80, protocol: TCP}}\n---\n"
        )
    };
    c.apply(&(svc("dns-yb", "y", "b") + &svc("web-zc", "z", "c")));
    apply_policies(
        c,
        &policy(
            "x",
            "a-out",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: \"y\"}}\n      podSelector: {matchLabels: {pod: b}}\n    ports: [{protocol: UDP, port: 80}]",
        ),
    );
    let ip = |ns: &str, name: &str| {
        c.kubectl(&[
            "get",
            "svc",
            "-n",
            ns,
            name,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
    };
    let (dns, web) = (ip("y", "dns-yb"), ip("z", "web-zc"));
    let probe = |proto: &str, target: String| {
        c.kubectl(&[
            "exec",
            "-n",
            "x",
            "a",
            "-c",
            "cont-80",
            "--",
            "/kestrel-echo",
            "probe",
            proto,
            &target,
            "3",
        ])
    };
    c.wait(SETTLE, "UDP to the allowed service answered by y/b", || {
        let out = probe("udp", format!("{dns}:53"));
        (out.contains("3 pod=y/b") && out.contains(&format!("peer={dns}:53"))).then_some(())
    });
    c.wait(
        SETTLE,
        "TCP to a service whose backend egress denies",
        || {
            let out = probe("tcp", format!("{web}:8080"));
            (out.contains("3 error=timeout")).then_some(())
        },
    );
    // The same pod in x without the policy (x/b) still reaches both.
    let out = c.kubectl(&[
        "exec",
        "-n",
        "x",
        "b",
        "-c",
        "cont-80",
        "--",
        "/kestrel-echo",
        "probe",
        "tcp",
        &format!("{web}:8080"),
        "3",
    ]);
    assert!(out.contains("3 pod=z/c"), "{out}");
    clear_policies(c);
    c.kubectl(&["delete", "svc", "-n", "y", "dns-yb"]);
    c.kubectl(&["delete", "svc", "-n", "z", "web-zc"]);
}

/// A denied flow shows in `kestrel observe` (named: pods, namespaces,
/// port, the isolating policy) and in the node's `/metrics`.
pub fn verdicts_are_observable(c: &Cluster, m: &Model) {
    apply_policies(
        c,
        &policy(
            "x",
            "deny-in",
            "  podSelector: {}\n  policyTypes: [Ingress]",
        ),
    );
    let want = m.expect(|_, t| t.ns != "x");
    m.check(c, "deny ingress in x, observed", 81, "tcp", &want);
    // The observer starts, then one more denied connection: from y/b to
    // x/a:81, which it must report.
    let mut observer = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(["observe", "--data-dir"])
        .arg(c.dir.path())
        .args([
            "-n",
            "x",
            "--pod",
            "a",
            "--verdict",
            "denied",
            "--json",
            "--count",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kestrel observe");
    let xa = m.peers[m.index("x", "a")].ip.clone();
    let deadline = Instant::now() + SETTLE;
    let output = loop {
        // Repeated: the observer may not have subscribed before the first.
        let _ = c.kubectl_raw(
            &[
                "exec",
                "-n",
                "y",
                "b",
                "-c",
                "cont-81",
                "--",
                "/kestrel-echo",
                "reach",
                "tcp",
                "500",
                &format!("{xa}:81"),
            ],
            None,
        );
        if let Some(status) = observer.try_wait().expect("observer status") {
            let out = observer.wait_with_output().expect("observer output");
            assert!(
                status.success(),
                "kestrel observe failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if Instant::now() > deadline {
            let _ = observer.kill();
            let out = observer.wait_with_output().expect("observer output");
            panic!(
                "kestrel observe reported nothing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let record: Value = serde_json::from_str(output.trim()).expect("one JSON record");
    assert_eq!(record["kind"], "flow", "{record}");
    assert_eq!(record["verdict"], "denied", "{record}");
    assert_eq!(record["direction"], "ingress", "{record}");
    assert_eq!(record["proto"], "tcp", "{record}");
    assert_eq!(record["dst"]["namespace"], "x", "{record}");
    assert_eq!(record["dst"]["pod"], "a", "{record}");
    assert_eq!(record["dst"]["port"], 81, "{record}");
    assert_eq!(record["src"]["namespace"], "y", "{record}");
    assert_eq!(record["src"]["pod"], "b", "{record}");

    // x/a runs on node-1: its counters name the isolating policy.
    let body = services::agent_http(c, "node-1", "/metrics");
    let denied = services::metric(
        &body,
        "kestrel_policy_verdicts_total",
        "direction=\"ingress\",verdict=\"denied\",policy=\"x/deny-in\"",
    );
    assert!(denied >= 1, "denied verdicts counted by policy:\n{body}");
    assert!(
        services::metric(&body, "kestrel_flow_events_total", "outcome=\"sent\"") >= 1,
        "{body}"
    );
    assert!(
        services::metric(
            &body,
            "kestrel_dataplane_drops_total",
            "reason=\"policy_denied\""
        ) >= 1,
        "{body}"
    );
    clear_policies(c);
}
