//! Kestrel's dataplane loader: it loads the eBPF object built from
//! `ebpf/programs`, attaches programs, and reads their maps.
//!
//! The object is embedded at build time (see `build.rs`). Every kernel call
//! goes through aya; logic that needs no kernel lives in pure functions so it
//! can be unit-tested without root.
// The loader is one of two crates allowed `unsafe` (the other is the eBPF
// crate); each use is marked with `expect` and a SAFETY comment.
#![deny(unsafe_code)]

pub mod batch;
mod ebpf_log;
mod error;
pub mod flows;
pub mod host;
pub mod inspect;
mod loader;
pub mod metrics;
mod object;
mod pins;
pub mod policy;
pub mod progress;
pub mod proto_counter;
mod sock;
pub mod sync;
mod sys;
pub mod tc;

pub use ebpf_log::{EbpfLogLevel, spawn_log_pump};
pub use error::{Error, Result};
pub use loader::{Dataplane, LoadOptions, MapSizes};
pub use object::{ebpf_object, object_is_built};
pub use proto_counter::{ProtoCounter, ProtoCounts};
pub use sock::{
    LINKS_DIR, SOCK_LB_PROGRAMS, SockLbHook, SockLbLink, SockLbStatus, detach_sock_lb,
    sock_lb_status,
};
