//! The access log: one record per proxied HTTP request, per WebSocket tunnel when it ends, and
//! per answer edge-lb gives itself (a refusal), written through the process's logger under the
//! target `edge_lb::access` (so `log_format: json` makes them JSON lines, and `RUST_LOG` can
//! filter them: `RUST_LOG=info,edge_lb::access=off`).
//!
//! Field names follow HAProxy's log variables and Envoy's access-log operators in spirit:
//! `client` (`%ci:%cp`, `DOWNSTREAM_REMOTE_ADDRESS`), `method` and `path` (`%HM`, `%HPO`;
//! without the query string, because tokens travel in queries), `quiz`, `node` and `node_addr`
//! (`%s`, `UPSTREAM_HOST`), `status` (`%ST`, `RESPONSE_CODE`), `bytes_received` (client →
//! node, `BYTES_RECEIVED`, HAProxy's `%U`) and `bytes_sent` (node → client, `BYTES_SENT`,
//! `%B`), `duration_ms` (`%Ta`, `DURATION`), `end` (how it ended, in words, where HAProxy has
//! its termination state `%tsc` and Envoy `RESPONSE_FLAGS`), `reason` (the `kind` label of
//! `edge_lb_errors_total` for a refusal or error, so a line joins its metric). A value that is
//! not known is `-`, as both of them print it.
//!
//! Sampling: every error and refusal is recorded; successes with probability
//! `access_log.sample`. The decision ([`AccessLog::sampled`]) is two relaxed atomic loads and a
//! thread-local xorshift step: no lock, no allocation. It is taken before anything of the
//! record is built, so a request that is sampled out costs nothing more than that — the
//! access log must not tax the hot path it observes (thousands of setups per second per
//! process), and a lock there would serialise every worker thread on it.

use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::AccessLogConfig;

/// The logger target of access records.
pub const TARGET: &str = "edge_lb::access";

/// Longest path written (bytes): a request head may carry a 16 KB target; the record does not.
const MAX_PATH: usize = 256;

/// Whether to write records, and which share of the successes (reloadable: atomics, so the
/// hot path reads them without the configuration's lock).
pub struct AccessLog {
    enabled: AtomicBool,
    /// Successes are recorded when a uniform `u64` is below this; `u64::MAX` = all of them.
    threshold: AtomicU64,
}

impl AccessLog {
    pub fn new(c: &AccessLogConfig) -> AccessLog {
        let a = AccessLog {
            enabled: AtomicBool::new(false),
            threshold: AtomicU64::new(0),
        };
        a.set(c);
        a
    }

    /// Apply (a reloaded) `access_log` section.
    pub fn set(&self, c: &AccessLogConfig) {
        let t = if c.sample >= 1.0 {
            u64::MAX
        } else if c.sample > 0.0 {
            // 2^64 × sample, in range because sample < 1.
            (c.sample * 18_446_744_073_709_551_616.0) as u64
        } else {
            0
        };
        self.threshold.store(t, Ordering::Relaxed);
        self.enabled.store(c.enabled, Ordering::Relaxed);
    }

    /// Is this record written? `error`: a refusal, a status of 400 or more (or none), or a
    /// tunnel that ended abnormally: always, when the log is enabled. Otherwise sampled.
    /// Lock-free and allocation-free (see the module's comment).
    #[inline]
    pub fn sampled(&self, error: bool) -> bool {
        if !self.enabled.load(Ordering::Relaxed) {
            return false;
        }
        if error {
            return true;
        }
        match self.threshold.load(Ordering::Relaxed) {
            0 => false,
            u64::MAX => true,
            t => next_random() < t,
        }
    }
}

thread_local! {
    /// Per worker thread: no shared state between threads, so no contention.
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// xorshift64*: fast and plenty uniform for a sampling decision (not for anything secret).
fn next_random() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        if x == 0 {
            // Seeded per thread from std's per-process random keys (no allocation); `| 1`
            // keeps the state off xorshift's fixed point 0.
            x = RandomState::new().hash_one(std::thread::current().id()) | 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// What a record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A plain HTTP request.
    Http,
    /// A WebSocket upgrade and its tunnel.
    Ws,
    /// A connection refused before any request was read (connection limits).
    Conn,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Ws => "ws",
            Kind::Conn => "conn",
        }
    }
}

/// One access record; built only once [`AccessLog::sampled`] said yes.
#[derive(Debug)]
pub struct Record<'a> {
    pub kind: Kind,
    /// The TCP peer.
    pub client: Option<SocketAddr>,
    pub method: &'a str,
    /// The request target; its query string and fragment are never written.
    pub path: &'a str,
    pub quiz: Option<&'a str>,
    /// The backend chosen (its name, the ring key) and its address.
    pub node: Option<&'a str>,
    pub node_addr: Option<SocketAddr>,
    /// The status the client got; 0 when it got none.
    pub status: u16,
    /// Client → node and node → client: body bytes for HTTP, every byte after the `101` for a
    /// tunnel (the WebSocket frames).
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Duration,
    /// How it ended: `done` (HTTP answered by the node), `refused` (edge-lb answered), `error`;
    /// for a tunnel `client_closed`, `node_closed`, `idle`, `node_lost`, `drain`,
    /// `rebalance`, `removed`, `shutdown`, `error`, or `rejected` (the node refused the
    /// upgrade).
    pub end: &'static str,
    /// The `edge_lb_errors_total` kind of a refusal or error; empty otherwise.
    pub reason: &'static str,
}

/// The request target without its query string or fragment, at most [`MAX_PATH`] bytes.
pub fn strip_query(target: &str) -> &str {
    let p = target.split(['?', '#']).next().unwrap_or("");
    if p.len() <= MAX_PATH {
        return p;
    }
    let mut end = MAX_PATH;
    while !p.is_char_boundary(end) {
        end -= 1;
    }
    &p[..end]
}

/// `-` for what is not known, as HAProxy and Envoy print it.
struct Or<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Or<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

impl Record<'_> {
    /// Write the record (errors at `warn`, so a `RUST_LOG=warn` process still has them).
    pub fn emit(&self) {
        let path = strip_query(self.path);
        let reason = if self.reason.is_empty() {
            "-"
        } else {
            self.reason
        };
        macro_rules! record {
            ($level:expr) => {
                tracing::event!(
                    target: TARGET,
                    $level,
                    kind = self.kind.as_str(),
                    client = %Or(self.client),
                    method = if self.method.is_empty() { "-" } else { self.method },
                    path = if path.is_empty() { "-" } else { path },
                    quiz = self.quiz.unwrap_or("-"),
                    node = self.node.unwrap_or("-"),
                    node_addr = %Or(self.node_addr),
                    status = self.status,
                    bytes_received = self.bytes_received,
                    bytes_sent = self.bytes_sent,
                    duration_ms = self.duration.as_secs_f64() * 1000.0,
                    end = self.end,
                    reason = reason,
                    "access"
                )
            };
        }
        if self.status == 0 || self.status >= 500 || self.end == "error" {
            record!(tracing::Level::WARN);
        } else {
            record!(tracing::Level::INFO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_share_and_never_drops_errors() {
        let cfg = |enabled, sample| AccessLogConfig { enabled, sample };
        let a = AccessLog::new(&cfg(true, 0.0));
        assert!((0..10_000).all(|_| !a.sampled(false)));
        assert!((0..100).all(|_| a.sampled(true)));
        a.set(&cfg(true, 1.0));
        assert!((0..10_000).all(|_| a.sampled(false)));
        a.set(&cfg(true, 0.1));
        let n = (0..100_000).filter(|_| a.sampled(false)).count();
        assert!((9_000..11_000).contains(&n), "{n} of 100000 at 0.1");
        a.set(&cfg(false, 1.0));
        assert!(!a.sampled(true) && !a.sampled(false));
    }

    #[test]
    fn the_query_never_reaches_the_record() {
        assert_eq!(
            strip_query("/v1/quizzes/q/ws?token=v2.p.q.x.1.mac"),
            "/v1/quizzes/q/ws"
        );
        assert_eq!(strip_query("/a#frag?token=x"), "/a");
        assert_eq!(strip_query("?token=x"), "");
        let long = format!("/{}é?token=x", "a".repeat(MAX_PATH - 2));
        let p = strip_query(&long);
        assert!(p.len() <= MAX_PATH && !p.contains("token"), "{p}");
    }
}
