//! The CRI crate's error type.

use std::path::PathBuf;

/// Errors from talking to, configuring or supervising the container runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gRPC transport could not be set up.
    #[error("setting up the CRI gRPC transport")]
    Transport(#[source] tonic::transport::Error),
    /// The runtime answered a call with an error status.
    #[error("CRI call {call} failed")]
    Call {
        /// The RPC name.
        call: &'static str,
        /// The status the runtime returned.
        #[source]
        status: tonic::Status,
    },
    /// A file or directory could not be written or read.
    #[error("{what} {}", path.display())]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// containerd could not be started.
    #[error("starting containerd ({program})")]
    Spawn {
        /// The program we tried to run.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An image archive could not be imported.
    #[error("importing image archive {}: {output}", archive.display())]
    Import {
        /// The archive.
        archive: PathBuf,
        /// What the importer said.
        output: String,
    },
    /// A registry name or endpoint is not a `host` or `host:port`.
    #[error("{host:?} is not a registry host: {reason}")]
    InvalidRegistry {
        /// The name given.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// containerd exited or never became ready.
    #[error("containerd did not become ready: {reason}; its log is {}", log.display())]
    NotReady {
        /// Why we gave up.
        reason: String,
        /// Where its output went.
        log: PathBuf,
    },
}

/// The CRI crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
