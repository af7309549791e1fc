//! The dataplane object as one node loads it: every program and map of
//! `ebpf/programs`, with the maps pinned by name under the node's own bpffs
//! directory. Loading again over the same directory reuses the pinned maps,
//! so a restarted agent adopts the services, backends and connections the
//! kernel already holds instead of starting empty.
//!
//! Attaching lives next to the programs it concerns (`sock` for the cgroup
//! hooks, `tc` for the per-packet programs), as `impl Dataplane` blocks.

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader};
use kestrel_ebpf_common::{lb::sizes, map_names, policy};

use crate::{EbpfLogLevel, Error, Result, ebpf_object};

/// Map sizes; the defaults come from `kestrel_ebpf_common::lb::sizes` and
/// `kestrel_ebpf_common::policy::sizes`.
///
/// A size that differs from an already pinned map's makes the load fail
/// (the pinned map cannot be resized); the caller decides whether to drop
/// the pins and start empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Service entries (masters and slots, both scopes).
    pub services: u32,
    /// Backends.
    pub backends: u32,
    /// Reverse-NAT entries (one per frontend).
    pub rev_nat: u32,
    /// Socket reverse-NAT entries.
    pub sock_rev_nat: u32,
    /// Session-affinity entries.
    pub affinity: u32,
    /// Conntrack entries.
    pub conntrack: u32,
    /// Ipcache prefixes (every pod in the cluster, nodes, ipBlocks).
    pub ipcache: u32,
    /// Local pods with policy state.
    pub policy_endpoints: u32,
    /// Policy allow entries over all local pods.
    pub policy: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: sizes::SERVICES,
            backends: sizes::BACKENDS,
            rev_nat: sizes::REV_NAT,
            sock_rev_nat: sizes::SOCK_REV_NAT,
            affinity: sizes::AFFINITY,
            conntrack: sizes::CONNTRACK,
            ipcache: policy::sizes::IPCACHE,
            policy_endpoints: policy::sizes::POLICY_ENDPOINTS,
            policy: policy::sizes::POLICY,
        }
    }
}

/// How to load the object.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The node's bpffs directory; maps are pinned (and found) here.
    pub pin_dir: PathBuf,
    /// Map sizes.
    pub sizes: MapSizes,
    /// The level of aya-log records the programs emit.
    pub log_level: EbpfLogLevel,
}

impl LoadOptions {
    /// Defaults for `pin_dir`: default sizes, info-level logging.
    pub fn new(pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            sizes: MapSizes::default(),
            log_level: EbpfLogLevel::Info,
        }
    }
}

/// The loaded object of one node.
#[derive(Debug)]
pub struct Dataplane {
    pub(crate) ebpf: Ebpf,
    pub(crate) pin_dir: PathBuf,
}

impl Dataplane {
    /// Loads the embedded object with its maps pinned under
    /// `options.pin_dir` (which must be on a bpffs). Programs are loaded
    /// into the kernel when they are attached.
    pub fn load(options: &LoadOptions) -> Result<Self> {
        let level = options.log_level.as_global();
        let s = options.sizes;
        let mut loader = EbpfLoader::new();
        loader
            .override_global("AYA_LOG_LEVEL", &level, true)
            .default_map_pin_directory(&options.pin_dir)
            .map_max_entries(map_names::SERVICES, s.services)
            .map_max_entries(map_names::BACKENDS, s.backends)
            .map_max_entries(map_names::BACKEND_CONNS, s.backends)
            .map_max_entries(map_names::REV_NAT, s.rev_nat)
            .map_max_entries(map_names::SOCK_REV_NAT, s.sock_rev_nat)
            .map_max_entries(map_names::AFFINITY, s.affinity)
            .map_max_entries(map_names::CONNTRACK, s.conntrack)
            .map_max_entries(map_names::IPCACHE, s.ipcache)
            .map_max_entries(map_names::POLICY_ENDPOINTS, s.policy_endpoints)
            .map_max_entries(map_names::POLICY, s.policy);
        let ebpf = loader.load(ebpf_object()?).map_err(Error::Load)?;
        Ok(Self {
            ebpf,
            pin_dir: options.pin_dir.clone(),
        })
    }

    /// The node's bpffs directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The loaded object, for taking its log ring buffer and its maps.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}
