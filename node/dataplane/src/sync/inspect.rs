//! A readable view of the service maps, for `kestrel bpf services`: each
//! frontend with its flags and the backends of its slots, per scope when
//! the scopes differ, with the connections the kernel sent to each backend.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kestrel_ebpf_common::lb::{Backend, ServiceValue, backend_flags, svc_flags};

use super::desired::{BackendKey, FrontendKey, SCOPES};
use super::diff::{backend_key, frontend_key};
use super::maps::LbMaps;
use crate::Result;

/// One backend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendView {
    /// Its id.
    pub id: u32,
    /// Its address, or `None` if the id is missing from BACKENDS (which the
    /// sync never lets happen).
    pub backend: Option<BackendKey>,
    /// [`backend_flags`].
    pub flags: u8,
    /// New connections sent to it, summed over CPUs.
    pub conns: u64,
}

/// One frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendView {
    /// Address, port, protocol.
    pub key: FrontendKey,
    /// The master entry each scope's traffic finds, if any. Where no
    /// EXTERNAL scope is written, its traffic reads the INTERNAL one, and
    /// so does this view.
    pub masters: [Option<ServiceValue>; 2],
    /// The backends in the slots each scope's traffic finds, in slot order.
    pub scopes: [Vec<BackendView>; 2],
}

/// The whole service table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicesView {
    /// Every frontend, sorted.
    pub frontends: Vec<FrontendView>,
    /// Backends in no slot: terminating or not-ready endpoints kept for the
    /// connections they still serve.
    pub unslotted: Vec<BackendView>,
}

/// Reads the maps into a [`ServicesView`].
pub fn read_services(maps: &impl LbMaps) -> Result<ServicesView> {
    let backends: BTreeMap<u32, Backend> = maps.dump_backends()?.into_iter().collect();
    let conns = maps.dump_backend_conns()?;
    let view_of = |id: u32| {
        let b = backends.get(&id);
        BackendView {
            id,
            backend: b.map(backend_key),
            flags: b.map_or(0, |b| b.flags),
            conns: conns.get(&id).copied().unwrap_or(0),
        }
    };
    let mut entries: BTreeMap<FrontendKey, [BTreeMap<u16, ServiceValue>; 2]> = BTreeMap::new();
    for (key, value) in maps.dump_services()? {
        if let Some(scope) = entries
            .entry(frontend_key(&key))
            .or_default()
            .get_mut(usize::from(key.scope))
        {
            scope.insert(key.slot, value);
        }
    }
    let mut slotted = BTreeSet::new();
    let mut view = ServicesView::default();
    for (key, scopes) in entries {
        let masters = SCOPES.map(|s| scopes[usize::from(s)].get(&0).copied());
        let lists = SCOPES.map(|s| {
            let entries = &scopes[usize::from(s)];
            let count = entries.get(&0).map_or(0, |m| m.count);
            (1..=count)
                .filter_map(|slot| entries.get(&slot))
                .map(|v| {
                    slotted.insert(v.backend_id);
                    view_of(v.backend_id)
                })
                .collect::<Vec<_>>()
        });
        let [internal, external] = lists;
        let (masters, lists) = match masters {
            [Some(int), None] => ([Some(int), Some(int)], [internal.clone(), internal]),
            _ => (masters, [internal, external]),
        };
        view.frontends.push(FrontendView {
            key,
            masters,
            scopes: lists,
        });
    }
    view.unslotted = backends
        .keys()
        .filter(|id| !slotted.contains(id))
        .map(|&id| view_of(id))
        .collect();
    Ok(view)
}

fn flag_names(flags: u16, affinity_timeout_s: u32) -> Vec<String> {
    let mut out = Vec::new();
    for (bit, name) in [
        (svc_flags::NODE_PORT, "nodeport"),
        (svc_flags::EXTERNAL_IP, "external-ip"),
        (svc_flags::LOAD_BALANCER, "load-balancer"),
        (svc_flags::INT_LOCAL, "internal-local-only"),
        (svc_flags::EXT_LOCAL, "external-local-only"),
    ] {
        if flags & bit != 0 {
            out.push(name.to_owned());
        }
    }
    if flags & svc_flags::AFFINITY != 0 {
        out.push(format!("affinity={affinity_timeout_s}s"));
    }
    out
}

impl fmt::Display for BackendView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            Some(b) => write!(f, "{b}")?,
            None => write!(f, "<missing backend>")?,
        }
        write!(f, " id={} conns={}", self.id, self.conns)?;
        if self.flags & backend_flags::LOCAL != 0 {
            write!(f, " local")?;
        }
        if self.flags & backend_flags::TERMINATING != 0 {
            write!(f, " terminating")?;
        }
        Ok(())
    }
}

impl fmt::Display for ServicesView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.frontends.is_empty() {
            writeln!(f, "no service frontends")?;
        }
        for fe in &self.frontends {
            let master = fe.masters[0].or(fe.masters[1]).unwrap_or_default();
            write!(f, "{} rev-nat={}", fe.key, master.rev_nat_id)?;
            for name in flag_names(master.flags, master.affinity_timeout_s) {
                write!(f, " {name}")?;
            }
            writeln!(f)?;
            let same =
                fe.scopes[0] == fe.scopes[1] && fe.masters[0].is_some() == fe.masters[1].is_some();
            for (i, label) in ["internal", "external"].into_iter().enumerate() {
                if same && i == 1 {
                    break;
                }
                let prefix = if same { "" } else { label };
                if fe.masters[i].is_none() {
                    writeln!(f, "  {prefix} (no entry)")?;
                } else if fe.scopes[i].is_empty() {
                    writeln!(f, "  {prefix} → no backend (connections are refused)")?;
                }
                for b in &fe.scopes[i] {
                    if prefix.is_empty() {
                        writeln!(f, "  → {b}")?;
                    } else {
                        writeln!(f, "  {prefix} → {b}")?;
                    }
                }
            }
        }
        if !self.unslotted.is_empty() {
            writeln!(f, "backends in no slot (kept for existing connections):")?;
            for b in &self.unslotted {
                writeln!(f, "  {b}")?;
            }
        }
        Ok(())
    }
}
