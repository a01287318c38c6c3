//! The service: what a request does, from the transport's point of view
//! and without it. [`QuizService`] holds the node's engines (store, event
//! sink, control bus), the token key, the metrics and two caches; its
//! calls create a quiz, join a player, apply a host action and score an
//! answer (`service/answer.rs`). It knows no rooms and no HTTP: a caller
//! that changes what a room shows (a host action, an applied answer) wakes
//! the room itself after the call returns.

use std::sync::Arc;

use dashmap::DashMap;

use crate::bus::{Changed, ControlBus};
use crate::config::Config;
use crate::error::QuizError;
use crate::events::{Event, EventKind, EventSink};
use crate::metrics::{MeteredStore, Metrics};
use crate::model::{now_ms, Leaderboard, Mode, Phase, Player, QuizDef, QuizState};
use crate::protocol::CreateQuizReq;
use crate::rules::{
    check_idempotency_key, check_nickname, nickname_taken, random_id, transition, valid_quiz_id,
    validate_quiz, HostAction,
};
use crate::store::{QuizStore, StoreError};
use crate::token::{Claims, Role, TokenKey};

mod answer;
#[cfg(test)]
pub(crate) mod tests;

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

impl QuizService {
    /// Builds the backends the config selects.
    pub async fn build(config: Arc<Config>) -> anyhow::Result<Arc<QuizService>> {
        let metrics = Arc::new(Metrics::new(&config.node_name));
        let (store, sink, bus) = crate::backends::select(&config).await?;
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
            // A token lives as long as its quiz can: the quiz's keys expire
            // `redis_retention_live_s` after its last change, then
            // `redis_retention_ended_s` after the end.
            tokens: TokenKey::new(
                secret.as_bytes(),
                config
                    .redis_retention_live_s
                    .saturating_add(config.redis_retention_ended_s),
            ),
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
        // The definition travels whole in the `quiz_created` event: past
        // Kafka's message size limit it could be stored but never published.
        let size = serde_json::to_vec(&def).map_or(usize::MAX, |v| v.len());
        if size > self.config.quiz_max_bytes {
            return Err(QuizError::TooLarge(format!(
                "questions: the quiz definition is {size} bytes of JSON, over quiz_max_bytes ({})",
                self.config.quiz_max_bytes
            )));
        }
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
        let host_token = self.tokens.sign(
            &Claims {
                quiz_id: def.quiz_id.clone(),
                role: Role::Host,
                player_id: String::new(),
            },
            def.created_at_ms,
        );
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
        let nickname = check_nickname(nickname)?;
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
        let max = self.config.max_players_per_quiz;
        let player = match self.store.add_player(quiz_id, &player, max).await {
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
        // Issued at the join time: a replayed join gets the same token.
        let token = self.tokens.sign(
            &Claims {
                quiz_id: quiz_id.to_string(),
                role: Role::Player,
                player_id: player.player_id.clone(),
            },
            player.joined_at_ms,
        );
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

    /// Moves the quiz (start / next / end), records the events, and tells
    /// every node on the control bus. The caller wakes this node's room.
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

    /// Tells every node (this one included, through its bus listener) that
    /// the quiz changed. This node's caller also wakes its room at once.
    async fn announce(&self, quiz_id: &str, version: u64) {
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
