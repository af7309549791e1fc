//! Reading a packet's tuple and rewriting its fields with the checksums
//! kept right. Every access goes through the skb load/store helpers, so
//! nothing here depends on the packet being linear.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use kestrel_ebpf_common::{
    hdr::{
        DPORT_OFF, IP_CSUM_OFF, IP_DADDR_OFF, IP_MF_AND_OFFSET, IP_OFF, IP_SADDR_OFF, IP_TTL_OFF,
        IPV4_VIHL_NO_OPTIONS, SPORT_OFF, TCP_CSUM_OFF, TCP_FLAGS_OFF, UDP_CSUM_OFF,
    },
    packet::{ETH_P_IP, ETH_TYPE_OFFSET, IPPROTO_TCP, IPPROTO_UDP},
};

/// An IPv4 header without options, as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    vihl: u8,
    tos: u8,
    tot_len_be: u16,
    id_be: u16,
    frag_off_be: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr_be: u32,
    daddr_be: u32,
}

/// The fields of a packet the programs decide on.
#[derive(Clone, Copy)]
pub struct Packet {
    pub saddr_be: u32,
    pub daddr_be: u32,
    /// 0 unless TCP or UDP.
    pub sport_be: u16,
    /// 0 unless TCP or UDP.
    pub dport_be: u16,
    pub proto: u8,
    /// The TCP flags byte; 0 unless TCP.
    pub tcp_flags: u8,
    pub ttl: u8,
    pub tos: u8,
    /// IPv4 total length, host order.
    pub tot_len: u16,
}

impl Packet {
    /// Whether the packet carries ports (TCP or UDP).
    pub const fn has_ports(&self) -> bool {
        self.proto == IPPROTO_TCP || self.proto == IPPROTO_UDP
    }
}

/// The packet's tuple, or `None` for what the programs leave to the
/// kernel: non-IPv4, IPv4 with options, and fragments (only the first
/// carries ports, so they cannot be translated one by one).
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Option<Packet>, i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(ETH_TYPE_OFFSET)?);
    if ethertype != ETH_P_IP {
        return Ok(None);
    }
    let ip: Ipv4Hdr = ctx.load(IP_OFF)?;
    if ip.vihl != IPV4_VIHL_NO_OPTIONS || u16::from_be(ip.frag_off_be) & IP_MF_AND_OFFSET != 0 {
        return Ok(None);
    }
    let mut p = Packet {
        saddr_be: ip.saddr_be,
        daddr_be: ip.daddr_be,
        sport_be: 0,
        dport_be: 0,
        proto: ip.proto,
        tcp_flags: 0,
        ttl: ip.ttl,
        tos: ip.tos,
        tot_len: u16::from_be(ip.tot_len_be),
    };
    if p.has_ports() {
        let ports: [u16; 2] = ctx.load(SPORT_OFF)?;
        p.sport_be = ports[0];
        p.dport_be = ports[1];
        if p.proto == IPPROTO_TCP {
            p.tcp_flags = ctx.load(TCP_FLAGS_OFF)?;
        }
    }
    Ok(Some(p))
}

/// Offset of the L4 checksum and the flags for `bpf_l4_csum_replace`;
/// `None` for protocols without one we maintain.
#[inline(always)]
fn l4_csum(proto: u8) -> Option<(usize, u64)> {
    match proto {
        IPPROTO_TCP => Some((TCP_CSUM_OFF, 0)),
        // A zero UDP checksum means "none" and must stay zero.
        IPPROTO_UDP => Some((UDP_CSUM_OFF, u64::from(BPF_F_MARK_MANGLED_0))),
        _ => None,
    }
}

/// Rewrites the source (`source`) or destination address to `new_be`,
/// updating the IP checksum and the L4 pseudo-header checksum.
#[inline(always)]
pub fn set_addr(
    ctx: &TcContext,
    proto: u8,
    source: bool,
    old_be: u32,
    new_be: u32,
) -> Result<(), i64> {
    if old_be == new_be {
        return Ok(());
    }
    if let Some((off, flags)) = l4_csum(proto) {
        ctx.l4_csum_replace(
            off,
            u64::from(old_be),
            u64::from(new_be),
            flags | u64::from(BPF_F_PSEUDO_HDR) | 4,
        )?;
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_be), u64::from(new_be), 4)?;
    let off = if source { IP_SADDR_OFF } else { IP_DADDR_OFF };
    ctx.store(off, &new_be, 0)
}

/// Rewrites the source or destination port to `new_be`, updating the L4
/// checksum.
#[inline(always)]
pub fn set_port(
    ctx: &TcContext,
    proto: u8,
    source: bool,
    old_be: u16,
    new_be: u16,
) -> Result<(), i64> {
    if old_be == new_be {
        return Ok(());
    }
    if let Some((off, flags)) = l4_csum(proto) {
        ctx.l4_csum_replace(off, u64::from(old_be), u64::from(new_be), flags | 2)?;
    }
    let off = if source { SPORT_OFF } else { DPORT_OFF };
    ctx.store(off, &new_be, 0)
}

/// Replaces the 16-bit word at `off` inside the IP header, fixing the
/// header checksum.
#[inline(always)]
pub fn set_ip_word(ctx: &TcContext, off: usize, old: u16, new: u16) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 2)?;
    ctx.store(off, &new, 0)
}

/// Sets the TTL of a packet whose TTL and protocol are `ttl` and `proto`.
#[inline(always)]
pub fn set_ttl(ctx: &TcContext, ttl: u8, proto: u8, new_ttl: u8) -> Result<(), i64> {
    set_ip_word(
        ctx,
        IP_TTL_OFF,
        u16::from_ne_bytes([ttl, proto]),
        u16::from_ne_bytes([new_ttl, proto]),
    )
}

/// Writes the Ethernet destination and source.
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), i64> {
    let macs: [[u8; 6]; 2] = [*dst, *src];
    ctx.store(0, &macs, 0)
}

/// Swaps the Ethernet destination and source, to send a frame back.
#[inline(always)]
pub fn swap_macs(ctx: &TcContext) -> Result<(), i64> {
    let macs: [[u8; 6]; 2] = ctx.load(0)?;
    set_macs(ctx, &macs[1], &macs[0])
}
