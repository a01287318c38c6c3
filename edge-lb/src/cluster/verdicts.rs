//! What a backend's health and drain state mean for routing: health-check verdicts with their
//! thresholds and hold-down, the panic threshold that defers a verdict, the admin drain, and
//! the rebalance toward a node that returns. Acting on a transition is closing tunnels: at
//! once for a lost node, paced for a drained one or for quizzes moving back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::tunnels::CloseReason;
use super::{Backend, Cluster, Inner};
use crate::config::HealthConfig;

/// What one verdict changed.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    None,
    /// A node that was lost is eligible again (after hold-down): its quizzes go back to it.
    Returned {
        pool: Arc<str>,
    },
    /// Marked down: its tunnels close at once.
    Lost,
    /// It would have been marked down, but the panic threshold deferred the verdict.
    Deferred,
}

impl Cluster {
    /// Record one health-check verdict; applies thresholds and hold-down, and acts on
    /// transitions (close the tunnels of a lost node at once, rebalance toward a returned one).
    pub fn report_health(self: &Arc<Self>, name: &str, ok: bool, err: Option<String>) {
        let cfg = self.config();
        let h = &cfg.health;
        {
            let mut inner = self.inner.lock();
            let Some(key) = inner.backends.get_key_value(name).map(|(k, _)| k.clone()) else {
                return;
            };
            let change = if ok {
                let b = inner.backends.get_mut(&key).expect("present");
                self.passed(b, name, h)
            } else {
                self.failed(&mut inner, &key, h, err)
            };
            if change == Change::Deferred {
                // The node keeps its quizzes and tunnels; its next failing verdict is weighed
                // again, and acted on once enough of the pool is back up.
                return;
            }
            Self::refresh_eligibility(&mut inner, &key);
            if let Change::Returned { pool } = &change {
                self.rebalance_locked(&mut inner, pool, &key);
            }
            if let Some(b) = inner.backends.get(&key) {
                let pool = b.pool.clone();
                self.set_panic(&inner, &pool, h.failure_threshold);
            }
            if change != Change::Lost {
                return;
            }
        }
        tracing::warn!(backend = name, "backend lost: closing its tunnels");
        self.close_tunnels_of(name.into(), CloseReason::NodeLost, true);
    }

    /// A passing check: up after `success_threshold` in a row, eligible once held down long
    /// enough if it was lost.
    fn passed(&self, b: &mut Backend, name: &str, h: &HealthConfig) -> Change {
        b.consecutive_ok += 1;
        b.consecutive_fail = 0;
        b.last_error = None;
        if b.up != Some(true) && b.consecutive_ok >= h.success_threshold {
            b.up = Some(true);
            b.unverified = false;
            b.up_since = Some(Instant::now());
            self.metrics
                .health_transitions
                .with_label_values(&[name, "up"])
                .inc();
        }
        if b.up != Some(true) || b.eligible {
            return Change::None;
        }
        let held = !b.was_lost || b.up_since.is_some_and(|t| t.elapsed() >= h.hold_down);
        if !held {
            return Change::None;
        }
        b.eligible = true;
        if b.draining {
            return Change::None;
        }
        self.metrics
            .health_transitions
            .with_label_values(&[name, "eligible"])
            .inc();
        if b.was_lost {
            Change::Returned {
                pool: b.pool.clone(),
            }
        } else {
            Change::None
        }
    }

    /// A failing check: down after `failure_threshold` in a row, unless that would leave too
    /// little of the pool up (`health.panic_threshold`).
    fn failed(
        &self,
        inner: &mut Inner,
        key: &Arc<str>,
        h: &HealthConfig,
        err: Option<String>,
    ) -> Change {
        let b = inner.backends.get_mut(key).expect("present");
        b.consecutive_fail += 1;
        b.consecutive_ok = 0;
        b.last_error = err;
        if b.up == Some(false) || b.consecutive_fail < h.failure_threshold {
            return Change::None;
        }
        let pool = b.pool.clone();
        if Self::panics(inner, &pool, key, h.panic_threshold) {
            self.set_panic(inner, &pool, h.failure_threshold);
            return Change::Deferred;
        }
        let b = inner.backends.get_mut(key).expect("present");
        b.up = Some(false);
        // An unverified node never had quizzes: no hold-down once it is ready.
        b.was_lost = !b.unverified;
        b.eligible = false;
        b.up_since = None;
        self.metrics
            .health_transitions
            .with_label_values(&[&**key, "down"])
            .inc();
        Change::Lost
    }

    /// Would marking `node` down leave fewer than `threshold` of `pool`'s backends up? Counted
    /// over the backends that take part in routing decisions: not draining, and verified (a
    /// node discovered but never seen up has no quizzes to protect).
    fn panics(inner: &Inner, pool: &str, node: &str, threshold: f64) -> bool {
        if threshold <= 0.0 {
            return false;
        }
        let (mut total, mut up_after) = (0usize, 0usize);
        for (n, b) in &inner.backends {
            if b.pool.as_ref() != pool || b.draining || b.unverified {
                continue;
            }
            total += 1;
            if n.as_ref() != node && b.up != Some(false) {
                up_after += 1;
            }
        }
        total > 0 && (up_after as f64) < threshold * total as f64
    }

    /// Publish whether `pool` is in panic: some backend failing its checks but not marked down.
    fn set_panic(&self, inner: &Inner, pool: &str, failure_threshold: u32) {
        let panic = inner
            .backends
            .values()
            .any(|b| b.pool.as_ref() == pool && !b.draining && b.deferred(failure_threshold));
        let gauge = self.metrics.pool_panic.with_label_values(&[pool]);
        if panic && gauge.get() == 0 {
            tracing::warn!(
                pool,
                "health panic: most of the pool fails its checks at once; \
                 keeping its nodes and tunnels until enough of it is up again"
            );
        }
        gauge.set(i64::from(panic));
    }

    /// Move back to `node` the quizzes it would now be given, closing their tunnels on
    /// the interim owners gradually.
    fn rebalance_locked(self: &Arc<Self>, inner: &mut Inner, pool: &Arc<str>, node: &Arc<str>) {
        let Some(p) = inner.pools.get_mut(pool) else {
            return;
        };
        let moved = p.placement.rebalance_toward(node);
        if moved.is_empty() {
            return;
        }
        tracing::info!(backend = %node, moved = moved.len(), "quizzes return to their node");
        let mut by_owner: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for (q, from) in moved {
            by_owner.entry(from).or_default().push(q);
        }
        let me = self.clone();
        // Closing takes the tunnel lock, never the routing lock; run it off this stack.
        for (from, qs) in by_owner {
            me.close_tunnels(from, Some(qs), CloseReason::Rebalance, false);
        }
    }

    /// Admin drain/undrain. Draining: no new quizzes, tunnels closed gradually.
    pub fn set_drain(self: &Arc<Self>, name: &str, drain: bool) -> bool {
        {
            let mut inner = self.inner.lock();
            let Some(key) = inner.backends.get_key_value(name).map(|(k, _)| k.clone()) else {
                return false;
            };
            let b = inner.backends.get_mut(&key).expect("present");
            let was = b.draining;
            b.draining = drain;
            if !drain && was && b.up != Some(false) {
                // Undrain counts as a return: give the node its quizzes back.
                b.eligible = true;
                let pool = b.pool.clone();
                Self::refresh_eligibility(&mut inner, &key);
                self.rebalance_locked(&mut inner, &pool, &key);
                return true;
            }
            Self::refresh_eligibility(&mut inner, &key);
        }
        if drain {
            self.close_tunnels_of(name.into(), CloseReason::Drain, false);
        }
        true
    }

    /// A backend takes new quizzes only while up (or not yet judged), not draining, and
    /// eligible; the pool's placement follows.
    pub(super) fn refresh_eligibility(inner: &mut Inner, name: &Arc<str>) {
        let Some(b) = inner.backends.get_mut(name) else {
            return;
        };
        let eligible = b.eligible && b.up != Some(false) && !b.draining;
        b.eligible = eligible;
        let pool = b.pool.clone();
        if let Some(p) = inner.pools.get_mut(&pool) {
            p.placement.set_eligible(name, eligible);
        }
    }
}
