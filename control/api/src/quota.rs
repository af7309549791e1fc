//! What an object counts against a ResourceQuota, shared by the API
//! server's admission (which charges a create before storing it) and the
//! quota controller (which recomputes `status.used` from what exists), so
//! both add the same things up.
//!
//! Amounts are milli-units ([`crate::quantity::milli`]) by quota resource
//! name: object counts (`pods`, `services`, `configmaps`, `secrets`,
//! `persistentvolumeclaims`, `count/<resource>[.<group>]`), Service ports
//! (`services.nodeports`, `services.loadbalancers`) and pod compute
//! (`requests.cpu`, `limits.memory`, ... and the bare `cpu`/`memory`/
//! `ephemeral-storage`, which mean requests).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::quantity::milli;

/// Quota resources that need every pod to state a request or limit for
/// them, so a quota on them is not bypassed by leaving one out.
pub const COMPUTE: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// The kinds the quota controller counts, as (group, plural).
pub const COUNTED: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "services"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "persistentvolumeclaims"),
    ("", "replicationcontrollers"),
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
];

/// `count/<plural>` for core, `count/<plural>.<group>` otherwise.
pub fn count_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    }
}

/// Whether a pod has finished and so no longer uses quota.
pub fn pod_is_terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

fn sum(containers: &[Value], field: &str) -> BTreeMap<String, i64> {
    let mut totals = BTreeMap::new();
    for c in containers {
        for (r, q) in c
            .pointer(&format!("/resources/{field}"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if let Some(v) = q.as_str().and_then(|s| milli(s).ok()) {
                *totals.entry(r.clone()).or_insert(0) += v;
            }
        }
    }
    totals
}

/// A pod's effective requests or limits: the larger of the regular
/// containers' sum and any single init container, as upstream computes.
fn pod_resources(pod: &Value, field: &str) -> BTreeMap<String, i64> {
    let list = |k: &str| {
        pod.pointer(&format!("/spec/{k}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut total = sum(&list("containers"), field);
    for init in list("initContainers") {
        for (r, v) in sum(std::slice::from_ref(&init), field) {
            let e = total.entry(r).or_insert(0);
            *e = (*e).max(v);
        }
    }
    total
}

/// What `obj` of `group`/`plural` uses.
pub fn usage(group: &str, plural: &str, obj: &Value) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    if group.is_empty() && plural == "pods" && pod_is_terminal(obj) {
        return out;
    }
    out.insert(count_name(group, plural), 1000);
    if !group.is_empty() {
        return out;
    }
    match plural {
        "pods" => {
            out.insert("pods".into(), 1000);
            for (r, v) in pod_resources(obj, "requests") {
                if matches!(r.as_str(), "cpu" | "memory" | "ephemeral-storage") {
                    out.insert(r.clone(), v);
                }
                out.insert(format!("requests.{r}"), v);
            }
            for (r, v) in pod_resources(obj, "limits") {
                out.insert(format!("limits.{r}"), v);
            }
        }
        "services" => {
            out.insert("services".into(), 1000);
            let ports = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len) as i64;
            match obj.pointer("/spec/type").and_then(Value::as_str) {
                Some("NodePort") => {
                    out.insert("services.nodeports".into(), ports * 1000);
                }
                Some("LoadBalancer") => {
                    out.insert("services.loadbalancers".into(), 1000);
                    out.insert("services.nodeports".into(), ports * 1000);
                }
                _ => {}
            }
        }
        "configmaps" | "secrets" | "persistentvolumeclaims" | "replicationcontrollers" => {
            out.insert(plural.to_owned(), 1000);
        }
        _ => {}
    }
    out
}

/// The compute resources a quota's `hard` names that `pod` leaves unset
/// in some container (what upstream refuses with `must specify`).
pub fn missing_compute(hard: &BTreeMap<String, String>, pod: &Value) -> Vec<String> {
    let containers: Vec<Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
        .flatten()
        .cloned()
        .collect();
    let mut missing = Vec::new();
    for r in hard.keys().filter(|r| COMPUTE.contains(&r.as_str())) {
        let (field, res) = match r.split_once('.') {
            Some((f, res)) => (f, res),
            None => ("requests", r.as_str()),
        };
        let all = containers
            .iter()
            .all(|c| c.pointer(&format!("/resources/{field}/{res}")).is_some());
        if !all {
            missing.push(r.clone());
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_count_their_compute() {
        let pod = json!({"spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
                {"resources": {"requests": {"cpu": "250m"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "2"}}}],
        }});
        let u = usage("", "pods", &pod);
        assert_eq!(u["pods"], 1000);
        assert_eq!(u["count/pods"], 1000);
        assert_eq!(u["requests.cpu"], 2000, "init container dominates");
        assert_eq!(u["cpu"], 2000);
        assert_eq!(u["requests.memory"], 64 * 1024 * 1024 * 1000);
        assert_eq!(u["limits.cpu"], 1000);
        let done = json!({"status": {"phase": "Succeeded"}});
        assert!(usage("", "pods", &done).is_empty());
    }

    #[test]
    fn services_and_counts() {
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        let u = usage("", "services", &svc);
        assert_eq!((u["services"], u["services.nodeports"]), (1000, 2000));
        assert_eq!(
            usage("apps", "deployments", &json!({}))["count/deployments.apps"],
            1000
        );
    }

    #[test]
    fn compute_must_be_stated() {
        let hard: BTreeMap<String, String> = [
            ("requests.cpu".to_owned(), "1".to_owned()),
            ("pods".to_owned(), "5".to_owned()),
            ("limits.memory".to_owned(), "1Gi".to_owned()),
        ]
        .into_iter()
        .collect();
        let pod = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(missing_compute(&hard, &pod), ["limits.memory"]);
    }
}
