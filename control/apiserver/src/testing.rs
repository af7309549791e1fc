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
    /// Without a controller manager no namespace gets its `default`
    /// ServiceAccount, so this server runs with
    /// `--disable-admission-plugins=ServiceAccount`, as upstream's
    /// integration test servers do.
    pub async fn start_in(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_admission(dir, |cfg| {
            cfg.disable_admission_plugins
                .push("ServiceAccount".to_owned());
            tweak(cfg);
        })
        .await
    }

    /// [`Self::start_in`] with every admission plugin, ServiceAccount
    /// admission included (pods then need their ServiceAccount to exist).
    pub async fn start_with_admission(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Self {
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

    /// Write a kubeconfig for `user` in `groups` (a client certificate from
    /// the cluster CA) and return its path.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let kc = crate::pki::Pki::user_kubeconfig(
            &self.dir,
            &format!("https://{}", self.addr),
            user,
            groups,
        )
        .expect("issue a user certificate");
        let path = self
            .dir
            .join(format!("{}.kubeconfig", user.replace(':', "_")));
        std::fs::write(&path, kc).expect("write kubeconfig");
        path
    }

    /// A kube-rs client for `user` in `groups`.
    pub async fn user_client(&self, user: &str, groups: &[&str]) -> kube::Client {
        let path = self.user_kubeconfig(user, groups);
        let kc = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
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

/// Send `method path` through `client` with `body` as JSON; the status code
/// and the answer as JSON (`Null` when it is not JSON).
pub async fn request(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    request_raw(client, method, path, "application/json", body).await
}

/// Send `method path` with a body of content type `ct`, as it is.
pub async fn request_raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    ct: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct)
        .body(body)
        .expect("request");
    let resp = client
        .send(req.map(kube::client::Body::from))
        .await
        .expect("send");
    let code = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    (
        code,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// DER of the first PEM block.
pub fn pem_der(pem: &str) -> Vec<u8> {
    crate::pki::pem_der(pem).expect("PEM")
}
