//! The kernel side: the pod's veth pair, its address and routes, through
//! netlink. The node end stays in the calling namespace (the node's); the
//! pod end is moved into the sandbox's namespace and configured from a
//! thread that has entered it.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
    path::Path,
};

use futures::TryStreamExt as _;
use nix::sched::{CloneFlags, setns};
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        link::{LinkAttribute, LinkMessage},
        route::RouteScope,
    },
};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result, spec::GATEWAY};

/// `-ENODEV` from the kernel.
const ENODEV: i32 = 19;

/// What ADD made on the node side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    /// The node end of the veth pair.
    pub host_ifname: String,
    /// Its interface index in the node namespace.
    pub host_ifindex: u32,
    /// Its MAC address.
    pub host_mac: String,
    /// The pod end's MAC address.
    pub pod_mac: String,
}

/// The node end's name: stable for a (container, interface) pair, so DEL
/// and CHECK find it without state, and at most 15 bytes.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let hash = Sha256::digest(format!("{container_id}/{ifname}"));
    format!("kst{}", &hex(&hash)[..11])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac_bytes(link: &LinkMessage) -> Vec<u8> {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => Some(mac.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn connect() -> Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()
        .map_err(|e| Error::io("opening a netlink socket", Path::new("netlink"), e))?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -ENODEV => Ok(None),
        Err(e) => Err(Error::netlink(format!("looking up {name}"), e)),
    }
}

/// Runs `f` on a thread inside the namespace at `netns`, with its own
/// single-threaded runtime, so netlink sockets open there.
fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>>>> + Send,
) -> Result<T> {
    let file = File::open(netns).map_err(|e| Error::io("opening", netns, e))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Netns {
                    path: netns.to_path_buf(),
                    source,
                })?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("starting a runtime in", netns, e))?;
                runtime.block_on(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Brings `lo` up in the namespace at `netns` (the `loopback` plugin's job,
/// which containerd runs for every sandbox).
pub fn loopback_up(netns: &Path) -> Result<()> {
    in_netns(netns, || {
        Box::pin(async {
            let handle = connect()?;
            let lo = find_link(&handle, "lo")
                .await?
                .ok_or_else(|| Error::InvalidEnvironment("the namespace has no lo".into()))?;
            handle
                .link()
                .set(LinkUnspec::new_with_index(lo.header.index).up().build())
                .execute()
                .await
                .map_err(|e| Error::netlink("bringing lo up", e))
        })
    })
}

/// Creates the pod's veth pair and gives the pod `ip`, a route to the
/// gateway and a default route. Safe to repeat: a leftover pair from an
/// interrupted ADD is replaced.
pub async fn add(
    netns: &Path,
    ifname: &str,
    host: &str,
    ip: Ipv4Addr,
    mtu: u32,
) -> Result<PodLink> {
    let handle = connect()?;
    if let Some(stale) = find_link(&handle, host).await? {
        handle
            .link()
            .del(stale.header.index)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("removing stale {host}"), e))?;
    }
    // A temporary name for the pod end while it is still in the node
    // namespace, where `ifname` (eth0) may well exist.
    let peer = format!("kstp{}", &host[3..]);
    handle
        .link()
        .add(LinkVeth::new(host, &peer).mtu(mtu).build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("creating veth {host}"), e))?;
    let host_link = find_link(&handle, host)
        .await?
        .ok_or_else(|| Error::CheckFailed(format!("{host} vanished after creation")))?;
    let host_mac = mac_bytes(&host_link);
    let netns_file = File::open(netns).map_err(|e| Error::io("opening", netns, e))?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_name(&peer)
                .setns_by_fd(netns_file.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("moving {peer} into {}", netns.display()), e))?;

    let pod_ifname = ifname.to_owned();
    let gateway_mac = host_mac.clone();
    let pod_mac = in_netns(netns, move || {
        Box::pin(async move {
            let handle = connect()?;
            let link = find_link(&handle, &peer)
                .await?
                .ok_or_else(|| Error::CheckFailed(format!("{peer} vanished after the move")))?;
            let index = link.header.index;
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .name(pod_ifname.clone())
                        .mtu(mtu)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("renaming {peer} to {pod_ifname}"), e))?;
            if let Some(lo) = find_link(&handle, "lo").await? {
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(lo.header.index).up().build())
                    .execute()
                    .await
                    .map_err(|e| Error::netlink("bringing lo up", e))?;
            }
            handle
                .address()
                .add(index, IpAddr::V4(ip), 32)
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("adding {ip}/32"), e))?;
            // The gateway is the node end of the pair; a permanent entry
            // means the pod never ARPs for it (as Cilium does for its router).
            handle
                .neighbours()
                .add(index, IpAddr::V4(GATEWAY))
                .link_layer_address(&gateway_mac)
                .replace()
                .execute()
                .await
                .map_err(|e| Error::netlink("adding the gateway neighbour", e))?;
            let to_gateway = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(GATEWAY, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build();
            handle
                .route()
                .add(to_gateway)
                .execute()
                .await
                .map_err(|e| Error::netlink("adding the gateway route", e))?;
            let default = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(GATEWAY)
                .output_interface(index)
                .build();
            handle
                .route()
                .add(default)
                .execute()
                .await
                .map_err(|e| Error::netlink("adding the default route", e))?;
            Ok(mac_bytes(&link))
        })
    })?;

    let index = host_link.header.index;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("bringing {host} up"), e))?;
    let to_pod = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(ip, 32)
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    handle
        .route()
        .add(to_pod)
        .replace()
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("routing {ip} to {host}"), e))?;
    handle
        .neighbours()
        .add(index, IpAddr::V4(ip))
        .link_layer_address(&pod_mac)
        .replace()
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("adding the neighbour entry for {ip}"), e))?;
    Ok(PodLink {
        host_ifname: host.to_owned(),
        host_ifindex: index,
        host_mac: mac_text(&host_mac),
        pod_mac: mac_text(&pod_mac),
    })
}

/// Removes the pod's veth pair (both ends go together) and with it the
/// route. Returns the index it had, or `None` if it was already gone.
pub async fn del(host: &str) -> Result<Option<u32>> {
    let handle = connect()?;
    let Some(link) = find_link(&handle, host).await? else {
        return Ok(None);
    };
    let index = link.header.index;
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(Some(index)),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -ENODEV => Ok(None),
        Err(e) => Err(Error::netlink(format!("removing {host}"), e)),
    }
}

/// Verifies the node end exists and the pod end holds `ip`.
pub async fn check(netns: &Path, ifname: &str, host: &str, ip: Ipv4Addr) -> Result<()> {
    let handle = connect()?;
    if find_link(&handle, host).await?.is_none() {
        return Err(Error::CheckFailed(format!("{host} does not exist")));
    }
    let pod_ifname = ifname.to_owned();
    in_netns(netns, move || {
        Box::pin(async move {
            let handle = connect()?;
            let link = find_link(&handle, &pod_ifname).await?.ok_or_else(|| {
                Error::CheckFailed(format!("{pod_ifname} does not exist in the pod"))
            })?;
            let mut addresses = handle
                .address()
                .get()
                .set_link_index_filter(link.header.index)
                .execute();
            while let Some(address) = addresses
                .try_next()
                .await
                .map_err(|e| Error::netlink("listing addresses", e))?
            {
                let has_ip = address.attributes.iter().any(|a| {
                    matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(a)) if *a == ip)
                });
                if has_ip {
                    return Ok(());
                }
            }
            Err(Error::CheckFailed(format!(
                "{pod_ifname} does not hold {ip}"
            )))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_ifname("0123456789abcdef", "eth0");
        assert_eq!(a, host_ifname("0123456789abcdef", "eth0"));
        assert!(a.len() <= 15 && a.starts_with("kst"), "{a}");
        assert_ne!(a, host_ifname("0123456789abcdef", "net1"));
        assert_ne!(a, host_ifname("0123456789abcdeF", "eth0"));
        // The temporary pod-end name stays within 15 bytes too.
        assert!(format!("kstp{}", &a[3..]).len() <= 15);
    }
}
