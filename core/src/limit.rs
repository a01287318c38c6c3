//! Rate limits: one token bucket, used per WebSocket connection (inbound
//! messages, close 1008) and per client IP (HTTP POSTs, 429).
//!
//! A bucket holds at most `burst` tokens and refills at `per_sec`; each
//! allowed event takes one. The [`Rate`] is shared, the [`TokenBucket`]
//! (tokens and the time of the last refill) is per key, so a connection
//! or an address pays 24 bytes for its limit.

use std::net::IpAddr;

use dashmap::DashMap;
use tokio::time::Instant;

/// A refill rate and a burst: the parameters shared by many buckets.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    per_sec: f64,
    burst: f64,
}

/// One bucket's state.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl Rate {
    pub fn new(per_sec: u32, burst: u32) -> Rate {
        Rate {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
        }
    }

    /// A full bucket, as of `now`.
    pub fn full(&self, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: self.burst,
            last: now,
        }
    }

    /// Refills `bucket` up to `now` and takes a token if there is one.
    pub fn allow(&self, bucket: &mut TokenBucket, now: Instant) -> bool {
        let dt = now.duration_since(bucket.last).as_secs_f64();
        bucket.last = now;
        bucket.tokens = (bucket.tokens + dt * self.per_sec).min(self.burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A token bucket per client IP. Bounded: past 100 000 addresses the map is
/// cleared (everyone gets a fresh bucket).
pub struct IpLimiter {
    map: DashMap<IpAddr, TokenBucket>,
    rate: Rate,
}

const LIMITER_MAX: usize = 100_000;

impl IpLimiter {
    pub fn new(per_sec: u32, burst: u32) -> IpLimiter {
        IpLimiter {
            map: DashMap::new(),
            rate: Rate::new(per_sec, burst),
        }
    }

    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.map.len() > LIMITER_MAX {
            self.map.clear();
        }
        let now = Instant::now();
        let mut bucket = self.map.entry(ip).or_insert_with(|| self.rate.full(now));
        self.rate.allow(&mut bucket, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_limiter_refuses_past_the_burst() {
        let l = IpLimiter::new(1, 3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!((0..3).all(|_| l.allow(ip)));
        assert!(!l.allow(ip));
        // Another address has its own bucket.
        assert!(l.allow("10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn bucket_refills_at_the_rate_up_to_the_burst() {
        let rate = Rate::new(2, 2);
        let t0 = Instant::now();
        let mut b = rate.full(t0);
        assert!(rate.allow(&mut b, t0));
        assert!(rate.allow(&mut b, t0));
        assert!(!rate.allow(&mut b, t0));
        // Half a second at 2/s: one token back.
        let t1 = t0 + std::time::Duration::from_millis(500);
        assert!(rate.allow(&mut b, t1));
        assert!(!rate.allow(&mut b, t1));
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + std::time::Duration::from_secs(60);
        assert!((0..2).all(|_| rate.allow(&mut b, t2)));
        assert!(!rate.allow(&mut b, t2));
    }
}
