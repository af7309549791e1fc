//! Names outside the cluster zone: forwarded to the upstream resolvers,
//! with a small answer cache.
//!
//! Each question is asked anew with its own random id over UDP (EDNS0,
//! 1,232 bytes), then over TCP if the answer comes back truncated; the
//! upstreams are tried in order, each for at most [`UPSTREAM_TIMEOUT`].
//! Answers are cached by (name, type, class) for their smallest TTL,
//! at most [`MAX_CACHE_TTL`] (the default Corefile's `cache 30`); negative
//! answers for the SOA's minimum, with the same cap. Served from the cache,
//! TTLs count down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::metrics::Metrics;

/// How long one upstream gets to answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest an upstream answer is cached.
pub const MAX_CACHE_TTL: u32 = 30;
/// The UDP payload size we advertise (the DNS flag day's).
pub const EDNS_PAYLOAD: u16 = 1232;

/// An upstream's answer: the code and the three record sections.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Its response code.
    pub rcode: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authorities: Vec<Record>,
    /// Additional section (without OPT).
    pub additionals: Vec<Record>,
}

#[derive(Debug)]
struct Cached {
    answer: Upstream,
    stored: Instant,
    ttl: u32,
}

type CacheKey = (Name, RecordType, DNSClass);

/// The forwarder.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    capacity: usize,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

/// Why a question found no upstream answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No upstream is configured.
    #[error("no upstream resolver is configured")]
    NoUpstream,
    /// Every upstream failed.
    #[error("no upstream answered: {0}")]
    Failed(String),
}

impl Forwarder {
    /// A forwarder to `upstreams` caching up to `capacity` answers.
    pub fn new(upstreams: Vec<SocketAddr>, capacity: usize) -> Self {
        Self {
            upstreams,
            capacity,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The upstreams, in order.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A cached answer, its TTLs lowered by its age.
    pub fn cached(&self, q: &Query) -> Option<Upstream> {
        let key = (q.name().to_lowercase(), q.query_type(), q.query_class());
        let mut cache = self.cache();
        let c = cache.get(&key)?;
        let age = u32::try_from(c.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= c.ttl {
            cache.remove(&key);
            return None;
        }
        let mut a = c.answer.clone();
        for r in a
            .answers
            .iter_mut()
            .chain(&mut a.authorities)
            .chain(&mut a.additionals)
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(a)
    }

    /// Asks the upstreams (no cache), then caches the answer.
    pub async fn resolve(&self, q: &Query, metrics: &Metrics) -> Result<Upstream, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let mut errors = Vec::new();
        for &upstream in &self.upstreams {
            let started = Instant::now();
            let result = tokio::time::timeout(UPSTREAM_TIMEOUT, ask(upstream, q)).await;
            metrics.upstream_latency(started.elapsed());
            match result {
                Ok(Ok(m)) if matches!(m.metadata.response_code, ResponseCode::ServFail) => {
                    errors.push(format!("{upstream}: SERVFAIL"));
                }
                Ok(Ok(m)) => {
                    let answer = Upstream {
                        rcode: m.metadata.response_code,
                        answers: m.answers,
                        authorities: m.authorities,
                        additionals: m.additionals,
                    };
                    self.store(q, &answer);
                    return Ok(answer);
                }
                Ok(Err(e)) => errors.push(format!("{upstream}: {e}")),
                Err(_) => errors.push(format!("{upstream}: timed out")),
            }
            metrics.upstream_failure();
        }
        Err(ForwardError::Failed(errors.join("; ")))
    }

    fn store(&self, q: &Query, a: &Upstream) {
        let ttl = if a.answers.is_empty() {
            // Negative: the SOA's minimum, bounded by its own TTL.
            a.authorities
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                    _ => None,
                })
                .unwrap_or(0)
        } else {
            a.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
        }
        .min(MAX_CACHE_TTL);
        if ttl == 0 || !matches!(a.rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
            return;
        }
        let mut cache = self.cache();
        if cache.len() >= self.capacity {
            cache.retain(|_, c| c.stored.elapsed().as_secs() < u64::from(c.ttl));
            if cache.len() >= self.capacity {
                // Still full of live answers: start again rather than walk
                // an LRU on every insert.
                cache.clear();
            }
        }
        cache.insert(
            (q.name().to_lowercase(), q.query_type(), q.query_class()),
            Cached {
                answer: a.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

/// Asks one upstream: UDP, then TCP when truncated.
async fn ask(upstream: SocketAddr, q: &Query) -> std::io::Result<Message> {
    let id: u16 = rand::random();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(q.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    m.set_edns(edns);
    let bytes = m.to_vec().map_err(std::io::Error::other)?;

    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(std::io::Error::other)?;
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(upstream).await?;
    sock.send(&bytes).await?;
    let mut buf = vec![0u8; 65535];
    let reply = loop {
        let n = sock.recv(&mut buf).await?;
        // Anything but our id and question is not our answer (a late or
        // spoofed datagram): keep waiting.
        if let Ok(r) = Message::from_vec(&buf[..n])
            && r.metadata.id == id
            && r.metadata.message_type == MessageType::Response
            && r.queries.first().is_some_and(|rq| same_question(rq, q))
        {
            break r;
        }
    };
    if !reply.metadata.truncation {
        return Ok(reply);
    }
    let mut tcp = tokio::net::TcpStream::connect(upstream).await?;
    let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
    tcp.write_all(&len.to_be_bytes()).await?;
    tcp.write_all(&bytes).await?;
    let n = usize::from(tcp.read_u16().await?);
    let mut buf = vec![0u8; n];
    tcp.read_exact(&mut buf).await?;
    let r = Message::from_vec(&buf).map_err(std::io::Error::other)?;
    if r.metadata.id != id {
        return Err(std::io::Error::other("TCP answer with another id"));
    }
    Ok(r)
}

fn same_question(a: &Query, b: &Query) -> bool {
    a.query_type() == b.query_type() && a.query_class() == b.query_class() && a.name() == b.name()
}
