//! MutatingAdmissionWebhook and ValidatingAdmissionWebhook, with upstream's
//! semantics: the `admissionregistration.k8s.io/v1` configurations come from
//! the watch cache, sorted by name; mutating webhooks are called one after
//! another and their JSON patches applied in turn, validating webhooks are
//! called concurrently and any denial refuses the request.
//!
//! A webhook is called when a rule matches the request (operation, group,
//! version, resource with `*`, `*/*`, `pods/status` and `*/status` forms,
//! scope) and both selectors match: `namespaceSelector` against the labels
//! of the request's namespace (or of the Namespace itself), `objectSelector`
//! against the new or the old object. The call is an HTTPS POST of an
//! `admission.k8s.io/v1` AdmissionReview to `clientConfig.url`, or to a
//! ready endpoint of `clientConfig.service` (the API server need not reach
//! ClusterIPs) with TLS verified for `<service>.<namespace>.svc`, against
//! `caBundle` (the system roots without one).
//!
//! Not implemented: `reinvocationPolicy: IfNeeded` (each mutating webhook
//! runs once), `matchConditions` (CEL; configurations that use them are
//! refused), `matchPolicy: Equivalent` beyond exact matching (Kestrel serves
//! one version per group, so there is nothing to convert), client
//! credentials for webhooks (`--admission-control-config-file`), and
//! connection reuse between calls (TLS sessions are resumed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ServiceReference, ValidatingWebhook,
};
use kestrel_api::labels::Selector;
use kestrel_api::registry::{self, ResourceDef};
use kestrel_api::{ApiError, FieldError, ObjectRef, validation};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use serde_json::{Value, json};

use super::chain::{Attributes, Operation};
use crate::state::AppState;

/// The API group of the configurations.
pub const GROUP: &str = "admissionregistration.k8s.io";
const MUTATING: &str = "MutatingWebhookConfiguration";
const VALIDATING: &str = "ValidatingWebhookConfiguration";
/// `timeoutSeconds` when unset, and its upper bound.
const DEFAULT_TIMEOUT_SECONDS: i32 = 10;
const MAX_TIMEOUT_SECONDS: i32 = 30;
/// Largest AdmissionReview response read from a webhook.
const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;
/// Distinct `caBundle`s whose TLS configuration is kept (for resumption).
const TLS_CONFIGS_KEPT: usize = 64;

/// Call the mutating webhooks that match, in order, applying their patches.
pub async fn mutate(
    state: &AppState,
    a: &Attributes<'_>,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if exempt(a) {
        return Ok(());
    }
    for hook in hooks(state, MUTATING) {
        if !should_call(state, &hook, a, Some(obj), old)? {
            continue;
        }
        let patch = match call(state, &hook, a, Some(obj), old, true).await {
            Ok(p) => p,
            Err(e) => {
                e.into_result(&hook.spec)?;
                continue;
            }
        };
        if let Some(patch) = patch {
            apply_patch(a.target.def, &hook.spec.name, obj, &patch)?;
        }
    }
    Ok(())
}

/// Call the validating webhooks that match, concurrently.
pub async fn validate(
    state: &AppState,
    a: &Attributes<'_>,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    validating(state, a, Some(obj), old).await
}

/// The validating webhooks for a DELETE: `old` is the object being deleted.
pub async fn validate_delete(
    state: &AppState,
    a: &Attributes<'_>,
    old: &Value,
) -> Result<(), ApiError> {
    validating(state, a, None, Some(old)).await
}

async fn validating(
    state: &AppState,
    a: &Attributes<'_>,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if exempt(a) {
        return Ok(());
    }
    let mut chosen = Vec::new();
    for hook in hooks(state, VALIDATING) {
        if should_call(state, &hook, a, obj, old)? {
            chosen.push(hook);
        }
    }
    let results =
        futures::future::join_all(chosen.iter().map(|h| call(state, h, a, obj, old, false))).await;
    // Every webhook has answered; the first refusal in webhook order wins.
    for (hook, r) in chosen.iter().zip(results) {
        if let Err(e) = r {
            e.into_result(&hook.spec)?;
        }
    }
    Ok(())
}

/// Requests the server makes itself carry no user and are not sent to
/// webhooks (a webhook that is down must not stop bootstrap), and, as
/// upstream, writes of the webhook configurations themselves never are, so
/// a broken webhook can always be removed.
fn exempt(a: &Attributes<'_>) -> bool {
    a.user.is_none() || a.target.def.group == GROUP
}

/// One webhook of one configuration.
struct Hook {
    /// A MutatingWebhook is a ValidatingWebhook plus `reinvocationPolicy`,
    /// which Kestrel does not implement, so both kinds are read as this.
    spec: ValidatingWebhook,
}

/// The webhooks of every configuration of `kind`, configurations sorted by
/// name and webhooks in their order.
fn hooks(state: &AppState, kind: &str) -> Vec<Hook> {
    let Some(def) = registry::lookup_kind(GROUP, "v1", kind) else {
        return Vec::new();
    };
    let (mut configs, _) = state.cache.list(&def.key_prefix());
    if configs.is_empty() {
        return Vec::new();
    }
    configs.sort_by(|x, y| name_of(&x.value).cmp(name_of(&y.value)));
    let mut out = Vec::new();
    for c in &configs {
        for w in c
            .value
            .get("webhooks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match serde_json::from_value::<ValidatingWebhook>(w.clone()) {
                Ok(spec) => out.push(Hook { spec }),
                Err(e) => tracing::warn!(
                    configuration = name_of(&c.value),
                    error = %e,
                    "skipping an unreadable webhook"
                ),
            }
        }
    }
    out
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn is_namespace(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.plural == "namespaces"
}

/// Whether any rule of the webhook matches the request.
fn rules_match(rules: &[RuleWithOperations], a: &Attributes<'_>) -> bool {
    let def = a.target.def;
    let sub = a.subresource.map_or("", |s| s.name());
    let has =
        |list: &Option<Vec<String>>, v: &str| list.iter().flatten().any(|x| x == "*" || x == v);
    rules.iter().any(|r| {
        let resource = r.resources.iter().flatten().any(|spec| {
            let (res, s) = spec.split_once('/').unwrap_or((spec, ""));
            (res == "*" || res == def.plural) && (s == "*" || s == sub)
        });
        let scope = match r.scope.as_deref() {
            None | Some("*") => true,
            // A Namespace is cluster-scoped, whatever its requests say.
            Some("Namespaced") => !is_namespace(def) && !a.namespace().is_empty(),
            Some("Cluster") => is_namespace(def) || a.namespace().is_empty(),
            Some(_) => false,
        };
        has(&r.operations, a.operation.as_str())
            && has(&r.api_groups, def.group)
            && has(&r.api_versions, def.version)
            && resource
            && scope
    })
}

fn labels_of(v: Option<&Value>) -> Option<&Value> {
    v.and_then(|o| o.pointer("/metadata/labels"))
}

fn selector(
    hook: &ValidatingWebhook,
    which: &str,
    sel: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Result<Selector, ApiError> {
    match sel {
        None => Ok(Selector::everything()),
        Some(s) => Selector::from_label_selector(s).map_err(|e| {
            ApiError::Internal(format!(
                "Internal error occurred: webhook {:?}: invalid {which}: {e}",
                hook.name
            ))
        }),
    }
}

/// Whether `hook` is to be called for this request (rules and selectors).
fn should_call(
    state: &AppState,
    hook: &Hook,
    a: &Attributes<'_>,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<bool, ApiError> {
    let spec = &hook.spec;
    if !rules_match(spec.rules.as_deref().unwrap_or_default(), a) {
        return Ok(false);
    }
    let ns_sel = selector(spec, "namespaceSelector", spec.namespace_selector.as_ref())?;
    if !ns_sel.is_empty()
        && let Some(labels) = namespace_labels(state, a, obj)?
        && !ns_sel.matches_json(Some(&labels))
    {
        return Ok(false);
    }
    let obj_sel = selector(spec, "objectSelector", spec.object_selector.as_ref())?;
    if !obj_sel.is_empty() {
        let hit = |v: Option<&Value>| v.is_some() && obj_sel.matches_json(labels_of(v));
        if !hit(obj) && !hit(old) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The labels a namespaceSelector is matched against, as upstream: `None`
/// for a cluster-scoped object other than a Namespace (never excluded), a
/// Namespace's new labels when it is created or updated, else the labels of
/// the namespace in the cache. A namespace that does not exist is 404.
fn namespace_labels(
    state: &AppState,
    a: &Attributes<'_>,
    obj: Option<&Value>,
) -> Result<Option<Value>, ApiError> {
    let def = a.target.def;
    let name = if is_namespace(def) {
        if a.subresource.is_none() && matches!(a.operation, Operation::Create | Operation::Update) {
            return Ok(Some(labels_of(obj).cloned().unwrap_or_else(|| json!({}))));
        }
        a.target.name.as_deref().unwrap_or_default()
    } else {
        a.namespace()
    };
    if name.is_empty() {
        return Ok(None);
    }
    let ns_def = registry::lookup("", "v1", "namespaces").ok_or(ApiError::RouteNotFound)?;
    match state.cache.get(&ns_def.key(None, name)) {
        Some(e) => Ok(Some(
            labels_of(Some(&e.value))
                .cloned()
                .unwrap_or_else(|| json!({})),
        )),
        None => Err(ApiError::NotFound(ObjectRef::new("", "namespaces", name))),
    }
}

/// Why a webhook did not allow a request.
enum Refusal {
    /// Calling it failed (unreachable, timed out, a malformed answer): its
    /// `failurePolicy` decides.
    Call(String),
    /// It denied the request, or cannot be called for it (dry run), or its
    /// patch does not apply: always an error.
    Denied(ApiError),
}

impl Refusal {
    fn into_result(self, hook: &ValidatingWebhook) -> Result<(), ApiError> {
        match self {
            Self::Call(why) if hook.failure_policy.as_deref() == Some("Ignore") => {
                tracing::warn!(webhook = %hook.name, error = %why, "failed calling webhook, failing open");
                Ok(())
            }
            Self::Call(why) => {
                tracing::warn!(webhook = %hook.name, error = %why, "failed calling webhook, failing closed");
                Err(ApiError::Internal(format!(
                    "Internal error occurred: failed calling webhook {:?}: {why}",
                    hook.name
                )))
            }
            Self::Denied(e) => Err(e),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::Denied(ApiError::Internal(format!("Internal error occurred: {e}")))
}

/// Call one webhook. A mutating webhook's JSON patch, if it sent one, is
/// returned.
async fn call(
    state: &AppState,
    hook: &Hook,
    a: &Attributes<'_>,
    obj: Option<&Value>,
    old: Option<&Value>,
    mutating: bool,
) -> Result<Option<Value>, Refusal> {
    let spec = &hook.spec;
    if a.dry_run && !matches!(spec.side_effects.as_str(), "None" | "NoneOnDryRun") {
        return Err(Refusal::Denied(ApiError::BadRequest(format!(
            "admission webhook {:?} does not support dry run",
            spec.name
        ))));
    }
    let secs = spec
        .timeout_seconds
        .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
        .clamp(1, MAX_TIMEOUT_SECONDS);
    let dest = destination(state, spec, secs).map_err(Refusal::Call)?;
    let uid = kestrel_api::meta::new_uid();
    let body = serde_json::to_vec(&review(&uid, a, obj, old)).map_err(internal)?;
    let failed = |why: &dyn std::fmt::Display| {
        Refusal::Call(format!(
            "failed to call webhook: Post {:?}: {why}",
            dest.url
        ))
    };
    let answer = match tokio::time::timeout(
        Duration::from_secs(secs.unsigned_abs().into()),
        post(&dest, body),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(failed(&e)),
        Err(_) => return Err(failed(&"context deadline exceeded")),
    };
    let resp = read_response(&uid, &answer).map_err(Refusal::Call)?;
    for w in strings(&resp, "warnings") {
        // Upstream drops warnings that cannot travel in a header.
        if !w.is_empty() && !w.chars().any(char::is_control) {
            a.warn(w);
        }
    }
    if resp.get("allowed").and_then(Value::as_bool) != Some(true) {
        return Err(Refusal::Denied(denial(&spec.name, a, resp.get("status"))));
    }
    if !mutating {
        return Ok(None);
    }
    let Some(patch) = resp
        .get("patch")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
    else {
        return Ok(None);
    };
    match resp.get("patchType").and_then(Value::as_str) {
        Some("JSONPatch") => {}
        None => {
            return Err(Refusal::Call(
                "webhook returned response.patch but not response.patchType".to_owned(),
            ));
        }
        Some(t) => {
            return Err(Refusal::Call(format!(
                "webhook returned invalid response.patchType of {t:?}"
            )));
        }
    }
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| Refusal::Call(format!("decoding response.patch: {e}")))?;
    let patch: Value = serde_json::from_slice(&raw).map_err(internal)?;
    Ok(Some(patch).filter(|p| p.as_array().is_none_or(|ops| !ops.is_empty())))
}

/// Apply a mutating webhook's patch to `obj`: through the kind's type (so
/// unknown fields go, as upstream's decoder drops them) and its defaults.
fn apply_patch(
    def: &ResourceDef,
    hook: &str,
    obj: &mut Value,
    patch: &Value,
) -> Result<(), ApiError> {
    let fail = |e: &dyn std::fmt::Display| {
        ApiError::Internal(format!(
            "Internal error occurred: admission webhook {hook:?} returned a patch that does not apply: {e}"
        ))
    };
    let mut patched = obj.clone();
    crate::patch::json_patch(&mut patched, patch).map_err(|e| fail(&e))?;
    let mut patched = def.types.normalize(patched).map_err(|e| fail(&e))?;
    super::set_defaults(def, &mut patched);
    *obj = patched;
    Ok(())
}

/// Upstream's refusal: the webhook's status, with its message prefixed
/// and a code of at least 400. Kestrel's errors carry a fixed reason per
/// code, so the webhook's own `reason` is kept only in the message.
fn denial(name: &str, a: &Attributes<'_>, status: Option<&Value>) -> ApiError {
    let field = |k: &str| {
        status
            .and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let denied = format!("admission webhook {name:?} denied the request");
    let msg = match (field("message"), field("reason")) {
        ("", "") => format!("{denied} without explanation"),
        ("", r) => format!("{denied}: {r}"),
        (m, _) => format!("{denied}: {m}"),
    };
    let code = status
        .and_then(|s| s.get("code"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    match code {
        403 => ApiError::Forbidden(msg),
        409 => ApiError::ConflictMessage(
            ObjectRef::new(
                a.target.def.group,
                a.target.def.plural,
                a.target.name.as_deref().unwrap_or(""),
            ),
            msg,
            Vec::new(),
        ),
        503 => ApiError::ServiceUnavailable(msg),
        504 => ApiError::Timeout(msg),
        500..=599 => ApiError::Internal(msg),
        _ => ApiError::BadRequest(msg),
    }
}

/// The AdmissionReview sent for this request.
fn review(uid: &str, a: &Attributes<'_>, obj: Option<&Value>, old: Option<&Value>) -> Value {
    let def = a.target.def;
    let (kg, kv, kk) = a
        .subresource
        .map_or((def.group, def.version, def.kind), |s| s.kind(def));
    let kind = json!({"group": kg, "version": kv, "kind": kk});
    let resource = json!({"group": def.group, "version": def.version, "resource": def.plural});
    let name = a
        .target
        .name
        .as_deref()
        .or_else(|| {
            obj.and_then(|o| o.pointer("/metadata/name"))
                .and_then(Value::as_str)
        })
        .unwrap_or("");
    let options = match a.operation {
        Operation::Create => "CreateOptions",
        Operation::Update => "UpdateOptions",
        Operation::Delete => "DeleteOptions",
    };
    let mut options = json!({"kind": options, "apiVersion": "meta.k8s.io/v1"});
    if a.dry_run {
        options["dryRun"] = json!(["All"]);
    }
    let mut req = json!({
        "uid": uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "name": name,
        "operation": a.operation.as_str(),
        "userInfo": a.user.map(crate::auth::User::info).unwrap_or_else(|| json!({})),
        "object": obj,
        "oldObject": old,
        "dryRun": a.dry_run,
        "options": options,
    });
    if let Some(s) = a.subresource {
        req["subResource"] = json!(s.name());
        req["requestSubResource"] = json!(s.name());
    }
    if !a.namespace().is_empty() {
        req["namespace"] = json!(a.namespace());
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

/// The `response` of an AdmissionReview answer, checked as upstream does.
fn read_response(uid: &str, body: &[u8]) -> Result<Value, String> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("failed to call webhook: decoding the AdmissionReview: {e}"))?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let (api_version, kind) = (s("apiVersion"), s("kind"));
    if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
        return Err(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {api_version}, Kind={kind}"
        ));
    }
    let resp = v
        .get_mut("response")
        .filter(|r| r.is_object())
        .map(Value::take)
        .ok_or_else(|| "webhook response was absent".to_owned())?;
    let got = resp.get("uid").and_then(Value::as_str).unwrap_or("");
    if got != uid {
        return Err(format!("expected response.uid={uid:?}, got {got:?}"));
    }
    Ok(resp)
}

/// Where a webhook is reached.
struct Destination {
    /// The URL, as error messages show it.
    url: String,
    /// What to dial.
    host: String,
    port: u16,
    /// The name its certificate must carry.
    server_name: String,
    /// The `Host` header.
    authority: String,
    /// Path and query of the request.
    path: String,
    tls: Arc<rustls::ClientConfig>,
}

fn destination(
    state: &AppState,
    spec: &ValidatingWebhook,
    secs: i32,
) -> Result<Destination, String> {
    let cc = &spec.client_config;
    let tls = tls_config(cc.ca_bundle.as_ref().map(|b| b.0.as_slice()))?;
    let with_timeout = |path: &str| {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{path}{sep}timeout={secs}s")
    };
    if let Some(url) = cc.url.as_deref() {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!(
                "invalid URL {url:?}: 'https' is the only allowed URL scheme"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("invalid URL {url:?}: host must be specified"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let path = with_timeout(uri.path_and_query().map_or("/", |p| p.as_str()));
        return Ok(Destination {
            url: format!("https://{authority}{path}"),
            port: authority.port_u16().unwrap_or(443),
            server_name: host.clone(),
            authority: authority.as_str().to_owned(),
            host,
            path,
            tls,
        });
    }
    let Some(svc) = cc.service.as_ref() else {
        return Err("the webhook has neither clientConfig.url nor clientConfig.service".to_owned());
    };
    let port =
        u16::try_from(svc.port.unwrap_or(443)).map_err(|_| "invalid service port".to_owned())?;
    let (host, target_port) = service_endpoint(state, svc, port)?;
    let server_name = format!("{}.{}.svc", svc.name, svc.namespace);
    let path = with_timeout(svc.path.as_deref().unwrap_or("/"));
    Ok(Destination {
        url: format!("https://{server_name}:{port}{path}"),
        authority: format!("{server_name}:{port}"),
        server_name,
        host,
        port: target_port,
        path,
        tls,
    })
}

/// A ready endpoint of the Service, as upstream's endpoint resolver picks
/// one: the Service port numbered `port`, then a random ready address of the
/// EndpointSlices' port of the same name. An ExternalName Service is dialled
/// by its name.
fn service_endpoint(
    state: &AppState,
    svc: &ServiceReference,
    port: u16,
) -> Result<(String, u16), String> {
    let get = |group: &str, plural: &str| {
        registry::lookup(group, "v1", plural).ok_or_else(|| format!("{plural} are not served"))
    };
    let services = get("", "services")?;
    let entry = state
        .cache
        .get(&services.key(Some(&svc.namespace), &svc.name))
        .ok_or_else(|| format!("service {:?} not found", svc.name))?;
    let s = &entry.value;
    if s.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
        let name = s
            .pointer("/spec/externalName")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Ok((name.to_owned(), port));
    }
    let port_name = s
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p.get("port").and_then(Value::as_u64) == Some(u64::from(port)))
        .map(|p| {
            p.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        })
        .ok_or_else(|| format!("no service port {port} found for service {:?}", svc.name))?;
    let slices = get("discovery.k8s.io", "endpointslices")?;
    let (entries, _) = state
        .cache
        .list(&slices.key_prefix_ns(Some(&svc.namespace)));
    let mut ready = Vec::new();
    for e in &entries {
        let sl = &e.value;
        if sl
            .pointer("/metadata/labels/kubernetes.io~1service-name")
            .and_then(Value::as_str)
            != Some(svc.name.as_str())
        {
            continue;
        }
        let Some(p) = sl
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name)
            .and_then(|p| p.get("port").and_then(Value::as_u64))
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in sl
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // Ready unless it says otherwise, as the EndpointSlice API has it.
            if ep.pointer("/conditions/ready").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            if let Some(addr) = ep.pointer("/addresses/0").and_then(Value::as_str) {
                ready.push((addr.to_owned(), p));
            }
        }
    }
    if ready.is_empty() {
        return Err(format!("no endpoints available for service {:?}", svc.name));
    }
    let i = rand::random_range(0..ready.len());
    Ok(ready.swap_remove(i))
}

/// The TLS client configuration for a `caBundle` (PEM; the system roots
/// when empty), kept per bundle so sessions are resumed between calls.
fn tls_config(ca: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIGS: OnceLock<Mutex<HashMap<Vec<u8>, Arc<rustls::ClientConfig>>>> = OnceLock::new();
    let ca = ca.unwrap_or_default();
    let configs = CONFIGS.get_or_init(Mutex::default);
    if let Some(c) = configs.lock().unwrap_or_else(|p| p.into_inner()).get(ca) {
        return Ok(c.clone());
    }
    let mut roots = rustls::RootCertStore::empty();
    if ca.is_empty() {
        let (added, _) = roots.add_parsable_certificates(system_roots());
        if added == 0 {
            return Err("no caBundle and no system certificate authorities".to_owned());
        }
    } else {
        for c in CertificateDer::pem_slice_iter(ca) {
            let c = c.map_err(|e| format!("invalid caBundle: {e}"))?;
            roots.add(c).map_err(|e| format!("invalid caBundle: {e}"))?;
        }
        if roots.is_empty() {
            return Err("invalid caBundle: no PEM certificate in it".to_owned());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cfg = Arc::new(cfg);
    let mut map = configs.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= TLS_CONFIGS_KEPT {
        map.clear();
    }
    map.insert(ca.to_vec(), cfg.clone());
    Ok(cfg)
}

/// The host's certificate authorities, where the usual distributions keep
/// them (or `SSL_CERT_FILE`).
fn system_roots() -> Vec<CertificateDer<'static>> {
    let mut files: Vec<std::path::PathBuf> = std::env::var_os("SSL_CERT_FILE")
        .map(Into::into)
        .into_iter()
        .collect();
    files.extend(
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/cert.pem",
        ]
        .map(Into::into),
    );
    files
        .iter()
        .find_map(|f| std::fs::read(f).ok())
        .map(|pem| {
            CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect()
        })
        .unwrap_or_default()
}

/// POST `body` and return the answer's body (HTTP/1.1 over TLS, one
/// connection per call).
async fn post(dest: &Destination, body: Vec<u8>) -> Result<Bytes, String> {
    let tcp = tokio::net::TcpStream::connect((dest.host.as_str(), dest.port))
        .await
        .map_err(|e| format!("dial tcp {}:{}: {e}", dest.host, dest.port))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(dest.server_name.clone())
        .map_err(|e| format!("invalid server name {:?}: {e}", dest.server_name))?;
    let tls = tokio_rustls::TlsConnector::from(dest.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut sender, mut conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    let req = hyper::Request::post(dest.path.as_str())
        .header(header::HOST, dest.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).into_owned();
            return Err(format!(
                "the server responded with {status}: {}",
                text.trim()
            ));
        }
        Ok(bytes)
    };
    // The connection is driven alongside; if it fails, the exchange fails.
    let drive = async {
        if let Err(e) = (&mut conn).await {
            tracing::debug!(error = %e, "webhook connection ended with an error");
        }
        std::future::pending::<Result<Bytes, String>>().await
    };
    tokio::select! {
        r = exchange => r,
        r = drive => r,
    }
}

/// Upstream's defaults for a webhook configuration.
pub fn set_config_defaults(kind: &str, obj: &mut Value) {
    let default = super::default;
    for w in obj
        .get_mut("webhooks")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        default(w, "failurePolicy", json!("Fail"));
        default(w, "matchPolicy", json!("Equivalent"));
        default(w, "namespaceSelector", json!({}));
        default(w, "objectSelector", json!({}));
        default(w, "timeoutSeconds", json!(DEFAULT_TIMEOUT_SECONDS));
        if kind == MUTATING {
            default(w, "reinvocationPolicy", json!("Never"));
        }
        for r in w
            .get_mut("rules")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            default(r, "scope", json!("*"));
        }
        if let Some(svc) = w
            .get_mut("clientConfig")
            .and_then(|c| c.get_mut("service"))
            .and_then(Value::as_object_mut)
        {
            default(svc, "port", json!(443));
        }
    }
}

/// Upstream's validation of a webhook configuration, for the parts Kestrel
/// implements (and a refusal of `matchConditions`, which it does not).
pub fn check_config(kind: &str, obj: &Value, errs: &mut Vec<FieldError>) {
    let mut names = std::collections::HashSet::new();
    let webhooks = obj
        .get("webhooks")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    for (i, w) in webhooks.iter().enumerate() {
        let p = |f: &str| format!("webhooks[{i}].{f}");
        let s = |k: &str| w.get(k).and_then(Value::as_str).unwrap_or("");
        let name = s("name");
        if name.is_empty() {
            errs.push(FieldError::required(p("name"), ""));
        } else {
            let msgs = validation::dns1123_subdomain(name);
            if msgs.is_empty() && name.split('.').count() < 3 {
                errs.push(FieldError::invalid(
                    p("name"),
                    name,
                    "should be a domain with at least three segments separated by dots",
                ));
            }
            for m in msgs {
                errs.push(FieldError::invalid(p("name"), name, m));
            }
            if !names.insert(name) {
                errs.push(FieldError::duplicate(p("name"), name));
            }
        }
        let versions = strings(w, "admissionReviewVersions");
        if versions.is_empty() {
            errs.push(FieldError::required(
                p("admissionReviewVersions"),
                "must specify one of v1",
            ));
        } else if !versions.contains(&"v1") {
            errs.push(FieldError::invalid(
                p("admissionReviewVersions"),
                &format!("{versions:?}"),
                "must include at least one of v1",
            ));
        }
        match s("sideEffects") {
            "" => errs.push(FieldError::required(
                p("sideEffects"),
                "must specify one of None, NoneOnDryRun",
            )),
            "None" | "NoneOnDryRun" => {}
            v => errs.push(FieldError::not_supported(
                p("sideEffects"),
                v,
                &["None", "NoneOnDryRun"],
            )),
        }
        let mut one_of = |field: &str, allowed: &[&str]| {
            let v = s(field);
            if !v.is_empty() && !allowed.contains(&v) {
                errs.push(FieldError::not_supported(p(field), v, allowed));
            }
        };
        one_of("failurePolicy", &["Fail", "Ignore"]);
        one_of("matchPolicy", &["Exact", "Equivalent"]);
        if kind == MUTATING {
            one_of("reinvocationPolicy", &["Never", "IfNeeded"]);
        }
        if let Some(t) = w.get("timeoutSeconds").and_then(Value::as_i64)
            && !(1..=i64::from(MAX_TIMEOUT_SECONDS)).contains(&t)
        {
            errs.push(FieldError::invalid(
                p("timeoutSeconds"),
                &t.to_string(),
                "the timeout value must be between 1 and 30 seconds",
            ));
        }
        if w.get("matchConditions")
            .and_then(Value::as_array)
            .is_some_and(|m| !m.is_empty())
        {
            errs.push(FieldError::forbidden(
                p("matchConditions"),
                "not supported by Kestrel (CEL is not implemented)",
            ));
        }
        for sel in ["namespaceSelector", "objectSelector"] {
            if let Some(v) = w.get(sel).filter(|v| !v.is_null()) {
                let ok = serde_json::from_value(v.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|ls| Selector::from_label_selector(&ls).map_err(|e| e.to_string()));
                if let Err(e) = ok {
                    errs.push(FieldError::invalid(p(sel), &v.to_string(), e));
                }
            }
        }
        check_client_config(&p("clientConfig"), w.get("clientConfig"), errs);
        check_rules(&p("rules"), w.get("rules"), errs);
    }
}

/// The strings in the array at `key` (others are skipped).
fn strings<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn check_client_config(path: &str, cc: Option<&Value>, errs: &mut Vec<FieldError>) {
    let url = cc.and_then(|c| c.get("url")).and_then(Value::as_str);
    let svc = cc.and_then(|c| c.get("service")).filter(|s| !s.is_null());
    match (url, svc) {
        (Some(url), None) => {
            let field = format!("{path}.url");
            let why = match url.parse::<hyper::Uri>() {
                _ if url.contains('#') => Some("fragments are not permitted in the URL"),
                Err(_) => Some("must be a valid URL"),
                Ok(u) if u.scheme_str() != Some("https") => {
                    Some("'https' is the only allowed URL scheme")
                }
                Ok(u) if u.host().is_none_or(str::is_empty) => Some("host must be specified"),
                Ok(u) if u.authority().is_some_and(|a| a.as_str().contains('@')) => {
                    Some("user information is not permitted in the URL")
                }
                Ok(u) if u.query().is_some() => {
                    Some("query parameters are not permitted in the URL")
                }
                Ok(_) => None,
            };
            if let Some(why) = why {
                errs.push(FieldError::invalid(field, url, why));
            }
        }
        (None, Some(svc)) => {
            let s = |k: &str| svc.get(k).and_then(Value::as_str).unwrap_or("");
            for k in ["name", "namespace"] {
                if s(k).is_empty() {
                    errs.push(FieldError::required(format!("{path}.service.{k}"), ""));
                }
            }
            let sp = s("path");
            if !sp.is_empty() && !sp.starts_with('/') {
                errs.push(FieldError::invalid(
                    format!("{path}.service.path"),
                    sp,
                    "must start with a '/'",
                ));
            }
            if let Some(port) = svc.get("port").and_then(Value::as_i64)
                && !(1..=65535).contains(&port)
            {
                errs.push(FieldError::invalid(
                    format!("{path}.service.port"),
                    &port.to_string(),
                    "port is not valid: must be between 1 and 65535, inclusive",
                ));
            }
        }
        _ => errs.push(FieldError::required(
            path,
            "exactly one of url or service is required",
        )),
    }
}

fn check_rules(path: &str, rules: Option<&Value>, errs: &mut Vec<FieldError>) {
    for (j, r) in rules
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let list = |k: &str| strings(r, k);
        let field = |k: &str| format!("{path}[{j}].{k}");
        for k in ["operations", "apiGroups", "apiVersions", "resources"] {
            if list(k).is_empty() {
                errs.push(FieldError::required(field(k), ""));
            }
        }
        let ops = list("operations");
        const OPS: &[&str] = &["*", "CREATE", "UPDATE", "DELETE", "CONNECT"];
        for op in &ops {
            if !OPS.contains(op) {
                errs.push(FieldError::not_supported(field("operations"), op, OPS));
            }
        }
        if ops.len() > 1 && ops.contains(&"*") {
            errs.push(FieldError::invalid(
                field("operations"),
                &format!("{ops:?}"),
                "if '*' is present, must not specify other operations",
            ));
        }
        if let Some(scope) = r.get("scope").and_then(Value::as_str)
            && !["Cluster", "Namespaced", "*"].contains(&scope)
        {
            errs.push(FieldError::not_supported(
                field("scope"),
                scope,
                &["Cluster", "Namespaced", "*"],
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Target;
    use kestrel_api::registry::Subresource;

    fn rule(v: Value) -> RuleWithOperations {
        serde_json::from_value(v).expect("rule")
    }

    fn attrs<'a>(t: &'a Target, op: Operation, sub: Option<Subresource>) -> Attributes<'a> {
        Attributes {
            user: None,
            operation: op,
            target: t,
            subresource: sub,
            dry_run: false,
            warnings: None,
        }
    }

    fn target(group: &str, plural: &str, ns: Option<&str>) -> Target {
        Target {
            def: registry::lookup(group, "v1", plural).expect("served"),
            ns: ns.map(str::to_owned),
            name: Some("x".to_owned()),
        }
    }

    #[test]
    fn rules_match_as_upstream() {
        let pods = target("", "pods", Some("default"));
        let nss = target("", "namespaces", None);
        let nodes = target("", "nodes", None);
        let any = |res: &str, scope: &str| {
            rule(
                json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": [res], "scope": scope}),
            )
        };
        let create = attrs(&pods, Operation::Create, None);
        let status = attrs(&pods, Operation::Update, Some(Subresource::Status));
        for (res, main, sub) in [
            ("*", true, false),
            ("*/*", true, true),
            ("pods", true, false),
            // As upstream's matcher: `*` matches the empty subresource too.
            ("pods/*", true, true),
            ("pods/status", false, true),
            ("*/status", false, true),
            ("*/scale", false, false),
            ("services", false, false),
        ] {
            assert_eq!(rules_match(&[any(res, "*")], &create), main, "{res}");
            assert_eq!(rules_match(&[any(res, "*")], &status), sub, "{res} status");
        }
        let ops = rule(
            json!({"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}),
        );
        assert!(!rules_match(std::slice::from_ref(&ops), &create));
        assert!(rules_match(&[ops], &attrs(&pods, Operation::Update, None)));
        let apps = rule(
            json!({"operations": ["*"], "apiGroups": ["apps"], "apiVersions": ["*"], "resources": ["*"]}),
        );
        assert!(!rules_match(&[apps], &create));
        // Scope: a Namespace counts as cluster-scoped.
        let ns_create = attrs(&nss, Operation::Create, None);
        let node_create = attrs(&nodes, Operation::Create, None);
        assert!(rules_match(&[any("*", "Cluster")], &ns_create));
        assert!(!rules_match(&[any("*", "Namespaced")], &ns_create));
        assert!(rules_match(&[any("*", "Cluster")], &node_create));
        assert!(!rules_match(&[any("*", "Cluster")], &create));
        assert!(rules_match(&[any("*", "Namespaced")], &create));
    }

    #[test]
    fn denials_carry_the_webhook_message() {
        let pods = target("", "pods", Some("default"));
        let a = attrs(&pods, Operation::Create, None);
        let e = denial(
            "d.example.com",
            &a,
            Some(&json!({"message": "no", "code": 403})),
        );
        assert_eq!(e.code(), 403);
        assert_eq!(
            e.to_string(),
            "admission webhook \"d.example.com\" denied the request: no"
        );
        let e = denial("d.example.com", &a, None);
        assert_eq!(e.code(), 400);
        assert_eq!(
            e.to_string(),
            "admission webhook \"d.example.com\" denied the request without explanation"
        );
        let e = denial(
            "d.example.com",
            &a,
            Some(&json!({"reason": "Because", "code": 200})),
        );
        assert_eq!(
            (e.code(), e.to_string().ends_with(": Because")),
            (400, true)
        );
    }

    #[test]
    fn responses_are_checked() {
        let ok = |r: Value| {
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": r})).expect("json")
        };
        assert!(read_response("u", &ok(json!({"uid": "u", "allowed": true}))).is_ok());
        let e = read_response("u", &ok(json!({"uid": "v", "allowed": true}))).expect_err("uid");
        assert_eq!(e, "expected response.uid=\"u\", got \"v\"");
        let e = read_response("u", br#"{"apiVersion": "v1", "kind": "Status"}"#).expect_err("kind");
        assert!(
            e.starts_with("expected webhook response of admission.k8s.io/v1"),
            "{e}"
        );
        let e = read_response(
            "u",
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#,
        )
        .expect_err("absent");
        assert_eq!(e, "webhook response was absent");
    }

    #[test]
    fn configurations_are_validated() {
        let mut errs = Vec::new();
        let cfg = json!({"webhooks": [
            {"name": "deny", "clientConfig": {"url": "http://x"}, "rules": [{"operations": ["*", "CREATE"]}], "timeoutSeconds": 31},
            {"name": "a.b.c", "sideEffects": "None", "admissionReviewVersions": ["v1"], "clientConfig": {"service": {"name": "s", "namespace": "n", "port": 443}}},
        ]});
        check_config(VALIDATING, &cfg, &mut errs);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "webhooks[0].name",
            "webhooks[0].admissionReviewVersions",
            "webhooks[0].sideEffects",
            "webhooks[0].timeoutSeconds",
            "webhooks[0].clientConfig.url",
            "webhooks[0].rules[0].apiGroups",
            "webhooks[0].rules[0].operations",
        ] {
            assert!(fields.contains(&f), "{f} in {fields:?}");
        }
        assert!(
            !fields.iter().any(|f| f.starts_with("webhooks[1]")),
            "{fields:?}"
        );
        let mut v = cfg.clone();
        set_config_defaults(MUTATING, &mut v);
        assert_eq!(v["webhooks"][1]["failurePolicy"], "Fail");
        assert_eq!(v["webhooks"][1]["reinvocationPolicy"], "Never");
        assert_eq!(v["webhooks"][1]["clientConfig"]["service"]["port"], 443);
        assert_eq!(v["webhooks"][0]["rules"][0]["scope"], "*");
    }
}
