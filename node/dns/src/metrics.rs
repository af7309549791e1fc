//! The DNS server's counters, as Prometheus text on the agent's /metrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hickory_proto::op::ResponseCode;

/// Why a query got no answer or an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// Shorter than a DNS header: nothing to answer.
    Short,
    /// Did not parse: answered FORMERR.
    Malformed,
    /// Over its source's rate: dropped (UDP) or REFUSED (TCP).
    RateLimited,
    /// A response sent to us, or another message we do not answer.
    NotQuery,
}

impl Drop {
    const ALL: [Self; 4] = [
        Self::Short,
        Self::Malformed,
        Self::RateLimited,
        Self::NotQuery,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::Malformed => "malformed",
            Self::RateLimited => "rate_limited",
            Self::NotQuery => "not_query",
        }
    }
}

/// Response codes counted by name; the rest as `other`.
const RCODES: [(ResponseCode, &str); 6] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::NotImp, "NOTIMP"),
];

/// A response code's conventional mnemonic (`NOERROR`, `NXDOMAIN`, ...),
/// or its number.
pub fn rcode_name(rcode: ResponseCode) -> String {
    RCODES
        .iter()
        .find(|(c, _)| *c == rcode)
        .map_or_else(|| u16::from(rcode).to_string(), |(_, n)| (*n).to_owned())
}

/// Upper bounds of the upstream latency histogram, in seconds.
const BUCKETS: [f64; 10] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0,
];

/// The counters.
#[derive(Debug, Default)]
pub struct Metrics {
    udp: AtomicU64,
    tcp: AtomicU64,
    rcodes: [AtomicU64; RCODES.len() + 1],
    drops: [AtomicU64; Drop::ALL.len()],
    truncated: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    upstream_failures: AtomicU64,
    upstream_buckets: [AtomicU64; BUCKETS.len()],
    upstream_count: AtomicU64,
    upstream_sum_us: AtomicU64,
}

impl Metrics {
    /// A query arrived over TCP or UDP.
    pub fn query(&self, tcp: bool) {
        if tcp { &self.tcp } else { &self.udp }.fetch_add(1, Relaxed);
    }

    /// A response was sent with `rcode`.
    pub fn response(&self, rcode: ResponseCode) {
        let i = RCODES
            .iter()
            .position(|(c, _)| *c == rcode)
            .unwrap_or(RCODES.len());
        self.rcodes[i].fetch_add(1, Relaxed);
    }

    /// A query was dropped or refused for `why`.
    pub fn dropped(&self, why: Drop) {
        let i = Drop::ALL.iter().position(|d| *d == why).unwrap_or(0);
        self.drops[i].fetch_add(1, Relaxed);
    }

    /// A UDP response did not fit and went out truncated.
    pub fn truncated(&self) {
        self.truncated.fetch_add(1, Relaxed);
    }

    /// A forwarded question was (or was not) in the cache.
    pub fn cache(&self, hit: bool) {
        if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        }
        .fetch_add(1, Relaxed);
    }

    /// One upstream exchange took `d`.
    pub fn upstream_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, c) in BUCKETS.iter().zip(&self.upstream_buckets) {
            if s <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.upstream_count.fetch_add(1, Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.upstream_sum_us.fetch_add(us, Relaxed);
    }

    /// An upstream failed or timed out.
    pub fn upstream_failure(&self) {
        self.upstream_failures.fetch_add(1, Relaxed);
    }

    /// Queries answered so far, by response code name.
    pub fn responses(&self, rcode: &str) -> u64 {
        RCODES
            .iter()
            .position(|(_, n)| *n == rcode)
            .map_or(0, |i| self.rcodes[i].load(Relaxed))
    }

    /// Queries dropped so far for `why`.
    pub fn drops(&self, why: Drop) -> u64 {
        let i = Drop::ALL.iter().position(|d| *d == why).unwrap_or(0);
        self.drops[i].load(Relaxed)
    }

    /// Appends the Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP kestrel_dns_requests_total DNS queries received."
        );
        let _ = writeln!(out, "# TYPE kestrel_dns_requests_total counter");
        for (proto, c) in [("udp", &self.udp), ("tcp", &self.tcp)] {
            let _ = writeln!(
                out,
                "kestrel_dns_requests_total{{proto=\"{proto}\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP kestrel_dns_responses_total DNS responses sent, by response code."
        );
        let _ = writeln!(out, "# TYPE kestrel_dns_responses_total counter");
        let names = RCODES.iter().map(|(_, n)| *n).chain(["other"]);
        for (name, c) in names.zip(&self.rcodes) {
            let _ = writeln!(
                out,
                "kestrel_dns_responses_total{{rcode=\"{name}\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP kestrel_dns_dropped_total DNS queries dropped or refused, by reason."
        );
        let _ = writeln!(out, "# TYPE kestrel_dns_dropped_total counter");
        for (d, c) in Drop::ALL.iter().zip(&self.drops) {
            let _ = writeln!(
                out,
                "kestrel_dns_dropped_total{{reason=\"{}\"}} {}",
                d.label(),
                c.load(Relaxed)
            );
        }
        let simple = [
            (
                "kestrel_dns_truncated_total",
                "UDP responses sent truncated (the client retries over TCP).",
                &self.truncated,
            ),
            (
                "kestrel_dns_cache_hits_total",
                "Forwarded questions answered from the cache.",
                &self.cache_hits,
            ),
            (
                "kestrel_dns_cache_misses_total",
                "Forwarded questions not in the cache.",
                &self.cache_misses,
            ),
            (
                "kestrel_dns_upstream_failures_total",
                "Upstream exchanges that failed or timed out.",
                &self.upstream_failures,
            ),
        ];
        for (name, help, c) in simple {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", c.load(Relaxed));
        }
        let name = "kestrel_dns_upstream_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time of one exchange with an upstream resolver."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, c) in BUCKETS.iter().zip(&self.upstream_buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Relaxed));
        }
        let count = self.upstream_count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.upstream_sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}
