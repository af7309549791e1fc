//! Joining the cluster: trade the node token for a client certificate.
//!
//! The token is `K10<sha256 of the CA certificate>::node:<secret>`, as in
//! k3s. The agent first fetches the CA from `/cacerts` without verifying
//! the server (it has nothing to verify with yet) and sending nothing
//! secret, checks the CA against the hash in the token, and only then
//! sends the token, over a connection verified with that CA, together with
//! a CSR for `system:node:<name>`. The signed certificate and the key that
//! never left the node become `<data-dir>/kubelet.kubeconfig`; a restarted
//! agent reuses it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// The path of the join endpoint on the API server.
const JOIN_PATH: &str = "/kestrel/v1/node-join";
/// The CA bundle path on the API server.
const CACERTS_PATH: &str = "/cacerts";

/// A parsed node token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeToken {
    /// Hex SHA-256 of the cluster CA certificate (DER).
    pub ca_hash: String,
    /// The whole token, sent as the bearer credential.
    pub raw: String,
}

impl NodeToken {
    /// Parse `K10<hex sha256>::node:<secret>`.
    pub fn parse(token: &str) -> anyhow::Result<Self> {
        let token = token.trim();
        let Some(rest) = token.strip_prefix("K10") else {
            bail!(
                "the node token must start with K10 (read it from the server's data dir: node-token)"
            );
        };
        let Some((hash, secret)) = rest.split_once("::") else {
            bail!("the node token must look like K10<ca-hash>::node:<secret>");
        };
        ensure!(
            hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "the node token's CA hash must be 64 hex digits"
        );
        ensure!(
            secret.starts_with("node:") && secret.len() > "node:".len(),
            "the node token must look like K10<ca-hash>::node:<secret>"
        );
        Ok(Self {
            ca_hash: hash.to_ascii_lowercase(),
            raw: token.to_owned(),
        })
    }
}

/// The DER bytes of the first PEM block in `pem`.
pub fn pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    ensure!(!body.is_empty(), "no PEM block found");
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .context("PEM body is not base64")
}

/// The kubeconfig an agent uses, under its data dir.
pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubelet.kubeconfig")
}

/// The cluster CA the agent verified when it joined.
pub fn ca_path(data_dir: &Path) -> PathBuf {
    data_dir.join("ca.crt")
}

/// Join the cluster at `server` (unless this data dir already has
/// credentials) and return the kubeconfig path.
pub async fn join(
    server: &str,
    token: &NodeToken,
    node: &str,
    data_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let path = kubeconfig_path(data_dir);
    if path.exists() && ca_path(data_dir).exists() {
        return Ok(path);
    }
    let url: http::Uri = server
        .parse()
        .with_context(|| format!("--server {server:?} is not a URL"))?;
    // 1. The CA, unverified; nothing secret is sent.
    let mut cfg = kube::Config::new(url.clone());
    cfg.accept_invalid_certs = true;
    let anon = kube::Client::try_from(cfg).context("building the bootstrap client")?;
    let ca_pem = anon
        .request_text(
            http::Request::get(CACERTS_PATH)
                .body(Vec::new())
                .context("request")?,
        )
        .await
        .with_context(|| format!("fetching the cluster CA from {server}"))?;
    let got = hex(&Sha256::digest(pem_der(&ca_pem)?));
    ensure!(
        got == token.ca_hash,
        "the server at {server} presented a CA whose hash {got} does not match the node token's {}; wrong server or wrong token",
        token.ca_hash
    );
    // 2. The CSR, over a verified connection, with the token.
    let key = rcgen::KeyPair::generate().context("generating the node key")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).context("CSR params")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let csr = params
        .serialize_request(&key)
        .context("signing the CSR")?
        .pem()
        .context("encoding the CSR")?;
    let mut cfg = kube::Config::new(url);
    cfg.root_cert = Some(vec![pem_der(&ca_pem)?]);
    cfg.auth_info.token = Some(token.raw.clone().into());
    let client = kube::Client::try_from(cfg).context("building the join client")?;
    let body = serde_json::to_vec(&serde_json::json!({"nodeName": node, "csr": csr}))?;
    let resp = client
        .request_text(
            http::Request::post(JOIN_PATH)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .context("request")?,
        )
        .await
        .with_context(|| format!("joining {server} as node {node}"))?;
    let resp: serde_json::Value =
        serde_json::from_str(&resp).context("the join response is not JSON")?;
    let cert = resp["certificate"]
        .as_str()
        .context("the join response has no certificate")?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    std::fs::write(ca_path(data_dir), &ca_pem)
        .with_context(|| format!("writing {}", ca_path(data_dir).display()))?;
    write_private(
        &path,
        &kubeconfig(server, &ca_pem, cert, &key.serialize_pem()),
    )?;
    Ok(path)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kubeconfig(server: &str, ca: &str, cert: &str, key: &str) -> String {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kestrel\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: node\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: kestrel\n  context:\n    cluster: kestrel\n    user: node\ncurrent-context: kestrel\n",
        b(ca),
        b(cert),
        b(key)
    )
}

/// Write a file only its owner can read, atomically.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_parsing_is_strict() {
        let h = "a".repeat(64);
        let t = NodeToken::parse(&format!("K10{h}::node:s3cret\n")).expect("valid");
        assert_eq!(t.ca_hash, h);
        assert_eq!(t.raw, format!("K10{h}::node:s3cret"));
        for bad in [
            "".to_owned(),
            format!("K11{h}::node:x"),
            format!("K10{h}:node:x"),
            format!("K10{}::node:x", "a".repeat(63)),
            format!("K10{}::node:x", "g".repeat(64)),
            format!("K10{h}::node:"),
            format!("K10{h}::admin:x"),
        ] {
            assert!(NodeToken::parse(&bad).is_err(), "{bad:?} accepted");
        }
    }
}
