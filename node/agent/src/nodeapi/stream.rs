//! `/exec/...` and `/attach/...`: ask CRI for a streaming URL and proxy the
//! client's upgrade request to it, as the kubelet does.
//!
//! The node API does not speak the stream protocols itself. containerd's
//! streaming server negotiates SPDY or WebSocket and the channel protocol
//! version with the client (through the API server); after the `101` this
//! module only copies bytes. A refusal (a subprotocol containerd does not
//! speak, say) is passed back unchanged, so the client can fall back.

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use kestrel_cri::v1;

use super::logs::find_container;
use super::{Body, Ctx, HttpError, PodContainer};

/// Exec or attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Exec,
    Attach,
}

/// The stream options of an exec or attach request.
#[derive(Debug, Default, PartialEq, Eq)]
struct StreamOptions {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl StreamOptions {
    /// The kubelet's parameters (`input`, `output`, `error`, `tty`, repeated
    /// `command`), also accepting the API's names (`stdin`, `stdout`,
    /// `stderr`).
    fn parse(kind: Kind, query: &str) -> Result<Self, HttpError> {
        let mut o = Self::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let flag = || -> Result<bool, HttpError> {
                match &*v {
                    "1" | "true" | "True" | "TRUE" | "t" | "T" => Ok(true),
                    "" | "0" | "false" | "False" | "FALSE" | "f" | "F" => Ok(false),
                    _ => Err(HttpError::bad_request(format!(
                        "{k}: invalid boolean value {v:?}"
                    ))),
                }
            };
            match &*k {
                "command" => o.command.push(v.clone().into_owned()),
                "input" | "stdin" => o.stdin = flag()?,
                "output" | "stdout" => o.stdout = flag()?,
                "error" | "stderr" => o.stderr = flag()?,
                "tty" => o.tty = flag()?,
                _ => {}
            }
        }
        if kind == Kind::Exec && o.command.is_empty() {
            return Err(HttpError::bad_request(
                "you must specify at least one command for the container",
            ));
        }
        if !(o.stdin || o.stdout || o.stderr) {
            return Err(HttpError::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        // A terminal merges stderr into stdout; the kubelet drops the
        // stderr stream rather than failing.
        if o.tty {
            o.stderr = false;
        }
        Ok(o)
    }
}

/// Whether a request asks for a connection upgrade.
pub(crate) fn is_upgrade(req: &Request<Incoming>) -> bool {
    let has_token = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    has_token && req.headers().contains_key(header::UPGRADE)
}

pub(crate) async fn serve(
    ctx: &Ctx,
    kind: Kind,
    pc: &PodContainer,
    req: Request<Incoming>,
) -> Result<Response<Body>, HttpError> {
    let opts = StreamOptions::parse(kind, req.uri().query().unwrap_or(""))?;
    if !is_upgrade(&req) {
        return Err(HttpError::bad_request("Upgrade request required"));
    }
    let mut rt = ctx.runtime.clone();
    let id = find_container(&mut rt, pc, false).await?;
    let url = match kind {
        Kind::Exec => {
            rt.exec(v1::ExecRequest {
                container_id: id,
                cmd: opts.command,
                tty: opts.tty,
                stdin: opts.stdin,
                stdout: opts.stdout,
                stderr: opts.stderr,
            })
            .await
            .map_err(|e| HttpError::runtime("preparing the exec", &e))?
            .into_inner()
            .url
        }
        Kind::Attach => {
            rt.attach(v1::AttachRequest {
                container_id: id,
                stdin: opts.stdin,
                tty: opts.tty,
                stdout: opts.stdout,
                stderr: opts.stderr,
            })
            .await
            .map_err(|e| HttpError::runtime("preparing the attach", &e))?
            .into_inner()
            .url
        }
    };
    let url: Uri = url.parse().map_err(|e| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the runtime returned a bad streaming URL {url:?}: {e}"),
        )
    })?;
    tracing::debug!(container = %pc, ?kind, %url, "proxying a stream to the runtime");
    proxy_upgrade(req, &url).await
}

/// Send the upgrade request to the runtime's streaming server; on `101`,
/// answer the client with the same `101` and splice the two connections.
pub(crate) async fn proxy_upgrade(
    mut req: Request<Incoming>,
    url: &Uri,
) -> Result<Response<Body>, HttpError> {
    let bad_gateway = |what: &str, e: &dyn std::fmt::Display| {
        HttpError::new(StatusCode::BAD_GATEWAY, format!("{what} {url}: {e}"))
    };
    let Some(authority) = url.authority().filter(|_| url.scheme_str() == Some("http")) else {
        return Err(HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the runtime's streaming URL {url} is not http://host:port/..."),
        ));
    };
    let tcp = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| bad_gateway("connecting to", &e))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| bad_gateway("talking to", &e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "runtime streaming connection ended with an error");
        }
    });
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Request::builder()
        .method(req.method().clone())
        .uri(path)
        .header(header::HOST, authority.as_str());
    for (name, value) in req.headers() {
        // Hop-by-hop framing is the proxy's own; the rest (Connection,
        // Upgrade, Sec-WebSocket-*, X-Stream-Protocol-Version) goes through.
        if matches!(
            *name,
            header::HOST
                | header::CONTENT_LENGTH
                | header::TRANSFER_ENCODING
                | header::AUTHORIZATION
        ) {
            continue;
        }
        out = out.header(name, value);
    }
    let out = out
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| bad_gateway("building the request for", &e))?;
    let mut resp = sender
        .send_request(out)
        .await
        .map_err(|e| bad_gateway("requesting", &e))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The runtime's refusal, unchanged: the client may fall back to
        // another protocol.
        let (parts, body) = resp.into_parts();
        return Ok(Response::from_parts(
            parts,
            body.map_err(std::io::Error::other).boxed_unsync(),
        ));
    }
    let client = hyper::upgrade::on(&mut req);
    let runtime = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (client, runtime) = match tokio::try_join!(client, runtime) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "stream upgrade failed");
                return;
            }
        };
        let (mut client, mut runtime) = (TokioIo::new(client), TokioIo::new(runtime));
        match tokio::io::copy_bidirectional(&mut client, &mut runtime).await {
            Ok((up, down)) => tracing::debug!(up, down, "stream ended"),
            Err(e) => tracing::debug!(error = %e, "stream ended with an error"),
        }
    });
    let (parts, _) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        Empty::new().map_err(|e| match e {}).boxed_unsync(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = StreamOptions::parse(
            Kind::Exec,
            "command=sh&command=-c&command=echo%20hi&input=1&output=1&error=1",
        )
        .expect("parse");
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        let o = StreamOptions::parse(Kind::Exec, "command=sh&stdin=true&stderr=true&tty=true")
            .expect("parse");
        assert!(o.stdin && o.tty && !o.stderr, "a tty drops stderr");
        let o = StreamOptions::parse(Kind::Attach, "output=1").expect("attach");
        assert!(o.command.is_empty());
        for bad in ["output=1", "command=sh", "command=sh&output=maybe"] {
            assert!(StreamOptions::parse(Kind::Exec, bad).is_err(), "{bad}");
        }
    }
}
