//! The node API: the kubelet's HTTPS port (10250 by default).
//!
//! Only the API server talks to it. It serves:
//!
//! - `GET /healthz`;
//! - `GET /containerLogs/{namespace}/{pod}/{container}` with the kubelet's
//!   query options (`follow`, `tailLines`, `timestamps`, `previous`,
//!   `sinceSeconds`/`sinceTime`, `limitBytes`), read from the CRI log file;
//! - `/exec/{namespace}/{pod}/{container}?command=...` and `/attach/...`
//!   (also with a pod UID segment before the container, as the kubelet
//!   accepts): a CRI `Exec`/`Attach` call returns a URL on containerd's
//!   streaming server, and the client's HTTP upgrade request is proxied to
//!   it; after the `101` the bytes are copied both ways, whatever SPDY or
//!   WebSocket subprotocol the two ends agreed on.
//! - `/portForward/{namespace}/{pod}` (also with the pod UID after it): CRI
//!   `PortForward` on the pod's ready sandbox, then the upgrade is proxied
//!   to the runtime the same way (SPDY/3.1 `portforward.k8s.io`);
//! - `/podTunnel/{namespace}/{pod}/{port}` (Kestrel's own, for the API
//!   server's `pods/proxy` and `services/proxy`): an upgrade answered with
//!   `101`, then raw bytes to and from that port of the pod, dialled from the
//!   node's network namespace; only pods running on this node are reached.
//!
//! Authentication is by TLS client certificate only: it must chain to the
//! cluster CA and name [`API_SERVER_CLIENT_CN`]. Anything else gets no TLS
//! session (no or foreign certificate) or `403` (another cluster identity).
//!
//! The serving certificate is self-signed ([`NodeApiTls::load_or_create`]);
//! the API server does not verify it, as upstream's does not without
//! `--kubelet-certificate-authority`. The channel is encrypted and the node
//! authenticates its caller, but the API server does not authenticate the
//! node.
//!
//! Pods are found through CRI labels, the convention of the pod workers:
//! sandboxes and containers carry `io.kubernetes.pod.{name,namespace,uid}`,
//! containers `io.kubernetes.container.name`, and a container's
//! `metadata.attempt` is its restart count.

mod crilog;
mod logs;
mod portforward;
mod stream;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use kestrel_cri::RuntimeClient;
use tokio::net::TcpListener;

pub use crilog::{LineJoiner, LogLine, LogOptions, ParseError, Record, Stream, parse_record};
pub use tls::{API_SERVER_CLIENT_CN, NodeApiTls};

/// The kubelet's default port.
pub const DEFAULT_PORT: u16 = 10250;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the node API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TLS configuration or a credential was refused.
    #[error("node API TLS setup: {0}")]
    Tls(String),
    /// Generating the serving certificate failed.
    #[error("generating the node API serving certificate")]
    Cert(#[source] rcgen::Error),
    /// Reading or writing the serving certificate failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with the node API's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A response body: whole, or streamed.
type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// What each request handler gets.
#[derive(Debug)]
struct Ctx {
    runtime: RuntimeClient,
    /// The address the node API listens on: the node's, where host-network
    /// pods are reached.
    node_ip: Option<std::net::IpAddr>,
}

/// Serve the node API on `listener` until `shutdown` completes. Connections
/// in flight (a `logs -f`, an exec session) are dropped at shutdown.
///
/// `runtime` is the node's CRI runtime client; the agent runs in the node's
/// network namespace, where containerd's streaming server listens on
/// loopback, so this process can reach the URLs `Exec`/`Attach` return.
pub async fn serve(
    listener: TcpListener,
    tls: &NodeApiTls,
    runtime: RuntimeClient,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let acceptor = tls.acceptor()?;
    let node_ip = listener
        .local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    let ctx = Arc::new(Ctx { runtime, node_ip });
    tokio::pin!(shutdown);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "node API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        conns.spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "node API TLS handshake refused");
                    return;
                }
            };
            let caller = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| tls::common_name(c.as_ref()));
            let allowed = caller.as_deref() == Some(API_SERVER_CLIENT_CN);
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let ctx = ctx.clone();
                let caller = caller.clone();
                async move {
                    let resp = if allowed {
                        route(&ctx, req).await
                    } else {
                        tracing::info!(%peer, ?caller, "node API refused a client");
                        text(
                            StatusCode::FORBIDDEN,
                            format!(
                                "Forbidden (user={}, only {API_SERVER_CLIENT_CN} may use the node API)",
                                caller.as_deref().unwrap_or("unknown")
                            ),
                        )
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "node API connection ended with an error");
            }
        });
    }
    conns.abort_all();
    Ok(())
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Healthz,
    Logs(PodContainer),
    Exec(PodContainer),
    Attach(PodContainer),
    PortForward(portforward::PodRef),
    PodTunnel(portforward::PodRef, String),
    NotFound,
}

/// A container of a pod, as named in a node API path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodContainer {
    namespace: String,
    pod: String,
    uid: Option<String>,
    container: String,
}

impl std::fmt::Display for PodContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.pod, self.container)
    }
}

fn parse_route(path: &str) -> Route {
    let segs: Vec<String> = path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    if segs.iter().skip(1).any(String::is_empty) {
        return Route::NotFound;
    }
    let pc = |rest: &[String]| match rest {
        [ns, pod, c] => Some(PodContainer {
            namespace: ns.clone(),
            pod: pod.clone(),
            uid: None,
            container: c.clone(),
        }),
        [ns, pod, uid, c] => Some(PodContainer {
            namespace: ns.clone(),
            pod: pod.clone(),
            uid: Some(uid.clone()),
            container: c.clone(),
        }),
        _ => None,
    };
    match segs.split_first() {
        Some((first, [])) if first == "healthz" => Route::Healthz,
        Some((first, rest)) if first == "containerLogs" && rest.len() == 3 => {
            pc(rest).map_or(Route::NotFound, Route::Logs)
        }
        Some((first, rest)) if first == "exec" => pc(rest).map_or(Route::NotFound, Route::Exec),
        Some((first, rest)) if first == "attach" => pc(rest).map_or(Route::NotFound, Route::Attach),
        Some((first, rest)) if first == "portForward" => match rest {
            [ns, pod] | [ns, pod, _] => Route::PortForward(portforward::PodRef {
                namespace: ns.clone(),
                pod: pod.clone(),
                uid: rest.get(2).cloned(),
            }),
            _ => Route::NotFound,
        },
        Some((first, [ns, pod, port])) if first == "podTunnel" => Route::PodTunnel(
            portforward::PodRef {
                namespace: ns.clone(),
                pod: pod.clone(),
                uid: None,
            },
            port.clone(),
        ),
        _ => Route::NotFound,
    }
}

async fn route(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let r = parse_route(&path);
    tracing::debug!(%method, %path, "node API request");
    match (r, &method) {
        (Route::Healthz, &Method::GET | &Method::HEAD) => text(StatusCode::OK, "ok".into()),
        (Route::Logs(pc), &Method::GET) => logs::serve(ctx, &pc, req.uri().query().unwrap_or(""))
            .await
            .unwrap_or_else(HttpError::into_response),
        (Route::Exec(pc), &Method::GET | &Method::POST) => {
            stream::serve(ctx, stream::Kind::Exec, &pc, req)
                .await
                .unwrap_or_else(HttpError::into_response)
        }
        (Route::Attach(pc), &Method::GET | &Method::POST) => {
            stream::serve(ctx, stream::Kind::Attach, &pc, req)
                .await
                .unwrap_or_else(HttpError::into_response)
        }
        (Route::PortForward(pod), &Method::GET | &Method::POST) => {
            portforward::serve_port_forward(ctx, &pod, req)
                .await
                .unwrap_or_else(HttpError::into_response)
        }
        (Route::PodTunnel(pod, port), &Method::GET) => {
            portforward::serve_tunnel(ctx, &pod, &port, req)
                .await
                .unwrap_or_else(HttpError::into_response)
        }
        (Route::NotFound, _) => text(StatusCode::NOT_FOUND, "404 page not found".into()),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} is not allowed on {path}"),
        ),
    }
}

/// An error answered as plain text with a status code, as the kubelet does.
#[derive(Debug)]
pub(crate) struct HttpError {
    code: StatusCode,
    message: String,
}

impl HttpError {
    fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn runtime(what: &str, e: &tonic::Status) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what}: {}", e.message()),
        )
    }

    fn into_response(self) -> Response<Body> {
        text(self.code, self.message)
    }
}

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc(ns: &str, pod: &str, uid: Option<&str>, c: &str) -> PodContainer {
        PodContainer {
            namespace: ns.into(),
            pod: pod.into(),
            uid: uid.map(Into::into),
            container: c.into(),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(parse_route("/healthz"), Route::Healthz);
        assert_eq!(
            parse_route("/containerLogs/default/web/app"),
            Route::Logs(pc("default", "web", None, "app"))
        );
        assert_eq!(
            parse_route("/exec/default/web/app"),
            Route::Exec(pc("default", "web", None, "app"))
        );
        assert_eq!(
            parse_route("/attach/default/web/u-1/app"),
            Route::Attach(pc("default", "web", Some("u-1"), "app"))
        );
        assert_eq!(
            parse_route("/exec/default/we%20b/app"),
            Route::Exec(pc("default", "we b", None, "app"))
        );
        assert_eq!(
            parse_route("/portForward/default/web"),
            Route::PortForward(portforward::PodRef {
                namespace: "default".into(),
                pod: "web".into(),
                uid: None
            })
        );
        assert_eq!(
            parse_route("/podTunnel/default/web/8080"),
            Route::PodTunnel(
                portforward::PodRef {
                    namespace: "default".into(),
                    pod: "web".into(),
                    uid: None
                },
                "8080".into()
            )
        );
        for bad in [
            "/",
            "/portForward/default",
            "/podTunnel/default/web",
            "/containerLogs/default/web",
            "/containerLogs/default/web/u/app",
            "/containerLogs/default//app",
            "/exec/a",
            "/exec/a/b/c/d/e",
            "/healthz/x",
            "/metrics",
        ] {
            assert_eq!(parse_route(bad), Route::NotFound, "{bad}");
        }
    }
}
