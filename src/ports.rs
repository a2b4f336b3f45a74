//! Choosing a port that no one else holds.
//!
//! A port is handed out only when all of these hold:
//!
//! - no active instance in the registry has it reserved (checked by the
//!   caller under the registry lock, so two spawns at the same instant can
//!   never pick the same one: a port picked but not yet bound is already
//!   reserved);
//! - it can be bound on 127.0.0.1, 0.0.0.0, ::1 and :: (the IPv6 checks are
//!   skipped where the host has no IPv6), so a listener on any of those
//!   addresses, ours or an outsider's, rules it out;
//! - nothing accepts a connection on it.
//!
//! `portpicker` is not used: its check needs IPv6 to succeed and it probes a
//! random range, while devserver needs a stable preferred port per agent in
//! a configured range and a ledger that, unlike a probe, cannot race.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::time::Duration;

/// Whether `port` is free on every local address (see the module docs).
pub fn is_free(port: u16) -> bool {
    let addrs: [SocketAddr; 4] = [
        (Ipv4Addr::LOCALHOST, port).into(),
        (Ipv4Addr::UNSPECIFIED, port).into(),
        (Ipv6Addr::LOCALHOST, port).into(),
        (Ipv6Addr::UNSPECIFIED, port).into(),
    ];
    addrs.iter().all(|addr| can_bind(*addr)) && !accepts(port)
}

fn can_bind(addr: SocketAddr) -> bool {
    match TcpListener::bind(addr) {
        Ok(_) => true,
        // No IPv6 on this host (no module, or no ::1 on lo): nothing can
        // listen there either, so the address does not rule the port out.
        Err(err) if addr.is_ipv6() && is_no_ipv6(&err) => true,
        Err(_) => false,
    }
}

fn is_no_ipv6(err: &std::io::Error) -> bool {
    err.kind() == ErrorKind::AddrNotAvailable
        || err.raw_os_error() == Some(libc::EAFNOSUPPORT)
        || err.raw_os_error() == Some(libc::EPROTONOSUPPORT)
}

/// Whether anything accepts a TCP connection on `port` at 127.0.0.1 or ::1.
pub fn accepts(port: u16) -> bool {
    let timeout = Duration::from_millis(100);
    [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ]
    .iter()
    .any(|addr| TcpStream::connect_timeout(addr, timeout).is_ok())
}

/// The port an agent prefers when it has none yet: a stable hash into the range.
pub fn preferred(range: &RangeInclusive<u16>, hash: u64) -> u16 {
    let size = u64::from(range.end() - range.start()) + 1;
    let offset = u16::try_from(hash % size).expect("offset is below the range size, a u16");
    range.start() + offset
}

/// Picks the first usable port: `first` if given and in range, then the
/// range in order starting at `start`, skipping `reserved`.
///
/// `usable` decides whether a candidate is free on the machine; it is a
/// parameter so the choice can be tested without sockets.
pub fn pick(
    range: &RangeInclusive<u16>,
    first: Option<u16>,
    start: u16,
    reserved: &HashSet<u16>,
    usable: impl Fn(u16) -> bool,
) -> Option<u16> {
    let span = u32::from(range.end() - range.start()) + 1;
    let walk = (0..span).map(|i| {
        let offset = (u32::from(start - range.start()) + i) % span;
        range.start() + u16::try_from(offset).expect("offset is below the range size")
    });
    first
        .filter(|p| range.contains(p))
        .into_iter()
        .chain(walk)
        .find(|p| !reserved.contains(p) && usable(*p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_prefers_first_then_walks_and_wraps() {
        let range = 100..=104;
        let none = HashSet::new();
        assert_eq!(pick(&range, Some(103), 101, &none, |_| true), Some(103));
        assert_eq!(pick(&range, Some(999), 101, &none, |_| true), Some(101));

        let reserved: HashSet<u16> = [103, 104].into();
        assert_eq!(pick(&range, Some(103), 103, &reserved, |_| true), Some(100));
        assert_eq!(pick(&range, None, 102, &none, |p| p != 102), Some(103));
    }

    #[test]
    fn pick_gives_none_when_exhausted() {
        let reserved: HashSet<u16> = (100..=104).collect();
        assert_eq!(pick(&(100..=104), None, 100, &reserved, |_| true), None);
        assert_eq!(
            pick(&(100..=104), None, 100, &HashSet::new(), |_| false),
            None
        );
    }

    #[test]
    fn preferred_stays_in_range() {
        for hash in [0, 1, 799, 800, u64::MAX] {
            assert!((5200..=5999).contains(&preferred(&(5200..=5999), hash)));
        }
        assert_eq!(preferred(&(7000..=7000), 12345), 7000);
    }

    #[test]
    fn a_listening_port_is_not_free() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(!is_free(port));
        drop(listener);
        assert!(is_free(port));
    }

    #[test]
    fn a_wildcard_listener_blocks_the_port() {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(!is_free(port));
    }
}
