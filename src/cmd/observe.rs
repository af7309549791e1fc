//! `kestrel observe`: the network policy verdicts (or, with `--dns`, the
//! DNS queries) of a cluster's nodes as they happen. Each agent serves its node's records on a unix socket
//! (`<agent data dir>/observe.sock`); this command reads every node's of a
//! `kestrel up` data dir (or the sockets given), filters, and prints one
//! line per record, or the JSON lines themselves.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use kestrel_agent::observe::{Filter, Message};
use tokio::io::AsyncBufReadExt as _;

#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// A `kestrel up` data dir (every node's socket) or an agent's data dir.
    #[arg(long, default_value = "/var/lib/kestrel")]
    data_dir: PathBuf,
    /// Read these sockets instead of looking in --data-dir.
    #[arg(long)]
    socket: Vec<PathBuf>,
    /// Only flows with an end in this namespace.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Only flows with an end that is this pod (in --namespace if given).
    #[arg(long)]
    pod: Option<String>,
    /// Only this verdict.
    #[arg(long, value_parser = ["allowed", "denied", "host"])]
    verdict: Option<String>,
    /// Show the nodes' DNS queries and answers instead of policy verdicts
    /// (--namespace and --pod then select the asking pod).
    #[arg(long)]
    dns: bool,
    /// Print the records as JSON lines.
    #[arg(long)]
    json: bool,
    /// Stop after this many flow records (0: never).
    #[arg(long, default_value_t = 0)]
    count: u64,
}

/// The observe sockets under `dir`: its own and its nodes'.
fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let own = dir.join("observe.sock");
    if own.exists() {
        found.push(own);
    }
    if let Ok(nodes) = std::fs::read_dir(dir.join("nodes")) {
        let mut nodes: Vec<PathBuf> = nodes.flatten().map(|e| e.path()).collect();
        nodes.sort();
        found.extend(
            nodes
                .into_iter()
                .map(|n| n.join("observe.sock"))
                .filter(|s| s.exists()),
        );
    }
    found
}

pub async fn run(args: ObserveArgs) -> anyhow::Result<()> {
    let sockets = if args.socket.is_empty() {
        sockets_in(&args.data_dir)
    } else {
        args.socket.clone()
    };
    if sockets.is_empty() {
        bail!(
            "no observe socket in {} or its nodes/*: is a cluster running there? (see --data-dir, --socket)",
            args.data_dir.display()
        );
    }
    let filter = Filter {
        namespace: args.namespace.clone(),
        pod: args.pod.clone(),
        verdict: args.verdict.clone(),
        dns: args.dns,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
    for path in sockets {
        let stream = tokio::net::UnixStream::connect(&path)
            .await
            .with_context(|| format!("connecting to {}", path.display()))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            eprintln!("{}: the agent closed the stream", path.display());
        });
    }
    drop(tx);
    let mut printed = 0;
    loop {
        let line = tokio::select! {
            l = rx.recv() => match l {
                Some(l) => l,
                None => bail!("every node's stream ended"),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let msg: Message = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("skipping a record this version cannot read ({e}): {line}");
                continue;
            }
        };
        if !filter.passes(&msg) {
            continue;
        }
        if args.json {
            println!("{line}");
        } else {
            println!("{msg}");
        }
        if matches!(msg, Message::Flow(_) | Message::Dns(_)) {
            printed += 1;
            if args.count != 0 && printed >= args.count {
                return Ok(());
            }
        }
    }
}
