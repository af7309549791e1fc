//! Facts about the host that decide where the dataplane may attach.

/// Interfaces that carry an IPv4 default route, parsed from the text of
/// `/proc/net/route`. Kestrel never attaches programs to these: they are the
/// host's uplink, which the project did not create.
pub fn default_route_interfaces(proc_net_route: &str) -> Vec<String> {
    let mut found = Vec::new();
    // Columns: Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    for line in proc_net_route.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(iface), Some(destination)) = (fields.next(), fields.next()) else {
            continue;
        };
        let mask = fields.nth(5);
        if destination == "00000000"
            && mask == Some("00000000")
            && !found.iter().any(|f| f == iface)
        {
            found.push(iface.to_owned());
        }
    }
    found
}

/// Reads `/proc/net/route` of the calling thread's network namespace.
pub fn read_default_route_interfaces() -> std::io::Result<Vec<String>> {
    Ok(default_route_interfaces(&std::fs::read_to_string(
        "/proc/net/route",
    )?))
}

/// The cgroup2 directory of the calling process (`0::/path` in
/// `/proc/self/cgroup`), under the first mount of the cgroup2 hierarchy.
/// The agent attaches the socket hooks here: the node's own subtree, which
/// holds its containerd and pods.
pub fn own_cgroup_dir() -> std::io::Result<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    own_cgroup_dir_from(&mountinfo, &own).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no cgroup2 mount, or this process is in no cgroup2 cgroup",
        )
    })
}

fn own_cgroup_dir_from(mountinfo: &str, proc_self_cgroup: &str) -> Option<std::path::PathBuf> {
    let mount = crate::sock::cgroup2_hierarchy_roots(mountinfo)
        .into_iter()
        .next()?;
    let path = proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(path.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
kfab0\t00002A0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
";

    #[test]
    fn own_cgroup_is_found_under_the_cgroup2_mount() {
        let mountinfo = "24 1 0:21 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                         30 24 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let own = "12:cpu:/x\n0::/kestrel-ab12/n1\n";
        assert_eq!(
            own_cgroup_dir_from(mountinfo, own),
            Some(std::path::PathBuf::from(
                "/sys/fs/cgroup/unified/kestrel-ab12/n1"
            ))
        );
        assert_eq!(own_cgroup_dir_from(mountinfo, "12:cpu:/x\n"), None);
        assert_eq!(own_cgroup_dir_from("", own), None);
    }

    #[test]
    fn finds_the_uplink() {
        assert_eq!(default_route_interfaces(ROUTES), vec!["eth0".to_owned()]);
    }

    #[test]
    fn no_default_route_means_no_uplink() {
        let only_header = ROUTES.lines().next().unwrap_or_default();
        assert!(default_route_interfaces(only_header).is_empty());
        assert!(default_route_interfaces("").is_empty());
        assert!(default_route_interfaces("garbage\nx\n").is_empty());
    }

    #[test]
    fn a_zero_destination_with_a_mask_is_not_a_default_route() {
        let routes = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                      veth0\t00000000\t00000000\t0001\t0\t0\t0\t000000FF\n";
        assert!(default_route_interfaces(routes).is_empty());
    }
}
