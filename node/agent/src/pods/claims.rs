//! Volumes backed by PersistentVolumeClaims (`persistentVolumeClaim`, and
//! `ephemeral`, whose claim is `<pod>-<volume>` and must be the pod's
//! own): the claim, the volume bound to it, and that volume's directory on
//! this node, which the containers then bind-mount as they would a
//! hostPath. Checked as the kubelet's volume manager checks them, with its
//! messages: the claim exists, is not being deleted and is bound, the
//! volume is bound back to it, and its node affinity allows this node.
//!
//! A volume resolves once per pod (the kubelet mounts it once too), so a
//! running pod does not go back to the API on every sync.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim, Pod, Volume,
};
use kestrel_api::labels::NodeTerm;
use kube::Api;

use super::env::ConfigError;

/// Where a claim's volume is on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The directory.
    pub path: PathBuf,
    /// `persistentVolumeClaim.readOnly`: every mount of it is read-only.
    pub read_only: bool,
}

/// One pod's claim volumes, resolved.
pub struct Claims {
    client: kube::Client,
    resolved: HashMap<String, Resolved>,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("resolved", &self.resolved)
            .finish_non_exhaustive()
    }
}

/// A claim volume of a pod: the claim's name and the source's readOnly.
fn claim_of(pod: &Pod, v: &Volume) -> Option<(String, bool, bool)> {
    if let Some(c) = &v.persistent_volume_claim {
        return Some((c.claim_name.clone(), c.read_only.unwrap_or(false), false));
    }
    v.ephemeral.as_ref().map(|_| {
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        (format!("{pod_name}-{}", v.name), false, true)
    })
}

/// Why one claim volume cannot be used yet, in the kubelet's words.
#[derive(Debug)]
enum Failure {
    /// The user's to fix, or a matter of waiting: reported as FailedMount.
    Config(String),
    /// The API server could not be reached: retried quietly.
    Transient(anyhow::Error),
}

fn api_failure(what: &str, e: kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) => Failure::Config(format!("{what}: {}", s.message)),
        other => Failure::Transient(anyhow::Error::new(other).context(what.to_owned())),
    }
}

impl Claims {
    /// Nothing resolved yet.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            resolved: HashMap::new(),
        }
    }

    /// The resolved volume `name`, after [`Self::prepare`].
    pub fn get(&self, name: &str) -> Option<&Resolved> {
        self.resolved.get(name)
    }

    /// Resolve every claim volume of `pod` not resolved yet. A failure is
    /// a [`ConfigError`] worded as the kubelet's FailedMount event, naming
    /// every volume that failed.
    pub async fn prepare(&mut self, pod: &Pod) -> anyhow::Result<()> {
        let vols = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_deref())
            .unwrap_or_default();
        let mut failed: Vec<String> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let mut labels: Option<BTreeMap<String, String>> = None;
        for v in vols {
            let Some((claim, read_only, ephemeral)) = claim_of(pod, v) else {
                continue;
            };
            if self.resolved.contains_key(&v.name) {
                continue;
            }
            match self.resolve(pod, &claim, ephemeral, &mut labels).await {
                Ok(path) => {
                    self.resolved
                        .insert(v.name.clone(), Resolved { path, read_only });
                }
                Err(Failure::Config(m)) => {
                    failed.push(v.name.clone());
                    errors.push(m);
                }
                Err(Failure::Transient(e)) => return Err(e),
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        failed.sort();
        let names = failed.join(" ");
        Err(ConfigError(format!(
            "Unable to attach or mount volumes: unmounted volumes=[{names}], unattached volumes=[], failed to process volumes=[{names}]: {}",
            errors.join("; ")
        ))
        .into())
    }

    async fn resolve(
        &self,
        pod: &Pod,
        claim: &str,
        ephemeral: bool,
        labels: &mut Option<BTreeMap<String, String>>,
    ) -> Result<PathBuf, Failure> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let prefix = format!("error processing PVC {ns}/{claim}");
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let pvc = match pvcs.get(claim).await {
            Ok(c) => c,
            Err(e) => {
                return Err(
                    match api_failure("failed to fetch PVC from API server", e) {
                        Failure::Config(m) => Failure::Config(format!("{prefix}: {m}")),
                        t => t,
                    },
                );
            }
        };
        let fail = |m: String| Failure::Config(format!("{prefix}: {m}"));
        if pvc.metadata.deletion_timestamp.is_some() {
            return Err(fail(format!(
                "can't start pod because PVC {ns}/{claim} is being deleted"
            )));
        }
        if ephemeral {
            let pod_uid = pod.metadata.uid.as_deref().unwrap_or_default();
            let owned = pvc
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.kind == "Pod" && o.uid == pod_uid);
            if !owned {
                return Err(fail(format!(
                    "PVC {ns}/{claim} was not created for pod {ns}/{} (pod is not owner)",
                    pod.metadata.name.as_deref().unwrap_or_default()
                )));
            }
        }
        let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
        let volume_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .filter(|n| !n.is_empty());
        let (Some("Bound"), Some(pv_name)) = (phase, volume_name) else {
            return Err(fail("PVC is not bound".to_owned()));
        };
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv = match pvs.get(pv_name).await {
            Ok(v) => v,
            Err(e) => {
                let what = format!("failed to fetch PV {pv_name} from API server");
                return Err(match api_failure(&what, e) {
                    Failure::Config(m) => fail(m),
                    t => t,
                });
            }
        };
        let spec = pv.spec.clone().unwrap_or_default();
        let claim_uid = pvc.metadata.uid.as_deref().unwrap_or_default();
        match spec.claim_ref.as_ref() {
            None => {
                return Err(fail(format!(
                    "found PV object {pv_name} but it has a nil pv.Spec.ClaimRef indicating it is not yet bound to the claim"
                )));
            }
            Some(r) if r.uid.as_deref().unwrap_or_default() != claim_uid => {
                return Err(fail(format!(
                    "found PV object {pv_name} but its pv.Spec.ClaimRef.UID ({}) does not point to claim.UID ({claim_uid})",
                    r.uid.as_deref().unwrap_or_default()
                )));
            }
            Some(_) => {}
        }
        if let Some(terms) = spec
            .node_affinity
            .as_ref()
            .and_then(|a| a.required.as_ref())
            .map(|r| &r.node_selector_terms)
        {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or_default();
            if labels.is_none() {
                let nodes: Api<Node> = Api::all(self.client.clone());
                let n = nodes.get(node).await.map_err(|e| {
                    Failure::Transient(anyhow::Error::new(e).context("reading this node"))
                })?;
                *labels = Some(n.metadata.labels.unwrap_or_default());
            }
            if !affinity_allows(terms, labels.as_ref().unwrap_or(&BTreeMap::new())) {
                return Err(Failure::Config(format!(
                    "MountVolume.NodeAffinity check failed for volume \"{pv_name}\" : no matching NodeSelectorTerms"
                )));
            }
        }
        if let Some(h) = &spec.host_path {
            let path = PathBuf::from(&h.path);
            host_path_ready(&path, h.type_.as_deref().unwrap_or("")).map_err(|m| {
                Failure::Config(format!(
                    "MountVolume.SetUp failed for volume \"{pv_name}\" : {m}"
                ))
            })?;
            Ok(path)
        } else if let Some(l) = &spec.local {
            let path = PathBuf::from(&l.path);
            if !path.is_dir() {
                return Err(Failure::Config(format!(
                    "MountVolume.NewMounter initialization failed for volume \"{pv_name}\" : path \"{}\" does not exist",
                    l.path
                )));
            }
            Ok(path)
        } else {
            Err(Failure::Config(format!(
                "MountVolume.SetUp failed for volume \"{pv_name}\" : this node mounts only hostPath and local volumes"
            )))
        }
    }
}

/// Whether a node with `labels` satisfies required node selector terms
/// (ORed; labels only, as the kubelet checks a volume's affinity).
fn affinity_allows(terms: &[NodeSelectorTerm], labels: &BTreeMap<String, String>) -> bool {
    terms
        .iter()
        .any(|t| NodeTerm::new(t).is_ok_and(|t| t.matches(labels, "")))
}

/// A hostPath volume's type check (and creation, for the `...OrCreate`
/// types), as the kubelet makes it: the message on failure.
pub fn host_path_ready(path: &Path, kind: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path);
    let shown = path.display();
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(path)
                    .and_then(|()| {
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                    })
                    .map_err(|e| format!("creating {shown}: {e}"))?;
            }
            Ok(())
        }
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| format!("creating {shown}: {e}"))?;
                }
                std::fs::write(path, b"").map_err(|e| format!("creating {shown}: {e}"))?;
            }
            Ok(())
        }
        "Directory" if meta.as_ref().is_ok_and(std::fs::Metadata::is_dir) => Ok(()),
        "File" if meta.as_ref().is_ok_and(std::fs::Metadata::is_file) => Ok(()),
        "Socket" | "CharDevice" | "BlockDevice" if meta.is_ok() => Ok(()),
        other => Err(format!(
            "hostPath type check failed: {shown} is not a {}",
            if other.is_empty() { "path" } else { other }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claim_volumes_and_their_names() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-0"},
            "spec": {"containers": [], "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-0", "readOnly": true}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                {"name": "tmp", "emptyDir": {}}
            ]}
        }))
        .expect("pod");
        let vols = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let got: Vec<_> = vols.iter().map(|v| claim_of(&pod, v)).collect();
        assert_eq!(
            got,
            [
                Some(("data-web-0".to_owned(), true, false)),
                Some(("web-0-scratch".to_owned(), false, true)),
                None
            ]
        );
    }

    #[test]
    fn affinity_is_checked_against_the_node_labels() {
        let terms: Vec<NodeSelectorTerm> = serde_json::from_value(json!([
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-1"]}]}
        ]))
        .expect("terms");
        let on = |h: &str| BTreeMap::from([("kubernetes.io/hostname".to_owned(), h.to_owned())]);
        assert!(affinity_allows(&terms, &on("node-1")));
        assert!(!affinity_allows(&terms, &on("node-2")));
    }

    #[test]
    fn host_path_types() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = dir.path().join("a/b");
        assert_eq!(host_path_ready(&made, "DirectoryOrCreate"), Ok(()));
        assert!(made.is_dir());
        assert_eq!(host_path_ready(&made, "Directory"), Ok(()));
        assert_eq!(
            host_path_ready(&made, "File"),
            Err(format!(
                "hostPath type check failed: {} is not a File",
                made.display()
            ))
        );
        let missing = dir.path().join("nope");
        assert!(host_path_ready(&missing, "Directory").is_err());
        assert_eq!(host_path_ready(&missing, ""), Ok(()));
    }
}
