//! Readiness probes: does a server really answer on its port?
//!
//! A line in the log saying "ready" is never enough (C28): a server may say
//! it before it binds, or when its bind failed. Ready means a TCP connection
//! to the port succeeds, or, for an HTTP probe, a request gets a status line
//! with a status below 500. Both 127.0.0.1 and ::1 are tried, since servers
//! that listen on `localhost` may pick either.
//!
//! The HTTP request is written by hand: the probe needs only the status line,
//! and a blocking socket with a deadline keeps it dependency-free and fast.
//!
//! Not here: whether the listener belongs to the instance (`lifecycle`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::Probe;

/// Probes `port` once, trying 127.0.0.1 then ::1. `budget` bounds each try.
pub fn probe(port: u16, kind: &Probe, budget: Duration) -> bool {
    let addrs = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ];
    addrs.iter().any(|addr| probe_addr(*addr, kind, budget))
}

fn probe_addr(addr: SocketAddr, kind: &Probe, budget: Duration) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, budget.min(Duration::from_millis(500)))
    else {
        return false;
    };
    match kind {
        Probe::Tcp => true,
        Probe::Http(path) => http_status(stream, addr, path, budget).is_some_and(|s| s < 500),
    }
}

/// Sends `GET path` and returns the status of the answer's status line.
fn http_status(
    mut stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    budget: Duration,
) -> Option<u16> {
    stream.set_read_timeout(Some(budget)).ok()?;
    stream.set_write_timeout(Some(budget)).ok()?;
    let host = match addr {
        SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: devserver\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;

    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head)
}

fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Busy\r\nx"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    fn serve_once(reply: &'static [u8]) -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(reply);
            }
        });
        port
    }

    #[test]
    fn http_probe_accepts_below_500_only() {
        let budget = Duration::from_secs(2);
        let ok = serve_once(b"HTTP/1.1 404 Not Found\r\n\r\n");
        assert!(probe(ok, &Probe::Http("/".into()), budget));
        let bad = serve_once(b"HTTP/1.1 500 Oops\r\n\r\n");
        assert!(!probe(bad, &Probe::Http("/".into()), budget));
    }

    #[test]
    fn closed_port_fails_tcp_probe() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(probe(port, &Probe::Tcp, Duration::from_secs(1)));
        drop(listener);
        assert!(!probe(port, &Probe::Tcp, Duration::from_millis(200)));
    }
}
