//! `/portForward/{ns}/{pod}` and `/podTunnel/{ns}/{pod}/{port}`.
//!
//! Port forwarding is the kubelet's: CRI `PortForward` on the pod's sandbox
//! returns a URL on containerd's streaming server, and the client's upgrade
//! request is proxied to it unchanged (containerd speaks SPDY/3.1 with
//! `portforward.k8s.io`; a refused WebSocket upgrade goes back as it is, so
//! kubectl falls back to SPDY).
//!
//! The pod tunnel is Kestrel's own, for the API server's `pods/proxy` and
//! `services/proxy`: the API server runs outside the pods' network, the
//! agent inside the node's network namespace with a route to each of its
//! pods. An HTTP upgrade (`Connection: Upgrade`, any `Upgrade` token) to
//! `/podTunnel/{ns}/{pod}/{port}` makes the agent connect to that port of
//! the pod's IP (the one CRI reports for the pod's ready sandbox on this
//! node, the node's own address for a host-network pod); it answers `101`
//! and then copies raw bytes both ways, or `502` with the dial error
//! (`dial tcp 10.42.1.5:81: connect: connection refused`). Only pods of
//! this node can be reached, so the tunnel opens no path the API server's
//! callers could not already take through `pods/proxy`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use kestrel_cri::{RuntimeClient, v1};

use super::logs::{POD_NAME, POD_NAMESPACE, POD_UID};
use super::stream::{is_upgrade, proxy_upgrade};
use super::{Body, Ctx, HttpError};

/// How long connecting to a pod may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod, as a node API path names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodRef {
    pub(crate) namespace: String,
    pub(crate) pod: String,
    pub(crate) uid: Option<String>,
}

/// The id and status of the pod's newest ready sandbox.
async fn ready_sandbox(
    rt: &mut RuntimeClient,
    pod: &PodRef,
) -> Result<(String, Option<v1::PodSandboxStatus>), HttpError> {
    let mut labels = std::collections::HashMap::from([
        (POD_NAME.to_owned(), pod.pod.clone()),
        (POD_NAMESPACE.to_owned(), pod.namespace.clone()),
    ]);
    if let Some(uid) = &pod.uid {
        labels.insert(POD_UID.to_owned(), uid.clone());
    }
    let mut found = rt
        .list_pod_sandbox(v1::ListPodSandboxRequest {
            filter: Some(v1::PodSandboxFilter {
                label_selector: labels,
                state: Some(v1::PodSandboxStateValue {
                    state: v1::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| HttpError::runtime("listing pod sandboxes", &e))?
        .into_inner()
        .items;
    found.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    let Some(sb) = found.into_iter().next() else {
        // The kubelet's answer for a pod it does not run.
        return Err(HttpError::new(StatusCode::NOT_FOUND, "pod does not exist"));
    };
    let status = rt
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: sb.id.clone(),
            verbose: false,
        })
        .await
        .map_err(|e| HttpError::runtime("reading the pod sandbox status", &e))?
        .into_inner()
        .status;
    Ok((sb.id, status))
}

/// `/portForward/{ns}/{pod}[/{uid}]`: CRI `PortForward`, then the client's
/// upgrade goes to the runtime's streaming server.
pub(crate) async fn serve_port_forward(
    ctx: &Ctx,
    pod: &PodRef,
    req: Request<Incoming>,
) -> Result<Response<Body>, HttpError> {
    if !is_upgrade(&req) {
        return Err(HttpError::bad_request("Upgrade request required"));
    }
    // WebSocket clients name their ports in the query; SPDY ones per stream.
    let mut ports = Vec::new();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        if k == "port" {
            let p: u16 = v.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                HttpError::bad_request(format!("unable to parse {v:?} as a port"))
            })?;
            ports.push(i32::from(p));
        }
    }
    let mut rt = ctx.runtime.clone();
    let (id, _) = ready_sandbox(&mut rt, pod).await?;
    let url = rt
        .port_forward(v1::PortForwardRequest {
            pod_sandbox_id: id,
            port: ports,
        })
        .await
        .map_err(|e| HttpError::runtime("preparing the port forward", &e))?
        .into_inner()
        .url;
    let url: Uri = url.parse().map_err(|e| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the runtime returned a bad streaming URL {url:?}: {e}"),
        )
    })?;
    tracing::debug!(pod = %pod.pod, namespace = %pod.namespace, %url, "proxying a port forward to the runtime");
    proxy_upgrade(req, &url).await
}

/// The address a pod is reached at from the node: its sandbox's IP, or the
/// node's own for a host-network pod.
fn pod_ip(status: Option<&v1::PodSandboxStatus>, node_ip: Option<IpAddr>) -> Option<IpAddr> {
    let status = status?;
    let ip = status
        .network
        .as_ref()
        .and_then(|n| n.ip.parse::<IpAddr>().ok());
    if ip.is_some() {
        return ip;
    }
    let host_network = status
        .linux
        .as_ref()
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .is_some_and(|o| o.network == v1::NamespaceMode::Node as i32);
    if host_network { node_ip } else { None }
}

/// Go's wording of a failed dial, as upstream's proxy reports it.
pub(crate) fn dial_error(addr: SocketAddr, e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let why = match e.kind() {
        K::ConnectionRefused => "connect: connection refused".to_owned(),
        K::TimedOut => "i/o timeout".to_owned(),
        K::HostUnreachable => "connect: no route to host".to_owned(),
        K::NetworkUnreachable => "connect: network is unreachable".to_owned(),
        _ => format!("connect: {e}"),
    };
    format!("dial tcp {addr}: {why}")
}

/// `/podTunnel/{ns}/{pod}/{port}`: a raw TCP connection to the pod's port.
pub(crate) async fn serve_tunnel(
    ctx: &Ctx,
    pod: &PodRef,
    port: &str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, HttpError> {
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| HttpError::bad_request(format!("invalid port {port:?}")))?;
    if !is_upgrade(&req) {
        return Err(HttpError::bad_request("Upgrade request required"));
    }
    let mut rt = ctx.runtime.clone();
    let (_, status) = ready_sandbox(&mut rt, pod).await?;
    let ip = pod_ip(status.as_ref(), ctx.node_ip).ok_or_else(|| {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("pod {:?} has no IP address", pod.pod),
        )
    })?;
    let addr = SocketAddr::new(ip, port);
    let tcp = match tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return Err(HttpError::new(
                StatusCode::BAD_GATEWAY,
                dial_error(addr, &e),
            ));
        }
        Err(_) => {
            return Err(HttpError::new(
                StatusCode::BAD_GATEWAY,
                format!("dial tcp {addr}: i/o timeout"),
            ));
        }
    };
    let _ = tcp.set_nodelay(true);
    tracing::debug!(pod = %pod.pod, namespace = %pod.namespace, %addr, "pod tunnel open");
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or(header::HeaderValue::from_static("tcp"));
    let client = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let client = match client.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "pod tunnel upgrade failed");
                return;
            }
        };
        let (mut client, mut tcp) = (TokioIo::new(client), tcp);
        match tokio::io::copy_bidirectional(&mut client, &mut tcp).await {
            Ok((up, down)) => tracing::debug!(up, down, %addr, "pod tunnel ended"),
            Err(e) => tracing::debug!(error = %e, %addr, "pod tunnel ended with an error"),
        }
    });
    let mut resp = Response::new(Empty::new().map_err(|e| match e {}).boxed_unsync());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    resp.headers_mut().insert(header::UPGRADE, upgrade);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips() {
        let st = |ip: &str, mode: v1::NamespaceMode| v1::PodSandboxStatus {
            network: Some(v1::PodSandboxNetworkStatus {
                ip: ip.into(),
                additional_ips: vec![],
            }),
            linux: Some(v1::LinuxPodSandboxStatus {
                namespaces: Some(v1::Namespace {
                    options: Some(v1::NamespaceOption {
                        network: mode as i32,
                        ..Default::default()
                    }),
                }),
            }),
            ..Default::default()
        };
        let node: IpAddr = "192.168.1.2".parse().expect("ip");
        assert_eq!(
            pod_ip(Some(&st("10.42.1.5", v1::NamespaceMode::Pod)), Some(node)),
            Some("10.42.1.5".parse().expect("ip"))
        );
        assert_eq!(
            pod_ip(Some(&st("", v1::NamespaceMode::Node)), Some(node)),
            Some(node)
        );
        assert_eq!(
            pod_ip(Some(&st("", v1::NamespaceMode::Pod)), Some(node)),
            None
        );
        assert_eq!(pod_ip(None, Some(node)), None);
    }

    #[test]
    fn dial_errors_read_as_go() {
        let addr: SocketAddr = "10.42.1.5:81".parse().expect("addr");
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            dial_error(addr, &e),
            "dial tcp 10.42.1.5:81: connect: connection refused"
        );
    }
}
