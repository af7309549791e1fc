//! A container's environment, resolved as the kubelet resolves it:
//! Service variables first, then envFrom, then env in order, with `$(VAR)`
//! references expanded against what came before.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::api::Api;

use super::resources;

/// Upstream's `$(VAR)` expansion: `$$` escapes, unknown references stay.
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                match env.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&s[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The Docker-links style variables for one Service.
fn service_vars(svc: &Service, out: &mut BTreeMap<String, String>) {
    let Some(spec) = &svc.spec else { return };
    let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
    else {
        return;
    };
    let name = svc
        .metadata
        .name
        .as_deref()
        .unwrap_or_default()
        .to_uppercase()
        .replace('-', "_");
    let ports = spec.ports.as_deref().unwrap_or_default();
    let Some(first) = ports.first() else { return };
    out.insert(format!("{name}_SERVICE_HOST"), ip.to_owned());
    out.insert(format!("{name}_SERVICE_PORT"), first.port.to_string());
    for p in ports {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if let Some(pn) = &p.name {
            out.insert(
                format!(
                    "{name}_SERVICE_PORT_{}",
                    pn.to_uppercase().replace('-', "_")
                ),
                p.port.to_string(),
            );
        }
        let prefix = format!("{name}_PORT_{}_{}", p.port, proto.to_uppercase());
        let url = format!("{}://{ip}:{}", proto.to_lowercase(), p.port);
        out.insert(prefix.clone(), url);
        out.insert(format!("{prefix}_PROTO"), proto.to_lowercase());
        out.insert(format!("{prefix}_PORT"), p.port.to_string());
        out.insert(format!("{prefix}_ADDR"), ip.to_owned());
    }
    out.insert(
        format!("{name}_PORT"),
        format!(
            "{}://{ip}:{}",
            first.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
            first.port
        ),
    );
}

/// A `fieldRef` value.
pub fn field_ref(pod: &Pod, path: &str, pod_ip: &str, host_ip: &str) -> anyhow::Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let sub = |prefix: &str| path.strip_prefix(prefix).and_then(|r| r.strip_suffix("']"));
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => pod_ip.to_owned(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_owned(),
        "metadata.labels" | "metadata.annotations" => {
            let m = if path == "metadata.labels" {
                &meta.labels
            } else {
                &meta.annotations
            };
            m.iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        _ => {
            if let Some(k) = sub("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = sub("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                bail!("unsupported fieldRef fieldPath {path:?}")
            }
        }
    })
}

/// Looks up ConfigMaps and Secrets in the pod's namespace, once each.
pub struct Sources {
    client: kube::Client,
    ns: String,
    config_maps: BTreeMap<String, Option<ConfigMap>>,
    secrets: BTreeMap<String, Option<Secret>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

impl Sources {
    /// Sources for pods in `ns`.
    pub fn new(client: kube::Client, ns: &str) -> Self {
        Self {
            client,
            ns: ns.to_owned(),
            config_maps: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }
    }

    /// A ConfigMap's data (binaryData included), or None if it does not exist.
    pub async fn config_map(
        &mut self,
        name: &str,
    ) -> anyhow::Result<Option<BTreeMap<String, Vec<u8>>>> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.ns);
            let cm = api
                .get_opt(name)
                .await
                .with_context(|| format!("reading configmap {name:?}"))?;
            self.config_maps.insert(name.to_owned(), cm);
        }
        Ok(self.config_maps[name].as_ref().map(|cm| {
            let mut out: BTreeMap<String, Vec<u8>> = cm
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect();
            out.extend(
                cm.binary_data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone())),
            );
            out
        }))
    }

    /// A Secret's data, or None if it does not exist.
    pub async fn secret(
        &mut self,
        name: &str,
    ) -> anyhow::Result<Option<BTreeMap<String, Vec<u8>>>> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
            let s = api
                .get_opt(name)
                .await
                .with_context(|| format!("reading secret {name:?}"))?;
            self.secrets.insert(name.to_owned(), s);
        }
        Ok(self.secrets[name].as_ref().map(|s| {
            let mut out: BTreeMap<String, Vec<u8>> = s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            out.extend(
                s.string_data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
            );
            out
        }))
    }
}

/// A configuration error the user must fix (CreateContainerConfigError).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The environment of `c` in `pod`, in order.
pub async fn resolve(
    pod: &Pod,
    c: &Container,
    services: &[Service],
    sources: &mut Sources,
    pod_ip: &str,
    host_ip: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let set =
        |env: &mut BTreeMap<String, String>, order: &mut Vec<String>, k: String, v: String| {
            if env.insert(k.clone(), v).is_none() {
                order.push(k);
            }
        };
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut svc_vars = BTreeMap::new();
    for s in services {
        let same_ns = s.metadata.namespace.as_deref() == Some(ns);
        let master = s.metadata.namespace.as_deref() == Some("default")
            && s.metadata.name.as_deref() == Some("kubernetes");
        if master || (links && same_ns) {
            service_vars(s, &mut svc_vars);
        }
    }
    for (k, v) in svc_vars {
        set(&mut env, &mut order, k, v);
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(r) = &from.config_map_ref {
            (
                sources.config_map(&r.name).await?,
                r.optional.unwrap_or(false),
                ("configmap", r.name.clone()),
            )
        } else if let Some(r) = &from.secret_ref {
            (
                sources.secret(&r.name).await?,
                r.optional.unwrap_or(false),
                ("secret", r.name.clone()),
            )
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    set(
                        &mut env,
                        &mut order,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
            None if optional => {}
            None => return Err(ConfigError(format!("{} {:?} not found", what.0, what.1)).into()),
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            expand(v, &env)
        } else if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                field_ref(pod, &f.field_path, pod_ip, host_ip)
                    .map_err(|e| ConfigError(e.to_string()))?
            } else if let Some(r) = &from.resource_field_ref {
                let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
                    Some(n) => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.iter().find(|c| c.name == n))
                        .ok_or_else(|| {
                            ConfigError(format!("resourceFieldRef: no container {n:?}"))
                        })?,
                    None => c,
                };
                resources::field_value(target, &r.resource, r.divisor.as_ref())
                    .map_err(|e| ConfigError(e.to_string()))?
            } else if let Some(r) = &from.config_map_key_ref {
                match sources.config_map(&r.name).await? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if r.optional.unwrap_or(false) => continue,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            ))
                            .into());
                        }
                    },
                    None if r.optional.unwrap_or(false) => continue,
                    None => {
                        return Err(ConfigError(format!("configmap {:?} not found", r.name)).into());
                    }
                }
            } else if let Some(r) = &from.secret_key_ref {
                match sources.secret(&r.name).await? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if r.optional.unwrap_or(false) => continue,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            ))
                            .into());
                        }
                    },
                    None if r.optional.unwrap_or(false) => continue,
                    None => {
                        return Err(ConfigError(format!("secret {:?} not found", r.name)).into());
                    }
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut env, &mut order, e.name.clone(), value);
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = env.remove(&k).unwrap_or_default();
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_upstream() {
        let env: BTreeMap<String, String> = [
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "two".to_owned()),
        ]
        .into();
        assert_eq!(expand("$(A)-$(B)", &env), "1-two");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$(C)", &env), "$(C)");
        assert_eq!(expand("$(A", &env), "$(A");
        assert_eq!(expand("é$(A)$", &env), "é1$");
    }

    #[test]
    fn service_variables_match_docker_links() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "redis-primary", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.11", "ports": [
                {"name": "db", "port": 6379, "protocol": "TCP"}]}
        }))
        .expect("service");
        let mut out = BTreeMap::new();
        service_vars(&svc, &mut out);
        assert_eq!(out["REDIS_PRIMARY_SERVICE_HOST"], "10.43.0.11");
        assert_eq!(out["REDIS_PRIMARY_SERVICE_PORT"], "6379");
        assert_eq!(out["REDIS_PRIMARY_SERVICE_PORT_DB"], "6379");
        assert_eq!(out["REDIS_PRIMARY_PORT"], "tcp://10.43.0.11:6379");
        assert_eq!(out["REDIS_PRIMARY_PORT_6379_TCP_ADDR"], "10.43.0.11");
        assert_eq!(out["REDIS_PRIMARY_PORT_6379_TCP_PROTO"], "tcp");
    }
}
