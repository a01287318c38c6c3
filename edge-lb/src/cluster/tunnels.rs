//! The registry of open tunnels, per backend, and their closing (pingora issue #571: a proxied
//! upgrade cannot be closed from outside, so edge-lb keeps a cancellation token per tunnel).
//!
//! A tunnel is registered before its client hears the `101` ([`Cluster::register_tunnel`]) and
//! deregistered by its [`TunnelGuard`]; both also keep the quiz's activity, which the idle-quiz
//! sweep reads. Closing cancels tokens in quiz order (a quiz's tunnels move together), at once
//! (node lost, backend removed) or paced at `drain.close_rate_per_sec` (drain, rebalance,
//! graceful stop). Each closed tunnel's client is told when to come back (the 1012 close frame's
//! reason `retry_after_ms=<n>`, drawn per tunnel: [`Comeback`]), so a node's whole crowd does
//! not reconnect at one instant. The registry has its own lock, never held across an `.await`; lock order:
//! the routing lock may be held when it is taken (a rebalance closes tunnels), never the
//! other way round.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Cluster;
use crate::cancel::TunnelCancel;

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

/// How edge-lb closed a tunnel: why, and when its client is told to come back (the 1012
/// close frame's reason `retry_after_ms=<n>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closing {
    pub reason: CloseReason,
    pub retry_after_ms: u32,
}

/// The longest comeback edge-lb asks for: a player waits no longer than this to be back.
const COMEBACK_MAX: Duration = Duration::from_secs(30);
/// The shortest comeback window: even a handful of tunnels closed together spread over a second.
const COMEBACK_MIN: Duration = Duration::from_secs(1);

/// How the clients of tunnels closed together are spread when they come back: each is told a
/// delay drawn uniformly in a window long enough for all of them to pass one node's
/// `tunnel.new_per_node_per_sec` (as if they all landed on one node: the conservative case,
/// e.g. a quiz moving to its next ring node), less the spread the closes themselves already
/// have when paced (`period` apart), within [`COMEBACK_MIN`], [`COMEBACK_MAX`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Comeback {
    /// New tunnels per second one node is given (`None`: no limit).
    pub per_sec: Option<f64>,
    /// Time between two closes of the batch (zero: all at once).
    pub period: Duration,
}

impl Comeback {
    fn window_ms(self, n: usize) -> u32 {
        let needed = self
            .per_sec
            .map_or(Duration::ZERO, |r| Duration::from_secs_f64(n as f64 / r));
        let paced = self.period.saturating_mul(n.min(u32::MAX as usize) as u32);
        let window = needed
            .saturating_sub(paced)
            .clamp(COMEBACK_MIN, COMEBACK_MAX);
        window.as_millis() as u32
    }
}

struct Entry {
    quiz: String,
    /// A player's tunnel of a spread quiz: its player id and k (its node follows the player,
    /// not only the quiz: see `Cluster::rebalance_locked`).
    player: Option<(Box<str>, usize)>,
    token: TunnelCancel,
    /// Why edge-lb picked it for closing and its comeback, set when picked (the last pick
    /// before its token is cancelled wins): the close frame carries the comeback and the
    /// access record of a cancelled tunnel says which close it was.
    closing: Option<Closing>,
}

impl Entry {
    /// Picked for closing for `reason` (unless already cancelled for another), its client told
    /// to come back after `retry_after_ms`.
    fn pick(&mut self, reason: CloseReason, retry_after_ms: u32) -> Victim {
        if !self.token.is_cancelled() {
            self.closing = Some(Closing {
                reason,
                retry_after_ms,
            });
        }
        (self.quiz.clone(), self.token.clone())
    }
}

/// A tunnel to close: its quiz (the closing order) and its token.
pub(super) type Victim = (String, TunnelCancel);

/// Open tunnels by backend, then by id.
pub(super) struct Tunnels {
    open: Mutex<HashMap<Arc<str>, HashMap<u64, Entry>>>,
    next: AtomicU64,
    /// Keys the draw of each tunnel's comeback from its id (uniform, different per process).
    seed: RandomState,
    /// Per backend, when the current batch of vanished tunnels began (the first of its tunnels
    /// to end without a close, its node gone) and its size: the tunnels it had then.
    vanishes: Mutex<HashMap<Arc<str>, (Instant, usize)>>,
}

/// Vanishes of one backend within this of the batch's first are one batch (one node going away:
/// its sockets end within milliseconds of each other, read as their tasks get to them); an
/// isolated one later starts its own, sized by what the backend has then.
const VANISH_BATCH_GAP: Duration = Duration::from_secs(2);

impl Tunnels {
    pub(super) fn new() -> Tunnels {
        Tunnels {
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            seed: RandomState::new(),
            vanishes: Mutex::new(HashMap::new()),
        }
    }

    /// Forget batches of vanished tunnels that are over (the upkeep's sweep).
    pub(super) fn forget_vanishes(&self, now: Instant) {
        self.vanishes
            .lock()
            .retain(|_, (at, _)| now.saturating_duration_since(*at) <= VANISH_BATCH_GAP);
    }

    /// The comeback of tunnel `id` of `backend`, which vanished: drawn in the window of the
    /// batch it belongs to, the batch being every tunnel the backend had when the first of
    /// them vanished (counting them later would shrink the window as they deregister).
    fn vanished(&self, backend: &Arc<str>, id: u64, comeback: Comeback) -> u32 {
        let now = Instant::now();
        let open_now = self.count(backend).max(1);
        let batch = {
            let mut v = self.vanishes.lock();
            let e = v.entry(backend.clone()).or_insert((now, open_now));
            if now.saturating_duration_since(e.0) > VANISH_BATCH_GAP {
                *e = (now, open_now);
            }
            e.1
        };
        let window = u64::from(comeback.window_ms(batch).max(1));
        (self.seed.hash_one(id) % window) as u32
    }

    /// Pick `picked` (tunnel ids and entries) for `reason`, each with its own comeback drawn
    /// uniformly in the batch's window.
    fn pick_all<'a>(
        &self,
        picked: Vec<(u64, &'a mut Entry)>,
        reason: CloseReason,
        comeback: Comeback,
    ) -> impl Iterator<Item = Victim> + 'a {
        let window = u64::from(comeback.window_ms(picked.len()).max(1));
        let seed = self.seed.clone();
        picked.into_iter().map(move |(id, e)| {
            let ms = (seed.hash_one(id) % window) as u32;
            e.pick(reason, ms)
        })
    }

    fn insert(
        &self,
        backend: &Arc<str>,
        quiz: &str,
        player: Option<(&str, usize)>,
    ) -> (u64, TunnelCancel) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = TunnelCancel::new();
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

    /// Deregister; returns how edge-lb closed it, if it did.
    fn remove(&self, backend: &str, id: u64) -> Option<Closing> {
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
    fn of(
        &self,
        backend: &str,
        quizzes: Option<&[String]>,
        reason: CloseReason,
        comeback: Comeback,
    ) -> Vec<Victim> {
        let mut open = self.open.lock();
        let Some(m) = open.get_mut(backend) else {
            return Vec::new();
        };
        let picked: Vec<(u64, &mut Entry)> = m
            .iter_mut()
            .filter(|(_, e)| quizzes.is_none_or(|q| q.contains(&e.quiz)))
            .map(|(id, e)| (*id, e))
            .collect();
        self.pick_all(picked, reason, comeback).collect()
    }

    /// The tunnels for which `pick(backend, quiz, player)` says yes, with their backend,
    /// picked for `reason`; `player` is the player id and k of a spread player's tunnel.
    pub(super) fn select(
        &self,
        reason: CloseReason,
        comeback: Comeback,
        mut pick: impl FnMut(&Arc<str>, &str, Option<(&str, usize)>) -> bool,
    ) -> Vec<(Arc<str>, Victim)> {
        let mut open = self.open.lock();
        let mut backends = Vec::new();
        let mut picked = Vec::new();
        for (backend, m) in open.iter_mut() {
            for (id, e) in m.iter_mut() {
                let player = e.player.as_ref().map(|(p, k)| (p.as_ref(), *k));
                if pick(backend, &e.quiz, player) {
                    backends.push(backend.clone());
                    picked.push((*id, e));
                }
            }
        }
        // `pick_all` keeps the order: the i-th victim is the i-th backend's.
        backends
            .into_iter()
            .zip(self.pick_all(picked, reason, comeback))
            .collect()
    }

    fn all(&self, reason: CloseReason, comeback: Comeback) -> Vec<Victim> {
        let mut open = self.open.lock();
        let picked: Vec<(u64, &mut Entry)> = open
            .values_mut()
            .flat_map(|m| m.iter_mut().map(|(id, e)| (*id, e)))
            .collect();
        self.pick_all(picked, reason, comeback).collect()
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
    pub token: TunnelCancel,
}

impl TunnelGuard {
    pub fn quiz(&self) -> &str {
        &self.quiz
    }

    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Its node went away without closing it: the comeback to tell its client, from the
    /// batch of tunnels that vanished with it. Call before [`TunnelGuard::deregister`].
    pub fn vanished_comeback(&self) -> u32 {
        let comeback = self.cluster.comeback(Duration::ZERO);
        self.cluster
            .tunnels
            .vanished(&self.backend, self.id, comeback)
    }

    /// Take the tunnel out of the registry now (the rest of the bookkeeping is done on
    /// drop), returning how edge-lb closed it if it did: the close frame carries its comeback
    /// and the access record names its reason.
    pub fn deregister(&mut self) -> Option<Closing> {
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
        let period = if immediate {
            Duration::ZERO
        } else {
            self.drain_period()
        };
        let victims = self
            .tunnels
            .of(&backend, quizzes.as_deref(), reason, self.comeback(period));
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
        let n = self.tunnels.counts().values().sum::<usize>().max(1);
        let period = (within / n.min(u32::MAX as usize) as u32).min(self.drain_period());
        let victims = self
            .tunnels
            .all(CloseReason::Shutdown, self.comeback(period));
        let n = victims.len();
        if n > 0 {
            self.cancel_in_order(victims, CloseReason::Shutdown, period);
        }
        n
    }

    /// The comeback of tunnels closed `period` apart (zero: together).
    pub(super) fn comeback(&self, period: Duration) -> Comeback {
        Comeback {
            per_sec: self.node_rate.per_sec(),
            period,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn window(per_sec: Option<f64>, period_ms: u64, n: usize) -> u32 {
        Comeback {
            per_sec,
            period: Duration::from_millis(period_ms),
        }
        .window_ms(n)
    }

    #[test]
    fn comeback_window_fits_the_crowd_through_one_nodes_tunnel_rate() {
        // 9 000 tunnels at 1 000 new tunnels/s per node: 9 s.
        assert_eq!(window(Some(1000.0), 0, 9_000), 9_000);
        // A handful: the 1 s floor; a stadium: the 30 s ceiling.
        assert_eq!(window(Some(1000.0), 0, 10), 1_000);
        assert_eq!(window(Some(1000.0), 0, 100_000), 30_000);
        // No per-node limit: the floor.
        assert_eq!(window(None, 0, 100_000), 1_000);
        // Paced closes (a drain at 500/s: 2 ms apart) already spread 9 000 over 18 s.
        assert_eq!(window(Some(1000.0), 2, 9_000), 1_000);
        // Paced 1 ms apart into nodes given 500/s: 9 s of the 18 s needed are already there.
        assert_eq!(window(Some(500.0), 1, 9_000), 9_000);
    }

    #[test]
    fn each_picked_tunnel_gets_its_own_comeback_within_the_window() {
        let t = Tunnels::new();
        let b: Arc<str> = "core-0".into();
        for i in 0..2_000 {
            t.insert(&b, &format!("q{}", i % 7), None);
        }
        // 2 000 at 1 000/s: a 2 s window.
        let comeback = Comeback {
            per_sec: Some(1000.0),
            period: Duration::ZERO,
        };
        let victims = t.of("core-0", None, CloseReason::NodeLost, comeback);
        assert_eq!(victims.len(), 2_000);
        let open = t.open.lock();
        let ms: Vec<u32> = open["core-0"]
            .values()
            .map(|e| {
                let c = e.closing.expect("picked");
                assert_eq!(c.reason, CloseReason::NodeLost);
                c.retry_after_ms
            })
            .collect();
        assert!(
            ms.iter().all(|&m| m < 2_000),
            "past the window: {:?}",
            ms.iter().max()
        );
        // Spread over the window: each half-second holds about a quarter of them.
        for q in 0..4 {
            let n = ms.iter().filter(|&&m| m / 500 == q).count();
            assert!((350..650).contains(&n), "quarter {q} holds {n} of 2 000");
        }
    }
}
