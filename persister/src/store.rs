//! Where batches are written. `trait Store` is the contract; `store/mongo.rs`
//! is the real one, `store/memory.rs` an in-process model with the same
//! operator semantics, used by unit tests and the conformance suite.
//!
//! [`write_batch`] is the one function the pipeline and `replay` call: it
//! plans, applies, and isolates statements the server rejected down to the
//! single event that caused them (a poison event), so one bad event never
//! blocks or dead-letters the good ones it was folded with.

pub mod memory;
pub mod mongo;

use async_trait::async_trait;

use crate::event::{Event, Poison};
use crate::writes::{self, PlanInput, WritePlan};

/// A failure of the store as a whole (unreachable, timed out, shut down).
/// Nothing is known about which statements took effect; because every
/// statement is idempotent, retrying the whole batch is always safe.
#[derive(Debug, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

/// A statement the server refused for what it contains (not for being
/// unavailable): retrying it cannot succeed.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Indexes of the events folded into the statement.
    pub events: Vec<usize>,
    pub code: i32,
    pub message: String,
}

/// The persistence backend.
///
/// Contract: `apply` runs every statement of the plan at least once; all
/// statements are idempotent (see `writes.rs`), and the upserts of one plan
/// touch distinct documents per collection, so their order does not matter.
/// Transitions run after all upserts succeeded. `Ok` means every statement
/// not listed in the returned rejections is durably applied; `Err` means
/// retry later.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates the collections and indexes; idempotent.
    async fn ensure_schema(&self) -> Result<(), StoreError>;
    async fn apply(&self, plan: &WritePlan) -> Result<Vec<Rejection>, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
    /// Deletes the documents of one quiz, or of all quizzes (for `replay`).
    async fn clear(&self, quiz_id: Option<&str>) -> Result<(), StoreError>;
}

/// One event of a batch as `write_batch` sees it.
pub struct BatchEvent<'a> {
    pub event: &'a Event,
    pub bytes: usize,
}

/// Writes a batch. Returns the events (by index) that the server rejected,
/// each with its reason; every other event is durably applied.
pub async fn write_batch(
    store: &dyn Store,
    events: &[BatchEvent<'_>],
) -> Result<Vec<(usize, Poison)>, StoreError> {
    let plan = writes::plan(events.iter().enumerate().map(|(index, e)| PlanInput {
        index,
        event: e.event,
        bytes: e.bytes,
    }));
    if plan.is_empty() {
        return Ok(Vec::new());
    }
    let rejections = store.apply(&plan).await?;
    if rejections.is_empty() {
        return Ok(Vec::new());
    }
    // Isolate: apply every event of a rejected statement on its own.
    let mut suspects: Vec<usize> = rejections.iter().flat_map(|r| r.events.clone()).collect();
    suspects.sort_unstable();
    suspects.dedup();
    let mut poison = Vec::new();
    for index in suspects {
        let Some(e) = events.get(index) else { continue };
        let single = writes::plan([PlanInput {
            index,
            event: e.event,
            bytes: e.bytes,
        }]);
        let rejected = store.apply(&single).await?;
        if let Some(r) = rejected.first() {
            poison.push((
                index,
                Poison::Rejected(format!("code {}: {}", r.code, r.message)),
            ));
        }
    }
    Ok(poison)
}
