//! MongoDB stopped for 20 s while events keep arriving: the persister stops
//! consuming, retries with capped backoff, reports not-ready, and catches up
//! afterwards with nothing lost. Alone in its test binary because it stops
//! the shared MongoDB of the local stack (`deploy/local/stack stop mongodb`).

mod common;

use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_down_for_20s_then_the_persister_catches_up() {
    let config = test_config("outage", 3).await;
    let before = scenario(&testkit::unique_quiz_id(), 10, 5);
    let during = scenario(&testkit::unique_quiz_id(), 30, 10);
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

    let _restart = RestartOnDrop("mongodb");
    stack("stop", "mongodb");
    produce(&config.kafka.brokers, &config.kafka.topic, &during.records).await;
    testkit::eventually(
        "readyz 503 while MongoDB is down",
        Duration::from_secs(15),
        || async { matches!(http_get(http, "/readyz").await, Some((503, _))).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        running.metrics.write_retries.get() > 0,
        "the batch write was retried"
    );
    assert!(matches!(http_get(http, "/readyz").await, Some((503, _))));
    stack("start", "mongodb");

    let db = database(&config).await;
    wait_complete(&db, &during, Duration::from_secs(120)).await;
    assert_invariant(&db, &before).await;
    assert_invariant(&db, &during).await;
    testkit::eventually("readyz 200 again", Duration::from_secs(15), || async {
        matches!(http_get(http, "/readyz").await, Some((200, _))).then_some(())
    })
    .await;
    shutdown.cancel();
    running.wait().await.expect("clean stop");
}
