//! Hostile clients beside a normal load (`[attack]` in a scenario).
//!
//! One loopback source address of its own does what a hostile client does
//! (see [`AttackKind`]), bounded in count (`concurrency`, `rate_per_sec`) and
//! time (`start_after_s`, `duration_s`, and the run's deadline). Every
//! attempt ends in one *outcome* — the HTTP status and error code, the close
//! code, or what the connection did — counted by name, so a run shows what the
//! platform refused and how; the legitimate players' own figures, measured in
//! the same run and compared with the same scenario run with `--no-attack`,
//! show what the attack cost them (`loadtest/hostile` does both).
//!
//! The attacks that need players (answer flood, bad frames, forged tokens)
//! use a quiz of their own, created and started here, so the legitimate
//! quizzes' correctness checks stay exact.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::net::{connect, http_request};
use crate::target::Target;

/// What the attacker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    /// New connections at `rate_per_sec`, each making one keep-alive
    /// request and then holding the connection idle (up to `concurrency`).
    ConnectionFlood,
    /// Connections that send a request head one header line per second and
    /// never finish it (up to `concurrency` at once).
    Slowloris,
    /// Joins at `rate_per_sec` (fresh nicknames, no idempotency key).
    JoinFlood,
    /// `concurrency` joined players sending answers (mostly duplicates and
    /// closed questions) at `rate_per_sec` in total, plus unsolicited pongs.
    AnswerFlood,
    /// Joined players whose WebSocket sends one broken thing each: an
    /// oversized frame, a reserved opcode, an unmasked frame, invalid UTF-8,
    /// non-JSON text, a fragmented message stuffed with control frames.
    BadFrames,
    /// WebSocket upgrades and host actions with forged, tampered and
    /// other-quiz tokens.
    ForgedTokens,
}

impl AttackKind {
    /// Whether the attack needs a quiz of its own (created and started).
    pub fn needs_quiz(self) -> bool {
        !matches!(self, AttackKind::ConnectionFlood | AttackKind::Slowloris)
    }
}

fn default_source() -> Ipv4Addr {
    Ipv4Addr::new(127, 66, 0, 1)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackConfig {
    pub kind: AttackKind,
    /// The attacker's one source address (loopback, outside the workers'
    /// range 127.0–63.x.x).
    #[serde(default = "default_source")]
    pub source_ip: Ipv4Addr,
    /// New connections, requests or frames per second, in total.
    pub rate_per_sec: f64,
    /// Most connections or requests in flight at once.
    pub concurrency: u64,
    /// Seconds after the load starts (let the players join first).
    #[serde(default)]
    pub start_after_s: u64,
    pub duration_s: u64,
}

/// Bounds that keep an attack a test: the coordinator holds the attacker's
/// sockets, under the same 20 000 open files as any process.
pub const MAX_CONCURRENCY: u64 = 8_000;
pub const MAX_RATE: f64 = 20_000.0;

impl AttackConfig {
    /// Range checks; `Err((key, message))`.
    pub fn check(&self, run_duration_s: u64) -> Result<(), (&'static str, String)> {
        let o = self.source_ip.octets();
        if o[0] != 127 || o[1] < 64 {
            return Err((
                "attack.source_ip",
                format!("{} is not in 127.64.0.0–127.255.255.255 (loopback, away from the workers' addresses)", self.source_ip),
            ));
        }
        if !(self.rate_per_sec > 0.0 && self.rate_per_sec <= MAX_RATE) {
            return Err(("attack.rate_per_sec", format!("must be in (0, {MAX_RATE}]")));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err((
                "attack.concurrency",
                format!("must be in 1..={MAX_CONCURRENCY}"),
            ));
        }
        if self.duration_s == 0 || self.start_after_s + self.duration_s > run_duration_s {
            return Err((
                "attack.duration_s",
                format!(
                    "start_after_s + duration_s must be in 1..={run_duration_s} (load.duration_s)"
                ),
            ));
        }
        Ok(())
    }
}

/// The attacker's own quiz.
#[derive(Debug, Clone)]
pub struct AttackQuiz {
    pub quiz_id: String,
    pub host_token: String,
    /// A legitimate quiz's id, for tokens used on the wrong quiz.
    pub other_quiz_id: String,
    pub questions: u32,
}

/// What the attack did, in the run's result file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttackReport {
    pub kind: String,
    pub source_ip: String,
    /// Connections or requests started.
    pub attempts: u64,
    /// Outcome name → count (e.g. `http_429_rate_limited`, `close_1009`,
    /// `closed_by_server`, `held_to_end`, `answer_result_duplicate`).
    pub outcomes: BTreeMap<String, u64>,
    /// How long the server let a held connection live before it closed it
    /// (connection flood and slowloris), ms: median and longest.
    pub held_ms_p50: Option<u64>,
    pub held_ms_max: Option<u64>,
    /// Frames or requests sent on connections (answer flood, bad frames).
    pub frames_sent: u64,
}

#[derive(Default)]
struct Tally {
    attempts: u64,
    outcomes: BTreeMap<String, u64>,
    held_ms: Vec<u64>,
    frames_sent: u64,
}

#[derive(Clone)]
struct Ctx {
    target: Target,
    source: Option<IpAddr>,
    end: Instant,
    tally: Arc<Mutex<Tally>>,
    quiz: Option<Arc<AttackQuiz>>,
}

impl Ctx {
    fn outcome(&self, name: impl Into<String>) {
        *self
            .tally
            .lock()
            .unwrap()
            .outcomes
            .entry(name.into())
            .or_default() += 1;
    }

    fn held(&self, since: Instant) {
        let ms = since.elapsed().as_millis() as u64;
        self.tally.lock().unwrap().held_ms.push(ms);
    }

    fn sent(&self, n: u64) {
        self.tally.lock().unwrap().frames_sent += n;
    }

    fn quiz(&self) -> &AttackQuiz {
        self.quiz.as_deref().expect("this attack has a quiz")
    }
}

/// Run the attack until its duration (or `run_end`) is over; every spawned
/// task ends by then (plus a 5 s grace for in-flight requests).
pub async fn run(
    target: Target,
    cfg: AttackConfig,
    quiz: Option<AttackQuiz>,
    run_end: Instant,
) -> AttackReport {
    tokio::time::sleep(Duration::from_secs(cfg.start_after_s)).await;
    let end = (Instant::now() + Duration::from_secs(cfg.duration_s)).min(run_end);
    let ctx = Ctx {
        target,
        source: Some(IpAddr::V4(cfg.source_ip)),
        end,
        tally: Arc::default(),
        quiz: quiz.map(Arc::new),
    };
    if let (Some(q), true) = (&ctx.quiz, cfg.kind.needs_quiz()) {
        if let Err(e) = host_start(&ctx, q).await {
            ctx.outcome(format!("setup_failed: {e}"));
        }
    }
    let sem = Arc::new(Semaphore::new(cfg.concurrency as usize));
    let mut tasks = tokio::task::JoinSet::new();
    let per_unit_rate = cfg.rate_per_sec / cfg.concurrency as f64;
    let units: Box<dyn Iterator<Item = Duration> + Send> = match cfg.kind {
        // One long-lived unit per connection, started all at once: the
        // rate is the frames they send between them.
        AttackKind::AnswerFlood => Box::new(std::iter::repeat_n(
            Duration::ZERO,
            cfg.concurrency as usize,
        )),
        _ => Box::new(std::iter::repeat(Duration::from_secs_f64(
            1.0 / cfg.rate_per_sec,
        ))),
    };
    let mut next = Instant::now();
    for (i, gap) in units.enumerate() {
        if Instant::now() >= end {
            break;
        }
        tokio::time::sleep_until(next).await;
        next += gap;
        let Ok(Ok(permit)) = tokio::time::timeout_at(end, sem.clone().acquire_owned()).await else {
            break;
        };
        ctx.tally.lock().unwrap().attempts += 1;
        let c = ctx.clone();
        tasks.spawn(async move {
            let unit = async {
                match cfg.kind {
                    AttackKind::ConnectionFlood => connection_flood(&c).await,
                    AttackKind::Slowloris => slowloris(&c).await,
                    AttackKind::JoinFlood => join_flood(&c, i).await,
                    AttackKind::AnswerFlood => answer_flood(&c, i, per_unit_rate).await,
                    AttackKind::BadFrames => bad_frames(&c, i).await,
                    AttackKind::ForgedTokens => forged_tokens(&c, i).await,
                }
            };
            // Every unit stops at the end, whatever it is waiting for.
            if tokio::time::timeout_at(c.end + Duration::from_secs(5), unit)
                .await
                .is_err()
            {
                c.outcome("unfinished_at_end");
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let t = std::mem::take(&mut *ctx.tally.lock().unwrap());
    let mut held = t.held_ms;
    held.sort_unstable();
    AttackReport {
        kind: serde_json::to_value(cfg.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        source_ip: cfg.source_ip.to_string(),
        attempts: t.attempts,
        outcomes: t.outcomes,
        held_ms_p50: held.get(held.len() / 2).copied(),
        held_ms_max: held.last().copied(),
        frames_sent: t.frames_sent,
    }
}

// ---- HTTP-level attacks ----------------------------------------------------

async fn open(c: &Ctx) -> Option<TcpStream> {
    match connect(c.target.addr, c.source).await {
        Ok(s) => Some(s),
        Err(e) => {
            c.outcome(e.kind());
            None
        }
    }
}

/// One keep-alive request, then the connection held idle until the server
/// closes it or the attack ends.
async fn connection_flood(c: &Ctx) {
    let Some(mut s) = open(c).await else { return };
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n",
        c.target.host_header()
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        c.outcome("closed_before_request");
        return;
    }
    let since = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut status: Option<u16> = None;
    loop {
        match tokio::time::timeout_at(c.end, s.read(&mut buf)).await {
            Err(_) => {
                c.outcome(match status {
                    Some(st) => format!("http_{st}_then_held_to_end"),
                    None => "held_to_end_without_response".into(),
                });
                return;
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                c.held(since);
                c.outcome(match status {
                    Some(st) => format!("http_{st}_then_closed_by_server"),
                    None => "closed_by_server_without_response".into(),
                });
                return;
            }
            Ok(Ok(n)) => {
                if status.is_none() {
                    status = std::str::from_utf8(&buf[..n.min(12)])
                        .ok()
                        .and_then(|h| h.get(9..12))
                        .and_then(|d| d.parse().ok());
                }
            }
        }
    }
}

/// A request head trickled one header line a second, never finished.
async fn slowloris(c: &Ctx) {
    let Some(mut s) = open(c).await else { return };
    let since = Instant::now();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\n",
        c.target.host_header()
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        c.outcome("closed_before_request");
        return;
    }
    let mut buf = [0u8; 512];
    let mut line = 0u64;
    loop {
        let tick = Instant::now() + Duration::from_secs(1);
        if tick >= c.end {
            c.outcome("held_to_end");
            return;
        }
        tokio::select! {
            r = s.read(&mut buf) => {
                c.held(since);
                c.outcome(match r {
                    Ok(n) if n >= 12 => format!("closed_by_server_http_{}", String::from_utf8_lossy(&buf[9..12])),
                    _ => "closed_by_server".into(),
                });
                return;
            }
            _ = tokio::time::sleep_until(tick) => {
                line += 1;
                if s.write_all(format!("X-Slow-{line}: 1\r\n").as_bytes()).await.is_err() {
                    c.held(since);
                    c.outcome("closed_by_server");
                    return;
                }
            }
        }
    }
}

/// `http_<status>_<error code>` from an answer.
fn http_outcome(prefix: &str, status: u16, body: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
    match code {
        Some(code) => format!("{prefix}http_{status}_{code}"),
        None => format!("{prefix}http_{status}"),
    }
}

async fn join(c: &Ctx, quiz_id: &str, nickname: &str) -> Result<(String, String), String> {
    let body = format!(r#"{{"nickname":"{nickname}"}}"#);
    let r = http_request(
        &c.target,
        c.source,
        "POST",
        &format!("/v1/quizzes/{quiz_id}/players"),
        &[],
        Some(body.as_bytes()),
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| e.kind().to_string())?;
    if r.status != 201 {
        return Err(http_outcome("join_", r.status, &r.body));
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|_| "join_body")?;
    match (v["player_id"].as_str(), v["player_token"].as_str()) {
        (Some(id), Some(token)) => Ok((id.to_string(), token.to_string())),
        _ => Err("join_body".into()),
    }
}

async fn join_flood(c: &Ctx, i: usize) {
    let quiz_id = c.quiz().quiz_id.clone();
    match join(c, &quiz_id, &format!("flood-{i}")).await {
        Ok(_) => c.outcome("joined"),
        Err(o) => c.outcome(o),
    }
}

async fn host_start(c: &Ctx, q: &AttackQuiz) -> Result<(), String> {
    let r = http_request(
        &c.target,
        None,
        "POST",
        &format!("/v1/quizzes/{}/start", q.quiz_id),
        &[("Authorization", &format!("Bearer {}", q.host_token))],
        Some(b"{}"),
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| e.to_string())?;
    match r.status {
        200 => Ok(()),
        s => Err(http_outcome("start_", s, &r.body)),
    }
}

// ---- WebSocket attacks -----------------------------------------------------

/// A raw client WebSocket: the handshake, masked frames of any shape, and a
/// reader that reports what the server sent.
struct RawWs {
    s: TcpStream,
    buf: Vec<u8>,
}

/// What the server sent on a raw WebSocket.
enum Inbound {
    Text(Vec<u8>),
    Control,
    Close(u16),
    Eof,
}

impl RawWs {
    /// Upgrade at `path`; `Err(outcome)` on a refusal.
    async fn open(c: &Ctx, path: &str) -> Result<RawWs, String> {
        let mut s = connect(c.target.addr, c.source)
            .await
            .map_err(|e| e.kind().to_string())?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            c.target.host_header()
        );
        s.write_all(req.as_bytes()).await.map_err(|_| "reset")?;
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 2048];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
                .await
                .map_err(|_| "upgrade_timeout")?
                .map_err(|_| "upgrade_reset")?;
            if n == 0 {
                return Err("upgrade_closed".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let status: u16 = std::str::from_utf8(&buf[9..12.min(end)])
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0);
                if status != 101 {
                    let body = &buf[end + 4..];
                    return Err(http_outcome("upgrade_", status, body));
                }
                let rest = buf.split_off(end + 4);
                return Ok(RawWs { s, buf: rest });
            }
        }
    }

    /// Write one frame: `fin`, `opcode`, masked unless `unmasked`, with the
    /// length field saying `claimed_len` (the payload may be shorter).
    async fn frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
        unmasked: bool,
        claimed_len: Option<u64>,
    ) -> bool {
        let len = claimed_len.unwrap_or(payload.len() as u64);
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let mask_bit = if unmasked { 0 } else { 0x80 };
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= u16::MAX as u64 {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        let key = [0x37, 0xfa, 0x21, 0x3d];
        if unmasked {
            out.extend_from_slice(payload);
        } else {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        self.s.write_all(&out).await.is_ok()
    }

    async fn text(&mut self, payload: &[u8]) -> bool {
        self.frame(true, 0x1, payload, false, None).await
    }

    /// The next message the server sent, or `None` at `until`.
    async fn next(&mut self, until: Instant) -> Option<Inbound> {
        loop {
            if let Some((op, payload, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(match op {
                    0x8 => Inbound::Close(if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    }),
                    0x0..=0x2 => Inbound::Text(payload),
                    _ => Inbound::Control,
                });
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(until, self.s.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(Inbound::Eof),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// One unmasked server frame at the start of `buf`: (opcode, payload, bytes used).
fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let op = buf[0] & 0x0f;
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        l => (l as usize, 2),
    };
    if buf.len() < head + len {
        return None;
    }
    Some((op, buf[head..head + len].to_vec(), head + len))
}

/// The name of a server message: `answer_result_<reason>`, `error_<code>`,
/// or its type.
fn message_outcome(payload: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return "unparsable_server_message".into();
    };
    match v["type"].as_str().unwrap_or("untyped") {
        "answer_result" if v["accepted"] == true => "answer_result_accepted".into(),
        "answer_result" => format!("answer_result_{}", v["reason"].as_str().unwrap_or("?")),
        "error" => format!("error_{}", v["code"].as_str().unwrap_or("?")),
        t => t.to_string(),
    }
}

/// A joined player's WebSocket on the attacker's quiz.
async fn player_ws(c: &Ctx, nickname: &str) -> Option<(RawWs, String)> {
    let q = c.quiz();
    let (_, token) = match join(c, &q.quiz_id, nickname).await {
        Ok(t) => t,
        Err(o) => {
            c.outcome(o);
            return None;
        }
    };
    let path = format!("/v1/quizzes/{}/ws?token={}", q.quiz_id, urlencode(&token));
    match RawWs::open(c, &path).await {
        Ok(ws) => Some((ws, token)),
        Err(o) => {
            c.outcome(o);
            None
        }
    }
}

/// Answers (and unsolicited pongs) as fast as `rate` allows; replies counted
/// by kind, the connection's end by how it ended.
async fn answer_flood(c: &Ctx, i: usize, rate: f64) {
    let Some((mut ws, _)) = player_ws(c, &format!("answers-{i}")).await else {
        return;
    };
    let questions = c.quiz().questions.max(1);
    let gap = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut next = Instant::now();
    let mut n = 0u64;
    loop {
        if Instant::now() >= c.end {
            c.outcome("ws_held_to_end");
            return;
        }
        // Reply traffic first (counted), then the next frame when due.
        match ws.next(next.min(c.end)).await {
            Some(Inbound::Text(p)) => c.outcome(message_outcome(&p)),
            Some(Inbound::Control) => {}
            Some(Inbound::Close(code)) => {
                c.outcome(format!("close_{code}"));
                return;
            }
            Some(Inbound::Eof) => {
                c.outcome("closed_by_server");
                return;
            }
            None => {
                n += 1;
                let ok = if n % 10 == 0 {
                    ws.frame(true, 0xA, b"unsolicited", false, None).await
                } else {
                    let q = (n as u32 / 7) % questions;
                    ws.text(
                        format!(r#"{{"type":"answer","question_id":{q},"choices":[0]}}"#)
                            .as_bytes(),
                    )
                    .await
                };
                if !ok {
                    c.outcome("closed_by_server");
                    return;
                }
                c.sent(1);
                next += gap;
            }
        }
    }
}

/// One broken thing per connection, chosen by `i`; the outcome is
/// `<variant>:<what the server did>`.
async fn bad_frames(c: &Ctx, i: usize) {
    const VARIANTS: [&str; 7] = [
        "oversized",
        "reserved_opcode",
        "unmasked",
        "invalid_utf8",
        "not_json",
        "fragmented_with_pings",
        "ping_flood",
    ];
    let variant = VARIANTS[i % VARIANTS.len()];
    let Some((mut ws, _)) = player_ws(c, &format!("frames-{i}")).await else {
        return;
    };
    let sent = match variant {
        "oversized" => {
            ws.frame(true, 0x1, &[b'x'; 65_536], false, Some(64 << 20))
                .await
        }
        "reserved_opcode" => ws.frame(true, 0x3, b"?", false, None).await,
        "unmasked" => ws.frame(true, 0x1, b"{}", true, None).await,
        "invalid_utf8" => ws.text(&[0xff, 0xfe, 0xfd]).await,
        "not_json" => ws.text(b"this is not json").await,
        "fragmented_with_pings" => {
            let mut ok = ws.frame(false, 0x1, b"{\"type\":", false, None).await;
            for _ in 0..500 {
                ok = ok && ws.frame(true, 0x9, b"p", false, None).await;
            }
            ok
        }
        _ => {
            let mut ok = true;
            for _ in 0..2_000 {
                ok = ok && ws.frame(true, 0x9, b"p", false, None).await;
            }
            ok
        }
    };
    c.sent(1);
    if !sent {
        c.outcome(format!("{variant}:closed_while_sending"));
        return;
    }
    // What the server does within 10 s (or by the end of the attack).
    let until = (Instant::now() + Duration::from_secs(10)).min(c.end);
    let mut errors = 0u64;
    loop {
        match ws.next(until).await {
            Some(Inbound::Text(p)) => {
                if message_outcome(&p).starts_with("error_") {
                    errors += 1;
                }
            }
            Some(Inbound::Control) => {}
            Some(Inbound::Close(code)) => {
                c.outcome(format!("{variant}:close_{code}"));
                return;
            }
            Some(Inbound::Eof) => {
                c.outcome(format!("{variant}:closed_by_server"));
                return;
            }
            None => {
                c.outcome(if errors > 0 {
                    format!("{variant}:error_message_then_open")
                } else {
                    format!("{variant}:still_open")
                });
                return;
            }
        }
    }
}

/// Upgrades and host actions with tokens that must not work.
async fn forged_tokens(c: &Ctx, i: usize) {
    let q = c.quiz();
    let variant = ["random", "tampered", "other_quiz", "host_forged"][i % 4];
    let outcome = match variant {
        "random" => {
            let path = format!("/v1/quizzes/{}/ws?token=forged.{i:08x}.token", q.quiz_id);
            ws_upgrade_outcome(c, &path).await
        }
        "tampered" | "other_quiz" => {
            // A real player token of the attacker's quiz, then misused.
            let token = match join(c, &q.quiz_id, &format!("forger-{i}")).await {
                Ok((_, t)) => t,
                Err(o) => {
                    c.outcome(format!("{variant}:{o}"));
                    return;
                }
            };
            let (quiz, token) = if variant == "tampered" {
                (q.quiz_id.as_str(), tamper(&token))
            } else {
                (q.other_quiz_id.as_str(), token)
            };
            let path = format!("/v1/quizzes/{quiz}/ws?token={}", urlencode(&token));
            ws_upgrade_outcome(c, &path).await
        }
        _ => {
            let r = http_request(
                &c.target,
                c.source,
                "POST",
                &format!("/v1/quizzes/{}/next", q.other_quiz_id),
                &[(
                    "Authorization",
                    &format!("Bearer {}", tamper(&q.host_token)),
                )],
                Some(b"{}"),
                Duration::from_secs(10),
            )
            .await;
            match r {
                Ok(r) => http_outcome("", r.status, &r.body),
                Err(e) => e.kind().to_string(),
            }
        }
    };
    c.outcome(format!("{variant}:{outcome}"));
}

async fn ws_upgrade_outcome(c: &Ctx, path: &str) -> String {
    match RawWs::open(c, path).await {
        Ok(mut ws) => {
            // Accepted: the server should still refuse it at once.
            match ws.next(Instant::now() + Duration::from_secs(2)).await {
                Some(Inbound::Close(code)) => format!("upgraded_then_close_{code}"),
                Some(Inbound::Text(p)) => format!("upgraded_then_{}", message_outcome(&p)),
                _ => "upgraded".into(),
            }
        }
        Err(o) => o,
    }
}

/// The token with one character of its signature changed.
fn tamper(token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    if let Some(last) = b.last_mut() {
        *last = if *last == b'A' { b'B' } else { b'A' };
    }
    String::from_utf8(b).unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AttackConfig {
        AttackConfig {
            kind: AttackKind::JoinFlood,
            source_ip: default_source(),
            rate_per_sec: 100.0,
            concurrency: 50,
            start_after_s: 5,
            duration_s: 30,
        }
    }

    #[test]
    fn bounds_name_their_key() {
        assert!(cfg().check(60).is_ok());
        let mut c = cfg();
        c.source_ip = Ipv4Addr::new(127, 0, 0, 9);
        assert_eq!(c.check(60).unwrap_err().0, "attack.source_ip");
        c = cfg();
        c.source_ip = Ipv4Addr::new(10, 66, 0, 1);
        assert_eq!(c.check(60).unwrap_err().0, "attack.source_ip");
        c = cfg();
        c.concurrency = MAX_CONCURRENCY + 1;
        assert_eq!(c.check(60).unwrap_err().0, "attack.concurrency");
        c = cfg();
        c.rate_per_sec = 0.0;
        assert_eq!(c.check(60).unwrap_err().0, "attack.rate_per_sec");
        c = cfg();
        assert_eq!(c.check(34).unwrap_err().0, "attack.duration_s");
    }

    #[test]
    fn server_frames_are_parsed_whole_or_not_at_all() {
        let close = [0x88, 0x02, 0x03, 0xf1];
        let (op, p, used) = parse_server_frame(&close).unwrap();
        assert_eq!((op, u16::from_be_bytes([p[0], p[1]]), used), (8, 1009, 4));
        assert!(parse_server_frame(&close[..3]).is_none());
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(b'a', 256));
        assert_eq!(parse_server_frame(&long).unwrap().2, 260);
        assert!(parse_server_frame(&long[..100]).is_none());
    }

    #[test]
    fn outcomes_name_status_and_code() {
        assert_eq!(
            http_outcome(
                "",
                429,
                br#"{"error":{"code":"rate_limited","message":"x"}}"#
            ),
            "http_429_rate_limited"
        );
        assert_eq!(http_outcome("join_", 502, b"<html>"), "join_http_502");
        assert_eq!(
            message_outcome(br#"{"type":"answer_result","accepted":false,"reason":"duplicate"}"#),
            "answer_result_duplicate"
        );
        assert_eq!(
            message_outcome(br#"{"type":"error","code":"rate_limited"}"#),
            "error_rate_limited"
        );
        assert_eq!(tamper("abc"), "abA");
    }
}
