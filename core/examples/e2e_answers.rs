//! Answers scored per second end to end: player WebSockets answering
//! against ONE quiz-core process in distributed mode (Redis Cluster + Kafka
//! of the local stack), against the same anchor as `score_throughput`
//! (`redis-benchmark -P 16 ZINCRBY` on the master owning the quiz's slot),
//! measured in the same run.
//!
//! ```text
//! deploy/local/stack up
//! cargo build --release -p quiz-core --example e2e_answers
//! ${CARGO_TARGET_DIR:-target}/release/examples/e2e_answers \
//!     [--players 2000] [--questions 10] [--self-players 500] \
//!     [--self-questions 40] [--runs 3] [--mode both|live|self] [--kafka-floor 0|1]
//! ```
//! Core runs in a child process (`e2e_answers serve PORT TOPIC`) with the
//! default store options (`WAIT 1`), its per-connection inbound rate limit
//! raised (a self-paced player here answers as fast as results come back)
//! and the event topic a fresh one. Each run measures, in this order:
//!
//! 1. the anchor;
//! 2. **live** (the main use): a live quiz of `players` connected players
//!    and `questions` questions whose id hashes to `{bench}`'s slot; for
//!    each question the host opens it (`/start`, then `/next`) and every
//!    player answers as soon as its `question` message arrives. Figure:
//!    accepted answers / the summed time from each host request to the last
//!    `answer_result` of that question (so the question fan-out is inside
//!    the measured time, the pause between questions is not);
//! 3. **self-paced**: a self-paced quiz of `self-players` × `self-questions`;
//!    every connection answers each question as soon as it is sent
//!    (question → answer → answer_result + next question). Figure: accepted
//!    answers per second from the host's start to the last result.
//!
//! A run that does not complete is reported with the players left behind
//! (how many results each got, the last question it was sent): a stall is a
//! bug, not noise. Bounded: every phase has a deadline (60 s per live
//! question, 120 s per self-paced run). `QUIZ_REDIS_NODES` /
//! `QUIZ_KAFKA_BROKERS` override the local stack.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client_text, drain_frames, ws_open, Http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Both,
    Live,
    SelfPaced,
}

struct Args {
    players: usize,
    questions: usize,
    self_players: usize,
    self_questions: usize,
    runs: usize,
    mode: Which,
    /// After each live phase, the Kafka floor (`--kafka-floor 1`).
    kafka_floor: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: e2e_answers [--players N] [--questions Q] [--self-players N] \
         [--self-questions Q] [--runs R] [--mode both|live|self] [--kafka-floor 0|1]"
    );
    std::process::exit(2);
}

fn parse_args(argv: &[String]) -> Args {
    let mut a = Args {
        players: 2000,
        questions: 10,
        self_players: 500,
        self_questions: 40,
        runs: 3,
        mode: Which::Both,
        kafka_floor: false,
    };
    for pair in argv.chunks(2) {
        let Some(raw) = pair.get(1) else { usage() };
        if pair[0] == "--mode" {
            a.mode = match raw.as_str() {
                "both" => Which::Both,
                "live" => Which::Live,
                "self" => Which::SelfPaced,
                _ => usage(),
            };
            continue;
        }
        let Ok(v) = raw.parse::<usize>() else { usage() };
        match pair[0].as_str() {
            "--players" => a.players = v.clamp(1, 15_000),
            "--questions" => a.questions = v.clamp(1, 200),
            "--self-players" => a.self_players = v.clamp(1, 15_000),
            "--self-questions" => a.self_questions = v.clamp(1, 200),
            "--runs" => a.runs = v.clamp(1, 10),
            "--kafka-floor" => a.kafka_floor = v != 0,
            _ => usage(),
        }
    }
    a
}

fn kafka_brokers() -> String {
    std::env::var("QUIZ_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Extra librdkafka properties for core's producer, to compare producer
/// settings in the same conditions: `E2E_KAFKA_PROPERTIES="linger.ms=20,…"`
/// (comma separated `key=value`, the syntax of `--kafka-properties`).
fn bench_kafka_properties() -> std::collections::BTreeMap<String, String> {
    std::env::var("E2E_KAFKA_PROPERTIES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("kafka-floor") {
        return kafka_floor(&argv[1..]);
    }
    if argv.first().map(String::as_str) == Some("serve") {
        let port: u16 = argv.get(1).and_then(|p| p.parse().ok()).unwrap_or(18_090);
        let topic = argv.get(2).cloned().unwrap_or_else(|| "bench-e2e".into());
        let config = quiz_core::Config {
            listen: format!("127.0.0.1:{port}"),
            token_secret: "e2e-bench-secret-0123456789".into(),
            redis_nodes: common::redis_nodes(),
            kafka_brokers: kafka_brokers(),
            kafka_topic: topic,
            demo_quiz: false,
            ws_rate_per_sec: 10_000,
            ws_rate_burst: 10_000,
            http_post_rate_per_sec: 1_000_000,
            http_post_burst: 1_000_000,
            kafka_properties: bench_kafka_properties(),
            ..quiz_core::Config::default()
        };
        return common::serve_core(config);
    }
    run(parse_args(&argv))
}

/// The question id of a `question` message, or of the `question` message
/// inside a `welcome` (not already answered). A welcome carries the whole
/// message (`{"type":"question","question":{"id":…}}`): reading
/// `welcome.question.id` instead is what made earlier versions of this
/// program "stall" — players welcomed after the start was applied never
/// answered.
fn question_of(payload: &[u8]) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let q = match v["type"].as_str()? {
        "question" => &v["question"],
        "welcome" if !v["answered"].as_bool().unwrap_or(false) => &v["question"]["question"],
        _ => return None,
    };
    q["id"].as_u64().map(|id| id as u32)
}

fn question_id_of_result(payload: &[u8]) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v["question_id"].as_u64().map(|q| q as u32)
}

/// One player's progress, kept for the stall report.
#[derive(Default)]
struct Progress {
    results: AtomicU32,
    /// Highest question id received + 1 (0: none yet).
    sent_up_to: AtomicU32,
    /// Rejected answers (`accepted:false`) and `error` messages received.
    rejected: AtomicU32,
    errors: AtomicU32,
}

/// What the players of one phase share.
struct Ctx {
    accepted: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
    /// Live: results received per question.
    per_question: Vec<AtomicU64>,
    progress: Vec<Progress>,
    /// Notified when the host starts the quiz.
    started: tokio::sync::Notify,
    /// Bounds the handshakes in progress.
    connecting: tokio::sync::Semaphore,
}

impl Ctx {
    fn new(players: usize, questions: usize) -> Ctx {
        Ctx {
            accepted: AtomicU64::new(0),
            other: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            per_question: (0..questions).map(|_| AtomicU64::new(0)).collect(),
            progress: (0..players).map(|_| Progress::default()).collect(),
            started: tokio::sync::Notify::new(),
            connecting: tokio::sync::Semaphore::new(200),
        }
    }

    /// The players that did not get all `questions` results, summarised.
    fn stall_report(&self, questions: usize) -> String {
        let behind: Vec<(usize, &Progress)> = self
            .progress
            .iter()
            .enumerate()
            .filter(|(_, p)| (p.results.load(Ordering::Relaxed) as usize) < questions)
            .collect();
        if behind.is_empty() {
            return String::new();
        }
        let mut s = format!("{} players behind; first ones:", behind.len());
        for (i, p) in behind.iter().take(8) {
            s += &format!(
                " [p{i}: {} results, sent up to q{}, {} rejected, {} errors]",
                p.results.load(Ordering::Relaxed),
                p.sent_up_to.load(Ordering::Relaxed) as i64 - 1,
                p.rejected.load(Ordering::Relaxed),
                p.errors.load(Ordering::Relaxed),
            );
        }
        s
    }
}

/// One player: answers every question it is sent until `questions` results.
async fn player(
    addr: SocketAddr,
    quiz: String,
    token: String,
    index: usize,
    questions: usize,
    ctx: Arc<Ctx>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let me = &ctx.progress[index];
    // Connect (at most 200 handshakes at once), then wait for the start.
    let opened = {
        let _permit = ctx.connecting.acquire().await;
        ws_open(None, addr, &quiz, &token).await
    };
    let wait_start = ctx.started.notified();
    let _ = ready.send(()).await;
    drop(ready);
    let (mut s, mut buf) = opened?;
    wait_start.await;
    let mut results = 0;
    let mut chunk = [0u8; 4096];
    let mut answered_up_to: Option<u32> = None;
    while results < questions {
        let mut to_answer = Vec::new();
        drain_frames(&mut buf, |op, p| {
            if op != 1 {
                return;
            }
            if p.starts_with(br#"{"type":"answer_result""#) {
                results += 1;
                me.results.fetch_add(1, Ordering::Relaxed);
                if let Some(q) = question_id_of_result(p) {
                    if let Some(c) = ctx.per_question.get(q as usize) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if p.windows(15).any(|w| w == br#""accepted":true"#) {
                    ctx.accepted.fetch_add(1, Ordering::Relaxed);
                } else {
                    ctx.other.fetch_add(1, Ordering::Relaxed);
                    me.rejected.fetch_add(1, Ordering::Relaxed);
                }
            } else if p.starts_with(br#"{"type":"error""#) {
                ctx.errors.fetch_add(1, Ordering::Relaxed);
                me.errors.fetch_add(1, Ordering::Relaxed);
            } else if let Some(q) = question_of(p) {
                me.sent_up_to.fetch_max(q + 1, Ordering::Relaxed);
                // A question can arrive twice (the welcome's catch-up and
                // the room both announce one opened during a join): answer
                // it once, also when both copies are in one read.
                if answered_up_to.is_none_or(|a| q > a) {
                    answered_up_to = Some(q);
                    to_answer.push(q);
                }
            }
        });
        for q in to_answer {
            let msg = format!(
                r#"{{"type":"answer","question_id":{q},"choices":[{}]}}"#,
                q % 4
            );
            s.write_all(&client_text(msg.as_bytes())).await?;
        }
        if results >= questions {
            break;
        }
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed after {results} results");
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// Creates a quiz of `questions` questions (4 options, 240 s) in `{bench}`'s
/// slot and joins `players` players; returns (quiz id, host token, player
/// tokens).
async fn setup_quiz(
    http: &mut Http,
    mode: &str,
    prefix: &str,
    run: usize,
    players: usize,
    questions: usize,
) -> anyhow::Result<(String, String, Vec<String>)> {
    let quiz = common::quiz_id_in_slot_of_bench(prefix, run);
    let qs: Vec<String> = (0..questions)
        .map(|i| {
            format!(
                r#"{{"text":"q{i}","options":["a","b","c","d"],"correct":[{}],"time_limit_ms":240000,"points":1000}}"#,
                i % 3
            )
        })
        .collect();
    let body = format!(
        r#"{{"title":"e2e","mode":"{mode}","quiz_id":"{quiz}","questions":[{}]}}"#,
        qs.join(",")
    );
    let (st, v) = http.call("POST", "/v1/quizzes", Some(&body), None).await?;
    anyhow::ensure!(st == 201, "create: {st} {v}");
    let host = v["host_token"].as_str().unwrap_or_default().to_string();
    let mut tokens = Vec::with_capacity(players);
    for i in 0..players {
        let (st, v) = http
            .call(
                "POST",
                &format!("/v1/quizzes/{quiz}/players"),
                Some(&format!(r#"{{"nickname":"p{i}"}}"#)),
                None,
            )
            .await?;
        anyhow::ensure!(st == 201, "join: {st} {v}");
        tokens.push(v["player_token"].as_str().unwrap_or_default().to_string());
    }
    Ok((quiz, host, tokens))
}

/// Spawns the players and waits until every one is connected.
async fn connect_players(
    addr: SocketAddr,
    quiz: &str,
    tokens: Vec<String>,
    questions: usize,
    ctx: &Arc<Ctx>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let n = tokens.len();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n.max(1));
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            tokio::spawn(player(
                addr,
                quiz.to_string(),
                token,
                i,
                questions,
                Arc::clone(ctx),
                ready_tx.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    for _ in 0..n {
        ready_rx.recv().await;
    }
    tasks
}

/// Waits for the player tasks (bounded); returns how many failed.
async fn finish_players(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    within: Duration,
    what: &str,
) -> usize {
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    let mut failed = 0;
    match tokio::time::timeout(within, futures::future::join_all(tasks)).await {
        Ok(results) => {
            for r in results {
                if !matches!(r, Ok(Ok(()))) {
                    failed += 1;
                    if failed <= 3 {
                        eprintln!("{what}: player failed: {r:?}");
                    }
                }
            }
        }
        Err(_) => {
            eprintln!("{what}: not finished within {within:?}");
            for a in aborts {
                a.abort();
            }
        }
    }
    failed
}

struct Phase {
    accepted: u64,
    seconds: f64,
    /// CPU spent within the measured time only (not the joins and
    /// handshakes before it).
    cpu: common::CpuSnap,
    report: String,
}

impl Phase {
    /// Prints the phase's line of a run; returns its accepted answers/s.
    fn print(&self, run: usize, label: &str, total: usize, span: &str, anchor_rps: f64) -> f64 {
        let rate = self.accepted as f64 / self.seconds.max(1e-9);
        println!(
            "run {run}: {label} accepted {} of {total} in {:.2} s{span} = {rate:.0}/s (ratio {:.3}); {}; {}",
            self.accepted,
            self.seconds,
            rate / anchor_rps,
            self.cpu.per(self.accepted),
            self.report
        );
        rate
    }
}

/// Where the phase measures CPU.
struct Probe<'a> {
    core_pid: u32,
    master: &'a str,
}

/// Core's counters that explain a stall (answers by outcome, store and
/// sink errors, server-initiated closes), from `/metrics`.
async fn core_counters(addr: SocketAddr) -> String {
    let Ok(mut http) = Http::connect(addr).await else {
        return "metrics: core unreachable".into();
    };
    let text = match http.call_raw("GET", "/metrics").await {
        Ok(t) => t,
        Err(e) => return format!("metrics: {e}"),
    };
    text.lines()
        .filter(|l| {
            !l.starts_with('#')
                && [
                    "answers_total",
                    "store_errors_total",
                    "sink_errors_total",
                    "ws_closes_total",
                    "slow_consumer",
                ]
                .iter()
                .any(|k| l.contains(k))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Live: the host opens each question, every player answers at once.
async fn live_phase(
    addr: SocketAddr,
    probe: &Probe<'_>,
    run: usize,
    players: usize,
    questions: usize,
) -> anyhow::Result<Phase> {
    let mut http = Http::connect(addr).await?;
    let (quiz, host, tokens) =
        setup_quiz(&mut http, "live", "live", run, players, questions).await?;
    let ctx = Arc::new(Ctx::new(players, questions));
    let tasks = connect_players(addr, &quiz, tokens, questions, &ctx).await;
    ctx.started.notify_waiters();
    let mut measured = Duration::ZERO;
    let mut cpu = common::CpuSnap::default();
    let mut complete = true;
    for q in 0..questions {
        let action = if q == 0 { "start" } else { "next" };
        let before = common::CpuSnap::take(probe.core_pid, probe.master).await;
        let t0 = Instant::now();
        let (st, v) = http
            .call(
                "POST",
                &format!("/v1/quizzes/{quiz}/{action}"),
                Some(""),
                Some(&host),
            )
            .await?;
        anyhow::ensure!(st == 200, "{action}: {st} {v}");
        let deadline = t0 + Duration::from_secs(60);
        while ctx.per_question[q].load(Ordering::Relaxed) < players as u64 {
            if Instant::now() > deadline {
                complete = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        measured += t0.elapsed();
        cpu.add(
            common::CpuSnap::take(probe.core_pid, probe.master)
                .await
                .since(before),
        );
        if !complete {
            eprintln!(
                "live run {run}: question {q} got {} of {players} results within 60 s; core: {}",
                ctx.per_question[q].load(Ordering::Relaxed),
                core_counters(addr).await
            );
            break;
        }
    }
    // A fresh connection: the first one may have idled out during a stall.
    let mut http = Http::connect(addr).await?;
    let (st, v) = http
        .call(
            "POST",
            &format!("/v1/quizzes/{quiz}/end"),
            Some(""),
            Some(&host),
        )
        .await?;
    anyhow::ensure!(st == 200, "end: {st} {v}");
    let failed = finish_players(tasks, Duration::from_secs(10), "live").await;
    let accepted = ctx.accepted.load(Ordering::Relaxed);
    Ok(Phase {
        accepted,
        seconds: measured.as_secs_f64(),
        cpu,
        report: format!(
            "not accepted {}, errors {}, players failed {failed}{}{}",
            ctx.other.load(Ordering::Relaxed),
            ctx.errors.load(Ordering::Relaxed),
            if complete { "" } else { "; INCOMPLETE: " },
            ctx.stall_report(questions),
        ),
    })
}

/// Self-paced: every player runs through the questions as fast as it can.
async fn self_paced_phase(
    addr: SocketAddr,
    probe: &Probe<'_>,
    run: usize,
    players: usize,
    questions: usize,
) -> anyhow::Result<Phase> {
    let mut http = Http::connect(addr).await?;
    let (quiz, host, tokens) =
        setup_quiz(&mut http, "self_paced", "self", run, players, questions).await?;
    let ctx = Arc::new(Ctx::new(players, questions));
    let tasks = connect_players(addr, &quiz, tokens, questions, &ctx).await;
    let before = common::CpuSnap::take(probe.core_pid, probe.master).await;
    let t0 = Instant::now();
    ctx.started.notify_waiters();
    let (st, v) = http
        .call(
            "POST",
            &format!("/v1/quizzes/{quiz}/start"),
            Some(""),
            Some(&host),
        )
        .await?;
    anyhow::ensure!(st == 200, "start: {st} {v}");
    let failed = finish_players(tasks, Duration::from_secs(120), "self-paced").await;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = common::CpuSnap::take(probe.core_pid, probe.master)
        .await
        .since(before);
    let stall = ctx.stall_report(questions);
    if !stall.is_empty() {
        eprintln!("self-paced run {run}: core: {}", core_counters(addr).await);
    }
    Ok(Phase {
        accepted: ctx.accepted.load(Ordering::Relaxed),
        seconds,
        cpu,
        report: format!(
            "not accepted {}, errors {}, players failed {failed}{}",
            ctx.other.load(Ordering::Relaxed),
            ctx.errors.load(Ordering::Relaxed),
            if stall.is_empty() {
                stall
            } else {
                format!("; INCOMPLETE: {stall}")
            },
        ),
    })
}

/// Requests of one anchor measurement (`redis-benchmark -n`).
const ANCHOR_REQUESTS: usize = 200_000;

fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let nodes = common::redis_nodes();
    let master = rt.block_on(common::master_of(&nodes[0], "quiz:{bench}:leaderboard"))?;
    let topic = format!("bench-e2e-{:08x}", rand::random::<u32>());
    let kafka = rt.block_on(testkit::require_kafka());
    rt.block_on(kafka.create_topic(&topic, 3));
    let port = common::free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut core: Child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg(port.to_string())
        .arg(&topic)
        .env("RUST_LOG", "warn")
        .spawn()?;
    let core_pid = core.id();
    let result = rt.block_on(async {
        common::wait_listening(addr, Duration::from_secs(30)).await?;
        println!(
            "machine: {} cores; master under test {master}; core pid {core_pid} (distributed, WAIT 1); \
             live: {} players x {} questions; self-paced: {} players x {} questions",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            args.players,
            args.questions,
            args.self_players,
            args.self_questions,
        );
        // anchor, live/s, live ratio, self/s, self ratio
        let mut cols: [Vec<f64>; 5] = Default::default();
        let mut floor = Vec::new();
        for run in 0..args.runs {
            let redis_before = common::redis_main_cpu(&master).await;
            let anchor_rps = tokio::task::spawn_blocking({
                let master = master.clone();
                move || common::anchor(&master, ANCHOR_REQUESTS)
            })
            .await??;
            // The anchor's main-thread CPU per call, beside the answers'.
            let anchor_us = (common::redis_main_cpu(&master).await - redis_before)
                / ANCHOR_REQUESTS as f64
                * 1e6;
            cols[0].push(anchor_rps);
            println!(
                "run {run}: anchor ZINCRBY {anchor_rps:.0}/s, Redis master {anchor_us:.2} us per call"
            );
            let probe = Probe {
                core_pid,
                master: &master,
            };
            if args.mode != Which::SelfPaced {
                let p = live_phase(addr, &probe, run, args.players, args.questions).await?;
                let total = args.players * args.questions;
                let rate = p.print(run, "LIVE", total, " (question windows)", anchor_rps);
                cols[1].push(rate);
                cols[2].push(rate / anchor_rps);
                if args.kafka_floor {
                    let (players, questions) = (args.players, args.questions);
                    let topic = topic.clone();
                    let us = tokio::task::spawn_blocking(move || {
                        run_kafka_floor(run, &topic, players, questions)
                    })
                    .await?;
                    floor.extend(us);
                }
            }
            if args.mode != Which::Live {
                let p = self_paced_phase(addr, &probe, run, args.self_players, args.self_questions)
                    .await?;
                let total = args.self_players * args.self_questions;
                let rate = p.print(run, "SELF-PACED", total, "", anchor_rps);
                cols[3].push(rate);
                cols[4].push(rate / anchor_rps);
            }
        }
        let m: Vec<f64> = cols.into_iter().map(common::median).collect();
        println!(
            "median of {} runs: anchor {:.0}/s; live {:.0}/s = {:.3} x anchor; self-paced {:.0}/s = {:.3} x anchor",
            args.runs, m[0], m[1], m[2], m[3], m[4]
        );
        if !floor.is_empty() {
            println!(
                "median Kafka floor: {:.1} us CPU per event ({} runs)",
                common::median(floor.clone()),
                floor.len()
            );
        }
        Ok::<_, anyhow::Error>(())
    });
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(core_pid.to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !matches!(core.try_wait(), Ok(Some(_))) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = core.kill();
    let _ = core.wait();
    rt.block_on(kafka.delete_topic(&topic));
    result
}

// ------------------------------------------------- the Kafka producer floor

/// The Kafka anchor of core's CPU per answer (`e2e_answers kafka-floor TOPIC
/// PLAYERS QUESTIONS`, run in a child process shaped like core's: tokio's
/// default multi-threaded runtime). A raw rdkafka `FutureProducer`
/// configured by core's own `producer_config` with core's default options
/// (idempotent, `acks=all`, lz4, `linger.ms` 5; plus `E2E_KAFKA_PROPERTIES`
/// as `serve` adds them) publishes the live phase's
/// events: per question, one `answer_scored` event per player, all in flight
/// at once, each task awaiting its delivery report as core's answer does
/// before its acknowledgement. Prints `kafka-floor <events> <seconds> <cpu
/// seconds>`: what publishing the answers costs with nothing of core around
/// it.
///
/// `e2e_answers kafka-floor TOPIC PLAYERS QUESTIONS sink` publishes the same
/// events through core's own `KafkaSink::publish` instead (its producer, its
/// reports' thread, its event JSON and headers): core's Kafka path alone,
/// to compare with the raw floor above, or two builds of the sink with each
/// other, without the WebSockets and Redis whose noise hides it end to end.
fn kafka_floor(argv: &[String]) -> anyhow::Result<()> {
    use quiz_core::events::kafka::{producer_config, KafkaOptions};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let topic = argv.first().cloned().unwrap_or_else(|| "bench-e2e".into());
    let players: usize = argv.get(1).and_then(|v| v.parse().ok()).unwrap_or(2000);
    let questions: usize = argv.get(2).and_then(|v| v.parse().ok()).unwrap_or(10);
    let through_sink = match argv.get(3).map(String::as_str) {
        None | Some("raw") => false,
        Some("sink") => true,
        Some(other) => anyhow::bail!("kafka-floor: `{other}` is neither raw nor sink"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let opts = KafkaOptions {
            brokers: kafka_brokers(),
            topic: topic.clone(),
            properties: bench_kafka_properties().into_iter().collect(),
            ..KafkaOptions::default()
        };
        if through_sink {
            return sink_floor(opts, players, questions).await;
        }
        let producer: FutureProducer = producer_config(&opts).create()?;
        let producer = Arc::new(producer);
        // One event first: connection and producer id are not the floor.
        let warm = FutureRecord::to(&topic).key("warm").payload("warm");
        producer
            .send(warm, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("warm-up delivery: {e}"))?;
        timed_bursts(players, questions, |p, q| {
            let (producer, topic) = (Arc::clone(&producer), topic.clone());
            async move {
                let event = floor_event(FLOOR_QUIZ, p, q);
                let payload = serde_json::to_vec(&event).unwrap_or_default();
                let headers = OwnedHeaders::new_with_capacity(2)
                    .insert(Header {
                        key: "event_id",
                        value: Some(event.event_id.as_str()),
                    })
                    .insert(Header {
                        key: "type",
                        value: Some("answer_scored"),
                    });
                let record = FutureRecord::to(&topic)
                    .key(FLOOR_QUIZ)
                    .payload(&payload)
                    .headers(headers);
                producer.send(record, Duration::from_secs(10)).await.is_ok()
            }
        })
        .await;
        Ok(())
    })
}

/// One question's answer event of player `p`, as core publishes it.
fn floor_event(quiz_id: &str, p: usize, q: u32) -> quiz_core::events::Event {
    use quiz_core::events::{Event, EventKind};
    use quiz_core::model::AnswerRecord;
    let answer = AnswerRecord {
        player_id: format!("p-{p:06}-{:08x}", p.wrapping_mul(2654435761)),
        nickname: format!("player {p}"),
        question_id: q,
        choices: vec![1],
        correct: true,
        late: false,
        points: 873,
        response_ms: 1270,
        answered_at_ms: 1_764_800_000_000 + u64::from(q) * 20_000,
    };
    Event::new(
        quiz_id,
        answer.answered_at_ms,
        EventKind::AnswerScored {
            answer,
            score_after: 873 * u64::from(q + 1),
        },
    )
}

/// [`kafka_floor`] through core's `KafkaSink` (`... sink`): the same events,
/// all of a question in flight at once, each publish awaited.
async fn sink_floor(
    opts: quiz_core::events::kafka::KafkaOptions,
    players: usize,
    questions: usize,
) -> anyhow::Result<()> {
    use quiz_core::events::kafka::KafkaSink;
    use quiz_core::events::EventSink;
    let sink = Arc::new(KafkaSink::new(opts).map_err(|e| anyhow::anyhow!("sink: {e}"))?);
    // One event first: connection and producer id are not the floor.
    sink.publish(&floor_event("warm", 0, 0))
        .await
        .map_err(|e| anyhow::anyhow!("warm-up delivery: {e}"))?;
    timed_bursts(players, questions, |p, q| {
        let sink = Arc::clone(&sink);
        async move { sink.publish(&floor_event(FLOOR_QUIZ, p, q)).await.is_ok() }
    })
    .await;
    Ok(())
}

/// The floors' quiz id (every event's key).
const FLOOR_QUIZ: &str = "floor-quiz";

/// `questions` bursts of `players` publishes, all of a burst in flight at
/// once and each awaited (as core's answers wait for their reports); prints
/// `kafka-floor <delivered> <seconds> <cpu seconds>`.
async fn timed_bursts<F, Fut>(players: usize, questions: usize, publish: F)
where
    F: Fn(usize, u32) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let cpu0 = common::cpu_seconds(std::process::id());
    let t0 = Instant::now();
    let mut delivered = 0usize;
    for q in 0..questions as u32 {
        let tasks: Vec<_> = (0..players).map(|p| tokio::spawn(publish(p, q))).collect();
        for t in tasks {
            delivered += usize::from(matches!(t.await, Ok(true)));
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = common::cpu_seconds(std::process::id()) - cpu0;
    println!("kafka-floor {delivered} {seconds:.3} {cpu:.3}");
}

/// Runs the Kafka floor in a child process (see [`kafka_floor`]); prints its
/// line and returns its CPU µs per delivered event.
fn run_kafka_floor(run: usize, topic: &str, players: usize, questions: usize) -> Option<f64> {
    let out = Command::new(std::env::current_exe().ok()?)
        .args(["kafka-floor", topic])
        .arg(players.to_string())
        .arg(questions.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("kafka-floor "))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let [events, seconds, cpu] = f[..] else {
        return None;
    };
    let us = cpu / events.max(1.0) * 1e6;
    println!(
        "run {run}: KAFKA FLOOR (raw FutureProducer, core's settings, {players} in flight): \
         {events:.0} events in {seconds:.2} s = {:.0}/s; producer process CPU {us:.1} us per event",
        events / seconds.max(1e-9)
    );
    Some(us)
}
