//! Numbered reasons for the packets the per-packet programs drop (or
//! answer in place), counted per CPU in the drop counter array.

/// Index into the drop counter array.
///
/// A `u32` newtype rather than an enum, like [`crate::ProtoSlot`]: the value
/// is a map index shared with the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct DropReason(pub u32);

impl DropReason {
    /// A new flow to a service without a ready backend, answered with a
    /// TCP RST or an ICMP port unreachable.
    pub const NO_BACKEND: Self = Self(0);
    /// A packet to a service without a ready backend that could not be
    /// answered (not a SYN, a SYN with data, or the answer failed).
    pub const NO_BACKEND_UNANSWERED: Self = Self(1);
    /// A service slot names a backend that is not in the backends map
    /// (user space is mid-update).
    pub const BACKEND_UNKNOWN: Self = Self(2);
    /// A conntrack entry could not be written.
    pub const CT_WRITE: Self = Self(3);
    /// Every source port tried for a SNAT or masquerade was taken.
    pub const SNAT_PORTS_EXHAUSTED: Self = Self(4);
    /// Rewriting the packet (addresses, ports, checksums) failed half way.
    pub const REWRITE: Self = Self(5);
    /// A redirect helper refused the packet (e.g. the interface is gone).
    pub const REDIRECT: Self = Self(6);
    /// A new flow that network policy denies.
    pub const POLICY_DENIED: Self = Self(7);
    /// Number of reasons; the size of the counter array.
    pub const COUNT: u32 = 8;

    /// Every reason, in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::NO_BACKEND,
        Self::NO_BACKEND_UNANSWERED,
        Self::BACKEND_UNKNOWN,
        Self::CT_WRITE,
        Self::SNAT_PORTS_EXHAUSTED,
        Self::REWRITE,
        Self::REDIRECT,
        Self::POLICY_DENIED,
    ];

    /// A short snake_case name, used as a metrics label.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "no_backend",
            1 => "no_backend_unanswered",
            2 => "backend_unknown",
            3 => "ct_write",
            4 => "snat_ports_exhausted",
            5 => "rewrite",
            6 => "redirect",
            7 => "policy_denied",
            _ => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_dense_and_named_uniquely() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.0 as usize, i);
            assert_ne!(r.name(), "unknown");
            for other in &DropReason::ALL[i + 1..] {
                assert_ne!(r.name(), other.name());
            }
        }
        assert_eq!(DropReason(99).name(), "unknown");
    }
}
