//! Service load-balancing maps, in the shape Cilium proved at scale: a
//! service frontend is a set of entries keyed by (VIP, port, proto, scope,
//! slot). Slot 0 is the master entry (backend count, reverse-NAT id, flags);
//! slots `1..=count` each name one backend id; the backends live in their
//! own map. A lookup is therefore always three map reads, whatever the
//! number of services or backends.
//!
//! Addresses and ports are kept in network byte order (`*_be`), exactly as
//! the kernel hands them to the socket hooks and as they sit in packets.

/// Which traffic a set of backend slots serves.
///
/// User space fills each scope with the backends that traffic may use, so
/// that `internalTrafficPolicy` and `externalTrafficPolicy` cost nothing in
/// the kernel. Every frontend has its INTERNAL scope; the EXTERNAL one is
/// written only where its backends differ (`externalTrafficPolicy: Local`),
/// and traffic from outside reads the INTERNAL scope where it is absent.
pub mod scope {
    /// Traffic that starts inside the cluster: sockets on the node and its
    /// pods (the socket hooks), and pod packets seen on their veth.
    pub const INTERNAL: u8 = 0;
    /// Traffic from outside the node: NodePort, externalIPs and
    /// LoadBalancer ingress IPs reached through the uplink.
    pub const EXTERNAL: u8 = 1;
}

/// Bits of [`ServiceValue::flags`] (master entry only).
pub mod svc_flags {
    /// `sessionAffinity: ClientIP`; the timeout is in `affinity_timeout_s`.
    pub const AFFINITY: u16 = 1 << 0;
    /// The frontend is a NodePort (`addr_be` is 0: any local node address).
    pub const NODE_PORT: u16 = 1 << 1;
    /// The frontend is one of the service's `externalIPs`.
    pub const EXTERNAL_IP: u16 = 1 << 2;
    /// The frontend is a LoadBalancer ingress IP.
    pub const LOAD_BALANCER: u16 = 1 << 3;
    /// `externalTrafficPolicy: Local`: the external scope holds only this
    /// node's backends and the client's source address is kept (no SNAT).
    pub const EXT_LOCAL: u16 = 1 << 4;
    /// `internalTrafficPolicy: Local`: the internal scope holds only this
    /// node's backends.
    pub const INT_LOCAL: u16 = 1 << 5;
}

/// Bits of [`Backend::flags`].
pub mod backend_flags {
    /// The backend is a pod on this node (no SNAT, redirect to its veth).
    pub const LOCAL: u8 = 1 << 0;
    /// The endpoint is terminating: it is in no slot, so it takes no new
    /// connections, but it stays in the backends map so that flows already
    /// tracked to it finish.
    pub const TERMINATING: u8 = 1 << 1;
}

/// Kinds of client in an [`AffinityKey`].
pub mod affinity_kind {
    /// `client` is the socket's network-namespace cookie: the socket hooks
    /// cannot see a source address at connect time, and one pod is one
    /// network namespace.
    pub const NETNS_COOKIE: u8 = 0;
    /// `client` is the IPv4 source address (network order, zero-extended):
    /// the per-packet programs.
    pub const CLIENT_IP: u8 = 1;
}

/// Key of the services map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct ServiceKey {
    /// Frontend address (ClusterIP, externalIP, LB IP), or 0 for a NodePort.
    pub addr_be: u32,
    /// Frontend port.
    pub port_be: u16,
    /// IP protocol (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    /// [`scope`]: which traffic these slots serve.
    pub scope: u8,
    /// 0 for the master entry, `1..=count` for backend slots.
    pub slot: u16,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
}

/// Value of the services map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct ServiceValue {
    /// Slot entries: the backend id. Master: 0.
    pub backend_id: u32,
    /// Master: the number of backend slots (0: no ready backend). Slots: 0.
    pub count: u16,
    /// Master: the reverse-NAT id of this frontend. Slots: the same.
    pub rev_nat_id: u16,
    /// Master: [`svc_flags`]. Slots: 0.
    pub flags: u16,
    /// Explicit padding; always zero.
    pub _pad: u16,
    /// Master: the ClientIP affinity timeout in seconds. Slots: 0.
    pub affinity_timeout_s: u32,
}

/// Value of the backends map, keyed by a `u32` backend id (never 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Backend {
    /// Backend (pod or host) address.
    pub addr_be: u32,
    /// Backend port.
    pub port_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`backend_flags`].
    pub flags: u8,
}

/// Value of the reverse-NAT map, keyed by a `u16` reverse-NAT id (never 0):
/// the frontend a reply must appear to come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct RevNat {
    /// Frontend address.
    pub addr_be: u32,
    /// Frontend port.
    pub port_be: u16,
    /// Explicit padding; always zero.
    pub _pad: u16,
}

/// Key of the socket reverse-NAT map, written by `connect4`/`sendmsg4` and
/// read by `recvmsg4`/`getpeername4`: "this socket talks to this backend
/// on behalf of that frontend".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct SockRevKey {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// Backend address.
    pub addr_be: u32,
    /// Backend port.
    pub port_be: u16,
    /// Explicit padding; always zero.
    pub _pad: u16,
}

/// Value of the socket reverse-NAT map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct SockRevValue {
    /// Frontend address.
    pub addr_be: u32,
    /// Frontend port.
    pub port_be: u16,
    /// The frontend's reverse-NAT id.
    pub rev_nat_id: u16,
}

/// Key of the session-affinity map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct AffinityKey {
    /// The client, as [`AffinityKey::kind`] says.
    pub client: u64,
    /// The service frontend's reverse-NAT id.
    pub rev_nat_id: u16,
    /// [`affinity_kind`].
    pub kind: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 5],
}

/// Value of the session-affinity map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct AffinityValue {
    /// The backend the client was last sent to.
    pub backend_id: u32,
    /// When, in seconds of `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub last_used_s: u32,
}

/// Default map sizes; user space may override each (`EbpfLoader::set_max_entries`).
pub mod sizes {
    /// Service entries: masters and slots of both scopes.
    pub const SERVICES: u32 = 262_144;
    /// Backends.
    pub const BACKENDS: u32 = 65_536;
    /// Reverse-NAT ids (one per frontend).
    pub const REV_NAT: u32 = 65_536;
    /// Socket reverse-NAT entries (LRU).
    pub const SOCK_REV_NAT: u32 = 262_144;
    /// Session-affinity entries (LRU).
    pub const AFFINITY: u32 = 65_536;
    /// Conntrack entries (LRU).
    pub const CONNTRACK: u32 = 524_288;
}

/// Chooses the backend slot for a new connection: `1..=count`, from a
/// random number. `count` must be non-zero.
pub const fn pick_slot(random: u32, count: u16) -> u16 {
    // `count` is at least 1 here, so the modulo never divides by zero and
    // the result fits in u16.
    (random % count as u32) as u16 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 12);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(size_of::<RevNat>(), 8);
        assert_eq!(size_of::<SockRevKey>(), 16);
        assert_eq!(size_of::<SockRevValue>(), 8);
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(size_of::<AffinityValue>(), 8);
    }

    #[test]
    fn slots_cover_one_to_count() {
        assert_eq!(pick_slot(0, 1), 1);
        assert_eq!(pick_slot(u32::MAX, 1), 1);
        assert_eq!(pick_slot(0, 3), 1);
        assert_eq!(pick_slot(2, 3), 3);
        assert_eq!(pick_slot(3, 3), 1);
        assert_eq!(
            pick_slot(u32::MAX, u16::MAX),
            (u32::MAX % 65_535) as u16 + 1
        );
    }
}
