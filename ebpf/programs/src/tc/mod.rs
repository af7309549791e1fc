//! The per-packet programs: `tc_from_pod` on the ingress of every pod's
//! host-side veth (what pods send) and `tc_from_uplink` on the ingress of
//! the node's uplink. Together they do service NAT for what the socket
//! hooks did not translate, NodePort and external IPs, conntrack with
//! reverse NAT, SNAT and masquerade to the node's address, and pod routing
//! (`bpf_redirect_peer` on the node, FIB and `bpf_redirect_neigh` across
//! the fabric).
//!
//! `tc_to_pod` on the egress of every pod's host-side veth applies
//! network policy to what the kernel's stack delivers to a pod (the
//! redirects above skip that hook, so they apply policy themselves).
//!
//! Per packet: the node configuration, one conntrack lookup, and for a
//! new flow a constant number of service, backend, endpoint and policy
//! lookups.

mod ct;
mod from_pod;
mod from_uplink;
mod fwd;
mod lb;
pub mod maps;
mod pkt;
mod policy;
pub mod policy_maps;
mod reject;
mod to_pod;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use kestrel_ebpf_common::{
    ct::{CtEntry, CtKey, ct_flags},
    drop::DropReason,
    lb::svc_flags,
    route::NodeConfig,
};

use self::{maps::DROPS, pkt::Packet};

/// Leave the packet to the kernel's stack.
const PASS: i32 = TC_ACT_OK;
const NS_PER_S: u64 = 1_000_000_000;

/// Counts a drop (or an in-place answer) under `reason`.
#[inline(always)]
fn count_drop(reason: DropReason) {
    if let Some(n) = DROPS.get_ptr_mut(reason.0) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *n += 1 };
    }
}

/// Drops the packet, counting why.
#[inline(always)]
fn drop_for(reason: DropReason) -> i32 {
    count_drop(reason);
    TC_ACT_SHOT
}

/// The node configuration, once user space has written it.
#[inline(always)]
fn config() -> Option<NodeConfig> {
    let c = maps::NODE_CONFIG.get(0)?;
    if c.is_set() { Some(*c) } else { None }
}

/// Applies a conntrack entry's rewrite and routes the result. Once the
/// packet has been changed, a failure drops it rather than let a half
/// translated packet through.
#[inline(always)]
fn translated(ctx: &TcContext, p: &Packet, e: &CtEntry) -> Result<i32, i64> {
    let Ok(out) = ct::apply(ctx, p, e) else {
        return Ok(drop_for(DropReason::REWRITE));
    };
    Ok(fwd::route(ctx, &out, true).unwrap_or_else(|_| drop_for(DropReason::REWRITE)))
}

/// Network policy for a new flow that is not a service's: drops it when
/// denied, and records it in conntrack when a pod of this node is an end.
#[inline(always)]
fn admit(key: &CtKey, p: &Packet, now: u64) -> Result<(), DropReason> {
    let d = policy::check(p, now);
    if !d.allowed {
        return Err(DropReason::POLICY_DENIED);
    }
    if d.track {
        let mut e = ct::fresh(p, now, 0);
        ct::create(key, &mut e, false)?;
    }
    Ok(())
}

/// A new flow to a service frontend: refuse it when no backend is ready,
/// else choose a backend, apply network policy to the translated flow (as
/// upstream requires, policy sees the backend), record the flow and
/// translate the packet. Flows
/// from the uplink to a backend on another node are also SNATed to the
/// node's address, so that replies come back through this node, unless
/// the service keeps the client's address (`externalTrafficPolicy: Local`).
#[inline(always)]
fn service_flow(
    ctx: &TcContext,
    p: &Packet,
    key: &CtKey,
    fe: &lb::Frontend,
    cfg: &NodeConfig,
    now: u64,
    from_uplink: bool,
) -> Result<i32, i64> {
    if fe.master.count == 0 {
        return Ok(match reject::answer(ctx, p, fwd::ifindex(ctx)) {
            Ok(Some(verdict)) => {
                count_drop(DropReason::NO_BACKEND);
                verdict
            }
            Ok(None) | Err(_) => drop_for(DropReason::NO_BACKEND_UNANSWERED),
        });
    }
    let (id, backend) = match lb::select(fe, p.saddr_be, (now / NS_PER_S) as u32) {
        Ok(chosen) => chosen,
        Err(reason) => return Ok(drop_for(reason)),
    };
    let mut translated_flow = *p;
    translated_flow.daddr_be = backend.addr_be;
    translated_flow.dport_be = backend.port_be;
    if !policy::check(&translated_flow, now).allowed {
        return Ok(drop_for(DropReason::POLICY_DENIED));
    }
    let local = fwd::local_endpoint(backend.addr_be).is_some();
    let snat = from_uplink && !local && fe.master.flags & svc_flags::EXT_LOCAL == 0;
    let mut flags = ct_flags::DNAT;
    if from_uplink {
        flags |= ct_flags::FROM_UPLINK;
    }
    if local {
        flags |= ct_flags::LOCAL_BACKEND;
    }
    if snat {
        flags |= ct_flags::SNAT;
    }
    let mut e = ct::fresh(p, now, flags);
    e.nat_daddr_be = backend.addr_be;
    e.nat_dport_be = backend.port_be;
    e.backend_id = id;
    e.rev_nat_id = fe.master.rev_nat_id;
    if snat {
        e.nat_saddr_be = cfg.node_ip_be;
    }
    if let Err(reason) = ct::create(key, &mut e, snat) {
        return Ok(drop_for(reason));
    }
    debug!(
        ctx,
        "tc: new flow {:i}:{} -> {:i}:{} to backend {}",
        u32::from_be(p.saddr_be),
        u16::from_be(p.sport_be),
        u32::from_be(p.daddr_be),
        u16::from_be(p.dport_be),
        id
    );
    translated(ctx, p, &e)
}
