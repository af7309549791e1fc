//! PodDisruptionBudget validation, as upstream's: at most one of
//! `minAvailable` and `maxUnavailable`, each a non-negative integer or a
//! percentage up to 100%, a valid selector, and a known unhealthy-pod
//! eviction policy. The budget's status is the disruption controller's
//! (kestrel-controllers); evictions read it (`eviction.rs`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kestrel_api::FieldError;
use kestrel_api::labels::Selector;
use serde_json::Value;

/// The unhealthy-pod eviction policies.
pub const POLICIES: &[&str] = &["IfHealthyBudget", "AlwaysAllow"];

/// Check a budget's spec.
pub fn validate(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec");
    let min = spec.and_then(|s| s.get("minAvailable"));
    let max = spec.and_then(|s| s.get("maxUnavailable"));
    if min.is_some() && max.is_some() {
        errs.push(FieldError::invalid(
            "spec",
            &spec.map(Value::to_string).unwrap_or_default(),
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for (field, v) in [("minAvailable", min), ("maxUnavailable", max)] {
        if let Some(v) = v {
            int_or_percent(&format!("spec.{field}"), v, errs);
        }
    }
    if let Some(sel) = spec.and_then(|s| s.get("selector")) {
        let ok = serde_json::from_value::<LabelSelector>(sel.clone())
            .ok()
            .is_some_and(|ls| Selector::from_label_selector(&ls).is_ok());
        if !ok {
            errs.push(FieldError::invalid(
                "spec.selector",
                &sel.to_string(),
                "invalid label selector",
            ));
        }
    }
    if let Some(p) = spec
        .and_then(|s| s.get("unhealthyPodEvictionPolicy"))
        .and_then(Value::as_str)
        && !POLICIES.contains(&p)
    {
        errs.push(FieldError::not_supported(
            "spec.unhealthyPodEvictionPolicy",
            p,
            POLICIES,
        ));
    }
}

/// upstream's ValidatePositiveIntOrPercent and IsValidPercent.
fn int_or_percent(field: &str, v: &Value, errs: &mut Vec<FieldError>) {
    match v {
        Value::Number(n) if n.as_i64().is_some_and(|i| i < 0) => errs.push(FieldError::invalid(
            field,
            &n.to_string(),
            "must be greater than or equal to 0",
        )),
        Value::String(s) => {
            let pct = s
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            match pct.map(str::parse::<u64>) {
                None => errs.push(FieldError::invalid(
                    field,
                    s,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                )),
                Some(Ok(p)) if p <= 100 => {}
                Some(_) => errs.push(FieldError::invalid(
                    field,
                    s,
                    "must not be greater than 100%",
                )),
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors(spec: Value) -> Vec<String> {
        let mut errs = Vec::new();
        validate(&json!({"spec": spec}), &mut errs);
        errs.iter().map(FieldError::to_message).collect()
    }

    #[test]
    fn budgets_are_checked_as_upstream() {
        assert!(
            errors(json!({"minAvailable": 2, "selector": {"matchLabels": {"a": "b"}}})).is_empty()
        );
        assert!(errors(json!({"maxUnavailable": "25%"})).is_empty());
        let both = errors(json!({"minAvailable": 1, "maxUnavailable": 1}));
        assert_eq!(both.len(), 1, "{both:?}");
        assert!(both[0].contains("minAvailable and maxUnavailable cannot be both set"));
        assert_eq!(
            errors(json!({"minAvailable": -1})),
            ["spec.minAvailable: Invalid value: \"-1\": must be greater than or equal to 0"]
        );
        assert!(
            errors(json!({"maxUnavailable": "150%"}))[0].contains("must not be greater than 100%")
        );
        assert!(errors(json!({"minAvailable": "half"}))[0].contains("a valid percent string"));
        assert!(
            errors(json!({"selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}))
                [0]
            .contains("spec.selector: Invalid value")
        );
        assert!(
            errors(json!({"unhealthyPodEvictionPolicy": "Sometimes"}))[0]
                .contains("spec.unhealthyPodEvictionPolicy: Unsupported value: \"Sometimes\"")
        );
    }
}
