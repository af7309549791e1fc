//! The audit log: upstream's `audit.k8s.io/v1` Policy and Events, written as
//! one JSON line per event to `--audit-log-path` (`-` for stdout) under the
//! rules of `--audit-policy-file`. Both flags are needed; either alone is
//! logged and audits nothing, as upstream without a policy.
//!
//! A request's level is that of the first rule that matches its user,
//! groups, verb, resource (`x`, `x/y`, `*`, `*/y`, `x/*`, resourceNames),
//! namespace or non-resource URL (trailing `*`); none matching is `None`.
//! Events are emitted at `RequestReceived` (once the user is known),
//! `ResponseStarted` (long-running requests: watches and the node proxies)
//! and `ResponseComplete`, minus the policy's and the rule's `omitStages`;
//! a failed authentication gives one `ResponseStarted` event, as upstream.
//!
//! Handling a request only assembles the event's fields; a writer thread
//! decodes request and response bodies, serialises and writes, in batches,
//! through a bounded queue. A full queue or a failing disk drops events
//! (counted and logged), never blocks or fails a request.

use std::collections::HashSet;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Frame, SizeHint};
use hyper::{HeaderMap, Response, header};
use kestrel_api::ApiError;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::auth::User;
use crate::authz::Attributes;
use crate::{Config, Error};

/// Events waiting for the writer; beyond this they are dropped.
const QUEUE: usize = 10_000;
/// Subresources whose requests are long-running, as upstream's default.
const LONG_RUNNING_SUBRESOURCES: &[&str] = &["log", "exec", "attach", "portforward", "proxy"];

/// How much of a request is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Nothing.
    None,
    /// Who, what and the outcome.
    Metadata,
    /// And the request body.
    Request,
    /// And the response body.
    RequestResponse,
}

impl Level {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "None" => Self::None,
            "Metadata" => Self::Metadata,
            "Request" => Self::Request,
            "RequestResponse" => Self::RequestResponse,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Metadata => "Metadata",
            Self::Request => "Request",
            Self::RequestResponse => "RequestResponse",
        }
    }
}

const STAGES: &[&str] = &[
    "RequestReceived",
    "ResponseStarted",
    "ResponseComplete",
    "Panic",
];

/// The policy file as upstream defines it; unknown fields are refused so a
/// typo does not silently change what is recorded.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyFile {
    api_version: String,
    kind: String,
    #[serde(default)]
    #[expect(dead_code, reason = "allowed in the file, unused")]
    metadata: Option<Value>,
    #[serde(default)]
    rules: Vec<RuleFile>,
    #[serde(default)]
    omit_stages: Vec<String>,
    #[serde(default)]
    omit_managed_fields: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleFile {
    level: String,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<String>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// A loaded, checked policy.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<(Level, RuleFile)>,
    omit_stages: Vec<String>,
    omit_managed_fields: bool,
}

/// What the policy says about one request.
#[derive(Debug, Clone)]
struct Decision {
    level: Level,
    omit_stages: HashSet<String>,
    omit_managed_fields: bool,
}

impl Policy {
    /// Parse and check a policy (YAML or JSON).
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: PolicyFile = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            serde_saphyr::from_str(text).map_err(|e| e.to_string())?
        };
        if file.api_version != "audit.k8s.io/v1" || file.kind != "Policy" {
            return Err(format!(
                "expected apiVersion audit.k8s.io/v1 and kind Policy, got {:?} and {:?}",
                file.api_version, file.kind
            ));
        }
        if file.rules.is_empty() {
            return Err("a policy needs at least one rule".to_owned());
        }
        let check_stages = |path: &str, stages: &[String]| match stages
            .iter()
            .find(|s| !STAGES.contains(&s.as_str()))
        {
            Some(s) => Err(format!(
                "{path}: Unsupported value: {s:?}: supported values: {}",
                quoted(STAGES)
            )),
            None => Ok(()),
        };
        check_stages("omitStages", &file.omit_stages)?;
        let mut rules = Vec::new();
        for (i, r) in file.rules.into_iter().enumerate() {
            let level = Level::parse(&r.level).ok_or_else(|| {
                format!(
                    "rules[{i}].level: Unsupported value: {:?}: supported values: {}",
                    r.level,
                    quoted(&["None", "Metadata", "Request", "RequestResponse"])
                )
            })?;
            check_stages(&format!("rules[{i}].omitStages"), &r.omit_stages)?;
            if !r.non_resource_urls.is_empty()
                && (!r.resources.is_empty() || !r.namespaces.is_empty())
            {
                return Err(format!(
                    "rules[{i}].nonResourceURLs: Invalid value: {:?}: rules cannot apply to both regular resources and non-resource URLs",
                    r.non_resource_urls
                ));
            }
            if let Some(u) = r
                .non_resource_urls
                .iter()
                .find(|u| u.trim_end_matches('*').contains('*'))
            {
                return Err(format!(
                    "rules[{i}].nonResourceURLs: Invalid value: {u:?}: `*` is only allowed at the end"
                ));
            }
            for (j, g) in r.resources.iter().enumerate() {
                if g.resource_names.iter().any(|n| n.is_empty()) {
                    return Err(format!(
                        "rules[{i}].resources[{j}].resourceNames: Invalid value: \"\": must not be empty"
                    ));
                }
            }
            rules.push((level, r));
        }
        Ok(Self {
            rules,
            omit_stages: file.omit_stages,
            omit_managed_fields: file.omit_managed_fields,
        })
    }

    /// The first matching rule's level (and stages to omit), `None` when no
    /// rule matches.
    fn decide(&self, user: Option<&User>, a: &Attributes) -> Decision {
        let hit = self.rules.iter().find(|(_, r)| rule_matches(r, user, a));
        let mut omit: HashSet<String> = self.omit_stages.iter().cloned().collect();
        let (level, omit_managed_fields) = match hit {
            Some((level, r)) => {
                omit.extend(r.omit_stages.iter().cloned());
                (
                    *level,
                    r.omit_managed_fields.unwrap_or(self.omit_managed_fields),
                )
            }
            None => (Level::None, self.omit_managed_fields),
        };
        Decision {
            level,
            omit_stages: omit,
            omit_managed_fields,
        }
    }
}

fn quoted(list: &[&str]) -> String {
    list.iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Upstream's rule matching (`ruleMatches`).
fn rule_matches(r: &RuleFile, user: Option<&User>, a: &Attributes) -> bool {
    if !r.users.is_empty() && !user.is_some_and(|u| r.users.contains(&u.name)) {
        return false;
    }
    if !r.user_groups.is_empty()
        && !user.is_some_and(|u| u.groups.iter().any(|g| r.user_groups.contains(g)))
    {
        return false;
    }
    if !r.verbs.is_empty() && !r.verbs.contains(&a.verb) {
        return false;
    }
    if !r.namespaces.is_empty() || !r.resources.is_empty() {
        return a.resource_request && resource_matches(r, a);
    }
    if !r.non_resource_urls.is_empty() {
        return !a.resource_request
            && r.non_resource_urls.iter().any(|spec| {
                spec == "*"
                    || *spec == a.path
                    || spec
                        .strip_suffix('*')
                        .is_some_and(|prefix| a.path.starts_with(prefix))
            });
    }
    true
}

fn resource_matches(r: &RuleFile, a: &Attributes) -> bool {
    // Cluster-scoped requests have the empty namespace.
    if !r.namespaces.is_empty() && !r.namespaces.contains(&a.namespace) {
        return false;
    }
    if r.resources.is_empty() {
        return true;
    }
    let combined = a.combined_resource();
    let sub = a.subresource.as_str();
    r.resources
        .iter()
        .filter(|g| g.group == a.api_group)
        .any(|g| {
            if g.resources.is_empty() {
                return true;
            }
            if !g.resource_names.is_empty() && !g.resource_names.contains(&a.name) {
                return false;
            }
            g.resources.iter().any(|res| {
                res == "*"
                    || *res == combined
                    || (!sub.is_empty() && res.strip_prefix("*/") == Some(sub))
                    || res.strip_suffix("/*") == Some(a.resource.as_str())
            })
        })
}

/// The audit backend: the policy and the writer thread's queue.
#[derive(Debug)]
pub struct Auditor {
    policy: Policy,
    queue: SyncSender<Record>,
    dropped: AtomicU64,
}

impl Auditor {
    /// From `--audit-log-path` and `--audit-policy-file`: `None` unless both
    /// are set. A policy that does not load, or a log that cannot be opened,
    /// is an error.
    pub fn from_config(config: &Config) -> Result<Option<Arc<Self>>, Error> {
        let (log, policy) = match (&config.audit_log_path, &config.audit_policy_file) {
            (Some(l), Some(p)) => (l, p),
            (None, None) => return Ok(None),
            (Some(_), None) => {
                tracing::warn!(
                    "--audit-log-path without --audit-policy-file: no events are recorded"
                );
                return Ok(None);
            }
            (None, Some(_)) => {
                tracing::warn!(
                    "--audit-policy-file without --audit-log-path: no events are recorded"
                );
                return Ok(None);
            }
        };
        let text = std::fs::read_to_string(policy)
            .map_err(|e| Error::Config(format!("--audit-policy-file {}: {e}", policy.display())))?;
        let policy_parsed = Policy::parse(&text)
            .map_err(|e| Error::Config(format!("--audit-policy-file {}: {e}", policy.display())))?;
        let out = open_log(log)
            .map_err(|e| Error::Config(format!("--audit-log-path {}: {e}", log.display())))?;
        let (queue, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("audit-log".to_owned())
            .spawn(move || write_events(&rx, out))
            .map_err(|e| Error::Config(format!("starting the audit log writer: {e}")))?;
        tracing::info!(log = %log.display(), policy = %policy.display(), "audit log on");
        Ok(Some(Arc::new(Self {
            policy: policy_parsed,
            queue,
            dropped: AtomicU64::new(0),
        })))
    }

    fn send(&self, r: Record) {
        let full = match self.queue.try_send(r) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Disconnected(_)) => false,
        };
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(dropped = n, full, "audit events dropped");
        }
    }
}

fn open_log(path: &Path) -> std::io::Result<Box<dyn std::io::Write + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdout()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    use std::os::unix::fs::OpenOptionsExt as _;
    // Request bodies may hold secrets: owner-only, as the other credentials.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    Ok(Box::new(f))
}

/// An event for the writer: the fields known when it was emitted, and the
/// bodies it still has to decode.
#[derive(Debug)]
struct Record {
    event: Map<String, Value>,
    request: Option<(Bytes, String)>,
    response: Option<Bytes>,
    level: Level,
    omit_managed_fields: bool,
}

/// The writer thread: drain what is queued, write it as one batch, repeat.
fn write_events(rx: &Receiver<Record>, mut out: Box<dyn std::io::Write + Send>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut n = 0_u64;
        let mut next = Some(first);
        while let Some(r) = next {
            let line = serde_json::to_vec(&Value::Object(complete(r))).unwrap_or_default();
            batch.extend_from_slice(&line);
            batch.push(b'\n');
            n += 1;
            next = if batch.len() < (1 << 20) {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if failing {
            // The last write may have stopped inside a line.
            batch.insert(0, b'\n');
        }
        match out.write_all(&batch).and_then(|()| out.flush()) {
            Ok(()) => {
                if failing {
                    tracing::info!("audit log writable again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, events = n, "writing the audit log failed; dropping events until it works");
                }
                failing = true;
            }
        }
        batch.clear();
    }
}

/// Decode the bodies into `requestObject`/`responseObject` as the level asks.
fn complete(r: Record) -> Map<String, Value> {
    let Record {
        mut event,
        request,
        response,
        level,
        omit_managed_fields,
    } = r;
    let strip = |mut v: Value| {
        if omit_managed_fields {
            strip_managed_fields(&mut v);
        }
        v
    };
    if let Some((body, content_type)) = request
        && let Some(obj) = decode_body(&body, &content_type)
    {
        // Upstream names the object of a create in objectRef at every level.
        if let Some(Value::Object(or)) = event.get_mut("objectRef") {
            for (k, ptr) in [
                ("name", "/metadata/name"),
                ("namespace", "/metadata/namespace"),
            ] {
                if !or.contains_key(k)
                    && let Some(v) = obj
                        .pointer(ptr)
                        .and_then(Value::as_str)
                        .filter(|v| !v.is_empty())
                {
                    or.insert(k.to_owned(), json!(v));
                }
            }
        }
        if level >= Level::Request {
            event.insert("requestObject".to_owned(), strip(obj));
        }
    }
    if let Some(body) = response
        && level >= Level::RequestResponse
        && let Ok(obj) = serde_json::from_slice::<Value>(&body)
    {
        event.insert("responseObject".to_owned(), strip(obj));
    }
    event
}

fn decode_body(body: &[u8], content_type: &str) -> Option<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let mt = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mt == "application/vnd.kubernetes.protobuf" {
        return crate::proto::decode(body).ok();
    }
    if mt.ends_with("yaml") {
        return crate::body::parse_yaml(body).ok();
    }
    crate::body::parse_json(body).ok()
}

fn strip_managed_fields(v: &mut Value) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
        items.iter_mut().for_each(strip_managed_fields);
    }
}

/// RFC 3339 in UTC with microseconds, as upstream's MicroTime.
fn micro_time(t: jiff::Timestamp) -> String {
    jiff::fmt::temporal::DateTimePrinter::new()
        .precision(Some(6))
        .timestamp_to_string(&t)
}

/// The request's source addresses as upstream lists them: X-Forwarded-For,
/// then X-Real-Ip, then the peer, each once.
fn source_ips(headers: &HeaderMap, peer: SocketAddr) -> Vec<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let mut ips: Vec<IpAddr> = header("x-forwarded-for")
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    for ip in [header("x-real-ip").trim().parse().ok(), Some(peer.ip())]
        .into_iter()
        .flatten()
    {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips.iter().map(ToString::to_string).collect()
}

/// One request's audit state, filled in as the request is handled; inert
/// when auditing is off or the policy's level for it is None.
#[derive(Debug, Default)]
pub struct Request {
    state: Option<Box<InFlight>>,
}

#[derive(Debug)]
struct InFlight {
    auditor: Arc<Auditor>,
    id: String,
    received: jiff::Timestamp,
    /// The fields every stage's event shares.
    event: Map<String, Value>,
    /// Set once the user is known (`received`).
    decision: Option<Decision>,
    original: Option<Arc<User>>,
    long_running: bool,
    request_body: Option<(Bytes, String)>,
    /// For the event of a request that failed authentication.
    method: hyper::Method,
    uri: hyper::Uri,
}

impl Request {
    /// Start auditing `req` (from `peer`), if `auditor` is set.
    pub fn new<B>(
        auditor: Option<&Arc<Auditor>>,
        req: &hyper::Request<B>,
        peer: SocketAddr,
    ) -> Self {
        let Some(auditor) = auditor else {
            return Self::default();
        };
        let id = req
            .headers()
            .get("audit-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map_or_else(kestrel_api::meta::new_uid, str::to_owned);
        let mut event = Map::new();
        event.insert("kind".into(), json!("Event"));
        event.insert("apiVersion".into(), json!("audit.k8s.io/v1"));
        event.insert("auditID".into(), json!(id));
        event.insert(
            "requestURI".into(),
            json!(req.uri().path_and_query().map_or("/", |p| p.as_str())),
        );
        event.insert("sourceIPs".into(), json!(source_ips(req.headers(), peer)));
        if let Some(ua) = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            event.insert("userAgent".into(), json!(ua));
        }
        Self {
            state: Some(Box::new(InFlight {
                auditor: auditor.clone(),
                id,
                received: jiff::Timestamp::now(),
                event,
                decision: None,
                original: None,
                long_running: false,
                request_body: None,
                method: req.method().clone(),
                uri: req.uri().clone(),
            })),
        }
    }

    /// The user is authenticated and the request understood: decide the
    /// level and emit `RequestReceived`.
    pub fn received(&mut self, user: &Arc<User>, attrs: &Attributes) {
        let Some(s) = self.state.as_mut() else {
            return;
        };
        let d = s.auditor.policy.decide(Some(user), attrs);
        if d.level == Level::None {
            self.state = None;
            return;
        }
        s.describe(Some(user), attrs, &d);
        s.original = Some(user.clone());
        s.long_running = attrs.verb == "watch"
            || LONG_RUNNING_SUBRESOURCES.contains(&attrs.subresource.as_str());
        s.decision = Some(d);
        s.emit("RequestReceived", None);
    }

    /// Authorization decided, for `user` (the impersonated one, if any).
    pub fn authorized(&mut self, user: &Arc<User>, allowed: bool) {
        let Some(s) = self.state.as_mut() else {
            return;
        };
        if s.original.as_ref().is_some_and(|o| !Arc::ptr_eq(o, user)) {
            s.event.insert("impersonatedUser".into(), user.info());
        }
        s.event.insert(
            "annotations".into(),
            json!({"authorization.k8s.io/decision": if allowed { "allow" } else { "forbid" }}),
        );
    }

    /// The request body, kept for `requestObject` (and a create's name).
    pub fn request_body(&mut self, headers: &HeaderMap, body: &Bytes) {
        let Some(s) = self.state.as_mut() else {
            return;
        };
        let level = s.decision.as_ref().map_or(Level::None, |d| d.level);
        let unnamed_create = s
            .event
            .get("objectRef")
            .is_some_and(|o| o.get("name").is_none())
            && s.event.get("verb") == Some(&json!("create"));
        if !body.is_empty() && (level >= Level::Request || unnamed_create) {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            s.request_body = Some((body.clone(), ct));
        }
    }

    /// The response is ready: emit `ResponseComplete` (or, for long-running
    /// requests, `ResponseStarted` now and `ResponseComplete` when the body
    /// ends) and add the `Audit-Id` header.
    pub async fn finish(self, resp: Response<Body>, err: Option<&ApiError>) -> Response<Body> {
        let Some(mut s) = self.state else {
            return resp;
        };
        let mut resp = resp;
        if let Ok(v) = header::HeaderValue::from_str(&s.id) {
            resp.headers_mut().insert("audit-id", v);
        }
        let code = resp.status().as_u16();
        let status = match err {
            Some(e) => {
                let mut st = e.to_json();
                if let Some(m) = st.as_object_mut() {
                    m.remove("kind");
                    m.remove("apiVersion");
                    m.insert("metadata".into(), json!({}));
                }
                st
            }
            None => json!({"metadata": {}, "code": code}),
        };
        s.event.insert("responseStatus".into(), status);
        if s.decision.is_none() {
            // Authentication failed (or never ran): judged without a user.
            let path = s.uri.path().trim_end_matches('/').to_owned();
            let query = s
                .uri
                .query()
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default();
            let attrs = crate::authz::request::from_request(&s.method, &path, &query);
            let d = s.auditor.policy.decide(None, &attrs);
            if d.level == Level::None {
                return resp;
            }
            s.describe(None, &attrs, &d);
            s.decision = Some(d);
            s.emit("ResponseStarted", None);
            return resp;
        }
        if s.long_running {
            s.emit("ResponseStarted", None);
            let (parts, body) = resp.into_parts();
            return Response::from_parts(
                parts,
                Body::new(Tail {
                    inner: body,
                    done: Some(s),
                }),
            );
        }
        let wants_body = s
            .decision
            .as_ref()
            .is_some_and(|d| d.level >= Level::RequestResponse)
            && resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/json"));
        if !wants_body {
            s.emit("ResponseComplete", None);
            return resp;
        }
        let (parts, body) = resp.into_parts();
        match body.collect().await {
            Ok(b) => {
                let bytes = b.to_bytes();
                s.emit("ResponseComplete", Some(bytes.clone()));
                Response::from_parts(parts, Body::from(bytes))
            }
            Err(e) => {
                s.emit("ResponseComplete", None);
                crate::state::error_response(&ApiError::Internal(format!(
                    "encoding the response: {e}"
                )))
            }
        }
    }
}

impl InFlight {
    /// Fill in who did what, and the level.
    fn describe(&mut self, user: Option<&User>, a: &Attributes, d: &Decision) {
        let ev = &mut self.event;
        ev.insert("level".into(), json!(d.level.as_str()));
        ev.insert("verb".into(), json!(a.verb));
        ev.insert("user".into(), user.map_or_else(|| json!({}), User::info));
        if a.resource_request {
            let mut or = Map::new();
            for (k, v) in [
                ("resource", &a.resource),
                ("namespace", &a.namespace),
                ("name", &a.name),
                ("apiGroup", &a.api_group),
                ("apiVersion", &a.api_version),
                ("subresource", &a.subresource),
            ] {
                if !v.is_empty() {
                    or.insert(k.to_owned(), json!(v));
                }
            }
            ev.insert("objectRef".into(), Value::Object(or));
        }
    }

    /// Queue the event of `stage`, unless the policy omits it.
    fn emit(&mut self, stage: &str, response: Option<Bytes>) {
        let Some(d) = self.decision.as_ref() else {
            return;
        };
        if d.omit_stages.contains(stage) {
            return;
        }
        let mut event = self.event.clone();
        event.insert("stage".into(), json!(stage));
        event.insert(
            "requestReceivedTimestamp".into(),
            json!(micro_time(self.received)),
        );
        event.insert(
            "stageTimestamp".into(),
            json!(micro_time(jiff::Timestamp::now())),
        );
        if stage == "RequestReceived" {
            // Not decided yet when the request arrives.
            event.remove("annotations");
            event.remove("responseStatus");
        }
        // The body is read after RequestReceived.
        let request = self
            .request_body
            .clone()
            .filter(|_| stage != "RequestReceived");
        self.auditor.send(Record {
            event,
            request,
            response,
            level: d.level,
            omit_managed_fields: d.omit_managed_fields,
        });
    }
}

/// A long-running response's body: `ResponseComplete` is emitted when it
/// ends (sent in full, or dropped with the connection).
struct Tail {
    inner: Body,
    done: Option<Box<InFlight>>,
}

impl hyper::body::Body for Tail {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if let Some(mut s) = self.done.take() {
            s.emit("ResponseComplete", None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;
    use std::collections::HashMap;

    fn attrs(method: Method, path: &str) -> Attributes {
        crate::authz::request::from_request(&method, path, &HashMap::new())
    }

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: ["system:kube-proxy"]
- level: RequestResponse
  resources:
  - group: ""
    resources: ["configmaps", "pods/status"]
- level: Request
  resources:
  - group: ""
    resources: ["*/log"]
  - group: apps
    resources: ["deployments/*"]
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets"]
    resourceNames: ["special"]
  omitStages: [ResponseStarted]
- level: Metadata
  nonResourceURLs: ["/healthz*", "/version"]
- level: None
"#;

    #[test]
    fn the_first_matching_rule_wins() {
        let p = Policy::parse(POLICY).expect("policy");
        let admin = User::new("admin", ["system:masters"]);
        let proxy = User::new("system:kube-proxy", ["system:authenticated"]);
        let level = |u: &User, m: Method, path: &str| p.decide(Some(u), &attrs(m, path)).level;
        use Level as L;
        assert_eq!(
            level(&admin, Method::GET, "/api/v1/namespaces/a/configmaps/x"),
            L::RequestResponse
        );
        assert_eq!(
            level(&proxy, Method::GET, "/api/v1/namespaces/a/configmaps/x"),
            L::None
        );
        assert_eq!(
            level(&admin, Method::PUT, "/api/v1/namespaces/a/pods/p/status"),
            L::RequestResponse
        );
        assert_eq!(
            level(&admin, Method::PUT, "/api/v1/namespaces/a/pods/p"),
            L::None
        );
        assert_eq!(
            level(&admin, Method::GET, "/api/v1/namespaces/a/pods/p/log"),
            L::Request
        );
        assert_eq!(
            level(
                &admin,
                Method::PUT,
                "/apis/apps/v1/namespaces/a/deployments/d/scale"
            ),
            L::Request
        );
        assert_eq!(
            level(
                &admin,
                Method::GET,
                "/apis/apps/v1/namespaces/a/deployments/d"
            ),
            L::Request
        );
        assert_eq!(
            level(&admin, Method::GET, "/api/v1/namespaces/a/secrets/special"),
            L::Metadata
        );
        assert_eq!(
            level(&admin, Method::GET, "/api/v1/namespaces/a/secrets/other"),
            L::None
        );
        assert_eq!(level(&admin, Method::GET, "/healthz/ping"), L::Metadata);
        assert_eq!(level(&admin, Method::GET, "/version"), L::Metadata);
        assert_eq!(level(&admin, Method::GET, "/versions"), L::None);
        let d = p.decide(
            Some(&admin),
            &attrs(Method::GET, "/api/v1/namespaces/a/secrets/special"),
        );
        assert!(
            d.omit_stages.contains("RequestReceived") && d.omit_stages.contains("ResponseStarted")
        );
        // Namespaces and groups.
        let p = Policy::parse(
            r#"{"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [
                {"level": "Metadata", "namespaces": ["team"], "userGroups": ["devs"]}]}"#,
        )
        .expect("json policy");
        let dev = User::new("d", ["devs"]);
        assert_eq!(
            p.decide(
                Some(&dev),
                &attrs(Method::GET, "/api/v1/namespaces/team/pods")
            )
            .level,
            L::Metadata
        );
        assert_eq!(
            p.decide(
                Some(&dev),
                &attrs(Method::GET, "/api/v1/namespaces/other/pods")
            )
            .level,
            L::None
        );
        assert_eq!(
            p.decide(
                Some(&admin),
                &attrs(Method::GET, "/api/v1/namespaces/team/pods")
            )
            .level,
            L::None
        );
        assert_eq!(
            p.decide(Some(&dev), &attrs(Method::GET, "/api/v1/nodes"))
                .level,
            L::None
        );
    }

    #[test]
    fn bad_policies_are_refused() {
        for (text, why) in [
            (
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: []\n",
                "at least one rule",
            ),
            (
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Everything\n",
                "rules[0].level: Unsupported value: \"Everything\"",
            ),
            (
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  resource: [x]\n",
                "unknown field",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nrules:\n- level: None\n",
                "expected apiVersion audit.k8s.io/v1",
            ),
            (
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [Later]\nrules:\n- level: None\n",
                "omitStages: Unsupported value: \"Later\"",
            ),
            (
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  nonResourceURLs: [/x]\n  namespaces: [a]\n",
                "rules cannot apply to both",
            ),
        ] {
            let e = Policy::parse(text).expect_err(text);
            assert!(e.contains(why), "{e:?} should say {why:?}");
        }
    }

    #[test]
    fn timestamps_have_microseconds() {
        let t = jiff::Timestamp::from_microsecond(1_700_000_000_123_456).expect("ts");
        assert_eq!(micro_time(t), "2023-11-14T22:13:20.123456Z");
        let t = jiff::Timestamp::from_second(1_700_000_000).expect("ts");
        assert_eq!(micro_time(t), "2023-11-14T22:13:20.000000Z");
    }

    #[test]
    fn source_ips_as_upstream() {
        let mut h = HeaderMap::new();
        let peer: SocketAddr = "10.0.0.9:5000".parse().expect("addr");
        assert_eq!(source_ips(&h, peer), ["10.0.0.9"]);
        h.insert(
            "x-forwarded-for",
            "1.1.1.1, bogus, 10.0.0.9".parse().expect("hv"),
        );
        h.insert("x-real-ip", "2.2.2.2".parse().expect("hv"));
        assert_eq!(source_ips(&h, peer), ["1.1.1.1", "10.0.0.9", "2.2.2.2"]);
    }
}
