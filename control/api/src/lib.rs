//! Kestrel's shared Kubernetes API machinery.
//!
//! - [`registry`]: the declarative table of served resources;
//! - [`labels`] and [`fields`]: selector parsing and matching;
//! - [`status`]: errors rendered as `metav1.Status`;
//! - [`validation`]: name and label rules;
//! - [`meta`]: uid, timestamps and `generateName`;
//! - [`printers`]: Table cells for printer columns;
//! - [`schema`]: CRD structural schemas: validation, pruning, defaulting, CEL.
#![forbid(unsafe_code)]

pub mod cron;
pub mod fields;
pub mod labels;
pub mod lists;
pub mod meta;
pub mod printers;
pub mod quantity;
pub mod quota;
pub mod registry;
pub mod schema;
pub mod status;
pub mod validation;

pub use status::{ApiError, FieldError, ObjectRef};

/// The Kubernetes version whose API types and behaviour this crate follows:
/// the API server serves it and every node reports it, matching the kubectl
/// `cargo xtask setup` bundles.
pub const KUBERNETES_VERSION: (u32, u32, u32) = (1, 35, 0);

/// [`KUBERNETES_VERSION`] as components report it (`gitVersion`, a node's
/// `kubeletVersion`): `v1.35.0+kestrel`, a semver build suffix as k3s uses.
pub fn git_version() -> String {
    let (maj, min, patch) = KUBERNETES_VERSION;
    format!("v{maj}.{min}.{patch}+kestrel")
}
