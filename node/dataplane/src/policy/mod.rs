//! Keeps the network policy maps equal to what the Kubernetes API says:
//! Pods, Namespaces and NetworkPolicies in; IPCACHE, POLICY_ENDPOINTS and
//! POLICY out (the kernel half that reads them is in
//! `ebpf/programs/src/tc`, the shared types in
//! `kestrel_ebpf_common::policy`).
//!
//! - [`PolicyCompiler`]: the desired maps (pure, upstream semantics), with
//!   identities and policy ids that stay stable across compiles and
//!   restarts.
//! - [`PolicySyncer`]: a mirror of the maps and the ordered minimal writes
//!   that never deny, mid-update, a flow allowed before and after.
//! - [`PolicyMaps`]: the narrow interface to the kernel, implemented over
//!   the pinned maps by [`PinnedPolicyMaps`] (and in memory for the unit
//!   tests).
//! - [`PolicySync`]: the loop over kube-rs reflector stores that the agent
//!   runs, with [`PolicyNames`] to name what the maps number.

mod compile;
mod diff;
#[cfg(test)]
mod fake;
mod maps;
mod watch;

pub use compile::{
    Compiled, NameTable, PolicyCompiler, PolicyNames, PolicyNode, PolicyState, RuleKey, addr_be,
    addr_from_be, key_bytes,
};
pub use diff::{PolicyFlushStats, PolicySyncer};
pub use maps::{PinnedPolicyMaps, PolicyMaps};
pub use watch::{
    PolicyBatchReport, PolicyProgress, PolicySync, PolicySyncConfig, PolicySyncEnded,
    PolicySyncStatus,
};

#[cfg(test)]
mod tests;
