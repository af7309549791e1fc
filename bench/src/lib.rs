//! Kestrel's benchmarks, as library functions so that `cargo xtask bench`
//! can call them; each has a thin binary too.

#![forbid(unsafe_code)]

pub mod apiserver;
pub mod cni;
pub mod dataplane;
pub mod dns;
pub mod pods;
pub mod policy;
pub mod report;
pub mod scheduler;
pub mod store;
