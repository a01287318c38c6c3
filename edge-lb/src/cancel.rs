//! The cancellation handle of one tunnel: the registry ([`crate::cluster`]) cancels, the
//! tunnel's splice ([`crate::tunnel`]) notices.
//!
//! Why not `tokio_util`'s `CancellationToken`: the splice checks for cancellation on every poll,
//! i.e. on every message either way, and the token's check takes a mutex (its tree node's) and
//! its wait future takes another (its `Notify`'s waiters) on each poll: 3.4 % of edge-lb's CPU
//! while moving messages (perf, 5,000 tunnels × 60 echoes). A tunnel's token has no parent and
//! no children, so a flag and one waker are all it needs: the check is one atomic load, and the
//! handle is 48 bytes on the heap where the token's tree node and its boxed wait future were
//! ~200.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

/// Cloneable; every clone sees the same cancellation. Cancelling is idempotent.
#[derive(Clone, Default)]
pub struct TunnelCancel(Arc<Inner>);

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    waker: AtomicWaker,
}

impl TunnelCancel {
    pub fn new() -> TunnelCancel {
        TunnelCancel::default()
    }

    /// Cancel, and wake the task waiting in [`TunnelCancel::poll_cancelled`] if there is one.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Release);
        self.0.waker.wake();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Acquire)
    }

    /// Ready once cancelled; otherwise the task is woken when it is. One waiter at a time (the
    /// tunnel's task): a second task polling it would take the wake-up from the first.
    pub fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_cancelled() {
            return Poll::Ready(());
        }
        self.0.waker.register(cx.waker());
        // A cancel between the check and the registration found no waker to wake: look again.
        if self.is_cancelled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiting_task_is_woken_by_a_cancel_from_elsewhere() {
        let c = TunnelCancel::new();
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { std::future::poll_fn(|cx| c.poll_cancelled(cx)).await }
        });
        tokio::task::yield_now().await;
        assert!(!c.is_cancelled());
        let other = c.clone();
        std::thread::spawn(move || other.cancel()).join().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert!(c.is_cancelled());
        c.cancel();
        assert!(c.is_cancelled());
    }
}
