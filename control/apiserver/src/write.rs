//! The write path shared by every handler, server-side apply, bootstrap
//! and the controllers inside the server: decode checks, admission, the
//! kind's hooks, compare-and-swap against the store, and waiting for the
//! watch cache to show the write. It uses no handler module.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kestrel_api::registry::{self, Hooks, ResourceDef, Subresource};
use kestrel_api::{ApiError, ObjectRef, meta};
use kestrel_store::Revision;
use serde_json::{Value, json};

use crate::admission::{self, chain::Operation};
use crate::cache::{self, Entry};
use crate::kinds;
use crate::state::{AppState, Ctx, Target};

/// How long a write waits for the watch cache to show it.
/// Whether the request is a server-side apply, which records its own
/// manager (`apply.rs`).
fn is_apply(ctx: &Ctx) -> bool {
    ctx.header(hyper::header::CONTENT_TYPE)
        .is_some_and(|c| c.starts_with("application/apply-patch"))
}

pub(crate) const CACHE_WAIT: Duration = Duration::from_secs(10);

/// Retries of an unconditional update that lost a race.
const UPDATE_RETRIES: usize = 8;

/// Map store errors to API errors for `t`.
pub(crate) fn store_err(t: &Target, e: kestrel_store::Error) -> ApiError {
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

pub(crate) fn cache_err(e: cache::CacheError) -> ApiError {
    match e {
        cache::CacheError::TooOld { .. } => ApiError::Expired(e.to_string()),
        cache::CacheError::NotReached { .. } => ApiError::Timeout(e.to_string()),
        cache::CacheError::Store(s) => ApiError::Internal(s.to_string()),
    }
}

/// Encode for storage: resourceVersion lives in the store's revision, not in
/// the value, and custom resources are stored in their storage version.
fn encode(def: &ResourceDef, obj: &Value) -> Bytes {
    let custom_version = def
        .types
        .custom()
        .filter(|c| c.storage_version != def.version);
    let meta = obj.get("metadata").and_then(Value::as_object);
    let clean =
        meta.is_none_or(|m| !m.contains_key("resourceVersion") && !m.contains_key("selfLink"));
    if clean && custom_version.is_none() {
        // Nothing to take out: serialize as is, without copying the object.
        return Bytes::from(serde_json::to_vec(obj).unwrap_or_default());
    }
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

pub(crate) fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
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

pub(crate) fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The stored object, as the requested version serves it.
pub(crate) fn current(state: &AppState, t: &Target) -> Result<Arc<Entry>, ApiError> {
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
    let strict = ctx.filter(|c| c.q("fieldValidation") == Some("Strict"));
    // The input is kept only when unknown fields must be reported.
    let before = strict.map(|_| obj.clone());
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
    if let Some(before) = before {
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
        let manager = crate::managed::manager_of(ctx);
        crate::managed::record_update(&manager, t.def, None, None, &mut obj);
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
    if sub == Some(Subresource::EphemeralContainers) {
        return crate::kinds::pod::merge_ephemeral(old, &new);
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
        if sub == Some(Subresource::EphemeralContainers) {
            // Only the ephemeral containers changed; upstream's own rules.
            let errs = crate::kinds::pod::validate_update(&new, &cur.value);
            if !errs.is_empty() {
                return Err(ApiError::invalid(
                    t.def.group,
                    t.def.kind,
                    t.name.as_deref().unwrap_or(""),
                    errs,
                ));
            }
        } else {
            admission::validate(t.def, &new, Some(&cur.value))?;
        }
        admission::chain::validate(state, &attrs, &new, Some(&cur.value)).await?;
        if let Some(ctx) = ctx.filter(|c| !is_apply(c)) {
            let manager = crate::managed::manager_of(ctx);
            crate::managed::record_update(&manager, t.def, sub, Some(&cur.value), &mut new);
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
        if let Some(done) = kinds::delete(state, t, &cur, dry).await {
            return done;
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
