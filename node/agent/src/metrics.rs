//! The agent's `/metrics` (Prometheus text format) and `/healthz`, over
//! plain HTTP on a local address, as kube-proxy serves its own (by default
//! 127.0.0.1:10249, inside the node's network namespace). Each scrape reads
//! the dataplane's pinned maps afresh.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::observe::Names;

/// kube-proxy's metrics port.
pub const DEFAULT_PORT: u16 = 10249;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics` for the dataplane pinned in `pin_dir` on `listener`
/// until the task is dropped; `names` names policies in the labels.
pub async fn serve(
    listener: TcpListener,
    pin_dir: PathBuf,
    names: Arc<dyn Names>,
    dns: Option<Arc<kestrel_dns::metrics::Metrics>>,
) {
    let pin_dir = Arc::new(pin_dir);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let tcp = tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let pin_dir = pin_dir.clone();
        let names = names.clone();
        let dns = dns.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let pin_dir = pin_dir.clone();
                let names = names.clone();
                let dns = dns.clone();
                async move { Ok::<_, Infallible>(respond(&req, &pin_dir, names, dns).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            if let Err(e) = http.serve_connection(TokioIo::new(tcp), svc).await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

async fn respond(
    req: &Request<Incoming>,
    pin_dir: &Arc<PathBuf>,
    names: Arc<dyn Names>,
    dns: Option<Arc<kestrel_dns::metrics::Metrics>>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/metrics" => {
            let dir = pin_dir.clone();
            match tokio::task::spawn_blocking(move || render(&dir, &*names)).await {
                Ok(Ok(mut body)) => {
                    if let Some(dns) = &dns {
                        dns.render(&mut body);
                    }
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(
                            "text/plain; version=0.0.4; charset=utf-8",
                        ),
                    );
                    r
                }
                Ok(Err(e)) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading the dataplane maps: {e:#}\n"),
                ),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics\n".into()),
    }
}

fn render(pin_dir: &Path, names: &dyn Names) -> anyhow::Result<String> {
    Ok(kestrel_dataplane::metrics::render(pin_dir, &|id| {
        names.policy(id)
    })?)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
