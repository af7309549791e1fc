//! The per-kind hooks the generic write path calls, chosen by the resource
//! definition's `strategy.hooks` (`kestrel_api::registry::Hooks`): what a
//! kind does with the API server's own state. The declarative half of a
//! kind's strategy (generation, who writes status, TTL, finalizers) is data
//! on the definition itself.

mod componentstatus;
pub mod cronjob;
pub mod disruption;
pub mod ingress;
pub mod job;
mod namespace;
pub mod pod;
pub mod replicationcontroller;
pub mod storage;

use std::sync::Arc;

use kestrel_api::ApiError;
use kestrel_api::registry::{Hooks, ResourceDef, Subresource};
use serde_json::Value;

use crate::admission::{self, Allocated};
use crate::cache::Entry;
use crate::state::{AppState, Target};

/// Before a create or main-resource update is stored: take what the object
/// needs (a Service's ClusterIPs and NodePorts). A failed write gives it
/// back with [`Allocated::release`].
pub fn allocate(
    state: &AppState,
    def: &ResourceDef,
    obj: &mut Value,
    old: Option<&Value>,
    sub: Option<Subresource>,
) -> Result<Option<Allocated>, ApiError> {
    match def.strategy.hooks {
        Hooks::Service if sub.is_none() => admission::allocate_service(state, obj, old).map(Some),
        _ => Ok(None),
    }
}

/// After an update is stored: give back what the old object held and the
/// new one does not (NodePorts a Service dropped).
pub fn updated(state: &AppState, def: &ResourceDef, old: &Value, new: &Value) {
    if def.strategy.hooks == Hooks::Service {
        release_dropped_ports(state, old, new);
    }
}

/// After an object is gone from the store: give back what it held.
pub fn deleted(state: &AppState, def: &ResourceDef, obj: &Value) {
    if def.strategy.hooks == Hooks::Service {
        admission::release_service(state, obj);
    }
}

/// The objects of a kind that is computed on each read instead of
/// stored (ComponentStatus), with the warning its reads carry. `None` for
/// stored kinds.
pub async fn computed(
    state: &Arc<AppState>,
    def: &ResourceDef,
) -> Option<(Vec<Value>, &'static str)> {
    match def.strategy.hooks {
        Hooks::ComponentStatus => {
            Some((componentstatus::all(state).await, componentstatus::WARNING))
        }
        _ => None,
    }
}

/// A delete the kind carries out itself rather than the generic path:
/// a namespace turns Terminating and its controller empties it. `None`
/// leaves the delete to the generic path.
pub async fn delete(
    state: &Arc<AppState>,
    t: &Target,
    cur: &Entry,
    dry: bool,
) -> Option<Result<Value, ApiError>> {
    match t.def.strategy.hooks {
        Hooks::Namespace => Some(namespace::begin_delete(state, t, cur, dry).await),
        _ => None,
    }
}

/// Whether a delete only marks the object and lets another component
/// finish it: a pod bound to a node shuts down gracefully, and its node
/// agent completes the delete. Unbound pods have nothing to stop.
pub fn graceful(def: &ResourceDef, obj: &Value, grace: Option<i64>) -> bool {
    def.strategy.hooks == Hooks::Pod
        && obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        && grace.unwrap_or(1) > 0
}

fn release_dropped_ports(state: &AppState, old: &Value, new: &Value) {
    let ports = |v: &Value| -> Vec<u64> {
        v.pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                    .collect()
            })
            .unwrap_or_default()
    };
    let keep = ports(new);
    for p in ports(old) {
        if !keep.contains(&p)
            && let Ok(p) = u16::try_from(p)
        {
            state.alloc.release_port(p);
        }
    }
}
