//! The Deployment controller: one ReplicaSet per pod template, told apart
//! by the `pod-template-hash` label; RollingUpdate and Recreate moves
//! between them; revisions in `deployment.kubernetes.io/revision` (which
//! `kubectl rollout history/undo` read); old ReplicaSets pruned to
//! `revisionHistoryLimit`; and upstream's Available/Progressing conditions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kestrel_client::events::EventType;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::workload::pods::{self, Claim, is_terminal};
use crate::workload::{
    Context, Error, Result, age_secs, controller_of, controller_ref, drive, now, owners_of,
    scaled_value, selector, template_hash, write_status,
};

/// The label that tells a Deployment's ReplicaSets (and their pods) apart.
pub const HASH_LABEL: &str = "pod-template-hash";
/// The revision of a ReplicaSet, and of the Deployment (its newest).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Deployment annotations not copied onto its ReplicaSets (kubectl's
/// rollback copies the rest back).
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

pub(crate) fn controller(ctx: Arc<Context>) -> BoxFuture<'static, ()> {
    let store = ctx.deployments.store().clone();
    let for_rs = store.clone();
    let for_pods = store.clone();
    let rs_store = ctx.replicasets.store().clone();
    let c = Controller::for_shared_stream(ctx.deployments.subscribe(), store)
        .watches_shared_stream(ctx.replicasets.subscribe(), move |rs: Arc<ReplicaSet>| {
            owners_of(&*rs, &for_rs, |d: &Deployment| Some(&d.spec.selector))
        })
        // Recreate waits for the old pods to be gone: their deletion must
        // wake the Deployment.
        .watches_shared_stream(ctx.pods.subscribe(), move |pod: Arc<Pod>| {
            let ns = pod.namespace().unwrap_or_default();
            controller_of(&*pod)
                .filter(|r| r.kind == "ReplicaSet")
                .and_then(|r| rs_store.get(&ObjectRef::new(&r.name).within(&ns)))
                .and_then(|rs| {
                    controller_of(&*rs)
                        .filter(|r| r.kind == "Deployment")
                        .map(|r| ObjectRef::new(&r.name).within(&ns))
                })
                .filter(|d| for_pods.get(d).is_some())
        });
    drive(
        c,
        ctx,
        |d, ctx| async move { Sync::new(&d, &ctx)?.run().await },
    )
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(0)
}

fn status_of(
    rs: &ReplicaSet,
    f: impl Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>,
) -> i32 {
    rs.status.as_ref().and_then(f).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    status_of(rs, |s| s.available_replicas)
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Templates equal but for the hash label, as upstream compares them.
fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        let meta = t.metadata.get_or_insert_with(ObjectMeta::default);
        if let Some(l) = meta.labels.as_mut() {
            l.remove(HASH_LABEL);
        }
        serde_json::to_value(t).unwrap_or_default()
    };
    strip(a) == strip(b)
}

/// One pass over one Deployment.
struct Sync<'a> {
    d: &'a Deployment,
    ctx: &'a Context,
    ns: String,
    name: String,
    want: i32,
    /// The Deployment's ReplicaSets (claimed), updated as we change them.
    all: Vec<Arc<ReplicaSet>>,
    /// A ReplicaSet this pass created, for the Progressing condition.
    created: Option<String>,
    collision_count: Option<i32>,
}

impl<'a> Sync<'a> {
    fn new(d: &'a Deployment, ctx: &'a Context) -> Result<Self> {
        Ok(Self {
            d,
            ctx,
            ns: d.namespace().unwrap_or_default(),
            name: d.name_any(),
            want: d.spec.replicas.unwrap_or(1),
            all: Vec::new(),
            created: None,
            collision_count: d.status.as_ref().and_then(|s| s.collision_count),
        })
    }

    fn rs_api(&self) -> Api<ReplicaSet> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    fn recreate(&self) -> bool {
        self.d
            .spec
            .strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            == Some("Recreate")
    }

    /// (maxSurge, maxUnavailable) as counts; never both zero.
    fn fenceposts(&self) -> Result<(i32, i32)> {
        let ru = self
            .d
            .spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref());
        let surge = scaled_value(ru.and_then(|r| r.max_surge.as_ref()), self.want, true)?;
        let unavailable = scaled_value(
            ru.and_then(|r| r.max_unavailable.as_ref()),
            self.want,
            false,
        )?;
        Ok(if surge == 0 && unavailable == 0 {
            (0, 1)
        } else {
            (surge, unavailable)
        })
    }

    fn max_unavailable(&self) -> i32 {
        if self.recreate() || self.want == 0 {
            return 0;
        }
        self.fenceposts().map_or(0, |(_, u)| u.min(self.want))
    }

    async fn run(mut self) -> Result<Action> {
        let rec = &self.ctx.events.deployment;
        let Some(sel) = selector(Some(&self.d.spec.selector)) else {
            rec.publish(
                self.d,
                EventType::Warning,
                "InvalidSelector",
                "spec.selector does not parse as a label selector",
            )
            .await;
            return Ok(Action::await_change());
        };
        if sel.is_empty() {
            rec.publish(
                self.d,
                EventType::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            )
            .await;
            return Ok(Action::await_change());
        }
        if let Err(e) = self.fenceposts() {
            rec.publish(
                self.d,
                EventType::Warning,
                "InvalidStrategy",
                &e.to_string(),
            )
            .await;
            return Ok(Action::await_change());
        }
        let deleting = self.d.metadata.deletion_timestamp.is_some();
        let candidates = self
            .ctx
            .replicasets
            .store()
            .state()
            .into_iter()
            .filter(|rs| rs.metadata.namespace.as_deref() == Some(self.ns.as_str()))
            .collect();
        let claim = Claim {
            owner: controller_ref(self.d)?,
            selector: &sel,
            owner_deleting: deleting,
        };
        self.all = pods::claim(&self.rs_api(), &claim, candidates).await?;
        self.all.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        });
        if deleting {
            return self.sync_status(None, false).await;
        }
        if self.d.spec.paused == Some(true) {
            let new = self.new_replica_set(false).await?;
            self.scale_paused(new.as_ref()).await?;
            self.cleanup(new.as_ref()).await?;
            return self.sync_status(new.as_ref(), true).await;
        }
        if self.recreate() {
            self.rollout_recreate().await
        } else {
            self.rollout_rolling().await
        }
    }

    fn old_of(&self, new: Option<&Arc<ReplicaSet>>) -> Vec<Arc<ReplicaSet>> {
        self.all
            .iter()
            .filter(|rs| new.is_none_or(|n| n.uid() != rs.uid()))
            .cloned()
            .collect()
    }

    fn replace(&mut self, rs: Arc<ReplicaSet>) {
        if let Some(slot) = self.all.iter_mut().find(|r| r.uid() == rs.uid()) {
            *slot = rs;
        } else {
            self.all.push(rs);
        }
    }

    /// Annotations the Deployment hands its ReplicaSets.
    fn copied_annotations(&self) -> BTreeMap<String, String> {
        self.d
            .annotations()
            .iter()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn size_annotations(&self) -> Result<BTreeMap<String, String>> {
        let surge = if self.recreate() {
            0
        } else {
            self.fenceposts()?.0
        };
        Ok(BTreeMap::from([
            (DESIRED_REPLICAS.to_owned(), self.want.to_string()),
            (MAX_REPLICAS.to_owned(), (self.want + surge).to_string()),
        ]))
    }

    /// The ReplicaSet running the Deployment's current template, brought up
    /// to date (revision, annotations, minReadySeconds); created when
    /// `create` and missing.
    async fn new_replica_set(&mut self, create: bool) -> Result<Option<Arc<ReplicaSet>>> {
        let existing = self
            .all
            .iter()
            .find(|rs| {
                rs.spec
                    .template
                    .as_ref()
                    .is_some_and(|t| same_template(t, &self.d.spec.template))
            })
            .cloned();
        let max_old = self
            .old_of(existing.as_ref())
            .iter()
            .map(|rs| revision(rs))
            .max()
            .unwrap_or(0);
        let new_revision = max_old + 1;
        let rs = match existing {
            Some(rs) => Some(self.update_new_rs(rs, new_revision).await?),
            None if create => self.create_new_rs(new_revision).await?,
            None => None,
        };
        if let Some(rs) = &rs {
            let rev = revision(rs).to_string();
            if self.d.annotations().get(REVISION) != Some(&rev) {
                let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.ns);
                let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
                api.patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
        }
        Ok(rs)
    }

    async fn update_new_rs(
        &mut self,
        rs: Arc<ReplicaSet>,
        new_revision: i64,
    ) -> Result<Arc<ReplicaSet>> {
        let mut annotations = self.copied_annotations();
        let current = revision(&rs);
        if current < new_revision {
            annotations.insert(REVISION.to_owned(), new_revision.to_string());
            if current > 0 {
                // The revisions this template has had, as upstream records.
                let history = rs
                    .annotations()
                    .get(REVISION_HISTORY)
                    .filter(|h| !h.is_empty())
                    .map_or_else(|| current.to_string(), |h| format!("{h},{current}"));
                annotations.insert(REVISION_HISTORY.to_owned(), history);
            }
        }
        let stale = annotations
            .iter()
            .any(|(k, v)| rs.annotations().get(k) != Some(v));
        let min_ready = self.d.spec.min_ready_seconds;
        if !stale && rs.spec.min_ready_seconds.unwrap_or(0) == min_ready.unwrap_or(0) {
            return Ok(rs);
        }
        self.patch_rs(
            &rs,
            &annotations,
            json!({"minReadySeconds": min_ready.unwrap_or(0)}),
        )
        .await
    }

    /// Merge `annotations` and `spec` into `rs`, if it is still the
    /// version we read, and keep the result.
    async fn patch_rs(
        &mut self,
        rs: &ReplicaSet,
        annotations: &BTreeMap<String, String>,
        spec: serde_json::Value,
    ) -> Result<Arc<ReplicaSet>> {
        let patch = json!({
            "metadata": {"annotations": annotations, "resourceVersion": rs.resource_version()},
            "spec": spec,
        });
        let updated = self
            .rs_api()
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        let updated = Arc::new(updated);
        self.replace(updated.clone());
        Ok(updated)
    }

    async fn create_new_rs(&mut self, new_revision: i64) -> Result<Option<Arc<ReplicaSet>>> {
        let hash = template_hash(&self.d.spec.template, self.collision_count);
        let rs_name = format!("{}-{hash}", self.name);
        let mut template = self.d.spec.template.clone();
        template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.to_owned(), hash.clone());
        let mut sel: LabelSelector = self.d.spec.selector.clone();
        sel.match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.to_owned(), hash.clone());
        let mut labels = self
            .d
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(HASH_LABEL.to_owned(), hash);
        let mut annotations = self.copied_annotations();
        annotations.extend(self.size_annotations()?);
        annotations.insert(REVISION.to_owned(), new_revision.to_string());
        let old = self.all.clone();
        let start = self.new_rs_replicas(&old, None)?;
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(rs_name.clone()),
                namespace: Some(self.ns.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: Some(vec![controller_ref(self.d)?]),
                ..Default::default()
            },
            spec: k8s_openapi::api::apps::v1::ReplicaSetSpec {
                replicas: Some(start),
                min_ready_seconds: self.d.spec.min_ready_seconds,
                selector: sel,
                template: Some(template),
            },
            status: None,
        };
        let rec = &self.ctx.events.deployment;
        match self.rs_api().create(&PostParams::default(), &rs).await {
            Ok(rs) => {
                rec.publish(
                    self.d,
                    EventType::Normal,
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {rs_name} from 0 to {start}"),
                )
                .await;
                self.created = Some(rs_name);
                let rs = Arc::new(rs);
                self.all.push(rs.clone());
                Ok(Some(rs))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Ours, and our store is just behind: use it.
                let found = self.rs_api().get(&rs_name).await?;
                let ours = controller_of(&found)
                    .is_some_and(|r| Some(&r.uid) == self.d.metadata.uid.as_ref());
                if ours
                    && found
                        .spec
                        .template
                        .as_ref()
                        .is_some_and(|t| same_template(t, &self.d.spec.template))
                {
                    let rs = Arc::new(found);
                    self.replace(rs.clone());
                    return Ok(Some(rs));
                }
                // Someone else's ReplicaSet has our name: count a collision
                // so the next hash differs.
                let count = self.collision_count.unwrap_or(0) + 1;
                write_status(self.ctx, self.d, json!({"collisionCount": count})).await?;
                Err(Error::Invalid(format!(
                    "replica set {rs_name} exists with another template; collisionCount is now {count}"
                )))
            }
            Err(e) => {
                rec.publish(
                    self.d,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Failed to create new replica set {rs_name:?}: {e}"),
                )
                .await;
                Err(e.into())
            }
        }
    }

    /// How big the new ReplicaSet may be now.
    fn new_rs_replicas(&self, all: &[Arc<ReplicaSet>], new: Option<&ReplicaSet>) -> Result<i32> {
        if self.recreate() {
            return Ok(self.want);
        }
        let new_count = new.map_or(0, replicas);
        let (surge, _) = self.fenceposts()?;
        let current: i32 = all.iter().map(|rs| replicas(rs)).sum();
        let max_total = self.want + surge;
        if current >= max_total {
            return Ok(new_count);
        }
        let up = (max_total - current).min(self.want - new_count).max(0);
        Ok(new_count + up)
    }

    /// Set `rs` to `to` replicas (and the size annotations). Returns
    /// whether the replica count changed.
    async fn scale(&mut self, rs: &ReplicaSet, to: i32) -> Result<bool> {
        let from = replicas(rs);
        let sizes = self.size_annotations()?;
        let annotated = sizes
            .iter()
            .all(|(k, v)| rs.annotations().get(k) == Some(v));
        if from == to && annotated {
            return Ok(false);
        }
        self.patch_rs(rs, &sizes, json!({"replicas": to})).await?;
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            self.ctx
                .events
                .deployment
                .publish(
                    self.d,
                    EventType::Normal,
                    "ScalingReplicaSet",
                    &format!(
                        "Scaled {dir} replica set {} from {from} to {to}",
                        rs.name_any()
                    ),
                )
                .await;
        }
        Ok(from != to)
    }

    async fn rollout_rolling(mut self) -> Result<Action> {
        let Some(new) = self.new_replica_set(true).await? else {
            return Err(Error::Invalid("no new replica set".to_owned()));
        };
        // Scale up the new ReplicaSet as far as maxSurge allows.
        let target = if replicas(&new) > self.want {
            self.want
        } else {
            self.new_rs_replicas(&self.all.clone(), Some(&new))?
        };
        if self.scale(&new, target).await? {
            let new = self.current(&new);
            return self.sync_status(Some(&new), false).await;
        }
        let new = self.current(&new);
        if self.scale_down_old(&new).await? {
            let new = self.current(&new);
            return self.sync_status(Some(&new), false).await;
        }
        if self.complete(&new) {
            self.cleanup(Some(&new)).await?;
        }
        self.sync_status(Some(&new), false).await
    }

    /// Our latest copy of `rs`.
    fn current(&self, rs: &Arc<ReplicaSet>) -> Arc<ReplicaSet> {
        self.all
            .iter()
            .find(|r| r.uid() == rs.uid())
            .cloned()
            .unwrap_or_else(|| rs.clone())
    }

    /// Scale old ReplicaSets down without dropping below
    /// `replicas - maxUnavailable` available pods: first their unavailable
    /// pods, then available ones, oldest ReplicaSet first.
    async fn scale_down_old(&mut self, new: &Arc<ReplicaSet>) -> Result<bool> {
        let old = self.old_of(Some(new));
        if old.iter().map(|rs| replicas(rs)).sum::<i32>() == 0 {
            return Ok(false);
        }
        let (_, max_unavailable) = self.fenceposts()?;
        let min_available = self.want - max_unavailable.min(self.want);
        let all_pods: i32 = self.all.iter().map(|rs| replicas(rs)).sum();
        let new_unavailable = (replicas(new) - available(new)).max(0);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        let mut scaled = 0;
        for rs in &old {
            if scaled >= max_scaled_down {
                break;
            }
            let unhealthy = replicas(rs) - available(rs);
            if replicas(rs) == 0 || unhealthy <= 0 {
                continue;
            }
            let n = (max_scaled_down - scaled).min(unhealthy);
            self.scale(rs, replicas(rs) - n).await?;
            scaled += n;
        }
        let available_now: i32 = self.all.iter().map(|rs| available(rs)).sum();
        if available_now > min_available {
            let budget = available_now - min_available;
            let mut done = 0;
            for rs in self.old_of(Some(new)) {
                if done >= budget {
                    break;
                }
                if replicas(&rs) == 0 {
                    continue;
                }
                let n = replicas(&rs).min(budget - done);
                self.scale(&rs, replicas(&rs) - n).await?;
                done += n;
            }
            scaled += done;
        }
        Ok(scaled > 0)
    }

    async fn rollout_recreate(mut self) -> Result<Action> {
        let new = self.new_replica_set(false).await?;
        let mut scaled = false;
        for rs in self.old_of(new.as_ref()) {
            if replicas(&rs) > 0 {
                scaled |= self.scale(&rs, 0).await?;
            }
        }
        if scaled {
            return self.sync_status(new.as_ref(), false).await;
        }
        // Recreate means no old pod runs beside a new one.
        let old_uids: Vec<_> = self
            .old_of(new.as_ref())
            .iter()
            .filter_map(|rs| rs.uid())
            .collect();
        let old_running = pods::pods_in(self.ctx, &self.ns).iter().any(|p| {
            !is_terminal(p) && controller_of(&**p).is_some_and(|r| old_uids.contains(&r.uid))
        });
        if old_running {
            return self.sync_status(new.as_ref(), false).await;
        }
        let new = match new {
            Some(n) => n,
            None => self
                .new_replica_set(true)
                .await?
                .ok_or_else(|| Error::Invalid("no new replica set".to_owned()))?,
        };
        let want = self.want;
        self.scale(&new, want).await?;
        let new = self.current(&new);
        if self.complete(&new) {
            self.cleanup(Some(&new)).await?;
        }
        self.sync_status(Some(&new), false).await
    }

    /// A paused Deployment still follows `replicas`: when one ReplicaSet
    /// is active it takes the new size.
    async fn scale_paused(&mut self, new: Option<&Arc<ReplicaSet>>) -> Result<()> {
        let active: Vec<_> = self
            .all
            .iter()
            .filter(|rs| replicas(rs) > 0)
            .cloned()
            .collect();
        let target = match active.as_slice() {
            [one] => Some(one.clone()),
            [] => new.cloned().or_else(|| self.all.last().cloned()),
            _ => None,
        };
        if let Some(rs) = target {
            let want = self.want;
            self.scale(&rs, want).await?;
        }
        Ok(())
    }

    fn complete(&self, new: &ReplicaSet) -> bool {
        let s = self.status(Some(new));
        s.updated_replicas == Some(self.want)
            && s.replicas == Some(self.want)
            && s.available_replicas == Some(self.want)
    }

    /// Delete the oldest idle ReplicaSets beyond `revisionHistoryLimit`.
    async fn cleanup(&mut self, new: Option<&Arc<ReplicaSet>>) -> Result<()> {
        let Some(limit) = self.d.spec.revision_history_limit else {
            return Ok(());
        };
        let mut old: Vec<_> = self
            .old_of(new)
            .into_iter()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let excess = old
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        old.sort_by_key(|rs| revision(rs));
        for rs in old.into_iter().take(excess) {
            let idle = replicas(&rs) == 0
                && status_of(&rs, |s| Some(s.replicas)) == 0
                && rs.status.as_ref().and_then(|s| s.observed_generation) >= rs.metadata.generation;
            if !idle {
                continue;
            }
            match self
                .rs_api()
                .delete(&rs.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn status(&self, new: Option<&ReplicaSet>) -> k8s_openapi::api::apps::v1::DeploymentStatus {
        let sum = |f: &dyn Fn(&ReplicaSet) -> i32| self.all.iter().map(|rs| f(rs)).sum::<i32>();
        let available = sum(&available);
        let total = sum(&replicas);
        k8s_openapi::api::apps::v1::DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(sum(&|rs| status_of(rs, |s| Some(s.replicas)))),
            updated_replicas: Some(new.map_or(0, |rs| status_of(rs, |s| Some(s.replicas)))),
            ready_replicas: Some(sum(&|rs| status_of(rs, |s| s.ready_replicas))),
            available_replicas: Some(available),
            unavailable_replicas: Some((total - available).max(0)),
            collision_count: self.collision_count,
            ..Default::default()
        }
    }

    /// Compute and write the status, with upstream's conditions, and say
    /// when to look again (to notice a missed progress deadline).
    async fn sync_status(&self, new: Option<&Arc<ReplicaSet>>, paused: bool) -> Result<Action> {
        let old = self.d.status.clone().unwrap_or_default();
        let mut st = self.status(new.map(|rs| &**rs));
        let mut conds = old.conditions.clone().unwrap_or_default();
        let (ok, reason, msg) =
            if st.available_replicas.unwrap_or(0) >= self.want - self.max_unavailable() {
                (
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                )
            } else {
                (
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                )
            };
        set_condition(&mut conds, "Available", ok, reason, msg, false);

        let deadline = self
            .d
            .spec
            .progress_deadline_seconds
            .filter(|s| *s != i32::MAX);
        let progressing = conds
            .iter()
            .find(|c| c.type_.as_deref() == Some("Progressing"))
            .cloned();
        let reason_of = |c: &Option<DeploymentCondition>| {
            c.as_ref()
                .and_then(|c| c.reason.clone())
                .unwrap_or_default()
        };
        let rs_name = new.map(|rs| rs.name_any());
        let what = rs_name.as_ref().map_or_else(
            || format!("Deployment {:?}", self.name),
            |n| format!("ReplicaSet {n:?}"),
        );
        let mut requeue = None;
        if paused {
            if reason_of(&progressing) != "DeploymentPaused" {
                set_condition(
                    &mut conds,
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused",
                    false,
                );
            }
        } else if deadline.is_none() {
            conds.retain(|c| c.type_.as_deref() != Some("Progressing"));
        } else if reason_of(&progressing) != "ProgressDeadlineExceeded" {
            if reason_of(&progressing) == "DeploymentPaused" {
                set_condition(
                    &mut conds,
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed",
                    false,
                );
            }
            let is_complete = st.replicas == Some(self.want)
                && st.updated_replicas == Some(self.want)
                && st.available_replicas == Some(self.want)
                && st.observed_generation >= self.d.metadata.generation;
            let is_progressing = st.updated_replicas > old.updated_replicas
                || st.replicas.unwrap_or(0) - st.updated_replicas.unwrap_or(0)
                    < old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0)
                || st.ready_replicas > old.ready_replicas.or(Some(0))
                || st.available_replicas > old.available_replicas.or(Some(0));
            if let Some(created) = &self.created {
                set_condition(
                    &mut conds,
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    &format!("Created new replica set {created:?}"),
                    true,
                );
            } else if is_complete {
                set_condition(
                    &mut conds,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    &format!("{what} has successfully progressed."),
                    false,
                );
            } else if is_progressing {
                set_condition(
                    &mut conds,
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    &format!("{what} is progressing."),
                    true,
                );
            } else if let Some(secs) = deadline {
                let since = progressing
                    .as_ref()
                    .and_then(|c| c.last_update_time.as_ref());
                let left = since.map_or(f64::from(secs), |t| f64::from(secs) - age_secs(t));
                if progressing.is_some()
                    && left <= 0.0
                    && reason_of(&progressing) != "NewReplicaSetAvailable"
                {
                    set_condition(
                        &mut conds,
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        &format!("{what} has timed out progressing."),
                        false,
                    );
                    self.ctx
                        .events
                        .deployment
                        .publish(
                            self.d,
                            EventType::Warning,
                            "ProgressDeadlineExceeded",
                            &format!("{what} has timed out progressing."),
                        )
                        .await;
                } else if !is_complete {
                    requeue = Some(Duration::from_secs_f64(left.max(0.0) + 0.1));
                }
            }
        }
        st.conditions = Some(conds);
        if st != old {
            write_status(
                self.ctx,
                self.d,
                serde_json::to_value(&st).unwrap_or_default(),
            )
            .await?;
        }
        Ok(requeue.map_or_else(Action::await_change, Action::requeue))
    }
}

/// Set a condition the way upstream does: an unchanged status and reason
/// keep the condition as it is; a changed reason with the same status
/// keeps the transition time; `touch` refreshes lastUpdateTime anyway
/// (progress was made).
fn set_condition(
    conds: &mut Vec<DeploymentCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    touch: bool,
) {
    let t = now();
    let prior = conds.iter().position(|c| c.type_.as_deref() == Some(type_));
    let transition = match prior.map(|i| &conds[i]) {
        Some(c) if c.status.as_deref() == Some(status) => {
            if c.reason.as_deref() == Some(reason) && !touch {
                return;
            }
            c.last_transition_time.clone()
        }
        _ => Some(t.clone()),
    };
    let cond = DeploymentCondition {
        type_: Some(type_.to_owned()),
        status: Some(status.to_owned()),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_update_time: Some(t),
        last_transition_time: transition,
    };
    match prior {
        Some(i) => conds[i] = cond,
        None => conds.push(cond),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_compare_without_the_hash_label() {
        let mut a = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".into(), "x".into())])),
                ..Default::default()
            }),
            spec: None,
        };
        let b = a.clone();
        if let Some(l) = a.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            l.insert(HASH_LABEL.into(), "abc".into());
        }
        assert!(same_template(&a, &b));
        if let Some(l) = a.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            l.insert("tier".into(), "web".into());
        }
        assert!(!same_template(&a, &b));
    }
}
