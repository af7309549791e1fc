//! Network policy's verdicts as user space reads them: the per-CPU
//! verdict counters, the flow event counters, and the flow event ring
//! buffer (one reader per node: the agent).

use std::path::Path;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use kestrel_ebpf_common::map_names;
use kestrel_ebpf_common::policy::{FlowEvent, PolicyVerdictKey, event_stat};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::pins::{map_err, open_pinned};
use crate::{Error, Result};

/// Verdicts counted since the maps were created, summed over CPUs, by
/// (policy, direction, verdict).
pub fn verdicts(pin_dir: &Path) -> Result<Vec<(PolicyVerdictKey, u64)>> {
    let name = map_names::POLICY_VERDICTS;
    let map: PerCpuHashMap<MapData, PolicyVerdictKey, u64> =
        PerCpuHashMap::try_from(open_pinned(pin_dir, name)?).map_err(map_err("typing", name))?;
    let mut out = Vec::new();
    for item in map.iter() {
        let (key, per_cpu) = item.map_err(map_err("reading", name))?;
        out.push((key, per_cpu.iter().copied().fold(0u64, u64::wrapping_add)));
    }
    out.sort_unstable_by_key(|(k, _)| *k);
    Ok(out)
}

/// What became of the flow events the kernel tried to send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Written to the ring buffer.
    pub sent: u64,
    /// Not written: over the rate limit.
    pub lost_rate: u64,
    /// Not written: the ring buffer was full (the reader fell behind).
    pub lost_full: u64,
}

/// The flow event counters, summed over CPUs.
pub fn event_stats(pin_dir: &Path) -> Result<EventStats> {
    let name = map_names::FLOW_EVENT_STATS;
    let array: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(open_pinned(pin_dir, name)?).map_err(map_err("typing", name))?;
    let get = |i: u32| -> Result<u64> {
        let per_cpu = array.get(&i, 0).map_err(map_err("reading", name))?;
        Ok(per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
    };
    Ok(EventStats {
        sent: get(event_stat::SENT)?,
        lost_rate: get(event_stat::LOST_RATE)?,
        lost_full: get(event_stat::LOST_FULL)?,
    })
}

/// The reading end of the flow event ring buffer.
pub struct FlowEvents {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl std::fmt::Debug for FlowEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowEvents").finish_non_exhaustive()
    }
}

impl FlowEvents {
    /// Opens the ring buffer pinned under `pin_dir`. Needs a Tokio runtime.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let name = map_names::FLOW_EVENTS;
        let ring: RingBuf<MapData> =
            RingBuf::try_from(open_pinned(pin_dir, name)?).map_err(map_err("typing", name))?;
        #[expect(unsafe_code, reason = "tokio's fd registration is an unsafe API")]
        // SAFETY: the ring buffer owns its fd and the AsyncFd owns the ring
        // buffer, so the fd stays open for as long as it is registered.
        let registered = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
        let ring = registered.map_err(|e| Error::Io {
            what: "registering the flow event ring buffer",
            source: e.into(),
        })?;
        Ok(Self { ring })
    }

    /// Waits for events and appends every one waiting to `out` (at least
    /// one). A record of the wrong size (never written by these programs)
    /// is skipped.
    pub async fn next_batch(&mut self, out: &mut Vec<FlowEvent>) -> Result<()> {
        loop {
            let mut guard = self.ring.readable_mut().await.map_err(|source| Error::Io {
                what: "waiting on the flow event ring buffer",
                source,
            })?;
            let ring = guard.get_inner_mut();
            let before = out.len();
            while let Some(item) = ring.next() {
                if let Some(e) = decode(&item) {
                    out.push(e);
                }
            }
            guard.clear_ready();
            if out.len() > before {
                return Ok(());
            }
        }
    }
}

/// A flow event from its ring buffer bytes.
pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() != std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: `FlowEvent` is `#[repr(C)]` plain integers (every bit pattern
    // valid) and the length was checked; the read is unaligned-safe.
    #[expect(unsafe_code, reason = "reading a plain struct from ring buffer bytes")]
    let e = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) };
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_checks_the_size() {
        let e = FlowEvent {
            time_ns: 5,
            saddr_be: 1,
            daddr_be: 2,
            sport_be: 3,
            dport_be: 4,
            proto: 6,
            direction: 1,
            verdict: 1,
            policy_id: 9,
            src_identity: 300,
            dst_identity: 301,
            ..FlowEvent::default()
        };
        let bytes: Vec<u8> = {
            let size = std::mem::size_of::<FlowEvent>();
            let p = std::ptr::from_ref(&e).cast::<u8>();
            // SAFETY: reading the bytes of a plain struct of `size` bytes.
            #[expect(unsafe_code, reason = "the test builds ring buffer bytes")]
            unsafe {
                std::slice::from_raw_parts(p, size).to_vec()
            }
        };
        assert_eq!(decode(&bytes), Some(e));
        assert_eq!(decode(&bytes[..39]), None);
        assert_eq!(decode(&[]), None);
    }
}
