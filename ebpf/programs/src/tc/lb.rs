//! Service lookup and backend choice for packets: the master entry, one
//! slot, one backend (three lookups), plus ClientIP affinity and the
//! per-backend new-connection counter.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use kestrel_ebpf_common::{
    drop::DropReason,
    lb::{
        AffinityKey, AffinityValue, Backend, ServiceKey, ServiceValue, affinity_kind,
        backend_flags, pick_slot, scope, svc_flags,
    },
};

use super::ct::random;
use crate::maps::{AFFINITY, BACKEND_CONNS, BACKENDS, SERVICES};

/// A service frontend: the key its slots share and its master entry.
#[derive(Clone, Copy)]
pub struct Frontend {
    pub key: ServiceKey,
    pub master: ServiceValue,
}

/// The frontend (`addr_be`, `port_be`, `proto`) in `scope`, if any.
#[inline(always)]
pub fn frontend(addr_be: u32, port_be: u16, proto: u8, scope: u8) -> Option<Frontend> {
    let key = ServiceKey {
        addr_be,
        port_be,
        proto,
        scope,
        slot: 0,
        _pad: [0; 2],
    };
    let master = SERVICES.get_ptr(key)?;
    // SAFETY: from a successful lookup; plain integers.
    let master = unsafe { *master };
    Some(Frontend { key, master })
}

/// The frontend (`addr_be`, `port_be`, `proto`) as traffic from outside the
/// node sees it: its EXTERNAL scope, or its INTERNAL one where user space
/// wrote no EXTERNAL scope because the two would hold the same backends.
#[inline(always)]
pub fn external_frontend(addr_be: u32, port_be: u16, proto: u8) -> Option<Frontend> {
    frontend(addr_be, port_be, proto, scope::EXTERNAL)
        .or_else(|| frontend(addr_be, port_be, proto, scope::INTERNAL))
}

/// A backend may take new connections unless it is terminating.
#[inline(always)]
fn usable(b: &Backend) -> bool {
    b.flags & backend_flags::TERMINATING == 0
}

/// Chooses the backend for a new flow from `client_be` (the ClientIP
/// affinity key). `fe.master.count` must be non-zero.
#[inline(always)]
pub fn select(fe: &Frontend, client_be: u32, now_s: u32) -> Result<(u32, Backend), DropReason> {
    let affinity = fe.master.flags & svc_flags::AFFINITY != 0;
    let akey = AffinityKey {
        client: u64::from(client_be),
        rev_nat_id: fe.master.rev_nat_id,
        kind: affinity_kind::CLIENT_IP,
        _pad: [0; 5],
    };
    if affinity && let Some(a) = AFFINITY.get_ptr_mut(akey) {
        // SAFETY: from a successful lookup; plain integers.
        let last = unsafe { *a };
        if now_s.wrapping_sub(last.last_used_s) <= fe.master.affinity_timeout_s
            && let Some(b) = BACKENDS.get_ptr(last.backend_id)
        {
            // SAFETY: from a successful lookup; plain integers.
            let b = unsafe { *b };
            if usable(&b) {
                // SAFETY: from a successful lookup; racing writers store
                // equally valid timestamps.
                unsafe { (*a).last_used_s = now_s };
                count(last.backend_id);
                return Ok((last.backend_id, b));
            }
        }
    }
    let mut slot_key = fe.key;
    slot_key.slot = pick_slot(random(), fe.master.count);
    let slot = SERVICES
        .get_ptr(slot_key)
        .ok_or(DropReason::BACKEND_UNKNOWN)?;
    // SAFETY: from a successful lookup; plain integers.
    let id = unsafe { (*slot).backend_id };
    let b = BACKENDS.get_ptr(id).ok_or(DropReason::BACKEND_UNKNOWN)?;
    // SAFETY: from a successful lookup; plain integers.
    let b = unsafe { *b };
    if affinity {
        let v = AffinityValue {
            backend_id: id,
            last_used_s: now_s,
        };
        // Affinity is best effort: a full map only costs stickiness.
        let _ = AFFINITY.insert(akey, v, u64::from(BPF_ANY));
    }
    count(id);
    Ok((id, b))
}

/// Counts a new connection to backend `id` on this CPU.
#[inline(always)]
fn count(id: u32) {
    match BACKEND_CONNS.get_ptr_mut(id) {
        // SAFETY: a per-CPU value, written only by this CPU.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = BACKEND_CONNS.insert(id, 1u64, u64::from(BPF_NOEXIST));
        }
    }
}
