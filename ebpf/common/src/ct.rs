//! Connection tracking for the per-packet programs.
//!
//! A tracked flow is two entries in one LRU hash: the *original* entry,
//! keyed by the tuple of the flow's first packet as the program saw it, and
//! the *reply* entry, keyed by the tuple replies carry on the wire (after
//! the original direction's translation, swapped). Each entry says how to
//! rewrite the packets it matches, so either direction costs one lookup,
//! and the two are bound to each other by [`paired_key`]: apply an entry's
//! rewrite to its key and swap the ends, and you get the other entry's key.
//!
//! The kernel records when an entry last matched and which TCP flags it
//! saw; how long an idle entry lives follows from that ([`lifetime_ns`],
//! Cilium's defaults). User space sweeps expired flows; the LRU bounds
//! memory whatever happens.

/// Key of the conntrack map: a packet's tuple as it is on the wire where
/// the program looks it up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct CtKey {
    /// Source address.
    pub saddr_be: u32,
    /// Destination address.
    pub daddr_be: u32,
    /// Source port (0 for protocols without ports).
    pub sport_be: u16,
    /// Destination port.
    pub dport_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
}

impl CtKey {
    /// A key for the tuple (source, destination, ports, protocol).
    pub const fn new(
        saddr_be: u32,
        daddr_be: u32,
        sport_be: u16,
        dport_be: u16,
        proto: u8,
    ) -> Self {
        Self {
            saddr_be,
            daddr_be,
            sport_be,
            dport_be,
            proto,
            _pad: [0; 3],
        }
    }

    /// The same flow seen from the other end.
    pub const fn swapped(&self) -> Self {
        Self::new(
            self.daddr_be,
            self.saddr_be,
            self.dport_be,
            self.sport_be,
            self.proto,
        )
    }
}

/// Bits of [`CtEntry::flags`].
pub mod ct_flags {
    /// The entry matches replies (the flow began at the other end).
    pub const REPLY: u8 = 1 << 0;
    /// A service translation: the original direction's destination was a
    /// frontend and is rewritten to a backend (replies: the other way).
    pub const DNAT: u8 = 1 << 1;
    /// The original direction's source is rewritten to the node's address
    /// (NodePort to a backend on another node, or masquerade).
    pub const SNAT: u8 = 1 << 2;
    /// The flow came in through the node's uplink (NodePort, externalIP,
    /// LoadBalancer IP, or traffic from outside the cluster to a local pod).
    pub const FROM_UPLINK: u8 = 1 << 3;
    /// The SNAT is a masquerade of a pod's flow leaving the cluster.
    pub const MASQUERADE: u8 = 1 << 4;
    /// The backend is a pod on this node.
    pub const LOCAL_BACKEND: u8 = 1 << 5;
}

/// Bits of [`CtEntry::tcp_seen`]: what the entry's own direction has sent.
pub mod tcp_seen {
    /// A SYN.
    pub const SYN: u8 = 1 << 0;
    /// A segment without SYN: this side finished its handshake.
    pub const ESTABLISHED: u8 = 1 << 1;
    /// A FIN (this side or, propagated, the other).
    pub const FIN: u8 = 1 << 2;
    /// A RST (this side or, propagated, the other).
    pub const RST: u8 = 1 << 3;
    /// FIN or RST: the flow is closing.
    pub const CLOSING: u8 = FIN | RST;
}

/// Value of the conntrack map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct CtEntry {
    /// When a packet last matched, in `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub last_seen_ns: u64,
    /// New source address for matching packets; 0 keeps it.
    pub nat_saddr_be: u32,
    /// New destination address; 0 keeps it.
    pub nat_daddr_be: u32,
    /// New source port; 0 keeps it.
    pub nat_sport_be: u16,
    /// New destination port; 0 keeps it.
    pub nat_dport_be: u16,
    /// The backend a service flow was sent to (0: none).
    pub backend_id: u32,
    /// The frontend's reverse-NAT id (0: none).
    pub rev_nat_id: u16,
    /// [`ct_flags`].
    pub flags: u8,
    /// [`tcp_seen`] (TCP only).
    pub tcp_seen: u8,
    /// Packets that matched (wrapping; approximate under concurrency).
    pub packets: u32,
}

impl CtEntry {
    /// Whether the entry matches the reply direction.
    pub const fn is_reply(&self) -> bool {
        self.flags & ct_flags::REPLY != 0
    }

    /// Whether the entry rewrites anything.
    pub const fn translates(&self) -> bool {
        self.nat_saddr_be != 0
            || self.nat_daddr_be != 0
            || self.nat_sport_be != 0
            || self.nat_dport_be != 0
    }

    /// Whether FIN or RST was seen.
    pub const fn closing(&self) -> bool {
        self.tcp_seen & tcp_seen::CLOSING != 0
    }
}

/// `key` after `entry`'s rewrite: the tuple the packet leaves with.
pub const fn translate(key: &CtKey, entry: &CtEntry) -> CtKey {
    CtKey::new(
        pick(entry.nat_saddr_be, key.saddr_be),
        pick(entry.nat_daddr_be, key.daddr_be),
        pick16(entry.nat_sport_be, key.sport_be),
        pick16(entry.nat_dport_be, key.dport_be),
        key.proto,
    )
}

const fn pick(new: u32, old: u32) -> u32 {
    if new != 0 { new } else { old }
}

const fn pick16(new: u16, old: u16) -> u16 {
    if new != 0 { new } else { old }
}

/// The key of the entry paired with (`key`, `entry`): the other direction.
pub const fn paired_key(key: &CtKey, entry: &CtEntry) -> CtKey {
    translate(key, entry).swapped()
}

/// The reply entry for an original entry: its key, and a rewrite that
/// turns each reply back into what the original sender expects to see.
pub const fn reply_for(key: &CtKey, original: &CtEntry) -> (CtKey, CtEntry) {
    let out = translate(key, original);
    let reply_key = out.swapped();
    let want = key.swapped();
    let entry = CtEntry {
        last_seen_ns: original.last_seen_ns,
        nat_saddr_be: differs(want.saddr_be, reply_key.saddr_be),
        nat_daddr_be: differs(want.daddr_be, reply_key.daddr_be),
        nat_sport_be: differs16(want.sport_be, reply_key.sport_be),
        nat_dport_be: differs16(want.dport_be, reply_key.dport_be),
        backend_id: original.backend_id,
        rev_nat_id: original.rev_nat_id,
        flags: original.flags | ct_flags::REPLY,
        tcp_seen: 0,
        packets: 0,
    };
    (reply_key, entry)
}

const fn differs(want: u32, have: u32) -> u32 {
    if want != have { want } else { 0 }
}

const fn differs16(want: u16, have: u16) -> u16 {
    if want != have { want } else { 0 }
}

/// [`tcp_seen`] bits for a segment with TCP `flags` (the header byte).
pub const fn tcp_seen_bits(flags: u8) -> u8 {
    use crate::hdr::tcp_flags;
    let mut seen = 0;
    if flags & tcp_flags::SYN != 0 {
        seen |= tcp_seen::SYN;
    } else {
        seen |= tcp_seen::ESTABLISHED;
    }
    if flags & tcp_flags::FIN != 0 {
        seen |= tcp_seen::FIN;
    }
    if flags & tcp_flags::RST != 0 {
        seen |= tcp_seen::RST;
    }
    seen
}

/// How long idle entries live, in seconds (Cilium's defaults).
pub mod lifetime {
    /// A TCP flow whose side has not finished its handshake.
    pub const TCP_SYN_S: u64 = 60;
    /// An established TCP flow.
    pub const TCP_ESTABLISHED_S: u64 = 21_600;
    /// A TCP flow after FIN or RST.
    pub const TCP_CLOSING_S: u64 = 10;
    /// UDP and everything else.
    pub const NON_TCP_S: u64 = 60;
}

const NS_PER_S: u64 = 1_000_000_000;

/// How long `entry` (of protocol `proto`) may stay idle.
pub const fn lifetime_ns(proto: u8, entry: &CtEntry) -> u64 {
    let s = if proto != crate::packet::IPPROTO_TCP {
        lifetime::NON_TCP_S
    } else if entry.tcp_seen & tcp_seen::CLOSING != 0 {
        lifetime::TCP_CLOSING_S
    } else if entry.tcp_seen & tcp_seen::ESTABLISHED != 0 {
        lifetime::TCP_ESTABLISHED_S
    } else {
        lifetime::TCP_SYN_S
    };
    s * NS_PER_S
}

/// Whether `entry` has been idle longer than its lifetime at `now_ns`.
pub const fn expired(proto: u8, entry: &CtEntry, now_ns: u64) -> bool {
    now_ns.saturating_sub(entry.last_seen_ns) > lifetime_ns(proto, entry)
}

/// Whether a flow may be removed: its original entry (if any) and its
/// reply entry (if any) have both expired. A one-way flow keeps living as
/// long as its busy direction is busy.
pub const fn flow_expired(
    proto: u8,
    original: Option<&CtEntry>,
    reply: Option<&CtEntry>,
    now_ns: u64,
) -> bool {
    let a = match original {
        Some(e) => expired(proto, e, now_ns),
        None => true,
    };
    let b = match reply {
        Some(e) => expired(proto, e, now_ns),
        None => true,
    };
    a && b
}

/// The first port tried for a source NAT is the flow's own; when that
/// collides, ports come from here, above Linux's default ephemeral range
/// (32768–60999) so they never collide with the node's own sockets.
pub const SNAT_PORT_MIN: u16 = 61_000;
/// The last port of the collision range.
pub const SNAT_PORT_MAX: u16 = 65_535;
/// Source-NAT attempts per new flow: the flow's own port, then random ones.
pub const SNAT_ATTEMPTS: u32 = 4;

/// The host-order source port of SNAT attempt `attempt` (0-based) for a
/// flow from `port`, drawing on `random`.
pub const fn snat_port(port: u16, attempt: u32, random: u32) -> u16 {
    if attempt == 0 {
        return port;
    }
    let span = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
    // Spread attempts even when `random` repeats.
    let r = random.wrapping_add(attempt.wrapping_mul(0x9e37_79b9));
    SNAT_PORT_MIN + (r % span) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
        u32::from_ne_bytes([a, b, c, d])
    }

    fn port(p: u16) -> u16 {
        p.to_be()
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(size_of::<CtEntry>(), 32);
    }

    #[test]
    fn a_cluster_ip_flow_pairs_with_its_reply() {
        // Pod 10.42.1.5:40000 → ClusterIP 10.43.0.10:80, sent to backend
        // 10.42.2.7:8080.
        let key = CtKey::new(
            ip(10, 42, 1, 5),
            ip(10, 43, 0, 10),
            port(40000),
            port(80),
            6,
        );
        let original = CtEntry {
            nat_daddr_be: ip(10, 42, 2, 7),
            nat_dport_be: port(8080),
            backend_id: 3,
            rev_nat_id: 9,
            flags: ct_flags::DNAT,
            ..CtEntry::default()
        };
        let (reply_key, reply) = reply_for(&key, &original);
        assert_eq!(
            reply_key,
            CtKey::new(
                ip(10, 42, 2, 7),
                ip(10, 42, 1, 5),
                port(8080),
                port(40000),
                6
            )
        );
        // Replies get the frontend back as their source, nothing else.
        assert_eq!(reply.nat_saddr_be, ip(10, 43, 0, 10));
        assert_eq!(reply.nat_sport_be, port(80));
        assert_eq!((reply.nat_daddr_be, reply.nat_dport_be), (0, 0));
        assert!(reply.is_reply() && !original.is_reply());
        assert_eq!(reply.backend_id, 3);
        // Each entry finds the other.
        assert_eq!(paired_key(&key, &original), reply_key);
        assert_eq!(paired_key(&reply_key, &reply), key);
        // A reply, rewritten, is the original swapped.
        assert_eq!(translate(&reply_key, &reply), key.swapped());
    }

    #[test]
    fn a_node_port_flow_with_snat_pairs_with_its_reply() {
        // Outside 10.41.0.100:5555 → node 10.41.0.10:30080, sent to
        // 10.42.2.7:8080 from the node's address and port 61000.
        let key = CtKey::new(
            ip(10, 41, 0, 100),
            ip(10, 41, 0, 10),
            port(5555),
            port(30080),
            6,
        );
        let original = CtEntry {
            nat_saddr_be: ip(10, 41, 0, 10),
            nat_sport_be: port(61000),
            nat_daddr_be: ip(10, 42, 2, 7),
            nat_dport_be: port(8080),
            flags: ct_flags::DNAT | ct_flags::SNAT | ct_flags::FROM_UPLINK,
            ..CtEntry::default()
        };
        let (reply_key, reply) = reply_for(&key, &original);
        assert_eq!(
            reply_key,
            CtKey::new(
                ip(10, 42, 2, 7),
                ip(10, 41, 0, 10),
                port(8080),
                port(61000),
                6
            )
        );
        assert_eq!(
            translate(&reply_key, &reply),
            CtKey::new(
                ip(10, 41, 0, 10),
                ip(10, 41, 0, 100),
                port(30080),
                port(5555),
                6
            )
        );
        assert_eq!(paired_key(&reply_key, &reply), key);
    }

    #[test]
    fn an_untranslated_flow_pairs_with_a_plain_reply() {
        let key = CtKey::new(ip(10, 41, 0, 100), ip(10, 42, 1, 5), port(53), port(53), 17);
        let (reply_key, reply) = reply_for(&key, &CtEntry::default());
        assert_eq!(reply_key, key.swapped());
        assert!(!reply.translates());
    }

    #[test]
    fn tcp_states_choose_lifetimes() {
        let mut e = CtEntry::default();
        e.tcp_seen |= tcp_seen_bits(crate::hdr::tcp_flags::SYN);
        assert_eq!(lifetime_ns(6, &e), 60 * NS_PER_S);
        e.tcp_seen |= tcp_seen_bits(crate::hdr::tcp_flags::ACK);
        assert_eq!(lifetime_ns(6, &e), 21_600 * NS_PER_S);
        e.tcp_seen |= tcp_seen_bits(crate::hdr::tcp_flags::ACK | crate::hdr::tcp_flags::FIN);
        assert!(e.closing());
        assert_eq!(lifetime_ns(6, &e), 10 * NS_PER_S);
        assert_eq!(lifetime_ns(17, &CtEntry::default()), 60 * NS_PER_S);
        assert_eq!(
            tcp_seen_bits(crate::hdr::tcp_flags::RST),
            tcp_seen::ESTABLISHED | tcp_seen::RST
        );
    }

    #[test]
    fn flows_expire_only_when_both_directions_idle() {
        let s = NS_PER_S;
        let fresh = CtEntry {
            last_seen_ns: 100 * s,
            ..CtEntry::default()
        };
        let stale = CtEntry {
            last_seen_ns: 10 * s,
            ..CtEntry::default()
        };
        let now = 100 * s;
        assert!(!expired(17, &fresh, now));
        assert!(expired(17, &stale, now));
        assert!(!flow_expired(17, Some(&stale), Some(&fresh), now));
        assert!(!flow_expired(17, Some(&fresh), None, now));
        assert!(flow_expired(17, Some(&stale), None, now));
        assert!(flow_expired(17, None, Some(&stale), now));
        // A clock that reads earlier than the entry never expires it.
        assert!(!expired(17, &fresh, 0));
    }

    #[test]
    fn snat_keeps_the_port_first_then_leaves_the_ephemeral_range() {
        assert_eq!(snat_port(40000, 0, 12345), 40000);
        for attempt in 1..SNAT_ATTEMPTS {
            for random in [0, 1, 4535, 4536, u32::MAX] {
                let p = snat_port(40000, attempt, random);
                assert!((SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&p), "{p}");
            }
        }
        assert_ne!(snat_port(1, 1, 7), snat_port(1, 2, 7));
    }
}
