//! Events persisted per second by the whole pipeline (Kafka → parse → fold →
//! MongoDB → commit), as a ratio to the anchor measured in the same run: a
//! plain loop of the same driver writing the same documents, in the same
//! batch size, to the same server (`write_batch` on pre-parsed events, no
//! Kafka). Needs the local stack (`deploy/local/stack up`).
//!
//! cargo bench -p persister --bench throughput -- [--events N] [--batch B] [--runs R]
//!     [--statements S] [--parallel 0|1]
//!
//! `--statements` and `--parallel` set `mongodb.max_statements_per_command`
//! and `mongodb.parallel_collections` (default: the config's defaults).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use persister::event::Event;
use persister::store::mongo::MongoStore;
use persister::store::{write_batch, BatchEvent};
use tokio_util::sync::CancellationToken;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    persister::init_logging(&persister::config::LogConfig {
        format: "text".into(),
        level: "warn".into(),
    });
    let events = arg("--events", 50_000);
    let batch = arg("--batch", 1000);
    let runs = arg("--runs", 3);
    let defaults = persister::Config::default().mongodb;
    let statements = arg("--statements", defaults.max_statements_per_command);
    let parallel = arg("--parallel", usize::from(defaults.parallel_collections)) != 0;
    let players = 100;
    let questions = 20;
    let per_quiz = players * (questions + 1) + questions + 3;
    let quizzes = events.div_ceil(per_quiz);

    let mut ratios = Vec::new();
    for run in 0..runs {
        let mut config = common::test_config("bench", 3).await;
        config.batch.max_events = batch;
        config.batch.max_wait_ms = 100;
        config.kafka.statistics_interval_ms = 60_000;
        config.mongodb.command_timeout_ms = 5_000;
        config.mongodb.max_statements_per_command = statements;
        config.mongodb.parallel_collections = parallel;
        let records: Vec<common::Rec> = (0..quizzes)
            .flat_map(|_| common::scenario(&testkit::unique_quiz_id(), players, questions).records)
            .collect();
        let n = records.len();
        let t0 = Instant::now();
        common::produce(&config.kafka.brokers, &config.kafka.topic, &records).await;
        eprintln!("run {run}: produced {n} events in {:.2?}", t0.elapsed());

        // The pipeline, from partition assignment to the last event persisted.
        let shutdown = CancellationToken::new();
        let running = persister::start(config.clone(), shutdown.clone())
            .await
            .expect("start");
        eprintln!("run {run}: waiting for the partition assignment");
        while running.metrics.assigned_partitions.get() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let t0 = Instant::now();
        let mut last_report = Instant::now();
        while running.metrics.events_persisted.get() < n as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if last_report.elapsed() > Duration::from_secs(5) {
                last_report = Instant::now();
                eprintln!(
                    "  … {} of {n} persisted, {} consumed",
                    running.metrics.events_persisted.get(),
                    running.metrics.events_consumed.get()
                );
            }
        }
        let pipeline = t0.elapsed();
        shutdown.cancel();
        running.wait().await.expect("stop");

        // The anchor: the same events, parsed beforehand, written by a plain
        // loop in batches of the same size to a fresh database.
        let parsed: Vec<(Event, usize)> = records
            .iter()
            .map(|r| (Event::parse(&r.value).expect("valid"), r.value.len()))
            .collect();
        let mut anchor_config = config.clone();
        anchor_config.mongodb.database = format!("{}_anchor", config.mongodb.database);
        let store = MongoStore::from_config(&anchor_config)
            .await
            .expect("store");
        let store = Arc::new(store);
        persister::store::Store::ensure_schema(store.as_ref())
            .await
            .expect("schema");
        let t0 = Instant::now();
        for chunk in parsed.chunks(batch) {
            let b: Vec<BatchEvent<'_>> = chunk
                .iter()
                .map(|(event, bytes)| BatchEvent {
                    event,
                    bytes: *bytes,
                })
                .collect();
            write_batch(store.as_ref(), &b).await.expect("anchor write");
        }
        let anchor = t0.elapsed();

        let p_rate = n as f64 / pipeline.as_secs_f64();
        let a_rate = n as f64 / anchor.as_secs_f64();
        let ratio = p_rate / a_rate;
        println!(
            "run {run}: {n} events, batch {batch}, statements {statements}, parallel {parallel}: pipeline {p_rate:.0} ev/s ({pipeline:.2?}), anchor {a_rate:.0} ev/s ({anchor:.2?}), ratio {ratio:.3}"
        );
        ratios.push((ratio, p_rate, a_rate));
    }
    ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, p, a) = ratios[ratios.len() / 2];
    println!("median: ratio {ratio:.3} (pipeline {p:.0} ev/s, anchor {a:.0} ev/s)");
}
