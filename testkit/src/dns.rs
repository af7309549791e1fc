//! An upstream resolver for DNS tests, started by the test itself on an
//! address it chooses (loopback, or the host end of a test fabric), so no
//! query ever reaches the host's own resolvers.
//!
//! It answers A questions for names under its domain (`example.test` by
//! default) with 192.0.2.10, TTL 60; `big.<domain>` has 200 addresses and
//! comes back truncated over UDP, whole over TCP; every other name is
//! NXDOMAIN. It counts the UDP questions it gets.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};

/// The address every name of the domain resolves to.
pub const ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// A running upstream; stops on drop.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Serves `domain` on `bind` (UDP and TCP, the same port).
    pub fn start(bind: SocketAddr, domain: &str) -> std::io::Result<Self> {
        let udp = UdpSocket::bind(bind)?;
        let addr = udp.local_addr()?;
        let tcp = TcpListener::bind(addr)?;
        udp.set_read_timeout(Some(Duration::from_millis(100)))?;
        tcp.set_nonblocking(true)?;
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let suffix = format!("{}.", domain.trim_end_matches('.').to_ascii_lowercase());
        let mut threads = Vec::new();
        {
            let (queries, stop, suffix) = (queries.clone(), stop.clone(), suffix.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    queries.fetch_add(1, Ordering::Relaxed);
                    if let Some(out) = answer(&buf[..n], &suffix, true) {
                        let _ = udp.send_to(&out, peer);
                    }
                }
            }));
        }
        {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                            let _ = serve_tcp(&mut s, &suffix);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }));
        }
        Ok(Self {
            addr,
            queries,
            stop,
            threads,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// UDP questions received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(s: &mut std::net::TcpStream, suffix: &str) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf)?;
    if let Some(out) = answer(&buf, suffix, false) {
        let n = u16::try_from(out.len()).map_err(std::io::Error::other)?;
        s.write_all(&n.to_be_bytes())?;
        s.write_all(&out)?;
    }
    Ok(())
}

fn answer(bytes: &[u8], suffix: &str, udp: bool) -> Option<Vec<u8>> {
    let req = Message::from_vec(bytes).ok()?;
    let q = req.queries.first()?;
    let mut r = Message::response(req.metadata.id, OpCode::Query);
    r.metadata.recursion_desired = req.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_queries(req.queries.iter().cloned());
    let name = q.name().to_ascii().to_ascii_lowercase();
    let ours = name == suffix || name.ends_with(&format!(".{suffix}"));
    if !ours {
        r.metadata.response_code = ResponseCode::NXDomain;
    } else if q.query_type() == hickory_proto::rr::RecordType::A {
        let n: u8 = if name.starts_with("big.") { 200 } else { 1 };
        if udp && n > 1 {
            r.metadata.truncation = true;
        } else {
            for i in 0..n {
                let [a, b, c, d] = ANSWER.octets();
                let ip = Ipv4Addr::new(a, b, c, d.wrapping_add(i));
                r.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A(ip))));
            }
        }
    }
    r.to_vec().ok()
}
