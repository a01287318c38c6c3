//! The control bus: tells every core node that a quiz changed, so that nodes
//! holding players of that quiz (after a failover or a rebalance a quiz's
//! players may be split across nodes) re-read its state and act on it: send
//! the opened question, `question_closed`, `quiz_ended`.
//!
//! The bus carries only "quiz X changed, now at version V"; the truth is in
//! the [`crate::store::QuizStore`]. A lost notification therefore costs
//! latency, not correctness: rooms also re-read their state periodically.
//!
//! - [`memory::MemoryBus`]: in-process (one node).
//! - [`redis::RedisBus`]: Redis Cluster pub/sub (`PUBLISH` is broadcast to every
//!   node of a cluster, so one subscription on any node sees every message).
//!
//! Both must pass the conformance suite in
//! `core/tests/control_bus_conformance.rs`, which checks [`ControlBus`]'s contract.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use tokio::sync::broadcast;

/// "Quiz `quiz_id` changed; its state is now at `version`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub quiz_id: String,
    pub version: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("control bus unavailable: {0}")]
pub struct BusError(pub String);

/// Contract: `publish` delivers the notification to every subscriber of
/// every node at most once, best effort (no delivery guarantee: receivers
/// reconcile periodically). `subscribe` returns a node-wide stream of every
/// quiz's notifications; a receiver that lags may miss some (it sees
/// `RecvError::Lagged` and should re-read the state of all its rooms).
#[async_trait]
pub trait ControlBus: Send + Sync + 'static {
    async fn publish(&self, changed: Changed) -> Result<(), BusError>;
    fn subscribe(&self) -> broadcast::Receiver<Changed>;
}
