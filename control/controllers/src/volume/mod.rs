//! The volume controllers, as upstream's kube-controller-manager runs
//! them: the PersistentVolume binder (`persistentvolume-binder`), the
//! PVC and PV protection controllers (`pvc-protection`, `pv-protection`)
//! and the ephemeral volume controller (`ephemeral-volume`).
//!
//! Kestrel has no in-tree volume plugins: every provisioner and deleter is
//! external (the node agent is the one for `kestrel.io/local-path`), so
//! the binder only binds, marks claims for their provisioner, releases and
//! fails volumes, and never provisions, deletes or recycles one itself.

pub mod binder;
pub mod ephemeral;
pub mod protection;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

/// Set on a claim once both halves of its binding are written.
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// Set on a volume (claim) whose claimRef (volumeName) a controller wrote.
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The provisioner that created a volume.
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The provisioner a claim waits for.
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The same, in its older spelling, which provisioners still read.
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// The node the scheduler chose for a WaitForFirstConsumer claim.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The storage class in its pre-`storageClassName` spelling.
pub const ANN_BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
/// The provisioner name of classes without dynamic provisioning.
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
/// The finalizer that keeps a claim in use from being removed.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The finalizer that keeps a bound volume from being removed.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// A claim's class: the beta annotation, else `spec.storageClassName`, as
/// upstream's `GetPersistentVolumeClaimClass`.
pub fn claim_class(c: &PersistentVolumeClaim) -> String {
    if let Some(a) = c
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_BETA_CLASS))
    {
        return a.clone();
    }
    c.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

/// A volume's class, as upstream's `GetPersistentVolumeClass`.
pub fn volume_class(v: &PersistentVolume) -> String {
    if let Some(a) = v
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_BETA_CLASS))
    {
        return a.clone();
    }
    v.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

fn has_annotation<K: kube::Resource>(o: &K, key: &str) -> bool {
    o.meta()
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(key))
}
