//! MongoDB stopped for 20 s while events keep arriving: the persister stops
//! consuming, retries with capped backoff, reports not-ready, and catches up
//! afterwards with nothing lost. Alone in its test binary because it stops
//! the shared MongoDB of the local stack (`deploy/local/stack stop mongodb`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;

const STACK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/stack");

fn stack(verb: &str) {
    let status = Command::new(STACK)
        .args([verb, "mongodb"])
        .status()
        .unwrap_or_else(|e| panic!("{STACK} {verb} mongodb: {e}"));
    assert!(status.success(), "{STACK} {verb} mongodb: {status}");
}

/// Restarts MongoDB however the test ends.
struct Restart;
impl Drop for Restart {
    fn drop(&mut self) {
        let _ = Command::new(STACK).args(["start", "mongodb"]).status();
    }
}

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
    let http = running.http_addr.expect("http");
    let db = database(&config).await;
    wait_complete(&db, &before, Duration::from_secs(60)).await;

    let _restart = Restart;
    stack("stop");
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
    stack("start");

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
