//! The narrow interface between the sync logic and the kernel's service
//! maps, and its aya implementation over the maps pinned in the node's
//! bpffs. Everything above this trait runs in unit tests against
//! [`FakeMaps`](super::fake::FakeMaps).

use std::collections::HashMap as StdHashMap;
use std::path::Path;

use aya::maps::{HashMap, MapData, MapError, PerCpuHashMap};
use kestrel_ebpf_common::lb::{Backend, RevNat, ServiceKey, ServiceValue};
use kestrel_ebpf_common::map_names;

use crate::pins::{map_err, open_pinned};
use crate::{Error, Result};

/// Reads and writes of the service load-balancing maps. Writes overwrite;
/// deleting a missing key is not an error (the sync is level-based and
/// retries after failures, so it may delete twice).
pub trait LbMaps {
    /// Every entry of SERVICES.
    fn dump_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>>;
    /// Every entry of BACKENDS.
    fn dump_backends(&self) -> Result<Vec<(u32, Backend)>>;
    /// Every entry of REV_NAT.
    fn dump_rev_nat(&self) -> Result<Vec<(u16, RevNat)>>;
    /// New connections per backend id, summed over CPUs (BACKEND_CONNS).
    fn dump_backend_conns(&self) -> Result<StdHashMap<u32, u64>>;
    /// Writes a SERVICES entry.
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()>;
    /// Deletes a SERVICES entry.
    fn delete_service(&mut self, key: ServiceKey) -> Result<()>;
    /// Writes a BACKENDS entry.
    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<()>;
    /// Deletes a BACKENDS entry.
    fn delete_backend(&mut self, id: u32) -> Result<()>;
    /// Writes a REV_NAT entry.
    fn put_rev_nat(&mut self, id: u16, rev_nat: RevNat) -> Result<()>;
    /// Deletes a REV_NAT entry.
    fn delete_rev_nat(&mut self, id: u16) -> Result<()>;
    /// Forgets the connection counters of a backend id being released, so
    /// that the id's next owner starts from zero.
    fn clear_backend_conns(&mut self, id: u32) -> Result<()>;
}

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

/// Deleting a key that is not there is fine: see [`LbMaps`].
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc_enoent()) => {
            Ok(())
        }
        other => other,
    }
}

/// ENOENT, without a libc dependency for one constant (it is 2 on every
/// Linux architecture).
const fn libc_enoent() -> i32 {
    2
}

fn dump<K: Copy + Ord, V, E>(
    iter: impl Iterator<Item = Result<(K, V), E>>,
    err: impl Fn(E) -> Error,
) -> Result<Vec<(K, V)>> {
    // A hash map iterated while the kernel changes it may yield a key twice
    // (the walk restarts when its cursor key disappears): keep the last.
    let mut out = std::collections::BTreeMap::new();
    for item in iter {
        let (k, v) = item.map_err(&err)?;
        out.insert(k, v);
    }
    Ok(out.into_iter().collect())
}

impl LbMaps for PinnedMaps {
    fn dump_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        dump(
            self.services.iter(),
            map_err("reading", map_names::SERVICES),
        )
    }

    fn dump_backends(&self) -> Result<Vec<(u32, Backend)>> {
        dump(
            self.backends.iter(),
            map_err("reading", map_names::BACKENDS),
        )
    }

    fn dump_rev_nat(&self) -> Result<Vec<(u16, RevNat)>> {
        dump(self.rev_nat.iter(), map_err("reading", map_names::REV_NAT))
    }

    fn dump_backend_conns(&self) -> Result<StdHashMap<u32, u64>> {
        let mut out = StdHashMap::new();
        for item in self.backend_conns.iter() {
            let (id, per_cpu) = item.map_err(map_err("reading", map_names::BACKEND_CONNS))?;
            out.insert(id, per_cpu.iter().copied().fold(0u64, u64::wrapping_add));
        }
        Ok(out)
    }

    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(map_err("writing", map_names::SERVICES))
    }

    fn delete_service(&mut self, key: ServiceKey) -> Result<()> {
        ignore_missing(self.services.remove(&key))
            .map_err(map_err("deleting from", map_names::SERVICES))
    }

    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        self.backends
            .insert(id, backend, 0)
            .map_err(map_err("writing", map_names::BACKENDS))
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.backends.remove(&id))
            .map_err(map_err("deleting from", map_names::BACKENDS))
    }

    fn put_rev_nat(&mut self, id: u16, rev_nat: RevNat) -> Result<()> {
        self.rev_nat
            .insert(id, rev_nat, 0)
            .map_err(map_err("writing", map_names::REV_NAT))
    }

    fn delete_rev_nat(&mut self, id: u16) -> Result<()> {
        ignore_missing(self.rev_nat.remove(&id))
            .map_err(map_err("deleting from", map_names::REV_NAT))
    }

    fn clear_backend_conns(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.backend_conns.remove(&id))
            .map_err(map_err("deleting from", map_names::BACKEND_CONNS))
    }
}
