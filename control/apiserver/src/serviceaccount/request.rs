//! `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`: the TokenRequest
//! API (authentication.k8s.io/v1), with upstream's defaults, checks and
//! messages.

use std::sync::Arc;

use axum::body::Body;
use hyper::{Response, StatusCode};
use k8s_openapi::api::authentication::v1::TokenRequest;
use kestrel_api::{ApiError, FieldError, ObjectRef, meta};
use serde_json::{Value, json};

use super::token::{BoundClaims, ObjectRef as Ref};
use super::{ServiceAccounts, str_at};
use crate::state::Target;
use crate::state::{AppState, Ctx, json_response};

const GROUP: &str = "authentication.k8s.io";
const KIND: &str = "TokenRequest";
/// `spec.expirationSeconds` when unset (upstream's defaulting: one hour).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// Shortest lifetime a client may ask for (upstream's validation).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// Longest lifetime validation allows. Upstream's
/// `--service-account-max-token-expiration` is unset by default, so nothing
/// shortens a request below this.
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// A `FieldValueInvalid` cause; `value` is printed as given (upstream
/// prints numbers bare and strings quoted).
fn invalid(field: &str, value: String, why: &str) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        field: field.to_owned(),
        detail: format!("Invalid value: {value}: {why}"),
    }
}

/// Create a token for the ServiceAccount `t` names.
pub async fn token_request(
    state: &Arc<AppState>,
    ctx: &Ctx,
    t: &Target,
) -> Result<Response<Body>, ApiError> {
    let sas = state.tokens.service_accounts().ok_or_else(|| {
        ApiError::ServiceUnavailable("service account tokens are not set up yet".to_owned())
    })?;
    let ns = t.ns.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let mut body = crate::body::decode_object(ctx)?;
    let want_av = format!("{GROUP}/v1");
    for (field, what, want) in [
        ("apiVersion", "API version", want_av.as_str()),
        ("kind", "kind", KIND),
    ] {
        match body.get(field).and_then(Value::as_str) {
            None | Some("") => body[field] = json!(want),
            Some(v) if v == want => {}
            Some(v) => {
                return Err(ApiError::BadRequest(format!(
                    "the {what} in the data ({v}) does not match the expected {what} ({want})"
                )));
            }
        }
    }
    let mut req: TokenRequest = serde_json::from_value(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "{KIND} in version \"v1\" cannot be handled as a {KIND}: {e}"
        ))
    })?;

    // The body may repeat the path's name and namespace, not contradict them.
    for (field, given, path, what) in [
        ("metadata.name", &req.metadata.name, &name, "name"),
        (
            "metadata.namespace",
            &req.metadata.namespace,
            &ns,
            "namespace",
        ),
    ] {
        if let Some(given) = given.as_deref().filter(|g| !g.is_empty() && g != path) {
            return Err(ApiError::invalid(
                GROUP,
                KIND,
                &name,
                vec![invalid(
                    field,
                    format!("{given:?}"),
                    &format!("must match the service account {what} if specified"),
                )],
            ));
        }
    }

    let sa = state
        .cache
        .get(&t.key())
        .ok_or_else(|| ApiError::NotFound(ObjectRef::new("", "serviceaccounts", &name)))?
        .value
        .clone();

    let spec = req.spec.get_or_insert_with(Default::default);
    let audiences = spec
        .audiences
        .clone()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| sas.audiences().to_vec());
    spec.audiences = Some(audiences.clone());
    let expiration = *spec
        .expiration_seconds
        .get_or_insert(DEFAULT_EXPIRATION_SECONDS);
    let bound = spec.bound_object_ref.clone();
    let now = meta::now_timestamp();
    req.metadata.name = Some(name.clone());
    req.metadata.namespace = Some(ns.clone());
    req.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
    req.status = None;

    let mut errs = Vec::new();
    if expiration < MIN_EXPIRATION_SECONDS {
        errs.push(invalid(
            "spec.expirationSeconds",
            expiration.to_string(),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > MAX_EXPIRATION_SECONDS {
        errs.push(invalid(
            "spec.expirationSeconds",
            expiration.to_string(),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(GROUP, KIND, "", errs));
    }

    let mut claims = BoundClaims {
        namespace: ns.clone(),
        service_account: Ref {
            name: name.clone(),
            uid: str_at(&sa, "/metadata/uid").to_owned(),
        },
        audiences,
        issued_at: now.as_second(),
        expiration_seconds: expiration,
        id: meta::new_uid(),
        ..Default::default()
    };
    if let Some(r) = &bound {
        bind(sas, &ns, &name, r, &mut claims)?;
    }
    // NodeRestriction: a node asks only for tokens bound to its own pods.
    let bound_pod = claims
        .pod
        .as_ref()
        .and_then(|p| sas.object("pods", Some(&ns), &p.name));
    crate::authz::node::admit_token_request(&ctx.user, bound_pod.as_deref())?;

    let token = sas
        .sign(&claims)
        .map_err(|e| ApiError::Internal(format!("failed to generate token: {e}")))?;
    let expires = jiff::Timestamp::from_second(now.as_second() + expiration)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut out = serde_json::to_value(&req).map_err(|e| ApiError::Internal(e.to_string()))?;
    out["apiVersion"] = json!(want_av);
    out["kind"] = json!(KIND);
    out["status"] = json!({"token": token, "expirationTimestamp": expires.to_string()});
    Ok(json_response(StatusCode::CREATED, &out))
}

/// Resolve `spec.boundObjectRef` into the claims, as upstream: a Pod (and
/// its node, if it has one), a Secret, or a Node; it must exist, and its
/// uid must match when one is given.
fn bind(
    sas: &ServiceAccounts,
    ns: &str,
    sa_name: &str,
    r: &k8s_openapi::api::authentication::v1::BoundObjectReference,
    claims: &mut BoundClaims,
) -> Result<(), ApiError> {
    let api_version = r.api_version.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("");
    let obj_name = r.name.as_deref().unwrap_or("");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let found = |plural: &str, namespaced: bool| {
        sas.object(plural, namespaced.then_some(ns), obj_name)
            .ok_or_else(|| ApiError::NotFound(ObjectRef::new("", plural, obj_name)))
    };
    let obj = match (group, kind) {
        ("", "Pod") => {
            let pod = found("pods", true)?;
            if str_at(&pod, "/spec/serviceAccountName") != sa_name {
                return Err(ApiError::BadRequest(format!(
                    "cannot bind token for serviceaccount {sa_name:?} to pod running with different serviceaccount name."
                )));
            }
            claims.pod = Some(reference(&pod));
            let node = str_at(&pod, "/spec/nodeName");
            if !node.is_empty() {
                // A node that cannot be read only leaves the node claim out.
                claims.node = sas.object("nodes", None, node).map(|n| reference(&n));
            }
            pod
        }
        ("", "Secret") => {
            let s = found("secrets", true)?;
            claims.secret = Some(reference(&s));
            s
        }
        ("", "Node") => {
            let n = found("nodes", false)?;
            claims.node = Some(reference(&n));
            n
        }
        _ => {
            return Err(ApiError::BadRequest(format!(
                "cannot bind token to object of type {group}/{version}, Kind={kind}"
            )));
        }
    };
    let uid = str_at(&obj, "/metadata/uid");
    if let Some(want) = r.uid.as_deref().filter(|u| !u.is_empty())
        && want != uid
    {
        return Err(ApiError::Conflict(
            ObjectRef::new("", kind, obj_name),
            format!(
                "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        ));
    }
    Ok(())
}

fn reference(obj: &Value) -> Ref {
    Ref {
        name: str_at(obj, "/metadata/name").to_owned(),
        uid: str_at(obj, "/metadata/uid").to_owned(),
    }
}
