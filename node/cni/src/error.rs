//! Errors, each mapped to a CNI error code (CNI spec 1.0, "Error").

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

/// Everything that can make a CNI operation fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runtime asked for a CNI version this plugin does not speak.
    #[error("CNI version {0:?} is not supported (supported: {supported})", supported = crate::spec::SUPPORTED_VERSIONS.join(", "))]
    IncompatibleVersion(String),
    /// A required environment variable is missing or malformed.
    #[error("invalid CNI environment: {0}")]
    InvalidEnvironment(String),
    /// The network configuration on stdin could not be decoded.
    #[error("decoding the network configuration: {0}")]
    Decode(#[source] serde_json::Error),
    /// The network configuration is well-formed but unusable.
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// Every address of the pod CIDR is taken.
    #[error("no free address left in pod CIDR {0}")]
    Exhausted(Ipv4Net),
    /// A file operation failed.
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
    /// A netlink request failed.
    #[error("{what}")]
    Netlink {
        /// What we were doing.
        what: String,
        /// The cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// The sandbox's network namespace could not be entered.
    #[error("entering network namespace {}", path.display())]
    Netns {
        /// The namespace path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// CHECK found the pod's network not as ADD left it.
    #[error("the pod network is not as configured: {0}")]
    CheckFailed(String),
    /// The node agent did not take the notification.
    #[error("notifying the node agent at {}: {message}", socket.display())]
    Agent {
        /// The agent's socket.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        Self::Netlink {
            what: what.into(),
            source,
        }
    }

    /// The CNI error code: 1-99 are the spec's, 100+ the plugin's own.
    pub fn code(&self) -> u32 {
        match self {
            Self::IncompatibleVersion(_) => 1,
            Self::InvalidEnvironment(_) => 4,
            Self::Io { .. } => 5,
            Self::Decode(_) => 6,
            Self::InvalidConfig(_) => 7,
            // The runtime should retry: the agent may be restarting.
            Self::Agent { .. } => 11,
            Self::Exhausted(_) => 100,
            Self::Netlink { .. } | Self::Netns { .. } => 101,
            Self::CheckFailed(_) => 102,
        }
    }
}

/// The CNI crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
