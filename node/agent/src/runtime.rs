//! The node's container runtime and pod network plumbing: its own
//! containerd, the offline images, the CNI plugin and its configuration,
//! and the PodNetwork service the plugin reports to.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use kestrel_cni::proto::pod_network_server::{PodNetwork, PodNetworkServer};
use kestrel_cni::proto::{Ack, PodNetworkEvent};
use kestrel_cri::containerd::{Containerd, ContainerdConfig, Placement};
use kestrel_cri::{ImageClient, RuntimeClient, v1};

/// The image every pod sandbox runs.
pub const PAUSE_IMAGE: &str = "docker.io/kestrel/pause:0.1.0";

/// The running containerd: started by this agent, or one a previous run of
/// the agent left behind (after kill -9), which is adopted as is so the
/// containers it supervises are never disturbed.
#[derive(Debug)]
pub enum Runtime {
    /// Started by this agent; stops with it.
    Owned(Containerd),
    /// Found already answering on the node's socket.
    Adopted(ContainerdConfig),
}

impl Runtime {
    /// Start (or adopt) the node's containerd under `dir`.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let config = ContainerdConfig::under(dir, PAUSE_IMAGE);
        if config.socket.exists() {
            let mut probe = RuntimeClient::new(kestrel_cri::connect(&config.socket)?);
            let alive = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                probe.version(v1::VersionRequest {
                    version: "v1".into(),
                }),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            if alive {
                tracing::info!(socket = %config.socket.display(), "adopting the running containerd");
                return Ok(Self::Adopted(config));
            }
        }
        let containerd = Containerd::start(config, Placement::default())
            .await
            .context("starting containerd")?;
        Ok(Self::Owned(containerd))
    }

    /// Its configuration.
    pub fn config(&self) -> &ContainerdConfig {
        match self {
            Self::Owned(c) => c.config(),
            Self::Adopted(c) => c,
        }
    }

    /// A CRI runtime client.
    pub fn runtime_client(&self) -> anyhow::Result<RuntimeClient> {
        Ok(RuntimeClient::new(kestrel_cri::connect(
            &self.config().socket,
        )?))
    }

    /// A CRI image client.
    pub fn image_client(&self) -> anyhow::Result<ImageClient> {
        Ok(ImageClient::new(kestrel_cri::connect(
            &self.config().socket,
        )?))
    }

    /// containerd's version as nodeInfo reports it (`containerd://1.6.20`).
    pub async fn version(&self) -> anyhow::Result<String> {
        let v = self
            .runtime_client()?
            .version(v1::VersionRequest {
                version: "v1".into(),
            })
            .await
            .context("CRI Version")?
            .into_inner();
        let ver = v
            .runtime_version
            .split('~')
            .next()
            .unwrap_or_default()
            .to_owned();
        Ok(format!("{}://{ver}", v.runtime_name))
    }

    /// Import every `*.tar` archive in `images_dir` (the airgap images).
    pub async fn import_images(&self, images_dir: &Path) -> anyhow::Result<usize> {
        let mut archives: Vec<PathBuf> = std::fs::read_dir(images_dir)
            .with_context(|| format!("reading --images-dir {}", images_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tar"))
            .collect();
        archives.sort();
        for a in &archives {
            let import = match self {
                Self::Owned(c) => c.import_archive(a).await,
                Self::Adopted(cfg) => kestrel_cri::containerd::import_archive(&cfg.socket, a).await,
            };
            import.with_context(|| format!("importing {}", a.display()))?;
        }
        Ok(archives.len())
    }

    /// Stop containerd if this agent started it. Containers keep running
    /// in their shims.
    pub async fn stop(self) -> anyhow::Result<()> {
        if let Self::Owned(c) = self {
            c.stop().await.context("stopping containerd")?;
        }
        Ok(())
    }
}

/// Install the CNI plugin (`plugin` is its executable) and write the
/// network configuration for `pod_cidr`. Returns the conflist path.
pub fn install_cni(
    config: &ContainerdConfig,
    plugin: &Path,
    pod_cidr: &str,
    data_dir: &Path,
    agent_socket: &Path,
) -> anyhow::Result<PathBuf> {
    // One executable serves as both plugins containerd runs: `loopback`
    // for every sandbox, and ours.
    for name in ["kestrel-cni", "loopback"] {
        let bin = config.cni_bin_dir.join(name);
        let _ = std::fs::remove_file(&bin);
        std::os::unix::fs::symlink(plugin, &bin)
            .with_context(|| format!("linking {} to {}", bin.display(), plugin.display()))?;
    }
    let conflist = serde_json::json!({
        "cniVersion": kestrel_cni::spec::CNI_VERSION,
        "name": "kestrel",
        "plugins": [{
            "type": "kestrel-cni",
            "podCIDR": pod_cidr,
            "dataDir": data_dir.join("cni"),
            "agentSocket": agent_socket,
        }],
    });
    let path = config.cni_conf_dir.join("10-kestrel.conflist");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&conflist)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A pod's network attachment, as the CNI plugin reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// Pod namespace/name.
    pub pod: String,
    /// The node end of the veth.
    pub host_ifname: String,
    /// Its ifindex.
    pub host_ifindex: u32,
    /// The pod's IP.
    pub ip: String,
}

/// Pod interfaces by sandbox (container) id; the dataplane attaches to them.
pub type PodInterfaces = Arc<Mutex<HashMap<String, PodInterface>>>;

#[derive(Clone)]
struct NetworkService {
    interfaces: PodInterfaces,
    dataplane: crate::dataplane::Shared,
}

#[tonic::async_trait]
impl PodNetwork for NetworkService {
    async fn added(
        &self,
        req: tonic::Request<PodNetworkEvent>,
    ) -> Result<tonic::Response<Ack>, tonic::Status> {
        let e = req.into_inner();
        tracing::debug!(pod = %e.pod_name, ip = %e.ip, ifname = %e.host_ifname, "pod network added");
        // The plugin's ADD fails (and is retried) if the dataplane cannot
        // take the pod: a pod without its programs would be half wired.
        crate::dataplane::pod_added(&self.dataplane, &e)
            .map_err(|err| tonic::Status::internal(format!("{err:#}")))?;
        self.interfaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                e.container_id.clone(),
                PodInterface {
                    pod: format!("{}/{}", e.pod_namespace, e.pod_name),
                    host_ifname: e.host_ifname,
                    host_ifindex: e.host_ifindex,
                    ip: e.ip,
                },
            );
        Ok(tonic::Response::new(Ack {}))
    }

    async fn deleted(
        &self,
        req: tonic::Request<PodNetworkEvent>,
    ) -> Result<tonic::Response<Ack>, tonic::Status> {
        let e = req.into_inner();
        if let Err(err) = crate::dataplane::pod_deleted(&self.dataplane, &e) {
            tracing::warn!(error = %format!("{err:#}"), pod = %e.pod_name, "pod network removal");
        }
        self.interfaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&e.container_id);
        Ok(tonic::Response::new(Ack {}))
    }
}

/// Serve the PodNetwork service on `socket` until the task is dropped.
pub fn serve_pod_network(
    socket: &Path,
    dataplane: crate::dataplane::Shared,
) -> anyhow::Result<(PodInterfaces, tokio::task::JoinHandle<()>)> {
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    let svc = NetworkService {
        interfaces: PodInterfaces::default(),
        dataplane,
    };
    let interfaces = svc.interfaces.clone();
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(PodNetworkServer::new(svc))
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %e, "the PodNetwork service stopped");
        }
    });
    Ok((interfaces, task))
}
