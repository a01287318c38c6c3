//! The hot path's coalescing: answers and self-paced presentations from many
//! connections go through one bounded queue; one batcher task takes what is
//! queued (up to `max_batch`), groups it by slot (a quiz, or one shard of a
//! sharded quiz: one master) and sends one pipeline per group, up to
//! `max_in_flight` batches at a time. While batches are in flight new jobs
//! queue up and leave together in the next batch, with no timer adding
//! latency when the load is light.
//!
//! In a sharded quiz, a batch's ranks are completed after its pipeline:
//! the script counted the players above each answer's score in its own
//! shard, one `count_higher` per other shard (concurrent, one per batch,
//! with the batch's distinct scores) adds the rest.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use redis::cluster_routing::{Route, SlotAddr};
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::codec::{as_str, as_u64, bad_reply, write_choices};
use super::pipeline::{run_one, run_pipeline, Call};
use super::shards::Shards;
use super::shared::{key, unavailable, Shared};
use crate::model::Millis;
use crate::store::StoreError;

/// A write waiting for the batcher, with its reply channel.
pub(super) struct Job {
    pub(super) quiz_id: String,
    /// The quiz's shards, and the one this job writes to (0 for an
    /// ordinary quiz).
    pub(super) shards: Arc<Shards>,
    pub(super) shard: usize,
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
        // One pipeline per quiz and shard (hence per slot) and batch.
        let mut groups: HashMap<(String, usize), Vec<Job>> = HashMap::new();
        for job in batch {
            groups
                .entry((job.quiz_id.clone(), job.shard))
                .or_default()
                .push(job);
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            let sends = groups.into_iter().map(|((quiz_id, shard), jobs)| {
                let shared = Arc::clone(&shared);
                async move { run_batch(&shared, &quiz_id, shard, jobs).await }
            });
            futures::future::join_all(sends).await;
        });
    }
}

/// Applies one quiz's (or one shard's) share of a batch in ONE pipeline to
/// its master: one `EVALSHA apply_batch` per state version the answers were
/// scored against (normally one), one `EVALSHA present_batch` for the
/// self-paced presentations, then a single `WAIT` for all of them; in a
/// sharded quiz, completes the ranks with the other shards' counts; then
/// hands each caller its own entry of the replies.
async fn run_batch(shared: &Shared, quiz_id: &str, shard: usize, jobs: Vec<Job>) {
    let Some(shards) = jobs.first().map(|j| Arc::clone(&j.shards)) else {
        return;
    };
    let tag = shards.tags[shard].as_str();
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
        calls.push(apply_call(shared, tag, *version, group));
    }
    if !presents.is_empty() {
        // An ordinary quiz checks its definition; a shard its state copy.
        let exists = if shards.is_sharded() {
            key(tag, "state")
        } else {
            key(quiz_id, "def")
        };
        calls.push(present_call(shared, tag, exists, &presents));
    }
    let route = Route::with_key(&calls[0].keys[0], SlotAddr::Master);
    let mut results: Vec<Result<Value, StoreError>> =
        run_pipeline(shared, route, calls.iter().collect(), true).await;
    if shards.is_sharded() && !applies.is_empty() {
        let n = applies.len().min(results.len());
        add_other_shards(shared, &shards, shard, &mut results[..n]).await;
    }
    let mut results = results.into_iter();
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

/// An answer's entry of an `apply_batch` reply that carries a rank (`A`,
/// `D…`, `E…`; not `N`): its score.
fn ranked_score(entry: &[Value]) -> Option<u64> {
    let tag = entry.first().and_then(as_str)?;
    if tag == "N" {
        return None;
    }
    entry.get(1).and_then(as_u64)
}

/// Sharded quiz: adds to each rank of the `apply_batch` replies the
/// players strictly higher in every other shard (one `count_higher` per
/// other shard, concurrent, with the distinct scores). The counts are read
/// after the batch was applied, so each rank is that of a state at least as
/// new as the answer's. If a count fails, the batch's replies become
/// `Unavailable`: the callers' retries re-run their answers with the same
/// attempt tokens (`A`, nothing added twice) and count again.
async fn add_other_shards(
    shared: &Shared,
    shards: &Shards,
    shard: usize,
    results: &mut [Result<Value, StoreError>],
) {
    let mut scores: Vec<u64> = Vec::new();
    for r in results.iter() {
        if let Ok(Value::Array(entries)) = r {
            for entry in entries.chunks_exact(3) {
                if let Some(s) = ranked_score(entry) {
                    scores.push(s);
                }
            }
        }
    }
    if scores.is_empty() {
        return;
    }
    scores.sort_unstable();
    scores.dedup();
    let args: Vec<String> = scores.iter().map(u64::to_string).collect();
    let calls: Vec<Call> = shards
        .tags
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != shard)
        .map(|(_, tag)| Call {
            script: &shared.scripts.count_higher,
            keys: vec![key(tag, "leaderboard")],
            args: args.clone(),
        })
        .collect();
    let replies = futures::future::join_all(calls.iter().map(|c| run_one(shared, c, false))).await;
    let mut extra = vec![0u64; scores.len()];
    for reply in replies {
        let counts = match reply {
            Ok(Value::Array(counts)) if counts.len() == scores.len() => counts,
            Ok(other) => {
                fail_ranks(results, &bad_reply("count_higher", &other));
                return;
            }
            Err(e) => {
                fail_ranks(results, &e);
                return;
            }
        };
        for (x, c) in extra.iter_mut().zip(&counts) {
            *x += as_u64(c).unwrap_or(0);
        }
    }
    for r in results.iter_mut() {
        if let Ok(Value::Array(entries)) = r {
            for entry in entries.chunks_exact_mut(3) {
                let Some(s) = ranked_score(entry) else {
                    continue;
                };
                let Ok(i) = scores.binary_search(&s) else {
                    continue;
                };
                let own = as_u64(&entry[2]).unwrap_or(0);
                entry[2] = Value::Int((own + extra[i]) as i64);
            }
        }
    }
}

/// The ranks of a batch could not be completed: its applied answers are
/// reported `Unavailable` (and re-run by their callers' retries).
fn fail_ranks(results: &mut [Result<Value, StoreError>], e: &StoreError) {
    for r in results.iter_mut() {
        if matches!(r, Ok(Value::Array(entries)) if entries.len() % 3 == 0) {
            *r = Err(unavailable(format!("rank across shards: {e}")));
        }
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

/// The `apply_batch` call (on the slot of hash tag `tag`) of a group of
/// answers scored against one state version (see `lua/apply_batch.lua` for
/// the arguments).
fn apply_call(shared: &Shared, tag: &str, state_version: Option<u64>, group: &[Waiting]) -> Call {
    // `tag`: the slot's hash tag, the quiz id or its shard's tag.
    let mut keys = vec![
        key(tag, "players"),
        key(tag, "answers"),
        key(tag, "leaderboard"),
        key(tag, "lbver"),
        key(tag, "state"),
        key(tag, "pending_answers"),
    ];
    let mut dist_index: HashMap<u32, usize> = HashMap::new();
    let mut args = Vec::with_capacity(2 + group.len());
    args.push(group.len().to_string());
    args.push(state_version.map(|v| v.to_string()).unwrap_or_default());
    for (a, _) in group {
        let dk = *dist_index.entry(a.question_id).or_insert_with(|| {
            keys.push(key(tag, &format!("dist:{}", a.question_id)));
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

/// The `present_batch` call of a quiz's (or shard's, `tag`)
/// presentations (field, now pairs); `exists` is the key whose existence
/// means "the quiz exists" and whose lifetime new keys inherit.
fn present_call(shared: &Shared, tag: &str, exists: String, presents: &[Presenting]) -> Call {
    let mut args = Vec::with_capacity(2 * presents.len());
    for (field, now, _) in presents {
        args.push(field.clone());
        args.push(now.to_string());
    }
    Call {
        script: &shared.scripts.present,
        keys: vec![exists, key(tag, "answers"), key(tag, "sent")],
        args,
    }
}
