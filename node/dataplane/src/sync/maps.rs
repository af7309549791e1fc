//! The narrow interface between the sync logic and the kernel's service
//! maps, and its aya implementation over the maps pinned in the node's
//! bpffs. Everything above this trait runs in unit tests against
//! [`FakeMaps`](super::fake::FakeMaps).

use std::collections::HashMap as StdHashMap;
use std::path::Path;

use std::os::fd::AsFd as _;

use aya::maps::{HashMap, IterableMap, MapData, MapError, PerCpuHashMap};
use aya::sys::SyscallError;
use kestrel_ebpf_common::lb::{Backend, RevNat, ServiceKey, ServiceValue};
use kestrel_ebpf_common::map_names;

use crate::pins::{map_err, open_pinned};
use crate::sys;
use crate::{Error, Result};

/// Reads and writes of the service load-balancing maps. Writes come in
/// batches, applied in order: a batch that fails says how many of its
/// entries were applied ([`Stopped`]), so the caller's picture of the maps
/// stays exact. Writes overwrite; deleting a missing key is not an error
/// (the sync is level-based and retries after failures, so it may delete
/// twice).
pub trait LbMaps {
    /// Every entry of SERVICES.
    fn dump_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>>;
    /// Every entry of BACKENDS.
    fn dump_backends(&self) -> Result<Vec<(u32, Backend)>>;
    /// Every entry of REV_NAT.
    fn dump_rev_nat(&self) -> Result<Vec<(u16, RevNat)>>;
    /// New connections per backend id, summed over CPUs (BACKEND_CONNS).
    fn dump_backend_conns(&self) -> Result<StdHashMap<u32, u64>>;
    /// Writes SERVICES entries.
    fn put_services(&mut self, keys: &[ServiceKey], values: &[ServiceValue]) -> Batch;
    /// Deletes SERVICES entries.
    fn delete_services(&mut self, keys: &[ServiceKey]) -> Batch;
    /// Writes BACKENDS entries.
    fn put_backends(&mut self, ids: &[u32], backends: &[Backend]) -> Batch;
    /// Deletes BACKENDS entries.
    fn delete_backends(&mut self, ids: &[u32]) -> Batch;
    /// Writes REV_NAT entries.
    fn put_rev_nats(&mut self, ids: &[u16], rev_nats: &[RevNat]) -> Batch;
    /// Deletes REV_NAT entries.
    fn delete_rev_nats(&mut self, ids: &[u16]) -> Batch;
    /// Forgets the connection counters of backend ids being released, so
    /// that each id's next owner starts from zero.
    fn clear_backend_conns(&mut self, ids: &[u32]) -> Batch;
}

/// A batch of writes that stopped part-way.
#[derive(Debug)]
pub struct Stopped {
    /// How many entries, from the first, were applied.
    pub done: usize,
    /// Why the next one was not.
    pub error: Box<Error>,
}

/// The outcome of a batch of writes.
pub type Batch = std::result::Result<(), Stopped>;

/// The service maps pinned in a node's bpffs directory, opened by path.
/// Opening needs no loaded object: the agent, and `kestrel bpf services`
/// while the agent runs, each open their own handles to the same maps.
pub struct PinnedMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    rev_nat: HashMap<MapData, u16, RevNat>,
    backend_conns: PerCpuHashMap<MapData, u32, u64>,
}

impl std::fmt::Debug for PinnedMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // aya's per-CPU map has no Debug; the handles say nothing useful anyway.
        f.debug_struct("PinnedMaps").finish_non_exhaustive()
    }
}

impl PinnedMaps {
    /// Opens SERVICES, BACKENDS, REV_NAT and BACKEND_CONNS under `pin_dir`;
    /// [`Error::NotPinned`] if a map is missing there (the object was never
    /// loaded with this pin directory).
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            services: HashMap::try_from(open_pinned(pin_dir, map_names::SERVICES)?)
                .map_err(map_err("typing", map_names::SERVICES))?,
            backends: HashMap::try_from(open_pinned(pin_dir, map_names::BACKENDS)?)
                .map_err(map_err("typing", map_names::BACKENDS))?,
            rev_nat: HashMap::try_from(open_pinned(pin_dir, map_names::REV_NAT)?)
                .map_err(map_err("typing", map_names::REV_NAT))?,
            backend_conns: PerCpuHashMap::try_from(open_pinned(pin_dir, map_names::BACKEND_CONNS)?)
                .map_err(map_err("typing", map_names::BACKEND_CONNS))?,
        })
    }
}

/// One batched write into `map`, whose key and value types are `K` and
/// `V` (aya checked their sizes when it typed the map).
fn put<K: aya::Pod, V: aya::Pod>(
    map: &impl IterableMap<K, V>,
    keys: &[K],
    values: &[V],
    name: &'static str,
) -> Batch {
    sys::map_update_batch(map.map().fd().as_fd(), keys, values)
        .map_err(|s| stopped("writing", name, "bpf_map_update_batch", s))
}

/// One batched delete from `map`; keys already gone are skipped.
fn delete<K: aya::Pod, V>(map: &impl IterableMap<K, V>, keys: &[K], name: &'static str) -> Batch {
    sys::map_delete_batch(map.map().fd().as_fd(), keys)
        .map_err(|s| stopped("deleting from", name, "bpf_map_delete_batch", s))
}

fn stopped(
    what: &'static str,
    name: &'static str,
    call: &'static str,
    s: sys::BatchStopped,
) -> Stopped {
    Stopped {
        done: s.done,
        error: Box::new(syscall_err(what, name, call, s.error)),
    }
}

/// A failed raw bpf(2) call on a map, as aya's own calls report one.
fn syscall_err(
    what: &'static str,
    name: &'static str,
    call: &'static str,
    io_error: std::io::Error,
) -> Error {
    map_err(what, name)(MapError::SyscallError(SyscallError { call, io_error }))
}

/// Every entry of `map`, read in batches of thousands.
fn dump<K: aya::Pod + Ord, V: aya::Pod>(
    map: &impl IterableMap<K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>> {
    let entries = sys::map_lookup_batch(map.map().fd().as_fd())
        .map_err(|e| syscall_err("reading", name, "bpf_map_lookup_batch", e))?;
    // In key order, as the callers (and the CLI view) read them.
    let out: std::collections::BTreeMap<K, V> = entries.into_iter().collect();
    Ok(out.into_iter().collect())
}

impl LbMaps for PinnedMaps {
    fn dump_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        dump(&self.services, map_names::SERVICES)
    }

    fn dump_backends(&self) -> Result<Vec<(u32, Backend)>> {
        dump(&self.backends, map_names::BACKENDS)
    }

    fn dump_rev_nat(&self) -> Result<Vec<(u16, RevNat)>> {
        dump(&self.rev_nat, map_names::REV_NAT)
    }

    fn dump_backend_conns(&self) -> Result<StdHashMap<u32, u64>> {
        let mut out = StdHashMap::new();
        for item in self.backend_conns.iter() {
            let (id, per_cpu) = item.map_err(map_err("reading", map_names::BACKEND_CONNS))?;
            out.insert(id, per_cpu.iter().copied().fold(0u64, u64::wrapping_add));
        }
        Ok(out)
    }

    fn put_services(&mut self, keys: &[ServiceKey], values: &[ServiceValue]) -> Batch {
        put(&self.services, keys, values, map_names::SERVICES)
    }

    fn delete_services(&mut self, keys: &[ServiceKey]) -> Batch {
        delete(&self.services, keys, map_names::SERVICES)
    }

    fn put_backends(&mut self, ids: &[u32], backends: &[Backend]) -> Batch {
        put(&self.backends, ids, backends, map_names::BACKENDS)
    }

    fn delete_backends(&mut self, ids: &[u32]) -> Batch {
        delete(&self.backends, ids, map_names::BACKENDS)
    }

    fn put_rev_nats(&mut self, ids: &[u16], rev_nats: &[RevNat]) -> Batch {
        put(&self.rev_nat, ids, rev_nats, map_names::REV_NAT)
    }

    fn delete_rev_nats(&mut self, ids: &[u16]) -> Batch {
        delete(&self.rev_nat, ids, map_names::REV_NAT)
    }

    fn clear_backend_conns(&mut self, ids: &[u32]) -> Batch {
        delete(&self.backend_conns, ids, map_names::BACKEND_CONNS)
    }
}
