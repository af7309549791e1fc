//! The cluster's certificates and credentials, kept under the data dir so a
//! restart keeps every credential it issued:
//!
//! ```text
//! DIR/tls/ca.crt, ca.key              cluster CA (10 years)
//! DIR/tls/serving.crt, serving.key    API server serving cert (1 year)
//! DIR/tls/serving.sans                the SANs it was issued for
//! DIR/tls/admin.crt, admin.key        CN=admin, O=system:masters
//! DIR/tls/kubelet-client.crt, .key    CN=kube-apiserver-kubelet-client:
//!                                     the API server's identity towards node APIs
//! DIR/tls/kube-scheduler.crt, .key    CN=system:kube-scheduler
//! DIR/tls/kube-controller-manager.crt, .key
//!                                     CN=system:kube-controller-manager
//! DIR/admin.kubeconfig                kubeconfig with the admin cert
//! DIR/scheduler.kubeconfig, controller-manager.kubeconfig
//!                                     the components' own, least-privilege ones
//! DIR/node-token                      join token an agent trades for a node cert
//! DIR/tokens.csv                      static bearer tokens: token,user,uid,"g1,g2"
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::auth::User;

/// Errors creating or loading credentials.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a credential file failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Generating, parsing or signing a certificate failed.
    #[error("{what}")]
    Cert {
        /// What was being done.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// A credential file is malformed.
    #[error("malformed {0}")]
    Malformed(PathBuf),
}

type Result<T, E = PkiError> = std::result::Result<T, E>;

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Cert { what, source }
}

const CA_DAYS: i64 = 3650;
/// The common name of the API server's client certificate towards node
/// APIs, upstream's `kube-apiserver-kubelet-client`; the node API serves
/// nobody else.
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
const LEAF_DAYS: i64 = 365;
/// The scheduler's user, bound to the `system:kube-scheduler` ClusterRole.
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
/// The controller manager's user, bound to `system:kube-controller-manager`.
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";

/// The credentials loaded from (or created in) the data dir.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    /// CA certificate, PEM.
    pub ca_pem: String,
    ca_key_pem: String,
    /// Serving certificate chain, PEM.
    pub serving_cert_pem: String,
    /// Serving key, PEM.
    pub serving_key_pem: String,
    /// Admin client certificate, PEM.
    pub admin_cert_pem: String,
    /// Admin client key, PEM.
    pub admin_key_pem: String,
    /// The client certificate the API server presents to node APIs, PEM.
    pub kubelet_client_cert_pem: String,
    /// Its key, PEM.
    pub kubelet_client_key_pem: String,
    /// The scheduler's client certificate and key, PEM.
    pub scheduler: (String, String),
    /// The controller manager's client certificate and key, PEM.
    pub controller_manager: (String, String),
    /// The join token agents present to get a node certificate.
    pub node_token: String,
    /// Static bearer tokens.
    pub tokens: Vec<(String, User)>,
}

fn read_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            what: "reading",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Write a file readable only by its owner: these are private keys and tokens.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| PkiError::Io {
        what: "writing",
        path: path.to_owned(),
        source,
    };
    // Write to a temp file and rename so a crash never leaves half a key.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore as _;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn leaf_params(cn: &str, orgs: &[&str], days: i64) -> Result<CertificateParams> {
    let mut p =
        CertificateParams::new(Vec::<String>::new()).map_err(cert_err("certificate parameters"))?;
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
    p.not_after = OffsetDateTime::now_utc() + Duration::days(days);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

impl Pki {
    /// Load the credentials under `dir`, creating whatever is missing. The
    /// serving certificate is reissued when the wanted SANs change.
    pub fn load_or_create(dir: &Path, sans_ips: &[IpAddr], sans_dns: &[String]) -> Result<Self> {
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).map_err(|source| PkiError::Io {
            what: "creating",
            path: tls.clone(),
            source,
        })?;

        // CA.
        let (ca_pem, ca_key_pem) = match (
            read_opt(&tls.join("ca.crt"))?,
            read_opt(&tls.join("ca.key"))?,
        ) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let key = KeyPair::generate().map_err(cert_err("generating the CA key"))?;
                let mut p = CertificateParams::new(Vec::<String>::new())
                    .map_err(cert_err("CA parameters"))?;
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, "kestrel-ca");
                p.distinguished_name = dn;
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                p.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
                p.not_after = OffsetDateTime::now_utc() + Duration::days(CA_DAYS);
                let cert = p
                    .self_signed(&key)
                    .map_err(cert_err("self-signing the CA"))?;
                let (c, k) = (cert.pem(), key.serialize_pem());
                // Key first: a CA cert without its key would be useless.
                write_private(&tls.join("ca.key"), &k)?;
                write_private(&tls.join("ca.crt"), &c)?;
                tracing::info!(dir = %tls.display(), "generated cluster CA");
                (c, k)
            }
        };

        let mut pki = Pki {
            dir: dir.to_owned(),
            ca_pem,
            ca_key_pem,
            serving_cert_pem: String::new(),
            serving_key_pem: String::new(),
            admin_cert_pem: String::new(),
            admin_key_pem: String::new(),
            kubelet_client_cert_pem: String::new(),
            kubelet_client_key_pem: String::new(),
            scheduler: Default::default(),
            controller_manager: Default::default(),
            node_token: String::new(),
            tokens: Vec::new(),
        };

        // Serving certificate.
        let mut want: Vec<String> = sans_dns.to_vec();
        want.extend(sans_ips.iter().map(ToString::to_string));
        want.sort();
        want.dedup();
        let want_line = want.join(",");
        let have_line = read_opt(&tls.join("serving.sans"))?;
        match (
            read_opt(&tls.join("serving.crt"))?,
            read_opt(&tls.join("serving.key"))?,
            have_line,
        ) {
            (Some(c), Some(k), Some(h)) if h.trim() == want_line => {
                pki.serving_cert_pem = c;
                pki.serving_key_pem = k;
            }
            _ => {
                let mut p = leaf_params("kube-apiserver", &[], LEAF_DAYS)?;
                p.subject_alt_names = sans_dns
                    .iter()
                    .filter_map(|d| d.clone().try_into().ok().map(SanType::DnsName))
                    .chain(sans_ips.iter().map(|ip| SanType::IpAddress(*ip)))
                    .collect();
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                let (c, k) = pki.issue(&p)?;
                write_private(&tls.join("serving.key"), &k)?;
                write_private(&tls.join("serving.crt"), &c)?;
                write_private(&tls.join("serving.sans"), &want_line)?;
                pki.serving_cert_pem = c;
                pki.serving_key_pem = k;
            }
        }

        (pki.admin_cert_pem, pki.admin_key_pem) =
            pki.load_or_issue_client(&tls, "admin", "admin", &["system:masters"])?;
        // The API server's client certificate for node APIs (logs, exec):
        // the node API knows it by its CN; it needs no group here.
        (pki.kubelet_client_cert_pem, pki.kubelet_client_key_pem) =
            pki.load_or_issue_client(&tls, "kubelet-client", KUBELET_CLIENT_CN, &[])?;
        pki.scheduler = pki.load_or_issue_client(&tls, "kube-scheduler", SCHEDULER_USER, &[])?;
        pki.controller_manager = pki.load_or_issue_client(
            &tls,
            "kube-controller-manager",
            CONTROLLER_MANAGER_USER,
            &[],
        )?;

        // Node join token.
        let token_path = dir.join("node-token");
        pki.node_token = match read_opt(&token_path)? {
            Some(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => {
                let t = format!("K10{}::node:{}", pki.ca_hash(), random_hex(16));
                write_private(&token_path, &format!("{t}\n"))?;
                t
            }
        };

        // Static bearer tokens.
        let tokens_path = dir.join("tokens.csv");
        pki.tokens = match read_opt(&tokens_path)? {
            Some(s) => parse_tokens(&s).ok_or(PkiError::Malformed(tokens_path))?,
            None => {
                let admin = random_hex(24);
                write_private(
                    &tokens_path,
                    &format!("{admin},admin-token,admin-token,\"system:masters\"\n"),
                )?;
                parse_tokens(&format!(
                    "{admin},admin-token,admin-token,\"system:masters\"\n"
                ))
                .unwrap_or_default()
            }
        };
        Ok(pki)
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SHA-256 of the CA certificate's DER, hex: lets an agent holding the
    /// node token check it is talking to the right cluster before trusting it.
    pub fn ca_hash(&self) -> String {
        let der = pem_der(&self.ca_pem).unwrap_or_default();
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &der))
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.ca_key_pem).map_err(cert_err("loading the CA key"))?;
        Issuer::from_ca_cert_pem(&self.ca_pem, key).map_err(cert_err("loading the CA certificate"))
    }

    fn issue(&self, params: &CertificateParams) -> Result<(String, String)> {
        let key = KeyPair::generate().map_err(cert_err("generating a key"))?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(cert_err("signing a certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A kubeconfig for `server` with a fresh client certificate for `user`
    /// in `groups`, signed by the CA under `dir` (what an administrator
    /// does by hand with openssl; tests use it to act as other users).
    pub fn user_kubeconfig(
        dir: &Path,
        server: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<String> {
        let tls = dir.join("tls");
        let read =
            |f: &str| read_opt(&tls.join(f))?.ok_or_else(|| PkiError::Malformed(tls.join(f)));
        let pki = Pki {
            dir: dir.to_owned(),
            ca_pem: read("ca.crt")?,
            ca_key_pem: read("ca.key")?,
            serving_cert_pem: String::new(),
            serving_key_pem: String::new(),
            admin_cert_pem: String::new(),
            admin_key_pem: String::new(),
            kubelet_client_cert_pem: String::new(),
            kubelet_client_key_pem: String::new(),
            scheduler: Default::default(),
            controller_manager: Default::default(),
            node_token: String::new(),
            tokens: Vec::new(),
        };
        let (c, k) = pki.issue_client(user, groups)?;
        Ok(pki.kubeconfig(server, user, &c, &k))
    }

    /// `TLS/STEM.crt` and `.key`, issued anew when missing or when they say
    /// another identity than `user` in `groups` (older data dirs gave the
    /// kubelet-client certificate `system:masters`).
    fn load_or_issue_client(
        &self,
        tls: &Path,
        stem: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<(String, String)> {
        let (crt, key) = (
            tls.join(format!("{stem}.crt")),
            tls.join(format!("{stem}.key")),
        );
        if let (Some(c), Some(k)) = (read_opt(&crt)?, read_opt(&key)?) {
            let same = pem_der(&c)
                .and_then(|der| crate::auth::user_from_cert(&der))
                .is_some_and(|u| {
                    u.name == user
                        && u.groups
                            .iter()
                            .filter(|g| *g != crate::auth::AUTHENTICATED)
                            .eq(groups.iter())
                });
            if same {
                return Ok((c, k));
            }
        }
        let (c, k) = self.issue_client(user, groups)?;
        write_private(&key, &k)?;
        write_private(&crt, &c)?;
        Ok((c, k))
    }

    /// Issue a client certificate and key for `user` in `groups`.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<(String, String)> {
        let mut p = leaf_params(user, groups, LEAF_DAYS)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(&p)
    }

    /// Sign a PEM CSR as a node client certificate: whatever subject the CSR
    /// asks for, the certificate says CN=system:node:NAME, O=system:nodes.
    pub fn sign_node_csr(&self, node: &str, csr_pem: &str) -> Result<String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(cert_err("parsing the certificate signing request"))?;
        let groups = ["system:nodes"];
        let mut p = leaf_params(&format!("system:node:{node}"), &groups, LEAF_DAYS)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params = p;
        let cert = csr
            .signed_by(&self.issuer()?)
            .map_err(cert_err("signing the node certificate"))?;
        Ok(cert.pem())
    }

    /// A kubeconfig for `server` with the given client cert and key.
    pub fn kubeconfig(&self, server: &str, user: &str, cert_pem: &str, key_pem: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kestrel\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: kestrel\n  context:\n    cluster: kestrel\n    user: {user}\ncurrent-context: kestrel\npreferences: {{}}\n",
            ca = b(&self.ca_pem),
            cert = b(cert_pem),
            key = b(key_pem),
        )
    }

    /// Write `DIR/admin.kubeconfig` pointing at `server`.
    pub fn write_admin_kubeconfig(&self, server: &str) -> Result<PathBuf> {
        let path = self.dir.join("admin.kubeconfig");
        write_private(
            &path,
            &self.kubeconfig(server, "admin", &self.admin_cert_pem, &self.admin_key_pem),
        )?;
        Ok(path)
    }

    /// Write `DIR/scheduler.kubeconfig` and `DIR/controller-manager.kubeconfig`
    /// pointing at `server`, with the components' own certificates.
    pub fn write_component_kubeconfigs(&self, server: &str) -> Result<(PathBuf, PathBuf)> {
        let sched = self.dir.join("scheduler.kubeconfig");
        let (c, k) = &self.scheduler;
        write_private(&sched, &self.kubeconfig(server, SCHEDULER_USER, c, k))?;
        let cm = self.dir.join("controller-manager.kubeconfig");
        let (c, k) = &self.controller_manager;
        write_private(&cm, &self.kubeconfig(server, CONTROLLER_MANAGER_USER, c, k))?;
        Ok((sched, cm))
    }
}

/// The DER bytes of the first PEM block.
pub fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Upstream's static token file format: `token,user,uid[,"group1,group2"]`.
fn parse_tokens(s: &str) -> Option<Vec<(String, User)>> {
    let mut out = Vec::new();
    for line in s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut parts = line.splitn(4, ',');
        let token = parts.next()?.trim().to_owned();
        let name = parts.next()?.trim().to_owned();
        let _uid = parts.next()?;
        let groups: Vec<String> = parts
            .next()
            .map(|g| {
                g.trim()
                    .trim_matches('"')
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if token.is_empty() || name.is_empty() {
            return None;
        }
        out.push((token, User::new(name, groups)));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_survive_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ips = ["127.0.0.1".parse().expect("ip")];
        let dns = ["localhost".to_owned()];
        let a = Pki::load_or_create(dir.path(), &ips, &dns).expect("create");
        let b = Pki::load_or_create(dir.path(), &ips, &dns).expect("reload");
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.serving_cert_pem, b.serving_cert_pem);
        assert_eq!(a.admin_cert_pem, b.admin_cert_pem);
        assert_eq!(a.kubelet_client_cert_pem, b.kubelet_client_cert_pem);
        let kubelet_client =
            crate::auth::user_from_cert(&pem_der(&a.kubelet_client_cert_pem).expect("der"))
                .expect("identity");
        assert_eq!(kubelet_client.name, KUBELET_CLIENT_CN);
        assert_eq!(kubelet_client.groups, ["system:authenticated"]);
        assert_eq!(a.node_token, b.node_token);
        assert_eq!(a.tokens, b.tokens);
        assert!(
            a.node_token
                .starts_with(&format!("K10{}::node:", a.ca_hash()))
        );
        // New SANs reissue the serving cert under the same CA.
        let c = Pki::load_or_create(dir.path(), &ips, &["other".to_owned()]).expect("reissue");
        assert_eq!(a.ca_pem, c.ca_pem);
        assert_ne!(a.serving_cert_pem, c.serving_cert_pem);
    }

    #[test]
    fn node_csr_gets_node_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(dir.path(), &[], &[]).expect("create");
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name
            .push(DnType::CommonName, "system:masters-wannabe");
        let csr = p.serialize_request(&key).expect("csr").pem().expect("pem");
        let cert = pki.sign_node_csr("n1", &csr).expect("sign");
        let der = pem_der(&cert).expect("der");
        let user = crate::auth::user_from_cert(&der).expect("identity");
        assert_eq!(user.name, "system:node:n1");
        assert_eq!(user.groups, ["system:nodes", "system:authenticated"]);
    }

    #[test]
    fn token_file_format() {
        let t = parse_tokens("abc,alice,1,\"dev,ops\"\n# c\nxyz,bob,2\n").expect("parse");
        assert_eq!(t[0].1.groups, vec!["dev".to_owned(), "ops".to_owned()]);
        assert!(t[1].1.groups.is_empty());
        assert!(parse_tokens(",x,1").is_none());
    }
}
