//! The policy sync engine: a mirror of what the three maps hold, and the
//! ordered minimal writes that take them to a compiled [`PolicyState`].
//!
//! The order keeps every flow that is allowed both before and after an
//! update allowed in every intermediate state the kernel may read:
//! 1. POLICY entries that are new or changed: from here on the allows of
//!    both the old and the new state are present;
//! 2. endpoints that lose an isolation flag lose it now (with only the
//!    flags the new state keeps): a loosened pod is open before any address
//!    changes identity under it;
//! 3. IPCACHE prefixes that are new or changed, then
//! 4. IPCACHE prefixes removed: each address moves straight to its final
//!    identity, whose allows are already present;
//! 5. POLICY_ENDPOINTS new or changed (a pod becoming isolated finds its
//!    allows and its peers' final identities in place);
//! 6. endpoints removed;
//! 7. POLICY entries removed, once no address resolves to an identity
//!    they alone allowed and no endpoint depends on them.
//!
//! (Removing ipcache prefixes last instead would let step 7 deny an
//! address that still resolves to an identity being retired, e.g. a
//! deleted pod's address inside an ipBlock; the unit tests replay every
//! intermediate state of randomized updates to check the order.)
//!
//! Writes touch only what differs; an entry whose write failed stays
//! different in the mirror and is retried by the next [`PolicySyncer::sync`].

use std::collections::BTreeMap;

use kestrel_ebpf_common::policy::PolicyEndpoint;

use super::compile::PolicyState;
use super::maps::PolicyMaps;
use crate::Result;

/// What one [`PolicySyncer::sync`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyFlushStats {
    /// POLICY entries written (created or overwritten).
    pub entry_writes: usize,
    /// IPCACHE entries written.
    pub ipcache_writes: usize,
    /// POLICY_ENDPOINTS entries written.
    pub endpoint_writes: usize,
    /// POLICY entries deleted.
    pub entry_deletes: usize,
    /// IPCACHE entries deleted.
    pub ipcache_deletes: usize,
    /// POLICY_ENDPOINTS entries deleted.
    pub endpoint_deletes: usize,
}

impl PolicyFlushStats {
    /// Entries written in all three maps.
    pub fn writes(&self) -> usize {
        self.entry_writes + self.ipcache_writes + self.endpoint_writes
    }

    /// Entries deleted from all three maps.
    pub fn deletes(&self) -> usize {
        self.entry_deletes + self.ipcache_deletes + self.endpoint_deletes
    }
}

/// Keeps the policy maps equal to the desired [`PolicyState`].
#[derive(Debug)]
pub struct PolicySyncer<M> {
    maps: M,
    /// What the maps hold (updated after each successful write).
    mirror: PolicyState,
}

impl<M: PolicyMaps> PolicySyncer<M> {
    /// Adopts what `maps` already hold; the first [`PolicySyncer::sync`]
    /// writes only what differs from it.
    pub fn adopt(maps: M) -> Result<Self> {
        let mirror = PolicyState {
            ipcache: maps.dump_ipcache()?.into_iter().collect(),
            endpoints: maps.dump_endpoints()?.into_iter().collect(),
            entries: maps.dump_entries()?.into_iter().collect(),
        };
        Ok(Self { maps, mirror })
    }

    /// What the maps hold, as far as this syncer knows.
    pub fn programmed(&self) -> &PolicyState {
        &self.mirror
    }

    /// The maps.
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The maps, mutably (tests inject failures through it).
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Writes the difference between the maps and `desired`, in the order
    /// the module docs give. On error the mirror holds what was written so
    /// far, and calling again with the same state finishes the job.
    pub fn sync(&mut self, desired: &PolicyState) -> Result<PolicyFlushStats> {
        let mut stats = PolicyFlushStats::default();
        let Self { maps, mirror } = self;

        // 1. Allow entries added or changed.
        for (key, id) in changed(&desired.entries, &mirror.entries) {
            maps.put_entry(key, id)?;
            mirror.entries.insert(key, id);
            stats.entry_writes += 1;
        }
        // 2. Isolation lifted first.
        for (addr, want) in &desired.endpoints {
            let Some(have) = mirror.endpoints.get(addr).copied() else {
                continue;
            };
            let kept = have.flags & want.flags;
            if kept != have.flags {
                let loosened = PolicyEndpoint {
                    flags: kept,
                    ..*want
                };
                maps.put_endpoint(*addr, loosened)?;
                mirror.endpoints.insert(*addr, loosened);
                stats.endpoint_writes += 1;
            }
        }
        // 3. Ipcache added or changed.
        for (net, id) in changed(&desired.ipcache, &mirror.ipcache) {
            maps.put_ipcache(net, id)?;
            mirror.ipcache.insert(net, id);
            stats.ipcache_writes += 1;
        }
        // 4. Ipcache removed.
        for net in removed(&desired.ipcache, &mirror.ipcache) {
            maps.delete_ipcache(net)?;
            mirror.ipcache.remove(&net);
            stats.ipcache_deletes += 1;
        }
        // 5. Endpoints added or changed.
        for (addr, ep) in changed(&desired.endpoints, &mirror.endpoints) {
            maps.put_endpoint(addr, ep)?;
            mirror.endpoints.insert(addr, ep);
            stats.endpoint_writes += 1;
        }
        // 6. Endpoints removed.
        for addr in removed(&desired.endpoints, &mirror.endpoints) {
            maps.delete_endpoint(addr)?;
            mirror.endpoints.remove(&addr);
            stats.endpoint_deletes += 1;
        }
        // 7. Allow entries removed.
        for key in removed(&desired.entries, &mirror.entries) {
            maps.delete_entry(key)?;
            mirror.entries.remove(&key);
            stats.entry_deletes += 1;
        }
        Ok(stats)
    }
}

/// The entries of `want` that `have` lacks or holds with another value.
fn changed<K: Ord + Copy, V: PartialEq + Copy>(
    want: &BTreeMap<K, V>,
    have: &BTreeMap<K, V>,
) -> Vec<(K, V)> {
    want.iter()
        .filter(|(k, v)| have.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect()
}

/// The keys of `have` that `want` lacks.
fn removed<K: Ord + Copy, V>(want: &BTreeMap<K, V>, have: &BTreeMap<K, V>) -> Vec<K> {
    have.keys()
        .filter(|k| !want.contains_key(k))
        .copied()
        .collect()
}
