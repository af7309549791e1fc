//! kestrel-echo: answers on HTTP, TCP and UDP with who it is (pod name and
//! IP, from the downward API) and who it saw (the client's address), so tests
//! and benchmarks can tell which backend served them and whether the client
//! address survived the path.
//!
//! - HTTP on `HTTP_PORT` (8080): any GET answers one identity line;
//!   `/healthz` answers `ok`.
//! - TCP on `ECHO_PORT` (9000): a greeting identity line, then every byte
//!   echoed back.
//! - UDP on `ECHO_PORT`: each datagram answered with an identity line
//!   followed by the datagram.
//!
//! SIGTERM or SIGINT ends it at once, so pods stop without waiting out
//! their grace period.
//!
//! `kestrel-echo probe ...` and `kestrel-echo reach ...` are the client
//! half instead (see [`probe`]).
#![forbid(unsafe_code)]

mod probe;

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    sync::Arc,
    thread,
    time::Duration,
};

/// A request head larger than this is refused with 431.
const MAX_HEAD: usize = 8 * 1024;

struct Identity {
    pod: String,
    ip: String,
}

impl Identity {
    fn from_env() -> Self {
        let hostname = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned());
        Self {
            pod: std::env::var("POD_NAME")
                .ok()
                .or(hostname.ok())
                .unwrap_or_else(|| "unknown".into()),
            ip: std::env::var("POD_IP").unwrap_or_else(|_| "unknown".into()),
        }
    }

    fn line(&self, client: SocketAddr) -> String {
        format!("pod={} ip={} client={client}", self.pod, self.ip)
    }
}

fn port(var: &str, default: u16) -> Result<u16, String> {
    match std::env::var(var) {
        Err(_) => Ok(default),
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{var}={v:?} is not a port number")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((command, rest)) if command == "probe" => probe::main(rest),
        Some((command, rest)) if command == "reach" => probe::reach(rest),
        _ => run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kestrel-echo: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    // Blocked before any thread starts, so every thread inherits the mask
    // and the signals queue for the sigwait below (no handler needed).
    let mut stop = nix::sys::signal::SigSet::empty();
    stop.add(nix::sys::signal::Signal::SIGTERM);
    stop.add(nix::sys::signal::Signal::SIGINT);
    stop.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let identity = Arc::new(Identity::from_env());
    let http_port = port("HTTP_PORT", 8080)?;
    let echo_port = port("ECHO_PORT", 9000)?;
    let any = Ipv4Addr::UNSPECIFIED;
    let http = TcpListener::bind((any, http_port))
        .map_err(|e| format!("binding HTTP :{http_port}: {e}"))?;
    let tcp = TcpListener::bind((any, echo_port))
        .map_err(|e| format!("binding TCP :{echo_port}: {e}"))?;
    let udp =
        UdpSocket::bind((any, echo_port)).map_err(|e| format!("binding UDP :{echo_port}: {e}"))?;
    eprintln!(
        "kestrel-echo: {} serving http :{http_port}, tcp+udp :{echo_port}",
        identity.pod
    );

    let id = Arc::clone(&identity);
    thread::spawn(move || serve_udp(&udp, &id));
    let id = Arc::clone(&identity);
    thread::spawn(move || accept_loop(&tcp, id, serve_tcp));
    thread::spawn(move || accept_loop(&http, identity, serve_http));
    let signal = stop
        .wait()
        .map_err(|e| format!("waiting for signals: {e}"))?;
    eprintln!("kestrel-echo: {signal:?}, exiting");
    Ok(())
}

fn accept_loop(
    listener: &TcpListener,
    identity: Arc<Identity>,
    serve: fn(TcpStream, &Identity) -> io::Result<()>,
) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let identity = Arc::clone(&identity);
                thread::spawn(move || {
                    // A client that vanishes mid-reply is not our problem.
                    let _ = serve(stream, &identity);
                });
            }
            Err(error) => eprintln!("kestrel-echo: accept: {error}"),
        }
    }
}

fn serve_tcp(mut stream: TcpStream, identity: &Identity) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    writeln!(stream, "{}", identity.line(peer))?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

fn serve_udp(socket: &UdpSocket, identity: &Identity) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let mut reply = identity.line(peer).into_bytes();
                reply.push(b'\n');
                reply.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&reply, peer);
            }
            Err(error) => eprintln!("kestrel-echo: udp: {error}"),
        }
    }
}

/// What a request head asks for, or the status to refuse it with.
fn parse_head(head: &str) -> Result<&str, (u16, &'static str)> {
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err((400, "Bad Request"));
    };
    if !version.starts_with("HTTP/1.") || !path.starts_with('/') {
        return Err((400, "Bad Request"));
    }
    match method {
        "GET" | "HEAD" => Ok(path),
        _ => Err((405, "Method Not Allowed")),
    }
}

fn serve_http(stream: TcpStream, identity: &Identity) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let peer = stream.peer_addr()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = String::new();
    let mut status = Ok(());
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                status = Err((400, "Bad Request"));
                break;
            }
            Err(e) => return Err(e),
        }
        if head.len() + line.len() > MAX_HEAD {
            status = Err((431, "Request Header Fields Too Large"));
            break;
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let (code, reason, body) = match status.and_then(|()| parse_head(&head)) {
        Ok("/healthz") => (200, "OK", "ok\n".to_owned()),
        Ok(path) => (200, "OK", format!("{} path={path}\n", identity.line(peer))),
        Err((code, reason)) => (code, reason, format!("{reason}\n")),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_line_names_pod_ip_and_client() {
        let id = Identity {
            pod: "web-1".into(),
            ip: "10.42.1.5".into(),
        };
        let client: SocketAddr = "10.42.2.7:40000".parse().expect("addr");
        assert_eq!(
            id.line(client),
            "pod=web-1 ip=10.42.1.5 client=10.42.2.7:40000"
        );
    }

    #[test]
    fn request_heads_are_parsed_or_refused() {
        assert_eq!(
            parse_head("GET /a/b HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok("/a/b")
        );
        assert_eq!(parse_head("HEAD / HTTP/1.0\r\n\r\n"), Ok("/"));
        assert_eq!(
            parse_head("POST / HTTP/1.1\r\n\r\n").map_err(|e| e.0),
            Err(405)
        );
        assert_eq!(
            parse_head("\x16\x03\x01 garbage").map_err(|e| e.0),
            Err(400)
        );
        assert_eq!(parse_head("").map_err(|e| e.0), Err(400));
        assert_eq!(
            parse_head("GET nopath HTTP/1.1\r\n\r\n").map_err(|e| e.0),
            Err(400)
        );
    }
}
