//! The real kubectl, driven from async tests: one kubeconfig, a private
//! HOME (so each user's discovery cache is its own), a 60 s bound per call.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

/// What one kubectl run printed.
#[derive(Debug)]
pub struct Out {
    /// Exit status 0.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// kubectl with one kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    /// `KUBECONFIG`.
    pub kubeconfig: PathBuf,
    /// `HOME`.
    pub home: PathBuf,
}

impl Kubectl {
    /// kubectl for `kubeconfig`, with a HOME of its own under `dir`.
    pub fn new(dir: &Path, kubeconfig: PathBuf) -> Self {
        let home = dir.join(format!(
            "home-{}",
            kubeconfig
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("kubectl")
        ));
        std::fs::create_dir_all(&home).expect("kubectl HOME");
        Self { kubeconfig, home }
    }

    /// Run with `stdin` and extra environment.
    pub async fn run_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Out {
        let mut cmd = tokio::process::Command::new(crate::kubectl_path());
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
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

    /// Run.
    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        self.run_with(args, stdin, &[]).await
    }

    /// Run and require success; stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        self.ok_in(args, None).await
    }

    /// Run with `stdin` and require success; stdout.
    pub async fn ok_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let o = self.run(args, stdin).await;
        assert!(
            o.ok,
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        o.stdout
    }

    /// `kubectl apply -f -` of `yaml`.
    pub async fn apply(&self, yaml: &str) -> Out {
        self.run(&["apply", "-f", "-"], Some(yaml)).await
    }

    /// Run and require failure; stderr.
    pub async fn refused(&self, args: &[&str]) -> String {
        let o = self.run(args, None).await;
        assert!(
            !o.ok,
            "kubectl {args:?} should have been refused:\n{}",
            o.stdout
        );
        o.stderr
    }
}
