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
//!     [--players 1000] [--questions 100] [--runs 3]
//! ```
//! Core runs in a child process (`e2e_answers serve PORT TOPIC`) with the
//! default store options (`WAIT 1`), its per-connection inbound rate limit
//! raised (a player here answers as fast as results come back) and the event
//! topic a fresh one. Each run: the anchor, then a fresh self-paced quiz of
//! `players` players × `questions` questions (its id hashes to `{bench}`'s
//! slot); every player connects, the host starts the quiz, and each
//! connection answers every question as soon as it is sent (question →
//! answer → answer_result + next question). The figure is the answers
//! acknowledged as accepted per second, from start to the last result.
//! Bounded: `players × questions` answers, 120 s per run at most.
//! `QUIZ_REDIS_NODES` / `QUIZ_KAFKA_BROKERS` override the local stack.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client_text, drain_frames, ws_open, Http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Args {
    players: usize,
    questions: usize,
    runs: usize,
}

fn parse_args(argv: &[String]) -> Args {
    let mut a = Args {
        players: 1000,
        questions: 100,
        runs: 3,
    };
    for pair in argv.chunks(2) {
        let v = pair.get(1).and_then(|v| v.parse::<usize>().ok());
        let Some(v) = v else {
            eprintln!("usage: e2e_answers [--players N] [--questions Q] [--runs R]");
            std::process::exit(2);
        };
        match pair[0].as_str() {
            "--players" => a.players = v.clamp(1, 15_000),
            "--questions" => a.questions = v.clamp(1, 200),
            "--runs" => a.runs = v.clamp(1, 10),
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    a
}

fn redis_nodes() -> Vec<String> {
    match std::env::var("QUIZ_REDIS_NODES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => (7000..=7005).map(|p| format!("127.0.0.1:{p}")).collect(),
    }
}

fn kafka_brokers() -> String {
    std::env::var("QUIZ_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("serve") {
        let port: u16 = argv.get(1).and_then(|p| p.parse().ok()).unwrap_or(18_090);
        let topic = argv.get(2).cloned().unwrap_or_else(|| "bench-e2e".into());
        let config = quiz_core::Config {
            listen: format!("127.0.0.1:{port}"),
            token_secret: "e2e-bench-secret-0123456789".into(),
            redis_nodes: redis_nodes(),
            kafka_brokers: kafka_brokers(),
            kafka_topic: topic,
            demo_quiz: false,
            ws_rate_per_sec: 10_000,
            ws_rate_burst: 10_000,
            http_post_rate_per_sec: 1_000_000,
            http_post_burst: 1_000_000,
            ..quiz_core::Config::default()
        };
        return common::serve_core(config);
    }
    run(parse_args(&argv))
}

/// The question id of a `question` message, or of the `question` inside a
/// `welcome` (not already answered).
fn question_of(payload: &[u8]) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let q = match v["type"].as_str()? {
        "question" => &v["question"],
        "welcome" if !v["answered"].as_bool().unwrap_or(false) => &v["question"],
        _ => return None,
    };
    q["id"].as_u64().map(|id| id as u32)
}

/// What the players of one run share.
struct Ctx {
    counts: Counts,
    /// Notified when the host starts the quiz.
    started: tokio::sync::Notify,
    /// Bounds the handshakes in progress.
    connecting: tokio::sync::Semaphore,
}

#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
}

/// One player: answers every question it is sent until `questions` results.
async fn player(
    addr: SocketAddr,
    quiz: String,
    token: String,
    questions: usize,
    ctx: Arc<Ctx>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let counts = &ctx.counts;
    // Connect (at most `limit` handshakes at once), then wait for the start.
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
                if p.windows(15).any(|w| w == br#""accepted":true"#) {
                    counts.accepted.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.other.fetch_add(1, Ordering::Relaxed);
                }
            } else if p.starts_with(br#"{"type":"error""#) {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            } else if let Some(q) = question_of(p) {
                if answered_up_to.is_none_or(|a| q > a) {
                    to_answer.push(q);
                }
            }
        });
        for q in to_answer {
            answered_up_to = Some(q);
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

fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let nodes = redis_nodes();
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
            "machine: {} cores; master under test {master}; {} players x {} questions = {} answers per run; core pid {core_pid} (distributed, WAIT 1)",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            args.players,
            args.questions,
            args.players * args.questions
        );
        let mut cols: [Vec<f64>; 4] = Default::default();
        for run in 0..args.runs {
            let total = args.players * args.questions;
            let anchor_rps = tokio::task::spawn_blocking({
                let master = master.clone();
                move || common::anchor(&master, 200_000)
            })
            .await??;
            let mut http = Http::connect(addr).await?;
            let quiz = common::quiz_id_in_slot_of_bench("e2e", run);
            let qs: Vec<String> = (0..args.questions)
                .map(|i| {
                    format!(
                        r#"{{"text":"q{i}","options":["a","b","c","d"],"correct":[{}],"time_limit_ms":240000,"points":1000}}"#,
                        i % 3
                    )
                })
                .collect();
            let body = format!(
                r#"{{"title":"e2e","mode":"self_paced","quiz_id":"{quiz}","questions":[{}]}}"#,
                qs.join(",")
            );
            let (st, v) = http.call("POST", "/v1/quizzes", Some(&body), None).await?;
            anyhow::ensure!(st == 201, "create: {st} {v}");
            let host = v["host_token"].as_str().unwrap_or_default().to_string();
            let mut tokens = Vec::with_capacity(args.players);
            for i in 0..args.players {
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
            let ctx = Arc::new(Ctx {
                counts: Counts::default(),
                started: tokio::sync::Notify::new(),
                connecting: tokio::sync::Semaphore::new(200),
            });
            let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.players);
            let tasks: Vec<_> = tokens
                .into_iter()
                .map(|token| {
                    tokio::spawn(player(
                        addr,
                        quiz.clone(),
                        token,
                        args.questions,
                        Arc::clone(&ctx),
                        ready_tx.clone(),
                    ))
                })
                .collect();
            drop(ready_tx);
            for _ in 0..args.players {
                ready_rx.recv().await;
            }
            let t0 = Instant::now();
            ctx.started.notify_waiters();
            let (st, v) = http
                .call("POST", &format!("/v1/quizzes/{quiz}/start"), Some(""), Some(&host))
                .await?;
            anyhow::ensure!(st == 200, "start: {st} {v}");
            let mut failed = 0;
            let all = futures::future::join_all(tasks);
            match tokio::time::timeout(Duration::from_secs(120), all).await {
                Ok(results) => {
                    for r in results {
                        if !matches!(r, Ok(Ok(()))) {
                            failed += 1;
                            if failed <= 3 {
                                eprintln!("player failed: {r:?}");
                            }
                        }
                    }
                }
                Err(_) => eprintln!("run {run}: not finished within 120 s"),
            }
            let elapsed = t0.elapsed().as_secs_f64();
            let accepted = ctx.counts.accepted.load(Ordering::Relaxed);
            let per_sec = accepted as f64 / elapsed;
            println!(
                "run {run}: anchor ZINCRBY {anchor_rps:.0}/s | WebSocket answers accepted {accepted} of {total} in {elapsed:.2} s = {per_sec:.0}/s (ratio {:.3}); not accepted {}, errors {}, players failed {failed}",
                per_sec / anchor_rps,
                ctx.counts.other.load(Ordering::Relaxed),
                ctx.counts.errors.load(Ordering::Relaxed),
            );
            for (c, v) in cols.iter_mut().zip([anchor_rps, per_sec, per_sec / anchor_rps, elapsed]) {
                c.push(v);
            }
        }
        let m: Vec<f64> = cols.into_iter().map(common::median).collect();
        println!(
            "median of {} runs: anchor {:.0}/s; answers over WebSocket {:.0}/s = {:.3} x anchor",
            args.runs, m[0], m[1], m[2]
        );
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
