//! Kestrel's shared Kubernetes API machinery.
//!
//! - [`registry`]: the declarative table of served resources;
//! - [`labels`] and [`fields`]: selector parsing and matching;
//! - [`status`]: errors rendered as `metav1.Status`;
//! - [`validation`]: name and label rules;
//! - [`meta`]: uid, timestamps and `generateName`;
//! - [`printers`]: Table cells for printer columns.
#![forbid(unsafe_code)]

pub mod fields;
pub mod labels;
pub mod meta;
pub mod printers;
pub mod quantity;
pub mod quota;
pub mod registry;
pub mod status;
pub mod validation;

pub use status::{ApiError, FieldError, ObjectRef};

/// The Kubernetes version whose API types and behaviour this crate follows.
pub const KUBERNETES_VERSION: (u32, u32, u32) = (1, 37, 0);
