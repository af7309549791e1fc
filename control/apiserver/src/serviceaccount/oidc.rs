//! OIDC discovery for ServiceAccount tokens: `/.well-known/openid-configuration`
//! and the key set at `/openid/v1/jwks`, with upstream's fields, so other
//! systems can verify the cluster's tokens. Both need authentication;
//! upstream grants them to `system:serviceaccounts` by RBAC.

use std::net::SocketAddr;

use axum::body::Body;
use hyper::{Method, Response, StatusCode, header};
use kestrel_api::ApiError;
use serde_json::{Value, json};

use crate::state::{AppState, Ctx, json_bytes};

/// The discovery document's path.
pub const OIDC_PATH: &str = "/.well-known/openid-configuration";
/// The key set's path.
pub const JWKS_PATH: &str = "/openid/v1/jwks";

fn respond(
    ctx: &Ctx,
    body: &Value,
    content_type: &'static str,
) -> Result<Response<Body>, ApiError> {
    if ctx.method != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    let mut r = json_bytes(
        StatusCode::OK,
        serde_json::to_vec(body).unwrap_or_default(),
        content_type,
    );
    // As upstream: the keys change rarely, relying parties may cache.
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("public, max-age=3600"),
    );
    Ok(r)
}

fn service_accounts(state: &AppState) -> Result<&super::ServiceAccounts, ApiError> {
    state
        .tokens
        .service_accounts()
        .map(|s| &**s)
        .ok_or_else(|| ApiError::ServiceUnavailable("service account keys are not loaded".into()))
}

/// Where the key set is served: upstream's default `jwks_uri` is the API
/// server's external address (the advertised address, else the one it
/// listens on) with [`JWKS_PATH`].
fn jwks_uri(state: &AppState) -> String {
    let addr = state
        .config
        .advertise_addresses
        .first()
        .map_or(state.local_addr, |ip| {
            SocketAddr::new(*ip, state.local_addr.port())
        });
    format!("https://{addr}{JWKS_PATH}")
}

/// `GET /.well-known/openid-configuration`.
pub fn discovery(state: &AppState, ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let sas = service_accounts(state)?;
    let doc = json!({
        "issuer": sas.issuer(),
        "jwks_uri": jwks_uri(state),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [super::token::ALGORITHM],
    });
    respond(ctx, &doc, "application/json")
}

/// `GET /openid/v1/jwks`: every key tokens are accepted from.
pub fn jwks(state: &AppState, ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let sas = service_accounts(state)?;
    let keys: Vec<Value> = sas.keys().iter().map(super::PublicKey::jwk).collect();
    respond(ctx, &json!({"keys": keys}), "application/jwk-set+json")
}
