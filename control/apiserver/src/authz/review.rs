//! The review APIs: `authorization.k8s.io/v1` SelfSubjectAccessReview,
//! SubjectAccessReview, LocalSubjectAccessReview and SelfSubjectRulesReview,
//! and `authentication.k8s.io/v1` SelfSubjectReview. They are created, never
//! stored: the answer is in the returned object's status. `kubectl auth
//! can-i` (with `--list` and `--as`) and `kubectl auth whoami` use them.

use std::sync::Arc;

use axum::body::Body;
use hyper::{Method, Response, StatusCode};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, NonResourceRule, ResourceAttributes, ResourceRule,
    SubjectAccessReviewSpec,
};
use kestrel_api::{ApiError, FieldError};
use serde_json::{Value, json};

use super::Attributes;
use crate::auth::User;
use crate::state::{AppState, Ctx, json_response};

/// The review resources, by (group, plural).
pub fn serves(group: &str, plural: &str) -> bool {
    matches!(
        (group, plural),
        (
            "authorization.k8s.io",
            "selfsubjectaccessreviews"
                | "subjectaccessreviews"
                | "localsubjectaccessreviews"
                | "selfsubjectrulesreviews"
        ) | (
            "authentication.k8s.io",
            "selfsubjectreviews" | "tokenreviews"
        )
    )
}

/// `POST /apis/<group>/v1/[namespaces/<ns>/]<plural>`.
pub async fn serve(
    state: &Arc<AppState>,
    ctx: &Ctx,
    group: &str,
    namespace: Option<&str>,
    plural: &str,
) -> Result<Response<Body>, ApiError> {
    if ctx.method != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let body = crate::body::decode_object(ctx)?;
    let kind = body
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let status = match plural {
        "selfsubjectreviews" => user_info(&ctx.user),
        "tokenreviews" => token_review(state, &body),
        "selfsubjectrulesreviews" => {
            let ns = body
                .pointer("/spec/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            rules_review(state, &ctx.user, ns).await
        }
        _ => {
            let spec: SubjectAccessReviewSpec =
                serde_json::from_value(body.get("spec").cloned().unwrap_or(json!({})))
                    .map_err(|e| ApiError::BadRequest(format!("decoding spec: {e}")))?;
            let kind_name = match plural {
                "selfsubjectaccessreviews" => "SelfSubjectAccessReview",
                "localsubjectaccessreviews" => "LocalSubjectAccessReview",
                _ => "SubjectAccessReview",
            };
            let attrs = attributes(kind_name, &spec, namespace)?;
            let subject = if plural == "selfsubjectaccessreviews" {
                ctx.user.clone()
            } else {
                subject_of(kind_name, &spec)?
            };
            match state.authz.decide(&state.cache, &subject, &attrs).await {
                Ok(()) => json!({"allowed": true}),
                Err(reason) if reason.is_empty() => json!({"allowed": false}),
                Err(reason) => json!({"allowed": false, "reason": reason}),
            }
        }
    };
    let mut out = body;
    if let Some(o) = out.as_object_mut() {
        o.insert("apiVersion".into(), json!(format!("{group}/v1")));
        o.insert(
            "kind".into(),
            json!(if kind.is_empty() {
                default_kind(plural)
            } else {
                &kind
            }),
        );
        o.entry("metadata").or_insert(json!({}));
        o.insert("status".into(), status);
    }
    Ok(json_response(StatusCode::CREATED, &out))
}

fn default_kind(plural: &str) -> &'static str {
    match plural {
        "selfsubjectaccessreviews" => "SelfSubjectAccessReview",
        "localsubjectaccessreviews" => "LocalSubjectAccessReview",
        "selfsubjectrulesreviews" => "SelfSubjectRulesReview",
        "selfsubjectreviews" => "SelfSubjectReview",
        "tokenreviews" => "TokenReview",
        _ => "SubjectAccessReview",
    }
}

fn invalid(kind: &str, field: &str, why: &str) -> ApiError {
    ApiError::invalid(
        "authorization.k8s.io",
        kind,
        "",
        vec![FieldError::required(field, why)],
    )
}

fn attributes(
    kind: &str,
    spec: &SubjectAccessReviewSpec,
    path_namespace: Option<&str>,
) -> Result<Attributes, ApiError> {
    match (&spec.resource_attributes, &spec.non_resource_attributes) {
        (Some(r), None) => {
            let ResourceAttributes {
                group,
                name,
                namespace,
                resource,
                subresource,
                verb,
                ..
            } = r;
            let ns = namespace.clone().unwrap_or_default();
            if let Some(p) = path_namespace
                && p != ns
            {
                return Err(invalid(
                    kind,
                    "spec.resourceAttributes.namespace",
                    &format!("must match the namespace of the request: {p}"),
                ));
            }
            Ok(Attributes::resource(
                verb.as_deref().unwrap_or_default(),
                group.as_deref().unwrap_or_default(),
                resource.as_deref().unwrap_or_default(),
                &ns,
                name.as_deref().unwrap_or_default(),
            )
            .with_subresource(subresource.as_deref().unwrap_or_default()))
        }
        (None, Some(NonResourceAttributes { path, verb })) => Ok(Attributes::non_resource(
            verb.as_deref().unwrap_or_default(),
            path.as_deref().unwrap_or_default(),
        )),
        _ => Err(invalid(
            kind,
            "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

fn subject_of(kind: &str, spec: &SubjectAccessReviewSpec) -> Result<Arc<User>, ApiError> {
    let name = spec.user.clone().unwrap_or_default();
    let groups = spec.groups.clone().unwrap_or_default();
    if name.is_empty() && groups.is_empty() {
        return Err(invalid(
            kind,
            "spec.user",
            "at least one of user or group must be specified",
        ));
    }
    let mut u = User::new(name, groups);
    u.uid = spec.uid.clone().unwrap_or_default();
    u.extra = spec.extra.clone().unwrap_or_default().into_iter().collect();
    Ok(Arc::new(u))
}

/// `status.userInfo` of a SelfSubjectReview.
fn user_info(u: &User) -> Value {
    json!({"userInfo": u.info()})
}

/// `status` of a TokenReview: who the token in `spec.token` authenticates
/// as, through the same authenticators as requests (what an aggregated API
/// server or metrics endpoint asks before trusting a bearer token). A
/// review naming `spec.audiences` is answered only for the API server's
/// own audiences; tokens for other audiences are not authenticated here.
fn token_review(state: &AppState, body: &Value) -> Value {
    let token = body
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let api_audiences: Vec<String> = state
        .tokens
        .service_accounts()
        .map(|sa| sa.audiences().to_vec())
        .unwrap_or_default();
    let wanted: Vec<String> = body
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let audiences = if wanted.is_empty() {
        api_audiences.clone()
    } else {
        wanted
            .iter()
            .filter(|a| api_audiences.contains(a))
            .cloned()
            .collect()
    };
    let refused = |why: &str| json!({"authenticated": false, "error": why, "user": {}});
    if token.is_empty() {
        return refused("token must be specified");
    }
    if audiences.is_empty() {
        return refused("token audiences are invalid for the target audiences");
    }
    let header = format!("Bearer {token}");
    match crate::auth::authenticate(
        &state.tokens,
        &state.pki.node_token,
        crate::auth::Credentials {
            peer: None,
            authorization: Some(&header),
            path: "",
        },
    ) {
        Ok(u) => json!({"authenticated": true, "user": u.info(), "audiences": audiences}),
        Err(_) => refused("invalid bearer token"),
    }
}

/// `status` of a SelfSubjectRulesReview: every rule that applies in the
/// namespace, split into resource and non-resource rules.
async fn rules_review(state: &AppState, user: &User, namespace: &str) -> Value {
    let rules = state.authz.rules_for(&state.cache, user, namespace).await;
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in rules {
        if r.resources.as_ref().is_some_and(|l| !l.is_empty()) {
            resource_rules.push(ResourceRule {
                api_groups: r.api_groups,
                resources: r.resources,
                resource_names: r.resource_names,
                verbs: r.verbs.clone(),
            });
        }
        if let Some(urls) = r.non_resource_urls.filter(|l| !l.is_empty()) {
            non_resource_rules.push(NonResourceRule {
                non_resource_urls: Some(urls),
                verbs: r.verbs.clone(),
            });
        }
    }
    json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": false,
    })
}
