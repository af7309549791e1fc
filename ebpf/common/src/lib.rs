//! Map keys and values shared by Kestrel's eBPF programs and user space.
//!
//! Every type here is `#[repr(C)]` with explicit padding and holds only
//! integers: no `bool`, `Option` or enums, because the kernel and user space
//! must agree on every byte. With the `user` feature each type also
//! implements [`aya::Pod`] so user space can read and write maps of it.
#![no_std]
#![deny(unsafe_code)]

pub mod ct;
pub mod drop;
pub mod hdr;
pub mod lb;
pub mod packet;
pub mod policy;
pub mod route;

/// Names of maps that user space opens by name.
pub mod map_names {
    /// Per-CPU array of [`crate::PacketCount`], indexed by [`crate::ProtoSlot`].
    pub const PROTO_COUNTERS: &str = "PROTO_COUNTERS";
    /// Hash of [`crate::lb::ServiceKey`] → [`crate::lb::ServiceValue`].
    pub const SERVICES: &str = "SERVICES";
    /// Hash of `u32` backend id → [`crate::lb::Backend`].
    pub const BACKENDS: &str = "BACKENDS";
    /// Hash of `u16` reverse-NAT id → [`crate::lb::RevNat`].
    pub const REV_NAT: &str = "REV_NAT";
    /// LRU hash of [`crate::lb::SockRevKey`] → [`crate::lb::SockRevValue`].
    pub const SOCK_REV_NAT: &str = "SOCK_REV_NAT";
    /// LRU hash of [`crate::lb::AffinityKey`] → [`crate::lb::AffinityValue`].
    pub const AFFINITY: &str = "AFFINITY";
    /// Per-CPU hash of `u32` backend id → `u64` new connections sent to it.
    pub const BACKEND_CONNS: &str = "BACKEND_CONNS";
    /// LRU hash of [`crate::ct::CtKey`] → [`crate::ct::CtEntry`].
    pub const CONNTRACK: &str = "CONNTRACK";
    /// Hash of `u32` pod address → [`crate::route::LocalEndpoint`].
    pub const ENDPOINTS: &str = "ENDPOINTS";
    /// One-entry array of [`crate::route::NodeConfig`].
    pub const NODE_CONFIG: &str = "NODE_CONFIG";
    /// Per-CPU array of `u64`, indexed by [`crate::drop::DropReason`].
    pub const DROPS: &str = "DROPS";
    /// LPM trie of address prefix → [`crate::policy::IpcacheEntry`].
    pub const IPCACHE: &str = "IPCACHE";
    /// Hash of `u32` local pod address → [`crate::policy::PolicyEndpoint`].
    pub const POLICY_ENDPOINTS: &str = "POLICY_ENDPOINTS";
    /// LPM trie of [`crate::policy::PolicyKey`] → [`crate::policy::PolicyEntry`].
    pub const POLICY: &str = "POLICY";
    /// Per-CPU hash of [`crate::policy::PolicyVerdictKey`] → `u64`.
    pub const POLICY_VERDICTS: &str = "POLICY_VERDICTS";
    /// Ring buffer of [`crate::policy::FlowEvent`].
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    /// Per-CPU array of `u64`, indexed by [`crate::policy::event_stat`].
    pub const FLOW_EVENT_STATS: &str = "FLOW_EVENT_STATS";
    /// Per-CPU array of one [`crate::policy::EventBucket`].
    pub const FLOW_EVENT_BUCKET: &str = "FLOW_EVENT_BUCKET";
}

/// Names of programs that user space loads by name.
pub mod program_names {
    /// The TC classifier that counts packets per protocol.
    pub const PROTO_COUNTER: &str = "proto_counter";
    /// TC ingress of a pod's host-side veth: what the pod sends.
    pub const TC_FROM_POD: &str = "tc_from_pod";
    /// TC ingress of the node's uplink.
    pub const TC_FROM_UPLINK: &str = "tc_from_uplink";
    /// TC egress of a pod's host-side veth: what the kernel's stack
    /// delivers to the pod (the redirects skip it).
    pub const TC_TO_POD: &str = "tc_to_pod";
}

/// Index into the protocol counter array.
///
/// A plain `u32` newtype rather than an enum: the value is a map index shared
/// with the kernel, and an out-of-range integer must never be undefined behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct ProtoSlot(pub u32);

impl ProtoSlot {
    /// IPv4 or IPv6 TCP.
    pub const TCP: Self = Self(0);
    /// IPv4 or IPv6 UDP.
    pub const UDP: Self = Self(1);
    /// ICMP or ICMPv6.
    pub const ICMP: Self = Self(2);
    /// Any other IP protocol.
    pub const OTHER_IP: Self = Self(3);
    /// Not IP at all (ARP, LLDP, ...).
    pub const NON_IP: Self = Self(4);
    /// Number of slots; the size of the counter array.
    pub const COUNT: u32 = 5;

    /// Every slot, in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::TCP,
        Self::UDP,
        Self::ICMP,
        Self::OTHER_IP,
        Self::NON_IP,
    ];

    /// A short lowercase name, used as a metrics label.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "tcp",
            1 => "udp",
            2 => "icmp",
            3 => "other_ip",
            _ => "non_ip",
        }
    }
}

/// Per-CPU packet and byte counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PacketCount {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen, counting from the Ethernet header.
    pub bytes: u64,
}

#[cfg(feature = "user")]
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
mod user {
    // SAFETY: `PacketCount` is `#[repr(C)]`, made of two `u64`s with no
    // padding, and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::PacketCount {}

    // SAFETY: `#[repr(C)]` integers with no implicit padding (sizes asserted
    // in `lb::tests`); every bit pattern is valid.
    unsafe impl aya::Pod for crate::lb::ServiceKey {}
    // SAFETY: `#[repr(C)]` integers with no implicit padding (sizes asserted
    // in `lb::tests`); every bit pattern is valid.
    unsafe impl aya::Pod for crate::lb::ServiceValue {}
    // SAFETY: `#[repr(C)]` integers with no implicit padding (sizes asserted
    // in `lb::tests`); every bit pattern is valid.
    unsafe impl aya::Pod for crate::lb::Backend {}
    // SAFETY: `#[repr(C)]` integers with no implicit padding (sizes asserted
    // in `lb::tests`); every bit pattern is valid.
    unsafe impl aya::Pod for crate::lb::RevNat {}
    // SAFETY: `#[repr(C)]` integers with no implicit padding (sizes asserted
    // in `lb::tests`); every bit pattern is valid.
    unsafe impl aya::Pod for crate::lb::SockRevKey {}
    // SAFETY: `#[repr(C)]` integers with no implicit padding (sizes asserted
    // in `lb::tests`); every bit pattern is valid.
    unsafe impl aya::Pod for crate::lb::SockRevValue {}
    // SAFETY: `#[repr(C)]` integers with no implicit padding (sizes asserted
    // in `lb::tests`); every bit pattern is valid.
    unsafe impl aya::Pod for crate::lb::AffinityKey {}
    // SAFETY: `#[repr(C)]` integers with no implicit padding (sizes asserted
    // in `lb::tests`); every bit pattern is valid.
    unsafe impl aya::Pod for crate::lb::AffinityValue {}

    // SAFETY: `#[repr(C)]` integers with no implicit padding (sizes asserted
    // in `ct::tests`); every bit pattern is valid.
    unsafe impl aya::Pod for crate::ct::CtKey {}
    // SAFETY: `#[repr(C)]` integers with no implicit padding (sizes asserted
    // in `ct::tests`); every bit pattern is valid.
    unsafe impl aya::Pod for crate::ct::CtEntry {}
    // SAFETY: `#[repr(C)]` integers and byte arrays with no implicit padding
    // (sizes asserted in `route::tests`); every bit pattern is valid.
    unsafe impl aya::Pod for crate::route::LocalEndpoint {}
    // SAFETY: `#[repr(C)]` integers with no implicit padding (sizes asserted
    // in `route::tests`); every bit pattern is valid.
    unsafe impl aya::Pod for crate::route::NodeConfig {}

    // SAFETY: `#[repr(C)]` integers with no implicit padding (sizes asserted
    // in `policy::tests`); every bit pattern is valid.
    unsafe impl aya::Pod for crate::policy::IpcacheEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::PolicyEndpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::PolicyKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::PolicyEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::PolicyVerdictKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::FlowEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::EventBucket {}
}
