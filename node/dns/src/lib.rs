//! Kestrel's cluster DNS, served by every node agent.
//!
//! Like NodeLocal DNSCache, but authoritative for the cluster zone: the
//! agent watches Services and EndpointSlices ([`watch`]), keeps the records
//! the Kubernetes DNS specification defines in memory ([`zone`]), answers
//! them on the node's own address ([`server`]), and forwards every other
//! name to the upstream resolvers with a small cache ([`forward`]). Pods
//! reach it through the `kube-dns` Service, whose endpoints are the nodes
//! and whose `internalTrafficPolicy: Local` makes each node's eBPF service
//! proxy send its pods' queries to its own agent: queries for cluster
//! names never leave the node.
//!
//! hickory-proto does the wire format (parsing, name compression, EDNS0);
//! nothing here parses DNS bytes by hand except the 12-byte header echoed
//! in a FORMERR for a message that does not parse.
#![forbid(unsafe_code)]

pub mod forward;
pub mod metrics;
pub mod resolvconf;
pub mod server;
pub mod watch;
pub mod zone;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

pub use resolvconf::ResolvConf;
pub use server::{QueryEvent, Server};
pub use watch::{SharedZone, WatchProgress};
pub use zone::Zone;

/// The TTL of cluster records: CoreDNS's default.
pub const DEFAULT_TTL: u32 = 5;

/// How the agent runs its DNS server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen, UDP and TCP (the node's address, port 53).
    pub listen: SocketAddr,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// TTL of cluster records, seconds.
    pub ttl: u32,
    /// Resolvers for names outside the cluster domain.
    pub upstreams: Vec<SocketAddr>,
    /// Queries a second allowed per source address (0: unlimited).
    pub rate_limit: u32,
    /// Upstream answers kept in the cache.
    pub cache_size: usize,
}

/// A running DNS server: its tasks end when this is dropped.
#[derive(Debug)]
pub struct Running {
    /// The server, for metrics and query events.
    pub server: Arc<Server>,
    /// The watchers' progress (first full sync, last change).
    pub progress: tokio::sync::watch::Receiver<WatchProgress>,
    local_addr: SocketAddr,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    /// Where it listens (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until Services and EndpointSlices have been listed in full.
    pub async fn wait_synced(&mut self) -> Result<()> {
        self.progress
            .wait_for(|p| p.synced)
            .await
            .map(|_| ())
            .map_err(|_| Error::Ended)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Why the DNS server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster domain is not a domain name.
    #[error("{0}")]
    Domain(String),
    /// A socket could not be bound.
    #[error("listening for DNS on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The watchers ended before their first sync.
    #[error("the DNS watchers ended before their first sync")]
    Ended,
}

/// A result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Binds the sockets and starts the watchers and the server.
pub async fn start(client: kube::Client, config: &Config) -> Result<Running> {
    let server_ip = match config.listen.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    };
    let zone = Zone::new(&config.domain, config.ttl, server_ip).map_err(Error::Domain)?;
    let zone: SharedZone = Arc::new(RwLock::new(zone));
    let udp = tokio::net::UdpSocket::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = udp.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    // TCP on the same port (the one UDP got, if it was 0).
    let tcp = tokio::net::TcpListener::bind(local_addr)
        .await
        .map_err(|source| Error::Bind {
            addr: local_addr,
            source,
        })?;
    let forwarder = forward::Forwarder::new(config.upstreams.clone(), config.cache_size);
    let server = Arc::new(Server::new(zone.clone(), forwarder, config.rate_limit));
    let (tx, progress) = tokio::sync::watch::channel(WatchProgress::default());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch::run(client, zone, tx));
    tasks.spawn(server.clone().serve_udp(udp, 2));
    tasks.spawn(server.clone().serve_tcp(tcp));
    Ok(Running {
        server,
        progress,
        local_addr,
        tasks,
    })
}
