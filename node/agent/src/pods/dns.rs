//! A pod's resolv.conf, as the kubelet composes it (CRI `DNSConfig`, which
//! containerd writes into the sandbox): by `dnsPolicy`, then merged with
//! `spec.dnsConfig`, then cut to the resolver's limits with upstream's
//! `DNSConfigForming` warning.
//!
//! - `ClusterFirst` (the default): the cluster DNS Service, the search path
//!   `<ns>.svc.<domain> svc.<domain> <domain>` followed by the host's, and
//!   `ndots:5`. With `hostNetwork` it behaves as `Default`, unless the
//!   policy is `ClusterFirstWithHostNet`.
//! - `Default`: the host's resolv.conf (the agent's `--resolv-conf`).
//! - `None`: only `spec.dnsConfig`.

use k8s_openapi::api::core::v1::Pod;
use kestrel_cri::v1;
use kestrel_dns::ResolvConf;

/// The resolver's limits, as the kubelet enforces them.
pub const MAX_NAMESERVERS: usize = 3;
/// Search domains kept at most.
pub const MAX_SEARCHES: usize = 32;
/// Characters of the search line kept at most.
pub const MAX_SEARCH_CHARS: usize = 2048;

/// What the node knows for its pods' DNS.
#[derive(Clone, Debug, Default)]
pub struct NodeDns {
    /// The cluster DNS Service addresses (`--cluster-dns`); empty when the
    /// node has none.
    pub cluster_dns: Vec<String>,
    /// The cluster domain (`--cluster-domain`).
    pub domain: String,
    /// The host's resolv.conf (`--resolv-conf`).
    pub host: ResolvConf,
}

/// A warning for the pod's Events: (reason, message).
pub type Warning = (&'static str, String);

/// The sandbox's DNS configuration, and the warnings to record.
pub fn config(pod: &Pod, node: &NodeDns) -> (v1::DnsConfig, Vec<Warning>) {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let mut warnings = Vec::new();
    let host = || v1::DnsConfig {
        servers: node
            .host
            .nameservers
            .iter()
            .map(ToString::to_string)
            .collect(),
        searches: node.host.searches.clone(),
        options: node.host.options.clone(),
    };
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut dns = match policy {
        "None" => v1::DnsConfig::default(),
        _ if cluster && node.cluster_dns.is_empty() => {
            warnings.push((
                "MissingClusterDNS",
                format!(
                    "pod: {:?}. kubelet does not have ClusterDNS IP configured and cannot create Pod using \"{policy}\" policy. Falling back to \"Default\" policy.",
                    pod.metadata.name.as_deref().unwrap_or_default()
                ),
            ));
            host()
        }
        _ if cluster => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let d = node.domain.trim_end_matches('.');
            let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_owned()];
            searches.extend(node.host.searches.iter().cloned());
            v1::DnsConfig {
                servers: node.cluster_dns.clone(),
                searches,
                options: vec!["ndots:5".to_owned()],
            }
        }
        _ => host(),
    };
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        dns.servers
            .extend(extra.nameservers.iter().flatten().cloned());
        dns.servers = dedup(dns.servers);
        dns.searches
            .extend(extra.searches.iter().flatten().cloned());
        for o in extra.options.iter().flatten() {
            let Some(name) = o.name.as_deref() else {
                continue;
            };
            let text = match o.value.as_deref() {
                Some(v) => format!("{name}:{v}"),
                None => name.to_owned(),
            };
            // The pod's option replaces the policy's of the same name.
            match dns.options.iter_mut().find(|x| option_name(x) == name) {
                Some(slot) => *slot = text,
                None => dns.options.push(text),
            }
        }
    }
    dns.searches = dedup(dns.searches);
    dns.options = dedup(dns.options);
    if dns.servers.len() > MAX_NAMESERVERS {
        dns.servers.truncate(MAX_NAMESERVERS);
        warnings.push((
            "DNSConfigForming",
            format!(
                "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}",
                dns.servers.join(" ")
            ),
        ));
    }
    if fit_searches(&mut dns.searches) {
        warnings.push((
            "DNSConfigForming",
            format!(
                "Search Line limits were exceeded, some search paths have been omitted, the applied search line is: {}",
                dns.searches.join(" ")
            ),
        ));
    }
    (dns, warnings)
}

fn option_name(o: &str) -> &str {
    o.split_once(':').map_or(o, |(n, _)| n)
}

/// Drops repeats, keeping the first of each.
fn dedup(v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.into_iter().filter(|s| seen.insert(s.clone())).collect()
}

/// Cuts the search list to 32 domains and 2,048 characters (joined by
/// spaces); says whether anything was cut.
fn fit_searches(searches: &mut Vec<String>) -> bool {
    let mut cut = false;
    if searches.len() > MAX_SEARCHES {
        searches.truncate(MAX_SEARCHES);
        cut = true;
    }
    while searches.len() > 1 && searches.join(" ").len() > MAX_SEARCH_CHARS {
        searches.pop();
        cut = true;
    }
    if searches.len() == 1 && searches[0].len() > MAX_SEARCH_CHARS {
        searches.clear();
        cut = true;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodDNSConfig, PodDNSConfigOption, PodSpec};

    fn node() -> NodeDns {
        NodeDns {
            cluster_dns: vec!["10.43.0.10".into()],
            domain: "cluster.local".into(),
            host: ResolvConf::parse("nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"),
        }
    }

    fn pod(policy: Option<&str>, host_network: bool, extra: Option<PodDNSConfig>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("p".into());
        p.metadata.namespace = Some("team".into());
        p.spec = Some(PodSpec {
            dns_policy: policy.map(str::to_owned),
            host_network: Some(host_network),
            dns_config: extra,
            ..Default::default()
        });
        p
    }

    #[test]
    fn cluster_first() {
        let (d, w) = config(&pod(None, false, None), &node());
        assert_eq!(d.servers, ["10.43.0.10"]);
        assert_eq!(
            d.searches,
            [
                "team.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ]
        );
        assert_eq!(d.options, ["ndots:5"]);
        assert!(w.is_empty());
    }

    #[test]
    fn host_network_and_default_use_the_host() {
        for p in [
            pod(Some("ClusterFirst"), true, None),
            pod(Some("Default"), false, None),
        ] {
            let (d, _) = config(&p, &node());
            assert_eq!(d.servers, ["192.0.2.53"]);
            assert_eq!(d.searches, ["corp.example"]);
            assert_eq!(d.options, ["edns0"]);
        }
        let (d, _) = config(&pod(Some("ClusterFirstWithHostNet"), true, None), &node());
        assert_eq!(d.servers, ["10.43.0.10"]);
    }

    #[test]
    fn none_and_the_merge() {
        let extra = PodDNSConfig {
            nameservers: Some(vec!["10.43.0.10".into(), "192.0.2.1".into()]),
            searches: Some(vec!["svc.cluster.local".into(), "extra.example".into()]),
            options: Some(vec![
                PodDNSConfigOption {
                    name: Some("ndots".into()),
                    value: Some("2".into()),
                },
                PodDNSConfigOption {
                    name: Some("single-request".into()),
                    value: None,
                },
            ]),
        };
        let (d, _) = config(&pod(None, false, Some(extra.clone())), &node());
        assert_eq!(d.servers, ["10.43.0.10", "192.0.2.1"]);
        assert_eq!(d.searches.last().map(String::as_str), Some("extra.example"));
        assert_eq!(
            d.searches
                .iter()
                .filter(|s| *s == "svc.cluster.local")
                .count(),
            1
        );
        assert_eq!(d.options, ["ndots:2", "single-request"]);
        let (d, _) = config(&pod(Some("None"), false, Some(extra)), &node());
        assert_eq!(d.servers, ["10.43.0.10", "192.0.2.1"]);
        assert_eq!(d.searches, ["svc.cluster.local", "extra.example"]);
    }

    #[test]
    fn limits_with_upstream_warnings() {
        let extra = PodDNSConfig {
            nameservers: Some((1..=4).map(|i| format!("192.0.2.{i}")).collect()),
            searches: Some((0..40).map(|i| format!("d{i}.example")).collect()),
            options: None,
        };
        let (d, w) = config(&pod(Some("None"), false, Some(extra)), &node());
        assert_eq!(d.servers.len(), 3);
        assert_eq!(d.searches.len(), 32);
        assert_eq!(w.len(), 2);
        assert!(w[0].1.starts_with("Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: 192.0.2.1 192.0.2.2 192.0.2.3"));
        assert!(w[1].1.starts_with("Search Line limits were exceeded"));
        let long = PodDNSConfig {
            searches: Some((0..10).map(|i| format!("{i}{}", "x".repeat(250))).collect()),
            ..Default::default()
        };
        let (d, w) = config(&pod(Some("None"), false, Some(long)), &node());
        assert!(d.searches.join(" ").len() <= MAX_SEARCH_CHARS);
        assert_eq!(d.searches.len(), 8);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn no_cluster_dns_falls_back_with_an_event() {
        let mut n = node();
        n.cluster_dns.clear();
        let (d, w) = config(&pod(None, false, None), &n);
        assert_eq!(d.servers, ["192.0.2.53"]);
        assert_eq!(w[0].0, "MissingClusterDNS");
    }
}
