//! One simulated player: join over HTTP, hold a WebSocket, answer, keep a
//! record of everything it was told.
//!
//! A player has a task only while it joins or (re)connects. Connected, it
//! is a [`Player`] that the worker's hub (`net::Hub`) calls where it reads
//! its socket, for every message in order with its receipt time
//! (leaderboards, most of the traffic, in `board_frame` without touching
//! the player's state), and that the worker's [`Timers`] call when its
//! answer, a planned drop or its time to leave is due; it writes without
//! waiting (a full socket's rest goes out on the hub's next EPOLLOUT). An
//! idle player owns its socket, its record and its plans. Times are
//! wall-clock microseconds so that they compare with the server's
//! `opens_at_ms` on the same machine; every latency starts at the scheduled
//! instant (see `metrics.rs`).

use std::cell::{Cell, RefCell, RefMut};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::panic::AssertUnwindSafe;
use std::rc::{Rc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::wall_us;
use crate::metrics::{IntervalMetrics, WireMetrics, H};
use crate::net::{http_request, ws_connect, FastPath, NetError, ReadState, WsConn};
use crate::plan::WorkerPlan;
use crate::protocol::{
    encode_answer, scan_leaderboard, BoardHead, Joined, OpenQuestion, ServerMsg,
};
use crate::scenario::Scenario;
use crate::target::Target;
use crate::timers::Timers;
use crate::verify::{AnswerRec, PlayerRecord, ResultRec};

/// The correct option of question `q` of quiz `quiz`: deterministic, so the
/// coordinator (which creates the quizzes) and every worker agree.
pub fn correct_option(quiz: usize, q: u32, options: u32) -> u32 {
    ((quiz as u32)
        .wrapping_mul(7)
        .wrapping_add(q.wrapping_mul(3))
        .wrapping_add(1))
        % options
}

/// SplitMix64: tiny, seedable, good enough for think times.
#[derive(Default)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A stable per-player uniform in [0, 1) for "is this player in the share".
pub fn player_share(seed: u64, index: u64, salt: u64) -> f64 {
    Rng::new(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt).f64()
}

/// Gauges and the current interval's metrics of one worker.
#[derive(Default)]
pub struct Shared {
    pub m: IntervalMetrics,
    pub connected: u64,
    pub max_connected: u64,
    pub joined: u64,
    pub done: u64,
    pub frames_total: u64,
    /// Per-frame counters of the current interval, kept as plain fields (a
    /// map lookup by name per frame was a measurable share of the per-frame
    /// cost); moved into `m` by [`Shared::interval_to_wire`].
    hot: HotCounters,
    /// Per quiz: the first receipt in this worker of its latest board
    /// versions, the reference for leaderboard delay when the server does not
    /// stamp its leaderboard frames. A fixed ring per quiz: bounded, and a
    /// board older than the ring is simply not timed.
    lb_first: Vec<BoardRing>,
    /// Per quiz: when a player of this worker first saw its `quiz_ended`. A
    /// player still refused with `Retry-After` long after that gives up
    /// (see [`REFUSED_PAST_THE_END`]).
    ended_at: HashMap<usize, Instant>,
}

/// How long after its quiz ended a player refused with `Retry-After` (at
/// the join or at the WebSocket) keeps trying. Its next try may still land
/// and read the final state, so it is not cut off at the end; but without
/// a bound a player the platform never lets in (a full node's
/// `connection_limit`) would hold the whole run until its duration cap.
/// 30 s: the longest hint honoured (`Retry-After` is clamped to 30 s).
const REFUSED_PAST_THE_END: Duration = Duration::from_secs(30);

#[derive(Default)]
struct HotCounters {
    frames_in: u64,
    leaderboards: u64,
    leaderboard_unstamped: u64,
}

/// The last few (version, first receipt µs) of one quiz's boards.
#[derive(Default, Clone, Copy)]
struct BoardRing {
    slots: [(u64, u64); 8],
    next: usize,
}

impl BoardRing {
    /// First receipt of `version`; `now` if this is the first. `None` when
    /// the version is older than every slot (evicted): not timed.
    fn first_receipt(&mut self, version: u64, now: u64) -> Option<u64> {
        if let Some(&(_, t)) = self.slots.iter().find(|(v, t)| *v == version && *t > 0) {
            return Some(t);
        }
        let oldest = self.slots.iter().map(|(v, _)| *v).min().unwrap_or(0);
        if self.slots.iter().all(|(_, t)| *t > 0) && version < oldest {
            return None;
        }
        self.slots[self.next] = (version, now);
        self.next = (self.next + 1) % self.slots.len();
        Some(now)
    }
}

impl Shared {
    /// The interval's metrics in their wire form, with the hot counters
    /// folded in; the next interval starts empty in the same histograms.
    /// Reset in place rather than taken: a fresh set is six 1 µs–1 h
    /// histograms, ~1.1 MB, allocated each second and held beside the old
    /// one while it was serialized.
    pub fn interval_to_wire(&mut self) -> WireMetrics {
        let h = std::mem::take(&mut self.hot);
        for (name, n) in [
            ("frames_in", h.frames_in),
            ("leaderboards", h.leaderboards),
            ("leaderboard_unstamped", h.leaderboard_unstamped),
        ] {
            if n > 0 {
                self.m.count(name, n);
            }
        }
        let wire = self.m.to_wire();
        self.m.reset();
        wire
    }
}

/// Everything a player needs, shared by all players of a worker.
pub struct Ctx {
    pub target: Target,
    pub sources: Vec<IpAddr>,
    worker: u64,
    workers: u64,
    pub sc: Scenario,
    pub quiz_ids: Vec<String>,
    pub t0_wall_us: u64,
    pub deadline_wall_us: u64,
    pub seed: u64,
    pub shared: RefCell<Shared>,
    /// Every player's planned answer, drop and leave.
    timers: Timers<Player>,
    /// Every player that has joined, for the run's deadline: one word
    /// each, where a timer entry per player for the same instant was two
    /// (and a heap twice the size).
    roster: RefCell<Vec<Weak<Player>>>,
    /// Records of the players that are done, for the worker. Boxed: a
    /// record moves here as a pointer, from the memory it had all along,
    /// not into fresh memory at the end of the run (the memory's peak).
    pub finished: RefCell<Vec<Box<PlayerRecord>>>,
    /// Signalled as each player is done.
    pub player_done: Notify,
    base_instant: Instant,
    base_wall_us: u64,
}

impl Ctx {
    pub fn new(plan: &WorkerPlan, target: Target) -> Ctx {
        let players = plan.players().count();
        Ctx {
            target,
            sources: plan.sources.clone(),
            worker: plan.worker,
            workers: plan.workers,
            sc: plan.scenario.clone(),
            quiz_ids: plan.quiz_ids.clone(),
            t0_wall_us: plan.t0_wall_us,
            deadline_wall_us: plan.deadline_wall_us,
            seed: plan.seed,
            shared: RefCell::new(Shared::default()),
            timers: Timers::with_capacity(players),
            roster: RefCell::new(Vec::with_capacity(players)),
            // Every record has its place from the start: growing by doubling
            // would copy them all at the end of the run.
            finished: RefCell::new(Vec::with_capacity(players)),
            player_done: Notify::new(),
            base_instant: Instant::now(),
            base_wall_us: wall_us(),
        }
    }

    /// Wall time (µs) at which player `index` leaves (`[[stages]]` ramp down), if it does.
    /// Computed where needed rather than kept: each word a player keeps is kept for every
    /// player for the whole run.
    pub fn leave_at_us(&self, index: u64) -> Option<u64> {
        self.sc.leave_offset_us(index).map(|l| self.t0_wall_us + l)
    }

    /// The source address of player `index` (one of this worker's).
    pub fn source_for(&self, index: u64) -> Option<IpAddr> {
        if self.sources.is_empty() {
            return None;
        }
        let local = index.saturating_sub(self.worker) / self.workers.max(1);
        let k = (local / self.sc.load.players_per_source_ip) as usize;
        Some(self.sources[k.min(self.sources.len() - 1)])
    }

    /// The monotonic instant of a wall-clock time.
    pub fn at_wall(&self, us: u64) -> Instant {
        if us >= self.base_wall_us {
            self.base_instant + Duration::from_micros(us - self.base_wall_us)
        } else {
            self.base_instant
                .checked_sub(Duration::from_micros(self.base_wall_us - us))
                .unwrap_or(self.base_instant)
        }
    }

    pub fn deadline(&self) -> Instant {
        self.at_wall(self.deadline_wall_us)
    }

    /// A player is done: its record is the worker's.
    fn finish(&self, rec: Box<PlayerRecord>) {
        self.shared.borrow_mut().done += 1;
        self.finished.borrow_mut().push(rec);
        self.player_done.notify_one();
    }

    /// At the end of the run: the timers' entries hold their players.
    pub fn drop_timers(&self) {
        self.timers.clear();
        self.roster.borrow_mut().clear();
    }

    fn count(&self, name: &str) {
        self.shared.borrow_mut().m.count(name, 1);
    }

    /// A refusal with `Retry-After` came back: whether to stop trying, the
    /// player's quiz having ended over [`REFUSED_PAST_THE_END`] ago.
    fn refused_past_the_end(&self, quiz_idx: usize) -> bool {
        let sh = self.shared.borrow();
        sh.ended_at
            .get(&quiz_idx)
            .is_some_and(|at| at.elapsed() >= REFUSED_PAST_THE_END)
    }

    fn record(&self, h: H, us: u64) {
        self.shared.borrow_mut().m.record(h, us);
    }
}

/// Percent-encode a token for the query string.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Pending {
    qid: u32,
    choice: u8,
    intended_correct: bool,
    due_us: u64,
    opens_at_ms: u64,
    time_limit_ms: u32,
    points: u32,
}

/// Per-connection-independent state of a running player.
#[derive(Default)]
struct Live {
    pending: Option<Pending>,
    /// Wall µs; never 0, so `NonZeroU64`: each option is one word, not
    /// two (with them the state fits 160 bytes rather than 192).
    drop_at_us: Option<NonZeroU64>,
    /// Wall time to leave (`[[stages]]` ramp down), if this player leaves.
    leave_at_us: Option<NonZeroU64>,
    storm_done: bool,
    /// Questions are decided (answer or not) once, in the order they come:
    /// every question whose index is below this one is decided. The
    /// contract opens a quiz's questions in index order, to every player in
    /// live mode and to each player in self-paced mode, and a welcome
    /// carries the one open now; so one number does what a list of decided
    /// ids did, without an allocation per player.
    decided_below: u32,
    ended: bool,
    results: u32,
    /// Questions this player chose not to answer (`share_answering`): in
    /// self-paced mode a player is done when results + skipped cover them all.
    skipped: u32,
    /// Re-sends after a reconnect (see [`plan_resends`]): the welcome asked
    /// for them (sent once the frames at hand are handled), how many still
    /// wait for their reply, and the welcome's score for the fallback.
    resend_now: bool,
    resends_outstanding: u32,
    welcome_score: u64,
    /// Answers sent before this connection (`rec.answers[..n]`): only
    /// those can have lost their result with a connection. One sent on
    /// this connection before its welcome is read gets its reply after it.
    sent_before_conn: u32,
}

impl Live {
    /// The earliest thing this player plans (answer, drop, leave), wall µs.
    fn next_timer_us(&self) -> Option<u64> {
        [
            self.pending.as_ref().map(|p| p.due_us),
            self.drop_at_us.map(NonZeroU64::get),
            self.leave_at_us.map(NonZeroU64::get),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

enum SessionEnd {
    Ended,
    Deadline,
    /// Dropped on purpose (reconnect storm) at this wall time.
    Dropped(u64),
    /// Closed by the server (close code) or the network; the comeback the close asked for.
    Lost(Option<u16>, &'static str, Option<u32>),
    /// Left on purpose (`[[stages]]` ramp down).
    Left,
}

/// How long a leaving player waits for the results of answers it has in
/// flight, so that what it sent is acknowledged before it goes.
const LEAVE_GRACE_US: u64 = 5_000_000;

/// One player, from its join to its end.
///
/// A task holds it only while it joins or (re)connects ([`run_player`],
/// [`connect`]). Connected, it has no task: the hub calls it as its
/// connection's [`FastPath`] for every message (boards without touching
/// its state), and the worker's [`Timers`] call it when its answer, drop
/// or leave is due. A task, its timer and its session future were ~1.2 KB
/// per player for the whole run.
pub struct Player {
    ctx: Rc<Ctx>,
    /// `rec.quiz`, for the board path, which does not borrow the state.
    quiz: u32,
    /// A leaderboard arrived since the last welcome (the first one after a
    /// welcome is the current board re-sent on connect, not a tick).
    since_welcome: Cell<bool>,
    /// The hub handed it a message other than a board: act on it once the
    /// hub is done with the connection's event (`after_event`).
    busy: Cell<bool>,
    /// One of its callbacks panicked ([`Player::panicked`]).
    broken: Cell<bool>,
    /// The time of the timer entry its plans wait for (wall µs; MAX: none).
    armed_us: Cell<u64>,
    /// Boxed, and `None` once the player is done: a stale timer entry or
    /// the roster's weak reference keeps the `Player`'s own bytes until the
    /// end of the run, not the state (the record moves to the worker).
    st: RefCell<Option<Box<State>>>,
}

#[derive(Default)]
struct State {
    rec: Box<PlayerRecord>,
    live: Live,
    rng: Rng,
    /// The player's token, URL-encoded, for its WebSocket's path (built
    /// at each connect: the quiz's part of it is the worker's).
    token: Box<str>,
    /// The WebSocket, while connected.
    conn: Option<WsConn>,
    /// When the join ended or the last connection was lost (wall µs): the
    /// start of the connect or reconnect latency.
    lost_at_us: u64,
    /// The next connection is the first one (its latency is a connect's).
    first: bool,
    /// This connection's welcome has been read.
    welcomed: bool,
    /// Connections lost in a row, for the back-off.
    failures: u32,
}

/// Start each of `players` at its join time, as a task that joins it and
/// connects it ([`run_player`]): a player waiting for its turn costs
/// nothing but its index here.
pub async fn start_players(ctx: Rc<Ctx>, players: Vec<u64>) {
    for index in players {
        let sched_us = ctx.t0_wall_us + ctx.sc.join_offset_us(index);
        tokio::time::sleep_until(ctx.at_wall(sched_us)).await;
        tokio::task::spawn_local(run_player(ctx.clone(), index, sched_us));
    }
}

/// The worker's timer loop: calls each player when what it planned is due,
/// and every player on the roster at the run's deadline: a connected one's
/// session ends, one (re)connecting sees the deadline itself ([`connect`]).
pub async fn run_timers(ctx: Rc<Ctx>) {
    let deadline = ctx.deadline_wall_us;
    ctx.timers
        .run_until(
            deadline,
            |us| ctx.at_wall(us),
            |p: Rc<Player>, at| p.on_timer(at),
        )
        .await;
    let roster = std::mem::take(&mut *ctx.roster.borrow_mut());
    for p in roster.iter().filter_map(Weak::upgrade) {
        p.on_timer(deadline);
    }
}

/// Join player `index` over HTTP and connect it (its join time, `sched_us`,
/// has come).
async fn run_player(ctx: Rc<Ctx>, index: u64, sched_us: u64) {
    let quizzes = ctx.quiz_ids.len() as u64;
    let mut rec = Box::new(PlayerRecord {
        index,
        quiz: (index % quizzes) as u32,
        ..Default::default()
    });
    if Instant::now() >= ctx.deadline() {
        rec.fail("deadline before join");
        return ctx.finish(rec);
    }
    let Some(token) = join(
        &ctx,
        ctx.source_for(index),
        rec.quiz as usize,
        sched_us,
        &mut rec,
    )
    .await
    else {
        return ctx.finish(rec);
    };
    // Exact sizes up front: growth by doubling would leave up to half of
    // each record unused for the whole run.
    let questions = ctx.sc.quiz.questions as usize;
    rec.answers.reserve_exact(questions);
    let live = Live {
        leave_at_us: ctx.leave_at_us(index).and_then(NonZeroU64::new),
        ..Default::default()
    };
    let player = Rc::new(Player {
        ctx: ctx.clone(),
        quiz: rec.quiz,
        since_welcome: Cell::new(false),
        busy: Cell::new(false),
        broken: Cell::new(false),
        armed_us: Cell::new(u64::MAX),
        st: RefCell::new(Some(Box::new(State {
            rec,
            live,
            rng: Rng::new(ctx.seed ^ index.wrapping_mul(0xA24B_AED4_963E_E407)),
            token,
            lost_at_us: wall_us(),
            first: true,
            ..Default::default()
        }))),
    });
    ctx.roster.borrow_mut().push(Rc::downgrade(&player));
    connect(player, 0).await;
}

/// After `wait_ms`, connect the player's WebSocket (again), retrying as the
/// platform and the scenario's reconnect settings say; connected, hand the
/// player to the hub ([`Player::play`]) and end this task.
async fn connect(p: Rc<Player>, mut wait_ms: u64) {
    let ctx = p.ctx.clone();
    let index = p.state().rec.index;
    loop {
        if wait_ms > 0 {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        }
        if Instant::now() >= ctx.deadline() {
            ctx.count("error.deadline");
            return p.finish();
        }
        if ctx.leave_at_us(index).is_some_and(|l| wall_us() >= l) {
            // Its time to leave came while it was (re)connecting.
            p.state().rec.left = true;
            ctx.count("players_left");
            return p.finish();
        }
        let path = format!(
            "/v1/quizzes/{}/ws?token={}",
            ctx.quiz_ids[p.quiz as usize],
            p.state().token
        );
        let conn = ws_connect(
            &ctx.target,
            ctx.source_for(index),
            &path,
            (index as u32).wrapping_mul(2_654_435_761),
            Duration::from_secs(30),
        )
        .await;
        match conn {
            // Refused before the upgrade with a hint (admission control at
            // core or edge-lb): nothing was set up, so this is neither a
            // failure nor a lost connection. Wait the hint, jittered over
            // 1–1.5× so refused players do not return together, without
            // using up a reconnect attempt; the run's deadline bounds it.
            Err(NetError::Handshake(429 | 503, Some(s))) => {
                ctx.count("ws_connect.retry_after");
                if ctx.refused_past_the_end(p.quiz as usize) {
                    ctx.count("error.ws_connect.refused_past_the_end");
                    p.state().rec.fail(format!(
                        "WebSocket refused with Retry-After until {}s after its quiz ended",
                        REFUSED_PAST_THE_END.as_secs()
                    ));
                    return p.finish();
                }
                let ms = s.clamp(1, 30) * 1000;
                wait_ms = ms + (p.state().rng.f64() * (ms / 2) as f64) as u64;
            }
            Err(e) => {
                ctx.count(&format!("error.ws_connect.{}", e.kind()));
                match p.session_over(SessionEnd::Lost(None, "ws_connect", None)) {
                    Some(ms) => wait_ms = ms,
                    None => return p.finish(),
                }
            }
            Ok(conn) => return p.play(conn),
        }
    }
}

impl FastPath for Player {
    fn on_text(&self, payload: &[u8], now: u64) -> bool {
        // Not unwound through the hub, and not ended here (the hub is in the
        // middle of reading its socket): at the end of the event.
        std::panic::catch_unwind(AssertUnwindSafe(|| self.take_text(payload, now))).unwrap_or_else(
            |_| {
                self.broken.set(true);
                true
            },
        )
    }

    fn after_event(self: Rc<Self>, wake: bool) {
        if self.broken.get() {
            return self.panicked();
        }
        if wake || self.busy.replace(false) {
            self.isolated(|| self.turn());
        }
    }
}

impl Player {
    /// A message from the hub ([`FastPath::on_text`]): false to have it
    /// queued for [`Player::turn`].
    fn take_text(&self, payload: &[u8], now: u64) -> bool {
        // Most of the traffic: counted and timed without the state.
        if self.board(payload, now) {
            return true;
        }
        let Ok(mut guard) = self.st.try_borrow_mut() else {
            return false; // queued, for `turn`
        };
        let Some(st) = guard.as_deref_mut() else {
            return true; // done: nothing more to record
        };
        on_frame(self, payload, now, st);
        self.busy.set(true);
        true
    }

    /// A leaderboard, counted and timed (see [`board_frame`]); false for
    /// any other message, which is the state's ([`on_frame`]).
    fn board(&self, payload: &[u8], now: u64) -> bool {
        board_frame(
            &self.ctx,
            payload,
            &self.since_welcome,
            self.quiz as usize,
            now,
        )
    }

    /// Connected: from now on the hub and the timers drive the player.
    fn play(self: Rc<Self>, conn: WsConn) {
        let ctx = &self.ctx;
        {
            let mut s = ctx.shared.borrow_mut();
            s.connected += 1;
            s.max_connected = s.max_connected.max(s.connected);
        }
        conn.set_fast_path(self.clone());
        {
            let mut st = self.state();
            st.welcomed = false;
            st.live.sent_before_conn = st.rec.answers.len() as u32;
            st.conn = Some(conn);
        }
        // The frames that came with the handshake's response, then the timer.
        self.isolated(|| self.turn());
    }

    /// Act on what the hub handed over: messages it queued, control replies
    /// and re-sends to write, the end of the quiz or of the connection.
    fn turn(self: &Rc<Self>) {
        let ctx = &self.ctx;
        let end = {
            let mut guard = self.st.borrow_mut();
            let Some(st) = guard.as_deref_mut() else {
                return;
            };
            // Out of the state while its messages are handled, which need
            // the rest of it; back before anything else can look.
            let Some(mut conn) = st.conn.take() else {
                return;
            };
            let read = conn.read_available(|bytes, now| {
                if !self.board(bytes, now) {
                    on_frame(self, bytes, now, st);
                }
            });
            let State { rec, live, .. } = st;
            if live.resend_now {
                live.resend_now = false;
                queue_resends(ctx, &conn, rec);
            }
            // Control replies the hub queued, re-sends, an answer's rest.
            let flushed = conn.flush();
            let ended = live.ended;
            st.conn = Some(conn);
            if flushed.is_err() {
                Some(SessionEnd::Lost(None, "write", None))
            } else if ended {
                Some(SessionEnd::Ended)
            } else {
                match read {
                    Ok(ReadState::Open) => None,
                    Ok(ReadState::Closed(code, comeback)) => {
                        Some(SessionEnd::Lost(code, "close", comeback))
                    }
                    Ok(ReadState::Eof) => Some(SessionEnd::Lost(None, "eof", None)),
                    Err(e) => {
                        ctx.count(&format!("error.read.{}", e.kind()));
                        Some(SessionEnd::Lost(None, "read", None))
                    }
                }
            }
        };
        match end {
            Some(end) => self.end_session(end),
            None => self.arm_timer(),
        }
    }

    /// Run one of the player's callbacks from the hub or the timers, which
    /// serve every player of the worker: a panic in it (a bug; its message
    /// is on the worker's stderr) ends this player, not them.
    fn isolated(self: &Rc<Self>, f: impl FnOnce()) {
        if std::panic::catch_unwind(AssertUnwindSafe(f)).is_err() {
            self.panicked();
        }
    }

    /// A callback of this player panicked: it ends as failed (counted as
    /// `error.player_panicked`), its connection dropped. Its state, which
    /// the panic may have left half-changed, is only taken apart.
    fn panicked(self: &Rc<Self>) {
        self.broken.set(true);
        self.armed_us.set(u64::MAX);
        let Some(mut st) = self.st.borrow_mut().take() else {
            return; // done already, or this was a second call
        };
        self.ctx.count("error.player_panicked");
        if let Some(conn) = st.conn.take() {
            self.ctx.shared.borrow_mut().connected -= 1;
            conn.abort();
        }
        st.rec
            .fail("the load tool panicked while playing it (see the worker's stderr)");
        self.ctx.finish(st.rec);
    }

    /// Its timer entry for `at_us` came due (or an older one, now stale).
    fn on_timer(self: &Rc<Self>, at_us: u64) {
        self.isolated(|| self.timer_due(at_us));
    }

    fn timer_due(self: &Rc<Self>, at_us: u64) {
        if self.armed_us.get() == at_us {
            self.armed_us.set(u64::MAX);
        }
        let end = {
            let mut guard = self.st.borrow_mut();
            match guard.as_deref_mut() {
                Some(st) if st.conn.is_some() => self.due_now(st),
                // Between connections its connect task decides; or done.
                _ => return,
            }
        };
        match end {
            Some(end) => self.end_session(end),
            None => self.arm_timer(),
        }
    }

    /// Whatever is due now (wall clock, as the timers): the run's end, a
    /// planned drop, its time to leave, its answer.
    fn due_now(&self, st: &mut State) -> Option<SessionEnd> {
        let ctx = &self.ctx;
        let now = wall_us();
        if now >= ctx.deadline_wall_us {
            return Some(SessionEnd::Deadline);
        }
        let State {
            rec, live, conn, ..
        } = st;
        if let Some(d) = live.drop_at_us.map(NonZeroU64::get).filter(|d| now >= *d) {
            live.drop_at_us = None;
            live.storm_done = true;
            return Some(SessionEnd::Dropped(d));
        }
        if live.leave_at_us.is_some_and(|l| now >= l.get()) {
            // Leave once no answer is in flight (its result still counts),
            // but within a grace.
            let in_flight = rec.has_open_answers();
            let first_due = ctx.t0_wall_us + ctx.sc.leave_offset_us(rec.index).unwrap_or(0);
            if in_flight && now < first_due + LEAVE_GRACE_US {
                live.leave_at_us = NonZeroU64::new(now + 100_000);
            } else {
                live.pending = None;
                return Some(SessionEnd::Left);
            }
        }
        if live.pending.as_ref().is_some_and(|p| now >= p.due_us) {
            let conn = conn.as_mut()?;
            let p = live.pending.take()?;
            rec.answers.push(AnswerRec {
                question_id: p.qid,
                intended_correct: p.intended_correct,
                sent_us: now,
                sent_late_us: u32::try_from(now.saturating_sub(p.due_us)).unwrap_or(u32::MAX),
                opens_at_ms: p.opens_at_ms,
                time_limit_ms: p.time_limit_ms,
                max_points: p.points,
                result: None,
                inferred: false,
                choice: p.choice,
                resent: false,
            });
            conn.frame_text(&encode_answer(p.qid, u32::from(p.choice)));
            if conn.flush().is_err() {
                return Some(SessionEnd::Lost(None, "write", None));
            }
            ctx.count("answers_sent");
        }
        None
    }

    /// Give the timers an entry for the player's next plan, unless one for
    /// that instant is already there.
    fn arm_timer(self: &Rc<Self>) {
        let next = {
            let guard = self.st.borrow();
            match guard.as_deref() {
                Some(st) if st.conn.is_some() => st.live.next_timer_us(),
                _ => return,
            }
        };
        if let Some(at) = next {
            if at != self.armed_us.get() {
                self.armed_us.set(at);
                self.ctx.timers.arm(at, self.clone());
            }
        }
    }

    /// The connection is over: close it as `end` says, then reconnect (a
    /// task again) or finish.
    fn end_session(self: &Rc<Self>, end: SessionEnd) {
        let conn = self.state().conn.take();
        self.armed_us.set(u64::MAX);
        if let Some(conn) = conn {
            self.ctx.shared.borrow_mut().connected -= 1;
            match end {
                SessionEnd::Ended | SessionEnd::Deadline | SessionEnd::Left => conn.close_now(1000),
                SessionEnd::Dropped(_) => conn.abort(),
                SessionEnd::Lost(..) => drop(conn),
            }
        }
        match self.session_over(end) {
            Some(wait_ms) => {
                tokio::task::spawn_local(connect(self.clone(), wait_ms));
            }
            None => self.finish(),
        }
    }

    /// Count how a connection (or an attempt) ended and decide what follows:
    /// `None` = the player is done, `Some(ms)` = reconnect after `ms`.
    fn session_over(&self, end: SessionEnd) -> Option<u64> {
        let ctx = &self.ctx;
        let mut st = self.state();
        match end {
            SessionEnd::Ended => {
                st.rec.ended = true;
                None
            }
            SessionEnd::Deadline => {
                ctx.count("error.deadline");
                None
            }
            SessionEnd::Left => {
                st.rec.left = true;
                ctx.count("players_left");
                None
            }
            SessionEnd::Dropped(at) => {
                ctx.count("storm_drops");
                st.lost_at_us = at;
                st.first = false;
                st.failures = 0;
                Some(0)
            }
            SessionEnd::Lost(code, why, comeback) => {
                match code {
                    Some(c) => ctx.count(&format!("close.{c}")),
                    None => ctx.count(&format!("close.none_{why}")),
                }
                // 4009: another session of this player took over (one live
                // connection per player); reconnecting would replace it in
                // turn. Never happens in a normal run (one session per token).
                if matches!(code, Some(4001) | Some(4004) | Some(4009)) {
                    st.rec.fail(format!("closed with {code:?}"));
                    return None;
                }
                st.failures += 1;
                let rc = &ctx.sc.reconnect;
                if !rc.enabled || st.failures > rc.max_attempts {
                    st.rec
                        .fail(format!("connection lost ({why}, close {code:?})"));
                    return None;
                }
                if why != "ws_connect" {
                    st.lost_at_us = wall_us();
                    st.first = false;
                }
                ctx.count("reconnects");
                // edge-lb closed the tunnel and said when to come back (drawn per tunnel, so
                // the node's crowd returns spread): that, plus up to 250 ms, replaces the
                // backoff, as the web client does.
                Some(match comeback {
                    Some(ms) => {
                        ctx.count("reconnect.comeback_hinted");
                        u64::from(ms) + (st.rng.f64() * 250.0) as u64
                    }
                    None => {
                        let backoff = rc.backoff_ms.saturating_mul(1 << (st.failures - 1).min(6));
                        backoff / 2 + (st.rng.f64() * backoff as f64 * 0.5) as u64
                    }
                })
            }
        }
    }

    /// The player is done: its record goes to the worker, its state is freed.
    fn finish(&self) {
        if let Some(st) = self.st.borrow_mut().take() {
            self.ctx.finish(st.rec);
        }
    }

    /// The state of a player that is not done: every caller runs before
    /// [`Player::finish`], which is the last thing that happens to a player.
    fn state(&self) -> RefMut<'_, State> {
        RefMut::map(self.st.borrow_mut(), |st| {
            st.as_deref_mut()
                .expect("a player's state lives until it is done")
        })
    }
}

/// Player `index`'s nickname (unique in the run's quizzes; not kept: derived).
fn nickname(index: u64) -> String {
    format!("p{index}")
}

/// Join the player's quiz over HTTP (retrying 429/502/503/504 and network
/// errors a few times); on success records the join latency and the player
/// id and returns the player's token, URL-encoded for the WebSocket's path.
///
/// A refusal with `Retry-After` (core's admission control, edge-lb's
/// limits) is honoured, jittered over 1–1.5× the hint so refused players
/// do not return together, and does not use up an attempt of the few kept
/// for failures (it wrote nothing; the run's deadline bounds the waiting).
///
/// Every attempt carries the same `Idempotency-Key` (run + player index):
/// when an attempt failed ambiguously (a proxy's 502/503, a timeout, a
/// reset) after core had already added the player, the retry gets that
/// same player back (201, same id and token) instead of 409 "nickname
/// taken". Joins that succeed after a failed attempt count as
/// `join.retried_ok`.
async fn join(
    ctx: &Ctx,
    source: Option<IpAddr>,
    quiz_idx: usize,
    sched_us: u64,
    rec: &mut PlayerRecord,
) -> Option<Box<str>> {
    let quiz_id = &ctx.quiz_ids[quiz_idx];
    let body = format!(r#"{{"nickname":"{}"}}"#, nickname(rec.index));
    let path = format!("/v1/quizzes/{quiz_id}/players");
    let key = format!("lt-{:x}-{:x}-{}", ctx.seed, ctx.t0_wall_us, rec.index);
    let headers = [("Idempotency-Key", key.as_str())];
    let mut attempt = 0u32;
    let joined: Joined = loop {
        attempt += 1;
        let wait: Duration;
        let res = http_request(
            &ctx.target,
            source,
            "POST",
            &path,
            &headers,
            Some(body.as_bytes()),
            Duration::from_secs(30),
        )
        .await;
        let retry = match res {
            Ok(r) if r.status == 201 => match serde_json::from_slice::<Joined>(&r.body) {
                Ok(j) => break j,
                Err(e) => {
                    ctx.count("error.join.body");
                    rec.fail(format!("join: bad body: {e}"));
                    return None;
                }
            },
            Ok(r) => {
                ctx.count(&format!("error.join.http_{}", r.status));
                rec.fail(format!(
                    "join: HTTP {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                ));
                let retry = matches!(r.status, 429 | 502 | 503 | 504);
                if let (true, Some(s)) = (retry, r.retry_after_s) {
                    ctx.count("join.retry_after");
                    if ctx.refused_past_the_end(quiz_idx) {
                        ctx.count("error.join.refused_past_the_end");
                        rec.fail(format!(
                            "join: HTTP {} with Retry-After until {}s after its quiz ended",
                            r.status,
                            REFUSED_PAST_THE_END.as_secs()
                        ));
                        return None;
                    }
                    attempt -= 1;
                    let ms = s.clamp(1, 30) * 1000;
                    let jitter = player_share(ctx.seed, rec.index, 0x5e7 + u64::from(attempt));
                    wait = Duration::from_millis(ms + (jitter * (ms / 2) as f64) as u64);
                } else {
                    wait = Duration::from_millis(200 * attempt as u64);
                }
                retry
            }
            Err(e) => {
                ctx.count(&format!("error.join.{}", e.kind()));
                rec.fail(format!("join: {e}"));
                wait = Duration::from_millis(200 * attempt as u64);
                !matches!(e, NetError::Refused(_))
            }
        };
        if !retry || attempt >= 4 || Instant::now() + wait >= ctx.deadline() {
            return None;
        }
        tokio::time::sleep(wait).await;
    };
    if rec.failure.take().is_some() {
        ctx.count("join.retried_ok");
    }
    ctx.record(H::Join, wall_us().saturating_sub(sched_us));
    rec.player_id = joined.player_id;
    ctx.shared.borrow_mut().joined += 1;
    Some(urlencode(&joined.player_token).into_boxed_str())
}

/// A message that is not a board in core's layout (see [`board_frame`]),
/// received at `now` µs, applied to the player's state.
fn on_frame(p: &Player, bytes: &[u8], now: u64, st: &mut State) {
    let State {
        rec,
        live,
        rng,
        lost_at_us,
        first,
        welcomed,
        ..
    } = st;
    let (lost_at_us, first) = (*lost_at_us, *first);
    let ctx = &*p.ctx;
    let quiz_idx = p.quiz as usize;
    let mut sh = ctx.shared.borrow_mut();
    sh.frames_total += 1;
    sh.hot.frames_in += 1;
    let msg = match ServerMsg::parse(bytes) {
        Ok(m) => m,
        Err(_) => {
            sh.m.count("error.parse", 1);
            return;
        }
    };
    match msg.ty.as_ref() {
        "welcome" => {
            p.since_welcome.set(false);
            if !*welcomed {
                *welcomed = true;
                let h = if first { H::Connect } else { H::Reconnect };
                sh.m.record(h, now.saturating_sub(lost_at_us));
            }
            drop(sh);
            if let Some(s) = msg.score {
                plan_resends(rec, live, s, first);
            }
            if let Some(q) = msg.open_question() {
                if msg.answered == Some(true) {
                    live.decided_below = live.decided_below.max(q.index + 1);
                }
                consider_question(ctx, rec, live, rng, quiz_idx, q, now);
            }
        }
        "question" => {
            if let Some(q) = msg.open_question() {
                if q.opens_at_ms > 0 {
                    sh.m.record(H::Question, now.saturating_sub(q.opens_at_ms * 1000));
                }
                drop(sh);
                consider_question(ctx, rec, live, rng, quiz_idx, q, now);
            }
        }
        "answer_result" => {
            sh.m.count("answer_results", 1);
            let qid = msg.question_id.unwrap_or(u32::MAX);
            let accepted = msg.accepted.unwrap_or(false);
            if accepted {
                sh.m.count("answers_accepted", 1);
            } else {
                let reason = msg.reason.as_deref().unwrap_or("none");
                sh.m.count(&format!("answers_rejected.{reason}"), 1);
            }
            let pos = rec
                .answers
                .iter()
                .position(|a| a.question_id == qid && a.is_open());
            let Some(pos) = pos else {
                rec.push_live_issue(format!(
                    "answer_result for question {qid} that has no outstanding answer"
                ));
                return;
            };
            sh.m.record(H::Answer, now.saturating_sub(rec.answers[pos].due_us()));
            drop(sh);
            // Replies before the last re-send's: to the re-sends and to
            // answers sent on this connection before its welcome was read.
            let during_resends = live.resends_outstanding > 0;
            let resent = rec.answers[pos].resent && during_resends;
            if resent {
                live.resends_outstanding -= 1;
                if !accepted && !matches!(msg.reason.as_deref(), Some("duplicate" | "late")) {
                    // Refused (an older core says `not_open` once the
                    // question moved on): the welcome's score decides.
                    ctx.count("answers_resent_refused");
                    live.results += 1;
                    settle_resends(rec, live);
                    return;
                }
            }
            let r = ResultRec {
                accepted,
                reason: msg.reason.as_deref().map(|r| Box::new(r.to_owned())),
                correct: msg.correct_flag(),
                points: saturating_u32(msg.points.unwrap_or(0)),
                score: msg.score.unwrap_or(0),
                at_us: now,
            };
            let reported = r.score;
            let has_score = msg.score.is_some();
            let points = r.points;
            rec.answers[pos].result = Some(r);
            live.results += 1;
            if during_resends && accepted {
                // Scored after the welcome (a re-send whose first attempt
                // never reached the store, or an answer sent before the
                // welcome was read): not in the welcome's score, which the
                // fallback compares with the acknowledged sum.
                live.welcome_score += u64::from(points);
            }
            if resent {
                settle_resends(rec, live);
            }
            let expected = rec.acknowledged_points();
            // While re-sends are outstanding a reported score may include
            // their originals' points (not acknowledged yet): checked at
            // the last one.
            let acked = rec.answers[pos].acked().is_some();
            if acked && has_score && live.resends_outstanding == 0 && reported != expected {
                rec.push_live_issue(format!(
                    "answer_result for question {qid} says score {reported}, acknowledged points sum to {expected}"
                ));
            }
            if !ctx.sc.mode_is_live() && live.results + live.skipped >= ctx.sc.quiz.questions {
                live.ended = true;
            }
        }
        "question_closed" => sh.m.count("question_closed", 1),
        "leaderboard" => {
            let head = BoardHead {
                version: msg.version,
                ts_ms: msg.ts_ms,
            };
            on_board(&mut sh, head, &p.since_welcome, quiz_idx, now);
        }
        "quiz_ended" => {
            sh.m.count("quiz_ended", 1);
            sh.ended_at.entry(quiz_idx).or_insert_with(Instant::now);
            live.ended = true;
        }
        "error" => {
            let code = msg.code.as_deref().unwrap_or("unknown");
            sh.m.count(&format!("error.server.{code}"), 1);
            if live.resends_outstanding > 0 {
                // Replies come in order, and re-sends go first after a
                // welcome: this refuses the next outstanding re-send.
                sh.m.count("answers_resent_refused", 1);
                drop(sh);
                live.resends_outstanding -= 1;
                settle_resends(rec, live);
            }
        }
        "pong" => {}
        _ => sh.m.count("unknown_message", 1),
    }
}

/// A `leaderboard` frame in core's layout (most of the traffic), received
/// at `now` µs: counted and timed without deserializing it and without the
/// player's state; false = not such a frame (then `on_frame` gets it).
fn board_frame(
    ctx: &Ctx,
    bytes: &[u8],
    lb_since_welcome: &Cell<bool>,
    quiz_idx: usize,
    now: u64,
) -> bool {
    let Some(head) = scan_leaderboard(bytes) else {
        return false;
    };
    let mut sh = ctx.shared.borrow_mut();
    sh.frames_total += 1;
    sh.hot.frames_in += 1;
    on_board(&mut sh, head, lb_since_welcome, quiz_idx, now);
    true
}

/// A `leaderboard` frame: count it and time it (see `metrics.rs`).
fn on_board(
    sh: &mut Shared,
    head: BoardHead,
    lb_since_welcome: &Cell<bool>,
    quiz_idx: usize,
    now: u64,
) {
    sh.hot.leaderboards += 1;
    if let Some(ts) = head.ts_ms {
        sh.m.record(H::Leaderboard, now.saturating_sub(ts * 1000));
    } else if let (Some(v), true) = (head.version, lb_since_welcome.get()) {
        // No server stamp: measure the fan-out delay from the first receipt
        // of the same version by any player of this worker.
        if sh.lb_first.len() <= quiz_idx {
            sh.lb_first.resize(quiz_idx + 1, BoardRing::default());
        }
        if let Some(first) = sh.lb_first[quiz_idx].first_receipt(v, now) {
            sh.m.record(H::Leaderboard, now.saturating_sub(first));
        }
        sh.hot.leaderboard_unstamped += 1;
    }
    lb_since_welcome.set(true);
}

/// A welcome (after a reconnect): answers sent whose `answer_result` never
/// came are sent again, identical (the client rule of CONTRACT.md): core
/// answers `duplicate` with the original's result if the first attempt was
/// recorded (and publishes its event again, which repairs a node killed
/// between the store and Kafka), or scores it now if it never arrived. The
/// reply is then the acknowledgement ([`AnswerRec::acked`]). Nothing open:
/// the welcome's score is checked at once, as before.
fn plan_resends(rec: &mut PlayerRecord, live: &mut Live, score: u64, first: bool) {
    let mut open = 0;
    let before = live.sent_before_conn as usize;
    for a in rec.answers.iter_mut().take(before) {
        if a.is_open() {
            a.resent = true;
            open += 1;
        }
    }
    live.resends_outstanding = open;
    live.resend_now = open > 0;
    live.welcome_score = score;
    if open == 0 {
        reconcile_welcome(rec, score, first, before);
    }
}

/// Queues every open answer again (right after the welcome that asked for it).
fn queue_resends(ctx: &Ctx, conn: &WsConn, rec: &PlayerRecord) {
    for a in rec.answers.iter() {
        if a.resent && a.is_open() {
            conn.frame_text(&encode_answer(a.question_id, u32::from(a.choice)));
            ctx.count("answers_resent");
        }
    }
}

/// Once every re-send has its reply: answers still open (their re-send was
/// refused: an `error`, or a rejection other than `duplicate` / `late`) are
/// resolved from the welcome's score, the fallback that was the only rule
/// before re-sends. That score is still the platform's minus what the
/// re-sends scored afresh (added to it): replies come in order, and nothing
/// new is acknowledged before the re-sends' replies.
fn settle_resends(rec: &mut PlayerRecord, live: &Live) {
    if live.resends_outstanding == 0 && rec.answers.iter().any(|a| a.resent && a.is_open()) {
        reconcile_welcome(
            rec,
            live.welcome_score,
            false,
            live.sent_before_conn as usize,
        );
    }
}

/// After a reconnect the welcome carries the platform's score. Answers whose
/// ack was lost with the old connection (among `rec.answers[..before]`, those
/// sent before this connection) are resolved from it.
fn reconcile_welcome(rec: &mut PlayerRecord, score: u64, first: bool, before: usize) {
    let acked = rec.acknowledged_points();
    if score == acked {
        return;
    }
    let unacked: Vec<usize> = rec
        .answers
        .iter()
        .take(before)
        .enumerate()
        .filter(|(_, a)| a.is_open())
        .map(|(i, _)| i)
        .collect();
    if score > acked && !unacked.is_empty() {
        rec.inferred_points += score - acked;
        for i in unacked {
            rec.answers[i].inferred = true;
        }
    } else if !(first && score == 0) {
        rec.push_live_issue(format!(
            "welcome says score {score}, acknowledged points sum to {acked}"
        ));
    }
}

fn consider_question(
    ctx: &Ctx,
    rec: &PlayerRecord,
    live: &mut Live,
    rng: &mut Rng,
    quiz_idx: usize,
    q: OpenQuestion,
    now_us: u64,
) {
    if q.index < live.decided_below || rec.answers.iter().any(|a| a.question_id == q.id) {
        return;
    }
    live.decided_below = q.index + 1;
    let sc = &ctx.sc;
    let base_ms = if q.opens_at_ms > 0 {
        q.opens_at_ms
    } else {
        now_us / 1000
    };
    if let Some(s) = &sc.reconnect_storm {
        if q.index == s.at_question
            && !live.storm_done
            && player_share(ctx.seed, rec.index, 0x5707) < s.share
        {
            live.drop_at_us = NonZeroU64::new((base_ms + s.after_ms) * 1000);
        }
    }
    if rng.f64() >= sc.answers.share_answering {
        // Self-paced: the next question comes when this one's time runs out;
        // a player that skips the last one has nothing left to wait for.
        live.skipped += 1;
        if !sc.mode_is_live() && live.results + live.skipped >= sc.quiz.questions {
            live.ended = true;
        }
        return;
    }
    let intended_correct = rng.f64() < sc.answers.share_correct;
    let think_ms = match &sc.answers.burst {
        Some(b) if rng.f64() < b.share => (rng.f64() * b.within_ms as f64) as u64,
        _ => sc.answers.think_time.sample(rng.f64(), rng.f64()),
    };
    let options = sc.quiz.options;
    let right = correct_option(quiz_idx, q.index, options);
    let choice = if intended_correct {
        right
    } else {
        (right + 1 + (rng.next_u64() % (options as u64 - 1)) as u32) % options
    };
    // Below `options`, which the scenario keeps at 2..=6.
    let choice = choice as u8;
    if live.pending.is_some() {
        ctx.count("answers_superseded");
    }
    live.pending = Some(Pending {
        qid: q.id,
        choice,
        intended_correct,
        due_us: (base_ms + think_ms) * 1000,
        opens_at_ms: q.opens_at_ms,
        time_limit_ms: saturating_u32(if q.time_limit_ms > 0 {
            q.time_limit_ms
        } else {
            sc.quiz.time_limit_ms
        }),
        points: if q.time_limit_ms > 0 {
            saturating_u32(q.points)
        } else {
            sc.quiz.points
        },
    });
}

/// A server-sent number into a record's 32-bit field: the contract keeps
/// points and time limits far below 2^32; a larger value is kept as
/// `u32::MAX`, which the checks then flag, rather than wrapped.
fn saturating_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_choice_never_equals_right() {
        for quiz in 0..5 {
            for q in 0..10 {
                for options in 2..=6u32 {
                    let right = correct_option(quiz, q, options);
                    assert!(right < options);
                    let mut rng = Rng::new(q as u64);
                    for _ in 0..20 {
                        let c =
                            (right + 1 + (rng.next_u64() % (options as u64 - 1)) as u32) % options;
                        assert_ne!(c, right);
                    }
                }
            }
        }
    }

    #[test]
    fn a_connected_player_stays_small() {
        // What every connected player holds for the whole run besides its
        // token, its socket's hub entry and its timer entries, against
        // jemalloc's size classes: a 160-byte state (192 past it), a
        // 128-byte record (160), five answer records in 384 bytes (448 past
        // 76 bytes each).
        let (player, state) = (std::mem::size_of::<Player>(), std::mem::size_of::<State>());
        let (record, answer) = (
            std::mem::size_of::<PlayerRecord>(),
            std::mem::size_of::<AnswerRec>(),
        );
        eprintln!("player: {player} + {state} + {record} bytes, answer record {answer}");
        assert!(player <= 48, "the player is {player} bytes");
        assert!(state <= 160, "its state is {state} bytes");
        assert!(record <= 128, "its record is {record} bytes");
        assert!(answer <= 76, "an answer record is {answer} bytes");
    }

    #[test]
    fn urlencode_escapes() {
        assert_eq!(urlencode("a.b-c_d~"), "a.b-c_d~");
        assert_eq!(urlencode("a+b/c="), "a%2Bb%2Fc%3D");
    }

    #[test]
    fn welcome_reconciles_lost_ack() {
        let mut rec = PlayerRecord {
            player_id: "p".into(),
            answers: vec![
                AnswerRec {
                    question_id: 0,
                    ..Default::default()
                },
                // Sent on the new connection before its welcome was read:
                // its reply is still to come, nothing to infer.
                AnswerRec {
                    question_id: 1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        reconcile_welcome(&mut rec, 900, false, 1);
        assert_eq!(rec.acknowledged_points(), 900);
        assert!(rec.answers[0].inferred);
        assert!(!rec.answers[1].inferred);
        assert!(rec.live_issues().is_empty());
        reconcile_welcome(&mut rec, 100, false, 1);
        assert_eq!(rec.live_issues().len(), 1);
    }

    #[test]
    fn shares_are_stable_and_spread() {
        let n = (0..10_000)
            .filter(|i| player_share(42, *i, 1) < 0.3)
            .count();
        assert!((2700..3300).contains(&n), "{n}");
        assert_eq!(player_share(1, 2, 3), player_share(1, 2, 3));
    }
}
