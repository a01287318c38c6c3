//! Rooms: the fan-out side of the WebSocket hot path.
//!
//! One [`Room`] per quiz that has members (players or hosts) connected to
//! this node, in a `DashMap` keyed by quiz id. Each room runs one task that
//! - every `leaderboard_interval_ms` (500 ms) reads the leaderboard from the
//!   store and, only if its version changed, encodes it **once** and hands
//!   the same `Bytes` to every member. Encoding per member would cost
//!   O(members × size) CPU per tick; sharing the buffer costs one refcount
//!   bump each. The board is also framed once (WebSocket header included)
//!   and written straight to each member's socket whose writer is idle:
//!   one `write` per socket, as a bare loop would, no writer task woken
//!   (`outbox.rs`, *the direct write*). Reading the store (not a local counter) is what makes
//!   answers applied on *other* nodes show up here.
//!   The board is the optional part of a room (latest-value: a newer one
//!   replaces an unsent one), so it is what gives way under pressure: a
//!   tick is **skipped**, never queued, while the previous tick's read is
//!   still in flight (a slow store) or when the tick fires more than
//!   `board_tick_late_ms` late (an overloaded node; at most
//!   [`MAX_LATE_SKIPS`] in a row, so boards slow down rather than stop),
//!   counted in `quiz_board_ticks_skipped_total{reason}`. The read runs
//!   beside the room's other work, so a slow board read delays no
//!   `question`/`question_closed`. Answers are not on this path at all:
//!   each is acknowledged by its connection after the store's apply (and
//!   `WAIT`) and the event sink's delivery.
//! - on a control-bus notification, at a question's `closes_at`, or every
//!   `reconcile_interval_ms`, re-reads the quiz state and turns what changed
//!   into `question`, `question_closed` (with the store's distribution) and
//!   `quiz_ended`. The store is the truth; the bus only makes it prompt.
//!
//! Each member owns an [`Outbox`] (`outbox.rs`): pushing never blocks and
//! never awaits, so one slow player can never delay the others.
//!
//! Locking: the member map is a `parking_lot::Mutex` held only to copy
//! the members' outboxes out (a copy kept until the membership changes; a
//! fan-out writes to the sockets after releasing it, yielding every
//! `FAN_OUT_CHUNK` sockets, a board's over one task per runtime worker),
//! never across an `.await`; the
//! `DashMap` guard is only held to insert/remove a room, never across an
//! `.await` either (a held shard guard would block every other room that
//! hashes to the same shard, and could deadlock a task that re-enters it).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::model::{now_ms, Mode, Phase, QuizDef, QuizState};
use crate::outbox::{close, text_frame, uptime_s, Outbox, Pushed};
use crate::protocol;
use crate::self_paced::{self, Presented};
use crate::service::QuizService;

// ------------------------------------------------------------------- rooms

pub struct Member {
    pub outbox: Arc<Outbox>,
    pub host: bool,
    /// Players only.
    pub player_id: Option<String>,
    /// Self-paced: the question presented to this player.
    pub presented: Arc<Presented>,
}

#[derive(Default)]
struct Members {
    next_id: u64,
    /// By member id, so in join order: a fan-out writes the sockets in the
    /// order they were accepted and their outboxes allocated, as a bare
    /// loop over accepted sockets does. Walking the outboxes in memory
    /// order, and reaching a client's sockets one after the other rather
    /// than at random, took a quarter off the CPU per board frame
    /// (docs/performance.md, "Fan-out: the members in join order").
    map: BTreeMap<u64, Member>,
    /// Player id → that player's one live member here: a newer connection
    /// replaces the older (close 4009), so a phone that reconnects before
    /// the server noticed its old socket die is never refused by its ghost,
    /// and one token cannot hold thousands of sockets.
    players: HashMap<String, u64>,
    /// Every member's outbox, copied out once and shared by the fan-outs
    /// until the membership changes (a join or leave drops it): a board
    /// tick then costs one `Arc` bump, not one per member (19 000 atomic
    /// increments and decrements on as many cache lines, twice a second).
    snapshot: Option<Arc<[Arc<Outbox>]>>,
}

pub struct Room {
    pub quiz_id: String,
    def: Arc<QuizDef>,
    members: Mutex<Members>,
    /// Re-read the state now (bus message, host action on this node).
    wake: Notify,
    /// An answer was applied on this node since the last leaderboard read.
    dirty: AtomicBool,
    /// The last encoded leaderboard, handed to members as they join.
    last_board: Mutex<Option<Bytes>>,
}

impl Room {
    /// An answer was applied: the leaderboard is worth reading next tick.
    /// Read before written: every answer of the room touches it, from every
    /// worker, and a store to a line another core holds takes that line;
    /// after the first answer of a tick the flag is set and stays shared.
    pub fn touch(&self) {
        if !self.dirty.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.members.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members' outboxes, taken under the lock and written to after
    /// it: a fan-out's socket writes (one `write` each) take far longer
    /// than the lock may be held (a join waits on it). The copy is kept
    /// until the membership changes.
    fn outboxes(&self) -> Arc<[Arc<Outbox>]> {
        let mut members = self.members.lock();
        let Members { map, snapshot, .. } = &mut *members;
        Arc::clone(
            snapshot.get_or_insert_with(|| map.values().map(|m| Arc::clone(&m.outbox)).collect()),
        )
    }

    /// The hosts' outboxes (a few per room, copied each time).
    fn host_outboxes(&self) -> Vec<Arc<Outbox>> {
        let members = self.members.lock();
        members
            .map
            .values()
            .filter(|m| m.host)
            .map(|m| Arc::clone(&m.outbox))
            .collect()
    }

    /// Sends must-deliver frames to every member (or every host), framed
    /// once here and shared: each push writes them to an idle socket at
    /// once, in one write however many frames, or queues them, never
    /// awaiting the client (see [`Outbox::push_texts_framed`]). Returns the
    /// number of slow consumers closed.
    async fn fan_out(&self, frames: &[Bytes], hosts_only: bool) -> usize {
        let mut wire = Vec::new();
        for f in frames {
            wire.extend_from_slice(&text_frame(f));
        }
        let framed = Bytes::from(wire);
        let hosts;
        let all;
        let targets: &[Arc<Outbox>] = if hosts_only {
            hosts = self.host_outboxes();
            &hosts
        } else {
            all = self.outboxes();
            &all
        };
        let mut slow = 0;
        for chunk in targets.chunks(FAN_OUT_CHUNK) {
            for o in chunk {
                if o.push_texts_framed(frames, &framed) == Pushed::Overflowed {
                    slow += 1;
                }
            }
            tokio::task::yield_now().await;
        }
        slow
    }

    /// Hands one encoded leaderboard to every member: framed once here,
    /// then written as is to each socket whose writer is idle (one `write`
    /// of shared bytes, no task wake-up), or left in its board slot.
    /// Returns how many unsent (stale) boards were replaced.
    ///
    /// A large room's sockets are split into one slice per runtime worker,
    /// each written by a task of its own in bursts of
    /// [`BOARD_BURST`] sockets: the fan-out's wall time shrinks with the
    /// workers (a 19 000-socket room took ~430 ms on one task of a starved
    /// 2-vCPU machine, long enough to skip the next tick), and the writes
    /// come as fast as the kernel takes them, as a bare loop's do, so a
    /// client reading many sockets finds them ready together instead of
    /// being woken for each. Each socket is in one slice only, and its
    /// outbox keeps its frames in order whoever writes them.
    async fn fan_out_board(&self, board: &Bytes) -> usize {
        let framed = text_frame(board);
        let all = self.outboxes();
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let parts = workers.clamp(1, all.len().div_ceil(MIN_BOARD_SLICE).max(1));
        if parts == 1 {
            return write_board_slice(&all, board, &framed).await;
        }
        // All slices as tasks: the runtime keeps the newest spawned task
        // for this worker (its LIFO slot, which others cannot steal) and
        // queues the earlier ones where idle workers take them.
        let per = all.len().div_ceil(parts);
        let slices: Vec<_> = (0..parts)
            .map(|p| {
                let (all, board, framed) = (Arc::clone(&all), board.clone(), framed.clone());
                tokio::spawn(async move {
                    let end = ((p + 1) * per).min(all.len());
                    write_board_slice(&all[(p * per).min(end)..end], &board, &framed).await
                })
            })
            .collect();
        let mut dropped = 0;
        for s in slices {
            // A slice's task only ends early if the runtime shuts down.
            dropped += s.await.unwrap_or(0);
        }
        dropped
    }

    /// Adds a member; returns its id and the same player's older member,
    /// which it replaces (the caller closes it).
    fn add(&self, member: Member) -> (u64, Option<Member>) {
        let mut m = self.members.lock();
        m.next_id += 1;
        let id = m.next_id;
        let replaced = match &member.player_id {
            Some(pid) => m
                .players
                .insert(pid.clone(), id)
                .and_then(|old| m.map.remove(&old)),
            None => None,
        };
        m.map.insert(id, member);
        m.snapshot = None;
        (id, replaced)
    }

    fn remove(&self, id: u64) {
        let mut members = self.members.lock();
        members.snapshot = None;
        if let Some(Member {
            player_id: Some(pid),
            ..
        }) = members.map.remove(&id)
        {
            if members.players.get(&pid) == Some(&id) {
                members.players.remove(&pid);
            }
        }
    }

    fn has_hosts(&self) -> bool {
        self.members.lock().map.values().any(|m| m.host)
    }

    /// The keepalive sweep: closes members silent for `idle_s` (4010) and
    /// asks every other member's writer for a ping, whose pong counts as
    /// inbound. One pass per room per `ws_ping_interval_ms` instead of a
    /// timer per connection.
    fn keepalive(&self, now_s: u32, idle_s: u32) {
        let members = self.members.lock();
        for m in members.map.values() {
            if m.outbox.idle_s(now_s) >= idle_s {
                m.outbox.close(close::IDLE, "idle timeout");
            } else {
                m.outbox.ping();
            }
        }
    }
}

/// Sockets written per slice of a fan-out before the room task yields:
/// a fan-out to 19 000 sockets is ~0.1 s of `write` calls, which must not
/// hold a runtime thread from everything else (answers, other rooms).
const FAN_OUT_CHUNK: usize = 512;

/// Sockets a board slice writes between yields: ~10 ms of `write` calls on
/// an idle machine, short enough for answers and other rooms to get the
/// thread in time, long enough that the writes come in bursts.
const BOARD_BURST: usize = 2048;

/// Fewest sockets worth a slice (a task) of their own in a board fan-out.
const MIN_BOARD_SLICE: usize = 1024;

/// Writes the board to one slice of a room's outboxes. Returns how many
/// unsent (stale) boards were replaced.
async fn write_board_slice(outboxes: &[Arc<Outbox>], board: &Bytes, framed: &Bytes) -> usize {
    let mut dropped = 0;
    for burst in outboxes.chunks(BOARD_BURST) {
        dropped += burst
            .iter()
            .filter(|o| o.set_board_framed(board, framed))
            .count();
        tokio::task::yield_now().await;
    }
    dropped
}

/// Hands one encoded leaderboard to every outbox: a refcount bump and a
/// slot swap each (or a direct write), no copy, no await. Returns how many
/// unsent (stale) boards were replaced. (Public for the fan-out benchmark;
/// the room's own tick frames the board once and writes it directly.)
pub fn fan_out_board_to<'a>(outboxes: impl Iterator<Item = &'a Outbox>, frame: &Bytes) -> usize {
    outboxes.filter(|o| o.set_board(frame.clone())).count()
}

/// All rooms of this node, over the service they read from.
pub struct Rooms {
    map: DashMap<String, Arc<Room>>,
    svc: Arc<QuizService>,
}

/// A connection's place in a room; leaving is explicit (`Rooms::leave`).
pub struct Membership {
    pub room: Arc<Room>,
    pub id: u64,
}

impl Rooms {
    pub fn new(svc: Arc<QuizService>) -> Arc<Rooms> {
        Arc::new(Rooms {
            map: DashMap::new(),
            svc,
        })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds a member, creating the room (and its task) if needed. The member
    /// is added while the map entry is held, so the room task can't remove
    /// the room as empty between lookup and insert.
    ///
    /// `seen_state` is the state the member's welcome was built from; a room
    /// created by this join starts from it, so the room announces exactly
    /// what changed after that welcome (reading the state again in the
    /// room task would race with a host action in between).
    pub fn join(
        self: &Arc<Self>,
        def: Arc<QuizDef>,
        member: Member,
        seen_state: &QuizState,
    ) -> Membership {
        let rooms = self;
        let outbox = Arc::clone(&member.outbox);
        let (room, id, created) = {
            let mut created = false;
            let entry = rooms.map.entry(def.quiz_id.clone()).or_insert_with(|| {
                created = true;
                Arc::new(Room {
                    quiz_id: def.quiz_id.clone(),
                    def: Arc::clone(&def),
                    members: Mutex::new(Members::default()),
                    wake: Notify::new(),
                    dirty: AtomicBool::new(true),
                    last_board: Mutex::new(None),
                })
            });
            let room = Arc::clone(entry.value());
            let (id, replaced) = room.add(member);
            if let Some(old) = replaced {
                // Counted by its writer in `quiz_ws_closes_total{code="4009"}`.
                old.outbox
                    .close(close::REPLACED, "replaced by a newer connection");
            }
            (room, id, created)
        };
        if created {
            rooms.svc.metrics.rooms.set(rooms.map.len() as i64);
            let seen = Seen::from_state(seen_state);
            tokio::spawn(run_room(Arc::clone(rooms), Arc::clone(&room), seen));
        } else if let Some(b) = room.last_board.lock().clone() {
            outbox.set_board(b);
        }
        Membership { room, id }
    }

    pub fn leave(&self, m: &Membership) {
        m.room.remove(m.id);
        // The room task notices the room is empty and removes it.
        m.room.wake.notify_one();
    }

    /// Re-read this quiz's state now.
    pub fn wake(&self, quiz_id: &str) {
        if let Some(r) = self.map.get(quiz_id) {
            r.wake.notify_one();
        }
    }

    /// Removes `room` if it is (still) empty. True if removed.
    fn remove_if_empty(&self, room: &Arc<Room>) -> bool {
        let removed = self
            .map
            .remove_if(&room.quiz_id, |_, r| Arc::ptr_eq(r, room) && r.is_empty())
            .is_some();
        if removed {
            self.svc.metrics.rooms.set(self.map.len() as i64);
        }
        removed
    }

    /// One node-wide bus subscription wakes the rooms it concerns (cheaper
    /// than one subscription per room). A lagged receiver wakes every room.
    pub fn spawn_bus_listener(self: &Arc<Self>, stop: CancellationToken) {
        let mut rx = self.svc.bus.subscribe();
        let rooms = Arc::clone(self);
        tokio::spawn(async move {
            let svc = &rooms.svc;
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = rx.recv() => m,
                };
                match msg {
                    Ok(changed) => {
                        svc.state_changed(Some(&changed.quiz_id), Some(changed.version));
                        rooms.wake(&changed.quiz_id);
                    }
                    Err(RecvError::Lagged(_)) => {
                        svc.state_changed(None, None);
                        for r in rooms.map.iter() {
                            r.wake.notify_one();
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
}

/// What the room has already told its members about the quiz state.
#[derive(Debug, Default)]
pub struct Seen {
    version: u64,
    /// The live question last announced with `question` (or in welcomes).
    opened: Option<u32>,
    /// The live question last announced with `question_closed`.
    closed: Option<u32>,
    closes_at: Option<u64>,
    /// Self-paced: players were sent their first question.
    started: bool,
    ended: bool,
}

impl Seen {
    /// At room creation: members got the current state in their welcome.
    fn from_state(s: &QuizState) -> Seen {
        let now = now_ms();
        Seen {
            version: s.version,
            opened: s.current_question,
            closed: s
                .current_question
                .filter(|_| s.closes_at_ms.is_some_and(|c| c <= now)),
            closes_at: s.closes_at_ms,
            started: s.phase != Phase::Lobby,
            ended: s.phase == Phase::Ended,
        }
    }

    /// When the open question's `question_closed` is due.
    fn close_deadline(&self) -> Option<tokio::time::Instant> {
        let q = self.opened?;
        if self.closed == Some(q) {
            return None;
        }
        let at = self.closes_at?;
        let wait = at.saturating_sub(now_ms());
        Some(tokio::time::Instant::now() + Duration::from_millis(wait))
    }
}

/// Late board ticks skipped in a row at most: under sustained overload a
/// room still reads its board every `MAX_LATE_SKIPS + 1` ticks (2 s at the
/// default 500 ms).
pub const MAX_LATE_SKIPS: u32 = 3;

/// Why a board tick was skipped (`quiz_board_ticks_skipped_total{reason}`).
fn skip_board(svc: &QuizService, reason: &str) {
    svc.metrics
        .board_ticks_skipped
        .with_label_values(&[reason])
        .inc();
}

/// The room task. Exits when the room is empty.
async fn run_room(rooms: Arc<Rooms>, room: Arc<Room>, mut seen: Seen) {
    let svc = &rooms.svc;
    let cfg = Arc::clone(&svc.config);
    let board_every = cfg.leaderboard_interval_ms.max(1);
    // A quiz spread over several nodes has a room on each: they tick on the
    // wall clock's multiples of the interval and stamp the board with that
    // tick, so every node sends its board at the same instants, stamped the
    // same (the bytes match when the version read does), and each reads the
    // store every tick: its own answers are only a share of the quiz's.
    let spread = room.def.layout.spread > 1;
    let first_board = if spread {
        tokio::time::Instant::now() + Duration::from_millis(board_every - now_ms() % board_every)
    } else {
        tokio::time::Instant::now()
    };
    let mut board_tick = tokio::time::interval_at(first_board, Duration::from_millis(board_every));
    board_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconcile_tick =
        tokio::time::interval(Duration::from_millis(cfg.reconcile_interval_ms));
    reconcile_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ping_every = Duration::from_millis(cfg.ws_ping_interval_ms);
    let mut ping_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle_s = cfg.ws_idle_timeout_ms.div_ceil(1000) as u32;
    let late_bound = Duration::from_millis(cfg.board_tick_late_ms);
    let mut late_skips = 0u32;
    let mut board_version = 0u64;
    let mut ticks_since_read = u32::MAX;
    // The board read in flight, polled beside the other branches (not
    // awaited in the tick's branch: a slow read would hold up reconciles
    // and keepalives, and the overdue tick would start another read the
    // moment it ended).
    let mut reading: Option<futures::future::BoxFuture<'_, u64>> = None;
    loop {
        let deadline = seen.close_deadline();
        tokio::select! {
            v = async { reading.as_mut().expect("guarded").await }, if reading.is_some() => {
                reading = None;
                board_version = v;
            }
            at = board_tick.tick() => {
                // Read the store when something happened here, and at least
                // once a second for answers applied on other nodes. Under
                // pressure the tick is skipped (`dirty` stays set, so the
                // next tick reads).
                ticks_since_read = ticks_since_read.saturating_add(1);
                let due = spread || room.dirty.load(Ordering::Relaxed) || ticks_since_read >= 2;
                if !due {
                    late_skips = 0;
                } else if reading.is_some() {
                    skip_board(svc, "read_in_flight");
                } else if at.elapsed() > late_bound && late_skips < MAX_LATE_SKIPS {
                    late_skips += 1;
                    skip_board(svc, "late");
                } else {
                    late_skips = 0;
                    ticks_since_read = 0;
                    room.dirty.store(false, Ordering::Relaxed);
                    let now = now_ms();
                    let stamp = if spread { now - now % board_every } else { now };
                    reading = Some(Box::pin(broadcast_board(svc, &room, board_version, stamp)));
                }
            }
            _ = reconcile_tick.tick() => reconcile(svc, &room, &mut seen).await,
            // Idle closes are counted by their writers (code 4010).
            _ = ping_tick.tick() => room.keepalive(uptime_s(), idle_s),
            _ = room.wake.notified() => reconcile(svc, &room, &mut seen).await,
            _ = sleep_until_opt(deadline) => reconcile(svc, &room, &mut seen).await,
        }
        if room.is_empty() && rooms.remove_if_empty(&room) {
            return;
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Reads the leaderboard; if its version moved past `sent`, encodes it once
/// and fans it out. Returns the version now sent.
async fn broadcast_board(svc: &QuizService, room: &Room, sent: u64, ts_ms: u64) -> u64 {
    let lb = match svc
        .store
        .leaderboard(&room.quiz_id, svc.config.leaderboard_top)
        .await
    {
        Ok(lb) => lb,
        Err(e) => {
            tracing::debug!(quiz_id = %room.quiz_id, error = %e, "leaderboard read failed");
            return sent;
        }
    };
    if lb.version == sent {
        return sent;
    }
    let start = Instant::now();
    let frame = protocol::encode_leaderboard(&lb, ts_ms);
    *room.last_board.lock() = Some(frame.clone());
    let dropped = room.fan_out_board(&frame).await;
    svc.metrics
        .broadcast_seconds
        .observe(start.elapsed().as_secs_f64());
    svc.metrics.stale_boards_dropped.inc_by(dropped as u64);
    // Hosts (extension): live answer counts of the open question.
    if room.def.mode == Mode::Live && room.has_hosts() {
        if let Ok(Some(s)) = svc.store.get_state(&room.quiz_id).await {
            if let (Phase::Running, Some(q)) = (s.phase, s.current_question) {
                let n = room
                    .def
                    .questions
                    .get(q as usize)
                    .map_or(0, |q| q.options.len());
                if let Ok(d) = svc.store.distribution(&room.quiz_id, q, n).await {
                    send(svc, room, &[protocol::encode_answer_count(q, d)], true).await;
                }
            }
        }
    }
    lb.version
}

async fn send(svc: &QuizService, room: &Room, frames: &[Bytes], hosts_only: bool) {
    let start = Instant::now();
    let slow = room.fan_out(frames, hosts_only).await;
    svc.metrics
        .broadcast_seconds
        .observe(start.elapsed().as_secs_f64());
    svc.metrics.slow_consumer_closes.inc_by(slow as u64);
}

/// Re-reads the state and announces what members have not been told yet.
async fn reconcile(svc: &QuizService, room: &Room, seen: &mut Seen) {
    let state = match svc.store.get_state(&room.quiz_id).await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(quiz_id = %room.quiz_id, error = %e, "state read failed");
            return;
        }
    };
    let def = &room.def;
    let now = now_ms();
    if def.mode == Mode::Live {
        if let Some(q) = state.current_question {
            if seen.opened != Some(q) {
                // A new question: the previous one closed with it. Both
                // frames go to each socket in one write.
                let mut frames = Vec::with_capacity(2);
                let prev = seen.opened.filter(|p| seen.closed != Some(*p));
                if let Some(prev) = prev {
                    match closed_frame(svc, room, prev).await {
                        Ok(frame) => frames.extend(frame),
                        Err(()) => return,
                    }
                }
                if let (Some(question), Some(o), Some(c)) = (
                    def.questions.get(q as usize),
                    state.opens_at_ms,
                    state.closes_at_ms,
                ) {
                    if state.phase == Phase::Running {
                        frames.push(protocol::encode(&protocol::QuestionMsg::new(
                            question, o, c,
                        )));
                    }
                }
                if !frames.is_empty() {
                    send(svc, room, &frames, false).await;
                }
                if prev.is_some() {
                    seen.closed = prev;
                }
                seen.opened = Some(q);
            }
            seen.closes_at = state.closes_at_ms;
            let due = state.closes_at_ms.is_some_and(|c| c <= now);
            if due && seen.closed != Some(q) {
                if !announce_closed(svc, room, q).await {
                    return;
                }
                seen.closed = Some(q);
            }
        }
    }
    if def.mode == Mode::SelfPaced && state.phase == Phase::Running && !seen.started {
        if !present_first(svc, room).await {
            return;
        }
        seen.started = true;
    }
    if state.phase == Phase::Ended && !seen.ended {
        match svc
            .store
            .leaderboard(&room.quiz_id, svc.config.leaderboard_top)
            .await
        {
            Ok(lb) => {
                send(svc, room, &[protocol::encode_quiz_ended(&lb.top)], false).await;
                seen.ended = true;
            }
            Err(_) => return,
        }
    }
    seen.version = state.version;
}

/// Self-paced start: every player member gets their first question. Each
/// player's clock starts when *they* get the question, so each gets their
/// own question message (not a shared frame). All at once: the store
/// coalesces the presentations into a few pipelines (one at a time, 500
/// players took seconds, while the first ones were already answering).
/// False if a presentation failed: the next reconcile presents again
/// (idempotent: a player who got the question gets nothing).
async fn present_first(svc: &QuizService, room: &Room) -> bool {
    let players: Vec<(String, Arc<Outbox>, Arc<Presented>)> = room
        .members
        .lock()
        .map
        .values()
        .filter_map(|m| {
            let pid = m.player_id.clone()?;
            Some((pid, Arc::clone(&m.outbox), Arc::clone(&m.presented)))
        })
        .collect();
    let sends = players.iter().map(|(pid, outbox, presented)| async move {
        let frame = self_paced::present_next(svc, &room.def, pid, presented, 0).await?;
        if let Some(frame) = frame {
            outbox.push_text(frame);
        }
        Ok::<(), crate::error::QuizError>(())
    });
    let failed = futures::future::join_all(sends)
        .await
        .into_iter()
        .filter(Result::is_err)
        .count();
    if failed > 0 {
        tracing::warn!(quiz_id = %room.quiz_id, failed, "self-paced start: presentations failed; retrying");
    }
    failed == 0
}

/// Sends question `q`'s `question_closed`; false if the store could not
/// say how it was answered (the next reconcile tries again).
async fn announce_closed(svc: &QuizService, room: &Room, q: u32) -> bool {
    match closed_frame(svc, room, q).await {
        Ok(Some(frame)) => {
            send(svc, room, &[frame], false).await;
            true
        }
        Ok(None) => true,
        Err(()) => false,
    }
}

/// Question `q`'s `question_closed` frame (with how it was answered), or
/// `None` for a question the quiz does not have; `Err` if the store could
/// not be read.
async fn closed_frame(svc: &QuizService, room: &Room, q: u32) -> Result<Option<Bytes>, ()> {
    let Some(question) = room.def.questions.get(q as usize) else {
        return Ok(None);
    };
    let d = svc
        .store
        .distribution(&room.quiz_id, q, question.options.len())
        .await
        .map_err(|_| ())?;
    Ok(Some(protocol::encode_question_closed(
        q,
        &question.correct,
        &d,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AnswerRecord;
    use crate::service::tests::{test_player, test_quiz, test_service};

    /// The leaderboard throttle with deterministic time: at most one board
    /// per 500 ms, and none when nothing changed.
    #[tokio::test(start_paused = true)]
    async fn leaderboard_throttle() {
        let svc = test_service();
        let rooms = Rooms::new(Arc::clone(&svc));
        let def = test_quiz(&svc, "thr", "live", 1).await;
        let (p, _) = test_player(&svc, "thr", "ann").await;
        let outbox = Arc::new(Outbox::new(16, CancellationToken::new()));
        let st = svc.state("thr").await.unwrap();
        let m = rooms.join(
            Arc::clone(&def),
            Member {
                outbox: Arc::clone(&outbox),
                host: false,
                player_id: Some(p.player_id.clone()),
                presented: Arc::new(Presented::default()),
            },
            &st,
        );
        let boards = |o: &Outbox| o.take_board();
        // First tick fires at once: one board.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(boards(&outbox).is_some());
        // Nothing changes: no board for a while.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert!(boards(&outbox).is_none());
        // Several changes within one interval → at most one board.
        let mut version_seen = 0;
        for i in 0..5u32 {
            let rec = AnswerRecord {
                player_id: p.player_id.clone(),
                nickname: "ann".into(),
                question_id: 0,
                choices: vec![0],
                correct: true,
                late: false,
                points: 10 + i,
                response_ms: 0,
                answered_at_ms: 0,
            };
            // Only the first counts; bump the version with joins instead.
            let _ = svc.store.apply_answer("thr", &rec).await;
            svc.join("thr", &format!("p{i}")).await.unwrap();
            m.room.touch();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(b) = boards(&outbox) {
                version_seen += 1;
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                assert_eq!(v["type"], "leaderboard");
            }
        }
        // 250 ms of changes span at most one tick boundary.
        assert!(version_seen <= 1, "{version_seen}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let last = boards(&outbox).expect("the latest board arrives next tick");
        let v: serde_json::Value = serde_json::from_slice(&last).unwrap();
        assert_eq!(v["total_players"], 6);
        // Extension: the tick's server time, for staleness measurements.
        let ts = v["ts_ms"].as_u64().expect("ts_ms");
        assert!(ts.abs_diff(now_ms()) < 60_000, "{ts}");
        rooms.leave(&m);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(rooms.is_empty());
    }

    /// A room of a live one-question quiz with no task running: the tests
    /// below drive its members and fan-outs by hand.
    async fn bare_room(svc: &QuizService, quiz_id: &str) -> Room {
        Room {
            quiz_id: quiz_id.into(),
            def: test_quiz(svc, quiz_id, "live", 1).await,
            members: Mutex::default(),
            wake: Notify::new(),
            dirty: AtomicBool::new(false),
            last_board: Mutex::new(None),
        }
    }

    /// A large room's board goes out over several tasks, one slice of the
    /// members each: every member gets it exactly once (the slices cover
    /// the room without overlap), a stale unsent board is replaced, and a
    /// member who left is not written to (the members' copy is renewed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn board_fan_out_over_workers_reaches_each_member_once() {
        let svc = test_service();
        let room = bare_room(&svc, "slices").await;
        // Enough members for one slice per worker, and an uneven split.
        let n = 2 * MIN_BOARD_SLICE + 7;
        let mut ids = Vec::new();
        for i in 0..n {
            let (id, _) = room.add(Member {
                outbox: Arc::new(Outbox::new(16, CancellationToken::new())),
                host: false,
                player_id: Some(format!("p{i}")),
                presented: Arc::new(Presented::default()),
            });
            ids.push(id);
        }
        let outboxes: Vec<Arc<Outbox>> = room.outboxes().to_vec();
        let b1 = Bytes::from_static(br#"{"type":"leaderboard","v":1}"#);
        assert_eq!(room.fan_out_board(&b1).await, 0);
        let b2 = Bytes::from_static(br#"{"type":"leaderboard","v":2}"#);
        assert_eq!(
            room.fan_out_board(&b2).await,
            n,
            "each stale board replaced once"
        );
        assert!(outboxes.iter().all(|o| o.take_board() == Some(b2.clone())));

        let gone = ids[n / 2];
        let left = room.members.lock().map[&gone].outbox.clone();
        room.remove(gone);
        assert_eq!(room.fan_out_board(&b1).await, 0);
        assert_eq!(left.take_board(), None, "a member who left got the board");
        let got = outboxes.iter().filter_map(|o| o.take_board()).count();
        assert_eq!(got, n - 1);
    }

    /// The fan-outs walk the members in join order, whatever joined or left
    /// in between: the order the sockets were accepted in and their
    /// outboxes allocated (see `Members::map`).
    #[tokio::test]
    async fn fan_outs_walk_the_members_in_join_order() {
        let svc = test_service();
        let room = bare_room(&svc, "order").await;
        let join = |name: &str| {
            let outbox = Arc::new(Outbox::new(16, CancellationToken::new()));
            let (id, _) = room.add(Member {
                outbox: Arc::clone(&outbox),
                host: false,
                player_id: Some(name.to_string()),
                presented: Arc::new(Presented::default()),
            });
            (id, outbox)
        };
        // Enough members that a hash map's order would differ from join order.
        let mut joined: Vec<_> = (0..200).map(|i| join(&format!("p{i}"))).collect();
        room.remove(joined.remove(50).0);
        room.remove(joined.remove(120).0);
        joined.push(join("late"));
        // p7 reconnects: the new socket is the newest member.
        let old_p7 = Arc::clone(&joined[7].1);
        joined.retain(|(_, o)| !Arc::ptr_eq(o, &old_p7));
        joined.push(join("p7"));
        let walked = room.outboxes();
        assert_eq!(walked.len(), joined.len());
        assert!(
            walked
                .iter()
                .zip(&joined)
                .all(|(w, (_, o))| Arc::ptr_eq(w, o)),
            "fan-out order is not join order"
        );
    }

    fn skipped(svc: &QuizService, reason: &str) -> u64 {
        svc.metrics
            .board_ticks_skipped
            .with_label_values(&[reason])
            .get()
    }

    /// Under pressure a board tick is skipped, not queued, with
    /// deterministic time: the clock jumps past a tick (the runtime
    /// stalled), so the tick fires more than `board_tick_late_ms` late and
    /// reads nothing; the next on-time tick sends the latest board. At most
    /// `MAX_LATE_SKIPS` late ticks in a row are skipped.
    #[tokio::test(start_paused = true)]
    async fn late_board_tick_is_skipped_not_queued() {
        let svc = test_service();
        let every = svc.config.leaderboard_interval_ms;
        let late = svc.config.board_tick_late_ms;
        let rooms = Rooms::new(Arc::clone(&svc));
        let def = test_quiz(&svc, "late", "live", 1).await;
        let (p, _) = test_player(&svc, "late", "ann").await;
        let outbox = Arc::new(Outbox::new(16, CancellationToken::new()));
        let st = svc.state("late").await.unwrap();
        let m = rooms.join(
            Arc::clone(&def),
            Member {
                outbox: Arc::clone(&outbox),
                host: false,
                player_id: Some(p.player_id.clone()),
                presented: Arc::new(Presented::default()),
            },
            &st,
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(outbox.take_board().is_some(), "the first tick's board");
        // A change, then a stall: the next tick (at `every`) fires `late`
        // + 100 ms past its instant.
        svc.join("late", "bob").await.unwrap();
        m.room.touch();
        tokio::time::advance(Duration::from_millis(every - 10 + late + 100)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(skipped(&svc, "late"), 1);
        assert!(outbox.take_board().is_none(), "a late tick sent a board");
        // The next tick is on time (a missed tick is delayed, not
        // replayed): it reads, and sends the board with both players.
        tokio::time::sleep(Duration::from_millis(every + 20)).await;
        let b = outbox.take_board().expect("the next tick's board");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["total_players"], 2);
        assert_eq!(skipped(&svc, "late"), 1, "an on-time tick was skipped");
        // Sustained stalls: MAX_LATE_SKIPS skipped, then one read anyway.
        let mut boards = 0;
        for i in 0..=MAX_LATE_SKIPS {
            svc.join("late", &format!("p{i}")).await.unwrap();
            m.room.touch();
            tokio::time::advance(Duration::from_millis(every + late + 100)).await;
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            boards += usize::from(outbox.take_board().is_some());
        }
        assert_eq!(skipped(&svc, "late"), 1 + u64::from(MAX_LATE_SKIPS));
        assert_eq!(boards, 1, "boards slow down, never stop");
        rooms.leave(&m);
        tokio::time::sleep(Duration::from_millis(2 * every)).await;
        assert!(rooms.is_empty());
    }
}
