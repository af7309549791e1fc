//! `kestrel sim`: simulated cluster members for exercising the control
//! plane at scale, the way KWOK does.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use kestrel_scheduler::sim::Nodes;

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Create Ready nodes with no agent behind them, renew their Leases and
    /// report the pods bound to them Running, until interrupted. The nodes
    /// stay after exit unless --delete-on-exit is given.
    Nodes(NodesArgs),
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    /// The API server's kubeconfig (default: $KUBECONFIG).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// How many nodes.
    #[arg(long)]
    count: usize,
    /// Node names are <prefix><index>.
    #[arg(long, default_value = "sim-node-")]
    prefix: String,
    /// Allocatable CPU of each node.
    #[arg(long, default_value = "32")]
    cpu: String,
    /// Allocatable memory of each node.
    #[arg(long, default_value = "256Gi")]
    memory: String,
    /// Pod slots of each node.
    #[arg(long, default_value = "110")]
    pods: String,
    /// Spread nodes over this many topology.kubernetes.io/zone values (0: none).
    #[arg(long, default_value_t = 0)]
    zones: usize,
    /// Seconds between Lease renewals.
    #[arg(long, default_value_t = 10)]
    lease_interval: u64,
    /// Do not report bound pods Running.
    #[arg(long)]
    no_run_pods: bool,
    /// Delete the nodes and their Leases on exit.
    #[arg(long)]
    delete_on_exit: bool,
}

pub async fn run(cmd: SimCommand) -> anyhow::Result<()> {
    let SimCommand::Nodes(args) = cmd;
    let client = kestrel_client::connect(args.kubeconfig.as_deref())
        .await
        .context("connecting to the API server")?;
    let sim = Nodes {
        count: args.count,
        prefix: args.prefix,
        cpu: args.cpu,
        memory: args.memory,
        pods: args.pods,
        zones: args.zones,
        ..Nodes::default()
    };
    sim.create(&client).await.context("creating nodes")?;
    sim.renew_leases(&client)
        .await
        .context("creating node leases")?;
    println!("{} simulated nodes ready ({}0..)", sim.count, sim.prefix);
    let every = Duration::from_secs(args.lease_interval.max(1));
    let run_pods = async {
        if args.no_run_pods {
            std::future::pending::<()>().await;
        }
        sim.run_pods(&client).await;
    };
    tokio::select! {
        () = sim.keep_leases(&client, every) => {}
        () = run_pods => {}
        () = super::server::shutdown_signal() => {}
    }
    if args.delete_on_exit {
        sim.delete(&client).await.context("deleting nodes")?;
        println!("deleted {} simulated nodes", sim.count);
    }
    Ok(())
}
