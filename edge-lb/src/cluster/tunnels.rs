//! The registry of open tunnels, per backend, and their closing (pingora issue #571: a proxied
//! upgrade cannot be closed from outside, so edge-lb keeps a cancellation token per tunnel).
//!
//! A tunnel is registered before its client hears the `101` ([`Cluster::register_tunnel`]) and
//! deregistered by its [`TunnelGuard`]; both also keep the quiz's activity, which the idle-quiz
//! sweep reads. Closing cancels tokens in quiz order (a quiz's tunnels move together), at once
//! (node lost, backend removed) or paced at `drain.close_rate_per_sec` (drain, rebalance,
//! graceful stop). The registry has its own lock, never held across an `.await`; lock order:
//! the routing lock may be held when it is taken (a rebalance closes tunnels), never the
//! other way round.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::Cluster;

/// Why edge-lb closed a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    NodeLost,
    Drain,
    Rebalance,
    Removed,
    Shutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::NodeLost => "node_lost",
            CloseReason::Drain => "drain",
            CloseReason::Rebalance => "rebalance",
            CloseReason::Removed => "removed",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

struct Entry {
    quiz: String,
    /// A player's tunnel of a spread quiz: its player id and k (its node follows the player,
    /// not only the quiz: see `Cluster::rebalance_locked`).
    player: Option<(Box<str>, usize)>,
    token: CancellationToken,
    /// Why edge-lb picked it for closing, set when picked (the last pick before its token is
    /// cancelled wins): the access record of a cancelled tunnel says which close it was.
    closing: Option<CloseReason>,
}

impl Entry {
    /// Picked for closing for `reason` (unless already cancelled for another).
    fn pick(&mut self, reason: CloseReason) -> Victim {
        if !self.token.is_cancelled() {
            self.closing = Some(reason);
        }
        (self.quiz.clone(), self.token.clone())
    }
}

/// A tunnel to close: its quiz (the closing order) and its token.
type Victim = (String, CancellationToken);

/// Open tunnels by backend, then by id.
pub(super) struct Tunnels {
    open: Mutex<HashMap<Arc<str>, HashMap<u64, Entry>>>,
    next: AtomicU64,
}

impl Tunnels {
    pub(super) fn new() -> Tunnels {
        Tunnels {
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    fn insert(
        &self,
        backend: &Arc<str>,
        quiz: &str,
        player: Option<(&str, usize)>,
    ) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let entry = Entry {
            quiz: quiz.to_string(),
            player: player.map(|(p, k)| (p.into(), k)),
            token: token.clone(),
            closing: None,
        };
        self.open
            .lock()
            .entry(backend.clone())
            .or_default()
            .insert(id, entry);
        (id, token)
    }

    /// Deregister; returns why edge-lb picked it for closing, if it did.
    fn remove(&self, backend: &str, id: u64) -> Option<CloseReason> {
        self.open
            .lock()
            .get_mut(backend)
            .and_then(|m| m.remove(&id))
            .and_then(|e| e.closing)
    }

    fn count(&self, backend: &str) -> usize {
        self.open.lock().get(backend).map_or(0, |m| m.len())
    }

    /// Open tunnels per backend.
    pub(super) fn counts(&self) -> HashMap<Arc<str>, usize> {
        self.open
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    }

    /// The tunnels of `backend`, only those of `quizzes` when given, picked for `reason`.
    fn of(&self, backend: &str, quizzes: Option<&[String]>, reason: CloseReason) -> Vec<Victim> {
        let mut open = self.open.lock();
        open.get_mut(backend)
            .map(|m| {
                m.values_mut()
                    .filter(|e| quizzes.is_none_or(|q| q.contains(&e.quiz)))
                    .map(|e| e.pick(reason))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The tunnels for which `pick(backend, quiz, player)` says yes, with their backend,
    /// picked for `reason`; `player` is the player id and k of a spread player's tunnel.
    pub(super) fn select(
        &self,
        reason: CloseReason,
        mut pick: impl FnMut(&Arc<str>, &str, Option<(&str, usize)>) -> bool,
    ) -> Vec<(Arc<str>, Victim)> {
        let mut open = self.open.lock();
        let mut out = Vec::new();
        for (backend, m) in open.iter_mut() {
            for e in m.values_mut() {
                let player = e.player.as_ref().map(|(p, k)| (p.as_ref(), *k));
                if pick(backend, &e.quiz, player) {
                    out.push((backend.clone(), e.pick(reason)));
                }
            }
        }
        out
    }

    fn all(&self, reason: CloseReason) -> Vec<Victim> {
        self.open
            .lock()
            .values_mut()
            .flat_map(|m| m.values_mut().map(|e| e.pick(reason)))
            .collect()
    }
}

/// Deregisters a tunnel when dropped.
pub struct TunnelGuard {
    cluster: Arc<Cluster>,
    backend: Arc<str>,
    pool: Arc<str>,
    quiz: String,
    id: u64,
    /// Counted in the spread book's tunnels of the quiz on this backend.
    counted: bool,
    /// Already taken out of the registry by [`TunnelGuard::deregister`].
    removed: bool,
    pub token: CancellationToken,
}

impl TunnelGuard {
    pub fn quiz(&self) -> &str {
        &self.quiz
    }

    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Take the tunnel out of the registry now (the rest of the bookkeeping is done on
    /// drop), returning why edge-lb closed it if it did: the access record names it.
    pub fn deregister(&mut self) -> Option<CloseReason> {
        if self.removed {
            return None;
        }
        self.removed = true;
        self.cluster.tunnels.remove(&self.backend, self.id)
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if !self.removed {
            self.cluster.tunnels.remove(&self.backend, self.id);
        }
        self.cluster
            .metrics
            .tunnels_active
            .with_label_values(&[&self.backend])
            .dec();
        let mut inner = self.cluster.inner.lock();
        if let Some(p) = inner.pools.get_mut(&self.pool) {
            let a = p.activity.entry(self.quiz.clone()).or_default();
            a.tunnels = a.tunnels.saturating_sub(1);
            a.last_seen = Some(Instant::now());
        }
        drop(inner);
        if self.counted {
            self.cluster
                .book
                .lock()
                .closed(&self.quiz, &self.backend, Instant::now());
        }
    }
}

impl Cluster {
    /// Register an open tunnel (`player`: the player id and k of a spread player's tunnel);
    /// the guard deregisters it. Counted per node in the spread book if the quiz is recorded.
    pub fn register_tunnel(
        self: &Arc<Self>,
        pool: &str,
        backend: Arc<str>,
        quiz: &str,
        player: Option<(&str, usize)>,
    ) -> TunnelGuard {
        let (id, token) = self.tunnels.insert(&backend, quiz, player);
        self.metrics
            .tunnels_active
            .with_label_values(&[&backend])
            .inc();
        {
            let mut inner = self.inner.lock();
            if let Some(p) = inner.pools.get_mut(pool) {
                let a = p.activity.entry(quiz.to_string()).or_default();
                a.tunnels += 1;
                a.last_seen = Some(Instant::now());
            }
        }
        let counted = self.book.lock().opened(quiz, &backend, Instant::now());
        TunnelGuard {
            cluster: self.clone(),
            backend,
            pool: pool.into(),
            quiz: quiz.to_string(),
            id,
            counted,
            removed: false,
            token,
        }
    }

    pub fn tunnel_count(&self, backend: &str) -> usize {
        self.tunnels.count(backend)
    }

    /// Close the tunnels of `backend` (optionally only those of `quizzes`): at once when
    /// `immediate`, else gradually at `drain.close_rate_per_sec`, grouped by quiz so a quiz
    /// moves together.
    pub(super) fn close_tunnels(
        self: &Arc<Self>,
        backend: Arc<str>,
        quizzes: Option<Vec<String>>,
        reason: CloseReason,
        immediate: bool,
    ) {
        let victims = self.tunnels.of(&backend, quizzes.as_deref(), reason);
        let period = if immediate {
            Duration::ZERO
        } else {
            self.drain_period()
        };
        self.cancel_in_order(victims, reason, period);
    }

    pub fn close_tunnels_of(
        self: &Arc<Self>,
        backend: Arc<str>,
        reason: CloseReason,
        immediate: bool,
    ) {
        self.close_tunnels(backend, None, reason, immediate);
    }

    /// Graceful stop (SIGTERM, or SIGQUIT once the listening sockets went to the new process):
    /// close every tunnel (1012), spread evenly over `within` and never slower than
    /// `drain.close_rate_per_sec`, grouped by quiz, so clients reconnect — to the new process or
    /// another replica — in a trickle instead of all at once when this process exits. Returns
    /// how many were scheduled.
    pub fn close_all_tunnels_within(self: &Arc<Self>, within: Duration) -> usize {
        let victims = self.tunnels.all(CloseReason::Shutdown);
        let n = victims.len();
        if n > 0 {
            let period = (within / n as u32).min(self.drain_period());
            self.cancel_in_order(victims, CloseReason::Shutdown, period);
        }
        n
    }

    /// One tunnel close per this period at `drain.close_rate_per_sec`.
    pub(super) fn drain_period(&self) -> Duration {
        let rate = self.config().drain.close_rate_per_sec.max(1);
        Duration::from_secs_f64(1.0 / f64::from(rate))
    }

    /// Cancel `victims` sorted by quiz (a quiz's tunnels close together), one per `period` on
    /// the current runtime, or all at once (here) when it is zero or there is no runtime; each
    /// counted under `reason`.
    pub(super) fn cancel_in_order(
        &self,
        mut victims: Vec<Victim>,
        reason: CloseReason,
        period: Duration,
    ) {
        if victims.is_empty() {
            return;
        }
        victims.sort_by(|a, b| a.0.cmp(&b.0));
        let counter = self
            .metrics
            .tunnels_closed
            .with_label_values(&[reason.as_str()]);
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(h) if !period.is_zero() => h,
            _ => {
                for (_, t) in victims {
                    t.cancel();
                    counter.inc();
                }
                return;
            }
        };
        handle.spawn(async move {
            let mut tick = tokio::time::interval(period);
            for (_, t) in victims {
                tick.tick().await;
                if !t.is_cancelled() {
                    t.cancel();
                    counter.inc();
                }
            }
        });
    }
}
