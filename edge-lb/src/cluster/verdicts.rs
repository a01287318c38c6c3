//! What a backend's health and drain state mean for routing: health-check verdicts with their
//! thresholds and hold-down, the slowness bound, the panic threshold that defers a verdict,
//! the admin drain, and the rebalance toward a node that returns. Acting on a transition is
//! closing tunnels: at once for a lost node, paced for a drained one or for quizzes moving
//! back.
//!
//! Busy is not dead: a probe that times out ([`Outcome::Slow`]) does not count toward
//! `failure_threshold`. A slow node stays up with its quizzes and tunnels; it is lost only
//! once it has not answered ready for `health.unresponsive_after`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::routing::SpreadNodes;
use super::tunnels::{CloseReason, Victim};
use super::{Backend, Cluster, Inner};
use crate::config::HealthConfig;
use crate::probe::Outcome;
use crate::spread;

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
    /// Record one probe's outcome; applies thresholds, the slowness bound and hold-down, and
    /// acts on transitions (close the tunnels of a lost node at once, rebalance toward a
    /// returned one).
    pub fn report_health(self: &Arc<Self>, name: &str, outcome: Outcome, err: Option<String>) {
        let cfg = self.config();
        let h = &cfg.health;
        {
            let mut inner = self.inner.lock();
            let Some(key) = inner.backends.get_key_value(name).map(|(k, _)| k.clone()) else {
                return;
            };
            self.metrics
                .health_checks
                .with_label_values(&[name, outcome.as_str()])
                .inc();
            let change = match outcome {
                Outcome::Ready => {
                    let b = inner.backends.get_mut(&key).expect("present");
                    self.passed(b, name, h)
                }
                Outcome::NotReady | Outcome::Gone => self.failed(&mut inner, &key, h, outcome, err),
                Outcome::Slow => self.slow(&mut inner, &key, h, err),
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
                self.set_panic(&inner, &pool, h);
            }
            if change != Change::Lost {
                return;
            }
        }
        tracing::warn!(backend = name, "backend lost: closing its tunnels");
        self.close_tunnels_of(name.into(), CloseReason::NodeLost, true);
    }

    /// A proxied connection to `name` was refused (nothing listens on its port: the process is
    /// gone, not busy — a busy node's full accept queue drops the SYN, it does not refuse it).
    /// Counted as a failed check, so a killed node is lost after `failure_threshold` refused
    /// connections instead of its next probes: its crowd stops being sent to a closed port
    /// within milliseconds. Ignored for a node already down.
    pub fn connect_refused(self: &Arc<Self>, name: &str) {
        let up = self
            .inner
            .lock()
            .backends
            .get(name)
            .is_some_and(|b| b.up != Some(false));
        if !up {
            return;
        }
        self.report_health(
            name,
            Outcome::Gone,
            Some("connection refused (seen by a proxied connection)".into()),
        );
    }

    /// Record the latest outcome, and publish whether the node is slow (with a transition
    /// counted when it turns slow, which a scrape may miss on the gauge alone).
    fn observe(&self, b: &mut Backend, name: &str, outcome: Outcome) {
        let was_slow = b.slow();
        b.last_outcome = Some(outcome);
        let slow = b.slow();
        if slow == was_slow {
            return;
        }
        self.metrics
            .backend_slow
            .with_label_values(&[name])
            .set(i64::from(slow));
        if slow {
            self.metrics
                .health_transitions
                .with_label_values(&[name, "slow"])
                .inc();
            tracing::info!(
                backend = name,
                "backend slow: no answer within health.timeout; keeping its quizzes and tunnels"
            );
        }
    }

    /// A passing check: up after `success_threshold` in a row, eligible once held down long
    /// enough if it was lost.
    fn passed(&self, b: &mut Backend, name: &str, h: &HealthConfig) -> Change {
        self.observe(b, name, Outcome::Ready);
        b.last_ready = Some(Instant::now());
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

    /// A failing check (`NotReady`, `Gone`): down after `failure_threshold` in a row, unless
    /// that would leave too little of the pool up (`health.panic_threshold`).
    fn failed(
        &self,
        inner: &mut Inner,
        key: &Arc<str>,
        h: &HealthConfig,
        outcome: Outcome,
        err: Option<String>,
    ) -> Change {
        let b = inner.backends.get_mut(key).expect("present");
        self.observe(b, key, outcome);
        b.consecutive_fail += 1;
        b.consecutive_ok = 0;
        b.last_error = err;
        if b.up == Some(false) || b.consecutive_fail < h.failure_threshold {
            return Change::None;
        }
        self.lose(inner, key, h)
    }

    /// A check that timed out (`Slow`): not a failure, and it leaves `consecutive_fail` as it
    /// was (a slow probe between two refusals neither adds nor forgives one). The node is lost
    /// only once it has not answered ready for `unresponsive_after`, as for a failure unless
    /// the panic threshold defers it.
    fn slow(
        &self,
        inner: &mut Inner,
        key: &Arc<str>,
        h: &HealthConfig,
        err: Option<String>,
    ) -> Change {
        let b = inner.backends.get_mut(key).expect("present");
        self.observe(b, key, Outcome::Slow);
        // Not a pass: a node coming back needs `success_threshold` ready answers in a row.
        b.consecutive_ok = 0;
        b.last_error = err;
        if b.up == Some(false) || !b.unresponsive(h) {
            return Change::None;
        }
        tracing::warn!(
            backend = %key,
            after = ?h.unresponsive_after,
            "backend unresponsive: slow with no ready answer for health.unresponsive_after"
        );
        self.lose(inner, key, h)
    }

    /// The checks say `key` is lost: mark it down, unless that would leave too little of the
    /// pool up (`health.panic_threshold`), then the verdict is deferred.
    fn lose(&self, inner: &mut Inner, key: &Arc<str>, h: &HealthConfig) -> Change {
        let pool = inner.backends.get(key).expect("present").pool.clone();
        if Self::panics(inner, &pool, key, h.panic_threshold) {
            self.set_panic(inner, &pool, h);
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
    fn set_panic(&self, inner: &Inner, pool: &str, h: &HealthConfig) {
        let panic = inner
            .backends
            .values()
            .any(|b| b.pool.as_ref() == pool && !b.draining && b.deferred(h));
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

    /// Move back to `node` the quizzes it would now be given, and close — gradually — every
    /// tunnel of the pool that is no longer where its route now goes: an ordinary (or host)
    /// tunnel of a moved quiz on its interim owner, and a spread player's tunnel whose node of
    /// the spread is now another one (mostly players whose home is `node`, back from the
    /// others of their spread). A spread player already on its node stays, even when its quiz's
    /// first node moves.
    fn rebalance_locked(self: &Arc<Self>, inner: &mut Inner, pool: &Arc<str>, node: &Arc<str>) {
        let Some(p) = inner.pools.get_mut(pool) else {
            return;
        };
        let moved: HashMap<String, Arc<str>> =
            p.placement.rebalance_toward(node).into_iter().collect();
        if !moved.is_empty() {
            tracing::info!(backend = %node, moved = moved.len(), "quizzes return to their node");
        }
        let (p, backends) = (&inner.pools[pool], &inner.backends);
        // One spread per quiz, computed once however many of its players are open.
        let mut spreads: HashMap<String, Option<SpreadNodes>> = HashMap::new();
        // Paced per interim node, as a drain.
        let period = self.drain_period();
        let victims = self.tunnels.select(
            CloseReason::Rebalance,
            self.comeback(period),
            |backend, quiz, player| {
                if backends.get(backend).map(|b| &b.pool) != Some(pool) {
                    return false;
                }
                let Some((player, k)) = player else {
                    return moved.get(quiz) == Some(backend);
                };
                let spread = spreads.entry(quiz.to_string()).or_insert_with(|| {
                    let owner = p.placement.owner(quiz)?;
                    Some(p.spread_nodes(quiz, owner, k))
                });
                let Some((s, rest)) = spread else {
                    return false;
                };
                let s: Vec<&str> = s.iter().map(|n| n.as_ref()).collect();
                let rest: Vec<&str> = rest.iter().map(|n| n.as_ref()).collect();
                spread::choose(&s, &rest, player, |n| p.placement.is_eligible(n))
                    .is_some_and(|c| c.node != backend.as_ref())
            },
        );
        if victims.is_empty() {
            return;
        }
        let mut by_backend: HashMap<Arc<str>, Vec<Victim>> = HashMap::new();
        for (b, v) in victims {
            by_backend.entry(b).or_default().push(v);
        }
        for (_, v) in by_backend {
            self.cancel_in_order(v, CloseReason::Rebalance, period);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::EdgeConfig;

    const UNRESPONSIVE: Duration = Duration::from_secs(30);

    /// A cluster of `n` backends (`n0`, `n1`, …) never probed: the tests report outcomes.
    fn cluster(n: usize, panic_threshold: f64) -> Arc<Cluster> {
        let backends: String = (0..n)
            .map(|i| format!("        - {{name: n{i}, addr: '127.0.0.1:{}'}}\n", 1 + i))
            .collect();
        let text = format!(
            "edge_lb:
  listen: ['127.0.0.1:0']
  health: {{interval: 1s, success_threshold: 1, failure_threshold: 2, unresponsive_after: 30s, panic_threshold: {panic_threshold}}}
  pools:
    - name: core
      backends:
{backends}"
        );
        let c = Cluster::new(EdgeConfig::from_yaml(&text).unwrap());
        for i in 0..n {
            c.report_health(&format!("n{i}"), Outcome::Ready, None);
        }
        c
    }

    fn view(c: &Cluster, name: &str) -> crate::cluster::BackendView {
        c.backends().into_iter().find(|b| b.name == name).unwrap()
    }

    /// Pretend `name` last answered ready `ago` (and was first watched then).
    fn last_ready_ago(c: &Cluster, name: &str, ago: Duration) {
        let mut inner = c.inner.lock();
        let b = inner.backends.get_mut(name).unwrap();
        let t = Instant::now() - ago;
        b.last_ready = Some(t);
        b.watched_since = t;
    }

    fn slow_gauge(c: &Cluster, name: &str) -> i64 {
        c.metrics.backend_slow.with_label_values(&[name]).get()
    }

    fn transitions(c: &Cluster, name: &str, to: &str) -> u64 {
        c.metrics
            .health_transitions
            .with_label_values(&[name, to])
            .get()
    }

    #[test]
    fn slow_never_counts_toward_failure_threshold() {
        let c = cluster(2, 0.0);
        for _ in 0..20 {
            c.report_health("n0", Outcome::Slow, Some("read timeout".into()));
        }
        let b = view(&c, "n0");
        assert_eq!(b.health, "up");
        assert!(b.eligible && b.slow);
        assert_eq!(b.consecutive_fail, 0);
        assert_eq!(b.last_outcome, Some(Outcome::Slow));
        assert!(b.last_ready_ms_ago.is_some());
        assert_eq!(slow_gauge(&c, "n0"), 1);
        // Counted once when it turned slow, not per probe.
        assert_eq!(transitions(&c, "n0", "slow"), 1);
        assert_eq!(transitions(&c, "n0", "down"), 0);
    }

    #[test]
    fn failures_still_count_and_slow_between_them_neither_adds_nor_forgives() {
        let c = cluster(2, 0.0);
        c.report_health("n0", Outcome::Gone, Some("refused".into()));
        c.report_health("n0", Outcome::Slow, None);
        assert_eq!(view(&c, "n0").health, "up");
        c.report_health("n0", Outcome::NotReady, Some("503".into()));
        let b = view(&c, "n0");
        assert_eq!(b.health, "down");
        assert!(!b.eligible && !b.slow);
        assert_eq!(slow_gauge(&c, "n0"), 0);
        assert_eq!(transitions(&c, "n0", "down"), 1);
        // Two refusals in a row: down as before.
        c.report_health("n1", Outcome::Gone, None);
        c.report_health("n1", Outcome::Gone, None);
        assert_eq!(view(&c, "n1").health, "down");
    }

    #[test]
    fn unresponsive_after_loses_a_slow_node() {
        let c = cluster(2, 0.0);
        last_ready_ago(&c, "n0", UNRESPONSIVE - Duration::from_secs(1));
        c.report_health("n0", Outcome::Slow, None);
        assert_eq!(
            view(&c, "n0").health,
            "up",
            "lost before unresponsive_after"
        );
        last_ready_ago(&c, "n0", UNRESPONSIVE + Duration::from_millis(1));
        c.report_health("n0", Outcome::Slow, None);
        let b = view(&c, "n0");
        assert_eq!(b.health, "down");
        assert!(!b.eligible);
        assert_eq!(transitions(&c, "n0", "down"), 1);
        // Still slow, still down; returning takes ready answers (and the hold-down).
        c.report_health("n0", Outcome::Slow, None);
        assert_eq!(view(&c, "n0").health, "down");
        c.report_health("n0", Outcome::Ready, None);
        let b = view(&c, "n0");
        assert_eq!(b.health, "up");
        assert!(!b.slow && !b.eligible, "eligible before the hold-down");
    }

    #[test]
    fn a_ready_answer_resets_the_slowness_clock() {
        let c = cluster(2, 0.0);
        last_ready_ago(&c, "n0", UNRESPONSIVE * 2);
        c.report_health("n0", Outcome::Ready, None);
        assert_eq!(slow_gauge(&c, "n0"), 0);
        c.report_health("n0", Outcome::Slow, None);
        let b = view(&c, "n0");
        assert_eq!(b.health, "up");
        assert!(b.slow && b.last_ready_ms_ago.unwrap() < 1000);
        c.report_health("n0", Outcome::Ready, None);
        let b = view(&c, "n0");
        assert!(!b.slow);
        assert_eq!(b.consecutive_ok, 1);
        assert_eq!(slow_gauge(&c, "n0"), 0);
    }

    #[test]
    fn a_node_that_never_answers_ready_is_lost_after_unresponsive_after_from_first_watch() {
        let c = cluster(2, 0.0);
        {
            let mut inner = c.inner.lock();
            let b = inner.backends.get_mut("n1").unwrap();
            b.last_ready = None;
            b.watched_since = Instant::now() - UNRESPONSIVE;
        }
        c.report_health("n1", Outcome::Slow, None);
        let b = view(&c, "n1");
        assert_eq!(b.health, "down");
        assert_eq!(b.last_ready_ms_ago, None);
    }

    /// The first node of a spread quiz is lost and returns: the quiz (and its host) move back,
    /// while spread players stay on their nodes throughout, but for the lost node's own.
    #[test]
    fn first_node_of_a_spread_lost_and_back_moves_only_its_players_and_host() {
        let c = cluster(4, 0.0);
        let q = "spreadquiz";
        let players: Vec<String> = (0..200).map(|i| format!("pl{i}")).collect();
        let mut open = Vec::new();
        let route = |p: &str| c.route_ws("core", q, Some((p, 3))).unwrap().backend;
        for p in &players {
            let n = route(p);
            let g = c.register_tunnel("core", n.clone(), q, Some((p.as_str(), 3)));
            open.push((p.clone(), n, g));
        }
        let first = c.route_quiz("core", q).unwrap().backend;
        let host = c.register_tunnel("core", first.clone(), q, None);
        let on_first = open.iter().filter(|(_, n, _)| *n == first).count();
        assert!(on_first > 20, "{on_first}");
        // Lost: only its tunnels close (at once: no runtime here), the others keep their node.
        c.report_health(&first, Outcome::Gone, None);
        c.report_health(&first, Outcome::Gone, None);
        assert!(host.token.is_cancelled());
        let interim = c.route_quiz("core", q).unwrap().backend;
        assert_ne!(interim, first);
        let host2 = c.register_tunnel("core", interim.clone(), q, None);
        for (p, n, g) in open.iter_mut() {
            assert_eq!(g.token.is_cancelled(), *n == first, "{p}");
            let now = route(p);
            if *n == first {
                assert_ne!(now, first);
                *g = c.register_tunnel("core", now.clone(), q, Some((p.as_str(), 3)));
                *n = now;
            } else {
                assert_eq!(&now, n, "{p} moved although its node stayed");
            }
        }
        // Back after the hold-down: the quiz's host tunnel on the interim first node closes,
        // and so do the returning node's players (and only they).
        c.report_health(&first, Outcome::Ready, None);
        {
            let mut inner = c.inner.lock();
            inner.backends.get_mut(&first).unwrap().up_since =
                Some(Instant::now() - Duration::from_secs(60));
        }
        c.report_health(&first, Outcome::Ready, None);
        assert_eq!(c.route_quiz("core", q).unwrap().backend, first);
        assert!(
            host2.token.is_cancelled(),
            "the host follows the first node"
        );
        let mut back = 0;
        for (p, n, g) in &open {
            let home = route(p);
            let cancelled = g.token.is_cancelled();
            assert_eq!(cancelled, home != *n, "{p} on {n}, home {home}");
            if cancelled {
                assert_eq!(home, first);
                back += 1;
            }
        }
        assert_eq!(back, on_first);
    }

    #[test]
    fn panic_threshold_defers_losing_an_unresponsive_node() {
        let c = cluster(3, 0.5);
        c.report_health("n0", Outcome::Gone, None);
        c.report_health("n0", Outcome::Gone, None);
        assert_eq!(view(&c, "n0").health, "down");
        // Losing n1 too would leave 1 of 3 up: deferred, n1 keeps its place.
        last_ready_ago(&c, "n1", UNRESPONSIVE * 2);
        c.report_health("n1", Outcome::Slow, None);
        let b = view(&c, "n1");
        assert_eq!(b.health, "failing");
        assert!(b.eligible && b.slow);
        assert_eq!(c.metrics.pool_panic.with_label_values(&["core"]).get(), 1);
        // Once n0 is back, n1's next slow verdict is acted on.
        c.report_health("n0", Outcome::Ready, None);
        c.report_health("n1", Outcome::Slow, None);
        assert_eq!(view(&c, "n1").health, "down");
        assert_eq!(c.metrics.pool_panic.with_label_values(&["core"]).get(), 0);
    }
}
