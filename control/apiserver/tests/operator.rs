//! An operator written the way kube-rs users write one: a kind defined with
//! `#[derive(CustomResource)]`, its CRD registered from the derived schema,
//! and a kube-runtime `Controller` reconciling its objects' status.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kestrel_apiserver::testing::TestServer;
use kestrel_testkit::eventually;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::wait::{await_condition, conditions};
use kube::{CustomResource, CustomResourceExt as _, ResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The spec of a Counter: how far it should count.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "demo.kestrel.dev",
    version = "v1",
    kind = "Counter",
    namespaced,
    status = "CounterStatus",
    shortname = "ctr",
    printcolumn = r#"{"name":"Target","type":"integer","jsonPath":".spec.target"}"#
)]
pub struct CounterSpec {
    target: u32,
}

/// What the operator saw last.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct CounterStatus {
    reached: u32,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Error(#[from] kube::Error);

async fn reconcile(c: Arc<Counter>, api: Arc<Api<Counter>>) -> Result<Action, Error> {
    let status = json!({"status": {"reached": c.spec.target}});
    api.patch_status(
        &c.name_any(),
        &PatchParams::default(),
        &Patch::Merge(status),
    )
    .await?;
    Ok(Action::await_change())
}

#[tokio::test]
async fn kube_rs_derived_crd_is_served_and_reconciled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let client = s.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Counter::crd())
        .await
        .expect("the derived CRD is accepted");
    tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(
            crds,
            "counters.demo.kestrel.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("established in time")
    .expect("watching the CRD");

    let api: Api<Counter> = Api::namespaced(client.clone(), "default");
    let shared = Arc::new(api.clone());
    let controller = tokio::spawn(
        Controller::new(api.clone(), kube::runtime::watcher::Config::default())
            .run(
                reconcile,
                |_, _, _| Action::requeue(Duration::from_secs(1)),
                shared,
            )
            .for_each(|_| async {}),
    );
    for (name, target) in [("small", 3), ("big", 300)] {
        api.create(
            &PostParams::default(),
            &Counter::new(name, CounterSpec { target }),
        )
        .await
        .expect("create");
    }
    for (name, target) in [("small", 3), ("big", 300)] {
        eventually(
            Duration::from_secs(20),
            "the controller writes status",
            || {
                let api = api.clone();
                async move {
                    let c = api.get_status(name).await.ok()?;
                    (c.status?.reached == target).then_some(())
                }
            },
        )
        .await;
    }
    // A spec change is reconciled too, and status writes leave the spec alone.
    api.patch(
        "small",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"target": 5}})),
    )
    .await
    .expect("patch");
    eventually(Duration::from_secs(20), "the change is reconciled", || {
        let api = api.clone();
        async move {
            let c = api.get("small").await.ok()?;
            (c.spec.target == 5 && c.status?.reached == 5).then_some(())
        }
    })
    .await;
    controller.abort();
}
