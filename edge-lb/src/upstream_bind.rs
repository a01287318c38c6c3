//! Source addresses for connections to backends (`edge_lb.source_addresses`).
//!
//! Every connection from one local address to one backend address needs a local port of its
//! own, taken from the ephemeral range (Linux's default 32768–60999: 28 232 ports). Linux
//! gives `connect` the even ports first; once they are all held — about 14 000 tunnels to
//! one backend from one address — each further `connect` walks the whole even half before
//! it finds an odd port, and costs ~1.2 ms of CPU instead of ~15 µs (measured on the dev VM
//! by `edge-lb/bench/connect-knee.py`, docs/edge-lb.md, "Source addresses"). At 1 500 WebSocket setups a second that walk alone
//! takes more than the two cores of a small box, and past the whole range connects fail.
//!
//! Each configured source address gives every backend a port space of its own, so the
//! connections are spread over them in turn, as HAProxy's `source` and Envoy's
//! `extra_source_addresses` do. The socket is bound with `IP_BIND_ADDRESS_NO_PORT`: the port
//! is chosen at `connect`, per four-tuple, not reserved by `bind` (which would take ports
//! out of every destination's space).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use pingora_core::connectors::l4::BindTo;
use socket2::{Domain, Protocol, Socket, Type};

/// Takes the configured source addresses in turn.
#[derive(Default)]
pub struct SourceAddresses {
    next: AtomicUsize,
}

impl SourceAddresses {
    /// The address the next connection to `backend` leaves from: the next one of the
    /// backend's address family in `configured`, or `None` (the kernel's choice) when there
    /// is none.
    pub fn pick(&self, configured: &[IpAddr], backend: SocketAddr) -> Option<IpAddr> {
        let family = configured
            .iter()
            .filter(|a| a.is_ipv4() == backend.is_ipv4());
        let n = family.clone().count();
        if n == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        family.clone().nth(turn % n).copied()
    }

    /// [`pick`](Self::pick) as pingora's bind setting for an HTTP peer (pingora binds with
    /// `IP_BIND_ADDRESS_NO_PORT` itself).
    pub fn pick_bind_to(&self, configured: &[IpAddr], backend: SocketAddr) -> Option<BindTo> {
        self.pick(configured, backend).map(|ip| {
            let mut b = BindTo::default();
            b.addr = Some(SocketAddr::new(ip, 0));
            b
        })
    }
}

/// Binds `socket` to `source` with the port left for `connect` to choose.
pub fn bind_source(socket: &Socket, source: IpAddr) -> io::Result<()> {
    descriptors::socket::leave_port_to_connect(socket)?;
    socket.bind(&SocketAddr::new(source, 0).into())
}

/// A configured source address this host cannot send from.
#[derive(Debug, thiserror::Error)]
#[error("cannot send from {ip} on this host: {error}")]
pub struct UnusableSource {
    /// Its place in `edge_lb.source_addresses`.
    pub index: usize,
    pub ip: IpAddr,
    pub error: io::Error,
}

/// Every configured address is one this host can send from (checked at start and on reload,
/// so a typo is a clear configuration error rather than every connect to a backend failing).
pub fn check(configured: &[IpAddr]) -> Result<(), UnusableSource> {
    for (i, &ip) in configured.iter().enumerate() {
        let probe = Socket::new(
            Domain::for_address(SocketAddr::new(ip, 0)),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .and_then(|s| bind_source(&s, ip));
        if let Err(error) = probe {
            return Err(UnusableSource {
                index: i,
                ip,
                error,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_taken_in_turn_within_the_backends_family() {
        let s = SourceAddresses::default();
        let configured: Vec<IpAddr> = ["127.0.0.2", "::1", "127.0.0.3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let picks: Vec<_> = (0..4).map(|_| s.pick(&configured, v4).unwrap()).collect();
        assert!(picks.iter().all(|a| a.is_ipv4()));
        assert_ne!(picks[0], picks[1]);
        assert_eq!(picks[0], picks[2]);
        assert_eq!(s.pick(&configured, v6), Some("::1".parse().unwrap()));
        assert_eq!(s.pick(&[], v4), None);
        assert_eq!(s.pick(&configured[1..2], v4), None);
    }

    #[test]
    fn an_address_this_host_lacks_is_a_configuration_error() {
        assert!(check(&["127.0.0.2".parse().unwrap()]).is_ok());
        // TEST-NET-3: never a local address.
        let e = check(&["127.0.0.2".parse().unwrap(), "203.0.113.7".parse().unwrap()]).unwrap_err();
        assert_eq!(e.index, 1, "{e}");
        assert!(e.to_string().contains("203.0.113.7"), "{e}");
    }
}
