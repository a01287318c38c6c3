//! What the store's methods, its batcher and its pipelines share: the
//! options, the connection with the scripts, and how keys and failures are
//! named.

use std::sync::Arc;
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use tokio::sync::Semaphore;

use super::scripts::Scripts;
use crate::store::{Retention, StoreError};

/// Tuning of [`RedisClusterStore`](super::RedisClusterStore). `Default`
/// suits a 3-master, 3-replica cluster on a local network.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Most answers in one pipeline.
    pub max_batch: usize,
    /// Bound of the answer queue in front of the batcher. A caller finding
    /// it full waits (up to `command_timeout`), then gets `Unavailable`.
    pub queue_capacity: usize,
    /// Batches in flight at once; while all are out, answers accumulate
    /// into bigger batches.
    pub max_in_flight: usize,
    /// Replicas that must acknowledge a write before it is answered
    /// (`WAIT n`). 0 disables WAIT (faster, but a master failure may lose
    /// acknowledged writes).
    pub wait_replicas: u32,
    /// How long WAIT may block.
    pub wait_timeout: Duration,
    /// Deadline of one round trip, the cluster client's retries included.
    pub command_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts of one write (`apply_answer` and the other writes) on
    /// `Unavailable` before giving up; each re-run is idempotent.
    pub max_attempts: u32,
    /// First back-off between attempts, doubled each time.
    pub retry_backoff: Duration,
    /// PEM of the CA that signed the servers' certificates, for `rediss://`
    /// nodes with a private CA (public CAs are trusted without it).
    pub tls_ca: Option<Vec<u8>>,
    /// How long a quiz's keys live. While it has not ended, every key
    /// expires `live` after the quiz's creation or its last state change
    /// (start, next question), so an abandoned quiz does not fill Redis for
    /// ever (with `noeviction` a full Redis refuses every write of the
    /// platform). An ended quiz's keys expire `ended` after the end: its
    /// events are on Kafka by then (the end is published right after the
    /// state change); the long-term record is MongoDB.
    pub retention: Retention,
    /// One-slot quizzes' answers on the store's own connection to their
    /// slot's master (`lane.rs`) instead of through the batcher and
    /// redis-rs; the same commands and durability, less CPU per answer.
    /// Off for TLS nodes (the batcher then carries every answer).
    pub direct_lane: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            max_batch: 256,
            queue_capacity: 8192,
            max_in_flight: 8,
            wait_replicas: 1,
            wait_timeout: Duration::from_millis(200),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(50),
            tls_ca: None,
            retention: Retention::default(),
            direct_lane: true,
        }
    }
}

/// What the store's methods and its batcher share.
pub(super) struct Shared {
    pub(super) conn: ClusterConnection,
    pub(super) opts: RedisOptions,
    pub(super) scripts: &'static Scripts,
    /// Bounds the batches in flight (see [`RedisOptions::max_in_flight`]).
    pub(super) in_flight: Arc<Semaphore>,
}

/// The key `quiz:{<quiz_id>}:<suffix>` (the key layout is the table at the
/// top of `redis_cluster.rs`).
pub(super) fn key(quiz_id: &str, suffix: &str) -> String {
    format!("quiz:{{{quiz_id}}}:{suffix}")
}

/// The key of question `question_id`'s answer distribution in the slot of
/// hash tag `tag` (`quiz:{<tag>}:dist:<question_id>`).
pub(super) fn dist_key(tag: &str, question_id: u32) -> String {
    key(tag, &format!("dist:{question_id}"))
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}
