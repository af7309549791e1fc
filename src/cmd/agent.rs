//! `kestrel agent`: the node agent.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::Context as _;
use clap::Args;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The API server URL, e.g. https://10.41.0.1:6443.
    #[arg(long)]
    server: String,
    /// The node join token (the server's <data-dir>/node-token).
    #[arg(long, env = "KESTREL_NODE_TOKEN", hide_env_values = true)]
    token: String,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Where the agent keeps credentials, containerd's state and pod data.
    #[arg(long, default_value = "/var/lib/kestrel/agent")]
    data_dir: PathBuf,
    /// Image archives (*.tar) to import into containerd at start.
    #[arg(long)]
    images_dir: Option<PathBuf>,
    /// The node's IP (default: the source address of the route to --server).
    #[arg(long)]
    node_ip: Option<Ipv4Addr>,
    /// Port of the node API (logs, exec).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// The bpffs directory where the dataplane pins its maps and links
    /// (default: <data-dir>/bpf, which must be a bpffs mount).
    #[arg(long)]
    bpf_dir: Option<PathBuf>,
    /// Balance east-west service traffic at connect() time (the cgroup
    /// socket hooks); `false` leaves it to the per-packet programs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    socket_lb: bool,
    /// Have the eBPF programs log per-packet decisions (new flows, chosen
    /// backends) through aya-log; shown under the `ebpf` log target. Costly.
    #[arg(long)]
    pub bpf_debug: bool,
    /// Where to serve /metrics (Prometheus text) and /healthz over plain
    /// HTTP, as kube-proxy does; an empty value turns it off.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind_address: String,
    /// The cluster DNS Service's address(es), written into the resolv.conf
    /// of `dnsPolicy: ClusterFirst` pods (empty: pods fall back to Default).
    #[arg(long, value_delimiter = ',', default_value = "10.43.0.10")]
    cluster_dns: Vec<Ipv4Addr>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The host resolver configuration: `dnsPolicy: Default` pods get it,
    /// and its nameservers answer names outside the cluster domain unless
    /// --dns-upstream is given.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Upstream resolvers (IP or IP:PORT, comma-separated) for names
    /// outside the cluster domain.
    #[arg(long, value_delimiter = ',', value_parser = parse_upstream)]
    dns_upstream: Vec<std::net::SocketAddr>,
    /// Serve cluster DNS on the node's address (UDP and TCP).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    dns: bool,
    /// The port cluster DNS is served on.
    #[arg(long, default_value_t = 53)]
    dns_port: u16,
    /// DNS queries a second allowed from one source address (0: no limit).
    #[arg(long, default_value_t = 5000)]
    dns_rate_limit: u32,
    /// TTL of cluster DNS records, seconds.
    #[arg(long, default_value_t = kestrel_dns::DEFAULT_TTL)]
    dns_ttl: u32,
}

/// An upstream resolver: `IP` (port 53) or `IP:PORT`.
fn parse_upstream(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    s.parse()
        .map_err(|_| format!("{s:?}: expected an IP address or IP:PORT"))
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let node_name = match args.node_name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name")?
            .trim()
            .to_lowercase(),
    };
    let exe = std::env::current_exe().context("finding the kestrel executable")?;
    let config = kestrel_agent::Config {
        server: args.server,
        token: args.token,
        node_name,
        data_dir: args.data_dir.clone(),
        images_dir: args.images_dir,
        node_ip: args.node_ip,
        cni_plugin: exe,
        kubelet_port: args.kubelet_port,
        dataplane: kestrel_agent::dataplane::Options {
            pin_dir: args.bpf_dir.unwrap_or_else(|| args.data_dir.join("bpf")),
            socket_lb: args.socket_lb,
            log_level: if args.bpf_debug {
                kestrel_dataplane::EbpfLogLevel::Debug
            } else {
                kestrel_dataplane::EbpfLogLevel::Info
            },
        },
        metrics_addr: if args.metrics_bind_address.is_empty() {
            None
        } else {
            Some(args.metrics_bind_address.parse().with_context(|| {
                format!(
                    "--metrics-bind-address {:?}: expected IP:PORT",
                    args.metrics_bind_address
                )
            })?)
        },
        dns: kestrel_agent::dns::Options {
            cluster_dns: args.cluster_dns,
            cluster_domain: args.cluster_domain,
            resolv_conf: args.resolv_conf,
            upstreams: args.dns_upstream,
            serve: args.dns,
            port: args.dns_port,
            rate_limit: args.dns_rate_limit,
            ttl: args.dns_ttl,
        },
    };
    kestrel_agent::run(config, super::server::shutdown_signal()).await
}
