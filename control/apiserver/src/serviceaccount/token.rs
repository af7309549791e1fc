//! ServiceAccount JWTs without server state: compact JWS checking and
//! upstream's claim shapes. Keys are in [`super::keys`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::keys::KeySet;

/// The issuer of bound tokens (upstream's `--service-account-issuer` as
/// clusters conventionally set it).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The issuer of legacy Secret-based tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// Clock skew tolerated on `exp`, `nbf` and `iat`: go-jose's
/// `jwt.DefaultLeeway`, which upstream's validator uses.
pub const LEEWAY_SECONDS: i64 = 60;
/// The only algorithm issued and accepted.
pub const ALGORITHM: &str = "ES256";

/// Why a token was refused (for logs; clients only see 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts with JSON header and claims.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is not ES256 (`none` included).
    #[error("unsupported signing algorithm {0:?}")]
    Algorithm(String),
    /// Critical header parameters are not understood.
    #[error("unsupported critical header parameters")]
    Critical,
    /// No key with the token's `kid`.
    #[error("unknown key id {0:?}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("invalid signature")]
    Signature,
    /// Past `exp` (plus leeway).
    #[error("service account token has expired")]
    Expired,
    /// Before `nbf` (minus leeway).
    #[error("service account token is not valid yet")]
    NotYetValid,
    /// `iat` in the future (beyond leeway).
    #[error("service account token is issued in the future")]
    IssuedInFuture,
    /// A bound token without `exp`.
    #[error("service account token has no expiration")]
    NoExpiry,
    /// Neither the bound nor the legacy issuer.
    #[error("token issuer {0:?} is not accepted")]
    Issuer(String),
    /// No audience in common with the API server's.
    #[error("token audiences {0:?} are invalid for the target audiences")]
    Audience(Vec<String>),
    /// A claim the token needs is missing or the object it names is gone.
    #[error("{0}")]
    Claims(String),
}

/// Split `token`, check its header and signature against `keys`, and
/// return its claims (a JSON object). Times and issuers are not checked
/// here.
pub fn verify(keys: &KeySet, token: &str) -> Result<Value, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("not three dot-separated parts"));
    };
    let b64 = |part: &str, what| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| TokenError::Malformed(what))
    };
    let header: Value = serde_json::from_slice(&b64(h, "header is not base64url")?)
        .map_err(|_| TokenError::Malformed("header is not JSON"))?;
    let header = header
        .as_object()
        .ok_or(TokenError::Malformed("header is not an object"))?;
    match header.get("alg").and_then(Value::as_str) {
        Some(ALGORITHM) => {}
        Some(other) => return Err(TokenError::Algorithm(other.to_owned())),
        None => return Err(TokenError::Algorithm(String::new())),
    }
    if header.contains_key("crit") {
        return Err(TokenError::Critical);
    }
    let kid = header.get("kid").and_then(Value::as_str).unwrap_or("");
    let key = keys
        .get(kid)
        .ok_or_else(|| TokenError::UnknownKey(kid.to_owned()))?;
    let sig = b64(s, "signature is not base64url")?;
    // `h.p` is exactly the prefix of the token up to the second dot.
    let signed = &token[..h.len() + 1 + p.len()];
    if !key.verify(signed.as_bytes(), &sig) {
        return Err(TokenError::Signature);
    }
    let claims: Value = serde_json::from_slice(&b64(p, "claims are not base64url")?)
        .map_err(|_| TokenError::Malformed("claims are not JSON"))?;
    if !claims.is_object() {
        return Err(TokenError::Malformed("claims are not an object"));
    }
    Ok(claims)
}

/// Whether `token` has the shape of a JWT (three dot-separated parts), so
/// it is worth verifying.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// A NumericDate claim.
fn date(claims: &Value, name: &str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or(TokenError::Malformed("a time claim is not a number")),
    }
}

/// `exp`, `nbf` and `iat` against `now` with [`LEEWAY_SECONDS`], as
/// go-jose's `Claims.Validate` does; `require_exp` refuses a token without
/// `exp` (bound tokens always carry one).
pub fn check_times(claims: &Value, now: i64, require_exp: bool) -> Result<(), TokenError> {
    let exp = date(claims, "exp")?;
    if let Some(nbf) = date(claims, "nbf")?
        && now + LEEWAY_SECONDS < nbf
    {
        return Err(TokenError::NotYetValid);
    }
    match exp {
        Some(exp) if now - LEEWAY_SECONDS > exp => return Err(TokenError::Expired),
        None if require_exp => return Err(TokenError::NoExpiry),
        _ => {}
    }
    if let Some(iat) = date(claims, "iat")?
        && now + LEEWAY_SECONDS < iat
    {
        return Err(TokenError::IssuedInFuture);
    }
    Ok(())
}

/// The `aud` claim as a list (a string is one audience).
pub fn audiences(claims: &Value) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// `system:serviceaccount:NS:NAME`.
pub fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// A name and uid, as the `kubernetes.io` claim refers to objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRef {
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

impl ObjectRef {
    fn to_json(&self) -> Value {
        json!({"name": self.name, "uid": self.uid})
    }
}

/// What a bound token says.
#[derive(Debug, Clone, Default)]
pub struct BoundClaims {
    /// Namespace of the ServiceAccount.
    pub namespace: String,
    /// The ServiceAccount.
    pub service_account: ObjectRef,
    /// The pod it is bound to.
    pub pod: Option<ObjectRef>,
    /// The Secret it is bound to.
    pub secret: Option<ObjectRef>,
    /// The node: the bound pod's, or the node it is bound to.
    pub node: Option<ObjectRef>,
    /// Audiences.
    pub audiences: Vec<String>,
    /// Issued at (Unix seconds); also `nbf`.
    pub issued_at: i64,
    /// Lifetime in seconds.
    pub expiration_seconds: i64,
    /// Token id (`jti`).
    pub id: String,
}

impl BoundClaims {
    /// The JWT claims, as upstream's `serviceaccount.Claims` makes them.
    pub fn to_json(&self, issuer: &str) -> Value {
        let mut k8s = json!({
            "namespace": self.namespace,
            "serviceaccount": self.service_account.to_json(),
        });
        for (name, r) in [
            ("pod", &self.pod),
            ("secret", &self.secret),
            ("node", &self.node),
        ] {
            if let Some(r) = r {
                k8s[name] = r.to_json();
            }
        }
        json!({
            "iss": issuer,
            "sub": username(&self.namespace, &self.service_account.name),
            "aud": self.audiences,
            "exp": self.issued_at + self.expiration_seconds,
            "iat": self.issued_at,
            "nbf": self.issued_at,
            "jti": self.id,
            "kubernetes.io": k8s,
        })
    }

    /// Read the claims back from a verified token's payload.
    pub fn from_json(claims: &Value) -> Result<Self, TokenError> {
        let k = claims
            .get("kubernetes.io")
            .filter(|v| v.is_object())
            .ok_or_else(|| TokenError::Claims("token has no kubernetes.io claim".to_owned()))?;
        let r = |name: &str| -> Option<ObjectRef> {
            let o = k.get(name)?.as_object()?;
            Some(ObjectRef {
                name: o.get("name")?.as_str().unwrap_or_default().to_owned(),
                uid: o
                    .get("uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            })
        };
        let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        let out = Self {
            namespace: s(k.get("namespace")),
            service_account: r("serviceaccount").unwrap_or_default(),
            pod: r("pod"),
            secret: r("secret"),
            node: r("node"),
            audiences: audiences(claims),
            issued_at: date(claims, "iat")?.unwrap_or_default(),
            expiration_seconds: 0,
            id: s(claims.get("jti")),
        };
        if out.namespace.is_empty() || out.service_account.name.is_empty() {
            return Err(TokenError::Claims(
                "token names no namespace or service account".to_owned(),
            ));
        }
        if s(claims.get("sub")) != username(&out.namespace, &out.service_account.name) {
            return Err(TokenError::Claims(
                "token subject does not match its service account".to_owned(),
            ));
        }
        Ok(out)
    }
}

/// Claim names of legacy Secret-based tokens.
pub mod legacy {
    /// The ServiceAccount's name.
    pub const SERVICE_ACCOUNT_NAME: &str = "kubernetes.io/serviceaccount/service-account.name";
    /// The ServiceAccount's uid.
    pub const SERVICE_ACCOUNT_UID: &str = "kubernetes.io/serviceaccount/service-account.uid";
    /// The Secret holding the token.
    pub const SECRET_NAME: &str = "kubernetes.io/serviceaccount/secret.name";
    /// The namespace.
    pub const NAMESPACE: &str = "kubernetes.io/serviceaccount/namespace";
}

/// The claims of a legacy token (no audience, no expiry), as upstream's
/// `LegacyClaims`.
pub fn legacy_claims(namespace: &str, sa_name: &str, sa_uid: &str, secret_name: &str) -> Value {
    json!({
        "iss": LEGACY_ISSUER,
        "sub": username(namespace, sa_name),
        legacy::NAMESPACE: namespace,
        legacy::SECRET_NAME: secret_name,
        legacy::SERVICE_ACCOUNT_NAME: sa_name,
        legacy::SERVICE_ACCOUNT_UID: sa_uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serviceaccount::keys::SigningKey;

    fn key() -> SigningKey {
        SigningKey::generate().expect("key").0
    }

    fn claims(now: i64, exp_in: i64) -> Value {
        BoundClaims {
            namespace: "ns".into(),
            service_account: ObjectRef {
                name: "sa".into(),
                uid: "u1".into(),
            },
            audiences: vec![ISSUER.into()],
            issued_at: now,
            expiration_seconds: exp_in,
            id: "j1".into(),
            ..Default::default()
        }
        .to_json(ISSUER)
    }

    /// A token with a hand-made header, signed (or not) by `key`.
    fn forge(key: &SigningKey, header: &Value, claims: &Value, sign: bool) -> String {
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = if sign {
            URL_SAFE_NO_PAD.encode(key.sign_raw(msg.as_bytes()))
        } else {
            String::new()
        };
        format!("{msg}.{sig}")
    }

    #[test]
    fn round_trip() {
        let k = key();
        let now = 1_700_000_000;
        let t = k.sign(&claims(now, 3600)).expect("sign");
        let c = verify(&KeySet::new(k.public()), &t).expect("verifies");
        assert_eq!(c["iss"], ISSUER);
        assert_eq!(c["sub"], "system:serviceaccount:ns:sa");
        assert_eq!(c["aud"], json!([ISSUER]));
        assert_eq!(c["exp"], now + 3600);
        assert_eq!(c["nbf"], now);
        assert_eq!(c["kubernetes.io"]["serviceaccount"]["uid"], "u1");
        check_times(&c, now + 10, true).expect("fresh");
        let b = BoundClaims::from_json(&c).expect("claims");
        assert_eq!(b.namespace, "ns");
        assert_eq!(b.id, "j1");
        assert!(b.pod.is_none());
        // The header is upstream's: alg and kid only.
        let h = t.split('.').next().expect("header");
        let h: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).expect("b64")).expect("json");
        assert_eq!(h, json!({"alg": "ES256", "kid": k.public().kid()}));
    }

    #[test]
    fn times_have_upstreams_leeway() {
        let now = 1_700_000_000;
        let c = claims(now, 600);
        assert_eq!(check_times(&c, now + 600 + 59, true), Ok(()));
        assert_eq!(
            check_times(&c, now + 600 + 61, true),
            Err(TokenError::Expired)
        );
        assert_eq!(check_times(&c, now - 59, true), Ok(()));
        assert_eq!(
            check_times(&c, now - 61, true),
            Err(TokenError::NotYetValid)
        );
        let mut no_exp = c.clone();
        no_exp.as_object_mut().expect("obj").remove("exp");
        assert_eq!(check_times(&no_exp, now, true), Err(TokenError::NoExpiry));
        assert_eq!(check_times(&no_exp, now, false), Ok(()));
        let mut future = c;
        future.as_object_mut().expect("obj").remove("nbf");
        assert_eq!(
            check_times(&future, now - 120, true),
            Err(TokenError::IssuedInFuture)
        );
    }

    #[test]
    fn unknown_kid_and_other_keys_are_refused() {
        let (a, b) = (key(), key());
        assert_ne!(a.public().kid(), b.public().kid());
        let t = b.sign(&claims(1, 3600)).expect("sign");
        assert_eq!(
            verify(&KeySet::new(a.public()), &t),
            Err(TokenError::UnknownKey(b.public().kid().to_owned()))
        );
        // A rotated key kept in the set still verifies.
        let mut both = KeySet::new(a.public());
        both.add(b.public().clone());
        assert!(verify(&both, &t).is_ok());
        // A token claiming a's kid but signed by b does not.
        let lie = forge(
            &b,
            &json!({"alg": "ES256", "kid": a.public().kid()}),
            &claims(1, 3600),
            true,
        );
        assert_eq!(verify(&both, &lie), Err(TokenError::Signature));
    }

    #[test]
    fn tampering_is_detected() {
        let k = key();
        let set = KeySet::new(k.public());
        let t = k.sign(&claims(1, 3600)).expect("sign");
        let parts: Vec<&str> = t.split('.').collect();
        // Other claims under the same signature.
        let mut evil = claims(1, 3600);
        evil["sub"] = json!("system:serviceaccount:kube-system:admin");
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(evil.to_string()),
            parts[2]
        );
        assert_eq!(verify(&set, &swapped), Err(TokenError::Signature));
        // A flipped signature bit.
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("sig");
        sig[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(verify(&set, &flipped), Err(TokenError::Signature));
    }

    #[test]
    fn alg_none_and_others_are_refused() {
        let k = key();
        let set = KeySet::new(k.public());
        let kid = k.public().kid();
        for alg in ["none", "None", "HS256", "RS256", "ES384", "es256"] {
            let t = forge(
                &k,
                &json!({"alg": alg, "kid": kid}),
                &claims(1, 3600),
                alg != "none",
            );
            assert_eq!(
                verify(&set, &t),
                Err(TokenError::Algorithm(alg.to_owned())),
                "{alg}"
            );
        }
        let t = forge(&k, &json!({"kid": kid}), &claims(1, 3600), true);
        assert!(matches!(verify(&set, &t), Err(TokenError::Algorithm(_))));
        let t = forge(
            &k,
            &json!({"alg": "ES256", "kid": kid, "crit": ["b64"]}),
            &claims(1, 3600),
            true,
        );
        assert_eq!(verify(&set, &t), Err(TokenError::Critical));
    }

    #[test]
    fn malformed_tokens() {
        let k = key();
        let set = KeySet::new(k.public());
        let good = k.sign(&claims(1, 3600)).expect("sign");
        let parts: Vec<&str> = good.split('.').collect();
        for bad in [
            String::new(),
            "abc".to_owned(),
            "a.b".to_owned(),
            format!("{good}.x"),
            format!("!!.{}.{}", parts[1], parts[2]),
            format!("{}.{}.***", parts[0], parts[1]),
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode("[1]"),
                parts[1],
                parts[2]
            ),
            format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("{"), parts[1], parts[2]),
            // Padded base64 is not base64url without padding.
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        ] {
            assert!(
                matches!(
                    verify(&set, &bad),
                    Err(TokenError::Malformed(_) | TokenError::Signature)
                ),
                "{bad:?}: {:?}",
                verify(&set, &bad)
            );
        }
        // Signed, but the payload is not a JSON object.
        let t = forge(
            &k,
            &json!({"alg": "ES256", "kid": k.public().kid()}),
            &json!([1]),
            true,
        );
        assert_eq!(
            verify(&set, &t),
            Err(TokenError::Malformed("claims are not an object"))
        );
        assert!(looks_like_jwt(&good));
        assert!(!looks_like_jwt("abc.def"));
    }

    #[test]
    fn legacy_claims_are_upstreams() {
        let c = legacy_claims("ns", "sa", "u1", "sa-token");
        assert_eq!(c["iss"], LEGACY_ISSUER);
        assert_eq!(c["sub"], "system:serviceaccount:ns:sa");
        assert_eq!(c["kubernetes.io/serviceaccount/namespace"], "ns");
        assert_eq!(c["kubernetes.io/serviceaccount/secret.name"], "sa-token");
        assert_eq!(c["kubernetes.io/serviceaccount/service-account.name"], "sa");
        assert_eq!(c["kubernetes.io/serviceaccount/service-account.uid"], "u1");
        assert!(c.get("exp").is_none() && c.get("aud").is_none());
    }
}
