//! Socket-level load balancing: cgroup hooks that translate a service
//! frontend (ClusterIP:port) into a backend when a socket in the node's
//! cgroup connects or sends, and translate the backend back into the
//! frontend when the socket asks who its peer is or receives a datagram.
//!
//! The backend is chosen once, at `connect()` time (or per UDP socket for
//! unconnected sends), so the packets of an established flow carry the
//! backend's address from the start and cost nothing afterwards: no NAT,
//! no conntrack.
//!
//! Every hook does a constant number of map lookups and never loops:
//! - forward (`connect4`, `sendmsg4`): master entry, then either the
//!   affinity entry or one slot entry, then the backend, then the socket
//!   reverse-NAT entry and the connection counter;
//! - reverse (`recvmsg4`, `getpeername4`): one socket reverse-NAT lookup.
//!
//! A destination that is not a service, or a service with no ready backend
//! (`count == 0`), is left untouched: the per-packet program on the pod's
//! veth answers the latter with a TCP RST or ICMP unreachable, which is
//! what a client must see ("connection refused"), not an `EPERM` from here.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use kestrel_ebpf_common::lb::{
    AffinityKey, AffinityValue, Backend, ServiceKey, SockRevKey, SockRevValue, affinity_kind,
    backend_flags, pick_slot, scope, svc_flags,
};

use crate::maps::{AFFINITY, BACKEND_CONNS, BACKENDS, SERVICES, SOCK_REV_NAT};

/// Looks `key` up in one of the maps and copies the value out at once.
macro_rules! lookup {
    ($map:expr, $key:expr) => {
        // SAFETY: the value is copied out at once. User space may rewrite
        // an entry concurrently; a torn copy can only pick a wrong but
        // valid backend or skip a rewrite, never touch memory outside the
        // map value.
        unsafe { $map.get($key) }.copied()
    };
}

/// The verdict of every hook: let the syscall proceed. `connect4` and
/// `sendmsg4` could refuse with 0 (`EPERM`), but a failed lookup must look
/// as if no hook were attached; `recvmsg4` and `getpeername4` may only
/// return 1 (the verifier enforces it).
const PROCEED: i32 = 1;

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const NS_PER_S: u64 = 1_000_000_000;

/// Rewrites a `connect()` to a service frontend into one of its backends.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    // The verdict is the same whatever happened (see `PROCEED`); a failed
    // lookup only means the address is left as the caller wrote it.
    let _ = try_forward(&ctx, Pick::Random);
    PROCEED
}

/// Rewrites an unconnected `sendto()`/`sendmsg()` to a service frontend.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    // The verdict is the same whatever happened (see `PROCEED`); a failed
    // lookup only means the address is left as the caller wrote it.
    let _ = try_forward(&ctx, Pick::PerSocket);
    PROCEED
}

/// Shows a datagram from a backend as coming from the frontend the socket
/// sent to, so a DNS-style client that checks the reply's source accepts it.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    // The verdict is the same whatever happened (see `PROCEED`); a failed
    // lookup only means the address is left as the caller wrote it.
    let _ = try_reverse(&ctx);
    PROCEED
}

/// Makes `getpeername()` return the frontend the socket connected to.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    // The verdict is the same whatever happened (see `PROCEED`); a failed
    // lookup only means the address is left as the caller wrote it.
    let _ = try_reverse(&ctx);
    PROCEED
}

/// How a backend slot is chosen when no affinity applies.
#[derive(Clone, Copy)]
enum Pick {
    /// A fresh random slot: each `connect()` is a new connection.
    Random,
    /// A slot derived from the socket cookie: every datagram one unconnected
    /// UDP socket sends to a frontend reaches the same backend while the
    /// backend set is unchanged, as conntrack would keep a UDP flow on one
    /// backend with kube-proxy, and the SOCK_REV_NAT entry (and the
    /// connection count) is made once per socket rather than per datagram.
    PerSocket,
}

fn try_forward(ctx: &SockAddrContext, pick: Pick) -> Result<(), ()> {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands every cgroup/sock_addr program a valid
    // `bpf_sock_addr` that lives for the whole run; these are plain reads
    // of context fields the verifier allows for this program type.
    let (addr_be, port_word, protocol) =
        unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    let proto = match protocol {
        IPPROTO_TCP | IPPROTO_UDP => protocol as u8,
        _ => return Ok(()),
    };
    // `user_port` holds the port in network order in its low 16 bits.
    let port_be = port_word as u16;
    let frontend = ServiceKey {
        addr_be,
        port_be,
        proto,
        scope: scope::INTERNAL,
        slot: 0,
        _pad: [0; 2],
    };
    let Some(master) = lookup!(SERVICES, &frontend) else {
        return Ok(());
    };
    if master.count == 0 {
        return Ok(());
    }

    // SAFETY: the helper accepts this program type's context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let affinity = if master.flags & svc_flags::AFFINITY != 0 {
        // SAFETY: the helpers take no pointer but the context's.
        let (netns, now_ns) = unsafe { (bpf_get_netns_cookie(ctx.as_ptr()), bpf_ktime_get_ns()) };
        Some((
            AffinityKey {
                client: netns,
                rev_nat_id: master.rev_nat_id,
                kind: affinity_kind::NETNS_COOKIE,
                _pad: [0; 5],
            },
            (now_ns / NS_PER_S) as u32,
        ))
    } else {
        None
    };

    let remembered = match affinity {
        Some((key, now_s)) => affine_backend(&key, now_s, master.affinity_timeout_s),
        None => None,
    };
    let (backend_id, backend) = match remembered {
        Some(found) => found,
        None => {
            let random = match pick {
                // SAFETY: the helper takes no arguments.
                Pick::Random => unsafe { bpf_get_prandom_u32() },
                Pick::PerSocket => spread_cookie(cookie),
            };
            let slot = ServiceKey {
                slot: pick_slot(random, master.count),
                ..frontend
            };
            let backend_id = lookup!(SERVICES, &slot).ok_or(())?.backend_id;
            (backend_id, lookup!(BACKENDS, &backend_id).ok_or(())?)
        }
    };

    // SAFETY: as above; `user_ip4` and `user_port` are writable in
    // connect4 and sendmsg4, with full 4-byte stores.
    unsafe {
        (*sa).user_ip4 = backend.addr_be;
        (*sa).user_port = u32::from(backend.port_be);
    }

    if let Some((key, now_s)) = affinity {
        let value = AffinityValue {
            backend_id,
            last_used_s: now_s,
        };
        // A failed update only costs stickiness on the next connect.
        let _ = AFFINITY.insert(key, value, 0);
    }

    let rev_key = SockRevKey {
        cookie,
        addr_be: backend.addr_be,
        port_be: backend.port_be,
        _pad: 0,
    };
    let rev_value = SockRevValue {
        addr_be,
        port_be,
        rev_nat_id: master.rev_nat_id,
    };
    // A socket that already has this exact entry is an unconnected UDP
    // socket sending its next datagram (or a connect() retried on the same
    // socket): not a new connection.
    if lookup!(SOCK_REV_NAT, &rev_key) != Some(rev_value) {
        // Without the entry getpeername and UDP replies show the backend;
        // the connection itself still works, so carry on.
        let _ = SOCK_REV_NAT.insert(rev_key, rev_value, 0);
        count_connection(backend_id);
        debug!(
            ctx,
            "sock_lb: {:i}:{} proto {} -> backend {} {:i}:{}",
            u32::from_be(addr_be),
            u16::from_be(port_be),
            proto,
            backend_id,
            u32::from_be(backend.addr_be),
            u16::from_be(backend.port_be)
        );
    }
    Ok(())
}

/// The backend this client was last sent to, if the entry is younger than
/// the service's timeout and the backend may still take new connections.
fn affine_backend(key: &AffinityKey, now_s: u32, timeout_s: u32) -> Option<(u32, Backend)> {
    let last = lookup!(AFFINITY, key)?;
    // Wrapping: a clock older than the entry reads as expired, never as fresh.
    if now_s.wrapping_sub(last.last_used_s) >= timeout_s {
        return None;
    }
    let backend = lookup!(BACKENDS, &last.backend_id)?;
    if backend.flags & backend_flags::TERMINATING != 0 {
        return None;
    }
    Some((last.backend_id, backend))
}

/// Adds one to this CPU's new-connection count of `backend_id`.
fn count_connection(backend_id: u32) {
    let counter = match BACKEND_CONNS.get_ptr_mut(backend_id) {
        Some(p) => p,
        None => {
            // First connection to this backend on any CPU: the insert sets
            // this CPU's value and zeroes the others. Losing the race to
            // another CPU's insert just means adding to the entry it made.
            if BACKEND_CONNS
                .insert(backend_id, 1, u64::from(BPF_NOEXIST))
                .is_ok()
            {
                return;
            }
            match BACKEND_CONNS.get_ptr_mut(backend_id) {
                Some(p) => p,
                None => return,
            }
        }
    };
    // SAFETY: the pointer comes from a successful per-CPU lookup, so it is
    // valid while the program runs and only this CPU writes it. (A program
    // preempted on this CPU may lose one count; the BPF target has no
    // atomic read-modify-write in `core`, and this is a statistic.)
    unsafe { *counter += 1 };
}

fn try_reverse(ctx: &SockAddrContext) -> Result<(), ()> {
    let sa = ctx.sock_addr;
    // SAFETY: see `try_forward`; these fields are readable in recvmsg4 and
    // getpeername4, and the helper accepts this context.
    let (addr_be, port_word, cookie) = unsafe {
        (
            (*sa).user_ip4,
            (*sa).user_port,
            bpf_get_socket_cookie(ctx.as_ptr()),
        )
    };
    let key = SockRevKey {
        cookie,
        addr_be,
        port_be: port_word as u16,
        _pad: 0,
    };
    let frontend = lookup!(SOCK_REV_NAT, &key).ok_or(())?;
    // SAFETY: see `try_forward`; both hooks may rewrite the address, which
    // is what they exist for.
    unsafe {
        (*sa).user_ip4 = frontend.addr_be;
        (*sa).user_port = u32::from(frontend.port_be);
    }
    Ok(())
}

/// Spreads sequential socket cookies over the slots (Fibonacci hashing:
/// the high bits of a multiplication by 2^64/φ), so that sockets opened in
/// a regular pattern still land on different backends.
#[inline(always)]
fn spread_cookie(cookie: u64) -> u32 {
    (cookie.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
}
