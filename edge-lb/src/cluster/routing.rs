//! Routing decisions, the hot read path: a quiz to its node through the pool's placement
//! (marking the quiz active), a player of a spread quiz to its node of the spread
//! (`crate::spread`), a quiz-less request to any eligible node, and the admin API's
//! explanation of a route. The routing lock is held for one ring walk, never across an
//! `.await`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{Backend, Cluster, Pool};
use crate::ring::{Decision, Reason};
use crate::spread::{self, Choice};

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
        self.route_ws(pool, quiz, None)
    }

    /// Route a quiz-scoped request, or with `player = Some((player_id, k))` a player's
    /// WebSocket of a quiz spread over `k` nodes: the quiz is placed (and marked active) as
    /// for any request, so its first node and its load accounting are those of an ordinary
    /// quiz; then the player goes to its node of the spread ([`Pool::spread_choice`]).
    pub fn route_ws(
        &self,
        pool: &str,
        quiz: &str,
        player: Option<(&str, usize)>,
    ) -> Option<Target> {
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
        let mut node = d.node.clone();
        let mut spread_choice = None;
        if let Some((player, k)) = player.filter(|(_, k)| *k > 1) {
            let c = p.spread_choice(quiz, &d.node, player, k)?;
            node = inner.backends.get_key_value(c.node.as_str())?.0.clone();
            spread_choice = Some(if c.fallback.is_some() {
                "fallback"
            } else {
                "home"
            });
        }
        let addr = inner.backends.get(&node)?.addr;
        drop(inner);
        self.metrics
            .routing
            .with_label_values(&[pool, reason])
            .inc();
        if let Some(choice) = spread_choice {
            self.metrics
                .spread_routes
                .with_label_values(&[pool, choice])
                .inc();
        }
        Some(Target {
            backend: node,
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
        self.explain_player(quiz, None, None)
    }

    /// [`Self::explain`], plus the WebSocket route's spread: k (`spread`, else as last seen in
    /// a token of the quiz, else 1), its nodes in order with eligibility and the quiz's open
    /// tunnels on each; and with `player`, where that player's WebSocket would go.
    pub fn explain_player(
        &self,
        quiz: &str,
        player: Option<&str>,
        spread: Option<usize>,
    ) -> serde_json::Value {
        let cfg = self.config();
        let (seen, tracked) = {
            let book = self.book.lock();
            (book.get(quiz).cloned(), book.len())
        };
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
            let mut v = serde_json::json!({
                "pool": pool,
                "active": p.placement.owner(quiz).is_some(),
                "backend": d.as_ref().map(|d| d.node.to_string()),
                "decision": d,
                "ring_walk": walk,
                "balance_factor": p.placement.balance_factor(),
                "active_quizzes_in_pool": p.placement.active_quizzes(),
            });
            if route == "websocket" {
                let k = spread.or(seen.as_ref().map(|s| s.k)).unwrap_or(1);
                let owner = d.as_ref().map(|d| d.node.clone());
                let (nodes, _) = owner
                    .as_deref()
                    .map(|o| p.spread_nodes(quiz, o, k))
                    .unwrap_or_default();
                let tunnels = |n: &str| {
                    seen.as_ref()
                        .and_then(|s| s.tunnels.get(n).copied())
                        .unwrap_or(0)
                };
                let nodes: Vec<serde_json::Value> = nodes
                    .iter()
                    .map(|n| {
                        serde_json::json!({
                            "node": n.to_string(),
                            "eligible": p.placement.is_eligible(n),
                            "tunnels": tunnels(n),
                        })
                    })
                    .collect();
                let mut by_node: Vec<(String, usize)> = seen
                    .as_ref()
                    .map(|s| s.tunnels.iter().map(|(n, c)| (n.to_string(), *c)).collect())
                    .unwrap_or_default();
                by_node.sort();
                v["spread"] = serde_json::json!({
                    "k": k,
                    "k_seen": seen.as_ref().map(|s| s.k),
                    "last_seen_ms_ago": seen.as_ref().map(|s| s.last_seen.elapsed().as_millis() as u64),
                    "nodes": nodes,
                    "tunnels_by_node": by_node.into_iter().map(|(n, c)| (n, c.into())).collect::<serde_json::Map<_, _>>(),
                    "quizzes_tracked": tracked,
                });
                if let (Some(player), Some(owner)) = (player, owner) {
                    v["player"] = serde_json::json!({
                        "player_id": player,
                        "spread": k,
                        "choice": if k > 1 {
                            p.spread_choice(quiz, &owner, player, k)
                        } else {
                            Some(Choice {
                                node: owner.to_string(),
                                home: owner.to_string(),
                                fallback: None,
                            })
                        },
                    });
                }
            }
            out.insert(route.into(), v);
        }
        serde_json::Value::Object(out)
    }
}

/// A quiz's spread and the rest of its ring walk, as node names in order.
pub(super) type SpreadNodes = (Vec<Arc<str>>, Vec<Arc<str>>);

impl Pool {
    /// The spread of `quiz` over `k` nodes with first node `owner` (capped by the pool's
    /// size), and the rest of its ring walk: node names, in order (see `Ring::spread`).
    pub(super) fn spread_nodes(&self, quiz: &str, owner: &str, k: usize) -> SpreadNodes {
        let ring = self.placement.ring();
        let (s, rest) = ring.spread(quiz, owner, k);
        let name = |i: usize| ring.nodes()[i].name.clone();
        (
            s.into_iter().map(name).collect(),
            rest.into_iter().map(name).collect(),
        )
    }

    /// Where a player of `quiz` (first node `owner`, spread over `k` nodes) goes: the first
    /// eligible node of its rendezvous order over the spread (whatever their health, so a
    /// lost node moves only its own players), else the next eligible node of the ring walk.
    pub(super) fn spread_choice(
        &self,
        quiz: &str,
        owner: &str,
        player: &str,
        k: usize,
    ) -> Option<Choice> {
        let (s, rest) = self.spread_nodes(quiz, owner, k);
        let s: Vec<&str> = s.iter().map(|n| n.as_ref()).collect();
        let rest: Vec<&str> = rest.iter().map(|n| n.as_ref()).collect();
        spread::choose(&s, &rest, player, |n| self.placement.is_eligible(n))
    }
}
