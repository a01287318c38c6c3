//! Answers scored per second through `RedisClusterStore`, against the anchor
//! of plain pipelined `ZINCRBY` from `redis-benchmark` on the same master, in
//! the same run; plus the answer latency with and without `WAIT`.
//!
//! ```text
//! deploy/local/stack up
//! cargo run --release -p quiz-core --example score_throughput -- \
//!     [--answers 200000] [--concurrency 512] [--players 1000] [--runs 3] \
//!     [--latency-answers 20000] [--latency-concurrency 16] [--max-in-flight 8] [--max-batch 256]
//! ```
//! `QUIZ_REDIS_NODES` (default `127.0.0.1:7000..7005`) names the cluster;
//! `redis-benchmark` must be on the PATH. Every phase is bounded by
//! `--answers`; each run uses a fresh quiz on the master of `{bench}`'s slot
//! so store and anchor hit the same single Redis process. Results are
//! recorded in `docs/core-backends.md`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiz_core::model::{AnswerRecord, Mode, Player, QuizDef, QuizState};
use quiz_core::store::redis_cluster::{RedisClusterStore, RedisOptions};
use quiz_core::store::QuizStore;

struct Args {
    answers: usize,
    concurrency: usize,
    players: usize,
    runs: usize,
    latency_answers: usize,
    latency_concurrency: usize,
    max_in_flight: usize,
    max_batch: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        answers: 200_000,
        concurrency: 512,
        players: 1000,
        runs: 3,
        latency_answers: 20_000,
        latency_concurrency: 16,
        max_in_flight: RedisOptions::default().max_in_flight,
        max_batch: RedisOptions::default().max_batch,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).and_then(|v| v.parse::<usize>().ok());
        let Some(v) = v else {
            eprintln!("usage: score_throughput [--answers N] [--concurrency C] [--players P] [--runs R] [--latency-answers N] [--latency-concurrency C]");
            std::process::exit(2);
        };
        match pair[0].as_str() {
            "--answers" => a.answers = v,
            "--concurrency" => a.concurrency = v.max(1),
            "--players" => a.players = v.max(1),
            "--runs" => a.runs = v.max(1),
            "--latency-answers" => a.latency_answers = v,
            "--latency-concurrency" => a.latency_concurrency = v.max(1),
            "--max-in-flight" => a.max_in_flight = v.max(1),
            "--max-batch" => a.max_batch = v.max(1),
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    a
}

fn nodes() -> Vec<String> {
    match std::env::var("QUIZ_REDIS_NODES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => (7000..=7005).map(|p| format!("127.0.0.1:{p}")).collect(),
    }
}

async fn new_quiz(store: &RedisClusterStore, id: &str, players: usize) -> anyhow::Result<()> {
    let def = QuizDef {
        quiz_id: id.to_string(),
        title: "throughput".into(),
        mode: Mode::SelfPaced,
        questions: Vec::new(),
        created_at_ms: 1,
        layout: Default::default(),
    };
    store.create_quiz(&def, &QuizState::new_lobby()).await?;
    for p in 0..players {
        store
            .add_player(
                id,
                &Player {
                    player_id: format!("p{p}"),
                    nickname: format!("n{p}"),
                    joined_at_ms: 1,
                },
                u64::MAX,
            )
            .await?;
    }
    Ok(())
}

struct Phase {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// `answers` answers (player = i mod players, question = i div players) from
/// `concurrency` callers; each answer is awaited before its caller sends the
/// next one.
async fn drive(
    store: Arc<RedisClusterStore>,
    quiz: &str,
    answers: usize,
    concurrency: usize,
    players: usize,
) -> anyhow::Result<Phase> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let store = Arc::clone(&store);
            let next = Arc::clone(&next);
            let quiz = quiz.to_string();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= answers {
                        return Ok::<_, anyhow::Error>(lat);
                    }
                    let a = AnswerRecord {
                        player_id: format!("p{}", i % players),
                        nickname: String::new(),
                        question_id: (i / players) as u32,
                        choices: vec![(i % 4) as u32],
                        correct: true,
                        late: false,
                        points: 500 + (i % 500) as u32,
                        response_ms: 1000,
                        answered_at_ms: 1,
                    };
                    let t0 = Instant::now();
                    store.apply_answer(&quiz, &a).await?;
                    lat.push(t0.elapsed());
                }
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(answers);
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = started.elapsed();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Phase {
        per_sec: answers as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args();
    let nodes = nodes();
    let master = common::master_of(&nodes[0], "quiz:{bench}:leaderboard").await?;
    let tuned = RedisOptions {
        max_in_flight: args.max_in_flight,
        max_batch: args.max_batch,
        ..RedisOptions::default()
    };
    let with_wait = Arc::new(RedisClusterStore::connect(&nodes, tuned.clone()).await?);
    let without_wait = Arc::new(
        RedisClusterStore::connect(
            &nodes,
            RedisOptions {
                wait_replicas: 0,
                ..tuned.clone()
            },
        )
        .await?,
    );
    println!(
        "machine: {} cores; master under test {master}; {} answers x {} callers, {} players",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.answers,
        args.concurrency,
        args.players
    );
    let mut cols: [Vec<f64>; 11] = Default::default();
    for run in 0..args.runs {
        // Redis main-thread CPU (`INFO cpu`) around the anchor and the
        // store+WAIT phase: CPU time, unlike the rates, barely moves with
        // the machine's load, so it is the cleaner per-answer cost.
        let c0 = common::redis_main_cpu(&master).await;
        let anchor_rps = common::anchor(&master, args.answers)?;
        let c1 = common::redis_main_cpu(&master).await;
        let anchor_us = (c1 - c0) * 1e6 / args.answers as f64;
        let q1 = common::quiz_id_in_slot_of_bench("tp", run);
        new_quiz(&with_wait, &q1, args.players).await?;
        let c2 = common::redis_main_cpu(&master).await;
        let w = drive(
            Arc::clone(&with_wait),
            &q1,
            args.answers,
            args.concurrency,
            args.players,
        )
        .await?;
        let store_us = (common::redis_main_cpu(&master).await - c2) * 1e6 / args.answers as f64;
        let q2 = common::quiz_id_in_slot_of_bench("tp", run);
        new_quiz(&without_wait, &q2, args.players).await?;
        let nw = drive(
            Arc::clone(&without_wait),
            &q2,
            args.answers,
            args.concurrency,
            args.players,
        )
        .await?;
        // Latency at a moderate load (few callers, no queueing in front).
        let q3 = common::quiz_id_in_slot_of_bench("tp", run);
        new_quiz(&with_wait, &q3, args.players).await?;
        let lw = drive(
            Arc::clone(&with_wait),
            &q3,
            args.latency_answers,
            args.latency_concurrency,
            args.players,
        )
        .await?;
        let q4 = common::quiz_id_in_slot_of_bench("tp", run);
        new_quiz(&without_wait, &q4, args.players).await?;
        let lnw = drive(
            Arc::clone(&without_wait),
            &q4,
            args.latency_answers,
            args.latency_concurrency,
            args.players,
        )
        .await?;
        println!(
            "run {run}: anchor ZINCRBY {anchor_rps:.0}/s | store+WAIT {:.0}/s (ratio {:.2}, p50 {:.2} ms, p99 {:.2} ms) | \
             store no WAIT {:.0}/s (ratio {:.2}, p50 {:.2} ms, p99 {:.2} ms) | at {} callers: WAIT p50 {:.3} ms p99 {:.3} ms, no WAIT p50 {:.3} ms p99 {:.3} ms | \
             Redis main-thread CPU: {store_us:.2} us/answer (store+WAIT), {anchor_us:.2} us/anchor ZINCRBY",
            w.per_sec,
            w.per_sec / anchor_rps,
            ms(w.p50),
            ms(w.p99),
            nw.per_sec,
            nw.per_sec / anchor_rps,
            ms(nw.p50),
            ms(nw.p99),
            args.latency_concurrency,
            ms(lw.p50),
            ms(lw.p99),
            ms(lnw.p50),
            ms(lnw.p99),
        );
        for (c, v) in cols.iter_mut().zip([
            anchor_rps,
            w.per_sec,
            w.per_sec / anchor_rps,
            nw.per_sec,
            nw.per_sec / anchor_rps,
            ms(lw.p50),
            ms(lw.p99),
            ms(lnw.p50),
            ms(lnw.p99),
            store_us,
            anchor_us,
        ]) {
            c.push(v);
        }
    }
    let m: Vec<f64> = cols.into_iter().map(common::median).collect();
    println!(
        "median of {} runs: anchor {:.0}/s; store+WAIT {:.0}/s = {:.2} x anchor; store without WAIT {:.0}/s = {:.2} x anchor; \
         latency at {} callers: WAIT p50 {:.3} ms p99 {:.3} ms, no WAIT p50 {:.3} ms p99 {:.3} ms; \
         Redis main-thread CPU {:.2} us/answer vs {:.2} us/anchor ZINCRBY",
        args.runs, m[0], m[1], m[2], m[3], m[4], args.latency_concurrency, m[5], m[6], m[7], m[8], m[9], m[10]
    );
    Ok(())
}
