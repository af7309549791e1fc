//! PodSecurity: the Pod Security Standards (privileged, baseline,
//! restricted) a namespace asks for with its
//! `pod-security.kubernetes.io/{enforce,audit,warn}[-version]` labels.
//!
//! - `enforce` refuses a pod that violates the level:
//!   `pods "x" is forbidden: violates PodSecurity "restricted:latest": ...`;
//! - `warn` sends `would violate PodSecurity ...` as a warning, for pods and
//!   for the pod templates of workloads (which are never refused, as
//!   upstream: their pods are);
//! - `audit` adds the violations to the request's audit annotations.
//!
//! The checks and their wording are upstream's, in upstream's order (the
//! baseline checks by name, then the restricted ones). Not checked: AppArmor
//! and SELinux options, which Kestrel's runtime does not apply, and Windows
//! host processes.

use std::collections::BTreeSet;

use kestrel_api::ApiError;
use kestrel_api::registry;
use serde_json::Value;

use super::chain::{Attributes, Operation};
use crate::state::AppState;

const PREFIX: &str = "pod-security.kubernetes.io/";

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Anything goes.
    Privileged,
    /// Known privilege escalations blocked.
    Baseline,
    /// Hardened.
    Restricted,
}

impl Level {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "privileged" => Some(Self::Privileged),
            "baseline" => Some(Self::Baseline),
            "restricted" => Some(Self::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

/// Capabilities the baseline level allows adding (the container runtime's
/// default set).
const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls the baseline level allows.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// Volume types the restricted level allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Fields of a Volume that are not its source.
const VOLUME_META: &[&str] = &["name"];

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn b(v: &Value, ptr: &str) -> Option<bool> {
    v.pointer(ptr).and_then(Value::as_bool)
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase(names: &[String], singular_verb: &str, plural_verb: &str) -> String {
    if names.len() == 1 {
        format!("container {} {singular_verb}", quoted(names))
    } else {
        format!("containers {} {plural_verb}", quoted(names))
    }
}

/// One failed check: upstream's reason and detail.
struct Violation {
    reason: &'static str,
    detail: String,
}

fn all_containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect()
}

fn cname(c: &Value) -> String {
    s(c, "/name").unwrap_or_default().to_owned()
}

/// The containers that add capabilities `allowed` refuses, and those
/// capabilities (sorted).
fn added_caps(containers: &[&Value], allowed: impl Fn(&str) -> bool) -> (Vec<String>, Vec<String>) {
    let mut names = Vec::new();
    let mut caps = BTreeSet::new();
    for c in containers {
        let bad: Vec<&str> = c
            .pointer("/securityContext/capabilities/add")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|cap| !allowed(cap))
            .collect();
        if !bad.is_empty() {
            names.push(cname(c));
            caps.extend(bad.into_iter().map(str::to_owned));
        }
    }
    (names, caps.into_iter().collect())
}

/// The names of the containers `pred` holds for.
fn named(containers: &[&Value], pred: impl Fn(&Value) -> bool) -> Vec<String> {
    containers
        .iter()
        .filter(|c| pred(c))
        .map(|c| cname(c))
        .collect()
}

/// Evaluate `spec` (a PodSpec, with the pod's metadata for annotations)
/// against `level`.
fn evaluate(level: Level, spec: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let containers = all_containers(spec);
    // --- baseline, by check name ---
    // capabilities_baseline (restricted replaces it with its own check)
    if level == Level::Baseline {
        let (bad_containers, caps) = added_caps(&containers, |cap| BASELINE_CAPS.contains(&cap));
        if !bad_containers.is_empty() {
            out.push(Violation {
                reason: "non-default capabilities",
                detail: format!(
                    "{} must not include {} in securityContext.capabilities.add",
                    containers_phrase(&bad_containers, "", "").trim_end(),
                    quoted(&caps)
                ),
            });
        }
    }
    // hostNamespaces
    let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|k| b(spec, &format!("/{k}")) == Some(true))
        .map(|k| format!("{k}=true"))
        .collect();
    if !host.is_empty() {
        out.push(Violation {
            reason: "host namespaces",
            detail: host.join(", "),
        });
    }
    let volumes: Vec<&Value> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    // hostPathVolumes
    let host_paths: Vec<String> = volumes
        .iter()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| s(v, "/name").unwrap_or_default().to_owned())
        .collect();
    if !host_paths.is_empty() {
        let noun = if host_paths.len() == 1 {
            "volume"
        } else {
            "volumes"
        };
        out.push(Violation {
            reason: "hostPath volumes",
            detail: format!("{noun} {}", quoted(&host_paths)),
        });
    }
    // hostPorts
    let mut port_containers = Vec::new();
    let mut ports = Vec::new();
    for c in &containers {
        let mut any = false;
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(hp) = p
                .get("hostPort")
                .and_then(Value::as_i64)
                .filter(|p| *p != 0)
            {
                ports.push(hp.to_string());
                any = true;
            }
        }
        if any {
            port_containers.push(cname(c));
        }
    }
    if !port_containers.is_empty() {
        let noun = if ports.len() == 1 {
            "hostPort"
        } else {
            "hostPorts"
        };
        out.push(Violation {
            reason: "hostPort",
            detail: format!(
                "{} {noun} {}",
                containers_phrase(&port_containers, "uses", "use"),
                ports.join(", ")
            ),
        });
    }
    // privileged
    let privileged: Vec<String> = named(&containers, |c| {
        b(c, "/securityContext/privileged") == Some(true)
    });
    if !privileged.is_empty() {
        out.push(Violation {
            reason: "privileged",
            detail: format!(
                "{} must not set securityContext.privileged=true",
                containers_phrase(&privileged, "", "").trim_end()
            ),
        });
    }
    // procMount
    let unmasked: Vec<String> = named(&containers, |c| {
        s(c, "/securityContext/procMount").is_some_and(|m| m != "Default")
    });
    if !unmasked.is_empty() {
        out.push(Violation {
            reason: "procMount",
            detail: format!(
                "{} must not set securityContext.procMount to \"Unmasked\"",
                containers_phrase(&unmasked, "", "").trim_end()
            ),
        });
    }
    // seccompProfile_baseline (restricted replaces it)
    if level == Level::Baseline {
        let mut parts = Vec::new();
        if s(spec, "/securityContext/seccompProfile/type") == Some("Unconfined") {
            parts.push(
                "pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_owned(),
            );
        }
        let bad: Vec<String> = named(&containers, |c| {
            s(c, "/securityContext/seccompProfile/type") == Some("Unconfined")
        });
        if !bad.is_empty() {
            parts.push(format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                containers_phrase(&bad, "", "").trim_end()
            ));
        }
        if !parts.is_empty() {
            out.push(Violation {
                reason: "seccompProfile",
                detail: parts.join("; "),
            });
        }
    }
    // sysctls
    let sysctls: Vec<String> = spec
        .pointer("/securityContext/sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|x| s(x, "/name"))
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(str::to_owned)
        .collect();
    if !sysctls.is_empty() {
        out.push(Violation {
            reason: "forbidden sysctls",
            detail: sysctls.join(", "),
        });
    }
    if level < Level::Restricted {
        return out;
    }
    // --- restricted, by check name ---
    // allowPrivilegeEscalation
    let escalating: Vec<String> = named(&containers, |c| {
        b(c, "/securityContext/allowPrivilegeEscalation") != Some(false)
    });
    if !escalating.is_empty() {
        out.push(Violation {
            reason: "allowPrivilegeEscalation != false",
            detail: format!(
                "{} must set securityContext.allowPrivilegeEscalation=false",
                containers_phrase(&escalating, "", "").trim_end()
            ),
        });
    }
    // capabilities_restricted
    let mut parts = Vec::new();
    let no_drop: Vec<String> = named(&containers, |c| {
        !c.pointer("/securityContext/capabilities/drop")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x == "ALL"))
    });
    if !no_drop.is_empty() {
        parts.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&no_drop, "", "").trim_end()
        ));
    }
    let (add_containers, caps) = added_caps(&containers, |cap| cap == "NET_BIND_SERVICE");
    if !add_containers.is_empty() {
        parts.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&add_containers, "", "").trim_end(),
            quoted(&caps)
        ));
    }
    if !parts.is_empty() {
        out.push(Violation {
            reason: "unrestricted capabilities",
            detail: parts.join("; "),
        });
    }
    // restrictedVolumes
    let mut bad_vols = Vec::new();
    let mut bad_types = BTreeSet::new();
    for v in &volumes {
        let Some(o) = v.as_object() else { continue };
        for k in o.keys().filter(|k| !VOLUME_META.contains(&k.as_str())) {
            if !RESTRICTED_VOLUMES.contains(&k.as_str()) {
                bad_vols.push(s(v, "/name").unwrap_or_default().to_owned());
                bad_types.insert(k.clone());
            }
        }
    }
    if !bad_vols.is_empty() {
        let types: Vec<String> = bad_types.into_iter().collect();
        let (vn, verb, tn) = if bad_vols.len() == 1 {
            ("volume", "uses", "type")
        } else {
            ("volumes", "use", "types")
        };
        let tn = if types.len() == 1 {
            tn.trim_end_matches('s')
        } else {
            "types"
        };
        out.push(Violation {
            reason: "restricted volume types",
            detail: format!(
                "{vn} {} {verb} restricted volume {tn} {}",
                quoted(&bad_vols),
                quoted(&types)
            ),
        });
    }
    // runAsNonRoot
    let pod_non_root = b(spec, "/securityContext/runAsNonRoot");
    let mut parts = Vec::new();
    let explicit_false: Vec<String> = named(&containers, |c| {
        b(c, "/securityContext/runAsNonRoot") == Some(false)
    });
    if pod_non_root == Some(false) {
        parts.push("pod must not set securityContext.runAsNonRoot=false".to_owned());
    }
    if !explicit_false.is_empty() {
        parts.push(format!(
            "{} must not set securityContext.runAsNonRoot=false",
            containers_phrase(&explicit_false, "", "").trim_end()
        ));
    }
    if pod_non_root != Some(true) {
        let unset: Vec<String> = named(&containers, |c| {
            b(c, "/securityContext/runAsNonRoot").is_none()
        });
        if !unset.is_empty() {
            parts.push(format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&unset, "", "").trim_end()
            ));
        }
    }
    if !parts.is_empty() {
        out.push(Violation {
            reason: "runAsNonRoot != true",
            detail: parts.join("; "),
        });
    }
    // runAsUser
    let mut parts = Vec::new();
    if spec
        .pointer("/securityContext/runAsUser")
        .and_then(Value::as_i64)
        == Some(0)
    {
        parts.push("pod must not set runAsUser=0".to_owned());
    }
    let root: Vec<String> = named(&containers, |c| {
        c.pointer("/securityContext/runAsUser")
            .and_then(Value::as_i64)
            == Some(0)
    });
    if !root.is_empty() {
        parts.push(format!(
            "{} must not set runAsUser=0",
            containers_phrase(&root, "", "").trim_end()
        ));
    }
    if !parts.is_empty() {
        out.push(Violation {
            reason: "runAsUser=0",
            detail: parts.join("; "),
        });
    }
    // seccompProfile_restricted
    let ok_type = |t: Option<&str>| matches!(t, Some("RuntimeDefault" | "Localhost"));
    let pod_type = s(spec, "/securityContext/seccompProfile/type");
    let mut parts = Vec::new();
    if pod_type.is_some() && !ok_type(pod_type) {
        parts.push(
            "pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_owned(),
        );
    }
    let explicit_bad: Vec<String> = named(&containers, |c| {
        let t = s(c, "/securityContext/seccompProfile/type");
        t.is_some() && !ok_type(t)
    });
    if !explicit_bad.is_empty() {
        parts.push(format!(
            "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
            containers_phrase(&explicit_bad, "", "").trim_end()
        ));
    }
    if !ok_type(pod_type) {
        let unset: Vec<String> = named(&containers, |c| {
            s(c, "/securityContext/seccompProfile/type").is_none()
        });
        if !unset.is_empty() {
            parts.push(format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&unset, "", "").trim_end()
            ));
        }
    }
    if !parts.is_empty() {
        out.push(Violation {
            reason: "seccompProfile",
            detail: parts.join("; "),
        });
    }
    out
}

/// The level and version label value a namespace sets for `mode`
/// (`enforce`, `audit`, `warn`); unset or unknown levels are privileged,
/// as upstream's defaults.
fn policy(ns: &Value, mode: &str) -> (Level, String) {
    let label = |k: &str| {
        ns.pointer(&format!(
            "/metadata/labels/{}",
            format!("{PREFIX}{k}").replace('/', "~1")
        ))
        .and_then(Value::as_str)
    };
    let level = label(mode)
        .and_then(Level::parse)
        .unwrap_or(Level::Privileged);
    let version = label(&format!("{mode}-version"))
        .unwrap_or("latest")
        .to_owned();
    (level, version)
}

fn describe(vs: &[Violation]) -> String {
    vs.iter()
        .map(|v| format!("{} ({})", v.reason, v.detail))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The PodSpec to judge: a pod's own, or a workload's template.
fn pod_spec<'a>(kind: &str, obj: &'a Value) -> Option<&'a Value> {
    match kind {
        "Pod" => obj.get("spec"),
        "CronJob" => obj.pointer("/spec/jobTemplate/spec/template/spec"),
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => obj.pointer("/spec/template/spec"),
        "PodTemplate" => obj.pointer("/template/spec"),
        _ => None,
    }
}

/// Admit a pod (enforce, warn, audit) or a workload (warn, audit).
pub fn admit(
    state: &AppState,
    a: &Attributes<'_>,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if a.subresource.is_some() || a.operation == Operation::Delete || a.namespace().is_empty() {
        return Ok(());
    }
    let kind = a.kind();
    let Some(spec) = pod_spec(kind, obj) else {
        return Ok(());
    };
    // Updates that leave the pod spec alone (labels, status) are not
    // re-judged, as upstream.
    if let Some(old) = old
        && pod_spec(kind, old) == Some(spec)
    {
        return Ok(());
    }
    let Some(ns_def) = registry::lookup("", "v1", "namespaces") else {
        return Ok(());
    };
    let Some(ns) = state.cache.get(&ns_def.key(None, a.namespace())) else {
        return Ok(());
    };
    let ns = &ns.value;
    let is_pod = kind == "Pod";
    let (enforce, ev) = policy(ns, "enforce");
    if is_pod && enforce > Level::Privileged {
        let vs = evaluate(enforce, spec);
        if !vs.is_empty() {
            let name = s(obj, "/metadata/name").unwrap_or_default();
            return Err(ApiError::Forbidden(format!(
                "pods \"{name}\" is forbidden: violates PodSecurity \"{}:{ev}\": {}",
                enforce.name(),
                describe(&vs)
            )));
        }
    }
    let (warn, wv) = policy(ns, "warn");
    // Workloads are warned about the enforce level too, as upstream does,
    // so a Deployment whose pods would be refused says so at apply time.
    let mut warned = false;
    for (level, version) in [
        (warn, wv),
        (if is_pod { Level::Privileged } else { enforce }, ev),
    ] {
        if level == Level::Privileged || warned {
            continue;
        }
        let vs = evaluate(level, spec);
        if !vs.is_empty() {
            a.warn(format!(
                "would violate PodSecurity \"{}:{version}\": {}",
                level.name(),
                describe(&vs)
            ));
            warned = true;
        }
    }
    let (audit, av) = policy(ns, "audit");
    if audit > Level::Privileged {
        let vs = evaluate(audit, spec);
        if !vs.is_empty() {
            tracing::info!(
                namespace = a.namespace(),
                kind,
                violations = %format!("would violate PodSecurity \"{}:{av}\": {}", audit.name(), describe(&vs)),
                "pod-security audit"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(level: Level, spec: Value) -> String {
        describe(&evaluate(level, &spec))
    }

    #[test]
    fn restricted_wants_everything_hardened() {
        let spec = json!({"containers": [{"name": "c", "securityContext": {"privileged": true}}]});
        assert_eq!(
            text(Level::Restricted, spec),
            r#"privileged (container "c" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
        );
        let hardened = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            }}],
            "volumes": [{"name": "v", "emptyDir": {}}, {"name": "t", "projected": {"sources": []}}],
        });
        assert_eq!(text(Level::Restricted, hardened), "");
    }

    #[test]
    fn baseline_blocks_host_access() {
        let spec = json!({
            "hostNetwork": true,
            "hostPID": true,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [
                {"name": "a", "ports": [{"containerPort": 80, "hostPort": 80}], "securityContext": {"capabilities": {"add": ["NET_ADMIN", "CHOWN"]}}},
                {"name": "b", "securityContext": {"privileged": true}},
            ],
            "securityContext": {"sysctls": [{"name": "net.ipv4.ip_forward", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
        });
        assert_eq!(
            text(Level::Baseline, spec),
            r#"non-default capabilities (container "a" must not include "NET_ADMIN" in securityContext.capabilities.add), host namespaces (hostNetwork=true, hostPID=true), hostPath volumes (volume "root"), hostPort (container "a" uses hostPort 80), privileged (container "b" must not set securityContext.privileged=true), forbidden sysctls (net.ipv4.ip_forward)"#
        );
        assert_eq!(
            text(Level::Baseline, json!({"containers": [{"name": "c"}]})),
            ""
        );
        assert_eq!(text(Level::Privileged, json!({"hostNetwork": true})), "");
    }

    #[test]
    fn restricted_volume_types() {
        let spec = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}],
        });
        assert_eq!(
            text(Level::Restricted, spec),
            r#"restricted volume types (volume "n" uses restricted volume type "nfs")"#
        );
    }
}
