//! The rules of a quiz: definition validation, the live / self-paced state
//! machine, scoring, and the answer flow. [`QuizService`] is the node's
//! shared state; `http.rs` and `connection.rs` call it and render its results.
//!
//! The answer flow (see [`QuizService::answer`]) is ordered for durability:
//! sink readiness check → validate → compute points on the server clock →
//! `store.apply_answer` (atomic dedupe + score) → publish the event and wait
//! for it → only then acknowledge. A duplicate re-publishes the original
//! answer's event (same event id), which closes the window where core
//! crashed after the store write and before Kafka acknowledged.

use std::sync::Arc;

use dashmap::DashMap;
use rand::Rng;

use crate::bus::{Changed, ControlBus};
use crate::config::Config;
use crate::events::{Event, EventKind, EventSink};
use crate::metrics::{MeteredStore, Metrics};
use crate::model::{
    now_ms, AnswerRecord, ApplyOutcome, Leaderboard, Millis, Mode, Phase, Player, Question,
    QuizDef, QuizState,
};
use crate::protocol::{AnswerResult, CreateQuizReq};
use crate::room::Rooms;
use crate::store::{QuizStore, StoreError};
use crate::token::{Claims, Role, TokenKey};

/// Errors of the service, one per HTTP status of the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuizError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    Unavailable(String),
}

impl QuizError {
    pub fn code(&self) -> &'static str {
        match self {
            QuizError::Invalid(_) => "invalid",
            QuizError::Unauthorized(_) => "unauthorized",
            QuizError::Forbidden(_) => "forbidden",
            QuizError::NotFound(_) => "not_found",
            QuizError::Conflict(_) => "conflict",
            QuizError::TooLarge(_) => "too_large",
            QuizError::RateLimited(_) => "rate_limited",
            QuizError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<StoreError> for QuizError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => QuizError::Conflict(m),
            StoreError::NotFound(m) => QuizError::NotFound(m),
            StoreError::Unavailable(m) => QuizError::Unavailable(format!("store: {m}")),
        }
    }
}

// ------------------------------------------------------------- pure rules

/// `1–64` chars of `[A-Za-z0-9_-]`.
pub fn valid_quiz_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The characters of generated ids (random and derived alike).
pub(crate) const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `n` random lowercase alphanumerics (quiz ids: 8; player ids: 12).
pub fn random_id(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())] as char)
        .collect()
}

/// An `Idempotency-Key` header value: 1–64 visible ASCII characters
/// (0x21–0x7E), returned as a `&str`.
pub fn check_idempotency_key(key: &[u8]) -> Result<&str, QuizError> {
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    if !(1..=64).contains(&key.len()) || !key.iter().all(visible) {
        return Err(QuizError::Invalid(
            "Idempotency-Key: must be 1–64 visible ASCII characters (0x21–0x7E)".into(),
        ));
    }
    // All ASCII, so valid UTF-8.
    std::str::from_utf8(key)
        .map_err(|_| QuizError::Invalid("Idempotency-Key: must be ASCII".into()))
}

fn nickname_taken(nickname: &str) -> QuizError {
    QuizError::Conflict(format!("nickname: {nickname:?} is taken in this quiz"))
}

/// The contract's scoring rule: `round(P × (1 − (t/T)/2))`, `t` = 0 when
/// ≤ 500 ms, clamped to `T`. Integer arithmetic, rounding half up.
pub fn score(points: u32, time_limit_ms: u64, response_ms: u64) -> u32 {
    if time_limit_ms == 0 {
        return points;
    }
    let t = if response_ms <= 500 {
        0
    } else {
        response_ms.min(time_limit_ms)
    } as u128;
    let (p, tl) = (u128::from(points), u128::from(time_limit_ms));
    // P·(2T − t) / (2T), rounded: (2·x + y) / (2·y) with x = P·(2T − t), y = 2T.
    let x = p * (2 * tl - t);
    let y = 2 * tl;
    ((2 * x + y) / (2 * y)) as u32
}

/// Sorted, deduplicated choices; `None` if empty or an index is out of range.
pub fn normalize_choices(choices: &[u32], option_count: usize) -> Option<Vec<u32>> {
    if choices.is_empty() || choices.iter().any(|&c| c as usize >= option_count) {
        return None;
    }
    let mut v = choices.to_vec();
    v.sort_unstable();
    v.dedup();
    Some(v)
}

/// Validates a create request into a definition (named-field errors).
pub fn validate_quiz(
    req: CreateQuizReq,
    quiz_id: String,
    now: Millis,
) -> Result<QuizDef, QuizError> {
    let inv = |m: String| Err(QuizError::Invalid(m));
    let title = req.title.trim().to_string();
    if title.is_empty() || title.chars().count() > 200 {
        return inv("title: must be 1–200 characters".into());
    }
    if req.questions.is_empty() || req.questions.len() > 200 {
        return inv("questions: must hold 1–200 questions".into());
    }
    let mut questions = Vec::with_capacity(req.questions.len());
    for (i, q) in req.questions.into_iter().enumerate() {
        let f = |field: &str| format!("questions[{i}].{field}");
        if q.text.trim().is_empty() || q.text.chars().count() > 1000 {
            return inv(format!("{}: must be 1–1000 characters", f("text")));
        }
        if !(2..=6).contains(&q.options.len()) {
            return inv(format!("{}: must hold 2–6 options", f("options")));
        }
        if let Some(j) = q
            .options
            .iter()
            .position(|o| o.trim().is_empty() || o.chars().count() > 200)
        {
            return inv(format!("{}[{j}]: must be 1–200 characters", f("options")));
        }
        let Some(correct) = normalize_choices(&q.correct, q.options.len()) else {
            return inv(format!(
                "{}: must hold 1 or more indices into options",
                f("correct")
            ));
        };
        if !(5000..=240_000).contains(&q.time_limit_ms) {
            return inv(format!("{}: must be 5000–240000", f("time_limit_ms")));
        }
        if ![0, 1000, 2000].contains(&q.points) {
            return inv(format!("{}: must be 0, 1000 or 2000", f("points")));
        }
        questions.push(Question {
            id: i as u32,
            index: i as u32,
            text: q.text,
            options: q.options,
            correct,
            time_limit_ms: q.time_limit_ms,
            points: q.points,
        });
    }
    Ok(QuizDef {
        quiz_id,
        title,
        mode: req.mode,
        questions,
        created_at_ms: now,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAction {
    Start,
    Next,
    End,
}

/// The state machine. Live: `start` opens question 0, `next` opens the
/// following one (closing the open one), `end` ends (closing the open one
/// now). Self-paced: `start` lets players in (each gets questions one by
/// one), `next` is a conflict, `end` ends.
pub fn transition(
    def: &QuizDef,
    s: &QuizState,
    action: HostAction,
    now: Millis,
) -> Result<QuizState, QuizError> {
    let conflict = |m: &str| Err(QuizError::Conflict(m.to_string()));
    let mut next = s.clone();
    next.version = s.version + 1;
    let open = |next: &mut QuizState, q: u32| {
        next.current_question = Some(q);
        next.opens_at_ms = Some(now);
        next.closes_at_ms = Some(now + def.questions[q as usize].time_limit_ms);
    };
    match (action, s.phase, def.mode) {
        (HostAction::Start, Phase::Lobby, Mode::Live) => {
            next.phase = Phase::Running;
            open(&mut next, 0);
        }
        (HostAction::Start, Phase::Lobby, Mode::SelfPaced) => next.phase = Phase::Running,
        (HostAction::Start, _, _) => return conflict("state: the quiz has already started"),
        (HostAction::Next, Phase::Running, Mode::Live) => {
            let q = s.current_question.map_or(0, |q| q + 1);
            if q as usize >= def.questions.len() {
                return conflict("state: no more questions; end the quiz");
            }
            open(&mut next, q);
        }
        (HostAction::Next, _, Mode::SelfPaced) => {
            return conflict("mode: a self-paced quiz has no `next`")
        }
        (HostAction::Next, _, _) => return conflict("state: the quiz is not running"),
        (HostAction::End, Phase::Ended, _) => return conflict("state: the quiz has already ended"),
        (HostAction::End, _, _) => {
            next.phase = Phase::Ended;
            if let Some(c) = next.closes_at_ms {
                next.closes_at_ms = Some(c.min(now));
            }
        }
    }
    Ok(next)
}

/// When a question is open for answers, as far as one answer is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    NotOpen,
    /// `opens_at` is `None` when unknown (a live question no longer current).
    Open {
        opens_at: Option<Millis>,
        closes_at: Millis,
    },
}

/// Live mode: the window of `question_id` given the quiz state.
pub fn live_window(s: &QuizState, question_id: u32) -> Window {
    match (s.phase, s.current_question) {
        (Phase::Lobby, _) | (_, None) => Window::NotOpen,
        (_, Some(cur)) if question_id > cur => Window::NotOpen,
        (_, Some(cur)) if question_id < cur => Window::Open {
            opens_at: None,
            closes_at: 0,
        },
        // `end` already clamped `closes_at` to the end time.
        (_, Some(_)) => Window::Open {
            opens_at: s.opens_at_ms,
            closes_at: s.closes_at_ms.unwrap_or(0),
        },
    }
}

// ----------------------------------------------------------------- service

/// The player or host behind a connection.
#[derive(Debug, Clone)]
pub struct Caller {
    pub claims: Claims,
    /// Players only.
    pub nickname: String,
}

/// The node's shared state.
pub struct QuizService {
    pub config: Arc<Config>,
    pub store: Arc<dyn QuizStore>,
    pub sink: Arc<dyn EventSink>,
    pub bus: Arc<dyn ControlBus>,
    pub tokens: TokenKey,
    pub metrics: Arc<Metrics>,
    pub rooms: Rooms,
    pub post_limiter: crate::http::IpLimiter,
    /// Immutable quiz definitions, cached (bounded: cleared past 10 000).
    defs: DashMap<String, Arc<QuizDef>>,
    /// The answer path's view of each quiz's state, so that an answer does
    /// not cost a store read. Refreshed by this node's host actions and by
    /// the control bus (see [`QuizService::state_changed`]); never trusted
    /// blindly: answers are applied with the version they were scored
    /// against (`apply_answer_at_state`), and a rejection that depends on
    /// the state is re-checked against a fresh read. Bounded like `defs`.
    states: DashMap<String, QuizState>,
}

const DEF_CACHE_MAX: usize = 10_000;
/// Re-scorings of one answer after the state moved under it. Host actions
/// are seconds apart, so a second miss means something is wrong.
const STALE_RETRIES: usize = 3;

impl QuizService {
    /// Builds the backends the config selects.
    pub async fn build(config: Arc<Config>) -> anyhow::Result<Arc<QuizService>> {
        let metrics = Arc::new(Metrics::new(&config.node_name));
        let (store, sink, bus) = crate::backends(&config).await?;
        Ok(Self::with_backends(config, store, sink, bus, metrics))
    }

    pub fn with_backends(
        config: Arc<Config>,
        store: Arc<dyn QuizStore>,
        sink: Arc<dyn EventSink>,
        bus: Arc<dyn ControlBus>,
        metrics: Arc<Metrics>,
    ) -> Arc<QuizService> {
        let secret = if config.token_secret.is_empty() {
            tracing::warn!(
                "token_secret is empty: using a random one (tokens die with this process)"
            );
            random_id(32)
        } else {
            config.token_secret.clone()
        };
        let store: Arc<dyn QuizStore> = Arc::new(MeteredStore::new(store, Arc::clone(&metrics)));
        Arc::new(QuizService {
            post_limiter: crate::http::IpLimiter::new(
                config.http_post_rate_per_sec,
                config.http_post_burst,
            ),
            tokens: TokenKey::new(secret.as_bytes()),
            rooms: Rooms::new(Arc::clone(&metrics)),
            defs: DashMap::new(),
            states: DashMap::new(),
            config,
            store,
            sink,
            bus,
            metrics,
        })
    }

    /// Publishes an event and waits for it to be durable.
    pub async fn publish(&self, event: Event) -> Result<(), QuizError> {
        let start = std::time::Instant::now();
        let r = self.sink.publish(&event).await;
        self.metrics
            .sink_seconds
            .observe(start.elapsed().as_secs_f64());
        r.map_err(|e| {
            self.metrics.sink_errors.inc();
            tracing::warn!(event_id = %event.event_id, error = %e, "event publish failed");
            QuizError::Unavailable(format!("event log: {e}"))
        })
    }

    fn require_sink_ready(&self) -> Result<(), QuizError> {
        if self.sink.ready() {
            Ok(())
        } else {
            Err(QuizError::Unavailable("event log not ready".into()))
        }
    }

    /// A quiz definition (cached: definitions never change).
    pub async fn def(&self, quiz_id: &str) -> Result<Arc<QuizDef>, QuizError> {
        if let Some(d) = self.defs.get(quiz_id) {
            return Ok(Arc::clone(d.value()));
        }
        if !valid_quiz_id(quiz_id) {
            return Err(QuizError::NotFound(format!("quiz_id: no quiz {quiz_id:?}")));
        }
        let def = self
            .store
            .get_quiz(quiz_id)
            .await?
            .ok_or_else(|| QuizError::NotFound(format!("quiz_id: no quiz {quiz_id:?}")))?;
        if self.defs.len() >= DEF_CACHE_MAX {
            self.defs.clear();
        }
        self.defs.insert(quiz_id.to_string(), Arc::clone(&def));
        Ok(def)
    }

    /// The quiz's state, read from the store (and remembered for answers).
    pub async fn state(&self, quiz_id: &str) -> Result<QuizState, QuizError> {
        let s = self
            .store
            .get_state(quiz_id)
            .await?
            .ok_or_else(|| QuizError::NotFound(format!("quiz_id: no quiz {quiz_id:?}")))?;
        self.remember_state(quiz_id, &s);
        Ok(s)
    }

    /// The answer path's state: the cached one, or a store read.
    async fn cached_state(&self, quiz_id: &str) -> Result<QuizState, QuizError> {
        if let Some(s) = self.states.get(quiz_id) {
            return Ok(s.value().clone());
        }
        self.state(quiz_id).await
    }

    /// Keeps `s` if it is newer than the cached state (versions only grow).
    fn remember_state(&self, quiz_id: &str, s: &QuizState) {
        if let Some(mut cur) = self.states.get_mut(quiz_id) {
            if cur.version < s.version {
                *cur = s.clone();
            }
            return;
        }
        if self.states.len() >= DEF_CACHE_MAX {
            self.states.clear();
        }
        self.states.insert(quiz_id.to_string(), s.clone());
    }

    /// A control-bus notification: the quiz is now at `version`. A cached
    /// older state is dropped (the next answer reads the store).
    /// `version` `None` (the bus lagged: anything may have changed) drops
    /// every cached state.
    pub fn state_changed(&self, quiz_id: Option<&str>, version: Option<u64>) {
        match (quiz_id, version) {
            (Some(q), Some(v)) => {
                self.states.remove_if(q, |_, s| s.version < v);
            }
            _ => self.states.clear(),
        }
    }

    pub async fn create_quiz(
        &self,
        req: CreateQuizReq,
    ) -> Result<(Arc<QuizDef>, String), QuizError> {
        self.require_sink_ready()?;
        let supplied = req.quiz_id.clone();
        if let Some(id) = &supplied {
            if !valid_quiz_id(id) {
                return Err(QuizError::Invalid(
                    "quiz_id: must be 1–64 characters of [A-Za-z0-9_-]".into(),
                ));
            }
        }
        let now = now_ms();
        let mut def = validate_quiz(req, supplied.clone().unwrap_or_else(|| random_id(8)), now)?;
        let state = QuizState::new_lobby();
        let mut attempt = 0;
        loop {
            match self.store.create_quiz(&def, &state).await {
                Ok(()) => break,
                Err(StoreError::Conflict(_)) if supplied.is_none() && attempt < 5 => {
                    attempt += 1;
                    def.quiz_id = random_id(8);
                }
                Err(StoreError::Conflict(_)) => {
                    return Err(QuizError::Conflict(format!(
                        "quiz_id: {:?} is taken",
                        def.quiz_id
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.publish(Event::new(
            &def.quiz_id,
            now,
            EventKind::QuizCreated {
                title: def.title.clone(),
                mode: def.mode,
                questions: def.questions.clone(),
            },
        ))
        .await?;
        let host_token = self.tokens.sign(&Claims {
            quiz_id: def.quiz_id.clone(),
            role: Role::Host,
            player_id: String::new(),
        });
        let def = Arc::new(def);
        self.defs.insert(def.quiz_id.clone(), Arc::clone(&def));
        Ok((def, host_token))
    }

    /// Embedded mode: the quiz `demo` (live, three questions); logs its host
    /// token. Idempotent.
    pub async fn create_demo_quiz(&self) -> anyhow::Result<()> {
        let req: CreateQuizReq = serde_json::from_value(serde_json::json!({
            "title": "Demo quiz",
            "mode": "live",
            "quiz_id": "demo",
            "questions": [
                {"text": "What is 2 + 2?", "options": ["3", "4", "5"], "correct": [1],
                 "time_limit_ms": 20000, "points": 1000},
                {"text": "Which are prime?", "options": ["2", "4", "7", "9"], "correct": [0, 2],
                 "time_limit_ms": 30000, "points": 2000},
                {"text": "Rust's package manager?", "options": ["npm", "cargo", "pip"],
                 "correct": [1], "time_limit_ms": 15000, "points": 1000}
            ]
        }))?;
        match self.create_quiz(req).await {
            Ok((def, host_token)) => {
                tracing::info!(quiz_id = %def.quiz_id, %host_token, "demo quiz created");
                Ok(())
            }
            Err(QuizError::Conflict(_)) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("creating the demo quiz: {e}")),
        }
    }

    pub async fn join(
        &self,
        quiz_id: &str,
        nickname: &str,
    ) -> Result<(Arc<QuizDef>, QuizState, Player, String, Leaderboard), QuizError> {
        self.join_with_key(quiz_id, nickname, None).await
    }

    /// Joins a player. With an idempotency key (the `Idempotency-Key`
    /// header), the player id is derived from it
    /// ([`TokenKey::derive_player_id`]) instead of drawn at random, so a
    /// retry of a join whose response was lost finds the player the first
    /// attempt created and answers exactly like that first join (same id,
    /// same token; the store is not written again, so the score is kept).
    /// The `PlayerJoined` event is published again on a replay (same event
    /// id): the first attempt may have died between the store write and the
    /// publish. The same key with another nickname, or another key with a
    /// taken nickname, is a conflict.
    pub async fn join_with_key(
        &self,
        quiz_id: &str,
        nickname: &str,
        idempotency_key: Option<&[u8]>,
    ) -> Result<(Arc<QuizDef>, QuizState, Player, String, Leaderboard), QuizError> {
        let def = self.def(quiz_id).await?;
        self.require_sink_ready()?;
        let nickname = nickname.trim();
        if nickname.is_empty() || nickname.chars().count() > 24 {
            return Err(QuizError::Invalid(
                "nickname: must be 1–24 characters after trimming".into(),
            ));
        }
        if nickname.chars().any(char::is_control) {
            return Err(QuizError::Invalid(
                "nickname: must not contain control characters".into(),
            ));
        }
        let key = idempotency_key.map(check_idempotency_key).transpose()?;
        let state = self.state(quiz_id).await?;
        if state.phase == Phase::Ended {
            return Err(QuizError::Conflict("state: the quiz has ended".into()));
        }
        let player_id = match key {
            Some(k) => self.tokens.derive_player_id(quiz_id, k),
            None => random_id(12),
        };
        let player = Player {
            player_id,
            nickname: nickname.to_string(),
            joined_at_ms: now_ms(),
        };
        // Both stores answer `Conflict` when the player id exists (unless the
        // stored player is identical), before looking at the nickname, and
        // never overwrite an existing player: a replay cannot create a
        // second player or reset a score.
        let player = match self.store.add_player(quiz_id, &player).await {
            Ok(()) => player,
            Err(StoreError::Conflict(_)) if key.is_some() => {
                self.replayed_join(quiz_id, &player).await?
            }
            Err(StoreError::Conflict(_)) => return Err(nickname_taken(nickname)),
            Err(e) => return Err(e.into()),
        };
        self.publish(Event::new(
            quiz_id,
            player.joined_at_ms,
            EventKind::PlayerJoined {
                player_id: player.player_id.clone(),
                nickname: player.nickname.clone(),
            },
        ))
        .await?;
        let token = self.tokens.sign(&Claims {
            quiz_id: quiz_id.to_string(),
            role: Role::Player,
            player_id: player.player_id.clone(),
        });
        let lb = self
            .store
            .leaderboard(quiz_id, self.config.leaderboard_top)
            .await?;
        Ok((def, state, player, token, lb))
    }

    /// A keyed join hit a conflict: the player this key created before
    /// (same derived id, same nickname) is a replay and is returned as
    /// stored (its original join time, so the re-published event is the
    /// same record); anything else is a 409.
    async fn replayed_join(&self, quiz_id: &str, attempt: &Player) -> Result<Player, QuizError> {
        match self.store.get_player(quiz_id, &attempt.player_id).await? {
            Some(existing) if existing.nickname == attempt.nickname => {
                self.metrics.joins_replayed.inc();
                Ok(existing)
            }
            Some(_) => Err(QuizError::Conflict(
                "Idempotency-Key: already used in this quiz by a join with another nickname".into(),
            )),
            // The key is new; the nickname belongs to someone else.
            None => Err(nickname_taken(&attempt.nickname)),
        }
    }

    /// Verifies a host's bearer token for `quiz_id`: 401 if absent or
    /// forged, 403 if valid but not this quiz's host.
    pub fn authorize_host(&self, quiz_id: &str, bearer: Option<&str>) -> Result<(), QuizError> {
        let token = bearer.ok_or_else(|| {
            QuizError::Unauthorized("authorization: a host bearer token is required".into())
        })?;
        let claims = self
            .tokens
            .verify(token)
            .map_err(|e| QuizError::Unauthorized(format!("authorization: {e}")))?;
        if claims.role != Role::Host || claims.quiz_id != quiz_id {
            return Err(QuizError::Forbidden(
                "authorization: not the host token of this quiz".into(),
            ));
        }
        Ok(())
    }

    pub async fn host_action(
        &self,
        quiz_id: &str,
        action: HostAction,
    ) -> Result<(Arc<QuizDef>, QuizState), QuizError> {
        let def = self.def(quiz_id).await?;
        self.require_sink_ready()?;
        let state = self.state(quiz_id).await?;
        let now = now_ms();
        let next = transition(&def, &state, action, now)?;
        if !self.store.set_state(quiz_id, state.version, &next).await? {
            return Err(QuizError::Conflict(
                "state: changed concurrently; retry".into(),
            ));
        }
        self.remember_state(quiz_id, &next);
        if action == HostAction::Start {
            self.publish(Event::new(quiz_id, now, EventKind::QuizStarted))
                .await?;
        }
        match action {
            HostAction::Start | HostAction::Next if def.mode == Mode::Live => {
                if let (Some(q), Some(o), Some(c)) =
                    (next.current_question, next.opens_at_ms, next.closes_at_ms)
                {
                    self.publish(Event::new(
                        quiz_id,
                        now,
                        EventKind::QuestionOpened {
                            question_id: q,
                            opens_at_ms: o,
                            closes_at_ms: c,
                        },
                    ))
                    .await?;
                }
            }
            HostAction::End => {
                let top = self
                    .store
                    .leaderboard(quiz_id, self.config.leaderboard_top)
                    .await?
                    .top;
                self.publish(Event::new(quiz_id, now, EventKind::QuizEnded { top }))
                    .await?;
            }
            _ => {}
        }
        self.announce(quiz_id, next.version).await;
        Ok((def, next))
    }

    /// Tells every node (this one included) that the quiz changed.
    pub async fn announce(&self, quiz_id: &str, version: u64) {
        self.rooms.wake(quiz_id);
        if let Err(e) = self
            .bus
            .publish(Changed {
                quiz_id: quiz_id.to_string(),
                version,
            })
            .await
        {
            // Other nodes still catch up on their periodic reconcile.
            tracing::warn!(quiz_id, error = %e, "control bus publish failed");
        }
    }

    /// Self-paced: the question a player is on, with when it was first sent
    /// to them: the first question neither answered nor expired. `None`
    /// when they are through. Sets the send time of that question.
    ///
    /// The walk starts at question `from`: pass a question this function
    /// returned earlier for the same player (every question before it was
    /// then answered or expired, and stays so), the one after a question
    /// just answered, or 0. Walking from 0 after every answer cost one
    /// store round trip per question already answered (measured: ~600
    /// answers/s end to end on the dev machine). Each step is one
    /// `present_question` (answered? else set-once send time), which the
    /// Redis store coalesces with the quiz's other writes.
    pub async fn self_paced_current(
        &self,
        def: &QuizDef,
        player_id: &str,
        from: u32,
        now: Millis,
    ) -> Result<Option<(u32, Millis)>, QuizError> {
        for q in def.questions.iter().skip(from as usize) {
            let Some(sent) = self
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

    /// One answer of a player. `presented` (self-paced only) is the highest
    /// question this connection has shown the player, with the time it was
    /// first sent to them. `Err` means "not acknowledged": the client gets
    /// an `error` message and may retry.
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
        let outcome = match &r {
            Ok(a) if a.accepted => "accepted",
            Ok(a) => a.reason.as_deref().unwrap_or("rejected"),
            Err(_) => "unavailable",
        };
        self.metrics.answers.with_label_values(&[outcome]).inc();
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
        let reject = |reason: &str| {
            let mut res = AnswerResult::new(question_id);
            res.reason = Some(reason.to_string());
            res
        };
        let Some(question) = def.questions.get(question_id as usize) else {
            return self
                .with_standing(quiz_id, player_id, reject("invalid"))
                .await;
        };
        let Some(choices) = normalize_choices(choices, question.options.len()) else {
            return self
                .with_standing(quiz_id, player_id, reject("invalid"))
                .await;
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
            let window = match def.mode {
                Mode::Live => live_window(&state, question_id),
                Mode::SelfPaced => match (state.phase, presented) {
                    (Phase::Lobby, _) | (_, None) => Window::NotOpen,
                    (_, Some((p, _))) if question_id > p => Window::NotOpen,
                    (phase, Some((p, sent_p))) => {
                        // The question on screen: its send time came with
                        // it. An earlier one (rare: answered after the
                        // next was shown) is read from the store.
                        let sent = if question_id == p {
                            sent_p
                        } else {
                            self.store
                                .question_sent_at(quiz_id, player_id, question_id, now)
                                .await?
                        };
                        let closes = sent.saturating_add(question.time_limit_ms);
                        Window::Open {
                            opens_at: Some(sent),
                            closes_at: if phase == Phase::Ended {
                                closes.min(now)
                            } else {
                                closes
                            },
                        }
                    }
                },
            };
            let (opens_at, closes_at) = match window {
                Window::NotOpen if !fresh => {
                    fresh = true;
                    continue;
                }
                Window::NotOpen => {
                    // A re-send of an answer that was recorded (its client
                    // lost the result with a connection, possibly because
                    // a node died between the store and the event log) is
                    // a duplicate wherever the quiz is now: self-paced
                    // after the player's last question or after the end,
                    // where nothing is presented to this connection. Only
                    // an existing answer turns `not_open` into
                    // `duplicate`; a new one is refused as before.
                    if let Some(original) = self
                        .store
                        .get_answer(quiz_id, player_id, question_id)
                        .await?
                    {
                        return self.resent_duplicate(quiz_id, original).await;
                    }
                    return self
                        .with_standing(quiz_id, player_id, reject("not_open"))
                        .await;
                }
                Window::Open {
                    opens_at,
                    closes_at,
                } => (opens_at, closes_at),
            };
            let late = now >= closes_at;
            let response_ms = match opens_at {
                Some(o) => now.saturating_sub(o),
                None => question.time_limit_ms,
            };
            let correct = choices == question.correct;
            let points = if correct && !late {
                score(question.points, question.time_limit_ms, response_ms)
            } else {
                0
            };
            let record = AnswerRecord {
                player_id: player_id.clone(),
                nickname: caller.nickname.clone(),
                question_id,
                choices: choices.clone(),
                correct,
                late,
                points,
                response_ms,
                answered_at_ms: now,
            };
            let Some(outcome) = self
                .store
                .apply_answer_at_state(quiz_id, &record, state.version)
                .await?
            else {
                // The state moved on since we read it: re-read, re-score.
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
                self.rooms.touch(quiz_id);
                res.accepted = !late;
                res.reason = late.then(|| "late".to_string());
                res.correct = correct;
                res.points = points;
                res.score = score;
                res.rank = rank;
            }
            ApplyOutcome::Duplicate {
                original,
                score,
                rank,
            } => {
                // Idempotent re-publish of the answer that counted: if an
                // earlier node crashed between the store and the event log,
                // this is what puts the event in the log.
                res.correct = original.correct;
                res.points = original.points;
                let at = original.answered_at_ms;
                self.publish(Event::new(
                    quiz_id,
                    at,
                    EventKind::AnswerScored {
                        answer: original,
                        score_after: score,
                    },
                ))
                .await?;
                res.reason = Some("duplicate".into());
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
        let outcome = ApplyOutcome::Duplicate {
            original,
            score,
            rank,
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

    /// Readiness: store reachable and sink accepting.
    pub async fn ready(&self) -> Result<(), String> {
        if !self.sink.ready() {
            return Err("event sink not ready".into());
        }
        match tokio::time::timeout(std::time::Duration::from_secs(2), self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("store ping timed out".into()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::QuestionReq;

    fn def(mode: Mode) -> QuizDef {
        let q = |i| QuestionReq {
            text: format!("q{i}"),
            options: vec!["a".into(), "b".into(), "c".into()],
            correct: vec![1],
            time_limit_ms: 10_000,
            points: 1000,
        };
        validate_quiz(
            CreateQuizReq {
                title: "t".into(),
                mode,
                quiz_id: None,
                questions: vec![q(0), q(1)],
            },
            "qz".into(),
            0,
        )
        .unwrap()
    }

    #[test]
    fn scoring_rule() {
        assert_eq!(score(1000, 10_000, 0), 1000);
        assert_eq!(score(1000, 10_000, 500), 1000);
        assert_eq!(score(1000, 10_000, 501), 975); // 1000·(1 − 0.02505) = 974.95
        assert_eq!(score(1000, 10_000, 5000), 750);
        assert_eq!(score(1000, 10_000, 10_000), 500);
        assert_eq!(score(1000, 10_000, 99_999), 500);
        assert_eq!(score(2000, 5000, 1000), 1800);
        assert_eq!(score(0, 5000, 1000), 0);
        // Half rounds up: 1000·(1 − 0.0501/2)... exact half at t = 5 ms of T = 1000 is 997.5
        assert_eq!(score(1000, 1000, 501), 750);
    }

    #[test]
    fn ids() {
        assert!(valid_quiz_id("a"));
        assert!(valid_quiz_id(&"x".repeat(64)));
        assert!(!valid_quiz_id(&"x".repeat(65)));
        assert!(!valid_quiz_id(""));
        assert!(!valid_quiz_id("a.b"));
        let id = random_id(8);
        assert_eq!(id.len(), 8);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }

    #[test]
    fn validation_names_fields() {
        let mut req = CreateQuizReq {
            title: "t".into(),
            mode: Mode::Live,
            quiz_id: None,
            questions: vec![QuestionReq {
                text: "x".into(),
                options: vec!["a".into()],
                correct: vec![0],
                time_limit_ms: 5000,
                points: 1000,
            }],
        };
        let e = validate_quiz(req, "q".into(), 0).unwrap_err();
        assert!(e.to_string().contains("questions[0].options"), "{e}");
        req = CreateQuizReq {
            title: "t".into(),
            mode: Mode::Live,
            quiz_id: None,
            questions: vec![QuestionReq {
                text: "x".into(),
                options: vec!["a".into(), "b".into()],
                correct: vec![0],
                time_limit_ms: 4999,
                points: 1000,
            }],
        };
        let e = validate_quiz(req, "q".into(), 0).unwrap_err();
        assert!(e.to_string().contains("time_limit_ms"), "{e}");
    }

    #[test]
    fn live_state_machine() {
        let d = def(Mode::Live);
        let s0 = QuizState::new_lobby();
        assert!(transition(&d, &s0, HostAction::Next, 0).is_err());
        let s1 = transition(&d, &s0, HostAction::Start, 1000).unwrap();
        assert_eq!(s1.version, 2);
        assert_eq!(s1.current_question, Some(0));
        assert_eq!(s1.closes_at_ms, Some(11_000));
        assert!(transition(&d, &s1, HostAction::Start, 0).is_err());
        let s2 = transition(&d, &s1, HostAction::Next, 2000).unwrap();
        assert_eq!(s2.current_question, Some(1));
        assert!(matches!(
            transition(&d, &s2, HostAction::Next, 0),
            Err(QuizError::Conflict(_))
        ));
        let s3 = transition(&d, &s2, HostAction::End, 3000).unwrap();
        assert_eq!(s3.phase, Phase::Ended);
        assert_eq!(s3.closes_at_ms, Some(3000));
        assert!(transition(&d, &s3, HostAction::End, 0).is_err());
        // Windows.
        assert_eq!(live_window(&s0, 0), Window::NotOpen);
        assert_eq!(
            live_window(&s2, 1),
            Window::Open {
                opens_at: Some(2000),
                closes_at: 12_000
            }
        );
        assert!(matches!(
            live_window(&s2, 0),
            Window::Open { closes_at: 0, .. }
        ));
        assert_eq!(live_window(&s1, 1), Window::NotOpen);
    }

    #[test]
    fn self_paced_state_machine() {
        let d = def(Mode::SelfPaced);
        let s1 = transition(&d, &QuizState::new_lobby(), HostAction::Start, 5).unwrap();
        assert_eq!(s1.phase, Phase::Running);
        assert_eq!(s1.current_question, None);
        assert!(transition(&d, &s1, HostAction::Next, 5).is_err());
    }

    #[test]
    fn idempotency_keys() {
        for ok in [
            "a",
            "3f2b7c1e-0a4d-4e8b-9c6f-2d5e8a1b7c90",
            "!~",
            &"k".repeat(64),
        ] {
            assert_eq!(check_idempotency_key(ok.as_bytes()), Ok(ok), "{ok}");
        }
        for bad in [
            &b""[..],
            b"has space",
            b"tab\t",
            b"\x7f",
            "é".as_bytes(),
            &[b'k'; 65],
        ] {
            let e = check_idempotency_key(bad).unwrap_err();
            assert!(e.to_string().contains("Idempotency-Key"), "{e}");
        }
    }

    /// Late answers with deterministic time: the window is computed from
    /// the state and the server clock at receipt.
    #[tokio::test(start_paused = true)]
    async fn late_answer_is_recorded_with_zero_points() {
        let svc = test_service();
        let req: CreateQuizReq = serde_json::from_value(serde_json::json!({
            "title": "t", "mode": "live", "quiz_id": "late1",
            "questions": [{"text": "q", "options": ["a","b"], "correct": [0],
                           "time_limit_ms": 5000, "points": 1000}]
        }))
        .unwrap();
        let (def, _) = svc.create_quiz(req).await.unwrap();
        let (_, _, p, token, _) = svc.join("late1", "ann").await.unwrap();
        let caller = Caller {
            claims: svc.tokens.verify(&token).unwrap(),
            nickname: p.nickname.clone(),
        };
        let r = svc.answer(&def, &caller, 0, &[0], None).await.unwrap();
        assert_eq!(r.reason.as_deref(), Some("not_open"));
        // Open the question with a window already in the past.
        let s = svc.state("late1").await.unwrap();
        let mut next = transition(&def, &s, HostAction::Start, now_ms()).unwrap();
        next.opens_at_ms = Some(now_ms() - 6000);
        next.closes_at_ms = Some(now_ms() - 1000);
        assert!(svc
            .store
            .set_state("late1", s.version, &next)
            .await
            .unwrap());
        let r = svc.answer(&def, &caller, 0, &[0], None).await.unwrap();
        assert!(!r.accepted);
        assert_eq!(r.reason.as_deref(), Some("late"));
        assert_eq!(r.points, 0);
        // The late answer counted as the one answer: now a duplicate.
        let r = svc.answer(&def, &caller, 0, &[0], None).await.unwrap();
        assert_eq!(r.reason.as_deref(), Some("duplicate"));
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
    }

    /// A re-send of a recorded answer where the window says `not_open`
    /// (self-paced: nothing presented to the connection, as after the
    /// player's last question or a reconnect after the end) is a duplicate
    /// with the original's result, and its event is published again; a new
    /// answer there is still `not_open`.
    #[tokio::test]
    async fn resent_answer_outside_the_window_is_a_duplicate() {
        let svc = test_service();
        let req: CreateQuizReq = serde_json::from_value(serde_json::json!({
            "title": "t", "mode": "self_paced", "quiz_id": "resend1",
            "questions": [{"text": "q", "options": ["a","b"], "correct": [0],
                           "time_limit_ms": 5000, "points": 1000},
                          {"text": "r", "options": ["a","b"], "correct": [0],
                           "time_limit_ms": 5000, "points": 1000}]
        }))
        .unwrap();
        let (def, _) = svc.create_quiz(req).await.unwrap();
        let (_, _, p, token, _) = svc.join("resend1", "ann").await.unwrap();
        let caller = Caller {
            claims: svc.tokens.verify(&token).unwrap(),
            nickname: p.nickname.clone(),
        };
        svc.host_action("resend1", HostAction::Start).await.unwrap();
        let shown = svc
            .self_paced_current(&def, &p.player_id, 0, now_ms())
            .await
            .unwrap();
        assert_eq!(shown.map(|(q, _)| q), Some(0));
        let first = svc.answer(&def, &caller, 0, &[0], shown).await.unwrap();
        assert!(first.accepted && first.points > 0, "{first:?}");
        for presented in [None, shown] {
            let again = svc.answer(&def, &caller, 0, &[0], presented).await.unwrap();
            assert_eq!(again.reason.as_deref(), Some("duplicate"), "{again:?}");
            assert_eq!((again.correct, again.points), (true, first.points));
            assert_eq!(again.score, first.score);
        }
        // A new answer outside the window is refused as before.
        let r = svc.answer(&def, &caller, 1, &[0], None).await.unwrap();
        assert_eq!(r.reason.as_deref(), Some("not_open"));
        // The original's event is in the log three times, one id.
        let log = std::fs::read_to_string(&svc.config.event_log).unwrap();
        let id = format!("resend1:answer:{}:0", p.player_id);
        assert_eq!(log.matches(&id).count(), 3, "{log}");
    }

    /// An event sink that is down: never ready, every publish fails.
    struct DownSink;

    #[async_trait::async_trait]
    impl EventSink for DownSink {
        async fn publish(&self, _: &Event) -> Result<(), crate::events::EventError> {
            Err(crate::events::EventError::Backpressure)
        }
        fn ready(&self) -> bool {
            false
        }
        async fn flush(&self, _: std::time::Duration) -> Result<(), crate::events::EventError> {
            Ok(())
        }
    }

    /// Sink not ready: answers are refused with `unavailable` before the
    /// store is touched, joins and host actions too, and readiness fails.
    #[tokio::test]
    async fn sink_down_refuses_before_the_store() {
        let ok = test_service();
        let req: CreateQuizReq = serde_json::from_value(serde_json::json!({
            "title": "t", "mode": "live", "quiz_id": "down1",
            "questions": [{"text": "q", "options": ["a","b"], "correct": [0],
                           "time_limit_ms": 5000, "points": 1000}]
        }))
        .unwrap();
        let (def, _) = ok.create_quiz(req).await.unwrap();
        let (_, _, p, token, _) = ok.join("down1", "ann").await.unwrap();
        ok.host_action("down1", HostAction::Start).await.unwrap();
        // The same store behind a service whose sink is down.
        let down = QuizService::with_backends(
            Arc::clone(&ok.config),
            Arc::clone(&ok.store),
            Arc::new(DownSink),
            Arc::clone(&ok.bus),
            Arc::new(Metrics::new("down")),
        );
        let caller = Caller {
            claims: ok.tokens.verify(&token).unwrap(),
            nickname: p.nickname.clone(),
        };
        let e = down.answer(&def, &caller, 0, &[0], None).await.unwrap_err();
        assert_eq!(e.code(), "unavailable");
        assert!(down
            .store
            .get_answer("down1", &p.player_id, 0)
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            down.join("down1", "bob").await.unwrap_err().code(),
            "unavailable"
        );
        assert_eq!(
            down.host_action("down1", HostAction::End)
                .await
                .unwrap_err()
                .code(),
            "unavailable"
        );
        assert!(down.ready().await.is_err());
        assert!(ok.ready().await.is_ok());
        // The working node still scores the answer.
        let r = ok.answer(&def, &caller, 0, &[0], None).await.unwrap();
        assert!(r.accepted);
    }

    pub(crate) fn test_service() -> Arc<QuizService> {
        let dir = std::env::temp_dir().join(format!("quiz-unit-{}", random_id(8)));
        let cfg = Arc::new(Config {
            event_log: dir.join("events.jsonl"),
            token_secret: "unit-test-secret-0123".into(),
            ..Config::default()
        });
        let sink = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(crate::events::file::FileSink::open(
                    dir.join("events.jsonl"),
                ))
                .unwrap()
        })
        .join()
        .unwrap();
        QuizService::with_backends(
            Arc::clone(&cfg),
            Arc::new(crate::store::memory::MemoryStore::new()),
            Arc::new(sink),
            Arc::new(crate::bus::memory::MemoryBus::new()),
            Arc::new(Metrics::new("unit")),
        )
    }
}
