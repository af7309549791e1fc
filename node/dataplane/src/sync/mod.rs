//! Keeps the service load-balancing maps equal to what the Kubernetes API
//! says: Services and EndpointSlices in, the SERVICES, BACKENDS and REV_NAT
//! maps out.
//!
//! - [`desired`]: what one Service puts in the maps (pure, kube-proxy's
//!   rules).
//! - [`Syncer`]: the desired state of every Service, a mirror of the maps,
//!   and the ordered minimal writes between them; it adopts the ids already
//!   in the pinned maps so a restarted agent does not renumber.
//! - [`LbMaps`]: the narrow interface to the kernel, implemented over the
//!   pinned maps by [`PinnedMaps`] (and in memory for the unit tests).
//! - [`ServiceSync`]: the loop over kube-rs reflector stores that the agent
//!   runs.
//! - [`read_services`]: the maps as `kestrel bpf services` prints them.

pub mod desired;
mod diff;
#[cfg(test)]
mod fake;
mod ids;
mod inspect;
mod maps;
mod watch;

pub use desired::{
    BackendKey, Frontend, FrontendKey, NodeIdentity, ServiceRef, ServiceState, service_state,
};
pub use diff::{FlushStats, IdLimits, Syncer};
pub use inspect::{BackendView, FrontendView, ServicesView, read_services};
pub use maps::{LbMaps, PinnedMaps};
pub use watch::{BatchReport, Progress, ServiceSync, SyncConfig, SyncEnded, SyncStatus};

#[cfg(test)]
mod tests;
