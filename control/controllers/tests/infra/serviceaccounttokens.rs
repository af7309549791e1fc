//! The root CA publisher and the legacy ServiceAccount token controller,
//! with the server's own CA and signing key, as `kestrel server` runs them.

use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kestrel_apiserver::serviceaccount::{self, SigningKey, token};
use kestrel_apiserver::testing::request;
use kestrel_controllers::legacytoken::LegacyTokenSigner;
use kestrel_testkit::eventually;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::common::{Cluster, WAIT, obj};

/// What `kestrel controller-manager` builds from
/// `--service-account-private-key-file`.
#[derive(Debug)]
struct Signer(SigningKey);

impl LegacyTokenSigner for Signer {
    fn legacy_token(&self, ns: &str, sa: &str, uid: &str, secret: &str) -> Result<String, String> {
        self.0.sign(&token::legacy_claims(ns, sa, uid, secret))
    }
}

/// A cluster whose controller manager has the server's CA and key.
async fn cluster() -> (Cluster, String) {
    let mut c = Cluster::start(|_| {}).await;
    c.stop_manager().await;
    let ca = c._server.ca_pem.clone();
    let key = SigningKey::load(&serviceaccount::key_path(&c._server.dir)).expect("server key");
    let signer: Arc<dyn LegacyTokenSigner> = Arc::new(Signer(key));
    let root_ca = ca.clone();
    c.start_manager(move |o| {
        o.root_ca = Some(root_ca);
        o.legacy_token_signer = Some(signer);
    });
    (c, ca)
}

#[tokio::test]
async fn every_namespace_gets_the_root_ca_kept_as_published() {
    let (c, ca) = cluster().await;
    let published = |ns: &str| {
        let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), ns);
        let ca = ca.clone();
        async move {
            let cm = cms.get_opt("kube-root-ca.crt").await.ok()??;
            let data = cm.data.clone().unwrap_or_default();
            (data.len() == 1 && data.get("ca.crt") == Some(&ca)).then_some(cm)
        }
    };
    let cm = eventually(WAIT, "kube-root-ca.crt in default", || published("default")).await;
    assert!(
        cm.metadata
            .annotations
            .unwrap_or_default()
            .get("kubernetes.io/description")
            .is_some_and(|d| d.starts_with("Contains a CA bundle"))
    );
    eventually(WAIT, "kube-root-ca.crt in kube-system", || {
        published("kube-system")
    })
    .await;
    Api::<Namespace>::all(c.client.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "team-b"}})),
        )
        .await
        .expect("namespace");
    let first = eventually(WAIT, "kube-root-ca.crt in a new namespace", || {
        published("team-b")
    })
    .await;

    // Deleted: recreated.
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "team-b");
    cms.delete("kube-root-ca.crt", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(WAIT, "kube-root-ca.crt recreated", || async {
        published("team-b")
            .await
            .filter(|cm| cm.metadata.uid != first.metadata.uid)
    })
    .await;
    // Edited: reset.
    cms.patch(
        "kube-root-ca.crt",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ca.crt": "forged", "extra": "x"}})),
    )
    .await
    .expect("edit");
    eventually(WAIT, "kube-root-ca.crt reset", || published("team-b")).await;
}

/// `status.userInfo.username` of a SelfSubjectReview made with `token`,
/// or None when the token does not authenticate.
async fn whoami(c: &Cluster, token: &str) -> Option<String> {
    let (code, v) = request(
        &c._server.with_token(token),
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
    )
    .await;
    (code != 401).then(|| {
        v["status"]["userInfo"]["username"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    })
}

/// A token Secret for ServiceAccount `sa`, as a user writes one.
async fn token_secret(secrets: &Api<Secret>, name: &str, sa: &str) {
    secrets
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": name, "annotations": {"kubernetes.io/service-account.name": sa}},
                "type": "kubernetes.io/service-account-token",
            })),
        )
        .await
        .expect("secret");
}

/// Wait until Secret `name` is gone.
async fn deleted(secrets: &Api<Secret>, name: &str) {
    eventually(WAIT, &format!("Secret {name} deleted"), || async {
        secrets.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn token_secrets_are_filled_and_die_with_their_service_account() {
    let (c, ca) = cluster().await;
    let sa = Api::<ServiceAccount>::namespaced(c.client.clone(), "default")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "bot"}})),
        )
        .await
        .expect("service account");
    let uid = sa.metadata.uid.clone().expect("uid");
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    token_secret(&secrets, "bot-token", "bot").await;
    let s = eventually(WAIT, "the token Secret filled", || async {
        let s = secrets.get_opt("bot-token").await.ok()??;
        s.data.as_ref()?.get("token")?;
        Some(s)
    })
    .await;
    let data = s.data.clone().expect("data");
    let text = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf-8");
    assert_eq!(text("ca.crt"), ca);
    assert_eq!(text("namespace"), "default");
    assert_eq!(
        s.metadata.annotations.clone().unwrap_or_default()["kubernetes.io/service-account.uid"],
        uid
    );
    let t = text("token");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.split('.').nth(1).expect("payload"))
            .expect("base64url"),
    )
    .expect("json");
    assert_eq!(
        claims,
        json!({
            "iss": "kubernetes/serviceaccount",
            "sub": "system:serviceaccount:default:bot",
            "kubernetes.io/serviceaccount/namespace": "default",
            "kubernetes.io/serviceaccount/secret.name": "bot-token",
            "kubernetes.io/serviceaccount/service-account.name": "bot",
            "kubernetes.io/serviceaccount/service-account.uid": uid,
        })
    );
    assert_eq!(
        whoami(&c, &t).await.as_deref(),
        Some("system:serviceaccount:default:bot"),
        "the legacy token does not authenticate"
    );

    // The ServiceAccount goes: so do its token Secret and the token.
    Api::<ServiceAccount>::namespaced(c.client.clone(), "default")
        .delete("bot", &DeleteParams::default())
        .await
        .expect("delete");
    deleted(&secrets, "bot-token").await;
    assert_eq!(whoami(&c, &t).await, None);

    // A token Secret for a ServiceAccount that does not exist is deleted.
    token_secret(&secrets, "ghost-token", "ghost").await;
    deleted(&secrets, "ghost-token").await;
}
