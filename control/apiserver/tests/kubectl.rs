//! The real kubectl against an in-process server. kubectl is found at
//! `$KESTREL_KUBECTL` or `<repo>/.cache/bin/kubectl` (`cargo xtask setup`
//! puts it there); the test fails, loudly, when it is missing.

use std::process::Stdio;
use std::time::Duration;

use kestrel_apiserver::testing::TestServer;
use kestrel_testkit::kubectl::Kubectl;
use kestrel_testkit::{eventually, kubectl_path};

async fn setup() -> (tempfile::TempDir, TestServer, Kubectl) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let k = Kubectl::new(dir.path(), s.kubeconfig.clone());
    (dir, s, k)
}

const CONFIGMAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: demo
  labels:
    app: demo
data:
  greeting: hello
";

#[tokio::test]
async fn kubectl_basics() {
    let (_dir, _s, k) = setup().await;
    let v = k.ok(&["version", "-o", "json"]).await;
    assert!(v.contains("serverVersion"), "{v}");

    let ns = k.ok(&["get", "ns"]).await;
    assert!(
        ns.lines()
            .next()
            .is_some_and(|h| h.starts_with("NAME") && h.contains("STATUS") && h.contains("AGE")),
        "{ns}"
    );
    assert!(ns.contains("default") && ns.contains("Active"), "{ns}");

    k.ok(&["create", "ns", "demo"]).await;
    k.ok(&[
        "create",
        "configmap",
        "literal",
        "-n",
        "demo",
        "--from-literal=a=b",
    ])
    .await;
    let lit = k
        .ok(&[
            "get",
            "cm",
            "literal",
            "-n",
            "demo",
            "-o",
            "jsonpath={.data.a}",
        ])
        .await;
    assert_eq!(lit, "b");
    let out = k.ok_in(&["apply", "-f", "-"], Some(CONFIGMAP)).await;
    assert!(out.contains("configmap/settings created"), "{out}");
    let out = k
        .ok_in(
            &["apply", "-f", "-"],
            Some(&CONFIGMAP.replace("hello", "bonjour")),
        )
        .await;
    assert!(out.contains("configmap/settings configured"), "{out}");
    let y = k
        .ok(&["get", "cm", "settings", "-n", "demo", "-o", "yaml"])
        .await;
    assert!(y.contains("greeting: bonjour"), "{y}");
    assert!(
        y.contains("kubectl.kubernetes.io/last-applied-configuration"),
        "{y}"
    );
    let table = k
        .ok(&["get", "configmaps", "-n", "demo", "-l", "app=demo"])
        .await;
    assert!(
        table.contains("DATA") && table.contains("settings"),
        "{table}"
    );
    let jp = k
        .ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "demo",
            "-o",
            "jsonpath={.data.greeting}",
        ])
        .await;
    assert_eq!(jp, "bonjour");

    let out = k.ok(&["delete", "cm", "settings", "-n", "demo"]).await;
    assert!(out.contains("deleted"), "{out}");
    let o = k
        .run_with(&["get", "cm", "settings", "-n", "demo"], None, &[])
        .await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains(r#"configmaps "settings" not found"#),
        "{}",
        o.stderr
    );

    // No controllers run here: the namespace controller empties and
    // removes it (kestrel-controllers tests that); the server marks it.
    k.ok(&["delete", "ns", "demo", "--wait=false"]).await;
    let phase = k
        .ok(&["get", "ns", "demo", "-o", "jsonpath={.status.phase}"])
        .await;
    assert_eq!(phase, "Terminating");
}

const APP: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 80
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: shop
data:
  mode: blue
";

#[tokio::test]
async fn kubectl_workflows() {
    let (dir, _s, k) = setup().await;
    k.ok(&["create", "ns", "shop"]).await;

    // Client-side apply, then re-apply with a change.
    let out = k.ok_in(&["apply", "-f", "-"], Some(APP)).await;
    for want in [
        "deployment.apps/web created",
        "service/web created",
        "configmap/web-config created",
    ] {
        assert!(out.contains(want), "{out}");
    }
    let changed = APP
        .replace("nginx:1.27", "nginx:1.28")
        .replace("mode: blue", "mode: green");
    let out = k.ok_in(&["apply", "-f", "-"], Some(&changed)).await;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("service/web unchanged"), "{out}");
    let img = k
        .ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(img, "nginx:1.28");
    let gen_ = k
        .ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.generation}",
        ])
        .await;
    assert_eq!(gen_, "2");

    // Server-side apply of the same objects, then a change.
    let out = k
        .ok_in(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&changed),
        )
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    let ssa2 = changed.replace("replicas: 2", "replicas: 3");
    k.ok_in(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&ssa2),
    )
    .await;
    let mf = k
        .ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ])
        .await;
    assert!(mf.contains("kubectl"), "{mf}");

    // Output formats.
    let wide = k.ok(&["get", "deploy", "-n", "shop", "-o", "wide"]).await;
    let header = wide.lines().next().unwrap_or_default().to_owned();
    for col in [
        "NAME",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "AGE",
        "CONTAINERS",
        "IMAGES",
        "SELECTOR",
    ] {
        assert!(header.contains(col), "{wide}");
    }
    assert!(
        wide.contains("nginx:1.28") && wide.contains("app=web"),
        "{wide}"
    );
    let svc = k.ok(&["get", "svc", "-n", "shop", "-o", "wide"]).await;
    assert!(
        svc.contains("ClusterIP") && svc.contains("10.43.") && svc.contains("80/TCP"),
        "{svc}"
    );
    let y = k
        .ok(&["get", "svc", "web", "-n", "shop", "-o", "yaml"])
        .await;
    assert!(y.contains("clusterIP: 10.43."), "{y}");
    let by_label = k.ok(&["get", "all", "-n", "shop", "-l", "app=web"]).await;
    assert!(by_label.contains("deployment.apps/web"), "{by_label}");
    let desc = k.ok(&["describe", "deployment", "web", "-n", "shop"]).await;
    assert!(
        desc.contains("Name:") && desc.contains("web") && desc.contains("Replicas:"),
        "{desc}"
    );

    // label, annotate, scale.
    k.ok(&["label", "deploy", "web", "-n", "shop", "tier=frontend"])
        .await;
    k.ok(&["annotate", "deploy", "web", "-n", "shop", "owner=team-a"])
        .await;
    let l = k
        .ok(&[
            "get",
            "deploy",
            "-n",
            "shop",
            "-l",
            "tier=frontend",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(l.trim(), "deployment.apps/web");
    let a = k
        .ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.annotations.owner}",
        ])
        .await;
    assert_eq!(a, "team-a");
    k.ok(&["scale", "deploy", "web", "-n", "shop", "--replicas=5"])
        .await;
    let r = k
        .ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await;
    assert_eq!(r, "5");

    // The three patch types.
    k.ok(&[
        "patch",
        "cm",
        "web-config",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"data":{"m":"1"}}"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "cm",
        "web-config",
        "-n",
        "shop",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/j","value":"2"}]"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "shop",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.29"}]}}}}"#,
    ])
    .await;
    let d = k
        .ok(&[
            "get",
            "cm",
            "web-config",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.m}{.data.j}",
        ])
        .await;
    assert_eq!(d, "12");
    let img = k
        .ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(img, "nginx:1.29");

    // edit through an editor script.
    let editor = dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/mode: green/mode: edited/' \"$1\"\n",
    )
    .expect("editor");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let ed = editor.to_string_lossy().into_owned();
    let o = k
        .run_with(
            &["edit", "cm", "web-config", "-n", "shop"],
            None,
            &[("KUBE_EDITOR", &ed)],
        )
        .await;
    assert!(o.ok, "edit: {} {}", o.stdout, o.stderr);
    let m = k
        .ok(&[
            "get",
            "cm",
            "web-config",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.mode}",
        ])
        .await;
    assert_eq!(m, "edited");

    // Discovery-driven commands.
    let ar = k.ok(&["api-resources"]).await;
    for want in [
        "deployments",
        "deploy",
        "apps/v1",
        "endpointslices",
        "leases",
        "networkpolicies",
        "clusterrolebindings",
    ] {
        assert!(ar.contains(want), "{want}: {ar}");
    }
    let av = k.ok(&["api-versions"]).await;
    for want in ["v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1"] {
        assert!(av.lines().any(|l| l == want), "{want}: {av}");
    }
    let raw = k.ok(&["get", "--raw", "/openapi/v3"]).await;
    assert!(raw.contains("apis/apps/v1"), "{raw}");

    // Deletes with each cascade mode. No garbage collector runs here
    // (kestrel-controllers tests cascading): foreground and orphan leave
    // the object with the collector's finalizer, which kubectl would wait
    // on, so those do not wait.
    for (name, mode, finalizer) in [
        ("a", "background", None),
        ("b", "foreground", Some("foregroundDeletion")),
        ("c", "orphan", Some("orphan")),
    ] {
        k.ok(&["create", "configmap", name, "-n", "shop"]).await;
        let cascade = format!("--cascade={mode}");
        let mut args = vec!["delete", "cm", name, "-n", "shop", cascade.as_str()];
        if finalizer.is_some() {
            args.push("--wait=false");
        }
        let out = k.ok(&args).await;
        assert!(out.contains("deleted"), "{mode}: {out}");
        let o = k
            .run_with(
                &[
                    "get",
                    "cm",
                    name,
                    "-n",
                    "shop",
                    "-o",
                    "jsonpath={.metadata.finalizers}",
                ],
                None,
                &[],
            )
            .await;
        match finalizer {
            Some(f) => assert!(
                o.ok && o.stdout.contains(f),
                "{mode}: {} {}",
                o.stdout,
                o.stderr
            ),
            None => assert!(!o.ok && o.stderr.contains("not found"), "{}", o.stderr),
        }
    }
    k.ok(&[
        "delete",
        "deploy",
        "web",
        "-n",
        "shop",
        "--cascade=foreground",
        "--wait=false",
    ])
    .await;
    let o = k
        .ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.deletionTimestamp} {.metadata.finalizers}",
        ])
        .await;
    assert!(o.contains("foregroundDeletion") && o.len() > 25, "{o}");
}

#[tokio::test]
async fn kubectl_get_watch_streams_changes() {
    let (_dir, _s, k) = setup().await;
    let mut cmd = tokio::process::Command::new(kubectl_path());
    cmd.args(["get", "cm", "-n", "default", "-w"])
        .env("KUBECONFIG", &k.kubeconfig)
        .env("HOME", &k.home)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("kubectl -w");
    let stdout = child.stdout.take().expect("stdout");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt as _;
        let mut r = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(l)) = r.next_line().await {
            sink.lock().expect("lock").push(l);
        }
    });
    // kubectl -w prints nothing until something exists; create after it started.
    eventually(Duration::from_secs(20), "watched configmap", || {
        let k = &k;
        let lines = lines.clone();
        async move {
            let _ = k
                .run_with(
                    &["create", "configmap", "watched", "-n", "default"],
                    None,
                    &[],
                )
                .await;
            let seen = lines
                .lock()
                .expect("lock")
                .iter()
                .any(|l| l.starts_with("watched"));
            seen.then_some(())
        }
    })
    .await;
    let _ = child.kill().await;
}

#[tokio::test]
async fn kubectl_explain_uses_openapi_v3() {
    let (_dir, _s, k) = setup().await;
    let out = k.ok(&["explain", "deployment.spec.strategy"]).await;
    assert!(out.contains("GROUP:") && out.contains("apps"), "{out}");
    assert!(out.contains("FIELD: strategy"), "{out}");
    assert!(out.contains("rollingUpdate"), "{out}");
    let out = k.ok(&["explain", "pods.spec.containers.image"]).await;
    assert!(out.contains("Container image name"), "{out}");
    // kubectl asks the server to validate (fieldValidation=Strict), as the
    // OpenAPI says it can: unknown fields are refused and nothing is stored.
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: strict\n  namespace: default\nfoo: bar\n";
    let o = k.run_with(&["apply", "-f", "-"], Some(bad), &[]).await;
    assert!(!o.ok, "{}", o.stdout);
    assert!(
        o.stderr.contains(r#"ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: unknown field "foo""#),
        "{}",
        o.stderr
    );
    let o = k.run_with(&["get", "cm", "strict"], None, &[]).await;
    assert!(!o.ok);
}

/// kubectl's typed generators send protobuf bodies for built-in kinds; the
/// objects they create read back with the fields the flags set.
#[tokio::test]
async fn kubectl_generators_send_protobuf() {
    let (_dir, _s, k) = setup().await;
    let get = async |what: &str| -> serde_json::Value {
        let out = k.ok(&["get", what, "-o", "json"]).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: {e}: {out}"))
    };

    // -v=8 logs the request's headers: the body is protobuf (the response,
    // JSON, is accepted).
    let o = k
        .run_with(
            &[
                "create",
                "deployment",
                "web",
                "--image=docker.io/kestrel/echo:0.1.0",
                "--replicas=2",
                "-v=8",
            ],
            None,
            &[],
        )
        .await;
    assert!(o.ok, "{}\n{}", o.stdout, o.stderr);
    assert!(
        o.stderr
            .lines()
            .any(|l| l.trim() == "Content-Type: application/vnd.kubernetes.protobuf"),
        "{}",
        o.stderr
    );
    let d = get("deployment/web").await;
    assert_eq!(d["spec"]["replicas"], 2, "{d}");
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web", "{d}");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "docker.io/kestrel/echo:0.1.0", "{d}");
    assert_eq!(c["name"], "echo", "{d}");
    assert!(d["metadata"]["creationTimestamp"].is_string(), "{d}");
    assert!(
        d["spec"].get("minReadySeconds").is_none_or(|v| v == 0),
        "{d}"
    );

    k.ok(&[
        "run",
        "p",
        "--image=docker.io/library/busybox:1.35",
        "--port=8080",
        "--",
        "sleep",
        "10",
    ])
    .await;
    let p = get("pod/p").await;
    let c = &p["spec"]["containers"][0];
    assert_eq!(c["image"], "docker.io/library/busybox:1.35", "{p}");
    assert_eq!(c["args"], serde_json::json!(["sleep", "10"]), "{p}");
    assert_eq!(c["ports"][0]["containerPort"], 8080, "{p}");
    assert!(c["ports"][0].get("hostPort").is_none(), "{p}");
    assert_eq!(p["metadata"]["labels"]["run"], "p", "{p}");

    k.ok(&[
        "create",
        "job",
        "j",
        "--image=docker.io/library/busybox:1.35",
    ])
    .await;
    let j = get("job/j").await;
    let t = &j["spec"]["template"]["spec"];
    assert_eq!(
        t["containers"][0]["image"], "docker.io/library/busybox:1.35",
        "{j}"
    );
    assert_eq!(t["restartPolicy"], "Never", "{j}");

    k.ok(&["create", "service", "clusterip", "s", "--tcp=80:8080"])
        .await;
    let s = get("service/s").await;
    assert_eq!(s["spec"]["type"], "ClusterIP", "{s}");
    assert_eq!(s["spec"]["ports"][0]["port"], 80, "{s}");
    assert_eq!(s["spec"]["ports"][0]["targetPort"], 8080, "{s}");
    assert!(s["spec"]["clusterIP"].is_string(), "{s}");

    k.ok(&[
        "expose",
        "deployment",
        "web",
        "--port",
        "80",
        "--target-port",
        "8080",
        "--name",
        "web2",
    ])
    .await;
    let w = get("service/web2").await;
    assert_eq!(w["spec"]["ports"][0]["port"], 80, "{w}");
    assert_eq!(w["spec"]["ports"][0]["targetPort"], 8080, "{w}");
    assert_eq!(w["spec"]["selector"]["app"], "web", "{w}");

    k.ok(&[
        "create",
        "secret",
        "generic",
        "pw",
        "--from-literal=password=s3cret",
    ])
    .await;
    let pw = get("secret/pw").await;
    assert_eq!(pw["data"]["password"], "czNjcmV0", "{pw}");

    k.ok(&["create", "serviceaccount", "robot"]).await;
    k.ok(&["create", "role", "reader", "--verb=get", "--resource=pods"])
        .await;
    k.ok(&[
        "create",
        "rolebinding",
        "robot-reads",
        "--role=reader",
        "--serviceaccount=default:robot",
    ])
    .await;
    let rb = get("rolebinding/robot-reads").await;
    assert_eq!(rb["subjects"][0]["name"], "robot", "{rb}");
    assert_eq!(rb["roleRef"]["name"], "reader", "{rb}");
}

/// `kubectl get cs` as upstream answers it: the scheduler and controller
/// manager healthy while their leader-election Leases are held and fresh,
/// the store healthy while it answers, and the deprecation warning.
#[tokio::test]
async fn kubectl_get_componentstatuses() {
    let (_dir, _s, k) = setup().await;
    // This server runs neither the scheduler nor the controller manager.
    let o = k.run(&["get", "cs"], None).await;
    assert!(o.ok, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("v1 ComponentStatus is deprecated in v1.19+"),
        "{}",
        o.stderr
    );
    let row = |out: &str, name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_default()
            .to_owned()
    };
    let header = o.stdout.lines().next().unwrap_or_default().to_owned();
    for col in ["NAME", "STATUS", "MESSAGE", "ERROR"] {
        assert!(header.contains(col), "{header}");
    }
    let words = |r: String| r.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        words(row(&o.stdout, "sqlite-0")),
        ["sqlite-0", "Healthy", "ok"],
        "{}",
        o.stdout
    );
    let sched = row(&o.stdout, "scheduler");
    assert_eq!(words(sched.clone())[1], "Unhealthy", "{}", o.stdout);
    assert!(
        sched.contains("no kube-system/kube-scheduler Lease"),
        "{sched}"
    );

    // A held, fresh Lease: healthy. A stale one: unhealthy, saying so.
    let now = jiff::Timestamp::now();
    let lease = |name: &str, renewed: jiff::Timestamp| {
        format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {name}, namespace: kube-system}}\nspec:\n  holderIdentity: test-holder\n  leaseDurationSeconds: 15\n  renewTime: \"{}\"\n",
            renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        )
    };
    assert!(k.apply(&lease("kube-scheduler", now)).await.ok);
    let old = now - jiff::SignedDuration::from_secs(120);
    assert!(k.apply(&lease("kube-controller-manager", old)).await.ok);
    let out = k.ok(&["get", "componentstatuses"]).await;
    assert_eq!(
        words(row(&out, "scheduler")),
        ["scheduler", "Healthy", "ok"],
        "{out}"
    );
    let cm = row(&out, "controller-manager");
    assert!(
        cm.contains("Unhealthy") && cm.contains("was last renewed 1"),
        "{out}"
    );
    // One by name, and nothing to write.
    let one = k
        .ok(&[
            "get",
            "cs",
            "scheduler",
            "-o",
            "jsonpath={.conditions[0].status}",
        ])
        .await;
    assert_eq!(one, "True");
    let o = k.run(&["delete", "cs", "scheduler"], None).await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains("MethodNotAllowed") || o.stderr.contains("not allowed"),
        "{}",
        o.stderr
    );
    let o = k.run(&["get", "cs", "nope"], None).await;
    assert!(
        o.stderr.contains(r#"componentstatuses "nope" not found"#),
        "{}",
        o.stderr
    );
}

/// Ingresses, IngressClasses and RuntimeClasses are served and validated
/// as upstream's (no Ingress controller runs, so no address is written).
#[tokio::test]
async fn kubectl_ingress_and_runtime_classes() {
    let (_dir, _s, k) = setup().await;
    let o = k
        .apply(
            r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: edge}
spec: {controller: example.com/edge}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec:
  ingressClassName: edge
  tls: [{hosts: [web.example.com]}]
  rules:
  - host: web.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: runc}
handler: runc
"#,
        )
        .await;
    assert!(o.ok, "{}", o.stderr);
    let ing = k.ok(&["get", "ing", "web"]).await;
    let header = ing.lines().next().unwrap_or_default();
    for col in ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"] {
        assert!(header.contains(col), "{ing}");
    }
    let row: Vec<&str> = ing
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["web", "edge", "web.example.com", "80,"], "{ing}");
    assert!(k.ok(&["get", "runtimeclass"]).await.contains("runc"));
    let bad = k
        .apply(
            r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bad, namespace: default}
spec:
  rules:
  - host: 10.0.0.1
    http:
      paths:
      - {path: api, pathType: Exact, backend: {service: {name: web, port: {number: 80}}}}
"#,
        )
        .await;
    assert!(!bad.ok);
    assert!(
        bad.stderr.contains(r#"spec.rules[0].host: Invalid value: "10.0.0.1": must be a DNS name, not an IP address"#)
            && bad.stderr.contains(r#"spec.rules[0].http.paths[0].path: Invalid value: "api": must be an absolute path"#),
        "{}",
        bad.stderr
    );
    let o = k
        .apply("apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: edge}\nspec: {controller: example.com/other}\n")
        .await;
    assert!(
        o.stderr.contains("spec.controller: field is immutable"),
        "{}",
        o.stderr
    );
    assert!(
        k.run(&["get", "ing", "bad"], None)
            .await
            .stderr
            .contains("not found")
    );
}

/// PodTemplates and ControllerRevisions, served and validated.
#[tokio::test]
async fn kubectl_pod_templates_and_controller_revisions() {
    let (_dir, _s, k) = setup().await;
    let o = k
        .apply(
            "apiVersion: v1\nkind: PodTemplate\nmetadata: {name: t, namespace: default}\ntemplate:\n  metadata: {labels: {app: t}}\n  spec:\n    containers: [{name: c, image: busybox}]\n",
        )
        .await;
    assert!(o.ok, "{}", o.stderr);
    let row: Vec<String> = k
        .ok(&["get", "podtemplate", "t"])
        .await
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(row, ["t", "c", "busybox", "app=t"]);
    let o = k
        .apply("apiVersion: v1\nkind: PodTemplate\nmetadata: {name: bad, namespace: default}\ntemplate:\n  spec:\n    containers: []\n")
        .await;
    assert!(
        o.stderr
            .contains("template.spec.containers: Required value"),
        "{}",
        o.stderr
    );
    let rev = |n: i64, data: &str| {
        format!(
            "apiVersion: apps/v1\nkind: ControllerRevision\nmetadata: {{name: r, namespace: default}}\nrevision: {n}\ndata: {data}\n"
        )
    };
    assert!(k.apply(&rev(1, "{a: 1}")).await.ok);
    let o = k.apply(&rev(1, "{a: 2}")).await;
    assert!(
        o.stderr.contains("data: Invalid value") || o.stderr.contains("data: field is immutable"),
        "{}",
        o.stderr
    );
    let o = k.apply(&rev(-1, "{a: 1}")).await;
    assert!(
        o.stderr.contains("must be greater than or equal to 0"),
        "{}",
        o.stderr
    );
}
