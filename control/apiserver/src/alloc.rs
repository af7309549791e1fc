//! ClusterIP and NodePort allocation. The allocated sets live in memory and
//! are rebuilt from the stored Services at start, so a restart neither leaks
//! nor double-assigns. (Several API servers sharing one etcd would need the
//! allocation recorded in the store, as upstream's bitmaps are.)

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use crate::Error;

/// Both allocators.
#[derive(Debug)]
pub struct Allocators {
    net: u32,
    size: u32,
    ips: Mutex<BTreeSet<u32>>,
    ports: (u16, u16),
    used_ports: Mutex<BTreeSet<u16>>,
}

/// Why an allocation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// The address or port is outside the range.
    OutOfRange,
    /// Already taken.
    Taken,
    /// Nothing left.
    Full,
}

impl Allocators {
    /// Allocators for an IPv4 service CIDR and an inclusive port range.
    pub fn new(cidr: &str, ports: (u16, u16)) -> Result<Self, Error> {
        let bad = || {
            Error::Config(format!(
                "invalid service CIDR {cidr:?}: want an IPv4 a.b.c.d/n with n <= 30"
            ))
        };
        let (ip, bits) = cidr.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let bits: u32 = bits.parse().map_err(|_| bad())?;
        if bits > 30 || bits == 0 {
            return Err(bad());
        }
        let size = 1u32 << (32 - bits);
        let net = u32::from(ip) & !(size - 1);
        if ports.0 > ports.1 {
            return Err(Error::Config(format!(
                "invalid node port range {}-{}",
                ports.0, ports.1
            )));
        }
        Ok(Self {
            net,
            size,
            ips: Mutex::new(BTreeSet::new()),
            ports,
            used_ports: Mutex::new(BTreeSet::new()),
        })
    }

    /// The first usable address: reserved for the `kubernetes` Service.
    pub fn first_service_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self.net + 1))
    }

    fn offset(&self, ip: &str) -> Result<u32, AllocError> {
        let ip: Ipv4Addr = ip.parse().map_err(|_| AllocError::OutOfRange)?;
        let off = u32::from(ip).wrapping_sub(self.net);
        // Network and broadcast addresses are never handed out.
        if off == 0 || off >= self.size - 1 {
            return Err(AllocError::OutOfRange);
        }
        Ok(off)
    }

    /// Claim a specific ClusterIP.
    pub fn claim_ip(&self, ip: &str) -> Result<(), AllocError> {
        let off = self.offset(ip)?;
        let mut set = self.ips.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(off) {
            return Err(AllocError::Taken);
        }
        Ok(())
    }

    /// Allocate a free ClusterIP. Picks at random so that a freed address is
    /// not handed out again at once, as upstream does.
    pub fn allocate_ip(&self) -> Result<String, AllocError> {
        use rand::Rng as _;
        let mut set = self.ips.lock().unwrap_or_else(|p| p.into_inner());
        let usable = self.size - 2;
        if set.len() as u32 >= usable {
            return Err(AllocError::Full);
        }
        let start = rand::rng().random_range(0..usable);
        for i in 0..usable {
            // Offsets 2.. : offset 1 belongs to the kubernetes Service.
            let off = 1 + (start + i) % usable;
            if off == 1 {
                continue;
            }
            if set.insert(off) {
                return Ok(Ipv4Addr::from(self.net + off).to_string());
            }
        }
        Err(AllocError::Full)
    }

    /// Release a ClusterIP.
    pub fn release_ip(&self, ip: &str) {
        if let Ok(off) = self.offset(ip) {
            self.ips
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&off);
        }
    }

    /// Claim a specific NodePort.
    pub fn claim_port(&self, port: u16) -> Result<(), AllocError> {
        if port < self.ports.0 || port > self.ports.1 {
            return Err(AllocError::OutOfRange);
        }
        let mut set = self.used_ports.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(port) {
            return Err(AllocError::Taken);
        }
        Ok(())
    }

    /// Allocate a free NodePort.
    pub fn allocate_port(&self) -> Result<u16, AllocError> {
        use rand::Rng as _;
        let mut set = self.used_ports.lock().unwrap_or_else(|p| p.into_inner());
        let n = u32::from(self.ports.1 - self.ports.0) + 1;
        let start = rand::rng().random_range(0..n);
        for i in 0..n {
            let p = self.ports.0 + ((start + i) % n) as u16;
            if set.insert(p) {
                return Ok(p);
            }
        }
        Err(AllocError::Full)
    }

    /// Release a NodePort.
    pub fn release_port(&self, port: u16) {
        self.used_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&port);
    }

    /// The NodePort range, for error messages.
    pub fn port_range(&self) -> (u16, u16) {
        self.ports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_are_unique_in_range_and_reusable() {
        let a = Allocators::new("10.43.0.0/29", (30000, 30002)).expect("alloc");
        assert_eq!(a.first_service_ip().to_string(), "10.43.0.1");
        a.claim_ip("10.43.0.1").expect("kubernetes");
        let mut got = BTreeSet::new();
        // /29: .1-.6 usable, .1 taken => 5 left.
        for _ in 0..5 {
            got.insert(a.allocate_ip().expect("ip"));
        }
        assert_eq!(got.len(), 5);
        assert_eq!(a.allocate_ip(), Err(AllocError::Full));
        assert_eq!(a.claim_ip("10.43.0.3"), Err(AllocError::Taken));
        assert_eq!(a.claim_ip("10.44.0.3"), Err(AllocError::OutOfRange));
        assert_eq!(a.claim_ip("10.43.0.7"), Err(AllocError::OutOfRange));
        a.release_ip("10.43.0.3");
        assert_eq!(a.allocate_ip().expect("reuse"), "10.43.0.3");
    }

    #[test]
    fn ports() {
        let a = Allocators::new("10.43.0.0/16", (30000, 30001)).expect("alloc");
        a.claim_port(30000).expect("claim");
        assert_eq!(a.claim_port(30000), Err(AllocError::Taken));
        assert_eq!(a.claim_port(80), Err(AllocError::OutOfRange));
        assert_eq!(a.allocate_port(), Ok(30001));
        assert_eq!(a.allocate_port(), Err(AllocError::Full));
        a.release_port(30000);
        assert_eq!(a.allocate_port(), Ok(30000));
    }

    #[test]
    fn bad_cidrs() {
        for c in ["10.43.0.0", "x/16", "10.43.0.0/31", "10.43.0.0/0"] {
            assert!(Allocators::new(c, (1, 2)).is_err(), "{c}");
        }
    }
}
