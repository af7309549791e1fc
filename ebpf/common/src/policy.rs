//! Network policy as the per-packet programs enforce it, in the manner
//! Cilium proved: every address resolves to a numeric *identity* (one per
//! distinct set of pod and namespace labels, one per ipBlock prefix, and a
//! few reserved ones), and each local pod has allow entries keyed by
//! (pod, peer identity, direction, protocol, port) with wildcards.
//!
//! - The **ipcache** is an LPM trie of address prefix → [`IpcacheEntry`]:
//!   every pod in the cluster as a /32, the node itself, and every
//!   ipBlock prefix and exception of every policy. An address no entry
//!   covers is [`identity::WORLD`].
//! - The **policy endpoints** hash says, for each pod on this node (by
//!   address), whether policies isolate it for ingress and for egress
//!   ([`PolicyEndpoint`]).
//! - The **policy** LPM trie holds the allow entries ([`PolicyKey`]). The
//!   key's fields are ordered so that a shorter prefix is a wildcard:
//!   [`prefix::ANY_PROTO`] ends before the protocol, [`prefix::ANY_PORT`]
//!   before the port, and port ranges become a few prefixes of the port
//!   ([`port_range_prefixes`]). A peer wildcard is its own identity,
//!   [`identity::ANY`]; a new flow therefore costs at most two trie
//!   lookups per direction, whatever the number of policies.
//!
//! Verdicts are counted per CPU by (policy, direction, verdict), and new
//! flows that a policy decided are sent to user space as [`FlowEvent`]s
//! through a ring buffer, at a bounded rate; what could not be sent is
//! counted ([`event_stat`]).

/// Reserved identities, and where the allocated ranges begin.
pub mod identity {
    /// In a [`super::PolicyKey`]: any peer.
    pub const ANY: u32 = 0;
    /// The node itself (kubelet probes come from here).
    pub const HOST: u32 = 1;
    /// An address outside every pod and every ipBlock prefix.
    pub const WORLD: u32 = 2;
    /// First identity of a set of pod labels.
    pub const FIRST_LABELS: u32 = 256;
    /// First identity of an ipBlock prefix.
    pub const FIRST_CIDR: u32 = 1 << 24;
}

/// Value of the ipcache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct IpcacheEntry {
    /// The identity of the addresses under the prefix.
    pub identity: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

/// Bits of [`PolicyEndpoint::flags`].
pub mod endpoint_flags {
    /// Some policy selects the pod for ingress: what no policy allows in
    /// is denied.
    pub const INGRESS_ISOLATED: u32 = 1 << 0;
    /// Some policy selects the pod for egress.
    pub const EGRESS_ISOLATED: u32 = 1 << 1;
}

/// Value of the policy endpoints map, keyed by a local pod's address
/// (`u32`, network order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct PolicyEndpoint {
    /// [`endpoint_flags`].
    pub flags: u32,
    /// The pod's own identity.
    pub identity: u32,
    /// A policy isolating the pod for ingress: named in denials.
    pub ingress_policy: u32,
    /// A policy isolating the pod for egress.
    pub egress_policy: u32,
}

impl PolicyEndpoint {
    /// Whether the pod is isolated in `dir` ([`direction`]).
    pub const fn isolated(&self, dir: u8) -> bool {
        let bit = if dir == direction::INGRESS {
            endpoint_flags::INGRESS_ISOLATED
        } else {
            endpoint_flags::EGRESS_ISOLATED
        };
        self.flags & bit != 0
    }

    /// The policy named when the pod's isolation in `dir` denies a flow.
    pub const fn isolating_policy(&self, dir: u8) -> u32 {
        if dir == direction::INGRESS {
            self.ingress_policy
        } else {
            self.egress_policy
        }
    }
}

/// Directions, from the local pod's side.
pub mod direction {
    /// Traffic into the pod.
    pub const INGRESS: u8 = 0;
    /// Traffic out of the pod.
    pub const EGRESS: u8 = 1;
}

/// Data of a policy trie key; the trie's own prefix length comes before
/// it. Every field is in network order, so prefixes run from the first
/// field's high byte on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct PolicyKey {
    /// The local pod's address.
    pub endpoint_be: u32,
    /// The peer's identity, big-endian ([`identity::ANY`] for any peer).
    pub identity_be: u32,
    /// [`direction`].
    pub direction: u8,
    /// IP protocol.
    pub proto: u8,
    /// Destination port (the pod's own for ingress, the peer's for egress).
    pub dport_be: u16,
}

/// Prefix lengths of [`PolicyKey`] in bits.
pub mod prefix {
    /// Endpoint, identity and direction: any protocol and port.
    pub const ANY_PROTO: u32 = 72;
    /// Also the protocol: any port of it.
    pub const ANY_PORT: u32 = 80;
    /// Every field.
    pub const FULL: u32 = 96;
}

impl PolicyKey {
    /// The key a packet looks up.
    pub const fn lookup(endpoint_be: u32, peer: u32, dir: u8, proto: u8, dport_be: u16) -> Self {
        Self {
            endpoint_be,
            identity_be: peer.to_be(),
            direction: dir,
            proto,
            dport_be,
        }
    }
}

/// Value of the policy trie.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct PolicyEntry {
    /// The policy that allows the traffic (named in verdicts).
    pub policy_id: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

/// Verdicts on a new flow.
pub mod verdict {
    /// A policy allowed it.
    pub const ALLOWED: u8 = 0;
    /// The pod is isolated and no policy allowed it.
    pub const DENIED: u8 = 1;
    /// No policy selects the pod in that direction.
    pub const OPEN: u8 = 2;
    /// From the node itself: health probes always pass.
    pub const HOST: u8 = 3;
    /// Number of verdicts.
    pub const COUNT: u8 = 4;

    /// A short lowercase name, used in metrics and flow records.
    pub const fn name(v: u8) -> &'static str {
        match v {
            ALLOWED => "allowed",
            DENIED => "denied",
            OPEN => "open",
            HOST => "host",
            _ => "unknown",
        }
    }
}

/// "No policy": a verdict no policy decided.
pub const NO_POLICY: u32 = u32::MAX;

/// Key of the per-CPU verdict counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct PolicyVerdictKey {
    /// The policy named in the verdict, or [`NO_POLICY`].
    pub policy_id: u32,
    /// [`direction`].
    pub direction: u8,
    /// [`verdict`].
    pub verdict: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
}

/// A policy verdict on a new flow, as the ring buffer carries it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` when the verdict was made.
    pub time_ns: u64,
    /// Source address (after service translation).
    pub saddr_be: u32,
    /// Destination address (after service translation).
    pub daddr_be: u32,
    /// Source port (0 without ports).
    pub sport_be: u16,
    /// Destination port.
    pub dport_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`direction`], from the checked pod's side.
    pub direction: u8,
    /// [`verdict`].
    pub verdict: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// The policy that decided, or [`NO_POLICY`].
    pub policy_id: u32,
    /// The source's identity.
    pub src_identity: u32,
    /// The destination's identity.
    pub dst_identity: u32,
    /// Explicit padding; always zero.
    pub _pad2: u32,
}

/// Indexes of the per-CPU flow event counters.
pub mod event_stat {
    /// Events written to the ring buffer.
    pub const SENT: u32 = 0;
    /// Events not written: over the rate limit.
    pub const LOST_RATE: u32 = 1;
    /// Events not written: the ring buffer was full.
    pub const LOST_FULL: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// The per-CPU token bucket that bounds the event rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct EventBucket {
    /// Tokens left, in thousandths of an event.
    pub milli_tokens: u64,
    /// When the bucket was last refilled.
    pub last_ns: u64,
}

/// Flow events each CPU may send per second.
pub const EVENTS_PER_SECOND: u64 = 5_000;
/// Events a CPU may send in one burst.
pub const EVENT_BURST: u64 = 500;

impl EventBucket {
    /// Refills for the time since the last call and takes one token;
    /// `false` when the bucket is empty.
    pub const fn take(&mut self, now_ns: u64) -> bool {
        const MILLI_PER_EVENT: u64 = 1_000;
        let cap = EVENT_BURST * MILLI_PER_EVENT;
        // One second refills any bucket; capping the gap there keeps the
        // arithmetic in 64 bits (the eBPF target has no 128-bit multiply).
        let mut elapsed = now_ns.saturating_sub(self.last_ns);
        if elapsed > 1_000_000_000 {
            elapsed = 1_000_000_000;
        }
        // Milli-tokens earned: EVENTS_PER_SECOND per 1e9 ns, times 1000.
        let earned = elapsed * EVENTS_PER_SECOND / 1_000_000;
        let mut tokens = if self.milli_tokens > cap {
            cap
        } else {
            self.milli_tokens
        } + earned;
        if tokens > cap {
            tokens = cap;
        }
        self.last_ns = now_ns;
        if tokens < MILLI_PER_EVENT {
            self.milli_tokens = tokens;
            return false;
        }
        self.milli_tokens = tokens - MILLI_PER_EVENT;
        true
    }
}

/// Default map sizes; user space may override each.
pub mod sizes {
    /// Ipcache prefixes: pods cluster-wide, node addresses, ipBlocks.
    pub const IPCACHE: u32 = 65_536;
    /// Local pods with a policy endpoint entry.
    pub const POLICY_ENDPOINTS: u32 = 1_024;
    /// Allow entries over all local pods.
    pub const POLICY: u32 = 262_144;
    /// Verdict counter keys.
    pub const POLICY_VERDICTS: u32 = 16_384;
    /// Ring buffer bytes (a power of two, a multiple of the page size).
    pub const FLOW_EVENTS_BYTES: u32 = 1 << 20;
}

/// The port prefixes that cover `start..=end` exactly (host order), as
/// (port, prefix length in bits of the 16-bit port). At most 30 prefixes.
pub fn port_range_prefixes(start: u16, end: u16, out: &mut [(u16, u8); 32]) -> usize {
    let mut n = 0;
    let mut lo = start as u32;
    let end = end as u32;
    while lo <= end && n < out.len() {
        // The largest aligned block at `lo` that stays inside the range.
        let mut size: u32 = if lo == 0 {
            1 << 16
        } else {
            lo & lo.wrapping_neg()
        };
        while lo + size - 1 > end {
            size >>= 1;
        }
        out[n] = (lo as u16, 16 - size.trailing_zeros() as u8);
        n += 1;
        lo += size;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<IpcacheEntry>(), 8);
        assert_eq!(size_of::<PolicyEndpoint>(), 16);
        assert_eq!(size_of::<PolicyKey>(), 12);
        assert_eq!(prefix::FULL as usize, size_of::<PolicyKey>() * 8);
        assert_eq!(size_of::<PolicyEntry>(), 8);
        assert_eq!(size_of::<PolicyVerdictKey>(), 8);
        assert_eq!(size_of::<FlowEvent>(), 40);
        assert_eq!(size_of::<EventBucket>(), 16);
    }

    fn covered(start: u16, end: u16) -> ([bool; 65_536], usize) {
        let mut out = [(0, 0); 32];
        let n = port_range_prefixes(start, end, &mut out);
        let mut hit = [false; 65_536];
        for &(port, len) in &out[..n] {
            let size = 1u32 << (16 - len);
            assert_eq!(port as u32 % size, 0, "aligned block");
            for p in port as u32..port as u32 + size {
                assert!(!hit[p as usize], "blocks overlap");
                hit[p as usize] = true;
            }
        }
        (hit, n)
    }

    #[test]
    fn port_ranges_are_covered_exactly() {
        for (s, e) in [
            (0, 65_535),
            (1, 65_535),
            (80, 80),
            (81, 90),
            (1, 1024),
            (30_000, 32_767),
            (65_535, 65_535),
            (0, 0),
            (1, 65_534),
        ] {
            let (hit, n) = covered(s, e);
            assert!(n <= 30, "{s}-{e}: {n} prefixes");
            for (p, covered) in hit.iter().enumerate() {
                let inside = (s as usize..=e as usize).contains(&p);
                assert_eq!(*covered, inside, "{s}-{e} at {p}");
            }
        }
        assert_eq!(covered(0, 65_535).1, 1);
        assert_eq!(covered(80, 80).1, 1);
    }

    #[test]
    fn bucket_bounds_the_rate() {
        let mut b = EventBucket::default();
        let mut sent = 0;
        // A burst at one instant: the burst size, then nothing.
        for _ in 0..10_000 {
            if b.take(1_000_000_000) {
                sent += 1;
            }
        }
        assert_eq!(sent, EVENT_BURST);
        // One second later, the rate's worth again (capped by the burst).
        let mut again = 0;
        for i in 0..10_000u64 {
            if b.take(2_000_000_000 + i * 100_000) {
                again += 1;
            }
        }
        // 10,000 tries over one second earn EVENTS_PER_SECOND.
        assert!(
            (EVENTS_PER_SECOND..=EVENTS_PER_SECOND + EVENT_BURST).contains(&again),
            "{again}"
        );
    }

    #[test]
    fn endpoint_isolation_by_direction() {
        let ep = PolicyEndpoint {
            flags: endpoint_flags::EGRESS_ISOLATED,
            identity: 300,
            ingress_policy: NO_POLICY,
            egress_policy: 7,
        };
        assert!(!ep.isolated(direction::INGRESS));
        assert!(ep.isolated(direction::EGRESS));
        assert_eq!(ep.isolating_policy(direction::EGRESS), 7);
    }
}
