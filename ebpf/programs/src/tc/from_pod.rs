//! `tc_from_pod`: the ingress of a pod's host-side veth, i.e. every packet
//! the pod sends.

use aya_ebpf::{macros::classifier, programs::TcContext};
use kestrel_ebpf_common::{
    ct::ct_flags, drop::DropReason, hdr::is_tcp_open, lb::scope, packet::IPPROTO_UDP,
};

use super::{PASS, admit, config, ct, drop_for, fwd, lb, pkt, policy, service_flow, translated};

#[classifier]
pub fn tc_from_pod(ctx: TcContext) -> i32 {
    // A packet the programs cannot make sense of is the kernel's to handle.
    match try_from_pod(&ctx) {
        Ok(verdict) => verdict,
        Err(_) => PASS,
    }
}

fn try_from_pod(ctx: &TcContext) -> Result<i32, i64> {
    let Some(cfg) = config() else {
        return Ok(PASS);
    };
    let Some(p) = pkt::parse(ctx)? else {
        return Ok(PASS);
    };
    // Protocols without ports (ICMP, ...) are tracked with ports 0, so
    // that network policy sees their flows too.
    let key = ct::key_of(&p);
    let now = ct::now_ns();
    // Established flows (service, reply of a NodePort or inbound flow,
    // masquerade, flows policy admitted) first: their recorded rewrite
    // wins over everything.
    if let Some(e) = ct::lookup(&key, &p, now) {
        return translated(ctx, &p, &e);
    }
    if !p.has_ports() {
        if let Err(reason) = admit(&key, &p, now) {
            return Ok(drop_for(reason));
        }
        return fwd::route(ctx, &p, true);
    }
    if let Some(fe) = lb::frontend(p.daddr_be, p.dport_be, p.proto, scope::INTERNAL) {
        return service_flow(ctx, &p, &key, &fe, &cfg, now, false);
    }
    // Only a flow's first packet starts a masquerade: a TCP segment other
    // than a bare SYN that is not tracked is a reply to a connection made
    // from outside, and must leave with the pod's own address.
    if cfg.masquerades_to(p.daddr_be) && (p.proto == IPPROTO_UDP || is_tcp_open(p.tcp_flags)) {
        if !policy::check(&p, now).allowed {
            return Ok(drop_for(DropReason::POLICY_DENIED));
        }
        let mut e = ct::fresh(&p, now, ct_flags::SNAT | ct_flags::MASQUERADE);
        e.nat_saddr_be = cfg.node_ip_be;
        if let Err(reason) = ct::create(&key, &mut e, true) {
            return Ok(drop_for(reason));
        }
        return translated(ctx, &p, &e);
    }
    if let Err(reason) = admit(&key, &p, now) {
        return Ok(drop_for(reason));
    }
    fwd::route(ctx, &p, true)
}
