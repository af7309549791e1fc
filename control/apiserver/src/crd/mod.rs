//! CustomResourceDefinitions: the part of the registry that grows at run
//! time.
//!
//! Every API server follows the stored CRDs through its watch cache, so all
//! servers sharing a store serve the same custom resources. For each CRD it
//! checks the names against the built-in kinds and the older CRDs, serves
//! the CRD's versions once the names are accepted, and writes the CRD's
//! status (`acceptedNames`, `storedVersions`, the NamesAccepted and
//! Established conditions; identical writes from several servers are
//! no-ops). Deleting a CRD goes through the
//! `customresourcecleanup.apiextensions.k8s.io` finalizer: its objects are
//! deleted first, then the finalizer is removed and the CRD goes.

pub mod define;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use kestrel_api::meta;
use kestrel_api::registry::{self, ResourceDef, Subresource};
use serde_json::{Value, json};

use crate::cache::{Cache, ChangeKind, Watermark};
use crate::state::AppState;
use crate::state::Target;
use crate::write;

/// Where CRDs are stored.
pub const PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

/// How long a request for an unknown resource waits for the registry to
/// catch up with this server's cache (a CRD just created here).
const CATCH_UP: Duration = Duration::from_secs(2);

/// The custom resources being served, rebuilt on every CRD change.
#[derive(Default)]
struct Served {
    defs: Vec<&'static ResourceDef>,
    /// CRD names (`plural.group`) being deleted: creates are refused.
    terminating: Vec<String>,
}

/// The live registry: built-in kinds plus the established CRDs' versions.
pub struct Registry {
    served: RwLock<Arc<Served>>,
    /// Definitions by (CRD uid, generation), so reprocessing a CRD whose
    /// spec did not change reuses them.
    interned: Mutex<HashMap<(String, i64), Vec<&'static ResourceDef>>>,
    applied: Watermark,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty live registry; [`follow`] fills it.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            served: RwLock::new(Arc::new(Served::default())),
            interned: Mutex::new(HashMap::new()),
            applied: Watermark::default(),
        })
    }

    fn served(&self) -> Arc<Served> {
        self.served
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every served resource: built-in first, then custom.
    pub fn all(&self) -> Vec<&'static ResourceDef> {
        let served = self.served();
        registry::RESOURCES
            .iter()
            .chain(served.defs.iter().copied())
            .collect()
    }

    /// Find a resource by group, version and plural.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
        registry::lookup(group, version, plural).or_else(|| {
            self.served()
                .defs
                .iter()
                .copied()
                .find(|r| r.group == group && r.version == version && r.plural == plural)
        })
    }

    /// [`Self::lookup`], waiting (bounded) for the registry to reflect this
    /// server's cache first when the resource is unknown.
    pub async fn lookup_fresh(
        &self,
        cache: &Cache,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<&'static ResourceDef> {
        if let Some(d) = self.lookup(group, version, plural) {
            return Some(d);
        }
        if group.is_empty() || registry::RESOURCES.iter().any(|r| r.group == group) {
            return None;
        }
        self.applied.reached(cache.revision(), CATCH_UP).await;
        self.lookup(group, version, plural)
    }

    /// Find a resource by group, version and kind.
    pub fn lookup_kind(
        &self,
        group: &str,
        version: &str,
        kind: &str,
    ) -> Option<&'static ResourceDef> {
        registry::lookup_kind(group, version, kind).or_else(|| {
            self.served()
                .defs
                .iter()
                .copied()
                .find(|r| r.group == group && r.version == version && r.kind == kind)
        })
    }

    /// The served groups with their versions (core first, as `""`), the
    /// order discovery lists them in.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for r in self.all() {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, vs)) => {
                    if !vs.contains(&r.version) {
                        vs.push(r.version);
                    }
                }
                None => out.push((r.group, vec![r.version])),
            }
        }
        for (_, vs) in &mut out {
            // Upstream's priority order: GA before beta before alpha, newer first.
            vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        out
    }

    /// The resources of one group/version.
    pub fn resources_in(&self, group: &str, version: &str) -> Vec<&'static ResourceDef> {
        self.all()
            .into_iter()
            .filter(|r| r.group == group && r.version == version)
            .collect()
    }

    /// Whether creates of `def` are refused because its CRD is being deleted.
    pub fn is_terminating(&self, def: &ResourceDef) -> bool {
        def.types
            .custom()
            .is_some_and(|c| self.served().terminating.iter().any(|n| n == c.crd.0))
    }

    /// Rebuild the served set from every stored CRD.
    fn rebuild(&self, crds: &BTreeMap<String, Value>, revision: i64) -> Vec<Value> {
        let mut taken: Vec<(String, String)> = Vec::new();
        let mut defs = Vec::new();
        let mut terminating = Vec::new();
        let mut statuses = Vec::new();
        // Names already accepted stay accepted, and among the rest older
        // CRDs win, as upstream's naming controller.
        let mut ordered: Vec<&Value> = crds.values().collect();
        ordered.sort_by_key(|c| {
            (
                !names_accepted(c),
                c.pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                c.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )
        });
        let mut interned = self.interned.lock().unwrap_or_else(|p| p.into_inner());
        for crd in ordered {
            let group = crd
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let names = define::names(crd);
            let conflict = names.iter().find(|n| {
                taken.iter().any(|(g, t)| *g == group && t == *n)
                    || registry::RESOURCES.iter().any(|r| {
                        r.group == group
                            && (r.plural == n.as_str()
                                || r.kind == n.as_str()
                                || r.short_names.contains(&n.as_str()))
                    })
            });
            let name = crd
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if crd.pointer("/metadata/deletionTimestamp").is_some() {
                terminating.push(name.clone());
            }
            let accepted = conflict.is_none();
            if accepted {
                taken.extend(names.iter().map(|n| (group.clone(), n.clone())));
                let uid = crd
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let generation = crd
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let served = interned
                    .entry((uid, generation))
                    .or_insert_with(|| define::served(crd));
                defs.extend(served.iter().copied());
            }
            statuses.push(desired_status(crd, conflict.map(String::as_str)));
        }
        // Forget interned definitions of CRDs (or generations) that are gone.
        interned.retain(|(uid, generation), _| {
            crds.values().any(|c| {
                c.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid.as_str())
                    && c.pointer("/metadata/generation").and_then(Value::as_i64)
                        == Some(*generation)
            })
        });
        drop(interned);
        *self.served.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Served { defs, terminating });
        self.applied.advance(revision);
        statuses
    }
}

/// Whether a CRD's status says its names are accepted.
fn names_accepted(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("NamesAccepted")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major: u32 = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let minor = |t: &str| t.parse::<u32>().unwrap_or(0);
    match tail {
        "" => (3, major, 0),
        t if t.starts_with("beta") => (2, major, minor(&t[4..])),
        t if t.starts_with("alpha") => (1, major, minor(&t[5..])),
        _ => (0, major, 0),
    }
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str, old: &Value) -> Value {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time while the status does not change.
    let since = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter().find(|c| {
                c.get("type").and_then(Value::as_str) == Some(type_)
                    && c.get("status").and_then(Value::as_str) == Some(status)
            })
        })
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(meta::now_rfc3339()));
    json!({
        "type": type_,
        "status": status,
        "lastTransitionTime": since,
        "reason": reason,
        "message": message,
    })
}

/// The status a CRD should have: the CRD with its status replaced.
fn desired_status(crd: &Value, conflict: Option<&str>) -> Value {
    let mut conditions = Vec::new();
    let accepted_names = match conflict {
        None => crd.pointer("/spec/names").cloned().unwrap_or(json!({})),
        Some(_) => crd
            .pointer("/status/acceptedNames")
            .cloned()
            .unwrap_or(json!({"plural": "", "kind": ""})),
    };
    match conflict {
        None => {
            conditions.push(condition(
                "NamesAccepted",
                true,
                "NoConflicts",
                "no conflicts found",
                crd,
            ));
            conditions.push(condition(
                "Established",
                true,
                "InitialNamesAccepted",
                "the initial names have been accepted",
                crd,
            ));
        }
        Some(n) => {
            conditions.push(condition(
                "NamesAccepted",
                false,
                "NameConflict",
                &format!("{n:?} is already in use"),
                crd,
            ));
            conditions.push(condition(
                "Established",
                false,
                "NotAccepted",
                "not all names are accepted",
                crd,
            ));
        }
    }
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        conditions.push(condition(
            "Terminating",
            true,
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
            crd,
        ));
    }
    let mut stored: Vec<Value> = crd
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(sv) = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| {
            vs.iter()
                .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        })
        .and_then(|v| v.get("name"))
        && !stored.contains(sv)
    {
        stored.push(sv.clone());
    }
    let mut out = crd.clone();
    out["status"] = json!({
        "conditions": conditions,
        "acceptedNames": accepted_names,
        "storedVersions": stored,
    });
    out
}

/// Follow the stored CRDs for as long as the server lives: keep the
/// registry current, write CRD statuses, and clean up deleted CRDs.
pub fn follow(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    let (items, mut rx, rev) = state.cache.keyed_snapshot_and_watch(&[PREFIX]);
    let mut crds: BTreeMap<String, Value> = items
        .into_iter()
        .map(|(k, e)| (k, (*e.value).clone()))
        .collect();
    let statuses = state.crds.rebuild(&crds, rev);
    tokio::spawn(async move {
        reconcile_all(&weak, statuses).await;
        loop {
            let change = match rx.recv().await {
                Ok(c) => c,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let Some(state) = weak.upgrade() else { return };
                    let (items, new_rx, _) = state.cache.keyed_snapshot_and_watch(&[PREFIX]);
                    rx = new_rx;
                    crds = items
                        .into_iter()
                        .map(|(k, e)| (k, (*e.value).clone()))
                        .collect();
                    let rev = state.cache.revision();
                    let statuses = state.crds.rebuild(&crds, rev);
                    drop(state);
                    reconcile_all(&weak, statuses).await;
                    continue;
                }
                Err(_) => return,
            };
            let Some(state) = weak.upgrade() else { return };
            if !change.key.starts_with(PREFIX) {
                state.crds.applied.advance(change.revision);
                continue;
            }
            match change.kind {
                ChangeKind::Delete => {
                    crds.remove(&change.key);
                }
                _ => {
                    crds.insert(change.key.clone(), (*change.object).clone());
                }
            }
            let statuses = state.crds.rebuild(&crds, change.revision);
            drop(state);
            let key = change.key.clone();
            let mine: Vec<Value> = statuses
                .into_iter()
                .filter(|s| {
                    s.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| key.ends_with(&format!("/{n}")))
                })
                .collect();
            reconcile_all(&weak, mine).await;
        }
    });
}

async fn reconcile_all(state: &Weak<AppState>, desired: Vec<Value>) {
    for d in desired {
        let Some(state) = state.upgrade() else { return };
        if let Err(e) = reconcile(&state, d).await {
            tracing::warn!(error = %e, "reconciling a CustomResourceDefinition failed");
        }
    }
    // The served group versions may have changed: so may the APIServices.
    if let Some(state) = state.upgrade()
        && let Err(e) = crate::apiservice::sync(&state).await
    {
        tracing::warn!(error = %e, "syncing the local APIServices failed");
    }
}

/// Bring one CRD's status to `desired` and, when it is being deleted,
/// delete its objects and release the finalizer.
async fn reconcile(state: &Arc<AppState>, desired: Value) -> Result<(), kestrel_api::ApiError> {
    let Some(def) = registry::lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    else {
        return Ok(());
    };
    let name = desired
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let t = Target {
        def,
        ns: None,
        name: Some(name.clone()),
    };
    let status = desired.get("status").cloned().unwrap_or_default();
    let written = write::update_with(state, None, &t, Some(Subresource::Status), false, |cur| {
        let mut n = cur.clone();
        n["status"] = status.clone();
        Ok((n, None))
    })
    .await;
    let cur = match written {
        Ok(c) => c,
        Err(kestrel_api::ApiError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    if cur.pointer("/metadata/deletionTimestamp").is_none() {
        return Ok(());
    }
    // Delete every object of the CRD, then let the CRD go.
    let group = cur
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or("");
    let plural = cur
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or("");
    let prefix = format!("/registry/{group}/{plural}/");
    let (items, _) = state.cache.list(&prefix);
    for e in items {
        let key = format!(
            "{prefix}{}",
            match e
                .value
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
            {
                Some(ns) if !ns.is_empty() => format!(
                    "{ns}/{}",
                    e.value
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                ),
                _ => e
                    .value
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            }
        );
        match state.store.delete(&key, None).await {
            Ok(_) | Err(kestrel_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(kestrel_api::ApiError::Internal(format!(
                    "deleting {key}: {e}"
                )));
            }
        }
    }
    let released = write::update_with(state, None, &t, None, false, |cur| {
        let mut n = cur.clone();
        if let Some(f) = n
            .pointer_mut("/metadata/finalizers")
            .and_then(Value::as_array_mut)
        {
            f.retain(|x| x.as_str() != Some(define::CLEANUP_FINALIZER));
        }
        Ok((n, None))
    })
    .await;
    match released {
        Ok(_) | Err(kestrel_api::ApiError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
