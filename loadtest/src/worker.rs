//! A worker process: holds up to 19 000 players from its own loopback source
//! address and reports to the coordinator.
//!
//! In: one [`WorkerPlan`] as JSON on stdin, to its end. Out: JSON lines on
//! stdout, a
//! [`WorkerMsg::Progress`] every second (gauges plus the interval's
//! histograms and counters) and one [`WorkerMsg::Result`] at the end (compact
//! per-player summaries for the leaderboard check, the player-level
//! mismatches, the worker's own CPU and memory). Logs go to stderr.
//!
//! A worker on another host (`loadtest worker --connect COORDINATOR`) speaks
//! the same protocol over one TCP connection it opens to the coordinator:
//! the plan comes in until the coordinator ends its side, the JSON lines go
//! back on the same connection ([`Link`]). A lost link ends the worker.
//!
//! The worker runs on a single-threaded runtime with a `LocalSet`: players
//! share state through `Rc<RefCell<_>>` with no locks, and the coordinator
//! scales out with processes rather than threads.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::wall_us;
use crate::metrics::WireMetrics;
use crate::net::{http_request, reserve_connections};
use crate::plan::WorkerPlan;
use crate::player::{player_share, run_timers, start_players, Ctx};
use crate::procmon::{sample_self, ProcSample};
use crate::protocol::PlayerView;
use crate::target::{AllowList, Target};
use crate::verify::{check_player, Mismatch};

/// One joined player, as the coordinator needs it for the leaderboard check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlayerSummary {
    pub quiz: u32,
    pub player_id: String,
    pub score: u64,
    /// Answers acknowledged to the player as scored ([`AnswerRec::acked`]:
    /// accepted, or the `duplicate` answering a re-send).
    ///
    /// [`AnswerRec::acked`]: crate::verify::AnswerRec::acked
    #[serde(default)]
    pub accepted: u64,
    pub ended: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMsg {
    Progress {
        worker: u64,
        second: u64,
        connected: u64,
        joined: u64,
        done: u64,
        metrics: WireMetrics,
    },
    Result(Box<WorkerResult>),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub worker: u64,
    pub players: Vec<PlayerSummary>,
    pub planned: u64,
    pub joined: u64,
    pub ended: u64,
    /// Players that left on purpose (`[[stages]]` ramp down).
    #[serde(default)]
    pub left: u64,
    pub failed: u64,
    /// First few failure reasons, for the report.
    pub failures: Vec<String>,
    pub verified: u64,
    pub mismatch_count: u64,
    pub mismatches: Vec<Mismatch>,
    pub warning_count: u64,
    pub warnings: Vec<Mismatch>,
    pub unacknowledged: u64,
    pub answers_sent: u64,
    pub answers_acked: u64,
    pub frames_in: u64,
    pub max_connected: u64,
    pub nofile_limit: u64,
    pub self_usage: ProcSample,
    /// CPU µs and frames received in the steady phase (all connected, none
    /// done), if there was one.
    #[serde(default)]
    pub steady_cpu_us: u64,
    #[serde(default)]
    pub steady_frames: u64,
}

#[derive(Default)]
struct Steady {
    start: Option<(u64, u64)>,
    end: Option<(u64, u64)>,
}

const KEEP: usize = 200;

/// Default pause before a worker goes idle; see `on_thread_park` in
/// [`worker_main`].
const PARK_DELAY: Duration = Duration::from_micros(200);

/// Where a remote worker's JSON lines go: its link to the coordinator
/// (None: stdout, a local worker).
static LINK: Mutex<Option<TcpStream>> = Mutex::new(None);

fn emit(msg: &WorkerMsg) {
    let mut line = serde_json::to_string(msg).unwrap_or_default();
    line.push('\n');
    let mut link = LINK.lock().unwrap_or_else(|e| e.into_inner());
    match link.as_mut() {
        Some(s) => {
            if let Err(e) = s.write_all(line.as_bytes()) {
                // Nobody is left to report to: stop instead of running the
                // players on for nothing.
                eprintln!("loadtest worker: link to the coordinator lost ({e}); exiting");
                std::process::exit(3);
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }
}

/// The worker's command line (`loadtest worker`, `loadtest-worker worker`).
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// Connect to a coordinator's --listen-workers address (a worker on
    /// another host); without it: plan on stdin, JSON lines on stdout.
    #[arg(long, value_name = "HOST:PORT")]
    connect: Option<String>,
    /// Source address of the link to the coordinator.
    #[arg(long, value_name = "IP")]
    bind: Option<std::net::IpAddr>,
    /// Seconds to keep trying to reach the coordinator.
    #[arg(long, default_value_t = 60, value_name = "S")]
    connect_wait: u64,
    /// Seconds the link may stay silent before the plan arrives.
    #[arg(long, default_value_t = 600, value_name = "S")]
    plan_wait: u64,
    /// This worker's consent to a target (and coordinator) outside loopback,
    /// e.g. 10.1.2.0/24 (repeatable).
    #[arg(long = "allow-target", value_name = "CIDR")]
    allow_targets: Vec<String>,
}

impl WorkerArgs {
    pub fn into_link(self) -> Link {
        Link {
            connect: self.connect,
            bind: self.bind,
            connect_wait: Duration::from_secs(self.connect_wait),
            plan_wait: Duration::from_secs(self.plan_wait),
            allow_targets: self.allow_targets,
        }
    }
}

/// How a worker reaches its coordinator (`loadtest worker` options).
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// `HOST:PORT` of the coordinator's `--listen-workers`; None: stdin and
    /// stdout (a worker the coordinator spawned).
    pub connect: Option<String>,
    /// Source address of the link (e.g. 127.0.0.2).
    pub bind: Option<IpAddr>,
    /// Keep trying to connect this long (the coordinator may start later).
    pub connect_wait: Duration,
    /// Longest silence while the plan is being read.
    pub plan_wait: Duration,
    /// `--allow-target` CIDRs: this worker's own consent to targets off
    /// loopback (the coordinator's plan cannot widen it).
    pub allow_targets: Vec<String>,
}

/// Open the link to the coordinator, retrying until `connect_wait`.
fn dial(link: &Link, addr: &str) -> anyhow::Result<TcpStream> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<IpAddr>().is_err()
        && !host.eq_ignore_ascii_case("localhost")
        && crate::target::allowed().is_empty()
    {
        // As for targets: no name is resolved without an allow list.
        anyhow::bail!("--connect {addr}: give an IP address (host names are resolved only with --allow-target)");
    }
    let to: SocketAddr = {
        use std::net::ToSocketAddrs;
        addr.to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("--connect {addr}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("--connect {addr}: no address"))?
    };
    crate::target::ensure_allowed(to.ip()).map_err(|e| {
        anyhow::anyhow!("--connect {addr}: {e} (add --allow-target for a coordinator elsewhere)")
    })?;
    let until = Instant::now() + link.connect_wait;
    loop {
        let attempt = (|| -> std::io::Result<TcpStream> {
            let domain = socket2::Domain::for_address(to);
            let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
            if let Some(src) = link.bind {
                sock.bind(&SocketAddr::new(src, 0).into())?;
            }
            sock.connect_timeout(&to.into(), Duration::from_secs(5))?;
            Ok(sock.into())
        })();
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < until => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => anyhow::bail!(
                "--connect {addr}: no coordinator within {} s: {e}",
                link.connect_wait.as_secs()
            ),
        }
    }
}

/// Entry point of `loadtest worker`: plan on stdin (or the link), JSON
/// lines on stdout (or the link).
pub fn worker_main(link: Link) -> anyhow::Result<()> {
    crate::target::set_allowed(&AllowList::parse(&link.allow_targets)?);
    let mut input = String::new();
    match &link.connect {
        Some(addr) => {
            let mut s = dial(&link, addr)?;
            s.set_nodelay(true)?;
            eprintln!(
                "loadtest worker: connected to {addr} from {}; waiting for the plan",
                s.local_addr()?
            );
            s.set_read_timeout(Some(link.plan_wait))?;
            s.read_to_string(&mut input)
                .map_err(|e| anyhow::anyhow!("reading the plan from {addr}: {e}"))?;
            *LINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
        }
        None => {
            std::io::stdin().read_to_string(&mut input)?;
        }
    }
    let plan: WorkerPlan = serde_json::from_str(&input)?;
    plan.scenario.validate()?;
    let park_delay = std::env::var("LOADTEST_PARK_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_micros)
        .unwrap_or(PARK_DELAY);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Fewer wake-ups: a board tick reaches thousands of sockets over a
        // few milliseconds; woken for each of them, the worker pays a context
        // switch per handful of frames. Pausing briefly before going idle
        // lets the next `epoll_wait` return a batch. Adds at most
        // the delay to a measured latency (they are reported in ms).
        // `LOADTEST_PARK_US` overrides it (0 = off).
        .on_thread_park(move || {
            if !park_delay.is_zero() {
                std::thread::sleep(park_delay)
            }
        })
        .build()?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, run(plan))?;
    emit(&WorkerMsg::Result(Box::new(result)));
    if let Some(s) = LINK.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    Ok(())
}

pub async fn run(plan: WorkerPlan) -> anyhow::Result<WorkerResult> {
    let target = Target::parse(&plan.target)?;
    let nofile = descriptors::raise_limit();
    let planned = plan.players().count() as u64;
    if planned + 64 > nofile {
        anyhow::bail!(
            "worker {} would hold {planned} connections but may open only {nofile} files",
            plan.worker
        );
    }
    // The kernel's descriptor table grown once now rather than doubling during the ramp,
    // each doubling a stall of every thread (the `descriptors` crate); room for the
    // verification requests' short connections beside the players'. Only a cost if it fails.
    let _ = descriptors::reserve_table(planned + 1024);
    // Likewise the hub's table of connections, which would otherwise be
    // copied as it doubles while the players connect.
    reserve_connections(planned as usize)?;
    let ctx = Rc::new(Ctx::new(&plan, target));
    let worker = plan.worker;

    // Progress reporter: once a second, ship the interval and start a new one.
    // It also brackets the steady phase (every player connected, none done
    // yet) with CPU readings: the generator's cost per frame without the
    // one-off joins, handshakes and verification requests.
    let ticker_ctx = ctx.clone();
    let steady = Rc::new(std::cell::RefCell::new(Steady::default()));
    let ticker_steady = steady.clone();
    let ticker = tokio::task::spawn_local(async move {
        let mut iv = tokio::time::interval(Duration::from_secs(1));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            iv.tick().await;
            flush_progress(&ticker_ctx, worker);
            let (connected, done, frames) = {
                let sh = ticker_ctx.shared.borrow();
                (sh.connected, sh.done, sh.frames_total)
            };
            let mut st = ticker_steady.borrow_mut();
            if st.start.is_none() && connected >= planned && done == 0 {
                st.start = Some((sample_self().cpu_us, frames));
            } else if st.start.is_some() && st.end.is_none() && (done > 0 || connected < planned) {
                st.end = Some((sample_self().cpu_us, frames));
            }
        }
    });

    let timers = tokio::task::spawn_local(run_timers(ctx.clone()));
    tokio::task::spawn_local(start_players(ctx.clone(), plan.players().collect()));
    // Players hand in their records as they end (they have no task to
    // await); each one's state is freed as it does.
    while ctx.finished.borrow().len() < planned as usize {
        ctx.player_done.notified().await;
    }
    timers.abort();
    ctx.drop_timers();
    let mut records = std::mem::take(&mut *ctx.finished.borrow_mut());
    records.sort_unstable_by_key(|r| r.index);
    {
        // Close the steady phase here if the ticker has not yet: when every
        // player ends within the same second and verification is quick, the
        // next tick comes after the ticker is stopped and the run would
        // report no steady figure at all.
        let mut st = steady.borrow_mut();
        if st.start.is_some() && st.end.is_none() {
            st.end = Some((sample_self().cpu_us, ctx.shared.borrow().frames_total));
        }
    }

    // Verification: the platform's view of each (sampled) player's score.
    let verify_deadline = ctx.at_wall(plan.verify_deadline_wall_us);
    let share = plan.scenario.checks.verify_players;
    let to_verify: Vec<usize> = records
        .iter()
        .enumerate()
        // Besides the sample, every player with an answer whose ack was
        // lost: only the platform's final score can resolve it.
        .filter(|(_, r)| {
            r.joined() && (player_share(plan.seed, r.index, 0x7e21) < share || r.has_open_answers())
        })
        .map(|(i, _)| i)
        .collect();
    let verified = to_verify.len() as u64;
    let fetched = Rc::new(std::cell::RefCell::new(Vec::new()));
    // The sampled players' paths only (not a copy of every player's id):
    // this is the run's memory peak, the records all collected.
    let queue: Vec<(usize, String)> = to_verify
        .into_iter()
        .map(|i| {
            let r = &records[i];
            let quiz = &plan.quiz_ids[r.quiz as usize];
            (i, format!("/v1/quizzes/{quiz}/players/{}", r.player_id))
        })
        .collect();
    let queue = Rc::new(std::cell::RefCell::new(queue));
    let mut fetchers = Vec::new();
    for _ in 0..16 {
        let queue = queue.clone();
        let fetched = fetched.clone();
        let ctx = ctx.clone();
        fetchers.push(tokio::task::spawn_local(async move {
            loop {
                let next = queue.borrow_mut().pop();
                let Some((i, path)) = next else { break };
                let left = verify_deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    fetched
                        .borrow_mut()
                        .push((i, Err("verification deadline passed".to_string())));
                    continue;
                }
                let res = http_request(
                    &ctx.target,
                    ctx.sources.first().copied(),
                    "GET",
                    &path,
                    &[],
                    None,
                    left.min(Duration::from_secs(10)),
                )
                .await;
                let v = match res {
                    Ok(r) if r.status == 200 => serde_json::from_slice::<PlayerView>(&r.body)
                        .map(|v| v.score)
                        .map_err(|e| format!("GET {path}: bad body: {e}")),
                    Ok(r) => Err(format!("GET {path}: HTTP {}", r.status)),
                    Err(e) => Err(format!("GET {path}: {e}")),
                };
                fetched.borrow_mut().push((i, v));
            }
        }));
    }
    for f in fetchers {
        let _ = f.await;
    }
    let mut final_inferred = 0u64;
    for (i, v) in fetched.borrow_mut().drain(..) {
        match v {
            Ok(s) => {
                records[i].server_score = Some(s);
                if records[i].reconcile_final_score() {
                    final_inferred += 1;
                }
            }
            Err(e) => records[i].http_error = Some(e.into()),
        }
    }
    if final_inferred > 0 {
        ctx.shared
            .borrow_mut()
            .m
            .count("final_score_inferred", final_inferred);
    }
    ticker.abort();
    flush_progress(&ctx, worker);

    let mut res = WorkerResult {
        worker,
        planned,
        nofile_limit: nofile,
        verified,
        ..Default::default()
    };
    let live = plan.scenario.mode_is_live();
    let cross = plan.scenario.checks.cross_check_points;
    for r in &records {
        if let Some(f) = &r.failure {
            res.failed += 1;
            if res.failures.len() < 20 {
                res.failures.push(format!("player {}: {f}", r.index));
            }
        }
        if !r.joined() {
            continue;
        }
        res.joined += 1;
        if r.ended {
            res.ended += 1;
        }
        if r.left {
            res.left += 1;
        }
        res.answers_sent += r.answers.len() as u64;
        res.answers_acked += r.answers.iter().filter(|a| a.result.is_some()).count() as u64;
        let quiz_id = &plan.quiz_ids[r.quiz as usize];
        let c = check_player(quiz_id, r, cross, live);
        res.unacknowledged += c.unacknowledged;
        res.mismatch_count += c.mismatches.len() as u64;
        res.warning_count += c.warnings.len() as u64;
        for m in c.mismatches {
            if res.mismatches.len() < KEEP {
                res.mismatches.push(m);
            }
        }
        for w in c.warnings {
            if res.warnings.len() < KEEP {
                res.warnings.push(w);
            }
        }
        res.players.push(PlayerSummary {
            quiz: r.quiz,
            player_id: r.player_id.clone(),
            score: r.acknowledged_points(),
            accepted: r.answers.iter().filter(|a| a.acked().is_some()).count() as u64,
            ended: r.ended,
        });
    }
    let sh = ctx.shared.borrow();
    res.frames_in = sh.frames_total;
    res.max_connected = sh.max_connected;
    res.self_usage = sample_self();
    let st = steady.borrow();
    if let (Some((c0, f0)), Some((c1, f1))) = (st.start, st.end) {
        res.steady_cpu_us = c1.saturating_sub(c0);
        res.steady_frames = f1.saturating_sub(f0);
    }
    Ok(res)
}

fn flush_progress(ctx: &Ctx, worker: u64) {
    let (metrics, connected, joined, done) = {
        let mut sh = ctx.shared.borrow_mut();
        let m = sh.interval_to_wire();
        (m, sh.connected, sh.joined, sh.done)
    };
    let second = wall_us().saturating_sub(ctx.t0_wall_us) / 1_000_000;
    emit(&WorkerMsg::Progress {
        worker,
        second,
        connected,
        joined,
        done,
        metrics,
    });
}
