//! Listening, TLS, authentication and top-level routing.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kestrel_api::ApiError;
use kestrel_store::Store;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::{self, PeerIdentity, Tokens};
use crate::cache::Cache;
use crate::pki::Pki;
use crate::state::{
    AppState, Config, Ctx, MAX_BODY_BYTES, error_response, json_response, parse_bool_true,
    path_segments, text, version_info,
};
use crate::{Error, alloc, bootstrap, discovery, handlers, openapi};

/// Concurrent HTTP/2 streams per connection.
const MAX_STREAMS: u32 = 2000;
/// How long an HTTP/1 client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A bound, ready-to-serve API server.
pub struct ApiServer {
    state: Arc<AppState>,
    listeners: Vec<TcpListener>,
    acceptor: TlsAcceptor,
    kubeconfig: PathBuf,
    scheduler_kubeconfig: PathBuf,
    controller_manager_kubeconfig: PathBuf,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("local_addr", &self.state.local_addr)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

/// Aborts the accept loops when serving ends.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl ApiServer {
    /// Load or create credentials under `config.data_dir`, fill the watch
    /// cache from `store`, create the default namespaces and the `kubernetes`
    /// Service, bind the port and write `DATA_DIR/admin.kubeconfig`.
    pub async fn bind(store: Arc<dyn Store>, config: Config) -> Result<Self, Error> {
        let audit = crate::audit::Auditor::from_config(&config)?;
        let alloc = alloc::Allocators::new(&config.service_cidr, config.node_port_range)?;
        let mut ips: Vec<IpAddr> = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), alloc.first_service_ip()];
        ips.extend(config.advertise_addresses.iter().copied());
        if !config.bind_address.is_unspecified() {
            ips.push(config.bind_address);
        }
        ips.extend(config.also_bind.iter().copied());
        let mut dns: Vec<String> = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        dns.extend(config.extra_sans.iter().cloned());
        let pki = Pki::load_or_create(&config.data_dir, &ips, &dns)?;
        let tokens = Tokens::new(pki.tokens.clone());
        let acceptor = tls_acceptor(&pki)?;

        let listener = TcpListener::bind((config.bind_address, config.secure_port))
            .await
            .map_err(|source| Error::Bind {
                addr: SocketAddr::new(config.bind_address, config.secure_port),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: SocketAddr::new(config.bind_address, config.secure_port),
            source,
        })?;
        let mut listeners = vec![listener];
        for ip in &config.also_bind {
            let addr = SocketAddr::new(*ip, local_addr.port());
            listeners.push(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Bind { addr, source })?,
            );
        }
        let host = if config.bind_address.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            config.bind_address
        };
        let server_url = format!("https://{}", SocketAddr::new(host, local_addr.port()));
        let kubeconfig = pki.write_admin_kubeconfig(&server_url)?;
        let (scheduler_kubeconfig, controller_manager_kubeconfig) =
            pki.write_component_kubeconfigs(&server_url)?;

        let cache = Cache::start(store.clone(), config.watch_history).await?;
        let authz = crate::authz::Authorizer::start(&cache);
        let state = Arc::new(AppState {
            audit,
            authz,
            store,
            cache,
            config,
            pki,
            tokens,
            alloc,
            local_addr: SocketAddr::new(host, local_addr.port()),
            crds: crate::crd::Registry::new(),
        });
        crate::crd::follow(&state);
        bootstrap::run(&state).await?;
        tracing::info!(addr = %local_addr, kubeconfig = %kubeconfig.display(), "API server ready");
        Ok(Self {
            state,
            listeners,
            acceptor,
            kubeconfig,
            scheduler_kubeconfig,
            controller_manager_kubeconfig,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.state.local_addr
    }

    /// `DATA_DIR/admin.kubeconfig`.
    pub fn admin_kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    /// `DATA_DIR/scheduler.kubeconfig`: the scheduler's own identity,
    /// `system:kube-scheduler`.
    pub fn scheduler_kubeconfig(&self) -> &std::path::Path {
        &self.scheduler_kubeconfig
    }

    /// `DATA_DIR/controller-manager.kubeconfig`: the controllers' identity,
    /// `system:kube-controller-manager`.
    pub fn controller_manager_kubeconfig(&self) -> &std::path::Path {
        &self.controller_manager_kubeconfig
    }

    /// The join token agents present (also in `DATA_DIR/node-token`).
    pub fn node_token(&self) -> &str {
        &self.state.pki.node_token
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.state.pki.ca_pem
    }

    /// Serve until `shutdown` completes. In-flight requests are dropped.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let Self {
            state,
            listeners,
            acceptor,
            ..
        } = self;
        tokio::pin!(shutdown);
        let (conns, mut incoming) = tokio::sync::mpsc::channel(64);
        let accepting: Vec<_> = listeners
            .into_iter()
            .map(|listener| {
                let conns = conns.clone();
                tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok(c) => {
                                if conns.send(c).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                // Out of file descriptors and the like: keep serving.
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        drop(conns);
        let _stop_accepting = AbortOnDrop(accepting);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => return Ok(()),
                c = incoming.recv() => match c {
                    Some(c) => c,
                    None => return Ok(()),
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let identity = PeerIdentity(
                    tls.get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| auth::user_from_cert(c.as_ref()))
                        .map(Arc::new),
                );
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    let identity = identity.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(handle(state, identity, peer, req).await)
                    }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Clients multiplex all their watches over one HTTP/2
                // connection (client-go does): allow many streams.
                builder.http2().max_concurrent_streams(MAX_STREAMS);
                // A client that never finishes its headers must not hold a
                // connection forever.
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }
}

fn tls_acceptor(pki: &Pki) -> Result<TlsAcceptor, Error> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.serving_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving_key_pem.as_bytes())
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| Error::Tls(e.to_string()))?)
            .map_err(|e| Error::Tls(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Client certs are optional: anonymous TLS is allowed to reach the
    // public health and version endpoints, and bearer tokens need no cert.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Whether the client's first choice is YAML (`Accept: application/yaml`).
fn prefers_yaml(req: &Request<Incoming>) -> bool {
    let watch = req.uri().path().contains("/watch/")
        || req.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv.strip_prefix("watch=").is_some_and(parse_bool_true))
        });
    !watch
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .and_then(|a| a.split(',').next())
            .is_some_and(|m| {
                m.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/yaml")
            })
}

/// Re-encode a JSON response as YAML.
async fn to_yaml(resp: Response<Body>) -> Response<Body> {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = body.collect().await.map(|b| b.to_bytes()) else {
        return error_response(&ApiError::Internal("encoding the response".to_owned()));
    };
    let yaml = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| serde_saphyr::to_string(&v).ok());
    match yaml {
        Some(y) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/yaml"),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(y))
        }
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}

async fn handle(
    state: Arc<AppState>,
    identity: PeerIdentity,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let yaml = prefers_yaml(&req);
    let mut audit = crate::audit::Request::new(state.audit.as_ref(), &req, peer);
    let mut resp = match handle_inner(state, identity, req, &mut audit).await {
        Ok(r) => audit.finish(r, None).await,
        Err(e) => audit.finish(error_response(&e), Some(&e)).await,
    };
    if yaml {
        resp = to_yaml(resp).await;
    }
    tracing::debug!(%method, %path, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    resp
}

async fn handle_inner(
    state: Arc<AppState>,
    identity: PeerIdentity,
    req: Request<Incoming>,
    audit: &mut crate::audit::Request,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();

    let user = auth::authenticate(
        &state.tokens,
        &state.pki.node_token,
        auth::Credentials {
            peer: identity.0.as_ref(),
            authorization: parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            path: &path,
        },
    )?;

    let attrs =
        crate::authz::request::from_request(&parts.method, path.trim_end_matches('/'), &query);
    audit.received(&user, &attrs);
    let user = crate::authz::impersonate::resolve(&state.authz, &state.cache, user, &parts.headers)
        .await?;
    let decision = state.authz.authorize(&state.cache, &user, &attrs).await;
    audit.authorized(&user, decision.is_ok());
    decision?;
    crate::authz::node::restrict(&user, &attrs, current_object(&state, &attrs).as_deref())?;

    // pods/log, exec, attach and portforward go to the node API; the
    // streams keep the connection for its upgrade, so they never read a
    // body. The proxy subresources stream the body on.
    if let Some(route) = crate::proxy::match_path(&path) {
        let mut parts = parts;
        return crate::proxy::serve(&state, &route, &mut parts, body).await;
    }

    // Body: refuse oversize early, then read with a hard cap.
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > MAX_BODY_BYTES
    {
        return Err(ApiError::RequestEntityTooLarge);
    }
    let body = match http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(ApiError::RequestEntityTooLarge);
            }
            return Err(ApiError::BadRequest(format!(
                "reading the request body: {e}"
            )));
        }
    };
    audit.request_body(&parts.headers, &body);
    let warnings = crate::admission::chain::Warnings::default();
    let ctx = Ctx {
        method: parts.method,
        path,
        query,
        headers: parts.headers,
        user,
        body,
        warnings: warnings.clone(),
    };
    let mut result = route(&state, ctx).await;
    let ws = warnings.take();
    if !ws.is_empty() {
        let add = |r: &mut Response<Body>| {
            for w in &ws {
                // RFC 7234 warn-code 299, agent "-", as upstream sends them.
                let v = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
                if let Ok(h) = header::HeaderValue::from_str(&v) {
                    r.headers_mut().append(header::WARNING, h);
                }
            }
        };
        if let Ok(r) = &mut result {
            add(r);
        }
    }
    result
}

/// The object a named request points at, as the cache has it (for checks
/// that depend on it, such as NodeRestriction on a pod's node).
fn current_object(state: &AppState, a: &crate::authz::Attributes) -> Option<Arc<Value>> {
    if !a.resource_request || a.name.is_empty() || a.resource != "pods" {
        return None;
    }
    let def = state
        .crds
        .lookup(&a.api_group, &a.api_version, &a.resource)?;
    let ns = (!a.namespace.is_empty()).then_some(a.namespace.as_str());
    state
        .cache
        .get(&def.key(ns, &a.name))
        .map(|e| e.value.clone())
}

/// Whether the client accepts an answer we produce (JSON, or YAML). A missing
/// Accept, wildcards, JSON variants (Table, discovery) and protobuf-or-any
/// lists all do; an Accept naming only other types gets 406, as upstream.
fn accepts_json(ctx: &Ctx) -> bool {
    let Some(accept) = ctx.header(header::ACCEPT) else {
        return true;
    };
    if accept.trim().is_empty() {
        return true;
    }
    accept.split(',').any(|m| {
        let mt = m
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            mt.as_str(),
            "*/*"
                | "application/*"
                | "application/json"
                | "application/yaml"
                | "text/plain"
                | "text/*"
        ) || mt.ends_with("+json")
    })
}

async fn route(state: &Arc<AppState>, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let path = ctx.path.trim_end_matches('/').to_owned();
    if !accepts_json(&ctx) {
        return Err(ApiError::NotAcceptable(format!(
            "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io, got {:?}",
            ctx.header(header::ACCEPT).unwrap_or("")
        )));
    }
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" | "/healthz/ping" | "/livez/ping" | "/readyz/ping" => {
            return Ok(text(StatusCode::OK, "ok"));
        }
        "/version" => return Ok(json_response(StatusCode::OK, &version_info())),
        auth::CACERTS_PATH => return Ok(text(StatusCode::OK, &state.pki.ca_pem)),
        crate::serviceaccount::OIDC_PATH => return crate::serviceaccount::discovery(state, &ctx),
        crate::serviceaccount::JWKS_PATH => return crate::serviceaccount::jwks(state, &ctx),
        "/api" | "/apis" => return discovery::root(&state.crds, &ctx, &path),
        "/openapi/v2" => return openapi::v2(&state.crds, &ctx),
        "/openapi/v3" => return openapi::v3_root(&state.crds, &ctx),
        _ => {}
    }
    if path == crate::state::JOIN_PATH {
        return handlers::join(state, &ctx).await;
    }
    if let Some(gv) = path.strip_prefix("/openapi/v3/") {
        return openapi::v3_group(&state.crds, &ctx, gv);
    }
    let segs = path_segments(&path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["api", "v1"] => discovery::resource_list(&state.crds, "", "v1"),
        ["api", v] => Err(ApiError::NotFound(kestrel_api::ObjectRef::new("", "", v)).route()),
        ["apis", g] => discovery::group(&state.crds, g),
        ["apis", g, v] => discovery::resource_list(&state.crds, g, v),
        ["apis", g, "v1", plural] if crate::authz::review::serves(g, plural) => {
            crate::authz::review::serve(state, &ctx, g, None, plural).await
        }
        ["apis", g, "v1", "namespaces", ns, plural] if crate::authz::review::serves(g, plural) => {
            crate::authz::review::serve(state, &ctx, g, Some(ns), plural).await
        }
        ["api", "v1", rest @ ..] => handlers::resource(state, ctx, "", "v1", rest).await,
        ["apis", g, v, rest @ ..] => handlers::resource(state, ctx, g, v, rest).await,
        _ => Err(ApiError::RouteNotFound),
    }
}

trait RouteErr {
    fn route(self) -> ApiError;
}

impl RouteErr for ApiError {
    /// Unknown API paths answer upstream's generic 404.
    fn route(self) -> ApiError {
        ApiError::RouteNotFound
    }
}
