//! The node's eBPF dataplane as the agent runs it: the object loaded over
//! the node's bpffs pins (so a restarted agent adopts the maps, links and
//! connections the kernel already holds), the socket load balancer attached
//! to the node's own cgroup, and the service maps kept in sync with the
//! API server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use kestrel_dataplane::{Dataplane, LoadOptions};

/// How the agent runs the dataplane.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node's bpffs directory.
    pub pin_dir: PathBuf,
    /// Whether east-west service traffic is balanced at connect() time.
    /// Off, the per-packet programs carry it (the packet benchmark compares
    /// the two).
    pub socket_lb: bool,
}

/// The loaded dataplane, shared by the tasks that attach to it.
pub type Shared = Arc<Mutex<Dataplane>>;

/// Loads the object and attaches what belongs to the node as a whole.
pub fn start(options: &Options) -> anyhow::Result<Shared> {
    ensure_bpffs(&options.pin_dir)?;
    let mut dp = Dataplane::load(&LoadOptions::new(&options.pin_dir))
        .context("loading the eBPF dataplane")?;
    let cgroup = kestrel_dataplane::host::own_cgroup_dir().context("finding the node's cgroup")?;
    if options.socket_lb {
        dp.attach_sock_lb(&cgroup).with_context(|| {
            format!("attaching the socket load balancer to {}", cgroup.display())
        })?;
        tracing::info!(cgroup = %cgroup.display(), "socket load balancer attached");
    } else {
        kestrel_dataplane::detach_sock_lb(&options.pin_dir)
            .context("detaching the socket load balancer")?;
        tracing::info!("socket load balancer off: services go through the per-packet path");
    }
    Ok(Arc::new(Mutex::new(dp)))
}

/// Pins only survive on a bpffs; anywhere else the kernel refuses them, so
/// say so up front.
fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let fs = nix::sys::statfs::statfs(dir).with_context(|| format!("statfs {}", dir.display()))?;
    anyhow::ensure!(
        fs.filesystem_type().0 == BPF_FS_MAGIC,
        "{} is not on a bpffs; mount one there (mount -t bpf bpffs {}) or pass --bpf-dir",
        dir.display(),
        dir.display()
    );
    Ok(())
}
