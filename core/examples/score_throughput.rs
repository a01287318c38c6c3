//! Answers scored per second through `RedisClusterStore`, against the anchor
//! of plain pipelined `ZINCRBY` from `redis-benchmark` on the same master, in
//! the same run; plus the answer latency with and without `WAIT`.
//!
//! ```text
//! deploy/local/stack up
//! cargo run --release -p quiz-core --example score_throughput -- \
//!     [--answers 200000] [--concurrency 512] [--players 1000] [--runs 3] \
//!     [--latency-answers 20000] [--latency-concurrency 16] [--max-in-flight 8] [--max-batch 256] \
//!     [--shards 3] [--contended 1] [--direct-lane 0]
//! ```
//! `QUIZ_REDIS_NODES` (default `127.0.0.1:7000..7005`) names the cluster;
//! `redis-benchmark` must be on the PATH. Every phase is bounded by
//! `--answers`; each run uses a fresh quiz on the master of `{bench}`'s slot
//! so store and anchor hit the same single Redis process. Results are
//! recorded in `docs/core-backends.md`.
//!
//! `--shards S` (S > 1) measures instead one quiz's scoring spread over S
//! hash slots (`Layout { shards: S }`) against the same quiz in one slot,
//! both with `WAIT 1`: each run applies `--answers` answers into a fresh
//! one-slot quiz (the anchor of the comparison), then into a fresh quiz
//! over S shards, and prints both rates, their ratio, and the CPU per
//! answer of the Redis masters (main threads, all of them) and of this
//! client process. Recorded in `docs/performance.md` ("One quiz over three
//! masters"). Each phase also prints where the masters' main-thread CPU
//! went, from `INFO commandstats` summed over the masters: per command,
//! calls and µs per answer (commands a script calls are counted both on
//! their own line and inside `evalsha`'s; the µs are wall time inside the
//! command, so they only mean CPU on a quiet machine). `--contended 1`
//! adds, per run, a third phase: one one-slot quiz on every master at
//! once, each with its own store and `--concurrency` callers (`--answers`
//! in all), so the one-slot cost is also measured while every master
//! shares the cores, as the sharded quiz's masters do.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiz_core::model::{AnswerRecord, Layout, Mode, Player, QuizDef, QuizState};
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
    /// > 1: the one-quiz-over-S-shards comparison instead.
    shards: usize,
    /// With `--shards`: also run, per run, one one-slot quiz on EVERY
    /// master at once (each through its own store and callers), so the
    /// one-slot cost is also measured while all masters share the cores.
    contended: bool,
    /// `RedisOptions::direct_lane`: 0 sends every answer through the
    /// batcher (the two paths compared in docs/performance.md).
    direct_lane: bool,
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
        shards: 1,
        contended: false,
        direct_lane: true,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).and_then(|v| v.parse::<usize>().ok());
        let Some(v) = v else {
            eprintln!("usage: score_throughput [--answers N] [--concurrency C] [--players P] [--runs R] [--latency-answers N] [--latency-concurrency C] [--max-in-flight N] [--max-batch N] [--shards S] [--contended 0|1] [--direct-lane 0|1]");
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
            "--shards" => a.shards = v.clamp(1, 1024),
            "--contended" => a.contended = v > 0,
            "--direct-lane" => a.direct_lane = v > 0,
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    a
}

async fn new_quiz(store: &RedisClusterStore, id: &str, players: usize) -> anyhow::Result<()> {
    new_quiz_over(store, id, players, 1).await
}

/// A fresh quiz with its scoring over `shards` hash slots.
async fn new_quiz_over(
    store: &RedisClusterStore,
    id: &str,
    players: usize,
    shards: usize,
) -> anyhow::Result<()> {
    let def = QuizDef {
        quiz_id: id.to_string(),
        title: "throughput".into(),
        mode: Mode::SelfPaced,
        questions: Vec::new(),
        created_at_ms: 1,
        layout: Layout {
            spread: 1,
            shards: shards as u32,
        },
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

/// The `host:port` of every master with slots.
async fn masters(seed: &str) -> anyhow::Result<Vec<String>> {
    let client = redis::Client::open(format!("redis://{seed}"))?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await?;
    Ok(text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail"))
        .filter_map(|f| f[1].split('@').next().map(str::to_string))
        .collect())
}

/// Main-thread CPU seconds of every master, summed.
async fn masters_cpu(masters: &[String]) -> f64 {
    let mut sum = 0.0;
    for m in masters {
        sum += common::redis_main_cpu(m).await;
    }
    sum
}

/// `INFO commandstats` of one node: command name -> (calls, usec).
async fn commandstats(node: &str) -> BTreeMap<String, (f64, f64)> {
    let mut out = BTreeMap::new();
    let Some(info) = common::redis_info(node, "commandstats").await else {
        return out;
    };
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |k: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        out.insert(name.to_string(), (field("calls"), field("usec")));
    }
    out
}

/// The masters' command counters and main-thread CPU, summed.
#[derive(Default)]
struct MasterSnap {
    cpu: f64,
    stats: BTreeMap<String, (f64, f64)>,
}

impl MasterSnap {
    async fn take(masters: &[String]) -> MasterSnap {
        let mut s = MasterSnap::default();
        for m in masters {
            s.cpu += common::redis_main_cpu(m).await;
            for (k, (c, u)) in commandstats(m).await {
                let e = s.stats.entry(k).or_default();
                e.0 += c;
                e.1 += u;
            }
        }
        s
    }

    /// "where the masters' CPU went" per answer since `before`: the
    /// main-thread CPU, the wall time inside top-level commands (the
    /// commands a script calls are inside `evalsha`'s), and each command's
    /// calls and wall µs per answer.
    fn breakdown(&self, before: &MasterSnap, answers: usize) -> String {
        // What the scripts call: inside `evalsha`'s own time.
        const NESTED: &[&str] = &[
            "get",
            "hmget",
            "zmscore",
            "hset",
            "zadd",
            "incrby",
            "incr",
            "pttl",
            "pexpire",
            "zcount",
            "hsetnx",
            "hget",
            "zscore",
            "zrevrange",
            "zcard",
            "hlen",
            "set",
            "hdel",
            "hscan",
            "zrange",
            "exists",
        ];
        let n = answers.max(1) as f64;
        let mut rows: Vec<(String, f64, f64)> = self
            .stats
            .iter()
            .map(|(k, (c, u))| {
                let (c0, u0) = before.stats.get(k).copied().unwrap_or_default();
                (k.clone(), (c - c0) / n, (u - u0) / n)
            })
            .filter(|(_, c, _)| *c > 0.0)
            .collect();
        let top_level: f64 = rows
            .iter()
            .filter(|(k, _, _)| !NESTED.contains(&k.as_str()))
            .map(|(_, _, u)| u)
            .sum();
        let cpu = (self.cpu - before.cpu) * 1e6 / n;
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        // `usec` of commandstats is wall time inside the command: on a
        // loaded machine it includes time the master was not running, so
        // read the calls, and the µs only on a quiet machine.
        let mut text = format!(
            "masters {cpu:.2} us/answer of CPU; wall time in top-level commands {top_level:.2} us/answer; per answer (calls, wall us):"
        );
        for (k, c, u) in rows.iter().filter(|r| r.1 >= 0.001) {
            let _ = std::fmt::Write::write_fmt(&mut text, format_args!(" {k} {c:.3} {u:.2};"));
        }
        text
    }
}

/// One one-slot quiz id per master (its main slot on that master), in the
/// masters' order.
async fn quiz_per_master(
    seed: &str,
    masters: &[String],
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<Option<String>> = vec![None; masters.len()];
    let salt = rand::random::<u32>();
    for i in 0..10_000u32 {
        if ids.iter().all(Option::is_some) {
            break;
        }
        let id = format!("{prefix}-{salt:08x}-{i}");
        let m = common::master_of(seed, &format!("quiz:{{{id}}}:def")).await?;
        if let Some(slot) = masters.iter().position(|x| *x == m) {
            if ids[slot].is_none() {
                ids[slot] = Some(id);
            }
        }
    }
    ids.into_iter()
        .map(|i| i.ok_or_else(|| anyhow::anyhow!("no quiz id found for every master")))
        .collect()
}

/// `--shards S`: one quiz in one slot against one quiz over S shards,
/// alternated, with `WAIT 1`.
async fn compare_shards(args: &Args, nodes: &[String], opts: RedisOptions) -> anyhow::Result<()> {
    let store_opts = opts.clone();
    let masters = masters(&nodes[0]).await?;
    let replicas: Vec<String> = nodes
        .iter()
        .map(|n| n.trim_start_matches("redis://").to_string())
        .filter(|n| !masters.contains(n))
        .collect();
    let store = Arc::new(RedisClusterStore::connect(nodes, store_opts).await?);
    println!(
        "machine: {} cores; masters {masters:?}; {} answers x {} callers, {} players; one slot vs {} shards, WAIT 1",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.answers,
        args.concurrency,
        args.players,
        args.shards
    );
    // rate, masters, replicas, client, machine us/answer; 1 slot, S shards.
    let mut cols: [Vec<f64>; 10] = Default::default();
    for run in 0..args.runs {
        let mut row = Vec::new();
        for shards in [1, args.shards] {
            let id = format!("tp{run}-s{shards}-{:08x}", rand::random::<u32>());
            new_quiz_over(&store, &id, args.players, shards).await?;
            let snap0 = MasterSnap::take(&masters).await;
            let (r0, rr0, c0, m0) = (
                masters_cpu(&masters).await,
                masters_cpu(&replicas).await,
                common::cpu_seconds(std::process::id()),
                common::machine_busy_seconds(),
            );
            let p = drive(
                Arc::clone(&store),
                &id,
                args.answers,
                args.concurrency,
                args.players,
            )
            .await?;
            let n = args.answers as f64 / 1e6;
            let redis_us = (masters_cpu(&masters).await - r0) / n;
            let replica_us = (masters_cpu(&replicas).await - rr0) / n;
            let client_us = (common::cpu_seconds(std::process::id()) - c0) / n;
            let machine_us = (common::machine_busy_seconds() - m0) / n;
            println!(
                "run {run}, {shards} shard(s): {:.0} answers/s (p50 {:.2} ms, p99 {:.2} ms); CPU per answer: Redis masters {redis_us:.1} us, replicas {replica_us:.1} us, client {client_us:.1} us, whole machine {machine_us:.1} us",
                p.per_sec,
                ms(p.p50),
                ms(p.p99)
            );
            println!(
                "run {run}, {shards} shard(s): {}",
                MasterSnap::take(&masters)
                    .await
                    .breakdown(&snap0, args.answers)
            );
            row.extend([p.per_sec, redis_us, replica_us, client_us, machine_us]);
        }
        if args.contended {
            contended_phase(args, nodes, &masters, &opts, run).await?;
        }
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    let m: Vec<f64> = cols.into_iter().map(common::median).collect();
    println!(
        "median of {} runs: one slot {:.0}/s (per answer: masters {:.1} us, replicas {:.1} us, client {:.1} us, machine {:.1} us); \
         {} shards {:.0}/s (masters {:.1} us, replicas {:.1} us, client {:.1} us, machine {:.1} us); ratio {:.2}",
        args.runs,
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        args.shards,
        m[5],
        m[6],
        m[7],
        m[8],
        m[9],
        m[5] / m[0]
    );
    Ok(())
}

/// `--contended 1`: one one-slot quiz on every master, all driven at once,
/// each through its own store (its own batcher, `--concurrency` callers),
/// `--answers` in all: the one-slot cost per answer while every master
/// and replica shares the cores, as in the sharded phase.
async fn contended_phase(
    args: &Args,
    nodes: &[String],
    masters: &[String],
    opts: &RedisOptions,
    run: usize,
) -> anyhow::Result<()> {
    let ids = quiz_per_master(&nodes[0], masters, &format!("tc{run}")).await?;
    let mut stores = Vec::new();
    for id in &ids {
        let store = Arc::new(RedisClusterStore::connect(nodes, opts.clone()).await?);
        new_quiz(&store, id, args.players).await?;
        stores.push(store);
    }
    let each = args.answers / ids.len().max(1);
    let snap0 = MasterSnap::take(masters).await;
    let c0 = common::cpu_seconds(std::process::id());
    let started = Instant::now();
    let phases = futures::future::join_all(
        stores
            .iter()
            .zip(&ids)
            .map(|(store, id)| drive(Arc::clone(store), id, each, args.concurrency, args.players)),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    for p in phases {
        p?;
    }
    let total = each * ids.len();
    let snap1 = MasterSnap::take(masters).await;
    let client_us = (common::cpu_seconds(std::process::id()) - c0) * 1e6 / total as f64;
    println!(
        "run {run}, one slot on each of {} masters at once: {:.0} answers/s in all; client {client_us:.1} us/answer; {}",
        ids.len(),
        total as f64 / elapsed,
        snap1.breakdown(&snap0, total)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args();
    let nodes = common::redis_nodes();
    if args.shards > 1 {
        let opts = RedisOptions {
            max_in_flight: args.max_in_flight,
            max_batch: args.max_batch,
            ..RedisOptions::default()
        };
        return compare_shards(&args, &nodes, opts).await;
    }
    let master = common::master_of(&nodes[0], "quiz:{bench}:leaderboard").await?;
    let tuned = RedisOptions {
        max_in_flight: args.max_in_flight,
        max_batch: args.max_batch,
        direct_lane: args.direct_lane,
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
        let own0 = common::cpu_seconds(std::process::id());
        let w = drive(
            Arc::clone(&with_wait),
            &q1,
            args.answers,
            args.concurrency,
            args.players,
        )
        .await?;
        let client_us =
            (common::cpu_seconds(std::process::id()) - own0) * 1e6 / args.answers as f64;
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
             Redis main-thread CPU: {store_us:.2} us/answer (store+WAIT), {anchor_us:.2} us/anchor ZINCRBY | \
             this process (store+WAIT, callers included): {client_us:.2} us/answer; on the direct lanes: {} answers",
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
            with_wait.answers_on_lanes() + without_wait.answers_on_lanes(),
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
