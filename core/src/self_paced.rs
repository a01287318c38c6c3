//! Self-paced mode: each player walks the questions at their own pace.
//!
//! A player's question is sent by their own connection (in the welcome,
//! after each recorded answer, and when the one on screen expires
//! unanswered) or by the room when the host starts the quiz. Its
//! `time_limit_ms` runs from when the server first sent it to that player
//! (set once in the store, so a reconnect never restarts the clock). The
//! connection keeps what it presented in [`Presented`], which only moves
//! forward: the answer to the question on screen needs no store read, and
//! of two callers presenting at once only the one that moved it sends.
//!
//! Presenting returns the encoded `question` frame; the caller hands it to
//! the connection's outbox.

use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::error::QuizError;
use crate::model::{now_ms, Millis, Phase, QuizDef};
use crate::protocol::{self, QuestionMsg};
use crate::service::QuizService;

/// Self-paced: the question this connection last presented to its player,
/// with the time it was first sent to them (set once in the store, so it
/// is exact to keep it here: the answer to it needs no store read).
///
/// Written by the connection (welcome, after each answer) and by the room
/// (when the quiz starts), possibly at the same time: it only ever moves
/// forward ([`Presented::advance`]), and only the caller that moved it sends
/// the `question`. (It used to be a plain store: a slow presentation by the
/// room could move it back after the player had answered on, and the next
/// answer was then refused `not_open` and the player stalled.)
#[derive(Default)]
pub struct Presented {
    current: parking_lot::Mutex<Option<(u32, Millis)>>,
    /// Woken on every move, for the expiry timer ([`expire_presented`]).
    moved: tokio::sync::Notify,
}

impl Presented {
    pub fn get(&self) -> Option<(u32, Millis)> {
        *self.current.lock()
    }

    /// Moves to question `q` sent at `sent` if `q` is past the current one.
    /// True if it moved (the caller then sends the question).
    pub fn advance(&self, q: u32, sent: Millis) -> bool {
        let mut cur = self.current.lock();
        if cur.is_some_and(|(p, _)| p >= q) {
            return false;
        }
        *cur = Some((q, sent));
        drop(cur);
        self.moved.notify_one();
        true
    }
}

/// Grace after a self-paced question's time is up before the next one is
/// pushed: an answer sent in the last moment is in flight, and the server
/// clock decides anyway (it is recorded as late).
const EXPIRY_GRACE_MS: u64 = 250;

/// The question a player is on, with when it was first sent to them: the
/// first question neither answered nor expired. `None` when they are
/// through. Sets the send time of that question.
///
/// The walk starts at question `from`: pass a question this function
/// returned earlier for the same player (every question before it was
/// then answered or expired, and stays so), the one after a question
/// just answered, or 0. Walking from 0 after every answer cost one
/// store round trip per question already answered (measured: ~600
/// answers/s end to end on the dev machine). Each step is one
/// `present_question` (answered? else set-once send time), which the
/// Redis store coalesces with the quiz's other writes.
pub async fn current(
    svc: &QuizService,
    def: &QuizDef,
    player_id: &str,
    from: u32,
    now: Millis,
) -> Result<Option<(u32, Millis)>, QuizError> {
    for q in def.questions.iter().skip(from as usize) {
        let Some(sent) = svc
            .store
            .present_question(&def.quiz_id, player_id, q.id, now)
            .await?
        else {
            continue; // answered
        };
        if sent.saturating_add(q.time_limit_ms) > now {
            return Ok(Some((q.id, sent)));
        }
    }
    Ok(None)
}

/// The welcome's question: the one the player is on, now presented.
pub async fn welcome_question<'a>(
    svc: &QuizService,
    def: &'a QuizDef,
    player_id: &str,
    presented: &Presented,
    now: Millis,
) -> Result<Option<QuestionMsg<'a>>, QuizError> {
    let Some((q, sent)) = current(svc, def, player_id, 0, now).await? else {
        return Ok(None);
    };
    let Some(qd) = def.questions.get(q as usize) else {
        return Ok(None);
    };
    presented.advance(q, sent);
    Ok(Some(QuestionMsg::new(qd, sent, sent + qd.time_limit_ms)))
}

/// Presents the player's next question, if any: the encoded `question`
/// to send, if this call moved [`Presented`]. `from`: a question known to
/// be answered or expired plus one (0 if none). Idempotent: calling it
/// twice yields the question once.
pub async fn present_next(
    svc: &QuizService,
    def: &QuizDef,
    player_id: &str,
    presented: &Presented,
    from: u32,
) -> Result<Option<Bytes>, QuizError> {
    // Everything before the question presented last is answered or expired:
    // the walk starts there at the earliest (see `current`).
    let from = presented.get().map_or(from, |(p, _)| p.max(from));
    let Some((q, sent)) = current(svc, def, player_id, from, now_ms()).await? else {
        return Ok(None);
    };
    let Some(qd) = def.questions.get(q as usize) else {
        return Ok(None);
    };
    Ok(presented
        .advance(q, sent)
        .then(|| protocol::encode(&QuestionMsg::new(qd, sent, sent + qd.time_limit_ms))))
}

/// Self-paced: when the question on the player's screen runs out of time
/// unanswered, present the next one (the player would otherwise stare at
/// an expired question until they sent a late answer or reconnected). An
/// answer moves [`Presented`] on before the deadline and restarts the wait;
/// the last question's expiry presents nothing. Ends with the connection.
/// `send` hands a question to the connection's writer; `stop` is the
/// connection's end.
pub async fn expire_presented(
    svc: &QuizService,
    def: &QuizDef,
    player_id: &str,
    presented: &Presented,
    stop: &CancellationToken,
    send: impl Fn(Bytes),
) {
    // The question whose expiry already presented nothing (the last one):
    // wait for a move only, not for a deadline already past.
    let mut spent: Option<(u32, Millis)> = None;
    loop {
        let cur = presented.get();
        let deadline = cur.filter(|c| Some(*c) != spent).and_then(|(q, sent)| {
            let qd = def.questions.get(q as usize)?;
            Some(sent + qd.time_limit_ms + EXPIRY_GRACE_MS)
        });
        let moved = presented.moved.notified();
        let timer = deadline.map(|d| {
            Box::pin(tokio::time::sleep(Duration::from_millis(
                d.saturating_sub(now_ms()),
            )))
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = moved => continue,
            _ = async { timer.expect("guarded").await }, if timer.is_some() => {}
        }
        if presented.get() != cur {
            continue; // answered (or presented by the room) meanwhile
        }
        let Some((q, _)) = cur else { continue };
        // Only while the quiz runs: after `end`, quiz_ended is the last word.
        match svc.state(&def.quiz_id).await {
            Ok(state) if state.phase == Phase::Running => {}
            Ok(_) => {
                spent = cur;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "expiry: state unavailable, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        match present_next(svc, def, player_id, presented, q + 1).await {
            Ok(frame) => frame.into_iter().for_each(&send),
            Err(e) => {
                tracing::debug!(error = %e, "expiry: next question unavailable, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        if presented.get() == cur {
            spent = cur;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::AnswerReason;
    use crate::rules::HostAction;
    use crate::service::tests::{test_player, test_quiz, test_service};

    /// Regression: the question presented only moves forward, and only the
    /// caller that moved it sends it. A late presentation of question 0 by
    /// the room (started before the player answered on) used to move it
    /// back, and the player's next answer was refused `not_open`.
    #[test]
    fn presented_only_moves_forward() {
        let p = Presented::default();
        assert_eq!(p.get(), None);
        assert!(p.advance(0, 100));
        assert!(!p.advance(0, 100), "the same question is sent once");
        assert!(p.advance(1, 200));
        assert!(!p.advance(0, 100), "never back");
        assert_eq!(p.get(), Some((1, 200)));
    }

    /// A re-send of a recorded answer where the window says `not_open`
    /// (self-paced: nothing presented to the connection, as after the
    /// player's last question or a reconnect after the end) is a duplicate
    /// with the original's result, and its event is published again only
    /// while it is still pending in the store (the event outbox: the ack's
    /// clearing runs in the background, so 0 to 2 re-publications); a new
    /// answer there is still `not_open`.
    #[tokio::test]
    async fn resent_answer_outside_the_window_is_a_duplicate() {
        let svc = test_service();
        let def = test_quiz(&svc, "resend1", "self_paced", 2).await;
        let (p, caller) = test_player(&svc, "resend1", "ann").await;
        svc.host_action("resend1", HostAction::Start).await.unwrap();
        let shown = current(&svc, &def, &p.player_id, 0, now_ms())
            .await
            .unwrap();
        assert_eq!(shown.map(|(q, _)| q), Some(0));
        let first = svc.answer(&def, &caller, 0, &[0], shown).await.unwrap();
        assert!(first.accepted && first.points > 0, "{first:?}");
        for presented in [None, shown] {
            let again = svc.answer(&def, &caller, 0, &[0], presented).await.unwrap();
            assert_eq!(again.reason, Some(AnswerReason::Duplicate), "{again:?}");
            assert_eq!((again.correct, again.points), (true, first.points));
            assert_eq!(again.score, first.score);
        }
        // A new answer outside the window is refused as before.
        let r = svc.answer(&def, &caller, 1, &[0], None).await.unwrap();
        assert_eq!(r.reason, Some(AnswerReason::NotOpen));
        // The original's event is in the log at least once and at most once
        // per attempt, always under one id.
        let log = std::fs::read_to_string(&svc.config.event_log).unwrap();
        let id = format!("resend1:answer:{}:0", p.player_id);
        let copies = log.matches(&id).count();
        assert!((1..=3).contains(&copies), "{copies} copies: {log}");
    }
}
