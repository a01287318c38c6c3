//! [`Gated`]: a future polled only after it asked to be.
//!
//! A connection's task joins its read loop and its writer, and the read
//! loop selects its next frame against the connection's close. Every
//! wake-up of the task (a frame from the client, the Redis reply and the
//! Kafka acknowledgement of an answer) polls every branch, and polling a
//! parked `Notify` or cancellation future takes that future's lock: about
//! seven lock round trips per answer, on branches that nearly never have
//! anything to do (the writer only runs when a direct write could not
//! finish; a close comes once per connection).
//!
//! `Gated` hands its future a waker of its own, which records that it
//! fired before waking the task. The future is polled on the first poll
//! and after its own waker fired; any other wake-up of the task costs one
//! plain load of a flag and a compare of the task's waker with the one
//! registered.
//!
//! The gated futures of one task share one [`Gate`] (one allocation, a
//! bit each): what a gated poll costs is mostly reaching the gate's memory
//! (a cache miss: a connection's task runs among thousands), so one gate
//! per task is one miss per wake-up, not one per gated future. A wake sets
//! every bit, as the gate's waker cannot tell whose future fired: the
//! other gated future is then polled once for nothing, which futures
//! allow, and which happens only when a gated future fires (rarely).
//!
//! The task's waker is woken by reference, never taken, so it stays
//! registered across wakes: registering anew on every poll (as
//! `AtomicWaker` must, since its wake takes the waker) cost two atomic
//! read-modify-writes per gated future and poll.
//!
//! Correctness: the task's waker is registered (under the gate's lock)
//! before the flag is read, and a wake sets the flag before it takes the
//! lock to wake the task. So a wake either lands before the read (the
//! read sees it), or finds the task's waker registered and wakes it; the
//! next poll then sees the flag. What the future registers its waker with
//! (a `Notify`, a socket's readiness, a timer, tokio's cooperative
//! budget) gets the gate's waker and wakes through it.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::Mutex;

/// Which bit of its [`Gate`] a gated future owns: one type per gated
/// future of a task, each with its own bit.
pub trait Slot {
    const BIT: u8;
}

pin_project_lite::pin_project! {
    /// `inner`, polled only when its gate's waker fired (or never polled
    /// yet).
    pub struct Gated<F, S> {
        #[pin]
        inner: F,
        // One pointer: a connection's task carries two of these, and its
        // allocation sits just under one of the allocator's size classes.
        // The gate becomes a waker only when `inner` is polled (rarely).
        gate: Arc<Gate>,
        slot: PhantomData<S>,
    }
}

/// Whether the gated futures' waker fired since each one's last poll (a
/// bit per [`Slot`]), and the task to wake when it does.
pub struct Gate {
    woken: AtomicU8,
    /// The task's waker; a wake wakes it by reference and leaves it here.
    task: Mutex<Option<Waker>>,
    /// Which waker `task` holds (its data and vtable pointers): written
    /// and read by the polling task only, so that a poll by the task
    /// already registered takes no lock.
    registered: [AtomicUsize; 2],
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate {
            // Every future is polled on its first poll: it has not
            // registered anything yet.
            woken: AtomicU8::new(u8::MAX),
            task: Mutex::new(None),
            // No waker has a null data pointer and vtable both.
            registered: [AtomicUsize::new(0), AtomicUsize::new(0)],
        })
    }

    fn identity(waker: &Waker) -> [usize; 2] {
        [waker.data() as usize, waker.vtable() as *const _ as usize]
    }

    /// Makes `waker` the one a wake wakes, unless it already is.
    fn register(&self, waker: &Waker) {
        let id = Gate::identity(waker);
        let held = [0, 1].map(|i| self.registered[i].load(Ordering::Relaxed));
        if held == id {
            return;
        }
        *self.task.lock() = Some(waker.clone());
        for (slot, part) in self.registered.iter().zip(id) {
            slot.store(part, Ordering::Relaxed);
        }
    }

    /// Takes the bit `bit` if it is set: whether its future is due a poll.
    fn take(&self, bit: u8) -> bool {
        // The plain load first: the read-modify-write only when set.
        self.woken.load(Ordering::Relaxed) & bit != 0
            && self.woken.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // The flag before the lock: see the module doc.
        self.woken.store(u8::MAX, Ordering::Release);
        if let Some(task) = &*self.task.lock() {
            task.wake_by_ref();
        }
    }
}

impl<F: Future, S: Slot> Gated<F, S> {
    /// `inner` behind `gate`, in the slot `S` (a gate's futures each have
    /// their own slot).
    pub fn new(gate: &Arc<Gate>, inner: F) -> Gated<F, S> {
        Gated {
            inner,
            gate: Arc::clone(gate),
            slot: PhantomData,
        }
    }
}

impl<F: Future, S: Slot> Future for Gated<F, S> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Register before reading the flag (see the module doc).
        this.gate.register(cx.waker());
        if !this.gate.take(S::BIT) {
            return Poll::Pending;
        }
        let waker = Waker::from(Arc::clone(this.gate));
        this.inner.poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    enum First {}
    impl Slot for First {
        const BIT: u8 = 1;
    }
    enum Second {}
    impl Slot for Second {
        const BIT: u8 = 2;
    }

    /// Counts its polls; pending until `ready` is set, registering the
    /// waker it was given in `parked`.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        parked: Arc<parking_lot::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.parked.lock() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// The test's side of a [`Probe`]: its polls, its readiness, the
    /// waker it parked.
    struct Handles {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        parked: Arc<parking_lot::Mutex<Option<Waker>>>,
    }

    fn probe() -> (Probe, Handles) {
        let h = Handles {
            polls: Arc::new(AtomicUsize::new(0)),
            ready: Arc::new(AtomicBool::new(false)),
            parked: Arc::new(parking_lot::Mutex::new(None)),
        };
        let p = Probe {
            polls: Arc::clone(&h.polls),
            ready: Arc::clone(&h.ready),
            parked: Arc::clone(&h.parked),
        };
        (p, h)
    }

    /// Wakes the test task's waker: counts the wakes.
    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn polls_the_future_only_after_its_own_waker_fired() {
        let (
            probe,
            Handles {
                polls,
                ready,
                parked,
            },
        ) = probe();
        let mut gated = Box::pin(Gated::<_, First>::new(&Gate::new(), probe));
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&waker);

        // The first poll reaches the future.
        assert!(gated.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // The task woken for something else: the future is not polled.
        for _ in 0..5 {
            assert!(gated.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        assert_eq!(task.0.load(Ordering::SeqCst), 0);

        // The future's own waker fires: the task is woken and the next
        // poll reaches the future, which completes.
        ready.store(true, Ordering::SeqCst);
        parked.lock().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(gated.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_wake_wakes_the_waker_of_the_latest_poll_and_keeps_it() {
        let (probe, Handles { polls, parked, .. }) = probe();
        let mut gated = Box::pin(Gated::<_, First>::new(&Gate::new(), probe));
        let first = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let second = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let first_waker = Waker::from(Arc::clone(&first));
        let second_waker = Waker::from(Arc::clone(&second));

        assert!(gated
            .as_mut()
            .poll(&mut Context::from_waker(&first_waker))
            .is_pending());
        // Polled from another task now: that task is the one woken.
        assert!(gated
            .as_mut()
            .poll(&mut Context::from_waker(&second_waker))
            .is_pending());
        let inner = parked.lock().take().unwrap();
        inner.wake_by_ref();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        // A wake leaves the waker registered: the next one, before any
        // poll, wakes the task again.
        inner.wake_by_ref();
        assert_eq!(second.0.load(Ordering::SeqCst), 2);
        assert!(gated
            .as_mut()
            .poll(&mut Context::from_waker(&second_waker))
            .is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn futures_sharing_a_gate_each_see_a_wake_of_either() {
        let gate = Gate::new();
        let (p1, h1) = probe();
        let (p2, h2) = probe();
        let (polls1, parked1, polls2, parked2) = (h1.polls, h1.parked, h2.polls, h2.parked);
        let mut first = Box::pin(Gated::<_, First>::new(&gate, p1));
        let mut second = Box::pin(Gated::<_, Second>::new(&gate, p2));
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&waker);
        let mut poll_both = || {
            assert!(first.as_mut().poll(&mut cx).is_pending());
            assert!(second.as_mut().poll(&mut cx).is_pending());
        };
        let polled = || (polls1.load(Ordering::SeqCst), polls2.load(Ordering::SeqCst));

        // Both polled first, then neither until a wake.
        poll_both();
        poll_both();
        assert_eq!(polled(), (1, 1));
        // The first's waker fires: the task is woken, and both are polled
        // once (the second for nothing), then neither again.
        parked1.lock().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        poll_both();
        poll_both();
        assert_eq!(polled(), (2, 2));
        // The second's own wake reaches it.
        parked2.lock().take().unwrap().wake();
        poll_both();
        assert_eq!(polled(), (3, 3));
        assert_eq!(task.0.load(Ordering::SeqCst), 2);
    }

    /// Notifies sent by the race tests, one at a time.
    const ROUNDS: usize = 1000;

    /// Sends `ROUNDS` notifies from another thread, each once the previous
    /// one was seen (a lost one fails at the deadline), then waits for
    /// `waiter`. Bounded in time on both sides.
    async fn notify_each_until_seen(
        notify: Arc<tokio::sync::Notify>,
        seen: Arc<AtomicUsize>,
        waiter: tokio::task::JoinHandle<()>,
    ) {
        let sender = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            for i in 0..ROUNDS {
                notify.notify_one();
                while seen.load(Ordering::SeqCst) <= i {
                    assert!(std::time::Instant::now() < deadline, "notify {i} lost");
                    std::thread::yield_now();
                }
            }
        });
        sender.join().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the waiter finished")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wake_is_lost_when_only_the_gate_wakes_the_task() {
        // The task's only future is gated: every one of 1 000 notifies
        // from another thread must reach it through the gate's registered
        // waker (a lost one leaves the sender waiting; bounded in time).
        let notify = Arc::new(tokio::sync::Notify::new());
        let seen = Arc::new(AtomicUsize::new(0));
        let (n, s) = (Arc::clone(&notify), Arc::clone(&seen));
        let waiter = tokio::spawn(Gated::<_, First>::new(&Gate::new(), async move {
            for _ in 0..ROUNDS {
                n.notified().await;
                s.fetch_add(1, Ordering::SeqCst);
            }
        }));
        notify_each_until_seen(notify, seen, waiter).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wake_is_lost_while_the_task_is_polled_for_other_reasons() {
        // One long-lived gated future waiting on 1 000 notifies sent from
        // another thread, joined with a branch that keeps waking the task
        // for its own reasons: every notify is seen (a lost one would
        // leave the sender waiting; both sides are bounded in time).
        let notify = Arc::new(tokio::sync::Notify::new());
        let seen = Arc::new(AtomicUsize::new(0));
        let (n, s) = (Arc::clone(&notify), Arc::clone(&seen));
        let waiter = tokio::spawn(async move {
            let gated = Gated::<_, First>::new(&Gate::new(), async {
                for _ in 0..ROUNDS {
                    n.notified().await;
                    s.fetch_add(1, Ordering::SeqCst);
                }
            });
            let busy = async {
                while s.load(Ordering::SeqCst) < ROUNDS {
                    tokio::task::yield_now().await;
                }
            };
            tokio::join!(gated, busy);
        });
        notify_each_until_seen(notify, seen, waiter).await;
    }
}
