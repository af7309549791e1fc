//! Kestrel's Kubernetes-compatible API server.
//!
//! [`ApiServer::bind`] loads (or creates) the cluster CA and credentials in
//! the data dir, fills the watch cache from the store and binds the port;
//! [`ApiServer::serve`] serves HTTPS until shutdown. Every resource in
//! [`kestrel_api::registry::RESOURCES`] gets the full set of verbs.
#![forbid(unsafe_code)]

mod admission;
mod alloc;
mod apiservice;
mod apply;
mod audit;
pub mod auth;
pub mod authz;
mod body;
mod bootstrap;
mod cache;
mod crd;
mod discovery;
mod eviction;
mod handlers;
mod kinds;
mod managed;
mod openapi;
mod patch;
pub mod pki;
mod proto;
mod proxy;
mod server;
pub mod serviceaccount;
mod state;
mod table;
#[cfg(feature = "testing")]
pub mod testing;
mod watch;
mod write;

use std::net::SocketAddr;

pub use admission::chain::PLUGINS as ADMISSION_PLUGINS;
pub use proxy::node_api_client_config;
pub use server::ApiServer;
pub use state::JOIN_PATH;
pub use state::{Config, MAX_BODY_BYTES};

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Credentials could not be created or loaded.
    #[error("credentials")]
    Pki(#[from] pki::PkiError),
    /// The TLS configuration was refused.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The listening socket could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An option is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The watch cache could not be filled from the store.
    #[error("filling the watch cache")]
    Cache(#[from] cache::CacheError),
    /// Creating the default namespaces or Services failed.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}
