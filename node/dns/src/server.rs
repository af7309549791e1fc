//! The wire side: one query in, one response out, over UDP and TCP.
//!
//! Every input is untrusted. A datagram shorter than a header is dropped;
//! one that does not parse (bad lengths, compression loops, labels over 63
//! bytes: hickory-proto's decoder refuses them) gets FORMERR; anything but
//! a standard query with one question gets FORMERR or NOTIMP; a source over
//! its rate is dropped (UDP) or REFUSED (TCP). Each case is counted, and no
//! input ends the server. UDP answers larger than the client's payload
//! size (512 bytes, or its EDNS0 size up to 4,096) go out truncated, and
//! the client retries over TCP, which always gets the whole answer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::DNSClass;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, broadcast};

use crate::forward::{EDNS_PAYLOAD, Forwarder, Upstream};
use crate::metrics::{Drop, Metrics};
use crate::watch::SharedZone;
use crate::zone::{Outcome, Zone};

/// How long a TCP connection may sit idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once.
const TCP_CONNECTIONS: usize = 256;
/// Sources remembered by the rate limiter before it starts afresh.
const LIMITER_SOURCES: usize = 65_536;

/// One answered query, for `kestrel observe --dns`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct QueryEvent {
    /// When it was answered (Unix time, milliseconds).
    pub time_ms: u64,
    /// Who asked.
    pub client: IpAddr,
    /// `udp` or `tcp`.
    pub proto: &'static str,
    /// The name asked, as asked.
    pub name: String,
    /// The type asked.
    pub qtype: String,
    /// The response code.
    pub rcode: String,
    /// The answer records' data.
    pub answers: Vec<String>,
    /// Whether an upstream (or the cache of one) answered.
    pub forwarded: bool,
    /// Time to answer, microseconds.
    pub micros: u64,
}

/// The DNS server of one node.
#[derive(Debug)]
pub struct Server {
    zone: SharedZone,
    forwarder: Forwarder,
    metrics: Arc<Metrics>,
    limiter: Option<Limiter>,
    events: broadcast::Sender<QueryEvent>,
}

impl Server {
    /// A server answering from `zone`, forwarding the rest through
    /// `forwarder`, allowing each source `rate_limit` queries a second (0:
    /// no limit).
    pub fn new(zone: SharedZone, forwarder: Forwarder, rate_limit: u32) -> Self {
        Self {
            zone,
            forwarder,
            metrics: Arc::new(Metrics::default()),
            limiter: (rate_limit > 0).then(|| Limiter::new(rate_limit)),
            events: broadcast::channel(4096).0,
        }
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A stream of answered queries (events are made only while someone
    /// listens).
    pub fn subscribe(&self) -> broadcast::Receiver<QueryEvent> {
        self.events.subscribe()
    }

    fn zone(&self) -> std::sync::RwLockReadGuard<'_, Zone> {
        self.zone
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answers one message from `client`; `None` means send nothing.
    pub async fn handle(&self, bytes: &[u8], client: IpAddr, tcp: bool) -> Option<Vec<u8>> {
        match self.start(bytes, client, tcp) {
            Step::Done(out) => out,
            Step::Forward(p) => self.finish(*p).await,
        }
    }

    /// Everything that needs no upstream: checks, parsing, the zone. A
    /// question for an upstream comes back as [`Step::Forward`].
    fn start(&self, bytes: &[u8], client: IpAddr, tcp: bool) -> Step {
        let started = Instant::now();
        self.metrics.query(tcp);
        if bytes.len() < 12 {
            self.metrics.dropped(Drop::Short);
            return Step::Done(None);
        }
        if let Some(l) = &self.limiter
            && !l.allow(client)
        {
            self.metrics.dropped(Drop::RateLimited);
            return Step::Done(tcp.then(|| self.error_from_header(bytes, ResponseCode::Refused)));
        }
        let request = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.metrics.dropped(Drop::Malformed);
                return Step::Done(Some(self.error_from_header(bytes, ResponseCode::FormErr)));
            }
        };
        if request.metadata.message_type != MessageType::Query {
            self.metrics.dropped(Drop::NotQuery);
            return Step::Done(None);
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        response.add_queries(request.queries.iter().cloned());
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            response.set_edns(edns);
        }
        let mut p = Pending {
            limit: if tcp {
                usize::from(u16::MAX)
            } else {
                payload_limit(&request)
            },
            request,
            response,
            client,
            tcp,
            started,
            upstream: None,
        };
        match (p.request.metadata.op_code, p.request.queries.as_slice()) {
            (OpCode::Query, [q]) => match self.local(q, &mut p.response) {
                Local::Done => {}
                Local::Chase(target) => {
                    p.upstream = Some((Query::query(target, q.query_type()), true))
                }
                Local::Forward => p.upstream = Some((q.clone(), false)),
            },
            (OpCode::Query, _) => p.response.metadata.response_code = ResponseCode::FormErr,
            _ => p.response.metadata.response_code = ResponseCode::NotImp,
        }
        if p.upstream.is_some() {
            Step::Forward(Box::new(p))
        } else {
            Step::Done(self.send(p))
        }
    }

    /// Asks upstream what `start` could not answer, then sends.
    async fn finish(&self, mut p: Pending) -> Option<Vec<u8>> {
        if let Some((q, chase)) = p.upstream.clone() {
            let r = &mut p.response;
            match self.forward(&q).await {
                // An ExternalName outside the zone: its target's records
                // follow the CNAME, as CoreDNS resolves them.
                Ok(up) if chase => {
                    r.metadata.response_code = up.rcode;
                    r.answers.extend(up.answers);
                    r.authorities = up.authorities;
                }
                Ok(up) => {
                    r.metadata.response_code = up.rcode;
                    r.answers = up.answers;
                    r.authorities = up.authorities;
                    r.additionals = up.additionals;
                }
                Err(_) if chase => {}
                Err(e) => {
                    tracing::debug!(name = %q.name(), error = %e, "DNS forward failed");
                    r.metadata.response_code = ResponseCode::ServFail;
                }
            }
        }
        self.send(p)
    }

    /// Counts, reports and encodes the response, truncated if it does not
    /// fit the client's UDP payload size.
    fn send(&self, p: Pending) -> Option<Vec<u8>> {
        let rcode = p.response.metadata.response_code;
        self.metrics.response(rcode);
        if self.events.receiver_count() > 0
            && let Some(q) = p.request.queries.first()
        {
            let _ = self.events.send(QueryEvent {
                time_ms: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
                client: p.client,
                proto: if p.tcp { "tcp" } else { "udp" },
                name: q.name().to_ascii(),
                qtype: q.query_type().to_string(),
                rcode: crate::metrics::rcode_name(rcode),
                answers: p
                    .response
                    .answers
                    .iter()
                    .map(|r| r.data.to_string())
                    .collect(),
                forwarded: p.upstream.is_some(),
                micros: u64::try_from(p.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            });
        }
        let out = p.response.to_vec().ok()?;
        if out.len() <= p.limit {
            return Some(out);
        }
        self.metrics.truncated();
        p.response.truncate().to_vec().ok()
    }

    /// Answers one question from the zone where it can.
    fn local(&self, q: &Query, response: &mut Message) -> Local {
        let zone = self.zone();
        if !matches!(q.query_class(), DNSClass::IN) {
            if zone.contains(q.name()) {
                response.metadata.response_code = ResponseCode::Refused;
                return Local::Done;
            }
            return Local::Forward;
        }
        match zone.answer(q.name(), q.query_type()) {
            Outcome::Answer(a) => {
                response.metadata.authoritative = true;
                response.metadata.response_code = a.rcode;
                response.answers = a.answers;
                response.authorities = a.authorities;
                response.additionals = a.additionals;
                match a.chase {
                    Some(t) => Local::Chase(t),
                    None => Local::Done,
                }
            }
            Outcome::NotOurs => Local::Forward,
        }
    }

    async fn forward(&self, q: &Query) -> Result<Upstream, crate::forward::ForwardError> {
        if let Some(hit) = self.forwarder.cached(q) {
            self.metrics.cache(true);
            return Ok(hit);
        }
        self.metrics.cache(false);
        self.forwarder.resolve(q, &self.metrics).await
    }

    /// An error response built from the header alone (the rest did not
    /// parse, or is not to be answered).
    fn error_from_header(&self, bytes: &[u8], rcode: ResponseCode) -> Vec<u8> {
        self.metrics.response(rcode);
        let mut out = vec![0u8; 12];
        out[..2].copy_from_slice(&bytes[..2]);
        // QR, the request's opcode and RD; the rest zero.
        out[2] = 0x80 | (bytes[2] & 0x79);
        out[3] = rcode.low();
        out
    }

    /// Serves UDP on `socket` with `workers` tasks, until dropped. Answers
    /// from the zone are sent by the worker; forwarded ones by a task of
    /// their own, so a slow upstream never holds the others up.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket, workers: usize) {
        let socket = Arc::new(socket);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers.max(1) {
            let (server, socket) = (self.clone(), socket.clone());
            tasks.spawn(async move {
                let mut buf = vec![0u8; 65_535];
                loop {
                    let (n, peer) = match socket.recv_from(&mut buf).await {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!(error = %e, "DNS UDP receive");
                            continue;
                        }
                    };
                    match server.start(&buf[..n], peer.ip(), false) {
                        Step::Done(Some(out)) => {
                            let _ = socket.send_to(&out, peer).await;
                        }
                        Step::Done(None) => {}
                        Step::Forward(p) => {
                            let (server, socket) = (server.clone(), socket.clone());
                            tokio::spawn(async move {
                                if let Some(out) = server.finish(*p).await {
                                    let _ = socket.send_to(&out, peer).await;
                                }
                            });
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Serves TCP on `listener` until dropped.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS TCP accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue; // Over the limit: the connection is closed.
            };
            let server = self.clone();
            tokio::spawn(async move {
                let _ = server.connection(stream, peer).await;
                drop(permit);
            });
        }
    }

    async fn connection(&self, mut stream: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
        loop {
            let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
                Ok(Ok(n)) => usize::from(n),
                _ => return Ok(()),
            };
            let mut buf = vec![0u8; len];
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            let Some(out) = self.handle(&buf, peer.ip(), true).await else {
                return Ok(());
            };
            let n = u16::try_from(out.len()).map_err(std::io::Error::other)?;
            let mut framed = Vec::with_capacity(out.len() + 2);
            framed.extend_from_slice(&n.to_be_bytes());
            framed.extend_from_slice(&out);
            stream.write_all(&framed).await?;
        }
    }
}

/// Where a query stands after the local part.
enum Step {
    /// Answered (or to be dropped, with `None`).
    Done(Option<Vec<u8>>),
    /// Waiting for an upstream.
    Forward(Box<Pending>),
}

/// What the zone made of a question.
enum Local {
    Done,
    Chase(hickory_proto::rr::Name),
    Forward,
}

/// A response under construction.
#[derive(Debug)]
struct Pending {
    request: Message,
    response: Message,
    client: IpAddr,
    tcp: bool,
    started: Instant,
    limit: usize,
    /// The question to ask upstream, and whether it chases a CNAME.
    upstream: Option<(Query, bool)>,
}

/// The largest UDP response the client takes: 512 bytes, or its EDNS0
/// payload size (at most 4,096).
fn payload_limit(m: &Message) -> usize {
    m.edns
        .as_ref()
        .map_or(512, |e| usize::from(e.max_payload().clamp(512, 4096)))
}

/// A token bucket per source address.
#[derive(Debug)]
struct Limiter {
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl Limiter {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `ip`; the bucket holds one second's worth.
    fn allow(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut b = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if b.len() >= LIMITER_SOURCES && !b.contains_key(&ip) {
            b.clear();
        }
        let (tokens, last) = b.entry(ip).or_insert((self.rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
