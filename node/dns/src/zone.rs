//! The cluster zone: what the Kubernetes DNS specification
//! (kubernetes/dns, docs/specification.md, schema 1.0.1) says exists, held
//! in memory and answered from there.
//!
//! The zone is fed compact records ([`ServiceInfo`], [`SliceInfo`]) by the
//! watchers, never whole API objects, and a query costs two hash lookups
//! (namespace, then Service) whatever the number of Services.
//!
//! Names, and what they answer:
//! - `<svc>.<ns>.svc.<zone>`: A of the ClusterIPs; for a headless Service
//!   A of every ready endpoint (NXDOMAIN when none is ready); CNAME for an
//!   ExternalName Service; SRV of every named port.
//! - `<host>.<svc>.<ns>.svc.<zone>`: a headless Service's endpoint, by its
//!   `hostname` or, without one, its address with dashes (as CoreDNS).
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: SRV.
//! - `<a>-<b>-<c>-<d>.<ns>.pod.<zone>`: A (the spec's deprecated pod
//!   records, answered for any address as CoreDNS's `pods insecure`).
//! - `<d>.<c>.<b>.<a>.in-addr.arpa`: PTR of ClusterIPs and headless
//!   endpoints; other addresses are not ours and go upstream.
//! - `dns-version.<zone>`: TXT with the schema version; the apex has SOA
//!   and NS (`ns.dns.<zone>`, the node's own address).
//!
//! A name that exists without records of the asked type is NODATA
//! (NOERROR, empty answer, SOA in authority); a name that does not exist is
//! NXDOMAIN. Empty non-terminals (`svc.<zone>`, `<ns>.svc.<zone>` of a
//! namespace with Services, `pod.<zone>`) exist. Comparisons ignore case;
//! answers repeat the question's spelling.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The schema version the `dns-version` TXT record reports.
pub const SCHEMA_VERSION: &str = "1.0.1";

/// A Service as DNS needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// What its name resolves to.
    pub kind: ServiceKind,
    /// Its ports (unnamed ones have no SRV record).
    pub ports: Vec<PortInfo>,
    /// `spec.publishNotReadyAddresses`: every endpoint counts as ready.
    pub publish_not_ready: bool,
}

/// What a Service's own name resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// A ClusterIP (or NodePort, LoadBalancer) Service: its IPv4 ClusterIPs.
    ClusterIp(Vec<Ipv4Addr>),
    /// `clusterIP: None`: the ready endpoints.
    Headless,
    /// `type: ExternalName`: a CNAME to this name.
    ExternalName(String),
}

/// A port of a Service or an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// The port's name, lowercase; empty when unnamed.
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The port number (the Service port, or the endpoints' port).
    pub port: u16,
}

/// One EndpointSlice of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceInfo {
    /// Its endpoints.
    pub endpoints: Vec<EndpointInfo>,
    /// The ports its endpoints serve.
    pub ports: Vec<PortInfo>,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Its IPv4 addresses.
    pub addresses: Vec<Ipv4Addr>,
    /// `hostname`, lowercase, if set.
    pub hostname: Option<String>,
    /// `conditions.ready` (unset counts as ready, as the API says).
    pub ready: bool,
}

impl EndpointInfo {
    /// The endpoint's _hostname_ in the specification's sense: its own, or
    /// its first address with dashes.
    fn name(&self) -> Option<String> {
        match &self.hostname {
            Some(h) => Some(h.clone()),
            None => self.addresses.first().map(|ip| dashed(*ip)),
        }
    }
}

fn dashed(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{a}-{b}-{c}-{d}")
}

/// A Service's entry: the Service (once seen) and its slices by name.
#[derive(Debug, Default)]
struct Entry {
    service: Option<ServiceInfo>,
    slices: HashMap<String, SliceInfo>,
    /// The PTR records this entry contributes, to take back on change.
    ptrs: Vec<Ipv4Addr>,
}

impl Entry {
    /// Ready endpoints (every endpoint with publishNotReadyAddresses), with
    /// the ports of their slice.
    fn ready(&self) -> impl Iterator<Item = (&EndpointInfo, &[PortInfo])> {
        let all = self.service.as_ref().is_some_and(|s| s.publish_not_ready);
        self.slices.values().flat_map(move |s| {
            s.endpoints
                .iter()
                .filter(move |e| all || e.ready)
                .map(|e| (e, s.ports.as_slice()))
        })
    }
}

/// How the zone answers one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An authoritative answer.
    Answer(Answer),
    /// Not in the zone: forward it upstream.
    NotOurs,
}

/// An authoritative answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// NOERROR or NXDOMAIN.
    pub rcode: ResponseCode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The additional section (A records of SRV targets, of NS).
    pub additionals: Vec<Record>,
    /// The authority section (the SOA for NXDOMAIN and NODATA).
    pub authorities: Vec<Record>,
    /// A CNAME whose target is outside the zone, for the server to chase.
    pub chase: Option<Name>,
}

/// The cluster zone.
#[derive(Debug)]
pub struct Zone {
    /// The cluster domain, lowercase, fully qualified.
    domain: Name,
    /// Its labels, lowercase, for the suffix match.
    domain_labels: Vec<Vec<u8>>,
    ttl: u32,
    /// The address `ns.dns.<zone>` answers with (the node's own).
    server_ip: Option<Ipv4Addr>,
    /// namespace → Service name → entry.
    namespaces: HashMap<String, HashMap<String, Entry>>,
    /// address → names (ClusterIPs, headless endpoints).
    ptr: HashMap<Ipv4Addr, Vec<Name>>,
    /// Bumped on every change (the SOA serial).
    serial: u32,
}

impl Zone {
    /// An empty zone for `domain` (`cluster.local`) with records of `ttl`
    /// seconds.
    pub fn new(domain: &str, ttl: u32, server_ip: Option<Ipv4Addr>) -> Result<Self, String> {
        let mut name = Name::from_ascii(domain.trim_end_matches('.'))
            .map_err(|e| format!("cluster domain {domain:?}: {e}"))?
            .to_lowercase();
        name.set_fqdn(true);
        if name.is_root() {
            return Err(format!("cluster domain {domain:?}: must not be the root"));
        }
        let domain_labels = name.iter().map(<[u8]>::to_vec).collect();
        Ok(Self {
            domain: name,
            domain_labels,
            ttl,
            server_ip,
            namespaces: HashMap::new(),
            ptr: HashMap::new(),
            serial: 1,
        })
    }

    /// The cluster domain.
    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// How many Services the zone holds.
    pub fn services(&self) -> usize {
        self.namespaces
            .values()
            .flat_map(HashMap::values)
            .filter(|e| e.service.is_some())
            .count()
    }

    /// Whether `name` is the cluster domain or below it.
    pub fn contains(&self, name: &Name) -> bool {
        self.relative(name).is_some()
    }

    /// Sets (or with `None` removes) a Service.
    pub fn set_service(&mut self, ns: &str, name: &str, info: Option<ServiceInfo>) {
        self.update(ns, name, |e| e.service = info);
    }

    /// Sets (or with `None` removes) one EndpointSlice of a Service.
    pub fn set_slice(&mut self, ns: &str, service: &str, slice: &str, info: Option<SliceInfo>) {
        self.update(ns, service, |e| match info {
            Some(i) => {
                e.slices.insert(slice.to_owned(), i);
            }
            None => {
                e.slices.remove(slice);
            }
        });
    }

    /// Drops everything (before a relist).
    pub fn clear(&mut self) {
        self.namespaces.clear();
        self.ptr.clear();
        self.serial = self.serial.wrapping_add(1);
    }

    fn update(&mut self, ns: &str, name: &str, f: impl FnOnce(&mut Entry)) {
        let ns_key = ns.to_ascii_lowercase();
        let name_key = name.to_ascii_lowercase();
        let services = self.namespaces.entry(ns_key.clone()).or_default();
        let entry = services.entry(name_key.clone()).or_default();
        f(entry);
        let old = std::mem::take(&mut entry.ptrs);
        let new = ptr_records(&self.domain, &ns_key, &name_key, entry);
        entry.ptrs = new.iter().map(|(ip, _)| *ip).collect();
        let empty = entry.service.is_none() && entry.slices.is_empty();
        if empty {
            services.remove(&name_key);
            if services.is_empty() {
                self.namespaces.remove(&ns_key);
            }
        }
        let owner = self.name(&[&name_key, &ns_key, "svc"]);
        for ip in old {
            if let Some(names) = self.ptr.get_mut(&ip) {
                names.retain(|n| !owner.as_ref().is_some_and(|o| o.zone_of(n)));
                if names.is_empty() {
                    self.ptr.remove(&ip);
                }
            }
        }
        for (ip, n) in new {
            self.ptr.entry(ip).or_default().push(n);
        }
        self.serial = self.serial.wrapping_add(1);
    }

    /// `labels` (lowercase, leftmost first) under the zone.
    fn name(&self, labels: &[&str]) -> Option<Name> {
        Name::from_labels(labels.iter().map(|l| l.as_bytes()))
            .ok()?
            .append_domain(&self.domain)
            .ok()
    }

    /// The labels of `name` left of the zone, lowercase, or `None` when
    /// `name` is not in it.
    fn relative(&self, name: &Name) -> Option<Vec<String>> {
        let labels: Vec<&[u8]> = name.iter().collect();
        let n = self.domain_labels.len();
        if labels.len() < n {
            return None;
        }
        let (rest, tail) = labels.split_at(labels.len() - n);
        let matches = tail
            .iter()
            .zip(&self.domain_labels)
            .all(|(a, b)| a.eq_ignore_ascii_case(b));
        matches.then(|| {
            rest.iter()
                .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
                .collect()
        })
    }

    /// Answers one question. `qname` keeps the client's spelling.
    pub fn answer(&self, qname: &Name, qtype: RecordType) -> Outcome {
        if let Some(ip) = reverse_v4(qname) {
            return match self.ptr.get(&ip) {
                Some(names) => Outcome::Answer(
                    self.found(
                        names
                            .iter()
                            .filter(|_| matches!(qtype, RecordType::PTR | RecordType::ANY))
                            .map(|n| self.record(qname, RData::PTR(PTR(n.clone()))))
                            .collect(),
                        Vec::new(),
                    ),
                ),
                None => Outcome::NotOurs,
            };
        }
        let Some(rel) = self.relative(qname) else {
            return Outcome::NotOurs;
        };
        let rel: Vec<&str> = rel.iter().map(String::as_str).collect();
        Outcome::Answer(match rel.as_slice() {
            [] => self.apex(qname, qtype),
            ["dns-version"] => self.only(
                qtype,
                RecordType::TXT,
                vec![self.record(qname, RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()])))],
            ),
            ["dns"] | ["svc"] | ["pod"] => self.nodata(),
            ["ns", "dns"] => match self.server_ip {
                Some(ip) => self.only(qtype, RecordType::A, vec![self.a(qname, ip)]),
                None => self.nodata(),
            },
            [ns, "svc"] if self.namespaces.contains_key(*ns) => self.nodata(),
            [svc, ns, "svc"] => self.service(qname, qtype, ns, svc),
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv_port(qname, qtype, ns, svc, &port[1..], &proto[1..])
            }
            [host, svc, ns, "svc"] => self.endpoint(qname, qtype, ns, svc, host),
            [_ns, "pod"] => self.nodata(),
            [ip, _ns, "pod"] => match undashed(ip) {
                Some(ip) => self.only(qtype, RecordType::A, vec![self.a(qname, ip)]),
                None => self.nxdomain(),
            },
            _ => self.nxdomain(),
        })
    }

    fn entry(&self, ns: &str, svc: &str) -> Option<(&Entry, &ServiceInfo)> {
        let e = self.namespaces.get(ns)?.get(svc)?;
        Some((e, e.service.as_ref()?))
    }

    fn service(&self, qname: &Name, qtype: RecordType, ns: &str, svc: &str) -> Answer {
        let Some((entry, info)) = self.entry(ns, svc) else {
            return self.nxdomain();
        };
        let target = || self.name(&[svc, ns, "svc"]);
        match &info.kind {
            ServiceKind::ExternalName(ext) => {
                let Some(target) = external_name(ext) else {
                    return self.nxdomain();
                };
                let mut a = self.found(
                    vec![self.record(qname, RData::CNAME(CNAME(target.clone())))],
                    Vec::new(),
                );
                if !matches!(qtype, RecordType::CNAME) {
                    a.chase = Some(target);
                }
                a
            }
            ServiceKind::ClusterIp(ips) => match qtype {
                RecordType::A | RecordType::ANY => {
                    self.found(ips.iter().map(|ip| self.a(qname, *ip)).collect(), vec![])
                }
                RecordType::SRV => {
                    let Some(target) = target() else {
                        return self.nodata();
                    };
                    let named: Vec<&PortInfo> =
                        info.ports.iter().filter(|p| !p.name.is_empty()).collect();
                    let srv = named
                        .iter()
                        .map(|p| self.srv(qname, named.len(), p.port, target.clone()))
                        .collect();
                    let extra = ips.iter().map(|ip| self.a(&target, *ip)).collect();
                    self.found(srv, extra)
                }
                _ => self.nodata(),
            },
            ServiceKind::Headless => {
                let ready: Vec<_> = entry.ready().collect();
                if ready.is_empty() {
                    return self.nxdomain();
                }
                match qtype {
                    RecordType::A | RecordType::ANY => {
                        let mut ips: Vec<Ipv4Addr> = ready
                            .iter()
                            .flat_map(|(e, _)| e.addresses.iter().copied())
                            .collect();
                        ips.sort_unstable();
                        ips.dedup();
                        self.found(
                            ips.into_iter().map(|ip| self.a(qname, ip)).collect(),
                            vec![],
                        )
                    }
                    RecordType::SRV => self.headless_srv(qname, ns, svc, &ready, |_| true),
                    _ => self.nodata(),
                }
            }
        }
    }

    fn srv_port(
        &self,
        qname: &Name,
        qtype: RecordType,
        ns: &str,
        svc: &str,
        port: &str,
        proto: &str,
    ) -> Answer {
        let Some((entry, info)) = self.entry(ns, svc) else {
            return self.nxdomain();
        };
        let wanted = |p: &PortInfo| !p.name.is_empty() && p.name == port && p.protocol == proto;
        match &info.kind {
            ServiceKind::ExternalName(_) => self.nxdomain(),
            ServiceKind::ClusterIp(ips) => {
                let Some(p) = info.ports.iter().find(|p| wanted(p)) else {
                    return self.nxdomain();
                };
                if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
                    return self.nodata();
                }
                let Some(target) = self.name(&[svc, ns, "svc"]) else {
                    return self.nodata();
                };
                let extra = ips.iter().map(|ip| self.a(&target, *ip)).collect();
                self.found(vec![self.srv(qname, 1, p.port, target)], extra)
            }
            ServiceKind::Headless => {
                let ready: Vec<_> = entry.ready().collect();
                if !ready.iter().any(|(_, ports)| ports.iter().any(wanted)) {
                    return self.nxdomain();
                }
                if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
                    return self.nodata();
                }
                self.headless_srv(qname, ns, svc, &ready, wanted)
            }
        }
    }

    /// SRV records of a headless Service: one per ready endpoint and named
    /// port, the endpoint's name as target, its A records as additionals.
    fn headless_srv(
        &self,
        qname: &Name,
        ns: &str,
        svc: &str,
        ready: &[(&EndpointInfo, &[PortInfo])],
        wanted: impl Fn(&PortInfo) -> bool,
    ) -> Answer {
        let mut pairs = Vec::new();
        for (e, ports) in ready {
            let Some(target) = e.name().and_then(|h| self.name(&[&h, svc, ns, "svc"])) else {
                continue;
            };
            for p in ports.iter().filter(|p| !p.name.is_empty() && wanted(p)) {
                pairs.push((p.port, target.clone(), *e));
            }
        }
        let n = pairs.len();
        let mut answers = Vec::with_capacity(n);
        let mut extra = Vec::new();
        for (port, target, e) in pairs {
            answers.push(self.srv(qname, n, port, target.clone()));
            extra.extend(e.addresses.iter().map(|ip| self.a(&target, *ip)));
        }
        extra.dedup();
        self.found(answers, extra)
    }

    fn endpoint(&self, qname: &Name, qtype: RecordType, ns: &str, svc: &str, host: &str) -> Answer {
        let Some((entry, info)) = self.entry(ns, svc) else {
            return self.nxdomain();
        };
        if info.kind != ServiceKind::Headless {
            return self.nxdomain();
        }
        let mut ips: Vec<Ipv4Addr> = entry
            .ready()
            .filter(|(e, _)| e.name().as_deref() == Some(host))
            .flat_map(|(e, _)| e.addresses.iter().copied())
            .collect();
        if ips.is_empty() {
            return self.nxdomain();
        }
        ips.sort_unstable();
        ips.dedup();
        self.only(
            qtype,
            RecordType::A,
            ips.into_iter().map(|ip| self.a(qname, ip)).collect(),
        )
    }

    fn apex(&self, qname: &Name, qtype: RecordType) -> Answer {
        let ns_name = self.name(&["ns", "dns"]);
        match (qtype, ns_name) {
            (RecordType::SOA, _) => self.found(vec![self.soa()], vec![]),
            (RecordType::NS, Some(ns)) => {
                let extra = self
                    .server_ip
                    .map(|ip| self.a(&ns, ip))
                    .into_iter()
                    .collect();
                self.found(vec![self.record(qname, RData::NS(NS(ns)))], extra)
            }
            _ => self.nodata(),
        }
    }

    /// The records if the question asks for `rtype` (or ANY), else NODATA.
    fn only(&self, qtype: RecordType, rtype: RecordType, records: Vec<Record>) -> Answer {
        if qtype == rtype || qtype == RecordType::ANY {
            self.found(records, Vec::new())
        } else {
            self.nodata()
        }
    }

    fn found(&self, answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
        if answers.is_empty() {
            return self.nodata();
        }
        Answer {
            rcode: ResponseCode::NoError,
            answers,
            additionals,
            authorities: Vec::new(),
            chase: None,
        }
    }

    fn nodata(&self) -> Answer {
        Answer {
            rcode: ResponseCode::NoError,
            answers: Vec::new(),
            additionals: Vec::new(),
            authorities: vec![self.soa()],
            chase: None,
        }
    }

    fn nxdomain(&self) -> Answer {
        Answer {
            rcode: ResponseCode::NXDomain,
            ..self.nodata()
        }
    }

    fn record(&self, name: &Name, rdata: RData) -> Record {
        Record::from_rdata(name.clone(), self.ttl, rdata)
    }

    fn a(&self, name: &Name, ip: Ipv4Addr) -> Record {
        self.record(name, RData::A(A(ip)))
    }

    fn srv(&self, name: &Name, of: usize, port: u16, target: Name) -> Record {
        let weight = u16::try_from(100 / of.max(1)).unwrap_or(1).max(1);
        self.record(name, RData::SRV(SRV::new(0, weight, port, target)))
    }

    fn soa(&self) -> Record {
        let d = &self.domain;
        let mname = Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(d))
            .unwrap_or_else(|_| d.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(d))
            .unwrap_or_else(|_| d.clone());
        // CoreDNS's timers; the minimum (negative TTL) is the record TTL.
        let soa = SOA::new(mname, rname, self.serial, 7200, 1800, 86400, self.ttl);
        self.record(d, RData::SOA(soa))
    }
}

/// The PTR records an entry contributes: ClusterIPs to the Service's name,
/// ready headless endpoints to theirs.
fn ptr_records(domain: &Name, ns: &str, svc: &str, e: &Entry) -> Vec<(Ipv4Addr, Name)> {
    let mk = |labels: &[&str]| {
        Name::from_labels(labels.iter().map(|l| l.as_bytes()))
            .ok()?
            .append_domain(domain)
            .ok()
    };
    let Some(info) = &e.service else {
        return Vec::new();
    };
    match &info.kind {
        ServiceKind::ClusterIp(ips) => match mk(&[svc, ns, "svc"]) {
            Some(n) => ips.iter().map(|ip| (*ip, n.clone())).collect(),
            None => Vec::new(),
        },
        ServiceKind::Headless => {
            let mut out = Vec::new();
            for (ep, _) in e.ready() {
                let Some(n) = ep.name().and_then(|h| mk(&[&h, svc, ns, "svc"])) else {
                    continue;
                };
                out.extend(ep.addresses.iter().map(|ip| (*ip, n.clone())));
            }
            out
        }
        ServiceKind::ExternalName(_) => Vec::new(),
    }
}

/// `d.c.b.a.in-addr.arpa.` as an address.
fn reverse_v4(name: &Name) -> Option<Ipv4Addr> {
    let labels: Vec<&[u8]> = name.iter().collect();
    let [d, c, b, a, inaddr, arpa] = labels.as_slice() else {
        return None;
    };
    if !inaddr.eq_ignore_ascii_case(b"in-addr") || !arpa.eq_ignore_ascii_case(b"arpa") {
        return None;
    }
    let octet = |l: &[u8]| std::str::from_utf8(l).ok()?.parse::<u8>().ok();
    Some(Ipv4Addr::new(octet(a)?, octet(b)?, octet(c)?, octet(d)?))
}

/// `a-b-c-d` as an address.
fn undashed(label: &str) -> Option<Ipv4Addr> {
    let mut it = label.split('-').map(|p| p.parse::<u8>().ok());
    let ip = Ipv4Addr::new(it.next()??, it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(ip)
}

/// An ExternalName as a fully qualified name.
fn external_name(ext: &str) -> Option<Name> {
    let mut n = Name::from_ascii(ext.trim_end_matches('.')).ok()?;
    n.set_fqdn(true);
    (!n.is_root()).then_some(n)
}

#[cfg(test)]
mod tests;
