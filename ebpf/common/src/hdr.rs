//! IPv4, TCP, UDP and ICMP header offsets for the per-packet programs, and
//! the one's-complement checksum arithmetic they use when they build a
//! packet from scratch (the ICMP error for a service without backends).
//!
//! Offsets are from the start of the Ethernet frame and assume an IPv4
//! header without options (IHL 5): the programs pass any other packet to
//! the kernel's stack untouched.

use crate::packet::ETH_HLEN;

/// Length of an IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// The version/IHL byte of an IPv4 header without options.
pub const IPV4_VIHL_NO_OPTIONS: u8 = 0x45;
/// Offset of the IPv4 header.
pub const IP_OFF: usize = ETH_HLEN;
/// Offset of the IPv4 total length.
pub const IP_TOT_LEN_OFF: usize = IP_OFF + 2;
/// Offset of the IPv4 flags and fragment offset.
pub const IP_FRAG_OFF: usize = IP_OFF + 6;
/// Offset of the IPv4 TTL (followed by the protocol byte).
pub const IP_TTL_OFF: usize = IP_OFF + 8;
/// Offset of the IPv4 header checksum.
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
/// Offset of the IPv4 source address.
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
/// Offset of the IPv4 destination address.
pub const IP_DADDR_OFF: usize = IP_OFF + 16;
/// Offset of the L4 header.
pub const L4_OFF: usize = IP_OFF + IPV4_HLEN;
/// Offset of the TCP/UDP source port.
pub const SPORT_OFF: usize = L4_OFF;
/// Offset of the TCP/UDP destination port.
pub const DPORT_OFF: usize = L4_OFF + 2;
/// Offset of the TCP sequence number.
pub const TCP_SEQ_OFF: usize = L4_OFF + 4;
/// Offset of the TCP acknowledgement number.
pub const TCP_ACK_OFF: usize = L4_OFF + 8;
/// Offset of the TCP data-offset byte (followed by the flags byte).
pub const TCP_DOFF_OFF: usize = L4_OFF + 12;
/// Offset of the TCP flags byte.
pub const TCP_FLAGS_OFF: usize = L4_OFF + 13;
/// Offset of the TCP window.
pub const TCP_WINDOW_OFF: usize = L4_OFF + 14;
/// Offset of the TCP checksum.
pub const TCP_CSUM_OFF: usize = L4_OFF + 16;
/// Length of a TCP header without options.
pub const TCP_HLEN: usize = 20;
/// Offset of the UDP checksum.
pub const UDP_CSUM_OFF: usize = L4_OFF + 6;
/// Length of a UDP header.
pub const UDP_HLEN: usize = 8;
/// Length of an ICMP header.
pub const ICMP_HLEN: usize = 8;
/// ICMP type "destination unreachable".
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP code "port unreachable": what a host answers for a closed UDP port,
/// and what a connected UDP socket reports as `ECONNREFUSED`.
pub const ICMP_PORT_UNREACH: u8 = 3;
/// The IPv4 "more fragments" flag and fragment offset bits (host order).
pub const IP_MF_AND_OFFSET: u16 = 0x3fff;

/// TCP flag bits of the flags byte.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// Whether a TCP flags byte opens a connection: SYN without ACK.
pub const fn is_tcp_open(flags: u8) -> bool {
    flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
}

/// Adds big-endian 16-bit words of `bytes` (an odd last byte is padded with
/// zero) to `sum` without folding.
pub fn sum_words(bytes: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if i < bytes.len() {
        sum += u32::from(bytes[i]) << 8;
    }
    sum
}

/// Folds a 32-bit one's-complement sum to 16 bits and complements it: the
/// value to store in a checksum field, in host order.
pub const fn fold(mut sum: u32) -> u16 {
    // Two rounds always suffice: after the first, the sum is at most
    // 0xffff + 0xffff.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The Internet checksum of `bytes` (RFC 1071), in host order; store it
/// with `to_be_bytes`. The checksum field itself must be zero in `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    fold(sum_words(bytes, 0))
}

/// Whether `bytes` (checksum field included) verify.
pub fn verifies(bytes: &[u8]) -> bool {
    fold(sum_words(bytes, 0)) == 0
}

/// A minimal IPv4 header without options, in wire order.
pub fn ipv4_header(
    tot_len: u16,
    ttl: u8,
    proto: u8,
    saddr_be: u32,
    daddr_be: u32,
) -> [u8; IPV4_HLEN] {
    let mut h = [0u8; IPV4_HLEN];
    h[0] = IPV4_VIHL_NO_OPTIONS;
    h[2..4].copy_from_slice(&tot_len.to_be_bytes());
    h[8] = ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&saddr_be.to_ne_bytes());
    h[16..20].copy_from_slice(&daddr_be.to_ne_bytes());
    let csum = checksum(&h);
    h[10..12].copy_from_slice(&csum.to_be_bytes());
    h
}

/// Length of the ICMP "port unreachable" message the programs build: the
/// ICMP header, then the offending packet's IP header and first 8 bytes.
pub const ICMP_UNREACH_LEN: usize = ICMP_HLEN + IPV4_HLEN + UDP_HLEN;

/// The ICMP "port unreachable" message quoting `quoted` (the offending IP
/// header and its first 8 L4 bytes), checksum included.
pub fn icmp_port_unreachable(quoted: &[u8; IPV4_HLEN + UDP_HLEN]) -> [u8; ICMP_UNREACH_LEN] {
    let mut m = [0u8; ICMP_UNREACH_LEN];
    m[0] = ICMP_DEST_UNREACH;
    m[1] = ICMP_PORT_UNREACH;
    m[ICMP_HLEN..].copy_from_slice(quoted);
    let csum = checksum(&m);
    m[2..4].copy_from_slice(&csum.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP SYN from 10.42.1.5:40000 to 10.43.0.10:80, as captured.
    const IP_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 10, 42, 1, 5, 10,
        43, 0, 10,
    ];

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3's worked example: the sum is ddf2, so the
        // checksum is its complement.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum_words(&bytes, 0), 0x2ddf0);
        assert_eq!(checksum(&bytes), !0xddf2);
    }

    #[test]
    fn odd_lengths_pad_with_zero() {
        assert_eq!(sum_words(&[0xab], 0), 0xab00);
        assert_eq!(
            checksum(&[0x12, 0x34, 0x56]),
            checksum(&[0x12, 0x34, 0x56, 0x00])
        );
    }

    #[test]
    fn a_header_with_its_checksum_verifies() {
        let mut h = IP_HEADER;
        let csum = checksum(&h);
        h[10..12].copy_from_slice(&csum.to_be_bytes());
        assert!(verifies(&h));
        h[8] -= 1;
        assert!(!verifies(&h), "a changed TTL breaks it");
    }

    #[test]
    fn built_ipv4_headers_verify_and_carry_the_fields() {
        let s = u32::from_ne_bytes([10, 43, 0, 10]);
        let d = u32::from_ne_bytes([10, 42, 1, 5]);
        let h = ipv4_header(56, 64, 1, s, d);
        assert!(verifies(&h));
        assert_eq!(h[0], 0x45);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 56);
        assert_eq!((h[8], h[9]), (64, 1));
        assert_eq!(&h[12..16], &[10, 43, 0, 10]);
        assert_eq!(&h[16..20], &[10, 42, 1, 5]);
    }

    #[test]
    fn port_unreachable_quotes_and_verifies() {
        let mut quoted = [0u8; 28];
        quoted[..20].copy_from_slice(&IP_HEADER);
        quoted[20..].copy_from_slice(&[0x9c, 0x40, 0x00, 0x35, 0x00, 0x10, 0xbe, 0xef]);
        let m = icmp_port_unreachable(&quoted);
        assert_eq!((m[0], m[1]), (3, 3));
        assert_eq!(&m[4..8], &[0, 0, 0, 0]);
        assert_eq!(&m[8..], &quoted);
        assert!(verifies(&m));
    }

    #[test]
    fn fold_handles_carries() {
        assert_eq!(fold(0xffff), 0);
        assert_eq!(fold(0x1_fffe), 0);
        assert_eq!(fold(0), 0xffff);
        assert_eq!(fold(0xffff_ffff), 0);
    }

    #[test]
    fn only_a_bare_syn_opens() {
        use tcp_flags::*;
        assert!(is_tcp_open(SYN));
        assert!(!is_tcp_open(SYN | ACK));
        assert!(!is_tcp_open(ACK));
        assert!(is_tcp_open(SYN | 0x40), "ECN bits do not matter");
    }

    #[test]
    fn offsets_match_the_wire_layout() {
        assert_eq!(IP_SADDR_OFF, 26);
        assert_eq!(IP_DADDR_OFF, 30);
        assert_eq!(L4_OFF, 34);
        assert_eq!(TCP_CSUM_OFF, 50);
        assert_eq!(UDP_CSUM_OFF, 40);
        assert_eq!(TCP_FLAGS_OFF, 47);
    }
}
