//! A rebalance while MongoDB is down: the persister holds a pending batch
//! with records of two partitions, MongoDB stops, another member joins the
//! group and one partition is revoked. The flush on revocation cannot reach
//! MongoDB before its deadline; the records of the revoked partition are
//! left for their new owner, and those of the partition the persister keeps
//! must stay pending (dropping them lost them: the persister went on reading
//! that partition after them and committed the later offsets). Alone in its
//! test binary because it stops the shared MongoDB of the local stack.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

/// Produces `records` to one partition (the test decides where each quiz
/// lives, so both partitions hold a quiz).
async fn produce_to(brokers: &str, topic: &str, partition: i32, records: &[Rec]) {
    let producer: FutureProducer = producer(brokers);
    for r in records {
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(partition)
                    .key(&r.key)
                    .payload(&r.value),
                Duration::from_secs(30),
            )
            .await
            .expect("produced");
    }
}

/// A plain group member that joins with the persister's assignment
/// strategy, takes what the group gives it (counted in `assigned`), commits
/// nothing, and leaves when `leave` is set (or after 120 s): it only makes
/// the group rebalance.
fn join_as_second_member(
    config: &persister::Config,
    assigned: Arc<AtomicUsize>,
    leave: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set(
            "partition.assignment.strategy",
            &config.kafka.assignment_strategy,
        )
        .set("session.timeout.ms", "6000")
        .create()
        .expect("second member");
    consumer
        .subscribe(&[config.kafka.topic.as_str()])
        .expect("subscribe");
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(120);
        while !leave.load(Ordering::Relaxed) && Instant::now() < until {
            let _ = consumer.poll(Duration::from_millis(100));
            let now = consumer.assignment().map(|a| a.count()).unwrap_or(0);
            assigned.store(now, Ordering::Relaxed);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_while_mongodb_is_down_loses_nothing() {
    let mut config = test_config("rebalance-outage", 2).await;
    if std::env::var_os("RUST_LOG").is_some() {
        persister::init_logging(&config.log);
    }
    // Hold everything read in one pending batch until the rebalance: the
    // batch is due only 20 s after its first record.
    config.batch.max_events = 100_000;
    config.batch.max_wait_ms = 20_000;
    config.retry.revoke_flush_timeout_ms = 2_000;
    let first = [
        scenario(&testkit::unique_quiz_id(), 6, 3),
        scenario(&testkit::unique_quiz_id(), 6, 3),
    ];
    let then = [
        scenario(&testkit::unique_quiz_id(), 4, 2),
        scenario(&testkit::unique_quiz_id(), 4, 2),
    ];
    for (p, s) in first.iter().enumerate() {
        produce_to(
            &config.kafka.brokers,
            &config.kafka.topic,
            p as i32,
            &s.records,
        )
        .await;
    }
    let total_first: u64 = first.iter().map(|s| s.records.len() as u64).sum();

    let shutdown = CancellationToken::new();
    let running = persister::start(config.clone(), shutdown.clone())
        .await
        .expect("start");
    let _stop = shutdown.clone().drop_guard();
    testkit::eventually(
        "the persister holding both partitions' records pending",
        Duration::from_secs(30),
        || async { (running.metrics.events_consumed.get() >= total_first).then_some(()) },
    )
    .await;
    assert_eq!(
        running.metrics.events_persisted.get(),
        0,
        "nothing written yet: the batch is still pending"
    );

    let _restart = RestartOnDrop("mongodb");
    stack("stop", "mongodb");
    let revokes_before = running
        .metrics
        .rebalances
        .with_label_values(&["revoke"])
        .get();
    let leave = Arc::new(AtomicBool::new(false));
    let assigned = Arc::new(AtomicUsize::new(0));
    let member = join_as_second_member(&config, assigned.clone(), leave.clone());
    testkit::eventually(
        "a partition revoked from the persister",
        Duration::from_secs(30),
        || async {
            let now = running
                .metrics
                .rebalances
                .with_label_values(&["revoke"])
                .get();
            (now > revokes_before).then_some(())
        },
    )
    .await;
    // The revoked partition reaches the second member only after the
    // revocation's flush gave up (MongoDB is down).
    testkit::eventually(
        "the second member owning the revoked partition",
        Duration::from_secs(30),
        || async { (assigned.load(Ordering::Relaxed) >= 1).then_some(()) },
    )
    .await;
    leave.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || member.join().expect("member"))
        .await
        .expect("join");
    stack("start", "mongodb");

    // Later records on both partitions: the persister writes them and
    // commits offsets past the first quizzes on the partition it kept.
    for (p, s) in then.iter().enumerate() {
        produce_to(
            &config.kafka.brokers,
            &config.kafka.topic,
            p as i32,
            &s.records,
        )
        .await;
    }
    let db = database(&config).await;
    for s in then.iter().chain(first.iter()) {
        wait_complete(&db, s, Duration::from_secs(120)).await;
    }
    for s in first.iter().chain(then.iter()) {
        assert_invariant(&db, s).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running.wait())
        .await
        .expect("stopped within 30 s")
        .expect("clean stop");
}
