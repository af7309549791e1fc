//! A TC classifier that counts packets and bytes per L4 protocol.
//!
//! It observes and never decides: it returns `TC_ACT_UNSPEC`, which lets the
//! next program on the hook (or the default action) choose the verdict.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use kestrel_ebpf_common::{
    PacketCount, ProtoSlot,
    packet::{ETH_TYPE_OFFSET, l4_proto_offset, slot_for_ip_proto},
};

#[map(name = "PROTO_COUNTERS")]
static PROTO_COUNTERS: PerCpuArray<PacketCount> =
    PerCpuArray::with_max_entries(ProtoSlot::COUNT, 0);

#[classifier]
pub fn proto_counter(ctx: TcContext) -> i32 {
    // A failed load only means a runt frame; counting must never affect the
    // packet, so errors are swallowed and the verdict stays "next".
    let _ = try_proto_counter(&ctx);
    TC_ACT_UNSPEC
}

fn try_proto_counter(ctx: &TcContext) -> Result<(), i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(ETH_TYPE_OFFSET)?);
    let slot = match l4_proto_offset(ethertype) {
        Some(offset) => slot_for_ip_proto(ctx.load::<u8>(offset)?),
        None => ProtoSlot::NON_IP,
    };
    let len = ctx.len();
    let counter = PROTO_COUNTERS.get_ptr_mut(slot.0).ok_or(-1)?;
    // SAFETY: the pointer comes from a successful per-CPU array lookup, so it
    // is valid and only this CPU writes this slot while the program runs.
    unsafe {
        (*counter).packets += 1;
        (*counter).bytes += u64::from(len);
    }
    debug!(
        ctx,
        "proto_counter: ethertype {:x} slot {} len {}", ethertype, slot.0, len
    );
    Ok(())
}
