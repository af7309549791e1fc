//! CronJob defaulting and validation, as upstream's: the schedule and time
//! zone must parse (`kestrel_api::cron`, which the controller schedules
//! with too), names leave room for the Job suffix, and the Job template's
//! pods restart only OnFailure or Never. Scheduling is the CronJob
//! controller's (kestrel-controllers).

use kestrel_api::FieldError;
use kestrel_api::cron::{Schedule, ScheduleError};
use serde_json::{Map, Value, json};

use crate::admission::{check_pod_spec, default_pod_spec};

/// The longest CronJob name: its Jobs append `-` and up to 10 digits.
const MAX_NAME: usize = 52;

/// The concurrency policies.
const POLICIES: &[&str] = &["Allow", "Forbid", "Replace"];

/// Upstream's defaults for a CronJob.
pub fn set_defaults(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let mut default = |k: &str, v: Value| {
        spec.entry(k).or_insert(v);
    };
    default("concurrencyPolicy", json!("Allow"));
    default("suspend", json!(false));
    default("successfulJobsHistoryLimit", json!(3));
    default("failedJobsHistoryLimit", json!(1));
    if let Some(t) = obj
        .pointer_mut("/spec/jobTemplate/spec/template/spec")
        .and_then(Value::as_object_mut)
    {
        default_pod_spec(t);
    }
}

fn non_negative(spec: &Map<String, Value>, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = spec.get(field).and_then(Value::as_i64)
        && n < 0
    {
        errs.push(FieldError::invalid(
            format!("spec.{field}"),
            &n.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

/// Check a CronJob.
pub fn validate(obj: &Value, errs: &mut Vec<FieldError>) {
    if let Some(name) = obj.pointer("/metadata/name").and_then(Value::as_str)
        && name.len() > MAX_NAME
    {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            format!("must be no more than {MAX_NAME} characters"),
        ));
    }
    let empty = Map::new();
    let spec = obj.get("spec").and_then(Value::as_object).unwrap_or(&empty);
    let tz = spec.get("timeZone").and_then(Value::as_str);
    match spec.get("schedule").and_then(Value::as_str) {
        None | Some("") => errs.push(FieldError::required("spec.schedule", "")),
        Some(s) => match Schedule::parse(s, tz) {
            Ok(_) => {}
            Err(ScheduleError::Schedule(why)) => {
                errs.push(FieldError::invalid("spec.schedule", s, why));
            }
            Err(ScheduleError::TimeZone(why)) => {
                errs.push(FieldError::invalid("spec.timeZone", tz.unwrap_or(""), why));
            }
        },
    }
    let policy = spec
        .get("concurrencyPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Allow");
    if !POLICIES.contains(&policy) {
        errs.push(FieldError::not_supported(
            "spec.concurrencyPolicy",
            policy,
            POLICIES,
        ));
    }
    for f in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        non_negative(spec, f, errs);
    }
    let base = "spec.jobTemplate.spec.template.spec";
    check_pod_spec(
        obj.pointer("/spec/jobTemplate/spec/template/spec"),
        base,
        errs,
    );
    let rp = obj
        .pointer("/spec/jobTemplate/spec/template/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("");
    if rp != "Never" && rp != "OnFailure" {
        errs.push(FieldError::not_supported(
            format!("{base}.restartPolicy"),
            rp,
            &["OnFailure", "Never"],
        ));
    }
}
