//! The hot path's coalescing: answers and self-paced presentations from many
//! connections go through one bounded queue; one batcher task takes what is
//! queued (up to `max_batch`), groups it by quiz (a quiz is one slot, so one
//! master) and sends one pipeline per quiz, up to `max_in_flight` batches at
//! a time. While batches are in flight new jobs queue up and leave together
//! in the next batch, with no timer adding latency when the load is light.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use redis::cluster_routing::{Route, SlotAddr};
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::codec::{bad_reply, write_choices};
use super::pipeline::{run_pipeline, Call};
use super::shared::{key, unavailable, Shared};
use crate::model::Millis;
use crate::store::StoreError;

/// A write waiting for the batcher, with its reply channel.
pub(super) struct Job {
    pub(super) quiz_id: String,
    pub(super) work: Work,
    pub(super) reply: Reply,
}

/// What the batcher coalesces: the hot path's writes.
pub(super) enum Work {
    /// An answer; with `Some(v)`, applied only if the state is at version v.
    Apply {
        answer: PreparedAnswer,
        state_version: Option<u64>,
    },
    /// Self-paced: a question presented to a player (`present_question`).
    Present { field: String, now: Millis },
}

/// An answer encoded once for all its attempts.
#[derive(Clone)]
pub(super) struct PreparedAnswer {
    pub(super) player_id: String,
    pub(super) question_id: u32,
    /// Attempt token: the same on every attempt of one `apply_answer` call.
    pub(super) token: String,
    pub(super) record: String,
    pub(super) points: u32,
    pub(super) late: bool,
    pub(super) choices: Vec<u32>,
}

pub(super) type Reply = oneshot::Sender<Result<Value, StoreError>>;
/// An answer of a batch with the channel its caller waits on.
type Waiting = (PreparedAnswer, Reply);
/// A presentation of a batch: field, now, and the caller's channel.
type Presenting = (String, Millis, Reply);

/// The batcher: takes what is queued, one pipeline per slot, bounded in
/// flight. Ends when every sender (the store) is gone.
pub(super) async fn batcher(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let max = shared.opts.max_batch.max(1);
    loop {
        // Take a permit before collecting: while all batches are out, jobs
        // pile up in the channel and leave together in the next one.
        let Ok(permit) = Arc::clone(&shared.in_flight).acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max.min(64));
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // One script per quiz (hence per slot) and batch.
        let mut groups: HashMap<String, Vec<Job>> = HashMap::new();
        for job in batch {
            groups.entry(job.quiz_id.clone()).or_default().push(job);
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            let sends = groups.into_iter().map(|(quiz_id, jobs)| {
                let shared = Arc::clone(&shared);
                async move { run_batch(&shared, &quiz_id, jobs).await }
            });
            futures::future::join_all(sends).await;
        });
    }
}

/// Applies one quiz's share of a batch in ONE pipeline to its master:
/// one `EVALSHA apply_batch` per state version the answers were scored
/// against (normally one), one `EVALSHA present_batch` for the self-paced
/// presentations, then a single `WAIT` for all of them; then hands each
/// caller its own entry of the replies.
async fn run_batch(shared: &Shared, quiz_id: &str, jobs: Vec<Job>) {
    let mut applies: Vec<(Option<u64>, Vec<Waiting>)> = Vec::new();
    let mut presents: Vec<Presenting> = Vec::new();
    for job in jobs {
        match job.work {
            Work::Apply {
                answer,
                state_version,
            } => match applies.iter_mut().find(|(v, _)| *v == state_version) {
                Some((_, group)) => group.push((answer, job.reply)),
                None => applies.push((state_version, vec![(answer, job.reply)])),
            },
            Work::Present { field, now } => presents.push((field, now, job.reply)),
        }
    }
    let mut calls = Vec::with_capacity(applies.len() + 1);
    for (version, group) in &applies {
        calls.push(apply_call(shared, quiz_id, *version, group));
    }
    if !presents.is_empty() {
        calls.push(present_call(shared, quiz_id, &presents));
    }
    let route = Route::with_key(&calls[0].keys[0], SlotAddr::Master);
    let mut results = run_pipeline(shared, route, calls.iter().collect(), true)
        .await
        .into_iter();
    let mut next = || {
        results
            .next()
            .unwrap_or_else(|| Err(unavailable("no reply")))
    };
    for (_, group) in applies {
        reply_applies(group, next());
    }
    if !presents.is_empty() {
        reply_presents(presents, next());
    }
}

/// Hands each answer of one `apply_batch` call its 3 entries of the reply.
fn reply_applies(group: Vec<Waiting>, result: Result<Value, StoreError>) {
    let n = group.len();
    match result {
        Ok(Value::Array(entries)) if entries.len() == 3 * n => {
            let mut entries = entries.into_iter();
            for (_, reply) in group {
                let entry: Vec<Value> = entries.by_ref().take(3).collect();
                // The caller may have given up; nothing to do then.
                let _ = reply.send(Ok(Value::Array(entry)));
            }
        }
        // Stale state: every answer of the call gets the same verdict.
        Ok(Value::Array(entries)) if entries.len() == 1 => {
            for (_, reply) in group {
                let _ = reply.send(Ok(Value::Array(entries.clone())));
            }
        }
        Ok(other) => fail_all(
            group.into_iter().map(|(_, r)| r),
            &bad_reply("apply_batch", &other),
        ),
        Err(e) => fail_all(group.into_iter().map(|(_, r)| r), &e),
    }
}

/// Hands each presentation of the `present_batch` call its entry.
fn reply_presents(presents: Vec<Presenting>, result: Result<Value, StoreError>) {
    let n = presents.len();
    match result {
        Ok(Value::Array(entries)) if entries.len() == n => {
            for ((_, _, reply), v) in presents.into_iter().zip(entries) {
                let _ = reply.send(Ok(v));
            }
        }
        // No quiz: nil for every presentation.
        Ok(Value::Nil) => {
            for (_, _, reply) in presents {
                let _ = reply.send(Ok(Value::Nil));
            }
        }
        Ok(other) => fail_all(
            presents.into_iter().map(|(_, _, r)| r),
            &bad_reply("present_batch", &other),
        ),
        Err(e) => fail_all(presents.into_iter().map(|(_, _, r)| r), &e),
    }
}

fn fail_all(replies: impl Iterator<Item = Reply>, e: &StoreError) {
    for r in replies {
        let _ = r.send(Err(StoreError::Unavailable(e.to_string())));
    }
}

/// The `apply_batch` call of a group of answers scored against one state
/// version (see `lua/apply_batch.lua` for the arguments).
fn apply_call(
    shared: &Shared,
    quiz_id: &str,
    state_version: Option<u64>,
    group: &[Waiting],
) -> Call {
    let mut keys = vec![
        key(quiz_id, "players"),
        key(quiz_id, "answers"),
        key(quiz_id, "leaderboard"),
        key(quiz_id, "lbver"),
        key(quiz_id, "state"),
        key(quiz_id, "pending_answers"),
    ];
    let mut dist_index: HashMap<u32, usize> = HashMap::new();
    let mut args = Vec::with_capacity(2 + group.len());
    args.push(group.len().to_string());
    args.push(state_version.map(|v| v.to_string()).unwrap_or_default());
    for (a, _) in group {
        let dk = *dist_index.entry(a.question_id).or_insert_with(|| {
            keys.push(key(quiz_id, &format!("dist:{}", a.question_id)));
            keys.len() // 1-based index of the key just pushed
        });
        // One packed argument per answer (see apply_batch.lua for the
        // layout): every separate argument costs the Redis main thread.
        let mut arg = String::with_capacity(48 + a.record.len() + 2 * a.player_id.len());
        let _ = write!(arg, "{} {} ", if a.late { 0 } else { dk }, a.points);
        write_choices(&mut arg, &a.choices);
        let _ = write!(
            arg,
            " {}|{} {}:{}",
            a.token, a.record, a.player_id, a.question_id
        );
        args.push(arg);
    }
    Call {
        script: &shared.scripts.apply,
        keys,
        args,
    }
}

/// The `present_batch` call of a quiz's presentations (field, now pairs).
fn present_call(shared: &Shared, quiz_id: &str, presents: &[Presenting]) -> Call {
    let mut args = Vec::with_capacity(2 * presents.len());
    for (field, now, _) in presents {
        args.push(field.clone());
        args.push(now.to_string());
    }
    Call {
        script: &shared.scripts.present,
        keys: vec![
            key(quiz_id, "def"),
            key(quiz_id, "answers"),
            key(quiz_id, "sent"),
        ],
        args,
    }
}
