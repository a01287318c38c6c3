//! One timer for every player of a worker.
//!
//! Why: a player waits for its answer's think time, a planned drop or its
//! time to leave. A tokio `Sleep` per player is 112 bytes in every player
//! for the whole run and needs a task to poll it; here the worker keeps one
//! heap of (when, who) and one task that sleeps until the earliest entry.
//! Entries are never cancelled: the player checks what is due when called,
//! so an entry made stale by a later plan is a harmless early call, popped
//! at its time.

use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};

use tokio::time::Instant;

use crate::clock::wall_us;

/// A worker's timer heap; `P` is what gets called (a player).
pub struct Timers<P> {
    heap: RefCell<BinaryHeap<Due<P>>>,
    /// Wall µs the loop sleeps until: an entry due earlier wakes it.
    sleeping_until: Cell<u64>,
    poked: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

struct Due<P> {
    at_us: u64,
    who: Rc<P>,
}

impl<P> PartialEq for Due<P> {
    fn eq(&self, other: &Self) -> bool {
        self.at_us == other.at_us
    }
}
impl<P> Eq for Due<P> {}
impl<P> PartialOrd for Due<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<P> Ord for Due<P> {
    /// Reversed: `BinaryHeap` is a max-heap, the earliest entry comes first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.at_us.cmp(&self.at_us)
    }
}

impl<P> Default for Timers<P> {
    fn default() -> Self {
        Timers::with_capacity(0)
    }
}

impl<P> Timers<P> {
    /// Room for `n` entries up front (a worker: one per player), so that the
    /// heap is not copied as it grows while the players join.
    pub fn with_capacity(n: usize) -> Self {
        Timers {
            heap: RefCell::new(BinaryHeap::with_capacity(n)),
            sleeping_until: Cell::new(u64::MAX),
            poked: Cell::new(false),
            waker: Cell::new(None),
        }
    }

    /// Call `who` at wall time `at_us` (µs) or soon after.
    pub fn arm(&self, at_us: u64, who: Rc<P>) {
        self.heap.borrow_mut().push(Due { at_us, who });
        if at_us < self.sleeping_until.get() {
            self.sleeping_until.set(at_us);
            self.poked.set(true);
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    /// Drop every entry (at the end of the run: they hold their players).
    pub fn clear(&self) {
        self.heap.borrow_mut().clear();
    }

    /// No entry is waiting, not even a stale one.
    pub fn is_empty(&self) -> bool {
        self.heap.borrow().is_empty()
    }

    /// Call `fire(who, at_us)` with each entry when it is due, until wall
    /// time `until_us` (a worker's deadline, after which nothing it planned
    /// matters); entries due by then are fired first. `at_wall` turns wall
    /// µs into the runtime's instants.
    pub async fn run_until(
        &self,
        until_us: u64,
        at_wall: impl Fn(u64) -> Instant,
        fire: impl Fn(Rc<P>, u64),
    ) {
        // Re-armed before it is polled: only its first instant is arbitrary.
        let sleep = tokio::time::sleep(std::time::Duration::from_secs(3600));
        tokio::pin!(sleep);
        loop {
            let now = wall_us();
            loop {
                // Popped one at a time: `fire` may arm again.
                let due = {
                    let mut heap = self.heap.borrow_mut();
                    match heap.peek() {
                        Some(d) if d.at_us <= now => heap.pop(),
                        _ => None,
                    }
                };
                match due {
                    Some(d) => fire(d.who, d.at_us),
                    None => break,
                }
            }
            if now >= until_us {
                return;
            }
            let next = self.heap.borrow().peek().map_or(u64::MAX, |d| d.at_us);
            self.sleeping_until.set(next);
            self.poked.set(false);
            // The runtime's clock and the wall clock may differ by a hair:
            // woken before `until_us` on the wall clock, the loop comes
            // round again.
            let wake_at = next.min(until_us);
            if wake_at != u64::MAX {
                sleep.as_mut().reset(at_wall(wake_at));
            }
            std::future::poll_fn(|cx| {
                if self.poked.get() {
                    return Poll::Ready(());
                }
                if wake_at != u64::MAX && sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn fires_in_order_and_wakes_for_an_earlier_entry() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let timers: Rc<Timers<u32>> = Rc::new(Timers::default());
                let fired = Rc::new(RefCell::new(Vec::new()));
                let base = Instant::now();
                let base_wall = wall_us();
                let at_wall =
                    move |us: u64| base + Duration::from_micros(us.saturating_sub(base_wall));
                let t = timers.clone();
                let f = fired.clone();
                let task = tokio::task::spawn_local(async move {
                    t.run_until(u64::MAX, at_wall, |who, _| f.borrow_mut().push(*who))
                        .await
                });
                let now = wall_us();
                timers.arm(now + 300_000, Rc::new(3));
                tokio::time::sleep(Duration::from_millis(20)).await;
                // Earlier than what the loop sleeps until: it must wake for it.
                timers.arm(now + 60_000, Rc::new(1));
                timers.arm(now + 120_000, Rc::new(2));
                tokio::time::timeout(Duration::from_secs(5), async {
                    while fired.borrow().len() < 3 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await
                .expect("every entry fires");
                assert_eq!(*fired.borrow(), vec![1, 2, 3]);
                assert!(timers.is_empty());
                task.abort();
            })
            .await;
    }
}
