//! Authentication: TLS client certificates signed by the cluster CA (CN is
//! the user, O the groups, as upstream) and static bearer tokens.

use std::sync::Arc;

use x509_parser::prelude::{FromDer as _, X509Certificate};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User name (`admin`, `system:node:n1`).
    pub name: String,
    /// Groups (`system:masters`, `system:nodes`).
    pub groups: Vec<String>,
}

/// The identity the TLS layer established for a connection, if any.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(pub Option<Arc<User>>);

/// The user of the current request, inserted by the authentication layer.
#[derive(Debug, Clone)]
pub struct RequestUser(pub Arc<User>);

/// User name and groups from a client certificate's subject.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(User { name, groups })
}

/// The cluster CA in PEM, public as in k3s: a joining agent fetches it over
/// an unverified connection and checks it against the hash in its token.
pub const CACERTS_PATH: &str = "/cacerts";

/// Paths upstream serves to anonymous clients (the `system:public-info-viewer`
/// and health-check rules), so probes and version checks need no credentials,
/// plus the CA bundle a joining agent verifies against its token.
pub fn is_public_path(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/livez" | "/readyz" | "/version" | "/version/" | CACERTS_PATH
    ) || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

/// Static bearer tokens, compared in constant time.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<(String, Arc<User>)>,
}

impl Tokens {
    /// Build from `(token, user)` pairs.
    pub fn new(entries: impl IntoIterator<Item = (String, User)>) -> Self {
        Self {
            entries: entries.into_iter().map(|(t, u)| (t, Arc::new(u))).collect(),
        }
    }

    /// The user a bearer token stands for.
    pub fn lookup(&self, token: &str) -> Option<Arc<User>> {
        self.entries
            .iter()
            .find(|(t, _)| constant_time_eq(t.as_bytes(), token.as_bytes()))
            .map(|(_, u)| u.clone())
    }
}

/// Compare without an early exit, so timing does not reveal how much of a
/// guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, rest) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_paths() {
        for p in ["/healthz", "/livez", "/readyz", "/version", "/readyz/ping"] {
            assert!(is_public_path(p), "{p}");
        }
        for p in [
            "/api",
            "/apis",
            "/api/v1/namespaces",
            "/openapi/v2",
            "/healthzz",
        ] {
            assert!(!is_public_path(p), "{p}");
        }
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        let t = Tokens::new([(
            "s3cret".to_owned(),
            User {
                name: "u".into(),
                groups: vec![],
            },
        )]);
        assert_eq!(
            t.lookup("s3cret").map(|u| u.name.clone()),
            Some("u".to_owned())
        );
        assert!(t.lookup("s3cre").is_none());
    }
}
