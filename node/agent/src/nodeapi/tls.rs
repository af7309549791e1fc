//! The node API's TLS: a self-signed serving certificate kept in the agent's
//! data dir, and client certificates required to chain to the cluster CA.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{Error, Result};

/// The common name of the API server's client certificate for kubelets, the
/// only caller the node API serves.
pub const API_SERVER_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

/// The node API's credentials.
#[derive(Clone)]
pub struct NodeApiTls {
    /// The cluster CA, PEM: client certificates must chain to it.
    pub ca_pem: String,
    /// The serving certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for NodeApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeApiTls").finish_non_exhaustive()
    }
}

impl NodeApiTls {
    /// Load `dir/kubelet.crt` and `dir/kubelet.key`, or generate a
    /// self-signed pair for these SANs (node IPs and host name) and keep it
    /// there. A pair issued for other SANs (`dir/kubelet.sans`) is replaced.
    pub fn load_or_create(
        dir: &Path,
        ca_pem: impl Into<String>,
        ips: &[IpAddr],
        dns: &[String],
    ) -> Result<Self> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { what, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let (cert_path, key_path, sans_path) = (
            dir.join("kubelet.crt"),
            dir.join("kubelet.key"),
            dir.join("kubelet.sans"),
        );
        let mut want: Vec<String> = dns.to_vec();
        want.extend(ips.iter().map(ToString::to_string));
        want.sort();
        want.dedup();
        let want = want.join(",");
        let read = |p: &Path| std::fs::read_to_string(p).ok();
        if let (Some(cert_pem), Some(key_pem), Some(have)) =
            (read(&cert_path), read(&key_path), read(&sans_path))
            && have.trim() == want
        {
            return Ok(Self {
                ca_pem: ca_pem.into(),
                cert_pem,
                key_pem,
            });
        }
        let (cert_pem, key_pem) = self_signed(ips, dns)?;
        write_private(&key_path, &key_pem).map_err(io("writing", &key_path))?;
        write_private(&cert_path, &cert_pem).map_err(io("writing", &cert_path))?;
        write_private(&sans_path, &want).map_err(io("writing", &sans_path))?;
        tracing::info!(dir = %dir.display(), sans = %want, "generated the node API serving certificate");
        Ok(Self {
            ca_pem: ca_pem.into(),
            cert_pem,
            key_pem,
        })
    }

    /// The TLS acceptor: HTTP/1.1 only, a client certificate chaining to
    /// the CA required.
    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor> {
        let err = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| err(&e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| err(&e))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| err(&e))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| err(&e))?;
        // Upgrades (exec, attach) are HTTP/1.1 only.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(cfg)))
    }
}

fn self_signed(ips: &[IpAddr], dns: &[String]) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(Error::Cert)?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(Error::Cert)?;
    let mut dn = DistinguishedName::new();
    let host = dns.first().map_or("kestrel-node", String::as_str);
    dn.push(DnType::CommonName, format!("{host}@kestrel-agent"));
    p.distinguished_name = dn;
    p.subject_alt_names = dns
        .iter()
        .filter_map(|d| d.clone().try_into().ok().map(SanType::DnsName))
        .chain(ips.iter().map(|ip| SanType::IpAddress(*ip)))
        .collect();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::days(365);
    let cert = p.self_signed(&key).map_err(Error::Cert)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Write a file only its owner can read, via a rename so a crash never
/// leaves half a key.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The subject common name of a DER certificate.
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_pair_is_kept_and_reissued_for_new_sans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().expect("ip")];
        let dns = vec!["node-a".to_owned()];
        let a = NodeApiTls::load_or_create(dir.path(), "", &ips, &dns).expect("create");
        let b = NodeApiTls::load_or_create(dir.path(), "", &ips, &dns).expect("reload");
        assert_eq!(a.cert_pem, b.cert_pem);
        let c = NodeApiTls::load_or_create(dir.path(), "", &ips, &["node-b".to_owned()])
            .expect("reissue");
        assert_ne!(a.cert_pem, c.cert_pem);
        let der = CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).expect("pem");
        assert_eq!(common_name(&der).as_deref(), Some("node-b@kestrel-agent"));
    }
}
