//! The coordinator: host of the quizzes, parent of the workers, judge of the
//! run.
//!
//! 1. loads the scenario (CLI overrides applied, then validated: loopback
//!    target, caps);
//! 2. creates the quizzes over HTTP (it knows the correct answers);
//! 3. spawns `loadtest worker` processes (itself), each with a [`WorkerPlan`]
//!    on stdin and its own loopback source addresses (127.0.0.2 upwards);
//! 4. merges their per-second progress into an [`Aggregator`], samples the
//!    processes under test from /proc, prints a live line;
//! 5. once the players are connected, drives each live quiz with
//!    start/next/end (and kills a node for `node_failure`);
//! 6. collects the workers' results, checks every quiz's leaderboard against
//!    the tool's record, and writes the [`RunResult`].
//!
//! Bounded: the load phase ends at `duration_s`, verification has a fixed
//! grace after it, and workers still alive after that are killed (they are
//! this process's own children).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use crate::metrics::{summarize, Aggregator, Metrics, SeriesPoint, Summary, WireMetrics, HISTS};
use crate::net::http_request;
use crate::player::{correct_option, wall_us};
use crate::procmon::{Monitor, ProcSample, ProcSeries};
use crate::protocol::{CreateQuiz, Created, NewQuestion};
use crate::scenario::{Mode, Scenario};
use crate::target::{worker_sources, Target};
use crate::verify::{check_leaderboard, LeaderboardView, Mismatch};
use crate::worker::{WorkerMsg, WorkerPlan, WorkerResult};

/// Command-line overrides of a scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub scenario: PathBuf,
    pub target: Option<String>,
    /// `edge_lb`, `core` or `proxy`.
    pub target_kind: Option<String>,
    pub players: Option<u64>,
    pub quizzes: Option<u64>,
    pub duration_s: Option<u64>,
    pub workers: Option<u64>,
    pub ramp_per_sec: Option<f64>,
    pub out_dir: PathBuf,
    pub kill_pid: Option<u32>,
    pub watch_pids: Vec<u32>,
    pub watch_names: Vec<String>,
    pub quiet: bool,
    pub seed: u64,
    /// The binary to run as `worker` (default: this executable).
    pub worker_exe: Option<PathBuf>,
    /// Sent as `X-Admin-Key` when creating quizzes.
    pub admin_key: Option<String>,
    /// Check the durable record in this MongoDB (loopback only) after the run.
    pub mongo_uri: Option<String>,
    pub mongo_db: Option<String>,
    /// How long to wait for the persister to drain.
    pub mongo_drain_s: Option<u64>,
}

/// Load a scenario and apply the CLI overrides, validating the result.
pub fn prepare(opts: &RunOptions) -> anyhow::Result<Scenario> {
    let mut sc = Scenario::load(&opts.scenario)?;
    if let Some(t) = &opts.target {
        sc.target.url = t.clone();
    }
    if let Some(k) = &opts.target_kind {
        sc.target.kind = serde_json::from_value(serde_json::Value::String(k.clone()))
            .map_err(|_| anyhow::anyhow!("--kind: one of edge_lb, core, proxy, got `{k}`"))?;
    }
    if let Some(p) = opts.players {
        sc.load.players = p;
        sc.load.max_connections = sc.load.max_connections.max(p);
        if sc.load.quizzes > p {
            sc.load.quizzes = p;
        }
    }
    if let Some(q) = opts.quizzes {
        sc.load.quizzes = q;
    }
    if let Some(d) = opts.duration_s {
        sc.load.duration_s = d;
    }
    if let Some(w) = opts.workers {
        sc.load.workers = w;
    }
    if let Some(r) = opts.ramp_per_sec {
        sc.load.ramp_per_sec = r;
    }
    sc.target.watch_pids.extend(&opts.watch_pids);
    sc.target
        .watch_process_names
        .extend(opts.watch_names.iter().cloned());
    sc.validate()?;
    if let Some(uri) = &opts.mongo_uri {
        crate::mongo::ensure_loopback_uri(uri).map_err(|e| anyhow::anyhow!("--mongo-uri: {e}"))?;
    }
    if let Some(nf) = &sc.node_failure {
        if opts.kill_pid.is_none() && nf.pid_file.is_none() {
            bail!("scenario key `node_failure`: give the pid of the node to kill with --kill-pid or node_failure.pid_file");
        }
    }
    Ok(sc)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cores: u64,
    pub cpu_model: String,
    pub kernel: String,
    pub mem_total_mb: u64,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(0),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            mem_total_mb: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                / 1024,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub planned: u64,
    pub joined: u64,
    pub ended: u64,
    pub failed: u64,
    pub verified: u64,
    pub answers_sent: u64,
    pub answers_acked: u64,
    pub unacknowledged: u64,
    pub frames_in: u64,
    pub max_connected: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rates {
    pub answers_per_s_mean: f64,
    pub answers_per_s_peak: f64,
    pub frames_per_s_mean: f64,
    pub frames_per_s_peak: f64,
}

/// The generator's own cost: the budget is ~5 µs CPU and ~1.5 KB per frame.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GeneratorCost {
    pub workers: u64,
    pub cpu_s: f64,
    pub peak_rss_mb: f64,
    pub cpu_us_per_frame: f64,
    /// The same in the steady phase only (all players connected, none done):
    /// the marginal cost of a frame, without joins, handshakes, verification.
    #[serde(default)]
    pub steady_cpu_us_per_frame: f64,
    #[serde(default)]
    pub steady_frames: u64,
    pub peak_rss_kb_per_connection: f64,
    pub peak_rss_bytes_per_frame: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcUsage {
    pub cpu_s: f64,
    pub cpu_cores_mean: f64,
    pub cpu_cores_max: f64,
    pub rss_mb_max: f64,
}

/// Everything a run produced; the JSON result file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub format: u32,
    pub tool_version: String,
    pub scenario: String,
    pub scenario_file: String,
    pub scenario_config: Option<Scenario>,
    pub target: String,
    pub target_kind: String,
    pub started_at: String,
    pub elapsed_s: f64,
    pub machine: Machine,
    pub passed: bool,
    pub failure_reasons: Vec<String>,
    pub counts: Counts,
    pub latency_ms: BTreeMap<String, Summary>,
    pub rates: Rates,
    pub counters: BTreeMap<String, u64>,
    pub generator: GeneratorCost,
    pub processes: BTreeMap<String, ProcUsage>,
    pub mismatch_count: u64,
    pub mismatches: Vec<Mismatch>,
    pub warning_count: u64,
    pub warnings: Vec<Mismatch>,
    pub failures: Vec<String>,
    pub host_errors: Vec<String>,
    pub series: Vec<SeriesPoint>,
    pub proc_series: ProcSeries,
    /// Whole-run histograms (V2, base64), for exact re-aggregation.
    pub histograms: WireMetrics,
}

/// Format a Unix time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_string(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

async fn create_quizzes(
    target: &Target,
    sc: &Scenario,
    admin_key: Option<&str>,
) -> anyhow::Result<Vec<(String, String)>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut handles = Vec::new();
    for i in 0..sc.load.quizzes as usize {
        let questions = (0..sc.quiz.questions)
            .map(|q| NewQuestion {
                text: format!("Question {q} of quiz {i}?"),
                options: (0..sc.quiz.options)
                    .map(|o| format!("option {o}"))
                    .collect(),
                correct: vec![correct_option(i, q, sc.quiz.options)],
                time_limit_ms: sc.quiz.time_limit_ms,
                points: sc.quiz.points,
            })
            .collect();
        let title = format!("loadtest {} #{i}", sc.name);
        let body = serde_json::to_vec(&CreateQuiz {
            title: &title,
            mode: match sc.load.mode {
                Mode::Live => "live",
                Mode::SelfPaced => "self_paced",
            },
            questions,
        })?;
        let target = *target;
        let sem = sem.clone();
        let admin_key = admin_key.map(str::to_string);
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            let headers: Vec<(&str, &str)> = match &admin_key {
                Some(k) => vec![("X-Admin-Key", k.as_str())],
                None => Vec::new(),
            };
            let r = http_request(
                &target,
                None,
                "POST",
                "/v1/quizzes",
                &headers,
                Some(&body),
                Duration::from_secs(30),
            )
            .await
            .with_context(|| format!("creating quiz {i}"))?;
            if r.status != 201 {
                bail!(
                    "creating quiz {i}: HTTP {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
            }
            let c: Created = serde_json::from_slice(&r.body)
                .with_context(|| format!("creating quiz {i}: response body"))?;
            Ok((c.quiz_id, c.host_token))
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await??);
    }
    Ok(out)
}

/// Live gauges from the workers, for the host's "everyone is connected" wait.
#[derive(Debug, Clone, Copy, Default)]
struct Gauges {
    connected: u64,
    joined: u64,
    done: u64,
}

#[derive(Debug)]
enum HostEvent {
    Opened { quiz: usize, question: u32 },
    Error(String),
}

async fn host_call(target: &Target, quiz_id: &str, token: &str, verb: &str) -> Result<(), String> {
    let path = format!("/v1/quizzes/{quiz_id}/{verb}");
    let mut last = String::new();
    for attempt in 0..5u64 {
        match http_request(
            target,
            None,
            "POST",
            &path,
            &[("Authorization", &format!("Bearer {token}"))],
            Some(b"{}"),
            Duration::from_secs(10),
        )
        .await
        {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => {
                last = format!(
                    "POST {path}: HTTP {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                );
                if !matches!(r.status, 429 | 502 | 503 | 504) {
                    return Err(last);
                }
            }
            Err(e) => last = format!("POST {path}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    Err(last)
}

#[allow(clippy::too_many_arguments)]
async fn host_quiz(
    target: Target,
    sc: Arc<Scenario>,
    quiz: usize,
    quiz_id: String,
    token: String,
    mut gauges: watch::Receiver<Gauges>,
    start_by: tokio::time::Instant,
    deadline: tokio::time::Instant,
    events: mpsc::UnboundedSender<HostEvent>,
) {
    let players = sc.load.players;
    // Wait until every player is connected (or gave up), or the lobby wait ends.
    let _ = tokio::time::timeout_at(
        start_by,
        gauges.wait_for(|g| g.connected + g.done >= players),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(sc.load.stagger_ms * quiz as u64)).await;
    if !sc.mode_is_live() {
        // Self-paced: open the quiz, let every player go through it at its
        // own pace, end it when all are done (or at the deadline).
        if let Err(e) = host_call(&target, &quiz_id, &token, "start").await {
            let _ = events.send(HostEvent::Error(format!("quiz {quiz}: {e}")));
            return;
        }
        let _ = events.send(HostEvent::Opened { quiz, question: 0 });
        let _ = tokio::time::timeout_at(deadline, gauges.wait_for(|g| g.done >= players)).await;
        if let Err(e) = host_call(&target, &quiz_id, &token, "end").await {
            let _ = events.send(HostEvent::Error(format!("quiz {quiz}: {e}")));
        }
        return;
    }
    let q = sc.quiz.questions;
    for i in 0..=q {
        if tokio::time::Instant::now() >= deadline {
            let _ = events.send(HostEvent::Error(format!(
                "quiz {quiz_id}: duration_s reached before the quiz ended"
            )));
            return;
        }
        let verb = if i == 0 {
            "start"
        } else if i < q {
            "next"
        } else {
            "end"
        };
        if let Err(e) = host_call(&target, &quiz_id, &token, verb).await {
            let _ = events.send(HostEvent::Error(format!("quiz {quiz}: {e}")));
            return;
        }
        if i < q {
            let _ = events.send(HostEvent::Opened { quiz, question: i });
            tokio::time::sleep(Duration::from_millis(sc.quiz.advance_after_ms)).await;
        }
    }
}

fn kill_node(pid: u32) -> Result<(), String> {
    if pid <= 1 || pid == std::process::id() {
        return Err(format!("refusing to kill pid {pid}"));
    }
    // SAFETY: kill(2) with a positive pid and SIGKILL.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("kill {pid}: {}", std::io::Error::last_os_error()))
    }
}

/// Run a scenario end to end. Returns the result (also written to disk).
pub async fn run(opts: RunOptions) -> anyhow::Result<(RunResult, PathBuf)> {
    let sc = prepare(&opts)?;
    let target = Target::parse(&sc.target.url)?;
    let started = wall_us();
    let log = |s: &str| {
        if !opts.quiet {
            eprintln!("{s}");
        }
    };
    log(&format!(
        "loadtest: scenario {} -> {} ({:?}): {} players, {} quizzes, {} workers, hard cap {} s",
        sc.name,
        target.url(),
        sc.target.kind,
        sc.load.players,
        sc.load.quizzes,
        sc.worker_count(),
        sc.load.duration_s
    ));
    match http_request(
        &target,
        None,
        "GET",
        "/healthz",
        &[],
        None,
        Duration::from_secs(5),
    )
    .await
    {
        Ok(r) if r.status == 200 => {}
        Ok(r) => log(&format!("warning: GET /healthz answered HTTP {}", r.status)),
        Err(e) => bail!("target {} is not reachable: {e}", target.url()),
    }
    let quizzes = create_quizzes(&target, &sc, opts.admin_key.as_deref()).await?;
    let quiz_ids: Vec<String> = quizzes.iter().map(|(q, _)| q.clone()).collect();
    log(&format!("created {} quizzes", quizzes.len()));

    let workers = sc.worker_count();
    let t0 = wall_us() + 300_000;
    let deadline_us = started + sc.load.duration_s * 1_000_000;
    let verify_grace_us = (20 + sc.load.players / 500).min(120) * 1_000_000;
    let verify_deadline_us = deadline_us + verify_grace_us;
    let exe = match &opts.worker_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the loadtest binary")?,
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Option<WorkerMsg>)>();
    let mut children = Vec::new();
    for w in 0..workers {
        let plan = WorkerPlan {
            worker: w,
            workers,
            sources: worker_sources(w, sc.sources_per_worker())
                .into_iter()
                .map(std::net::IpAddr::V4)
                .collect(),
            target: target.url(),
            scenario: sc.clone(),
            quiz_ids: quiz_ids.clone(),
            t0_wall_us: t0,
            deadline_wall_us: deadline_us,
            verify_deadline_wall_us: verify_deadline_us,
            seed: opts.seed,
        };
        let mut child = tokio::process::Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning a worker")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        stdin.write_all(&serde_json::to_vec(&plan)?).await?;
        drop(stdin);
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<WorkerMsg>(&line) {
                    Ok(m) => {
                        let _ = tx.send((w, Some(m)));
                    }
                    Err(e) => eprintln!("worker {w}: unreadable line ({e})"),
                }
            }
            let _ = tx.send((w, None));
        });
        children.push(child);
    }
    drop(tx);

    // Host tasks.
    let sc_arc = Arc::new(sc.clone());
    let (gauge_tx, gauge_rx) = watch::channel(Gauges::default());
    let (host_tx, mut host_rx) = mpsc::unbounded_channel::<HostEvent>();
    let ramp_s = sc.load.players as f64 / sc.load.ramp_per_sec;
    let base = tokio::time::Instant::now();
    let start_by = base + Duration::from_secs_f64(0.3 + ramp_s + sc.load.lobby_wait_s as f64);
    let deadline = base + Duration::from_micros(deadline_us.saturating_sub(wall_us()));
    let mut host_handles = Vec::new();
    {
        for (i, (qid, tok)) in quizzes.iter().enumerate() {
            host_handles.push(tokio::spawn(host_quiz(
                target,
                sc_arc.clone(),
                i,
                qid.clone(),
                tok.clone(),
                gauge_rx.clone(),
                start_by,
                deadline,
                host_tx.clone(),
            )));
        }
    }
    drop(host_tx);
    let kill_pid = match (&sc.node_failure, opts.kill_pid) {
        (Some(_), Some(p)) => Some(p),
        (Some(nf), None) => match &nf.pid_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("node_failure.pid_file {f}"))?
                    .trim()
                    .parse::<u32>()
                    .with_context(|| format!("node_failure.pid_file {f}: not a pid"))?,
            ),
            None => None,
        },
        _ => None,
    };

    let mut agg = Aggregator::default();
    let mut gauges: BTreeMap<u64, Gauges> = BTreeMap::new();
    let mut results: Vec<WorkerResult> = Vec::new();
    let mut open_workers = workers;
    let mut host_errors = Vec::new();
    let mut monitor = Monitor::default();
    let mut watched: Vec<(u32, String)> = sc
        .target
        .watch_pids
        .iter()
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            (*p, comm.trim().to_string())
        })
        .collect();
    watched.extend(crate::procmon::pids_named(&sc.target.watch_process_names));
    let worker_pids: Vec<(u32, String)> = children
        .iter()
        .filter_map(|c| c.id())
        .map(|p| (p, "loadtest-worker".to_string()))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let hard_stop = base
        + Duration::from_micros(verify_deadline_us.saturating_sub(wall_us()))
        + Duration::from_secs(10);
    let mut killed = false;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut ticks = 0u64;
    let mut host_open = true;
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some((w, Some(WorkerMsg::Progress { worker, second, connected, joined, done, metrics }))) => {
                    match Metrics::from_wire(&metrics) {
                        Ok(m) => agg.add_interval(worker, second, connected, &m),
                        Err(e) => eprintln!("worker {w}: {e}"),
                    }
                    gauges.insert(worker, Gauges { connected, joined, done });
                    let total = gauges.values().fold(Gauges::default(), |a, g| Gauges {
                        connected: a.connected + g.connected,
                        joined: a.joined + g.joined,
                        done: a.done + g.done,
                    });
                    let _ = gauge_tx.send(total);
                }
                Some((_, Some(WorkerMsg::Result(r)))) => results.push(*r),
                Some((w, None)) => {
                    open_workers -= 1;
                    if !results.iter().any(|r| r.worker == w) {
                        host_errors.push(format!("worker {w} exited without a result"));
                    }
                    if open_workers == 0 { break; }
                }
                None => break,
            },
            ev = host_rx.recv(), if host_open => match ev {
                Some(HostEvent::Opened { quiz, question }) => {
                    if let (Some(nf), Some(pid), false) = (&sc.node_failure, kill_pid, killed) {
                        if quiz == 0 && question == nf.at_question {
                            killed = true;
                            let after = nf.after_ms;
                            let tx = gauge_tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(after)).await;
                                match kill_node(pid) {
                                    Ok(()) => eprintln!("node_failure: killed pid {pid}"),
                                    Err(e) => eprintln!("node_failure: {e}"),
                                }
                                drop(tx);
                            });
                        }
                    }
                }
                Some(HostEvent::Error(e)) => { log(&format!("host: {e}")); host_errors.push(e); }
                None => host_open = false,
            },
            _ = tick.tick() => {
                let t = (wall_us().saturating_sub(t0)) as f64 / 1e6;
                monitor.tick(t, &watched);
                monitor.tick(t, &worker_pids);
                ticks += 1;
                if !opts.quiet {
                    let line = progress_line(t, &agg, &gauges, sc.load.players, if tty { 1 } else { 5 });
                    if tty {
                        // One live line, rewritten in place.
                        eprint!("\r\x1b[K{line}");
                    } else if ticks % 5 == 0 {
                        eprintln!("{line}");
                    }
                }
                if tokio::time::Instant::now() >= hard_stop {
                    host_errors.push("workers killed at the hard stop (verification grace exceeded)".into());
                    for c in &mut children { let _ = c.start_kill(); }
                    break;
                }
            }
        }
    }
    if tty && !opts.quiet {
        eprintln!();
    }
    for h in host_handles {
        h.abort();
    }
    for c in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
    }

    // Leaderboards against the tool's record.
    let mut mismatches: Vec<Mismatch> = Vec::new();
    let mut mismatch_count = 0u64;
    let mut mongo_failed: Option<String> = None;
    let mut expected: Vec<HashMap<String, u64>> = vec![HashMap::new(); quiz_ids.len()];
    for r in &results {
        for p in &r.players {
            expected[p.quiz as usize].insert(p.player_id.clone(), p.score);
        }
    }
    if sc.checks.leaderboard {
        for (i, qid) in quiz_ids.iter().enumerate() {
            let path = format!("/v1/quizzes/{qid}/leaderboard?limit=100");
            match http_request(
                &target,
                None,
                "GET",
                &path,
                &[],
                None,
                Duration::from_secs(10),
            )
            .await
            {
                Ok(r) if r.status == 200 => {
                    match serde_json::from_slice::<LeaderboardView>(&r.body) {
                        Ok(lb) => {
                            let m = check_leaderboard(qid, &expected[i], 100, &lb);
                            mismatch_count += m.len() as u64;
                            mismatches.extend(m);
                        }
                        Err(e) => host_errors.push(format!("GET {path}: bad body: {e}")),
                    }
                }
                Ok(r) => host_errors.push(format!("GET {path}: HTTP {}", r.status)),
                Err(e) => host_errors.push(format!("GET {path}: {e}")),
            }
        }
    }

    if let Some(uri) = &opts.mongo_uri {
        let mut per_quiz: Vec<(String, HashMap<String, crate::mongo::Expect>)> = quiz_ids
            .iter()
            .map(|q| (q.clone(), HashMap::new()))
            .collect();
        for r in &results {
            for p in &r.players {
                per_quiz[p.quiz as usize].1.insert(
                    p.player_id.clone(),
                    crate::mongo::Expect {
                        score: p.score,
                        accepted: p.accepted,
                    },
                );
            }
        }
        let drain = Duration::from_secs(opts.mongo_drain_s.unwrap_or(60).min(600));
        let db = opts.mongo_db.clone().unwrap_or_else(|| "quiz".into());
        log(&format!(
            "checking MongoDB ({db}), waiting up to {} s for the persister",
            drain.as_secs()
        ));
        match crate::mongo::check(uri, &db, drain, &per_quiz).await {
            Ok(m) => {
                mismatch_count += m.len() as u64;
                mismatches.extend(m);
            }
            Err(e) => {
                mongo_failed = Some(format!("MongoDB check could not run: {e}"));
            }
        }
    }
    let elapsed_s = (wall_us() - started) as f64 / 1e6;
    let mut result = assemble(
        &sc, &opts, &target, started, elapsed_s, &agg, &results, &monitor,
    );
    result.mismatch_count += mismatch_count;
    mismatches.append(&mut result.mismatches);
    mismatches.truncate(1000);
    result.mismatches = mismatches;
    result.host_errors = host_errors;
    judge(&sc, &mut result, workers);
    if let Some(e) = mongo_failed {
        result.host_errors.push(e.clone());
        result.failure_reasons.push(e);
        result.passed = false;
    }

    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let stem = format!(
        "{}-{}",
        sc.name,
        utc_string(started / 1_000_000).replace([':', '-'], "")
    );
    let json_path = opts.out_dir.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let html_path = opts.out_dir.join(format!("{stem}.html"));
    std::fs::write(&html_path, crate::report::html(&result))
        .with_context(|| format!("writing {}", html_path.display()))?;
    Ok((result, json_path))
}

fn progress_line(
    t: f64,
    agg: &Aggregator,
    gauges: &BTreeMap<u64, Gauges>,
    players: u64,
    window: usize,
) -> String {
    let joined: u64 = gauges.values().map(|g| g.joined).sum();
    let done: u64 = gauges.values().map(|g| g.done).sum();
    let Some(m) = agg.recent(window) else {
        return format!("[{t:6.1}s] waiting for workers");
    };
    let w = window as u64;
    let (ans, frames, p99a, p99q, errs) = (
        m.counter("answers_sent") / w,
        m.counter("frames_in") / w,
        m.hist(crate::metrics::H::Answer),
        m.hist(crate::metrics::H::Question),
        m.counters
            .iter()
            .filter(|(k, _)| k.starts_with("error."))
            .map(|(_, v)| v)
            .sum::<u64>()
            / w,
    );
    let p = |h: &hdrhistogram::Histogram<u64>| {
        if h.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}ms", h.value_at_quantile(0.99) as f64 / 1000.0)
        }
    };
    let total_errs: u64 = agg
        .total
        .counters
        .iter()
        .filter(|(k, _)| k.starts_with("error."))
        .map(|(_, v)| v)
        .sum();
    format!(
        "[{t:6.1}s] joined {joined}/{players} connected {} done {done} | answers/s {ans} frames/s {frames} | p99 answer {} question {} | errors {errs}/s ({total_errs} total)",
        agg.connected_now(),
        p(p99a),
        p(p99q)
    )
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    sc: &Scenario,
    opts: &RunOptions,
    target: &Target,
    started: u64,
    elapsed_s: f64,
    agg: &Aggregator,
    results: &[WorkerResult],
    monitor: &Monitor,
) -> RunResult {
    let mut r = RunResult {
        format: 1,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        scenario: sc.name.clone(),
        scenario_file: opts.scenario.display().to_string(),
        scenario_config: Some(sc.clone()),
        target: target.url(),
        target_kind: format!("{:?}", sc.target.kind),
        started_at: utc_string(started / 1_000_000),
        elapsed_s,
        machine: Machine::detect(),
        counters: agg.total.counters.clone(),
        histograms: agg.total.to_wire(),
        series: agg.series(),
        ..Default::default()
    };
    for (name, h) in HISTS.iter().zip(&agg.total.hists) {
        r.latency_ms.insert(name.to_string(), summarize(h));
    }
    r.counts.planned = sc.load.players;
    let mut gen = GeneratorCost {
        workers: results.len() as u64,
        ..Default::default()
    };
    let mut self_usage = ProcSample::default();
    let (mut steady_cpu, mut steady_frames) = (0u64, 0u64);
    for w in results {
        let c = &mut r.counts;
        c.joined += w.joined;
        c.ended += w.ended;
        c.failed += w.failed;
        c.verified += w.verified;
        c.answers_sent += w.answers_sent;
        c.answers_acked += w.answers_acked;
        c.unacknowledged += w.unacknowledged;
        c.frames_in += w.frames_in;
        c.max_connected += w.max_connected;
        r.mismatch_count += w.mismatch_count;
        r.mismatches.extend(w.mismatches.iter().cloned());
        r.warning_count += w.warning_count;
        r.warnings.extend(w.warnings.iter().cloned());
        r.failures.extend(w.failures.iter().cloned());
        self_usage.cpu_us += w.self_usage.cpu_us;
        steady_cpu += w.steady_cpu_us;
        steady_frames += w.steady_frames;
        self_usage.peak_rss_kb += w.self_usage.peak_rss_kb;
    }
    r.warnings.truncate(200);
    r.failures.truncate(50);
    gen.cpu_s = self_usage.cpu_us as f64 / 1e6;
    gen.peak_rss_mb = self_usage.peak_rss_kb as f64 / 1024.0;
    if r.counts.frames_in > 0 {
        gen.cpu_us_per_frame = self_usage.cpu_us as f64 / r.counts.frames_in as f64;
        gen.peak_rss_bytes_per_frame =
            self_usage.peak_rss_kb as f64 * 1024.0 / r.counts.frames_in as f64;
    }
    gen.steady_frames = steady_frames;
    if steady_frames > 0 {
        gen.steady_cpu_us_per_frame = steady_cpu as f64 / steady_frames as f64;
    }
    if r.counts.max_connected > 0 {
        gen.peak_rss_kb_per_connection =
            self_usage.peak_rss_kb as f64 / r.counts.max_connected as f64;
    }
    r.generator = gen;
    // Rates over the seconds that had any traffic.
    let active: Vec<&SeriesPoint> = r
        .series
        .iter()
        .filter(|p| p.frames > 0 || p.answers > 0)
        .collect();
    if !active.is_empty() {
        let n = active.len() as f64;
        r.rates.answers_per_s_mean = active.iter().map(|p| p.answers as f64).sum::<f64>() / n;
        r.rates.frames_per_s_mean = active.iter().map(|p| p.frames as f64).sum::<f64>() / n;
        r.rates.answers_per_s_peak = active.iter().map(|p| p.answers as f64).fold(0.0, f64::max);
        r.rates.frames_per_s_peak = active.iter().map(|p| p.frames as f64).fold(0.0, f64::max);
    }
    r.proc_series = monitor.series.clone();
    for (label, pts) in &monitor.series.procs {
        let first = monitor.first.get(label).copied().unwrap_or_default();
        let last = monitor.latest.get(label).copied().unwrap_or_default();
        let n = pts.len().max(1) as f64;
        r.processes.insert(
            label.clone(),
            ProcUsage {
                cpu_s: last.cpu_us.saturating_sub(first.cpu_us) as f64 / 1e6,
                cpu_cores_mean: pts.iter().map(|p| p.cpu_cores).sum::<f64>() / n,
                cpu_cores_max: pts.iter().map(|p| p.cpu_cores).fold(0.0, f64::max),
                rss_mb_max: pts.iter().map(|p| p.rss_mb).fold(0.0, f64::max),
            },
        );
    }
    r
}

/// Decide pass/fail. Mismatches always fail; errors fail when the scenario
/// says so.
pub fn judge(sc: &Scenario, r: &mut RunResult, workers: u64) {
    let mut why = Vec::new();
    if r.mismatch_count > 0 {
        why.push(format!(
            "{} mismatches between the platform and the tool's record",
            r.mismatch_count
        ));
    }
    if r.counts.joined == 0 {
        why.push("no player joined".into());
    }
    if (r.generator.workers) < workers {
        why.push(format!(
            "{} of {workers} workers reported a result",
            r.generator.workers
        ));
    }
    if sc.checks.fail_on_errors {
        let errors: u64 = r
            .counters
            .iter()
            .filter(|(k, _)| k.starts_with("error."))
            .map(|(_, v)| v)
            .sum();
        if errors > 0 {
            why.push(format!("{errors} errors (checks.fail_on_errors)"));
        }
        if r.counts.failed > 0 {
            why.push(format!("{} players failed", r.counts.failed));
        }
        if sc.mode_is_live() && r.counts.ended < r.counts.joined {
            why.push(format!(
                "{} of {} joined players saw quiz_ended",
                r.counts.ended, r.counts.joined
            ));
        }
        if r.counts.unacknowledged > 0 {
            why.push(format!(
                "{} answers never acknowledged",
                r.counts.unacknowledged
            ));
        }
        if !r.host_errors.is_empty() {
            why.push(format!("{} host errors", r.host_errors.len()));
        }
    }
    r.passed = why.is_empty();
    r.failure_reasons = why;
}

/// Read a result file.
pub fn load_result(path: &Path) -> anyhow::Result<RunResult> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(utc_string(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_string(1_798_761_600), "2027-01-01T00:00:00Z");
        assert_eq!(utc_string(951_825_600), "2000-02-29T12:00:00Z");
    }

    #[test]
    fn judge_fails_on_mismatch_and_optionally_on_errors() {
        let mut sc = Scenario::parse(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/smoke.toml"))
                .unwrap(),
            "toml",
        )
        .unwrap();
        let mut r = RunResult::default();
        r.counts.joined = 10;
        r.counts.ended = 10;
        r.generator.workers = 1;
        sc.checks.fail_on_errors = false;
        judge(&sc, &mut r, 1);
        assert!(r.passed, "{:?}", r.failure_reasons);
        r.counters.insert("error.join.timeout".into(), 1);
        judge(&sc, &mut r, 1);
        assert!(r.passed);
        sc.checks.fail_on_errors = true;
        judge(&sc, &mut r, 1);
        assert!(!r.passed);
        r.counters.clear();
        r.mismatch_count = 1;
        judge(&sc, &mut r, 1);
        assert!(!r.passed);
        assert!(r.failure_reasons[0].contains("mismatch"));
    }
}
