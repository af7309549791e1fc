//! The root CA publisher (upstream's `root-ca-cert-publisher`): every
//! active namespace has the ConfigMap `kube-root-ca.crt` whose `ca.crt` is
//! the cluster CA, so pods can verify the API server (the ServiceAccount
//! admission plugin projects it into every pod's token volume). A deleted
//! ConfigMap is recreated and an edited one reset.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;

use crate::manager::{Backoff, Error, Result, drive, is_conflict, is_not_found};
use crate::namespace::{each_namespace_keeps, is_active};

/// The ConfigMap's name.
pub const CONFIG_MAP: &str = "kube-root-ca.crt";
/// Its key.
pub const KEY: &str = "ca.crt";
/// The annotation upstream describes it with.
pub const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
/// Upstream's description.
pub const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

struct Ctx {
    client: kube::Client,
    ca: String,
    backoff: Backoff<String>,
}

/// Run the publisher with the cluster CA bundle `ca` (PEM).
pub async fn run(client: kube::Client, ca: String) -> Result<()> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        ca,
        backoff: Backoff::default(),
    });
    let controller = each_namespace_keeps::<ConfigMap>(&client, CONFIG_MAP);
    drive(
        controller.run(reconcile, error_policy, ctx),
        "root-ca-cert-publisher",
    )
    .await;
    Ok(())
}

fn error_policy(ns: Arc<Namespace>, e: &Error, ctx: Arc<Ctx>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %e, "publishing the root CA failed");
    ctx.backoff.failed(ns.name_any())
}

/// The content the ConfigMap must have.
fn wanted(ca: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(KEY.to_owned(), ca.to_owned())])
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = ns.name_any();
    if !is_active(&ns) {
        return Ok(Action::await_change());
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let data = wanted(&ctx.ca);
    match api.get_opt(CONFIG_MAP).await? {
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIG_MAP.to_owned()),
                    namespace: Some(name.clone()),
                    annotations: Some(BTreeMap::from([(
                        DESCRIPTION_ANNOTATION.to_owned(),
                        DESCRIPTION.to_owned(),
                    )])),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => tracing::info!(namespace = %name, "published the root CA"),
                // Created meanwhile: the watch brings it back for a check.
                // A namespace that is gone (404) or terminating (403) needs
                // none.
                Err(e) if is_conflict(&e) || is_not_found(&e) => {}
                Err(kube::Error::Api(s)) if s.code == 403 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(mut cm) => {
            let described = cm
                .annotations()
                .get(DESCRIPTION_ANNOTATION)
                .is_some_and(|d| !d.is_empty());
            if cm.data.as_ref() != Some(&data) || !described {
                cm.data = Some(data);
                cm.annotations_mut()
                    .insert(DESCRIPTION_ANNOTATION.to_owned(), DESCRIPTION.to_owned());
                // The read resourceVersion rides along: a concurrent edit
                // is a conflict and a retry, never lost.
                api.replace(CONFIG_MAP, &PostParams::default(), &cm).await?;
                tracing::info!(namespace = %name, "reset the root CA ConfigMap");
            }
        }
    }
    ctx.backoff.succeeded(&name);
    Ok(Action::await_change())
}
