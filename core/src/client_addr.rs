//! The client address of a request, for the per-IP POST limiter and the
//! logs: the TCP peer, unless the peer is a trusted proxy (`trusted_proxies`:
//! edge-lb), whose `X-Forwarded-For` then names the client.
//!
//! edge-lb overwrites `X-Forwarded-For` with exactly the address it accepted
//! the connection from (a client's own value never passes), so the header is
//! only as trustworthy as the peer that sent it: from any other peer it is
//! ignored. The default list is empty — never trust the header.

use std::net::IpAddr;

use hyper::HeaderMap;

/// Addresses and networks (`10.0.0.0/8`, `fd00::/8`, `127.0.0.1`) whose
/// `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parse `trusted_proxies` entries; the error names the bad entry.
    pub fn parse(list: &[String]) -> Result<TrustedProxies, String> {
        let mut nets = Vec::with_capacity(list.len());
        for item in list {
            let item = item.trim();
            let (ip, len) = match item.split_once('/') {
                Some((ip, len)) => (ip, Some(len)),
                None => (item, None),
            };
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("`{item}` is not an address or address/prefix"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                None => max,
                Some(l) => l
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| format!("`{item}`: prefix length must be 0..={max}"))?,
            };
            nets.push((ip, len));
        }
        Ok(TrustedProxies(nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|(net, len)| match (canonical(*net), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n).into(), *len, 32) == masked(u32::from(a).into(), *len, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(n.into(), *len, 128) == masked(a.into(), *len, 128)
            }
            _ => false,
        })
    }

    /// The client: the last `X-Forwarded-For` entry when `peer` is trusted
    /// (the one the nearest proxy wrote), else `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.0.is_empty() || !self.contains(peer) {
            return peer;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(peer)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn masked(bits: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        0
    } else {
        bits >> (width - len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn header_believed_only_from_a_trusted_peer() {
        let t = TrustedProxies::parse(&["10.1.0.0/16".into(), "::1".into()]).unwrap();
        let h = headers(&["6.6.6.6, 203.0.113.7"]);
        let edge: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "10.2.0.1".parse().unwrap();
        assert_eq!(
            t.client_ip(edge, &h),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(t.client_ip(other, &h), other);
        assert_eq!(
            t.client_ip("::1".parse().unwrap(), &headers(&["1.2.3.4"])),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // Mapped IPv4 peers match IPv4 networks; garbage falls back to the peer.
        assert!(t.contains("::ffff:10.1.9.9".parse().unwrap()));
        assert_eq!(t.client_ip(edge, &headers(&["nonsense"])), edge);
        assert_eq!(t.client_ip(edge, &HeaderMap::new()), edge);
        // Empty list: never trusted.
        assert_eq!(TrustedProxies::default().client_ip(edge, &h), edge);
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["10.0.0.0/33", "nope", "::/129"] {
            let e = TrustedProxies::parse(&[bad.into()]).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        TrustedProxies::parse(&["0.0.0.0/0".into(), "fd00::/8".into()]).unwrap();
    }
}
