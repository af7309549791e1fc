//! Kestrel's scheduler: binds pending pods to nodes, as kube-scheduler does.
//!
//! It is a client of the API server. Two kube-rs watchers (nodes, pods)
//! keep a [`cache::Cache`] of nodes with the resources their pods request,
//! and a [`queue::Queue`] of this scheduler's pending pods; more watchers
//! (Services, ReplicaSets, StatefulSets, and ReplicationControllers where
//! served) keep the selectors default spreading needs
//! ([`workloads::Workloads`]). One loop pops a
//! pod, runs the filter and score plugins ([`plugins::Profile`]) against
//! the cache, assumes the pod on the chosen node (so the next pod already
//! sees it), and hands the binding to a concurrent task that POSTs
//! pods/binding. A pod that fits nowhere gets PodScheduled=False with
//! reason Unschedulable and a FailedScheduling Event, and waits for a
//! cluster event or the periodic flush.
//!
//! With leader election, the caches stay warm in every replica and only
//! the Lease holder schedules.
#![forbid(unsafe_code)]

pub mod cache;
pub mod plugins;
pub mod pod_info;
pub mod queue;
mod report;
mod run;
pub mod sim;
pub mod volumes;
pub mod workloads;

use std::time::Duration;

pub use run::{Scheduler, Stats};

/// The scheduler name pods get when they name none.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Leadership was lost; the process should exit so a standby can lead.
    #[error(transparent)]
    LostLease(#[from] kestrel_client::leader::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Lease-based leader election settings.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (hostname and a random suffix by default).
    pub identity: String,
    /// How long an unrenewed Lease stays valid.
    pub lease_duration: Duration,
    /// How long the leader tries to renew before giving up.
    pub renew_deadline: Duration,
    /// How often candidates poll and the leader renews.
    pub retry: Duration,
}

impl LeaderElection {
    /// The Lease `namespace/kube-scheduler`, with the client's default
    /// timings (a standby leads within 14 s of the leader's death).
    pub fn new(namespace: &str) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "kestrel".into());
        Self {
            namespace: namespace.to_owned(),
            name: "kube-scheduler".into(),
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            lease_duration: Duration::from_secs(12),
            renew_deadline: Duration::from_secs(8),
            retry: Duration::from_secs(2),
        }
    }
}

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pods with this spec.schedulerName are ours.
    pub scheduler_name: String,
    /// `None` schedules at once, without a Lease.
    pub leader_election: Option<LeaderElection>,
    /// Bindings in flight at once.
    pub bind_concurrency: usize,
    /// Percentage of nodes to find feasible before scoring; `None` is
    /// upstream's adaptive default.
    pub percentage_of_nodes_to_score: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scheduler_name: DEFAULT_SCHEDULER_NAME.into(),
            leader_election: None,
            bind_concurrency: 64,
            percentage_of_nodes_to_score: None,
        }
    }
}
