//! Admission control where load enters: joins are admitted at the rate this
//! node and its store sustain, and refused early and cleanly past it.
//!
//! Why: a join costs the node a state read, the join script on the quiz's
//! master, a Kafka delivery and a board read. When the machine or the store
//! is slow, joins that keep arriving at the ramp's rate pile up as in-flight
//! store calls, each waiting up to `redis_command_timeout_ms`; the node's
//! answers and its readiness checks wait behind them, the joins answer 503
//! after seconds, their retries add to the pile, and the node looks dead to
//! edge-lb (measured: 25 000 players joining one quiz's first node at
//! 1 500/s, docs/performance.md). The metastable pattern (Bronson et al.,
//! HotOS 2021); the anchors are HAProxy's `maxconn` queue and Envoy's
//! adaptive concurrency.
//!
//! So a [`Gate`]: at most `join_max_in_flight` joins run at once on a node;
//! a join waits at most `join_queue_ms` for a place (a bounded queue with a
//! deadline, FIFO: tokio's semaphore is fair), then is refused with 503
//! `unavailable` and a `Retry-After` spread over 1–3 s, **before anything is
//! written**. A refused join created nothing, so the client's retry (with
//! the same `Idempotency-Key`) is an ordinary join.
//!
//! WebSocket upgrades go through a second gate of their own
//! (`upgrade_max_in_flight`, `upgrade_queue_ms`): an upgrade costs a token
//! check, two to four store reads (the quiz, the player, the state, the
//! standing) for the welcome, and the room attach; a reconnect storm after
//! a node failover is every player of a quiz upgrading at once. The place
//! is taken before the 101 is written and given back once the welcome is
//! queued and the connection is in its room (`connection.rs`): the gate
//! bounds the setup, not the sockets (those are bounded by
//! `max_connections`).

use std::time::Duration;

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// A bounded number of places and a bounded wait for one.
pub struct Gate {
    places: Arc<Semaphore>,
    max: usize,
    wait: Duration,
}

impl Gate {
    /// `max_in_flight` places (at least one); a caller waits at most `wait`.
    pub fn new(max_in_flight: usize, wait: Duration) -> Gate {
        let max = max_in_flight.max(1);
        Gate {
            places: Arc::new(Semaphore::new(max)),
            max,
            wait,
        }
    }

    /// A place, held until the returned permit drops; `None` when none
    /// freed up within the wait: the caller refuses the request.
    pub async fn enter(&self) -> Option<SemaphorePermit<'_>> {
        match tokio::time::timeout(self.wait, self.places.acquire()).await {
            Ok(Ok(permit)) => Some(permit),
            // Timed out, or closed (never: the gate is never closed).
            _ => None,
        }
    }

    /// [`Gate::enter`] for a place that outlives the caller's borrow of
    /// the gate (handed to a spawned task, e.g. an upgraded connection).
    pub async fn enter_owned(&self) -> Option<OwnedSemaphorePermit> {
        let acquire = Arc::clone(&self.places).acquire_owned();
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => Some(permit),
            _ => None,
        }
    }

    /// Places in use.
    pub fn in_flight(&self) -> usize {
        self.max.saturating_sub(self.places.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two places: a third caller waits, gets the place freed within the
    /// wait, and a fourth, with both places held past the wait, is refused.
    #[tokio::test(start_paused = true)]
    async fn bounded_places_and_bounded_wait() {
        let gate = Gate::new(2, Duration::from_millis(100));
        let a = gate.enter().await.expect("first");
        let b = gate.enter().await.expect("second");
        assert_eq!(gate.in_flight(), 2);
        let freed = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(a);
        };
        let (third, ()) = tokio::join!(gate.enter(), freed);
        assert!(third.is_some(), "a place freed within the wait is taken");
        assert!(gate.enter().await.is_none(), "refused after the wait");
        drop(b);
        drop(third);
        assert_eq!(gate.in_flight(), 0);
    }

    /// An owned place counts like a borrowed one; with no wait, a free
    /// place is still taken (the timeout polls the acquire first).
    #[tokio::test(start_paused = true)]
    async fn owned_places_and_no_wait() {
        let gate = Gate::new(1, Duration::ZERO);
        let a = gate.enter_owned().await.expect("a free place, no wait");
        assert_eq!(gate.in_flight(), 1);
        assert!(gate.enter_owned().await.is_none(), "refused at once");
        assert!(gate.enter().await.is_none(), "one pool of places");
        drop(a);
        assert!(gate.enter_owned().await.is_some());
    }
}
