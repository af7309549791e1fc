use super::*;

fn owner(id: &str) -> Owner {
    Owner {
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

fn cidr(s: &str) -> Ipv4Net {
    s.parse().expect("cidr")
}

#[test]
fn allocates_distinct_addresses_skipping_reserved_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::open(dir.path(), cidr("10.42.1.0/24")).expect("open");
    let a = ipam.allocate(&owner("a")).expect("a");
    let b = ipam.allocate(&owner("b")).expect("b");
    assert_eq!(
        a,
        Ipv4Addr::new(10, 42, 1, 2),
        "the network address and .1 are reserved"
    );
    assert_eq!(b, Ipv4Addr::new(10, 42, 1, 3));
}

#[test]
fn repeating_an_add_returns_the_same_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::open(dir.path(), cidr("10.42.1.0/24")).expect("open");
    let first = ipam.allocate(&owner("a")).expect("first");
    assert_eq!(ipam.allocate(&owner("a")).expect("again"), first);
    let other_if = Owner {
        container_id: "a".into(),
        ifname: "net1".into(),
    };
    assert_ne!(ipam.allocate(&other_if).expect("second interface"), first);
}

#[test]
fn state_survives_reopening_and_release_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Ipam::open(dir.path(), cidr("10.42.1.0/24"))
        .expect("open")
        .allocate(&owner("a"))
        .expect("a");
    let reopened = Ipam::open(dir.path(), cidr("10.42.1.0/24")).expect("reopen");
    assert_eq!(reopened.find(&owner("a")).expect("find"), Some(a));
    assert_ne!(
        reopened.allocate(&owner("b")).expect("b"),
        a,
        "a restart must not hand out a twice"
    );
    assert_eq!(reopened.release(&owner("a")).expect("release"), Some(a));
    assert_eq!(reopened.release(&owner("a")).expect("release again"), None);
    assert_eq!(reopened.find(&owner("a")).expect("find"), None);
}

#[test]
fn released_addresses_are_reused_only_after_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::open(dir.path(), cidr("10.42.1.0/29")).expect("open");
    let a = ipam.allocate(&owner("a")).expect("a");
    ipam.release(&owner("a")).expect("release");
    let b = ipam.allocate(&owner("b")).expect("b");
    assert_ne!(a, b, "the next address comes first");
}

#[test]
fn exhaustion_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A /29 has 6 hosts; one is kept for the node.
    let ipam = Ipam::open(dir.path(), cidr("10.42.1.0/29")).expect("open");
    for i in 0..5 {
        ipam.allocate(&owner(&format!("c{i}"))).expect("fits");
    }
    let err = ipam.allocate(&owner("overflow")).expect_err("full");
    assert!(matches!(err, Error::Exhausted(_)), "{err}");
    assert_eq!(ipam.allocations().expect("list").len(), 5);
}

#[test]
fn concurrent_allocations_never_collide() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let ipam = Ipam::open(&path, cidr("10.42.1.0/24")).expect("open");
                ipam.allocate(&owner(&format!("p{i}"))).expect("alloc")
            })
        })
        .collect();
    let mut ips: Vec<Ipv4Addr> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 16);
}

#[test]
fn tiny_cidrs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        Ipam::open(dir.path(), cidr("10.42.1.0/31")),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn orphans_are_released_only_when_gone_and_old_enough() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::open(dir.path(), cidr("10.42.1.0/24")).expect("open");
    let live_ip = ipam.allocate(&owner("live")).expect("live");
    let gone_ip = ipam.allocate(&owner("gone")).expect("gone");
    let live: std::collections::HashSet<String> = ["live".to_owned()].into();
    // Young allocations may belong to a sandbox still being created.
    let kept = ipam
        .release_orphans(&live, std::time::Duration::from_secs(60))
        .expect("gc");
    assert!(kept.is_empty(), "{kept:?}");
    let released = ipam
        .release_orphans(&live, std::time::Duration::ZERO)
        .expect("gc");
    assert_eq!(released, vec![gone_ip]);
    let left: Vec<Ipv4Addr> = ipam
        .allocations()
        .expect("list")
        .into_iter()
        .map(|(ip, _)| ip)
        .collect();
    assert_eq!(left, vec![live_ip]);
}
