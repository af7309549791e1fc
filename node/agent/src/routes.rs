//! Routes to other nodes' pods: `<their podCIDR> via <their InternalIP>`,
//! kept in sync with the Node objects (plain routes over the fabric until
//! the eBPF dataplane takes over pod routing). Only routes this agent made
//! (marked with its own route protocol number) are ever removed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};

/// The route protocol number marking Kestrel's routes (`ip route ... proto 75`).
pub const PROTO: u8 = 75;

/// podCIDR → next hop for every other node that has both.
fn desired(nodes: &[std::sync::Arc<Node>], me: &str) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(me) {
            continue;
        }
        let cidr = n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| c.parse::<Ipv4Net>().ok());
        let ip = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<Ipv4Addr>().ok());
        if let (Some(c), Some(ip)) = (cidr, ip) {
            out.insert(c, ip);
        }
    }
    out
}

async fn current(handle: &rtnetlink::Handle) -> anyhow::Result<BTreeMap<Ipv4Net, Ipv4Addr>> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut routes = handle.route().get(msg).execute();
    let mut out = BTreeMap::new();
    while let Some(r) = routes.try_next().await.context("listing routes")? {
        if r.header.protocol != RouteProtocol::Other(PROTO) {
            continue;
        }
        let mut dst = None;
        let mut gw = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                _ => {}
            }
        }
        if let (Some(d), Some(g)) = (dst, gw)
            && let Ok(net) = Ipv4Net::new(d, r.header.destination_prefix_length)
        {
            out.insert(net, g);
        }
    }
    Ok(out)
}

async fn apply(
    handle: &rtnetlink::Handle,
    want: &BTreeMap<Ipv4Net, Ipv4Addr>,
) -> anyhow::Result<()> {
    let have = current(handle).await?;
    for (net, gw) in want {
        if have.get(net) == Some(gw) {
            continue;
        }
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.addr(), net.prefix_len())
            .gateway(*gw)
            .protocol(RouteProtocol::Other(PROTO))
            .build();
        handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .with_context(|| format!("routing {net} via {gw}"))?;
        tracing::info!(%net, via = %gw, "pod route added");
    }
    let stale: BTreeSet<_> = have.keys().filter(|n| !want.contains_key(n)).collect();
    for net in stale {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.addr(), net.prefix_len())
            .protocol(RouteProtocol::Other(PROTO))
            .build();
        if let Err(e) = handle.route().del(msg).execute().await {
            tracing::warn!(%net, error = %e, "removing a stale pod route");
        }
    }
    Ok(())
}

/// Keep the routes in sync with the Nodes until the process ends.
pub async fn sync(client: kube::Client, me: String) -> anyhow::Result<()> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
    tokio::spawn(conn);
    let (store, writer) = reflector::store();
    let nodes: Api<Node> = Api::all(client);
    let mut s = std::pin::pin!(
        reflector::reflector(writer, watcher(nodes, watcher::Config::default()))
            .default_backoff()
            .touched_objects()
    );
    while let Some(ev) = s.next().await {
        if let Err(e) = ev {
            tracing::warn!(error = %e, "watching nodes");
            continue;
        }
        if let Err(e) = apply(&handle, &desired(&store.state(), &me)).await {
            tracing::warn!(error = %format!("{e:#}"), "syncing pod routes");
        }
    }
    Ok(())
}
