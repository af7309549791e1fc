//! Read-only views of the maps pinned in a node's bpffs, opened by path so
//! that `kestrel bpf conntrack`, `kestrel bpf routes` and the agent's
//! `/metrics` need no loaded object and never take the agent's handle.

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use ipnet::Ipv4Net;
use kestrel_ebpf_common::ct::{CtEntry, CtKey};
use kestrel_ebpf_common::drop::DropReason;
use kestrel_ebpf_common::map_names;
use kestrel_ebpf_common::route::{LocalEndpoint, NodeConfig};

use crate::pins::{map_err, open_pinned};
use crate::tc::{ConntrackFlow, NodeNetwork, PodEndpoint, addr, group_flows};
use crate::{Error, Result};

/// Every conntrack entry pinned under `pin_dir`. Entries the kernel evicts
/// during the walk are skipped.
pub fn conntrack_entries(pin_dir: &Path) -> Result<Vec<(CtKey, CtEntry)>> {
    let name = map_names::CONNTRACK;
    let map: HashMap<MapData, CtKey, CtEntry> =
        HashMap::try_from(open_pinned(pin_dir, name)?).map_err(map_err("typing", name))?;
    Ok(map.iter().filter_map(std::result::Result::ok).collect())
}

/// The tracked flows pinned under `pin_dir`, originals with their replies.
pub fn conntrack(pin_dir: &Path) -> Result<Vec<ConntrackFlow>> {
    Ok(group_flows(&conntrack_entries(pin_dir)?))
}

/// The node's pods as the programs deliver to them, sorted by address.
pub fn local_endpoints(pin_dir: &Path) -> Result<Vec<PodEndpoint>> {
    let name = map_names::ENDPOINTS;
    let map: HashMap<MapData, u32, LocalEndpoint> =
        HashMap::try_from(open_pinned(pin_dir, name)?).map_err(map_err("typing", name))?;
    let mut out: Vec<PodEndpoint> = map
        .iter()
        .filter_map(std::result::Result::ok)
        .map(|(ip, ep)| PodEndpoint {
            ip: addr(ip),
            ifindex: ep.ifindex,
            pod_mac: ep.pod_mac,
            host_mac: ep.host_mac,
        })
        .collect();
    out.sort_by_key(|e| e.ip);
    Ok(out)
}

/// The node configuration the programs use; `None` until the agent wrote it.
pub fn node_network(pin_dir: &Path) -> Result<Option<NodeNetwork>> {
    let name = map_names::NODE_CONFIG;
    let map: Array<MapData, NodeConfig> =
        Array::try_from(open_pinned(pin_dir, name)?).map_err(map_err("typing", name))?;
    let config = map.get(&0, 0).map_err(map_err("reading", name))?;
    Ok(NodeNetwork::from_config(&config))
}

/// Drops by reason, summed over CPUs.
pub fn drops(pin_dir: &Path) -> Result<Vec<(DropReason, u64)>> {
    let name = map_names::DROPS;
    let array: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(open_pinned(pin_dir, name)?).map_err(map_err("typing", name))?;
    DropReason::ALL
        .iter()
        .map(|r| {
            let per_cpu = array.get(&r.0, 0).map_err(map_err("reading", name))?;
            Ok((*r, per_cpu.iter().copied().fold(0u64, u64::wrapping_add)))
        })
        .collect()
}

/// One IPv4 route of the kernel's main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    /// Destination prefix.
    pub dest: Ipv4Net,
    /// Next hop, if the route has one.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface.
    pub interface: String,
}

/// Parses `/proc/net/route` (the calling thread's network namespace).
/// Lines that do not parse are skipped: the file's format is the kernel's
/// and has not changed in decades, but a garbled line must not hide the rest.
pub fn parse_proc_net_route(text: &str) -> Vec<KernelRoute> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.swap_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, gw, mask) = (f.first()?, f.get(1)?, f.get(2)?, f.get(7)?);
            let prefix = u32::from(hex(mask)?).count_ones() as u8;
            let dest = Ipv4Net::new(hex(dest)?, prefix).ok()?;
            let gateway = hex(gw).filter(|g| !g.is_unspecified());
            Some(KernelRoute {
                dest,
                gateway,
                interface: (*iface).to_owned(),
            })
        })
        .collect()
}

/// What routes pod traffic on a node: the programs' configuration, the
/// local pods they deliver to with `bpf_redirect_peer`, and the kernel
/// routes into other nodes' pod ranges that `bpf_fib_lookup` follows.
#[derive(Clone, Debug, Default)]
pub struct RoutesView {
    /// The node configuration, if written.
    pub network: Option<NodeNetwork>,
    /// Local pods, with the name of their host-side veth when it exists.
    pub endpoints: Vec<(PodEndpoint, Option<String>)>,
    /// Kernel routes inside the cluster's pod range.
    pub routes: Vec<KernelRoute>,
}

/// Reads the [`RoutesView`] of the node whose maps are pinned in `pin_dir`;
/// routes and interface names are those of the calling thread's network
/// namespace (which may differ from the process's).
pub fn routes(pin_dir: &Path) -> Result<RoutesView> {
    let network = node_network(pin_dir)?;
    let endpoints = local_endpoints(pin_dir)?
        .into_iter()
        .map(|ep| {
            let name = nix::net::if_::if_indextoname(ep.ifindex)
                .ok()
                .map(|n| n.to_string_lossy().into_owned());
            (ep, name)
        })
        .collect();
    let text =
        std::fs::read_to_string("/proc/thread-self/net/route").map_err(|source| Error::Io {
            what: "reading /proc/thread-self/net/route",
            source,
        })?;
    let routes = parse_proc_net_route(&text)
        .into_iter()
        .filter(|r| {
            network
                .as_ref()
                .is_some_and(|n| n.cluster_cidr.contains(&r.dest) && r.dest != n.cluster_cidr)
        })
        .collect();
    Ok(RoutesView {
        network,
        endpoints,
        routes,
    })
}

impl fmt::Display for RoutesView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.network {
            Some(n) => writeln!(
                f,
                "node {} pods {} cluster {} services {} nodeports {}-{} masquerade {}",
                n.node_ip,
                n.pod_cidr,
                n.cluster_cidr,
                n.service_cidr,
                n.node_ports.start(),
                n.node_ports.end(),
                if n.masquerade { "on" } else { "off" }
            )?,
            None => writeln!(f, "node configuration not written yet")?,
        }
        writeln!(
            f,
            "local pods (bpf_redirect_peer): {}",
            self.endpoints.len()
        )?;
        for (ep, name) in &self.endpoints {
            writeln!(f, "  {ep} dev={}", name.as_deref().unwrap_or("(gone)"))?;
        }
        writeln!(
            f,
            "other nodes' pods (bpf_fib_lookup): {}",
            self.routes.len()
        )?;
        for r in &self.routes {
            let mut line = format!("  {} dev {}", r.dest, r.interface);
            if let Some(gw) = r.gateway {
                let _ = write!(line, " via {gw}");
            }
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_route_parses_and_skips_garbage() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0100290A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t0001020A\t0B00290A\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            garbage\n\
            cni0\t0000020A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let routes = parse_proc_net_route(text);
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0].dest, Ipv4Net::default());
        assert_eq!(routes[0].gateway, Some(Ipv4Addr::new(10, 41, 0, 1)));
        assert_eq!(
            routes[1].dest,
            Ipv4Net::new(Ipv4Addr::new(10, 2, 1, 0), 24).expect("a prefix")
        );
        assert_eq!(routes[1].gateway, Some(Ipv4Addr::new(10, 41, 0, 11)));
        assert_eq!(routes[2].interface, "cni0");
        assert_eq!(routes[2].gateway, None);
    }
}
