//! Kestrel's node agent: the kubelet.
//!
//! It joins the cluster with the node token, registers its Node and keeps
//! its Lease fresh, runs the pods bound to it through CRI on its own
//! containerd, wires them with `kestrel-cni`, and serves the node API
//! (logs, exec) to the API server on port 10250.
#![forbid(unsafe_code)]

pub mod dataplane;
pub mod dns;
pub mod join;
pub mod metrics;
pub mod node;
pub mod nodeapi;
pub mod observe;
pub mod pods;
pub mod routes;
pub mod runtime;
pub mod storage;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;

use anyhow::Context as _;

/// How `kestrel agent` was asked to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The API server, `https://host:port`.
    pub server: String,
    /// The node join token (`K10...`).
    pub token: String,
    /// This node's name.
    pub node_name: String,
    /// Where this agent keeps everything (credentials, containerd, pods).
    pub data_dir: PathBuf,
    /// Image archives imported into containerd at start.
    pub images_dir: Option<PathBuf>,
    /// The node's address; found from the route to the server if unset.
    pub node_ip: Option<Ipv4Addr>,
    /// The CNI plugin executable (normally `kestrel` itself, which acts as
    /// `kestrel-cni` when invoked under that name).
    pub cni_plugin: PathBuf,
    /// Port of the node API.
    pub kubelet_port: u16,
    /// The eBPF dataplane.
    pub dataplane: dataplane::Options,
    /// Where `/metrics` is served (plain HTTP); `None` turns it off.
    pub metrics_addr: Option<SocketAddr>,
    /// Cluster DNS: the node's server and the pods' resolv.conf.
    pub dns: dns::Options,
}

/// The address this host uses to reach `server` (no packet is sent).
fn source_ip_for(server: &str) -> anyhow::Result<Ipv4Addr> {
    let uri: http::Uri = server
        .parse()
        .with_context(|| format!("--server {server:?}"))?;
    let host = uri.host().context("--server has no host")?;
    let port = uri.port_u16().unwrap_or(443);
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .with_context(|| format!("resolving {host}"))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{host} has no IPv4 address"))?;
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(addr)
        .with_context(|| format!("no route to {addr}"))?;
    match s.local_addr()?.ip() {
        std::net::IpAddr::V4(ip) => Ok(ip),
        std::net::IpAddr::V6(_) => anyhow::bail!("no IPv4 route to {addr}"),
    }
}

/// The cgroup (v2 path) this process runs in; pods go beneath it.
fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        })
        .map(|p| p.trim_end_matches('/').to_owned())
        .unwrap_or_default()
}

/// Run the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let token = join::NodeToken::parse(&config.token)?;
    let kubeconfig = join::join(&config.server, &token, &config.node_name, dir).await?;
    let ca_pem = std::fs::read_to_string(join::ca_path(dir))
        .with_context(|| format!("reading {}", join::ca_path(dir).display()))?;
    let client = kestrel_client::client_from(&kubeconfig).await?;
    let node_ip = match config.node_ip {
        Some(ip) => ip,
        None => source_ip_for(&config.server)?,
    };

    let runtime = runtime::Runtime::start(&dir.join("containerd")).await?;
    // The node API (logs, exec), for the API server only. It is up before
    // the image import, so that after a restart the running pods' logs and
    // exec come back at once.
    let tls = nodeapi::NodeApiTls::load_or_create(
        &dir.join("nodeapi"),
        ca_pem,
        &[std::net::IpAddr::V4(node_ip)],
        std::slice::from_ref(&config.node_name),
    )?;
    let listener = tokio::net::TcpListener::bind((node_ip, config.kubelet_port))
        .await
        .with_context(|| format!("listening on {node_ip}:{}", config.kubelet_port))?;
    let cri_for_api = runtime.runtime_client()?;
    let node_api = tokio::spawn(async move {
        if let Err(e) = nodeapi::serve(listener, &tls, cri_for_api, std::future::pending()).await {
            tracing::error!(error = %e, "the node API stopped");
        }
    });

    if let Some(images) = &config.images_dir {
        let n = runtime.import_images(images).await?;
        tracing::info!(count = n, dir = %images.display(), "images imported");
    }
    let facts = node::NodeFacts {
        name: config.node_name.clone(),
        ip: node_ip,
        kubelet_port: config.kubelet_port,
        runtime_version: runtime.version().await?,
        data_dir: dir.clone(),
    };
    node::register(&client, &facts).await?;
    let (net_ready, net_rx) = tokio::sync::watch::channel(false);
    let heartbeat = tokio::spawn(node::heartbeat(client.clone(), facts, net_rx));
    // The local-path provisioner: this node's share of dynamic volumes.
    let provisioner = tokio::spawn({
        let (client, node, dir) = (client.clone(), config.node_name.clone(), dir.clone());
        async move {
            if let Err(e) = storage::run(client, node, dir).await {
                tracing::error!(error = %format!("{e:#}"), "the local-path provisioner stopped");
            }
        }
    });

    let dp = dataplane::start(&config.dataplane)?;

    let agent_socket = dir.join("agent.sock");
    let (_interfaces, net_server) = runtime::serve_pod_network(&agent_socket, dp.clone())?;
    let routes = tokio::spawn(routes::sync(client.clone(), config.node_name.clone()));
    let pod_cidr = node::wait_pod_cidr(&client, &config.node_name).await?;
    runtime::install_cni(
        runtime.config(),
        &config.cni_plugin,
        &pod_cidr,
        dir,
        &agent_socket,
    )?;
    dataplane::attach_node(&dp, node_ip, &pod_cidr)?;
    let dp_gc = tokio::spawn(dataplane::gc(dp.clone()));
    let dp_sync = dataplane::sync_services(
        client.clone(),
        &config.node_name,
        node_ip,
        &config.dataplane.pin_dir,
    )
    .await?;
    let (policy_sync, names) = dataplane::sync_policy(
        client.clone(),
        &config.node_name,
        node_ip,
        &config.dataplane.pin_dir,
    )
    .await?;
    let node_dns = dns::node_dns(&config.dns)?;
    let dns_server = dns::start(client.clone(), &config.dns, &node_dns, node_ip).await?;
    let names: std::sync::Arc<dyn observe::Names> = std::sync::Arc::new(names);
    let metrics = match config.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for /metrics on {addr}"))?;
            Some(tokio::spawn(metrics::serve(
                listener,
                config.dataplane.pin_dir.clone(),
                names.clone(),
                dns_server.as_ref().map(|d| d.server.metrics().clone()),
            )))
        }
        None => None,
    };
    let flows = observe::channel();
    let observe_socket = dir.join("observe.sock");
    let observe_node = config.node_name.clone();
    let observe_tx = flows.clone();
    let dns_pump = dns_server.as_ref().map(|d| {
        tokio::spawn(observe::pump_dns(
            d.server.clone(),
            config.node_name.clone(),
            names.clone(),
            flows.clone(),
        ))
    });
    let observe = tokio::spawn(async move {
        if let Err(e) = observe::serve(&observe_socket, observe_node, observe_tx).await {
            tracing::error!(error = %format!("{e:#}"), "the observe socket stopped");
        }
    });
    let pump = tokio::spawn({
        let (pin_dir, node) = (config.dataplane.pin_dir.clone(), config.node_name.clone());
        async move {
            if let Err(e) = observe::pump(pin_dir, node, names, flows).await {
                tracing::error!(error = %format!("{e:#}"), "the flow event reader stopped");
            }
        }
    });
    tracing::info!(%pod_cidr, "pod network configured");
    let _ = net_ready.send(true);

    let recorder =
        kestrel_client::events::Recorder::new(client.clone(), "kubelet", Some(&config.node_name));
    let pods = pods::run(
        client,
        runtime.runtime_client()?,
        runtime.image_client()?,
        recorder,
        pods::Config {
            node: config.node_name.clone(),
            node_ip: node_ip.to_string(),
            pods_root: dir.join("pods"),
            logs_root: dir.join("pod-logs"),
            cgroup_parent: format!("{}/pods", own_cgroup()),
            ipam: pod_cidr.parse().ok().map(|c| (dir.join("cni"), c)),
            dns: node_dns,
        },
    );
    let result = tokio::select! {
        r = pods => r,
        () = shutdown => Ok(()),
    };
    heartbeat.abort();
    provisioner.abort();
    routes.abort();
    dp_gc.abort();
    dp_sync.abort();
    policy_sync.abort();
    observe.abort();
    pump.abort();
    node_api.abort();
    net_server.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    if let Some(p) = dns_pump {
        p.abort();
    }
    drop(dns_server);
    // containerd stops; the containers keep running in their shims, and a
    // restarted agent adopts them.
    runtime.stop().await?;
    result
}
