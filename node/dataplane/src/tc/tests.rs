use super::*;
use kestrel_ebpf_common::ct::{reply_for, tcp_seen_bits};

const S: u64 = 1_000_000_000;

fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
    addr_be(Ipv4Addr::new(a, b, c, d))
}

fn key(s: u32, d: u32, sp: u16, dp: u16, proto: u8) -> CtKey {
    CtKey::new(s, d, sp.to_be(), dp.to_be(), proto)
}

/// A ClusterIP flow from a pod and its reply entry, last seen at `seen_s`.
fn service_flow(sport: u16, seen_s: u64) -> [(CtKey, CtEntry); 2] {
    let k = key(ip(10, 42, 1, 5), ip(10, 43, 0, 10), sport, 80, IPPROTO_TCP);
    let o = CtEntry {
        last_seen_ns: seen_s * S,
        nat_daddr_be: ip(10, 42, 2, 7),
        nat_dport_be: 8080u16.to_be(),
        backend_id: 3,
        flags: ct_flags::DNAT,
        tcp_seen: tcp_seen_bits(0x02) | tcp_seen_bits(0x10),
        ..CtEntry::default()
    };
    let (rk, mut r) = reply_for(&k, &o);
    r.last_seen_ns = seen_s * S;
    r.tcp_seen = tcp_seen_bits(0x12) | tcp_seen_bits(0x10);
    [(k, o), (rk, r)]
}

#[test]
fn pod_veths_never_carry_the_default_route() {
    let defaults = vec!["eth0".to_owned()];
    assert!(check_attach("kst0123456789a", Role::PodVeth, &defaults, false).is_ok());
    assert!(matches!(
        check_attach("eth0", Role::PodVeth, &defaults, false),
        Err(Error::AttachRefused { .. })
    ));
    assert!(check_attach("eth0", Role::PodVeth, &defaults, true).is_err());
}

#[test]
fn the_uplink_is_refused_only_in_the_initial_namespace() {
    let defaults = vec!["eth0".to_owned()];
    assert!(
        check_attach("eth0", Role::Uplink, &defaults, false).is_ok(),
        "a node namespace's own uplink"
    );
    assert!(
        check_attach("eth0", Role::Uplink, &defaults, true).is_err(),
        "the host's uplink"
    );
    assert!(check_attach("fab0", Role::Uplink, &defaults, true).is_ok());
    assert!(check_attach("eth0", Role::Uplink, &[], true).is_ok());
}

#[test]
fn macs_parse_strictly() {
    assert_eq!(
        parse_mac("aa:bb:cc:00:01:ff"),
        Some([0xaa, 0xbb, 0xcc, 0, 1, 0xff])
    );
    assert_eq!(parse_mac("aa:bb:cc:00:01"), None);
    assert_eq!(parse_mac("aa:bb:cc:00:01:ff:00"), None);
    assert_eq!(parse_mac("zz:bb:cc:00:01:ff"), None);
}

#[test]
fn node_network_round_trips_through_the_kernel_view() {
    let net = NodeNetwork::new(
        Ipv4Addr::new(10, 41, 0, 10),
        "10.42.1.0/24".parse().expect("cidr"),
    );
    let c = net.to_config();
    assert_eq!(c.node_ip_be, ip(10, 41, 0, 10));
    assert!(c.cluster_cidr.contains(ip(10, 42, 200, 1)));
    assert!(c.service_cidr.contains(ip(10, 43, 0, 10)));
    assert_eq!((c.node_port_min, c.node_port_max), (30000, 32767));
    assert_eq!(NodeNetwork::from_config(&c), Some(net));
    assert_eq!(NodeNetwork::from_config(&NodeConfig::default()), None);
}

#[test]
fn flows_group_with_their_replies() {
    let entries = service_flow(40000, 100);
    let flows = group_flows(&entries);
    assert_eq!(flows.len(), 1);
    let f = flows[0];
    assert_eq!(f.key, entries[0].0);
    assert_eq!(f.reply_key, entries[1].0);
    assert!(f.original.is_some() && f.reply.is_some());
    assert_eq!(f.state(), "established");
    let line = f.display(Duration::from_secs(103));
    assert_eq!(
        line,
        "tcp 10.42.1.5:40000 -> 10.43.0.10:80 => 10.42.1.5:40000 -> 10.42.2.7:8080 [dnat] \
         backend=3 established idle=3s"
    );
}

#[test]
fn an_orphaned_reply_is_its_own_flow() {
    let [_, reply] = service_flow(40000, 100);
    let flows = group_flows(&[reply]);
    assert_eq!(flows.len(), 1);
    assert!(flows[0].original.is_none());
    assert!(
        flows[0]
            .display(Duration::from_secs(100))
            .contains("(reply only)")
    );
}

#[test]
fn a_reply_left_by_a_recreated_flow_is_orphaned() {
    let [original, old_reply] = service_flow(40000, 100);
    // The same client tuple now goes to another backend.
    let mut o = original.1;
    o.nat_daddr_be = ip(10, 42, 3, 9);
    let (new_rk, new_r) = reply_for(&original.0, &o);
    let flows = group_flows(&[(original.0, o), (new_rk, new_r), old_reply]);
    assert_eq!(flows.len(), 2);
    assert!(
        flows
            .iter()
            .any(|f| f.original.is_none() && f.reply_key == old_reply.0)
    );
}

#[test]
fn gc_removes_whole_flows_once_both_directions_are_idle() {
    let mut entries = service_flow(40000, 100).to_vec();
    // Established TCP lives 6 h.
    assert!(gc_plan(&entries, 200 * S).is_empty());
    let after = (100 + 21_600 + 1) * S;
    let plan = gc_plan(&entries, after);
    assert_eq!(plan.len(), 2);
    assert!(plan.contains(&entries[0].0) && plan.contains(&entries[1].0));
    // A busy reply keeps the flow.
    entries[1].1.last_seen_ns = after;
    assert!(gc_plan(&entries, after).is_empty());
}

#[test]
fn gc_expires_closed_flows_fast() {
    let mut entries = service_flow(40001, 100).to_vec();
    for (_, e) in &mut entries {
        e.tcp_seen |= tcp_seen::FIN;
    }
    assert!(gc_plan(&entries, 105 * S).is_empty());
    assert_eq!(gc_plan(&entries, 111 * S).len(), 2);
}

#[test]
fn gc_removes_expired_orphans() {
    let [_, reply] = service_flow(40000, 100);
    assert!(gc_plan(&[reply], 200 * S).is_empty());
    assert_eq!(gc_plan(&[reply], (100 + 21_601) * S), vec![reply.0]);
}
