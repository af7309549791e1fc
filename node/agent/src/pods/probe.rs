//! Liveness, readiness and startup probes: exec (CRI ExecSync), httpGet,
//! tcpSocket and grpc (grpc.health.v1), with upstream's thresholds,
//! periods and timeouts. One task per probe per running container; a change
//! of result wakes the pod worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kestrel_cri::{RuntimeClient, v1};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Notify;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Restart the container when it fails.
    Liveness,
    /// Take the pod out of Service endpoints when it fails.
    Readiness,
    /// Hold the other probes until it succeeds.
    Startup,
}

impl Kind {
    /// The word upstream uses in events.
    pub fn name(self) -> &'static str {
        match self {
            Self::Liveness => "Liveness",
            Self::Readiness => "Readiness",
            Self::Startup => "Startup",
        }
    }
}

/// What the probes of one container say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Results {
    /// The liveness probe crossed its failure threshold.
    pub liveness_failed: bool,
    /// The readiness probe passes.
    pub ready: bool,
    /// The startup probe has passed.
    pub started: bool,
}

/// Results by CRI container id.
pub type ResultMap = Arc<Mutex<HashMap<String, Results>>>;

/// What a probe runs against.
#[derive(Clone)]
pub struct Target {
    /// CRI client (for exec probes).
    pub cri: RuntimeClient,
    /// The container.
    pub container_id: String,
    /// Where network probes go.
    pub pod_ip: String,
    /// The container's ports, for named probe ports.
    pub ports: Vec<ContainerPort>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("container_id", &self.container_id)
            .finish_non_exhaustive()
    }
}

fn port(p: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => ports
            .iter()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("no port named {name:?}")),
    }
}

fn addr(host: Option<&str>, ip: &str, port: u16) -> Result<SocketAddr, String> {
    let host = host.filter(|h| !h.is_empty()).unwrap_or(ip);
    format!("{host}:{port}")
        .parse()
        .map_err(|_| format!("cannot probe host {host:?}"))
}

/// Run a probe once. `Err` carries the failure message events show.
pub async fn run_once(probe: &Probe, t: &Target) -> Result<(), String> {
    let timeout =
        Duration::from_secs(u64::try_from(probe.timeout_seconds.unwrap_or(1).max(1)).unwrap_or(1));
    if let Some(e) = &probe.exec {
        let mut cri = t.cri.clone();
        let r = cri
            .exec_sync(v1::ExecSyncRequest {
                container_id: t.container_id.clone(),
                cmd: e.command.clone().unwrap_or_default(),
                timeout: i64::try_from(timeout.as_secs()).unwrap_or(1),
            })
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner();
        return if r.exit_code == 0 {
            Ok(())
        } else {
            // As upstream: the command's own output is the message.
            let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
            out.push_str(&String::from_utf8_lossy(&r.stderr));
            let out = out.trim();
            if out.is_empty() {
                Err(format!(
                    "command {:?} exited with {}",
                    e.command.clone().unwrap_or_default(),
                    r.exit_code
                ))
            } else {
                Err(out.to_owned())
            }
        };
    }
    let fut = async {
        if let Some(h) = &probe.http_get {
            let p = port(&h.port, &t.ports)?;
            let a = addr(h.host.as_deref(), &t.pod_ip, p)?;
            return http_get(
                a,
                h.path.as_deref().unwrap_or("/"),
                h.http_headers.as_deref().unwrap_or_default(),
            )
            .await;
        }
        if let Some(s) = &probe.tcp_socket {
            let p = port(&s.port, &t.ports)?;
            let a = addr(s.host.as_deref(), &t.pod_ip, p)?;
            return tokio::net::TcpStream::connect(a)
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {a}: {e}"));
        }
        if let Some(g) = &probe.grpc {
            let p = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
            let a = addr(None, &t.pod_ip, p)?;
            return grpc_check(a, g.service.clone().unwrap_or_default()).await;
        }
        Err("probe has no handler".to_owned())
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs())),
    }
}

async fn http_get(
    a: SocketAddr,
    path: &str,
    headers: &[k8s_openapi::api::core::v1::HTTPHeader],
) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(a)
        .await
        .map_err(|e| format!("Get \"http://{a}{path}\": dial tcp {a}: {e}"))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {a}\r\nUser-Agent: kube-probe/1.35\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for h in headers {
        if h.name.contains(['\r', '\n']) || h.value.contains(['\r', '\n']) {
            return Err("invalid probe header".into());
        }
        req.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"http://{a}{path}\": malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

async fn grpc_check(a: SocketAddr, service: String) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{a}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("failed to connect service {a:?}: {e}"))?;
    let r = HealthClient::new(ch)
        .check(HealthCheckRequest { service })
        .await
        .map_err(|s| format!("health rpc failed: {}", s.message()))?
        .into_inner();
    if r.status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!(
            "service unhealthy (responded with {:?})",
            ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown)
        ))
    }
}

/// A failure the worker turns into an Unhealthy event.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The container id.
    pub container_id: String,
    /// Which probe.
    pub kind: Kind,
    /// What it said.
    pub message: String,
}

/// Run `probe` against `t` until the task is aborted, publishing results
/// into `results` and waking `wake` when the outcome changes.
pub fn spawn(
    kind: Kind,
    probe: Probe,
    t: Target,
    results: ResultMap,
    failures: tokio::sync::mpsc::UnboundedSender<Failure>,
    wake: Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let secs = |v: Option<i32>, d: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(d).max(0)).unwrap_or(0))
        };
        let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
        let success_needed = probe.success_threshold.unwrap_or(1).max(1);
        let failure_needed = probe.failure_threshold.unwrap_or(3).max(1);
        tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
        let (mut ok_run, mut fail_run) = (0, 0);
        loop {
            match run_once(&probe, &t).await {
                Ok(()) => {
                    ok_run += 1;
                    fail_run = 0;
                }
                Err(message) => {
                    fail_run += 1;
                    ok_run = 0;
                    let _ = failures.send(Failure {
                        container_id: t.container_id.clone(),
                        kind,
                        message,
                    });
                }
            }
            let changed = {
                let mut map = results.lock().unwrap_or_else(|p| p.into_inner());
                let r = map.entry(t.container_id.clone()).or_default();
                let before = *r;
                match kind {
                    Kind::Liveness if fail_run >= failure_needed => r.liveness_failed = true,
                    Kind::Readiness if ok_run >= success_needed => r.ready = true,
                    Kind::Readiness if fail_run >= failure_needed => r.ready = false,
                    Kind::Startup if ok_run >= 1 => r.started = true,
                    Kind::Startup if fail_run >= failure_needed => r.liveness_failed = true,
                    _ => {}
                }
                *r != before
            };
            if changed {
                wake.notify_one();
            }
            if kind == Kind::Startup && ok_run >= 1 {
                return;
            }
            if kind == Kind::Liveness && fail_run >= failure_needed {
                // The worker restarts the container; a new task probes the next one.
                return;
            }
            tokio::time::sleep(period).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ports_resolve() {
        let ports = vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            ..Default::default()
        }];
        assert_eq!(port(&IntOrString::String("http".into()), &ports), Ok(8080));
        assert_eq!(port(&IntOrString::Int(81), &ports), Ok(81));
        assert!(port(&IntOrString::String("nope".into()), &ports).is_err());
        assert!(port(&IntOrString::Int(70000), &ports).is_err());
    }

    #[tokio::test]
    async fn http_and_tcp_probes_see_real_servers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let a = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let code = if req.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        assert_eq!(http_get(a, "/ok", &[]).await, Ok(()));
        let bad = http_get(a, "/bad", &[]).await;
        assert_eq!(bad, Err("HTTP probe failed with statuscode: 503".into()));
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let gone = closed.local_addr().expect("addr");
        drop(closed);
        assert!(http_get(gone, "/", &[]).await.is_err());
    }
}
