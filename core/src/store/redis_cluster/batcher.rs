//! The hot path's coalescing: answers and self-paced presentations from many
//! connections go through one bounded queue; one batcher task takes what is
//! queued (up to `max_batch`), groups it by slot (a quiz, or one shard of a
//! sharded quiz: one master) and sends one pipeline per group, up to
//! `max_in_flight` batches at a time. While batches are in flight new jobs
//! queue up and leave together in the next batch, with no timer adding
//! latency when the load is light.
//!
//! In a sharded quiz, a round's ranks are completed from the other shards'
//! counts (rank = 1 + players strictly higher in every shard). Each
//! shard's script counts the players above each answer in its own shard;
//! the others' part is read in the SAME round trip: the batcher guesses
//! each answer's new score (the last score it saw for the player plus the
//! answer's points, [`ScoreCache`]) and each shard's pipeline carries, after
//! its own batch and before its `WAIT`, one `count_higher` for the distinct
//! guessed scores of every OTHER shard's answers of the round (a shard
//! without answers in the round gets that call alone, concurrently). An
//! answer whose real score was not guessed (a player's first answer, a
//! score moved by another node, a duplicate) is counted after the round's
//! pipelines, one `count_higher` per shard for all such scores of the round
//! ([`plan_counts`]). So a round costs each shard one round trip and at most
//! one count in the steady state, instead of a second round trip and S − 1
//! counts per batch. The counts are keyed by score, never by answer, so a
//! wrong guess costs time, never a wrong rank; and every count is read after
//! the answer was submitted (its round is formed after), so the rank
//! includes every answer acknowledged before it, as in one slot.

use std::collections::HashMap;
use std::sync::Arc;

use redis::cluster_routing::{Route, SlotAddr};
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::codec::{as_u64, bad_reply, decode_verdicts, write_packed, Verdict};
use super::pipeline::{run_one, run_pipeline, Call};
use super::score_cache::ScoreCache;
use super::scripts::APPLY_BATCH_KEYS;
use super::shards::Shards;
use super::shared::{dist_key, key, unavailable, Shared};
use crate::model::{AnswerRecord, Millis};
use crate::store::StoreError;

/// A write waiting for the batcher.
pub(super) struct Job {
    pub(super) quiz_id: String,
    /// The quiz's shards, and the one this job writes to (0 for an
    /// ordinary quiz).
    pub(super) shards: Arc<Shards>,
    pub(super) shard: usize,
    pub(super) work: Work,
}

/// What the batcher coalesces: the hot path's writes, each with the
/// channel its caller waits on.
pub(super) enum Work {
    /// An answer; with `Some(v)`, applied only if the state is at version v.
    Apply {
        /// Shared by the attempts of one answer: a retry re-queues it
        /// without copying its strings.
        answer: Arc<PreparedAnswer>,
        state_version: Option<u64>,
        reply: oneshot::Sender<Result<Verdict, StoreError>>,
    },
    /// Self-paced: a question presented to a player (`present_question`).
    Present {
        field: String,
        now: Millis,
        reply: Reply,
    },
}

/// An answer encoded once for all its attempts.
pub(super) struct PreparedAnswer {
    /// The score cache's key (a sharded quiz's guesses).
    pub(super) player_id: String,
    /// Names its distribution's key in the batch.
    pub(super) question_id: u32,
    /// Added to the player's last score for the score cache's guess.
    pub(super) points: u32,
    /// Late: not counted in the distribution.
    pub(super) late: bool,
    /// `apply_batch`'s packed argument after its batch-dependent head
    /// (`<dist> `): `<points> <choices> <token>|<record>
    /// <player_id>:<question_id>`, in one buffer written once.
    pub(super) packed: String,
}

impl PreparedAnswer {
    /// `token`: the attempt token, the same on every attempt of one
    /// `apply_answer` call (16 hex digits in the argument).
    pub(super) fn new(answer: &AnswerRecord, token: u64) -> PreparedAnswer {
        let mut packed = String::with_capacity(96 + 2 * answer.player_id.len());
        write_packed(&mut packed, answer, token);
        PreparedAnswer {
            player_id: answer.player_id.clone(),
            question_id: answer.question_id,
            points: answer.points,
            late: answer.late,
            packed,
        }
    }
}

/// A presentation's reply channel: the `present_batch` entry as it came.
pub(super) type Reply = oneshot::Sender<Result<Value, StoreError>>;
/// An answer of a batch with the channel its caller waits on.
type Waiting = (
    Arc<PreparedAnswer>,
    oneshot::Sender<Result<Verdict, StoreError>>,
);
/// A presentation of a batch: field, now, and the caller's channel.
type Presenting = (String, Millis, Reply);

/// The batcher: takes what is queued, one pipeline per slot, bounded in
/// flight. Ends when every sender (the store) is gone.
pub(super) async fn batcher(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let max = shared.opts.max_batch.max(1);
    let cache = Arc::new(ScoreCache::default());
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
        // One pipeline per quiz and shard (hence per slot) and batch; a
        // quiz's shards are completed together (one count per shard).
        let mut quizzes: HashMap<String, Vec<(usize, Vec<Job>)>> = HashMap::new();
        for job in batch {
            let groups = quizzes.entry(job.quiz_id.clone()).or_default();
            match groups.iter_mut().find(|(s, _)| *s == job.shard) {
                Some((_, jobs)) => jobs.push(job),
                None => groups.push((job.shard, vec![job])),
            }
        }
        let shared = Arc::clone(&shared);
        let cache = Arc::clone(&cache);
        tokio::spawn(async move {
            let _permit = permit;
            let sends = quizzes.into_iter().map(|(quiz_id, groups)| {
                let shared = Arc::clone(&shared);
                let cache = Arc::clone(&cache);
                async move { run_round(&shared, &cache, &quiz_id, groups).await }
            });
            futures::future::join_all(sends).await;
        });
    }
}

/// One quiz's share of a round: one pipeline per shard with jobs
/// (concurrent); for a sharded quiz each also carries the count of the
/// other shards' guessed scores, and the ranks are completed before the
/// replies are handed out.
async fn run_round(
    shared: &Shared,
    cache: &ScoreCache,
    quiz_id: &str,
    groups: Vec<(usize, Vec<Job>)>,
) {
    let Some(shards) = groups
        .first()
        .and_then(|(_, jobs)| jobs.first())
        .map(|j| Arc::clone(&j.shards))
    else {
        return;
    };
    if !shards.is_sharded() {
        let sends = groups
            .into_iter()
            .map(|(shard, jobs)| run_batch(shared, quiz_id, shard, jobs, &[]));
        for d in futures::future::join_all(sends).await.into_iter().flatten() {
            d.reply();
        }
        return;
    }
    // The guessed scores of each shard's answers, then what each shard
    // counts in the round's pipelines: the other shards' guesses.
    let of: Vec<usize> = groups.iter().map(|(s, _)| *s).collect();
    let guessed: Vec<Vec<u64>> = groups
        .iter()
        .map(|(_, jobs)| {
            let answers = jobs.iter().filter_map(|j| match &j.work {
                Work::Apply { answer, .. } => Some((answer.player_id.as_str(), answer.points)),
                Work::Present { .. } => None,
            });
            let mut g: Vec<u64> = cache
                .guess(quiz_id, answers)
                .into_iter()
                .flatten()
                .collect();
            g.sort_unstable();
            g.dedup();
            g
        })
        .collect();
    let plan = plan_counts(shards.len(), &of, &guessed);
    let lone: Vec<(usize, Call)> = plan
        .iter()
        .enumerate()
        .filter(|(b, union)| !union.is_empty() && !of.contains(b))
        .map(|(b, union)| (b, count_call(shared, &shards.tags[b], union)))
        .collect();
    let sends = groups.into_iter().map(|(shard, jobs)| {
        let count = plan.get(shard).map_or(&[][..], Vec::as_slice);
        async move { run_batch(shared, quiz_id, shard, jobs, count).await }
    });
    let lone_sends = lone.iter().map(|(_, c)| run_one(shared, c, false));
    let (done, lone_replies) = futures::join!(
        futures::future::join_all(sends),
        futures::future::join_all(lone_sends)
    );
    let mut done: Vec<Applied> = done.into_iter().flatten().collect();
    let mut first: Vec<Counted> = plan.into_iter().map(Counted::asked).collect();
    for d in &mut done {
        if let (Some(reply), Some(c)) = (d.counted.take(), first.get_mut(d.shard)) {
            c.answered(reply);
        }
    }
    for ((b, _), reply) in lone.iter().zip(lone_replies) {
        if let Some(c) = first.get_mut(*b) {
            c.answered(reply);
        }
    }
    for d in &done {
        d.remember(cache, quiz_id);
    }
    add_other_shards(shared, &shards, &mut done, &first).await;
    for d in done {
        d.reply();
    }
}

/// The players above some scores in one shard: the scores asked about
/// (ascending, distinct) and, once answered, one count each.
struct Counted {
    scores: Vec<u64>,
    counts: Option<Vec<u64>>,
}

impl Counted {
    fn asked(scores: Vec<u64>) -> Counted {
        Counted {
            scores,
            counts: None,
        }
    }

    /// Takes a `count_higher` reply; a failed or malformed one leaves the
    /// scores uncounted (counted again after the round, or failed there).
    fn answered(&mut self, reply: Result<Value, StoreError>) {
        if let Ok(Value::Array(c)) = reply {
            if c.len() == self.scores.len() {
                self.counts = c.iter().map(as_u64).collect();
            }
        }
    }

    fn get(&self, score: u64) -> Option<u64> {
        let counts = self.counts.as_ref()?;
        let i = self.scores.binary_search(&score).ok()?;
        counts.get(i).copied()
    }
}

/// One shard's (or one-slot quiz's) batch, applied, its replies not yet
/// handed out.
struct Applied {
    shard: usize,
    /// One `apply_batch` call per state version: its answers and their
    /// verdicts (in the answers' order).
    applies: Vec<AppliedCall>,
    presents: Vec<Presenting>,
    /// The `present_batch` reply, if the batch had presentations.
    presented: Option<Result<Value, StoreError>>,
    /// The reply of the `count_higher` that rode in this pipeline (the
    /// other shards' guessed scores), if one did.
    counted: Option<Result<Value, StoreError>>,
}

/// One `apply_batch` call of a batch and its outcome.
struct AppliedCall {
    waiting: Vec<Waiting>,
    verdicts: Result<Vec<Verdict>, StoreError>,
}

impl Applied {
    /// Records the scores replied (applied answers and duplicates) as the
    /// players' last scores, for the next rounds' guesses.
    fn remember(&self, cache: &ScoreCache, quiz_id: &str) {
        let mut seen: Vec<(&str, u64)> = Vec::new();
        for call in &self.applies {
            let Ok(verdicts) = &call.verdicts else {
                continue;
            };
            for ((a, _), v) in call.waiting.iter().zip(verdicts) {
                if let Some(s) = v.ranked_score() {
                    seen.push((a.player_id.as_str(), s));
                }
            }
        }
        if !seen.is_empty() {
            cache.record(quiz_id, seen.into_iter());
        }
    }

    /// Hands each caller its own verdict (or its call's error).
    fn reply(self) {
        for call in self.applies {
            match call.verdicts {
                Ok(verdicts) => {
                    for ((_, reply), v) in call.waiting.into_iter().zip(verdicts) {
                        // The caller may have given up; nothing to do then.
                        let _ = reply.send(Ok(v));
                    }
                }
                Err(e) => fail_all(call.waiting.into_iter().map(|(_, r)| r), &e),
            }
        }
        if !self.presents.is_empty() {
            let result = self
                .presented
                .unwrap_or_else(|| Err(unavailable("no reply")));
            reply_presents(self.presents, result);
        }
    }
}

/// Applies one quiz's (or one shard's) share of a batch in ONE pipeline to
/// its master: one `EVALSHA apply_batch` per state version the answers were
/// scored against (normally one), one `EVALSHA present_batch` for the
/// self-paced presentations, in a sharded quiz one `count_higher` of the
/// other shards' guessed scores `count` (if any), then a single `WAIT` for
/// all of them. The replies are handed out by the caller ([`run_round`]),
/// once a sharded quiz's ranks are complete.
async fn run_batch(
    shared: &Shared,
    quiz_id: &str,
    shard: usize,
    jobs: Vec<Job>,
    count: &[u64],
) -> Option<Applied> {
    let shards = jobs.first().map(|j| Arc::clone(&j.shards))?;
    let tag = shards.tags[shard].as_str();
    let mut applies: Vec<(Option<u64>, Vec<Waiting>)> = Vec::new();
    let mut presents: Vec<Presenting> = Vec::new();
    for job in jobs {
        match job.work {
            Work::Apply {
                answer,
                state_version,
                reply,
            } => match applies.iter_mut().find(|(v, _)| *v == state_version) {
                Some((_, group)) => group.push((answer, reply)),
                None => applies.push((state_version, vec![(answer, reply)])),
            },
            Work::Present { field, now, reply } => presents.push((field, now, reply)),
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
    if !count.is_empty() {
        // A read in the same slot: rides before the WAIT at no extra
        // round trip.
        calls.push(count_call(shared, tag, count));
    }
    let route = Route::with_key(&calls[0].keys[0], SlotAddr::Master);
    let mut results = run_pipeline(shared, route, calls.iter().collect(), true).await;
    let counted = if count.is_empty() {
        None
    } else {
        results.pop()
    };
    let presented = if presents.is_empty() {
        None
    } else {
        results.pop()
    };
    let mut results = results.into_iter();
    let applies = applies
        .into_iter()
        .map(|(_, waiting)| {
            let verdicts = results
                .next()
                .unwrap_or_else(|| Err(unavailable("no reply")))
                .and_then(|v| decode_verdicts(&v, waiting.len()));
            AppliedCall { waiting, verdicts }
        })
        .collect();
    Some(Applied {
        shard,
        applies,
        presents,
        presented,
        counted,
    })
}

/// The distinct scores that carry a rank in a batch's verdicts, ascending.
fn ranked_scores(calls: &[AppliedCall]) -> Vec<u64> {
    let mut scores: Vec<u64> = calls
        .iter()
        .filter_map(|c| c.verdicts.as_ref().ok())
        .flatten()
        .filter_map(Verdict::ranked_score)
        .collect();
    scores.sort_unstable();
    scores.dedup();
    scores
}

/// The counts a round needs: for each shard (index), the union of the
/// distinct scores of every OTHER shard's batch (`scores[g]` being batch
/// `g`'s, from shard `of[g]`), ascending, without repeats; empty when no
/// other shard has a score to rank. One `count_higher` per non-empty entry.
fn plan_counts(shard_count: usize, of: &[usize], scores: &[Vec<u64>]) -> Vec<Vec<u64>> {
    (0..shard_count)
        .map(|b| {
            let mut union: Vec<u64> = of
                .iter()
                .zip(scores)
                .filter(|(s, _)| **s != b)
                .flat_map(|(_, sc)| sc.iter().copied())
                .collect();
            union.sort_unstable();
            union.dedup();
            union
        })
        .collect()
}

/// The `count_higher` call on the shard of tag `tag` for ascending
/// distinct scores: its arguments are exclusive lower bounds (`(<score>`),
/// ready for `ZCOUNT`.
fn count_call(shared: &Shared, tag: &str, scores: &[u64]) -> Call {
    Call {
        script: &shared.scripts.count_higher,
        keys: vec![key(tag, "leaderboard")],
        args: count_args(scores),
    }
}

fn count_args(scores: &[u64]) -> Vec<String> {
    scores.iter().map(|s| format!("({s}")).collect()
}

/// Sharded quiz: adds to each rank of a round's `apply_batch` replies the
/// players strictly higher in every other shard. `first[b]` holds what
/// shard b counted in the round's pipelines (the guessed scores); the
/// scores it did not count (a wrong or missing guess, a failed count) are
/// counted now, one `count_higher` per shard for the whole round
/// ([`plan_counts`]), concurrently. Every count is read after the answers
/// were submitted, and the second ones after every batch of the round was
/// applied. If a shard's count fails, the replies of the batches that
/// needed it become `Unavailable`: the callers' retries re-run their
/// answers with the same attempt tokens (`A`, nothing added twice) and
/// count again.
async fn add_other_shards(
    shared: &Shared,
    shards: &Shards,
    done: &mut [Applied],
    first: &[Counted],
) {
    let scores: Vec<Vec<u64>> = done.iter_mut().map(|d| ranked_scores(&d.applies)).collect();
    if scores.iter().all(Vec::is_empty) {
        return;
    }
    let of: Vec<usize> = done.iter().map(|d| d.shard).collect();
    let mut plan = plan_counts(shards.len(), &of, &scores);
    for (b, union) in plan.iter_mut().enumerate() {
        union.retain(|s| first[b].get(*s).is_none());
    }
    let calls: Vec<(usize, Call)> = plan
        .iter()
        .enumerate()
        .filter(|(_, union)| !union.is_empty())
        .map(|(b, union)| (b, count_call(shared, &shards.tags[b], union)))
        .collect();
    let replies =
        futures::future::join_all(calls.iter().map(|(_, c)| run_one(shared, c, false))).await;
    let mut second: Vec<Counted> = plan.into_iter().map(Counted::asked).collect();
    let mut errors: Vec<Option<StoreError>> = (0..shards.len()).map(|_| None).collect();
    for ((b, _), reply) in calls.iter().zip(replies) {
        match reply {
            Ok(Value::Array(c)) if c.len() == second[*b].scores.len() => {
                second[*b].answered(Ok(Value::Array(c)));
            }
            Ok(other) => errors[*b] = Some(bad_reply("count_higher", &other)),
            Err(e) => errors[*b] = Some(e),
        }
    }
    for (g, d) in done.iter_mut().enumerate() {
        // extra[i]: players above scores[g][i] in the other shards.
        let mut extra = vec![0u64; scores[g].len()];
        let mut failed = None;
        'scores: for (x, &s) in extra.iter_mut().zip(&scores[g]) {
            for b in (0..shards.len()).filter(|b| *b != of[g]) {
                match first[b].get(s).or_else(|| second[b].get(s)) {
                    Some(c) => *x += c,
                    None => {
                        failed = Some(errors[b].take().unwrap_or_else(|| {
                            unavailable(format!("shard {b} did not count score {s}"))
                        }));
                        break 'scores;
                    }
                }
            }
        }
        if let Some(e) = failed {
            fail_ranks(&mut d.applies, &e);
            continue;
        }
        for v in d
            .applies
            .iter_mut()
            .filter_map(|c| c.verdicts.as_mut().ok())
            .flatten()
        {
            let Some(s) = v.ranked_score() else {
                continue;
            };
            let (Ok(i), Some(higher)) = (scores[g].binary_search(&s), v.higher_mut()) else {
                continue;
            };
            *higher += extra[i];
        }
    }
}

/// The ranks of a batch could not be completed: its calls that were
/// applied (not turned away whole by the state guard) are reported
/// `Unavailable`, and re-run by their callers' retries.
fn fail_ranks(calls: &mut [AppliedCall], e: &StoreError) {
    for c in calls.iter_mut() {
        let guarded = matches!(&c.verdicts, Ok(v) if v.iter().all(|v| matches!(v, Verdict::Stale | Verdict::Lagging)));
        if c.verdicts.is_ok() && !guarded {
            c.verdicts = Err(unavailable(format!("rank across shards: {e}")));
        }
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

fn fail_all<T>(
    replies: impl Iterator<Item = oneshot::Sender<Result<T, StoreError>>>,
    e: &StoreError,
) {
    for r in replies {
        let _ = r.send(Err(StoreError::Unavailable(e.to_string())));
    }
}

/// The `apply_batch` call (on the slot of hash tag `tag`) of a group of
/// answers scored against one state version (see `lua/apply_batch.lua` for
/// the arguments).
fn apply_call(shared: &Shared, tag: &str, state_version: Option<u64>, group: &[Waiting]) -> Call {
    // `tag`: the slot's hash tag, the quiz id or its shard's tag.
    let mut keys: Vec<String> = APPLY_BATCH_KEYS.iter().map(|s| key(tag, s)).collect();
    let mut dist_index: HashMap<u32, usize> = HashMap::new();
    let mut args = Vec::with_capacity(2 + group.len());
    args.push(group.len().to_string());
    args.push(state_version.map(|v| v.to_string()).unwrap_or_default());
    for (a, _) in group {
        let dk = *dist_index.entry(a.question_id).or_insert_with(|| {
            keys.push(dist_key(tag, a.question_id));
            keys.len() // 1-based index of the key just pushed
        });
        // One packed argument per answer (see apply_batch.lua for the
        // layout): every separate argument costs the Redis main thread.
        let mut arg = String::with_capacity(4 + a.packed.len());
        arg.push_str(itoa::Buffer::new().format(if a.late { 0 } else { dk }));
        arg.push(' ');
        arg.push_str(&a.packed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_count_per_shard_with_the_other_shards_scores() {
        // A round of a 3-shard quiz: batches from shards 0 and 2 (shard 1
        // had no answers), scores shared across them.
        let plan = plan_counts(3, &[0, 2], &[vec![5, 10, 20], vec![10, 30]]);
        assert_eq!(
            plan,
            vec![
                vec![10, 30],        // shard 0 counts shard 2's scores
                vec![5, 10, 20, 30], // shard 1 counts both, 10 once
                vec![5, 10, 20],     // shard 2 counts shard 0's
            ]
        );
        // One batch alone: only the other shards are asked.
        assert_eq!(
            plan_counts(3, &[1], &[vec![7, 7, 9]]),
            vec![vec![7, 9], vec![], vec![7, 9]]
        );
        // Nothing to rank (every entry `N`, or a stale state): no calls.
        assert!(plan_counts(3, &[0, 1], &[vec![], vec![]])
            .iter()
            .all(Vec::is_empty));
    }

    #[test]
    fn count_args_are_exclusive_bounds() {
        assert_eq!(count_args(&[0, 1500]), vec!["(0", "(1500"]);
    }

    #[test]
    fn ranked_scores_skip_non_players_and_failures() {
        let call = |verdicts| AppliedCall {
            waiting: Vec::new(),
            verdicts,
        };
        let applied = |score| Verdict::Applied { score, higher: 2 };
        let calls = vec![
            call(Ok(vec![
                applied(900),
                Verdict::NotPlayer,
                Verdict::Duplicate {
                    pending: true,
                    record: "x".into(),
                    score: 300,
                    higher: 5,
                },
                applied(900),
            ])),
            call(Err(unavailable("down"))),
            call(Ok(vec![Verdict::Stale])),
        ];
        assert_eq!(ranked_scores(&calls), vec![300, 900]);
    }

    #[test]
    fn failed_ranks_spare_calls_the_state_guard_turned_away() {
        let mut calls = vec![
            AppliedCall {
                waiting: Vec::new(),
                verdicts: Ok(vec![Verdict::Applied {
                    score: 1,
                    higher: 0,
                }]),
            },
            AppliedCall {
                waiting: Vec::new(),
                verdicts: Ok(vec![Verdict::Stale, Verdict::Stale]),
            },
        ];
        fail_ranks(&mut calls, &unavailable("shard 2 down"));
        assert!(calls[0].verdicts.is_err());
        assert_eq!(
            calls[1].verdicts.as_ref().ok(),
            Some(&vec![Verdict::Stale; 2])
        );
    }

    #[test]
    fn the_packed_argument_is_the_format_apply_batch_reads() {
        // The layout `apply_batch.lua` unpacks, written the slow way.
        for (choices, late, player) in [
            (vec![0, 2], false, "p-1"),
            (vec![], true, "odd id: with|spaces,:7"),
        ] {
            let answer = AnswerRecord {
                player_id: player.into(),
                nickname: "Ann".into(),
                question_id: 12,
                choices: choices.clone(),
                correct: !late,
                late,
                points: 870,
                response_ms: 2100,
                answered_at_ms: 1_764_201_234_567,
            };
            let token = 0x00ab_cdef_0123_4567;
            let p = PreparedAnswer::new(&answer, token);
            let list: Vec<String> = choices.iter().map(u32::to_string).collect();
            let list = list.join(",");
            let record = format!(
                "c{}{};870;2100;1764201234567;{list}",
                u8::from(!late),
                u8::from(late)
            );
            assert_eq!(
                p.packed,
                format!("870 {list} {token:016x}|{record} {player}:12")
            );
            assert_eq!((p.points, p.late, p.question_id), (870, late, 12));
        }
    }
}
