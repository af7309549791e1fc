//! The infrastructure controllers against an in-process API server on the
//! real SQLite store. No node agent runs: where a scenario needs one, the
//! test plays the kubelet through pods/status, nodes/status and the node
//! Lease.

mod clusterdns;
mod clusterroleaggregation;
mod common;
mod disruption;
mod endpointslice;
mod gc;
mod leader;
mod namespace;
mod nodeipam;
mod nodelifecycle;
mod resourcequota;
mod serviceaccounttokens;
mod volume;
