//! The ClusterRole aggregation controller: a ClusterRole with an
//! `aggregationRule` gets as its rules the union of the rules of every
//! ClusterRole its selectors match, kept current as those change (this is
//! how `admin`, `edit` and `view` pick up `aggregate-to-*` roles, including
//! ones users add for their own resources).

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::core::SelectorExt as _;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};

use crate::manager::{Backoff, Error, Result, drive};

struct Ctx {
    api: Api<ClusterRole>,
    roles: Store<ClusterRole>,
    backoff: Backoff<String>,
}

/// Run the ClusterRole aggregation controller.
pub async fn run(client: kube::Client) -> Result<()> {
    let api: Api<ClusterRole> = Api::all(client);
    let controller = Controller::new(api.clone(), watcher::Config::default());
    let roles = controller.store();
    let trigger = roles.clone();
    // Any ClusterRole change may change what an aggregated role selects.
    let controller = controller.watches(api.clone(), watcher::Config::default(), move |_| {
        trigger
            .state()
            .into_iter()
            .filter(|r| r.aggregation_rule.is_some())
            .map(|r| ObjectRef::from_obj(&*r))
            .collect::<Vec<_>>()
    });
    let ctx = Arc::new(Ctx {
        api,
        roles,
        backoff: Backoff::default(),
    });
    drive(
        controller.run(reconcile, error_policy, ctx),
        "clusterrole-aggregation-controller",
    )
    .await;
    Ok(())
}

fn error_policy(role: Arc<ClusterRole>, e: &Error, ctx: Arc<Ctx>) -> Action {
    tracing::warn!(clusterrole = %role.name_any(), error = %e, "aggregating ClusterRole rules failed");
    ctx.backoff.failed(role.name_any())
}

/// The union of the rules of every role `role`'s selectors match, in a
/// stable order (by role name), without duplicates.
pub fn aggregate(role: &ClusterRole, all: &[Arc<ClusterRole>]) -> Option<Vec<PolicyRule>> {
    let rule = role.aggregation_rule.as_ref()?;
    let selectors: Vec<_> = rule
        .cluster_role_selectors
        .iter()
        .flatten()
        .filter_map(|s| crate::workload::selector(Some(s)))
        .collect();
    let mut sources: Vec<&Arc<ClusterRole>> = all
        .iter()
        .filter(|r| r.name_any() != role.name_any())
        .filter(|r| selectors.iter().any(|s| s.matches(r.labels())))
        .collect();
    sources.sort_by_key(|r| r.name_any());
    let mut rules: Vec<PolicyRule> = Vec::new();
    for r in sources {
        for p in r.rules.iter().flatten() {
            if !rules.contains(p) {
                rules.push(p.clone());
            }
        }
    }
    Some(rules)
}

async fn reconcile(role: Arc<ClusterRole>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = role.name_any();
    let Some(rules) = aggregate(&role, &ctx.roles.state()) else {
        return Ok(Action::await_change());
    };
    if role.rules.as_deref().unwrap_or_default() != rules.as_slice() {
        ctx.api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "rules": rules })),
            )
            .await?;
        tracing::info!(clusterrole = %name, rules = rules.len(), "aggregated ClusterRole rules");
    }
    ctx.backoff.succeeded(&name);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(v: serde_json::Value) -> Arc<ClusterRole> {
        Arc::new(serde_json::from_value(v).expect("role"))
    }

    #[test]
    fn unions_selected_roles_once() {
        let view = role(json!({
            "metadata": {"name": "view"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "view"}}]},
        }));
        let a = role(json!({
            "metadata": {"name": "a", "labels": {"agg": "view"}},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        }));
        let b = role(json!({
            "metadata": {"name": "b", "labels": {"agg": "view"}},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                {"apiGroups": ["x.io"], "resources": ["widgets"], "verbs": ["list"]},
            ],
        }));
        let other = role(json!({
            "metadata": {"name": "c", "labels": {"agg": "edit"}},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
        }));
        let all = vec![view.clone(), b, other, a];
        let rules = aggregate(&view, &all).expect("aggregated");
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["pods".to_owned()][..])
        );
        assert_eq!(
            rules[1].api_groups.as_deref(),
            Some(&["x.io".to_owned()][..])
        );
        assert!(aggregate(&all[1], &all).is_none());
    }
}
