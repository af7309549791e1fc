//! The bootstrap roles and bindings (upstream's bootstrappolicy, narrowed to
//! what Kestrel serves), reconciled at every start as upstream does: missing
//! objects are created; existing ones whose
//! `rbac.authorization.kubernetes.io/autoupdate` annotation is not `"false"`
//! gain missing rules and subjects, and keep whatever users added.
//!
//! Also RBAC's escalation prevention: nobody grants, through a role or a
//! binding, a permission they do not hold, unless they have `escalate` on
//! the role or `bind` on the role a binding refers to.

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::PolicyRule;
use kestrel_api::ApiError;
use kestrel_api::registry::{self, ResourceDef};
use serde_json::{Value, json};

use super::rbac::{compact, uncovered};
use super::{Attributes, Authorizer};
use crate::Error;
use crate::auth::User;
use crate::cache::Cache;
use crate::state::AppState;
use crate::state::Target;
use crate::write::{create_object, update_with};

const GROUP: &str = "rbac.authorization.k8s.io";
const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const AGG: &str = "rbac.authorization.k8s.io/aggregate-to-";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
/// Every verb of a writable resource (the registry's list).
const ALL: &[&str] = registry::ALL_VERBS;

fn r(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn url(urls: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

/// A ClusterRole: name, aggregation labels it carries, the labels it
/// aggregates (for admin/edit/view), rules.
struct RoleSpec {
    name: &'static str,
    labels: &'static [&'static str],
    aggregates: Option<&'static str>,
    rules: Vec<Value>,
}

fn role(name: &'static str, rules: Vec<Value>) -> RoleSpec {
    RoleSpec {
        name,
        labels: &[],
        aggregates: None,
        rules,
    }
}

/// Resources the view role reads, per group.
fn viewable() -> Vec<Value> {
    vec![
        r(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "pods/log",
                "pods/status",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                "serviceaccounts",
                "services",
                "services/status",
                "bindings",
                "events",
                "limitranges",
                "resourcequotas",
                "resourcequotas/status",
                "namespaces",
                "namespaces/status",
            ],
            READ,
        ),
        r(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        r(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            READ,
        ),
        r(
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
            READ,
        ),
        r(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            READ,
        ),
        r(
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
            READ,
        ),
        r(&["discovery.k8s.io"], &["endpointslices"], READ),
        r(&["events.k8s.io"], &["events"], READ),
    ]
}

fn editable() -> Vec<Value> {
    vec![
        r(
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
            READ,
        ),
        r(&[""], &["serviceaccounts"], &["impersonate"]),
        r(
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/ephemeralcontainers",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            WRITE,
        ),
        r(
            &[""],
            &["pods/eviction", "serviceaccounts/token"],
            &["create"],
        ),
        r(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        r(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        r(&["batch"], &["cronjobs", "jobs"], WRITE),
        r(&["policy"], &["poddisruptionbudgets"], WRITE),
        r(
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
            WRITE,
        ),
        r(&["discovery.k8s.io"], &["endpointslices"], WRITE),
        r(&["coordination.k8s.io"], &["leases"], ALL),
    ]
}

fn cluster_roles() -> Vec<RoleSpec> {
    vec![
        role(
            "cluster-admin",
            vec![r(&["*"], &["*"], &["*"]), url(&["*"], &["*"])],
        ),
        RoleSpec {
            name: "admin",
            labels: &[],
            aggregates: Some("admin"),
            rules: vec![],
        },
        RoleSpec {
            name: "edit",
            labels: &["admin"],
            aggregates: Some("edit"),
            rules: vec![],
        },
        RoleSpec {
            name: "view",
            labels: &["edit"],
            aggregates: Some("view"),
            rules: vec![],
        },
        RoleSpec {
            name: "system:aggregate-to-admin",
            labels: &["admin"],
            aggregates: None,
            rules: vec![
                r(&[GROUP], &["rolebindings", "roles"], ALL),
                r(
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                    &["create"],
                ),
            ],
        },
        RoleSpec {
            name: "system:aggregate-to-edit",
            labels: &["edit"],
            aggregates: None,
            rules: editable(),
        },
        RoleSpec {
            name: "system:aggregate-to-view",
            labels: &["view"],
            aggregates: None,
            rules: viewable(),
        },
        role(
            "system:discovery",
            vec![url(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        role(
            "system:public-info-viewer",
            vec![url(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
        ),
        role(
            "system:basic-user",
            vec![
                r(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                r(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        role(
            "system:service-account-issuer-discovery",
            vec![url(
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
                &["get"],
            )],
        ),
        role(
            "system:monitoring",
            vec![url(
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/readyz",
                    "/readyz/*",
                ],
                &["get"],
            )],
        ),
        role(
            "system:auth-delegator",
            vec![
                r(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                r(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
        role(
            "system:kube-scheduler",
            vec![
                r(
                    &["", "events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
                r(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["create", "get", "list", "watch", "update"],
                ),
                r(
                    &[""],
                    &["nodes", "namespaces", "services", "replicationcontrollers"],
                    READ,
                ),
                // Volume binding (upstream's system:volume-scheduler): the
                // scheduler records its node choice on claims and volumes.
                r(
                    &[""],
                    &["persistentvolumeclaims", "persistentvolumes"],
                    &["get", "list", "patch", "update", "watch"],
                ),
                r(&["storage.k8s.io"], &["storageclasses"], READ),
                r(&[""], &["pods"], &["delete", "get", "list", "watch"]),
                r(&[""], &["bindings", "pods/binding"], &["create"]),
                r(&[""], &["pods/status"], &["patch", "update"]),
                r(&["apps"], &["replicasets", "statefulsets"], READ),
                r(&["policy"], &["poddisruptionbudgets"], READ),
                r(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                r(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
        // One identity runs every Kestrel controller, as upstream's
        // controller manager does without --use-service-account-credentials:
        // the union of upstream's per-controller roles. The garbage collector
        // and the namespace controller touch every kind; creating is limited
        // to what the controllers make; no impersonate or bind, and escalate
        // only for the ClusterRole aggregation controller.
        role(
            "system:kube-controller-manager",
            vec![
                r(
                    &["*"],
                    &["*"],
                    &[
                        "delete",
                        "deletecollection",
                        "get",
                        "list",
                        "patch",
                        "update",
                        "watch",
                    ],
                ),
                r(
                    &[""],
                    &[
                        "pods",
                        "endpoints",
                        "events",
                        "serviceaccounts",
                        "configmaps",
                        "secrets",
                        "persistentvolumes",
                        "persistentvolumeclaims",
                    ],
                    &["create"],
                ),
                r(&[""], &["serviceaccounts/token"], &["create"]),
                r(
                    &["apps"],
                    &["replicasets", "controllerrevisions"],
                    &["create"],
                ),
                r(&["batch"], &["jobs"], &["create"]),
                r(&["discovery.k8s.io"], &["endpointslices"], &["create"]),
                r(&["events.k8s.io"], &["events"], &["create"]),
                r(&["coordination.k8s.io"], &["leases"], &["create"]),
                r(&[GROUP], &["clusterroles"], &["escalate"]),
                r(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                r(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
        role(
            "system:node-proxier",
            vec![
                r(&[""], &["endpoints", "services", "nodes"], READ),
                r(&["discovery.k8s.io"], &["endpointslices"], READ),
                r(
                    &["", "events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
            ],
        ),
        role(
            "system:kube-dns",
            vec![
                r(&[""], &["endpoints", "services"], &["list", "watch"]),
                r(
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                    &["list", "watch"],
                ),
            ],
        ),
        role("system:node", node_role_rules()),
        // Kestrel's own: the node join endpoint for the join token, and the
        // cluster CA bundle a joining agent checks against its token.
        role(
            "system:kestrel:node-joiner",
            vec![url(&[crate::state::JOIN_PATH], &["post"])],
        ),
        role(
            "system:kestrel:public-ca",
            vec![url(&[crate::auth::CACERTS_PATH], &["get"])],
        ),
    ]
}

/// upstream keeps a `system:node` ClusterRole (unbound: the Node authorizer
/// decides); Kestrel's lists the same rules the Node authorizer applies.
fn node_role_rules() -> Vec<Value> {
    super::node::node_rules()
        .into_iter()
        .filter_map(|r| serde_json::to_value(r).ok())
        .collect()
}

/// A binding subject: kind, name, namespace.
type SubjectSpec = (&'static str, &'static str, &'static str);

/// ClusterRoleBindings: name, role, subjects as (kind, name, namespace).
fn cluster_bindings() -> Vec<(&'static str, &'static str, Vec<SubjectSpec>)> {
    vec![
        (
            "cluster-admin",
            "cluster-admin",
            vec![("Group", "system:masters", "")],
        ),
        (
            "system:discovery",
            "system:discovery",
            vec![("Group", "system:authenticated", "")],
        ),
        (
            "system:basic-user",
            "system:basic-user",
            vec![("Group", "system:authenticated", "")],
        ),
        (
            "system:public-info-viewer",
            "system:public-info-viewer",
            vec![
                ("Group", "system:authenticated", ""),
                ("Group", "system:unauthenticated", ""),
            ],
        ),
        (
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            vec![("Group", "system:serviceaccounts", "")],
        ),
        (
            "system:monitoring",
            "system:monitoring",
            vec![("Group", "system:monitoring", "")],
        ),
        (
            "system:kube-scheduler",
            "system:kube-scheduler",
            vec![("User", "system:kube-scheduler", "")],
        ),
        (
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            vec![("User", "system:kube-controller-manager", "")],
        ),
        (
            "system:node-proxier",
            "system:node-proxier",
            vec![("User", "system:kube-proxy", "")],
        ),
        (
            "system:kube-dns",
            "system:kube-dns",
            vec![("ServiceAccount", "kube-dns", "kube-system")],
        ),
        ("system:node", "system:node", vec![]),
        (
            "system:kestrel:node-joiner",
            "system:kestrel:node-joiner",
            vec![("Group", "system:bootstrappers", "")],
        ),
        (
            "system:kestrel:public-ca",
            "system:kestrel:public-ca",
            vec![
                ("Group", "system:authenticated", ""),
                ("Group", "system:unauthenticated", ""),
            ],
        ),
    ]
}

fn subject(kind: &str, name: &str, ns: &str) -> Value {
    let mut s = json!({"kind": kind, "name": name});
    if kind == "ServiceAccount" {
        s["namespace"] = json!(ns);
    } else {
        s["apiGroup"] = json!(GROUP);
    }
    s
}

fn target(plural: &str, name: &str) -> Result<Target, Error> {
    let def = registry::lookup(GROUP, "v1", plural)
        .ok_or_else(|| Error::Config(format!("{plural} missing from the registry")))?;
    Ok(Target {
        def,
        ns: None,
        name: Some(name.to_owned()),
    })
}

fn autoupdate(cur: &Value) -> bool {
    cur.pointer(&format!(
        "/metadata/annotations/{}",
        AUTOUPDATE.replace('/', "~1")
    ))
    .and_then(Value::as_str)
        != Some("false")
}

/// Create what is missing, add what is missing to what is there.
async fn reconcile(
    state: &Arc<AppState>,
    t: &Target,
    desired: Value,
    merge: impl Fn(&mut Value, &Value) + Copy,
) -> Result<(), Error> {
    let boot = |e: ApiError| Error::Bootstrap(format!("{} {:?}: {e}", t.def.plural, t.name));
    if state.cache.get(&t.key()).is_none() {
        match create_object(state, None, t, desired.clone(), false).await {
            Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
            Err(e) => return Err(boot(e)),
        }
    }
    update_with(state, None, t, None, false, |cur| {
        let mut next = cur.clone();
        if autoupdate(cur) {
            merge(&mut next, &desired);
        }
        Ok((next, None))
    })
    .await
    .map_err(boot)?;
    Ok(())
}

fn push_missing(list: &mut Value, wanted: &Value) {
    if !list.is_array() {
        *list = json!([]);
    }
    let Some(items) = list.as_array_mut() else {
        return;
    };
    for w in wanted.as_array().into_iter().flatten() {
        if !items.contains(w) {
            items.push(w.clone());
        }
    }
}

/// Reconcile the bootstrap ClusterRoles and ClusterRoleBindings.
pub async fn reconcile_bootstrap(state: &Arc<AppState>) -> Result<(), Error> {
    for spec in cluster_roles() {
        let mut labels = serde_json::Map::new();
        labels.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
        for l in spec.labels {
            labels.insert(format!("{AGG}{l}"), json!("true"));
        }
        let mut desired = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": spec.name, "labels": labels, "annotations": {AUTOUPDATE: "true"}},
            "rules": spec.rules,
        });
        if let Some(agg) = spec.aggregates {
            desired["aggregationRule"] =
                json!({"clusterRoleSelectors": [{"matchLabels": {format!("{AGG}{agg}"): "true"}}]});
        }
        reconcile(
            state,
            &target("clusterroles", spec.name)?,
            desired,
            |next, want| {
                if let Some(l) = want.pointer("/metadata/labels").and_then(Value::as_object) {
                    let m = &mut next["metadata"]["labels"];
                    if !m.is_object() {
                        *m = json!({});
                    }
                    for (k, v) in l {
                        m[k] = v.clone();
                    }
                }
                if let Some(a) = want.get("aggregationRule") {
                    // Aggregated roles' rules belong to the aggregation
                    // controller; only the selectors are reconciled.
                    push_missing(
                        &mut next["aggregationRule"]["clusterRoleSelectors"],
                        &a["clusterRoleSelectors"],
                    );
                } else {
                    push_missing(&mut next["rules"], &want["rules"]);
                }
            },
        )
        .await?;
    }
    for (name, role, subjects) in cluster_bindings() {
        let subjects: Vec<Value> = subjects
            .iter()
            .map(|(k, n, ns)| subject(k, n, ns))
            .collect();
        let desired = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}, "annotations": {AUTOUPDATE: "true"}},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
            "subjects": subjects,
        });
        reconcile(
            state,
            &target("clusterrolebindings", name)?,
            desired,
            |next, want| {
                push_missing(&mut next["subjects"], &want["subjects"]);
            },
        )
        .await?;
    }
    Ok(())
}

fn escalation_error(
    def: &ResourceDef,
    name: &str,
    user: &User,
    missing: &[PolicyRule],
) -> ApiError {
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    let rules: Vec<String> = missing.iter().map(compact).collect();
    ApiError::Forbidden(format!(
        "{}.{} \"{name}\" is forbidden: user \"{}\" (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
        def.plural,
        def.group,
        user.name,
        groups.join(" "),
        rules.join("\n")
    ))
}

/// Refuse a Role, ClusterRole or binding that would grant more than its
/// author holds (upstream's escalation and bind checks).
pub async fn check_escalation(
    az: &Authorizer,
    cache: &Cache,
    user: &User,
    def: &ResourceDef,
    obj: &Value,
) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (granted, verb, check_resource, check_name): (Vec<PolicyRule>, &str, &str, String) =
        match def.kind {
            "Role" | "ClusterRole" => {
                // Aggregated ClusterRoles get their rules from the controller;
                // what counts is what the object itself lists.
                let rules: Vec<PolicyRule> = obj
                    .get("rules")
                    .cloned()
                    .and_then(|v| serde_json::from_value(v).ok())
                    .unwrap_or_default();
                (rules, "escalate", def.plural, name.to_owned())
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let kind = obj
                    .pointer("/roleRef/kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let role = obj
                    .pointer("/roleRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let plural = if kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                let Some(rules) = az
                    .rbac
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .role_rules(kind, role, ns)
                else {
                    // Binding to a role that does not exist yet grants nothing now;
                    // upstream refuses it unless the user may bind it.
                    let a = Attributes::resource("bind", GROUP, plural, ns, role);
                    return match az.decide(cache, user, &a).await {
                        Ok(()) => Ok(()),
                        Err(_) => Err(ApiError::Forbidden(format!(
                            "{}.{} \"{name}\" is forbidden: {} \"{role}\" not found",
                            def.plural,
                            def.group,
                            if kind == "Role" {
                                "role.rbac.authorization.k8s.io"
                            } else {
                                "clusterrole.rbac.authorization.k8s.io"
                            }
                        ))),
                    };
                };
                (rules, "bind", plural, role.to_owned())
            }
            _ => return Ok(()),
        };
    if granted.is_empty() {
        return Ok(());
    }
    let a = Attributes::resource(verb, GROUP, check_resource, ns, &check_name);
    if az.decide(cache, user, &a).await.is_ok() {
        return Ok(());
    }
    let held = az.rules_for(cache, user, ns).await;
    let missing = uncovered(&held, &granted);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(escalation_error(def, name, user, &missing))
    }
}
