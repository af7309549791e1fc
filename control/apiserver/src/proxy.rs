//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward`: proxied to
//! the node API of the pod's node, as upstream proxies them to the kubelet.
//! The `proxy` subresources of pods, Services and nodes are in [`resource`].
//!
//! The pod names its node; the Node names its address (`InternalIP`, then
//! `ExternalIP`, then `Hostname`) and port
//! (`status.daemonEndpoints.kubeletEndpoint.Port`, 10250 when unset). The API
//! server dials it over TLS with its `kube-apiserver-kubelet-client`
//! certificate and does not verify the node's serving certificate: nodes
//! generate theirs self-signed, and upstream skips the check too unless
//! `--kubelet-certificate-authority` is set.
//!
//! Logs stream the node's body through. Exec, attach and port-forward forward the client's
//! upgrade request (Connection, Upgrade, `Sec-WebSocket-*`,
//! `X-Stream-Protocol-Version`) and answer with the node's response; after a
//! `101` the two connections are spliced, so SPDY and WebSocket subprotocols
//! are negotiated end to end between the client and the runtime.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use kestrel_api::registry;
use kestrel_api::{ApiError, FieldError, ObjectRef};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use serde_json::Value;

use crate::state::AppState;

mod resource;

/// The kubelet's default port.
const DEFAULT_KUBELET_PORT: u16 = 10250;
/// How long dialling a node and its TLS handshake may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A proxied pod subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sub {
    Log,
    Exec,
    Attach,
    PortForward,
}

/// `/api/v1/namespaces/{ns}/pods/{name}/{log|exec|attach}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    namespace: String,
    pod: String,
    sub: Sub,
}

/// A request this module serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `pods/{log,exec,attach,portforward}`.
    Pod(Target),
    /// `{pods,services,nodes}/proxy`.
    Proxy(resource::ProxyTarget),
}

/// The proxied subresource a (still escaped) path names, if any.
pub(crate) fn match_path(path: &str) -> Option<Route> {
    if let Some(t) = resource::match_path(path) {
        return Some(Route::Proxy(t));
    }
    match_pod_path(path).map(Route::Pod)
}

fn match_pod_path(path: &str) -> Option<Target> {
    let segs = crate::state::path_segments(path.trim_end_matches('/'));
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", pod, sub] if !ns.is_empty() && !pod.is_empty() => {
            let sub = match *sub {
                "log" => Sub::Log,
                "exec" => Sub::Exec,
                "attach" => Sub::Attach,
                "portforward" => Sub::PortForward,
                _ => return None,
            };
            Some(Target {
                namespace: (*ns).to_owned(),
                pod: (*pod).to_owned(),
                sub,
            })
        }
        _ => None,
    }
}

/// Query parameters in order, repeated ones kept (`command`).
fn query_pairs(parts: &Parts) -> Vec<(String, String)> {
    parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn last<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter()
        .rev()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

/// Go's `strconv.ParseBool`, as the query decoder uses it.
fn flag(q: &[(String, String)], k: &str) -> Result<bool, ApiError> {
    match last(q, k) {
        None => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False" | "") => Ok(false),
        Some(v) => Err(ApiError::BadRequest(format!(
            "{k}: invalid boolean value {v:?}"
        ))),
    }
}

/// Serve a proxied subresource. `parts` still holds the client's upgrade;
/// only `proxy` reads the body.
pub(crate) async fn serve(
    state: &Arc<AppState>,
    route: &Route,
    parts: &mut Parts,
    body: hyper::body::Incoming,
) -> Result<Response<Body>, ApiError> {
    match route {
        Route::Proxy(t) => resource::serve(state, t, parts, body).await,
        Route::Pod(t) => {
            drop(body);
            serve_pod(state, t, parts).await
        }
    }
}

async fn serve_pod(
    state: &Arc<AppState>,
    target: &Target,
    parts: &mut Parts,
) -> Result<Response<Body>, ApiError> {
    let allowed = match target.sub {
        Sub::Log => parts.method == Method::GET,
        Sub::Exec | Sub::Attach | Sub::PortForward => {
            matches!(parts.method, Method::GET | Method::POST)
        }
    };
    if !allowed {
        return Err(ApiError::MethodNotAllowed);
    }
    let pods = registry::lookup("", "v1", "pods").ok_or(ApiError::RouteNotFound)?;
    let pod = state
        .cache
        .get(&pods.key(Some(&target.namespace), &target.pod))
        .ok_or_else(|| ApiError::NotFound(ObjectRef::new("", "pods", &target.pod)))?;
    let pod = pod.value.clone();
    let q = query_pairs(parts);
    let container = if target.sub == Sub::PortForward {
        String::new()
    } else {
        pick_container(&pod, &target.pod, last(&q, "container").unwrap_or(""))?
    };
    let (node_path, node_query) = match target.sub {
        Sub::PortForward => (
            format!(
                "/portForward/{}/{}",
                seg(&target.namespace),
                seg(&target.pod)
            ),
            port_forward_query(&q)?,
        ),
        Sub::Log => (
            format!(
                "/containerLogs/{}/{}/{}",
                seg(&target.namespace),
                seg(&target.pod),
                seg(&container)
            ),
            log_query(&q, &target.pod)?,
        ),
        Sub::Exec | Sub::Attach => {
            let mut out = form_urlencoded::Serializer::new(String::new());
            if target.sub == Sub::Exec {
                for (k, v) in &q {
                    if k == "command" {
                        out.append_pair("command", v);
                    }
                }
            }
            // The kubelet's parameter names, as upstream's API server sends them.
            for (api, kubelet) in [
                ("stdin", "input"),
                ("stdout", "output"),
                ("stderr", "error"),
                ("tty", "tty"),
            ] {
                if flag(&q, api)? {
                    out.append_pair(kubelet, "1");
                }
            }
            let verb = if target.sub == Sub::Exec {
                "exec"
            } else {
                "attach"
            };
            (
                format!(
                    "/{verb}/{}/{}/{}",
                    seg(&target.namespace),
                    seg(&target.pod),
                    seg(&container)
                ),
                out.finish(),
            )
        }
    };
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest(format!("pod {} does not have a host assigned", target.pod))
        })?;
    let (ip, port) = node_endpoint(state, node_name)?;
    let uri = if node_query.is_empty() {
        node_path
    } else {
        format!("{node_path}?{node_query}")
    };
    tracing::debug!(node = node_name, %ip, port, %uri, "proxying to the node API");
    let mut sender = dial::<Empty<Bytes>>(state, node_name, ip, port).await?;
    let mut req = Request::builder()
        .method(if target.sub == Sub::Log {
            Method::GET
        } else {
            parts.method.clone()
        })
        .uri(&uri)
        .header(header::HOST, host_port(ip, port));
    if target.sub != Sub::Log {
        for (name, value) in &parts.headers {
            if forwarded_on_upgrade(name) {
                req = req.header(name, value);
            }
        }
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::Internal(format!("building the node request: {e}")))?;
    let resp = sender.send_request(req).await.map_err(|e| {
        ApiError::ServiceUnavailable(format!(
            "error talking to node {node_name} ({}): {e}",
            host_port(ip, port)
        ))
    })?;
    match target.sub {
        Sub::Log => log_response(resp).await,
        Sub::Exec | Sub::Attach | Sub::PortForward => upgrade_response(parts, resp).await,
    }
}

/// A path segment, escaped.
fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Request headers an upgrade needs end to end.
fn forwarded_on_upgrade(name: &header::HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        *name,
        header::CONNECTION | header::UPGRADE | header::ORIGIN | header::USER_AGENT
    ) || n.starts_with("sec-websocket-")
        || n.starts_with("x-stream-protocol-version")
}

/// The node query of a port forward: upstream's `PodPortForwardOptions`,
/// each `port` a number from 1 to 65535, passed on.
fn port_forward_query(q: &[(String, String)]) -> Result<String, ApiError> {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in q {
        if k != "port" {
            continue;
        }
        match v.parse::<u16>() {
            Ok(p) if p != 0 => {
                out.append_pair("port", &p.to_string());
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "ports: invalid integer value {v:?}"
                )));
            }
        }
    }
    Ok(out.finish())
}

/// The container a request means: the named one, which must exist, or the
/// only one. Upstream's wording.
fn pick_container(pod: &Value, pod_name: &str, asked: &str) -> Result<String, ApiError> {
    let names = |list: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let main = names("containers");
    let all: Vec<String> = names("initContainers")
        .into_iter()
        .chain(main.iter().cloned())
        .chain(names("ephemeralContainers"))
        .collect();
    if !asked.is_empty() {
        return if all.iter().any(|n| n == asked) {
            Ok(asked.to_owned())
        } else {
            Err(ApiError::BadRequest(format!(
                "container {asked} is not valid for pod {pod_name}"
            )))
        };
    }
    match main.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ApiError::BadRequest(format!(
            "pod {pod_name} does not have a container"
        ))),
        _ => Err(ApiError::BadRequest(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            all.join(" ")
        ))),
    }
}

/// The kubelet query of a log request: upstream's `PodLogOptions` checks,
/// then the options passed on.
fn log_query(q: &[(String, String)], pod: &str) -> Result<String, ApiError> {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for k in ["follow", "timestamps", "previous"] {
        if flag(q, k)? {
            out.append_pair(k, "true");
        }
    }
    let mut causes = Vec::new();
    for (k, min) in [("tailLines", 0), ("limitBytes", 1), ("sinceSeconds", 1)] {
        let Some(v) = last(q, k) else { continue };
        let n: i64 = v
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("{k}: invalid integer value {v:?}")))?;
        if n < min {
            let why = if min == 0 {
                "must be greater than or equal to 0"
            } else {
                "must be greater than 0"
            };
            causes.push(FieldError {
                reason: "FieldValueInvalid",
                field: k.to_owned(),
                detail: format!("Invalid value: {n}: {why}"),
            });
        } else {
            out.append_pair(k, &n.to_string());
        }
    }
    if let Some(t) = last(q, "sinceTime") {
        if t.parse::<jiff::Timestamp>().is_err() {
            return Err(ApiError::BadRequest(format!(
                "sinceTime: {t:?} is not an RFC 3339 time"
            )));
        }
        if last(q, "sinceSeconds").is_some() {
            causes.push(FieldError::forbidden(
                "",
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            ));
        }
        out.append_pair("sinceTime", t);
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("", "PodLogOptions", pod, causes));
    }
    Ok(out.finish())
}

/// A node's node-API address and port.
fn node_endpoint(state: &AppState, node: &str) -> Result<(IpAddr, u16), ApiError> {
    let nodes = registry::lookup("", "v1", "nodes").ok_or(ApiError::RouteNotFound)?;
    let obj = state
        .cache
        .get(&nodes.key(None, node))
        .ok_or_else(|| ApiError::NotFound(ObjectRef::new("", "nodes", node)))?;
    let addrs = obj
        .value
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ip = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|want| {
            addrs.iter().find_map(|a| {
                (a.get("type").and_then(Value::as_str) == Some(want))
                    .then(|| a.get("address").and_then(Value::as_str))
                    .flatten()
                    .and_then(|s| s.parse::<IpAddr>().ok())
            })
        })
        .ok_or_else(|| {
            ApiError::ServiceUnavailable(format!("node {node} reports no usable address"))
        })?;
    let port = obj
        .value
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok((ip, port))
}

fn host_port(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// Open an HTTP/1.1 connection to a node API over TLS with the kubelet
/// client certificate.
async fn dial<B>(
    state: &AppState,
    node: &str,
    ip: IpAddr,
    port: u16,
) -> Result<hyper::client::conn::http1::SendRequest<B>, ApiError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = connect_node(state, node, ip, port).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| {
            ApiError::ServiceUnavailable(format!(
                "talking to node {node} ({}): {e}",
                host_port(ip, port)
            ))
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "node API connection ended with an error");
        }
    });
    Ok(sender)
}

/// A TLS connection to a node API with the kubelet client certificate.
async fn connect_node(
    state: &AppState,
    node: &str,
    ip: IpAddr,
    port: u16,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ApiError> {
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        ApiError::ServiceUnavailable(format!("{what} node {node} ({}): {e}", host_port(ip, port)))
    };
    let connector = tokio_rustls::TlsConnector::from(client_config(state)?);
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(|e| unavailable("dialing", &e))?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(ServerName::IpAddress(ip.into()), tcp)
            .await
            .map_err(|e| unavailable("TLS handshake with", &e))
    };
    tokio::time::timeout(DIAL_TIMEOUT, connect)
        .await
        .map_err(|_| unavailable("timed out dialing", &"no answer"))?
}

fn client_config(state: &AppState) -> Result<Arc<rustls::ClientConfig>, ApiError> {
    node_api_client_config(Some((
        &state.pki.kubelet_client_cert_pem,
        &state.pki.kubelet_client_key_pem,
    )))
    .map_err(|e| ApiError::Internal(format!("kubelet client TLS: {e}")))
}

/// The TLS client configuration the API server dials node APIs with:
/// HTTP/1.1, the given client certificate and key (PEM; `None` for none),
/// and no verification of the node's serving certificate (see the module
/// docs). Public so that node API tests can knock with other identities.
pub fn node_api_client_config(
    identity: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, crate::Error> {
    let err = |e: &dyn std::fmt::Display| crate::Error::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UnverifiedNode(provider)));
    let mut cfg = match identity {
        Some((cert, key)) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| err(&e))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| err(&e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| err(&e))?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts any node serving certificate (see the module docs), while still
/// checking the handshake signatures, so the session key is bound to the
/// certificate the node showed.
#[derive(Debug)]
struct UnverifiedNode(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for UnverifiedNode {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The node's error, as a Status. Its text is the message, as kubectl shows
/// it (`container "app" in pod "web" is waiting to start: ...`).
async fn node_error(resp: Response<hyper::body::Incoming>) -> ApiError {
    let code = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut text = String::from_utf8_lossy(&body[..body.len().min(4096)])
        .trim()
        .to_owned();
    if text.is_empty() {
        let _ = write!(text, "the node answered {code}");
    }
    match code {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => ApiError::BadRequest(text),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError::Forbidden(text),
        StatusCode::NOT_FOUND => ApiError::BadRequest(text),
        _ => ApiError::Internal(text),
    }
}

async fn log_response(resp: Response<hyper::body::Incoming>) -> Result<Response<Body>, ApiError> {
    if resp.status() != StatusCode::OK {
        return Err(node_error(resp).await);
    }
    let mut out = Response::new(Body::new(resp.into_body()));
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    Ok(out)
}

/// Answer an exec or attach with the node's response; after a `101`, splice
/// the client's connection with the node's.
async fn upgrade_response(
    parts: &mut Parts,
    resp: Response<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // A refused protocol is the client's cue to fall back (kubectl tries
        // WebSocket, then SPDY): pass the node's answer through unchanged.
        let (p, body) = resp.into_parts();
        return Ok(Response::from_parts(p, Body::new(body)));
    }
    splice(parts, resp)
}

/// After a backend's `101`: answer the client with it, and copy bytes both
/// ways between the client's upgraded connection and the backend's.
pub(crate) fn splice(
    parts: &mut Parts,
    mut resp: Response<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let Some(client) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(ApiError::BadRequest("Upgrade request required".to_owned()));
    };
    let backend = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "stream upgrade failed");
                return;
            }
        };
        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
        match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            Ok((up, down)) => tracing::debug!(up, down, "stream ended"),
            Err(e) => tracing::debug!(error = %e, "stream ended with an error"),
        }
    });
    let (p, _) = resp.into_parts();
    Ok(Response::from_parts(p, Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        assert_eq!(
            match_path("/api/v1/namespaces/default/pods/web/log"),
            Some(Route::Pod(Target {
                namespace: "default".into(),
                pod: "web".into(),
                sub: Sub::Log
            }))
        );
        assert_eq!(
            match_path("/api/v1/namespaces/default/pods/web/portforward"),
            Some(Route::Pod(Target {
                namespace: "default".into(),
                pod: "web".into(),
                sub: Sub::PortForward
            }))
        );
        assert!(matches!(
            match_path("/api/v1/namespaces/default/pods/web:80/proxy/x"),
            Some(Route::Proxy(_))
        ));
        assert_eq!(
            port_forward_query(&[("port".into(), "80".into()), ("x".into(), "1".into())])
                .expect("ok"),
            "port=80"
        );
        assert!(port_forward_query(&[("port".into(), "0".into())]).is_err());
        assert!(match_path("/api/v1/namespaces/default/pods/web/exec/").is_some());
        assert!(match_path("/api/v1/namespaces/default/pods/web/status").is_none());
        assert!(match_path("/api/v1/namespaces/default/pods/web").is_none());
        assert!(match_path("/api/v1/namespaces//pods/web/log").is_none());
    }

    #[test]
    fn containers_are_picked_as_upstream() {
        let one = json!({"spec": {"containers": [{"name": "app"}]}});
        assert_eq!(pick_container(&one, "p", "").expect("only"), "app");
        let two = json!({"spec": {
            "initContainers": [{"name": "init"}],
            "containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(pick_container(&two, "p", "init").expect("init"), "init");
        let e = pick_container(&two, "p", "").expect_err("ambiguous");
        assert_eq!(
            e.to_json()["message"],
            "a container name must be specified for pod p, choose one of: [init a b]"
        );
        let e = pick_container(&one, "p", "x").expect_err("unknown");
        assert_eq!(e.code(), 400);
        assert_eq!(e.to_json()["message"], "container x is not valid for pod p");
    }

    #[test]
    fn log_options_are_checked() {
        let q = |s: &str| -> Vec<(String, String)> {
            form_urlencoded::parse(s.as_bytes()).into_owned().collect()
        };
        assert_eq!(
            log_query(&q("follow=true&tailLines=2&container=x&timestamps=1"), "p").expect("ok"),
            "follow=true&timestamps=true&tailLines=2"
        );
        assert_eq!(
            log_query(&q("tailLines=-1"), "p").expect_err("neg").code(),
            422
        );
        assert_eq!(
            log_query(&q("limitBytes=abc"), "p")
                .expect_err("nan")
                .code(),
            400
        );
        assert_eq!(
            log_query(&q("sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z"), "p")
                .expect_err("both")
                .code(),
            422
        );
    }
}
