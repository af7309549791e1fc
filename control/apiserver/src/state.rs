//! The bottom layer every other module builds on: the server's options,
//! its shared state, the decoded request ([`Ctx`]), where a request points
//! ([`Target`]), and the response helpers. It uses no handler module.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::{Method, Response, StatusCode, header};
use kestrel_api::fields::FieldSelector;
use kestrel_api::labels::Selector;
use kestrel_api::registry::ResourceDef;
use kestrel_api::{ApiError, ObjectRef};
use kestrel_store::Store;
use serde_json::{Value, json};

use crate::alloc;
use crate::auth::{Tokens, User};
use crate::cache::Cache;
use crate::pki::Pki;

/// The endpoint where an agent trades the node token for a client certificate.
pub const JOIN_PATH: &str = "/kestrel/v1/node-join";

/// Largest request body accepted (upstream's limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Options of `kestrel server`'s API server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the CA, credentials and kubeconfig live (`--data-dir`).
    pub data_dir: PathBuf,
    /// Address to listen on (`--bind-address`, default 0.0.0.0).
    pub bind_address: IpAddr,
    /// Port to listen on (`--secure-port`, default 6443; 0 picks a free one).
    pub secure_port: u16,
    /// Service ClusterIP range (`--service-cidr`, default 10.43.0.0/16).
    pub service_cidr: String,
    /// NodePort range, inclusive (default 30000-32767).
    pub node_port_range: (u16, u16),
    /// Node-facing addresses to put in the serving certificate and in the
    /// `kubernetes` Endpoints (e.g. the fabric address).
    pub advertise_addresses: Vec<IpAddr>,
    /// Extra DNS names for the serving certificate.
    pub extra_sans: Vec<String>,
    /// More addresses to listen on, on the same port as `bind_address`
    /// (`kestrel up` serves on loopback and on the fabric address).
    pub also_bind: Vec<IpAddr>,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// How many recent changes the watch cache keeps for watches that
    /// resume from a resourceVersion; older ones get 410 Gone.
    pub watch_history: usize,
    /// `tolerationSeconds` of the `node.kubernetes.io/not-ready:NoExecute`
    /// toleration added to pods that have none
    /// (`--default-not-ready-toleration-seconds`, upstream's
    /// DefaultTolerationSeconds admission).
    pub default_not_ready_toleration_seconds: i64,
    /// The same for `node.kubernetes.io/unreachable:NoExecute`
    /// (`--default-unreachable-toleration-seconds`).
    pub default_unreachable_toleration_seconds: i64,
    /// Admission plugins to skip (`--disable-admission-plugins`), by
    /// upstream's names (`ServiceAccount`, `PodSecurity`, ...).
    pub disable_admission_plugins: Vec<String>,
    /// Where audit events go, one JSON line each (`--audit-log-path`, `-`
    /// for stdout). Auditing needs this and `audit_policy_file`.
    pub audit_log_path: Option<PathBuf>,
    /// The audit.k8s.io/v1 Policy, YAML or JSON (`--audit-policy-file`).
    pub audit_policy_file: Option<PathBuf>,
}

impl Config {
    /// Defaults as `kestrel server` documents them, with `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            secure_port: 6443,
            service_cidr: "10.43.0.0/16".to_owned(),
            node_port_range: (30000, 32767),
            advertise_addresses: Vec::new(),
            extra_sans: Vec::new(),
            also_bind: Vec::new(),
            bookmark_interval: Duration::from_secs(30),
            watch_history: 20_000,
            default_not_ready_toleration_seconds: 300,
            default_unreachable_toleration_seconds: 300,
            disable_admission_plugins: Vec::new(),
            audit_log_path: None,
            audit_policy_file: None,
        }
    }
}

/// Shared state of a running server.
pub struct AppState {
    /// The store (only the API server touches it).
    pub store: Arc<dyn Store>,
    /// The watch cache.
    pub cache: Arc<Cache>,
    /// Options.
    pub config: Config,
    /// Credentials.
    pub pki: Pki,
    /// Static bearer tokens.
    pub tokens: Tokens,
    /// ClusterIP and NodePort allocation.
    pub alloc: alloc::Allocators,
    /// Where clients reach this server (for the `kubernetes` Service).
    pub local_addr: SocketAddr,
    /// The authorizer chain (Node, RBAC) and its indexes.
    pub authz: Arc<crate::authz::Authorizer>,
    /// The audit log, when `--audit-log-path` and `--audit-policy-file` are set.
    pub audit: Option<Arc<crate::audit::Auditor>>,
    /// The live registry: built-in kinds and established CRDs.
    pub crds: Arc<crate::crd::Registry>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// A decoded request, as handlers see it.
#[derive(Debug)]
pub struct Ctx {
    /// HTTP method.
    pub method: Method,
    /// Path, percent-decoded per segment by the router.
    pub path: String,
    /// Query parameters (last value wins).
    pub query: HashMap<String, String>,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// The authenticated user.
    pub user: Arc<User>,
    /// Body, already size-checked.
    pub body: Bytes,
    /// Warnings admission raised, sent back as `Warning` headers.
    pub warnings: crate::admission::chain::Warnings,
}

impl Ctx {
    /// A query parameter.
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }

    /// A boolean query parameter, true as Go's `strconv.ParseBool` reads
    /// it (`1`, `t`, `T`, `TRUE`, `true`, `True`), as upstream's decoder.
    pub fn q_bool(&self, k: &str) -> bool {
        self.q(k).is_some_and(parse_bool_true)
    }

    /// A header as text.
    pub fn header(&self, k: header::HeaderName) -> Option<&str> {
        self.headers.get(k).and_then(|v| v.to_str().ok())
    }
}

/// Whether `v` is true to Go's `strconv.ParseBool`.
pub fn parse_bool_true(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// The segments of a path after its leading `/`, each percent-decoded.
pub(crate) fn path_segments(path: &str) -> Vec<String> {
    path.split('/')
        .skip(1)
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

/// The `/version` body.
pub fn version_info() -> Value {
    let (maj, min, _) = kestrel_api::KUBERNETES_VERSION;
    json!({
        "major": maj.to_string(),
        "minor": min.to_string(),
        "emulationMajor": maj.to_string(),
        "emulationMinor": min.to_string(),
        "minCompatibilityMajor": maj.to_string(),
        "minCompatibilityMinor": (min - 1).to_string(),
        "gitVersion": kestrel_api::git_version(),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

/// A plain-text response.
pub fn text(code: StatusCode, s: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(s.to_owned()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON response.
pub fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    json_bytes(
        code,
        serde_json::to_vec(v).unwrap_or_default(),
        "application/json",
    )
}

/// A response with a pre-encoded body and content type.
pub fn json_bytes(code: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// The Status body of an error, with its HTTP code.
pub fn error_response(e: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_bytes(code, e.to_bytes(), "application/json");
    if matches!(e, ApiError::Unauthorized) {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"kestrel\""),
        );
    }
    r
}

/// Where a request points.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resource.
    pub def: &'static ResourceDef,
    /// Namespace from the path.
    pub ns: Option<String>,
    /// Object name from the path.
    pub name: Option<String>,
}

impl Target {
    /// The storage key of the named object.
    pub fn key(&self) -> String {
        self.def
            .key(self.ns.as_deref(), self.name.as_deref().unwrap_or(""))
    }

    pub(crate) fn not_found(&self) -> ApiError {
        ApiError::NotFound(ObjectRef::new(
            self.def.group,
            self.def.plural,
            self.name.as_deref().unwrap_or(""),
        ))
    }
}

/// Parsed list options shared by list, watch and deletecollection.
#[derive(Debug)]
pub struct ListOpts {
    /// Label selector.
    pub labels: Selector,
    /// Field selector.
    pub fields: FieldSelector,
}

impl ListOpts {
    /// Parse and check `labelSelector` and `fieldSelector`.
    pub fn parse(ctx: &Ctx, t: &Target) -> Result<Self, ApiError> {
        let labels = Selector::parse(ctx.q("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let fields = FieldSelector::parse(ctx.q("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        fields
            .check_supported(t.def.field_selectors)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(Self { labels, fields })
    }

    /// Whether an object passes both selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_json(obj.pointer("/metadata/labels"))
            && (self.fields.is_empty() || self.fields.matches(obj))
    }
}
