//! The legacy ServiceAccount token controller (upstream's
//! `serviceaccount-token` controller): a Secret of type
//! `kubernetes.io/service-account-token` naming a ServiceAccount in its
//! `kubernetes.io/service-account.name` annotation gets a non-expiring token
//! (`data.token`), the cluster CA (`ca.crt`) and its namespace
//! (`namespace`), and the ServiceAccount's uid in the annotation
//! `kubernetes.io/service-account.uid`. A Secret whose ServiceAccount is
//! gone (or was replaced by one with another uid) is deleted.
//!
//! The token is signed with the service account private key
//! (`--service-account-private-key-file`), through a [`LegacyTokenSigner`]
//! the controller manager is given; without one the controller does not
//! run, as upstream.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};

use crate::manager::{Backoff, Error, Result, drive, is_not_found, only_uid};

/// The Secret type this controller fills.
pub const SECRET_TYPE: &str = "kubernetes.io/service-account-token";
/// The annotation naming the ServiceAccount.
pub const NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// The annotation holding its uid.
pub const UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
/// The data keys.
pub const TOKEN_KEY: &str = "token";
/// The CA bundle key.
pub const CA_KEY: &str = "ca.crt";
/// The namespace key.
pub const NAMESPACE_KEY: &str = "namespace";

/// Signs legacy tokens: upstream's `LegacyClaims` (issuer
/// `kubernetes/serviceaccount`, no audience, no expiry) with the service
/// account private key.
pub trait LegacyTokenSigner: Send + Sync + std::fmt::Debug {
    /// The token for `sa_name` (uid `sa_uid`) kept in Secret `secret_name`.
    fn legacy_token(
        &self,
        namespace: &str,
        sa_name: &str,
        sa_uid: &str,
        secret_name: &str,
    ) -> std::result::Result<String, String>;
}

struct Ctx {
    client: kube::Client,
    signer: Arc<dyn LegacyTokenSigner>,
    ca: Option<String>,
    backoff: Backoff<(String, String)>,
}

/// Run the controller; `ca` is the bundle put in `ca.crt` (none: left out).
pub async fn run(
    client: kube::Client,
    signer: Arc<dyn LegacyTokenSigner>,
    ca: Option<String>,
) -> Result<()> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        signer,
        ca,
        backoff: Backoff::default(),
    });
    let controller = Controller::new(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default().fields(&format!("type={SECRET_TYPE}")),
    );
    // A ServiceAccount change (creation, deletion, a new uid) revisits the
    // Secrets that name it.
    let secrets = controller.store();
    let controller = controller.watches(
        Api::<ServiceAccount>::all(client),
        watcher::Config::default(),
        move |sa| {
            let (ns, name) = (sa.namespace(), sa.name_any());
            secrets
                .state()
                .into_iter()
                .filter(|s| {
                    s.namespace() == ns && s.annotations().get(NAME_ANNOTATION) == Some(&name)
                })
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        },
    );
    drive(
        controller.run(reconcile, error_policy, ctx),
        "serviceaccount-token-controller",
    )
    .await;
    Ok(())
}

fn key(s: &Secret) -> (String, String) {
    (s.namespace().unwrap_or_default(), s.name_any())
}

fn error_policy(s: Arc<Secret>, e: &Error, ctx: Arc<Ctx>) -> Action {
    tracing::warn!(secret = %format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()), error = %e, "filling a service account token Secret failed");
    ctx.backoff.failed(key(&s))
}

async fn reconcile(secret: Arc<Secret>, ctx: Arc<Ctx>) -> Result<Action> {
    if secret.type_.as_deref() != Some(SECRET_TYPE) || secret.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let Some(sa_name) = secret
        .annotations()
        .get(NAME_ANNOTATION)
        .filter(|n| !n.is_empty())
        .cloned()
    else {
        return Ok(Action::await_change());
    };
    let want_uid = secret
        .annotations()
        .get(UID_ANNOTATION)
        .filter(|u| !u.is_empty())
        .cloned();
    // Read the ServiceAccount live: a lagging cache must not get a Secret
    // deleted whose ServiceAccount was just created.
    let sa = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&sa_name)
        .await?
        .filter(|sa| want_uid.is_none() || sa.metadata.uid == want_uid);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(sa) = sa else {
        tracing::info!(secret = %format!("{ns}/{name}"), service_account = %sa_name, "service account is gone; deleting its token Secret");
        match secrets
            .delete(&name, &only_uid(secret.metadata.uid.clone()))
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) || crate::manager::is_conflict(&e) => {}
            Err(e) => return Err(e.into()),
        }
        ctx.backoff.succeeded(&key(&secret));
        return Ok(Action::await_change());
    };
    let sa_uid = sa.metadata.uid.clone().unwrap_or_default();

    let data = secret.data.clone().unwrap_or_default();
    let has = |k: &str| data.get(k).is_some_and(|v| !v.0.is_empty());
    let needs_ca = ctx
        .ca
        .as_ref()
        .is_some_and(|ca| data.get(CA_KEY).map(|v| v.0.as_slice()) != Some(ca.as_bytes()));
    let needs_namespace = !has(NAMESPACE_KEY);
    let needs_token = !has(TOKEN_KEY);
    let annotated = secret.annotations().get(UID_ANNOTATION) == Some(&sa_uid);
    if !needs_ca && !needs_namespace && !needs_token && annotated {
        ctx.backoff.succeeded(&key(&secret));
        return Ok(Action::await_change());
    }

    // Change the current Secret, with its resourceVersion, so a concurrent
    // writer makes this a conflict and a retry.
    let Some(mut live) = secrets.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let data: &mut BTreeMap<String, ByteString> = live.data.get_or_insert_with(BTreeMap::new);
    if let Some(ca) = ctx.ca.as_ref().filter(|_| needs_ca) {
        data.insert(CA_KEY.to_owned(), ByteString(ca.as_bytes().to_vec()));
    }
    if needs_namespace {
        data.insert(NAMESPACE_KEY.to_owned(), ByteString(ns.as_bytes().to_vec()));
    }
    if needs_token {
        let token = ctx
            .signer
            .legacy_token(&ns, &sa_name, &sa_uid, &name)
            .map_err(|e| Error::Invalid(format!("signing a token for {ns}/{sa_name}: {e}")))?;
        data.insert(TOKEN_KEY.to_owned(), ByteString(token.into_bytes()));
    }
    let annotations = live.annotations_mut();
    annotations.insert(NAME_ANNOTATION.to_owned(), sa_name.clone());
    annotations.insert(UID_ANNOTATION.to_owned(), sa_uid);
    secrets
        .replace(&name, &PostParams::default(), &live)
        .await?;
    tracing::info!(secret = %format!("{ns}/{name}"), service_account = %sa_name, "filled the service account token Secret");
    ctx.backoff.succeeded(&key(&secret));
    Ok(Action::await_change())
}
