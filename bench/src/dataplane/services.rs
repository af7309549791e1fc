//! The service set every path is programmed with: `n - 1` filler
//! ClusterIP Services of one port, then the measured Service (added last,
//! so a linear rule list reaches it last). Every Service has 10 endpoints.
//!
//! Addresses, all in 10.200.0.0/16 (see `topo` for the nodes and pods):
//! filler ClusterIPs in 10.200.128.0/18 (16,000 addresses, the port goes
//! up by one for each further 16,000 Services), filler endpoints in
//! 10.200.64.0/18 (16,000 addresses, the target port goes up by one every
//! 1,600 Services, so every (address, port) backend is distinct, as
//! Kestrel's backend map would see it in a real cluster), the measured
//! Service at 10.200.191.250 with its endpoints on the server pod.

use std::net::Ipv4Addr;

/// How many endpoints each Service has.
pub const ENDPOINTS: usize = 10;
/// The measured Service's ClusterIP.
pub const MEASURED_VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 191, 250);
/// The namespace of every Service.
pub const NAMESPACE: &str = "bench";
/// The measured Service's name.
pub const MEASURED_NAME: &str = "measured";

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// Lower case, as nftables and the chain names spell it.
    pub fn lower(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    /// Upper case, as the Kubernetes API spells it.
    pub fn upper(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvcPort {
    pub name: &'static str,
    pub proto: Proto,
    pub port: u16,
    pub target: u16,
    pub node_port: Option<u16>,
}

/// One Service with its endpoints (all ready, on `endpoint_node`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Svc {
    pub name: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<SvcPort>,
    pub endpoints: Vec<Ipv4Addr>,
    pub endpoint_node: &'static str,
}

impl Svc {
    /// `ns/name:port`, kube-proxy's `ServicePortName` string.
    pub fn port_name(&self, port: &SvcPort) -> String {
        format!("{NAMESPACE}/{}:{}", self.name, port.name)
    }
}

/// The workload ports of the server pod and the measured Service.
pub mod ports {
    /// TCP request/response and connect/request/response.
    pub const RR: u16 = 7000;
    /// TCP bulk transfer (a sink).
    pub const STREAM: u16 = 7001;
    /// UDP request/response.
    pub const UDP: u16 = 7002;
    /// The measured Service's ports (ClusterIP side).
    pub const SVC_RR: u16 = 80;
    pub const SVC_STREAM: u16 = 5001;
    pub const SVC_UDP: u16 = 53;
    /// Its NodePorts.
    pub const NODE_RR: u16 = 30080;
    pub const NODE_STREAM: u16 = 30081;
    pub const NODE_UDP: u16 = 30082;
}

fn offset(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n)
}

/// The `i`-th filler Service (0-based).
pub fn filler(i: usize) -> Svc {
    let i32_ = u32::try_from(i).unwrap_or(u32::MAX);
    let vip = offset(Ipv4Addr::new(10, 200, 128, 0), 1 + i32_ % 16_000);
    let port = 80 + u16::try_from(i32_ / 16_000).unwrap_or(0);
    let target = 8000 + u16::try_from(i32_ / 1_600).unwrap_or(0);
    let endpoints = (0..ENDPOINTS as u32)
        .map(|e| {
            let idx = i32_ * ENDPOINTS as u32 + e;
            offset(Ipv4Addr::new(10, 200, 64, 0), 1 + idx % 16_000)
        })
        .collect();
    Svc {
        name: format!("svc-{i}"),
        vip,
        ports: vec![SvcPort {
            name: "http",
            proto: Proto::Tcp,
            port,
            target,
            node_port: None,
        }],
        endpoints,
        endpoint_node: "node-2",
    }
}

/// The measured Service: a NodePort Service with three ports whose 10
/// endpoints are the server pod's addresses.
pub fn measured(endpoints: &[Ipv4Addr]) -> Svc {
    Svc {
        name: MEASURED_NAME.to_owned(),
        vip: MEASURED_VIP,
        ports: vec![
            SvcPort {
                name: "rr",
                proto: Proto::Tcp,
                port: ports::SVC_RR,
                target: ports::RR,
                node_port: Some(ports::NODE_RR),
            },
            SvcPort {
                name: "stream",
                proto: Proto::Tcp,
                port: ports::SVC_STREAM,
                target: ports::STREAM,
                node_port: Some(ports::NODE_STREAM),
            },
            SvcPort {
                name: "udp",
                proto: Proto::Udp,
                port: ports::SVC_UDP,
                target: ports::UDP,
                node_port: Some(ports::NODE_UDP),
            },
        ],
        endpoints: endpoints.to_vec(),
        endpoint_node: "node-2",
    }
}

/// `n` Services in the order they are added: fillers, then the measured one.
pub fn service_set(n: usize, measured_endpoints: &[Ipv4Addr]) -> Vec<Svc> {
    let mut out: Vec<Svc> = (0..n.saturating_sub(1)).map(filler).collect();
    out.push(measured(measured_endpoints));
    out
}

/// The same Service with one endpoint replaced (the one-endpoint-change
/// measurement): its 4th endpoint moves to a fresh address.
pub fn with_one_endpoint_changed(svc: &Svc) -> Svc {
    let mut out = svc.clone();
    if let Some(e) = out.endpoints.get_mut(3) {
        *e = Ipv4Addr::new(10, 200, 63, 250);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn fillers_have_distinct_frontends_and_backends() {
        let n = 50_000;
        let mut frontends = HashSet::new();
        let mut backends = HashSet::new();
        for i in 0..n {
            let s = filler(i);
            let p = &s.ports[0];
            assert!(frontends.insert((s.vip, p.port)), "frontend {i}");
            assert_ne!(s.vip, MEASURED_VIP);
            for e in &s.endpoints {
                assert!(backends.insert((*e, p.target)), "backend of {i}");
                assert_eq!(e.octets()[..2], [10, 200]);
                assert!((64..128).contains(&e.octets()[2]), "{e}");
            }
            assert!((128..191).contains(&s.vip.octets()[2]), "{}", s.vip);
        }
        assert_eq!(backends.len(), n * ENDPOINTS);
    }

    #[test]
    fn the_measured_service_comes_last() {
        let eps: Vec<Ipv4Addr> = (10..20).map(|h| Ipv4Addr::new(10, 200, 2, h)).collect();
        let set = service_set(3, &eps);
        assert_eq!(set.len(), 3);
        assert_eq!(set[2].name, MEASURED_NAME);
        assert_eq!(service_set(1, &eps).len(), 1);
        let changed = with_one_endpoint_changed(&set[2]);
        assert_eq!(
            changed
                .endpoints
                .iter()
                .zip(&set[2].endpoints)
                .filter(|(a, b)| a != b)
                .count(),
            1
        );
    }
}
