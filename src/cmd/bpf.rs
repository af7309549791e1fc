//! `kestrel bpf ...`: inspect and exercise the eBPF dataplane.

use std::time::Duration;

use anyhow::{Context as _, bail};
use kestrel_dataplane::sync::{PinnedMaps, read_services};
use kestrel_dataplane::{EbpfLogLevel, ProtoCounter, host, spawn_log_pump};
use kestrel_ebpf_common::ProtoSlot;

use crate::Direction;

/// Attaches the per-protocol counter to `iface` and prints its totals.
pub async fn count(
    iface: &str,
    direction: Direction,
    interval: Duration,
    reports: u64,
    bpffs: &std::path::Path,
    debug: bool,
) -> anyhow::Result<()> {
    let uplinks = host::read_default_route_interfaces().context("reading /proc/net/route")?;
    if uplinks.iter().any(|u| u == iface) {
        bail!(
            "{iface} carries this namespace's default route; Kestrel never attaches to the uplink"
        );
    }
    let level = if debug {
        EbpfLogLevel::Debug
    } else {
        EbpfLogLevel::Info
    };
    let mut counter = ProtoCounter::load(level, bpffs).with_context(|| {
        format!(
            "loading the counter (its maps are pinned in {}, which must be a bpffs mount)",
            bpffs.display()
        )
    })?;
    let _pump = spawn_log_pump(counter.ebpf_mut()).context("starting the eBPF log pump")?;
    let attach = match direction {
        Direction::Ingress => aya::programs::TcAttachType::Ingress,
        Direction::Egress => aya::programs::TcAttachType::Egress,
    };
    counter
        .attach(iface, attach)
        .with_context(|| format!("attaching to {iface}"))?;
    tracing::info!(iface, ?direction, "counting; interrupt to stop");
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut printed = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let counts = counter.counts().context("reading counters")?;
        let line: Vec<String> = ProtoSlot::ALL
            .iter()
            .map(|&slot| {
                let c = counts.get(slot);
                format!("{}={}p/{}B", slot.name(), c.packets, c.bytes)
            })
            .collect();
        println!("{iface} {direction:?}: {}", line.join(" "));
        printed += 1;
        if reports != 0 && printed >= reports {
            return Ok(());
        }
    }
}

/// Prints every service frontend in the maps pinned in `bpffs`.
pub fn services(bpffs: &std::path::Path) -> anyhow::Result<()> {
    let maps = PinnedMaps::open(bpffs)
        .with_context(|| format!("opening the service maps pinned in {}", bpffs.display()))?;
    let view = read_services(&maps).context("reading the service maps")?;
    print!("{view}");
    Ok(())
}

/// Prints every flow in the conntrack map pinned in `bpffs`.
pub fn conntrack(bpffs: &std::path::Path) -> anyhow::Result<()> {
    let flows = kestrel_dataplane::inspect::conntrack(bpffs)
        .with_context(|| format!("reading the conntrack map pinned in {}", bpffs.display()))?;
    let now = kestrel_dataplane::tc::monotonic_now()?;
    println!("{} flows", flows.len());
    for f in &flows {
        println!("{}", f.display(now));
    }
    Ok(())
}

/// Prints the routing view of the node whose maps are pinned in `bpffs`,
/// reading routes inside `netns` when given. The namespace switch happens
/// on a thread of its own, so the rest of the process stays where it is.
pub fn routes(bpffs: &std::path::Path, netns: Option<&std::path::Path>) -> anyhow::Result<()> {
    let ns = netns.map(|n| {
        if n.is_absolute() {
            n.to_owned()
        } else {
            std::path::Path::new("/run/netns").join(n)
        }
    });
    let bpffs = bpffs.to_owned();
    let view = std::thread::spawn(move || -> anyhow::Result<_> {
        if let Some(ns) = &ns {
            let f = std::fs::File::open(ns)
                .with_context(|| format!("opening the network namespace {}", ns.display()))?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering the network namespace {}", ns.display()))?;
        }
        kestrel_dataplane::inspect::routes(&bpffs)
            .with_context(|| format!("reading the maps pinned in {}", bpffs.display()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the route reader panicked"))??;
    print!("{view}");
    Ok(())
}
