//! `tc_from_uplink`: the ingress of the node's uplink.

use aya_ebpf::{macros::classifier, programs::TcContext};
use kestrel_ebpf_common::{ct::ct_flags, packet::IPPROTO_UDP, route::dest};

use super::{PASS, admit, config, ct, drop_for, fwd, lb, pkt, service_flow, translated};

#[classifier]
pub fn tc_from_uplink(ctx: TcContext) -> i32 {
    // A packet the programs cannot make sense of is the kernel's to handle.
    match try_from_uplink(&ctx) {
        Ok(verdict) => verdict,
        Err(_) => PASS,
    }
}

fn try_from_uplink(ctx: &TcContext) -> Result<i32, i64> {
    let Some(cfg) = config() else {
        return Ok(PASS);
    };
    let Some(p) = pkt::parse(ctx)? else {
        return Ok(PASS);
    };
    let key = ct::key_of(&p);
    let now = ct::now_ns();
    // Replies of SNATed and masqueraded flows, later packets of NodePort
    // flows, and flows policy admitted.
    if let Some(e) = ct::lookup(&key, &p, now) {
        return translated(ctx, &p, &e);
    }
    if !p.has_ports() {
        if fwd::local_endpoint(p.daddr_be).is_some()
            && let Err(reason) = admit(&key, &p, now)
        {
            return Ok(drop_for(reason));
        }
        return fwd::route(ctx, &p, false);
    }
    // externalIPs and LoadBalancer IPs by exact address; NodePorts on the
    // node's own address.
    let mut fe = lb::external_frontend(p.daddr_be, p.dport_be, p.proto);
    if fe.is_none() && p.daddr_be == cfg.node_ip_be && cfg.is_node_port(u16::from_be(p.dport_be)) {
        fe = lb::external_frontend(0, p.dport_be, p.proto);
    }
    if let Some(fe) = fe {
        return service_flow(ctx, &p, &key, &fe, &cfg, now, true);
    }
    if let Some(ep) = fwd::local_endpoint(p.daddr_be) {
        if let Err(reason) = admit(&key, &p, now) {
            return Ok(drop_for(reason));
        }
        // A UDP flow from outside the cluster straight to a pod is
        // recorded, so the pod's replies are not masqueraded (TCP replies
        // never start a masquerade), also when policy did not record it.
        // Best effort: without the entry only that flow's replies suffer.
        if p.proto == IPPROTO_UDP && cfg.classify(p.saddr_be) == dest::WORLD {
            let mut e = ct::fresh(&p, now, ct_flags::FROM_UPLINK);
            let _ = ct::create(&key, &mut e, false);
        }
        return fwd::to_pod(ctx, &p, &ep);
    }
    Ok(PASS)
}
