//! Header layout constants and pure classification helpers.
//!
//! These run in the kernel (called from the TC programs) and in unit tests, so
//! they take plain integers and never touch packet memory themselves.

use crate::ProtoSlot;

/// Length of an Ethernet II header.
pub const ETH_HLEN: usize = 14;
/// Offset of the EtherType field in an Ethernet II header.
pub const ETH_TYPE_OFFSET: usize = 12;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Offset of the protocol field inside an IPv4 header.
pub const IPV4_PROTO_OFFSET: usize = 9;
/// Offset of the next-header field inside an IPv6 header.
pub const IPV6_NEXT_HDR_OFFSET: usize = 6;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// Where the L4 protocol byte sits, given the EtherType in host order.
///
/// Returns `None` for frames that are not IP.
pub const fn l4_proto_offset(ethertype: u16) -> Option<usize> {
    match ethertype {
        ETH_P_IP => Some(ETH_HLEN + IPV4_PROTO_OFFSET),
        ETH_P_IPV6 => Some(ETH_HLEN + IPV6_NEXT_HDR_OFFSET),
        _ => None,
    }
}

/// The counter slot for an IP protocol number.
///
/// IPv6 extension headers are counted as [`ProtoSlot::OTHER_IP`]: walking the
/// header chain would need a loop, and the fast path has none.
pub const fn slot_for_ip_proto(proto: u8) -> ProtoSlot {
    match proto {
        IPPROTO_TCP => ProtoSlot::TCP,
        IPPROTO_UDP => ProtoSlot::UDP,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => ProtoSlot::ICMP,
        _ => ProtoSlot::OTHER_IP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_point_at_the_protocol_byte() {
        assert_eq!(l4_proto_offset(ETH_P_IP), Some(23));
        assert_eq!(l4_proto_offset(ETH_P_IPV6), Some(20));
        assert_eq!(l4_proto_offset(0x0806), None, "ARP is not IP");
    }

    #[test]
    fn protocols_map_to_distinct_slots() {
        assert_eq!(slot_for_ip_proto(IPPROTO_TCP), ProtoSlot::TCP);
        assert_eq!(slot_for_ip_proto(IPPROTO_UDP), ProtoSlot::UDP);
        assert_eq!(slot_for_ip_proto(IPPROTO_ICMP), ProtoSlot::ICMP);
        assert_eq!(slot_for_ip_proto(IPPROTO_ICMPV6), ProtoSlot::ICMP);
        assert_eq!(slot_for_ip_proto(132), ProtoSlot::OTHER_IP, "SCTP");
        for slot in ProtoSlot::ALL {
            assert!(slot.0 < ProtoSlot::COUNT);
        }
    }

    #[test]
    fn slot_names_are_unique() {
        for (i, a) in ProtoSlot::ALL.iter().enumerate() {
            for b in &ProtoSlot::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
