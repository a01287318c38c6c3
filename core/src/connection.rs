//! One WebSocket connection: the read loop (the inbound hot path) and the
//! writer that drains the connection's [`Outbox`].
//!
//! Memory: an idle connection should cost a few KB at most, so nothing here
//! keeps a big buffer. fastwebsockets does the HTTP upgrade and writes our
//! frames, but its reader always allocates an 8 KiB read buffer per socket
//! (`ReadHalf::after_handshake`), which we cannot shrink through its API.
//! So after the handshake we take the raw stream back (`into_inner`), split
//! it, write with a `WebSocketWrite` (writev for every frame, so it keeps no
//! copy buffer) and read with the small frame parser below over a 256-byte
//! `BufReader`. A frame's payload is allocated only while it is being
//! handled, and never above `ws_max_frame_bytes` (4 KiB): the length is
//! checked from the header *before* reading the payload, and a larger frame
//! closes the socket with 1009.
//!
//! Both halves run in one task (`join!`), so a connection costs one task.
//! The reader never writes to the socket: replies go through the outbox like
//! everything else, so frames are never interleaved and the writer is the
//! only place that can block on a slow client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, Payload, WebSocketWrite};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::{now_ms, Millis, Mode, Phase, QuizDef};
use crate::protocol::{self, ClientMsg, QuestionMsg, Welcome};
use crate::quiz::{Caller, QuizError, QuizService};
use crate::room::{close, Member, Membership, Next, OutFrame, Outbox, Rooms};
use crate::token::Role;

/// Bytes of buffered reading per connection.
const READ_BUF: usize = 256;
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

/// Self-paced: when the question on the player's screen runs out of time
/// unanswered, present the next one (the player would otherwise stare at
/// an expired question until they sent a late answer or reconnected). An
/// answer moves [`Presented`] on before the deadline and restarts the wait;
/// the last question's expiry presents nothing. Ends with the connection.
async fn expire_presented(
    svc: &QuizService,
    def: &QuizDef,
    player_id: &str,
    outbox: &Outbox,
    presented: &Presented,
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
            _ = outbox.cancelled().cancelled() => return,
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
        if let Err(e) = present_next(svc, def, player_id, outbox, presented, q + 1).await {
            tracing::debug!(error = %e, "expiry: next question unavailable, retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if presented.get() == cur {
            spent = cur;
        }
    }
}

/// Runs one upgraded connection to completion.
pub async fn serve(
    svc: Arc<QuizService>,
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    quiz_id: String,
    token: Option<String>,
    shutdown: CancellationToken,
) {
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    let (rd, wr) = tokio::io::split(ws.into_inner());
    // The read half fastwebsockets builds here (with its 8 KiB buffer) is
    // dropped at once; only the write half is kept.
    let (_, mut writer) =
        fastwebsockets::after_handshake_split(tokio::io::empty(), wr, fastwebsockets::Role::Server);
    writer.set_writev_threshold(0);
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
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                writer.write_frame(Frame::close(code, reason.as_bytes())),
            )
            .await;
            linger(&mut BufReader::with_capacity(READ_BUF, rd)).await;
            return;
        }
    };

    let outbox = Arc::new(Outbox::new(
        svc.config.ws_queue_capacity,
        shutdown.child_token(),
    ));
    let presented = Arc::new(Presented::default());
    // Welcome first, then join the room, so room messages queue after it.
    let seen = match welcome(&svc, &def, &caller, &outbox, &presented).await {
        Ok(s) => s,
        Err(e) => {
            outbox.push_text(protocol::encode_error(e.code(), &e.to_string()));
            outbox.close(close::INTERNAL, "try again");
            crate::model::QuizState::new_lobby()
        }
    };
    let is_host = caller.claims.role == Role::Host;
    let membership = Rooms::join(
        &svc,
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
    // Self-paced players only: a task of its own rather than a third branch
    // of the join below, whose state every idle connection would carry
    // (~380 bytes more per connection, measured, live quizzes included).
    if def.mode == Mode::SelfPaced && !is_host {
        tokio::spawn({
            let (svc, def, outbox, presented) = (
                Arc::clone(&svc),
                Arc::clone(&def),
                Arc::clone(&outbox),
                Arc::clone(&presented),
            );
            let player_id = caller.claims.player_id.clone();
            async move { expire_presented(&svc, &def, &player_id, &outbox, &presented).await }
        });
    }
    let write_timeout = Duration::from_millis(svc.config.ws_write_timeout_ms);
    let mut rd = BufReader::with_capacity(READ_BUF, rd);
    tokio::join!(
        read_loop(&svc, &def, &caller, &outbox, &presented, &mut rd),
        write_loop(&svc, &outbox, &mut writer, write_timeout),
    );
    svc.rooms.leave(&membership);
    drop::<Membership>(membership);
    if outbox.close_reason().is_some_and(|c| c.code != close::NONE) {
        linger(&mut rd).await;
    }
}

/// After sending a close frame, reads and discards what the client still
/// sends (the rest of an oversize frame, its close reply) for a moment.
/// Closing a socket with unread input makes the kernel send a reset, which
/// can destroy our close frame before the client reads it.
async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut sink = [0u8; 512];
    let mut total = 0usize;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while total < 1 << 20 {
            match rd.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// Token → (quiz, caller), or the close code to send.
async fn authenticate(
    svc: &QuizService,
    quiz_id: &str,
    token: Option<&str>,
) -> Result<(Arc<QuizDef>, Caller), (u16, &'static str)> {
    let claims = token
        .and_then(|t| svc.tokens.verify(t).ok())
        .ok_or((close::BAD_TOKEN, "bad token"))?;
    let def = match svc.def(quiz_id).await {
        Ok(d) => d,
        Err(QuizError::NotFound(_)) => return Err((close::UNKNOWN_QUIZ, "unknown quiz")),
        Err(_) => return Err((close::INTERNAL, "store unavailable")),
    };
    if claims.quiz_id != quiz_id {
        return Err((close::BAD_TOKEN, "token is for another quiz"));
    }
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
    then: &crate::model::QuizState,
    now: &crate::model::QuizState,
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
                if let Err(e) =
                    present_next(svc, def, &caller.claims.player_id, outbox, presented, 0).await
                {
                    outbox.push_text(protocol::encode_error(e.code(), &e.to_string()));
                }
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
) -> Result<crate::model::QuizState, QuizError> {
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
                if let Some((q, sent)) = svc.self_paced_current(def, player_id, 0, now).await? {
                    if let Some(qd) = def.questions.get(q as usize) {
                        presented.advance(q, sent);
                        question = Some(QuestionMsg::new(qd, sent, sent + qd.time_limit_ms));
                    }
                }
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

/// Self-paced: presents the player's next question, if any. `from`: a
/// question known to be answered or expired plus one (0 if none).
/// Idempotent: calling it twice sends the question once.
pub async fn present_next(
    svc: &QuizService,
    def: &QuizDef,
    player_id: &str,
    outbox: &Outbox,
    presented: &Presented,
    from: u32,
) -> Result<(), QuizError> {
    // Everything before the question presented last is answered or expired:
    // the walk starts there at the earliest (see `self_paced_current`).
    let from = presented.get().map_or(from, |(p, _)| p.max(from));
    if let Some((q, sent)) = svc
        .self_paced_current(def, player_id, from, now_ms())
        .await?
    {
        if let Some(qd) = def.questions.get(q as usize) {
            if presented.advance(q, sent) {
                outbox.push_text(protocol::encode(&QuestionMsg::new(
                    qd,
                    sent,
                    sent + qd.time_limit_ms,
                )));
            }
        }
    }
    Ok(())
}

/// A per-connection token bucket.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u32, burst: u32) -> Self {
        RateLimit {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// THE READ LOOP. One frame at a time: limits first (size from the header,
/// then rate), then parse, then apply. Client data never panics here: every
/// error becomes an `error` message or a close code.
async fn read_loop<R: AsyncRead + Unpin>(
    svc: &QuizService,
    def: &QuizDef,
    caller: &Caller,
    outbox: &Outbox,
    presented: &Presented,
    rd: &mut R,
) {
    let max = svc.config.ws_max_frame_bytes;
    let mut limit = RateLimit::new(svc.config.ws_rate_per_sec, svc.config.ws_rate_burst);
    loop {
        let frame = tokio::select! {
            // Closed by the writer / room (slow consumer) or by shutdown.
            _ = outbox.cancelled().cancelled() => {
                if outbox.close_reason().is_none() {
                    outbox.close(close::GOING_AWAY, "server shutting down");
                }
                return;
            }
            f = read_frame(rd, max) => f,
        };
        let payload = match frame {
            Ok(InFrame::Text(p)) => p,
            Ok(InFrame::Binary) => {
                if !limit.allow() {
                    return outbox.close(close::POLICY, "rate limit exceeded");
                }
                outbox.push_text(protocol::encode_error(
                    "malformed",
                    "binary frames are not supported; send JSON text",
                ));
                continue;
            }
            Ok(InFrame::Ping(p)) => {
                if !limit.allow() {
                    return outbox.close(close::POLICY, "rate limit exceeded");
                }
                outbox.push(OutFrame::Pong(Bytes::from(p)));
                continue;
            }
            Ok(InFrame::Pong) => continue,
            Ok(InFrame::Close) => return outbox.close(close::NORMAL, ""),
            Err(ReadError::TooBig) => return outbox.close(close::TOO_BIG, "frame too large"),
            Err(ReadError::Protocol(why)) => return outbox.close(close::PROTOCOL, why),
            Err(ReadError::Closed) => return outbox.close(close::NONE, ""),
        };
        if !limit.allow() {
            return outbox.close(close::POLICY, "rate limit exceeded");
        }
        // Handling is boxed: its future (store and sink calls) is large and
        // only alive while a message is processed, so an idle connection's
        // task does not carry it.
        Box::pin(handle_text(svc, def, caller, outbox, presented, &payload)).await;
    }
}

/// Parses and applies one inbound text message.
async fn handle_text(
    svc: &QuizService,
    def: &QuizDef,
    caller: &Caller,
    outbox: &Outbox,
    presented: &Presented,
    payload: &[u8],
) {
    match protocol::parse_client(payload) {
        Ok(ClientMsg::Ping) => {
            outbox.push_text(protocol::encode_pong());
        }
        Ok(ClientMsg::Answer {
            question_id,
            choices,
        }) => {
            if caller.claims.role == Role::Host {
                outbox.push_text(protocol::encode_error(
                    "forbidden",
                    "hosts do not answer; connect with a player token",
                ));
                return;
            }
            let p = presented.get();
            match svc.answer(def, caller, question_id, &choices, p).await {
                Ok(res) => {
                    let recorded =
                        res.accepted || matches!(res.reason.as_deref(), Some("late" | "duplicate"));
                    outbox.push_text(protocol::encode(&res));
                    if def.mode == Mode::SelfPaced
                        && recorded
                        && p.is_some_and(|(q, _)| q == question_id)
                    {
                        // The question just answered is recorded: the walk
                        // starts after it (one store call, not two).
                        if let Err(e) = present_next(
                            svc,
                            def,
                            &caller.claims.player_id,
                            outbox,
                            presented,
                            question_id + 1,
                        )
                        .await
                        {
                            outbox.push_text(protocol::encode_error(e.code(), &e.to_string()));
                        }
                    }
                }
                Err(e) => {
                    outbox.push_text(protocol::encode_error(e.code(), &e.to_string()));
                }
            }
        }
        Err(e) => {
            outbox.push_text(protocol::encode_error(e.code, &e.message));
        }
    }
}

/// THE WRITER. Drains the outbox; the only place that awaits the client.
/// A write that takes longer than `write_timeout` means the client is not
/// reading: it is closed as a slow consumer.
async fn write_loop<W: AsyncWrite + Unpin>(
    svc: &QuizService,
    outbox: &Outbox,
    ws: &mut WebSocketWrite<W>,
    write_timeout: Duration,
) {
    loop {
        // The frame borrows the shared `Bytes`: no per-connection copy.
        let (text, bytes) = match outbox.next().await {
            Next::Frame(OutFrame::Text(b)) => (true, b),
            Next::Frame(OutFrame::Pong(b)) => (false, b),
            Next::Close(c) => {
                if c.code != close::NONE {
                    svc.metrics
                        .ws_closes
                        .with_label_values(&[&c.code.to_string()])
                        .inc();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        ws.write_frame(Frame::close(c.code, c.reason.as_bytes())),
                    )
                    .await;
                }
                return;
            }
        };
        let frame = if text {
            Frame::text(Payload::Borrowed(&bytes))
        } else {
            Frame::pong(Payload::Borrowed(&bytes))
        };
        match tokio::time::timeout(write_timeout, ws.write_frame(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return outbox.close(close::NONE, ""),
            Err(_) => {
                svc.metrics.slow_consumer_closes.inc();
                svc.metrics
                    .ws_closes
                    .with_label_values(&[&close::SLOW_CONSUMER.to_string()])
                    .inc();
                return outbox.close(close::SLOW_CONSUMER, "slow consumer");
            }
        }
    }
}

// ------------------------------------------------------------ frame reader

#[derive(Debug, PartialEq, Eq)]
pub enum InFrame {
    /// A complete (possibly reassembled) text message.
    Text(Vec<u8>),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The message is larger than the limit (close 1009).
    TooBig,
    /// RFC 6455 violation (close 1002).
    Protocol(&'static str),
    /// EOF or I/O error.
    Closed,
}

/// Reads one client message (RFC 6455 §5; client frames must be masked).
/// Fragmented messages are reassembled, their total bounded by `max`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    max: usize,
) -> Result<InFrame, ReadError> {
    let mut partial: Option<(u8, Vec<u8>)> = None;
    loop {
        let mut head = [0u8; 2];
        rd.read_exact(&mut head)
            .await
            .map_err(|_| ReadError::Closed)?;
        let fin = head[0] & 0x80 != 0;
        if head[0] & 0x70 != 0 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        let opcode = head[0] & 0x0f;
        if head[1] & 0x80 == 0 {
            return Err(ReadError::Protocol("client frames must be masked"));
        }
        let len = match head[1] & 0x7f {
            126 => u64::from(rd.read_u16().await.map_err(|_| ReadError::Closed)?),
            127 => rd.read_u64().await.map_err(|_| ReadError::Closed)?,
            n => u64::from(n),
        };
        let control = opcode & 0x08 != 0;
        if control && (!fin || len > 125) {
            return Err(ReadError::Protocol("bad control frame"));
        }
        let so_far = partial.as_ref().map_or(0, |(_, p)| p.len()) as u64;
        if !control && so_far.saturating_add(len) > max as u64 {
            return Err(ReadError::TooBig);
        }
        let mut mask = [0u8; 4];
        rd.read_exact(&mut mask)
            .await
            .map_err(|_| ReadError::Closed)?;
        let mut payload = vec![0u8; len as usize];
        rd.read_exact(&mut payload)
            .await
            .map_err(|_| ReadError::Closed)?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        match opcode {
            0x1 | 0x2 => {
                if partial.is_some() {
                    return Err(ReadError::Protocol("new message inside a fragmented one"));
                }
                if fin {
                    return Ok(finish(opcode, payload));
                }
                partial = Some((opcode, payload));
            }
            0x0 => {
                let Some((op, mut acc)) = partial.take() else {
                    return Err(ReadError::Protocol("continuation without a message"));
                };
                acc.extend_from_slice(&payload);
                if fin {
                    return Ok(finish(op, acc));
                }
                partial = Some((op, acc));
            }
            0x8 => return Ok(InFrame::Close),
            // A ping inside a fragmented message is not answered: returning
            // it would lose the fragments read so far.
            0x9 if partial.is_none() => return Ok(InFrame::Ping(payload)),
            0x9 => {}
            0xA => {
                if partial.is_none() {
                    return Ok(InFrame::Pong);
                }
            }
            _ => return Err(ReadError::Protocol("unknown opcode")),
        }
    }
}

fn finish(opcode: u8, payload: Vec<u8>) -> InFrame {
    if opcode == 0x1 {
        InFrame::Text(payload)
    } else {
        InFrame::Binary
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len < 65536 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [1, 2, 3, 4];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

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

    #[tokio::test]
    async fn reads_frames() {
        let mut bytes = client_frame(true, 1, br#"{"type":"ping"}"#);
        bytes.extend(client_frame(false, 1, b"ab"));
        bytes.extend(client_frame(true, 9, b"p"));
        bytes.extend(client_frame(true, 0, b"cd"));
        bytes.extend(client_frame(true, 1, &vec![b'x'; 5000]));
        let mut rd = &bytes[..];
        assert_eq!(
            read_frame(&mut rd, 4096).await,
            Ok(InFrame::Text(br#"{"type":"ping"}"#.to_vec()))
        );
        // A ping inside a fragmented message is skipped; fragments join.
        assert_eq!(
            read_frame(&mut rd, 4096).await,
            Ok(InFrame::Text(b"abcd".to_vec()))
        );
        let mut rd = &client_frame(true, 1, &vec![b'x'; 5000])[..];
        assert_eq!(read_frame(&mut rd, 4096).await, Err(ReadError::TooBig));
        let unmasked = [0x81u8, 0x01, b'x'];
        assert!(matches!(
            read_frame(&mut &unmasked[..], 4096).await,
            Err(ReadError::Protocol(_))
        ));
        assert_eq!(read_frame(&mut &[][..], 4096).await, Err(ReadError::Closed));
        let huge = [0x81u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            read_frame(&mut &huge[..], 4096).await,
            Err(ReadError::TooBig)
        );
    }
}
