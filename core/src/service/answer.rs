//! The answer flow, ordered for durability: sink readiness check →
//! validate → compute points on the server clock → `store.apply_answer`
//! (atomic dedupe + score) → publish the event and wait for it → only then
//! acknowledge. The store records the answer's event as pending with the
//! answer (the event outbox, `event_outbox.rs`): if the publish fails, the
//! repair sweep publishes it, the client need not re-send. A duplicate
//! re-publishes the original answer's event (same event id) only while it
//! is still pending: one the event log has acknowledged costs no write.

use crate::error::QuizError;
use crate::events::{Event, EventKind};
use crate::metrics::AnswerOutcome;
use crate::model::{now_ms, AnswerRecord, ApplyOutcome, Millis, Mode, Phase, QuizDef, QuizState};
use crate::protocol::{AnswerReason, AnswerResult};
use crate::rules::{grade, live_window, normalize_choices, self_paced_window, Window};

use super::{Caller, QuizService};

/// Re-scorings of one answer after the state moved under it. Host actions
/// are seconds apart, so a second miss means something is wrong.
const STALE_RETRIES: usize = 3;

impl QuizService {
    /// One answer of a player. `presented` (self-paced only) is the highest
    /// question this connection has shown the player, with the time it was
    /// first sent to them. `Err` means "not acknowledged": the client gets
    /// an `error` message and may retry. A result that
    /// [`applied`](AnswerResult::applied) changed the scores: the caller
    /// touches its room.
    pub async fn answer(
        &self,
        def: &QuizDef,
        caller: &Caller,
        question_id: u32,
        choices: &[u32],
        presented: Option<(u32, Millis)>,
    ) -> Result<AnswerResult, QuizError> {
        let r = self
            .answer_inner(def, caller, question_id, choices, presented)
            .await;
        self.metrics.count_answer(AnswerOutcome::of(&r));
        r
    }

    async fn answer_inner(
        &self,
        def: &QuizDef,
        caller: &Caller,
        question_id: u32,
        choices: &[u32],
        presented: Option<(u32, Millis)>,
    ) -> Result<AnswerResult, QuizError> {
        // Refuse before touching the store: an answer we could not record
        // in the event log must not be scored.
        self.require_sink_ready()?;
        let now = now_ms();
        let quiz_id = &def.quiz_id;
        let player_id = &caller.claims.player_id;
        let question = def.questions.get(question_id as usize);
        let Some((question, mut choices)) =
            question.and_then(|q| Some((q, normalize_choices(choices, q.options.len())?)))
        else {
            let res = AnswerResult::rejected(question_id, AnswerReason::Invalid);
            return self.with_standing(quiz_id, player_id, res).await;
        };
        // Scored against the cached state; the store applies the answer only
        // if the state is still that version, else we re-read and re-score
        // (same receipt time `now`). A rejection that depends on the state
        // (`not_open`) is only given after a fresh read.
        let mut fresh = false;
        for _ in 0..STALE_RETRIES {
            let state = if fresh {
                self.state(quiz_id).await?
            } else {
                self.cached_state(quiz_id).await?
            };
            let window = self
                .window(def, &state, player_id, question_id, presented, now)
                .await?;
            let (opens_at, closes_at) = match window {
                Window::NotOpen if !fresh => {
                    fresh = true;
                    continue;
                }
                // Boxed: a rare path whose future (a look-up, then maybe
                // a duplicate's whole finish) is most of this one's size,
                // which every answer pays for when its handling is boxed
                // (`connection::read_loop`).
                Window::NotOpen => {
                    return Box::pin(self.not_open(quiz_id, player_id, question_id)).await
                }
                Window::Open {
                    opens_at,
                    closes_at,
                } => (opens_at, closes_at),
            };
            let g = grade(question, &choices, opens_at, closes_at, now);
            let record = AnswerRecord {
                player_id: player_id.clone(),
                nickname: caller.nickname.clone(),
                question_id,
                // Moved, and taken back below if the answer is scored again.
                choices: std::mem::take(&mut choices),
                correct: g.correct,
                late: g.late,
                points: g.points,
                response_ms: g.response_ms,
                answered_at_ms: now,
            };
            let Some(outcome) = self
                .store
                .apply_answer_at_state(quiz_id, &record, state.version)
                .await?
            else {
                // The state moved on since we read it: re-read, re-score.
                choices = record.choices;
                self.metrics.stale_rescored.inc();
                fresh = true;
                continue;
            };
            return self.finish_answer(quiz_id, record, outcome).await;
        }
        Err(QuizError::Unavailable(
            "state: changing too fast to score the answer; retry".into(),
        ))
    }

    /// When `question_id` is open for this answer, given the quiz state
    /// (live) or what the connection presented (self-paced).
    async fn window(
        &self,
        def: &QuizDef,
        state: &QuizState,
        player_id: &str,
        question_id: u32,
        presented: Option<(u32, Millis)>,
        now: Millis,
    ) -> Result<Window, QuizError> {
        let Some(question) = def.questions.get(question_id as usize) else {
            return Ok(Window::NotOpen);
        };
        if def.mode == Mode::Live {
            return Ok(live_window(state, question_id));
        }
        let sent = match (state.phase, presented) {
            (Phase::Lobby, _) | (_, None) => return Ok(Window::NotOpen),
            (_, Some((p, _))) if question_id > p => return Ok(Window::NotOpen),
            // The question on screen: its send time came with it.
            (_, Some((p, sent_p))) if question_id == p => sent_p,
            // An earlier one (rare: answered after the next was shown) is
            // read from the store.
            _ => {
                self.store
                    .question_sent_at(&def.quiz_id, player_id, question_id, now)
                    .await?
            }
        };
        Ok(self_paced_window(
            state.phase,
            sent,
            question.time_limit_ms,
            now,
        ))
    }

    /// The window says `not_open` after a fresh read. A re-send of an answer
    /// that was recorded (its client lost the result with a connection,
    /// possibly because a node died between the store and the event log)
    /// is a duplicate wherever the quiz is now: self-paced after the
    /// player's last question or after the end, where nothing is presented
    /// to this connection. Only an existing answer turns `not_open` into
    /// `duplicate`; a new one is refused as before.
    async fn not_open(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
    ) -> Result<AnswerResult, QuizError> {
        if let Some(original) = self
            .store
            .get_answer(quiz_id, player_id, question_id)
            .await?
        {
            return self.resent_duplicate(quiz_id, original).await;
        }
        let res = AnswerResult::rejected(question_id, AnswerReason::NotOpen);
        self.with_standing(quiz_id, player_id, res).await
    }

    /// After the store: the event, then the player's result.
    async fn finish_answer(
        &self,
        quiz_id: &str,
        record: AnswerRecord,
        outcome: ApplyOutcome,
    ) -> Result<AnswerResult, QuizError> {
        let mut res = AnswerResult::new(record.question_id);
        match outcome {
            ApplyOutcome::Applied { score, rank } => {
                let (late, correct, points, now) = (
                    record.late,
                    record.correct,
                    record.points,
                    record.answered_at_ms,
                );
                self.publish(Event::new(
                    quiz_id,
                    now,
                    EventKind::AnswerScored {
                        answer: record,
                        score_after: score,
                    },
                ))
                .await?;
                res.accepted = !late;
                res.reason = late.then_some(AnswerReason::Late);
                res.correct = correct;
                res.points = points;
                res.score = score;
                res.rank = rank;
            }
            ApplyOutcome::Duplicate {
                original,
                score,
                rank,
                pending,
            } => {
                // Idempotent re-publish of the answer that counted, only
                // while its event is pending (an earlier attempt's publish
                // failed or its node crashed): the client's re-send then
                // gets its acknowledgement only once the event is durable.
                // An acknowledged event is not written again (a client
                // re-sending one answer cannot amplify Kafka writes).
                res.correct = original.correct;
                res.points = original.points;
                let at = original.answered_at_ms;
                if pending {
                    self.publish(Event::new(
                        quiz_id,
                        at,
                        EventKind::AnswerScored {
                            answer: original,
                            score_after: score,
                        },
                    ))
                    .await?;
                } else {
                    self.metrics.duplicates_not_republished.inc();
                }
                res.reason = Some(AnswerReason::Duplicate);
                res.score = score;
                res.rank = rank;
            }
        }
        Ok(res)
    }

    /// A re-sent answer the window would refuse (`not_open`) but the store
    /// holds: answered like any duplicate (the original's event re-published
    /// first, then `reason:"duplicate"` with the original's result).
    async fn resent_duplicate(
        &self,
        quiz_id: &str,
        original: AnswerRecord,
    ) -> Result<AnswerResult, QuizError> {
        let (score, rank) = self
            .store
            .standing(quiz_id, &original.player_id)
            .await?
            .map_or((0, 0), |s| (s.score, s.rank));
        let record = original.clone();
        let event_id = Event::new(
            quiz_id,
            original.answered_at_ms,
            EventKind::AnswerScored {
                answer: original.clone(),
                score_after: score,
            },
        )
        .event_id;
        let pending = self.store.is_pending(quiz_id, &event_id).await?;
        let outcome = ApplyOutcome::Duplicate {
            original,
            score,
            rank,
            pending,
        };
        self.finish_answer(quiz_id, record, outcome).await
    }

    async fn with_standing(
        &self,
        quiz_id: &str,
        player_id: &str,
        mut res: AnswerResult,
    ) -> Result<AnswerResult, QuizError> {
        if let Some(s) = self.store.standing(quiz_id, player_id).await? {
            res.score = s.score;
            res.rank = s.rank;
        }
        Ok(res)
    }
}
