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
use crate::event_outbox::{EventOutbox, RepairOptions};
use crate::events::{Event, EventKind, EventSink};
use crate::metrics::{MeteredStore, Metrics};
use crate::model::{now_ms, Leaderboard, Mode, Phase, Player, QuizDef, QuizState};
use crate::protocol::CreateQuizReq;
use crate::rules::{
    check_idempotency_key, check_nickname, nickname_taken, random_id, transition, valid_quiz_id,
    validate_quiz, HostAction, Sizing,
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
    /// The event outbox's node side: removes acknowledged events from the
    /// store's pending events and repairs the ones left behind.
    pub event_outbox: Arc<EventOutbox>,
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
        let metrics = Arc::new(Metrics::new());
        let (store, sink, bus, lanes) = crate::backends::select(&config).await?;
        if let Some(lanes) = lanes {
            metrics.watch_lanes(lanes);
        }
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
        let event_outbox = EventOutbox::new(
            Arc::clone(&store),
            Arc::clone(&sink),
            Arc::clone(&metrics),
            RepairOptions {
                grace: std::time::Duration::from_millis(config.event_repair_grace_ms),
                interval: std::time::Duration::from_millis(config.event_repair_interval_ms),
                batch: config.event_repair_batch,
            },
        );
        Arc::new(QuizService {
            event_outbox,
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

    /// Publishes an event and waits for it to be durable. Once it is, its
    /// pending entry in the store is removed (queued, off this path); if it
    /// fails the entry stays and the repair sweep publishes it later.
    pub async fn publish(&self, event: Event) -> Result<(), QuizError> {
        let start = std::time::Instant::now();
        let r = self.sink.publish(&event).await;
        self.metrics
            .sink_seconds
            .observe(start.elapsed().as_secs_f64());
        match r {
            Ok(()) => {
                self.event_outbox.delivered(event);
                Ok(())
            }
            Err(e) => {
                self.event_outbox.touch(&event.quiz_id);
                self.metrics.sink_errors.inc();
                tracing::warn!(event_id = %event.event_id, error = %e, "event publish failed");
                Err(QuizError::Unavailable(format!("event log: {e}")))
            }
        }
    }

    fn require_sink_ready(&self) -> Result<(), QuizError> {
        if self.sink.ready() {
            Ok(())
        } else {
            Err(QuizError::Unavailable("event log not ready".into()))
        }
    }

    /// Publishes `event` only if it is still pending in the store (a replay
    /// of a write whose first attempt may have died before the event log
    /// had it); an event the log acknowledged is not written again.
    async fn republish_if_pending(&self, event: Event) -> Result<(), QuizError> {
        if self
            .store
            .is_pending(&event.quiz_id, &event.event_id)
            .await?
        {
            self.publish(event).await?;
        }
        Ok(())
    }

    /// A quiz definition (cached: definitions never change). Marks the quiz
    /// as served by this node (the repair sweep visits it).
    pub async fn def(&self, quiz_id: &str) -> Result<Arc<QuizDef>, QuizError> {
        if let Some(d) = self.defs.get(quiz_id) {
            self.event_outbox.touch(quiz_id);
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
        self.event_outbox.touch(quiz_id);
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
        self.create_quiz_with_key(req, None).await
    }

    /// Creates a quiz. With an idempotency key (the `Idempotency-Key`
    /// header, only without a `quiz_id` in the request), the quiz id is
    /// derived from the key instead of drawn at random, so a retry of a
    /// create whose response was lost, or whose event could not be
    /// published (503), finds the quiz the first attempt created and
    /// answers like that first create (same id, same host token); its
    /// `quiz_created` event is published again only if still pending. The
    /// same key with another definition is a conflict.
    pub async fn create_quiz_with_key(
        &self,
        req: CreateQuizReq,
        idempotency_key: Option<&[u8]>,
    ) -> Result<(Arc<QuizDef>, String), QuizError> {
        self.require_sink_ready()?;
        let key = idempotency_key.map(check_idempotency_key).transpose()?;
        let supplied = req.quiz_id.clone();
        if let Some(id) = &supplied {
            if !valid_quiz_id(id) {
                return Err(QuizError::Invalid(
                    "quiz_id: must be 1–64 characters of [A-Za-z0-9_-]".into(),
                ));
            }
            if key.is_some() {
                return Err(QuizError::Invalid(
                    "Idempotency-Key: not with a quiz_id (the key chooses the id)".into(),
                ));
            }
        }
        let now = now_ms();
        let id = match (&supplied, key) {
            (Some(id), _) => id.clone(),
            // Same derivation as a keyed join's player id, in a domain no
            // join uses (the empty quiz id is invalid).
            (None, Some(k)) => self.tokens.derive_player_id("", k),
            (None, None) => random_id(8),
        };
        let sizing = Sizing {
            players_per_node: self.config.players_per_node,
            players_per_shard: self.config.players_per_shard,
            max_spread: self.config.max_spread,
            max_shards: self.config.max_shards,
        };
        let mut def = validate_quiz(req, id, now, &sizing)?;
        // The definition travels whole in the `quiz_created` event: past
        // Kafka's message size limit it could be stored but never published.
        let size = serde_json::to_vec(&def).map_or(usize::MAX, |v| v.len());
        if size > self.config.max_quiz_bytes {
            return Err(QuizError::TooLarge(format!(
                "questions: the quiz definition is {size} bytes of JSON, over max_quiz_bytes ({})",
                self.config.max_quiz_bytes
            )));
        }
        let state = QuizState::new_lobby();
        let mut attempt = 0;
        let event = |def: &QuizDef| {
            Event::new(
                &def.quiz_id,
                def.created_at_ms,
                EventKind::QuizCreated {
                    title: def.title.clone(),
                    mode: def.mode,
                    questions: def.questions.clone(),
                },
            )
        };
        let replayed = loop {
            let created = event(&def);
            match self
                .store
                .create_quiz_with_event(&def, &state, Some(&created))
                .await
            {
                Ok(()) => break None,
                Err(StoreError::Conflict(_)) if key.is_some() => {
                    break Some(self.replayed_create(&def).await?);
                }
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
        };
        let def = match replayed {
            Some(stored) => {
                self.republish_if_pending(event(&stored)).await?;
                stored
            }
            None => {
                self.publish(event(&def)).await?;
                Arc::new(def)
            }
        };
        let host_token = self.tokens.sign(
            &Claims {
                quiz_id: def.quiz_id.clone(),
                role: Role::Host,
                player_id: String::new(),
                spread: def.layout.spread,
            },
            def.created_at_ms,
        );
        self.defs.insert(def.quiz_id.clone(), Arc::clone(&def));
        Ok((def, host_token))
    }

    /// A keyed create hit a conflict: the quiz this key created before (same
    /// derived id, same definition but for its creation time) is a replay
    /// and is returned as stored; anything else is a 409.
    async fn replayed_create(&self, attempt: &QuizDef) -> Result<Arc<QuizDef>, QuizError> {
        match self.store.get_quiz(&attempt.quiz_id).await? {
            Some(stored)
                if stored.title == attempt.title
                    && stored.mode == attempt.mode
                    && stored.questions == attempt.questions =>
            {
                Ok(stored)
            }
            _ => Err(QuizError::Conflict(
                "Idempotency-Key: already used by a create with another definition".into(),
            )),
        }
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
    /// id) while it is still pending in the store: the first attempt may
    /// have died between the store write and the publish. The same key with another nickname, or another key with a
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
        let mut player = Player {
            player_id,
            nickname: nickname.to_string(),
            joined_at_ms: now_ms(),
        };
        // Both stores answer `Conflict` when the player id exists (unless the
        // stored player is identical), before looking at the nickname, and
        // never overwrite an existing player: a replay cannot create a
        // second player or reset a score.
        let joined = |p: &Player| {
            Event::new(
                quiz_id,
                p.joined_at_ms,
                EventKind::PlayerJoined {
                    player_id: p.player_id.clone(),
                    nickname: p.nickname.clone(),
                },
            )
        };
        // The event is recorded as pending with the player (the event
        // outbox): if the publish below fails, the repair sweep publishes it.
        let event = joined(&player);
        match self
            .store
            .add_player_with_event(
                quiz_id,
                &player,
                self.config.max_players_per_quiz,
                Some(&event),
            )
            .await
        {
            Ok(()) => self.publish(event).await?,
            Err(StoreError::Conflict(_)) if key.is_some() => {
                let existing = self.replayed_join(quiz_id, &player).await?;
                self.republish_if_pending(joined(&existing)).await?;
                player = existing;
            }
            Err(StoreError::Conflict(_)) => return Err(nickname_taken(nickname)),
            Err(e) => return Err(e.into()),
        };
        // Issued at the join time: a replayed join gets the same token.
        let token = self.tokens.sign(
            &Claims {
                quiz_id: quiz_id.to_string(),
                role: Role::Player,
                player_id: player.player_id.clone(),
                spread: def.layout.spread,
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
        // The change's events, recorded as pending with the state itself
        // (the event outbox): a publish that fails below is repaired by the
        // sweep, so a retried action's 409 loses nothing. The end's top is
        // read just before the end (answers still landing in between are in
        // the players' scores, which is what the persister keeps).
        let mut events = Vec::with_capacity(2);
        if action == HostAction::Start {
            events.push(Event::new(quiz_id, now, EventKind::QuizStarted));
        }
        match action {
            HostAction::Start | HostAction::Next if def.mode == Mode::Live => {
                if let (Some(q), Some(o), Some(c)) =
                    (next.current_question, next.opens_at_ms, next.closes_at_ms)
                {
                    events.push(Event::new(
                        quiz_id,
                        now,
                        EventKind::QuestionOpened {
                            question_id: q,
                            opens_at_ms: o,
                            closes_at_ms: c,
                        },
                    ));
                }
            }
            HostAction::End => {
                let top = self
                    .store
                    .leaderboard(quiz_id, self.config.leaderboard_top)
                    .await?
                    .top;
                events.push(Event::new(quiz_id, now, EventKind::QuizEnded { top }));
            }
            _ => {}
        }
        if !self
            .store
            .set_state_with_events(quiz_id, state.version, &next, &events)
            .await?
        {
            return Err(QuizError::Conflict(
                "state: changed concurrently; retry".into(),
            ));
        }
        self.remember_state(quiz_id, &next);
        let mut published = Ok(());
        for event in events {
            published = self.publish(event).await;
            if published.is_err() {
                break;
            }
        }
        // The state changed whatever the event log said: every node hears of
        // it (the events follow through the sweep if the publish failed).
        self.announce(quiz_id, next.version).await;
        published?;
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
