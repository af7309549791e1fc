//! The built-in local-path provisioner, as k3s ships one: dynamic
//! PersistentVolumes in a directory on the node's own disk, created and
//! deleted by the agent of the node the volume belongs to.
//!
//! - **Provisioning.** Every agent watches the claims. A claim is this
//!   agent's to provision when it is unbound, names the provisioner in
//!   `volume.kubernetes.io/storage-provisioner` (the PV controller sets it
//!   once binding is up to a provisioner), its class names the provisioner
//!   too, and `volume.kubernetes.io/selected-node` (the scheduler's choice,
//!   for WaitForFirstConsumer classes) is this node. The agent makes
//!   `<data-dir>/storage/pvc-<uid>_<namespace>_<claim>` (mode 0777, as
//!   k3s's setup script makes it) and creates the PersistentVolume
//!   `pvc-<claim uid>`: a hostPath (`DirectoryOrCreate`) source, or a
//!   `local` one when the claim's `volumeType` annotation or the class's
//!   `defaultVolumeType` says `local`; the claim's request as capacity, its
//!   access modes, the class's reclaim policy and mount options, a claimRef
//!   to the claim (the PV controller completes the bind), required node
//!   affinity `kubernetes.io/hostname In <node>`, and
//!   `pv.kubernetes.io/provisioned-by`. Events on the claim are the
//!   external provisioners' (`Provisioning`, `ProvisioningSucceeded`,
//!   `ProvisioningFailed`); failures are retried with backoff.
//! - **Immediate classes.** A claim without a selected node is refused
//!   as k3s's provisioner refuses it ("configuration error, no node was
//!   specified"): its volume would be on a node no pod has been scheduled
//!   to. One agent reports that, the one whose node sorts first among the
//!   Ready nodes, so the claim gets one event stream, not one per node.
//! - **Deleting.** A volume it provisioned that is Released with reclaim
//!   policy Delete is removed by the agent of the node its affinity names:
//!   the directory (only a directory this provisioner made, directly under
//!   its own storage dir), then the PersistentVolume.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, LocalVolumeSource, Node, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kestrel_client::events::{EventType, Recorder};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::Notify;

/// The provisioner's name, in StorageClasses and annotations.
pub const PROVISIONER: &str = "kestrel.io/local-path";
/// Set by the PV controller: who is to provision the claim.
const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// Set by the scheduler: the node of the claim's first consumer.
const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Set on the volumes a provisioner made.
const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const ANN_BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
const HOSTNAME_KEY: &str = "kubernetes.io/hostname";
/// First retry of a failed provisioning or deletion; doubled to the cap.
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often the claims and volumes are looked at without an event
/// (retries come due).
const RESYNC: Duration = Duration::from_secs(5);

/// Where the volumes of this node live: `<data-dir>/storage`.
pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("storage")
}

/// The PersistentVolume a claim gets.
fn volume_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The claim's class: the beta annotation, else `spec.storageClassName`.
fn claim_class(c: &PersistentVolumeClaim) -> String {
    annotation(&c.metadata, ANN_BETA_CLASS)
        .map(str::to_owned)
        .or_else(|| c.spec.as_ref().and_then(|s| s.storage_class_name.clone()))
        .unwrap_or_default()
}

/// What the agent should do about one claim.
#[derive(Debug, PartialEq, Eq)]
enum ClaimAction {
    /// Not ours, or nothing to do.
    None,
    /// Provision it here.
    Provision,
    /// Refuse it: its class binds at once, so no node was chosen.
    NoNode,
}

/// Whether `claim` is for this provisioner and this node.
fn claim_action(
    claim: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    node: &str,
    reports_unplaced: bool,
) -> ClaimAction {
    let meta = &claim.metadata;
    let ours = annotation(meta, ANN_STORAGE_PROVISIONER)
        .or_else(|| annotation(meta, ANN_BETA_STORAGE_PROVISIONER))
        == Some(PROVISIONER);
    let unbound = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_none_or(str::is_empty);
    let Some(class) = class else {
        return ClaimAction::None;
    };
    if !ours || !unbound || meta.deletion_timestamp.is_some() || class.provisioner != PROVISIONER {
        return ClaimAction::None;
    }
    match annotation(meta, ANN_SELECTED_NODE) {
        Some(n) if n == node => ClaimAction::Provision,
        Some(_) => ClaimAction::None,
        None if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") => {
            ClaimAction::None
        }
        None if reports_unplaced => ClaimAction::NoNode,
        None => ClaimAction::None,
    }
}

/// What makes a claim one this provisioner cannot serve, in k3s's words.
fn unsupported(claim: &PersistentVolumeClaim) -> Option<String> {
    let spec = claim.spec.as_ref()?;
    if spec.selector.is_some() {
        return Some("claim.Spec.Selector is not supported".to_owned());
    }
    if spec.data_source.is_some() || spec.data_source_ref.is_some() {
        return Some("claim.Spec.DataSource is not supported".to_owned());
    }
    if spec.volume_mode.as_deref() == Some("Block") {
        return Some(format!(
            "{PROVISIONER} does not support block volume provisioning"
        ));
    }
    if spec
        .access_modes
        .iter()
        .flatten()
        .any(|m| m != "ReadWriteOnce" && m != "ReadWriteOncePod")
    {
        return Some(
            "NodePath only supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes"
                .to_owned(),
        );
    }
    None
}

/// The directory of a claim's volume under `root`.
fn volume_dir(root: &Path, pv: &str, claim: &PersistentVolumeClaim) -> PathBuf {
    root.join(format!(
        "{pv}_{}_{}",
        claim.metadata.namespace.as_deref().unwrap_or_default(),
        claim.metadata.name.as_deref().unwrap_or_default()
    ))
}

/// The PersistentVolume for `claim`, on the node whose hostname label is
/// `hostname`, at `path`.
fn volume_for(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    hostname: &str,
    path: &Path,
) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let capacity: BTreeMap<_, _> = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned())
        .map(|q| ("storage".to_owned(), q))
        .into_iter()
        .collect();
    let local = annotation(&claim.metadata, "volumeType")
        .or_else(|| annotation(&class.metadata, "defaultVolumeType"))
        == Some("local");
    let path = path.to_string_lossy().into_owned();
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume_name(&uid)),
            annotations: Some(BTreeMap::from([(
                ANN_PROVISIONED_BY.to_owned(),
                PROVISIONER.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes,
            capacity: Some(capacity),
            volume_mode: Some("Filesystem".to_owned()),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".to_owned()),
            ),
            storage_class_name: class.metadata.name.clone(),
            mount_options: class.mount_options.clone(),
            claim_ref: Some(ObjectReference {
                kind: Some("PersistentVolumeClaim".to_owned()),
                api_version: Some("v1".to_owned()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: Some(uid),
                resource_version: claim.metadata.resource_version.clone(),
                ..ObjectReference::default()
            }),
            host_path: (!local).then(|| HostPathVolumeSource {
                path: path.clone(),
                type_: Some("DirectoryOrCreate".to_owned()),
            }),
            local: local.then(|| LocalVolumeSource {
                path: path.clone(),
                fs_type: None,
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_KEY.to_owned(),
                            operator: "In".to_owned(),
                            values: Some(vec![hostname.to_owned()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

/// The node a volume's affinity pins it to (`kubernetes.io/hostname In`
/// one value), as k3s's provisioner reads it back.
fn node_of(pv: &PersistentVolume) -> Option<&str> {
    let terms = &pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_expressions.iter().flatten().find_map(|e| {
            (e.key == HOSTNAME_KEY && e.operator == "In")
                .then_some(e.values.as_deref())
                .flatten()
                .and_then(|v| match v {
                    [one] => Some(one.as_str()),
                    _ => None,
                })
        })
    })
}

/// The directory of a volume this node should delete now, if any: one it
/// provisioned, Released, with reclaim policy Delete, on this node.
fn to_delete<'a>(pv: &'a PersistentVolume, hostname: &str) -> Option<&'a str> {
    let spec = pv.spec.as_ref()?;
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    let ours = annotation(&pv.metadata, ANN_PROVISIONED_BY) == Some(PROVISIONER);
    if !(released && delete && ours && node_of(pv) == Some(hostname)) {
        return None;
    }
    spec.host_path
        .as_ref()
        .map(|h| h.path.as_str())
        .or_else(|| spec.local.as_ref().map(|l| l.path.as_str()))
}

/// Whether `path` is a volume directory this provisioner made for `pv`
/// under `root`: nothing else is ever removed, whatever a volume says.
fn made_by_us(root: &Path, pv: &str, path: &Path) -> bool {
    path.parent() == Some(root)
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{pv}_")) && !n.contains('/'))
}

/// Retry state of one claim or volume.
#[derive(Debug)]
struct Retry {
    delay: Duration,
    not_before: Instant,
}

struct Provisioner {
    client: kube::Client,
    node: String,
    root: PathBuf,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    recorder: Recorder,
    /// Claim uids (and volume names) whose last attempt failed.
    retries: HashMap<String, Retry>,
    /// Claims provisioned by this agent that the watch may not show bound
    /// yet: not provisioned twice.
    done: HashSet<String>,
}

impl Provisioner {
    /// This node's `kubernetes.io/hostname` label (its name without one).
    fn hostname(&self) -> String {
        self.nodes
            .state()
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.node.as_str()))
            .and_then(|n| n.metadata.labels.as_ref()?.get(HOSTNAME_KEY).cloned())
            .unwrap_or_else(|| self.node.clone())
    }

    /// Whether this agent reports claims no node was chosen for: its node
    /// sorts first among the Ready ones.
    fn reports_unplaced(&self) -> bool {
        let ready = |n: &Node| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        self.nodes
            .state()
            .iter()
            .filter(|n| ready(n))
            .filter_map(|n| n.metadata.name.clone())
            .min()
            .is_some_and(|first| first == self.node)
    }

    fn due(&self, key: &str) -> bool {
        self.retries
            .get(key)
            .is_none_or(|r| Instant::now() >= r.not_before)
    }

    fn failed(&mut self, key: &str) {
        let delay = self
            .retries
            .get(key)
            .map_or(BACKOFF_BASE, |r| (r.delay * 2).min(BACKOFF_MAX));
        self.retries.insert(
            key.to_owned(),
            Retry {
                delay,
                not_before: Instant::now() + delay,
            },
        );
    }

    async fn sync(&mut self) {
        let hostname = self.hostname();
        let unplaced = self.reports_unplaced();
        let classes: HashMap<String, Arc<StorageClass>> = self
            .classes
            .state()
            .into_iter()
            .filter_map(|c| Some((c.metadata.name.clone()?, c)))
            .collect();
        let existing: HashSet<String> = self
            .volumes
            .state()
            .iter()
            .filter_map(|v| v.metadata.name.clone())
            .collect();
        let mut live: HashSet<String> = HashSet::new();
        for claim in self.claims.state() {
            let Some(uid) = claim.metadata.uid.clone() else {
                continue;
            };
            let class = classes.get(&claim_class(&claim)).map(Arc::as_ref);
            let action = claim_action(&claim, class, &self.node, unplaced);
            if action == ClaimAction::None {
                continue;
            }
            live.insert(uid.clone());
            if existing.contains(&volume_name(&uid)) || self.done.contains(&uid) || !self.due(&uid)
            {
                continue;
            }
            let Some(class) = class else { continue };
            let result = match action {
                ClaimAction::NoNode => Err("configuration error, no node was specified".to_owned()),
                _ => self.provision(&claim, class, &hostname).await,
            };
            match result {
                Ok(()) => {
                    self.retries.remove(&uid);
                    self.done.insert(uid);
                }
                Err(e) => {
                    let class_name = class.metadata.name.as_deref().unwrap_or_default();
                    tracing::warn!(claim = %key_of(&claim), error = %e, "provisioning failed");
                    self.recorder
                        .publish(
                            claim.as_ref(),
                            EventType::Warning,
                            "ProvisioningFailed",
                            &format!(
                                "failed to provision volume with StorageClass \"{class_name}\": {e}"
                            ),
                        )
                        .await;
                    self.failed(&uid);
                }
            }
        }
        // Forget claims that are bound, gone or not ours any more.
        self.done.retain(|u| live.contains(u));
        for pv in self.volumes.state() {
            let Some(name) = pv.metadata.name.clone() else {
                continue;
            };
            let Some(path) = to_delete(&pv, &hostname) else {
                continue;
            };
            live.insert(name.clone());
            if pv.metadata.deletion_timestamp.is_some() || !self.due(&name) {
                continue;
            }
            match self.delete(&name, Path::new(path)).await {
                Ok(()) => {
                    self.retries.remove(&name);
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::warn!(volume = %name, error = %msg, "deleting a volume failed");
                    self.recorder
                        .publish(pv.as_ref(), EventType::Warning, "VolumeFailedDelete", &msg)
                        .await;
                    self.failed(&name);
                }
            }
        }
        self.retries.retain(|k, _| live.contains(k));
    }

    async fn provision(
        &self,
        claim: &PersistentVolumeClaim,
        class: &StorageClass,
        hostname: &str,
    ) -> Result<(), String> {
        let key = key_of(claim);
        self.recorder
            .publish(
                claim,
                EventType::Normal,
                "Provisioning",
                &format!("External provisioner is provisioning volume for claim \"{key}\""),
            )
            .await;
        if let Some(why) = unsupported(claim) {
            return Err(why);
        }
        let uid = claim.metadata.uid.as_deref().unwrap_or_default();
        let name = volume_name(uid);
        let dir = volume_dir(&self.root, &name, claim);
        make_dir(&self.root, &dir).map_err(|e| format!("failed to create volume {name}: {e:#}"))?;
        let pv = volume_for(claim, class, hostname, &dir);
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &pv).await {
            Ok(_) => {}
            // Made before (the watch was behind, or the agent restarted).
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(format!("failed to create volume {name}: {e}")),
        }
        tracing::info!(claim = %key, volume = %name, path = %dir.display(), "provisioned a volume");
        self.recorder
            .publish(
                claim,
                EventType::Normal,
                "ProvisioningSucceeded",
                &format!("Successfully provisioned volume {name}"),
            )
            .await;
        Ok(())
    }

    async fn delete(&self, name: &str, path: &Path) -> anyhow::Result<()> {
        if !made_by_us(&self.root, name, path) {
            anyhow::bail!(
                "failed to delete volume {name}: {} is not a directory {PROVISIONER} made on this node",
                path.display()
            );
        }
        match std::fs::remove_dir_all(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "failed to delete volume {name}: removing {}",
                    path.display()
                )));
            }
        }
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("deleting volume {name}"))),
        }
        tracing::info!(volume = %name, path = %path.display(), "deleted a released volume");
        Ok(())
    }
}

fn key_of(c: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        c.metadata.namespace.as_deref().unwrap_or_default(),
        c.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Make the storage dir (0700: only the node reads it; containers see
/// their volume through its own bind mount) and a volume's dir (0777, as
/// k3s's setup script makes it, so any container user may write).
fn make_dir(root: &Path, dir: &Path) -> anyhow::Result<()> {
    if !root.exists() {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .with_context(|| format!("setting the mode of {}", dir.display()))?;
    Ok(())
}

/// Keep a reflector's store filled, waking `changed` on every event.
fn follow<K>(api: Api<K>, writer: reflector::store::Writer<K>, changed: Arc<Notify>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        let mut s = std::pin::pin!(
            reflector::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
        );
        while let Some(ev) = s.next().await {
            match ev {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "local-path provisioner watch failed; retrying")
                }
            }
        }
    });
}

/// Whether the API server serves the storage kinds (claims, volumes and
/// classes); asked until it answers.
async fn storage_served(client: &kube::Client) -> bool {
    let mut delay = Duration::from_millis(500);
    loop {
        let core = client.list_core_api_resources("v1").await;
        let storage = client.list_api_group_resources("storage.k8s.io/v1").await;
        match (core, storage) {
            (Ok(core), Ok(storage)) => {
                let has =
                    |l: &k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList,
                     n: &str| l.resources.iter().any(|r| r.name == n);
                return has(&core, "persistentvolumeclaims")
                    && has(&core, "persistentvolumes")
                    && has(&storage, "storageclasses");
            }
            (_, Err(kube::Error::Api(s))) if s.code == 404 => return false,
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "API discovery failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Run the provisioner for node `node`, with volumes under
/// [`root`]`(data_dir)`, until the task is dropped.
pub async fn run(client: kube::Client, node: String, data_dir: PathBuf) -> anyhow::Result<()> {
    while !storage_served(&client).await {
        // An older API server: look again now and then.
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let root = root(&data_dir);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
    // Volumes name absolute paths: containers mount them from anywhere.
    let root = root
        .canonicalize()
        .with_context(|| format!("resolving {}", root.display()))?;
    let changed = Arc::new(Notify::new());
    let (claims, w) = reflector::store();
    follow(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        w,
        changed.clone(),
    );
    let (volumes, w) = reflector::store();
    follow(
        Api::<PersistentVolume>::all(client.clone()),
        w,
        changed.clone(),
    );
    let (classes, w) = reflector::store();
    follow(Api::<StorageClass>::all(client.clone()), w, changed.clone());
    let (nodes, w) = reflector::store();
    follow(Api::<Node>::all(client.clone()), w, changed.clone());
    for ready in [
        claims.wait_until_ready().await,
        volumes.wait_until_ready().await,
        classes.wait_until_ready().await,
        nodes.wait_until_ready().await,
    ] {
        ready.context("a provisioner watch ended")?;
    }
    tracing::info!(root = %root.display(), "local-path provisioner started");
    let mut p = Provisioner {
        recorder: Recorder::new(client.clone(), &format!("{PROVISIONER}_{node}"), None),
        client,
        node,
        root,
        claims,
        volumes,
        classes,
        nodes,
        retries: HashMap::new(),
        done: HashSet::new(),
    };
    loop {
        p.sync().await;
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(annotations: serde_json::Value, spec: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data-web-0", "namespace": "apps", "uid": "1234",
                         "resourceVersion": "9", "annotations": annotations},
            "spec": spec
        }))
        .expect("claim")
    }

    fn class(mode: &str) -> StorageClass {
        serde_json::from_value(json!({
            "metadata": {"name": "local-path"},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": mode
        }))
        .expect("class")
    }

    fn ours_on(node: Option<&str>) -> serde_json::Value {
        let mut a = json!({"volume.kubernetes.io/storage-provisioner": PROVISIONER});
        if let Some(n) = node {
            a["volume.kubernetes.io/selected-node"] = json!(n);
        }
        a
    }

    #[test]
    fn only_the_selected_node_provisions() {
        let wffc = class("WaitForFirstConsumer");
        let spec = json!({"storageClassName": "local-path"});
        let on = |n| claim(ours_on(Some(n)), spec.clone());
        assert_eq!(
            claim_action(&on("n1"), Some(&wffc), "n1", false),
            ClaimAction::Provision
        );
        assert_eq!(
            claim_action(&on("n2"), Some(&wffc), "n1", true),
            ClaimAction::None
        );
        // Waiting for the scheduler.
        let unplaced = claim(ours_on(None), spec.clone());
        assert_eq!(
            claim_action(&unplaced, Some(&wffc), "n1", true),
            ClaimAction::None
        );
        // An Immediate class: refused, by one node only.
        let imm = class("Immediate");
        assert_eq!(
            claim_action(&unplaced, Some(&imm), "n1", true),
            ClaimAction::NoNode
        );
        assert_eq!(
            claim_action(&unplaced, Some(&imm), "n2", false),
            ClaimAction::None
        );
        // Another provisioner's, bound, or without its class: not ours.
        let other = claim(
            json!({"volume.kubernetes.io/storage-provisioner": "example.com/x",
                   "volume.kubernetes.io/selected-node": "n1"}),
            spec.clone(),
        );
        assert_eq!(
            claim_action(&other, Some(&wffc), "n1", true),
            ClaimAction::None
        );
        let bound = claim(
            ours_on(Some("n1")),
            json!({"storageClassName": "local-path", "volumeName": "pv"}),
        );
        assert_eq!(
            claim_action(&bound, Some(&wffc), "n1", true),
            ClaimAction::None
        );
        assert_eq!(claim_action(&on("n1"), None, "n1", true), ClaimAction::None);
    }

    #[test]
    fn the_volume_is_k3s_shaped() {
        let c = claim(
            ours_on(Some("n1")),
            json!({"storageClassName": "local-path", "accessModes": ["ReadWriteOnce"],
                   "resources": {"requests": {"storage": "2Gi"}}}),
        );
        let root = Path::new("/data/storage");
        let dir = volume_dir(root, "pvc-1234", &c);
        assert_eq!(dir, Path::new("/data/storage/pvc-1234_apps_data-web-0"));
        let pv = volume_for(&c, &class("WaitForFirstConsumer"), "n1", &dir);
        let v = serde_json::to_value(&pv).expect("json");
        assert_eq!(
            v,
            json!({
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": "pvc-1234",
                             "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "capacity": {"storage": "2Gi"},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                 "name": "data-web-0", "namespace": "apps", "uid": "1234",
                                 "resourceVersion": "9"},
                    "hostPath": {"path": "/data/storage/pvc-1234_apps_data-web-0",
                                 "type": "DirectoryOrCreate"},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}
                    ]}]}},
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": "local-path",
                    "volumeMode": "Filesystem"
                }
            })
        );
        assert_eq!(node_of(&pv), Some("n1"));
        // `volumeType: local` asks for a local volume instead.
        let mut a = ours_on(Some("n1"));
        a["volumeType"] = json!("local");
        let local = volume_for(
            &claim(a, json!({})),
            &class("WaitForFirstConsumer"),
            "n1",
            &dir,
        );
        let spec = local.spec.expect("spec");
        assert!(spec.host_path.is_none());
        assert_eq!(
            spec.local.map(|l| l.path).as_deref(),
            Some("/data/storage/pvc-1234_apps_data-web-0")
        );
    }

    #[test]
    fn unsupported_claims_are_refused_in_k3s_words() {
        let ok = claim(json!({}), json!({"accessModes": ["ReadWriteOnce"]}));
        assert_eq!(unsupported(&ok), None);
        let rwx = claim(json!({}), json!({"accessModes": ["ReadWriteMany"]}));
        assert_eq!(
            unsupported(&rwx).as_deref(),
            Some("NodePath only supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes")
        );
        let sel = claim(json!({}), json!({"selector": {"matchLabels": {"a": "b"}}}));
        assert_eq!(
            unsupported(&sel).as_deref(),
            Some("claim.Spec.Selector is not supported")
        );
        let block = claim(json!({}), json!({"volumeMode": "Block"}));
        assert_eq!(
            unsupported(&block).as_deref(),
            Some("kestrel.io/local-path does not support block volume provisioning")
        );
    }

    #[test]
    fn only_released_delete_volumes_of_this_node_and_provisioner_go() {
        let c = claim(ours_on(Some("n1")), json!({}));
        let dir = Path::new("/data/storage/pvc-1234_apps_data-web-0");
        let mut pv = volume_for(&c, &class("WaitForFirstConsumer"), "n1", dir);
        assert_eq!(to_delete(&pv, "n1"), None, "not released yet");
        pv.status = Some(k8s_openapi::api::core::v1::PersistentVolumeStatus {
            phase: Some("Released".to_owned()),
            ..Default::default()
        });
        assert_eq!(
            to_delete(&pv, "n1"),
            Some("/data/storage/pvc-1234_apps_data-web-0")
        );
        assert_eq!(to_delete(&pv, "n2"), None, "another node's");
        let mut retain = pv.clone();
        if let Some(s) = retain.spec.as_mut() {
            s.persistent_volume_reclaim_policy = Some("Retain".to_owned());
        }
        assert_eq!(to_delete(&retain, "n1"), None);
        let mut foreign = pv.clone();
        foreign.metadata.annotations = None;
        assert_eq!(to_delete(&foreign, "n1"), None);
    }

    #[test]
    fn nothing_outside_our_own_volume_dirs_is_ever_removed() {
        let root = Path::new("/data/storage");
        let ok = Path::new("/data/storage/pvc-1_apps_data");
        assert!(made_by_us(root, "pvc-1", ok));
        for bad in [
            "/",
            "/data/storage",
            "/data/storage/pvc-2_apps_data",
            "/data/storage/pvc-1_apps_data/inner",
            "/data/other/pvc-1_apps_data",
            "/data/storage/../pvc-1_x",
            "/etc",
        ] {
            assert!(!made_by_us(root, "pvc-1", Path::new(bad)), "{bad}");
        }
    }
}
