//! Routing decisions, the hot read path: a quiz to its node through the pool's placement
//! (marking the quiz active), a quiz-less request to any eligible node, and the admin API's
//! explanation of a route. The routing lock is held for one ring walk, never across an
//! `.await`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{Backend, Cluster};
use crate::ring::{Decision, Reason};

/// A routed target.
#[derive(Clone, Debug)]
pub struct Target {
    pub backend: Arc<str>,
    pub addr: SocketAddr,
    pub decision: Option<Decision>,
}

impl Cluster {
    /// Route a quiz-scoped request in `pool`, marking the quiz active.
    pub fn route_quiz(&self, pool: &str, quiz: &str) -> Option<Target> {
        let mut inner = self.inner.lock();
        let p = inner.pools.get_mut(pool)?;
        let d = p.placement.route(quiz);
        let Some(d) = d else {
            drop(inner);
            self.metrics
                .routing
                .with_label_values(&[pool, "none"])
                .inc();
            return None;
        };
        p.activity.entry(quiz.to_string()).or_default().last_seen = Some(Instant::now());
        let reason = match d.reason {
            Reason::Sticky => "sticky",
            Reason::Primary => "primary",
            Reason::Overflow { .. } => "overflow",
        };
        let addr = inner.backends.get(&d.node)?.addr;
        drop(inner);
        self.metrics
            .routing
            .with_label_values(&[pool, reason])
            .inc();
        Some(Target {
            backend: d.node.clone(),
            addr,
            decision: Some(d),
        })
    }

    /// Any eligible backend of `pool` (round robin), skipping `avoid`.
    pub fn route_any(&self, pool: &str, avoid: Option<&str>) -> Option<Target> {
        let inner = self.inner.lock();
        let mut cands: Vec<(&Arc<str>, &Backend)> = inner
            .backends
            .iter()
            .filter(|(n, b)| b.pool.as_ref() == pool && b.eligible && Some(n.as_ref()) != avoid)
            .collect();
        if cands.is_empty() {
            self.metrics
                .routing
                .with_label_values(&[pool, "none"])
                .inc();
            return None;
        }
        cands.sort_by(|a, b| a.0.cmp(b.0));
        let i = self.rr.fetch_add(1, Ordering::Relaxed) % cands.len();
        let (n, b) = cands[i];
        self.metrics.routing.with_label_values(&[pool, "any"]).inc();
        Some(Target {
            backend: n.clone(),
            addr: b.addr,
            decision: None,
        })
    }

    /// What would `route_quiz` answer, without side effects; plus the ring walk.
    pub fn explain(&self, quiz: &str) -> serde_json::Value {
        let cfg = self.config();
        let inner = self.inner.lock();
        let mut out = serde_json::Map::new();
        out.insert("quiz_id".into(), quiz.into());
        for (route, pool) in [
            ("websocket", &cfg.routes.websocket),
            ("http", &cfg.routes.http),
        ] {
            let Some(p) = inner.pools.get(pool.as_str()) else {
                continue;
            };
            let walk: Vec<String> = p
                .placement
                .ring()
                .walk(quiz)
                .into_iter()
                .map(|i| p.placement.ring().nodes()[i].name.to_string())
                .collect();
            let d = p.placement.peek(quiz);
            out.insert(
                route.into(),
                serde_json::json!({
                    "pool": pool,
                    "active": p.placement.owner(quiz).is_some(),
                    "backend": d.as_ref().map(|d| d.node.to_string()),
                    "decision": d,
                    "ring_walk": walk,
                    "balance_factor": p.placement.balance_factor(),
                    "active_quizzes_in_pool": p.placement.active_quizzes(),
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}
