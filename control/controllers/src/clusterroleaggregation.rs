//! The ClusterRole aggregation controller: a ClusterRole with an
//! `aggregationRule` gets as its rules the union of the rules of every
//! ClusterRole its selectors match, kept current as those change (this is
//! how `admin`, `edit` and `view` pick up `aggregate-to-*` roles, including
//! ones users add for their own resources).

use std::sync::Arc;

use futures::StreamExt as _;
use futures::stream;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, ReconcileRequest, applier};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::CancelableJoinHandle;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::runtime::Handle;

use crate::manager::{Backoff, Error, Result, drive};

struct Ctx {
    api: Api<ClusterRole>,
    roles: Store<ClusterRole>,
    backoff: Backoff<String>,
}

/// Run the ClusterRole aggregation controller.
pub async fn run(client: kube::Client) -> Result<()> {
    let api: Api<ClusterRole> = Api::all(client);
    // One watch feeds both the store and the triggers: the store has taken
    // in a change before the change triggers the aggregated roles, so their
    // reconcile sees it (two watches of the same kind race each other).
    let (roles, writer) = reflector::store();
    let trigger = roles.clone();
    let queue = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .flat_map(move |event| {
            // A relist is in the store only once it is done: trigger then,
            // and on every change after it.
            let fire = match &event {
                Ok(
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone,
                ) => true,
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => false,
                Err(_) => false,
            };
            let refs: Vec<Result<ReconcileRequest<ClusterRole>, watcher::Error>> = match event {
                Err(e) => vec![Err(e)],
                Ok(_) if fire => trigger
                    .state()
                    .into_iter()
                    .filter(|r| r.aggregation_rule.is_some())
                    .map(|r| Ok(ReconcileRequest::from(ObjectRef::from_obj(&*r))))
                    .collect(),
                Ok(_) => Vec::new(),
            };
            stream::iter(refs)
        });
    let ctx = Arc::new(Ctx {
        api,
        roles: roles.clone(),
        backoff: Backoff::default(),
    });
    let results = applier(
        |r, ctx| CancelableJoinHandle::spawn(reconcile(r, ctx), &Handle::current()),
        error_policy,
        ctx,
        roles,
        queue,
        kube::runtime::controller::Config::default(),
    );
    drive(results, "clusterrole-aggregation-controller").await;
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
