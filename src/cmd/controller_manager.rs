//! `kestrel controller-manager`: the controllers alone, for HA control
//! planes (run several with `--leader-elect`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

/// Options shared by `kestrel controller-manager` and `kestrel server`.
#[derive(Debug, Clone, Args)]
pub struct ManagerArgs {
    /// Pod address range; each node gets a /--node-cidr-mask-size of it.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// Prefix length of each node's podCIDR.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// How long a node may go without renewing its Lease before it is
    /// marked unreachable (e.g. 40s, 2m).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// How often node health is checked.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub node_monitor_period: Duration,
}

impl ManagerArgs {
    /// The controller manager's options from these flags.
    pub fn options(&self, leader_elect: bool) -> kestrel_controllers::Options {
        kestrel_controllers::Options {
            cluster_cidr: self.cluster_cidr.clone(),
            node_cidr_mask_size: self.node_cidr_mask_size,
            node_monitor_grace_period: self.node_monitor_grace_period,
            node_monitor_period: self.node_monitor_period,
            leader_elect,
            ..Default::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct ControllerManagerArgs {
    /// kubeconfig of the API server (default: $KUBECONFIG).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Run controllers only while holding the Lease
    /// kube-system/kube-controller-manager; standbys take over within 15 s.
    #[arg(long)]
    leader_elect: bool,
    #[command(flatten)]
    manager: ManagerArgs,
    /// Accepted for upstream compatibility; the default tolerations are
    /// added at pod admission by the API server (`kestrel server` has the
    /// same flag).
    #[arg(long, default_value_t = 300)]
    default_not_ready_toleration_seconds: i64,
    /// Accepted for upstream compatibility; see
    /// --default-not-ready-toleration-seconds.
    #[arg(long, default_value_t = 300)]
    default_unreachable_toleration_seconds: i64,
    /// CA bundle (PEM) published as `kube-root-ca.crt` in every namespace
    /// and put in token Secrets (default: the kubeconfig's CA).
    #[arg(long)]
    root_ca_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, P-256) legacy ServiceAccount tokens are
    /// signed with: `kestrel server`'s `DATA_DIR/tls/service-account.key`.
    /// Without it token Secrets are not filled.
    #[arg(long)]
    service_account_private_key_file: Option<PathBuf>,
}

/// Signs legacy ServiceAccount tokens with the API server's key, as
/// upstream's token controller does with `--service-account-private-key-file`.
#[derive(Debug)]
struct LegacySigner(kestrel_apiserver::serviceaccount::SigningKey);

impl kestrel_controllers::legacytoken::LegacyTokenSigner for LegacySigner {
    fn legacy_token(
        &self,
        namespace: &str,
        sa_name: &str,
        sa_uid: &str,
        secret_name: &str,
    ) -> Result<String, String> {
        self.0
            .sign(&kestrel_apiserver::serviceaccount::token::legacy_claims(
                namespace,
                sa_name,
                sa_uid,
                secret_name,
            ))
    }
}

/// The legacy token signer for the key at `path`.
pub fn legacy_signer(
    path: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<dyn kestrel_controllers::legacytoken::LegacyTokenSigner>> {
    let key = kestrel_apiserver::serviceaccount::SigningKey::load(path)
        .context("loading the service account private key")?;
    Ok(std::sync::Arc::new(LegacySigner(key)))
}

/// The CA of the kubeconfig's current cluster, PEM: inline
/// (`certificate-authority-data`) or from its file.
fn kubeconfig_ca(path: &std::path::Path) -> anyhow::Result<Option<String>> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let context = kc.current_context.as_deref().and_then(|c| {
        kc.contexts
            .iter()
            .find(|n| n.name == c)
            .and_then(|n| n.context.as_ref())
    });
    let cluster = context
        .and_then(|c| kc.clusters.iter().find(|n| n.name == c.cluster))
        .or(kc.clusters.first())
        .and_then(|n| n.cluster.as_ref());
    let Some(cluster) = cluster else {
        return Ok(None);
    };
    if let Some(data) = &cluster.certificate_authority_data {
        use base64::Engine as _;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .context("decoding certificate-authority-data")?;
        return Ok(Some(String::from_utf8_lossy(&pem).into_owned()));
    }
    match &cluster.certificate_authority {
        Some(file) => Ok(Some(
            std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?,
        )),
        None => Ok(None),
    }
}

pub async fn run(args: ControllerManagerArgs) -> anyhow::Result<()> {
    let kubeconfig = kestrel_client::kubeconfig_path(args.kubeconfig.as_deref())?;
    let client = kestrel_client::client_from(&kubeconfig)
        .await
        .context("connecting to the API server")?;
    let mut options = args.manager.options(args.leader_elect);
    options.root_ca = match &args.root_ca_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading --root-ca-file {}", p.display()))?,
        ),
        None => kubeconfig_ca(&kubeconfig)?,
    };
    if let Some(p) = &args.service_account_private_key_file {
        options.legacy_token_signer = Some(legacy_signer(p)?);
    }
    let manager =
        kestrel_controllers::Manager::new(client, options).context("invalid controller options")?;
    tracing::info!(
        leader_elect = args.leader_elect,
        not_ready_toleration_seconds = args.default_not_ready_toleration_seconds,
        unreachable_toleration_seconds = args.default_unreachable_toleration_seconds,
        "starting the controller manager"
    );
    manager
        .run(crate::cmd::server::shutdown_signal())
        .await
        .context("controller manager")?;
    tracing::info!("controller manager stopped");
    Ok(())
}

/// `40s`, `2m`, `1h`, `500ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 40s or 2m"))?;
    let ms = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_ca_comes_from_the_kubeconfig() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().expect("tmp");
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let data = base64::engine::general_purpose::STANDARD.encode(pem);
        let kc = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: other\n  cluster: {{server: https://x}}\n- name: k\n  cluster: {{server: https://k, certificate-authority-data: {data}}}\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nusers:\n- name: u\n  user: {{}}\n"
        );
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, kc).expect("write");
        assert_eq!(kubeconfig_ca(&path).expect("read").as_deref(), Some(pem));
        // A CA file instead of inline data.
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, pem).expect("write");
        let kc = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {{server: https://k, certificate-authority: {}}}\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nusers:\n- name: u\n  user: {{}}\n",
            ca.display()
        );
        std::fs::write(&path, kc).expect("write");
        assert_eq!(kubeconfig_ca(&path).expect("read").as_deref(), Some(pem));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("40s"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("4 days").is_err());
        assert!(parse_duration("s").is_err());
    }
}
