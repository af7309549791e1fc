//! Priority, as upstream's admission plugin and PriorityClass validation:
//! a new pod's `priorityClassName` (or the cluster's global default class)
//! resolves to `spec.priority` and `spec.preemptionPolicy`; PriorityClass
//! values are bounded, immutable, and at most one class is the global
//! default. The two system classes are created at bootstrap.

use kestrel_api::{ApiError, FieldError};
use serde_json::{Value, json};

use super::chain::Attributes;
use crate::state::AppState;

/// The classes every cluster has, with their values.
pub const SYSTEM_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "For pods a node cannot run without; they are never moved off it.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "For pods the cluster cannot run without; they may be moved to another node.",
    ),
];

/// The highest value a user-defined class may have.
pub const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;

const POLICIES: &[&str] = &["PreemptLowerPriority", "Never"];

fn classes(state: &AppState) -> Vec<std::sync::Arc<crate::cache::Entry>> {
    let Some(def) = kestrel_api::registry::lookup("scheduling.k8s.io", "v1", "priorityclasses")
    else {
        return Vec::new();
    };
    state.cache.list(&def.key_prefix()).0
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Resolve a new pod's priority.
pub fn admit_pod(state: &AppState, pod: &mut Value) -> Result<(), ApiError> {
    let forbidden = |pod: &Value, why: String| {
        ApiError::Forbidden(format!("pods {:?} is forbidden: {why}", name_of(pod)))
    };
    let wanted = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let all = classes(state);
    let class =
        match &wanted {
            Some(n) => Some(all.iter().find(|e| name_of(&e.value) == n).ok_or_else(|| {
                forbidden(pod, format!("no PriorityClass with name {n} was found"))
            })?),
            None => all
                .iter()
                .filter(|e| e.value.get("globalDefault").and_then(Value::as_bool) == Some(true))
                // Several defaults can only come from racing creates; upstream
                // takes the lowest.
                .min_by_key(|e| e.value.get("value").and_then(Value::as_i64).unwrap_or(0)),
        };
    let (class_name, priority, policy) = match class {
        Some(e) => (
            name_of(&e.value).to_owned(),
            e.value.get("value").and_then(Value::as_i64).unwrap_or(0),
            e.value
                .get("preemptionPolicy")
                .and_then(Value::as_str)
                .unwrap_or("PreemptLowerPriority")
                .to_owned(),
        ),
        None => (String::new(), 0, "PreemptLowerPriority".to_owned()),
    };
    if let Some(p) = pod.pointer("/spec/priority").and_then(Value::as_i64)
        && p != priority
    {
        return Err(forbidden(
            pod,
            format!(
                "the integer value of priority ({p}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name"
            ),
        ));
    }
    if let Some(p) = pod
        .pointer("/spec/preemptionPolicy")
        .and_then(Value::as_str)
        && p != policy
    {
        return Err(forbidden(
            pod,
            format!(
                "the string value of PreemptionPolicy ({p}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
            ),
        ));
    }
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        if !class_name.is_empty() {
            spec.insert("priorityClassName".into(), json!(class_name));
        }
        spec.insert("priority".into(), json!(priority));
        spec.insert("preemptionPolicy".into(), json!(policy));
    }
    Ok(())
}

/// At most one global default: a class marked default while another is.
pub fn admit_class(state: &AppState, a: &Attributes<'_>, obj: &Value) -> Result<(), ApiError> {
    if obj.get("globalDefault").and_then(Value::as_bool) != Some(true) {
        return Ok(());
    }
    let me = name_of(obj);
    if let Some(other) = classes(state).iter().find(|e| {
        name_of(&e.value) != me
            && e.value.get("globalDefault").and_then(Value::as_bool) == Some(true)
    }) {
        let _ = a;
        return Err(ApiError::Forbidden(format!(
            "priorityclasses.scheduling.k8s.io {me:?} is forbidden: PriorityClass {} is already marked as default. Only one default can exist",
            name_of(&other.value)
        )));
    }
    Ok(())
}

/// PriorityClass validation.
pub fn validate_class(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let name = name_of(obj);
    let value = obj.get("value").and_then(Value::as_i64).unwrap_or(0);
    if name.starts_with("system-") {
        let known = SYSTEM_CLASSES.iter().find(|(n, ..)| *n == name);
        let why = match known {
            None => Some(format!("{name} is not a known system priority class")),
            Some((_, v, _)) if *v != value => {
                Some(format!("value of {name} PriorityClass must be {v}"))
            }
            Some(_) => None,
        };
        if let Some(why) = why {
            errs.push(FieldError::forbidden(
                "metadata.name",
                format!(
                    "priority class names with 'system-' prefix are reserved for system use only. error: {why}"
                ),
            ));
        }
    } else if value > HIGHEST_USER_PRIORITY {
        errs.push(FieldError::forbidden(
            "value",
            format!("maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"),
        ));
    }
    if let Some(p) = obj.get("preemptionPolicy").and_then(Value::as_str)
        && !POLICIES.contains(&p)
    {
        errs.push(FieldError::not_supported("preemptionPolicy", p, POLICIES));
    }
    if let Some(old) = old {
        if old.get("value") != obj.get("value") {
            errs.push(FieldError::forbidden(
                "value",
                "may not be changed in an update.",
            ));
        }
        if old.get("preemptionPolicy") != obj.get("preemptionPolicy") {
            errs.push(FieldError::immutable("preemptionPolicy"));
        }
    }
}
