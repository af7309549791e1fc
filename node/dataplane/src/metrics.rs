//! The dataplane's counters in the Prometheus text exposition format
//! (version 0.0.4), read from the maps pinned in the node's bpffs at each
//! scrape: drops by reason, new connections per service backend, network
//! policy verdicts and flow events, and the sizes of the service,
//! conntrack and endpoint tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use kestrel_ebpf_common::policy::{NO_POLICY, direction, verdict};

use crate::Result;
use crate::sync::{PinnedMaps, read_services};

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Escapes a label value as the text format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every dataplane metric of the node whose maps are pinned in
/// `pin_dir`; `policy_name` names a NetworkPolicy by its id.
pub fn render(pin_dir: &Path, policy_name: &dyn Fn(u32) -> Option<String>) -> Result<String> {
    let mut out = String::new();

    let mut f = Family::new(
        &mut out,
        "kestrel_dataplane_drops_total",
        "counter",
        "Packets the per-packet programs dropped, or answered in place, by reason.",
    );
    for (reason, n) in crate::inspect::drops(pin_dir)? {
        f.sample(&[("reason", reason.name())], n);
    }

    let view = read_services(&PinnedMaps::open(pin_dir)?)?;
    let mut f = Family::new(
        &mut out,
        "kestrel_service_backends",
        "gauge",
        "Backends in a service frontend's slots (scope internal: in-cluster clients).",
    );
    for fe in &view.frontends {
        f.sample(
            &[("frontend", &fe.key.to_string())],
            fe.scopes[0].len() as u64,
        );
    }
    // A backend can serve several frontends (it is shared by address,
    // port and protocol), and the kernel counts per backend.
    let mut conns: BTreeMap<String, u64> = BTreeMap::new();
    for b in view
        .frontends
        .iter()
        .flat_map(|fe| fe.scopes.iter().flatten())
        .chain(&view.unslotted)
    {
        if let Some(key) = b.backend {
            let proto = crate::sync::desired::proto::name(key.proto);
            conns.insert(format!("{key}/{proto}"), b.conns);
        }
    }
    let mut f = Family::new(
        &mut out,
        "kestrel_service_backend_connections_total",
        "counter",
        "New connections the dataplane sent to a service backend.",
    );
    for (backend, n) in &conns {
        f.sample(&[("backend", backend)], *n);
    }

    let mut f = Family::new(
        &mut out,
        "kestrel_policy_verdicts_total",
        "counter",
        "Network policy verdicts on new flows, by direction, verdict and the policy that decided (\"\" when none did).",
    );
    for (key, n) in crate::flows::verdicts(pin_dir)? {
        let policy = if key.policy_id == NO_POLICY {
            String::new()
        } else {
            policy_name(key.policy_id).unwrap_or_else(|| format!("id-{}", key.policy_id))
        };
        let dir = if key.direction == direction::INGRESS {
            "ingress"
        } else {
            "egress"
        };
        f.sample(
            &[
                ("direction", dir),
                ("verdict", verdict::name(key.verdict)),
                ("policy", &policy),
            ],
            n,
        );
    }
    let stats = crate::flows::event_stats(pin_dir)?;
    let mut f = Family::new(
        &mut out,
        "kestrel_flow_events_total",
        "counter",
        "Flow events for `kestrel observe`: sent, or lost to the rate limit or a full ring buffer.",
    );
    f.sample(&[("outcome", "sent")], stats.sent);
    f.sample(&[("outcome", "lost_rate")], stats.lost_rate);
    f.sample(&[("outcome", "lost_full")], stats.lost_full);

    let flows = crate::inspect::conntrack_entries(pin_dir)?.len();
    Family::new(
        &mut out,
        "kestrel_conntrack_entries",
        "gauge",
        "Entries in the conntrack map (two per tracked flow).",
    )
    .sample(&[], flows as u64);
    let endpoints = crate::inspect::local_endpoints(pin_dir)?.len();
    Family::new(
        &mut out,
        "kestrel_local_endpoints",
        "gauge",
        "Pods on this node the programs deliver to.",
    )
    .sample(&[], endpoints as u64);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_follow_the_text_format() {
        let mut out = String::new();
        let mut f = Family::new(&mut out, "x_total", "counter", "Things.");
        f.sample(&[("a", "b\"c\\d\ne")], 3);
        f.sample(&[], 4);
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"b\\\"c\\\\d\\ne\"} 3\nx_total 4\n"
        );
    }
}
