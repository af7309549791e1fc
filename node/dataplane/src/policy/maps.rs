//! The narrow interface between the policy sync and the kernel's policy
//! maps, and its aya implementation over the maps pinned in the node's
//! bpffs. Everything above this trait runs in unit tests against
//! [`FakePolicyMaps`](super::fake::FakePolicyMaps).
//!
//! Addresses cross this interface in host types ([`Ipv4Net`],
//! [`Ipv4Addr`]); the conversion to the maps' network-order keys happens
//! here only.

use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, MapError};
use ipnet::Ipv4Net;
use kestrel_ebpf_common::map_names;
use kestrel_ebpf_common::policy::{IpcacheEntry, PolicyEndpoint, PolicyEntry, PolicyKey};

use super::compile::{RuleKey, addr_be, addr_from_be};
use crate::pins::{map_err, open_pinned};
use crate::{Error, Result};

/// Reads and writes of IPCACHE, POLICY_ENDPOINTS and POLICY. Writes
/// overwrite; deleting a missing key is not an error (the sync is
/// level-based and retries after failures, so it may delete twice).
pub trait PolicyMaps {
    /// Every IPCACHE entry: prefix → identity.
    fn dump_ipcache(&self) -> Result<Vec<(Ipv4Net, u32)>>;
    /// Every POLICY_ENDPOINTS entry.
    fn dump_endpoints(&self) -> Result<Vec<(Ipv4Addr, PolicyEndpoint)>>;
    /// Every POLICY entry: key → policy id.
    fn dump_entries(&self) -> Result<Vec<(RuleKey, u32)>>;
    /// Writes an IPCACHE entry.
    fn put_ipcache(&mut self, net: Ipv4Net, identity: u32) -> Result<()>;
    /// Deletes an IPCACHE entry.
    fn delete_ipcache(&mut self, net: Ipv4Net) -> Result<()>;
    /// Writes a POLICY_ENDPOINTS entry.
    fn put_endpoint(&mut self, addr: Ipv4Addr, endpoint: PolicyEndpoint) -> Result<()>;
    /// Deletes a POLICY_ENDPOINTS entry.
    fn delete_endpoint(&mut self, addr: Ipv4Addr) -> Result<()>;
    /// Writes a POLICY entry.
    fn put_entry(&mut self, key: RuleKey, policy_id: u32) -> Result<()>;
    /// Deletes a POLICY entry.
    fn delete_entry(&mut self, key: RuleKey) -> Result<()>;
}

/// The policy maps pinned in a node's bpffs directory, opened by path.
pub struct PinnedPolicyMaps {
    ipcache: LpmTrie<MapData, u32, IpcacheEntry>,
    endpoints: HashMap<MapData, u32, PolicyEndpoint>,
    policy: LpmTrie<MapData, PolicyKey, PolicyEntry>,
}

impl std::fmt::Debug for PinnedPolicyMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedPolicyMaps").finish_non_exhaustive()
    }
}

impl PinnedPolicyMaps {
    /// Opens IPCACHE, POLICY_ENDPOINTS and POLICY under `pin_dir`;
    /// [`Error::NotPinned`] if a map is missing there.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            ipcache: LpmTrie::try_from(open_pinned(pin_dir, map_names::IPCACHE)?)
                .map_err(map_err("typing", map_names::IPCACHE))?,
            endpoints: HashMap::try_from(open_pinned(pin_dir, map_names::POLICY_ENDPOINTS)?)
                .map_err(map_err("typing", map_names::POLICY_ENDPOINTS))?,
            policy: LpmTrie::try_from(open_pinned(pin_dir, map_names::POLICY)?)
                .map_err(map_err("typing", map_names::POLICY))?,
        })
    }
}

/// Deleting a key that is not there is fine: see [`PolicyMaps`].
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        // ENOENT is 2 on every Linux architecture.
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(2) => Ok(()),
        other => other,
    }
}

fn ipcache_key(net: Ipv4Net) -> Key<u32> {
    Key::new(u32::from(net.prefix_len()), addr_be(net.network()))
}

impl PolicyMaps for PinnedPolicyMaps {
    fn dump_ipcache(&self) -> Result<Vec<(Ipv4Net, u32)>> {
        let err = map_err("reading", map_names::IPCACHE);
        let mut out = std::collections::BTreeMap::new();
        for item in self.ipcache.iter() {
            let (key, value) = item.map_err(&err)?;
            let len = u8::try_from(key.prefix_len().min(32)).unwrap_or(32);
            let net = Ipv4Net::new(addr_from_be(key.data()), len)
                .map_err(|e| Error::Io {
                    what: "an IPCACHE key",
                    source: std::io::Error::other(e),
                })?
                .trunc();
            out.insert(net, value.identity);
        }
        Ok(out.into_iter().collect())
    }

    fn dump_endpoints(&self) -> Result<Vec<(Ipv4Addr, PolicyEndpoint)>> {
        let err = map_err("reading", map_names::POLICY_ENDPOINTS);
        let mut out = std::collections::BTreeMap::new();
        for item in self.endpoints.iter() {
            let (addr, ep) = item.map_err(&err)?;
            out.insert(addr_from_be(addr), ep);
        }
        Ok(out.into_iter().collect())
    }

    fn dump_entries(&self) -> Result<Vec<(RuleKey, u32)>> {
        let err = map_err("reading", map_names::POLICY);
        let mut out = std::collections::BTreeMap::new();
        for item in self.policy.iter() {
            let (key, value) = item.map_err(&err)?;
            out.insert(
                RuleKey::masked(key.data(), key.prefix_len()),
                value.policy_id,
            );
        }
        Ok(out.into_iter().collect())
    }

    fn put_ipcache(&mut self, net: Ipv4Net, identity: u32) -> Result<()> {
        self.ipcache
            .insert(&ipcache_key(net), IpcacheEntry { identity, _pad: 0 }, 0)
            .map_err(map_err("writing", map_names::IPCACHE))
    }

    fn delete_ipcache(&mut self, net: Ipv4Net) -> Result<()> {
        ignore_missing(self.ipcache.remove(&ipcache_key(net)))
            .map_err(map_err("deleting from", map_names::IPCACHE))
    }

    fn put_endpoint(&mut self, addr: Ipv4Addr, endpoint: PolicyEndpoint) -> Result<()> {
        self.endpoints
            .insert(addr_be(addr), endpoint, 0)
            .map_err(map_err("writing", map_names::POLICY_ENDPOINTS))
    }

    fn delete_endpoint(&mut self, addr: Ipv4Addr) -> Result<()> {
        ignore_missing(self.endpoints.remove(&addr_be(addr)))
            .map_err(map_err("deleting from", map_names::POLICY_ENDPOINTS))
    }

    fn put_entry(&mut self, key: RuleKey, policy_id: u32) -> Result<()> {
        self.policy
            .insert(
                &Key::new(key.prefix_len, key.key),
                PolicyEntry { policy_id, _pad: 0 },
                0,
            )
            .map_err(map_err("writing", map_names::POLICY))
    }

    fn delete_entry(&mut self, key: RuleKey) -> Result<()> {
        ignore_missing(self.policy.remove(&Key::new(key.prefix_len, key.key)))
            .map_err(map_err("deleting from", map_names::POLICY))
    }
}
