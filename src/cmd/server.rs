//! `kestrel server`: the control plane.

use std::{net::IpAddr, path::PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

/// Where cluster state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatastoreKind {
    /// Embedded SQLite under --data-dir (no extra process).
    Sqlite,
    /// A real etcd cluster at --etcd-endpoints.
    Etcd,
}

impl DatastoreKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Etcd => "etcd",
        }
    }
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where the store (for sqlite), the cluster CA, credentials and
    /// admin.kubeconfig live.
    #[arg(long, default_value = "/var/lib/kestrel/server")]
    data_dir: PathBuf,
    /// Address the API server listens on. Repeatable: the first one goes
    /// into admin.kubeconfig.
    #[arg(long = "bind-address", default_value = "0.0.0.0")]
    bind_addresses: Vec<IpAddr>,
    /// Port of the API server (HTTPS).
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Range Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: String,
    /// Node-facing address of this server, put in its certificate and in the
    /// `kubernetes` Service's endpoints. Repeatable.
    #[arg(long = "advertise-address")]
    advertise_addresses: Vec<IpAddr>,
    /// Which store holds cluster state.
    #[arg(long, value_enum, default_value_t = DatastoreKind::Sqlite)]
    datastore: DatastoreKind,
    /// etcd client URLs, comma-separated (with --datastore etcd).
    #[arg(long, default_value = "")]
    etcd_endpoints: String,
    /// Seconds new pods tolerate node.kubernetes.io/not-ready:NoExecute
    /// (added at admission unless the pod tolerates it already).
    #[arg(long, default_value_t = 300)]
    default_not_ready_toleration_seconds: i64,
    /// Seconds new pods tolerate node.kubernetes.io/unreachable:NoExecute.
    #[arg(long, default_value_t = 300)]
    default_unreachable_toleration_seconds: i64,
    /// Admission plugins to turn off, comma-separated, by upstream's names
    /// (NamespaceLifecycle is always on): LimitRanger, ServiceAccount,
    /// DefaultTolerationSeconds, MutatingAdmissionWebhook, NodeRestriction,
    /// PodSecurity, ValidatingAdmissionWebhook, ResourceQuota.
    #[arg(long, value_delimiter = ',', value_parser = admission_plugin)]
    disable_admission_plugins: Vec<String>,
    /// Write audit events (audit.k8s.io/v1, one JSON line each) to this
    /// file, or `-` for stdout. Needs --audit-policy-file.
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// The audit Policy (audit.k8s.io/v1, YAML or JSON) saying what is
    /// recorded at which level. Needs --audit-log-path.
    #[arg(long)]
    audit_policy_file: Option<PathBuf>,
    #[command(flatten)]
    controllers: crate::cmd::controller_manager::ManagerArgs,
}

fn admission_plugin(s: &str) -> Result<String, String> {
    if kestrel_apiserver::ADMISSION_PLUGINS.contains(&s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "unknown admission plugin {s:?}; known: {}",
            kestrel_apiserver::ADMISSION_PLUGINS.join(", ")
        ))
    }
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))?;
    let datastore = kestrel_store::Datastore::from_flags(
        args.datastore.as_str(),
        args.data_dir.join("state.db"),
        &args.etcd_endpoints,
    )?;
    let store = datastore.open().await.context("opening the datastore")?;

    let mut config = kestrel_apiserver::Config::new(&args.data_dir);
    if let Some((first, rest)) = args.bind_addresses.split_first() {
        config.bind_address = *first;
        config.also_bind = rest.to_vec();
    }
    config.secure_port = args.secure_port;
    config.service_cidr = args.service_cidr;
    config.advertise_addresses = args.advertise_addresses;
    config.default_not_ready_toleration_seconds = args.default_not_ready_toleration_seconds;
    config.default_unreachable_toleration_seconds = args.default_unreachable_toleration_seconds;
    config.disable_admission_plugins = args.disable_admission_plugins;
    config.audit_log_path = args.audit_log_path;
    config.audit_policy_file = args.audit_policy_file;
    let server = kestrel_apiserver::ApiServer::bind(store, config)
        .await
        .context("starting the API server")?;
    tracing::info!(
        datastore = args.datastore.as_str(),
        "cluster state store open"
    );
    println!(
        "Kestrel API server on https://{}\n\n  export KUBECONFIG={}\n  kubectl get namespaces",
        server.local_addr(),
        server.admin_kubeconfig().display()
    );
    let kubeconfig = server.scheduler_kubeconfig().to_owned();
    let scheduler = tokio::spawn(async move { super::scheduler::in_server(&kubeconfig).await });
    // The controllers are the server's clients like any other, under their
    // own identity (system:kube-controller-manager, not system:masters).
    // They campaign on the Lease as a standalone controller manager does, so
    // several servers (on etcd) or a separate `kestrel controller-manager`
    // never act at once.
    let client = kestrel_client::client_from(server.controller_manager_kubeconfig())
        .await
        .context("client for the controllers")?;
    let mut options = args.controllers.options(true);
    // The CA and the service account key are this server's own.
    options.root_ca = Some(server.ca_pem().to_owned());
    options.legacy_token_signer = Some(super::controller_manager::legacy_signer(
        &kestrel_apiserver::serviceaccount::key_path(&args.data_dir),
    )?);
    let controllers =
        kestrel_controllers::Manager::new(client, options).context("invalid controller options")?;
    tokio::spawn(async move {
        if let Err(e) = controllers.run(std::future::pending()).await {
            tracing::error!(error = %e, "controller manager stopped");
        }
    });
    server.serve(shutdown_signal()).await.context("serving")?;
    scheduler.abort();
    tracing::info!("API server stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
