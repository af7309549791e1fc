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
}

pub async fn run(args: ControllerManagerArgs) -> anyhow::Result<()> {
    let client = kestrel_client::connect(args.kubeconfig.as_deref())
        .await
        .context("connecting to the API server")?;
    let manager =
        kestrel_controllers::Manager::new(client, args.manager.options(args.leader_elect))
            .context("invalid controller options")?;
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
    fn durations() {
        assert_eq!(parse_duration("40s"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("4 days").is_err());
        assert!(parse_duration("s").is_err());
    }
}
