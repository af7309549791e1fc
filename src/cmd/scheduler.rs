//! `kestrel scheduler`: the scheduler alone, for HA (several replicas elect
//! a leader on the Lease `<lease-namespace>/kube-scheduler`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{ArgAction, Args};
use kestrel_scheduler::{Config, LeaderElection, Scheduler};

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// The API server's kubeconfig (default: $KUBECONFIG).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Elect a leader among replicas on a Lease before scheduling.
    #[arg(long, action = ArgAction::Set, default_value_t = true, num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// Namespace of the leader-election Lease.
    #[arg(long, default_value = "kube-system")]
    lease_namespace: String,
    /// Schedule pods whose spec.schedulerName is this.
    #[arg(long, default_value = kestrel_scheduler::DEFAULT_SCHEDULER_NAME)]
    scheduler_name: String,
    /// Percentage of nodes to find feasible before scoring (default:
    /// upstream's adaptive one, 50% minus 1% per 125 nodes, at least 5%).
    #[arg(long)]
    percentage_of_nodes_to_score: Option<u32>,
}

pub async fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    let client = kestrel_client::connect(args.kubeconfig.as_deref())
        .await
        .context("connecting to the API server")?;
    let config = Config {
        scheduler_name: args.scheduler_name,
        leader_election: args
            .leader_elect
            .then(|| LeaderElection::new(&args.lease_namespace)),
        percentage_of_nodes_to_score: args.percentage_of_nodes_to_score,
        ..Config::default()
    };
    // Losing the Lease ends the process, as upstream: a supervisor
    // restarts it as a standby.
    Scheduler::new(client, config)
        .run(super::server::shutdown_signal())
        .await
        .context("scheduler")
}

/// The scheduler inside `kestrel server`: a client from the server's admin
/// kubeconfig, with leader election so other replicas can stand by. A lost
/// Lease starts it afresh (as a standby) instead of ending the server.
pub async fn in_server(kubeconfig: &Path) {
    loop {
        let client = match kestrel_client::client_from(kubeconfig).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "scheduler cannot build a client; not scheduling");
                return;
            }
        };
        let config = Config {
            leader_election: Some(LeaderElection::new("kube-system")),
            ..Config::default()
        };
        match Scheduler::new(client, config)
            .run(std::future::pending())
            .await
        {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "scheduler stopped leading; standing by again"),
        }
    }
}
