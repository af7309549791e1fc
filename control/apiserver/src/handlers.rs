//! The generic REST handlers: one implementation of every verb for every
//! resource in the registry.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use kestrel_api::fields::FieldSelector;
use kestrel_api::labels::Selector;
use kestrel_api::registry::{self, Hooks, ResourceDef, Subresource};
use kestrel_api::{ApiError, ObjectRef, meta};
use kestrel_store::{RangeOptions, Revision};
use serde_json::{Value, json};

use crate::admission::{self, chain::Operation};
use crate::body::{self, PatchType};
use crate::cache::{self, Entry};
use crate::patch;
use crate::server::{AppState, Ctx, json_bytes, json_response};
use crate::table;
use crate::watch;

/// The endpoint where an agent trades the node token for a client certificate.
pub const JOIN_PATH: &str = "/kestrel/v1/node-join";

/// How long a write waits for the watch cache to show it.
const CACHE_WAIT: Duration = Duration::from_secs(10);
/// Retries of an unconditional update that lost a race.
const UPDATE_RETRIES: usize = 8;

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

    fn not_found(&self) -> ApiError {
        ApiError::NotFound(ObjectRef::new(
            self.def.group,
            self.def.plural,
            self.name.as_deref().unwrap_or(""),
        ))
    }
}

/// Map store errors to API errors for `t`.
fn store_err(t: &Target, e: kestrel_store::Error) -> ApiError {
    use kestrel_store::Error as E;
    let name = t.name.as_deref().unwrap_or("");
    match e {
        E::NotFound { .. } => t.not_found(),
        E::AlreadyExists { .. } => {
            ApiError::AlreadyExists(ObjectRef::new(t.def.group, t.def.plural, name))
        }
        E::Conflict { .. } => ApiError::stale(t.def.group, t.def.plural, name),
        E::Compacted { compact_revision } => ApiError::Expired(format!(
            "The resourceVersion for the provided list is too old (compacted at {compact_revision})."
        )),
        E::TooLarge { .. } => ApiError::RequestEntityTooLarge,
        other => {
            tracing::error!(error = %other, "store failure");
            ApiError::Internal(format!("storage error: {other}"))
        }
    }
}

fn cache_err(e: cache::CacheError) -> ApiError {
    match e {
        cache::CacheError::TooOld { .. } => ApiError::Expired(e.to_string()),
        cache::CacheError::NotReached { .. } => ApiError::Timeout(e.to_string()),
        cache::CacheError::Store(s) => ApiError::Internal(s.to_string()),
    }
}

/// Encode for storage: resourceVersion lives in the store's revision, not in
/// the value, and custom resources are stored in their storage version.
fn encode(def: &ResourceDef, obj: &Value) -> Bytes {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("selfLink");
    }
    if let Some(c) = def.types.custom()
        && c.storage_version != def.version
    {
        o["apiVersion"] = json!(format!("{}/{}", def.group, c.storage_version));
    }
    Bytes::from(serde_json::to_vec(&o).unwrap_or_default())
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object)
        && let Some(o) = obj.as_object_mut()
    {
        o.insert("metadata".into(), json!({}));
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was made an object just above"),
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// Whether the request is a server-side apply, which records its own
/// manager (`apply.rs`).
fn is_apply(ctx: &Ctx) -> bool {
    ctx.header(hyper::header::CONTENT_TYPE)
        .is_some_and(|c| c.starts_with("application/apply-patch"))
}

fn dry_run(ctx: &Ctx) -> Result<bool, ApiError> {
    match ctx.q("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "dryRun: Unsupported value: {other:?}: supported values: \"All\""
        ))),
    }
}

/// `POST /kestrel/v1/node-join`: `{"nodeName": N, "csr": PEM}` with the node
/// token as bearer → `{"certificate": PEM, "ca": PEM}` for CN=system:node:N.
pub async fn join(state: &Arc<AppState>, ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    if ctx.method != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let allowed = ctx
        .user
        .groups
        .iter()
        .any(|g| g == "system:bootstrappers" || g == "system:masters");
    if !allowed {
        return Err(ApiError::Forbidden(format!(
            "user {:?} may not join nodes",
            ctx.user.name
        )));
    }
    let v = body::parse_json(&ctx.body)?;
    let node = v.get("nodeName").and_then(Value::as_str).unwrap_or("");
    let errs = kestrel_api::validation::dns1123_subdomain(node);
    if !errs.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "nodeName {node:?}: {}",
            errs.join("; ")
        )));
    }
    let csr = v
        .get("csr")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest("csr (PEM) is required".to_owned()))?;
    let cert = state
        .pki
        .sign_node_csr(node, csr)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    tracing::info!(node, "issued node client certificate");
    Ok(json_response(
        StatusCode::OK,
        &json!({"certificate": cert, "ca": state.pki.ca_pem}),
    ))
}

/// Every `/api/v1/...` and `/apis/<g>/<v>/...` path below the version.
pub async fn resource(
    state: &Arc<AppState>,
    ctx: Ctx,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Response<Body>, ApiError> {
    let mut rest = rest;
    let mut watch_path = false;
    if rest.first() == Some(&"watch") {
        watch_path = true;
        rest = &rest[1..];
    }
    let (ns, rest) = if rest.len() >= 3
        && rest[0] == "namespaces"
        && state
            .crds
            .lookup_fresh(&state.cache, group, version, rest[2])
            .await
            .is_some_and(|d| d.namespaced)
    {
        (Some(rest[1].to_owned()), &rest[2..])
    } else {
        (None, rest)
    };
    let Some(plural) = rest.first() else {
        return Err(ApiError::RouteNotFound);
    };
    let def = state
        .crds
        .lookup_fresh(&state.cache, group, version, plural)
        .await
        .ok_or(ApiError::RouteNotFound)?;
    if rest.len() > 3
        || (!def.namespaced && ns.is_some())
        || (def.namespaced && ns.is_none() && rest.len() > 1)
    {
        return Err(ApiError::RouteNotFound);
    }
    let name = rest.get(1).map(|s| (*s).to_owned());
    let sub = match rest.get(2) {
        Some(s) => Some(def.has_subresource(s).ok_or(ApiError::RouteNotFound)?),
        None => None,
    };
    let t = Target { def, ns, name };
    let is_watch = watch_path || ctx.q_bool("watch");
    let verb = match (&ctx.method, t.name.is_some(), is_watch) {
        (&Method::GET, _, true) => "watch",
        (&Method::GET, true, false) => "get",
        (&Method::GET, false, false) => "list",
        (&Method::POST, false, _) => "create",
        (&Method::POST, true, _) if sub.is_some() => "create",
        (&Method::PUT, true, _) => "update",
        (&Method::PATCH, true, _) => "patch",
        (&Method::DELETE, true, _) => "delete",
        (&Method::DELETE, false, _) => "deletecollection",
        _ => return Err(ApiError::MethodNotAllowed),
    };
    let allowed = match sub {
        Some(s) => s.verbs().contains(&verb),
        None => def.allows(verb),
    };
    if !allowed {
        return Err(ApiError::MethodNotAllowed);
    }
    if let Some(c) = def.types.custom() {
        if let Some(w) = &c.deprecation_warning {
            ctx.warnings.add(w.clone());
        }
        if verb == "create" && sub.is_none() && state.crds.is_terminating(def) {
            return Err(ApiError::MethodNotAllowedMessage(
                "create not allowed while custom resource definition is terminating".to_owned(),
            ));
        }
    }
    match (verb, sub) {
        ("watch", None) => watch::serve(state, &ctx, &t).await,
        ("list", None) => list(state, &ctx, &t).await,
        ("get", None) | ("get", Some(Subresource::Status)) => get(state, &ctx, &t),
        ("get", Some(Subresource::Scale)) => {
            let obj = current(state, &t)?;
            Ok(json_response(StatusCode::OK, &scale_of(&t, &obj.value)))
        }
        ("create", None) => create(state, &ctx, &t).await,
        ("create", Some(Subresource::Binding)) => bind(state, &ctx, &t).await,
        ("create", Some(Subresource::Token)) => {
            crate::serviceaccount::token_request(state, &ctx, &t).await
        }
        ("create", Some(Subresource::Eviction)) => {
            let obj = delete_one(state, &t, &DeleteOpts::default(), dry_run(&ctx)?).await?;
            drop(obj);
            Ok(json_bytes(
                StatusCode::CREATED,
                kestrel_api::status::success_status(None),
                "application/json",
            ))
        }
        ("update", sub) => update(state, &ctx, &t, sub).await,
        ("patch", sub) => patch_handler(state, &ctx, &t, sub).await,
        ("delete", None) => delete(state, &ctx, &t).await,
        ("deletecollection", None) => delete_collection(state, &ctx, &t).await,
        (_, Some(Subresource::Log | Subresource::Exec)) => Err(ApiError::ServiceUnavailable(
            "log and exec are proxied to the node agent, which is not connected yet".to_owned(),
        )),
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// The stored object, as the requested version serves it.
fn current(state: &AppState, t: &Target) -> Result<Arc<Entry>, ApiError> {
    let e = state.cache.get(&t.key()).ok_or_else(|| t.not_found())?;
    Ok(match served_as(t.def, &e.value) {
        Some(v) => Arc::new(Entry {
            json: Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
            value: Arc::new(v),
            mod_revision: e.mod_revision,
        }),
        None => e,
    })
}

/// A custom resource stored in another version, as `def`'s version serves
/// it (conversion strategy None: only `apiVersion` changes). `None` when
/// the stored form is already right.
pub fn served_as(def: &ResourceDef, obj: &Value) -> Option<Value> {
    def.types.custom()?;
    let want = def.api_version();
    if obj.get("apiVersion").and_then(Value::as_str) == Some(want.as_str()) {
        return None;
    }
    let mut v = obj.clone();
    v["apiVersion"] = json!(want);
    Some(v)
}

fn respond_object(ctx: &Ctx, t: &Target, code: StatusCode, obj: &Value) -> Response<Body> {
    if table::wants_table(ctx) {
        let include = ctx.q("includeObject").unwrap_or("PartialObjectMetadata");
        let rv = str_at(obj, "/metadata/resourceVersion")
            .unwrap_or("")
            .to_owned();
        return json_response(
            code,
            &table::table(t.def, [obj], json!({"resourceVersion": rv}), include),
        );
    }
    json_response(code, obj)
}

fn get(state: &AppState, ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    let e = current(state, t)?;
    Ok(respond_object(ctx, t, StatusCode::OK, &e.value))
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

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: Revision,
    start: String,
}

/// One list item: the object and, when the cache has it, its JSON.
type Item<'a> = (&'a Value, Option<&'a [u8]>);

fn list_body(
    t: &Target,
    ctx: &Ctx,
    items: &[Item<'_>],
    rv: Revision,
    cont: Option<String>,
) -> Response<Body> {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    if table::wants_table(ctx) {
        let include = ctx.q("includeObject").unwrap_or("PartialObjectMetadata");
        return json_response(
            StatusCode::OK,
            &table::table(t.def, items.iter().map(|(v, _)| *v), meta, include),
        );
    }
    // Assembled from the cached encodings: a big list costs a copy, not a
    // re-encode of every object.
    let mut out = Vec::with_capacity(
        64 + items
            .iter()
            .map(|(_, j)| j.map_or(512, <[u8]>::len) + 1)
            .sum::<usize>(),
    );
    out.extend_from_slice(b"{\"kind\":");
    out.extend_from_slice(
        serde_json::to_string(t.def.list_kind)
            .unwrap_or_default()
            .as_bytes(),
    );
    out.extend_from_slice(b",\"apiVersion\":");
    out.extend_from_slice(
        serde_json::to_string(&t.def.api_version())
            .unwrap_or_default()
            .as_bytes(),
    );
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(&serde_json::to_vec(&meta).unwrap_or_default());
    out.extend_from_slice(b",\"items\":[");
    for (i, (v, j)) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(v) = served_as(t.def, v) {
            if serde_json::to_writer(&mut out, &v).is_err() {
                out.extend_from_slice(b"null");
            }
            continue;
        }
        match j {
            Some(j) => out.extend_from_slice(j),
            None => {
                if serde_json::to_writer(&mut out, v).is_err() {
                    out.extend_from_slice(b"null");
                }
            }
        }
    }
    out.extend_from_slice(b"]}");
    json_bytes(StatusCode::OK, out, "application/json")
}

async fn list(state: &Arc<AppState>, ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    let opts = ListOpts::parse(ctx, t)?;
    let limit: usize = match ctx.q("limit") {
        Some(l) if !l.is_empty() => l
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("limit: Invalid value: {l:?}")))?,
        _ => 0,
    };
    let cont = ctx.q("continue").filter(|c| !c.is_empty());
    let rv_param = ctx.q("resourceVersion").filter(|r| !r.is_empty());
    let exact = ctx.q("resourceVersionMatch") == Some("Exact");
    // Narrow to one namespace when the field selector pins it.
    let ns = t.ns.clone().or_else(|| {
        t.def
            .namespaced
            .then(|| opts.fields.exact("metadata.namespace").map(str::to_owned))
            .flatten()
    });
    let prefix = t.def.key_prefix_ns(ns.as_deref());

    if limit == 0 && cont.is_none() && !exact {
        // Served from the cache. With no resourceVersion the list must be
        // at least as new as the store (a consistent read), so wait for the
        // cache to catch up; "0" means any cached state will do.
        match rv_param {
            None => {
                let rev = state
                    .store
                    .current_revision()
                    .await
                    .map_err(|e| store_err(t, e))?;
                state
                    .cache
                    .wait_for(rev, CACHE_WAIT)
                    .await
                    .map_err(cache_err)?;
            }
            Some("0") => {}
            Some(r) => {
                let rev: Revision = r
                    .parse()
                    .map_err(|_| ApiError::BadRequest(format!("invalid resource version {r:?}")))?;
                state
                    .cache
                    .wait_for(rev, Duration::from_secs(3))
                    .await
                    .map_err(cache_err)?;
            }
        }
        let (entries, rev) = state.cache.list(&prefix);
        let items: Vec<Item<'_>> = entries
            .iter()
            .filter(|e| opts.matches(&e.value))
            .map(|e| (&*e.value, Some(&e.json[..])))
            .collect();
        return Ok(list_body(t, ctx, &items, rev, None));
    }

    // Paged or exact-revision lists read one consistent snapshot from the store.
    let (snapshot, mut start_after) = match cont {
        Some(c) => {
            let tok: ContinueToken = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| ApiError::BadRequest("continue key is not valid".to_owned()))?;
            if !tok.start.starts_with(&prefix) {
                return Err(ApiError::BadRequest(
                    "continue key is not valid: it belongs to another list".to_owned(),
                ));
            }
            (Some(tok.rv), Some(tok.start))
        }
        None => match rv_param {
            Some(r) if exact || r != "0" => (
                Some(r.parse::<Revision>().map_err(|_| {
                    ApiError::BadRequest(format!("invalid resource version {r:?}"))
                })?)
                .filter(|_| exact),
                None,
            ),
            _ => (None, None),
        },
    };
    let mut items: Vec<Value> = Vec::new();
    let mut rev = snapshot;
    let mut more;
    loop {
        let want = if limit == 0 {
            0
        } else {
            (limit - items.len()).max(1) * 2
        };
        let res = state
            .store
            .range(
                &prefix,
                RangeOptions {
                    limit: want,
                    start_after: start_after.clone(),
                    revision: rev,
                },
            )
            .await
            .map_err(|e| match e {
                kestrel_store::Error::Compacted { .. } if cont.is_some() => ApiError::Expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.".to_owned(),
                ),
                e => store_err(t, e),
            })?;
        rev = Some(res.revision);
        more = res.more;
        let mut last_key = None;
        for kv in res.items {
            last_key = Some(kv.key.clone());
            if let Some(v) = cache::decode(&kv.value, kv.mod_revision)
                && opts.matches(&v)
            {
                items.push(v);
                if limit > 0 && items.len() == limit {
                    break;
                }
            }
        }
        if let Some(k) = last_key {
            start_after = Some(k);
        }
        if !more || limit == 0 || items.len() >= limit {
            // If we stopped mid-page, there may be more after the last key.
            break;
        }
    }
    // `more` from the store speaks of the page; after a mid-page break the
    // next key is known only by peeking, so carry on from the last returned.
    let rev = rev.unwrap_or(0);
    let cont_token = if limit > 0 && items.len() >= limit {
        let last = items
            .last()
            .and_then(|v| {
                let name = str_at(v, "/metadata/name")?;
                Some(t.def.key(str_at(v, "/metadata/namespace"), name))
            })
            .unwrap_or_default();
        // Only hand out a token if something follows.
        let peek = state
            .store
            .range(
                &prefix,
                RangeOptions {
                    limit: 1,
                    start_after: Some(last.clone()),
                    revision: Some(rev),
                },
            )
            .await
            .map_err(|e| store_err(t, e))?;
        (!peek.items.is_empty()).then(|| {
            let tok = serde_json::to_vec(&ContinueToken {
                rv: rev,
                start: last,
            })
            .unwrap_or_default();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tok)
        })
    } else {
        None
    };
    let refs: Vec<Item<'_>> = items.iter().map(|v| (v, None)).collect();
    Ok(list_body(t, ctx, &refs, rev, cont_token))
}

/// Check `apiVersion`/`kind` of a body against the endpoint, filling them in
/// when absent.
fn check_type(t: &Target, obj: &mut Value) -> Result<(), ApiError> {
    let want_av = t.def.api_version();
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the request body must be a JSON object".to_owned()))?;
    match o.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            o.insert("apiVersion".into(), json!(want_av));
        }
        Some(av) if av == want_av => {}
        Some(av) => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
    }
    match o.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            o.insert("kind".into(), json!(t.def.kind));
        }
        Some(k) if k == t.def.kind => {}
        Some(k) => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                t.def.kind
            )));
        }
    }
    Ok(())
}

/// Run the kind's schema over the object: wrong types are a 400, as
/// upstream's decoder answers; unknown fields are dropped unless the client
/// asked for `fieldValidation=Strict`.
fn normalize(t: &Target, ctx: Option<&Ctx>, obj: Value) -> Result<Value, ApiError> {
    let before = obj.clone();
    let kind = t.def.kind;
    let prefix = format!(
        "{kind} in version {:?} cannot be handled as a {kind}",
        t.def.version
    );
    let out = t
        .def
        .types
        .normalize(obj)
        .map_err(|e| ApiError::BadRequest(format!("{prefix}: {e}")))?;
    if let Some(ctx) = ctx
        && ctx.q("fieldValidation") == Some("Strict")
    {
        let mut unknown = Vec::new();
        unknown_fields(&before, &out, "", &mut unknown);
        if !unknown.is_empty() {
            let msgs: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            return Err(ApiError::BadRequest(format!(
                "{prefix}: strict decoding error: {}",
                msgs.join(", ")
            )));
        }
    }
    Ok(out)
}

fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    // Nulls and empty values are dropped by the encoder, not unknown.
                    None if v.is_null() => {}
                    None if v.as_object().is_some_and(|m| m.is_empty())
                        || v.as_array().is_some_and(|a| a.is_empty()) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn check_namespace_exists(state: &AppState, t: &Target, for_create: bool) -> Result<(), ApiError> {
    let Some(ns) = t.ns.as_deref() else {
        return Ok(());
    };
    let Some(def) = registry::lookup("", "v1", "namespaces") else {
        return Ok(());
    };
    match state.cache.get(&def.key(None, ns)) {
        None => Err(ApiError::NotFound(ObjectRef::new("", "namespaces", ns))),
        Some(e) if for_create && str_at(&e.value, "/status/phase") == Some("Terminating") => {
            Err(ApiError::Forbidden(format!(
                "{} {:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                t.def.plural,
                t.name.as_deref().unwrap_or("")
            )))
        }
        Some(_) => Ok(()),
    }
}

/// What the admission chain sees of a request.
fn admission_attrs<'a>(
    ctx: Option<&'a Ctx>,
    t: &'a Target,
    operation: Operation,
    subresource: Option<Subresource>,
    dry_run: bool,
) -> admission::chain::Attributes<'a> {
    admission::chain::Attributes {
        user: ctx.map(|c| &*c.user),
        operation,
        target: t,
        subresource,
        dry_run,
        warnings: ctx.map(|c| &c.warnings),
    }
}

/// Create `obj` (already decoded) at `t`: the path shared by POST, apply and
/// server bootstrap.
pub async fn create_object(
    state: &Arc<AppState>,
    ctx: Option<&Ctx>,
    t: &Target,
    mut obj: Value,
    dry: bool,
) -> Result<Value, ApiError> {
    check_type(t, &mut obj)?;
    {
        let m = meta_mut(&mut obj);
        if t.def.namespaced {
            let ns = t.ns.clone().unwrap_or_default();
            match m.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".to_owned(),
                    ));
                }
                _ => {
                    m.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            m.remove("namespace");
        }
        let has_name = m
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name
            && let Some(base) = m
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|g| !g.is_empty())
        {
            let n = meta::generate_name(base);
            m.insert("name".into(), json!(n));
        }
        m.insert("uid".into(), json!(meta::new_uid()));
        m.insert("creationTimestamp".into(), json!(meta::now_rfc3339()));
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(k);
        }
        if t.def.tracks_generation() {
            m.insert("generation".into(), json!(1));
        }
    }
    let name = str_at(&obj, "/metadata/name").unwrap_or("").to_owned();
    let t = Target {
        name: Some(name.clone()),
        ..t.clone()
    };
    // Status is the controllers' and kubelet's to write, except where
    // upstream lets creators set it.
    if t.def.has_status()
        && !t.def.strategy.creator_sets_status
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
    obj = normalize(&t, ctx, obj)?;
    admission::prepare_create(t.def, &mut obj);
    admission::set_defaults(t.def, &mut obj);
    let attrs = admission_attrs(ctx, &t, Operation::Create, None, dry);
    admission::chain::mutate(state, &attrs, &mut obj, None).await?;
    admission::validate(t.def, &obj, None)?;
    check_namespace_exists(state, &t, true)?;
    if str_at(&obj, "/metadata/name").is_some_and(|n| n.len() > 253) {
        return Err(ApiError::invalid(
            t.def.group,
            t.def.kind,
            &name,
            vec![kestrel_api::FieldError::invalid(
                "metadata.name",
                &name,
                "must be no more than 253 characters",
            )],
        ));
    }
    admission::chain::validate(state, &attrs, &obj, None).await?;
    if let Some(ctx) = ctx.filter(|c| !is_apply(c)) {
        let manager = crate::apply::manager_of(ctx);
        crate::apply::record_update(&manager, &t.def.api_version(), None, None, &mut obj);
    }
    if dry {
        return Ok(obj);
    }
    // A name already taken fails before anything is allocated for it.
    if t.def.strategy.hooks != Hooks::None && state.cache.get(&t.key()).is_some() {
        return Err(ApiError::AlreadyExists(ObjectRef::new(
            t.def.group,
            t.def.plural,
            &name,
        )));
    }
    let allocated = crate::kinds::allocate(state, t.def, &mut obj, None, None)?;
    // Events expire like upstream's --event-ttl (1h), so they never pile up.
    let write = match t.def.strategy.ttl_secs {
        Some(ttl) => {
            state
                .store
                .create_with_ttl(&t.key(), encode(t.def, &obj), Duration::from_secs(ttl))
                .await
        }
        None => state.store.create(&t.key(), encode(t.def, &obj)).await,
    };
    let rev = match write {
        Ok(r) => r,
        Err(e) => {
            if let Some(a) = &allocated {
                a.release(state);
            }
            return Err(store_err(&t, e));
        }
    };
    cache::set_resource_version(&mut obj, rev);
    state
        .cache
        .wait_for(rev, CACHE_WAIT)
        .await
        .map_err(cache_err)?;
    Ok(obj)
}

async fn create(state: &Arc<AppState>, ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    let obj = body::decode_object(ctx)?;
    let dry = dry_run(ctx)?;
    let created = create_object(state, Some(ctx), t, obj, dry).await?;
    Ok(respond_object(ctx, t, StatusCode::CREATED, &created))
}

/// Everything but metadata and status: what a generation counts.
fn spec_part(v: &Value) -> Value {
    let mut o = v.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

/// Fold an update into the stored object the way upstream strategies do.
fn merge_update(t: &Target, old: &Value, mut new: Value, sub: Option<Subresource>) -> Value {
    if sub == Some(Subresource::Finalize) {
        // Only spec.finalizers changes through namespaces/finalize.
        let mut out = old.clone();
        let f = new
            .pointer("/spec/finalizers")
            .cloned()
            .unwrap_or_else(|| json!([]));
        if !out.get("spec").is_some_and(Value::is_object)
            && let Some(o) = out.as_object_mut()
        {
            o.insert("spec".into(), json!({}));
        }
        out["spec"]["finalizers"] = f;
        return out;
    }
    if sub == Some(Subresource::Status) {
        let mut out = old.clone();
        if let Some(o) = out.as_object_mut() {
            match new.get("status") {
                Some(s) => o.insert("status".into(), s.clone()),
                None => o.remove("status"),
            };
        }
        return out;
    }
    let old_meta = old.get("metadata").cloned().unwrap_or_default();
    {
        let m = meta_mut(&mut new);
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
            "generation",
        ] {
            match old_meta.get(k) {
                Some(v) => m.insert(k.into(), v.clone()),
                None => m.remove(k),
            };
        }
    }
    if t.def.has_status()
        && let Some(o) = new.as_object_mut()
    {
        match old.get("status") {
            Some(s) => o.insert("status".into(), s.clone()),
            None => o.remove("status"),
        };
    }
    if t.def.strategy.spec_finalizers {
        // spec.finalizers changes only through the finalize subresource.
        let f = old.pointer("/spec/finalizers").cloned();
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            match f {
                Some(f) => spec.insert("finalizers".into(), f),
                None => spec.remove("finalizers"),
            };
        }
    }
    if let Some(g) = old_meta.get("generation").and_then(Value::as_i64)
        && spec_part(old) != spec_part(&new)
    {
        meta_mut(&mut new).insert("generation".into(), json!(g + 1));
    }
    new
}

/// Read-modify-write with compare-and-swap. `mutate` gets the current
/// object and returns the desired one (or an error). `expected_rv` is the
/// client's precondition, if it gave one.
pub async fn update_with(
    state: &Arc<AppState>,
    ctx: Option<&Ctx>,
    t: &Target,
    sub: Option<Subresource>,
    dry: bool,
    mut mutate: impl FnMut(&Value) -> Result<(Value, Option<Revision>), ApiError>,
) -> Result<Value, ApiError> {
    let key = t.key();
    for attempt in 0..UPDATE_RETRIES {
        let cur = current(state, t)?;
        let (desired, expected_rv) = mutate(&cur.value)?;
        if let Some(rv) = expected_rv
            && rv != cur.mod_revision
        {
            // The cache may trail the store; make sure before failing.
            if rv > cur.mod_revision && attempt == 0 {
                let _ = state.cache.wait_for(rv, Duration::from_secs(2)).await;
                continue;
            }
            return Err(ApiError::stale(
                t.def.group,
                t.def.plural,
                t.name.as_deref().unwrap_or(""),
            ));
        }
        let mut desired = desired;
        check_type(t, &mut desired)?;
        let dn = str_at(&desired, "/metadata/name").unwrap_or("");
        if !dn.is_empty() && Some(dn) != t.name.as_deref() {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({dn}) does not match the name on the URL ({})",
                t.name.as_deref().unwrap_or("")
            )));
        }
        if t.def.namespaced
            && let Some(ns) = str_at(&desired, "/metadata/namespace").filter(|n| !n.is_empty())
            && Some(ns) != t.ns.as_deref()
        {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".to_owned(),
            ));
        }
        let mut new = merge_update(t, &cur.value, desired, sub);
        new = normalize(t, ctx, new)?;
        admission::set_defaults(t.def, &mut new);
        let attrs = admission_attrs(ctx, t, Operation::Update, sub, dry);
        admission::chain::mutate(state, &attrs, &mut new, Some(&cur.value)).await?;
        admission::validate(t.def, &new, Some(&cur.value))?;
        admission::chain::validate(state, &attrs, &new, Some(&cur.value)).await?;
        if let Some(ctx) = ctx.filter(|c| !is_apply(c)) {
            let manager = crate::apply::manager_of(ctx);
            crate::apply::record_update(
                &manager,
                &t.def.api_version(),
                sub,
                Some(&cur.value),
                &mut new,
            );
        }
        let mut allocated = None;
        if !dry {
            allocated = crate::kinds::allocate(state, t.def, &mut new, Some(&cur.value), sub)?;
        }
        let mut cmp_old = (*cur.value).clone();
        let mut cmp_new = new.clone();
        for v in [&mut cmp_old, &mut cmp_new] {
            meta_mut(v).remove("resourceVersion");
        }
        if cmp_old == cmp_new {
            // No-op writes keep the resourceVersion, as upstream.
            return Ok((*cur.value).clone());
        }
        if dry {
            return Ok(new);
        }
        // Finalizers gone from an object being deleted: the update deletes it.
        let finalizers_empty = ["/metadata/finalizers", "/spec/finalizers"]
            .iter()
            .filter(|p| p.starts_with("/metadata") || t.def.strategy.spec_finalizers)
            .all(|p| {
                new.pointer(p)
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
            });
        if new.pointer("/metadata/deletionTimestamp").is_some() && finalizers_empty {
            match state.store.delete(&key, Some(cur.mod_revision)).await {
                Ok(d) => {
                    state
                        .cache
                        .wait_for(d.revision, CACHE_WAIT)
                        .await
                        .map_err(cache_err)?;
                    finish_delete(state, t, &new);
                    cache::set_resource_version(&mut new, d.revision);
                    return Ok(new);
                }
                Err(kestrel_store::Error::Conflict { .. }) if expected_rv.is_none() => continue,
                Err(e) => return Err(store_err(t, e)),
            }
        }
        match state
            .store
            .update(&key, encode(t.def, &new), cur.mod_revision)
            .await
        {
            Ok(rev) => {
                if allocated.is_some() {
                    crate::kinds::updated(state, t.def, &cur.value, &new);
                }
                cache::set_resource_version(&mut new, rev);
                state
                    .cache
                    .wait_for(rev, CACHE_WAIT)
                    .await
                    .map_err(cache_err)?;
                return Ok(new);
            }
            Err(kestrel_store::Error::Conflict { current, .. }) => {
                if let Some(a) = &allocated {
                    a.release(state);
                }
                if expected_rv.is_some() {
                    return Err(ApiError::stale(
                        t.def.group,
                        t.def.plural,
                        t.name.as_deref().unwrap_or(""),
                    ));
                }
                let _ = state.cache.wait_for(current, Duration::from_secs(2)).await;
            }
            Err(e) => {
                if let Some(a) = &allocated {
                    a.release(state);
                }
                return Err(store_err(t, e));
            }
        }
    }
    Err(ApiError::stale(
        t.def.group,
        t.def.plural,
        t.name.as_deref().unwrap_or(""),
    ))
}

fn rv_of(v: &Value) -> Result<Option<Revision>, ApiError> {
    match str_at(v, "/metadata/resourceVersion") {
        None | Some("") => Ok(None),
        Some(r) => r
            .parse()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {r:?}"))),
    }
}

async fn update(
    state: &Arc<AppState>,
    ctx: &Ctx,
    t: &Target,
    sub: Option<Subresource>,
) -> Result<Response<Body>, ApiError> {
    let body = body::decode_object(ctx)?;
    let dry = dry_run(ctx)?;
    if sub == Some(Subresource::Scale) {
        let replicas = body
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let rv = rv_of(&body)?;
        let out = update_with(state, Some(ctx), t, None, dry, |cur| {
            let mut n = cur.clone();
            set_replicas(t.def, &mut n, json!(replicas));
            Ok((n, rv))
        })
        .await?;
        return Ok(json_response(StatusCode::OK, &scale_of(t, &out)));
    }
    let rv = rv_of(&body)?;
    let out = update_with(state, Some(ctx), t, sub, dry, |_| Ok((body.clone(), rv))).await?;
    Ok(respond_object(ctx, t, StatusCode::OK, &out))
}

/// A scale subresource JSON path (`.spec.replicas`) as a JSON pointer.
fn scale_pointer(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .fold(String::new(), |mut p, seg| {
            p.push('/');
            p.push_str(seg);
            p
        })
}

/// Where `def`'s replicas live: (spec, status) JSON pointers. Built-in
/// kinds keep them at `.spec.replicas`/`.status.replicas`; a CRD says.
fn replicas_pointers(def: &ResourceDef) -> (String, String) {
    match def.types.custom().and_then(|c| c.scale.as_ref()) {
        Some(s) => (
            scale_pointer(&s.spec_replicas),
            scale_pointer(&s.status_replicas),
        ),
        None => ("/spec/replicas".to_owned(), "/status/replicas".to_owned()),
    }
}

/// Set the replicas an object asks for, creating parent objects as needed.
fn set_replicas(def: &ResourceDef, obj: &mut Value, replicas: Value) {
    let (spec, _) = replicas_pointers(def);
    let mut at = obj;
    for seg in spec.trim_start_matches('/').split('/') {
        if !at.is_object() {
            *at = json!({});
        }
        at = at
            .as_object_mut()
            .map(|o| o.entry(seg.to_owned()).or_insert(Value::Null))
            .expect("made an object above");
    }
    *at = replicas;
}

fn scale_of(t: &Target, obj: &Value) -> Value {
    let custom_selector = t
        .def
        .types
        .custom()
        .and_then(|c| c.scale.as_ref())
        .map(|s| {
            s.label_selector
                .as_deref()
                .and_then(|p| obj.pointer(&scale_pointer(p)))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        });
    let sel = custom_selector.unwrap_or_else(|| {
        obj.pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| {
                let mut parts: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                parts.sort();
                parts.join(",")
            })
            .unwrap_or_default()
    });
    let (spec_ptr, status_ptr) = replicas_pointers(t.def);
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": t.name,
            "namespace": t.ns,
            "uid": obj.pointer("/metadata/uid"),
            "resourceVersion": obj.pointer("/metadata/resourceVersion"),
            "creationTimestamp": obj.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer(&spec_ptr).cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer(&status_ptr).cloned().unwrap_or(json!(0)), "selector": sel},
    })
}

async fn patch_handler(
    state: &Arc<AppState>,
    ctx: &Ctx,
    t: &Target,
    sub: Option<Subresource>,
) -> Result<Response<Body>, ApiError> {
    let (pt, p) = body::decode_patch(ctx)?;
    let dry = dry_run(ctx)?;
    if pt == PatchType::Apply {
        return crate::apply::apply(state, ctx, t, sub, p, dry).await;
    }
    let apply_patch = |cur: &Value| -> Result<Value, ApiError> {
        let mut doc = cur.clone();
        let res = match pt {
            PatchType::Json => patch::json_patch(&mut doc, &p),
            PatchType::Merge => {
                patch::merge_patch(&mut doc, &p);
                Ok(())
            }
            PatchType::Strategic if t.def.types.custom().is_some() => {
                return Err(ApiError::UnsupportedMediaType(
                    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".to_owned(),
                ));
            }
            PatchType::Strategic => patch::strategic_merge(&mut doc, &p),
            PatchType::Apply => Ok(()),
        };
        match res {
            Ok(()) => Ok(doc),
            Err(patch::PatchError::Invalid(m)) => Err(ApiError::BadRequest(m)),
            Err(patch::PatchError::Failed(m)) => Err(ApiError::invalid(
                t.def.group,
                t.def.kind,
                t.name.as_deref().unwrap_or(""),
                vec![kestrel_api::FieldError {
                    reason: "FieldValueInvalid",
                    field: "".into(),
                    detail: m,
                }],
            )),
        }
    };
    if sub == Some(Subresource::Scale) {
        let out = update_with(state, Some(ctx), t, None, dry, |cur| {
            let scale = apply_patch(&scale_of(t, cur))?;
            let mut n = cur.clone();
            set_replicas(
                t.def,
                &mut n,
                scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0)),
            );
            Ok((
                n,
                rv_of(&scale)
                    .ok()
                    .flatten()
                    .filter(|r| Some(*r) != rv_of(cur).ok().flatten()),
            ))
        })
        .await?;
        return Ok(json_response(StatusCode::OK, &scale_of(t, &out)));
    }
    let out = update_with(state, Some(ctx), t, sub, dry, |cur| {
        let doc = apply_patch(cur)?;
        // A resourceVersion inside the patch is a precondition.
        let rv = p
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|r| r.parse().ok());
        let mut doc = doc;
        if rv.is_none() {
            meta_mut(&mut doc).remove("resourceVersion");
        }
        Ok((doc, rv))
    })
    .await?;
    Ok(respond_object(ctx, t, StatusCode::OK, &out))
}

/// `DeleteOptions` from the query and body.
#[derive(Debug, Default)]
pub struct DeleteOpts {
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<Revision>,
    /// `propagationPolicy`.
    pub propagation: Option<String>,
    /// `gracePeriodSeconds`.
    pub grace: Option<i64>,
    /// Who asks (`None` for the server's own deletes) and where admission's
    /// warnings go: validating webhooks see deletes.
    pub requester: Option<(Arc<crate::auth::User>, admission::chain::Warnings)>,
}

fn delete_opts(ctx: &Ctx) -> Result<DeleteOpts, ApiError> {
    let mut o = DeleteOpts {
        requester: Some((ctx.user.clone(), ctx.warnings.clone())),
        ..DeleteOpts::default()
    };
    if !ctx.body.iter().all(u8::is_ascii_whitespace) {
        // JSON, YAML or protobuf (client-go's typed deletes, e.g. helm's).
        let b = body::decode_object(ctx)?;
        o.uid = str_at(&b, "/preconditions/uid").map(str::to_owned);
        o.resource_version =
            str_at(&b, "/preconditions/resourceVersion").and_then(|r| r.parse().ok());
        o.propagation = str_at(&b, "/propagationPolicy").map(str::to_owned);
        o.grace = b.get("gracePeriodSeconds").and_then(Value::as_i64);
        if let Some(Value::Array(d)) = b.get("dryRun")
            && !d.is_empty()
            && d != &vec![json!("All")]
        {
            return Err(ApiError::BadRequest("dryRun: Unsupported value".to_owned()));
        }
    }
    if let Some(p) = ctx.q("propagationPolicy") {
        o.propagation = Some(p.to_owned());
    }
    if let Some(g) = ctx.q("gracePeriodSeconds").and_then(|g| g.parse().ok()) {
        o.grace = Some(g);
    }
    if let Some(p) = &o.propagation
        && !["Orphan", "Background", "Foreground"].contains(&p.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
        )));
    }
    Ok(o)
}

/// Side effects once an object is gone from the store.
fn finish_delete(state: &AppState, t: &Target, obj: &Value) {
    crate::kinds::deleted(state, t.def, obj);
}

/// Finalizer that holds an owner until the garbage collector has deleted
/// its blocking dependents (`propagationPolicy=Foreground`).
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Finalizer that holds an owner until the garbage collector has removed
/// the references to it from its dependents (`propagationPolicy=Orphan`).
pub const ORPHAN_FINALIZER: &str = "orphan";

/// The object's finalizers after a delete with `propagation`, as upstream's
/// registry sets them: Foreground and Orphan add their finalizer (and drop
/// the other's), Background drops both, and no policy keeps what a
/// previous delete asked for (the default for every kind is Background).
fn gc_finalizers(current: &[Value], propagation: Option<&str>) -> Vec<Value> {
    let add = match propagation {
        Some("Foreground") => Some(FOREGROUND_FINALIZER),
        Some("Orphan") => Some(ORPHAN_FINALIZER),
        Some(_) => None,
        None => return current.to_vec(),
    };
    let mut out: Vec<Value> = current
        .iter()
        .filter(|f| {
            let f = f.as_str().unwrap_or("");
            (f != FOREGROUND_FINALIZER && f != ORPHAN_FINALIZER) || Some(f) == add
        })
        .cloned()
        .collect();
    if let Some(a) = add
        && !out.iter().any(|f| f.as_str() == Some(a))
    {
        out.push(json!(a));
    }
    out
}

/// Delete one object: immediately, or by marking it when finalizers (or a
/// graceful pod shutdown) must run first. Returns the object as last seen.
pub async fn delete_one(
    state: &Arc<AppState>,
    t: &Target,
    opts: &DeleteOpts,
    dry: bool,
) -> Result<Value, ApiError> {
    for _ in 0..UPDATE_RETRIES {
        let cur = current(state, t)?;
        let obj = &cur.value;
        if let Some(uid) = &opts.uid
            && Some(uid.as_str()) != str_at(obj, "/metadata/uid")
        {
            return Err(ApiError::ConflictMessage(
                ObjectRef::new(t.def.group, t.def.plural, t.name.as_deref().unwrap_or("")),
                format!(
                    "Operation cannot be fulfilled on {} {:?}: Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    t.def.plural,
                    t.name.as_deref().unwrap_or(""),
                    str_at(obj, "/metadata/uid").unwrap_or("")
                ),
                vec![],
            ));
        }
        if let Some(rv) = opts.resource_version
            && rv != cur.mod_revision
        {
            return Err(ApiError::stale(
                t.def.group,
                t.def.plural,
                t.name.as_deref().unwrap_or(""),
            ));
        }
        let attrs = admission::chain::Attributes {
            user: opts.requester.as_ref().map(|r| &*r.0),
            operation: Operation::Delete,
            target: t,
            subresource: None,
            dry_run: dry,
            warnings: opts.requester.as_ref().map(|r| &r.1),
        };
        admission::chain::validate_delete(state, &attrs, obj).await?;
        if t.def.strategy.hooks == Hooks::Namespace {
            return crate::namespace::begin_delete(state, t, &cur, dry).await;
        }
        let current_finalizers: Vec<Value> = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let new_finalizers = gc_finalizers(&current_finalizers, opts.propagation.as_deref());
        let finalizers = !new_finalizers.is_empty();
        // Pods bound to a node shut down gracefully: the node agent finishes
        // the delete. Unbound pods have nothing to stop and go at once.
        let graceful_pod = crate::kinds::graceful(t.def, obj, opts.grace);
        let deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        // A Background delete that takes the last (GC) finalizer off an
        // object already being deleted deletes it now, below.
        let released = deleting && !finalizers && !current_finalizers.is_empty() && !graceful_pod;
        if (finalizers || graceful_pod) && !released {
            if deleting && new_finalizers == current_finalizers {
                return Ok((**obj).clone());
            }
            let mut n = (**obj).clone();
            if new_finalizers != current_finalizers {
                meta_mut(&mut n).insert("finalizers".into(), Value::Array(new_finalizers));
            }
            if !deleting {
                let grace = if graceful_pod {
                    opts.grace
                        .or_else(|| {
                            obj.pointer("/spec/terminationGracePeriodSeconds")
                                .and_then(Value::as_i64)
                        })
                        .unwrap_or(30)
                } else {
                    0
                };
                let m = meta_mut(&mut n);
                m.insert("deletionTimestamp".into(), json!(meta::now_rfc3339()));
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            if dry {
                return Ok(n);
            }
            match state
                .store
                .update(&t.key(), encode(t.def, &n), cur.mod_revision)
                .await
            {
                Ok(rev) => {
                    cache::set_resource_version(&mut n, rev);
                    state
                        .cache
                        .wait_for(rev, CACHE_WAIT)
                        .await
                        .map_err(cache_err)?;
                    return Ok(n);
                }
                Err(kestrel_store::Error::Conflict { current, .. }) => {
                    let _ = state.cache.wait_for(current, Duration::from_secs(2)).await;
                    continue;
                }
                Err(e) => return Err(store_err(t, e)),
            }
        }
        if dry {
            return Ok((**obj).clone());
        }
        match state.store.delete(&t.key(), Some(cur.mod_revision)).await {
            Ok(d) => {
                state
                    .cache
                    .wait_for(d.revision, CACHE_WAIT)
                    .await
                    .map_err(cache_err)?;
                finish_delete(state, t, obj);
                let mut last = (**obj).clone();
                cache::set_resource_version(&mut last, d.revision);
                return Ok(last);
            }
            Err(kestrel_store::Error::Conflict { current, .. }) => {
                let _ = state.cache.wait_for(current, Duration::from_secs(2)).await;
            }
            Err(e) => return Err(store_err(t, e)),
        }
    }
    Err(ApiError::stale(
        t.def.group,
        t.def.plural,
        t.name.as_deref().unwrap_or(""),
    ))
}

async fn delete(state: &Arc<AppState>, ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    let opts = delete_opts(ctx)?;
    let dry = dry_run(ctx)?;
    let obj = delete_one(state, t, &opts, dry).await?;
    // Still present (finalizers, graceful) → 202 Accepted, as upstream.
    let pending =
        obj.pointer("/metadata/deletionTimestamp").is_some() && state.cache.get(&t.key()).is_some();
    let code = if pending {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(json_response(code, &obj))
}

async fn delete_collection(
    state: &Arc<AppState>,
    ctx: &Ctx,
    t: &Target,
) -> Result<Response<Body>, ApiError> {
    let opts = ListOpts::parse(ctx, t)?;
    let dopts = delete_opts(ctx)?;
    let dry = dry_run(ctx)?;
    let (entries, _) = state.cache.list(&t.def.key_prefix_ns(t.ns.as_deref()));
    let mut deleted = Vec::new();
    for e in entries.iter().filter(|e| opts.matches(&e.value)) {
        let one = Target {
            def: t.def,
            ns: str_at(&e.value, "/metadata/namespace").map(str::to_owned),
            name: str_at(&e.value, "/metadata/name").map(str::to_owned),
        };
        match delete_one(state, &one, &dopts, dry).await {
            Ok(v) => deleted.push(v),
            Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let refs: Vec<Item<'_>> = deleted.iter().map(|v| (v, None)).collect();
    Ok(list_body(t, ctx, &refs, state.cache.revision(), None))
}

async fn bind(state: &Arc<AppState>, ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    let b = body::decode_object(ctx)?;
    let node = str_at(&b, "/target/name").unwrap_or("").to_owned();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            t.name.as_deref().unwrap_or(""),
            vec![kestrel_api::FieldError::required("target.name", "")],
        ));
    }
    update_with(state, Some(ctx), t, None, dry_run(ctx)?, |cur| {
        if str_at(cur, "/spec/nodeName").is_some_and(|n| !n.is_empty()) {
            return Err(ApiError::ConflictMessage(
                ObjectRef::new("", "pods", t.name.as_deref().unwrap_or("")),
                format!(
                    "Operation cannot be fulfilled on pods/binding {:?}: pod {} is already assigned to node {:?}",
                    t.name.as_deref().unwrap_or(""),
                    t.name.as_deref().unwrap_or(""),
                    str_at(cur, "/spec/nodeName").unwrap_or("")
                ),
                vec![],
            ));
        }
        let mut n = cur.clone();
        n["spec"]["nodeName"] = json!(node);
        Ok((n, None))
    })
    .await?;
    Ok(json_bytes(
        StatusCode::CREATED,
        kestrel_api::status::success_status(None),
        "application/json",
    ))
}
