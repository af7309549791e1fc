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
