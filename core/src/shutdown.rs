//! Shutdown: one signal, tasks tracked to completion.
//!
//! [`Shutdown`] is a cancellation token plus a task tracker. The accept loop
//! stops when the token fires; every connection task watches the same token
//! (WebSockets close with 1001, HTTP connections finish their request); then
//! `http::serve` waits for the tracked tasks up to `shutdown_grace_ms` and
//! flushes the event sink. `main` fires the token on SIGTERM or ctrl-c.
//!
//! Before that, an optional **drain phase** (`shutdown_drain_ms`): `/readyz`
//! answers 503 while everything else keeps being served, so that edge-lb's
//! health checks take the node out of the ring first; only then are the
//! sockets closed with 1001, and the clients' reconnects land on the quiz's
//! new owner instead of on a node that is about to go (and a 503).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    /// Fired when the drain phase starts (before `token`).
    draining: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// A shutdown that fires on SIGTERM or ctrl-c.
    pub fn on_signals() -> Shutdown {
        Shutdown::on_signals_after(Duration::ZERO)
    }

    /// On SIGTERM or ctrl-c: drain for `drain` (a second signal cuts it
    /// short), then shut down.
    pub fn on_signals_after(drain: Duration) -> Shutdown {
        let s = Shutdown::new();
        let me = s.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!(
                drain_ms = drain.as_millis() as u64,
                "shutdown signal received"
            );
            me.draining.cancel();
            tokio::select! {
                _ = tokio::time::sleep(drain) => {}
                _ = wait_for_signal() => tracing::info!("second signal: drain cut short"),
            }
            me.token.cancel();
        });
        s
    }

    /// Starts the drain phase now and shuts down after `drain`.
    pub fn drain_then_trigger(&self, drain: Duration) {
        self.draining.cancel();
        let token = self.token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            token.cancel();
        });
    }

    /// Shuts down now (no drain phase).
    pub fn trigger(&self) {
        self.draining.cancel();
        self.token.cancel();
    }

    /// In the drain phase or already shutting down: not ready for new work.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled() || self.token.is_cancelled()
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// The token itself, for children (`child_token`) and `select!`.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Spawns a task that shutdown waits for.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(fut)
    }

    /// Waits until every tracked task has finished, at most `grace`.
    /// Returns false on timeout.
    pub async fn wait_tasks(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
