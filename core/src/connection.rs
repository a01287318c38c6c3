//! One WebSocket connection: authentication, the welcome, and the read loop
//! (the inbound hot path); the writer that drains the connection's
//! [`Outbox`] is in `outbox.rs`, the frame reader in `frame.rs`.
//!
//! Memory: an idle connection should cost a few KB at most, so nothing here
//! keeps a big buffer. fastwebsockets does the HTTP upgrade, but its reader
//! always allocates an 8 KiB read buffer per socket, which we cannot shrink
//! through its API. So after the handshake we take the raw stream back
//! (`into_inner`; on plain TCP the `TcpStream` itself, `socket.rs`), read
//! with the small frame parser (`frame.rs`) over a 256-byte `BufReader`,
//! and write our own server frames (`outbox.rs`, `writev`, no copy
//! buffer). A frame's payload is allocated only while it is being handled,
//! and never above `ws_max_frame_bytes` (4 KiB): the length is checked from
//! the header *before* reading the payload, and a larger frame closes the
//! socket with 1009.
//!
//! Both halves run in one task (`join!`), so a connection costs one task.
//! The reader never writes to the socket itself: replies go through the
//! outbox like everything else (which writes them at once when nothing is
//! queued, or leaves them to the writer), so frames are never interleaved
//! and the writer is the only place that can block on a slow client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::QuizError;
use crate::frame::{linger, read_frame, InFrame, Partial, ReadError};
use crate::gate::{Gated, Slot};
use crate::limit::Rate;
use crate::metrics::AnswerOutcome;
use crate::model::{now_ms, Mode, Phase, QuizDef, QuizState};
use crate::outbox::{close, send_close, uptime_s, write_loop, OutFrame, Outbox};
use crate::protocol::{self, ClientMsg, QuestionMsg, Welcome};
use crate::room::{Member, Membership, Room, Rooms};
use crate::self_paced::{self, Presented};
use crate::service::{Caller, QuizService};
use crate::socket;
use crate::token::{Claims, Role};

/// Bytes of buffered reading per connection.
const READ_BUF: usize = 256;

/// What the reader works with: the connection's quiz, caller, outbox and
/// room, and the node's service.
struct Session<'a> {
    svc: &'a QuizService,
    /// The room this connection is a member of (it stays in the node's
    /// rooms while it has a member): an applied answer touches it directly,
    /// not through a look-up in the rooms' map.
    room: &'a Room,
    def: &'a QuizDef,
    caller: &'a Caller,
    outbox: &'a Outbox,
    presented: &'a Presented,
}

/// The connection task's gated futures (`gate.rs`), one bit each of its
/// outbox's gate: the writer, and the read loop's wait for the close.
enum WriterSlot {}
impl Slot for WriterSlot {
    const BIT: u8 = 1;
}
enum CloseSlot {}
impl Slot for CloseSlot {
    const BIT: u8 = 2;
}

/// The places an upgraded connection holds: its place under
/// `max_connections` (until it closes) and its upgrade admission place
/// (`admission.rs`, until its setup is done).
pub struct Places {
    pub connection: Option<OwnedSemaphorePermit>,
    pub setup: OwnedSemaphorePermit,
}

/// Runs one upgraded connection to completion.
pub async fn serve(
    svc: Arc<QuizService>,
    rooms: Arc<Rooms>,
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    quiz_id: String,
    token: Option<String>,
    shutdown: CancellationToken,
    places: Places,
) {
    // This socket's place under `max_connections`, until it closes.
    let Places {
        connection: _permit,
        setup: admitted,
    } = places;
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    // Plain TCP gives the socket itself, for the outbox's direct writes.
    let (rd, mut writer, tcp) = socket::split(ws.into_inner());
    let metrics = Arc::clone(&svc.metrics);
    metrics.connections.inc();
    let _gauge = scopeguard(move || metrics.connections.dec());

    let (def, caller) = match authenticate(&svc, &quiz_id, token.as_deref()).await {
        Ok(x) => x,
        Err((code, reason)) => {
            svc.metrics
                .ws_closes
                .with_label_values(&[&code.to_string()])
                .inc();
            send_close(&mut writer, code, reason).await;
            linger(&mut BufReader::with_capacity(READ_BUF, rd)).await;
            return;
        }
    };

    let outbox = Arc::new(Outbox::new(
        svc.config.ws_queue_capacity,
        shutdown.child_token(),
    ));
    if let Some(tcp) = tcp {
        outbox.attach(tcp);
    }
    let presented = Arc::new(Presented::default());
    // Welcome first, then join the room, so room messages queue after it.
    let seen = match welcome(&svc, &def, &caller, &outbox, &presented).await {
        Ok(s) => s,
        Err(e) => {
            outbox.push_text(protocol::encode_error(e.code(), &e.to_string()));
            outbox.close(close::INTERNAL, "try again");
            QuizState::new_lobby()
        }
    };
    let is_host = caller.claims.role == Role::Host;
    let membership = rooms.join(
        Arc::clone(&def),
        Member {
            outbox: Arc::clone(&outbox),
            host: is_host,
            player_id: (!is_host).then(|| caller.claims.player_id.clone()),
            presented: Arc::clone(&presented),
        },
        &seen,
    );
    // A host action between the welcome's state read and the join was
    // announced to the room before we were in it: catch up.
    if let Ok(now_state) = svc.state(&def.quiz_id).await {
        if now_state.version != seen.version {
            catch_up(&svc, &def, &caller, &outbox, &presented, &seen, &now_state).await;
        }
    }
    // The upgrade's admission place (`admission.rs`), held through the
    // setup's store reads and the room attach, given back here rather than
    // at close: what the gate protects is the node's store and rooms from
    // a burst of setups (a reconnect storm); an established socket costs
    // no store call until it answers, and answers are not what a
    // reconnecting crowd sends first. The welcome is queued: writing it is
    // the writer's, bounded by `ws_write_timeout_ms` like every frame.
    drop(admitted);
    if def.mode == Mode::SelfPaced && !is_host {
        spawn_expiry(&svc, &def, &caller.claims.player_id, &outbox, &presented);
    }
    let mut rd = BufReader::with_capacity(READ_BUF, rd);
    let session = Session {
        svc: &svc,
        room: &membership.room,
        def: &def,
        caller: &caller,
        outbox: &outbox,
        presented: &presented,
    };
    // The writer is gated: the task's wake-ups for reads and replies do
    // not poll it (`gate.rs`). This join's state is most of every idle
    // connection's task, which sits just under one of the allocator's size
    // classes: a few bytes more here cost 512 per connection
    // (docs/core.md, "Memory per idle WebSocket").
    tokio::join!(
        read_loop(&session, &mut rd),
        Gated::<_, WriterSlot>::new(
            outbox.gate(),
            write_loop(
                &svc.metrics,
                &outbox,
                &mut writer,
                Duration::from_millis(svc.config.ws_write_timeout_ms),
            )
        ),
    );
    rooms.leave(&membership);
    drop::<Membership>(membership);
    // The socket closes with this task, not with the last holder of the
    // outbox (a room tick in progress, the self-paced expiry task).
    outbox.detach();
    if outbox.close_reason().is_some_and(|c| c.code != close::NONE) {
        linger(&mut rd).await;
    }
}

/// Self-paced players only: the expiry timer
/// ([`self_paced::expire_presented`]) in a task of its own rather than a
/// third branch of the connection's join, whose state every idle
/// connection would carry (~380 bytes more per connection, measured, live
/// quizzes included). Ends with the connection.
fn spawn_expiry(
    svc: &Arc<QuizService>,
    def: &Arc<QuizDef>,
    player_id: &str,
    outbox: &Arc<Outbox>,
    presented: &Arc<Presented>,
) {
    let (svc, def, outbox, presented) = (
        Arc::clone(svc),
        Arc::clone(def),
        Arc::clone(outbox),
        Arc::clone(presented),
    );
    let player_id = player_id.to_string();
    tokio::spawn(async move {
        let send = |frame| {
            outbox.push_text(frame);
        };
        let stop = outbox.cancelled();
        self_paced::expire_presented(&svc, &def, &player_id, &presented, stop, send).await
    });
}

/// Token → (quiz, caller), or the close code to send.
/// What an upgrade's token says with nothing read from the store: its MAC,
/// expiry and shape ([`crate::token::TokenKey::verify`]), and that it names
/// the path's quiz. `http.rs` runs it before the 101, so a token that fails
/// here costs no store read, no admission place and no connection task
/// ([`refuse`]). The `Err` is the close code and reason the contract gives
/// the client (4001, with the same reasons as [`serve`]'s own check).
///
/// A token of another quiz is refused here even when the path's quiz does
/// not exist (4001, not 4004): the token names the quiz it may open, so a
/// holder of any token learns nothing about other quiz ids.
pub fn check_token(
    svc: &QuizService,
    quiz_id: &str,
    token: Option<&str>,
) -> Result<Claims, (u16, &'static str)> {
    let claims = token
        .and_then(|t| svc.tokens.verify(t).ok())
        .ok_or((close::BAD_TOKEN, "bad token"))?;
    if claims.quiz_id != quiz_id {
        return Err((close::BAD_TOKEN, "token is for another quiz"));
    }
    Ok(claims)
}

/// Runs one upgraded connection whose token [`check_token`] refused: the
/// contract's close frame (a browser cannot read a failed handshake's
/// status, so a bad token is a 101 then a close with its code) and nothing
/// more. Written by hand on the raw stream: no fastwebsockets writer, no
/// outbox, no read loop, no store call, no room, no admission place — a
/// forged-token flood costs a node this task's few awaits, not a whole
/// connection setup. Holds the socket's `max_connections` place until the
/// socket closes, like every socket.
pub async fn refuse(
    svc: Arc<QuizService>,
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    (code, reason): (u16, &'static str),
    connection: Option<OwnedSemaphorePermit>,
) {
    let _permit = connection;
    let Ok(ws) = upgrade.await else {
        return;
    };
    let mut io = ws.into_inner();
    svc.metrics
        .ws_closes
        .with_label_values(&[&code.to_string()])
        .inc();
    let frame = close_frame(code, reason);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        io.write_all(&frame).await?;
        io.flush().await
    })
    .await;
    linger(&mut io).await;
}

/// A server's (unmasked) close frame: `code`, then `reason` (at most 123
/// bytes, as RFC 6455 allows in a control frame; ours are short constants).
fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut f = Vec::with_capacity(4 + reason.len());
    f.push(0x88);
    f.push((2 + reason.len()) as u8);
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

async fn authenticate(
    svc: &QuizService,
    quiz_id: &str,
    token: Option<&str>,
) -> Result<(Arc<QuizDef>, Caller), (u16, &'static str)> {
    // `http.rs` ran the same check before the 101; run again here (one
    // HMAC, a few µs) rather than pass the claims into [`serve`]: an async
    // fn keeps its arguments for its whole life, so the claims would be
    // carried twice per idle socket (the argument and the caller built
    // from it), three strings where the token is one.
    let claims = check_token(svc, quiz_id, token)?;
    let def = match svc.def(quiz_id).await {
        Ok(d) => d,
        Err(QuizError::NotFound(_)) => return Err((close::UNKNOWN_QUIZ, "unknown quiz")),
        Err(_) => return Err((close::INTERNAL, "store unavailable")),
    };
    let nickname = if claims.role == Role::Player {
        match svc.store.get_player(quiz_id, &claims.player_id).await {
            Ok(Some(p)) => p.nickname,
            Ok(None) => return Err((close::BAD_TOKEN, "unknown player")),
            Err(_) => return Err((close::INTERNAL, "store unavailable")),
        }
    } else {
        String::new()
    };
    Ok((def, Caller { claims, nickname }))
}

/// Sends what changed between the welcome's state `then` and `now`.
async fn catch_up(
    svc: &QuizService,
    def: &QuizDef,
    caller: &Caller,
    outbox: &Outbox,
    presented: &Presented,
    then: &QuizState,
    now: &QuizState,
) {
    match def.mode {
        Mode::Live => {
            if let (Phase::Running, Some(q), Some(o), Some(c)) = (
                now.phase,
                now.current_question,
                now.opens_at_ms,
                now.closes_at_ms,
            ) {
                if then.current_question != Some(q) {
                    if let Some(qd) = def.questions.get(q as usize) {
                        outbox.push_text(protocol::encode(&QuestionMsg::new(qd, o, c)));
                    }
                }
            }
        }
        Mode::SelfPaced => {
            if then.phase == Phase::Lobby
                && now.phase == Phase::Running
                && caller.claims.role == Role::Player
            {
                let player_id = &caller.claims.player_id;
                let r = self_paced::present_next(svc, def, player_id, presented, 0).await;
                send_presented(outbox, r);
            }
        }
    }
    if now.phase == Phase::Ended && then.phase != Phase::Ended {
        if let Ok(lb) = svc
            .store
            .leaderboard(&def.quiz_id, svc.config.leaderboard_top)
            .await
        {
            outbox.push_text(protocol::encode_quiz_ended(&lb.top));
        }
    }
}

async fn welcome(
    svc: &QuizService,
    def: &QuizDef,
    caller: &Caller,
    outbox: &Outbox,
    presented: &Presented,
) -> Result<QuizState, QuizError> {
    let quiz_id = &def.quiz_id;
    let state = svc.state(quiz_id).await?;
    let now = now_ms();
    let is_host = caller.claims.role == Role::Host;
    let player_id = &caller.claims.player_id;
    let (score, rank) = if is_host {
        (0, 0)
    } else {
        svc.store
            .standing(quiz_id, player_id)
            .await?
            .map_or((0, 0), |s| (s.score, s.rank))
    };
    let mut question = None;
    let mut answered = false;
    match def.mode {
        Mode::Live => {
            if let (Phase::Running, Some(q), Some(o), Some(c)) = (
                state.phase,
                state.current_question,
                state.opens_at_ms,
                state.closes_at_ms,
            ) {
                if now < c {
                    if let Some(qd) = def.questions.get(q as usize) {
                        question = Some(QuestionMsg::new(qd, o, c));
                        if !is_host {
                            answered = svc.store.get_answer(quiz_id, player_id, q).await?.is_some();
                        }
                    }
                }
            }
        }
        Mode::SelfPaced => {
            if state.phase == Phase::Running && !is_host {
                question =
                    self_paced::welcome_question(svc, def, player_id, presented, now).await?;
            }
        }
    }
    outbox.push_text(protocol::encode(&Welcome {
        ty: "welcome",
        role: if is_host { "host" } else { "player" },
        player_id: (!is_host).then_some(player_id.as_str()),
        score,
        rank,
        state: state.phase,
        question,
        answered,
    }));
    Ok(state)
}

/// THE READ LOOP. One frame at a time: limits first (size from the header,
/// then rate), then parse, then apply. Client data never panics here: every
/// error becomes an `error` message or a close code.
async fn read_loop<R: AsyncRead + Unpin>(s: &Session<'_>, rd: &mut R) {
    let (svc, outbox) = (s.svc, s.outbox);
    let max = svc.config.ws_max_frame_bytes;
    let rate = Rate::new(svc.config.ws_rate_per_sec, svc.config.ws_rate_burst);
    let mut bucket = rate.full(Instant::now());
    let mut partial = Partial::default();
    // Closed by the writer / room (slow consumer) or by shutdown. Waited on
    // by one future for the connection's life: one made per frame took the
    // token's lock to register and again to deregister, on every frame.
    // Gated: polled only when the token fired, not on every frame's wake.
    let closed = Gated::<_, CloseSlot>::new(outbox.gate(), outbox.cancelled().cancelled());
    tokio::pin!(closed);
    loop {
        let frame = tokio::select! {
            // Checked first (and without drawing a random branch order).
            biased;
            _ = &mut closed => {
                if outbox.close_reason().is_none() {
                    outbox.close(close::GOING_AWAY, "server shutting down");
                }
                return;
            }
            f = read_frame(rd, max, &mut partial) => f,
        };
        // Anything from the client, pongs included, keeps it alive for the
        // room's keepalive sweep.
        outbox.saw_inbound(uptime_s());
        let payload = match frame {
            Ok(InFrame::Text(p)) => p,
            Ok(InFrame::Binary) => {
                if !rate.allow(&mut bucket, Instant::now()) {
                    return outbox.close(close::POLICY, "rate limit exceeded");
                }
                outbox.push_text(protocol::encode_error(
                    "malformed",
                    "binary frames are not supported; send JSON text",
                ));
                continue;
            }
            Ok(InFrame::Ping(p)) => {
                if !rate.allow(&mut bucket, Instant::now()) {
                    return outbox.close(close::POLICY, "rate limit exceeded");
                }
                outbox.push(OutFrame::Pong(Bytes::from(p)));
                continue;
            }
            // Pongs count against the rate like everything else (one
            // answers the server's ping every `ws_ping_interval_ms`).
            Ok(InFrame::Pong) => {
                if !rate.allow(&mut bucket, Instant::now()) {
                    return outbox.close(close::POLICY, "rate limit exceeded");
                }
                continue;
            }
            Ok(InFrame::Close) => return outbox.close(close::NORMAL, ""),
            Err(ReadError::TooBig) => return outbox.close(close::TOO_BIG, "frame too large"),
            Err(ReadError::Protocol(why)) => return outbox.close(close::PROTOCOL, why),
            Err(ReadError::Closed) => return outbox.close(close::NONE, ""),
        };
        if !rate.allow(&mut bucket, Instant::now()) {
            return outbox.close(close::POLICY, "rate limit exceeded");
        }
        // Handling is boxed: its future (store and sink calls) is large and
        // only alive while a message is processed, so an idle connection's
        // task does not carry it.
        Box::pin(handle_text(s, &payload)).await;
    }
}

/// Parses and applies one inbound text message.
async fn handle_text(s: &Session<'_>, payload: &[u8]) {
    // The frame has just been read: an answer's acknowledgement is timed
    // from here (`quiz_answer_ack_seconds`). A wall-clock `Instant`, not
    // tokio's, so a test's paused clock cannot distort it.
    let read_at = std::time::Instant::now();
    let outbox = s.outbox;
    match protocol::parse_client(payload) {
        Ok(ClientMsg::Ping) => {
            outbox.push_text(protocol::encode_pong());
        }
        Ok(ClientMsg::Answer {
            question_id,
            choices,
        }) => answer(s, question_id, &choices, read_at).await,
        Err(e) => {
            outbox.push_text(protocol::encode_error(e.code, &e.message));
        }
    }
}

/// Scores one answer and replies; an applied answer touches the room (its
/// leaderboard is worth reading next tick); self-paced, a recorded answer
/// to the question on screen presents the next one. The time from `read_at`
/// to the reply's queueing is observed by result.
async fn answer(s: &Session<'_>, question_id: u32, choices: &[u32], read_at: std::time::Instant) {
    let (svc, def, outbox) = (s.svc, s.def, s.outbox);
    if s.caller.claims.role == Role::Host {
        outbox.push_text(protocol::encode_error(
            "forbidden",
            "hosts do not answer; connect with a player token",
        ));
        return;
    }
    // What this connection presented matters to a self-paced answer only:
    // a live one is not charged the presentation's lock.
    let p = match def.mode {
        Mode::SelfPaced => s.presented.get(),
        Mode::Live => None,
    };
    let r = svc.answer(def, s.caller, question_id, choices, p).await;
    let outcome = AnswerOutcome::of(&r);
    let res = match r {
        Ok(res) => res,
        Err(e) => {
            outbox.push_text(protocol::encode_error(e.code(), &e.to_string()));
            let secs = read_at.elapsed().as_secs_f64();
            svc.metrics.observe_answer_ack(outcome, secs);
            return;
        }
    };
    if res.applied() {
        s.room.touch();
    }
    outbox.push_text(protocol::encode(&res));
    let secs = read_at.elapsed().as_secs_f64();
    svc.metrics.observe_answer_ack(outcome, secs);
    if def.mode == Mode::SelfPaced && res.recorded() && p.is_some_and(|(q, _)| q == question_id) {
        // The question just answered is recorded: the walk starts after it
        // (one store call, not two).
        let player_id = &s.caller.claims.player_id;
        let r = self_paced::present_next(svc, def, player_id, s.presented, question_id + 1).await;
        send_presented(outbox, r);
    }
}

/// Sends what a self-paced presentation produced: the question (if this
/// call presented one), or the error.
fn send_presented(outbox: &Outbox, presented: Result<Option<Bytes>, QuizError>) {
    match presented {
        Ok(Some(frame)) => {
            outbox.push_text(frame);
        }
        Ok(None) => {}
        Err(e) => {
            outbox.push_text(protocol::encode_error(e.code(), &e.to_string()));
        }
    }
}

/// Runs `f` on drop.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    Guard(Some(f))
}
