//! Network policy's maps: the ipcache (address → identity), the local
//! pods' isolation, the allow entries, the verdict counters and the flow
//! event ring buffer with its rate limiter. Pinned by name like the rest,
//! so a restarted agent adopts them and enforcement never lapses.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, RingBuf},
};
use kestrel_ebpf_common::policy::{
    EventBucket, IpcacheEntry, PolicyEndpoint, PolicyEntry, PolicyKey, PolicyVerdictKey,
    event_stat, sizes,
};

#[map(name = "IPCACHE")]
pub static IPCACHE: LpmTrie<u32, IpcacheEntry> = LpmTrie::pinned(sizes::IPCACHE, 0);

#[map(name = "POLICY_ENDPOINTS")]
pub static POLICY_ENDPOINTS: HashMap<u32, PolicyEndpoint> =
    HashMap::pinned(sizes::POLICY_ENDPOINTS, 0);

#[map(name = "POLICY")]
pub static POLICY: LpmTrie<PolicyKey, PolicyEntry> = LpmTrie::pinned(sizes::POLICY, 0);

#[map(name = "POLICY_VERDICTS")]
pub static POLICY_VERDICTS: PerCpuHashMap<PolicyVerdictKey, u64> =
    PerCpuHashMap::pinned(sizes::POLICY_VERDICTS, 0);

#[map(name = "FLOW_EVENTS")]
pub static FLOW_EVENTS: RingBuf = RingBuf::pinned(sizes::FLOW_EVENTS_BYTES, 0);

#[map(name = "FLOW_EVENT_STATS")]
pub static FLOW_EVENT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(event_stat::COUNT, 0);

#[map(name = "FLOW_EVENT_BUCKET")]
pub static FLOW_EVENT_BUCKET: PerCpuArray<EventBucket> = PerCpuArray::pinned(1, 0);
