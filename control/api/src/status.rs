//! API errors, rendered as `metav1.Status` with upstream's codes, reasons and
//! message wording, so clients that match on them (kubectl, client-go's
//! `errors.IsConflict`, kube-rs' `ErrorResponse`) behave as against upstream.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    ListMeta, Status, StatusCause, StatusDetails,
};

/// Result alias for API operations.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// One field-level problem in an `Invalid` (422) error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Upstream cause reason, e.g. `FieldValueInvalid`, `FieldValueRequired`.
    pub reason: &'static str,
    /// The field path, e.g. `metadata.name` or `spec.template.metadata.labels`.
    pub field: String,
    /// Upstream-style message, e.g. `Invalid value: "X": must be ...`.
    pub detail: String,
}

impl FieldError {
    /// A value that is present but wrong.
    pub fn invalid(field: impl Into<String>, value: &str, why: impl AsRef<str>) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            detail: format!("Invalid value: {value:?}: {}", why.as_ref()),
        }
    }

    /// A required value that is missing.
    pub fn required(field: impl Into<String>, why: impl AsRef<str>) -> Self {
        let why = why.as_ref();
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            detail: if why.is_empty() {
                "Required value".to_owned()
            } else {
                format!("Required value: {why}")
            },
        }
    }

    /// A value that must not change after creation.
    pub fn immutable(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            detail: "field is immutable".to_owned(),
        }
    }

    /// A value that is not one of the allowed values.
    pub fn not_supported(field: impl Into<String>, value: &str, allowed: &[&str]) -> Self {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            detail: format!(
                "Unsupported value: {value:?}: supported values: {}",
                allowed.join(", ")
            ),
        }
    }

    /// A value that collides with another (e.g. an allocated port).
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            field: field.into(),
            detail: format!("Duplicate value: {value:?}"),
        }
    }

    /// A value that is out of the allowed range or forbidden in context.
    pub fn forbidden(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            detail: format!("Forbidden: {}", why.into()),
        }
    }

    /// `field: detail`, the form upstream joins into the Status message.
    pub fn to_message(&self) -> String {
        format!("{}: {}", self.field, self.detail)
    }
}

/// Identifies the object an error is about, for `Status.details`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRef {
    /// API group, empty for core.
    pub group: String,
    /// Plural resource name (NotFound/AlreadyExists/Conflict) or kind (Invalid).
    pub kind: String,
    /// Object name.
    pub name: String,
}

impl ObjectRef {
    /// A reference from group, resource or kind, and name.
    pub fn new(group: &str, kind: &str, name: &str) -> Self {
        Self {
            group: group.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
        }
    }

    /// `resource.group` as upstream prints qualified resources (core has no suffix).
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

/// Every error the API can return to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no or unknown credentials.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: the named object does not exist.
    #[error("{} {:?} not found", .0.qualified(), .0.name)]
    NotFound(ObjectRef),
    /// 404: the path names no resource or route.
    #[error("the server could not find the requested resource")]
    RouteNotFound,
    /// 405: the resource does not support the verb.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 405 with a reason, e.g. creates of a terminating CRD's resource.
    #[error("{0}")]
    MethodNotAllowedMessage(String),
    /// 406: no acceptable response representation.
    #[error("{0}")]
    NotAcceptable(String),
    /// 409: create of a name that is taken.
    #[error("{} {:?} already exists", .0.qualified(), .0.name)]
    AlreadyExists(ObjectRef),
    /// 409: optimistic concurrency failure (stale resourceVersion).
    #[error(
        "Operation cannot be fulfilled on {} {:?}: {}",
        .0.qualified(),
        .0.name,
        .1
    )]
    Conflict(ObjectRef, String),
    /// 409: a generic conflict with a caller-provided message (e.g. apply conflicts).
    #[error("{1}")]
    ConflictMessage(ObjectRef, String, Vec<FieldError>),
    /// 410: resourceVersion or continue token is older than the retained history.
    #[error("{0}")]
    Expired(String),
    /// 413: request body over the limit.
    #[error("the request body is too large")]
    RequestEntityTooLarge,
    /// 415: Content-Type the server cannot decode.
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    /// 422: the object fails validation.
    #[error("{kind}{}{group} {name:?} is invalid: {}", if group.is_empty() { "" } else { "." }, join_causes(.causes))]
    Invalid {
        /// API group of the kind.
        group: String,
        /// Kind, e.g. `ConfigMap`.
        kind: String,
        /// Object name (may be empty on create with generateName).
        name: String,
        /// Field-level causes.
        causes: Vec<FieldError>,
    },
    /// 429: refused for now, e.g. an eviction a disruption budget does not
    /// allow; the causes say why (`DisruptionBudget`).
    #[error("{message}")]
    TooManyRequests {
        /// The message.
        message: String,
        /// `(reason, message)` of each cause.
        causes: Vec<(String, String)>,
    },
    /// 500: a server-side failure, e.g. the store.
    #[error("{0}")]
    Internal(String),
    /// 503: the server is not ready to serve this.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// 504: the operation timed out.
    #[error("{0}")]
    Timeout(String),
}

fn join_causes(causes: &[FieldError]) -> String {
    let parts: Vec<String> = causes.iter().map(FieldError::to_message).collect();
    if parts.len() == 1 {
        parts.into_iter().next().unwrap_or_default()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

impl ApiError {
    /// `Invalid` for one kind/name from a list of field errors.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<FieldError>) -> Self {
        Self::Invalid {
            group: group.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            causes,
        }
    }

    /// The standard optimistic-concurrency conflict.
    pub fn stale(group: &str, resource: &str, name: &str) -> Self {
        Self::Conflict(
            ObjectRef::new(group, resource, name),
            "the object has been modified; please apply your changes to the latest version and try again"
                .to_owned(),
        )
    }

    /// HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthorized => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) | Self::RouteNotFound => 404,
            Self::MethodNotAllowed | Self::MethodNotAllowedMessage(_) => 405,
            Self::NotAcceptable(_) => 406,
            Self::AlreadyExists(_) | Self::Conflict(..) | Self::ConflictMessage(..) => 409,
            Self::Expired(_) => 410,
            Self::RequestEntityTooLarge => 413,
            Self::UnsupportedMediaType(_) => 415,
            Self::Invalid { .. } => 422,
            Self::TooManyRequests { .. } => 429,
            Self::Internal(_) => 500,
            Self::ServiceUnavailable(_) => 503,
            Self::Timeout(_) => 504,
        }
    }

    /// Upstream `metav1.StatusReason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::NotFound(_) | Self::RouteNotFound => "NotFound",
            Self::MethodNotAllowed | Self::MethodNotAllowedMessage(_) => "MethodNotAllowed",
            Self::NotAcceptable(_) => "NotAcceptable",
            Self::AlreadyExists(_) => "AlreadyExists",
            Self::Conflict(..) | Self::ConflictMessage(..) => "Conflict",
            Self::Expired(_) => "Expired",
            Self::RequestEntityTooLarge => "RequestEntityTooLarge",
            Self::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Self::Invalid { .. } => "Invalid",
            Self::TooManyRequests { .. } => "TooManyRequests",
            Self::Internal(_) => "InternalError",
            Self::ServiceUnavailable(_) => "ServiceUnavailable",
            Self::Timeout(_) => "Timeout",
        }
    }

    /// The `metav1.Status` body for this error.
    pub fn to_status(&self) -> Status {
        let details = match self {
            Self::NotFound(r) | Self::AlreadyExists(r) | Self::Conflict(r, _) => {
                Some(StatusDetails {
                    group: Some(r.group.clone()).filter(|g| !g.is_empty()),
                    kind: Some(r.kind.clone()),
                    name: Some(r.name.clone()),
                    ..Default::default()
                })
            }
            Self::ConflictMessage(r, _, causes) => Some(StatusDetails {
                group: Some(r.group.clone()).filter(|g| !g.is_empty()),
                kind: Some(r.kind.clone()),
                name: Some(r.name.clone()),
                causes: Some(causes.iter().map(to_cause).collect())
                    .filter(|c: &Vec<_>| !c.is_empty()),
                ..Default::default()
            }),
            Self::Invalid {
                group,
                kind,
                name,
                causes,
            } => Some(StatusDetails {
                group: Some(group.clone()).filter(|g| !g.is_empty()),
                kind: Some(kind.clone()),
                name: Some(name.clone()),
                causes: Some(causes.iter().map(to_cause).collect()),
                ..Default::default()
            }),
            Self::TooManyRequests { causes, .. } if !causes.is_empty() => Some(StatusDetails {
                causes: Some(
                    causes
                        .iter()
                        .map(|(reason, message)| StatusCause {
                            field: None,
                            message: Some(message.clone()),
                            reason: Some(reason.clone()),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            _ => None,
        };
        Status {
            code: Some(i32::from(self.code())),
            details,
            message: Some(self.to_string()),
            metadata: ListMeta::default(),
            reason: Some(self.reason().to_owned()),
            status: Some("Failure".to_owned()),
        }
    }

    /// The Status as upstream writes it on the wire ([`status_bytes`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        status_bytes(&self.to_status())
    }

    /// The Status as JSON, with `kind`/`apiVersion` set as on the wire.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.to_status()).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("kind".into(), "Status".into());
            o.insert("apiVersion".into(), "v1".into());
        }
        v
    }
}

fn to_cause(e: &FieldError) -> StatusCause {
    StatusCause {
        field: Some(e.field.clone()),
        message: Some(e.detail.clone()),
        reason: Some(e.reason.to_owned()),
    }
}

/// `metav1.Status` with its fields in upstream's order (the Go struct's:
/// kind, apiVersion, metadata, status, message, reason, details, code), as
/// clients that compare bodies byte for byte expect.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OrderedStatus<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: serde_json::Map<String, serde_json::Value>,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<OrderedDetails<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
}

/// `metav1.StatusDetails` in upstream's field order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OrderedDetails<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    causes: Vec<OrderedCause<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<i32>,
}

/// `metav1.StatusCause` in upstream's field order.
#[derive(serde::Serialize)]
struct OrderedCause<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// Encode a Status as upstream's API server writes it: fields in the Go
/// struct's order and a trailing newline.
pub fn status_bytes(s: &Status) -> Vec<u8> {
    let details = s.details.as_ref().map(|d| OrderedDetails {
        name: d.name.as_deref(),
        group: d.group.as_deref(),
        kind: d.kind.as_deref(),
        uid: d.uid.as_deref(),
        causes: d
            .causes
            .iter()
            .flatten()
            .map(|c| OrderedCause {
                reason: c.reason.as_deref(),
                message: c.message.as_deref(),
                field: c.field.as_deref(),
            })
            .collect(),
        retry_after_seconds: d.retry_after_seconds,
    });
    let o = OrderedStatus {
        kind: "Status",
        api_version: "v1",
        metadata: serde_json::Map::new(),
        status: s.status.as_deref().unwrap_or(""),
        message: s.message.as_deref(),
        reason: s.reason.as_deref().filter(|r| !r.is_empty()),
        details,
        code: s.code,
    };
    let mut out = serde_json::to_vec(&o).unwrap_or_default();
    out.push(b'\n');
    out
}

/// A successful `Status` (as returned by some deletes), encoded as
/// upstream writes it.
pub fn success_status(details: Option<StatusDetails>) -> Vec<u8> {
    status_bytes(&Status {
        details,
        status: Some("Success".to_owned()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_qualified_resource() {
        let e = ApiError::NotFound(ObjectRef::new("apps", "deployments", "web"));
        assert_eq!(e.to_string(), r#"deployments.apps "web" not found"#);
        let s = e.to_status();
        assert_eq!(s.code, Some(404));
        assert_eq!(s.reason.as_deref(), Some("NotFound"));
        let d = s.details.expect("details");
        assert_eq!(d.group.as_deref(), Some("apps"));
        assert_eq!(d.kind.as_deref(), Some("deployments"));
        let core = ApiError::NotFound(ObjectRef::new("", "namespaces", "x"));
        assert_eq!(core.to_string(), r#"namespaces "x" not found"#);
    }

    #[test]
    fn conflict_and_exists_are_409_with_upstream_reasons() {
        let c = ApiError::stale("", "configmaps", "cm");
        assert_eq!(c.code(), 409);
        assert_eq!(c.reason(), "Conflict");
        assert!(c.to_string().starts_with(
            r#"Operation cannot be fulfilled on configmaps "cm": the object has been modified"#
        ));
        let a = ApiError::AlreadyExists(ObjectRef::new("", "configmaps", "cm"));
        assert_eq!(a.reason(), "AlreadyExists");
        assert_eq!(a.to_string(), r#"configmaps "cm" already exists"#);
    }

    #[test]
    fn invalid_lists_causes_like_upstream() {
        let e = ApiError::invalid(
            "",
            "ConfigMap",
            "Bad",
            vec![FieldError::invalid(
                "metadata.name",
                "Bad",
                "must be lowercase",
            )],
        );
        assert_eq!(
            e.to_string(),
            r#"ConfigMap "Bad" is invalid: metadata.name: Invalid value: "Bad": must be lowercase"#
        );
        let v = e.to_json();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["code"], 422);
        assert_eq!(v["details"]["causes"][0]["field"], "metadata.name");
        assert_eq!(v["details"]["causes"][0]["reason"], "FieldValueInvalid");
        let two = ApiError::invalid(
            "",
            "Pod",
            "p",
            vec![
                FieldError::required("spec.containers", ""),
                FieldError::immutable("spec.nodeName"),
            ],
        );
        assert_eq!(
            two.to_string(),
            r#"Pod "p" is invalid: [spec.containers: Required value, spec.nodeName: field is immutable]"#
        );
        // Kinds of a named group are qualified with it, as upstream's
        // GroupKind prints.
        let grouped = ApiError::invalid(
            "apps",
            "Deployment",
            "d",
            vec![FieldError::required("spec.selector", "")],
        );
        assert_eq!(
            grouped.to_string(),
            r#"Deployment.apps "d" is invalid: spec.selector: Required value"#
        );
    }

    #[test]
    fn every_variant_has_a_matching_code_and_reason() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::BadRequest("x".into()), 400, "BadRequest"),
            (ApiError::Unauthorized, 401, "Unauthorized"),
            (ApiError::Forbidden("x".into()), 403, "Forbidden"),
            (ApiError::RouteNotFound, 404, "NotFound"),
            (ApiError::MethodNotAllowed, 405, "MethodNotAllowed"),
            (ApiError::NotAcceptable("x".into()), 406, "NotAcceptable"),
            (ApiError::Expired("x".into()), 410, "Expired"),
            (
                ApiError::RequestEntityTooLarge,
                413,
                "RequestEntityTooLarge",
            ),
            (
                ApiError::UnsupportedMediaType("x".into()),
                415,
                "UnsupportedMediaType",
            ),
            (ApiError::Internal("x".into()), 500, "InternalError"),
        ];
        for (e, code, reason) in cases {
            let v = e.to_json();
            assert_eq!(v["code"], code, "{e:?}");
            assert_eq!(v["reason"], reason, "{e:?}");
            assert_eq!(v["status"], "Failure");
        }
    }
}
