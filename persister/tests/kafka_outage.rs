//! Kafka stopped for about 15 s while the persister is consuming: events read
//! before the stop are written but their offsets cannot be committed, the
//! persister reports not-ready, and after `stack start kafka` it resumes by
//! itself (same process, no restart): everything lands exactly once in
//! effect. Alone in its test binary because it stops the shared Kafka of the
//! local stack (`deploy/local/stack stop kafka`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

async fn ready_status(http: std::net::SocketAddr) -> Option<u16> {
    http_get(http, "/readyz").await.map(|(status, _)| status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_for_15s_then_the_persister_resumes() {
    let mut config = test_config("kafka-outage", 3).await;
    // Diagnosing a failure: RUST_LOG=info prints the persister's log (JSON on
    // stderr), TEST_KAFKA_DEBUG=cgrp,consumer adds librdkafka's own.
    if std::env::var_os("RUST_LOG").is_some() {
        persister::init_logging(&config.log);
    }
    if let Some(debug) = std::env::var("TEST_KAFKA_DEBUG")
        .ok()
        .filter(|d| !d.is_empty())
    {
        config.kafka.properties.insert("debug".into(), debug);
    }
    let before = scenario(&testkit::unique_quiz_id(), 5, 4);
    // Big enough (about 860 events, several seconds of FerretDB writes) to
    // be still in flight when Kafka goes away.
    let in_flight = scenario(&testkit::unique_quiz_id(), 40, 20);
    let after = scenario(&testkit::unique_quiz_id(), 10, 5);
    produce(&config.kafka.brokers, &config.kafka.topic, &before.records).await;

    let shutdown = CancellationToken::new();
    let running = persister::start(config.clone(), shutdown.clone())
        .await
        .expect("start");
    // Stop the consumer thread even if an assertion fails (the runtime
    // waits for it when the test ends).
    let _stop = shutdown.clone().drop_guard();
    let http = running.http_addr.expect("http");
    let db = database(&config).await;
    wait_complete(&db, &before, Duration::from_secs(60)).await;
    testkit::eventually("readyz 200 before", Duration::from_secs(15), || async {
        (ready_status(http).await == Some(200)).then_some(())
    })
    .await;

    // Events flowing: wait until the persister has started on the second
    // quiz, then pull Kafka from under it.
    produce(
        &config.kafka.brokers,
        &config.kafka.topic,
        &in_flight.records,
    )
    .await;
    let consumed_before = before.records.len() as u64;
    testkit::eventually(
        "the persister consuming the in-flight quiz",
        Duration::from_secs(30),
        || async { (running.metrics.events_consumed.get() > consumed_before).then_some(()) },
    )
    .await;
    let persisted_at_stop = running.metrics.events_persisted.get();
    let _restart = RestartOnDrop("kafka");
    stack("stop", "kafka");
    let stopped = Instant::now();
    let commit_failures_at_stop = running.metrics.commit_failures.get();
    eprintln!(
        "stopping kafka with {persisted_at_stop} of {} events persisted",
        before.records.len() + in_flight.records.len()
    );

    // Documented: `/readyz` reports not-ready once librdkafka reports the
    // brokers down (statistics every second in the test config).
    testkit::eventually(
        "readyz 503 while Kafka is down",
        Duration::from_secs(15),
        || async { (ready_status(http).await == Some(503)).then_some(()) },
    )
    .await;
    assert_eq!(running.metrics.ready.get(), 0, "persister_ready gauge");
    assert_eq!(
        http_get(http, "/healthz").await.map(|(s, _)| s),
        Some(200),
        "the process stays alive"
    );
    let down_for = Duration::from_secs(15);
    tokio::time::sleep(down_for.saturating_sub(stopped.elapsed())).await;
    assert_eq!(ready_status(http).await, Some(503), "still not ready");
    // What was written during the outage could not be committed yet.
    let failures = running.metrics.commit_failures.get() - commit_failures_at_stop;
    eprintln!(
        "during the outage: {} events persisted, {failures} commit failures",
        running.metrics.events_persisted.get() - persisted_at_stop
    );
    assert!(
        persisted_at_stop < (before.records.len() + in_flight.records.len()) as u64,
        "events were still in flight when Kafka stopped"
    );
    assert!(failures > 0, "offset commits failed while Kafka was down");

    stack("start", "kafka");
    produce(&config.kafka.brokers, &config.kafka.topic, &after.records).await;

    wait_complete(&db, &in_flight, Duration::from_secs(120)).await;
    wait_complete(&db, &after, Duration::from_secs(120)).await;
    for s in [&before, &in_flight, &after] {
        assert_invariant(&db, s).await;
    }
    // Nothing else in the database: no duplicate or stray documents.
    let all = before.records.len() + in_flight.records.len() + after.records.len();
    assert!(running.metrics.events_persisted.get() >= all as u64);
    assert_eq!(
        count(&db, "answers", bson::doc! {}).await,
        (before.answers + in_flight.answers + after.answers) as u64
    );
    assert_eq!(
        count(&db, "players", bson::doc! {}).await,
        (before.players + in_flight.players + after.players) as u64
    );
    assert_eq!(
        count(&db, "scores", bson::doc! {}).await,
        (before.players + in_flight.players + after.players) as u64
    );
    assert_eq!(
        count(&db, "quizzes", bson::doc! {"state": "ended"}).await,
        3
    );
    assert_eq!(count(&db, "quizzes", bson::doc! {}).await, 3);
    testkit::eventually("readyz 200 again", Duration::from_secs(30), || async {
        (ready_status(http).await == Some(200)).then_some(())
    })
    .await;
    assert_eq!(running.metrics.dead_lettered_total(), 0);

    // Offsets: after the outage the group's committed position reaches the
    // end of every partition (what was written while the commits failed is
    // either committed late or read again and committed).
    let reader: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let topic = config.kafka.topic.clone();
    testkit::eventually(
        "offsets committed up to the end of every partition",
        Duration::from_secs(60),
        || {
            let ends: Option<Vec<i64>> = (0..3)
                .map(|p| {
                    reader
                        .fetch_watermarks(&topic, p, Duration::from_secs(5))
                        .ok()
                        .map(|(_, high)| high)
                })
                .collect();
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in 0..3 {
                tpl.add_partition(&topic, p);
            }
            let committed: Option<Vec<i64>> = reader
                .committed_offsets(tpl, Duration::from_secs(5))
                .ok()
                .and_then(|c| {
                    (0..3)
                        .map(|p| match c.find_partition(&topic, p)?.offset() {
                            rdkafka::Offset::Offset(o) => Some(o),
                            _ => Some(0),
                        })
                        .collect()
                });
            let done = ends.is_some() && ends == committed;
            async move { done.then_some(()) }
        },
    )
    .await;
    let total: i64 = (0..3)
        .filter_map(|p| {
            reader
                .fetch_watermarks(&topic, p, Duration::from_secs(5))
                .ok()
        })
        .map(|(low, high)| high - low)
        .sum();
    assert_eq!(total, all as i64, "every event is in the topic once");

    // The same process throughout: it stops cleanly.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running.wait())
        .await
        .expect("stopped within 30 s")
        .expect("clean stop");
}
