//! The target guard: loopback only, unless an operator says otherwise.
//!
//! Every address the tool connects to goes through [`Target::parse`] (the
//! scenario's `target.url`, the `--target` override), [`ensure_allowed`]
//! (every connect) or [`ensure_loopback`] (source addresses of workers).
//! Anything outside 127.0.0.0/8 and `::1` is refused with an error that says
//! why, unless it lies in a CIDR given with `--allow-target` ([`AllowList`]):
//! load goes to this machine by default, and to another one only by an
//! explicit, visible choice. Without an allow list no host name is resolved
//! (`localhost` aside), so the default sends nothing anywhere, not even a DNS
//! query.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::RwLock;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("`{0}` is not a URL of the form http://127.x.y.z:PORT")]
    Malformed(String),
    #[error("only http:// targets are supported, got `{0}`")]
    Scheme(String),
    #[error(
        "refusing non-loopback target `{0}`: this load tool only sends traffic to 127.0.0.0/8 or [::1], or to a network given with --allow-target"
    )]
    NotLoopback(String),
    #[error("refusing host name `{0}`: give a loopback IP address (127.0.0.1) or `localhost` (host names are resolved only with --allow-target)")]
    HostName(String),
    #[error("refusing target `{url}`: it resolves to {ip}, outside 127.0.0.0/8, [::1] and every --allow-target")]
    NotAllowed { url: String, ip: IpAddr },
    #[error("cannot resolve host name `{0}`")]
    Resolve(String),
    #[error("--allow-target `{0}`: not a CIDR of the form 10.1.2.0/24, 10.1.2.3 or fd00::/64")]
    Cidr(String),
}

/// One network, `10.1.2.0/24` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, TargetError> {
        let bad = || TargetError::Cidr(s.to_string());
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let net: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The networks besides loopback that targets may be in (`--allow-target`).
/// Empty by default: loopback only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<Cidr>);

/// The process's allow list, set once from the command line
/// ([`set_allowed`]) and read by [`Target::parse`] and every connect.
static ALLOWED: RwLock<Vec<Cidr>> = RwLock::new(Vec::new());

/// Make `list` the process's allow list (the `--allow-target` flags).
pub fn set_allowed(list: &AllowList) {
    if let Ok(mut g) = ALLOWED.write() {
        g.clone_from(&list.0);
    }
}

/// The process's allow list.
pub fn allowed() -> AllowList {
    AllowList(ALLOWED.read().map(|g| g.clone()).unwrap_or_default())
}

impl AllowList {
    /// Parse `--allow-target` values.
    pub fn parse<S: AsRef<str>>(cidrs: &[S]) -> Result<AllowList, TargetError> {
        cidrs
            .iter()
            .map(|c| Cidr::parse(c.as_ref()))
            .collect::<Result<_, _>>()
            .map(AllowList)
    }

    /// Loopback, or inside one of the allowed networks.
    pub fn permits(&self, ip: IpAddr) -> bool {
        ensure_loopback(ip).is_ok() || self.0.iter().any(|c| c.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Refuse an address that is neither loopback nor in the process's allow list.
pub fn ensure_allowed(ip: IpAddr) -> Result<(), TargetError> {
    if allowed().permits(ip) {
        Ok(())
    } else {
        Err(TargetError::NotLoopback(ip.to_string()))
    }
}

/// The system resolver, used only when an allow list is given.
pub fn system_resolve(host: &str) -> Vec<IpAddr> {
    use std::net::ToSocketAddrs;
    (host, 0)
        .to_socket_addrs()
        .map(|it| it.map(|a| a.ip()).collect())
        .unwrap_or_default()
}

/// A validated loopback HTTP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
}

impl Target {
    /// Parse and check against the process's allow list ([`set_allowed`]).
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        Target::parse_with(url, &allowed(), system_resolve)
    }

    /// Parse and check against `allow`; a host name is given to `resolve`
    /// only when `allow` is not empty, and every address it resolves to must
    /// be permitted (the first one is used).
    pub fn parse_with(
        url: &str,
        allow: &AllowList,
        resolve: impl Fn(&str) -> Vec<IpAddr>,
    ) -> Result<Target, TargetError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| {
                if url.contains("://") {
                    TargetError::Scheme(url.to_string())
                } else {
                    TargetError::Malformed(url.to_string())
                }
            })?
            .trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') || rest.is_empty() {
            return Err(TargetError::Malformed(url.to_string()));
        }
        let (host, port) = if let Some(stripped) = rest.strip_prefix('[') {
            let (h, p) = stripped
                .split_once("]:")
                .ok_or_else(|| TargetError::Malformed(url.to_string()))?;
            (h, p)
        } else {
            rest.rsplit_once(':')
                .ok_or_else(|| TargetError::Malformed(url.to_string()))?
        };
        let port: u16 = port
            .parse()
            .map_err(|_| TargetError::Malformed(url.to_string()))?;
        if port == 0 {
            return Err(TargetError::Malformed(url.to_string()));
        }
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            match host.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => {
                    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
                        return Err(TargetError::Malformed(url.to_string()));
                    }
                    // Not an IP literal: without an allow list, a name we
                    // refuse to resolve.
                    if allow.is_empty() {
                        return Err(TargetError::HostName(host.to_string()));
                    }
                    let ips = resolve(host);
                    let Some(first) = ips.first().copied() else {
                        return Err(TargetError::Resolve(host.to_string()));
                    };
                    if let Some(bad) = ips.iter().find(|ip| !allow.permits(**ip)) {
                        return Err(TargetError::NotAllowed {
                            url: url.to_string(),
                            ip: *bad,
                        });
                    }
                    first
                }
            }
        };
        if !allow.permits(ip) {
            return Err(TargetError::NotLoopback(url.to_string()));
        }
        Ok(Target {
            addr: SocketAddr::new(ip, port),
        })
    }

    /// `Host:` header value.
    pub fn host_header(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// On this machine (127.0.0.0/8, `::1`): workers then bind their players
    /// to loopback source addresses of their own.
    pub fn is_loopback(&self) -> bool {
        ensure_loopback(self.addr.ip()).is_ok()
    }
}

/// Refuse any address outside the loopback range.
pub fn ensure_loopback(ip: IpAddr) -> Result<(), TargetError> {
    let ok = match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().map(|v| v.is_loopback()) == Some(true)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(TargetError::NotLoopback(ip.to_string()))
    }
}

/// The n-th tool source address (n >= 1): 127.0.0.2, 127.0.0.3, ...,
/// 127.0.0.255, 127.0.1.1, ... -- never 127.0.0.1 (the usual server address)
/// and never an octet of 0 or 255.
pub fn source_address(n: u64) -> Ipv4Addr {
    let c = 1 + n % 254;
    let b = (n / 254) % 254;
    let a = n / (254 * 254);
    Ipv4Addr::new(127, a.min(254) as u8, b as u8, c as u8)
}

/// The source addresses of worker `worker`: `per_worker` consecutive ones.
/// Each worker binds its connections there with IP_BIND_ADDRESS_NO_PORT, so
/// every worker has its own addresses and ephemeral-port space, and the
/// platform's per-client-IP limits see many clients, as in production.
pub fn worker_sources(worker: u64, per_worker: u64) -> Vec<Ipv4Addr> {
    (0..per_worker)
        .map(|k| source_address(1 + worker * per_worker + k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback() {
        for u in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.1.2.3:1",
            "http://localhost:80",
            "http://[::1]:9000",
        ] {
            assert!(Target::parse(u).is_ok(), "{u}");
        }
        assert_eq!(
            Target::parse("http://127.0.0.1:8080").unwrap().addr,
            "127.0.0.1:8080".parse().unwrap()
        );
    }

    #[test]
    fn refuses_everything_else() {
        for u in [
            "http://10.0.0.1:8080",
            "http://192.168.1.1:80",
            "http://172.16.0.1:80",
            "http://8.8.8.8:53",
            "http://0.0.0.0:8080",
            "http://[2001:db8::1]:80",
        ] {
            let e = Target::parse(u).unwrap_err();
            assert!(matches!(e, TargetError::NotLoopback(_)), "{u}: {e}");
            assert!(e.to_string().contains("loopback"));
        }
        assert!(matches!(
            Target::parse("http://example.com:80"),
            Err(TargetError::HostName(_))
        ));
        assert!(matches!(
            Target::parse("https://127.0.0.1:443"),
            Err(TargetError::Scheme(_))
        ));
        for u in [
            "127.0.0.1:80",
            "http://127.0.0.1",
            "http://127.0.0.1:x",
            "http://127.0.0.1:80/v1",
        ] {
            assert!(Target::parse(u).is_err(), "{u}");
        }
    }

    fn no_dns(_: &str) -> Vec<IpAddr> {
        panic!("the default must not resolve host names")
    }

    /// The default (no `--allow-target`) refuses every address off this
    /// machine, resolves nothing, and accepts both loopbacks.
    #[test]
    fn default_allow_list_refuses_everything_off_this_machine() {
        let none = AllowList::default();
        for u in [
            "http://10.0.0.1:8080",
            "http://192.168.1.1:80",
            "http://172.16.0.1:80",
            "http://8.8.8.8:53",
            "http://0.0.0.0:8080",
            "http://[fe80::1]:80",
            "http://[::ffff:10.0.0.1]:80",
        ] {
            let e = Target::parse_with(u, &none, no_dns).unwrap_err();
            assert!(matches!(e, TargetError::NotLoopback(_)), "{u}: {e}");
        }
        // A name is not resolved at all by default.
        let e = Target::parse_with("http://quiz.internal:80", &none, no_dns).unwrap_err();
        assert!(matches!(e, TargetError::HostName(_)), "{e}");
        for u in [
            "http://127.0.0.1:1",
            "http://127.9.9.9:1",
            "http://[::1]:1",
            "http://localhost:1",
        ] {
            assert!(Target::parse_with(u, &none, no_dns).is_ok(), "{u}");
        }
        for ip in ["10.0.0.1", "192.168.1.1", "2001:db8::1"] {
            assert!(!none.permits(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn allow_list_admits_only_its_networks() {
        let allow = AllowList::parse(&["10.1.2.0/24", "fd00::/64", "192.168.7.7"]).unwrap();
        for u in [
            "http://10.1.2.3:8080",
            "http://10.1.2.255:80",
            "http://[fd00::5]:80",
            "http://192.168.7.7:80",
            "http://127.0.0.1:80",
        ] {
            assert!(Target::parse_with(u, &allow, no_dns).is_ok(), "{u}");
        }
        for u in [
            "http://10.1.3.1:8080",
            "http://192.168.7.8:80",
            "http://[fd00:0:0:1::5]:80",
            "http://8.8.8.8:53",
        ] {
            let e = Target::parse_with(u, &allow, no_dns).unwrap_err();
            assert!(matches!(e, TargetError::NotLoopback(_)), "{u}: {e}");
        }
        // A host name is resolved only with an allow list, and every address
        // it resolves to must be allowed.
        let elsewhere = |_: &str| vec!["10.9.9.9".parse().unwrap()];
        let e = Target::parse_with("http://quiz.internal:80", &allow, elsewhere).unwrap_err();
        assert!(matches!(e, TargetError::NotAllowed { .. }), "{e}");
        let mixed = |_: &str| vec!["10.1.2.3".parse().unwrap(), "10.9.9.9".parse().unwrap()];
        assert!(Target::parse_with("http://quiz.internal:80", &allow, mixed).is_err());
        let inside = |_: &str| vec!["10.1.2.3".parse().unwrap()];
        let t = Target::parse_with("http://quiz.internal:80", &allow, inside).unwrap();
        assert_eq!(t.addr, "10.1.2.3:80".parse().unwrap());
        assert!(!t.is_loopback());
        let nothing = |_: &str| Vec::new();
        assert!(matches!(
            Target::parse_with("http://quiz.internal:80", &allow, nothing),
            Err(TargetError::Resolve(_))
        ));
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(!Cidr::parse("10.0.0.0/8")
            .unwrap()
            .contains("::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0/8", "x", "fd00::/129", "10.0.0.0/"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn worker_sources_are_loopback_and_distinct() {
        assert_eq!(worker_sources(0, 1), vec![Ipv4Addr::new(127, 0, 0, 2)]);
        assert_eq!(worker_sources(1, 1), vec![Ipv4Addr::new(127, 0, 0, 3)]);
        assert_eq!(source_address(254), Ipv4Addr::new(127, 0, 1, 1));
        let mut seen = std::collections::HashSet::new();
        for w in 0..20 {
            for a in worker_sources(w, 200) {
                assert!(ensure_loopback(IpAddr::V4(a)).is_ok());
                assert_ne!(a, Ipv4Addr::LOCALHOST);
                assert!(!a.octets()[1..].contains(&255) && a.octets()[3] != 0);
                assert!(seen.insert(a), "{a} twice");
            }
        }
    }
}
