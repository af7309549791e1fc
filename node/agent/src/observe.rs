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

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
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
    /// The NetworkPolicy (`namespace/name`) that allowed the flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// One line of the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Message {
    /// A verdict.
    Flow(Box<FlowRecord>),
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

/// Filters `kestrel observe` applies to what it prints.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only flows with an end in this namespace.
    pub namespace: Option<String>,
    /// Only flows with an end that is this pod (with `namespace`, in it).
    pub pod: Option<String>,
    /// Only this verdict.
    pub verdict: Option<String>,
}

impl Filter {
    /// Whether `m` passes. Loss reports always pass: they are never hidden.
    pub fn passes(&self, m: &Message) -> bool {
        let Message::Flow(f) = m else {
            return true;
        };
        let end_ok = |e: &FlowEnd| {
            self.namespace
                .as_ref()
                .is_none_or(|ns| e.namespace.as_ref() == Some(ns))
                && self.pod.as_ref().is_none_or(|p| e.pod.as_ref() == Some(p))
        };
        (end_ok(&f.src) || end_ok(&f.dst)) && self.verdict.as_ref().is_none_or(|v| &f.verdict == v)
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

    #[test]
    fn filters_match_either_end_and_never_hide_losses() {
        let m = flow("denied", ("y", "b"), ("x", "a"));
        let f = |ns: Option<&str>, pod: Option<&str>, v: Option<&str>| Filter {
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
