//! What the per-packet programs know about the node: its pods (the local
//! endpoint map) and its addresses and ranges (the node configuration).

/// Value of the local endpoint map, keyed by the pod's IPv4 address
/// (`u32`, network order): where to deliver a packet for a pod on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct LocalEndpoint {
    /// Index of the pod's host-side veth in the node's namespace;
    /// `bpf_redirect_peer` to it lands in the pod.
    pub ifindex: u32,
    /// The pod end's MAC: the destination of frames delivered to the pod.
    pub pod_mac: [u8; 6],
    /// The host end's MAC: the pod's gateway, the source of those frames.
    pub host_mac: [u8; 6],
}

/// An IPv4 prefix as a network address and a mask, both in network order,
/// so a membership test is one AND and one compare on raw packet words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Ipv4Cidr {
    /// Network address (host bits zero).
    pub net_be: u32,
    /// Netmask.
    pub mask_be: u32,
}

impl Ipv4Cidr {
    /// The prefix of `addr_be` with `len` bits (capped at 32).
    pub const fn new(addr_be: u32, len: u8) -> Self {
        let mask = if len == 0 {
            0
        } else if len >= 32 {
            u32::MAX
        } else {
            u32::MAX << (32 - len as u32)
        };
        let mask_be = mask.to_be();
        Self {
            net_be: addr_be & mask_be,
            mask_be,
        }
    }

    /// Whether `addr_be` is inside. An unset prefix (mask 0) is treated as
    /// empty rather than as 0.0.0.0/0, so a half-written configuration
    /// never captures every address.
    pub const fn contains(&self, addr_be: u32) -> bool {
        self.mask_be != 0 && addr_be & self.mask_be == self.net_be
    }

    /// The prefix length.
    pub const fn len(&self) -> u8 {
        u32::from_be(self.mask_be).count_ones() as u8
    }

    /// Whether the prefix is unset.
    pub const fn is_empty(&self) -> bool {
        self.mask_be == 0
    }
}

/// Bits of [`NodeConfig::flags`].
pub mod node_flags {
    /// Masquerade pods' flows that leave the cluster to the node's address.
    pub const MASQUERADE: u32 = 1 << 0;
}

/// The node's addresses and ranges: the single entry of the node
/// configuration array. While `node_ip_be` is 0 (not configured yet) the
/// programs pass every packet to the kernel untouched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct NodeConfig {
    /// The node's address on the uplink: NodePorts answer on it, and SNAT
    /// and masquerade use it as the new source.
    pub node_ip_be: u32,
    /// [`node_flags`].
    pub flags: u32,
    /// This node's pod range.
    pub pod_cidr: Ipv4Cidr,
    /// Every node's pod ranges together.
    pub cluster_cidr: Ipv4Cidr,
    /// The ClusterIP range.
    pub service_cidr: Ipv4Cidr,
    /// Lowest NodePort (host order).
    pub node_port_min: u16,
    /// Highest NodePort (host order).
    pub node_port_max: u16,
}

/// Where an address sits, as the per-packet programs see it.
pub mod dest {
    /// The node itself.
    pub const NODE: u8 = 0;
    /// A pod (this node's or another's).
    pub const POD: u8 = 1;
    /// A ClusterIP.
    pub const SERVICE: u8 = 2;
    /// Anything else: outside the cluster.
    pub const WORLD: u8 = 3;
}

impl NodeConfig {
    /// Whether the configuration has been written.
    pub const fn is_set(&self) -> bool {
        self.node_ip_be != 0
    }

    /// Which [`dest`] class `addr_be` belongs to.
    pub const fn classify(&self, addr_be: u32) -> u8 {
        if addr_be == self.node_ip_be {
            dest::NODE
        } else if self.cluster_cidr.contains(addr_be) || self.pod_cidr.contains(addr_be) {
            dest::POD
        } else if self.service_cidr.contains(addr_be) {
            dest::SERVICE
        } else {
            dest::WORLD
        }
    }

    /// Whether a pod's new flow to `addr_be` is masqueraded.
    pub const fn masquerades_to(&self, addr_be: u32) -> bool {
        self.flags & node_flags::MASQUERADE != 0 && self.classify(addr_be) == dest::WORLD
    }

    /// Whether `port` (host order) is in the NodePort range.
    pub const fn is_node_port(&self, port: u16) -> bool {
        port >= self.node_port_min && port <= self.node_port_max && self.node_port_max != 0
    }
}

/// Default sizes of the per-packet programs' own maps.
pub mod sizes {
    /// Local endpoints: pods on one node (the kubelet default is 110).
    pub const ENDPOINTS: u32 = 4_096;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
        u32::from_ne_bytes([a, b, c, d])
    }

    fn config() -> NodeConfig {
        NodeConfig {
            node_ip_be: ip(10, 41, 0, 10),
            flags: node_flags::MASQUERADE,
            pod_cidr: Ipv4Cidr::new(ip(10, 42, 0, 0), 24),
            cluster_cidr: Ipv4Cidr::new(ip(10, 42, 0, 0), 16),
            service_cidr: Ipv4Cidr::new(ip(10, 43, 0, 0), 16),
            node_port_min: 30000,
            node_port_max: 32767,
        }
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<LocalEndpoint>(), 16);
        assert_eq!(size_of::<Ipv4Cidr>(), 8);
        assert_eq!(size_of::<NodeConfig>(), 36);
    }

    #[test]
    fn prefixes_contain_what_they_should() {
        let c = Ipv4Cidr::new(ip(10, 42, 7, 9), 16);
        assert_eq!(c.net_be, ip(10, 42, 0, 0));
        assert_eq!(c.len(), 16);
        assert!(c.contains(ip(10, 42, 255, 1)));
        assert!(!c.contains(ip(10, 43, 0, 1)));
        let host = Ipv4Cidr::new(ip(10, 41, 0, 10), 32);
        assert!(host.contains(ip(10, 41, 0, 10)) && !host.contains(ip(10, 41, 0, 11)));
        assert_eq!(Ipv4Cidr::new(ip(1, 2, 3, 4), 40).len(), 32);
        let unset = Ipv4Cidr::new(ip(10, 0, 0, 0), 0);
        assert!(unset.is_empty() && !unset.contains(0) && !unset.contains(ip(10, 0, 0, 1)));
    }

    #[test]
    fn addresses_are_classified() {
        let c = config();
        assert_eq!(c.classify(ip(10, 41, 0, 10)), dest::NODE);
        assert_eq!(c.classify(ip(10, 42, 0, 5)), dest::POD);
        assert_eq!(
            c.classify(ip(10, 42, 9, 5)),
            dest::POD,
            "another node's pod"
        );
        assert_eq!(c.classify(ip(10, 43, 0, 10)), dest::SERVICE);
        assert_eq!(c.classify(ip(10, 41, 0, 11)), dest::WORLD, "another node");
        assert_eq!(c.classify(ip(8, 8, 8, 8)), dest::WORLD);
    }

    #[test]
    fn only_the_world_is_masqueraded_and_only_when_asked() {
        let mut c = config();
        assert!(c.masquerades_to(ip(8, 8, 8, 8)));
        assert!(!c.masquerades_to(ip(10, 42, 3, 3)));
        assert!(!c.masquerades_to(ip(10, 43, 0, 1)));
        assert!(!c.masquerades_to(ip(10, 41, 0, 10)));
        c.flags = 0;
        assert!(!c.masquerades_to(ip(8, 8, 8, 8)));
    }

    #[test]
    fn node_port_range_is_inclusive_and_unset_means_none() {
        let mut c = config();
        assert!(c.is_node_port(30000) && c.is_node_port(32767));
        assert!(!c.is_node_port(29999) && !c.is_node_port(32768));
        c.node_port_min = 0;
        c.node_port_max = 0;
        assert!(!c.is_node_port(0));
        assert!(!NodeConfig::default().is_set());
    }
}
