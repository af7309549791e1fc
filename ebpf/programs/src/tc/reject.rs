//! Answers for a service without a ready backend, built in place from the
//! offending packet and sent back out of the interface it came in on: a
//! TCP SYN gets a RST (the client's `connect` fails at once with
//! "connection refused"), a UDP datagram an ICMP port unreachable (a
//! connected socket's next call fails with `ECONNREFUSED`).
//!
//! The RST is made by changing fields of the SYN with the checksum
//! helpers, never by writing a fresh checksum, so it is right whatever
//! checksum state the skb is in (a pod's SYN is CHECKSUM_PARTIAL). The ICMP
//! message is new bytes with checksums computed here; it is sound for
//! delivery to a pod or over a veth, where partial checksums are trusted,
//! and for frames that came from a NIC (their skbs are never partial).

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT},
    helpers::generated::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use kestrel_ebpf_common::{
    hdr::{
        ICMP_UNREACH_LEN, IP_OFF, IP_SADDR_OFF, IP_TOT_LEN_OFF, IPV4_HLEN, L4_OFF, SPORT_OFF,
        TCP_ACK_OFF, TCP_CSUM_OFF, TCP_DOFF_OFF, TCP_HLEN, TCP_SEQ_OFF, TCP_WINDOW_OFF, UDP_HLEN,
        icmp_port_unreachable, ipv4_header, is_tcp_open, tcp_flags,
    },
    packet::{ETH_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use super::pkt::{self, Packet};

/// TTL of the answers.
const TTL: u8 = 64;
/// Most TCP option words a header can carry.
const MAX_OPTION_WORDS: usize = 10;

/// Answers packet `p` in place and redirects the answer out of `ifindex`.
/// `Ok(None)` when the packet gets no answer (not a bare SYN, a SYN with
/// data, neither TCP nor UDP).
#[inline(always)]
pub fn answer(ctx: &TcContext, p: &Packet, ifindex: u32) -> Result<Option<i32>, i64> {
    let built = match p.proto {
        IPPROTO_TCP if is_tcp_open(p.tcp_flags) => tcp_rst(ctx, p)?,
        IPPROTO_UDP => icmp_unreachable(ctx, p)?,
        _ => false,
    };
    if !built {
        return Ok(None);
    }
    pkt::swap_macs(ctx)?;
    // SAFETY: a helper taking plain integers; it only marks the skb.
    let v = unsafe { bpf_redirect(ifindex, 0) } as i32;
    if v != TC_ACT_REDIRECT {
        return Err(i64::from(v));
    }
    Ok(Some(v))
}

/// Replaces a field of the TCP header, keeping the checksum right.
#[inline(always)]
fn tcp_word<T: Copy + Into<u64> + PartialEq>(
    ctx: &TcContext,
    off: usize,
    old: T,
    new: T,
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    let size = core::mem::size_of::<T>() as u64;
    ctx.l4_csum_replace(TCP_CSUM_OFF, old.into(), new.into(), size)?;
    ctx.store(off, &new, 0)
}

/// Turns a SYN (without data) into the RST|ACK that refuses it.
#[inline(always)]
fn tcp_rst(ctx: &TcContext, p: &Packet) -> Result<bool, i64> {
    let doff: u8 = ctx.load(TCP_DOFF_OFF)?;
    let hlen = usize::from(doff >> 4) * 4;
    if hlen < TCP_HLEN || usize::from(p.tot_len) != IPV4_HLEN + hlen {
        // Options are fine (they are dropped below); data is not: a
        // TCP Fast Open SYN is left unanswered.
        return Ok(false);
    }
    // Zero the options first so that trimming them off leaves the sum
    // (and so the checksum) unchanged.
    let mut i = 0;
    while i < MAX_OPTION_WORDS {
        let off = L4_OFF + TCP_HLEN + i * 4;
        if off + 4 > L4_OFF + hlen {
            break;
        }
        let w: u32 = ctx.load(off)?;
        tcp_word(ctx, off, w, 0u32)?;
        i += 1;
    }
    let seq: u32 = ctx.load(TCP_SEQ_OFF)?;
    let ack: u32 = ctx.load(TCP_ACK_OFF)?;
    tcp_word(ctx, TCP_SEQ_OFF, seq, 0u32)?;
    tcp_word(
        ctx,
        TCP_ACK_OFF,
        ack,
        u32::from_be(seq).wrapping_add(1).to_be(),
    )?;
    let doff_flags: u16 = ctx.load(TCP_DOFF_OFF)?;
    let rst = u16::from_ne_bytes([((TCP_HLEN / 4) as u8) << 4, tcp_flags::RST | tcp_flags::ACK]);
    tcp_word(ctx, TCP_DOFF_OFF, doff_flags, rst)?;
    // Window and urgent pointer.
    let tail: [u16; 2] = ctx.load(TCP_WINDOW_OFF)?;
    tcp_word(ctx, TCP_WINDOW_OFF, tail[0], 0u16)?;
    tcp_word(ctx, TCP_WINDOW_OFF + 4, tail[1], 0u16)?;
    // The TCP length in the pseudo header shrinks to the bare header.
    ctx.l4_csum_replace(
        TCP_CSUM_OFF,
        u64::from((hlen as u16).to_be()),
        u64::from((TCP_HLEN as u16).to_be()),
        u64::from(BPF_F_PSEUDO_HDR) | 2,
    )?;
    let tot_len = (IPV4_HLEN + TCP_HLEN) as u16;
    pkt::set_ip_word(ctx, IP_TOT_LEN_OFF, p.tot_len.to_be(), tot_len.to_be())?;
    pkt::set_ttl(ctx, p.ttl, p.proto, TTL)?;
    // Swapping both addresses, or both ports, leaves every sum unchanged.
    ctx.store(IP_SADDR_OFF, &[p.daddr_be, p.saddr_be], 0)?;
    ctx.store(SPORT_OFF, &[p.dport_be, p.sport_be], 0)?;
    trim(ctx, ETH_HLEN + usize::from(tot_len))?;
    Ok(true)
}

/// Turns a UDP datagram into the ICMP port unreachable that refuses it.
#[inline(always)]
fn icmp_unreachable(ctx: &TcContext, p: &Packet) -> Result<bool, i64> {
    let quoted: [u8; IPV4_HLEN + UDP_HLEN] = ctx.load(IP_OFF)?;
    let tot_len = (IPV4_HLEN + ICMP_UNREACH_LEN) as u16;
    trim(ctx, ETH_HLEN + usize::from(tot_len))?;
    let ip = ipv4_header(tot_len, TTL, IPPROTO_ICMP, p.daddr_be, p.saddr_be);
    let icmp = icmp_port_unreachable(&quoted);
    ctx.store(IP_OFF, &ip, 0)?;
    ctx.store(L4_OFF, &icmp, 0)?;
    Ok(true)
}

/// Sets the frame's length to `len`, growing or shrinking it.
#[inline(always)]
fn trim(ctx: &TcContext, len: usize) -> Result<(), i64> {
    // SAFETY: the context is this program's skb; the helper checks `len`.
    let ret = unsafe { bpf_skb_change_tail(ctx.as_ptr().cast(), len as u32, 0) };
    if ret == 0 { Ok(()) } else { Err(ret) }
}
