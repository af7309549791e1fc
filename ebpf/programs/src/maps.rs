//! The service load-balancing maps, shared by the socket hooks and the
//! per-packet programs. Every map is pinned by name, so user space points
//! the loader at the node's bpffs directory and a restarted agent reuses
//! the maps (and the state in them) instead of starting empty. The sizes
//! here are defaults; user space sets the real ones at load time.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuHashMap},
};
use kestrel_ebpf_common::lb::{
    AffinityKey, AffinityValue, Backend, RevNat, ServiceKey, ServiceValue, SockRevKey,
    SockRevValue, sizes,
};

#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(sizes::SERVICES, 0);

#[map(name = "BACKENDS")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(sizes::BACKENDS, 0);

#[map(name = "REV_NAT")]
pub static REV_NAT: HashMap<u16, RevNat> = HashMap::pinned(sizes::REV_NAT, 0);

#[map(name = "SOCK_REV_NAT")]
pub static SOCK_REV_NAT: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::pinned(sizes::SOCK_REV_NAT, 0);

#[map(name = "AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(sizes::AFFINITY, 0);

#[map(name = "BACKEND_CONNS")]
pub static BACKEND_CONNS: PerCpuHashMap<u32, u64> = PerCpuHashMap::pinned(sizes::BACKENDS, 0);
