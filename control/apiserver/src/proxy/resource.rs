//! `pods/proxy`, `services/proxy` and `nodes/proxy`: HTTP (and upgrades,
//! e.g. WebSocket) proxied to a pod, a Service's ready endpoint or a node,
//! as upstream's `ProxyREST`.
//!
//! The name segment is upstream's `[scheme:]name[:port]` (`SplitSchemeNamePort`,
//! scheme `http` or `https`); everything after `/proxy` is the path sent on,
//! with the query. A pod without a port is reached on its first declared
//! container port (none: 80, or 443 for `https`); a Service port is picked by
//! name or number and a ready endpoint of it at random, as upstream's
//! `ResourceLocation`, which also wants the endpoint's target to be a pod
//! holding that IP.
//!
//! The API server runs outside the pods' network (under `kestrel up` nodes
//! are network namespaces), so a pod is reached through its node's agent:
//! an upgrade to the node API's `/podTunnel/{ns}/{pod}/{port}` yields a raw
//! TCP stream to the pod, and the request goes over it (TLS inside, not
//! verified, for `https`, like upstream's proxy transport). A node is the
//! node API itself on the kubelet port (with the kubelet client
//! certificate), else the node's address and the asked port.
//!
//! Hop-by-hop headers, `Authorization` and `Impersonate-*` stay behind;
//! methods, the rest of the headers, bodies and streamed responses go
//! through. An upgrade's `101` splices the client with the backend.
//! Upstream also rewrites links in proxied HTML and `Location` headers;
//! Kestrel does not.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{HeaderMap, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use kestrel_api::registry;
use kestrel_api::{ApiError, ObjectRef};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::state::AppState;

/// What is proxied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Pod,
    Service,
    Node,
}

/// `/api/v1/namespaces/{ns}/{pods|services}/{id}/proxy[/{path}]` or
/// `/api/v1/nodes/{id}/proxy[/{path}]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxyTarget {
    pub(crate) kind: Kind,
    pub(crate) namespace: String,
    /// `[scheme:]name[:port]`, decoded.
    pub(crate) id: String,
    /// The path sent on, still escaped as the client sent it; starts with `/`.
    pub(crate) rest: String,
}

/// The proxy subresource a raw (still escaped) path names, if any.
pub(crate) fn match_path(raw: &str) -> Option<ProxyTarget> {
    let segs: Vec<&str> = raw.split('/').skip(1).collect();
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (kind, namespace, id, after) = match segs.as_slice() {
        [
            "api",
            "v1",
            "namespaces",
            ns,
            res @ ("pods" | "services"),
            id,
            "proxy",
            ..,
        ] => (
            if *res == "pods" {
                Kind::Pod
            } else {
                Kind::Service
            },
            dec(ns),
            dec(id),
            7,
        ),
        ["api", "v1", "nodes", id, "proxy", ..] => (Kind::Node, String::new(), dec(id), 5),
        _ => return None,
    };
    if id.is_empty() || (kind != Kind::Node && namespace.is_empty()) {
        return None;
    }
    let rest = format!("/{}", segs[after..].join("/"));
    Some(ProxyTarget {
        kind,
        namespace,
        id,
        rest,
    })
}

/// Upstream's `SplitSchemeNamePort`: `name`, `name:port` or
/// `scheme:name:port`, scheme empty, `http` or `https`.
fn split_scheme_name_port(id: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => ("", *name, ""),
        [name, port] => ("", *name, *port),
        [scheme, name, port] => (*scheme, *name, *port),
        _ => return None,
    };
    (!name.is_empty() && matches!(scheme, "" | "http" | "https")).then_some((scheme, name, port))
}

/// Where a proxied request is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Upstream {
    /// A pod's port, through the tunnel of its node's agent.
    Pod {
        node: String,
        namespace: String,
        pod: String,
        ip: String,
        port: u16,
        https: bool,
    },
    /// The node API itself.
    NodeApi { node: String },
    /// Another port of a node's address, dialled from the API server.
    NodeAddr {
        node: String,
        port: u16,
        https: bool,
    },
}

impl Upstream {
    fn https(&self) -> bool {
        match self {
            Self::Pod { https, .. } | Self::NodeAddr { https, .. } => *https,
            Self::NodeApi { .. } => true,
        }
    }
}

fn get(
    state: &AppState,
    resource: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Arc<Value>, ApiError> {
    let def = registry::lookup("", "v1", resource).ok_or(ApiError::RouteNotFound)?;
    state
        .cache
        .get(&def.key(ns, name))
        .map(|e| e.value.clone())
        .ok_or_else(|| ApiError::NotFound(ObjectRef::new("", resource, name)))
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn pod_ips(pod: &Value) -> Vec<&str> {
    let mut ips: Vec<&str> = pod
        .pointer("/status/podIPs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| i.get("ip").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let ip = str_at(pod, "/status/podIP");
    if ips.is_empty() && !ip.is_empty() {
        ips.push(ip);
    }
    ips
}

/// A pod's container port by number or name.
fn pod_port(pod: &Value, name: &str, port: &str, https: bool) -> Result<u16, ApiError> {
    let ports: Vec<&Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("ports").and_then(Value::as_array))
                .flatten()
                .collect()
        })
        .unwrap_or_default();
    let number = |p: &Value| {
        p.get("containerPort")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
    };
    if port.is_empty() {
        // The first declared port, else the scheme's.
        return Ok(ports
            .first()
            .and_then(|p| number(p))
            .unwrap_or(if https { 443 } else { 80 }));
    }
    if let Ok(n) = port.parse::<u16>() {
        return Ok(n);
    }
    ports
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(port))
        .and_then(|p| number(p))
        .ok_or_else(|| ApiError::BadRequest(format!("invalid pod request \"{name}:{port}\"")))
}

/// A pod's way in: its node and IP.
fn pod_upstream(
    pod: &Value,
    namespace: &str,
    name: &str,
    port: u16,
    https: bool,
) -> Result<Upstream, ApiError> {
    let ip = pod_ips(pod).first().copied().unwrap_or("").to_owned();
    let usable = ip.parse::<std::net::IpAddr>().is_ok_and(|a| match a {
        std::net::IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        std::net::IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast()),
    });
    if !usable {
        return Err(ApiError::BadRequest("address not allowed".to_owned()));
    }
    let node = str_at(pod, "/spec/nodeName");
    if node.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    Ok(Upstream::Pod {
        node: node.to_owned(),
        namespace: namespace.to_owned(),
        pod: name.to_owned(),
        ip,
        port,
        https,
    })
}

/// Upstream's pod, Service and node `ResourceLocation`.
fn locate(state: &AppState, t: &ProxyTarget) -> Result<Upstream, ApiError> {
    let what = match t.kind {
        Kind::Pod => "pod",
        Kind::Service => "service",
        Kind::Node => "node",
    };
    let (scheme, name, port) = split_scheme_name_port(&t.id)
        .ok_or_else(|| ApiError::BadRequest(format!("invalid {what} request {:?}", t.id)))?;
    let https = scheme == "https";
    match t.kind {
        Kind::Pod => {
            let pod = get(state, "pods", Some(&t.namespace), name)?;
            let port = pod_port(&pod, name, port, https)?;
            pod_upstream(&pod, &t.namespace, name, port, https)
        }
        Kind::Service => service_upstream(state, &t.namespace, &t.id, name, port, https),
        Kind::Node => {
            let node = get(state, "nodes", None, name)?;
            let (_, kubelet_port) = super::node_endpoint(state, name)?;
            let _ = node;
            if port.is_empty() || port == kubelet_port.to_string() {
                return Ok(Upstream::NodeApi {
                    node: name.to_owned(),
                });
            }
            let port: u16 = port
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid node request {:?}", t.id)))?;
            Ok(Upstream::NodeAddr {
                node: name.to_owned(),
                port,
                https,
            })
        }
    }
}

fn service_upstream(
    state: &AppState,
    ns: &str,
    id: &str,
    name: &str,
    port: &str,
    https: bool,
) -> Result<Upstream, ApiError> {
    let mut port_name = port.to_owned();
    // A port number means the Service port of that number, by its name.
    if let Ok(n) = port.parse::<u64>() {
        let svc = get(state, "services", Some(ns), name)?;
        port_name = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.get("port").and_then(Value::as_u64) == Some(n))
            })
            .map(|p| str_at(p, "/name").to_owned())
            .ok_or_else(|| {
                ApiError::ServiceUnavailable(format!(
                    "no service port {n} found for service \"{name}\""
                ))
            })?;
    }
    let eps = get(state, "endpoints", Some(ns), name)?;
    let subsets = eps
        .get("subsets")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if subsets.is_empty() {
        return Err(ApiError::ServiceUnavailable(format!(
            "no endpoints available for service \"{name}\""
        )));
    }
    let seed = rand::random_range(0..subsets.len());
    for i in 0..subsets.len() {
        let ss = &subsets[(seed + i) % subsets.len()];
        let addrs = ss
            .get("addresses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if addrs.is_empty() {
            continue;
        }
        let ports = ss
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for p in &ports {
            if str_at(p, "/name") != port_name {
                continue;
            }
            let Some(number) = p
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
            else {
                continue;
            };
            let aseed = rand::random_range(0..addrs.len());
            for j in 0..addrs.len() {
                let a = &addrs[(aseed + j) % addrs.len()];
                let ip = str_at(a, "/ip");
                // Upstream's isValidAddress: a pod of this namespace that
                // holds the address.
                if str_at(a, "/targetRef/kind") != "Pod" || str_at(a, "/targetRef/namespace") != ns
                {
                    continue;
                }
                let pod_name = str_at(a, "/targetRef/name");
                let Ok(pod) = get(state, "pods", Some(ns), pod_name) else {
                    continue;
                };
                if !pod_ips(&pod).contains(&ip) {
                    continue;
                }
                if let Ok(Upstream::Pod {
                    node,
                    namespace,
                    pod,
                    ..
                }) = pod_upstream(&pod, ns, pod_name, number, https)
                {
                    return Ok(Upstream::Pod {
                        node,
                        namespace,
                        pod,
                        ip: ip.to_owned(),
                        port: number,
                        https,
                    });
                }
            }
        }
    }
    Err(ApiError::ServiceUnavailable(format!(
        "no endpoints available for service {id:?}"
    )))
}

/// A byte stream to the backend.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The error of a failed connection to the backend, upstream's wording.
fn unreachable(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("{UNREACHABLE}{e}"))
}

/// Open a connection to the backend (TLS for `https`) and the `Host` it
/// is named by.
async fn open(state: &AppState, up: &Upstream) -> Result<(Box<dyn Io>, String), ApiError> {
    let (io, host, sni): (Box<dyn Io>, String, Option<std::net::IpAddr>) = match up {
        Upstream::NodeApi { node } => {
            let (ip, port) = super::node_endpoint(state, node)?;
            let tls = super::connect_node(state, node, ip, port).await?;
            // Already TLS, with the kubelet client certificate.
            return Ok((Box::new(tls), super::host_port(ip, port)));
        }
        Upstream::NodeAddr { node, port, .. } => {
            let (ip, _) = super::node_endpoint(state, node)?;
            let addr = std::net::SocketAddr::new(ip, *port);
            let tcp =
                tokio::time::timeout(super::DIAL_TIMEOUT, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| unreachable(format!("dial tcp {addr}: i/o timeout")))?
                    .map_err(|e| unreachable(format!("dial tcp {addr}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            (Box::new(tcp), addr.to_string(), Some(ip))
        }
        Upstream::Pod {
            node,
            namespace,
            pod,
            ip,
            port,
            ..
        } => {
            let io = tunnel(state, node, namespace, pod, *port).await?;
            let host = match ip.parse::<std::net::IpAddr>() {
                Ok(a) => std::net::SocketAddr::new(a, *port).to_string(),
                Err(_) => format!("{ip}:{port}"),
            };
            (io, host, ip.parse().ok())
        }
    };
    if !up.https() {
        return Ok((io, host));
    }
    let cfg = super::node_api_client_config(None)
        .map_err(|e| ApiError::Internal(format!("proxy TLS: {e}")))?;
    let name = match sni {
        Some(ip) => ServerName::IpAddress(ip.into()),
        None => ServerName::try_from("localhost").map_err(|e| ApiError::Internal(e.to_string()))?,
    };
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, io)
        .await
        .map_err(|e| unreachable(format!("TLS handshake: {e}")))?;
    Ok((Box::new(tls), host))
}

/// A raw stream to a pod's port, through its node's agent.
async fn tunnel(
    state: &AppState,
    node: &str,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Result<Box<dyn Io>, ApiError> {
    let (ip, node_port) = super::node_endpoint(state, node)?;
    let mut sender = super::dial::<Empty<Bytes>>(state, node, ip, node_port).await?;
    let req = Request::builder()
        .method("GET")
        .uri(format!(
            "/podTunnel/{}/{}/{port}",
            super::seg(namespace),
            super::seg(pod)
        ))
        .header(header::HOST, super::host_port(ip, node_port))
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::Internal(format!("building the tunnel request: {e}")))?;
    let mut resp = sender.send_request(req).await.map_err(|e| {
        ApiError::ServiceUnavailable(format!(
            "error talking to node {node} ({}): {e}",
            super::host_port(ip, node_port)
        ))
    })?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body[..body.len().min(4096)])
            .trim()
            .to_owned();
        return Err(unreachable(text));
    }
    let up = hyper::upgrade::on(&mut resp)
        .await
        .map_err(|e| unreachable(format!("opening the tunnel through node {node}: {e}")))?;
    Ok(Box::new(TokioIo::new(up)))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), and those a `Connection` header
/// names.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for n in named {
        if keep_upgrade && n == "upgrade" {
            continue;
        }
        h.remove(n.as_str());
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        h.remove(n);
    }
    if !keep_upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The start of the message of a backend that could not be reached.
const UNREACHABLE: &str = "error trying to reach service: ";

/// Proxy the request to the target. A backend that cannot be reached is
/// upstream's 500 without a reason (the transport's error is no API
/// status), which kubectl prints as `Error from server: error trying to
/// reach service: dial tcp ...`.
pub(crate) async fn serve(
    state: &Arc<AppState>,
    t: &ProxyTarget,
    parts: &mut Parts,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    match proxy(state, t, parts, body).await {
        Err(ApiError::Internal(m)) if m.starts_with(UNREACHABLE) => {
            let status = serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": m,
                "code": 500,
            });
            let mut r = Response::new(Body::from(status.to_string()));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            Ok(r)
        }
        r => r,
    }
}

async fn proxy(
    state: &Arc<AppState>,
    t: &ProxyTarget,
    parts: &mut Parts,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let up = locate(state, t)?;
    tracing::debug!(?up, path = %t.rest, "proxying");
    let (io, host) = open(state, &up).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(io))
        .await
        .map_err(unreachable)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "proxied connection ended with an error");
        }
    });
    let upgrade = is_upgrade(&parts.headers);
    let uri = match parts.uri.query() {
        Some(q) => format!("{}?{q}", t.rest),
        None => t.rest.clone(),
    };
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers, upgrade);
    headers.remove(header::HOST);
    headers.remove(header::AUTHORIZATION);
    let impersonation: Vec<header::HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("impersonate-"))
        .cloned()
        .collect();
    for k in impersonation {
        headers.remove(k);
    }
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(&uri)
        .body(body)
        .map_err(|e| ApiError::BadRequest(format!("proxying {uri:?}: {e}")))?;
    *req.headers_mut() = headers;
    if let Ok(h) = header::HeaderValue::from_str(&host) {
        req.headers_mut().insert(header::HOST, h);
    }
    let resp = sender.send_request(req).await.map_err(unreachable)?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return super::splice(parts, resp);
    }
    let (mut p, body) = resp.into_parts();
    strip_hop_by_hop(&mut p.headers, false);
    Ok(Response::from_parts(p, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        let t = match_path("/api/v1/namespaces/default/services/https:web:8443/proxy/a/b%20c/")
            .expect("service");
        assert_eq!(t.kind, Kind::Service);
        assert_eq!(t.namespace, "default");
        assert_eq!(t.id, "https:web:8443");
        assert_eq!(t.rest, "/a/b%20c/");
        let t = match_path("/api/v1/namespaces/default/pods/web:8080/proxy").expect("pod");
        assert_eq!((t.kind, t.rest.as_str()), (Kind::Pod, "/"));
        let t = match_path("/api/v1/nodes/node-1/proxy/healthz").expect("node");
        assert_eq!(
            (t.kind, t.id.as_str(), t.rest.as_str()),
            (Kind::Node, "node-1", "/healthz")
        );
        assert!(match_path("/api/v1/namespaces/default/pods/web/log").is_none());
        assert!(match_path("/api/v1/namespaces/default/pods//proxy/").is_none());
        assert!(match_path("/api/v1/namespaces/default/configmaps/x/proxy/").is_none());
    }

    #[test]
    fn scheme_name_port() {
        assert_eq!(split_scheme_name_port("web"), Some(("", "web", "")));
        assert_eq!(split_scheme_name_port("web:80"), Some(("", "web", "80")));
        assert_eq!(
            split_scheme_name_port("https:web:443"),
            Some(("https", "web", "443"))
        );
        assert_eq!(split_scheme_name_port("ftp:web:21"), None);
        assert_eq!(split_scheme_name_port(":80"), None);
        assert_eq!(split_scheme_name_port("a:b:c:d"), None);
    }

    #[test]
    fn pod_ports() {
        let pod = json!({"spec": {"containers": [
            {"name": "a"},
            {"name": "b", "ports": [{"name": "http", "containerPort": 8080}]}]}});
        assert_eq!(pod_port(&pod, "p", "", false).expect("first"), 8080);
        assert_eq!(pod_port(&pod, "p", "http", false).expect("named"), 8080);
        assert_eq!(pod_port(&pod, "p", "9000", false).expect("number"), 9000);
        assert!(pod_port(&pod, "p", "nope", false).is_err());
        let bare = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pod_port(&bare, "p", "", true).expect("https"), 443);
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-drop".parse().expect("v"));
        h.insert("x-drop", "1".parse().expect("v"));
        h.insert("x-keep", "1".parse().expect("v"));
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().expect("v"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }
}
