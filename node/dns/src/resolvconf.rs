//! `/etc/resolv.conf` as the resolver library reads it: nameservers,
//! search domains and options. The agent reads the host's file for the
//! upstream resolvers and for pods with `dnsPolicy: Default`.

use std::net::{IpAddr, SocketAddr};

/// A parsed resolv.conf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines, in order.
    pub nameservers: Vec<IpAddr>,
    /// The last `search` (or `domain`) line's domains.
    pub searches: Vec<String>,
    /// `options` words (`ndots:5`, `edns0`).
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses the text of a resolv.conf; unknown lines are ignored, as the
    /// resolver ignores them.
    pub fn parse(text: &str) -> Self {
        let mut rc = Self::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                        rc.nameservers.push(ip);
                    }
                }
                // The last of `search` and `domain` wins, as in glibc.
                Some("search" | "domain") => rc.searches = words.map(str::to_owned).collect(),
                Some("options") => rc.options.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
        rc
    }

    /// Reads and parses a file.
    pub fn read(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// The nameservers on port 53.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.nameservers
            .iter()
            .map(|ip| SocketAddr::new(*ip, 53))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_the_resolver() {
        let rc = ResolvConf::parse(
            "# comment\nnameserver 10.0.0.2\nnameserver  fe80::1 \nnameserver bogus\n\
             domain a.example\nsearch b.example c.example ; trailing\noptions ndots:2 edns0\n",
        );
        assert_eq!(
            rc.nameservers,
            vec![
                "10.0.0.2".parse::<IpAddr>().expect("ip"),
                "fe80::1".parse().expect("ip")
            ]
        );
        assert_eq!(rc.searches, ["b.example", "c.example"]);
        assert_eq!(rc.options, ["ndots:2", "edns0"]);
        assert_eq!(rc.upstreams()[0], "10.0.0.2:53".parse().expect("addr"));
    }
}
