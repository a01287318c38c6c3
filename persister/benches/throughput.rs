//! Events persisted per second by the whole pipeline (Kafka → parse → fold →
//! MongoDB → commit), against the anchor measured in the same run: a raw
//! loop of plain driver calls writing the same documents to the same
//! server. Needs the local stack (`deploy/local/stack up`).
//!
//! cargo bench --profile dev -p persister --bench throughput -- [--players P]
//!     [--questions Q] [--batch B] [--runs R] [--statements S] [--parallel 0|1]
//!     [--before 0|1] [--timeout-s T]
//!
//! The events are one live quiz as core writes it: `quiz_created`, P
//! `player_joined`, `quiz_started`, then per question a `question_opened`
//! and an `answer_scored` of every player, `quiz_ended`. Each run produces
//! them to a fresh topic, then measures, each on a fresh database:
//! - **after**: the persister as configured (immutable documents inserted);
//! - **before** (with `--before 1`): the same with `mongodb.insert_immutable
//!   = false`, every document upserted, the write path of before;
//! - **anchor**: the same events in batches of B, folded by `writes::plan`
//!   into the same documents, written with the driver's plainest efficient
//!   calls: `insert_many` (unordered) of the immutable documents, then one
//!   `update_one` (upsert) per other document, one collection after another.
//!
//! Pipeline time runs from the partition assignment to the last event
//! persisted; every wait is bounded by `--timeout-s` (the run then fails).
//! `--statements` and `--parallel` set `mongodb.max_statements_per_command`
//! and `mongodb.parallel_collections` (default: the config's defaults).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bson::{doc, Document};
use futures::TryStreamExt;
use persister::event::Event;
use persister::writes::{self, PlanInput, COLLECTIONS, QUIZZES};
use tokio_util::sync::CancellationToken;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the persister over the topic of `config` until `n` events are
/// persisted; the time from the assignment to the last one.
async fn pipeline(config: &persister::Config, n: usize, limit: Duration) -> Duration {
    let shutdown = CancellationToken::new();
    let running = persister::start(config.clone(), shutdown.clone())
        .await
        .expect("start");
    let deadline = Instant::now() + limit;
    while running.metrics.assigned_partitions.get() == 0 {
        assert!(Instant::now() < deadline, "no partition assignment");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let t0 = Instant::now();
    let mut last_report = Instant::now();
    while running.metrics.events_persisted.get() < n as u64 {
        assert!(
            Instant::now() < deadline,
            "{} of {n} persisted after {limit:?}",
            running.metrics.events_persisted.get()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "  … {} of {n} persisted",
                running.metrics.events_persisted.get()
            );
        }
    }
    let took = t0.elapsed();
    shutdown.cancel();
    running.wait().await.expect("stop");
    took
}

/// The anchor: plain driver calls, batch by batch.
async fn anchor(db: &mongodb::Database, events: &[Event], batch: usize) -> Duration {
    let t0 = Instant::now();
    for chunk in events.chunks(batch) {
        let plan = writes::plan(chunk.iter().enumerate().map(|(index, event)| PlanInput {
            index,
            event,
            bytes: 0,
        }));
        for (c, upserts) in plan.upserts.iter().enumerate() {
            let collection = db.collection::<Document>(COLLECTIONS[c]);
            let (inserts, updates): (Vec<_>, Vec<_>) =
                upserts.iter().partition(|u| u.insert_doc().is_some());
            let docs: Vec<Document> = inserts.iter().filter_map(|u| u.insert_doc()).collect();
            if !docs.is_empty() {
                // A duplicate key is a document already there (a score of
                // 0 after a wrong answer, inserted on join): written.
                if let Err(e) = collection.insert_many(docs).ordered(false).await {
                    let only_duplicates = matches!(&*e.kind,
                        mongodb::error::ErrorKind::InsertMany(m)
                            if m.write_concern_error.is_none()
                                && m.write_errors.iter().flatten().all(|w| w.code == 11000));
                    assert!(only_duplicates, "anchor insert_many: {e}");
                }
            }
            for u in updates {
                collection
                    .update_one(doc! { "_id": u.id.as_str() }, u.update_doc())
                    .upsert(true)
                    .await
                    .expect("anchor update_one");
            }
        }
        let quizzes = db.collection::<Document>(QUIZZES);
        for t in &plan.transitions {
            quizzes
                .update_one(
                    doc! { "_id": t.quiz_id.as_str(), "state_rank": { "$lt": t.rank } },
                    doc! { "$set": { "state": t.state, "state_rank": t.rank } },
                )
                .await
                .expect("anchor transition");
        }
    }
    t0.elapsed()
}

/// Every document of every collection, `_id` order, for comparing what
/// two writers left.
async fn contents(db: &mongodb::Database) -> Vec<Vec<Document>> {
    let mut out = Vec::new();
    for name in COLLECTIONS {
        let docs: Vec<Document> = db
            .collection::<Document>(name)
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("collect");
        out.push(docs.into_iter().map(sorted).collect());
    }
    out
}

/// Keys in order at every level: two writers folding the same events into
/// different batches may add a document's fields in another order.
fn sorted(d: Document) -> Document {
    let mut fields: Vec<(String, bson::Bson)> = d.into_iter().collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
        .into_iter()
        .map(|(k, v)| match v {
            bson::Bson::Document(inner) => (k, bson::Bson::Document(sorted(inner))),
            other => (k, other),
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    persister::init_logging(&persister::config::LogConfig {
        format: "text".into(),
        level: "warn".into(),
    });
    let players = arg("--players", 2000);
    let questions = arg("--questions", 3);
    let batch = arg("--batch", 1000);
    let runs = arg("--runs", 3);
    let before = arg("--before", 0) != 0;
    let limit = Duration::from_secs(arg("--timeout-s", 600) as u64);
    let defaults = persister::Config::default().mongodb;
    let statements = arg("--statements", defaults.max_statements_per_command);
    let parallel = arg("--parallel", usize::from(defaults.parallel_collections)) != 0;

    let (mut after_rates, mut before_rates, mut anchor_rates) =
        (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let mut config = common::test_config("bench", 1).await;
        config.batch.max_events = batch;
        config.batch.max_wait_ms = 100;
        config.kafka.statistics_interval_ms = 60_000;
        config.mongodb.command_timeout_ms = 30_000;
        config.mongodb.max_statements_per_command = statements;
        config.mongodb.parallel_collections = parallel;
        let quiz = testkit::unique_quiz_id();
        let records = common::scenario(&quiz, players, questions).records;
        let n = records.len();
        common::produce(&config.kafka.brokers, &config.kafka.topic, &records).await;
        let client = testkit::require_mongodb().await;

        let after = pipeline(&config, n, limit).await;
        let a_rate = n as f64 / after.as_secs_f64();
        let mut line = format!(
            "run {run}: {n} events ({players} players, {questions} questions), batch {batch}, \
             statements {statements}, parallel {parallel}: after {a_rate:.0} ev/s ({after:.2?})"
        );
        after_rates.push(a_rate);

        if before {
            let mut old = config.clone();
            old.mongodb.insert_immutable = false;
            old.kafka.group_id = format!("{}-before", config.kafka.group_id);
            old.mongodb.database = format!("{}_before", config.mongodb.database);
            let took = pipeline(&old, n, limit).await;
            let rate = n as f64 / took.as_secs_f64();
            line += &format!(", before {rate:.0} ev/s ({took:.2?})");
            before_rates.push(rate);
        }

        let events: Vec<Event> = records
            .iter()
            .map(|r| Event::parse(&r.value).expect("valid"))
            .collect();
        let anchor_db = client.database(&format!("{}_anchor", config.mongodb.database));
        let took = anchor(&anchor_db, &events, batch).await;
        let rate = n as f64 / took.as_secs_f64();
        anchor_rates.push(rate);
        line += &format!(
            ", anchor {rate:.0} ev/s ({took:.2?}), ratio after/anchor {:.3}",
            a_rate / rate
        );
        println!("{line}");

        // The persister and the anchor wrote the same documents.
        let written = contents(&client.database(&config.mongodb.database)).await;
        assert_eq!(
            written,
            contents(&anchor_db).await,
            "the pipeline and the anchor left different documents"
        );
        assert_eq!(written[2].len(), players * questions, "answers");
    }
    let (a, x) = (median(after_rates), median(anchor_rates));
    let mut summary = format!(
        "median of {runs}: after {a:.0} ev/s, anchor {x:.0} ev/s, ratio {:.3}",
        a / x
    );
    if before {
        let b = median(before_rates);
        summary += &format!(", before {b:.0} ev/s (ratio {:.3})", b / x);
    }
    println!("{summary}");
}
