//! The generic REST handlers: one implementation of every verb for every
//! resource in the registry.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use base64::Engine as _;
use hyper::{Method, Response, StatusCode};
use kestrel_api::registry::{ResourceDef, Subresource};
use kestrel_api::{ApiError, ObjectRef};
use kestrel_store::{RangeOptions, Revision};
use serde_json::{Value, json};

use crate::body::{self, PatchType};
use crate::cache::{self};
use crate::kinds;
use crate::patch;
use crate::state::{AppState, Ctx, ListOpts, Target, json_bytes, json_response};
use crate::table;
use crate::watch;
use crate::write::{
    CACHE_WAIT, DeleteOpts, cache_err, create_object, current, delete_one, meta_mut, served_as,
    store_err, str_at, update_with,
};

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
    if let Some((items, warning)) = kinds::computed(state, def).await {
        ctx.warnings.add(warning.to_owned());
        return computed(state, &ctx, &t, &items);
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
        ("get", None | Some(Subresource::Status | Subresource::EphemeralContainers)) => {
            get(state, &ctx, &t)
        }
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
            crate::eviction::evict(state, &ctx, &t, dry_run(&ctx)?).await
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

/// `get` and `list` of a kind computed on read: the same answers, Table
/// output and selectors as for stored objects.
fn computed(
    state: &AppState,
    ctx: &Ctx,
    t: &Target,
    items: &[Value],
) -> Result<Response<Body>, ApiError> {
    if let Some(name) = &t.name {
        let obj = items
            .iter()
            .find(|o| str_at(o, "/metadata/name") == Some(name))
            .ok_or_else(|| t.not_found())?;
        return Ok(respond_object(ctx, t, StatusCode::OK, obj));
    }
    let opts = ListOpts::parse(ctx, t)?;
    let refs: Vec<Item<'_>> = items
        .iter()
        .filter(|o| opts.matches(o))
        .map(|o| (o, None))
        .collect();
    Ok(list_body(t, ctx, &refs, state.cache.revision(), None))
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

async fn create(state: &Arc<AppState>, ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    let obj = body::decode_object(ctx)?;
    let dry = dry_run(ctx)?;
    let created = create_object(state, Some(ctx), t, obj, dry).await?;
    Ok(respond_object(ctx, t, StatusCode::CREATED, &created))
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
        // A LabelSelector's matchLabels, or the plain map a core/v1
        // ReplicationController selects with.
        let map = if t.def.group.is_empty() {
            obj.pointer("/spec/selector")
        } else {
            obj.pointer("/spec/selector/matchLabels")
        };
        map.and_then(Value::as_object)
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
            PatchType::Strategic => patch::strategic_merge(&mut doc, &p, t.def.lists()),
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
