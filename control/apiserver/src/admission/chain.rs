//! The admission chain, in upstream's order. Mutating plugins run after
//! decoding and defaulting, validating plugins after the kind's own
//! validation, both before anything is stored:
//!
//! - mutating: LimitRanger (defaults), ServiceAccount, DefaultTolerationSeconds,
//!   Priority, DefaultStorageClass, StorageObjectInUseProtection,
//!   MutatingAdmissionWebhook;
//! - validating: LimitRanger (limits), NodeRestriction and RBAC's escalation
//!   check, PodSecurity, ValidatingAdmissionWebhook, ResourceQuota (last, so
//!   only what will be stored is charged).
//!
//! `--disable-admission-plugins` names plugins to skip, as upstream.
//! Requests the server makes itself (bootstrap) carry no user and skip the
//! plugins that judge a user.

use std::sync::{Arc, Mutex};

use kestrel_api::ApiError;
use kestrel_api::registry::Subresource;
use serde_json::Value;

use crate::auth::User;
use crate::state::AppState;
use crate::state::Target;

/// The operation being admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// POST.
    Create,
    /// PUT or PATCH.
    Update,
    /// DELETE.
    Delete,
}

impl Operation {
    /// Upstream's name (`CREATE`, ...), as AdmissionReview and audit use it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }
}

/// Warnings for the client (`Warning: 299 - "..."` headers), collected
/// while a request is admitted.
#[derive(Debug, Clone, Default)]
pub struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    /// Add one.
    pub fn add(&self, w: impl Into<String>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(w.into());
    }

    /// Everything added so far.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What admission plugins decide on.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// Who asks; `None` for the server's own writes.
    pub user: Option<&'a User>,
    /// The operation.
    pub operation: Operation,
    /// The resource, namespace and name.
    pub target: &'a Target,
    /// The subresource written, if any.
    pub subresource: Option<Subresource>,
    /// `?dryRun=All`: plugins with side effects skip them.
    pub dry_run: bool,
    /// Where warnings for the client go.
    pub warnings: Option<&'a Warnings>,
}

impl Attributes<'_> {
    /// The kind being admitted.
    pub fn kind(&self) -> &'static str {
        self.target.def.kind
    }

    /// Whether this is a core/v1 Pod, written through the main resource.
    pub fn is_pod(&self) -> bool {
        self.target.def.group.is_empty() && self.kind() == "Pod" && self.subresource.is_none()
    }

    /// The namespace, empty for cluster-scoped objects.
    pub fn namespace(&self) -> &str {
        self.target.ns.as_deref().unwrap_or_default()
    }

    /// Tell the client something.
    pub fn warn(&self, w: impl Into<String>) {
        if let Some(ws) = self.warnings {
            ws.add(w);
        }
    }
}

/// The plugins that can be turned off, by upstream's names.
pub const PLUGINS: &[&str] = &[
    "LimitRanger",
    "ServiceAccount",
    "DefaultTolerationSeconds",
    "Priority",
    "DefaultStorageClass",
    "StorageObjectInUseProtection",
    "MutatingAdmissionWebhook",
    "NodeRestriction",
    "PodSecurity",
    "ValidatingAdmissionWebhook",
    "ResourceQuota",
];

fn enabled(state: &AppState, plugin: &str) -> bool {
    !state
        .config
        .disable_admission_plugins
        .iter()
        .any(|p| p == plugin)
}

/// The mutating plugins.
pub async fn mutate(
    state: &std::sync::Arc<AppState>,
    a: &Attributes<'_>,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let _ = old;
    if a.is_pod() && a.operation == Operation::Create {
        if enabled(state, "LimitRanger") {
            super::limitranger::default_pod(state, a, obj)?;
        }
        if enabled(state, "ServiceAccount") {
            crate::serviceaccount::admit_pod(state, a.target, obj).await?;
        }
        if enabled(state, "DefaultTolerationSeconds") {
            super::default_tolerations(&state.config, obj);
        }
        if enabled(state, "Priority") {
            super::priority::admit_pod(state, obj)?;
        }
    }
    if enabled(state, "DefaultStorageClass") {
        super::storage::default_storage_class(state, a, obj);
    }
    if enabled(state, "StorageObjectInUseProtection") {
        super::storage::protect(a, obj);
    }
    if enabled(state, "MutatingAdmissionWebhook") {
        super::webhook::mutate(state, a, obj, old).await?;
    }
    Ok(())
}

/// The validating plugins.
pub async fn validate(
    state: &std::sync::Arc<AppState>,
    a: &Attributes<'_>,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if a.is_pod() && a.operation == Operation::Create && enabled(state, "LimitRanger") {
        super::limitranger::validate_pod(state, a, obj)?;
    }
    if let Some(user) = a.user {
        if enabled(state, "NodeRestriction") && a.operation == Operation::Create {
            crate::authz::node::admit_create(user, a.kind(), obj)?;
        }
        if a.target.def.group == "rbac.authorization.k8s.io" && a.operation != Operation::Delete {
            crate::authz::roles::check_escalation(
                &state.authz,
                &state.cache,
                user,
                a.target.def,
                obj,
            )
            .await?;
        }
    }
    if enabled(state, "Priority")
        && a.target.def.group == "scheduling.k8s.io"
        && a.kind() == "PriorityClass"
        && a.operation != Operation::Delete
    {
        super::priority::admit_class(state, a, obj)?;
    }
    if enabled(state, "PodSecurity") {
        super::podsecurity::admit(state, a, obj, old)?;
    }
    if enabled(state, "ValidatingAdmissionWebhook") {
        super::webhook::validate(state, a, obj, old).await?;
    }
    if enabled(state, "ResourceQuota") {
        super::quota::admit(state, a, obj, old).await?;
    }
    Ok(())
}

/// Admission of a DELETE: the validating webhooks only, with the object
/// being deleted as `oldObject` (upstream's other plugins that look at
/// deletes are not implemented).
pub async fn validate_delete(
    state: &std::sync::Arc<AppState>,
    a: &Attributes<'_>,
    old: &Value,
) -> Result<(), ApiError> {
    if enabled(state, "ValidatingAdmissionWebhook") {
        super::webhook::validate_delete(state, a, old).await?;
    }
    Ok(())
}
