//! Events → idempotent upserts. The heart of the idempotence argument
//! (`docs/persister.md`): every field is written by exactly one operator, and
//! each operator is idempotent and order-independent:
//!
//! - `$setOnInsert` for facts fixed by the first write (an answer, a player's
//!   join): a redelivery finds the document and changes nothing;
//! - `$max` / `$min` for monotone values (`scores.score` ← `score_after`,
//!   `quizzes.started_at_ms` ← `at_ms`): applying them again, or in another
//!   order, gives the same result;
//! - `$set` only for a value that one event id alone determines (the quiz
//!   definition, the final top), so a redelivery writes the same value;
//! - the quiz `state` moves forward only, by a non-upsert update filtered on
//!   `state_rank < new rank` ([`Transition`]).
//!
//! Never `$inc`. Within a batch, all events touching one document are folded
//! into one statement ([`Upsert`]), so a batch sends one `update` command per
//! collection whatever its size, and statement order inside that (unordered)
//! command does not matter.
//!
//! A statement that cannot change a document that already exists (only
//! `$setOnInsert`, plus `$max` at the floor of its field) is the same as an
//! insert of the document it would create, where "duplicate key" means
//! "already there, nothing to do": [`Upsert::insert_doc`]. Answers, players
//! and a join's score are such statements; the store may send them as
//! unordered inserts (far cheaper than an upsert on FerretDB, which scans
//! the collection for every upsert's `_id`, see `docs/persister.md`).

use std::collections::HashMap;

use bson::{doc, Bson, Document};

use crate::event::{Event, EventKind};

pub const QUIZZES: &str = "quizzes";
pub const PLAYERS: &str = "players";
pub const ANSWERS: &str = "answers";
pub const SCORES: &str = "scores";
pub const COLLECTIONS: [&str; 4] = [QUIZZES, PLAYERS, ANSWERS, SCORES];

/// One upsert statement for one document, folded from one or more events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Upsert {
    pub id: String,
    pub set_on_insert: Document,
    pub set: Document,
    pub max: Document,
    pub min: Document,
    /// Indexes (into the batch) of the events folded into this statement.
    pub events: Vec<usize>,
    /// Estimated encoded size, for splitting commands.
    pub bytes: usize,
}

impl Upsert {
    fn new(id: String) -> Upsert {
        Upsert {
            id,
            ..Upsert::default()
        }
    }

    /// First write wins, inside the batch as across batches.
    fn set_on_insert(&mut self, key: &str, value: impl Into<Bson>) {
        if !self.set_on_insert.contains_key(key) {
            self.set_on_insert.insert(key, value);
        }
    }

    fn max(&mut self, key: &str, value: i64) {
        match self.max.get_i64(key) {
            Ok(old) if old >= value => {}
            _ => {
                self.max.insert(key, value);
            }
        }
    }

    fn min(&mut self, key: &str, value: i64) {
        match self.min.get_i64(key) {
            Ok(old) if old <= value => {}
            _ => {
                self.min.insert(key, value);
            }
        }
    }

    fn set(&mut self, key: &str, value: impl Into<Bson>) {
        self.set.insert(key, value);
    }

    /// The document this statement would create, when applying it to a
    /// document that exists changes nothing, so that inserting it, with a
    /// duplicate key counted as success, has the same effect as the upsert:
    /// no `$set`, no `$min`, and every `$max` at [`MAX_FLOOR`] (a `$max` of
    /// the least value its field can hold changes no existing document).
    pub fn insert_doc(&self) -> Option<Document> {
        if !self.set.is_empty() || !self.min.is_empty() {
            return None;
        }
        let at_floor = self
            .max
            .iter()
            .all(|(_, v)| matches!(v, Bson::Int64(n) if *n <= MAX_FLOOR));
        if !at_floor {
            return None;
        }
        let mut d = Document::new();
        d.insert("_id", self.id.as_str());
        for (k, v) in self.set_on_insert.iter().chain(self.max.iter()) {
            if k.contains('.') || d.contains_key(k) {
                return None;
            }
            d.insert(k, v.clone());
        }
        Some(d)
    }

    /// The update document: only the operators that have fields.
    pub fn update_doc(&self) -> Document {
        let mut u = Document::new();
        if !self.set_on_insert.is_empty() {
            u.insert("$setOnInsert", self.set_on_insert.clone());
        }
        if !self.set.is_empty() {
            u.insert("$set", self.set.clone());
        }
        if !self.max.is_empty() {
            u.insert("$max", self.max.clone());
        }
        if !self.min.is_empty() {
            u.insert("$min", self.min.clone());
        }
        u
    }
}

/// The least value of every `$max` field of the schema: `scores.score`
/// (`score_after` ≥ `points` ≥ 0 and 0 on join) and
/// `quizzes.current_question` (question ids ≥ 0), both checked in
/// `event.rs`. A `$max` of this value changes no existing document.
pub const MAX_FLOOR: i64 = 0;

/// A forward-only move of a quiz's `state`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub quiz_id: String,
    pub state: &'static str,
    pub rank: i32,
    pub events: Vec<usize>,
}

/// Quiz states and their order; `state_rank` only grows.
pub const STATE_LOBBY: (&str, i32) = ("lobby", 0);
pub const STATE_RUNNING: (&str, i32) = ("running", 1);
pub const STATE_ENDED: (&str, i32) = ("ended", 2);

/// Everything one batch writes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WritePlan {
    /// Per collection (in [`COLLECTIONS`] order), the folded upserts.
    pub upserts: [Vec<Upsert>; 4],
    /// Applied after the upserts (the quiz documents then exist).
    pub transitions: Vec<Transition>,
}

impl WritePlan {
    pub fn is_empty(&self) -> bool {
        self.upserts.iter().all(Vec::is_empty) && self.transitions.is_empty()
    }

    pub fn statements(&self) -> usize {
        self.upserts.iter().map(Vec::len).sum::<usize>() + self.transitions.len()
    }
}

/// One event of a batch, with its position and its encoded size.
pub struct PlanInput<'a> {
    pub index: usize,
    pub event: &'a Event,
    pub bytes: usize,
}

#[derive(Default)]
struct Builder {
    plan: WritePlan,
    slots: [HashMap<String, usize>; 4],
    transitions: HashMap<String, usize>,
}

impl Builder {
    fn upsert(&mut self, collection: usize, id: String, index: usize, bytes: usize) -> &mut Upsert {
        let list = &mut self.plan.upserts[collection];
        let slot = *self.slots[collection].entry(id.clone()).or_insert_with(|| {
            list.push(Upsert::new(id));
            list.len() - 1
        });
        let upsert = &mut list[slot];
        if upsert.events.last() != Some(&index) {
            upsert.events.push(index);
        }
        upsert.bytes += bytes;
        upsert
    }

    fn transition(&mut self, quiz_id: &str, (state, rank): (&'static str, i32), index: usize) {
        match self.transitions.get(quiz_id) {
            Some(&slot) => {
                let t = &mut self.plan.transitions[slot];
                if rank > t.rank {
                    t.rank = rank;
                    t.state = state;
                }
                t.events.push(index);
            }
            None => {
                self.transitions
                    .insert(quiz_id.to_string(), self.plan.transitions.len());
                self.plan.transitions.push(Transition {
                    quiz_id: quiz_id.to_string(),
                    state,
                    rank,
                    events: vec![index],
                });
            }
        }
    }
}

/// Folds a batch of events into one plan.
pub fn plan<'a>(inputs: impl IntoIterator<Item = PlanInput<'a>>) -> WritePlan {
    let mut b = Builder::default();
    for PlanInput {
        index,
        event,
        bytes,
    } in inputs
    {
        let q = event.quiz_id.as_str();
        let quiz = |b: &mut Builder| -> usize {
            let u = b.upsert(0, q.to_string(), index, bytes);
            u.set_on_insert("quiz_id", q);
            u.set_on_insert("state", STATE_LOBBY.0);
            u.set_on_insert("state_rank", STATE_LOBBY.1);
            0
        };
        match &event.kind {
            EventKind::QuizCreated(e) => {
                quiz(&mut b);
                let u = b.upsert(0, q.to_string(), index, 0);
                u.set("title", e.title.as_str());
                u.set("mode", e.mode.as_str());
                let questions: Vec<Bson> = e
                    .questions
                    .iter()
                    .map(|q| {
                        Bson::Document(doc! {
                            "id": q.id, "index": q.index, "text": q.text.as_str(),
                            "options": q.options.clone(), "correct": q.correct.clone(),
                            "time_limit_ms": q.time_limit_ms, "points": q.points,
                        })
                    })
                    .collect();
                u.set("question_count", questions.len() as i64);
                u.set("questions", questions);
                u.min("created_at_ms", event.at_ms);
            }
            EventKind::QuizStarted => {
                quiz(&mut b);
                b.upsert(0, q.to_string(), index, 0)
                    .min("started_at_ms", event.at_ms);
                b.transition(q, STATE_RUNNING, index);
            }
            EventKind::QuestionOpened(e) => {
                quiz(&mut b);
                let u = b.upsert(0, q.to_string(), index, 0);
                u.max("current_question", e.question_id);
                u.set(
                    &format!("question_windows.{}", e.question_id),
                    doc! { "opens_at_ms": e.opens_at_ms, "closes_at_ms": e.closes_at_ms },
                );
            }
            EventKind::QuizEnded(e) => {
                quiz(&mut b);
                let u = b.upsert(0, q.to_string(), index, 0);
                u.min("ended_at_ms", event.at_ms);
                let top: Vec<Bson> = e
                    .top
                    .iter()
                    .map(|t| {
                        Bson::Document(doc! {
                            "rank": t.rank, "player_id": t.player_id.as_str(),
                            "nickname": t.nickname.as_str(), "score": t.score,
                        })
                    })
                    .collect();
                u.set("final_top", top);
                b.transition(q, STATE_ENDED, index);
            }
            EventKind::PlayerJoined(e) => {
                let id = format!("{q}:{}", e.player_id);
                let u = b.upsert(1, id.clone(), index, bytes);
                u.set_on_insert("quiz_id", q);
                u.set_on_insert("player_id", e.player_id.as_str());
                u.set_on_insert("nickname", e.nickname.as_str());
                u.set_on_insert("joined_at_ms", event.at_ms);
                let s = b.upsert(3, id, index, bytes);
                s.set_on_insert("quiz_id", q);
                s.set_on_insert("player_id", e.player_id.as_str());
                s.set_on_insert("nickname", e.nickname.as_str());
                s.max("score", 0);
            }
            EventKind::AnswerScored(e) => {
                let id = format!("{q}:{}:{}", e.player_id, e.question_id);
                let a = b.upsert(2, id, index, bytes);
                a.set_on_insert("quiz_id", q);
                a.set_on_insert("player_id", e.player_id.as_str());
                a.set_on_insert("question_id", e.question_id);
                a.set_on_insert("choices", e.choices.clone());
                a.set_on_insert("correct", e.correct);
                a.set_on_insert("late", e.late);
                a.set_on_insert("points", e.points);
                a.set_on_insert("response_ms", e.response_ms);
                a.set_on_insert("answered_at_ms", e.answered_at_ms);
                a.set_on_insert("score_after", e.score_after);
                let s = b.upsert(3, format!("{q}:{}", e.player_id), index, bytes);
                s.set_on_insert("quiz_id", q);
                s.set_on_insert("player_id", e.player_id.as_str());
                s.set_on_insert("nickname", e.nickname.as_str());
                s.max("score", e.score_after);
            }
        }
    }
    b.plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(json: &str) -> Event {
        Event::parse(json.as_bytes()).expect("valid test event")
    }

    #[test]
    fn folds_one_statement_per_document() {
        let events = [
            ev(
                r#"{"v":1,"event_id":"q:joined:p","type":"player_joined","quiz_id":"q","at_ms":1,"player_id":"p","nickname":"n"}"#,
            ),
            ev(
                r#"{"v":1,"event_id":"q:answer:p:0","type":"answer_scored","quiz_id":"q","at_ms":2,"player_id":"p","nickname":"n","question_id":0,"choices":[1],"correct":true,"late":false,"points":900,"response_ms":1,"answered_at_ms":2,"score_after":900}"#,
            ),
            ev(
                r#"{"v":1,"event_id":"q:answer:p:1","type":"answer_scored","quiz_id":"q","at_ms":3,"player_id":"p","nickname":"n","question_id":1,"choices":[1],"correct":true,"late":false,"points":500,"response_ms":1,"answered_at_ms":3,"score_after":1400}"#,
            ),
            ev(r#"{"v":1,"event_id":"q:started","type":"quiz_started","quiz_id":"q","at_ms":1}"#),
            ev(
                r#"{"v":1,"event_id":"q:ended","type":"quiz_ended","quiz_id":"q","at_ms":9,"top":[]}"#,
            ),
        ];
        let plan = plan(events.iter().enumerate().map(|(index, event)| PlanInput {
            index,
            event,
            bytes: 100,
        }));
        assert_eq!(plan.upserts[0].len(), 1);
        assert_eq!(plan.upserts[1].len(), 1);
        assert_eq!(plan.upserts[2].len(), 2);
        assert_eq!(plan.upserts[3].len(), 1);
        let score = &plan.upserts[3][0];
        assert_eq!(score.max.get_i64("score").ok(), Some(1400));
        assert_eq!(score.events, vec![0, 1, 2]);
        assert_eq!(plan.transitions.len(), 1);
        assert_eq!(plan.transitions[0].state, "ended");
    }

    #[test]
    fn immutable_documents_are_insertable_and_the_rest_is_not() {
        let join = ev(
            r#"{"v":1,"event_id":"q:joined:p","type":"player_joined","quiz_id":"q","at_ms":1,"player_id":"p","nickname":"n"}"#,
        );
        let answer = ev(
            r#"{"v":1,"event_id":"q:answer:p:0","type":"answer_scored","quiz_id":"q","at_ms":2,"player_id":"p","nickname":"n","question_id":0,"choices":[1],"correct":true,"late":false,"points":900,"response_ms":1,"answered_at_ms":2,"score_after":900}"#,
        );
        let opened = ev(
            r#"{"v":1,"event_id":"q:question:0","type":"question_opened","quiz_id":"q","at_ms":1,"question_id":0,"opens_at_ms":1,"closes_at_ms":9}"#,
        );
        let planned = |events: &[&Event]| {
            plan(events.iter().enumerate().map(|(index, event)| PlanInput {
                index,
                event,
                bytes: 100,
            }))
        };

        // A join alone: the player and a score of 0, both plain inserts.
        let p = planned(&[&join]);
        let player = p.upserts[1][0].insert_doc().expect("player insertable");
        assert_eq!(player.get_str("_id").ok(), Some("q:p"));
        assert_eq!(player.get_i64("joined_at_ms").ok(), Some(1));
        let score = p.upserts[3][0].insert_doc().expect("join score insertable");
        assert_eq!(score.get_i64("score").ok(), Some(0));
        assert_eq!(score.get_str("nickname").ok(), Some("n"));

        // An answer: the answer is an insert, its score change is not.
        let p = planned(&[&answer]);
        let a = p.upserts[2][0].insert_doc().expect("answer insertable");
        assert_eq!(a.get_str("_id").ok(), Some("q:p:0"));
        assert_eq!(a.get_i64("points").ok(), Some(900));
        assert_eq!(p.upserts[3][0].insert_doc(), None, "a score above 0");

        // A join folded with an answer: still one update of the score.
        let p = planned(&[&join, &answer]);
        assert_eq!(p.upserts[3].len(), 1);
        assert_eq!(p.upserts[3][0].insert_doc(), None);

        // Quiz documents carry `$set`/`$min`/`$max` above the floor.
        let p = planned(&[&opened]);
        assert_eq!(p.upserts[0][0].insert_doc(), None);
    }
}
