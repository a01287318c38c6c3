//! quiz-core: the quiz service.
//!
//! Where things are. Data flows one way, top to bottom; a module imports
//! only modules below it (`tests/layering.rs` fails on an import cycle):
//!
//! - Transport. [`http`]: the accept loop and the hand router over hyper 1;
//!   every HTTP route of the contract, JSON in and out, the contract's
//!   error shape; `GET /v1/quizzes/{id}/ws` is handed to [`connection`]:
//!   one WebSocket, authentication, the welcome and **the read loop**
//!   (frame limits, rate limit, message dispatch). [`frame`] reads client
//!   frames; [`outbox`] is the writer's side: each connection's bounded
//!   [`outbox::Outbox`], the writer that drains it, the close codes;
//!   [`socket`]: the connection's socket halves (plain TCP shared with the
//!   outbox, which the room's tick writes to directly). [`gate`]: a future
//!   polled only when its own waker fired (the connection's writer and
//!   close-wait, so an answer's wake-ups do not poll them).
//!   [`limit`]: the token bucket of both rate limits (per connection, per
//!   client IP); [`admission`]: the bounded places of joins (refused with
//!   `Retry-After` past them, before any write); [`client_addr`]: which IP that is (the peer, or a trusted
//!   proxy's `X-Forwarded-For`).
//! - [`room`]: one room per quiz with members on this node. A room task
//!   encodes each leaderboard once and fans the same bytes out, and turns
//!   quiz state changes (seen on the [`bus`], on a wake from this node's
//!   callers, or by periodic reconcile) into `question` /
//!   `question_closed` / `quiz_ended`.
//! - [`self_paced`]: the self-paced walk: which question a player is on,
//!   what their connection presented, the next question on an answer or
//!   an expiry.
//! - [`service`]: [`service::QuizService`], what a request does: create,
//!   join, host action, answer (store, then event, then acknowledgement),
//!   over the engines and two caches. No rooms, no HTTP: a caller that
//!   changed what a room shows wakes (or touches) the room after the call.
//! - [`event_outbox`]: no event lost on any path: removes the events the
//!   log acknowledged from the store's pending events (recorded with each
//!   write) and sweeps the quizzes this node serves to publish again what
//!   was left behind.
//! - [`rules`]: pure rules: validation, ids, the state machine, answer
//!   windows, scoring. [`error`]: [`error::QuizError`], one variant per
//!   HTTP status. [`token`]: HMAC-signed player and host tokens (any node
//!   verifies them). [`protocol`]: every message in and out, parsed in one
//!   place.
//! - Engines, chosen by [`config::Config`] in [`backends`]: [`store`]
//!   (`QuizStore`: memory or Redis Cluster), [`events`] (`EventSink`: file
//!   or Kafka), [`bus`] (`ControlBus`: memory or Redis pub/sub);
//!   [`metrics`] (Prometheus, and the store's timing decorator).
//! - [`model`]: the shared nouns, at the bottom.
//! - Beside the flow: [`config`], [`shutdown`] (signal, task tracking,
//!   flush), [`web`] (the player and host pages, compiled in).
//!
//! The binary is `main.rs`; everything it does is [`run`].

pub mod bus;
pub mod events;
pub mod model;
pub mod store;

pub mod admission;
pub mod backends;
pub mod client_addr;
pub mod config;
pub mod connection;
pub mod error;
pub mod event_outbox;
pub mod frame;
pub mod gate;
pub mod http;
pub mod limit;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod room;
pub mod rules;
pub mod self_paced;
pub mod service;
pub mod shutdown;
pub mod socket;
pub mod token;
pub mod web;

use std::sync::Arc;
use tokio::net::TcpListener;

pub use config::Config;
pub use shutdown::Shutdown;

/// Builds the backends the config selects (embedded or distributed), creates
/// the demo quiz in embedded mode, and serves `listener` until `shutdown`
/// fires; then closes WebSockets with 1001 and flushes the event sink.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let service = service::QuizService::build(Arc::clone(&config)).await?;
    if config.is_embedded() && config.demo_quiz {
        service.create_demo_quiz().await?;
    }
    http::serve(service, listener, shutdown).await
}

/// Structured logs to stderr (`log_format` = text | json; `RUST_LOG` filters,
/// default `info`).
pub fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}
