//! In-process server harness for tests (feature `testing`): the real SQLite
//! store in a directory, the server on 127.0.0.1 with a random port, and
//! kube-rs clients for it. The controller, scheduler and agent tests use it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{ApiServer, Config};
use kestrel_store::sqlite::{SqliteConfig, SqliteStore};
use tokio::sync::oneshot;

/// A running server and what is needed to talk to it.
#[expect(
    missing_debug_implementations,
    reason = "holds a store trait object; test-only"
)]
pub struct TestServer {
    pub dir: PathBuf,
    pub addr: std::net::SocketAddr,
    pub kubeconfig: PathBuf,
    pub node_token: String,
    pub ca_pem: String,
    pub store: Arc<dyn kestrel_store::Store>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Start a server whose data (store and credentials) live in `dir`.
    pub async fn start_in(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Self {
        let store = SqliteStore::open(SqliteConfig::new(dir.join("state.db")))
            .await
            .expect("open the SQLite store");
        let mut cfg = Config::new(dir);
        cfg.bind_address = "127.0.0.1".parse().expect("ip");
        cfg.secure_port = 0;
        tweak(&mut cfg);
        let store: Arc<dyn kestrel_store::Store> = Arc::new(store);
        let server = ApiServer::bind(store.clone(), cfg)
            .await
            .expect("bind the API server");
        let (stop, rx) = oneshot::channel();
        let addr = server.local_addr();
        let kubeconfig = server.admin_kubeconfig().to_owned();
        let node_token = server.node_token().to_owned();
        let ca_pem = server.ca_pem().to_owned();
        let task = tokio::spawn(async move {
            server
                .serve(async {
                    let _ = rx.await;
                })
                .await
                .expect("serve");
        });
        Self {
            dir: dir.to_owned(),
            addr,
            kubeconfig,
            node_token,
            ca_pem,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stop serving and wait for the accept loop to end.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// A kube-rs client with the admin credentials from admin.kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("kubeconfig");
        kube::Client::try_from(cfg).expect("client")
    }

    /// A client that trusts the CA but presents no credentials.
    pub fn anonymous(&self) -> kube::Client {
        let mut cfg = kube::Config::new(format!("https://{}", self.addr).parse().expect("url"));
        cfg.root_cert = Some(vec![pem_der(&self.ca_pem)]);
        kube::Client::try_from(cfg).expect("client")
    }

    /// A client with a bearer token.
    pub fn with_token(&self, token: &str) -> kube::Client {
        let mut cfg = kube::Config::new(format!("https://{}", self.addr).parse().expect("url"));
        cfg.root_cert = Some(vec![pem_der(&self.ca_pem)]);
        cfg.auth_info.token = Some(token.to_owned().into());
        kube::Client::try_from(cfg).expect("client")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// DER of the first PEM block.
pub fn pem_der(pem: &str) -> Vec<u8> {
    crate::pki::pem_der(pem).expect("PEM")
}
