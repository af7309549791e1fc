//! The ServiceAccount controller: every active namespace has a `default`
//! ServiceAccount, recreated if it is deleted.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kestrel_client::events::{EventType, Recorder};
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;

use crate::manager::{Backoff, Error, Result, drive, is_conflict};
use crate::namespace::{each_namespace_keeps, is_active};

/// The ServiceAccount every namespace gets.
pub const DEFAULT: &str = "default";

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    backoff: Backoff<String>,
}

/// Run the ServiceAccount controller.
pub async fn run(client: kube::Client) -> Result<()> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "service-account-controller", None),
        backoff: Backoff::default(),
    });
    let controller = each_namespace_keeps::<ServiceAccount>(&client, DEFAULT);
    drive(
        controller.run(reconcile, error_policy, ctx),
        "service-account-controller",
    )
    .await;
    Ok(())
}

fn error_policy(ns: Arc<Namespace>, e: &Error, ctx: Arc<Ctx>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %e, "ensuring the default ServiceAccount failed");
    ctx.backoff.failed(ns.name_any())
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = ns.name_any();
    if !is_active(&ns) {
        return Ok(Action::await_change());
    }
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    if api.get_opt(DEFAULT).await?.is_some() {
        ctx.backoff.succeeded(&name);
        return Ok(Action::await_change());
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.to_owned()),
            namespace: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => {
            tracing::info!(namespace = %name, "created the default ServiceAccount");
        }
        Err(e) if is_conflict(&e) => {}
        // A namespace that turned Terminating meanwhile refuses it: fine.
        Err(kube::Error::Api(s)) if s.code == 403 => return Ok(Action::await_change()),
        Err(e) => {
            ctx.recorder
                .publish(
                    &*ns,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating ServiceAccount {name}/{DEFAULT}: {e}"),
                )
                .await;
            return Err(e.into());
        }
    }
    ctx.backoff.succeeded(&name);
    Ok(Action::await_change())
}
