//! The pod failure policy, as upstream's `matchPodFailurePolicy`: the
//! rules are tried in order on a failed pod and the first that matches
//! decides. `onExitCodes` looks at terminated app then init containers
//! (exit code 0 never matches), `onPodConditions` at the pod's conditions;
//! a rule with an action this version does not know is skipped.

use k8s_openapi::api::batch::v1::{PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt as _;

/// What a matching rule asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Fail the Job, with upstream's message naming the pod and rule.
    FailJob(String),
    /// Fail the pod's index (with backoffLimitPerIndex).
    FailIndex,
    /// Do not count the failure.
    Ignore,
    /// Count the failure, as without a policy.
    Count,
}

/// The action of the first rule of `policy` matching the failed `pod`.
pub(super) fn matching(policy: Option<&PodFailurePolicy>, pod: &Pod) -> Option<Action> {
    let policy = policy?;
    let status = pod.status.as_ref()?;
    let who = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    for (i, rule) in policy.rules.iter().enumerate() {
        let hit = if let Some(req) = rule.on_exit_codes.as_ref() {
            [&status.container_statuses, &status.init_container_statuses]
                .into_iter()
                .find_map(|list| matching_container(list.as_deref().unwrap_or_default(), req))
                .map(|(name, code)| {
                    format!(
                        "Container {name} for pod {who} failed with exit code {code} matching {} rule at index {i}",
                        rule.action
                    )
                })
        } else if let Some(patterns) = rule.on_pod_conditions.as_ref() {
            status.conditions.iter().flatten().find_map(|c| {
                patterns
                    .iter()
                    .any(|p| {
                        p.type_ == c.type_ && p.status.as_deref().unwrap_or("True") == c.status
                    })
                    .then(|| {
                        format!(
                            "Pod {who} has condition {} matching {} rule at index {i}",
                            c.type_, rule.action
                        )
                    })
            })
        } else {
            None
        };
        let Some(message) = hit else {
            continue;
        };
        match rule.action.as_str() {
            "FailJob" => return Some(Action::FailJob(message)),
            "FailIndex" => return Some(Action::FailIndex),
            "Ignore" => return Some(Action::Ignore),
            "Count" => return Some(Action::Count),
            _ => {}
        }
    }
    None
}

/// Whether a failure of `pod` counts toward the backoff limits.
pub(super) fn counts(policy: Option<&PodFailurePolicy>, pod: &Pod) -> bool {
    matching(policy, pod) != Some(Action::Ignore)
}

/// The first terminated, non-zero container of `list` the requirement
/// matches: its name and exit code.
fn matching_container(
    list: &[ContainerStatus],
    req: &PodFailurePolicyOnExitCodesRequirement,
) -> Option<(String, i32)> {
    list.iter().find_map(|c| {
        let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
        if code == 0 || req.container_name.as_ref().is_some_and(|n| *n != c.name) {
            return None;
        }
        let listed = req.values.contains(&code);
        let hit = match req.operator.as_str() {
            "In" => listed,
            "NotIn" => !listed,
            _ => false,
        };
        hit.then(|| (c.name.clone(), code))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn failed(code: i32, conditions: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {"phase": "Failed", "conditions": conditions,
                "containerStatuses": [{"name": "main", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"terminated": {"exitCode": code}}}]},
        }))
        .expect("pod")
    }

    fn policy(rules: serde_json::Value) -> PodFailurePolicy {
        serde_json::from_value(json!({ "rules": rules })).expect("policy")
    }

    #[test]
    fn rules_match_in_order() {
        let p = policy(json!([
            {"action": "Bogus", "onExitCodes": {"operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1]}},
        ]));
        assert_eq!(
            matching(Some(&p), &failed(42, json!([]))),
            Some(Action::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 2"
                    .into()
            ))
        );
        let disrupted = failed(42, json!([{"type": "DisruptionTarget", "status": "True"}]));
        assert_eq!(matching(Some(&p), &disrupted), Some(Action::Ignore));
        assert!(!counts(Some(&p), &disrupted));
        assert_eq!(
            matching(Some(&p), &failed(3, json!([]))),
            Some(Action::Count)
        );
        assert_eq!(matching(Some(&p), &failed(1, json!([]))), None);
        assert_eq!(matching(None, &failed(42, json!([]))), None);
    }
}
