//! Policy verdicts as a stream for `kestrel observe`: the agent is the one
//! reader of the kernel's flow event ring buffer, names what it reads
//! (pods, namespaces, policies), and fans each record out to every client
//! of a unix socket (`<data-dir>/observe.sock`) as one JSON line.
//!
//! Nothing is lost silently. The kernel counts the events it could not
//! write (ring buffer full, or over its rate limit) and the agent passes
//! those counts on as `lost` records; a client that reads too slowly for
//! the agent's own buffer is sent a `lost` record with how many records it
//! missed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use kestrel_dataplane::flows::{FlowEvents, event_stats};
use kestrel_ebpf_common::policy::{FlowEvent, NO_POLICY, direction, identity, verdict};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::broadcast;

/// Records buffered per client before it is told it missed some.
pub const BUFFER: usize = 4096;

/// One end of a flow, as far as the agent could name it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEnd {
    /// Address.
    pub ip: String,
    /// Port (0 for protocols without ports).
    pub port: u16,
    /// The pod's namespace, if the address is a pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod's name, if the address is a pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// What the address is otherwise: `host`, `remote-node`, `world`, or
    /// an ipBlock prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
}

/// A policy verdict on a new flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// When the agent read it (RFC 3339).
    pub time: String,
    /// The node whose program decided.
    pub node: String,
    /// `allowed`, `denied`, `open` (no policy selects the pod in that
    /// direction) or `host` (from the node itself: probes always pass).
    pub verdict: String,
    /// `ingress` or `egress`, from the pod being checked.
    pub direction: String,
    /// `tcp`, `udp`, `sctp`, or the protocol number.
    pub proto: String,
    /// Source, after service translation.
    pub src: FlowEnd,
    /// Destination, after service translation.
    pub dst: FlowEnd,
    /// The NetworkPolicy (`namespace/name`) that decided: the one that
    /// allowed the flow, or for a denial one that isolates the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// A DNS query the node's server answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRecord {
    /// When it was answered (RFC 3339).
    pub time: String,
    /// The node whose server answered.
    pub node: String,
    /// Who asked (the pod, when the address is one).
    pub client: FlowEnd,
    /// `udp` or `tcp`.
    pub proto: String,
    /// The name asked.
    pub name: String,
    /// The type asked (`A`, `SRV`, ...).
    pub qtype: String,
    /// The response code (`NOERROR`, `NXDOMAIN`, ...).
    pub rcode: String,
    /// The answers' data.
    #[serde(default)]
    pub answers: Vec<String>,
    /// Answered by an upstream (or its cache) rather than the cluster zone.
    #[serde(default)]
    pub forwarded: bool,
    /// Time to answer, microseconds.
    #[serde(default)]
    pub micros: u64,
}

/// One line of the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Message {
    /// A verdict.
    Flow(Box<FlowRecord>),
    /// A DNS query and its answer.
    Dns(Box<DnsRecord>),
    /// Records that were not delivered, and where they were lost.
    Lost {
        /// The node.
        node: String,
        /// Events the kernel could not write: its ring buffer was full.
        #[serde(default)]
        kernel_full: u64,
        /// Events the kernel did not write: over its rate limit.
        #[serde(default)]
        kernel_rate: u64,
        /// Records this client missed by reading too slowly.
        #[serde(default)]
        client: u64,
    },
}

/// The sending side; records sent with no client connected are dropped
/// without cost (nobody is watching).
pub type Sender = broadcast::Sender<Arc<Message>>;

/// A new sender.
pub fn channel() -> Sender {
    broadcast::channel(BUFFER).0
}

/// Serves `tx`'s records on a unix socket at `path` until the task is
/// dropped. A stale socket from an earlier run is replaced.
pub async fn serve(path: &Path, node: String, tx: Sender) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("listening on {}", path.display()))?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "observe accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let rx = tx.subscribe();
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = stream_to(stream, rx, &node).await {
                tracing::debug!(error = %e, "observe client gone");
            }
        });
    }
}

async fn stream_to(
    mut stream: tokio::net::UnixStream,
    mut rx: broadcast::Receiver<Arc<Message>>,
    node: &str,
) -> anyhow::Result<()> {
    loop {
        let msg = match rx.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(n)) => Arc::new(Message::Lost {
                node: node.to_owned(),
                kernel_full: 0,
                kernel_rate: 0,
                client: n,
            }),
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        let mut line = serde_json::to_vec(&*msg)?;
        line.push(b'\n');
        stream.write_all(&line).await?;
    }
}

/// What the agent knows to name the ends of a flow and the policy that
/// decided it (implemented by the policy sync's snapshot).
pub trait Names: Send + Sync {
    /// The pod (namespace, name) with this address.
    fn pod(&self, ip: Ipv4Addr) -> Option<(String, String)>;
    /// The NetworkPolicy (`namespace/name`) with this id.
    fn policy(&self, id: u32) -> Option<String>;
    /// What an identity stands for when it is not a pod's (`cidr ...`).
    fn identity(&self, id: u32) -> Option<String>;
}

fn proto_name(proto: u8) -> String {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        1 => "icmp".into(),
        n => n.to_string(),
    }
}

fn end(ip_be: u32, port_be: u16, id: u32, names: &dyn Names) -> FlowEnd {
    let ip = Ipv4Addr::from(u32::from_be(ip_be));
    let mut e = FlowEnd {
        ip: ip.to_string(),
        port: u16::from_be(port_be),
        ..FlowEnd::default()
    };
    if let Some((ns, pod)) = names.pod(ip) {
        e.namespace = Some(ns);
        e.pod = Some(pod);
    } else {
        e.entity = Some(match id {
            identity::HOST => "host".into(),
            identity::WORLD => "world".into(),
            _ => names
                .identity(id)
                .unwrap_or_else(|| format!("identity {id}")),
        });
    }
    e
}

/// The record of a kernel flow event, named.
pub fn record(e: &FlowEvent, node: &str, names: &dyn Names, time: &str) -> FlowRecord {
    FlowRecord {
        time: time.to_owned(),
        node: node.to_owned(),
        verdict: verdict::name(e.verdict).to_owned(),
        direction: if e.direction == direction::INGRESS {
            "ingress"
        } else {
            "egress"
        }
        .to_owned(),
        proto: proto_name(e.proto),
        src: end(e.saddr_be, e.sport_be, e.src_identity, names),
        dst: end(e.daddr_be, e.dport_be, e.dst_identity, names),
        policy: (e.policy_id != NO_POLICY)
            .then(|| names.policy(e.policy_id))
            .flatten(),
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Reads the kernel's flow events pinned under `pin_dir` for as long as
/// the task runs, sending each, named, on `tx`; when the kernel's loss
/// counters grow, sends a `lost` record with the growth.
pub async fn pump(
    pin_dir: PathBuf,
    node: String,
    names: Arc<dyn Names>,
    tx: Sender,
) -> anyhow::Result<()> {
    let mut events = FlowEvents::open(&pin_dir).context("opening the flow event ring buffer")?;
    let mut seen = event_stats(&pin_dir).context("reading the flow event counters")?;
    let mut batch = Vec::new();
    loop {
        batch.clear();
        events.next_batch(&mut batch).await?;
        let time = now_rfc3339();
        for e in &batch {
            // With nobody subscribed the send fails, and that is fine.
            let _ = tx.send(Arc::new(Message::Flow(Box::new(record(
                e, &node, &*names, &time,
            )))));
        }
        let stats = event_stats(&pin_dir).context("reading the flow event counters")?;
        let (full, rate) = (
            stats.lost_full.saturating_sub(seen.lost_full),
            stats.lost_rate.saturating_sub(seen.lost_rate),
        );
        if full > 0 || rate > 0 {
            let _ = tx.send(Arc::new(Message::Lost {
                node: node.clone(),
                kernel_full: full,
                kernel_rate: rate,
                client: 0,
            }));
        }
        seen = stats;
    }
}

/// Passes the node's DNS queries to `tx` while anyone watches: the DNS
/// server makes query events only while subscribed to, so with no
/// `kestrel observe` connected answering costs nothing extra.
pub async fn pump_dns(
    server: Arc<kestrel_dns::Server>,
    node: String,
    names: Arc<dyn Names>,
    tx: Sender,
) {
    loop {
        while tx.receiver_count() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let mut rx = server.subscribe();
        while tx.receiver_count() > 0 {
            let e = match tokio::time::timeout(std::time::Duration::from_secs(1), rx.recv()).await {
                Ok(Ok(e)) => e,
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    tracing::debug!(missed = n, "DNS query events dropped for observe");
                    continue;
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                Err(_) => continue,
            };
            let mut client = FlowEnd {
                ip: e.client.to_string(),
                ..FlowEnd::default()
            };
            if let std::net::IpAddr::V4(ip) = e.client
                && let Some((ns, pod)) = names.pod(ip)
            {
                client.namespace = Some(ns);
                client.pod = Some(pod);
            }
            let time =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.time_ms) * 1_000_000)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default();
            let _ = tx.send(Arc::new(Message::Dns(Box::new(DnsRecord {
                time,
                node: node.clone(),
                client,
                proto: e.proto.to_owned(),
                name: e.name,
                qtype: e.qtype,
                rcode: e.rcode,
                answers: e.answers,
                forwarded: e.forwarded,
                micros: e.micros,
            }))));
        }
    }
}

/// Filters `kestrel observe` applies to what it prints.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only flows with an end in this namespace.
    pub namespace: Option<String>,
    /// Only flows with an end that is this pod (with `namespace`, in it).
    pub pod: Option<String>,
    /// Only this verdict.
    pub verdict: Option<String>,
    /// DNS queries instead of flows.
    pub dns: bool,
}

impl Filter {
    /// Whether `m` passes. Loss reports always pass: they are never hidden.
    pub fn passes(&self, m: &Message) -> bool {
        let end_ok = |e: &FlowEnd| {
            self.namespace
                .as_ref()
                .is_none_or(|ns| e.namespace.as_ref() == Some(ns))
                && self.pod.as_ref().is_none_or(|p| e.pod.as_ref() == Some(p))
        };
        match m {
            Message::Flow(f) => {
                !self.dns
                    && (end_ok(&f.src) || end_ok(&f.dst))
                    && self.verdict.as_ref().is_none_or(|v| &f.verdict == v)
            }
            Message::Dns(d) => self.dns && end_ok(&d.client),
            Message::Lost { .. } => true,
        }
    }
}

impl std::fmt::Display for FlowEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.namespace, &self.pod, &self.entity) {
            (Some(ns), Some(pod), _) => write!(f, "{ns}/{pod} ")?,
            (_, _, Some(e)) => write!(f, "{e} ")?,
            _ => {}
        }
        write!(f, "{}:{}", self.ip, self.port)
    }
}

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Flow(r) => {
                write!(
                    f,
                    "{} {} {:<7} {:<7} {} {} -> {}",
                    r.time, r.node, r.verdict, r.direction, r.proto, r.src, r.dst
                )?;
                match &r.policy {
                    Some(p) => write!(f, " by {p}"),
                    None if r.verdict == "denied" => write!(f, " (no policy allows it)"),
                    None => Ok(()),
                }
            }
            Message::Dns(d) => {
                write!(
                    f,
                    "{} {} dns {} {} {} {} -> {}",
                    d.time, d.node, d.client, d.qtype, d.name, d.proto, d.rcode
                )?;
                if !d.answers.is_empty() {
                    write!(f, " {}", d.answers.join(" "))?;
                }
                write!(
                    f,
                    " ({}{} us)",
                    if d.forwarded { "upstream, " } else { "" },
                    d.micros
                )
            }
            Message::Lost {
                node,
                kernel_full,
                kernel_rate,
                client,
            } => write!(
                f,
                "{node}: LOST {kernel_full} events (kernel ring buffer full), {kernel_rate} (kernel rate limit), {client} (this client too slow)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(verdict: &str, src: (&str, &str), dst: (&str, &str)) -> Message {
        let end = |(ns, pod): (&str, &str)| FlowEnd {
            ip: "10.42.1.2".into(),
            port: 80,
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            entity: None,
        };
        Message::Flow(Box::new(FlowRecord {
            time: "t".into(),
            node: "node-1".into(),
            verdict: verdict.into(),
            direction: "ingress".into(),
            proto: "tcp".into(),
            src: end(src),
            dst: end(dst),
            policy: None,
        }))
    }

    #[test]
    fn messages_round_trip_as_json_lines() {
        let m = flow("denied", ("x", "b"), ("x", "a"));
        let text = serde_json::to_string(&m).expect("json");
        assert!(text.starts_with("{\"kind\":\"flow\""), "{text}");
        assert_eq!(serde_json::from_str::<Message>(&text).expect("back"), m);
        let lost = Message::Lost {
            node: "n".into(),
            kernel_full: 1,
            kernel_rate: 2,
            client: 3,
        };
        let text = serde_json::to_string(&lost).expect("json");
        assert_eq!(serde_json::from_str::<Message>(&text).expect("back"), lost);
        assert!(lost.to_string().contains("LOST 1"));
    }

    struct Known;

    impl Names for Known {
        fn pod(&self, ip: Ipv4Addr) -> Option<(String, String)> {
            (ip == Ipv4Addr::new(10, 42, 1, 5)).then(|| ("x".into(), "a".into()))
        }
        fn policy(&self, id: u32) -> Option<String> {
            (id == 7).then(|| "x/allow-a".into())
        }
        fn identity(&self, id: u32) -> Option<String> {
            (id == identity::FIRST_CIDR).then(|| "cidr 192.0.2.0/24".into())
        }
    }

    #[test]
    fn kernel_events_are_named() {
        let e = FlowEvent {
            time_ns: 1,
            saddr_be: u32::from(Ipv4Addr::new(10, 42, 1, 5)).to_be(),
            daddr_be: u32::from(Ipv4Addr::new(192, 0, 2, 9)).to_be(),
            sport_be: 40_000u16.to_be(),
            dport_be: 443u16.to_be(),
            proto: 6,
            direction: direction::EGRESS,
            verdict: verdict::ALLOWED,
            policy_id: 7,
            src_identity: 300,
            dst_identity: identity::FIRST_CIDR,
            ..FlowEvent::default()
        };
        let r = record(&e, "node-1", &Known, "t");
        assert_eq!(r.verdict, "allowed");
        assert_eq!(r.direction, "egress");
        assert_eq!(r.proto, "tcp");
        assert_eq!(
            (r.src.namespace.as_deref(), r.src.pod.as_deref()),
            (Some("x"), Some("a"))
        );
        assert_eq!(r.src.port, 40_000);
        assert_eq!(r.dst.entity.as_deref(), Some("cidr 192.0.2.0/24"));
        assert_eq!(r.dst.ip, "192.0.2.9");
        assert_eq!(r.policy.as_deref(), Some("x/allow-a"));

        let denied = FlowEvent {
            verdict: verdict::DENIED,
            policy_id: NO_POLICY,
            dst_identity: identity::WORLD,
            proto: 132,
            ..e
        };
        let r = record(&denied, "node-1", &Known, "t");
        assert_eq!((r.verdict.as_str(), r.proto.as_str()), ("denied", "sctp"));
        assert_eq!(r.dst.entity.as_deref(), Some("world"));
        assert_eq!(r.policy, None);
        assert!(
            Message::Flow(Box::new(r))
                .to_string()
                .contains("(no policy allows it)")
        );
    }

    #[test]
    fn dns_records_show_only_with_dns_and_round_trip() {
        let m = Message::Dns(Box::new(DnsRecord {
            node: "node-1".into(),
            client: FlowEnd {
                ip: "10.42.0.5".into(),
                namespace: Some("x".into()),
                pod: Some("a".into()),
                ..FlowEnd::default()
            },
            name: "web.x.svc.cluster.local.".into(),
            qtype: "A".into(),
            rcode: "NOERROR".into(),
            answers: vec!["10.43.0.9".into()],
            ..DnsRecord::default()
        }));
        let dns = |ns: Option<&str>| Filter {
            dns: true,
            namespace: ns.map(Into::into),
            ..Filter::default()
        };
        assert!(!Filter::default().passes(&m));
        assert!(dns(None).passes(&m));
        assert!(dns(Some("x")).passes(&m));
        assert!(!dns(Some("y")).passes(&m));
        assert!(!dns(None).passes(&flow("allowed", ("x", "a"), ("x", "b"))));
        let line = serde_json::to_string(&m).expect("json");
        assert!(line.contains(r#""kind":"dns""#), "{line}");
        assert_eq!(serde_json::from_str::<Message>(&line).expect("parse"), m);
        assert!(m.to_string().contains("-> NOERROR 10.43.0.9"), "{m}");
    }

    #[test]
    fn filters_match_either_end_and_never_hide_losses() {
        let m = flow("denied", ("y", "b"), ("x", "a"));
        let f = |ns: Option<&str>, pod: Option<&str>, v: Option<&str>| Filter {
            dns: false,
            namespace: ns.map(Into::into),
            pod: pod.map(Into::into),
            verdict: v.map(Into::into),
        };
        assert!(f(None, None, None).passes(&m));
        assert!(f(Some("x"), None, None).passes(&m));
        assert!(f(Some("y"), Some("b"), None).passes(&m));
        assert!(!f(Some("y"), Some("a"), None).passes(&m));
        assert!(!f(Some("z"), None, None).passes(&m));
        assert!(f(None, None, Some("denied")).passes(&m));
        assert!(!f(None, None, Some("allowed")).passes(&m));
        let lost = Message::Lost {
            node: "n".into(),
            kernel_full: 0,
            kernel_rate: 0,
            client: 1,
        };
        assert!(f(Some("z"), None, Some("allowed")).passes(&lost));
    }
}
