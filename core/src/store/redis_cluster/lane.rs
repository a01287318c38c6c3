//! The direct lane: a one-slot quiz's answers in the steady state, written
//! straight into their slot's next `apply_batch` pipeline on core's own
//! connection to the slot's master, and the replies read straight into the
//! waiting answers.
//!
//! Why: the batcher path costs core about 3 µs of CPU per answer around a
//! client that needs 0.25 (docs/performance.md: a job with its quiz id
//! copied, the queue, a task, a map and `Call`s per round, redis-rs'
//! routing and `Value`s, the verdicts decoded from those). Here an answer
//! is appended, as one RESP bulk string, to its slot's open batch under one
//! lock, with its reply channel; one task per master connection writes the
//! batches (`EVALSHA apply_batch` then `WAIT`, the same commands as the
//! batcher's, several batches in one write) and hands each answer its line
//! of the reply.
//!
//! It carries only the steady state and steps aside on anything else:
//! - a sharded quiz (its rounds count ranks across shards), a
//!   self-paced presentation, TLS nodes, or `RedisOptions::direct_lane`
//!   off: the batcher, always;
//! - a slot whose master the lanes do not know yet: the batcher, while a
//!   task reads the slot map (`CLUSTER SLOTS` through redis-rs) and
//!   connects to the masters (`AUTH` with the nodes' credentials, `CLIENT
//!   SETNAME`, `SCRIPT LOAD` of `apply_batch`). The store does this once
//!   before its first answer, so they take the lanes from the start;
//! - any error on the connection or in a reply (`MOVED` after a slot
//!   moved, `ASK` or `TRYAGAIN` while it moves, `READONLY` after a
//!   failover, `NOSCRIPT`, a closed socket, a pipeline past its deadline): the connection is closed, every answer
//!   on it fails `Unavailable`, and every slot uses the batcher until the
//!   slot map has been read again, [`RETRY_AFTER`] later. The callers'
//!   retries re-run those answers through the batcher with their attempt
//!   tokens (`A`, nothing added twice), where redis-rs follows the
//!   cluster's moves as before;
//! - a `WAIT` reaching fewer replicas than asked fails that batch's
//!   answers `Unavailable` (retried), as in the batcher;
//! - more than `queue_capacity` answers waiting on one connection: the
//!   batcher's bounded queue (it waits for room under the deadline).
//!
//! Batching follows the batcher's rule, per master rather than per quiz:
//! what is queued leaves as soon as there is room in flight, and while
//! there is none, answers accumulate (up to `max_batch` per batch, one
//! batch per slot and state version). A pipeline carries every batch
//! queued on its connection, whatever their quizzes, with ONE `WAIT` at its
//! end, and at most [`PIPELINES_IN_FLIGHT`] pipelines are out per
//! connection (`max_in_flight` when `WAIT` is off).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionAddr, IntoConnectionInfo, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

use super::codec::{guard_verdict, verdict_lines, write_packed, Verdict};
use super::scripts::{scripts, APPLY_BATCH_KEYS};
use super::shards::crc16;
use super::shared::{dist_key, key, unavailable, RedisOptions};
use crate::model::AnswerRecord;
use crate::store::StoreError;

/// How long the slots of a failed connection use the batcher before they
/// look their master up again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Pipelines out at once on one lane connection. Redis runs a
/// connection's commands in order and a `WAIT` holds the ones behind it
/// until the replica has acknowledged, so more pipelines in flight on one
/// connection do not run sooner: they only cut the answers into smaller
/// batches (more script calls and `WAIT`s on the master, more system calls
/// in core). Two keep the master busy: one is being run or waited for
/// while the next is already in its socket. Without `WAIT`
/// (`wait_replicas: 0`) nothing holds a connection's commands, and
/// `max_in_flight` applies as in the batcher.
const PIPELINES_IN_FLIGHT: usize = 2;
/// How often a connection checks its oldest pipeline's deadline (one timer
/// for the connection, not one per pipeline).
const DEADLINE_CHECK: Duration = Duration::from_millis(100);
/// Most slots remembered; past it the map is emptied and slots look their
/// master up again (quizzes come and go; their lanes are cheap to find).
const MAX_SLOTS: usize = 100_000;

type Reply = oneshot::Sender<Result<Verdict, StoreError>>;
/// What an answer on the lane waits for: its verdict, or `Unavailable`.
pub(super) type Verdicts = oneshot::Receiver<Result<Verdict, StoreError>>;

/// The lanes of one store: the cluster's slot map, a connection per
/// master, and each slot's connection once resolved.
pub(super) struct Lanes {
    /// `None`: lanes are off (TLS nodes, or `direct_lane: false`).
    login: Option<Login>,
    cluster: ClusterConnection,
    limits: Limits,
    routes: Mutex<Routes>,
    /// Each hash tag's connection (an ordinary quiz's id → its slot's
    /// master's), resolved from `routes`; emptied when they are re-read.
    slots: DashMap<String, Arc<Conn>>,
    /// Answers the lanes took (for benchmarks and tests: which path ran).
    carried: AtomicU64,
    /// Connections that failed (each sent its slots to the batcher for a
    /// while): an SRE's sign of a failover or a sick master.
    closures: AtomicU64,
}

/// Which master serves which slots, and the connections to them.
#[derive(Default)]
struct Routes {
    /// Slot ranges (inclusive) and their master's `host:port`, as the
    /// cluster said when last asked.
    ranges: Vec<(u16, u16, String)>,
    /// The ranges are to be read again (not read yet, or a connection
    /// failed since): nothing new is resolved until they are.
    stale: bool,
    /// When a connection last failed: the ranges are read again
    /// [`RETRY_AFTER`] later, not at once (a failover takes seconds).
    failed_at: Option<Instant>,
    /// A task is reading the ranges or connecting.
    busy: bool,
    conns: HashMap<String, Arc<Conn>>,
}

/// The nodes' credentials (`AUTH`), from their URLs.
#[derive(Clone)]
struct Login {
    username: Option<String>,
    password: Option<String>,
}

#[derive(Clone, Copy)]
struct Limits {
    max_batch: usize,
    /// Pipelines out at once per connection.
    pipelines: usize,
    queue_capacity: usize,
    connect_timeout: Duration,
    /// A pipeline's deadline: `command_timeout` + `wait_timeout`.
    deadline: Duration,
    wait_replicas: u32,
    wait_timeout_ms: u64,
}

impl Lanes {
    /// Lanes for the store connected through `nodes` with `opts`; off when
    /// the nodes use TLS, a URL does not parse, or `opts.direct_lane` is
    /// false. [`Lanes::start`] reads the slot map and connects.
    pub(super) fn new(cluster: ClusterConnection, nodes: &[String], opts: &RedisOptions) -> Lanes {
        let login = nodes
            .first()
            .filter(|_| opts.direct_lane && opts.tls_ca.is_none())
            .and_then(|n| super::pipeline::node_url(n).into_connection_info().ok())
            .filter(|info| matches!(info.addr(), ConnectionAddr::Tcp(..)))
            .map(|info| Login {
                username: info.redis_settings().username().map(str::to_string),
                password: info.redis_settings().password().map(str::to_string),
            });
        Lanes {
            login,
            cluster,
            limits: Limits {
                max_batch: opts.max_batch.max(1),
                pipelines: if opts.wait_replicas > 0 {
                    PIPELINES_IN_FLIGHT
                } else {
                    opts.max_in_flight.max(1)
                },
                queue_capacity: opts.queue_capacity.max(1),
                connect_timeout: opts.connect_timeout,
                deadline: opts.command_timeout + opts.wait_timeout,
                wait_replicas: opts.wait_replicas,
                wait_timeout_ms: opts.wait_timeout.as_millis() as u64,
            },
            routes: Mutex::new(Routes {
                stale: true,
                ..Routes::default()
            }),
            slots: DashMap::new(),
            carried: AtomicU64::new(0),
            closures: AtomicU64::new(0),
        }
    }

    /// Reads the slot map and connects to every master (bounded by the
    /// connect timeout), so a store's first answers already take the
    /// lanes. A failure only leaves them to the batcher until a retry.
    pub(super) async fn start(self: &Arc<Self>) {
        if self.login.is_none() {
            return;
        }
        self.routes.lock().busy = true;
        self.refresh_bounded().await;
    }

    /// Answers the lanes have taken so far.
    pub(super) fn carried(&self) -> u64 {
        self.carried.load(Ordering::Relaxed)
    }

    /// Lane connections that have failed so far.
    pub(super) fn closures(&self) -> u64 {
        self.closures.load(Ordering::Relaxed)
    }

    /// Queues an answer on the lane of the slot of hash tag `tag`, with
    /// the state guard `state_version` (see `apply_batch.lua`): its verdict
    /// will come on the returned channel. `None`: the lane cannot take it
    /// now (off, being set up, or full); the caller uses the batcher.
    pub(super) fn submit(
        self: &Arc<Self>,
        tag: &str,
        answer: &AnswerRecord,
        token: u64,
        state_version: Option<u64>,
    ) -> Option<Verdicts> {
        self.login.as_ref()?;
        let conn = match self.slots.get(tag) {
            Some(conn) => Arc::clone(conn.value()),
            None => self.resolve(tag)?,
        };
        let (reply, verdict) = oneshot::channel();
        match conn.push(tag, answer, token, state_version, reply, &self.limits) {
            Ok(()) => {
                self.carried.fetch_add(1, Ordering::Relaxed);
                Some(verdict)
            }
            Err(Refused::Full) => None,
            Err(Refused::Closed) => {
                self.slots.remove(tag);
                None
            }
        }
    }

    /// The connection of `tag`'s slot's master, remembered for the next
    /// answers; `None` (and a task started to mend it) when the slot map is
    /// stale or that master has no open connection.
    fn resolve(self: &Arc<Self>, tag: &str) -> Option<Arc<Conn>> {
        let mut routes = self.routes.lock();
        if routes.stale {
            let due = routes
                .failed_at
                .is_none_or(|at| at.elapsed() >= RETRY_AFTER);
            if due && !routes.busy {
                routes.busy = true;
                let lanes = Arc::clone(self);
                tokio::spawn(async move { lanes.refresh_bounded().await });
            }
            return None;
        }
        let slot = key_slot(key(tag, "answers").as_bytes());
        let (_, _, addr) = routes
            .ranges
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))?;
        let conn = routes.conns.get(addr).filter(|c| !c.is_closed()).cloned();
        let Some(conn) = conn else {
            // A master the lanes have no connection to (new since the map
            // was read, or its connection failed): read the map again.
            routes.stale = true;
            return None;
        };
        drop(routes);
        if self.slots.len() >= MAX_SLOTS {
            self.slots.clear();
        }
        self.slots.insert(tag.to_string(), Arc::clone(&conn));
        Some(conn)
    }

    /// A connection failed: every slot is resolved again once the slot map
    /// has been read again, [`RETRY_AFTER`] from now.
    fn failed(&self) {
        let mut routes = self.routes.lock();
        routes.stale = true;
        routes.failed_at = Some(Instant::now());
        drop(routes);
        self.slots.clear();
    }

    /// [`Lanes::refresh`] under twice the connect timeout (the slot map,
    /// then the connections), by the one caller that set `routes.busy`;
    /// clears it.
    async fn refresh_bounded(self: &Arc<Self>) {
        let _ = tokio::time::timeout(self.limits.connect_timeout * 2, self.refresh()).await;
        self.routes.lock().busy = false;
    }

    /// Reads the slot map (`CLUSTER SLOTS` through redis-rs) and connects
    /// to every master the lanes have no open connection to.
    async fn refresh(self: &Arc<Self>) {
        let Some(login) = self.login.clone() else {
            return;
        };
        let ranges = match self.read_slots().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "redis lanes: no slot map, the batcher carries the answers");
                self.failed();
                return;
            }
        };
        let mut masters: Vec<&String> = ranges.iter().map(|(_, _, a)| a).collect();
        masters.sort();
        masters.dedup();
        for addr in masters {
            let open = self
                .routes
                .lock()
                .conns
                .get(addr)
                .is_some_and(|c| !c.is_closed());
            if open {
                continue;
            }
            let opened = tokio::time::timeout(self.limits.connect_timeout, open_conn(addr, &login))
                .await
                .unwrap_or_else(|_| Err(unavailable("timed out")));
            match opened {
                Ok(stream) => {
                    let conn = Arc::new(Conn::default());
                    self.routes
                        .lock()
                        .conns
                        .insert(addr.clone(), Arc::clone(&conn));
                    let lanes = Arc::downgrade(self);
                    tokio::spawn(drive(conn, stream, self.limits, addr.clone(), lanes));
                }
                Err(e) => {
                    tracing::debug!(addr, error = %e, "redis lanes: no connection, the batcher carries its slots");
                    self.failed();
                    return;
                }
            }
        }
        let mut routes = self.routes.lock();
        routes.ranges = ranges;
        routes.stale = false;
        drop(routes);
        self.slots.clear();
    }

    async fn read_slots(&self) -> Result<Vec<(u16, u16, String)>, StoreError> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let mut cluster = self.cluster.clone();
        let reply = cluster
            .route_command(cmd, routing)
            .await
            .map_err(unavailable)?;
        slot_ranges(&reply).ok_or_else(|| unavailable("unexpected CLUSTER SLOTS reply"))
    }
}

/// The master of each slot range of a `CLUSTER SLOTS` reply (`[start,
/// end, [host, port, id, …], replicas…]` per range); ranges whose master
/// has no address are left out (the batcher serves them).
fn slot_ranges(reply: &Value) -> Option<Vec<(u16, u16, String)>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let mut out = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else {
            return None;
        };
        let [lo, hi, Value::Array(master), ..] = parts.as_slice() else {
            return None;
        };
        let (lo, hi) = (int(lo)?, int(hi)?);
        let host = match master.first()? {
            Value::BulkString(b) => std::str::from_utf8(b).ok()?,
            Value::SimpleString(s) => s.as_str(),
            _ => return None,
        };
        let port = int(master.get(1)?)?;
        if host.is_empty() || host == "?" {
            continue;
        }
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        out.push((lo, hi, addr));
    }
    Some(out)
}

/// The cluster slot of a key: CRC16 (XMODEM) of its hash tag (the part
/// between the first `{` and the next `}`, when not empty) or of the whole
/// key, modulo 16 384 — Redis' own rule.
fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % 16_384
}

/// The connections' name in `CLIENT LIST` (for an SRE, and for the tests
/// that cut one).
pub const CLIENT_NAME: &str = "quiz-core-lane";

/// Connects to a master: no delay on small writes, `AUTH` when the nodes
/// have credentials, named [`CLIENT_NAME`], `apply_batch` loaded (so
/// `EVALSHA` finds it).
async fn open_conn(addr: &str, login: &Login) -> Result<TcpStream, StoreError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| unavailable(format!("connecting to {addr}: {e}")))?;
    stream.set_nodelay(true).map_err(unavailable)?;
    let mut commands: Vec<Vec<&str>> = Vec::new();
    if let Some(password) = &login.password {
        match &login.username {
            Some(user) => commands.push(vec!["AUTH", user, password]),
            None => commands.push(vec!["AUTH", password]),
        }
    }
    commands.push(vec!["CLIENT", "SETNAME", CLIENT_NAME]);
    commands.push(vec!["SCRIPT", "LOAD", scripts().apply.body]);
    let mut setup = Vec::new();
    for c in &commands {
        command(&mut setup, c);
    }
    stream.write_all(&setup).await.map_err(unavailable)?;
    // One reply per command, each checked for an error.
    let mut expect = commands.len();
    let mut buf = Vec::with_capacity(256);
    let mut at = 0;
    while expect > 0 {
        match parse(&buf[at..]).map_err(unavailable)? {
            Some((Resp::Error(e), _)) => {
                return Err(unavailable(format!(
                    "setting up {addr}: {}",
                    String::from_utf8_lossy(e)
                )))
            }
            Some((_, used)) => {
                at += used;
                expect -= 1;
            }
            None => {
                if stream.read_buf(&mut buf).await.map_err(unavailable)? == 0 {
                    return Err(unavailable(format!("{addr} closed the connection")));
                }
            }
        }
    }
    Ok(stream)
}

/// Appends a command of plain arguments (RESP array of bulk strings).
fn command(out: &mut Vec<u8>, args: &[&str]) {
    header(out, b'*', args.len());
    for a in args {
        bulk(out, a.as_bytes());
    }
}

fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    header(out, b'$', b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// One master connection's answers: the batches being filled, per slot,
/// and the count of pipelines in flight (the task [`drive`] sends and
/// reads them).
#[derive(Default)]
struct Conn {
    state: Mutex<Pending>,
    /// Wakes [`drive`] when a batch opens and there is room in flight.
    wake: Notify,
}

#[derive(Default)]
struct Pending {
    /// Each slot's batch being filled.
    open: HashMap<String, Batch>,
    /// The slots with an open batch, oldest first.
    order: VecDeque<String>,
    /// Batches closed before they left (full, or a new state version
    /// opened the next): they leave first.
    closed_batches: VecDeque<Batch>,
    /// Answers in open and closed batches.
    queued: usize,
    in_flight: usize,
    /// The connection failed: nothing more is taken.
    closed: bool,
    /// One answer's packed argument, before its length is known.
    scratch: String,
}

enum Refused {
    Full,
    Closed,
}

/// One `apply_batch` call being filled: its slot, its state guard, the
/// questions whose distributions it names (KEYS after [`APPLY_BATCH_KEYS`], in
/// this order), its answers' arguments as RESP bulk strings, and who waits.
struct Batch {
    tag: String,
    state_version: Option<u64>,
    questions: Vec<u32>,
    args: Vec<u8>,
    waiting: Vec<Reply>,
}

impl Batch {
    fn new(tag: &str, state_version: Option<u64>) -> Batch {
        Batch {
            tag: tag.to_string(),
            state_version,
            questions: Vec::new(),
            args: Vec::with_capacity(1024),
            waiting: Vec::new(),
        }
    }

    /// Appends an answer's packed argument (`<dist> <packed>`: `dist` the
    /// 1-based KEYS index of its question's distribution, 0 when late).
    fn append(&mut self, answer: &AnswerRecord, token: u64, scratch: &mut String) {
        let dist = if answer.late {
            0
        } else {
            let i = match self.questions.iter().position(|q| *q == answer.question_id) {
                Some(i) => i,
                None => {
                    self.questions.push(answer.question_id);
                    self.questions.len() - 1
                }
            };
            APPLY_BATCH_KEYS.len() + i + 1
        };
        scratch.clear();
        scratch.push_str(itoa::Buffer::new().format(dist));
        scratch.push(' ');
        write_packed(scratch, answer, token);
        bulk(&mut self.args, scratch.as_bytes());
    }

    /// `EVALSHA apply_batch` with this batch's keys and arguments (its
    /// pipeline's `WAIT` follows the pipeline's last batch).
    fn encode(&self, out: &mut Vec<u8>) {
        let n = self.waiting.len();
        let keys = APPLY_BATCH_KEYS.len() + self.questions.len();
        header(out, b'*', 3 + keys + 2 + n);
        bulk(out, b"EVALSHA");
        bulk(out, scripts().apply.sha.as_bytes());
        bulk(out, itoa::Buffer::new().format(keys).as_bytes());
        for suffix in APPLY_BATCH_KEYS {
            bulk(out, key(&self.tag, suffix).as_bytes());
        }
        for q in &self.questions {
            bulk(out, dist_key(&self.tag, *q).as_bytes());
        }
        bulk(out, itoa::Buffer::new().format(n).as_bytes());
        match self.state_version {
            Some(v) => bulk(out, itoa::Buffer::new().format(v).as_bytes()),
            None => bulk(out, b""),
        }
        out.extend_from_slice(&self.args);
    }
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Appends an answer to its slot's open batch (opening one if needed).
    fn push(
        &self,
        tag: &str,
        answer: &AnswerRecord,
        token: u64,
        state_version: Option<u64>,
        reply: Reply,
        limits: &Limits,
    ) -> Result<(), Refused> {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if st.closed {
            return Err(Refused::Closed);
        }
        if st.queued >= limits.queue_capacity {
            return Err(Refused::Full);
        }
        let mut opened = false;
        match st.open.get_mut(tag) {
            Some(b) if b.state_version == state_version && b.waiting.len() < limits.max_batch => {}
            Some(b) => {
                let done = std::mem::replace(b, Batch::new(tag, state_version));
                st.closed_batches.push_back(done);
                opened = true;
            }
            None => {
                st.open
                    .insert(tag.to_string(), Batch::new(tag, state_version));
                st.order.push_back(tag.to_string());
                opened = true;
            }
        }
        let Some(batch) = st.open.get_mut(tag) else {
            return Err(Refused::Closed);
        };
        batch.append(answer, token, &mut st.scratch);
        batch.waiting.push(reply);
        st.queued += 1;
        let wake = opened && st.in_flight < limits.pipelines;
        drop(guard);
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Every queued batch, as the next pipeline (counted in flight), when
    /// there is room for one.
    fn take(&self, limits: &Limits) -> Vec<Batch> {
        let mut st = self.state.lock();
        if st.in_flight >= limits.pipelines || st.queued == 0 {
            return Vec::new();
        }
        let mut out: Vec<Batch> = st.closed_batches.drain(..).collect();
        while let Some(tag) = st.order.pop_front() {
            if let Some(b) = st.open.remove(&tag) {
                out.push(b);
            }
        }
        st.queued = 0;
        st.in_flight += 1;
        out
    }

    fn landed(&self) {
        let mut st = self.state.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
    }

    /// The connection failed: fails every answer it holds (queued here or
    /// in `flight`) with `Unavailable`.
    fn close(&self, why: &str, flight: Vec<Reply>) {
        let waiting: Vec<Reply> = {
            let mut st = self.state.lock();
            st.closed = true;
            st.order.clear();
            st.queued = 0;
            let open = std::mem::take(&mut st.open).into_values();
            let closed = std::mem::take(&mut st.closed_batches);
            open.chain(closed).flat_map(|b| b.waiting).collect()
        };
        for reply in flight.into_iter().chain(waiting) {
            let _ = reply.send(Err(unavailable(format!("redis lane: {why}"))));
        }
    }
}

/// A connection's task: sends the batches there is room in flight for,
/// reads the replies and hands them out, until the connection fails (the
/// lanes then read the slot map again) or the store is gone.
async fn drive(
    conn: Arc<Conn>,
    stream: TcpStream,
    limits: Limits,
    addr: String,
    lanes: Weak<Lanes>,
) {
    let mut end = Ending {
        conn,
        lanes,
        why: "the lane's task ended".into(),
        flight: VecDeque::new(),
    };
    match run(&end.conn, stream, &limits, &mut end.flight, &end.lanes).await {
        Ok(()) => end.why = "store closed".into(),
        Err(why) => {
            tracing::warn!(addr, error = %why, "redis lane closed; its slots use the batcher for a while");
            end.why = why;
        }
    }
}

/// How [`drive`] ends, however it ends (a failure, the store gone, or a
/// panic unwinding): the connection is closed with every answer it holds
/// failed, and the lanes read the slot map again. Without it, answers
/// queued on a connection whose task is gone would wait for ever.
struct Ending {
    conn: Arc<Conn>,
    lanes: Weak<Lanes>,
    why: String,
    flight: VecDeque<InFlight>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        let flight = std::mem::take(&mut self.flight);
        let waiting = flight
            .into_iter()
            .flat_map(|(batches, _)| batches)
            .flatten();
        self.conn.close(&self.why, waiting.collect());
        // The store is still there: this connection failed (a store that
        // is gone ends its lanes without one).
        if let Some(lanes) = self.lanes.upgrade() {
            lanes.closures.fetch_add(1, Ordering::Relaxed);
            lanes.failed();
        }
    }
}

/// One pipeline in flight: who waits, per batch in it, and when it left.
type InFlight = (Vec<Vec<Reply>>, Instant);

async fn run(
    conn: &Conn,
    stream: TcpStream,
    limits: &Limits,
    flight: &mut VecDeque<InFlight>,
    lanes: &Weak<Lanes>,
) -> Result<(), String> {
    let (mut rd, mut wr) = stream.into_split();
    let mut rbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut tick = tokio::time::interval(DEADLINE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The same `WAIT` ends every pipeline: encoded once.
    let mut wait = Vec::new();
    if limits.wait_replicas > 0 {
        let replicas = limits.wait_replicas.to_string();
        let timeout = limits.wait_timeout_ms.to_string();
        command(&mut wait, &["WAIT", &replicas, &timeout]);
    }
    loop {
        let batches = conn.take(limits);
        if !batches.is_empty() {
            out.clear();
            for b in &batches {
                b.encode(&mut out);
            }
            out.extend_from_slice(&wait);
            let waiting = batches.into_iter().map(|b| b.waiting).collect();
            flight.push_back((waiting, Instant::now()));
            wr.write_all(&out).await.map_err(|e| e.to_string())?;
        }
        tokio::select! {
            read = rd.read_buf(&mut rbuf) => {
                if read.map_err(|e| e.to_string())? == 0 {
                    return Err("Redis closed the connection".into());
                }
                hand_out(conn, &mut rbuf, limits, flight)?;
            }
            () = conn.wake.notified() => {}
            _ = tick.tick() => {
                if flight.front().is_some_and(|(_, at)| at.elapsed() > limits.deadline) {
                    return Err(format!("a pipeline took longer than {:?}", limits.deadline));
                }
                // The store is gone: nobody can queue here again.
                if flight.is_empty() && lanes.strong_count() == 0 && conn.state.lock().queued == 0 {
                    return Ok(());
                }
            }
        }
    }
}

/// Hands out every complete pipeline's replies in `rbuf` (one
/// `apply_batch` reply per batch, then `WAIT`'s), removing what it used.
fn hand_out(
    conn: &Conn,
    rbuf: &mut Vec<u8>,
    limits: &Limits,
    flight: &mut VecDeque<InFlight>,
) -> Result<(), String> {
    let mut at = 0;
    'pipelines: while let Some((batches, _)) = flight.front() {
        // The pipeline's replies, once all of them are in.
        let mut end = at;
        let mut applied = Vec::with_capacity(batches.len());
        for _ in 0..batches.len() {
            let Some((reply, used)) = parse(&rbuf[end..])? else {
                break 'pipelines;
            };
            applied.push(reply);
            end += used;
        }
        let acked = if limits.wait_replicas > 0 {
            let Some((wait, used)) = parse(&rbuf[end..])? else {
                break;
            };
            end += used;
            match wait {
                Resp::Int(n) => n,
                Resp::Error(e) => return Err(format!("WAIT: {}", String::from_utf8_lossy(e))),
                _ => return Err("unexpected WAIT reply".into()),
            }
        } else {
            0
        };
        let Some((batches, _)) = flight.pop_front() else {
            break;
        };
        conn.landed();
        let short = (acked < i64::from(limits.wait_replicas)).then(|| {
            format!(
                "write reached {acked} of {} replicas within {} ms",
                limits.wait_replicas, limits.wait_timeout_ms
            )
        });
        let mut broken = None;
        for (waiting, reply) in batches.into_iter().zip(applied) {
            let n = waiting.len();
            let verdicts = match reply {
                Resp::Bulk(Some(lines)) => verdict_lines(lines, n),
                Resp::Array(items) => match items.as_slice() {
                    [Resp::Bulk(Some(s))] => guard_verdict(s).map(|v| vec![v; n]),
                    _ => None,
                },
                Resp::Error(e) => {
                    let why = format!("apply_batch: {}", String::from_utf8_lossy(e));
                    fail(waiting, &why);
                    broken = Some(why);
                    continue;
                }
                _ => None,
            };
            match (verdicts, &short) {
                (None, _) => {
                    fail(waiting, "malformed apply_batch reply");
                    broken = Some("malformed apply_batch reply".into());
                }
                (Some(_), Some(short)) => fail(waiting, short),
                (Some(verdicts), None) => {
                    for (reply, v) in waiting.into_iter().zip(verdicts) {
                        // The caller may have given up; nothing to do then.
                        let _ = reply.send(Ok(v));
                    }
                }
            }
        }
        if let Some(why) = broken {
            return Err(why);
        }
        at = end;
    }
    rbuf.drain(..at);
    Ok(())
}

fn fail(waiting: Vec<Reply>, why: &str) {
    for reply in waiting {
        let _ = reply.send(Err(unavailable(why)));
    }
}

/// A RESP2 reply, borrowing the read buffer.
#[derive(Debug, PartialEq)]
enum Resp<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    Bulk(Option<&'a [u8]>),
    Array(Vec<Resp<'a>>),
}

/// Most elements of an array reply the lane reads (its replies are one
/// string, one integer, or `{'S'}` / `{'L'}`).
const MAX_ARRAY: usize = 16;

/// The first complete reply in `buf` and the bytes it takes; `Ok(None)`
/// when more bytes are needed; `Err` when it is not RESP the lane expects.
fn parse(buf: &[u8]) -> Result<Option<(Resp<'_>, usize)>, String> {
    parse_at(buf, 0)
}

fn parse_at(buf: &[u8], depth: usize) -> Result<Option<(Resp<'_>, usize)>, String> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let (kind, line) = match buf[..eol].split_first() {
        Some((k, l)) => (*k, l),
        None => return Err("empty reply line".into()),
    };
    let after = eol + 2;
    let number = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "bad number in reply".to_string())
    };
    Ok(Some(match kind {
        b'+' => (Resp::Simple(line), after),
        b'-' => (Resp::Error(line), after),
        b':' => (Resp::Int(number()?), after),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Resp::Bulk(None), after)));
            }
            let end = usize::try_from(len)
                .ok()
                .and_then(|len| after.checked_add(len))
                .filter(|end| *end <= usize::MAX - 2)
                .ok_or("bulk string length out of range")?;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("bulk string not ended by CRLF".into());
            }
            (Resp::Bulk(Some(&buf[after..end])), end + 2)
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Resp::Bulk(None), after)));
            }
            let len = usize::try_from(len).map_err(|e| e.to_string())?;
            if len > MAX_ARRAY || depth > 0 {
                return Err("array reply the lane does not expect".into());
            }
            let mut items = Vec::with_capacity(len);
            let mut at = after;
            for _ in 0..len {
                let Some((item, used)) = parse_at(&buf[at..], depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at += used;
            }
            (Resp::Array(items), at)
        }
        other => return Err(format!("unknown reply type {:?}", other as char)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn key_slots_are_redis_own() {
        // Redis' documented examples (`CLUSTER KEYSLOT`), and the hash tag
        // rule checked against redis-rs' own slot function.
        assert_eq!(key_slot(b"123456789"), 12_739);
        assert_eq!(key_slot(b"foo"), 12_182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        for k in [
            "quiz:{abc}:answers",
            "foo{}{bar}",
            "{}",
            "a{b",
            "x{y}z{w}",
            "",
            "é{ü}",
        ] {
            let ours = Slot::new(key_slot(k.as_bytes())).expect("slot in range");
            assert_eq!(ours, Slot::for_key(k), "slot of {k:?}");
        }
    }

    #[test]
    fn slot_ranges_name_each_master() {
        let node = |host: &str, port| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |lo, hi, master| {
            Value::Array(vec![
                Value::Int(lo),
                Value::Int(hi),
                master,
                node("127.0.0.1", 7004),
            ])
        };
        let reply = Value::Array(vec![
            range(0, 5460, node("127.0.0.1", 7000)),
            range(5461, 10922, node("::1", 7001)),
            range(10923, 16383, node("", 7002)),
        ]);
        assert_eq!(
            slot_ranges(&reply),
            Some(vec![
                (0, 5460, "127.0.0.1:7000".to_string()),
                (5461, 10922, "[::1]:7001".to_string()),
            ])
        );
        assert_eq!(slot_ranges(&Value::Int(1)), None);
        assert_eq!(slot_ranges(&Value::Array(vec![Value::Int(1)])), None);
        let bad_port = Value::Array(vec![range(0, 1, node("h", 70_000))]);
        assert_eq!(slot_ranges(&bad_port), None);
    }

    #[test]
    fn replies_parse_whole_or_wait_for_more() {
        let r = b"$6\r\nA 1 0\n\r\n:1\r\n";
        assert_eq!(parse(r), Ok(Some((Resp::Bulk(Some(b"A 1 0\n")), 12))));
        assert_eq!(parse(&r[12..]), Ok(Some((Resp::Int(1), 4))));
        for cut in 0..12 {
            assert_eq!(parse(&r[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            parse(b"*1\r\n$1\r\nS\r\n"),
            Ok(Some((Resp::Array(vec![Resp::Bulk(Some(b"S"))]), 11)))
        );
        assert_eq!(parse(b"*1\r\n$1\r\nS"), Ok(None));
        assert_eq!(
            parse(b"-MOVED 3999 127.0.0.1:7002\r\n"),
            Ok(Some((Resp::Error(b"MOVED 3999 127.0.0.1:7002"), 28)))
        );
        assert!(parse(b"$3\r\nabcd\r\n").is_err());
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b":12x\r\n").is_err());
        assert!(parse(b"*2\r\n*1\r\n:1\r\n:2\r\n").is_err());
        assert!(parse(b"*99\r\n").is_err());
    }

    #[test]
    fn random_bytes_never_panic_the_reply_reader() {
        // Replies are remote data: whatever arrives, `parse` says
        // complete, incomplete or malformed, and a complete reply never
        // claims more bytes than it was given.
        let alphabet = b"$*:+-\r\n0123456789-SLA x";
        for _ in 0..50_000 {
            let len = rand::random::<u32>() as usize % 48;
            let buf: Vec<u8> = (0..len)
                .map(|_| alphabet[rand::random::<u32>() as usize % alphabet.len()])
                .collect();
            if let Ok(Some((_, used))) = parse(&buf) {
                assert!(used <= buf.len(), "{buf:?}");
            }
        }
        for huge in [
            &b"$9223372036854775807\r\n"[..],
            b"$18446744073709551615\r\n",
            b"*-1\r\n",
        ] {
            assert!(!matches!(parse(huge), Ok(Some((_, used))) if used > huge.len()));
        }
    }

    #[test]
    fn a_batch_is_the_command_apply_batch_reads() {
        let answer = |q, late| AnswerRecord {
            player_id: "p1".into(),
            nickname: "Ann".into(),
            question_id: q,
            choices: vec![1],
            correct: true,
            late,
            points: 10,
            response_ms: 5,
            answered_at_ms: 7,
        };
        let mut b = Batch::new("qz", Some(4));
        let mut scratch = String::new();
        b.append(&answer(3, false), 1, &mut scratch);
        b.append(&answer(5, true), 2, &mut scratch);
        b.append(&answer(5, false), 3, &mut scratch);
        b.waiting = (0..3).map(|_| oneshot::channel().0).collect();
        let mut out = Vec::new();
        b.encode(&mut out);
        // Walk it back as RESP: one array of bulk strings.
        let mut words = Vec::new();
        let count = 3 + 8 + 2 + 3;
        let eol = out.windows(2).position(|w| w == b"\r\n").unwrap();
        assert_eq!(&out[..eol], format!("*{count}").as_bytes());
        let mut rest = &out[eol + 2..];
        for _ in 0..count {
            let (Resp::Bulk(Some(w)), used) = parse(rest).unwrap().unwrap() else {
                panic!("not a bulk string");
            };
            words.push(String::from_utf8(w.to_vec()).unwrap());
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        let sha = scripts().apply.sha.clone();
        let tail: Vec<&str> = words.iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            vec![
                "EVALSHA",
                &sha,
                "8",
                "quiz:{qz}:players",
                "quiz:{qz}:answers",
                "quiz:{qz}:leaderboard",
                "quiz:{qz}:lbver",
                "quiz:{qz}:state",
                "quiz:{qz}:pending_answers",
                "quiz:{qz}:dist:3",
                "quiz:{qz}:dist:5",
                "3",
                "4",
                "7 10 1 0000000000000001|c10;10;5;7;1 p1:3",
                "0 10 1 0000000000000002|c11;10;5;7;1 p1:5",
                "8 10 1 0000000000000003|c10;10;5;7;1 p1:5",
            ]
        );
    }
}
