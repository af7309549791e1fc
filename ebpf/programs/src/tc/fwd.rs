//! Forwarding: a pod on this node is reached with `bpf_redirect_peer`
//! straight into its namespace; anything else the kernel's FIB can route
//! (other nodes' pod ranges over the fabric, the world) leaves with
//! `bpf_fib_lookup` and a redirect to the egress device, with
//! `bpf_redirect_neigh` when the next hop's MAC is not resolved yet. Every
//! miss falls back to the kernel's own stack.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, bpf_fib_lookup,
        bpf_redir_neigh,
    },
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
    },
    programs::TcContext,
};
use kestrel_ebpf_common::{drop::DropReason, route::LocalEndpoint};

use super::{
    PASS, count_drop,
    maps::ENDPOINTS,
    pkt::{self, Packet},
};

const AF_INET: u8 = 2;

/// The interface the packet arrived on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is the kernel's `__sk_buff` for this run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The local endpoint with address `addr_be`, if it is a pod on this node.
#[inline(always)]
pub fn local_endpoint(addr_be: u32) -> Option<LocalEndpoint> {
    let ep = ENDPOINTS.get_ptr(addr_be)?;
    // SAFETY: from a successful lookup; plain integers.
    Some(unsafe { *ep })
}

/// The verdict of a redirect helper, counting a refusal.
#[inline(always)]
fn redirected(ret: i64) -> i32 {
    let v = ret as i32;
    if v != TC_ACT_REDIRECT {
        count_drop(DropReason::REDIRECT);
    }
    v
}

/// Decrements the TTL as a router hop does; `false` when the packet must
/// not be forwarded (the kernel answers it with "time exceeded").
#[inline(always)]
fn hop(ctx: &TcContext, p: &Packet) -> Result<bool, i64> {
    if p.ttl <= 1 {
        return Ok(false);
    }
    pkt::set_ttl(ctx, p.ttl, p.proto, p.ttl - 1)?;
    Ok(true)
}

/// Delivers the packet into a local pod's namespace.
#[inline(always)]
pub fn to_pod(ctx: &TcContext, p: &Packet, ep: &LocalEndpoint) -> Result<i32, i64> {
    if !hop(ctx, p)? {
        return Ok(PASS);
    }
    pkt::set_macs(ctx, &ep.pod_mac, &ep.host_mac)?;
    // SAFETY: a helper taking plain integers; it only marks the skb.
    Ok(redirected(unsafe { bpf_redirect_peer(ep.ifindex, 0) }))
}

/// Routes the packet: a local pod, else the FIB (when `use_fib`), else
/// the kernel's stack.
#[inline(always)]
pub fn route(ctx: &TcContext, p: &Packet, use_fib: bool) -> Result<i32, i64> {
    if let Some(ep) = local_endpoint(p.daddr_be) {
        return to_pod(ctx, p, &ep);
    }
    if !use_fib {
        return Ok(PASS);
    }
    fib(ctx, p)
}

/// Forwards along the kernel's FIB, or hands the packet to the stack when
/// the FIB says anything but "forward" (local, unreachable, too big, ...).
#[inline(always)]
fn fib(ctx: &TcContext, p: &Packet) -> Result<i32, i64> {
    // SAFETY: an all-zero `bpf_fib_lookup` is the documented starting point.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = p.proto;
    params.sport = p.sport_be;
    params.dport = p.dport_be;
    // tot_len stays 0: the kernel then checks the skb itself against the
    // egress MTU (`is_skb_forwardable`), which lets a GSO packet through
    // as the stack's forwarding does. Given the header's length instead,
    // the lookup compares a GSO packet's full length with the MTU and
    // answers FRAG_NEEDED for every large segment of a bulk transfer.
    params.ifindex = ifindex(ctx);
    params.__bindgen_anon_2.tos = p.tos;
    params.__bindgen_anon_3.ipv4_src = p.saddr_be;
    params.__bindgen_anon_4.ipv4_dst = p.daddr_be;
    // SAFETY: `params` is a valid, writable `bpf_fib_lookup` of the size
    // passed, and the context is this program's skb.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    } as u32;
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        if !hop(ctx, p)? {
            return Ok(PASS);
        }
        pkt::set_macs(ctx, &params.dmac, &params.smac)?;
        // SAFETY: a helper taking plain integers; it only marks the skb.
        return Ok(redirected(unsafe { bpf_redirect(params.ifindex, 0) }));
    }
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH {
        if !hop(ctx, p)? {
            return Ok(PASS);
        }
        let mut nh = bpf_redir_neigh {
            nh_family: u32::from(AF_INET),
            __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
                // SAFETY: the FIB wrote the next hop into this union's IPv4 arm.
                ipv4_nh: unsafe { params.__bindgen_anon_4.ipv4_dst },
            },
        };
        // SAFETY: `nh` is a valid `bpf_redir_neigh` of the size passed.
        return Ok(redirected(unsafe {
            bpf_redirect_neigh(
                params.ifindex,
                &mut nh,
                size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        }));
    }
    Ok(PASS)
}
