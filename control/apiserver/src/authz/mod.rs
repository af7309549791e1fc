//! Authorization, chained as upstream's `--authorization-mode=Node,RBAC`
//! behind the `system:masters` short-circuit, and the checks that belong to
//! it (RBAC escalation prevention and NodeRestriction, which the admission
//! chain calls).
//!
//! - [`request`] turns a request into attributes (upstream's RequestInfo).
//! - [`node`] is the Node authorizer and NodeRestriction.
//! - [`rbac`] evaluates Roles, ClusterRoles and their bindings.
//! - [`roles`] are the bootstrap roles, reconciled at start-up.
//! - [`review`] serves the access and identity reviews, [`impersonate`] the
//!   `Impersonate-*` headers.
//!
//! Both indexes follow the watch cache's change stream. A check waits until
//! they have applied every change the cache had when the request arrived, so
//! a binding a client just created is in force for its next request.

pub mod impersonate;
pub mod node;
pub mod rbac;
pub mod request;
pub mod review;
pub mod roles;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::rbac::v1::PolicyRule;
use kestrel_api::ApiError;

use crate::auth::{MASTERS, User};
use crate::cache::{Cache, ChangeKind};
pub use request::Attributes;

/// How long a check waits for the indexes to catch up with the cache.
const CATCH_UP: Duration = Duration::from_secs(2);

/// The authorizer chain and its indexes.
#[derive(Debug)]
pub struct Authorizer {
    rbac: RwLock<rbac::RbacIndex>,
    graph: RwLock<node::NodeGraph>,
    node_rules: Vec<PolicyRule>,
    /// The cache revision both indexes reflect.
    applied: crate::cache::Watermark,
}

impl Authorizer {
    /// Build the indexes from the cache and keep them current.
    pub fn start(cache: &Arc<Cache>) -> Arc<Self> {
        let az = Arc::new(Self {
            rbac: RwLock::default(),
            graph: RwLock::default(),
            node_rules: node::node_rules(),
            applied: crate::cache::Watermark::default(),
        });
        let rx = az.resync(cache);
        let weak = Arc::downgrade(&az);
        let cache = cache.clone();
        tokio::spawn(async move {
            let mut rx = rx;
            loop {
                let change = rx.recv().await;
                let Some(az) = weak.upgrade() else { return };
                match change {
                    Ok(c) => {
                        let obj = (c.kind == ChangeKind::Put).then_some(&*c.object);
                        if rbac::is_rbac_key(&c.key) {
                            az.rbac
                                .write()
                                .unwrap_or_else(|p| p.into_inner())
                                .apply(&c.key, obj);
                        } else if node::is_pod_key(&c.key) {
                            az.graph
                                .write()
                                .unwrap_or_else(|p| p.into_inner())
                                .apply(&c.key, obj);
                        }
                        az.applied.advance(c.revision);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "authorization indexes fell behind the watch cache; rebuilding"
                        );
                        rx = az.resync(&cache);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        az
    }

    /// Rebuild both indexes from a snapshot; the receiver continues after it.
    fn resync(&self, cache: &Cache) -> tokio::sync::broadcast::Receiver<Arc<crate::cache::Change>> {
        let (items, rx, rev) = cache.keyed_snapshot_and_watch(&[
            "/registry/rbac.authorization.k8s.io/",
            "/registry/core/pods/",
        ]);
        let mut r = rbac::RbacIndex::default();
        let mut g = node::NodeGraph::default();
        for (key, e) in items {
            if rbac::is_rbac_key(&key) {
                r.apply(&key, Some(&e.value));
            } else if node::is_pod_key(&key) {
                g.apply(&key, Some(&e.value));
            }
        }
        *self.rbac.write().unwrap_or_else(|p| p.into_inner()) = r;
        *self.graph.write().unwrap_or_else(|p| p.into_inner()) = g;
        self.applied.advance(rev);
        rx
    }

    /// Wait until the indexes reflect `revision` (bounded).
    async fn catch_up(&self, revision: i64) {
        if !self.applied.reached(revision, CATCH_UP).await {
            tracing::warn!(revision, "authorization indexes did not catch up in time");
        }
    }

    /// Whether `user` may do `a`: `Ok(())`, or the reason it may not.
    pub async fn decide(&self, cache: &Cache, user: &User, a: &Attributes) -> Result<(), String> {
        if user.in_group(MASTERS) {
            return Ok(());
        }
        self.catch_up(cache.revision()).await;
        self.decide_now(user, a)
    }

    fn decide_now(&self, user: &User, a: &Attributes) -> Result<(), String> {
        let graph = self.graph.read().unwrap_or_else(|p| p.into_inner());
        match node::authorize(&graph, &self.node_rules, user, a) {
            node::Decision::Allow => return Ok(()),
            node::Decision::Deny(why) => return Err(why),
            node::Decision::NoOpinion => {}
        }
        drop(graph);
        if self
            .rbac
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .allows(user, a)
        {
            Ok(())
        } else {
            Err(String::new())
        }
    }

    /// Authorize a request: 403 with upstream's message when refused.
    pub async fn authorize(
        &self,
        cache: &Cache,
        user: &User,
        a: &Attributes,
    ) -> Result<(), ApiError> {
        match self.decide(cache, user, a).await {
            Ok(()) => Ok(()),
            Err(reason) => Err(forbidden(user, a, &reason)),
        }
    }

    /// The rules that apply to `user` in `namespace` (node rules included
    /// for nodes), for SelfSubjectRulesReview and escalation checks.
    pub async fn rules_for(&self, cache: &Cache, user: &User, namespace: &str) -> Vec<PolicyRule> {
        self.catch_up(cache.revision()).await;
        let mut rules = self
            .rbac
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .rules_for(user, namespace);
        if node::node_name(user).is_some() {
            rules.extend(self.node_rules.iter().cloned());
        }
        if user.in_group(MASTERS) {
            rules.push(PolicyRule {
                api_groups: Some(vec!["*".into()]),
                resources: Some(vec!["*".into()]),
                verbs: vec!["*".into()],
                ..PolicyRule::default()
            });
            rules.push(PolicyRule {
                non_resource_urls: Some(vec!["*".into()]),
                verbs: vec!["*".into()],
                ..PolicyRule::default()
            });
        }
        rules
    }
}

/// The 403 of a refused request, worded as upstream's `forbiddenMessage`.
pub fn forbidden(user: &User, a: &Attributes, reason: &str) -> ApiError {
    let mut msg = if !a.resource_request {
        format!(
            "forbidden: User \"{}\" cannot {} path \"{}\"",
            user.name, a.verb, a.path
        )
    } else {
        let what = if a.api_group.is_empty() {
            a.resource.clone()
        } else {
            format!("{}.{}", a.resource, a.api_group)
        };
        let head = if a.name.is_empty() {
            format!("{what} is forbidden")
        } else {
            format!("{what} \"{}\" is forbidden", a.name)
        };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{}\"", a.namespace)
        };
        format!(
            "{head}: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
            user.name,
            a.verb,
            a.combined_resource(),
            a.api_group
        )
    };
    if !reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(reason);
    }
    ApiError::Forbidden(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_upstreams() {
        let u = User::new("bob", ["system:authenticated"]);
        let e = forbidden(
            &u,
            &Attributes::resource("list", "", "secrets", "y", ""),
            "",
        );
        assert_eq!(
            e.to_string(),
            r#"secrets is forbidden: User "bob" cannot list resource "secrets" in API group "" in the namespace "y""#
        );
        let e = forbidden(
            &u,
            &Attributes::resource("delete", "apps", "deployments", "", "d"),
            "",
        );
        assert_eq!(
            e.to_string(),
            r#"deployments.apps "d" is forbidden: User "bob" cannot delete resource "deployments" in API group "apps" at the cluster scope"#
        );
        let e = forbidden(&u, &Attributes::non_resource("get", "/metrics"), "");
        assert_eq!(
            e.to_string(),
            r#"forbidden: User "bob" cannot get path "/metrics""#
        );
    }
}
