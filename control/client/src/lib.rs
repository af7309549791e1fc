//! What every client of the API server shares.
//!
//! The scheduler, the controllers, the node agent and `kestrel sim` are all
//! clients of the API server, and they find it the way kubectl does
//! ([`connect`]). They report what they do as core/v1 Events ([`events`]).
#![forbid(unsafe_code)]

pub mod events;
pub mod leader;

use std::path::{Path, PathBuf};

/// Errors building a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No kubeconfig was named and none is in the environment.
    #[error("no kubeconfig: pass --kubeconfig or set KUBECONFIG")]
    NoKubeconfig,
    /// The kubeconfig could not be read or parsed.
    #[error("reading kubeconfig {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig was read but does not make a usable client.
    #[error("kubeconfig {path}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The kubeconfig to use: `explicit` (from `--kubeconfig`) if given, else
/// the first path in `KUBECONFIG`, as kubectl resolves it.
pub fn kubeconfig_path(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
        .ok_or(Error::NoKubeconfig)
}

/// A kube-rs client for the server named by the kubeconfig at `path`.
pub async fn client_from(path: &Path) -> Result<kube::Client, Error> {
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
    kube::Client::try_from(cfg).map_err(|e| Error::Config {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

/// A client found through `--kubeconfig` or `KUBECONFIG`.
pub async fn connect(explicit: Option<&Path>) -> Result<kube::Client, Error> {
    client_from(&kubeconfig_path(explicit)?).await
}
