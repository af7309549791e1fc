//! RBAC, evaluated as upstream's `RBACAuthorizer` does: ClusterRoleBindings
//! first, then the RoleBindings of the request's namespace; a binding applies
//! when one of its subjects is the user, one of the user's groups, or the
//! user's ServiceAccount; the bound role allows the request when one of its
//! rules matches verb, API group, resource (with `*` and `*/subresource`),
//! resourceNames and nonResourceURLs (with a trailing `*`).
//!
//! The index holds decoded roles and bindings, kept current from the watch
//! cache's change stream, so a check is a few map lookups and no JSON.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{PolicyRule, Subject};
use serde::Deserialize as _;
use serde_json::Value;

use super::request::Attributes;
use crate::auth::User;

const RBAC_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";
const CLUSTER_ROLES: &str = "/registry/rbac.authorization.k8s.io/clusterroles/";
const ROLES: &str = "/registry/rbac.authorization.k8s.io/roles/";
const CLUSTER_BINDINGS: &str = "/registry/rbac.authorization.k8s.io/clusterrolebindings/";
const BINDINGS: &str = "/registry/rbac.authorization.k8s.io/rolebindings/";

/// What a binding points at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RoleRef {
    ClusterRole(String),
    Role(String),
}

#[derive(Debug)]
struct Binding {
    role: RoleRef,
    subjects: Vec<Subject>,
}

/// Decoded roles and bindings.
#[derive(Debug, Default)]
pub struct RbacIndex {
    cluster_roles: HashMap<String, Arc<Vec<PolicyRule>>>,
    /// (namespace, name) → rules.
    roles: HashMap<(String, String), Arc<Vec<PolicyRule>>>,
    cluster_bindings: BTreeMap<String, Binding>,
    /// namespace → name → binding.
    bindings: HashMap<String, BTreeMap<String, Binding>>,
}

/// Whether a key is one the index keeps.
pub fn is_rbac_key(key: &str) -> bool {
    key.starts_with(RBAC_PREFIX)
}

fn ns_name(rest: &str) -> Option<(String, String)> {
    let (ns, name) = rest.split_once('/')?;
    Some((ns.to_owned(), name.to_owned()))
}

fn role_ref(kind: &str, name: &str) -> Option<RoleRef> {
    match kind {
        "ClusterRole" => Some(RoleRef::ClusterRole(name.to_owned())),
        "Role" => Some(RoleRef::Role(name.to_owned())),
        _ => None,
    }
}

/// What the index reads of a Role or ClusterRole: its rules (an
/// aggregated ClusterRole's are written by the aggregation controller).
#[derive(serde::Deserialize)]
struct RulesOf {
    #[serde(default)]
    rules: Option<Vec<PolicyRule>>,
}

/// What the index reads of a RoleBinding or ClusterRoleBinding.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BindingOf {
    role_ref: k8s_openapi::api::rbac::v1::RoleRef,
    #[serde(default)]
    subjects: Option<Vec<Subject>>,
}

fn rules(object: Option<&Value>) -> Option<Arc<Vec<PolicyRule>>> {
    let r = RulesOf::deserialize(object?).ok()?;
    Some(Arc::new(r.rules.unwrap_or_default()))
}

fn binding(object: Option<&Value>) -> Option<Binding> {
    let b = BindingOf::deserialize(object?).ok()?;
    Some(Binding {
        role: role_ref(&b.role_ref.kind, &b.role_ref.name)?,
        subjects: b.subjects.unwrap_or_default(),
    })
}

impl RbacIndex {
    /// Apply a put (`Some(object)`) or delete (`None`) of `key`. Objects that
    /// do not decode are left out, as if absent: validation keeps them out
    /// of the store in the first place.
    pub fn apply(&mut self, key: &str, object: Option<&Value>) {
        if let Some(name) = key.strip_prefix(CLUSTER_ROLES) {
            match rules(object) {
                Some(r) => self.cluster_roles.insert(name.to_owned(), r),
                None => self.cluster_roles.remove(name),
            };
        } else if let Some(rest) = key.strip_prefix(ROLES) {
            let Some(k) = ns_name(rest) else { return };
            match rules(object) {
                Some(r) => self.roles.insert(k, r),
                None => self.roles.remove(&k),
            };
        } else if let Some(name) = key.strip_prefix(CLUSTER_BINDINGS) {
            match binding(object) {
                Some(b) => self.cluster_bindings.insert(name.to_owned(), b),
                None => self.cluster_bindings.remove(name),
            };
        } else if let Some(rest) = key.strip_prefix(BINDINGS) {
            let Some((ns, name)) = ns_name(rest) else {
                return;
            };
            match binding(object) {
                Some(b) => {
                    self.bindings.entry(ns).or_default().insert(name, b);
                }
                None => {
                    if let Some(m) = self.bindings.get_mut(&ns) {
                        m.remove(&name);
                        if m.is_empty() {
                            self.bindings.remove(&ns);
                        }
                    }
                }
            }
        }
    }

    fn rules_of(&self, role: &RoleRef, namespace: &str) -> Option<&Arc<Vec<PolicyRule>>> {
        match role {
            RoleRef::ClusterRole(n) => self.cluster_roles.get(n),
            RoleRef::Role(n) => self.roles.get(&(namespace.to_owned(), n.clone())),
        }
    }

    /// Call `visit` with every rule that applies to `user` in `namespace`
    /// (cluster-wide bindings, then the namespace's), until it returns true.
    /// Returns whether it did.
    pub fn visit(
        &self,
        user: &User,
        namespace: &str,
        mut visit: impl FnMut(&PolicyRule) -> bool,
    ) -> bool {
        for b in self.cluster_bindings.values() {
            if !b.subjects.iter().any(|s| applies_to(user, s, "")) {
                continue;
            }
            // A ClusterRoleBinding to a Role is invalid; upstream ignores it.
            if let RoleRef::ClusterRole(_) = b.role
                && let Some(rules) = self.rules_of(&b.role, "")
                && rules.iter().any(&mut visit)
            {
                return true;
            }
        }
        if namespace.is_empty() {
            return false;
        }
        let Some(bs) = self.bindings.get(namespace) else {
            return false;
        };
        for b in bs.values() {
            if !b.subjects.iter().any(|s| applies_to(user, s, namespace)) {
                continue;
            }
            if let Some(rules) = self.rules_of(&b.role, namespace)
                && rules.iter().any(&mut visit)
            {
                return true;
            }
        }
        false
    }

    /// Whether RBAC allows the request.
    pub fn allows(&self, user: &User, a: &Attributes) -> bool {
        self.visit(user, &a.namespace, |r| rule_allows(a, r))
    }

    /// Every rule that applies to `user` in `namespace` (for
    /// SelfSubjectRulesReview and the escalation check).
    pub fn rules_for(&self, user: &User, namespace: &str) -> Vec<PolicyRule> {
        let mut out = Vec::new();
        self.visit(user, namespace, |r| {
            out.push(r.clone());
            false
        });
        out
    }

    /// The rules of a role a binding would grant, if it exists.
    pub fn role_rules(&self, kind: &str, name: &str, namespace: &str) -> Option<Vec<PolicyRule>> {
        let r = role_ref(kind, name)?;
        self.rules_of(&r, namespace).map(|r| (**r).clone())
    }
}

/// Whether a binding subject is the user (upstream's `appliesToUser`). A
/// ServiceAccount subject without a namespace means the binding's.
fn applies_to(user: &User, s: &Subject, binding_ns: &str) -> bool {
    match s.kind.as_str() {
        "User" => user.name == s.name,
        "Group" => user.in_group(&s.name),
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            !ns.is_empty()
                && user
                    .name
                    .strip_prefix("system:serviceaccount:")
                    .and_then(|r| r.split_once(':'))
                    .is_some_and(|(n, name)| n == ns && name == s.name)
        }
        _ => false,
    }
}

fn has(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == v)
}

fn opt(list: &Option<Vec<String>>) -> &[String] {
    list.as_deref().unwrap_or(&[])
}

/// Whether one rule allows the request (upstream's `RuleAllows`).
pub fn rule_allows(a: &Attributes, r: &PolicyRule) -> bool {
    let verb_ok = has(&r.verbs, "*") || has(&r.verbs, &a.verb);
    if !verb_ok {
        return false;
    }
    if !a.resource_request {
        return opt(&r.non_resource_urls)
            .iter()
            .any(|u| url_matches(u, &a.path));
    }
    let groups = opt(&r.api_groups);
    if !(has(groups, "*") || has(groups, &a.api_group)) {
        return false;
    }
    let combined = a.combined_resource();
    let resource_ok = opt(&r.resources).iter().any(|res| {
        res == "*"
            || *res == combined
            || (!a.subresource.is_empty()
                && res.strip_prefix("*/").is_some_and(|s| s == a.subresource))
    });
    if !resource_ok {
        return false;
    }
    let names = opt(&r.resource_names);
    names.is_empty() || has(names, &a.name)
}

fn url_matches(rule: &str, path: &str) -> bool {
    rule == "*"
        || rule == path
        || rule
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

/// The rules of `servant` that `owner` does not cover, one atomic rule each
/// (upstream's `Covers` over `BreakdownRule`).
pub fn uncovered(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut missing = Vec::new();
    for rule in servant {
        for sub in breakdown(rule) {
            if !owner.iter().any(|o| covers(o, &sub)) {
                missing.push(sub);
            }
        }
    }
    missing
}

fn one(v: &str) -> Option<Vec<String>> {
    Some(vec![v.to_owned()])
}

fn breakdown(r: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for g in opt(&r.api_groups) {
        for res in opt(&r.resources) {
            for verb in &r.verbs {
                let names = opt(&r.resource_names);
                if names.is_empty() {
                    out.push(PolicyRule {
                        api_groups: one(g),
                        resources: one(res),
                        verbs: vec![verb.clone()],
                        ..PolicyRule::default()
                    });
                }
                for n in names {
                    out.push(PolicyRule {
                        api_groups: one(g),
                        resources: one(res),
                        resource_names: one(n),
                        verbs: vec![verb.clone()],
                        ..PolicyRule::default()
                    });
                }
            }
        }
    }
    for u in opt(&r.non_resource_urls) {
        for verb in &r.verbs {
            out.push(PolicyRule {
                non_resource_urls: one(u),
                verbs: vec![verb.clone()],
                ..PolicyRule::default()
            });
        }
    }
    out
}

fn has_all(set: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| has(set, w))
}

/// Whether `owner` covers the atomic rule `sub` (upstream's `ruleCovers`).
fn covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let verbs = has(&owner.verbs, "*") || has_all(&owner.verbs, &sub.verbs);
    let groups =
        has(opt(&owner.api_groups), "*") || has_all(opt(&owner.api_groups), opt(&sub.api_groups));
    let resources = {
        let set = opt(&owner.resources);
        has(set, "*")
            || opt(&sub.resources).iter().all(|res| {
                has(set, res)
                    || res
                        .split_once('/')
                        .is_some_and(|(_, subres)| has(set, &format!("*/{subres}")))
            })
    };
    let urls = opt(&sub.non_resource_urls).iter().all(|u| {
        opt(&owner.non_resource_urls)
            .iter()
            .any(|o| url_matches(o, u))
    });
    let names = if opt(&sub.resource_names).is_empty() {
        opt(&owner.resource_names).is_empty()
    } else {
        opt(&owner.resource_names).is_empty()
            || has_all(opt(&owner.resource_names), opt(&sub.resource_names))
    };
    verbs && groups && resources && urls && names
}

/// A rule as upstream's `CompactString` prints it in escalation errors:
/// `{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}`.
pub fn compact(r: &PolicyRule) -> String {
    let q = |l: &[String]| {
        let items: Vec<String> = l.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", items.join(" "))
    };
    let mut parts = Vec::new();
    for (label, l) in [
        ("APIGroups", opt(&r.api_groups)),
        ("Resources", opt(&r.resources)),
        ("ResourceNames", opt(&r.resource_names)),
        ("NonResourceURLs", opt(&r.non_resource_urls)),
    ] {
        if !l.is_empty() {
            parts.push(format!("{label}:{}", q(l)));
        }
    }
    parts.push(format!("Verbs:{}", q(&r.verbs)));
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> User {
        User::new(name, groups.iter().copied())
    }

    fn index() -> RbacIndex {
        let mut ix = RbacIndex::default();
        ix.apply(
            &format!("{CLUSTER_ROLES}pod-reader"),
            Some(&json!({"rules": [
                {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["update"]},
                {"nonResourceURLs": ["/healthz", "/metrics/*"], "verbs": ["get"]},
            ]})),
        );
        ix.apply(
            &format!("{ROLES}team/cm-one"),
            Some(&json!({"rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"], "verbs": ["get", "update"]},
            ]})),
        );
        ix.apply(
            &format!("{CLUSTER_BINDINGS}readers"),
            Some(&json!({
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pod-reader"},
                "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "readers"}],
            })),
        );
        ix.apply(
            &format!("{BINDINGS}team/bob-cm"),
            Some(&json!({
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-one"},
                "subjects": [
                    {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"},
                    {"kind": "ServiceAccount", "name": "app"},
                ],
            })),
        );
        ix.apply(
            &format!("{BINDINGS}team/readers-here"),
            Some(&json!({
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pod-reader"},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "carol"}],
            })),
        );
        ix
    }

    #[test]
    fn cluster_bindings_apply_everywhere() {
        let ix = index();
        let alice = user("alice", &["readers"]);
        for ns in ["", "default", "team"] {
            assert!(ix.allows(&alice, &Attributes::resource("list", "", "pods", ns, "")));
        }
        assert!(ix.allows(
            &alice,
            &Attributes::resource("get", "", "pods", "x", "p").with_subresource("log")
        ));
        assert!(!ix.allows(
            &alice,
            &Attributes::resource("get", "", "pods", "x", "p").with_subresource("exec")
        ));
        assert!(!ix.allows(
            &alice,
            &Attributes::resource("delete", "", "pods", "x", "p")
        ));
        assert!(!ix.allows(
            &alice,
            &Attributes::resource("get", "apps", "pods", "x", "p")
        ));
        assert!(
            ix.allows(
                &alice,
                &Attributes::resource("update", "apps", "deployments", "x", "d")
                    .with_subresource("scale")
            )
        );
        assert!(!ix.allows(
            &alice,
            &Attributes::resource("update", "apps", "deployments", "x", "d")
        ));
        assert!(ix.allows(&alice, &Attributes::non_resource("get", "/healthz")));
        assert!(ix.allows(
            &alice,
            &Attributes::non_resource("get", "/metrics/cadvisor")
        ));
        assert!(!ix.allows(&alice, &Attributes::non_resource("get", "/metrics")));
        assert!(!ix.allows(&alice, &Attributes::non_resource("post", "/healthz")));
        assert!(!ix.allows(
            &user("alice", &[]),
            &Attributes::resource("list", "", "pods", "", "")
        ));
    }

    #[test]
    fn role_bindings_stay_in_their_namespace() {
        let ix = index();
        let carol = user("carol", &[]);
        assert!(ix.allows(
            &carol,
            &Attributes::resource("list", "", "pods", "team", "")
        ));
        assert!(!ix.allows(
            &carol,
            &Attributes::resource("list", "", "pods", "default", "")
        ));
        assert!(!ix.allows(&carol, &Attributes::resource("list", "", "pods", "", "")));
        // resourceNames: only "one", and never a list.
        let bob = user("bob", &[]);
        assert!(ix.allows(
            &bob,
            &Attributes::resource("get", "", "configmaps", "team", "one")
        ));
        assert!(!ix.allows(
            &bob,
            &Attributes::resource("get", "", "configmaps", "team", "two")
        ));
        assert!(!ix.allows(
            &bob,
            &Attributes::resource("list", "", "configmaps", "team", "")
        ));
        // A ServiceAccount subject without namespace is the binding's.
        let sa = user("system:serviceaccount:team:app", &[]);
        assert!(ix.allows(
            &sa,
            &Attributes::resource("update", "", "configmaps", "team", "one")
        ));
        let other = user("system:serviceaccount:other:app", &[]);
        assert!(!ix.allows(
            &other,
            &Attributes::resource("update", "", "configmaps", "team", "one")
        ));
    }

    #[test]
    fn deletes_and_missing_roles() {
        let mut ix = index();
        let alice = user("alice", &["readers"]);
        ix.apply(&format!("{CLUSTER_ROLES}pod-reader"), None);
        assert!(!ix.allows(&alice, &Attributes::resource("list", "", "pods", "", "")));
        let mut ix = index();
        ix.apply(&format!("{CLUSTER_BINDINGS}readers"), None);
        assert!(!ix.allows(&alice, &Attributes::resource("list", "", "pods", "", "")));
    }

    #[test]
    fn coverage() {
        let owner: Vec<PolicyRule> = serde_json::from_value(json!([
            {"apiGroups": [""], "resources": ["pods", "*/status"], "verbs": ["get", "list"]},
            {"apiGroups": ["apps"], "resources": ["*"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["get"]},
            {"nonResourceURLs": ["/logs/*"], "verbs": ["get"]},
        ]))
        .expect("rules");
        let servant: Vec<PolicyRule> = serde_json::from_value(json!([
            {"apiGroups": [""], "resources": ["pods", "services/status"], "verbs": ["get"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["delete"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["get"]},
            {"nonResourceURLs": ["/logs/x"], "verbs": ["get"]},
        ]))
        .expect("rules");
        assert!(uncovered(&owner, &servant).is_empty());
        let more: Vec<PolicyRule> = serde_json::from_value(json!([
            {"apiGroups": [""], "resources": ["secrets", "pods"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
        ]))
        .expect("rules");
        let missing = uncovered(&owner, &more);
        let printed: Vec<String> = missing.iter().map(compact).collect();
        assert_eq!(
            printed,
            [
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#,
                r#"{APIGroups:[""], Resources:["configmaps"], Verbs:["get"]}"#,
            ]
        );
    }
}
