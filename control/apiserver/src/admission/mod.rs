//! Admission: per-kind defaulting and validation, run on every create and
//! update before anything is stored, Service IP and NodePort allocation, and
//! the admission plugins ([`chain`]).

pub mod chain;
pub mod limitranger;
pub mod podsecurity;
pub mod priority;
pub mod quota;
pub mod storage;
pub mod webhook;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kestrel_api::registry::ResourceDef;
use kestrel_api::{ApiError, FieldError, labels::Selector, validation};
use serde_json::{Map, Value, json};

use crate::alloc::AllocError;
use crate::state::AppState;

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    let slot = match v {
        Value::Object(m) => m.entry(key).or_insert_with(|| Value::Object(Map::new())),
        _ => unreachable!("replaced by an object just above"),
    };
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("replaced by an object just above"),
    }
}

/// The label upstream sets on every namespace to its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn default(m: &mut Map<String, Value>, k: &str, v: Value) {
    m.entry(k.to_owned()).or_insert(v);
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The pod's QoS class from its containers' requests and limits, as
/// upstream computes it: Guaranteed when every container limits CPU and
/// memory with requests equal to limits, BestEffort when nothing is set.
pub fn qos_class(spec: Option<&Value>) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec.and_then(|s| s.get(*k)).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|m| !m.is_empty()) || lim.is_some_and(|m| !m.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|m| m.get(r));
            // Requests default to limits when only limits are given.
            let q = req.and_then(|m| m.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Upstream's pod-spec defaults (`SetDefaults_PodSpec`, `_Container`).
pub fn default_pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                let image = c
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let tag = image
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .split_once(':')
                    .map(|(_, t)| t.to_owned());
                let policy = if image.contains('@') || tag.as_deref().is_some_and(|t| t != "latest")
                {
                    "IfNotPresent"
                } else {
                    "Always"
                };
                default(c, "imagePullPolicy", json!(policy));
                default(c, "terminationMessagePath", json!("/dev/termination-log"));
                default(c, "terminationMessagePolicy", json!("File"));
                default(c, "resources", json!({}));
                if let Some(Value::Array(ports)) = c.get_mut("ports") {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

/// Upstream's DefaultTolerationSeconds admission: a new pod that does not
/// tolerate the not-ready or unreachable NoExecute taint gets a bounded
/// toleration for it, so the node lifecycle controller evicts it that long
/// after its node fails, rather than at once.
pub fn default_tolerations(config: &crate::Config, pod: &mut Value) {
    let defaults = [
        (
            "node.kubernetes.io/not-ready",
            config.default_not_ready_toleration_seconds,
        ),
        (
            "node.kubernetes.io/unreachable",
            config.default_unreachable_toleration_seconds,
        ),
    ];
    let spec = obj_mut(pod, "spec");
    let tols = spec.entry("tolerations").or_insert_with(|| json!([]));
    if !tols.is_array() {
        *tols = json!([]);
    }
    let Some(tols) = tols.as_array_mut() else {
        return;
    };
    for (key, secs) in defaults {
        let tolerated = tols.iter().any(|t| {
            let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("");
            let effect_ok = s("effect").is_empty() || s("effect") == "NoExecute";
            let key_ok = match s("operator") {
                "Exists" => s("key").is_empty() || s("key") == key,
                "" | "Equal" => s("key") == key && s("value").is_empty(),
                _ => false,
            };
            effect_ok && key_ok
        });
        if !tolerated {
            tols.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": secs,
            }));
        }
    }
}

fn template_spec(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    obj.pointer_mut("/spec/template/spec")
        .and_then(Value::as_object_mut)
}

/// What a kind's strategy does to a new object only, before defaulting
/// (upstream's `PrepareForCreate`).
pub fn prepare_create(def: &ResourceDef, obj: &mut Value) {
    // The status upstream's strategies give a new object (its Go struct's
    // zero value, as serialized), where the kind's status is the server's.
    let status = match (def.group, def.kind) {
        ("", "Pod") => Some(json!({"phase": "Pending"})),
        ("", "Service") => Some(json!({"loadBalancer": {}})),
        ("apps", "Deployment") | ("batch", "Job" | "CronJob") => Some(json!({})),
        ("apps", "ReplicaSet") | ("", "ReplicationController") => Some(json!({"replicas": 0})),
        ("apps", "StatefulSet") => Some(json!({"replicas": 0, "availableReplicas": 0})),
        ("apps", "DaemonSet") => Some(json!({
            "currentNumberScheduled": 0,
            "numberMisscheduled": 0,
            "desiredNumberScheduled": 0,
            "numberReady": 0,
        })),
        _ => None,
    };
    if let (Some(s), Some(o)) = (status, obj.as_object_mut()) {
        o.insert("status".into(), s);
    }
    if (def.group, def.kind) == ("batch", "Job") {
        crate::kinds::job::prepare_create(obj);
    }
    if (def.group, def.kind) == ("", "PersistentVolume") {
        crate::kinds::storage::prepare_volume(obj);
    }
    if (def.group, def.kind) == ("apiextensions.k8s.io", "CustomResourceDefinition") {
        // Deleting a CRD deletes its objects first.
        let f = crate::crd::define::CLEANUP_FINALIZER;
        let m = obj_mut(obj, "metadata");
        let list = m.entry("finalizers").or_insert_with(|| json!([]));
        if let Some(a) = list.as_array_mut()
            && !a.iter().any(|x| x.as_str() == Some(f))
        {
            a.push(json!(f));
        }
    }
}

/// Defaults for a new or updated object of `def`'s kind.
pub fn set_defaults(def: &ResourceDef, obj: &mut Value) {
    match (def.group, def.kind) {
        ("", "Pod") => {
            let spec = obj_mut(obj, "spec");
            default_pod_spec(spec);
            let qos = qos_class(obj.get("spec"));
            let status = obj_mut(obj, "status");
            default(status, "qosClass", json!(qos));
        }
        ("apps", "Deployment") => {
            let spec = obj_mut(obj, "spec");
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
            if let Some(s) = strategy.as_object_mut() {
                default(s, "type", json!("RollingUpdate"));
                if s.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                    let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        default(ru, "maxUnavailable", json!("25%"));
                        default(ru, "maxSurge", json!("25%"));
                    }
                }
            }
            if let Some(t) = template_spec(obj) {
                default_pod_spec(t);
            }
        }
        ("batch", "CronJob") => crate::kinds::cronjob::set_defaults(obj),
        ("", "PersistentVolume") => crate::kinds::storage::default_volume(obj),
        ("", "PersistentVolumeClaim") => crate::kinds::storage::default_claim(obj),
        ("storage.k8s.io", "StorageClass") => crate::kinds::storage::default_class(obj),
        ("", "ReplicationController") => crate::kinds::replicationcontroller::set_defaults(obj),
        ("scheduling.k8s.io", "PriorityClass") => {
            if let Some(o) = obj.as_object_mut() {
                default(o, "preemptionPolicy", json!("PreemptLowerPriority"));
            }
        }
        ("apps", "ReplicaSet") => {
            default(obj_mut(obj, "spec"), "replicas", json!(1));
            if let Some(t) = template_spec(obj) {
                default_pod_spec(t);
            }
        }
        ("apps", "StatefulSet") => {
            let spec = obj_mut(obj, "spec");
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            if let Some(t) = template_spec(obj) {
                default_pod_spec(t);
            }
        }
        ("apps", "DaemonSet") => {
            let spec = obj_mut(obj, "spec");
            default(spec, "revisionHistoryLimit", json!(10));
            default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            if let Some(t) = template_spec(obj) {
                default_pod_spec(t);
            }
        }
        ("batch", "Job") => {
            crate::kinds::job::set_defaults(obj);
            if let Some(t) = template_spec(obj) {
                default_pod_spec(t);
            }
        }
        ("", "Service") => {
            let spec = obj_mut(obj, "spec");
            default(spec, "type", json!("ClusterIP"));
            default(spec, "sessionAffinity", json!("None"));
            let ty = spec
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if ty != "ExternalName" {
                default(spec, "internalTrafficPolicy", json!("Cluster"));
                default(spec, "ipFamilyPolicy", json!("SingleStack"));
                default(spec, "ipFamilies", json!(["IPv4"]));
            }
            if ty == "NodePort" || ty == "LoadBalancer" {
                default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    default(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        default(p, "targetPort", port);
                    }
                }
            }
        }
        ("", "Namespace") => {
            // Upstream labels every namespace with its own name (on create
            // and update), so a namespaceSelector can pick one by name.
            if let Some(name) = str_at(obj, "/metadata/name").map(str::to_owned) {
                let meta = obj_mut(obj, "metadata");
                if !meta.get("labels").is_some_and(Value::is_object) {
                    meta.insert("labels".into(), json!({}));
                }
                if let Some(Value::Object(labels)) = meta.get_mut("labels") {
                    labels.insert(NAMESPACE_NAME_LABEL.into(), json!(name));
                }
            }
            default(obj_mut(obj, "spec"), "finalizers", json!(["kubernetes"]));
            default(obj_mut(obj, "status"), "phase", json!("Active"));
        }
        ("", "Secret") => {
            // stringData is write-only: fold it into data, base64-encoded.
            if let Some(Value::Object(sd)) =
                obj.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                use base64::Engine as _;
                let data = obj_mut(obj, "data");
                for (k, v) in sd {
                    let s = v.as_str().unwrap_or("").to_owned();
                    data.insert(
                        k,
                        json!(base64::engine::general_purpose::STANDARD.encode(s)),
                    );
                }
            }
            if let Some(o) = obj.as_object_mut() {
                default(o, "type", json!("Opaque"));
            }
        }
        (webhook::GROUP, kind) => webhook::set_config_defaults(kind, obj),
        _ => {}
    }
}

fn check_meta(def: &ResourceDef, obj: &Value, errs: &mut Vec<FieldError>) {
    let name = str_at(obj, "/metadata/name").unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for m in def.name_rule.check(name) {
            errs.push(FieldError::invalid("metadata.name", name, m));
        }
    }
    let map = |p: &str| -> std::collections::BTreeMap<String, String> {
        obj.pointer(p)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    };
    errs.extend(validation::labels(
        "metadata.labels",
        &map("/metadata/labels"),
    ));
    errs.extend(validation::annotations(
        "metadata.annotations",
        &map("/metadata/annotations"),
    ));
}

pub(crate) fn check_pod_spec(spec: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    let Some(containers) = containers.filter(|c| !c.is_empty()) else {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
        return;
    };
    let mut seen = std::collections::HashSet::new();
    for (i, c) in containers.iter().enumerate() {
        let p = format!("{path}.containers[{i}]");
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        } else {
            for m in validation::dns1123_label(name) {
                errs.push(FieldError::invalid(format!("{p}.name"), name, m));
            }
            if !seen.insert(name.to_owned()) {
                errs.push(FieldError::duplicate(format!("{p}.name"), name));
            }
        }
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errs.push(FieldError::required(format!("{p}.image"), ""));
        }
    }
    if let Some(rp) = spec
        .and_then(|s| s.get("restartPolicy"))
        .and_then(Value::as_str)
        && !["Always", "OnFailure", "Never"].contains(&rp)
    {
        errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            rp,
            &["Always", "OnFailure", "Never"],
        ));
    }
}

fn check_workload(obj: &Value, errs: &mut Vec<FieldError>, selector_required: bool) {
    let sel = obj.pointer("/spec/selector");
    match sel {
        None if selector_required => errs.push(FieldError::required("spec.selector", "")),
        None => {}
        Some(s) => match serde_json::from_value::<LabelSelector>(s.clone())
            .ok()
            .map(|ls| Selector::from_label_selector(&ls))
        {
            Some(Ok(sel)) => {
                if sel.is_empty() {
                    errs.push(FieldError::invalid(
                        "spec.selector",
                        "{}",
                        "empty selector is invalid for deployment",
                    ));
                }
                let labels = obj.pointer("/spec/template/metadata/labels");
                if !sel.is_empty() && !sel.matches_json(labels) {
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        &labels.map(|l| l.to_string()).unwrap_or_default(),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
            _ => errs.push(FieldError::invalid(
                "spec.selector",
                &s.to_string(),
                "invalid label selector",
            )),
        },
    }
    check_pod_spec(
        obj.pointer("/spec/template/spec"),
        "spec.template.spec",
        errs,
    );
}

/// `spec.replicas`, if set, is not negative.
pub(crate) fn check_replicas(obj: &Value, errs: &mut Vec<FieldError>) {
    if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64)
        && r < 0
    {
        errs.push(FieldError::invalid(
            "spec.replicas",
            &r.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

/// Validate an object about to be stored. `old` is set on updates.
pub fn validate(def: &ResourceDef, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    check_meta(def, obj, &mut errs);
    match (def.group, def.kind) {
        ("", "Pod") => {
            check_pod_spec(obj.get("spec"), "spec", &mut errs);
            if let Some(old) = old {
                // A pod's spec is immutable but for a few fields.
                let strip = |v: &Value| {
                    let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                    if let Some(m) = s.as_object_mut() {
                        m.remove("activeDeadlineSeconds");
                        m.remove("tolerations");
                        m.remove("terminationGracePeriodSeconds");
                        if let Some(Value::Array(cs)) = m.get_mut("containers") {
                            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                                c.remove("image");
                            }
                        }
                    }
                    s
                };
                if strip(old) != strip(obj) {
                    let old_node = str_at(old, "/spec/nodeName");
                    let new_node = str_at(obj, "/spec/nodeName");
                    if old_node.is_some() && old_node != new_node {
                        errs.push(FieldError::immutable("spec.nodeName"));
                    } else if old_node == new_node {
                        errs.push(FieldError::forbidden(
                            "spec",
                            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                        ));
                    }
                }
            }
        }
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") | ("batch", "Job") => {
            check_workload(obj, &mut errs, def.kind != "Job");
            if let Some(old) = old
                && def.kind != "Job"
                && old.pointer("/spec/selector") != obj.pointer("/spec/selector")
            {
                errs.push(FieldError::immutable("spec.selector"));
            }
            check_replicas(obj, &mut errs);
            if def.kind == "Job" {
                let rp = str_at(obj, "/spec/template/spec/restartPolicy").unwrap_or("");
                if rp != "Never" && rp != "OnFailure" {
                    errs.push(FieldError::not_supported(
                        "spec.template.spec.restartPolicy",
                        rp,
                        &["OnFailure", "Never"],
                    ));
                }
                if let Some(old) = old
                    && old.pointer("/spec/template") != obj.pointer("/spec/template")
                {
                    errs.push(FieldError::immutable("spec.template"));
                }
                crate::kinds::job::validate(obj, old, &mut errs);
            }
        }
        ("apiregistration.k8s.io", "APIService") => crate::apiservice::validate(obj, &mut errs),
        ("policy", "PodDisruptionBudget") => crate::kinds::disruption::validate(obj, &mut errs),
        ("batch", "CronJob") => crate::kinds::cronjob::validate(obj, &mut errs),
        ("", "PersistentVolume") => crate::kinds::storage::validate_volume(obj, old, &mut errs),
        ("", "PersistentVolumeClaim") => {
            crate::kinds::storage::validate_claim(obj, old, &mut errs);
        }
        ("storage.k8s.io", "StorageClass") => {
            crate::kinds::storage::validate_class(obj, old, &mut errs);
        }
        ("", "ReplicationController") => {
            crate::kinds::replicationcontroller::validate(obj, &mut errs);
        }
        ("scheduling.k8s.io", "PriorityClass") => priority::validate_class(obj, old, &mut errs),
        ("", "PodTemplate") => {
            check_pod_spec(obj.pointer("/template/spec"), "template.spec", &mut errs);
        }
        ("apps", "ControllerRevision") => {
            if let Some(r) = obj.get("revision").and_then(Value::as_i64)
                && r < 0
            {
                errs.push(FieldError::invalid(
                    "revision",
                    &r.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
            if let Some(old) = old
                && old.get("data") != obj.get("data")
            {
                errs.push(FieldError::immutable("data"));
            }
        }
        ("networking.k8s.io", "Ingress") => crate::kinds::ingress::validate_ingress(obj, &mut errs),
        ("networking.k8s.io", "IngressClass") => {
            crate::kinds::ingress::validate_ingress_class(obj, old, &mut errs);
        }
        ("node.k8s.io", "RuntimeClass") => {
            crate::kinds::ingress::validate_runtime_class(obj, old, &mut errs);
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            crate::crd::define::validate(obj, old, &mut errs);
        }
        _ if def.types.custom().is_some() => {
            if let Some(c) = def.types.custom() {
                errs.extend(c.schema.validate(obj, old));
            }
        }
        ("", "Service") => {
            let ty = str_at(obj, "/spec/type").unwrap_or("ClusterIP");
            let allowed = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
            if !allowed.contains(&ty) {
                errs.push(FieldError::not_supported("spec.type", ty, &allowed));
            }
            let ports = obj.pointer("/spec/ports").and_then(Value::as_array);
            if ty != "ExternalName"
                && ports.is_none_or(Vec::is_empty)
                && str_at(obj, "/spec/clusterIP") != Some("None")
            {
                errs.push(FieldError::required("spec.ports", ""));
            }
            for (i, p) in ports.into_iter().flatten().enumerate() {
                let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    errs.push(FieldError::invalid(
                        format!("spec.ports[{i}].port"),
                        &port.to_string(),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
            if let Some(old) = old {
                let (o, n) = (
                    str_at(old, "/spec/clusterIP"),
                    str_at(obj, "/spec/clusterIP"),
                );
                if o.is_some() && o != n && ty != "ExternalName" {
                    errs.push(FieldError::immutable("spec.clusterIP"));
                }
            }
        }
        ("", "ConfigMap" | "Secret") => {
            for field in ["data", "binaryData"] {
                for k in obj
                    .get(field)
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|m| m.keys())
                {
                    let ok = !k.is_empty()
                        && k.len() <= 253
                        && k.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
                    if !ok {
                        errs.push(FieldError::invalid(
                            format!("{field}[{k}]"),
                            k,
                            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                        ));
                    }
                }
            }
            if def.kind == "Secret"
                && let Some(old) = old
                && old.get("type") != obj.get("type")
            {
                errs.push(FieldError::immutable("type"));
            }
            if old
                .and_then(|o| o.get("immutable"))
                .and_then(Value::as_bool)
                == Some(true)
                && old.map(|o| (o.get("data"), o.get("binaryData")))
                    != Some((obj.get("data"), obj.get("binaryData")))
            {
                errs.push(FieldError::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        (webhook::GROUP, kind) => webhook::check_config(kind, obj, &mut errs),
        _ => {}
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            def.group,
            def.kind,
            str_at(obj, "/metadata/name").unwrap_or(""),
            errs,
        ))
    }
}

/// Assign a ClusterIP and NodePorts to a new Service (or check the requested
/// ones). On error nothing stays allocated.
pub fn allocate_service(
    state: &AppState,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<Allocated, ApiError> {
    let mut done = Allocated::default();
    let name = str_at(obj, "/metadata/name").unwrap_or("").to_owned();
    let invalid = |done: &Allocated, e: FieldError| {
        done.release(state);
        ApiError::invalid("", "Service", &name, vec![e])
    };
    let ty = str_at(obj, "/spec/type").unwrap_or("ClusterIP").to_owned();
    if ty == "ExternalName" {
        return Ok(done);
    }
    let old_ip = old
        .and_then(|o| str_at(o, "/spec/clusterIP"))
        .map(str::to_owned);
    let spec = obj_mut(obj, "spec");
    match (
        spec.get("clusterIP")
            .and_then(Value::as_str)
            .map(str::to_owned),
        old_ip,
    ) {
        (_, Some(old)) => {
            spec.insert("clusterIP".into(), json!(old.clone()));
            spec.insert("clusterIPs".into(), json!([old]));
        }
        (Some(ip), None) if ip == "None" => {
            spec.insert("clusterIPs".into(), json!(["None"]));
        }
        (Some(ip), None) if !ip.is_empty() => match state.alloc.claim_ip(&ip) {
            Ok(()) => {
                done.ips.push(ip.clone());
                spec.insert("clusterIPs".into(), json!([ip]));
            }
            Err(AllocError::Taken) => {
                return Err(invalid(
                    &done,
                    FieldError::invalid(
                        "spec.clusterIPs",
                        &ip,
                        "failed to allocate IP: provided IP is already allocated",
                    ),
                ));
            }
            Err(_) => {
                return Err(invalid(
                    &done,
                    FieldError::invalid(
                        "spec.clusterIPs",
                        &ip,
                        format!(
                            "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                            state.config.service_cidr
                        ),
                    ),
                ));
            }
        },
        _ => match state.alloc.allocate_ip() {
            Ok(ip) => {
                done.ips.push(ip.clone());
                spec.insert("clusterIP".into(), json!(ip.clone()));
                spec.insert("clusterIPs".into(), json!([ip]));
            }
            Err(_) => {
                return Err(invalid(
                    &done,
                    FieldError::forbidden(
                        "spec.clusterIPs",
                        "failed to allocate IP: range is full",
                    ),
                ));
            }
        },
    }
    let wants_node_ports = ty == "NodePort" || ty == "LoadBalancer";
    let old_ports: Vec<i64> = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
                .collect()
        })
        .unwrap_or_default();
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for (i, p) in ports.iter_mut().enumerate() {
            let Some(p) = p.as_object_mut() else { continue };
            if !wants_node_ports {
                p.remove("nodePort");
                continue;
            }
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if old_ports.contains(&np) => {}
                Some(np) => {
                    let r = u16::try_from(np)
                        .map_err(|_| AllocError::OutOfRange)
                        .and_then(|np| state.alloc.claim_port(np));
                    match r {
                        Ok(()) => done.ports.push(np as u16),
                        Err(AllocError::Taken) => {
                            return Err(invalid(
                                &done,
                                FieldError::invalid(
                                    format!("spec.ports[{i}].nodePort"),
                                    &np.to_string(),
                                    "provided port is already allocated",
                                ),
                            ));
                        }
                        Err(_) => {
                            let (lo, hi) = state.alloc.port_range();
                            return Err(invalid(
                                &done,
                                FieldError::invalid(
                                    format!("spec.ports[{i}].nodePort"),
                                    &np.to_string(),
                                    format!(
                                        "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                                    ),
                                ),
                            ));
                        }
                    }
                }
                None => match state.alloc.allocate_port() {
                    Ok(np) => {
                        done.ports.push(np);
                        p.insert("nodePort".into(), json!(np));
                    }
                    Err(_) => {
                        return Err(invalid(
                            &done,
                            FieldError::forbidden(
                                format!("spec.ports[{i}].nodePort"),
                                "failed to allocate a nodePort: range is full",
                            ),
                        ));
                    }
                },
            }
        }
    }
    Ok(done)
}

/// What one write allocated, so a failed write can hand it back.
#[derive(Debug, Default)]
pub struct Allocated {
    ips: Vec<String>,
    ports: Vec<u16>,
}

impl Allocated {
    /// Give everything back.
    pub fn release(&self, state: &AppState) {
        for ip in &self.ips {
            state.alloc.release_ip(ip);
        }
        for p in &self.ports {
            state.alloc.release_port(*p);
        }
    }
}

/// Release what a deleted Service held.
pub fn release_service(state: &AppState, obj: &Value) {
    if let Some(ip) = str_at(obj, "/spec/clusterIP") {
        state.alloc.release_ip(ip);
    }
    for p in obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(np) = p
            .get("nodePort")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
        {
            state.alloc.release_port(np);
        }
    }
}

/// Re-claim what a stored Service holds (at start).
pub fn reclaim_service(state: &AppState, obj: &Value) {
    if let Some(ip) = str_at(obj, "/spec/clusterIP").filter(|ip| *ip != "None" && !ip.is_empty()) {
        let _ = state.alloc.claim_ip(ip);
    }
    for p in obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(np) = p
            .get("nodePort")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
        {
            let _ = state.alloc.claim_port(np);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_carry_their_name_as_a_label() {
        let def = kestrel_api::registry::lookup("", "v1", "namespaces").expect("namespaces");
        let mut ns = json!({"metadata": {"name": "x", "labels": {"team": "a"}}});
        set_defaults(def, &mut ns);
        assert_eq!(ns["metadata"]["labels"][NAMESPACE_NAME_LABEL], "x");
        assert_eq!(ns["metadata"]["labels"]["team"], "a");
        // A user cannot point the label elsewhere.
        let mut ns = json!({"metadata": {"name": "y", "labels": {NAMESPACE_NAME_LABEL: "x"}}});
        set_defaults(def, &mut ns);
        assert_eq!(ns["metadata"]["labels"][NAMESPACE_NAME_LABEL], "y");
        let mut ns = json!({"metadata": {"name": "z"}});
        set_defaults(def, &mut ns);
        assert_eq!(ns["metadata"]["labels"][NAMESPACE_NAME_LABEL], "z");
    }

    #[test]
    fn qos_classes() {
        let c = |res: Value| json!({"containers": [{"name": "c", "image": "i", "resources": res}]});
        assert_eq!(qos_class(Some(&c(json!({})))), "BestEffort");
        assert_eq!(
            qos_class(Some(&c(json!({"requests": {"cpu": "1"}})))),
            "Burstable"
        );
        assert_eq!(
            qos_class(Some(&c(json!({"limits": {"cpu": "1", "memory": "1Gi"}})))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(Some(&c(
                json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}})
            ))),
            "Burstable"
        );
    }
}
