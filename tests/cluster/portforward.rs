//! `kubectl port-forward` and the proxy subresources on real nodes:
//! port-forward of several ports of a Deployment's pod (WebSocket refused
//! by containerd, kubectl falls back to SPDY) under 100 concurrent HTTP
//! requests, a closed port's error, `pods/proxy`, `services/proxy`,
//! `nodes/proxy` through `kubectl get --raw`, and `kubectl proxy`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kestrel_testkit::kubectl_path;
use serde_json::Value;

use crate::{Cluster, ECHO, ready, str_at};

const NAME: &str = "pfweb";

/// Deletes the workload and kills the kubectl children, even on failure.
struct Cleanup<'a> {
    c: &'a Cluster,
    children: Vec<Child>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.c.kubectl_raw(
            &[
                "delete",
                &format!("deployment/{NAME}"),
                &format!("service/{NAME}"),
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
    }
}

/// Start a long-running kubectl (`port-forward`, `proxy`); its stdout and
/// stderr lines arrive on the returned channel.
fn spawn_kubectl(c: &Cluster, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(kubectl_path())
        .args(args)
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    (child, rx)
}

/// One HTTP/1.1 GET on a fresh connection; the whole response.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The local port of a `Forwarding from 127.0.0.1:N -> REMOTE` line.
fn forwarded_port(line: &str, remote: u16) -> Option<u16> {
    let rest = line.strip_prefix("Forwarding from 127.0.0.1:")?;
    let (local, to) = rest.split_once(" -> ")?;
    (to.trim() == remote.to_string())
        .then(|| local.parse().ok())
        .flatten()
}

pub fn port_forward_and_proxy(c: &Cluster) {
    let mut guard = Cleanup {
        c,
        children: Vec::new(),
    };
    c.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {NAME}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {NAME}}}}}
  template:
    metadata: {{labels: {{app: {NAME}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: {ECHO}
        imagePullPolicy: Never
        ports: [{{name: http, containerPort: 8080}}, {{name: echo, containerPort: 9000}}]
        env:
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {NAME}}}
spec:
  selector: {{app: {NAME}}}
  ports:
  - {{name: http, port: 8080, targetPort: http}}
  - {{name: echo, port: 9000, targetPort: 9000}}
"#
    ));
    let pods: Vec<String> = c.wait(Duration::from_secs(90), "2 ready pfweb pods", || {
        let out = c.kubectl(&["get", "pods", "-l", &format!("app={NAME}"), "-o", "json"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        let pods = v["items"].as_array()?;
        (pods.len() == 2 && pods.iter().all(ready)).then(|| {
            pods.iter()
                .map(|p| str_at(p, "/metadata/name").to_owned())
                .collect()
        })
    });
    // The Service's endpoints, for services/proxy.
    c.wait(Duration::from_secs(30), "pfweb endpoints", || {
        let (ok, out, _) = c.kubectl_raw(
            &[
                "get",
                "endpoints",
                NAME,
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
            ],
            None,
        );
        (ok && out.split_whitespace().count() == 2).then_some(())
    });

    // Two ports at once, local ports picked by kubectl.
    let (child, rx) = spawn_kubectl(
        c,
        &["port-forward", &format!("deploy/{NAME}"), ":8080", ":9000"],
    );
    guard.children.push(child);
    let mut seen = Vec::new();
    let (http, echo) = c.wait(Duration::from_secs(30), "port-forward to listen", || {
        seen.extend(rx.try_iter());
        let find = |remote| seen.iter().find_map(|l| forwarded_port(l, remote));
        Some((find(8080)?, find(9000)?))
    });

    // 100 concurrent requests, each answered with its own path.
    let answers: Vec<(usize, std::io::Result<String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..100)
            .map(|i| s.spawn(move || (i, http_get(http, &format!("/req-{i}")))))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for (i, a) in &answers {
        let body = a.as_ref().unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert!(
            body.starts_with("HTTP/1.1 200")
                && body.trim_end().ends_with(&format!("path=/req-{i}")),
            "request {i}: {body}"
        );
    }
    // The raw TCP port: greeting, then echo.
    let mut s = TcpStream::connect(("127.0.0.1", echo)).expect("connect echo port");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut greeting = String::new();
    r.read_line(&mut greeting).expect("greeting");
    assert!(greeting.starts_with("pod=pfweb-"), "{greeting}");
    s.write_all(b"through the tunnel\n").expect("write");
    let mut back = String::new();
    r.read_line(&mut back).expect("echo");
    assert_eq!(back, "through the tunnel\n");
    drop((s, r));

    // A closed port: the connection is dropped and kubectl reports the
    // runtime's error, as upstream's does.
    let (child, rx) = spawn_kubectl(c, &["port-forward", &format!("pod/{}", pods[0]), ":81"]);
    guard.children.push(child);
    let mut seen = Vec::new();
    let closed = c.wait(
        Duration::from_secs(30),
        "port-forward :81 to listen",
        || {
            seen.extend(rx.try_iter());
            seen.iter().find_map(|l| forwarded_port(l, 81))
        },
    );
    let reply = http_get(closed, "/").unwrap_or_default();
    assert!(reply.is_empty(), "a closed port answered: {reply}");
    c.wait(
        Duration::from_secs(30),
        "kubectl's forwarding error",
        || {
            seen.extend(rx.try_iter());
            seen.iter()
                .any(|l| l.contains("error forwarding port 81") && l.contains("connection refused"))
                .then_some(())
        },
    );
    // The first forward still works.
    let again = http_get(http, "/after").expect("request after the failure");
    assert!(again.trim_end().ends_with("path=/after"), "{again}");

    // pods/proxy, services/proxy (by number and by name), nodes/proxy.
    for (path, want) in [
        (
            format!("/api/v1/namespaces/default/pods/{}:8080/proxy/p", pods[0]),
            format!("pod={} ", pods[0]),
        ),
        (
            format!(
                "/api/v1/namespaces/default/pods/{}/proxy/first-port",
                pods[1]
            ),
            format!("pod={} ", pods[1]),
        ),
        (
            format!("/api/v1/namespaces/default/services/{NAME}:8080/proxy/s?x=1"),
            "pod=pfweb-".to_owned(),
        ),
        (
            format!("/api/v1/namespaces/default/services/http:{NAME}:http/proxy/named"),
            "pod=pfweb-".to_owned(),
        ),
    ] {
        let out = c.kubectl(&["get", "--raw", &path]);
        assert!(out.starts_with(&want), "{path}: {out}");
        let sub = path.split("/proxy").nth(1).unwrap_or_default();
        assert!(
            out.trim_end().ends_with(&format!("path={sub}")),
            "{path}: {out}"
        );
    }
    let node = c.kubectl(&["get", "pod", &pods[0], "-o", "jsonpath={.spec.nodeName}"]);
    assert_eq!(
        c.kubectl(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/healthz")
        ]),
        "ok"
    );
    let (ok, _, err) = c.kubectl_raw(
        &[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/default/pods/{}:81/proxy/", pods[0]),
        ],
        None,
    );
    assert!(
        !ok && err.contains("error trying to reach service") && err.contains("connection refused"),
        "{err}"
    );
    let (ok, _, err) = c.kubectl_raw(
        &[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/default/services/{NAME}:81/proxy/"),
        ],
        None,
    );
    assert!(
        !ok && err.contains("no service port 81 found for service"),
        "{err}"
    );

    // kubectl proxy on a port of its choosing.
    let (child, rx) = spawn_kubectl(c, &["proxy", "--port=0"]);
    guard.children.push(child);
    let mut seen = Vec::new();
    let proxy_port: u16 = c.wait(Duration::from_secs(30), "kubectl proxy to listen", || {
        seen.extend(rx.try_iter());
        seen.iter().find_map(|l| {
            l.strip_prefix("Starting to serve on 127.0.0.1:")?
                .trim()
                .parse()
                .ok()
        })
    });
    let out = http_get(
        proxy_port,
        &format!("/api/v1/namespaces/default/services/{NAME}:8080/proxy/via-kubectl-proxy"),
    )
    .expect("kubectl proxy request");
    assert!(
        out.starts_with("HTTP/1.1 200") && out.trim_end().ends_with("path=/via-kubectl-proxy"),
        "{out}"
    );
    drop(guard);
}
