//! The loopback-only guard.
//!
//! Every address the tool connects to goes through [`Target::parse`] (the
//! scenario's `target.url`, the `--target` override) or [`ensure_loopback`]
//! (source addresses of workers). Anything outside 127.0.0.0/8 and `::1` is
//! refused with an error that says why: this tool generates load, and load
//! only ever goes to this machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("`{0}` is not a URL of the form http://127.x.y.z:PORT")]
    Malformed(String),
    #[error("only http:// targets are supported, got `{0}`")]
    Scheme(String),
    #[error(
        "refusing non-loopback target `{0}`: this load tool only sends traffic to 127.0.0.0/8 or [::1]"
    )]
    NotLoopback(String),
    #[error("refusing host name `{0}`: give a loopback IP address (127.0.0.1) or `localhost`")]
    HostName(String),
}

/// A validated loopback HTTP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, TargetError> {
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
                    // Not an IP literal: a name we refuse to resolve.
                    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
                        return Err(TargetError::Malformed(url.to_string()));
                    }
                    return Err(TargetError::HostName(host.to_string()));
                }
            }
        };
        ensure_loopback(ip).map_err(|_| TargetError::NotLoopback(url.to_string()))?;
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
