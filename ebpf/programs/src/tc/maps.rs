//! The per-packet programs' own maps: conntrack, the node's pods, the node
//! configuration and the drop counters. All pinned by name, like the
//! service maps, so a restarted agent adopts live flows and counters.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use kestrel_ebpf_common::{
    ct::{CtEntry, CtKey},
    drop::DropReason,
    lb::sizes,
    route::{self, LocalEndpoint, NodeConfig},
};

#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(sizes::CONNTRACK, 0);

#[map(name = "ENDPOINTS")]
pub static ENDPOINTS: HashMap<u32, LocalEndpoint> = HashMap::pinned(route::sizes::ENDPOINTS, 0);

#[map(name = "NODE_CONFIG")]
pub static NODE_CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

#[map(name = "DROPS")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DropReason::COUNT, 0);
