//! Runs the cluster DNS benchmark and writes its section of
//! docs/benchmarks.md (needs dnsperf, nsd and taskset). Started with
//! `--serve-dns`, it is the benchmark's DNS server instead.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use kestrel_bench::dns::{Options, run_bench, serve};

/// Kestrel's DNS server against nsd under dnsperf, propagation from the
/// API server, and RSS (loopback only).
#[derive(Debug, Parser)]
struct Args {
    /// Serve DNS (used by the benchmark itself).
    #[arg(long, hide = true)]
    serve_dns: bool,
    /// The API server's kubeconfig, with --serve-dns.
    #[arg(long, hide = true)]
    kubeconfig: Option<PathBuf>,
    /// Where to listen, with --serve-dns.
    #[arg(long, hide = true)]
    listen: Option<SocketAddr>,
    /// The upstream resolver, with --serve-dns.
    #[arg(long, hide = true)]
    upstream: Option<SocketAddr>,
    /// Repetitions, each on a fresh API server, DNS server and nsd.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seconds of each dnsperf run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// A short run at a smaller scale, for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Write the report into this markdown file's "DNS" section.
    #[arg(long)]
    write: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve_dns {
        return serve(
            &args.kubeconfig.context("--kubeconfig")?,
            args.listen.context("--listen")?,
            args.upstream.context("--upstream")?,
        )
        .await;
    }
    let options = if args.quick {
        Options {
            reps: 1,
            services: 500,
            seconds: 1,
            propagation: 20,
        }
    } else {
        Options {
            reps: args.reps.max(1),
            services: 10_000,
            seconds: args.seconds.max(1),
            propagation: 200,
        }
    };
    let exe = std::env::current_exe().context("finding this executable")?;
    let report = run_bench(&exe, options).await?;
    kestrel_bench::report::publish(&report.to_markdown(), "## DNS", args.write.as_deref())?;
    eprintln!(
        "Kestrel / nsd A queries/s on one core: {:.2}×",
        report.a_ratio()
    );
    Ok(())
}
