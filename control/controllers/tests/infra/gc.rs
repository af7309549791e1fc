use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kestrel_testkit::eventually;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use serde_json::json;

use crate::common::{Cluster, WAIT, obj};

async fn owner(cms: &Api<ConfigMap>, name: &str) -> ConfigMap {
    cms.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": name}})),
    )
    .await
    .expect("owner")
}

fn owned_by(o: &ConfigMap, block: bool) -> serde_json::Value {
    json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": o.name_any(),
        "uid": o.uid(), "blockOwnerDeletion": block}])
}

async fn dependent(cms: &Api<ConfigMap>, name: &str, refs: serde_json::Value, finalizers: &[&str]) {
    cms.create(
        &PostParams::default(),
        &obj(
            json!({"metadata": {"name": name, "ownerReferences": refs, "finalizers": finalizers}}),
        ),
    )
    .await
    .expect("dependent");
}

async fn gone(cms: &Api<ConfigMap>, name: &str) -> Option<()> {
    cms.get_opt(name).await.ok()?.is_none().then_some(())
}

#[tokio::test]
async fn background_deletes_dependents_of_any_kind_once_the_owner_is_gone() {
    let c = Cluster::start(|_| {}).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    let o = owner(&cms, "bg-owner").await;
    dependent(&cms, "bg-dep", owned_by(&o, false), &[]).await;
    secrets
        .create(
            &PostParams::default(),
            &obj(
                json!({"metadata": {"name": "bg-secret", "ownerReferences": owned_by(&o, false)}}),
            ),
        )
        .await
        .expect("secret");
    // Two owners, one of which stays: the dependent stays, minus the
    // reference to the one that went.
    let keeper = owner(&cms, "keeper").await;
    let mut both = owned_by(&o, false);
    both.as_array_mut()
        .expect("array")
        .extend(owned_by(&keeper, false).as_array().expect("array").clone());
    dependent(&cms, "shared", both, &[]).await;

    cms.delete("bg-owner", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(WAIT, "dependents deleted", || async {
        gone(&cms, "bg-dep").await?;
        secrets
            .get_opt("bg-secret")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let shared = eventually(WAIT, "shared loses the dangling reference", || async {
        let s = cms.get("shared").await.ok()?;
        (s.owner_references().len() == 1).then_some(s)
    })
    .await;
    assert_eq!(shared.owner_references()[0].name, "keeper");
}

#[tokio::test]
async fn foreground_keeps_the_owner_until_blocking_dependents_are_gone() {
    let c = Cluster::start(|_| {}).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let o = owner(&cms, "fg-owner").await;
    // The blocker holds a finalizer of its own, so it lingers while
    // being deleted; the other dependent does not block.
    dependent(
        &cms,
        "fg-blocker",
        owned_by(&o, true),
        &["example.com/hold"],
    )
    .await;
    dependent(&cms, "fg-free", owned_by(&o, false), &[]).await;
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..Default::default()
    };
    cms.delete("fg-owner", &dp).await.expect("delete");
    eventually(
        WAIT,
        "free dependent deleted, blocker terminating",
        || async {
            gone(&cms, "fg-free").await?;
            cms.get("fg-blocker")
                .await
                .ok()?
                .metadata
                .deletion_timestamp
                .map(drop)
        },
    )
    .await;
    let held = cms.get("fg-owner").await.expect("owner still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(held.finalizers(), ["foregroundDeletion"]);
    // The blocker finishes: the owner follows.
    cms.patch(
        "fg-blocker",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release the blocker");
    eventually(WAIT, "owner deleted after its blocker", || {
        gone(&cms, "fg-owner")
    })
    .await;
}

#[tokio::test]
async fn orphan_keeps_dependents_without_the_reference() {
    let c = Cluster::start(|_| {}).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let o = owner(&cms, "or-owner").await;
    dependent(&cms, "or-a", owned_by(&o, true), &[]).await;
    dependent(&cms, "or-b", owned_by(&o, false), &[]).await;
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..Default::default()
    };
    cms.delete("or-owner", &dp).await.expect("delete");
    eventually(WAIT, "owner gone", || gone(&cms, "or-owner")).await;
    for d in ["or-a", "or-b"] {
        let d = cms.get(d).await.expect("dependent survives");
        assert!(
            d.owner_references().is_empty(),
            "{:?}",
            d.owner_references()
        );
        assert!(d.metadata.deletion_timestamp.is_none());
    }
}
