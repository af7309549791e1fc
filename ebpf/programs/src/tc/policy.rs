//! Network policy on a new flow: the verdict of the source pod's egress
//! and of the destination pod's ingress (for the pods of this node), from
//! the peers' identities and the allow trie. Each direction costs at most
//! one ipcache lookup and two trie lookups, whatever the number of
//! policies; established flows never come here (conntrack answers first).
//!
//! Every verdict is counted by (policy, direction, verdict); the ones a
//! policy decided are also sent to user space as flow events, at a rate
//! each CPU's token bucket bounds, and what is not sent is counted.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::lpm_trie::Key};
use kestrel_ebpf_common::policy::{
    FlowEvent, NO_POLICY, PolicyEndpoint, PolicyKey, PolicyVerdictKey, direction, event_stat,
    identity, prefix, verdict,
};

use super::{
    pkt::Packet,
    policy_maps::{
        FLOW_EVENT_BUCKET, FLOW_EVENT_STATS, FLOW_EVENTS, IPCACHE, POLICY, POLICY_ENDPOINTS,
        POLICY_VERDICTS,
    },
};

/// What policy says of a new flow.
pub struct Decision {
    /// Both ends' policies let it through.
    pub allowed: bool,
    /// A pod of this node is an end: record the flow in conntrack, so
    /// its later packets and replies pass without another verdict, and a
    /// policy added later does not cut it.
    pub track: bool,
}

/// The policy state of a local pod; identity 0 (never a pod's) when the
/// address is not one. A plain value rather than an `Option`: the
/// verifier rejects the copy of an undefined `Option` payload that LLVM
/// emits for the `None` arm.
#[inline(always)]
fn endpoint(addr_be: u32) -> PolicyEndpoint {
    match POLICY_ENDPOINTS.get_ptr(addr_be) {
        // SAFETY: from a successful lookup; plain integers.
        Some(ep) => unsafe { *ep },
        None => PolicyEndpoint::default(),
    }
}

/// The identity of an address that is not a pod of this node.
#[inline(always)]
fn identity_of(addr_be: u32) -> u32 {
    match IPCACHE.get(Key::new(32, addr_be)) {
        Some(e) => e.identity,
        None => identity::WORLD,
    }
}

/// The policy allowing (`endpoint`, `peer`, `dir`) on the packet's
/// protocol and port, or [`NO_POLICY`].
#[inline(always)]
fn allowed_by(endpoint_be: u32, peer: u32, dir: u8, p: &Packet) -> u32 {
    let exact = Key::new(
        prefix::FULL,
        PolicyKey::lookup(endpoint_be, peer, dir, p.proto, p.dport_be),
    );
    if let Some(e) = POLICY.get(exact) {
        return e.policy_id;
    }
    let any = Key::new(
        prefix::FULL,
        PolicyKey::lookup(endpoint_be, identity::ANY, dir, p.proto, p.dport_be),
    );
    match POLICY.get(any) {
        Some(e) => e.policy_id,
        None => NO_POLICY,
    }
}

/// The verdict for local pod `ep` (at `addr_be`) in `dir` against `peer`,
/// with the policy that decided.
#[inline(always)]
fn verdict_for(ep: &PolicyEndpoint, addr_be: u32, peer: u32, dir: u8, p: &Packet) -> (u8, u32) {
    if !ep.isolated(dir) {
        return (verdict::OPEN, NO_POLICY);
    }
    if dir == direction::INGRESS && peer == identity::HOST {
        return (verdict::HOST, NO_POLICY);
    }
    let policy = allowed_by(addr_be, peer, dir, p);
    if policy != NO_POLICY {
        (verdict::ALLOWED, policy)
    } else {
        (verdict::DENIED, ep.isolating_policy(dir))
    }
}

/// Decides a new flow, counting and reporting each verdict.
#[inline(always)]
pub fn check(p: &Packet, now: u64) -> Decision {
    let src = endpoint(p.saddr_be);
    let dst = endpoint(p.daddr_be);
    if src.identity == 0 && dst.identity == 0 {
        return Decision {
            allowed: true,
            track: false,
        };
    }
    let src_id = if src.identity != 0 {
        src.identity
    } else {
        identity_of(p.saddr_be)
    };
    let dst_id = if dst.identity != 0 {
        dst.identity
    } else {
        identity_of(p.daddr_be)
    };
    let mut allowed = true;
    if src.identity != 0 {
        let (v, policy) = verdict_for(&src, p.saddr_be, dst_id, direction::EGRESS, p);
        record(p, direction::EGRESS, v, policy, src_id, dst_id, now);
        allowed = v != verdict::DENIED;
    }
    if allowed && dst.identity != 0 {
        let (v, policy) = verdict_for(&dst, p.daddr_be, src_id, direction::INGRESS, p);
        record(p, direction::INGRESS, v, policy, src_id, dst_id, now);
        allowed = v != verdict::DENIED;
    }
    Decision {
        allowed,
        track: true,
    }
}

/// Adds one to a per-CPU counter.
#[inline(always)]
fn bump_stat(index: u32) {
    if let Some(n) = FLOW_EVENT_STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *n += 1 };
    }
}

/// Counts a verdict and, unless the pod was open, reports it.
#[inline(always)]
fn record(p: &Packet, dir: u8, v: u8, policy: u32, src_id: u32, dst_id: u32, now: u64) {
    let key = PolicyVerdictKey {
        policy_id: policy,
        direction: dir,
        verdict: v,
        _pad: [0; 2],
    };
    match POLICY_VERDICTS.get_ptr_mut(key) {
        // SAFETY: this CPU's copy of the value.
        Some(n) => unsafe { *n += 1 },
        None => {
            // A racing first insert on this CPU cannot happen (programs
            // do not preempt each other per CPU); a full map loses the
            // count, which the map size makes unlikely.
            let _ = POLICY_VERDICTS.insert(key, 1u64, u64::from(BPF_NOEXIST));
        }
    }
    if v == verdict::OPEN {
        return;
    }
    let Some(bucket) = FLOW_EVENT_BUCKET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's bucket; nothing else runs on this CPU meanwhile.
    if !unsafe { (*bucket).take(now) } {
        bump_stat(event_stat::LOST_RATE);
        return;
    }
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        bump_stat(event_stat::LOST_FULL);
        return;
    };
    entry.write(FlowEvent {
        time_ns: now,
        saddr_be: p.saddr_be,
        daddr_be: p.daddr_be,
        sport_be: p.sport_be,
        dport_be: p.dport_be,
        proto: p.proto,
        direction: dir,
        verdict: v,
        _pad: 0,
        policy_id: policy,
        src_identity: src_id,
        dst_identity: dst_id,
        _pad2: 0,
    });
    entry.submit(0);
    bump_stat(event_stat::SENT);
}
