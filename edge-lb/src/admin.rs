//! Admin API and Prometheus metrics, served by pingora's `ServeHttp` on `edge_lb.admin_listen`
//! (loopback by default: it can drain nodes and reload configuration). With `admin_token`
//! (or `admin_token_file`) set, every `/admin/…` route requires `Authorization: Bearer
//! <token>` (compared in constant time) and answers 401 otherwise; `/metrics`, `/healthz` and
//! `/readyz` stay open for probes and Prometheus (read-only, and edge-lb's own).
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/admin/route/{quiz_id}` | where the quiz goes, per route, and why (ring walk, caps, load); the WebSocket route's spread (k, nodes, open tunnels per node) |
//! | GET | `/admin/route/{quiz_id}?player={id}&spread={k}` | the same, plus the node that player's WebSocket would go to (`spread` defaults to k as last seen) |
//! | GET | `/admin/backends` | backends with health, eligibility, drain state, quizzes, tunnels |
//! | POST | `/admin/backends/{name}/drain` | stop new quizzes, close tunnels at `drain.close_rate_per_sec` |
//! | POST | `/admin/backends/{name}/undrain` | make it eligible again; its quizzes return |
//! | POST | `/admin/reload` | re-read the configuration file (backends, weights, balance factor) |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/healthz` | 200 (the process answers: liveness) |
//! | GET | `/readyz` | 200 once every pool knows at least one backend, else 503 naming the pools |

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use hyper::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::cluster::Cluster;
use crate::config::EdgeConfig;
use crate::head::valid_quiz_id;
use crate::spread;

pub struct AdminApp {
    pub cluster: Arc<Cluster>,
    /// Where `/admin/reload` (and SIGHUP) re-read the configuration from.
    pub config_path: Option<PathBuf>,
}

fn json(status: u16, v: serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body)
        .expect("static response parts")
}

fn err(status: u16, code: &str, msg: &str) -> Response<Vec<u8>> {
    json(
        status,
        serde_json::json!({"error": {"code": code, "message": msg}}),
    )
}

/// Reload configuration from `path` into `cluster`.
pub fn reload(cluster: &Arc<Cluster>, path: &std::path::Path) -> Result<Vec<String>, String> {
    let cfg = EdgeConfig::load(path)
        .and_then(EdgeConfig::read_admin_token)
        .and_then(EdgeConfig::check_source_addresses)
        .map_err(|e| e.to_string())?;
    let removed = cluster.apply_config(cfg);
    Ok(removed.iter().map(|s| s.to_string()).collect())
}

/// Compare a presented token with the configured one in time that depends only on their
/// lengths, never on where they first differ.
fn token_eq(given: &[u8], want: &[u8]) -> bool {
    let mut diff = given.len() ^ want.len();
    for (i, w) in want.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ w);
    }
    diff == 0
}

impl AdminApp {
    /// Ready once every pool knows at least one backend: static pools at
    /// once, discovered pools after their first DNS answer (before it, the
    /// pool could only answer 503). Deliberately not "a backend is up": if
    /// every core node is down, an edge-lb that stays ready answers 503 with
    /// `Retry-After` quickly, where an unready one would leave the load
    /// balancer with no endpoint at all and clients with refused connects.
    fn readiness(&self) -> Response<Vec<u8>> {
        let cfg = self.cluster.config();
        let backends = self.cluster.backends();
        let empty: Vec<&str> = cfg
            .pools
            .iter()
            .filter(|p| !backends.iter().any(|b| b.pool == p.name))
            .map(|p| p.name.as_str())
            .collect();
        if empty.is_empty() {
            json(200, serde_json::json!({"ready": true}))
        } else {
            json(
                503,
                serde_json::json!({"ready": false, "pools_without_backends": empty}),
            )
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.as_str().to_string();
        let path = session.req_header().uri.path().to_string();
        let query = format!("?{}", session.req_header().uri.query().unwrap_or(""));
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        if parts.first() == Some(&"admin") {
            let cfg = self.cluster.config();
            if let Some(token) = &cfg.admin_token {
                let given = session
                    .req_header()
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if !token_eq(given.trim().as_bytes(), token.as_bytes()) {
                    let mut r = err(401, "unauthorized", "admin API: bearer token required");
                    r.headers_mut().insert(
                        "www-authenticate",
                        hyper::header::HeaderValue::from_static("Bearer"),
                    );
                    return r;
                }
            }
        }
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["healthz"]) => json(200, serde_json::json!({"ok": true})),
            ("GET", ["readyz"]) => self.readiness(),
            ("GET", ["metrics"]) => {
                let body = self.cluster.metrics.render().into_bytes();
                Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", body.len())
                    .body(body)
                    .expect("static response parts")
            }
            ("GET", ["admin", "route", quiz]) => {
                if !valid_quiz_id(quiz) {
                    return err(
                        400,
                        "invalid",
                        "quiz_id must be 1-64 chars of [A-Za-z0-9_-]",
                    );
                }
                let player = spread::query_param(&query, "player");
                let k = match spread::query_param(&query, "spread") {
                    None => None,
                    Some(k) => match k.parse::<usize>() {
                        Ok(k) if (1..=spread::MAX_SPREAD).contains(&k) => Some(k),
                        _ => return err(400, "invalid", "spread must be 1-64"),
                    },
                };
                json(200, self.cluster.explain_player(quiz, player.as_deref(), k))
            }
            ("GET", ["admin", "backends"]) => {
                let cfg = self.cluster.config();
                json(
                    200,
                    serde_json::json!({
                        "balance_factor": cfg.balance_factor,
                        "backends": self.cluster.backends(),
                    }),
                )
            }
            ("POST", ["admin", "backends", name, action @ ("drain" | "undrain")]) => {
                if self.cluster.set_drain(name, *action == "drain") {
                    json(
                        200,
                        serde_json::json!({"backend": name, "draining": *action == "drain"}),
                    )
                } else {
                    err(404, "not_found", "no backend with that name")
                }
            }
            ("POST", ["admin", "reload"]) => match &self.config_path {
                None => err(409, "conflict", "started without a configuration file"),
                Some(p) => match reload(&self.cluster, p) {
                    Ok(removed) => json(
                        200,
                        serde_json::json!({"reloaded": true, "removed": removed}),
                    ),
                    Err(e) => err(400, "invalid", &e),
                },
            },
            _ => err(404, "not_found", "unknown admin route"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::token_eq;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_eq(b"s3cret", b"s3cret"));
        assert!(!token_eq(b"s3cre", b"s3cret"));
        assert!(!token_eq(b"s3cretx", b"s3cret"));
        assert!(!token_eq(b"", b"s3cret"));
        assert!(!token_eq(b"s3creT", b"s3cret"));
    }
}
