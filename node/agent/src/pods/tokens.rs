//! Projected ServiceAccount tokens, as the kubelet's token manager keeps
//! them: each (pod, ServiceAccount, audience, lifetime) gets a token from
//! the TokenRequest API, bound to the pod, and a new one once 80% of the
//! old one's lifetime has passed or it is older than 24 hours. Pod volumes
//! are rewritten on every sync of a running pod (at least every 10 s), so
//! the file follows the cache. The agent asks as `system:node:NAME`; the
//! Node authorizer lets it create tokens only for pods bound to it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};

/// `expirationSeconds` of a projection that sets none (the API default).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// A token older than this is replaced whatever its lifetime (the
/// kubelet's `maxTTL`).
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Refreshes are spread over up to this much earlier (the kubelet's
/// `maxJitter`), so a node's pods do not all ask at once.
const MAX_JITTER: Duration = Duration::from_secs(10);

/// What a token is asked for with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    service_account: String,
    pod_uid: String,
    audience: Option<String>,
    expiration_seconds: i64,
}

/// A token and when it expires.
#[derive(Debug, Clone)]
struct Issued {
    token: String,
    expires: Timestamp,
    /// The lifetime the server granted.
    expiration_seconds: i64,
}

/// Whether a token that expires at `expires` after a lifetime of
/// `expiration_seconds` must be replaced at `now`: past 80% of its
/// lifetime, or older than 24 h, either less `jitter` (the kubelet's
/// `requiresRefresh`).
pub fn requires_refresh(
    now: Timestamp,
    expires: Timestamp,
    expiration_seconds: i64,
    jitter: Duration,
) -> bool {
    let jitter = SignedDuration::try_from(jitter).unwrap_or_default();
    let issued = expires - SignedDuration::from_secs(expiration_seconds);
    let max_ttl = SignedDuration::try_from(MAX_TTL).unwrap_or_default();
    if now > issued + max_ttl - jitter {
        return true;
    }
    let fifth = SignedDuration::from_secs(expiration_seconds.saturating_mul(20) / 100);
    now > expires - fifth - jitter
}

/// The node's ServiceAccount tokens.
pub struct TokenManager {
    client: kube::Client,
    cache: Mutex<HashMap<Key, Issued>>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager").finish_non_exhaustive()
    }
}

impl TokenManager {
    /// Tokens requested through `client` (the node's credentials).
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Mutex::default(),
        }
    }

    /// The current token for `pod`'s ServiceAccount, for `audience` (none:
    /// the API server's) with `expiration_seconds`, bound to the pod.
    pub async fn token(
        &self,
        pod: &Pod,
        audience: Option<&str>,
        expiration_seconds: Option<i64>,
    ) -> anyhow::Result<String> {
        let jitter = Duration::from_secs_f64(rand_unit() * MAX_JITTER.as_secs_f64());
        self.token_at(pod, audience, expiration_seconds, Timestamp::now(), jitter)
            .await
    }

    async fn token_at(
        &self,
        pod: &Pod,
        audience: Option<&str>,
        expiration_seconds: Option<i64>,
        now: Timestamp,
        jitter: Duration,
    ) -> anyhow::Result<String> {
        let meta = &pod.metadata;
        let key = Key {
            namespace: meta.namespace.clone().unwrap_or_default(),
            service_account: pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
            pod_uid: meta.uid.clone().unwrap_or_default(),
            audience: audience.filter(|a| !a.is_empty()).map(str::to_owned),
            expiration_seconds: expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS),
        };
        let cached = self.lock().get(&key).cloned();
        if let Some(c) = &cached
            && !requires_refresh(now, c.expires, c.expiration_seconds, jitter)
        {
            return Ok(c.token.clone());
        }
        match self.request(pod, &key).await {
            Ok(issued) => {
                let token = issued.token.clone();
                let mut cache = self.lock();
                // Forget tokens that expired (their pods are gone or have
                // newer ones).
                cache.retain(|_, t| t.expires > now);
                cache.insert(key, issued);
                Ok(token)
            }
            Err(e) => match cached {
                // Keep using a token that is still valid.
                Some(c) if c.expires > now => {
                    tracing::warn!(pod = %format!("{}/{}", key.namespace, meta.name.as_deref().unwrap_or("")), error = %format!("{e:#}"), "refreshing a service account token failed; keeping the current one");
                    Ok(c.token)
                }
                _ => Err(e),
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Issued>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn request(&self, pod: &Pod, key: &Key) -> anyhow::Result<Issued> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &key.namespace);
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(key.audience.iter().cloned().collect()),
                expiration_seconds: Some(key.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Pod".to_owned()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = api
            .create_token_request(&key.service_account, &PostParams::default(), &req)
            .await
            .with_context(|| {
                format!(
                    "failed to fetch token for service account {}/{}",
                    key.namespace, key.service_account
                )
            })?;
        let status = out
            .status
            .context("the TokenRequest response has no status")?;
        Ok(Issued {
            token: status
                .token
                .filter(|t| !t.is_empty())
                .context("the TokenRequest response has no token")?,
            expires: status
                .expiration_timestamp
                .context("the TokenRequest response has no expirationTimestamp")?
                .0,
            expiration_seconds: out
                .spec
                .and_then(|s| s.expiration_seconds)
                .unwrap_or(key.expiration_seconds),
        })
    }
}

/// A uniform number in [0, 1).
fn rand_unit() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    // RandomState is seeded randomly per instance: enough for jitter.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("time")
    }

    #[test]
    fn refresh_after_80_percent_of_the_lifetime() {
        // The admission plugin's 3607 s token, issued at 0.
        let (exp, life) = (at(3607), 3607);
        let z = Duration::ZERO;
        assert!(!requires_refresh(at(0), exp, life, z));
        assert!(!requires_refresh(at(2885), exp, life, z));
        // 80% of 3607 s is 2885.6 s: the kubelet's integer 20% is 721 s.
        assert!(requires_refresh(at(2887), exp, life, z));
        assert!(requires_refresh(at(3700), exp, life, z));
        // Jitter brings it forward by up to 10 s.
        assert!(requires_refresh(
            at(2880),
            exp,
            life,
            Duration::from_secs(10)
        ));
        // The shortest token (10 min) at 8 min.
        assert!(!requires_refresh(at(479), at(600), 600, z));
        assert!(requires_refresh(at(481), at(600), 600, z));
    }

    #[test]
    fn tokens_older_than_a_day_are_replaced() {
        // 48 h token: 80% would be 38.4 h, the 24 h cap comes first.
        let life = 48 * 3600;
        let exp = at(life);
        assert!(!requires_refresh(
            at(24 * 3600 - 1),
            exp,
            life,
            Duration::ZERO
        ));
        assert!(requires_refresh(
            at(24 * 3600 + 1),
            exp,
            life,
            Duration::ZERO
        ));
    }

    #[test]
    fn jitter_is_a_fraction() {
        for _ in 0..100 {
            let r = rand_unit();
            assert!((0.0..1.0).contains(&r), "{r}");
        }
    }

    /// Against the real API server: a bound token, cached, replaced once
    /// due, and kept when the refresh fails.
    #[tokio::test]
    async fn tokens_come_from_the_token_request_api_and_are_cached() {
        let dir = tempfile::tempdir().expect("tmp");
        let server = kestrel_apiserver::testing::TestServer::start_in(dir.path(), |_| {}).await;
        let client = server.client().await;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "app"}})).expect("sa"),
        )
        .await
        .expect("service account");
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let pod = pods
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "p"},
                    "spec": {"serviceAccountName": "app", "containers": [{"name": "c", "image": "busybox"}]},
                }))
                .expect("pod"),
            )
            .await
            .expect("pod");
        let m = TokenManager::new(client.clone());
        let now = Timestamp::now();
        let z = Duration::ZERO;
        let a = m
            .token_at(&pod, None, Some(3607), now, z)
            .await
            .expect("token");
        let claims = payload(&a);
        assert_eq!(claims["sub"], "system:serviceaccount:default:app");
        assert_eq!(
            claims["aud"],
            serde_json::json!(["https://kubernetes.default.svc.cluster.local"])
        );
        assert_eq!(
            claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
            3607
        );
        assert_eq!(
            claims["kubernetes.io"]["pod"]["uid"],
            pod.metadata.uid.clone().expect("uid").as_str()
        );
        // Cached until 80% of its life.
        let later = now + SignedDuration::from_secs(2000);
        assert_eq!(
            m.token_at(&pod, None, Some(3607), later, z)
                .await
                .expect("token"),
            a
        );
        // Another audience is another token.
        let v = m
            .token_at(&pod, Some("vault"), Some(3607), later, z)
            .await
            .expect("token");
        assert_eq!(payload(&v)["aud"], serde_json::json!(["vault"]));
        // Due: a new one (jti differs even within the same second).
        let due = now + SignedDuration::from_secs(3000);
        let b = m
            .token_at(&pod, None, Some(3607), due, z)
            .await
            .expect("token");
        assert_ne!(payload(&b)["jti"], claims["jti"]);
        // A refresh that fails keeps the token while it is valid.
        pods.delete("p", &kube::api::DeleteParams::default().grace_period(0))
            .await
            .expect("delete");
        // (The server stamps b with the real time: it expires at now + 3607.)
        let again = now + SignedDuration::from_secs(3300);
        let kept = m
            .token_at(&pod, None, Some(3607), again, z)
            .await
            .expect("kept");
        assert_eq!(kept, b);
        // None cached and the pod gone: an error.
        assert!(m.token_at(&pod, None, Some(7200), now, z).await.is_err());
    }

    fn payload(t: &str) -> serde_json::Value {
        use base64::Engine as _;
        let p = t.split('.').nth(1).expect("payload");
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .expect("base64url"),
        )
        .expect("json")
    }
}
