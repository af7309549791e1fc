//! The Job strategy's create step, as upstream's: unless
//! `spec.manualSelector` is true, a Job's selector is generated from its
//! uid and its pod template labelled to match, so `kubectl logs job/x` and
//! other selector users pick exactly its pods. Defaulting and the
//! Job-only validation (Indexed completion, backoffLimitPerIndex,
//! podFailurePolicy) follow upstream's `SetDefaults_Job` and
//! `validateJobSpec`.

use kestrel_api::FieldError;
use serde_json::{Map, Value, json};

/// Label keys the generated selector and template carry (the legacy
/// names too, as upstream).
const UID_LABELS: [&str; 2] = ["batch.kubernetes.io/controller-uid", "controller-uid"];
const NAME_LABELS: [&str; 2] = ["batch.kubernetes.io/job-name", "job-name"];

/// Generate the selector of a new Job that does not pick its own.
pub fn prepare_create(obj: &mut Value) {
    if obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let uid = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let (Some(uid), Some(name)) = (uid, name) else {
        return;
    };
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("selector").is_some_and(|s| !s.is_null()) {
        return;
    }
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {UID_LABELS[0]: uid}}),
    );
    let template = spec.entry("template").or_insert_with(|| json!({}));
    let Some(meta) = template
        .as_object_mut()
        .map(|t| t.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if let Some(l) = labels.as_object_mut() {
        for k in UID_LABELS {
            l.insert(k.into(), json!(uid));
        }
        for k in NAME_LABELS {
            l.insert(k.into(), json!(name));
        }
    }
}

/// The most parallelism an Indexed Job may ask for.
const MAX_PARALLELISM_INDEXED: i64 = 100_000;
/// The most failed indexes an Indexed Job may tolerate.
const MAX_FAILED_INDEXES: i64 = 100_000;
/// Above this many completions, backoffLimitPerIndex needs tighter limits.
const COMPLETIONS_SOFT_LIMIT: i64 = 100_000;
/// The parallelism and maxFailedIndexes limit above the soft limit.
const HIGH_COMPLETIONS_LIMIT: i64 = 10_000;
/// The most rules a podFailurePolicy may have.
const MAX_RULES: usize = 20;
/// The most onPodConditions patterns a rule may have.
const MAX_PATTERNS: usize = 20;
/// The most exit code values a rule may list.
const MAX_EXIT_CODES: usize = 255;
/// The pod failure policy actions.
const ACTIONS: &[&str] = &["Count", "FailIndex", "FailJob", "Ignore"];
/// The onExitCodes operators.
const OPERATORS: &[&str] = &["In", "NotIn"];
/// The onPodConditions statuses.
const STATUSES: &[&str] = &["False", "True", "Unknown"];

/// Upstream's defaults for a Job (`SetDefaults_Job`): both counts are 1
/// when neither is given (a Job with only a parallelism is a work queue),
/// `backoffLimit` is 6, or unlimited with `backoffLimitPerIndex`, and a
/// pod failure policy replaces pods only once they have failed.
pub fn set_defaults(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let has = |spec: &Map<String, Value>, k: &str| spec.get(k).is_some_and(|v| !v.is_null());
    if !has(spec, "completions") && !has(spec, "parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    if !has(spec, "parallelism") {
        spec.insert("parallelism".into(), json!(1));
    }
    if !has(spec, "backoffLimit") {
        let limit = if has(spec, "backoffLimitPerIndex") {
            i64::from(i32::MAX)
        } else {
            6
        };
        spec.insert("backoffLimit".into(), json!(limit));
    }
    if !has(spec, "completionMode") {
        spec.insert("completionMode".into(), json!("NonIndexed"));
    }
    if !has(spec, "suspend") {
        spec.insert("suspend".into(), json!(false));
    }
    let with_policy = has(spec, "podFailurePolicy");
    if !has(spec, "podReplacementPolicy") {
        let p = if with_policy {
            "Failed"
        } else {
            "TerminatingOrFailed"
        };
        spec.insert("podReplacementPolicy".into(), json!(p));
    }
    if let Some(Value::Array(rules)) = spec
        .get_mut("podFailurePolicy")
        .and_then(|p| p.get_mut("rules"))
    {
        for rule in rules.iter_mut() {
            if let Some(Value::Array(pats)) = rule.get_mut("onPodConditions") {
                for p in pats.iter_mut().filter_map(Value::as_object_mut) {
                    if p.get("status").is_none_or(Value::is_null) {
                        p.insert("status".into(), json!("True"));
                    }
                }
            }
        }
    }
}

fn invalid_int(field: impl Into<String>, v: i64, why: impl AsRef<str>) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        field: field.into(),
        detail: format!("Invalid value: {v}: {}", why.as_ref()),
    }
}

fn invalid_omitted(field: impl Into<String>, why: &str) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        field: field.into(),
        detail: format!("Invalid value: {why}"),
    }
}

fn too_many(field: impl Into<String>, n: usize, max: usize) -> FieldError {
    FieldError {
        reason: "FieldValueTooMany",
        field: field.into(),
        detail: format!("Too many: {n}: must have at most {max} items"),
    }
}

/// `["A" "B"]`, as Go prints a `%q` of a string slice.
fn quoted_list(values: &[&str]) -> String {
    let q: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[{}]", q.join(" "))
}

fn int_at(spec: &Value, k: &str) -> Option<i64> {
    spec.get(k).and_then(Value::as_i64)
}

fn str_at<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// Whether `s` is a DNS-1123 label.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Upstream's Job checks beyond those shared with other workloads
/// (`validateJobSpec` and `ValidateJobSpecUpdate`): the counts,
/// completionMode and what Indexed Jobs need, backoffLimitPerIndex and
/// maxFailedIndexes, the pod failure policy, and what may not change.
pub fn validate(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let Some(spec) = obj.get("spec") else {
        return;
    };
    for k in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ] {
        if let Some(n) = int_at(spec, k)
            && n < 0
        {
            errs.push(invalid_int(
                format!("spec.{k}"),
                n,
                "must be greater than or equal to 0",
            ));
        }
    }
    let parallelism = int_at(spec, "parallelism");
    let completions = int_at(spec, "completions");
    let per_index = int_at(spec, "backoffLimitPerIndex");
    let max_failed = int_at(spec, "maxFailedIndexes");
    if max_failed.is_some() && per_index.is_none() {
        errs.push(FieldError::required(
            "spec.backoffLimitPerIndex",
            "when maxFailedIndexes is specified",
        ));
    }
    let mode = str_at(spec, "completionMode");
    match mode {
        None | Some("NonIndexed") => {
            if let Some(n) = per_index {
                errs.push(invalid_int(
                    "spec.backoffLimitPerIndex",
                    n,
                    "requires indexed completion mode",
                ));
            }
            if let Some(n) = max_failed {
                errs.push(invalid_int(
                    "spec.maxFailedIndexes",
                    n,
                    "requires indexed completion mode",
                ));
            }
        }
        Some("Indexed") => {
            if completions.is_none() {
                errs.push(FieldError::required(
                    "spec.completions",
                    "when completion mode is Indexed",
                ));
            }
            if let Some(p) = parallelism
                && p > MAX_PARALLELISM_INDEXED
            {
                errs.push(invalid_int(
                    "spec.parallelism",
                    p,
                    format!(
                        "must be less than or equal to {MAX_PARALLELISM_INDEXED} when completion mode is Indexed"
                    ),
                ));
            }
            if let (Some(c), Some(m)) = (completions, max_failed)
                && m > c
            {
                errs.push(invalid_int(
                    "spec.maxFailedIndexes",
                    m,
                    "must be less than or equal to completions",
                ));
            }
            if let Some(m) = max_failed
                && m > MAX_FAILED_INDEXES
            {
                errs.push(invalid_int(
                    "spec.maxFailedIndexes",
                    m,
                    format!("must be less than or equal to {MAX_FAILED_INDEXES}"),
                ));
            }
            if let Some(c) = completions
                && c > COMPLETIONS_SOFT_LIMIT
                && per_index.is_some()
            {
                let why = format!(
                    "must be less than or equal to {HIGH_COMPLETIONS_LIMIT} when completions are above {COMPLETIONS_SOFT_LIMIT} and used with backoff limit per index"
                );
                if max_failed.is_none() {
                    errs.push(FieldError::required(
                        "spec.maxFailedIndexes",
                        format!(
                            "must be specified when completions is above {COMPLETIONS_SOFT_LIMIT}"
                        ),
                    ));
                }
                if let Some(p) = parallelism
                    && p > HIGH_COMPLETIONS_LIMIT
                {
                    errs.push(invalid_int("spec.parallelism", p, &why));
                }
                if let Some(m) = max_failed
                    && m > HIGH_COMPLETIONS_LIMIT
                {
                    errs.push(invalid_int("spec.maxFailedIndexes", m, &why));
                }
            }
            // Pods of index i are named and hostnamed `<job>-<i>`.
            if let (Some(c), Some(name)) = (
                completions,
                obj.pointer("/metadata/name").and_then(Value::as_str),
            ) && c > 0
            {
                let host = format!("{name}-{}", c - 1);
                if !is_dns_label(&host) {
                    errs.push(FieldError::invalid(
                        "metadata.name",
                        name,
                        format!("will not able to create pod with invalid DNS label: {host}"),
                    ));
                }
            }
        }
        Some(other) => errs.push(FieldError::not_supported(
            "spec.completionMode",
            other,
            &["NonIndexed", "Indexed"],
        )),
    }
    if let Some(policy) = spec.get("podFailurePolicy").filter(|p| !p.is_null()) {
        validate_policy(spec, policy, errs);
        let rp = spec
            .pointer("/template/spec/restartPolicy")
            .and_then(Value::as_str)
            .unwrap_or("");
        if rp == "OnFailure" {
            errs.push(FieldError::invalid(
                "spec.template.spec.restartPolicy",
                rp,
                "only \"Never\" is supported when podFailurePolicy is specified",
            ));
        }
        if let Some(p) = str_at(spec, "podReplacementPolicy")
            && p != "Failed"
        {
            errs.push(FieldError::not_supported(
                "spec.podReplacementPolicy",
                p,
                &["Failed"],
            ));
        }
    } else if let Some(p) = str_at(spec, "podReplacementPolicy")
        && p != "Failed"
        && p != "TerminatingOrFailed"
    {
        errs.push(FieldError::not_supported(
            "spec.podReplacementPolicy",
            p,
            &["Failed", "TerminatingOrFailed"],
        ));
    }
    if let Some(old) = old.and_then(|o| o.get("spec")) {
        validate_update(spec, old, errs);
    }
}

fn validate_update(spec: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    for k in ["completionMode", "podFailurePolicy", "backoffLimitPerIndex"] {
        if spec.get(k) != old.get(k) {
            errs.push(FieldError::immutable(format!("spec.{k}")));
        }
    }
    // Indexed Jobs are elastic: completions may change with parallelism.
    if spec.get("completions") != old.get("completions") {
        if str_at(spec, "completionMode") != Some("Indexed") {
            errs.push(FieldError::immutable("spec.completions"));
        } else if let Some(c) = int_at(spec, "completions")
            && Some(c) != int_at(spec, "parallelism")
        {
            errs.push(invalid_int(
                "spec.completions",
                c,
                "can only be modified in tandem with spec.parallelism",
            ));
        }
    }
}

fn validate_policy(spec: &Value, policy: &Value, errs: &mut Vec<FieldError>) {
    let path = "spec.podFailurePolicy.rules";
    let rules = policy
        .get("rules")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if rules.len() > MAX_RULES {
        errs.push(too_many(path, rules.len(), MAX_RULES));
    }
    let names: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.pointer(&format!("/template/spec/{k}")))
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|c| str_at(c, "name"))
        .collect();
    let per_index = spec
        .get("backoffLimitPerIndex")
        .is_some_and(|v| !v.is_null());
    for (i, rule) in rules.iter().enumerate() {
        let rp = format!("{path}[{i}]");
        match str_at(rule, "action").unwrap_or("") {
            "" => errs.push(FieldError::required(
                format!("{rp}.action"),
                format!("valid values: {}", quoted_list(ACTIONS)),
            )),
            "FailIndex" if !per_index => errs.push(FieldError::invalid(
                format!("{rp}.action"),
                "FailIndex",
                "requires the backoffLimitPerIndex to be set",
            )),
            a if !ACTIONS.contains(&a) => errs.push(FieldError::not_supported(
                format!("{rp}.action"),
                a,
                ACTIONS,
            )),
            _ => {}
        }
        let on_codes = rule.get("onExitCodes").filter(|v| !v.is_null());
        let on_conds = rule
            .get("onPodConditions")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty());
        if let Some(c) = on_codes {
            validate_exit_codes(c, &format!("{rp}.onExitCodes"), &names, errs);
        }
        if let Some(pats) = on_conds {
            let pp = format!("{rp}.onPodConditions");
            if pats.len() > MAX_PATTERNS {
                errs.push(too_many(&pp, pats.len(), MAX_PATTERNS));
            }
            for (j, p) in pats.iter().enumerate() {
                if str_at(p, "type").unwrap_or("").is_empty() {
                    errs.push(FieldError::required(
                        format!("{pp}[{j}].type"),
                        "name part must be non-empty",
                    ));
                }
                match str_at(p, "status").unwrap_or("") {
                    "" => errs.push(FieldError::required(
                        format!("{pp}[{j}].status"),
                        format!("valid values: {}", quoted_list(STATUSES)),
                    )),
                    s if !STATUSES.contains(&s) => errs.push(FieldError::not_supported(
                        format!("{pp}[{j}].status"),
                        s,
                        STATUSES,
                    )),
                    _ => {}
                }
            }
        }
        match (on_codes.is_some(), on_conds.is_some()) {
            (true, true) => errs.push(invalid_omitted(
                rp,
                "specifying both OnExitCodes and OnPodConditions is not supported",
            )),
            (false, false) => errs.push(invalid_omitted(
                rp,
                "specifying one of OnExitCodes and OnPodConditions is required",
            )),
            _ => {}
        }
    }
}

fn validate_exit_codes(req: &Value, path: &str, names: &[&str], errs: &mut Vec<FieldError>) {
    let op = str_at(req, "operator").unwrap_or("");
    match op {
        "" => errs.push(FieldError::required(
            format!("{path}.operator"),
            format!("valid values: {}", quoted_list(OPERATORS)),
        )),
        o if !OPERATORS.contains(&o) => errs.push(FieldError::not_supported(
            format!("{path}.operator"),
            o,
            OPERATORS,
        )),
        _ => {}
    }
    if let Some(c) = str_at(req, "containerName")
        && !names.contains(&c)
    {
        errs.push(FieldError::invalid(
            format!("{path}.containerName"),
            c,
            "must be one of the container or initContainer names in the pod template",
        ));
    }
    let values: Vec<i64> = req
        .get("values")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let vp = format!("{path}.values");
    if values.is_empty() {
        errs.push(invalid_omitted(&vp, "at least one value is required"));
    } else if values.len() > MAX_EXIT_CODES {
        errs.push(too_many(&vp, values.len(), MAX_EXIT_CODES));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (j, v) in values.iter().enumerate() {
        if op == "In" && *v == 0 {
            errs.push(invalid_int(
                format!("{vp}[{j}]"),
                0,
                "must not be 0 for the In operator",
            ));
        }
        if !seen.insert(*v) {
            errs.push(FieldError {
                reason: "FieldValueDuplicate",
                field: format!("{vp}[{j}]"),
                detail: format!("Duplicate value: {v}"),
            });
        }
    }
    if values.windows(2).any(|w| w[0] > w[1]) {
        let list: Vec<String> = values.iter().map(i64::to_string).collect();
        errs.push(FieldError {
            reason: "FieldValueInvalid",
            field: vp,
            detail: format!("Invalid value: [{}]: must be ordered", list.join(",")),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value) -> Value {
        let mut s = json!({"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox"}]}}});
        if let (Some(m), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
            m.extend(extra.clone());
        }
        json!({"metadata": {"name": "myjob"}, "spec": s})
    }

    fn messages(obj: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        validate(obj, None, &mut errs);
        errs.iter().map(FieldError::to_message).collect()
    }

    #[test]
    fn indexed_jobs_need_completions() {
        let mut j = job(json!({"completionMode": "Indexed", "parallelism": 2}));
        set_defaults(&mut j);
        assert_eq!(
            messages(&j),
            ["spec.completions: Required value: when completion mode is Indexed"]
        );
        let mut plain = job(json!({}));
        set_defaults(&mut plain);
        assert_eq!(plain.pointer("/spec/completions"), Some(&json!(1)));
        assert_eq!(plain.pointer("/spec/backoffLimit"), Some(&json!(6)));
        assert!(messages(&plain).is_empty());
    }

    #[test]
    fn backoff_limit_per_index_rules() {
        let mut j = job(json!({"backoffLimitPerIndex": 1, "maxFailedIndexes": 1}));
        set_defaults(&mut j);
        assert_eq!(
            j.pointer("/spec/backoffLimit"),
            Some(&json!(i64::from(i32::MAX)))
        );
        assert_eq!(
            messages(&j),
            [
                "spec.backoffLimitPerIndex: Invalid value: 1: requires indexed completion mode",
                "spec.maxFailedIndexes: Invalid value: 1: requires indexed completion mode",
            ]
        );
        let j = job(json!({"completionMode": "Indexed", "completions": 10,
            "maxFailedIndexes": 11}));
        assert_eq!(
            messages(&j),
            [
                "spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified",
                "spec.maxFailedIndexes: Invalid value: 11: must be less than or equal to completions",
            ]
        );
        let j = job(json!({"completionMode": "Indexed", "completions": 2,
            "backoffLimitPerIndex": -1}));
        assert_eq!(
            messages(&j),
            ["spec.backoffLimitPerIndex: Invalid value: -1: must be greater than or equal to 0"]
        );
    }

    #[test]
    fn pod_failure_policy_rules() {
        let rules = json!({"podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0, 2, 1, 2]}},
            {"action": "FailIndex", "onExitCodes": {"containerName": "other",
                "operator": "NotIn", "values": [1]}},
            {"action": "Bogus", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "Ignore"},
        ]}});
        let mut j = job(rules);
        set_defaults(&mut j);
        assert_eq!(
            j.pointer("/spec/podFailurePolicy/rules/2/onPodConditions/0/status"),
            Some(&json!("True"))
        );
        assert_eq!(
            j.pointer("/spec/podReplacementPolicy"),
            Some(&json!("Failed"))
        );
        let p = "spec.podFailurePolicy.rules";
        assert_eq!(
            messages(&j),
            [
                format!(
                    "{p}[0].onExitCodes.values[0]: Invalid value: 0: must not be 0 for the In operator"
                ),
                format!("{p}[0].onExitCodes.values[3]: Duplicate value: 2"),
                format!("{p}[0].onExitCodes.values: Invalid value: [0,2,1,2]: must be ordered"),
                format!(
                    "{p}[1].action: Invalid value: \"FailIndex\": requires the backoffLimitPerIndex to be set"
                ),
                format!(
                    "{p}[1].onExitCodes.containerName: Invalid value: \"other\": must be one of the container or initContainer names in the pod template"
                ),
                format!(
                    "{p}[2].action: Unsupported value: \"Bogus\": supported values: \"Count\", \"FailIndex\", \"FailJob\", \"Ignore\""
                ),
                format!(
                    "{p}[3]: Invalid value: specifying one of OnExitCodes and OnPodConditions is required"
                ),
            ]
        );
        let mut on_failure = job(json!({"podFailurePolicy": {"rules": []}}));
        on_failure["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
        set_defaults(&mut on_failure);
        assert_eq!(
            messages(&on_failure),
            [
                "spec.template.spec.restartPolicy: Invalid value: \"OnFailure\": only \"Never\" is supported when podFailurePolicy is specified"
            ]
        );
    }

    #[test]
    fn updates_keep_the_mode_and_policies() {
        let old = job(json!({"completionMode": "Indexed", "completions": 3, "parallelism": 3}));
        let mut new = old.clone();
        new["spec"]["completions"] = json!(4);
        new["spec"]["parallelism"] = json!(4);
        let mut errs = Vec::new();
        validate(&new, Some(&old), &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        new["spec"]["completionMode"] = json!("NonIndexed");
        new["spec"]["parallelism"] = json!(2);
        let mut errs = Vec::new();
        validate(&new, Some(&old), &mut errs);
        let m: Vec<_> = errs.iter().map(FieldError::to_message).collect();
        assert_eq!(
            m,
            [
                "spec.completionMode: field is immutable",
                "spec.completions: field is immutable"
            ]
        );
    }
}
