//! Cluster DNS from inside pods, with the tools users run (busybox
//! `nslookup`, `wget`, `nc`): the specification's records, forwarding to a
//! test upstream on the host's fabric address (never the host's own
//! resolvers), propagation, an agent restart, and hostile input.

use std::time::Duration;

use kestrel_testkit::dns::Upstream;

use super::services::{agent_http, metric};
use super::{BUSYBOX, Cluster, ready, str_at};

/// Where the test's upstream listens: the host end of the fabric, which
/// every node namespace reaches. `kestrel up` is given it.
pub const UPSTREAM: &str = "10.41.0.1:15353";

fn client_pod(name: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: {BUSYBOX}, command: [sleep, "3600"]}}
"#
    )
}

/// The running upstream; the rest of the scenarios use it.
pub fn setup(c: &Cluster) -> Upstream {
    let up = Upstream::start(UPSTREAM.parse().expect("addr"), "example.test")
        .expect("the test upstream on the fabric address");
    c.apply(&format!(
        r#"{a}---
{b}---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: svc-echo}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ext}}
spec: {{type: ExternalName, externalName: www.example.test}}
---
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  serviceName: db
  replicas: 2
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: {echo}
        readinessProbe: {{httpGet: {{port: 8080, path: /healthz}}, periodSeconds: 1}}
"#,
        a = client_pod("dns-a", "node-1"),
        b = client_pod("dns-b", "node-2"),
        echo = super::ECHO,
    ));
    for p in ["dns-a", "dns-b", "db-0", "db-1"] {
        c.wait(Duration::from_secs(90), &format!("{p} Ready"), || {
            c.pod(p).filter(ready)
        });
    }
    up
}

pub(super) fn exec(c: &Cluster, pod: &str, cmd: &[&str]) -> (bool, String) {
    let mut args = vec!["exec", pod, "--"];
    args.extend_from_slice(cmd);
    let (ok, out, err) = c.kubectl_raw(&args, None);
    (ok, format!("{out}{err}"))
}

/// `nslookup` in `pod` until it succeeds with `want` in its output.
#[track_caller]
fn resolves(c: &Cluster, pod: &str, args: &[&str], want: &str) {
    let mut cmd = vec!["nslookup"];
    cmd.extend_from_slice(args);
    c.wait(
        Duration::from_secs(30),
        &format!("{pod}: nslookup {args:?} showing {want}"),
        || {
            let (ok, out) = exec(c, pod, &cmd);
            (ok && out.contains(want)).then_some(())
        },
    );
}

pub fn pods_get_cluster_resolv_conf(c: &Cluster) {
    let (ok, conf) = exec(c, "dns-a", &["cat", "/etc/resolv.conf"]);
    assert!(ok, "{conf}");
    assert!(conf.contains("nameserver 10.43.0.10"), "{conf}");
    assert!(
        conf.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{conf}"
    );
    assert!(conf.contains("ndots:5"), "{conf}");
    let svc = c.kubectl(&["get", "svc", "-n", "kube-system", "kube-dns", "-o", "json"]);
    let svc: serde_json::Value = serde_json::from_str(&svc).expect("json");
    assert_eq!(str_at(&svc, "/spec/clusterIP"), "10.43.0.10");
}

pub fn service_and_pod_records(c: &Cluster) {
    let kube_ip = "10.43.0.1";
    let web_ip = {
        let v: serde_json::Value =
            serde_json::from_str(&c.kubectl(&["get", "svc", "web", "-o", "json"])).expect("json");
        str_at(&v, "/spec/clusterIP").to_owned()
    };
    for pod in ["dns-a", "dns-b"] {
        // The tutorials' first command, through the search path.
        resolves(c, pod, &["kubernetes.default"], kube_ip);
        resolves(c, pod, &["web"], &web_ip);
        resolves(c, pod, &["web.default.svc.cluster.local"], &web_ip);
        // wget reaches the Service by its short name.
        c.wait(Duration::from_secs(30), "wget http://web/", || {
            let (ok, out) = exec(c, pod, &["wget", "-qO-", "-T", "3", "http://web/"]);
            (ok && out.contains("pod=svc-echo")).then_some(())
        });
    }
    // Headless StatefulSet: each pod by its hostname, the Service by all.
    for (i, p) in ["db-0", "db-1"].into_iter().enumerate() {
        let ip = str_at(&c.pod(p).expect("db pod"), "/status/podIP").to_owned();
        resolves(c, "dns-a", &[&format!("{p}.db")], &ip);
        resolves(c, "dns-a", &["db"], &ip);
        if i == 0 {
            // The pod's A record under pod.<zone>.
            let dashed = ip.replace('.', "-");
            resolves(
                c,
                "dns-b",
                &[&format!("{dashed}.default.pod.cluster.local")],
                &ip,
            );
            // PTR of a headless endpoint.
            resolves(
                c,
                "dns-b",
                &[&ip],
                &format!("{p}.db.default.svc.cluster.local"),
            );
        }
    }
    // SRV of a named port, for both kinds.
    resolves(
        c,
        "dns-a",
        &["-type=srv", "_http._tcp.web.default.svc.cluster.local"],
        "web.default.svc.cluster.local",
    );
    resolves(
        c,
        "dns-a",
        &["-type=srv", "_http._tcp.db.default.svc.cluster.local"],
        "db-0.db.default.svc.cluster.local",
    );
    // PTR of a ClusterIP.
    resolves(
        c,
        "dns-a",
        &[kube_ip],
        "kubernetes.default.svc.cluster.local",
    );
    // TXT with the schema version.
    resolves(
        c,
        "dns-a",
        &["-type=txt", "dns-version.cluster.local"],
        "1.0.1",
    );
}

pub fn external_names_through_the_upstream(c: &Cluster, up: &Upstream) {
    let before = up.queries();
    resolves(c, "dns-a", &["www.example.test"], "192.0.2.10");
    // ExternalName: a CNAME, then the target's address from upstream.
    resolves(
        c,
        "dns-b",
        &["ext.default.svc.cluster.local"],
        "www.example.test",
    );
    resolves(c, "dns-b", &["ext.default.svc.cluster.local"], "192.0.2.10");
    assert!(up.queries() > before, "the upstream was asked");
    let (ok, out) = exec(c, "dns-a", &["nslookup", "nope.invalid"]);
    assert!(!ok && out.contains("NXDOMAIN"), "{out}");
}

pub fn nxdomain_and_nodata(c: &Cluster) {
    let (ok, out) = exec(c, "dns-a", &["nslookup", "nope.default.svc.cluster.local"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("NXDOMAIN"),
        "a missing Service is NXDOMAIN: {out}"
    );
    // The name exists, with no AAAA record: NOERROR with no answer.
    let (_, out) = exec(
        c,
        "dns-a",
        &[
            "nslookup",
            "-type=aaaa",
            "kubernetes.default.svc.cluster.local.",
        ],
    );
    assert!(!out.contains("NXDOMAIN"), "NODATA, not NXDOMAIN: {out}");
    assert!(!out.contains("Name:"), "no answer record: {out}");
}

/// The kernel's uptime, seconds: the clock a pod's `/proc/uptime` shows
/// too, so the test and a pod can time one thing together.
fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/uptime")
}

/// Starts a loop in `pod` that runs `nslookup NAME` every 20 ms until it
/// succeeds (or, with `gone`, answers NXDOMAIN), then prints the uptime.
/// Returns once the loop is running.
fn poll_in_pod(c: &Cluster, pod: &str, name: &str, gone: bool) -> std::process::Child {
    use std::io::BufRead as _;
    let test = if gone {
        format!("nslookup {name} 2>&1 | grep -q NXDOMAIN")
    } else {
        format!("nslookup {name} >/dev/null 2>&1")
    };
    let script = format!(
        "echo start; i=0; until {test}; do i=$((i+1)); [ $i -gt 500 ] && exit 1; usleep 20000; done; \
         cut -d' ' -f1 /proc/uptime"
    );
    let mut child = std::process::Command::new(kestrel_testkit::kubectl_path())
        .args(["exec", pod, "--", "sh", "-c", &script])
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl exec");
    let mut first = String::new();
    let stdout = child.stdout.as_mut().expect("stdout");
    std::io::BufReader::new(stdout)
        .read_line(&mut first)
        .expect("the loop's first line");
    assert_eq!(first.trim(), "start", "{pod}: the loop did not start");
    child
}

/// Waits for a loop of [`poll_in_pod`]; returns the uptime it printed.
fn loop_done(child: std::process::Child, what: &str) -> f64 {
    let out = child.wait_with_output().expect("the loop");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{what}: never happened: {text}");
    text.trim()
        .lines()
        .last()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no uptime in {text:?}"))
}

pub fn new_services_resolve_within_a_second(c: &Cluster) {
    for round in 0..3 {
        let name = format!("late-{round}");
        let loops = [
            poll_in_pod(c, "dns-a", &name, false),
            poll_in_pod(c, "dns-b", &name, false),
        ];
        let created = uptime();
        c.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80}}]\n"
        ));
        for (l, node) in loops.into_iter().zip(["node-1", "node-2"]) {
            let took = loop_done(l, &format!("{name} resolvable on {node}")) - created;
            eprintln!("dns: {name} resolvable on {node} {took:.3} s after the create");
            assert!(took < 1.0, "{name} on {node}: {took:.3} s");
        }
        let loops = [
            poll_in_pod(c, "dns-a", &name, true),
            poll_in_pod(c, "dns-b", &name, true),
        ];
        let deleted = uptime();
        c.kubectl(&["delete", "svc", &name, "--wait=false"]);
        for (l, node) in loops.into_iter().zip(["node-1", "node-2"]) {
            let took = loop_done(l, &format!("{name} NXDOMAIN on {node}")) - deleted;
            eprintln!("dns: {name} NXDOMAIN on {node} {took:.3} s after the delete");
            assert!(took < 1.0, "{name} on {node}: {took:.3} s");
        }
    }
}

pub fn hostile_input_is_counted_and_others_still_answered(c: &Cluster) {
    let dropped = |node: &str| {
        let m = agent_http(c, node, "/metrics");
        metric(&m, "kestrel_dns_dropped_total", "reason=\"malformed\"")
            + metric(&m, "kestrel_dns_dropped_total", "reason=\"short\"")
            + metric(&m, "kestrel_dns_dropped_total", "reason=\"rate_limited\"")
    };
    let before = dropped("node-1");
    // Garbage, as a flood from one source, at node-1's DNS
    // server from one source (the host's fabric address; busybox's nc has
    // no UDP mode): 6,000 datagrams, into the test's own fabric only.
    let sock = std::net::UdpSocket::bind("10.41.0.1:0").expect("a fabric socket");
    for i in 0..6000usize {
        let junk: Vec<u8> = (0..12 + (i * 13) % 200)
            .map(|j| (i * 31 + j * 7) as u8)
            .collect();
        let _ = sock.send_to(&junk, "10.41.0.11:53");
    }
    c.wait(
        Duration::from_secs(10),
        "the garbage counted on /metrics",
        || (dropped("node-1") > before).then_some(()),
    );
    // Everyone else, and the sender itself, are still answered.
    resolves(c, "dns-b", &["kubernetes.default"], "10.43.0.1");
    resolves(c, "dns-a", &["kubernetes.default"], "10.43.0.1");
    let m = agent_http(c, "node-1", "/metrics");
    assert!(metric(&m, "kestrel_dns_responses_total", "rcode=\"NOERROR\"") > 0);
    eprintln!(
        "dns: node-1 dropped {} malformed and {} over the source's rate",
        metric(&m, "kestrel_dns_dropped_total", "reason=\"malformed\""),
        metric(&m, "kestrel_dns_dropped_total", "reason=\"rate_limited\"")
    );
}

pub fn kubectl_run_busybox_works_offline(c: &Cluster) {
    c.kubectl(&[
        "run",
        "tutorial",
        "--image=busybox",
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ]);
    c.wait(
        Duration::from_secs(60),
        "kubectl run --image=busybox Ready",
        || c.pod("tutorial").filter(ready),
    );
    resolves(c, "tutorial", &["kubernetes.default"], "10.43.0.1");
    c.kubectl(&["delete", "pod", "tutorial", "--wait=false"]);
}

/// `kestrel observe --dns` shows a pod's query, named, with its answer.
pub fn queries_are_observable(c: &Cluster) {
    let mut observer = std::process::Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(["observe", "--data-dir"])
        .arg(c.dir.path())
        .args(["--dns", "--pod", "dns-b", "--json", "--count", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kestrel observe --dns");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let output = loop {
        // Repeated: the observer may not have subscribed before the first.
        let _ = exec(c, "dns-b", &["nslookup", "web.default.svc.cluster.local."]);
        if let Some(status) = observer.try_wait().expect("observer") {
            let out = observer.wait_with_output().expect("output");
            assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if std::time::Instant::now() > deadline {
            let _ = observer.kill();
            let out = observer.wait_with_output().expect("output");
            panic!(
                "kestrel observe --dns reported nothing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let r: serde_json::Value = serde_json::from_str(output.trim()).expect("one JSON record");
    assert_eq!(r["kind"], "dns", "{r}");
    assert_eq!(r["node"], "node-2", "answered on the pod's own node: {r}");
    assert_eq!(r["client"]["pod"], "dns-b", "{r}");
    assert_eq!(r["client"]["namespace"], "default", "{r}");
    assert_eq!(r["name"], "web.default.svc.cluster.local.", "{r}");
    assert_eq!(r["rcode"], "NOERROR", "{r}");
}

/// A pod on node-1 whose own command resolves in a loop, every 50 ms one
/// `nslookup`, one line each: started before the agent restart, its log
/// read after it.
pub fn start_resolve_loop(c: &Cluster) {
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: dns-loop}}
spec:
  nodeName: node-1
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command:
    - sh
    - -c
    - |
      i=0; while [ $i -lt 300 ]; do
        if nslookup kubernetes.default.svc.cluster.local. >/dev/null 2>&1; then echo ok; else echo fail; fi
        i=$((i+1)); usleep 50000
      done; echo end
"#
    ));
    c.wait(Duration::from_secs(60), "the resolver loop running", || {
        let (ok, out, _) = c.kubectl_raw(&["logs", "dns-loop"], None);
        (ok && out.lines().any(|l| l == "ok")).then_some(())
    });
}

pub fn resolve_loop_survived(c: &Cluster) {
    let text = c.wait(Duration::from_secs(120), "the resolver loop's end", || {
        let (ok, out, _) = c.kubectl_raw(&["logs", "dns-loop"], None);
        (ok && out.lines().any(|l| l == "end")).then_some(out)
    });
    let lines: Vec<&str> = text.lines().filter(|l| *l != "end").collect();
    let fails = lines.iter().filter(|l| **l == "fail").count();
    let longest = lines
        .split(|l| *l == "ok")
        .map(<[&str]>::len)
        .max()
        .unwrap_or(0);
    eprintln!(
        "dns: across the agent restart {} lookups, {fails} failed, at most {longest} in a row",
        lines.len()
    );
    assert_eq!(lines.len(), 300, "{text}");
    assert_eq!(
        lines.last(),
        Some(&"ok"),
        "resolving again at the end: {text}"
    );
    // The restart (kill -9, start, rebind) takes a few seconds, and
    // nslookup itself retries, so a failure streak stays short.
    assert!(longest <= 20, "{longest} lookups in a row failed: {text}");
    c.kubectl(&["delete", "pod", "dns-loop", "--wait=false"]);
}
