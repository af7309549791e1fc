//! The CNI 1.0 wire formats: the network configuration on stdin, the
//! environment, and the result, version and error documents on stdout.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The version this plugin answers in.
pub const CNI_VERSION: &str = "1.0.0";
/// The versions it accepts.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0"];
/// The gateway every pod routes through: link-local, resolved by a permanent
/// neighbour entry to the node end of the pod's veth, so no pod-CIDR address
/// is spent on it.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The network configuration the agent writes, as the runtime passes it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The CNI version the runtime speaks.
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// The plugin type (`kestrel-cni`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The node's pod CIDR (its `spec.podCIDR`).
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    /// Where IPAM state lives.
    pub data_dir: PathBuf,
    /// The node agent's notification socket; none means do not notify.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// MTU of the pod interface.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
}

fn default_mtu() -> u32 {
    1500
}

impl NetConf {
    /// Parses and checks the configuration from stdin's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let conf: Self = serde_json::from_slice(bytes).map_err(Error::Decode)?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(Error::IncompatibleVersion(conf.cni_version));
        }
        if !(576..=65535).contains(&conf.mtu) {
            return Err(Error::InvalidConfig(format!(
                "mtu {} is outside 576..=65535",
                conf.mtu
            )));
        }
        if !conf.data_dir.is_absolute() {
            return Err(Error::InvalidConfig(format!(
                "dataDir {:?} must be absolute",
                conf.data_dir
            )));
        }
        Ok(conf)
    }
}

/// The operation the runtime asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Add the container to the network.
    Add,
    /// Remove it.
    Del,
    /// Verify it is as ADD left it.
    Check,
    /// Report supported versions.
    Version,
}

/// The `CNI_*` environment of one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// The operation.
    pub command: Command,
    /// The sandbox's container ID.
    pub container_id: String,
    /// Path of the sandbox's network namespace (may be empty for DEL).
    pub netns: Option<PathBuf>,
    /// The interface to create inside it.
    pub ifname: String,
    /// `CNI_ARGS` key-value pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, ...).
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the invocation from environment variables.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(Error::InvalidEnvironment(format!(
                    "unknown CNI_COMMAND {other:?}"
                )));
            }
            None => return Err(Error::InvalidEnvironment("CNI_COMMAND is not set".into())),
        };
        let required = |name: &str| {
            var(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::InvalidEnvironment(format!("{name} is not set")))
        };
        if command == Command::Version {
            return Ok(Self {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                args: BTreeMap::new(),
            });
        }
        let container_id = required("CNI_CONTAINERID")?;
        let ifname = required("CNI_IFNAME")?;
        if ifname.len() > 15 || ifname.contains('/') || ifname.contains(char::is_whitespace) {
            return Err(Error::InvalidEnvironment(format!(
                "CNI_IFNAME {ifname:?} is not a valid interface name"
            )));
        }
        let netns = match command {
            // DEL must succeed even when the namespace is already gone.
            Command::Del => var("CNI_NETNS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            _ => Some(PathBuf::from(required("CNI_NETNS")?)),
        };
        let mut args = BTreeMap::new();
        for pair in var("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                Error::InvalidEnvironment(format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"))
            })?;
            args.insert(key.to_owned(), value.to_owned());
        }
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            args,
        })
    }

    /// A CNI_ARGS value.
    pub fn arg(&self, key: &str) -> &str {
        self.args.get(key).map_or("", String::as_str)
    }
}

/// One interface in a result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    pub mac: String,
    /// The namespace path, for interfaces inside the sandbox.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sandbox: Option<String>,
}

/// One address in a result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpConfig {
    /// The address with its prefix.
    pub address: Ipv4Net,
    /// The gateway.
    pub gateway: Ipv4Addr,
    /// Index into `interfaces`.
    pub interface: usize,
}

/// One route in a result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub dst: Ipv4Net,
    /// Next hop.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gw: Option<Ipv4Addr>,
}

/// The ADD result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AddResult {
    /// The version of this document.
    pub cni_version: String,
    /// Host and sandbox interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes inside the sandbox.
    pub routes: Vec<Route>,
}

/// The document printed for an error.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDoc {
    /// The version of this document.
    pub cni_version: String,
    /// The CNI error code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// The cause chain.
    pub details: String,
}

impl ErrorDoc {
    /// Builds the document for an error.
    pub fn from_error(error: &Error) -> Self {
        let mut details = Vec::new();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            details.push(cause.to_string());
            source = cause.source();
        }
        Self {
            cni_version: CNI_VERSION.into(),
            code: error.code(),
            msg: error.to_string(),
            details: details.join(": "),
        }
    }
}

#[cfg(test)]
mod tests;
