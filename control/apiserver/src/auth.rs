//! Authentication: TLS client certificates signed by the cluster CA (CN is
//! the user, O the groups, as upstream), static bearer tokens and
//! ServiceAccount JWTs ([`crate::serviceaccount`]).
//!
//! [`authenticate`] turns a request's credentials into a [`User`]; every
//! authenticated user also gets the `system:authenticated` group, anonymous
//! ones `system:unauthenticated`, as upstream's authenticator chain adds them.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use kestrel_api::ApiError;

use crate::serviceaccount::ServiceAccounts;

use x509_parser::prelude::{FromDer as _, X509Certificate};

/// An authenticated user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// User name (`admin`, `system:node:n1`).
    pub name: String,
    /// Unique id, if the authenticator knows one (a ServiceAccount's uid).
    pub uid: String,
    /// Groups (`system:masters`, `system:nodes`).
    pub groups: Vec<String>,
    /// Extra attributes (`authentication.kubernetes.io/pod-name`, ...).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// A user with a name and groups.
    pub fn new(
        name: impl Into<String>,
        groups: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            name: name.into(),
            groups: groups.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The user as `userInfo` shows it (SelfSubjectReview, AdmissionReview,
    /// audit events): `uid` and `extra` only when set.
    pub fn info(&self) -> serde_json::Value {
        let mut info = serde_json::json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            info["uid"] = serde_json::json!(self.uid);
        }
        if !self.extra.is_empty() {
            info["extra"] = serde_json::json!(self.extra);
        }
        info
    }
}

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of anonymous requests.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The group whose members skip authorization, as upstream.
pub const MASTERS: &str = "system:masters";

/// What a request presented: the TLS peer's certificate identity and the
/// `Authorization` header.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// Established by the TLS handshake.
    pub peer: Option<&'a Arc<User>>,
    /// `Authorization` header value.
    pub authorization: Option<&'a str>,
    /// The request path (the join endpoint takes the node token).
    pub path: &'a str,
}

/// Who is asking. A client certificate wins over a token, as upstream's
/// union authenticator tries x509 first. A bearer token that is present but
/// not valid is 401 even on public paths; no credentials at all are anonymous
/// on public paths and 401 elsewhere.
pub fn authenticate(
    tokens: &Tokens,
    node_token: &str,
    creds: Credentials<'_>,
) -> Result<Arc<User>, ApiError> {
    let user = match (creds.peer, bearer(creds.authorization)) {
        (Some(u), _) => u.clone(),
        (None, Some(t)) => {
            if constant_time_eq(t.as_bytes(), node_token.as_bytes())
                && creds.path == crate::state::JOIN_PATH
            {
                Arc::new(User::new(
                    "kestrel:node-bootstrap",
                    ["system:bootstrappers"],
                ))
            } else if let Some(u) = tokens.lookup(t) {
                u
            } else if let Some(sa) = tokens
                .service_accounts()
                .filter(|_| crate::serviceaccount::token::looks_like_jwt(t))
            {
                // A ServiceAccount JWT: any failure is a plain 401.
                Arc::new(sa.authenticate(t).map_err(|e| {
                    tracing::debug!(error = %e, "service account token refused");
                    ApiError::Unauthorized
                })?)
            } else {
                return Err(ApiError::Unauthorized);
            }
        }
        (None, None) if is_public_path(creds.path) => {
            return Ok(Arc::new(User::new("system:anonymous", [UNAUTHENTICATED])));
        }
        (None, None) => return Err(ApiError::Unauthorized),
    };
    Ok(with_authenticated(user))
}

/// Add `system:authenticated` unless the user already has it.
fn with_authenticated(user: Arc<User>) -> Arc<User> {
    if user.in_group(AUTHENTICATED) {
        return user;
    }
    let mut u = (*user).clone();
    u.groups.push(AUTHENTICATED.to_owned());
    Arc::new(u)
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
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    groups.push(AUTHENTICATED.to_owned());
    Some(User {
        name,
        groups,
        ..User::default()
    })
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

/// Static bearer tokens, compared in constant time, and the ServiceAccount
/// token authenticator, installed once the server has loaded its keys.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<(String, Arc<User>)>,
    service_accounts: OnceLock<Arc<ServiceAccounts>>,
}

impl Tokens {
    /// Build from `(token, user)` pairs.
    pub fn new(entries: impl IntoIterator<Item = (String, User)>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|(t, u)| (t, with_authenticated(Arc::new(u))))
                .collect(),
            service_accounts: OnceLock::new(),
        }
    }

    /// Accept ServiceAccount JWTs from now on (bootstrap does this once).
    pub(crate) fn install_service_accounts(&self, sa: Arc<ServiceAccounts>) {
        let _ = self.service_accounts.set(sa);
    }

    /// The ServiceAccount token machinery, once installed.
    pub(crate) fn service_accounts(&self) -> Option<&Arc<ServiceAccounts>> {
        self.service_accounts.get()
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
        let t = Tokens::new([("s3cret".to_owned(), User::new("u", Vec::<String>::new()))]);
        assert_eq!(
            t.lookup("s3cret").map(|u| u.name.clone()),
            Some("u".to_owned())
        );
        assert!(t.lookup("s3cre").is_none());
    }
}
