//! Conntrack in the kernel: find a packet's entry, refresh it, create the
//! two entries of a new flow (choosing a SNAT port when asked), and apply
//! an entry's rewrite to the packet.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use kestrel_ebpf_common::{
    ct::{
        CtEntry, CtKey, SNAT_ATTEMPTS, ct_flags, expired, paired_key, reply_for, snat_port,
        tcp_seen, tcp_seen_bits,
    },
    drop::DropReason,
    hdr::is_tcp_open,
    packet::IPPROTO_TCP,
};

use super::{
    maps::CONNTRACK,
    pkt::{self, Packet},
};
use crate::maps::BACKENDS;

/// The current time for conntrack and affinity.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}

/// A random number for backend and port choice.
#[inline(always)]
pub fn random() -> u32 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_get_prandom_u32() }
}

/// The packet's conntrack key.
#[inline(always)]
pub fn key_of(p: &Packet) -> CtKey {
    CtKey::new(p.saddr_be, p.daddr_be, p.sport_be, p.dport_be, p.proto)
}

/// The packet's live entry: refreshed, with FIN/RST passed on to the
/// other direction's entry. `None` when there is no entry, or when the
/// packet must start a new flow instead: a SYN on a closed or expired
/// flow (the client reused its port), or a service flow whose backend is
/// gone from the backends map.
#[inline(always)]
pub fn lookup(key: &CtKey, p: &Packet, now: u64) -> Option<CtEntry> {
    let ptr = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: the pointer comes from a successful lookup and the value is
    // plain integers; a concurrent writer can at worst make this copy a
    // mix of two valid entries, which the checks below tolerate.
    let entry = unsafe { *ptr };
    if !entry.is_reply() {
        let reopened = p.proto == IPPROTO_TCP
            && is_tcp_open(p.tcp_flags)
            && (entry.closing() || expired(p.proto, &entry, now));
        let backend_gone =
            entry.flags & ct_flags::DNAT != 0 && BACKENDS.get_ptr(entry.backend_id).is_none();
        if reopened || backend_gone {
            return None;
        }
    }
    let seen = if p.proto == IPPROTO_TCP {
        tcp_seen_bits(p.tcp_flags)
    } else {
        0
    };
    // SAFETY: as above; these stores race only with other refreshes of
    // the same entry, and any of their values is acceptable.
    unsafe {
        (*ptr).last_seen_ns = now;
        (*ptr).packets = entry.packets.wrapping_add(1);
        if entry.tcp_seen | seen != entry.tcp_seen {
            (*ptr).tcp_seen = entry.tcp_seen | seen;
        }
    }
    let closing = seen & tcp_seen::CLOSING;
    if closing & !entry.tcp_seen != 0 {
        // Both directions' entries close together, so a flow ended by one
        // side expires on the short closing lifetime as a whole.
        let other = paired_key(key, &entry);
        if let Some(o) = CONNTRACK.get_ptr_mut(other) {
            // SAFETY: from a successful lookup; a racing refresh is harmless.
            unsafe { (*o).tcp_seen |= closing };
        }
    }
    Some(entry)
}

/// Records a new flow: `original` for `key`, and its reply entry. With
/// `snat`, `original.nat_saddr_be` is already set and the source port is
/// chosen here: the flow's own if no other flow holds the reply tuple,
/// else one of a few random ones.
#[inline(always)]
pub fn create(key: &CtKey, original: &mut CtEntry, snat: bool) -> Result<(), DropReason> {
    if snat {
        let sport = u16::from_be(key.sport_be);
        let r = random();
        let mut attempt = 0;
        while attempt < SNAT_ATTEMPTS {
            original.nat_sport_be = snat_port(sport, attempt, r).to_be();
            let (reply_key, reply) = reply_for(key, original);
            if CONNTRACK
                .insert(reply_key, reply, u64::from(BPF_NOEXIST))
                .is_ok()
            {
                return CONNTRACK
                    .insert(key, original, u64::from(BPF_ANY))
                    .map_err(|_| DropReason::CT_WRITE);
            }
            attempt += 1;
        }
        return Err(DropReason::SNAT_PORTS_EXHAUSTED);
    }
    let (reply_key, reply) = reply_for(key, original);
    CONNTRACK
        .insert(reply_key, reply, u64::from(BPF_ANY))
        .map_err(|_| DropReason::CT_WRITE)?;
    CONNTRACK
        .insert(key, original, u64::from(BPF_ANY))
        .map_err(|_| DropReason::CT_WRITE)
}

/// Applies `entry`'s rewrite to the packet and returns the packet as it
/// now is.
#[inline(always)]
pub fn apply(ctx: &TcContext, p: &Packet, entry: &CtEntry) -> Result<Packet, i64> {
    let mut out = *p;
    if entry.nat_saddr_be != 0 {
        pkt::set_addr(ctx, p.proto, true, p.saddr_be, entry.nat_saddr_be)?;
        out.saddr_be = entry.nat_saddr_be;
    }
    if entry.nat_daddr_be != 0 {
        pkt::set_addr(ctx, p.proto, false, p.daddr_be, entry.nat_daddr_be)?;
        out.daddr_be = entry.nat_daddr_be;
    }
    if entry.nat_sport_be != 0 {
        pkt::set_port(ctx, p.proto, true, p.sport_be, entry.nat_sport_be)?;
        out.sport_be = entry.nat_sport_be;
    }
    if entry.nat_dport_be != 0 {
        pkt::set_port(ctx, p.proto, false, p.dport_be, entry.nat_dport_be)?;
        out.dport_be = entry.nat_dport_be;
    }
    Ok(out)
}

/// A fresh original entry for packet `p` at `now`.
#[inline(always)]
pub fn fresh(p: &Packet, now: u64, flags: u8) -> CtEntry {
    CtEntry {
        last_seen_ns: now,
        flags,
        tcp_seen: if p.proto == IPPROTO_TCP {
            tcp_seen_bits(p.tcp_flags)
        } else {
            0
        },
        packets: 1,
        ..CtEntry::default()
    }
}
