//! ServiceAccount tokens, as upstream does them:
//!
//! - an ES256 signing key under `DATA_DIR/tls/service-account.key`
//!   (generated on first start, mode 0600); verification also accepts the
//!   PEM public keys in `DATA_DIR/tls/service-account-keys/*.pub`, so
//!   tokens signed before a key rotation keep validating;
//! - the TokenRequest API (`serviceaccounts/NAME/token`, [`token_request`]);
//! - bearer JWT authentication ([`ServiceAccounts::authenticate`], called by
//!   [`crate::auth::authenticate`]): bound tokens (issuer [`token::ISSUER`])
//!   and legacy Secret tokens (issuer [`token::LEGACY_ISSUER`]), checked
//!   against the watch cache on every request, so a token whose pod, Secret
//!   or ServiceAccount is gone stops working at once;
//! - OIDC discovery ([`discovery`], [`jwks`]);
//! - the ServiceAccount admission plugin for pods ([`admit_pod`]).

mod admission;
pub mod keys;
mod oidc;
mod request;
pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use kestrel_api::registry::{self, ResourceDef};
use ring::digest;
use serde_json::Value;

use crate::auth::User;
use crate::cache::Cache;
use crate::state::AppState;

pub use admission::admit_pod;
pub use keys::{KeySet, PublicKey, SigningKey};
pub use oidc::{JWKS_PATH, OIDC_PATH, discovery, jwks};
pub use request::token_request;
use token::{BoundClaims, TokenError};

/// `DATA_DIR/tls/service-account.key`: the signing key (PKCS#8 PEM).
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("service-account.key")
}

/// `DATA_DIR/tls/service-account-keys/`: more public keys (`*.pub`) whose
/// tokens are accepted, e.g. the previous signing key after a rotation.
pub fn extra_keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("service-account-keys")
}

/// Group of every ServiceAccount.
pub const ALL_GROUP: &str = "system:serviceaccounts";
/// `user.Info` extra keys, upstream's.
pub mod extra {
    /// The bound pod's name.
    pub const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
    /// The bound pod's uid.
    pub const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
    /// The node of the bound pod (or the bound node).
    pub const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
    /// That node's uid.
    pub const NODE_UID: &str = "authentication.kubernetes.io/node-uid";
    /// `JTI=<jti>`.
    pub const CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";
}

/// How many verified signatures are remembered (see [`ServiceAccounts::verified`]).
const VERIFIED_CACHE: usize = 4096;

/// The server's ServiceAccount token machinery.
pub struct ServiceAccounts {
    signer: SigningKey,
    keys: KeySet,
    cache: Arc<Cache>,
    issuer: String,
    /// The API server's audiences (`--api-audiences`; default: the issuer).
    audiences: Vec<String>,
    /// Claims of tokens whose signature was already checked, by the
    /// SHA-256 of the token. Only the signature check is skipped for them:
    /// times and every object the token names are checked on each request,
    /// so a cached token still fails once its pod is deleted.
    verified: Mutex<HashMap<[u8; 32], Arc<Value>>>,
}

impl std::fmt::Debug for ServiceAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccounts")
            .field("issuer", &self.issuer)
            .field("kid", &self.signer.public().kid())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Load (or create) the keys and hand the machinery to the authenticator.
/// Runs at bootstrap, before the server serves.
pub(crate) fn install(state: &AppState) -> Result<(), crate::Error> {
    let dir = &state.config.data_dir;
    let signer = SigningKey::load_or_create(&key_path(dir))
        .map_err(|e| crate::Error::Bootstrap(format!("service account key: {e}")))?;
    let mut keys = KeySet::new(signer.public());
    keys.add_dir(&extra_keys_dir(dir));
    let sa = ServiceAccounts {
        signer,
        keys,
        cache: state.cache.clone(),
        issuer: token::ISSUER.to_owned(),
        audiences: vec![token::ISSUER.to_owned()],
        verified: Mutex::default(),
    };
    state.tokens.install_service_accounts(Arc::new(sa));
    Ok(())
}

/// The resources tokens refer to.
fn def(plural: &str) -> &'static ResourceDef {
    registry::lookup("", "v1", plural)
        .unwrap_or_else(|| unreachable!("{plural} is a core/v1 resource in the registry"))
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// Whether an object was deleted (its deletionTimestamp passed) before
/// `before`: upstream invalidates tokens of objects deleted more than the
/// leeway ago, and keeps those of pods still in their grace period.
fn deleted_before(obj: &Value, before: i64) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| t.as_second() < before)
}

impl ServiceAccounts {
    /// The issuer of bound tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The API server's audiences.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Every key tokens are accepted from.
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    fn object(&self, plural: &str, ns: Option<&str>, name: &str) -> Option<Arc<Value>> {
        self.cache
            .get(&def(plural).key(ns, name))
            .map(|e| e.value.clone())
    }

    /// The claims of `token` once its signature verifies; a token seen
    /// before is not verified again.
    fn verified(&self, token: &str) -> Result<Arc<Value>, TokenError> {
        let mut id = [0u8; 32];
        id.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        if let Some(c) = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(c.clone());
        }
        let claims = Arc::new(token::verify(&self.keys, token)?);
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_CACHE {
            cache.clear();
        }
        cache.insert(id, claims.clone());
        Ok(claims)
    }

    /// The user a bearer JWT stands for. Every failure is a reason for a
    /// 401; nothing is stored.
    pub fn authenticate(&self, token: &str) -> Result<User, TokenError> {
        let claims = self.verified(token)?;
        let now = now();
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        let legacy = match iss {
            token::LEGACY_ISSUER => true,
            i if i == self.issuer => false,
            other => return Err(TokenError::Issuer(other.to_owned())),
        };
        token::check_times(&claims, now, !legacy)?;
        // A token without audiences is for the API server (legacy tokens
        // have none), as upstream's implicit audiences.
        let auds = token::audiences(&claims);
        if !auds.is_empty() && !auds.iter().any(|a| self.audiences.contains(a)) {
            return Err(TokenError::Audience(auds));
        }
        if legacy {
            self.legacy(token, &claims)
        } else {
            self.bound(&claims, now)
        }
    }

    /// Upstream's bound-token validator: the ServiceAccount and any bound
    /// pod, Secret or node must still exist with the uid in the token.
    fn bound(&self, claims: &Value, now: i64) -> Result<User, TokenError> {
        let c = BoundClaims::from_json(claims)?;
        let ns = c.namespace.as_str();
        let gone_before = now - token::LEEWAY_SECONDS;
        let check = |plural: &str, kind: &str, namespaced: bool, r: &token::ObjectRef| {
            let obj = self
                .object(plural, namespaced.then_some(ns), &r.name)
                .ok_or_else(|| TokenError::Claims(format!("{kind} {:?} not found", r.name)))?;
            if deleted_before(&obj, gone_before) {
                return Err(TokenError::Claims(format!(
                    "{kind} {ns}/{} has been deleted",
                    r.name
                )));
            }
            let uid = str_at(&obj, "/metadata/uid");
            if uid != r.uid {
                return Err(TokenError::Claims(format!(
                    "{kind} UID ({uid}) does not match claim ({})",
                    r.uid
                )));
            }
            Ok(())
        };
        check(
            "serviceaccounts",
            "service account",
            true,
            &c.service_account,
        )?;
        if let Some(s) = &c.secret {
            check("secrets", "secret", true, s)?;
        }
        if let Some(p) = &c.pod {
            check("pods", "pod", true, p)?;
        } else if let Some(n) = &c.node {
            // A node-bound token: the node must still be there.
            check("nodes", "node", false, n)?;
        }
        let mut user = sa_user(ns, &c.service_account.name, &c.service_account.uid);
        if let Some(p) = &c.pod {
            user.extra
                .insert(extra::POD_NAME.into(), vec![p.name.clone()]);
            user.extra
                .insert(extra::POD_UID.into(), vec![p.uid.clone()]);
        }
        if let Some(n) = c.node.as_ref().filter(|n| !n.name.is_empty()) {
            user.extra
                .insert(extra::NODE_NAME.into(), vec![n.name.clone()]);
            if !n.uid.is_empty() {
                user.extra
                    .insert(extra::NODE_UID.into(), vec![n.uid.clone()]);
            }
        }
        if !c.id.is_empty() {
            user.extra
                .insert(extra::CREDENTIAL_ID.into(), vec![format!("JTI={}", c.id)]);
        }
        Ok(user)
    }

    /// Upstream's legacy validator: the Secret must still exist, not be
    /// deleted or invalidated, and hold exactly this token; the
    /// ServiceAccount must exist with the uid in the token.
    fn legacy(&self, token: &str, claims: &Value) -> Result<User, TokenError> {
        use token::legacy as l;
        let s = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default();
        let (ns, secret, sa, sa_uid) = (
            s(l::NAMESPACE),
            s(l::SECRET_NAME),
            s(l::SERVICE_ACCOUNT_NAME),
            s(l::SERVICE_ACCOUNT_UID),
        );
        if [ns, secret, sa, sa_uid].iter().any(|v| v.is_empty()) {
            return Err(TokenError::Claims("a legacy token claim is missing".into()));
        }
        if s("sub") != token::username(ns, sa) {
            return Err(TokenError::Claims("sub claim is invalid".into()));
        }
        let invalidated = || TokenError::Claims("token has been invalidated".into());
        let sec = self
            .object("secrets", Some(ns), secret)
            .ok_or_else(invalidated)?;
        if sec.pointer("/metadata/deletionTimestamp").is_some()
            || !str_at(
                &sec,
                "/metadata/labels/kubernetes.io~1legacy-token-invalid-since",
            )
            .is_empty()
        {
            return Err(invalidated());
        }
        let stored = base64::engine::general_purpose::STANDARD
            .decode(str_at(&sec, "/data/token"))
            .unwrap_or_default();
        if stored != token.as_bytes() {
            return Err(TokenError::Claims("token does not match secret".into()));
        }
        let account = self
            .object("serviceaccounts", Some(ns), sa)
            .ok_or_else(|| TokenError::Claims(format!("serviceaccount {sa:?} not found")))?;
        if account.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(TokenError::Claims(format!(
                "service account {ns}/{sa} has been deleted"
            )));
        }
        let uid = str_at(&account, "/metadata/uid");
        if uid != sa_uid {
            return Err(TokenError::Claims(format!(
                "service account UID ({uid}) does not match claim ({sa_uid})"
            )));
        }
        Ok(sa_user(ns, sa, sa_uid))
    }

    /// Sign bound-token claims.
    fn sign(&self, claims: &BoundClaims) -> Result<String, String> {
        self.signer.sign(&claims.to_json(&self.issuer))
    }
}

/// The user of a ServiceAccount, with upstream's groups
/// (`system:authenticated` is added by the authenticator chain).
fn sa_user(namespace: &str, name: &str, uid: &str) -> User {
    User {
        name: token::username(namespace, name),
        uid: uid.to_owned(),
        groups: vec![ALL_GROUP.to_owned(), format!("{ALL_GROUP}:{namespace}")],
        extra: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use kestrel_store::sqlite::{SqliteConfig, SqliteStore};
    use serde_json::json;

    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<dyn kestrel_store::Store>,
        sas: ServiceAccounts,
    }

    async fn put(
        store: &Arc<dyn kestrel_store::Store>,
        plural: &str,
        ns: Option<&str>,
        obj: Value,
    ) {
        let name = obj["metadata"]["name"].as_str().expect("name").to_owned();
        store
            .create(&def(plural).key(ns, &name), Bytes::from(obj.to_string()))
            .await
            .expect("create");
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn kestrel_store::Store> = Arc::new(
            SqliteStore::open(SqliteConfig::new(dir.path().join("state.db")))
                .await
                .expect("store"),
        );
        put(
            &store,
            "serviceaccounts",
            Some("ns"),
            json!({"metadata": {"name": "sa", "namespace": "ns", "uid": "sa-uid"}}),
        )
        .await;
        put(&store, "pods", Some("ns"), json!({"metadata": {"name": "p", "namespace": "ns", "uid": "pod-uid"}, "spec": {"serviceAccountName": "sa", "nodeName": "n1"}})).await;
        let cache = Cache::start(store.clone(), 100).await.expect("cache");
        let (signer, _) = SigningKey::generate().expect("key");
        let sas = ServiceAccounts {
            keys: KeySet::new(signer.public()),
            signer,
            cache,
            issuer: token::ISSUER.to_owned(),
            audiences: vec![token::ISSUER.to_owned()],
            verified: Mutex::default(),
        };
        Fixture {
            _dir: dir,
            store,
            sas,
        }
    }

    fn claims(pod: bool) -> BoundClaims {
        BoundClaims {
            namespace: "ns".into(),
            service_account: token::ObjectRef {
                name: "sa".into(),
                uid: "sa-uid".into(),
            },
            pod: pod.then(|| token::ObjectRef {
                name: "p".into(),
                uid: "pod-uid".into(),
            }),
            node: pod.then(|| token::ObjectRef {
                name: "n1".into(),
                uid: "node-uid".into(),
            }),
            audiences: vec![token::ISSUER.into()],
            issued_at: now(),
            expiration_seconds: 3600,
            id: "the-jti".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn bound_tokens_authenticate_as_upstream() {
        let f = fixture().await;
        let t = f.sas.sign(&claims(true)).expect("sign");
        let u = f.sas.authenticate(&t).expect("valid");
        assert_eq!(u.name, "system:serviceaccount:ns:sa");
        assert_eq!(u.uid, "sa-uid");
        assert_eq!(
            u.groups,
            ["system:serviceaccounts", "system:serviceaccounts:ns"]
        );
        let x = |k: &str| u.extra.get(k).cloned().unwrap_or_default();
        assert_eq!(x(extra::POD_NAME), ["p"]);
        assert_eq!(x(extra::POD_UID), ["pod-uid"]);
        assert_eq!(x(extra::NODE_NAME), ["n1"]);
        assert_eq!(x(extra::NODE_UID), ["node-uid"]);
        assert_eq!(x(extra::CREDENTIAL_ID), ["JTI=the-jti"]);
        // An unbound token has no pod or node extras.
        let u = f
            .sas
            .authenticate(&f.sas.sign(&claims(false)).expect("sign"))
            .expect("valid");
        assert_eq!(u.extra.keys().collect::<Vec<_>>(), [extra::CREDENTIAL_ID]);
    }

    #[tokio::test]
    async fn refused_tokens() {
        let f = fixture().await;
        let sign = |c: &BoundClaims| f.sas.sign(c).expect("sign");
        let mut c = claims(true);
        c.issued_at -= 7200;
        assert!(matches!(
            f.sas.authenticate(&sign(&c)),
            Err(TokenError::Expired)
        ));
        let mut c = claims(true);
        c.audiences = vec!["vault".into()];
        assert!(matches!(
            f.sas.authenticate(&sign(&c)),
            Err(TokenError::Audience(_))
        ));
        let mut v = claims(true).to_json(token::ISSUER);
        v["iss"] = json!("https://evil.example");
        let t = f.sas.signer.sign(&v).expect("sign");
        assert!(matches!(f.sas.authenticate(&t), Err(TokenError::Issuer(_))));
        let mut c = claims(true);
        c.service_account.uid = "old-uid".into();
        assert!(matches!(
            f.sas.authenticate(&sign(&c)),
            Err(TokenError::Claims(_))
        ));
        let mut c = claims(true);
        c.pod = Some(token::ObjectRef {
            name: "p".into(),
            uid: "other".into(),
        });
        assert!(matches!(
            f.sas.authenticate(&sign(&c)),
            Err(TokenError::Claims(_))
        ));
        // A token signed by a key the server does not know.
        let (other, _) = SigningKey::generate().expect("key");
        let t = other
            .sign(&claims(true).to_json(token::ISSUER))
            .expect("sign");
        assert!(matches!(
            f.sas.authenticate(&t),
            Err(TokenError::UnknownKey(_))
        ));
    }

    #[tokio::test]
    async fn a_cached_token_fails_once_its_pod_is_gone() {
        let f = fixture().await;
        let t = f.sas.sign(&claims(true)).expect("sign");
        f.sas.authenticate(&t).expect("valid");
        f.store
            .delete(&def("pods").key(Some("ns"), "p"), None)
            .await
            .expect("delete");
        let deadline = Instant::now() + Duration::from_secs(10);
        while f.sas.object("pods", Some("ns"), "p").is_some() {
            assert!(Instant::now() < deadline, "the cache never saw the delete");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(matches!(f.sas.authenticate(&t), Err(TokenError::Claims(_))));
    }

    #[tokio::test]
    async fn legacy_tokens_need_their_secret() {
        let f = fixture().await;
        let t = f
            .sas
            .signer
            .sign(&token::legacy_claims("ns", "sa", "sa-uid", "sa-token"))
            .expect("sign");
        assert!(f.sas.authenticate(&t).is_err(), "no Secret yet");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&t);
        put(&f.store, "secrets", Some("ns"), json!({"metadata": {"name": "sa-token", "namespace": "ns", "uid": "s1"}, "type": "kubernetes.io/service-account-token", "data": {"token": b64}})).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let u = loop {
            if let Ok(u) = f.sas.authenticate(&t) {
                break u;
            }
            assert!(Instant::now() < deadline, "legacy token never accepted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(u.name, "system:serviceaccount:ns:sa");
        assert_eq!(u.uid, "sa-uid");
        // Another legacy token for the same Secret is not the one it holds.
        let mut other = token::legacy_claims("ns", "sa", "sa-uid", "sa-token");
        other["extra"] = json!(1);
        let t2 = f.sas.signer.sign(&other).expect("sign");
        assert!(f.sas.authenticate(&t2).is_err());
    }

    /// The per-request cost of authenticating a bound token (printed; run
    /// with `--nocapture` to see it). Debug builds are several times slower
    /// than release.
    #[tokio::test]
    async fn validation_cost() {
        let f = fixture().await;
        let t = f.sas.sign(&claims(true)).expect("sign");
        let p50 = |cached: bool| {
            let mut v: Vec<Duration> = (0..400)
                .map(|_| {
                    if !cached {
                        f.sas.verified.lock().expect("lock").clear();
                    }
                    let s = Instant::now();
                    f.sas.authenticate(&t).expect("valid");
                    s.elapsed()
                })
                .collect();
            v.sort();
            v[v.len() / 2]
        };
        let (full, cached) = (p50(false), p50(true));
        println!(
            "service account token validation p50: {full:?} verifying the signature, {cached:?} with the signature cached"
        );
        assert!(cached < full, "the verified-signature cache saves nothing");
    }
}
