//! User impersonation (`kubectl --as`, `--as-group`, `--as-uid`): the
//! `Impersonate-*` headers, each checked as the `impersonate` verb on
//! `users`, `groups`, `serviceaccounts`, `uids` or `userextras/<key>`, as
//! upstream's impersonation filter does.

use std::sync::Arc;

use hyper::HeaderMap;
use kestrel_api::ApiError;

use super::{Attributes, Authorizer};
use crate::auth::{AUTHENTICATED, UNAUTHENTICATED, User};
use crate::cache::Cache;

const USER: &str = "impersonate-user";
const UID: &str = "impersonate-uid";
const GROUP: &str = "impersonate-group";
const EXTRA: &str = "impersonate-extra-";

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// The user a request acts as: `user` itself without impersonation headers,
/// else the impersonated user once every part of it is authorized.
pub async fn resolve(
    az: &Authorizer,
    cache: &Cache,
    user: Arc<User>,
    headers: &HeaderMap,
) -> Result<Arc<User>, ApiError> {
    let names = values(headers, USER);
    let groups = values(headers, GROUP);
    let uids = values(headers, UID);
    let extras: Vec<(String, &str)> = headers
        .iter()
        .filter_map(|(k, v)| {
            let key = k.as_str().strip_prefix(EXTRA)?;
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8_lossy()
                .to_ascii_lowercase();
            Some((key, v.to_str().ok()?))
        })
        .collect();
    if names.is_empty() {
        if !groups.is_empty() || !uids.is_empty() || !extras.is_empty() {
            return Err(ApiError::BadRequest(
                "requested impersonation of groups, uid or extra without impersonating a user"
                    .to_owned(),
            ));
        }
        return Ok(user);
    }
    if names.len() > 1 || uids.len() > 1 {
        return Err(ApiError::BadRequest(
            "only one Impersonate-User and one Impersonate-Uid header may be given".to_owned(),
        ));
    }
    let name = names[0];
    let mut target = User::new(name, groups.iter().copied());
    let mut checks: Vec<Attributes> = Vec::new();
    match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) => {
            checks.push(Attributes::resource(
                "impersonate",
                "",
                "serviceaccounts",
                ns,
                sa,
            ));
            for g in [
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{ns}"),
            ] {
                if !target.in_group(&g) {
                    target.groups.push(g);
                }
            }
        }
        None => checks.push(Attributes::resource("impersonate", "", "users", "", name)),
    }
    for g in &groups {
        checks.push(Attributes::resource("impersonate", "", "groups", "", g));
    }
    if let Some(uid) = uids.first() {
        checks.push(Attributes::resource(
            "impersonate",
            "authentication.k8s.io",
            "uids",
            "",
            uid,
        ));
        target.uid = (*uid).to_owned();
    }
    for (key, value) in &extras {
        checks.push(
            Attributes::resource(
                "impersonate",
                "authentication.k8s.io",
                "userextras",
                "",
                value,
            )
            .with_subresource(key),
        );
        target
            .extra
            .entry(key.clone())
            .or_default()
            .push((*value).to_owned());
    }
    for a in &checks {
        az.authorize(cache, &user, a).await?;
    }
    let implicit = if name == "system:anonymous" {
        UNAUTHENTICATED
    } else {
        AUTHENTICATED
    };
    if !target.in_group(implicit) {
        target.groups.push(implicit.to_owned());
    }
    tracing::debug!(by = %user.name, as_user = %target.name, "impersonating");
    Ok(Arc::new(target))
}
