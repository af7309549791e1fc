//! ClusterIP and NodePort allocation. The allocated sets live in memory and
//! are rebuilt from the stored Services at start, so a restart neither leaks
//! nor double-assigns. (Several API servers sharing one etcd would need the
//! allocation recorded in the store, as upstream's bitmaps are.)
//!
//! ClusterIPs follow upstream's static/dynamic split (KEP-3070): the lowest
//! `min(max(16, size/16), 256)` addresses of the range (none for a range of
//! 16 addresses or fewer) are the static band, kept for explicit
//! assignment (`kubernetes` at the 1st, `kube-dns` at the 10th); dynamic
//! allocation picks from the rest and falls back to the static band only
//! when the rest is full.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use crate::Error;

/// Both allocators.
#[derive(Debug)]
pub struct Allocators {
    net: u32,
    size: u32,
    /// How many addresses, from offset 1 up, form the static band.
    static_size: u32,
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
            static_size: static_band_size(size),
            ips: Mutex::new(BTreeSet::new()),
            ports,
            used_ports: Mutex::new(BTreeSet::new()),
        })
    }

    /// The first usable address: reserved for the `kubernetes` Service.
    pub fn first_service_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self.net + 1))
    }

    /// The 10th address: the cluster DNS Service's (`kube-dns`), as
    /// kubeadm's. `None` when the range is too small to hold it.
    pub fn dns_service_ip(&self) -> Option<IpAddr> {
        (DNS_OFFSET < self.size - 1).then(|| IpAddr::V4(Ipv4Addr::from(self.net + DNS_OFFSET)))
    }

    /// Whether `ip` is in the static band (reserved for explicit
    /// assignment; dynamic allocation takes it only when the rest is full).
    #[cfg(test)]
    pub fn in_static_band(&self, ip: &str) -> bool {
        self.offset(ip).is_ok_and(|off| off <= self.static_size)
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

    /// Allocate a free ClusterIP. Picks at random, so that a freed address
    /// is not handed out again at once, in the dynamic band first and in
    /// the static band only when the dynamic one is full, as upstream's
    /// `randomScanStrategyWithOffset`.
    pub fn allocate_ip(&self) -> Result<String, AllocError> {
        use rand::Rng as _;
        let mut set = self.ips.lock().unwrap_or_else(|p| p.into_inner());
        let usable = self.size - 2;
        if set.len() as u32 >= usable {
            return Err(AllocError::Full);
        }
        // Usable offsets are 1..=usable; the static band is 1..=static_size.
        let bands = [
            (
                self.static_size + 1,
                usable.saturating_sub(self.static_size),
            ),
            (1, self.static_size),
        ];
        for (first, len) in bands {
            if len == 0 {
                continue;
            }
            let start = rand::rng().random_range(0..len);
            for i in 0..len {
                let off = first + (start + i) % len;
                // Offset 1 belongs to the kubernetes Service.
                if off == 1 {
                    continue;
                }
                if set.insert(off) {
                    return Ok(Ipv4Addr::from(self.net + off).to_string());
                }
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

/// Offset of the cluster DNS Service's address.
const DNS_OFFSET: u32 = 10;

/// Size of the static band of a range of `size` addresses: upstream's
/// `calculateRangeOffset`, `min(max(16, size/16), 256)`, and 0 for ranges
/// of 16 addresses or fewer (too small to split).
fn static_band_size(size: u32) -> u32 {
    const MIN: u32 = 16;
    const MAX: u32 = 256;
    const STEP: u32 = 16;
    if size <= MIN {
        return 0;
    }
    (size / STEP).clamp(MIN, MAX)
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
    fn static_band_follows_upstreams_formula() {
        for (cidr, want) in [
            ("10.0.0.0/8", 256),
            ("10.43.0.0/16", 256),
            ("10.43.0.0/20", 256),
            ("10.43.0.0/21", 128),
            ("10.43.0.0/22", 64),
            ("10.43.0.0/24", 16),
            ("10.43.0.0/26", 16),
            ("10.43.0.0/27", 16),
            ("10.43.0.0/28", 0),
            ("10.43.0.0/30", 0),
        ] {
            let a = Allocators::new(cidr, (1, 2)).expect("alloc");
            assert_eq!(a.static_size, want, "{cidr}");
        }
        let a = Allocators::new("10.43.0.0/16", (1, 2)).expect("alloc");
        assert!(a.in_static_band("10.43.0.1"));
        assert!(a.in_static_band("10.43.0.10"));
        assert!(a.in_static_band("10.43.1.0"));
        assert!(!a.in_static_band("10.43.1.1"));
        assert!(!a.in_static_band("10.43.0.0"));
        assert!(!a.in_static_band("10.44.0.1"));
    }

    #[test]
    fn dns_ip_is_the_tenth_address() {
        let ip = |c: &str| {
            Allocators::new(c, (1, 2))
                .expect("alloc")
                .dns_service_ip()
                .map(|i| i.to_string())
        };
        assert_eq!(ip("10.43.0.0/16").as_deref(), Some("10.43.0.10"));
        assert_eq!(ip("10.96.0.0/12").as_deref(), Some("10.96.0.10"));
        assert_eq!(ip("192.168.7.0/28").as_deref(), Some("192.168.7.10"));
        assert_eq!(ip("192.168.7.0/29"), None);
    }

    #[test]
    fn dynamic_takes_the_upper_band_first_then_the_lower() {
        // /24: 254 usable, static band .1-.16, dynamic .17-.254.
        let a = Allocators::new("10.43.0.0/24", (1, 2)).expect("alloc");
        a.claim_ip("10.43.0.1").expect("kubernetes");
        a.claim_ip("10.43.0.10").expect("kube-dns");
        let mut got = BTreeSet::new();
        for _ in 0..238 {
            let ip = a.allocate_ip().expect("upper band");
            assert!(
                !a.in_static_band(&ip),
                "{ip} taken while the upper band has room"
            );
            assert!(got.insert(ip));
        }
        // Upper band full: the rest of the lower band (.2-.16 but .10).
        let mut lower = BTreeSet::new();
        for _ in 0..14 {
            let ip = a.allocate_ip().expect("lower band");
            assert!(a.in_static_band(&ip), "{ip}");
            assert!(lower.insert(ip));
        }
        assert!(!lower.contains("10.43.0.1") && !lower.contains("10.43.0.10"));
        assert_eq!(a.allocate_ip(), Err(AllocError::Full));
        // Freed addresses come back, from either band.
        a.release_ip("10.43.0.200");
        assert_eq!(a.allocate_ip().as_deref(), Ok("10.43.0.200"));
        a.release_ip("10.43.0.5");
        assert_eq!(a.allocate_ip().as_deref(), Ok("10.43.0.5"));
        assert_eq!(a.allocate_ip(), Err(AllocError::Full));
        // Static claims in either band still work once free.
        a.release_ip("10.43.0.7");
        a.claim_ip("10.43.0.7").expect("static claim");
        assert_eq!(a.claim_ip("10.43.0.7"), Err(AllocError::Taken));
    }

    #[test]
    fn a_slash_28_has_no_static_band() {
        // 16 addresses: too small to split, as upstream; .2-.14 dynamic.
        let a = Allocators::new("10.43.0.0/28", (1, 2)).expect("alloc");
        a.claim_ip("10.43.0.1").expect("kubernetes");
        assert!(!a.in_static_band("10.43.0.2"));
        let got: BTreeSet<String> = (0..13).map(|_| a.allocate_ip().expect("ip")).collect();
        let want: BTreeSet<String> = (2..=14).map(|i| format!("10.43.0.{i}")).collect();
        assert_eq!(got, want);
        assert_eq!(a.allocate_ip(), Err(AllocError::Full));
        assert_eq!(a.claim_ip("10.43.0.10"), Err(AllocError::Taken));
    }

    #[test]
    fn a_full_range_and_a_lower_band_filled_by_claims() {
        // /27: static .1-.16, dynamic .17-.30.
        let a = Allocators::new("10.43.0.0/27", (1, 2)).expect("alloc");
        for i in 1..=16 {
            a.claim_ip(&format!("10.43.0.{i}")).expect("static");
        }
        let got: BTreeSet<String> = (0..14).map(|_| a.allocate_ip().expect("ip")).collect();
        let want: BTreeSet<String> = (17..=30).map(|i| format!("10.43.0.{i}")).collect();
        assert_eq!(got, want);
        assert_eq!(a.allocate_ip(), Err(AllocError::Full));
        // Without the kubernetes Service, offset 1 is still never handed out.
        let b = Allocators::new("10.43.0.0/27", (1, 2)).expect("alloc");
        let got: BTreeSet<String> = (0..29).map(|_| b.allocate_ip().expect("ip")).collect();
        assert!(!got.contains("10.43.0.1"));
        assert_eq!(b.allocate_ip(), Err(AllocError::Full));
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
