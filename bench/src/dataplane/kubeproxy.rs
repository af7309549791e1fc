//! kube-proxy's rule layouts, generated for a [`Svc`] set, so that the
//! benchmark can program a node exactly as kube-proxy would without a
//! cluster, and time `iptables-restore` and `nft -f` on them.
//!
//! Where each shape comes from (Kubernetes `pkg/proxy`, 1.28 and later):
//!
//! - iptables mode, `pkg/proxy/iptables/proxier.go` (`syncProxyRules`,
//!   `writeServiceToEndpointRules`, `servicePortChainName`,
//!   `servicePortEndpointChainName`) and the expected dumps in its
//!   `proxier_test.go`: the nat table's `PREROUTING`/`OUTPUT` jump to
//!   `KUBE-SERVICES`, one rule per ClusterIP port there (`-d VIP -p proto
//!   --dport P -j KUBE-SVC-<hash>`), the NodePort rule last (`-m addrtype
//!   --dst-type LOCAL -j KUBE-NODEPORTS`); each `KUBE-SVC-*` starts with the
//!   masquerade rule for sources outside the cluster CIDR (`! -s
//!   clusterCIDR -j KUBE-MARK-MASQ`, the LocalDetector by CIDR) and then
//!   picks an endpoint with `-m statistic --mode random --probability
//!   1/(n-i)` for every endpoint but the last; each `KUBE-SEP-*` masquerades
//!   hairpin traffic (`-s EP -j KUBE-MARK-MASQ`) and DNATs; `KUBE-NODEPORTS`
//!   jumps to `KUBE-EXT-*`, which marks for masquerade and jumps to the
//!   service chain; `KUBE-POSTROUTING` masquerades marked packets
//!   (`--random-fully`) after clearing the mark; the filter table's
//!   `KUBE-FORWARD` accepts marked and established traffic. Chain names are
//!   `KUBE-SVC-`/`KUBE-SEP-`/`KUBE-EXT-` + the first 16 characters of the
//!   base32 of SHA-256(port name + protocol [+ endpoint]). A full sync is
//!   one `iptables-restore --noflush --counters`; a partial sync (the
//!   default since 1.27, `MinimizeIPTablesRestore`) rewrites the top-level
//!   chains in full but only the changed service's own chains. Past 1,000
//!   endpoints (`largeClusterEndpointsThreshold`) kube-proxy runs in "large
//!   cluster mode" and drops the per-endpoint comments (the `-> endpoint`
//!   jumps and the `KUBE-SEP-*` rules); so does this generator.
//! - nftables mode, `pkg/proxy/nftables/proxier.go` and the `baseRules` and
//!   expected output of its `proxier_test.go`: one `ip kube-proxy` table;
//!   `nat-prerouting`/`nat-output` jump to `services`, which is two
//!   verdict-map lookups (`ip daddr . meta l4proto . th dport vmap
//!   @service-ips`, and `@service-nodeports` for node addresses); each
//!   `service-<hash>-ns/name/proto/port` chain masquerades non-cluster
//!   sources and picks an endpoint with `numgen random mod N vmap { i :
//!   goto endpoint-... }`; each endpoint chain masquerades hairpin traffic
//!   and DNATs; `external-*` chains mark NodePort traffic for
//!   masquerade; `masquerading` in `nat-postrouting` masquerades marked
//!   packets `fully-random`; the filter chains (`filter-forward`,
//!   `filter-input`, ...) check `ct state new` packets against the
//!   no-endpoint and cluster-IP maps.
//!
//! The generators here are written from those descriptions; only the
//! shapes a pod → ClusterIP and an outside → NodePort packet meet are
//! reproduced (no LoadBalancer, firewall, affinity or eTP=Local rules: the
//! measured Services use none of them).

use std::fmt::Write as _;

use sha2::{Digest as _, Sha256};

use super::services::{NAMESPACE, Svc, SvcPort};

/// The masquerade mark kube-proxy uses by default.
const MASQ_MARK: &str = "0x4000";

/// What the generators need to know about the node.
#[derive(Clone, Debug)]
pub struct NodeRules {
    /// The cluster's pod CIDR (the local-traffic detector).
    pub cluster_cidr: String,
    /// The service CIDR (nftables drops traffic to unallocated ClusterIPs).
    pub service_cidr: String,
    /// The node's addresses that accept NodePorts.
    pub node_ip: String,
}

/// RFC 4648 base32 (Go's `base32.StdEncoding`), unpadded.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

fn hash(text: &str, len: usize) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut s = base32(&digest);
    s.truncate(len);
    s
}

fn endpoint(ip: &std::net::Ipv4Addr, port: &SvcPort) -> String {
    format!("{ip}:{}", port.target)
}

/// `KUBE-SVC-<hash>` of a service port.
pub fn svc_chain(svc: &Svc, port: &SvcPort) -> String {
    let proto = port.proto.lower();
    format!(
        "KUBE-SVC-{}",
        hash(&format!("{}{proto}", svc.port_name(port)), 16)
    )
}

/// `KUBE-EXT-<hash>`: the same hash as the service chain.
pub fn ext_chain(svc: &Svc, port: &SvcPort) -> String {
    svc_chain(svc, port).replacen("KUBE-SVC-", "KUBE-EXT-", 1)
}

/// `KUBE-SEP-<hash>` of one endpoint of a service port.
pub fn sep_chain(svc: &Svc, port: &SvcPort, ep: &std::net::Ipv4Addr) -> String {
    let proto = port.proto.lower();
    let text = format!("{}{proto}{}", svc.port_name(port), endpoint(ep, port));
    format!("KUBE-SEP-{}", hash(&text, 16))
}

/// The rules kube-proxy installs once, outside its restores (`iptables -I`
/// of the jumps from the built-in chains). An `iptables-restore --noflush`
/// input.
pub fn iptables_base() -> String {
    let mut s = String::new();
    s.push_str("*filter\n");
    for c in [
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
        "KUBE-SERVICES",
        "KUBE-FIREWALL",
    ] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    s.push_str(
        "-I INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -I INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
         -I INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -I FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -I FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -I FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -I FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -I OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -I OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         COMMIT\n",
    );
    s.push_str("*nat\n");
    for c in ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    s.push_str(
        "-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -I OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -I POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         COMMIT\n",
    );
    s
}

fn filter_table(s: &mut String) {
    s.push_str("*filter\n");
    for c in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FIREWALL",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    let _ = writeln!(
        s,
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT"
    );
}

/// The nat table's fixed chains and `KUBE-SERVICES`/`KUBE-NODEPORTS` in
/// full (what every sync, full or partial, writes).
fn nat_top(s: &mut String, services: &[Svc]) {
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    let _ = writeln!(
        s,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"
    );
    for svc in services {
        for port in &svc.ports {
            let p = port.proto.lower();
            let _ = writeln!(
                s,
                "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m {p} -p {p} -d {} --dport {} -j {}",
                svc.port_name(port),
                svc.vip,
                port.port,
                svc_chain(svc, port)
            );
            if let Some(np) = port.node_port {
                let _ = writeln!(
                    s,
                    "-A KUBE-NODEPORTS -m comment --comment {} -m {p} -p {p} --dport {np} -j {}",
                    svc.port_name(port),
                    ext_chain(svc, port)
                );
            }
        }
    }
    s.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
}

/// kube-proxy's `largeClusterEndpointsThreshold`: past this many endpoints
/// (summed over every service port) it runs in "large cluster mode".
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// Whether kube-proxy would be in large cluster mode for `services`: it
/// then leaves the per-endpoint comments out (`appendServiceCommentLocked`),
/// which shrinks the nat table by about 40 %.
fn large_cluster(services: &[Svc]) -> bool {
    let endpoints: usize = services
        .iter()
        .map(|s| s.endpoints.len() * s.ports.len())
        .sum();
    endpoints > LARGE_CLUSTER_ENDPOINTS
}

/// `-m comment --comment TEXT ` unless kube-proxy leaves it out.
fn service_comment(large: bool, text: &str) -> String {
    if large {
        String::new()
    } else {
        format!("-m comment --comment {text} ")
    }
}

/// One service's own chains (declarations and rules); `large` as
/// [`large_cluster`] says.
fn iptables_service(
    decl: &mut String,
    rules: &mut String,
    node: &NodeRules,
    svc: &Svc,
    large: bool,
) {
    let n = svc.endpoints.len();
    for port in &svc.ports {
        let p = port.proto.lower();
        let name = svc.port_name(port);
        let chain = svc_chain(svc, port);
        let _ = writeln!(decl, ":{chain} - [0:0]");
        let _ = writeln!(
            rules,
            "-A {chain} -m comment --comment \"{name} cluster IP\" -m {p} -p {p} -d {} --dport {} ! -s {} -j KUBE-MARK-MASQ",
            svc.vip, port.port, node.cluster_cidr
        );
        for (i, ep) in svc.endpoints.iter().enumerate() {
            let sep = sep_chain(svc, port, ep);
            let comment = service_comment(large, &format!("\"{name} -> {}\"", endpoint(ep, port)));
            if i + 1 < n {
                let probability = 1.0 / (n - i) as f64;
                let _ = writeln!(
                    rules,
                    "-A {chain} {comment}-m statistic --mode random --probability {probability:.10} -j {sep}"
                );
            } else {
                let _ = writeln!(rules, "-A {chain} {comment}-j {sep}");
            }
        }
        if port.node_port.is_some() {
            let ext = ext_chain(svc, port);
            let _ = writeln!(decl, ":{ext} - [0:0]");
            let _ = writeln!(
                rules,
                "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ\n\
                 -A {ext} -j {chain}"
            );
        }
        let comment = service_comment(large, &name);
        for ep in &svc.endpoints {
            let sep = sep_chain(svc, port, ep);
            let _ = writeln!(decl, ":{sep} - [0:0]");
            let _ = writeln!(
                rules,
                "-A {sep} {comment}-s {ep}/32 -j KUBE-MARK-MASQ\n\
                 -A {sep} {comment}-m {p} -p {p} -j DNAT --to-destination {}",
                endpoint(ep, port)
            );
        }
    }
}

/// A full sync: `iptables-restore --noflush --counters` input holding the
/// whole filter and nat tables of kube-proxy for `services`.
pub fn iptables_full(node: &NodeRules, services: &[Svc]) -> String {
    let mut s = String::with_capacity(services.len() * 4096);
    filter_table(&mut s);
    s.push_str("*nat\n");
    let mut top = String::new();
    nat_top(&mut top, services);
    let (mut decl, mut rules) = (String::new(), String::new());
    let large = large_cluster(services);
    for svc in services {
        iptables_service(&mut decl, &mut rules, node, svc, large);
    }
    // Declarations first, as kube-proxy writes them.
    let (top_decl, top_rules): (Vec<&str>, Vec<&str>) =
        top.lines().partition(|l| l.starts_with(':'));
    for l in top_decl {
        s.push_str(l);
        s.push('\n');
    }
    s.push_str(&decl);
    for l in top_rules {
        s.push_str(l);
        s.push('\n');
    }
    s.push_str(&rules);
    s.push_str("COMMIT\n");
    s
}

/// A partial sync after `old` became `new` (one Service among
/// `services`, which already holds `new`): the top-level chains in full,
/// the service's chains rewritten, its vanished endpoint chains deleted.
pub fn iptables_partial(node: &NodeRules, services: &[Svc], old: &Svc, new: &Svc) -> String {
    let mut s = String::new();
    filter_table(&mut s);
    s.push_str("*nat\n");
    let mut top = String::new();
    nat_top(&mut top, services);
    let (mut decl, mut rules) = (String::new(), String::new());
    iptables_service(&mut decl, &mut rules, node, new, large_cluster(services));
    // Stale endpoint chains are declared (which flushes them) and deleted.
    let mut stale = Vec::new();
    for port in &old.ports {
        for ep in old.endpoints.iter().filter(|e| !new.endpoints.contains(e)) {
            let c = sep_chain(old, port, ep);
            let _ = writeln!(decl, ":{c} - [0:0]");
            stale.push(c);
        }
    }
    let (top_decl, top_rules): (Vec<&str>, Vec<&str>) =
        top.lines().partition(|l| l.starts_with(':'));
    for l in top_decl {
        s.push_str(l);
        s.push('\n');
    }
    s.push_str(&decl);
    for l in top_rules {
        s.push_str(l);
        s.push('\n');
    }
    s.push_str(&rules);
    for c in stale {
        let _ = writeln!(s, "-X {c}");
    }
    s.push_str("COMMIT\n");
    s
}

// ------------------------------------------------------------ nftables

/// The nftables table kube-proxy owns.
pub const NFT_TABLE: &str = "kube-proxy";

fn nft_svc_chain(svc: &Svc, port: &SvcPort) -> String {
    let proto = port.proto.lower();
    let base = format!("{NAMESPACE}/{}/{proto}/{}", svc.name, port.name);
    format!(
        "service-{}-{base}",
        hash(&format!("{}{proto}", svc.port_name(port)), 8)
    )
}

fn nft_ext_chain(svc: &Svc, port: &SvcPort) -> String {
    nft_svc_chain(svc, port).replacen("service-", "external-", 1)
}

fn nft_ep_chain(svc: &Svc, port: &SvcPort, ep: &std::net::Ipv4Addr) -> String {
    let proto = port.proto.lower();
    let base = format!("{NAMESPACE}/{}/{proto}/{}", svc.name, port.name);
    let text = format!("{}{proto}{}", svc.port_name(port), endpoint(ep, port));
    format!("endpoint-{}-{base}__{ep}/{}", hash(&text, 8), port.target)
}

fn nft_base(s: &mut String, node: &NodeRules) {
    let t = format!("ip {NFT_TABLE}");
    let _ = writeln!(
        s,
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}\n\
         flush table {t}\n\
         add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n\
         add set {t} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}\n\
         add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; }}\n\
         add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}\n\
         add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}\n\
         add chain {t} cluster-ips-check\n\
         add chain {t} filter-forward {{ type filter hook forward priority 0 ; }}\n\
         add chain {t} filter-input {{ type filter hook input priority 0 ; }}\n\
         add chain {t} filter-output {{ type filter hook output priority 0 ; }}\n\
         add chain {t} mark-for-masquerade\n\
         add chain {t} masquerading\n\
         add chain {t} nat-output {{ type nat hook output priority -100 ; }}\n\
         add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}\n\
         add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}\n\
         add chain {t} nodeport-endpoints-check\n\
         add chain {t} reject-chain\n\
         add chain {t} services\n\
         add chain {t} service-endpoints-check\n\
         add rule {t} cluster-ips-check ip daddr @cluster-ips reject\n\
         add rule {t} cluster-ips-check ip daddr {{ {svc} }} drop\n\
         add rule {t} filter-forward ct state new jump service-endpoints-check\n\
         add rule {t} filter-forward ct state new jump cluster-ips-check\n\
         add rule {t} filter-input ct state new jump nodeport-endpoints-check\n\
         add rule {t} filter-input ct state new jump service-endpoints-check\n\
         add rule {t} filter-output ct state new jump service-endpoints-check\n\
         add rule {t} filter-output ct state new jump cluster-ips-check\n\
         add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}\n\
         add rule {t} masquerading mark and {MASQ_MARK} == 0 return\n\
         add rule {t} masquerading mark set mark xor {MASQ_MARK}\n\
         add rule {t} masquerading masquerade fully-random\n\
         add rule {t} nat-output jump services\n\
         add rule {t} nat-postrouting jump masquerading\n\
         add rule {t} nat-prerouting jump services\n\
         add rule {t} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports\n\
         add rule {t} reject-chain reject\n\
         add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n\
         add element {t} nodeport-ips {{ {node_ip} }}\n\
         add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        svc = node.service_cidr,
        node_ip = node.node_ip,
    );
}

/// One service's chains and rules (`flush` first when it already exists).
/// Chains are declared before any rule jumps to them.
fn nft_service(s: &mut String, node: &NodeRules, svc: &Svc, flush: bool) {
    let t = format!("ip {NFT_TABLE}");
    for port in &svc.ports {
        let p = port.proto.lower();
        let chain = nft_svc_chain(svc, port);
        let ext = port.node_port.map(|_| nft_ext_chain(svc, port));
        let eps: Vec<String> = svc
            .endpoints
            .iter()
            .map(|ep| nft_ep_chain(svc, port, ep))
            .collect();
        for c in std::iter::once(&chain).chain(ext.iter()).chain(eps.iter()) {
            let _ = writeln!(s, "add chain {t} {c}");
            if flush {
                let _ = writeln!(s, "flush chain {t} {c}");
            }
        }
        for (ep, epc) in svc.endpoints.iter().zip(&eps) {
            let _ = writeln!(
                s,
                "add rule {t} {epc} ip saddr {ep} jump mark-for-masquerade\n\
                 add rule {t} {epc} meta l4proto {p} dnat to {}",
                endpoint(ep, port)
            );
        }
        let _ = writeln!(
            s,
            "add rule {t} {chain} ip daddr {} ip saddr != {} jump mark-for-masquerade",
            svc.vip, node.cluster_cidr
        );
        let arms: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, epc)| format!("{i} : goto {epc}"))
            .collect();
        let _ = writeln!(
            s,
            "add rule {t} {chain} numgen random mod {} vmap {{ {} }}",
            eps.len(),
            arms.join(" , ")
        );
        if let (Some(ext), Some(np)) = (&ext, port.node_port) {
            let _ = writeln!(
                s,
                "add rule {t} {ext} jump mark-for-masquerade\n\
                 add rule {t} {ext} goto {chain}"
            );
            if !flush {
                let _ = writeln!(
                    s,
                    "add element {t} service-nodeports {{ {p} . {np} : goto {ext} }}"
                );
            }
        }
        if !flush {
            let _ = writeln!(
                s,
                "add element {t} cluster-ips {{ {} }}\n\
                 add element {t} service-ips {{ {} . {p} . {} : goto {chain} }}",
                svc.vip, svc.vip, port.port
            );
        }
    }
}

/// A full sync: an `nft -f` transaction building the whole table.
pub fn nft_full(node: &NodeRules, services: &[Svc]) -> String {
    let mut s = String::with_capacity(services.len() * 4096);
    nft_base(&mut s, node);
    for svc in services {
        nft_service(&mut s, node, svc, false);
    }
    s
}

/// A partial sync after `old` became `new`: the service's chains are
/// rewritten, the new endpoint's chain added and the old one deleted (kube-
/// proxy's nftables mode only writes what changed).
pub fn nft_partial(node: &NodeRules, old: &Svc, new: &Svc) -> String {
    let t = format!("ip {NFT_TABLE}");
    let mut s = String::new();
    nft_service(&mut s, node, new, true);
    for port in &old.ports {
        for ep in old.endpoints.iter().filter(|e| !new.endpoints.contains(e)) {
            let c = nft_ep_chain(old, port, ep);
            let _ = writeln!(s, "flush chain {t} {c}\ndelete chain {t} {c}");
        }
    }
    s
}

/// Deletes the table (ignored when absent by the caller).
pub fn nft_delete() -> String {
    format!("delete table ip {NFT_TABLE}\n")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::services::{filler, measured};
    use super::*;

    fn node() -> NodeRules {
        NodeRules {
            cluster_cidr: "10.200.0.0/17".into(),
            service_cidr: "10.200.128.0/18".into(),
            node_ip: "10.200.255.10".into(),
        }
    }

    #[test]
    fn base32_matches_go_std_encoding() {
        // base32.StdEncoding.EncodeToString([]byte("foobar")) = "MZXW6YTBOI======"
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
    }

    #[test]
    fn iptables_layout_has_kube_proxy_shapes() {
        let eps: Vec<Ipv4Addr> = (10..20).map(|h| Ipv4Addr::new(10, 200, 2, h)).collect();
        let set = vec![filler(0), measured(&eps)];
        let text = iptables_full(&node(), &set);
        let svc = svc_chain(&set[1], &set[1].ports[0]);
        assert_eq!(svc.len(), "KUBE-SVC-".len() + 16);
        assert!(text.contains(&format!(":{svc} - [0:0]")));
        assert!(text.contains("--probability 0.1000000000 -j KUBE-SEP-"));
        assert!(text.contains("--probability 0.5000000000 -j KUBE-SEP-"));
        assert!(text.contains("--dport 30080 -j KUBE-EXT-"));
        assert!(text.contains("! -s 10.200.0.0/17 -j KUBE-MARK-MASQ"));
        assert!(text.contains("-j DNAT --to-destination 10.200.2.19:7000"));
        // Per service port: 1 masquerade rule + 10 picks + 20 endpoint rules.
        let rules = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc} ")))
            .count();
        assert_eq!(rules, 11);
        // The NodePort jump is the last rule of KUBE-SERVICES.
        let last = text
            .lines()
            .rfind(|l| l.starts_with("-A KUBE-SERVICES"))
            .expect("rules");
        assert!(last.contains("KUBE-NODEPORTS"), "{last}");
        assert_eq!(text.matches("COMMIT").count(), 2);
    }

    #[test]
    fn large_clusters_drop_the_endpoint_comments() {
        let eps: Vec<Ipv4Addr> = (10..20).map(|h| Ipv4Addr::new(10, 200, 2, h)).collect();
        // 2 Services: 10 + 3 × 10 endpoints per port, below the threshold.
        let small = iptables_full(&node(), &[filler(0), measured(&eps)]);
        assert!(small.contains("-m comment --comment bench/measured:rr -s 10.200.2.10/32"));
        assert!(small.contains("-> 10.200.2.10:7000\" -m statistic"));
        // 101 Services of 10 endpoints: past 1,000, large cluster mode.
        let mut set: Vec<Svc> = (0..100).map(filler).collect();
        set.push(measured(&eps));
        let large = iptables_full(&node(), &set);
        assert!(!large.contains(" -> "), "no endpoint comments");
        let sep = sep_chain(&set[100], &set[100].ports[0], &eps[0]);
        assert!(large.contains(&format!("-A {sep} -s 10.200.2.10/32 -j KUBE-MARK-MASQ")));
        // The ClusterIP rules keep theirs.
        assert!(large.contains("-m comment --comment \"bench/measured:rr cluster IP\""));
    }

    #[test]
    fn partial_syncs_touch_one_service() {
        let eps: Vec<Ipv4Addr> = (10..20).map(|h| Ipv4Addr::new(10, 200, 2, h)).collect();
        let old = measured(&eps);
        let new = super::super::services::with_one_endpoint_changed(&old);
        let set = vec![filler(0), filler(1), new.clone()];
        let ipt = iptables_partial(&node(), &set, &old, &new);
        assert_eq!(
            ipt.lines()
                .filter(|l| l.starts_with("-X KUBE-SEP-"))
                .count(),
            3
        );
        assert!(!ipt.contains(&svc_chain(&set[0], &set[0].ports[0]).replace("SVC", "SEP")));
        let nft = nft_partial(&node(), &old, &new);
        assert_eq!(
            nft.lines()
                .filter(|l| l.starts_with("delete chain"))
                .count(),
            3
        );
        assert!(!nft.contains("svc-0"));
    }

    #[test]
    fn nft_layout_uses_vmaps_and_numgen() {
        let eps: Vec<Ipv4Addr> = (10..20).map(|h| Ipv4Addr::new(10, 200, 2, h)).collect();
        let text = nft_full(&node(), &[filler(0), measured(&eps)]);
        assert!(text.contains("vmap @service-ips"));
        assert!(text.contains("numgen random mod 10 vmap { 0 : goto endpoint-"));
        assert!(text.contains(
            "add element ip kube-proxy service-ips { 10.200.191.250 . tcp . 80 : goto service-"
        ));
        assert!(text.contains("service-nodeports { tcp . 30080 : goto external-"));
        assert!(text.contains("masquerade fully-random"));
    }
}
