//! The garbage collector: cascading deletion through `ownerReferences`,
//! in upstream's three modes.
//!
//! - **Background**: an object all of whose owners are gone is deleted.
//! - **Foreground**: an owner deleted with `propagationPolicy=Foreground`
//!   carries the `foregroundDeletion` finalizer (the API server adds it).
//!   Its dependents are deleted, and the finalizer goes once no dependent
//!   with `blockOwnerDeletion: true` is left, so the owner outlives them.
//! - **Orphan**: an owner deleted with `propagationPolicy=Orphan` carries the
//!   `orphan` finalizer. The references to it are removed from its
//!   dependents, then the finalizer.
//!
//! Every kind the API server serves (found through discovery) is watched
//! into a reflector, so dependents of any kind are found. The collector is
//! level-based: each pass reads the whole graph from the caches and does
//! what is due, and a pass runs after every change (debounced) and every
//! few seconds. Before a dependent is deleted because its owner seems
//! gone, the owner is looked up on the server, so a cache that lags never
//! causes a deletion. (Events are not watched, as upstream ignores them.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::Notify;

use crate::manager::{Error, Result, is_conflict, is_not_found, only_uid};

/// Finalizer of an owner waiting for its dependents (foreground deletion).
pub const FOREGROUND: &str = "foregroundDeletion";
/// Finalizer of an owner whose dependents are to be orphaned.
pub const ORPHAN: &str = "orphan";
/// How often a pass runs with nothing changed.
const RESYNC: Duration = Duration::from_secs(10);

/// Every resource the server serves that can be listed, watched and
/// deleted, in its preferred version.
pub(crate) async fn discover(client: &kube::Client) -> Result<Vec<(ApiResource, ApiCapabilities)>> {
    let d = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for g in d.groups() {
        for (ar, caps) in g.recommended_resources() {
            if [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|v| caps.supports_operation(v))
            {
                out.push((ar, caps));
            }
        }
    }
    Ok(out)
}

/// Discovery, retried until it answers.
pub(crate) async fn discover_until_ok(
    client: &kube::Client,
    who: &str,
) -> Vec<(ApiResource, ApiCapabilities)> {
    let mut delay = Duration::from_millis(200);
    loop {
        match discover(client).await {
            Ok(r) => return r,
            Err(e) => {
                tracing::warn!(controller = who, error = %e, "API discovery failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

struct Kind {
    ar: ApiResource,
    namespaced: bool,
    store: Store<DynamicObject>,
}

struct Ctx {
    client: kube::Client,
    kinds: Vec<Kind>,
}

/// What the collector knows of one object.
#[derive(Debug, Clone)]
struct Node {
    kind: usize,
    namespace: Option<String>,
    name: String,
    uid: String,
    resource_version: Option<String>,
    deleting: bool,
    finalizers: Vec<String>,
    owners: Vec<OwnerReference>,
}

/// Run the garbage collector.
pub async fn run(client: kube::Client) -> Result<()> {
    let resources = discover_until_ok(&client, "garbage-collector").await;
    let notify = Arc::new(Notify::new());
    let mut kinds = Vec::new();
    let mut watches = Vec::new();
    for (ar, caps) in resources {
        if ar.plural == "events" {
            continue;
        }
        let writer = reflector::store::Writer::new(ar.clone());
        let store = writer.as_reader();
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let n = notify.clone();
        let what = format!("{}/{}", ar.api_version, ar.plural);
        watches.push(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .for_each(move |ev| {
                    if let Err(e) = ev {
                        tracing::debug!(watch = %what, error = %e, "watch failed; retrying");
                    }
                    n.notify_one();
                    futures::future::ready(())
                }),
        );
        kinds.push(Kind {
            ar,
            namespaced: caps.scope == Scope::Namespaced,
            store,
        });
    }
    let ctx = Ctx { client, kinds };
    tokio::join!(futures::future::join_all(watches), ctx.run_passes(notify));
    Ok(())
}

impl Ctx {
    async fn run_passes(&self, notify: Arc<Notify>) {
        for k in &self.kinds {
            if k.store.wait_until_ready().await.is_err() {
                return;
            }
        }
        tracing::info!(kinds = self.kinds.len(), "garbage collector synced");
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "garbage collection pass failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            tokio::select! {
                () = notify.notified() => {
                    // Let a burst of changes land before the next pass.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                () = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    fn graph(&self) -> (HashMap<String, Node>, HashMap<String, Vec<String>>) {
        let mut nodes = HashMap::new();
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        for (i, k) in self.kinds.iter().enumerate() {
            for o in k.store.state() {
                let Some(uid) = o.metadata.uid.clone() else {
                    continue;
                };
                let owners = o.owner_references().to_vec();
                for r in &owners {
                    dependents
                        .entry(r.uid.clone())
                        .or_default()
                        .push(uid.clone());
                }
                nodes.insert(
                    uid.clone(),
                    Node {
                        kind: i,
                        namespace: o.namespace(),
                        name: o.name_any(),
                        uid,
                        resource_version: o.resource_version(),
                        deleting: o.metadata.deletion_timestamp.is_some(),
                        finalizers: o.finalizers().to_vec(),
                        owners,
                    },
                );
            }
        }
        (nodes, dependents)
    }

    /// One pass over the whole graph. Individual failures are logged and
    /// left for the next pass; a conflict just means the object moved on.
    async fn pass(&self) -> Result<()> {
        let (nodes, dependents) = self.graph();
        let mut live: HashMap<String, Option<bool>> = HashMap::new();
        let deps_of = |uid: &str| -> Vec<&Node> {
            dependents
                .get(uid)
                .into_iter()
                .flatten()
                .filter_map(|d| nodes.get(d))
                .collect()
        };
        for owner in nodes.values().filter(|n| n.deleting) {
            if owner.finalizers.iter().any(|f| f == ORPHAN) {
                let mut all = true;
                for d in deps_of(&owner.uid) {
                    let keep: Vec<OwnerReference> = d
                        .owners
                        .iter()
                        .filter(|r| r.uid != owner.uid)
                        .cloned()
                        .collect();
                    all &= self.log(self.set_owners(d, keep).await, d, "orphaning");
                }
                if all {
                    self.log(
                        self.drop_finalizer(owner, ORPHAN).await,
                        owner,
                        "finishing orphaning",
                    );
                }
            }
            if owner.finalizers.iter().any(|f| f == FOREGROUND) {
                let mut blocking = false;
                for d in deps_of(&owner.uid) {
                    let blocks = d
                        .owners
                        .iter()
                        .any(|r| r.uid == owner.uid && r.block_owner_deletion == Some(true));
                    blocking |= blocks;
                    if d.deleting {
                        continue;
                    }
                    // A dependent that has another owner still standing
                    // stays; it only loses this reference.
                    let mut other_solid = false;
                    for r in d.owners.iter().filter(|r| r.uid != owner.uid) {
                        if self.solid(&nodes, &mut live, d, r).await != Some(false) {
                            other_solid = true;
                        }
                    }
                    if other_solid {
                        let keep = d
                            .owners
                            .iter()
                            .filter(|r| r.uid != owner.uid)
                            .cloned()
                            .collect();
                        self.log(
                            self.set_owners(d, keep).await,
                            d,
                            "detaching from a foreground owner",
                        );
                    } else {
                        let policy = if dependents.contains_key(&d.uid) {
                            PropagationPolicy::Foreground
                        } else {
                            PropagationPolicy::Background
                        };
                        self.log(
                            self.delete(d, policy).await,
                            d,
                            "deleting for a foreground owner",
                        );
                    }
                }
                if !blocking {
                    self.log(
                        self.drop_finalizer(owner, FOREGROUND).await,
                        owner,
                        "finishing foreground deletion",
                    );
                }
            }
        }
        for d in nodes
            .values()
            .filter(|n| !n.deleting && !n.owners.is_empty())
        {
            let mut solid = 0;
            let mut dangling = Vec::new();
            let mut unknown = false;
            for r in &d.owners {
                match nodes.get(&r.uid) {
                    // Waiting for its dependents: the pass above acts.
                    Some(o) if o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND) => {}
                    Some(_) => solid += 1,
                    None => match self.solid(&nodes, &mut live, d, r).await {
                        Some(true) => solid += 1,
                        Some(false) => dangling.push(r.uid.clone()),
                        None => unknown = true,
                    },
                }
            }
            if unknown || dangling.is_empty() {
                continue;
            }
            if solid > 0 {
                let keep = d
                    .owners
                    .iter()
                    .filter(|r| !dangling.contains(&r.uid))
                    .cloned()
                    .collect();
                self.log(
                    self.set_owners(d, keep).await,
                    d,
                    "removing references to deleted owners",
                );
            } else if dangling.len() == d.owners.len() {
                let policy = if d.finalizers.iter().any(|f| f == ORPHAN) {
                    PropagationPolicy::Orphan
                } else if d.finalizers.iter().any(|f| f == FOREGROUND) {
                    PropagationPolicy::Foreground
                } else {
                    PropagationPolicy::Background
                };
                tracing::info!(kind = %self.kinds[d.kind].ar.kind, namespace = ?d.namespace, name = %d.name, "deleting an object whose owners are gone");
                self.log(
                    self.delete(d, policy).await,
                    d,
                    "deleting an orphaned dependent",
                );
            }
        }
        Ok(())
    }

    fn log(&self, r: Result<()>, n: &Node, what: &str) -> bool {
        match r {
            Ok(()) => true,
            Err(Error::Kube(e)) if is_not_found(&e) || is_conflict(&e) => false,
            Err(e) => {
                tracing::warn!(kind = %self.kinds[n.kind].ar.kind, namespace = ?n.namespace, name = %n.name, error = %e, "garbage collector: {what} failed");
                false
            }
        }
    }

    /// Whether the owner `r` of `d` exists: from the caches, else asked of
    /// the server. `None` when that cannot be told (unknown kind, error).
    async fn solid(
        &self,
        nodes: &HashMap<String, Node>,
        live: &mut HashMap<String, Option<bool>>,
        d: &Node,
        r: &OwnerReference,
    ) -> Option<bool> {
        if let Some(o) = nodes.get(&r.uid) {
            return Some(!(o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND)));
        }
        if let Some(v) = live.get(&r.uid) {
            return *v;
        }
        let v = self.lookup_owner(d, r).await;
        live.insert(r.uid.clone(), v);
        v
    }

    async fn lookup_owner(&self, d: &Node, r: &OwnerReference) -> Option<bool> {
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", r.api_version.as_str()),
        };
        let gvk = GroupVersionKind::gvk(group, version, &r.kind);
        let k = self
            .kinds
            .iter()
            .find(|k| k.ar.group == gvk.group && k.ar.kind == gvk.kind);
        let Some(k) = k else {
            tracing::debug!(api_version = %r.api_version, kind = %r.kind, "owner of an unknown kind; leaving its dependent alone");
            return None;
        };
        let api: Api<DynamicObject> = match (&d.namespace, k.namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, &k.ar),
            (None, true) => {
                // A cluster-scoped dependent cannot have a namespaced owner.
                return None;
            }
            (_, false) => Api::all_with(self.client.clone(), &k.ar),
        };
        match api.get_opt(&r.name).await {
            Ok(Some(o)) => Some(o.metadata.uid.as_deref() == Some(r.uid.as_str())),
            Ok(None) => Some(false),
            Err(e) => {
                tracing::debug!(owner = %r.name, error = %e, "owner lookup failed");
                None
            }
        }
    }

    fn api(&self, n: &Node) -> Api<DynamicObject> {
        let k = &self.kinds[n.kind];
        match (&n.namespace, k.namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, &k.ar),
            _ => Api::all_with(self.client.clone(), &k.ar),
        }
    }

    async fn delete(&self, n: &Node, policy: PropagationPolicy) -> Result<()> {
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            ..only_uid(Some(n.uid.clone()))
        };
        self.api(n).delete(&n.name, &dp).await?;
        Ok(())
    }

    /// Replace `n`'s ownerReferences, conditional on its resourceVersion.
    async fn set_owners(&self, n: &Node, owners: Vec<OwnerReference>) -> Result<()> {
        let patch = serde_json::json!({"metadata": {
            "ownerReferences": owners,
            "resourceVersion": n.resource_version,
        }});
        self.api(n)
            .patch(&n.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Remove one finalizer, conditional on the resourceVersion (another
    /// controller may be changing the list too).
    async fn drop_finalizer(&self, n: &Node, which: &str) -> Result<()> {
        let rest: Vec<&String> = n.finalizers.iter().filter(|f| *f != which).collect();
        let patch = serde_json::json!({"metadata": {
            "finalizers": rest,
            "resourceVersion": n.resource_version,
        }});
        self.api(n)
            .patch(&n.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::debug!(name = %n.name, finalizer = which, "removed finalizer");
        Ok(())
    }
}
