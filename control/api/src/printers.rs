//! Computed Table cells for the registry's printer columns, following what
//! upstream's server-side printers show so `kubectl get` looks familiar.

use serde_json::{Value, json};

fn s(v: &Value, path: &str) -> Option<String> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = cur.get(seg)?;
    }
    match cur {
        Value::String(x) => Some(x.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn i(v: &Value, path: &str) -> i64 {
    let mut cur = v;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(x) => cur = x,
            None => return 0,
        }
    }
    cur.as_i64().unwrap_or(0)
}

fn arr<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    let mut cur = v;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(x) => cur = x,
            None => return &[],
        }
    }
    cur.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn none_if_empty(x: String) -> Value {
    if x.is_empty() {
        json!("<none>")
    } else {
        json!(x)
    }
}

/// Upstream's `duration.HumanDuration`: `45s`, `5m10s`, `3h`, `2d4h`, `1y20d`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".to_owned();
    }
    if secs < 0 {
        return "0s".to_owned();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Seconds between an RFC 3339 timestamp and now, if it parses.
pub fn age_seconds(ts: &str) -> Option<i64> {
    let t: jiff::Timestamp = ts.parse().ok()?;
    Some(jiff::Timestamp::now().as_second() - t.as_second())
}

/// Age cell for an RFC 3339 timestamp.
pub fn age(ts: Option<&str>) -> Value {
    match ts.and_then(age_seconds) {
        Some(secs) => json!(human_duration(secs)),
        None => json!("<unknown>"),
    }
}

/// Pods: `ready/total` containers.
pub fn pod_ready(v: &Value) -> Value {
    let total = arr(v, "spec.containers").len();
    let ready = arr(v, "status.containerStatuses")
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    json!(format!("{ready}/{total}"))
}

/// Pods: the STATUS column (reason, waiting/terminated reason, or phase).
pub fn pod_status(v: &Value) -> Value {
    if v.pointer("/metadata/deletionTimestamp").is_some() {
        return json!("Terminating");
    }
    let mut reason = s(v, "status.reason")
        .or_else(|| s(v, "status.phase"))
        .unwrap_or_else(|| "Pending".to_owned());
    for c in arr(v, "status.containerStatuses") {
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.to_owned();
        } else if let Some(r) = c
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            reason = r.to_owned();
        }
    }
    json!(reason)
}

/// Pods: total restarts.
pub fn pod_restarts(v: &Value) -> Value {
    let n: i64 = arr(v, "status.containerStatuses")
        .iter()
        .map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0))
        .sum();
    json!(n.to_string())
}

/// Pods: `ready/total` readiness gates, or `<none>`.
pub fn pod_readiness_gates(v: &Value) -> Value {
    let gates = arr(v, "spec.readinessGates");
    if gates.is_empty() {
        return json!("<none>");
    }
    let ready = gates
        .iter()
        .filter(|g| {
            let t = g.get("conditionType").and_then(Value::as_str);
            arr(v, "status.conditions").iter().any(|c| {
                c.get("type").and_then(Value::as_str) == t
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
        .count();
    json!(format!("{ready}/{}", gates.len()))
}

/// Nodes: Ready/NotReady/Unknown, plus SchedulingDisabled.
pub fn node_status(v: &Value) -> Value {
    let ready = arr(v, "status.conditions")
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .and_then(|c| c.get("status").and_then(Value::as_str));
    let mut out = match ready {
        Some("True") => "Ready".to_owned(),
        Some("False") => "NotReady".to_owned(),
        _ => "Unknown".to_owned(),
    };
    if v.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        out.push_str(",SchedulingDisabled");
    }
    json!(out)
}

/// Nodes: roles from `node-role.kubernetes.io/<role>` labels.
pub fn node_roles(v: &Value) -> Value {
    let mut roles: Vec<&str> = v
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    roles.sort_unstable();
    none_if_empty(roles.join(","))
}

fn node_address(v: &Value, kind: &str) -> Value {
    let a = arr(v, "status.addresses")
        .iter()
        .find(|a| a.get("type").and_then(Value::as_str) == Some(kind))
        .and_then(|a| a.get("address").and_then(Value::as_str))
        .unwrap_or("");
    none_if_empty(a.to_owned())
}

/// Nodes: InternalIP.
pub fn node_internal_ip(v: &Value) -> Value {
    node_address(v, "InternalIP")
}

/// Nodes: ExternalIP.
pub fn node_external_ip(v: &Value) -> Value {
    node_address(v, "ExternalIP")
}

/// Services: external IPs or load-balancer ingress.
pub fn service_external_ip(v: &Value) -> Value {
    let mut ips: Vec<String> = arr(v, "spec.externalIPs")
        .iter()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect();
    for ing in arr(v, "status.loadBalancer.ingress") {
        if let Some(x) = ing
            .get("ip")
            .or_else(|| ing.get("hostname"))
            .and_then(Value::as_str)
        {
            ips.push(x.to_owned());
        }
    }
    let ty = s(v, "spec.type").unwrap_or_default();
    if ips.is_empty() {
        return match ty.as_str() {
            "LoadBalancer" => json!("<pending>"),
            "ExternalName" => json!(s(v, "spec.externalName").unwrap_or_default()),
            _ => json!("<none>"),
        };
    }
    json!(ips.join(","))
}

/// Services: `80/TCP,30080:31234/TCP`.
pub fn service_ports(v: &Value) -> Value {
    let ports: Vec<String> = arr(v, "spec.ports")
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    none_if_empty(ports.join(","))
}

fn map_selector(v: Option<&Value>) -> String {
    let mut parts: Vec<String> = v
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    parts.join(",")
}

/// ComponentStatus: `Healthy` or `Unhealthy` from its Healthy condition,
/// `Unknown` without one, as upstream's printer.
pub fn component_health(v: &Value) -> Value {
    let healthy = v
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Healthy"));
    Value::from(
        match healthy
            .and_then(|c| c.get("status"))
            .and_then(Value::as_str)
        {
            Some("True") => "Healthy",
            Some(_) => "Unhealthy",
            None => "Unknown",
        },
    )
}

/// PodTemplate: the template's container names.
pub fn podtemplate_containers(v: &Value) -> Value {
    container_field(v, "template.spec.containers", "name")
}

/// PodTemplate: the template's images.
pub fn podtemplate_images(v: &Value) -> Value {
    container_field(v, "template.spec.containers", "image")
}

/// PodTemplate: the template's labels, `k=v,...` or `<none>`.
pub fn template_labels(v: &Value) -> Value {
    let labels: Vec<String> = v
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    Value::from(if labels.is_empty() {
        "<none>".to_owned()
    } else {
        labels.join(",")
    })
}

/// ControllerRevision: its controller as `kind.group/name`.
pub fn revision_controller(v: &Value) -> Value {
    let owner = arr(v, "metadata.ownerReferences")
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true));
    Value::from(match owner {
        Some(o) => {
            let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("");
            let group = s("apiVersion").rsplit_once('/').map_or("", |(g, _)| g);
            if group.is_empty() {
                format!("{}/{}", s("kind").to_lowercase(), s("name"))
            } else {
                format!("{}.{group}/{}", s("kind").to_lowercase(), s("name"))
            }
        }
        None => "<none>".to_owned(),
    })
}

/// Ingress: `spec.ingressClassName`.
pub fn ingress_class(v: &Value) -> Value {
    Value::from(
        v.pointer("/spec/ingressClassName")
            .and_then(Value::as_str)
            .unwrap_or("<none>"),
    )
}

/// Ingress: the rules' hosts, `*` for a rule without one.
pub fn ingress_hosts(v: &Value) -> Value {
    let hosts: Vec<&str> = arr(v, "spec.rules")
        .iter()
        .map(|r| r.get("host").and_then(Value::as_str).unwrap_or("*"))
        .collect();
    Value::from(if hosts.is_empty() {
        "*".to_owned()
    } else {
        hosts.join(",")
    })
}

/// Ingress: the load balancer's addresses.
pub fn ingress_address(v: &Value) -> Value {
    let addrs: Vec<&str> = arr(v, "status.loadBalancer.ingress")
        .iter()
        .filter_map(|i| {
            i.get("ip")
                .or_else(|| i.get("hostname"))
                .and_then(Value::as_str)
        })
        .collect();
    Value::from(addrs.join(","))
}

/// Ingress: 80, and 443 when it has TLS.
pub fn ingress_ports(v: &Value) -> Value {
    Value::from(if arr(v, "spec.tls").is_empty() {
        "80"
    } else {
        "80, 443"
    })
}

/// IngressClass: the parameters reference, `<none>` without one.
pub fn ingress_class_parameters(v: &Value) -> Value {
    let Some(p) = v.pointer("/spec/parameters") else {
        return Value::from("<none>");
    };
    let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
    let group = s("apiGroup");
    Value::from(if group.is_empty() {
        format!("{}/{}", s("kind"), s("name"))
    } else {
        format!("{group}/{}/{}", s("kind"), s("name"))
    })
}

/// PriorityClass: `globalDefault`, false when unset.
pub fn global_default(v: &Value) -> Value {
    Value::from(
        v.get("globalDefault")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    )
}

/// PodDisruptionBudget: `spec.minAvailable`, `N/A` when unset.
pub fn pdb_min_available(v: &Value) -> Value {
    int_or_string_or_na(v.pointer("/spec/minAvailable"))
}

/// PodDisruptionBudget: `spec.maxUnavailable`, `N/A` when unset.
pub fn pdb_max_unavailable(v: &Value) -> Value {
    int_or_string_or_na(v.pointer("/spec/maxUnavailable"))
}

fn int_or_string_or_na(v: Option<&Value>) -> Value {
    match v {
        Some(Value::Number(n)) => Value::from(n.to_string()),
        Some(Value::String(s)) => Value::from(s.clone()),
        _ => Value::from("N/A"),
    }
}

/// Access modes as kubectl abbreviates them (`RWO,ROX,RWX,RWOP`), in
/// upstream's fixed order, each once.
fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|x| x.as_str() == Some(m));
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(m, _)| has(m))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// The phase of a PV or PVC, `Terminating` while it is being deleted.
fn volume_phase(v: &Value) -> Value {
    if v.pointer("/metadata/deletionTimestamp").is_some() {
        return json!("Terminating");
    }
    json!(s(v, "status.phase").unwrap_or_default())
}

/// A PV's or PVC's class: the beta annotation wins over
/// `spec.storageClassName`, as upstream's helper reads it.
fn volume_class(v: &Value) -> Value {
    let beta = v
        .pointer("/metadata/annotations/volume.beta.kubernetes.io~1storage-class")
        .and_then(Value::as_str);
    json!(
        beta.map(str::to_owned)
            .or_else(|| s(v, "spec.storageClassName"))
            .unwrap_or_default()
    )
}

fn unset_or(v: &Value, path: &str) -> Value {
    json!(s(v, path).unwrap_or_else(|| "<unset>".to_owned()))
}

/// PersistentVolume: `capacity.storage`.
pub fn pv_capacity(v: &Value) -> Value {
    json!(s(v, "spec.capacity.storage").unwrap_or_default())
}

/// PersistentVolume: access modes.
pub fn pv_access_modes(v: &Value) -> Value {
    json!(access_modes(arr(v, "spec.accessModes")))
}

/// PersistentVolume: reclaim policy.
pub fn pv_reclaim_policy(v: &Value) -> Value {
    json!(s(v, "spec.persistentVolumeReclaimPolicy").unwrap_or_default())
}

/// PersistentVolume and PersistentVolumeClaim: phase, or `Terminating`.
pub fn volume_status(v: &Value) -> Value {
    volume_phase(v)
}

/// PersistentVolume: the claim it is bound to, `namespace/name`.
pub fn pv_claim(v: &Value) -> Value {
    match v.pointer("/spec/claimRef") {
        Some(c) if c.is_object() => json!(format!(
            "{}/{}",
            c.get("namespace").and_then(Value::as_str).unwrap_or(""),
            c.get("name").and_then(Value::as_str).unwrap_or("")
        )),
        _ => json!(""),
    }
}

/// PersistentVolume and PersistentVolumeClaim: the storage class.
pub fn storage_class_name(v: &Value) -> Value {
    volume_class(v)
}

/// PersistentVolume and PersistentVolumeClaim: the VolumeAttributesClass,
/// `<unset>` when none.
pub fn volume_attributes_class(v: &Value) -> Value {
    unset_or(v, "spec.volumeAttributesClassName")
}

/// PersistentVolume: `status.reason`.
pub fn pv_reason(v: &Value) -> Value {
    json!(s(v, "status.reason").unwrap_or_default())
}

/// PersistentVolume and PersistentVolumeClaim: volume mode, `<unset>` when
/// none.
pub fn volume_mode(v: &Value) -> Value {
    unset_or(v, "spec.volumeMode")
}

/// PersistentVolumeClaim: the bound capacity, empty until bound.
pub fn pvc_capacity(v: &Value) -> Value {
    if s(v, "spec.volumeName").unwrap_or_default().is_empty() {
        return json!("");
    }
    json!(s(v, "status.capacity.storage").unwrap_or_default())
}

/// PersistentVolumeClaim: the bound access modes, empty until bound.
pub fn pvc_access_modes(v: &Value) -> Value {
    if s(v, "spec.volumeName").unwrap_or_default().is_empty() {
        return json!("");
    }
    json!(access_modes(arr(v, "status.accessModes")))
}

/// PersistentVolumeClaim: the volume's name.
pub fn pvc_volume(v: &Value) -> Value {
    json!(s(v, "spec.volumeName").unwrap_or_default())
}

/// Whether a StorageClass is marked the default (the annotation or its
/// beta form set to `true`).
pub fn is_default_class(v: &Value) -> bool {
    let a = |k: &str| {
        v.pointer(&format!("/metadata/annotations/{k}"))
            .and_then(Value::as_str)
            == Some("true")
    };
    a("storageclass.kubernetes.io~1is-default-class")
        || a("storageclass.beta.kubernetes.io~1is-default-class")
}

/// StorageClass: the name, with ` (default)` after the default class's.
pub fn storage_class_display_name(v: &Value) -> Value {
    let name = s(v, "metadata.name").unwrap_or_default();
    if is_default_class(v) {
        json!(format!("{name} (default)"))
    } else {
        json!(name)
    }
}

/// StorageClass: reclaim policy, `Delete` when unset.
pub fn sc_reclaim_policy(v: &Value) -> Value {
    json!(s(v, "reclaimPolicy").unwrap_or_else(|| "Delete".to_owned()))
}

/// StorageClass: binding mode, `Immediate` when unset.
pub fn sc_binding_mode(v: &Value) -> Value {
    json!(s(v, "volumeBindingMode").unwrap_or_else(|| "Immediate".to_owned()))
}

/// StorageClass: `allowVolumeExpansion`, false when unset.
pub fn sc_allow_expansion(v: &Value) -> Value {
    json!(
        v.get("allowVolumeExpansion")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    )
}

/// Services: the selector map.
pub fn service_selector(v: &Value) -> Value {
    none_if_empty(map_selector(v.pointer("/spec/selector")))
}

/// Endpoints: `ip:port,...` (at most three, then `+ N more...`).
pub fn endpoints(v: &Value) -> Value {
    let mut all = Vec::new();
    for sub in arr(v, "subsets") {
        for a in arr(sub, "addresses") {
            let ip = a.get("ip").and_then(Value::as_str).unwrap_or("");
            let ports = arr(sub, "ports");
            if ports.is_empty() {
                all.push(ip.to_owned());
            }
            for p in ports {
                all.push(format!(
                    "{ip}:{}",
                    p.get("port").and_then(Value::as_i64).unwrap_or(0)
                ));
            }
        }
    }
    list_more(all)
}

fn list_more(all: Vec<String>) -> Value {
    if all.is_empty() {
        return json!("<none>");
    }
    if all.len() > 3 {
        return json!(format!(
            "{} + {} more...",
            all[..3].join(","),
            all.len() - 3
        ));
    }
    json!(all.join(","))
}

/// ConfigMaps and Secrets: number of keys.
pub fn data_count(v: &Value) -> Value {
    let n = ["data", "binaryData", "stringData"]
        .iter()
        .filter_map(|k| v.get(*k).and_then(Value::as_object))
        .map(|m| m.len())
        .sum::<usize>();
    json!(n)
}

/// Events: age of the last occurrence.
pub fn event_last_seen(v: &Value) -> Value {
    let ts = s(v, "lastTimestamp")
        .or_else(|| s(v, "eventTime"))
        .or_else(|| s(v, "metadata.creationTimestamp"));
    age(ts.as_deref())
}

/// Events: `kind/name` of the involved object.
pub fn event_object(v: &Value) -> Value {
    json!(format!(
        "{}/{}",
        s(v, "involvedObject.kind")
            .unwrap_or_default()
            .to_lowercase(),
        s(v, "involvedObject.name").unwrap_or_default()
    ))
}

/// Deployments and StatefulSets: `ready/desired`.
pub fn ready_of_replicas(v: &Value) -> Value {
    let desired = v
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    json!(format!("{}/{desired}", i(v, "status.readyReplicas")))
}

/// Workloads: container names of the pod template.
pub fn template_containers(v: &Value) -> Value {
    container_field(v, "spec.template.spec.containers", "name")
}

/// Workloads: container images of the pod template.
pub fn template_images(v: &Value) -> Value {
    container_field(v, "spec.template.spec.containers", "image")
}

/// One field of each container in the list at `path`, comma-joined.
fn container_field(v: &Value, path: &str, field: &str) -> Value {
    let values: Vec<&str> = arr(v, path)
        .iter()
        .filter_map(|c| c.get(field).and_then(Value::as_str))
        .collect();
    none_if_empty(values.join(","))
}

fn label_selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else { return String::new() };
    let mut parts = Vec::new();
    let ml = map_selector(sel.get("matchLabels"));
    if !ml.is_empty() {
        parts.push(ml);
    }
    for e in arr(sel, "matchExpressions") {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let vals: Vec<&str> = arr(e, "values").iter().filter_map(Value::as_str).collect();
        match e.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" => parts.push(format!("{key} in ({})", vals.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", vals.join(","))),
            "Exists" => parts.push(key.to_owned()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

/// Workloads: the label selector.
pub fn workload_selector(v: &Value) -> Value {
    none_if_empty(label_selector_string(v.pointer("/spec/selector")))
}

/// DaemonSets: the pod template's node selector.
pub fn node_selector(v: &Value) -> Value {
    none_if_empty(map_selector(v.pointer("/spec/template/spec/nodeSelector")))
}

/// Jobs: Complete / Failed / Running / Suspended.
pub fn job_status(v: &Value) -> Value {
    let cond = |t: &str| {
        arr(v, "status.conditions").iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some(t)
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
    };
    let st = if cond("Complete") {
        "Complete"
    } else if cond("Failed") {
        "Failed"
    } else if cond("Suspended") {
        "Suspended"
    } else {
        "Running"
    };
    json!(st)
}

/// Jobs: `succeeded/completions`.
pub fn job_completions(v: &Value) -> Value {
    let done = i(v, "status.succeeded");
    match v.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => json!(format!("{done}/{c}")),
        None => json!(format!("{done}/1")),
    }
}

/// Jobs: run time so far or in total.
pub fn job_duration(v: &Value) -> Value {
    let Some(start) = s(v, "status.startTime").and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return json!("");
    };
    let end = s(v, "status.completionTime")
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .unwrap_or_else(jiff::Timestamp::now);
    json!(human_duration(end.as_second() - start.as_second()))
}

/// ReplicationControllers: the map selector.
pub fn map_workload_selector(v: &Value) -> Value {
    none_if_empty(map_selector(v.pointer("/spec/selector")))
}

/// CronJobs: the time zone, `<none>` for the controller's own.
pub fn cronjob_time_zone(v: &Value) -> Value {
    none_if_empty(s(v, "spec.timeZone").unwrap_or_default())
}

/// CronJobs: whether suspended, as upstream prints a bool pointer.
pub fn cronjob_suspend(v: &Value) -> Value {
    match v.pointer("/spec/suspend").and_then(Value::as_bool) {
        Some(true) => json!("True"),
        Some(false) => json!("False"),
        None => json!("<unset>"),
    }
}

/// CronJobs: how many of its Jobs are running.
pub fn cronjob_active(v: &Value) -> Value {
    json!(arr(v, "status.active").len())
}

/// CronJobs: time since the last scheduled run.
pub fn cronjob_last_schedule(v: &Value) -> Value {
    match s(v, "status.lastScheduleTime") {
        Some(t) => age(Some(&t)),
        None => json!("<none>"),
    }
}

/// CronJobs: container names of the Job template's pods.
pub fn cronjob_containers(v: &Value) -> Value {
    container_field(v, "spec.jobTemplate.spec.template.spec.containers", "name")
}

/// CronJobs: container images of the Job template's pods.
pub fn cronjob_images(v: &Value) -> Value {
    container_field(v, "spec.jobTemplate.spec.template.spec.containers", "image")
}

/// CronJobs: the Job template's selector.
pub fn cronjob_selector(v: &Value) -> Value {
    none_if_empty(label_selector_string(
        v.pointer("/spec/jobTemplate/spec/selector"),
    ))
}

/// EndpointSlices: ports.
pub fn slice_ports(v: &Value) -> Value {
    let ports: Vec<String> = arr(v, "ports")
        .iter()
        .filter_map(|p| p.get("port").and_then(Value::as_i64).map(|p| p.to_string()))
        .collect();
    if ports.is_empty() {
        json!("<unset>")
    } else {
        json!(ports.join(","))
    }
}

/// EndpointSlices: addresses.
pub fn slice_endpoints(v: &Value) -> Value {
    let all: Vec<String> = arr(v, "endpoints")
        .iter()
        .flat_map(|e| {
            arr(e, "addresses")
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
        })
        .collect();
    list_more(all)
}

/// NetworkPolicies: the pod selector.
pub fn netpol_pod_selector(v: &Value) -> Value {
    none_if_empty(label_selector_string(v.pointer("/spec/podSelector")))
}

/// CSRs: Approved/Denied/Pending, plus Issued.
pub fn csr_condition(v: &Value) -> Value {
    let mut parts: Vec<String> = arr(v, "status.conditions")
        .iter()
        .filter_map(|c| c.get("type").and_then(Value::as_str).map(str::to_owned))
        .collect();
    if parts.is_empty() {
        parts.push("Pending".to_owned());
    }
    if v.pointer("/status/certificate").is_some() {
        parts.push("Issued".to_owned());
    }
    json!(parts.join(","))
}

/// RoleBindings: `Kind/name` of the role.
pub fn binding_role(v: &Value) -> Value {
    json!(format!(
        "{}/{}",
        s(v, "roleRef.kind").unwrap_or_default(),
        s(v, "roleRef.name").unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_upstream() {
        let cases = [
            (-5, "<invalid>"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 600, "3h10m"),
            (10 * 3600, "10h"),
            (50 * 3600, "2d2h"),
            (30 * 86400, "30d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (10 * 365 * 86400, "10y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn pod_cells() {
        let p = json!({
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"ready": true, "restartCount": 2, "state": {"running": {}}},
                {"ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        assert_eq!(pod_ready(&p), json!("1/2"));
        assert_eq!(pod_restarts(&p), json!("3"));
        assert_eq!(pod_status(&p), json!("CrashLoopBackOff"));
        assert_eq!(pod_status(&json!({})), json!("Pending"));
    }

    #[test]
    fn service_cells() {
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}], "selector": {"b": "2", "a": "1"}}});
        assert_eq!(service_ports(&svc), json!("80:30080/TCP"));
        assert_eq!(service_external_ip(&svc), json!("<none>"));
        assert_eq!(service_selector(&svc), json!("a=1,b=2"));
    }

    #[test]
    fn workload_cells() {
        let d = json!({"spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
            "status": {"readyReplicas": 2}});
        assert_eq!(ready_of_replicas(&d), json!("2/3"));
        assert_eq!(template_images(&d), json!("nginx"));
        assert_eq!(workload_selector(&d), json!("app=web"));
    }
}

/// An APIService's backend: `Local`, or the Service's `namespace/name`.
pub fn apiservice_service(v: &Value) -> Value {
    match v.pointer("/spec/service") {
        Some(Value::Object(s)) => json!(format!(
            "{}/{}",
            s.get("namespace").and_then(Value::as_str).unwrap_or(""),
            s.get("name").and_then(Value::as_str).unwrap_or("")
        )),
        _ => json!("Local"),
    }
}

/// An APIService's Available condition: `True`, or `False (Reason)`.
pub fn apiservice_available(v: &Value) -> Value {
    let cond = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Available"))
        });
    match cond {
        None => json!("Unknown"),
        Some(c) => {
            let status = c.get("status").and_then(Value::as_str).unwrap_or("Unknown");
            match c.get("reason").and_then(Value::as_str) {
                Some(r) if status != "True" && !r.is_empty() => json!(format!("{status} ({r})")),
                _ => json!(status),
            }
        }
    }
}

/// One step of a printer-column JSONPath.
enum Step<'a> {
    Field(&'a str),
    Index(usize),
    All,
    /// `[?(@.path=="value")]`: the items whose `path` equals `value`.
    Filter(&'a str, &'a str),
}

fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    rest = rest.strip_prefix('$').unwrap_or(rest);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                out.push(Step::Field(&r[..end]));
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("[?(@") {
            let close = r.find(")]")?;
            let cond = &r[..close];
            let (lhs, rhs) = cond.split_once("==")?;
            let rhs = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
            out.push(Step::Filter(lhs.trim().trim_start_matches('.'), rhs));
            rest = &r[close + 2..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let close = r.find(']')?;
            let inner = r[..close].trim();
            if inner == "*" {
                out.push(Step::All);
            } else if let Some(q) = inner.strip_prefix('\'').and_then(|q| q.strip_suffix('\'')) {
                out.push(Step::Field(q));
            } else {
                out.push(Step::Index(inner.parse().ok()?));
            }
            rest = &r[close + 1..];
        } else {
            return None;
        }
    }
    Some(out)
}

/// Evaluate a CRD printer column's JSONPath (`.spec.replicas`,
/// `.status.conditions[?(@.type=="Ready")].status`, `.items[0].name`) and
/// return its first result, as upstream's Table conversion shows it: `None`
/// when nothing matches.
pub fn json_path(obj: &Value, path: &str) -> Option<Value> {
    let mut cur: Vec<&Value> = vec![obj];
    for step in steps(path)? {
        let mut next = Vec::new();
        for v in cur {
            match &step {
                Step::Field(f) => next.extend(v.get(*f)),
                Step::Index(i) => next.extend(v.get(*i)),
                Step::All => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(o) => next.extend(o.values()),
                    _ => {}
                },
                Step::Filter(field, want) => {
                    for item in v.as_array().into_iter().flatten() {
                        let got = field.split('.').try_fold(item, |at, seg| at.get(seg));
                        let matches = match got {
                            Some(Value::String(s)) => s == want,
                            Some(Value::Bool(b)) => want.parse() == Ok(*b),
                            Some(Value::Number(n)) => want.parse::<f64>().ok() == n.as_f64(),
                            _ => false,
                        };
                        if matches {
                            next.push(item);
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur.first().map(|v| (*v).clone())
}

#[cfg(test)]
mod json_path_tests {
    use super::json_path;
    use serde_json::json;

    #[test]
    fn printer_column_paths_select_as_upstream() {
        let o = json!({
            "spec": {"replicas": 3, "ports": [{"name": "a"}, {"name": "b"}]},
            "status": {"conditions": [
                {"type": "Synced", "status": "False"},
                {"type": "Ready", "status": "True"},
            ]},
        });
        assert_eq!(json_path(&o, ".spec.replicas"), Some(json!(3)));
        assert_eq!(json_path(&o, ".spec.ports[1].name"), Some(json!("b")));
        assert_eq!(json_path(&o, ".spec.ports[*].name"), Some(json!("a")));
        assert_eq!(
            json_path(&o, r#".status.conditions[?(@.type=="Ready")].status"#),
            Some(json!("True"))
        );
        assert_eq!(json_path(&o, ".spec.missing"), None);
        assert_eq!(json_path(&o, ".spec[unclosed"), None);
    }
}
