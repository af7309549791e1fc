//! `tc_to_pod`: the egress of a pod's host-side veth, i.e. what the
//! kernel's stack delivers to the pod: the node's own connections (kubelet
//! probes, host-network clients) and whatever the other programs left to
//! the stack. Packets the programs redirect straight into the pod skip
//! this hook and had their policy applied where they were redirected.
//!
//! It never rewrites: a tracked flow passes, a new one gets its policy
//! verdict.

use aya_ebpf::{macros::classifier, programs::TcContext};

use super::{PASS, admit, config, ct, drop_for, pkt};

#[classifier]
pub fn tc_to_pod(ctx: TcContext) -> i32 {
    // A packet the programs cannot make sense of is the kernel's to handle.
    match try_to_pod(&ctx) {
        Ok(verdict) => verdict,
        Err(_) => PASS,
    }
}

fn try_to_pod(ctx: &TcContext) -> Result<i32, i64> {
    if config().is_none() {
        return Ok(PASS);
    }
    let Some(p) = pkt::parse(ctx)? else {
        return Ok(PASS);
    };
    let key = ct::key_of(&p);
    let now = ct::now_ns();
    if ct::lookup(&key, &p, now).is_some() {
        return Ok(PASS);
    }
    Ok(match admit(&key, &p, now) {
        Ok(()) => PASS,
        Err(reason) => drop_for(reason),
    })
}
