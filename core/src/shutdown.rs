//! Shutdown: one signal, tasks tracked to completion.
//!
//! [`Shutdown`] is a cancellation token plus a task tracker. The accept loop
//! stops when the token fires; every connection task watches the same token
//! (WebSockets close with 1001, HTTP connections finish their request); then
//! `http::serve` waits for the tracked tasks up to `shutdown_grace_ms` and
//! flushes the event sink. `main` fires the token on SIGTERM or ctrl-c.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// A shutdown that fires on SIGTERM or ctrl-c.
    pub fn on_signals() -> Shutdown {
        let s = Shutdown::new();
        let token = s.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            token.cancel();
        });
        s
    }

    pub fn trigger(&self) {
        self.token.cancel();
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
