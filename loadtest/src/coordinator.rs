//! The coordinator: host of the quizzes, parent of the workers, judge of the
//! run. [`run`] goes through its phases in order:
//!
//! 1. [`prepare`]: the scenario with the CLI overrides applied, then validated
//!    (loopback target, caps); the target is probed (`GET /healthz`);
//! 2. [`host::create_quizzes`]: the quizzes, over HTTP (the coordinator knows
//!    the correct answers);
//! 3. `spawn_workers`: `loadtest worker` processes (itself), each with a
//!    [`WorkerPlan`] on stdin and its own loopback source addresses
//!    (127.0.0.2 upwards); or, with `--listen-workers`, [`remote`]: workers
//!    that connected over TCP (`loadtest worker --connect`), each sent its
//!    plan over that link. Same protocol both ways: the plan as JSON, then
//!    end of input; JSON lines back until the worker is done;
//! 4. [`host::spawn_hosts`]: one host task per quiz, which drives it with
//!    start/next/end once the players are connected;
//! 5. [`collect::Collector`]: the load phase: the workers' per-second
//!    progress merged into an [`crate::metrics::Aggregator`], the processes
//!    under test sampled from /proc, a live line, a node killed for
//!    `node_failure`; the workers' results gathered;
//! 6. [`checks`]: every quiz's leaderboard (and the MongoDB record) against
//!    the tool's record;
//! 7. `conclude` and `write_outputs`: the [`RunResult`] assembled and judged,
//!    written as JSON and HTML.
//!
//! Bounded: the load phase ends at `duration_s`, verification has a fixed
//! grace after it, and workers still alive after that are killed (they are
//! this process's own children).

mod checks;
mod collect;
mod host;
mod remote;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::clock::wall_us;
use crate::net::http_request;
use crate::plan::WorkerPlan;
use crate::result::{judge, utc_string, RunResult};
use crate::scenario::Scenario;
use crate::target::{worker_sources, Target};
use crate::verify::Mismatch;
use crate::worker::WorkerMsg;
use collect::{Collected, Collector, FromWorker};

/// Command-line overrides of a scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub scenario: PathBuf,
    pub target: Option<String>,
    /// `edge_lb`, `core` or `proxy`.
    pub target_kind: Option<String>,
    pub players: Option<u64>,
    /// Override quiz.expected_players (the size hint that spreads a quiz).
    pub expected_players: Option<u64>,
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
    /// Run the scenario without its `[attack]` (the baseline of a hostile run).
    pub no_attack: bool,
    /// `--threshold` arguments (`answer_p99_ms<250`), added to or overriding
    /// the scenario's `[thresholds]`.
    pub thresholds: Vec<String>,
    /// Also write a JUnit XML report here.
    pub junit: Option<PathBuf>,
    /// `--allow-target` CIDRs: networks besides loopback targets may be in.
    pub allow_targets: Vec<String>,
    /// Listen here for remote workers (`loadtest worker --connect`) instead
    /// of spawning local ones.
    pub listen_workers: Option<String>,
    /// How many remote workers to wait for (with `listen_workers`).
    pub remote_workers: Option<u64>,
    /// How long to wait for them, in seconds (default 60).
    pub worker_wait_s: Option<u64>,
}

/// Load a scenario and apply the CLI overrides, validating the result.
pub fn prepare(opts: &RunOptions) -> anyhow::Result<Scenario> {
    // The allow list first: loading the scenario checks its target.
    let allow = crate::target::AllowList::parse(&opts.allow_targets)?;
    crate::target::set_allowed(&allow);
    let mut sc = Scenario::load(&opts.scenario)?;
    if let Some(t) = &opts.target {
        sc.target.url = t.clone();
    }
    if let Some(k) = &opts.target_kind {
        sc.target.kind = serde_json::from_value(serde_json::Value::String(k.clone()))
            .map_err(|_| anyhow::anyhow!("--kind: one of edge_lb, core, proxy, got `{k}`"))?;
    }
    if let Some(e) = opts.expected_players {
        sc.quiz.expected_players = Some(e);
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
    if opts.no_attack {
        sc.attack = None;
    }
    for t in &opts.thresholds {
        let (name, bound) = crate::thresholds::parse_cli(t).map_err(|e| anyhow::anyhow!(e))?;
        sc.thresholds.insert(name, bound);
    }
    match (&opts.listen_workers, opts.remote_workers) {
        (Some(_), Some(n)) if n > 0 => sc.load.workers = n,
        (None, None) => {}
        _ => bail!("--listen-workers ADDR:PORT and --remote-workers N (at least 1) go together"),
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

/// The run's clock (wall clock, µs): when the players start, when the load
/// phase ends, when the workers' own verification must be done.
struct Clock {
    t0: u64,
    deadline_us: u64,
    verify_deadline_us: u64,
}

impl Clock {
    fn new(sc: &Scenario, started: u64) -> Clock {
        let deadline_us = started + sc.load.duration_s * 1_000_000;
        let verify_grace_us = (20 + sc.load.players / 500).min(120) * 1_000_000;
        Clock {
            t0: wall_us() + 300_000,
            deadline_us,
            verify_deadline_us: deadline_us + verify_grace_us,
        }
    }

    /// `wall_us` as an instant of tokio's clock, taking `base` for now.
    fn instant(base: tokio::time::Instant, wall_us_at: u64) -> tokio::time::Instant {
        base + Duration::from_micros(wall_us_at.saturating_sub(wall_us()))
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
    probe(&target, &log).await?;
    // Remote workers connect before the quizzes exist, so no quiz waits
    // for a worker that never comes.
    let links = match &opts.listen_workers {
        Some(addr) => {
            let wait = Duration::from_secs(opts.worker_wait_s.unwrap_or(60).min(3600));
            Some(remote::accept(addr, sc.worker_count(), wait, &log).await?)
        }
        None => None,
    };
    // The load phase's hard cap counts from here: waiting for remote
    // workers does not shorten it.
    let load_started = if links.is_some() { wall_us() } else { started };
    let quizzes = host::create_quizzes(&target, &sc, opts.admin_key.as_deref()).await?;
    let quiz_ids: Vec<String> = quizzes.iter().map(|(q, _)| q.clone()).collect();
    // A few quizzes are named, so an operator can follow one in edge-lb's
    // admin view (`/admin/route/{quiz_id}`) during the run.
    let named = if quiz_ids.len() <= 3 {
        format!(": {}", quiz_ids.join(" "))
    } else {
        String::new()
    };
    log(&format!("created {} quizzes{named}", quizzes.len()));

    let clock = Clock::new(&sc, load_started);
    let plans = plans(&sc, &target, &quiz_ids, &clock, opts.seed);
    let (mut children, from_workers, link_tasks) = match links {
        Some(links) => {
            let (rx, tasks) = remote::send_plans(links, &plans).await?;
            (Vec::new(), rx, tasks)
        }
        None => {
            let (c, rx) = spawn_workers(&opts, &plans).await?;
            (c, rx, Vec::new())
        }
    };
    let ramp_s = sc.ramp_s();
    let base = tokio::time::Instant::now();
    let start_by = base + Duration::from_secs_f64(0.3 + ramp_s + sc.load.lobby_wait_s as f64);
    let deadline = Clock::instant(base, clock.deadline_us);
    let hosts = host::spawn_hosts(target, &sc, &quizzes, start_by, deadline);
    let kill_pid = node_to_kill(&sc, &opts)?;
    let attack = match &sc.attack {
        Some(a) => {
            let quiz = attack_quiz(&target, &sc, &opts, &quiz_ids).await?;
            log(&format!(
                "attack: {:?} from {} in {} s for {} s",
                a.kind, a.source_ip, a.start_after_s, a.duration_s
            ));
            Some(tokio::spawn(crate::attack::run(
                target,
                a.clone(),
                quiz,
                deadline,
            )))
        }
        None => None,
    };

    let collector = Collector::new(
        &sc,
        opts.quiet,
        clock.t0,
        kill_pid,
        &hosts.gauges,
        &children,
        sc.worker_count(),
    );
    let hard_stop = Clock::instant(base, clock.verify_deadline_us) + Duration::from_secs(10);
    let mut collected = collector
        .run(from_workers, hosts.events, &mut children, hard_stop)
        .await;
    for h in hosts.handles {
        h.abort();
    }
    // Remote links still open at the hard stop are closed here.
    for t in link_tasks {
        t.abort();
    }
    // The attack ends by the load's deadline (plus a 5 s grace of its own).
    let attack_report = match attack {
        Some(h) => tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    for c in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
    }

    // The platform's view against the tool's record.
    let mut mismatches: Vec<Mismatch> = Vec::new();
    if sc.checks.leaderboard {
        let (results, errors) = (&collected.results, &mut collected.host_errors);
        mismatches.extend(checks::leaderboards(&target, &quiz_ids, results, errors).await);
    }
    let mut mongo_failed: Option<String> = None;
    if let Some(uri) = &opts.mongo_uri {
        let drain = Duration::from_secs(opts.mongo_drain_s.unwrap_or(60).min(600));
        let db = opts.mongo_db.clone().unwrap_or_else(|| "quiz".into());
        log(&format!(
            "checking MongoDB ({db}), waiting up to {} s for the persister",
            drain.as_secs()
        ));
        match checks::durable_record(uri, &db, drain, &quiz_ids, &collected.results).await {
            Ok(m) => mismatches.extend(m),
            Err(e) => mongo_failed = Some(e),
        }
    }
    let mut result = conclude(
        &sc,
        &opts,
        &target,
        started,
        collected,
        mismatches,
        mongo_failed,
    );
    result.attack = attack_report;
    let json_path = write_outputs(&opts.out_dir, &sc, started, &result)?;
    if let Some(p) = &opts.junit {
        std::fs::write(p, crate::report::junit(&result))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok((result, json_path))
}

/// The attacker's own quiz (when its attack needs one), so the legitimate
/// quizzes' checks stay exact.
async fn attack_quiz(
    target: &Target,
    sc: &Scenario,
    opts: &RunOptions,
    quiz_ids: &[String],
) -> anyhow::Result<Option<crate::attack::AttackQuiz>> {
    let Some(a) = &sc.attack else { return Ok(None) };
    if !a.kind.needs_quiz() {
        return Ok(None);
    }
    let mut one = sc.clone();
    one.name = format!("{}-attacker", sc.name);
    one.load.quizzes = 1;
    let created = host::create_quizzes(target, &one, opts.admin_key.as_deref()).await?;
    let (quiz_id, host_token) = created.into_iter().next().context("no attacker quiz")?;
    Ok(Some(crate::attack::AttackQuiz {
        quiz_id,
        host_token,
        other_quiz_id: quiz_ids.first().cloned().unwrap_or_default(),
        questions: sc.quiz.questions,
    }))
}

/// `GET /healthz` on the target: unreachable is an error, any answer but 200 a warning.
async fn probe(target: &Target, log: &impl Fn(&str)) -> anyhow::Result<()> {
    match http_request(
        target,
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
    Ok(())
}

/// Every worker's plan. Workers bind their players to loopback source
/// addresses of their own when the target is on this machine; for a target
/// elsewhere (`--allow-target`) the kernel picks the source.
fn plans(
    sc: &Scenario,
    target: &Target,
    quiz_ids: &[String],
    clock: &Clock,
    seed: u64,
) -> Vec<WorkerPlan> {
    let workers = sc.worker_count();
    (0..workers)
        .map(|w| WorkerPlan {
            worker: w,
            workers,
            sources: if target.is_loopback() {
                worker_sources(w, sc.sources_per_worker())
                    .into_iter()
                    .map(std::net::IpAddr::V4)
                    .collect()
            } else {
                Vec::new()
            },
            target: target.url(),
            scenario: sc.clone(),
            quiz_ids: quiz_ids.to_vec(),
            t0_wall_us: clock.t0,
            deadline_wall_us: clock.deadline_us,
            verify_deadline_wall_us: clock.verify_deadline_us,
            seed,
        })
        .collect()
}

/// Every JSON line of a worker's output, onto `tx` as `(worker,
/// Some(message))`, then `(worker, None)` when it ends: the worker's stdout
/// or its TCP link, the same protocol.
pub(crate) async fn forward_lines<R: AsyncRead + Unpin>(
    w: u64,
    from: R,
    tx: mpsc::UnboundedSender<FromWorker>,
) {
    let mut lines = BufReader::new(from).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => match serde_json::from_str::<WorkerMsg>(&line) {
                Ok(m) => {
                    let _ = tx.send((w, Some(m)));
                }
                Err(e) => eprintln!("worker {w}: unreadable line ({e})"),
            },
            Ok(None) => break,
            Err(e) => {
                eprintln!("worker {w}: link lost: {e}");
                break;
            }
        }
    }
    let _ = tx.send((w, None));
}

/// `loadtest-worker` next to this binary (the worker alone, ~4 MB less of
/// mapped code in every worker: `src/worker_bin.rs`), else this binary, whose
/// `worker` command is the same.
fn worker_executable() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating the loadtest binary")?;
    let alone = me.with_file_name("loadtest-worker");
    Ok(if alone.is_file() { alone } else { me })
}

/// Start the workers, each with its plan on stdin; their output arrives on
/// the returned channel ([`forward_lines`]).
async fn spawn_workers(
    opts: &RunOptions,
    plans: &[WorkerPlan],
) -> anyhow::Result<(Vec<Child>, mpsc::UnboundedReceiver<FromWorker>)> {
    let exe = match &opts.worker_exe {
        Some(p) => p.clone(),
        None => worker_executable()?,
    };
    let (tx, rx) = mpsc::unbounded_channel::<FromWorker>();
    let mut children = Vec::new();
    for plan in plans {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("worker");
        for a in &opts.allow_targets {
            cmd.arg("--allow-target").arg(a);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning a worker")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        stdin.write_all(&serde_json::to_vec(plan)?).await?;
        drop(stdin);
        let stdout = child.stdout.take().context("worker stdout")?;
        tokio::spawn(forward_lines(plan.worker, stdout, tx.clone()));
        children.push(child);
    }
    Ok((children, rx))
}

/// The pid `node_failure` kills: `--kill-pid`, else the scenario's
/// `node_failure.pid_file`; None without `node_failure`.
fn node_to_kill(sc: &Scenario, opts: &RunOptions) -> anyhow::Result<Option<u32>> {
    Ok(match (&sc.node_failure, opts.kill_pid) {
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
    })
}

/// The run's result: assembled from what was collected, with the mismatches
/// found after the run (at most 1 000 kept, all counted), then judged; a
/// MongoDB check that could not run fails the run.
fn conclude(
    sc: &Scenario,
    opts: &RunOptions,
    target: &Target,
    started: u64,
    collected: Collected,
    mut mismatches: Vec<Mismatch>,
    mongo_failed: Option<String>,
) -> RunResult {
    let Collected {
        agg,
        results,
        host_errors,
        monitor,
    } = collected;
    let elapsed_s = (wall_us() - started) as f64 / 1e6;
    let mut result = RunResult::assemble(
        sc,
        &opts.scenario,
        target.url(),
        started,
        elapsed_s,
        &agg,
        &results,
        &monitor,
    );
    result.mismatch_count += mismatches.len() as u64;
    mismatches.append(&mut result.mismatches);
    mismatches.truncate(1000);
    result.mismatches = mismatches;
    result.host_errors = host_errors;
    if opts.mongo_uri.is_some() {
        let ok = mongo_failed.is_none();
        result.checks.push(crate::result::CheckOutcome::new(
            "durable_record",
            ok,
            mongo_failed.unwrap_or_else(|| "the MongoDB check ran".into()),
        ));
    }
    judge(sc, &mut result, sc.worker_count());
    result
}

/// Write the result as `<scenario>-<start time>.json` and `.html` in
/// `out_dir`; returns the JSON file's path.
fn write_outputs(
    out_dir: &std::path::Path,
    sc: &Scenario,
    started: u64,
    result: &RunResult,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let stem = format!(
        "{}-{}",
        sc.name,
        utc_string(started / 1_000_000).replace([':', '-'], "")
    );
    let json_path = out_dir.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_vec_pretty(result)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let html_path = out_dir.join(format!("{stem}.html"));
    std::fs::write(&html_path, crate::report::html(result))
        .with_context(|| format!("writing {}", html_path.display()))?;
    Ok(json_path)
}
