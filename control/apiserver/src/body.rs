//! Request bodies: content types, JSON, YAML and Kubernetes protobuf
//! decoding with limits, and the checks upstream's decoder does before an
//! object reaches a handler. Every body becomes JSON here; responses are
//! always JSON, which clients that send protobuf accept.

use hyper::header;
use kestrel_api::ApiError;
use serde_json::Value;

use crate::state::Ctx;

/// The patch flavours upstream accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// RFC 6902.
    Json,
    /// RFC 7386.
    Merge,
    /// Kubernetes strategic merge patch.
    Strategic,
    /// Server-side apply.
    Apply,
}

/// Media types accepted for create and update bodies; protobuf only for
/// built-in kinds.
const JSON_TYPES: &str = "application/json, application/yaml";
const BODY_TYPES: &str = "application/json, application/yaml, application/vnd.kubernetes.protobuf";
const PATCH_TYPES: &str = "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml";

fn media_type(ctx: &Ctx) -> String {
    ctx.header(header::CONTENT_TYPE)
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decode a create/update body as JSON, YAML or protobuf, per Content-Type.
/// Protobuf for a kind [`crate::proto`] does not know is 415, a body that
/// does not decode is 400.
pub fn decode_object(ctx: &Ctx) -> Result<Value, ApiError> {
    let mt = media_type(ctx);
    let v = match mt.as_str() {
        // No Content-Type: treat as JSON, as upstream does for JSON-looking bodies.
        "application/json" | "" | "*/*" => parse_json(&ctx.body)?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => parse_yaml(&ctx.body)?,
        "application/vnd.kubernetes.protobuf" => {
            crate::proto::decode(&ctx.body).map_err(|e| match e {
                crate::proto::ProtoError::Unsupported(_) => {
                    ApiError::UnsupportedMediaType(JSON_TYPES.to_owned())
                }
                e => ApiError::BadRequest(e.to_string()),
            })?
        }
        _ => return Err(ApiError::UnsupportedMediaType(BODY_TYPES.to_owned())),
    };
    if !v.is_object() {
        return Err(ApiError::BadRequest(
            "Object 'Kind' is missing in the request body: expected a JSON object".to_owned(),
        ));
    }
    Ok(v)
}

/// Decode a PATCH body and say which kind of patch it is.
pub fn decode_patch(ctx: &Ctx) -> Result<(PatchType, Value), ApiError> {
    let mt = media_type(ctx);
    let pt = match mt.as_str() {
        "application/json-patch+json" => PatchType::Json,
        "application/merge-patch+json" => PatchType::Merge,
        "application/strategic-merge-patch+json" => PatchType::Strategic,
        "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
        _ => return Err(ApiError::UnsupportedMediaType(PATCH_TYPES.to_owned())),
    };
    let v = if pt == PatchType::Apply {
        parse_yaml(&ctx.body)?
    } else {
        parse_json(&ctx.body)?
    };
    Ok((pt, v))
}

/// Strict JSON. serde_json refuses nesting deeper than 128 levels, so
/// pathological inputs fail fast instead of exhausting the stack.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if std::str::from_utf8(body).is_err() {
        return Err(ApiError::BadRequest(
            "invalid UTF-8 in the request body".to_owned(),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the request body is empty".to_owned()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding the request body as JSON: {e}")))
}

/// YAML (a superset of JSON). Nesting is checked before parsing for the
/// same reason as JSON.
pub fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    let s = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("invalid UTF-8 in the request body".to_owned()))?;
    if s.trim().is_empty() {
        return Err(ApiError::BadRequest("the request body is empty".to_owned()));
    }
    if nesting_depth(s) > 256 {
        return Err(ApiError::BadRequest(
            "the request body is nested too deeply".to_owned(),
        ));
    }
    // JSON is the common case (kubectl sends JSON even for apply-patch+yaml).
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        return Ok(v);
    }
    serde_saphyr::from_str::<Value>(s)
        .map_err(|e| ApiError::BadRequest(format!("error decoding the request body as YAML: {e}")))
}

/// A cheap upper bound on flow-style nesting (brackets and braces).
fn nesting_depth(s: &str) -> usize {
    let (mut d, mut max) = (0usize, 0usize);
    for c in s.bytes() {
        match c {
            b'[' | b'{' => {
                d += 1;
                max = max.max(d);
            }
            b']' | b'}' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_limits() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(matches!(
            parse_json(deep.as_bytes()),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json(b"\xff\xfe"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(parse_json(b"{"), Err(ApiError::BadRequest(_))));
        assert!(parse_json(br#"{"a":1}"#).is_ok());
    }

    #[test]
    fn yaml_bodies() {
        let v =
            parse_yaml(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  k: v\n")
                .expect("yaml");
        assert_eq!(v["data"]["k"], "v");
        let deep = "[".repeat(10_000);
        assert!(parse_yaml(deep.as_bytes()).is_err());
        assert!(parse_yaml(b"a: [").is_err());
    }
}
