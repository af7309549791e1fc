//! Kestrel's controller manager.
//!
//! One module per controller, each in the kube-runtime style: a reflector
//! watches what it needs, a reconcile function moves one object toward its
//! spec, and errors requeue with backoff. Every controller is a client of
//! the API server and nothing else. [`manager::Manager`] starts them all,
//! behind leader election when asked.
#![forbid(unsafe_code)]

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod job;
pub mod replicaset;
pub mod replicationcontroller;
pub mod statefulset;
pub mod workload;
mod workloads;

pub use workload::WorkloadConfig;
pub use workloads::{run_workloads, run_workloads_with};
// Infrastructure controllers.
pub mod clusterdns;
pub mod clusterroleaggregation;
pub mod disruption;
pub mod endpointslice;
pub mod gc;
pub mod legacytoken;
pub mod manager;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod resourcequota;
pub mod rootca;
pub mod serviceaccount;
pub mod volume;

pub use manager::{Manager, Options};
