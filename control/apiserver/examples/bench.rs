//! API server benchmark: pod create throughput and latency over 32 clients,
//! LIST of 10,000 pods, watch fan-out latency to 1,000 watchers, and the
//! server's RSS holding 10,000 pods.
//!
//! `cargo run --release -p kestrel-apiserver --example bench`
//!
//! The server runs in a child process (this binary re-executed with
//! `--serve DIR`) so its RSS is its own. All traffic is on 127.0.0.1 and
//! every loop is bounded in count and time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

const CLIENTS: usize = 32;
const PODS: usize = 10_000;
const WATCHERS: usize = 1_000;
const WATCH_CLIENTS: usize = 20;
const WATCH_EVENTS: usize = 50;
const TIME_LIMIT: Duration = Duration::from_secs(120);

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
        "spec": {"containers": [{"name": "c", "image": "registry.local/bench:1", "ports": [{"containerPort": 8080}],
                                  "env": [{"name": "MODE", "value": "bench"}]}]}
    }))
    .expect("pod")
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

async fn serve(dir: std::path::PathBuf) {
    let store = kestrel_store::sqlite::SqliteStore::open(kestrel_store::sqlite::SqliteConfig::new(
        dir.join("state.db"),
    ))
    .await
    .expect("store");
    let mut cfg = kestrel_apiserver::Config::new(&dir);
    cfg.bind_address = "127.0.0.1".parse().expect("ip");
    cfg.secure_port = 0;
    let server = kestrel_apiserver::ApiServer::bind(Arc::new(store), cfg)
        .await
        .expect("bind");
    println!("READY {}", server.admin_kubeconfig().display());
    server
        .serve(futures::future::pending())
        .await
        .expect("serve");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

async fn client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        serve(args[2].clone().into()).await;
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("--serve")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("server");
    let pid = child.id().expect("pid");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        child.stdout.take().expect("stdout"),
    ));
    let kubeconfig: std::path::PathBuf = loop {
        let l = lines
            .next_line()
            .await
            .expect("read")
            .expect("server exited");
        if let Some(p) = l.strip_prefix("READY ") {
            break p.into();
        }
    };
    let rss_idle = rss_kib(pid);

    let admin = client(&kubeconfig).await;
    let nss: Api<Namespace> = Api::all(admin.clone());
    for ns in ["bench", "bench-w"] {
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
        )
        .await
        .expect("namespace");
    }

    // 1. Creates: 32 clients, 10,000 pods in total.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let kc = kubeconfig.clone();
        tasks.push(tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client(&kc).await, "bench");
            let mut lat = Vec::new();
            let mut i = c;
            while i < PODS && started.elapsed() < TIME_LIMIT {
                let t = Instant::now();
                pods.create(&PostParams::default(), &pod(&format!("p{i:05}")))
                    .await
                    .expect("create");
                lat.push(t.elapsed());
                i += CLIENTS;
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let elapsed = started.elapsed();
    let created = lat.len();
    let p50 = percentile(&mut lat, 0.50);
    let p99 = percentile(&mut lat, 0.99);
    println!(
        "create: {created} pods in {:.2}s = {:.0}/s over {CLIENTS} clients; p50 {:.1}ms p99 {:.1}ms",
        elapsed.as_secs_f64(),
        created as f64 / elapsed.as_secs_f64(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );

    // 2. LIST of everything (served from the watch cache).
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "bench");
    let mut list_times = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let l = pods.list(&ListParams::default()).await.expect("list");
        list_times.push(t.elapsed());
        assert_eq!(l.items.len(), created);
    }
    let (min, max) = (
        list_times.iter().min().copied().unwrap_or_default(),
        list_times.iter().max().copied().unwrap_or_default(),
    );
    let med = percentile(&mut list_times, 0.5);
    println!(
        "list: {created} pods median {:.0}ms (min {:.0}ms, max {:.0}ms)",
        med.as_secs_f64() * 1e3,
        min.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    // The same list as raw bytes: the server's share, without the client's
    // decoding into typed structs.
    let mut raw_times = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let req = http::Request::builder()
            .uri("/api/v1/namespaces/bench/pods")
            .body(Vec::new())
            .expect("request");
        let body = admin.request_text(req).await.expect("raw list");
        raw_times.push(t.elapsed());
        assert!(body.len() > created * 100);
    }
    let rmed = percentile(&mut raw_times, 0.5);
    println!(
        "list (undecoded): median {:.0}ms (min {:.0}ms, max {:.0}ms)",
        rmed.as_secs_f64() * 1e3,
        raw_times[0].as_secs_f64() * 1e3,
        raw_times[raw_times.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "rss: idle {} MiB, with {created} pods {} MiB",
        rss_idle / 1024,
        rss_kib(pid) / 1024
    );

    // 3. Watch fan-out: 1,000 watchers, 50 events, delivery latency.
    let mut watch_clients = Vec::new();
    for _ in 0..WATCH_CLIENTS {
        watch_clients.push(client(&kubeconfig).await);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let mut watchers = Vec::new();
    for w in 0..WATCHERS {
        let api: Api<Pod> = Api::namespaced(watch_clients[w % WATCH_CLIENTS].clone(), "bench-w");
        let tx = tx.clone();
        let ready = ready.clone();
        watchers.push(tokio::spawn(async move {
            let mut s = api
                .watch(&WatchParams::default(), "0")
                .await
                .expect("watch")
                .boxed();
            ready.add_permits(1);
            let mut n = 0;
            while n < WATCH_EVENTS {
                match tokio::time::timeout(Duration::from_secs(60), s.try_next()).await {
                    Ok(Ok(Some(WatchEvent::Added(p)))) => {
                        n += 1;
                        let _ = tx.send((p.metadata.name.unwrap_or_default(), Instant::now()));
                    }
                    Ok(Ok(Some(_))) => {}
                    _ => break,
                }
            }
        }));
    }
    drop(tx);
    let _ =
        tokio::time::timeout(Duration::from_secs(60), ready.acquire_many(WATCHERS as u32)).await;
    let wpods: Api<Pod> = Api::namespaced(admin.clone(), "bench-w");
    let mut sent = std::collections::HashMap::new();
    for i in 0..WATCH_EVENTS {
        let name = format!("w{i:03}");
        sent.insert(name.clone(), Instant::now());
        wpods
            .create(&PostParams::default(), &pod(&name))
            .await
            .expect("create");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut wlat = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while wlat.len() < WATCHERS * WATCH_EVENTS && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some((name, at))) => {
                if let Some(s) = sent.get(&name) {
                    wlat.push(at.saturating_duration_since(*s));
                }
            }
            _ => break,
        }
    }
    let delivered = wlat.len();
    let wp50 = percentile(&mut wlat, 0.5);
    let wp99 = percentile(&mut wlat, 0.99);
    println!(
        "watch: {WATCHERS} watchers, {delivered}/{} events delivered; p50 {:.1}ms p99 {:.1}ms",
        WATCHERS * WATCH_EVENTS,
        wp50.as_secs_f64() * 1e3,
        wp99.as_secs_f64() * 1e3
    );
    println!("rss: after watchers {} MiB", rss_kib(pid) / 1024);
    for w in watchers {
        w.abort();
    }
    let _ = child.kill().await;
}
