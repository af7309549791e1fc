//! `kestrel-echo probe tcp|udp HOST:PORT COUNT`: the client half, for tests
//! that run inside a pod. It makes COUNT fresh connections (TCP) or
//! exchanges (UDP, each from a new socket) with an echo server, one at a
//! time, and prints how many answers came from each backend, with the
//! client address that backend saw and the peer address the client saw:
//!
//! ```text
//! 1012 pod=web-1 client=10.42.1.4 peer=10.43.0.20:9000
//! 3 error=refused
//! ```
//!
//! Ports are left out of the grouping (each connection has its own).
//!
//! `kestrel-echo reach tcp|udp TIMEOUT_MS HOST:PORT...` asks once, in
//! parallel, whether each target answers, for network policy matrices:
//! one line per target, in argument order, `HOST:PORT ok` or
//! `HOST:PORT fail=<why>`.

use std::{
    collections::BTreeMap,
    io::{self, BufRead as _, BufReader},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket},
    time::Duration,
};

/// How long one connection or exchange may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound on COUNT, so a typo cannot start an endless loop.
const MAX_COUNT: u64 = 100_000;

/// Runs the probe with the arguments after `probe`.
pub fn main(args: &[String]) -> Result<(), String> {
    let [proto, target, count] = args else {
        return Err("usage: kestrel-echo probe tcp|udp HOST:PORT COUNT".into());
    };
    let target: SocketAddr = target
        .to_socket_addrs()
        .map_err(|e| format!("{target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target}: no address"))?;
    let count: u64 = count
        .parse()
        .ok()
        .filter(|c| (1..=MAX_COUNT).contains(c))
        .ok_or_else(|| format!("COUNT must be 1..={MAX_COUNT}, not {count:?}"))?;
    let once: fn(SocketAddr) -> io::Result<String> = match proto.as_str() {
        "tcp" => tcp_once,
        "udp" => udp_once,
        other => return Err(format!("protocol must be tcp or udp, not {other:?}")),
    };
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..count {
        let key = once(target).unwrap_or_else(|e| format!("error={}", error_name(&e)));
        *seen.entry(key).or_default() += 1;
    }
    for (key, n) in seen {
        println!("{n} {key}");
    }
    Ok(())
}

/// Upper bound on the targets of one `reach`.
const MAX_TARGETS: usize = 256;

/// Runs `reach` with the arguments after it.
pub fn reach(args: &[String]) -> Result<(), String> {
    const USAGE: &str = "usage: kestrel-echo reach tcp|udp TIMEOUT_MS HOST:PORT...";
    let [proto, timeout, targets @ ..] = args else {
        return Err(USAGE.into());
    };
    if targets.is_empty() || targets.len() > MAX_TARGETS {
        return Err(format!("{USAGE} (1..={MAX_TARGETS} targets)"));
    }
    let timeout: u64 = timeout
        .parse()
        .ok()
        .filter(|t| (1..=60_000).contains(t))
        .ok_or_else(|| format!("TIMEOUT_MS must be 1..=60000, not {timeout:?}"))?;
    let timeout = Duration::from_millis(timeout);
    let once: fn(SocketAddr, Duration) -> io::Result<String> = match proto.as_str() {
        "tcp" => tcp_once_within,
        "udp" => udp_once_within,
        other => return Err(format!("protocol must be tcp or udp, not {other:?}")),
    };
    let addrs = targets
        .iter()
        .map(|t| {
            t.to_socket_addrs()
                .map_err(|e| format!("{t}: {e}"))?
                .next()
                .ok_or_else(|| format!("{t}: no address"))
        })
        .collect::<Result<Vec<SocketAddr>, String>>()?;
    let results: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = addrs
            .iter()
            .map(|a| s.spawn(move || once(*a, timeout)))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(Ok(_)) => "ok".to_owned(),
                Ok(Err(e)) => format!("fail={}", error_name(&e)),
                Err(_) => "fail=panic".to_owned(),
            })
            .collect()
    });
    for (t, r) in targets.iter().zip(results) {
        println!("{t} {r}");
    }
    Ok(())
}

fn tcp_once(target: SocketAddr) -> io::Result<String> {
    tcp_once_within(target, TIMEOUT)
}

fn udp_once(target: SocketAddr) -> io::Result<String> {
    udp_once_within(target, TIMEOUT)
}

fn tcp_once_within(target: SocketAddr, timeout: Duration) -> io::Result<String> {
    let stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let peer = stream.peer_addr()?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok(summarise(&line, peer))
}

fn udp_once_within(target: SocketAddr, timeout: Duration) -> io::Result<String> {
    // Unconnected on purpose: the reply's source must be the address we
    // sent to, or a DNS-style client would drop it.
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(b"probe", target)?;
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(summarise(text.lines().next().unwrap_or_default(), from))
}

/// `pod=X ip=Y client=A:P` from the server, and the peer we saw, without
/// the client's port.
fn summarise(line: &str, peer: SocketAddr) -> String {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or("?")
            .to_owned()
    };
    let client = field("client=");
    let client_ip = client
        .rsplit_once(':')
        .map_or(client.as_str(), |(ip, _)| ip);
    format!("pod={} client={client_ip} peer={peer}", field("pod="))
}

fn error_name(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused",
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout",
        io::ErrorKind::ConnectionReset => "reset",
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => "unreachable",
        io::ErrorKind::PermissionDenied => "denied",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_group_by_backend_and_client_ip() {
        let peer: SocketAddr = "10.43.0.20:9000".parse().expect("addr");
        assert_eq!(
            summarise("pod=web-1 ip=10.42.1.5 client=10.42.2.7:40000", peer),
            "pod=web-1 client=10.42.2.7 peer=10.43.0.20:9000"
        );
        assert_eq!(
            summarise("garbage", peer),
            "pod=? client=? peer=10.43.0.20:9000"
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(main(&args(&["tcp", "127.0.0.1:1"])).is_err());
        assert!(main(&args(&["sctp", "127.0.0.1:1", "1"])).is_err());
        assert!(main(&args(&["tcp", "127.0.0.1:1", "0"])).is_err());
        assert!(main(&args(&["tcp", "127.0.0.1:1", "1000001"])).is_err());
        assert!(main(&args(&["tcp", "not an address", "1"])).is_err());
    }

    #[test]
    fn reach_refuses_bad_arguments() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(reach(&args(&["tcp", "100"])).is_err());
        assert!(reach(&args(&["icmp", "100", "127.0.0.1:1"])).is_err());
        assert!(reach(&args(&["tcp", "0", "127.0.0.1:1"])).is_err());
        assert!(reach(&args(&["tcp", "x", "127.0.0.1:1"])).is_err());
        assert!(reach(&args(&["udp", "100", "nowhere"])).is_err());
    }

    #[test]
    fn a_closed_port_counts_as_refused() {
        // Bind then drop to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let target: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let err = tcp_once(target).expect_err("nothing listens");
        assert_eq!(error_name(&err), "refused");
    }
}
