//! [`MemoryStore`]: the in-process [`QuizStore`], the embedded mode's default.
//!
//! One `DashMap` entry per quiz holding an `Arc<QuizCell>`; every mutable part
//! of a quiz sits behind that quiz's own `parking_lot::Mutex`. Why this shape:
//! - quizzes never contend with each other (one lock per quiz, and the
//!   `DashMap` shard guard is dropped as soon as the `Arc` is cloned out);
//! - every method does its work synchronously under the quiz lock and never
//!   holds a guard across an `.await`, so a slow task can't stall the runtime
//!   and all the steps of `apply_answer` are trivially atomic.
//!
//! Semantics shared with [`super::redis_cluster::RedisClusterStore`] (and
//! checked by `core/tests/store_conformance.rs`):
//! - ranks are competition ranks ("1224"): 1 + the number of players with a
//!   strictly higher score;
//! - the leaderboard orders ties by descending `player_id`, which is what
//!   Redis' `ZREVRANGE` does, so both stores list the same top;
//! - the distribution counts the choices of recorded answers that were not
//!   late, so it no longer changes once a question has closed;
//! - mutating calls and `leaderboard`/`distribution` on an unknown quiz are
//!   `NotFound`; getters return `None`;
//! - pending events (see `store.rs`) are recorded under the same quiz lock
//!   as the write that produces them;
//! - a quiz expires like the Redis store's keys: [`Retention::live`](super::Retention) after
//!   its creation or last state change, [`Retention::ended`](super::Retention) after its end.
//!   An expired quiz is gone (getters `None`, the rest `NotFound`, its id free
//!   again); its memory is freed when it is next looked up, or by the sweep
//!   that a quiz's creation runs at most once per [`SWEEP_EVERY`]. Without
//!   it an embedded node kept every quiz it ever held until it restarted.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{pending_key, PendingKey, QuizStore, Retention, StoreError};
use crate::events::{Event, EventKind};
use crate::model::{
    AnswerRecord, ApplyOutcome, Leaderboard, LeaderboardEntry, Millis, Player, QuizDef, QuizState,
    Standing,
};

/// Least time between two sweeps of expired quizzes (each visits every
/// quiz once).
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// In-process store. Cheap to clone the handle via `Arc<MemoryStore>`.
pub struct MemoryStore {
    quizzes: DashMap<String, Arc<QuizCell>>,
    retention: Retention,
    /// Time zero of the cells' expiry times.
    epoch: Instant,
    /// When the last sweep ran, in ms since `epoch`.
    swept_at_ms: AtomicU64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_retention(Retention::default())
    }
}

struct QuizCell {
    def: Arc<QuizDef>,
    /// When the quiz expires, in ms since the store's `epoch`. Atomic so
    /// that a lookup checks it without taking the quiz lock.
    expires_at_ms: AtomicU64,
    inner: Mutex<QuizInner>,
}

impl QuizCell {
    fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.load(Ordering::Relaxed) <= now_ms
    }
}

#[derive(Default)]
struct QuizInner {
    state: Option<QuizState>,
    players: HashMap<String, Player>,
    /// Normalised nickname (trimmed, lowercased) → player id.
    nicks: HashMap<String, String>,
    scores: HashMap<String, u64>,
    /// Ordered like `ZREVRANGE`: score descending, then player id descending.
    ranking: BTreeSet<(Reverse<u64>, Reverse<String>)>,
    /// score → number of players with it, for O(distinct scores) ranks.
    score_counts: BTreeMap<u64, u64>,
    answers: HashMap<(String, u32), AnswerRecord>,
    /// question id → option index → count.
    dist: HashMap<u32, HashMap<u32, u64>>,
    lb_version: u64,
    sent: HashMap<(String, u32), Millis>,
    /// Pending events other than answers, by event id.
    pending: HashMap<String, Event>,
    /// Pending `answer_scored` events: (player id, question id) → the score
    /// the answer gave (the record is in `answers`).
    pending_answers: HashMap<(String, u32), u64>,
}

/// The nickname key used for uniqueness: trimmed and lowercased.
pub fn normalize_nickname(nickname: &str) -> String {
    nickname.trim().to_lowercase()
}

impl MemoryStore {
    /// A store with the default [`Retention`].
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_retention(retention: Retention) -> Self {
        MemoryStore {
            quizzes: DashMap::new(),
            retention,
            epoch: Instant::now(),
            swept_at_ms: AtomicU64::new(0),
        }
    }

    /// Quizzes held, expired ones not yet freed included.
    pub fn quiz_count(&self) -> usize {
        self.quizzes.len()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The expiry time of a quiz whose state became `state` at `now`.
    fn expiry_ms(&self, state: &QuizState, now: u64) -> u64 {
        let keep = self.retention.after(state.phase);
        now.saturating_add(keep.as_millis() as u64)
    }

    /// The quiz's cell, with the map's shard guard already released; an
    /// expired quiz is removed and not returned.
    fn cell(&self, quiz_id: &str) -> Option<Arc<QuizCell>> {
        let cell = self.quizzes.get(quiz_id).map(|e| Arc::clone(e.value()))?;
        let now = self.now_ms();
        if cell.expired(now) {
            // Re-checked under the shard lock: a create may have put a new
            // quiz under this id in between.
            self.quizzes.remove_if(quiz_id, |_, c| c.expired(now));
            return None;
        }
        Some(cell)
    }

    /// Frees every quiz expired at `now`, at most once per [`SWEEP_EVERY`].
    fn sweep_expired(&self, now: u64) {
        let last = self.swept_at_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= SWEEP_EVERY.as_millis() as u64;
        // One caller sweeps; the others go on.
        if due
            && self
                .swept_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.quizzes.retain(|_, c| !c.expired(now));
        }
    }

    fn cell_or_not_found(&self, quiz_id: &str) -> Result<Arc<QuizCell>, StoreError> {
        self.cell(quiz_id)
            .ok_or_else(|| StoreError::NotFound(format!("quiz {quiz_id}")))
    }
}

impl QuizInner {
    /// `apply_answer` under the quiz lock.
    fn apply(&mut self, quiz_id: &str, answer: &AnswerRecord) -> Result<ApplyOutcome, StoreError> {
        let Some(&current) = self.scores.get(&answer.player_id) else {
            return Err(StoreError::NotFound(format!(
                "player {} in quiz {quiz_id}",
                answer.player_id
            )));
        };
        let key = (answer.player_id.clone(), answer.question_id);
        if let Some(original) = self.answers.get(&key) {
            return Ok(ApplyOutcome::Duplicate {
                original: original.clone(),
                score: current,
                rank: self.rank_of(current),
                pending: self.pending_answers.contains_key(&key),
            });
        }
        let score = current.saturating_add(u64::from(answer.points));
        self.pending_answers.insert(key.clone(), score);
        self.answers.insert(key, answer.clone());
        self.set_score(&answer.player_id, score);
        if !answer.late {
            let dist = self.dist.entry(answer.question_id).or_default();
            for &c in &answer.choices {
                *dist.entry(c).or_insert(0) += 1;
            }
        }
        self.lb_version += 1;
        Ok(ApplyOutcome::Applied {
            score,
            rank: self.rank_of(score),
        })
    }

    fn rank_of(&self, score: u64) -> u64 {
        use std::ops::Bound::{Excluded, Unbounded};
        1 + self
            .score_counts
            .range((Excluded(score), Unbounded))
            .map(|(_, n)| *n)
            .sum::<u64>()
    }

    fn set_score(&mut self, player_id: &str, new: u64) {
        if let Some(old) = self.scores.insert(player_id.to_string(), new) {
            self.ranking
                .remove(&(Reverse(old), Reverse(player_id.to_string())));
            if let Some(n) = self.score_counts.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.score_counts.remove(&old);
                }
            }
        }
        self.ranking
            .insert((Reverse(new), Reverse(player_id.to_string())));
        *self.score_counts.entry(new).or_insert(0) += 1;
    }

    fn standing(&self, player_id: &str) -> Option<Standing> {
        let score = *self.scores.get(player_id)?;
        Some(Standing {
            score,
            rank: self.rank_of(score),
        })
    }
}

#[async_trait]
impl QuizStore for MemoryStore {
    async fn create_quiz_with_event(
        &self,
        quiz: &QuizDef,
        state: &QuizState,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        use dashmap::mapref::entry::Entry;
        let now = self.now_ms();
        self.sweep_expired(now);
        let cell = || {
            Arc::new(QuizCell {
                def: Arc::new(quiz.clone()),
                expires_at_ms: AtomicU64::new(self.expiry_ms(state, now)),
                inner: Mutex::new(QuizInner {
                    state: Some(state.clone()),
                    pending: event
                        .map(|e| (e.event_id.clone(), e.clone()))
                        .into_iter()
                        .collect(),
                    ..QuizInner::default()
                }),
            })
        };
        match self.quizzes.entry(quiz.quiz_id.clone()) {
            // An expired quiz's id is free again, as its Redis keys are.
            Entry::Occupied(mut o) if o.get().expired(now) => {
                o.insert(cell());
                Ok(())
            }
            // The very same definition again is a retried create: succeed,
            // like the Redis store does.
            Entry::Occupied(o) if *o.get().def == *quiz => Ok(()),
            Entry::Occupied(_) => Err(StoreError::Conflict(format!(
                "quiz_id {} exists",
                quiz.quiz_id
            ))),
            Entry::Vacant(v) => {
                v.insert(cell());
                Ok(())
            }
        }
    }

    async fn get_quiz(&self, quiz_id: &str) -> Result<Option<Arc<QuizDef>>, StoreError> {
        Ok(self.cell(quiz_id).map(|c| Arc::clone(&c.def)))
    }

    async fn get_state(&self, quiz_id: &str) -> Result<Option<QuizState>, StoreError> {
        Ok(self
            .cell(quiz_id)
            .and_then(|c| c.inner.lock().state.clone()))
    }

    async fn set_state_with_events(
        &self,
        quiz_id: &str,
        expected_version: u64,
        next: &QuizState,
        events: &[Event],
    ) -> Result<bool, StoreError> {
        super::check_next_version(expected_version, next)?;
        let cell = self.cell_or_not_found(quiz_id)?;
        let mut inner = cell.inner.lock();
        match &inner.state {
            Some(cur) if cur.version == expected_version => {
                // Under the quiz lock, so the last change sets the expiry.
                cell.expires_at_ms
                    .store(self.expiry_ms(next, self.now_ms()), Ordering::Relaxed);
                inner.state = Some(next.clone());
                for e in events {
                    inner.pending.insert(e.event_id.clone(), e.clone());
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn add_player_with_event(
        &self,
        quiz_id: &str,
        player: &Player,
        max_players: u64,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        let cell = self.cell_or_not_found(quiz_id)?;
        let nick = normalize_nickname(&player.nickname);
        let mut inner = cell.inner.lock();
        // The very same player again is a retried join: succeed.
        if let Some(existing) = inner.players.get(&player.player_id) {
            if existing == player {
                return Ok(());
            }
            return Err(StoreError::Conflict(format!(
                "player_id {} exists",
                player.player_id
            )));
        }
        if inner.players.len() as u64 >= max_players {
            return Err(StoreError::Full(format!(
                "quiz {quiz_id} has {max_players} players"
            )));
        }
        if inner.nicks.contains_key(&nick) {
            return Err(StoreError::Conflict(format!(
                "nickname {:?} is taken",
                player.nickname.trim()
            )));
        }
        inner.nicks.insert(nick, player.player_id.clone());
        inner
            .players
            .insert(player.player_id.clone(), player.clone());
        inner.set_score(&player.player_id, 0);
        inner.lb_version += 1;
        if let Some(e) = event {
            inner.pending.insert(e.event_id.clone(), e.clone());
        }
        Ok(())
    }

    async fn get_player(
        &self,
        quiz_id: &str,
        player_id: &str,
    ) -> Result<Option<Player>, StoreError> {
        Ok(self
            .cell(quiz_id)
            .and_then(|c| c.inner.lock().players.get(player_id).cloned()))
    }

    async fn apply_answer(
        &self,
        quiz_id: &str,
        answer: &AnswerRecord,
    ) -> Result<ApplyOutcome, StoreError> {
        let cell = self.cell_or_not_found(quiz_id)?;
        let mut inner = cell.inner.lock();
        inner.apply(quiz_id, answer)
    }

    async fn apply_answer_at_state(
        &self,
        quiz_id: &str,
        answer: &AnswerRecord,
        state_version: u64,
    ) -> Result<Option<ApplyOutcome>, StoreError> {
        let cell = self.cell_or_not_found(quiz_id)?;
        // The version check and the apply under one lock: atomic.
        let mut inner = cell.inner.lock();
        if inner.state.as_ref().map(|s| s.version) != Some(state_version) {
            return Ok(None);
        }
        inner.apply(quiz_id, answer).map(Some)
    }

    async fn get_answer(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
    ) -> Result<Option<AnswerRecord>, StoreError> {
        Ok(self.cell(quiz_id).and_then(|c| {
            c.inner
                .lock()
                .answers
                .get(&(player_id.to_string(), question_id))
                .cloned()
        }))
    }

    async fn leaderboard(&self, quiz_id: &str, limit: usize) -> Result<Leaderboard, StoreError> {
        let cell = self.cell_or_not_found(quiz_id)?;
        let inner = cell.inner.lock();
        let mut top = Vec::with_capacity(limit.min(inner.ranking.len()));
        // Competition rank from the sorted walk: an entry shares the rank of
        // the first entry with its score.
        let mut rank = 0u64;
        let mut prev: Option<u64> = None;
        for (i, (Reverse(score), Reverse(pid))) in inner.ranking.iter().take(limit).enumerate() {
            if prev != Some(*score) {
                rank = i as u64 + 1;
                prev = Some(*score);
            }
            let nickname = inner
                .players
                .get(pid)
                .map(|p| p.nickname.clone())
                .unwrap_or_default();
            top.push(LeaderboardEntry {
                rank,
                player_id: pid.clone(),
                nickname,
                score: *score,
            });
        }
        Ok(Leaderboard {
            quiz_id: quiz_id.to_string(),
            version: inner.lb_version,
            total_players: inner.scores.len() as u64,
            top,
        })
    }

    async fn standing(
        &self,
        quiz_id: &str,
        player_id: &str,
    ) -> Result<Option<Standing>, StoreError> {
        Ok(self
            .cell(quiz_id)
            .and_then(|c| c.inner.lock().standing(player_id)))
    }

    async fn distribution(
        &self,
        quiz_id: &str,
        question_id: u32,
        option_count: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let cell = self.cell_or_not_found(quiz_id)?;
        let inner = cell.inner.lock();
        let mut out = vec![0u64; option_count];
        if let Some(d) = inner.dist.get(&question_id) {
            for (i, slot) in out.iter_mut().enumerate() {
                *slot = d.get(&(i as u32)).copied().unwrap_or(0);
            }
        }
        Ok(out)
    }

    async fn question_sent_at(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
        now: Millis,
    ) -> Result<Millis, StoreError> {
        let cell = self.cell_or_not_found(quiz_id)?;
        let mut inner = cell.inner.lock();
        Ok(*inner
            .sent
            .entry((player_id.to_string(), question_id))
            .or_insert(now))
    }

    async fn pending_events(&self, quiz_id: &str, limit: usize) -> Result<Vec<Event>, StoreError> {
        let Some(cell) = self.cell(quiz_id) else {
            return Ok(Vec::new());
        };
        let inner = cell.inner.lock();
        let others = inner.pending.values().cloned();
        let answers = inner.pending_answers.iter().filter_map(|(key, &score)| {
            let answer = inner.answers.get(key)?.clone();
            Some(Event::new(
                quiz_id,
                answer.answered_at_ms,
                EventKind::AnswerScored {
                    answer,
                    score_after: score,
                },
            ))
        });
        Ok(others.chain(answers).take(limit).collect())
    }

    async fn clear_pending(&self, quiz_id: &str, event_ids: &[String]) -> Result<(), StoreError> {
        let Some(cell) = self.cell(quiz_id) else {
            return Ok(());
        };
        let mut inner = cell.inner.lock();
        for id in event_ids {
            match pending_key(quiz_id, id) {
                PendingKey::Answer(field) => {
                    if let Some((pid, q)) = super::split_answer_field(field) {
                        inner.pending_answers.remove(&(pid.to_string(), q));
                    }
                }
                PendingKey::Other(id) => {
                    inner.pending.remove(id);
                }
            }
        }
        Ok(())
    }

    async fn is_pending(&self, quiz_id: &str, event_id: &str) -> Result<bool, StoreError> {
        let Some(cell) = self.cell(quiz_id) else {
            return Ok(false);
        };
        let inner = cell.inner.lock();
        Ok(match pending_key(quiz_id, event_id) {
            PendingKey::Answer(field) => super::split_answer_field(field)
                .is_some_and(|(pid, q)| inner.pending_answers.contains_key(&(pid.to_string(), q))),
            PendingKey::Other(id) => inner.pending.contains_key(id),
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
