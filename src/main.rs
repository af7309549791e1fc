//! `kestrel`: the single binary. Each subcommand is a thin shell over a
//! library crate; see docs/architecture.md for the map.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

mod cmd;

/// Kestrel: an eBPF-native Kubernetes distribution.
#[derive(Debug, Parser)]
#[command(name = "kestrel", version, about, propagate_version = true)]
struct Cli {
    /// Log filter, in `tracing` EnvFilter syntax.
    #[arg(long, global = true, env = "KESTREL_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane: the Kubernetes API server over the chosen store.
    Server(cmd::server::ServerArgs),
    /// Run a node: the agent (kubelet) with its own containerd.
    Agent(cmd::agent::AgentArgs),
    /// Start a local multi-node cluster: nodes are network namespaces.
    Up(cmd::up::UpArgs),
    /// Remove everything `kestrel up` made.
    Down(cmd::up::DownArgs),
    /// Run the scheduler alone, against the API server in --kubeconfig or KUBECONFIG.
    Scheduler(cmd::scheduler::SchedulerArgs),
    /// Simulate cluster members (nodes without agents) for tests and benchmarks.
    #[command(subcommand)]
    Sim(cmd::sim::SimCommand),
    /// Run the controllers alone against an API server (HA control planes).
    ControllerManager(cmd::controller_manager::ControllerManagerArgs),
    /// Inspect and exercise the eBPF dataplane.
    #[command(subcommand)]
    Bpf(BpfCommand),
    /// Stream network policy verdicts from the nodes, as they happen.
    Observe(cmd::observe::ObserveArgs),
}

#[derive(Debug, Subcommand)]
enum BpfCommand {
    /// Attach the per-protocol packet counter to an interface and print its counts.
    ///
    /// It attaches in the current network namespace (use `ip netns exec NS kestrel ...`)
    /// and refuses the interface that carries the host's default route.
    Count {
        /// Interface to attach to.
        #[arg(long)]
        iface: String,
        /// Which direction to count.
        #[arg(long, value_enum, default_value_t = Direction::Ingress)]
        direction: Direction,
        /// Seconds between reports.
        #[arg(long, default_value_t = 1)]
        interval: u64,
        /// Stop after this many reports (0 = until interrupted).
        #[arg(long, default_value_t = 0)]
        reports: u64,
        /// A bpffs directory to pin the object's maps in.
        #[arg(long, default_value = "/sys/fs/bpf")]
        bpffs: std::path::PathBuf,
        /// Log every packet from the kernel through aya-log (costly).
        #[arg(long)]
        debug: bool,
    },
    /// List the service frontends in a node's pinned maps, with their backends and the
    /// connections each backend received. Reads only; works while the agent runs.
    Services {
        /// The node's bpffs directory, where the agent pinned its maps.
        #[arg(long, default_value = "/sys/fs/bpf")]
        bpffs: std::path::PathBuf,
    },
    /// List the flows in a node's conntrack map: each original tuple, its
    /// translation, flags, backend, TCP state and idle time. Reads only.
    Conntrack {
        /// The node's bpffs directory, where the agent pinned its maps.
        #[arg(long, default_value = "/sys/fs/bpf")]
        bpffs: std::path::PathBuf,
    },
    /// Show how a node routes pods: its configuration, the local pods the
    /// programs deliver to, and the kernel routes into other nodes' pod ranges.
    Routes {
        /// The node's bpffs directory, where the agent pinned its maps.
        #[arg(long, default_value = "/sys/fs/bpf")]
        bpffs: std::path::PathBuf,
        /// Read routes and interfaces in this network namespace (a name
        /// under /run/netns or a path), e.g. a `kestrel up` node's.
        #[arg(long)]
        netns: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Direction {
    Ingress,
    Egress,
}

/// The `--log` filter, with the programs' debug records let through when
/// the agent is asked for them.
fn log_filter(cli: &Cli) -> String {
    match &cli.command {
        Command::Agent(a) if a.bpf_debug => format!("{},ebpf=debug", cli.log),
        _ => cli.log.clone(),
    }
}

fn main() -> ExitCode {
    // One binary: containerd runs it as the CNI plugin under that name.
    if std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f == "kestrel-cni" || f == "loopback")
        })
        .unwrap_or(false)
    {
        return kestrel_cni::exec::main();
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One readable line with the whole cause chain; no backtrace for user errors.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(log_filter(&cli))
                .with_context(|| format!("invalid --log filter {:?}", cli.log))?,
        )
        .with_writer(std::io::stderr)
        .init();
    // Deeply nested objects decode recursively; unoptimised builds use much
    // larger frames than release ones, so give worker threads room.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 * 1024 * 1024)
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => cmd::server::run(args).await,
            Command::Agent(args) => cmd::agent::run(args).await,
            Command::Up(args) => cmd::up::up(args).await,
            Command::Down(args) => cmd::up::down(args),
            Command::Scheduler(args) => cmd::scheduler::run(args).await,
            Command::Sim(c) => cmd::sim::run(c).await,
            Command::ControllerManager(args) => cmd::controller_manager::run(args).await,
            Command::Bpf(BpfCommand::Count {
                iface,
                direction,
                interval,
                reports,
                bpffs,
                debug,
            }) => {
                cmd::bpf::count(
                    &iface,
                    direction,
                    Duration::from_secs(interval.max(1)),
                    reports,
                    &bpffs,
                    debug,
                )
                .await
            }
            Command::Observe(args) => cmd::observe::run(args).await,
            Command::Bpf(BpfCommand::Services { bpffs }) => cmd::bpf::services(&bpffs),
            Command::Bpf(BpfCommand::Conntrack { bpffs }) => cmd::bpf::conntrack(&bpffs),
            Command::Bpf(BpfCommand::Routes { bpffs, netns }) => {
                cmd::bpf::routes(&bpffs, netns.as_deref())
            }
        }
    })
}
