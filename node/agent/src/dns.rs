//! Cluster DNS on this node: the server that answers the node's pods (see
//! `kestrel-dns`), and what the pods' resolv.conf is made of.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;

use crate::pods::dns::NodeDns;

/// How the agent runs cluster DNS.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster DNS Service's addresses, written into ClusterFirst pods'
    /// resolv.conf (the kubelet's `--cluster-dns`).
    pub cluster_dns: Vec<Ipv4Addr>,
    /// The cluster domain (`--cluster-domain`).
    pub cluster_domain: String,
    /// The host's resolv.conf: `dnsPolicy: Default` pods get it, and its
    /// nameservers are the upstreams unless `upstreams` is set.
    pub resolv_conf: PathBuf,
    /// Resolvers for names outside the cluster domain.
    pub upstreams: Vec<SocketAddr>,
    /// Whether this agent serves DNS on the node's address, port `port`.
    pub serve: bool,
    /// The port to serve on (53).
    pub port: u16,
    /// Queries a second allowed per source (0: unlimited).
    pub rate_limit: u32,
    /// TTL of cluster records, seconds.
    pub ttl: u32,
}

/// The pods' side, from the options and the host's resolv.conf.
pub fn node_dns(options: &Options) -> anyhow::Result<NodeDns> {
    let host = match kestrel_dns::ResolvConf::read(&options.resolv_conf) {
        Ok(rc) => rc,
        // No file is an empty resolver configuration, as for the kubelet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %options.resolv_conf.display(), "no resolv.conf; Default pods get an empty one");
            kestrel_dns::ResolvConf::default()
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}", options.resolv_conf.display()));
        }
    };
    Ok(NodeDns {
        cluster_dns: options
            .cluster_dns
            .iter()
            .map(ToString::to_string)
            .collect(),
        domain: options.cluster_domain.clone(),
        host,
    })
}

/// Starts the node's DNS server and waits until it holds every Service.
pub async fn start(
    client: kube::Client,
    options: &Options,
    node_dns: &NodeDns,
    node_ip: Ipv4Addr,
) -> anyhow::Result<Option<kestrel_dns::Running>> {
    if !options.serve {
        return Ok(None);
    }
    let upstreams = if options.upstreams.is_empty() {
        node_dns.host.upstreams()
    } else {
        options.upstreams.clone()
    };
    let config = kestrel_dns::Config {
        listen: SocketAddr::new(node_ip.into(), options.port),
        domain: options.cluster_domain.clone(),
        ttl: options.ttl,
        upstreams,
        rate_limit: options.rate_limit,
        cache_size: 10_000,
    };
    let mut running = kestrel_dns::start(client, &config)
        .await
        .context("starting the cluster DNS server")?;
    running.wait_synced().await?;
    tracing::info!(listen = %config.listen, domain = %config.domain, upstreams = ?config.upstreams, "cluster DNS serving");
    Ok(Some(running))
}
