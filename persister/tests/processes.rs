//! The persister as separate processes (the built binary), against the real
//! Kafka and MongoDB: killed with SIGKILL in the middle of a batch and
//! restarted; several processes sharing the partitions while one joins and
//! one leaves.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bson::doc;
use common::*;
use persister::Config;

const WAIT: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Proc {
    child: Child,
    http: std::net::SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &Config, name: &str) -> Proc {
    let port = free_port();
    let log_dir = std::env::temp_dir().join("persister-tests");
    let _ = std::fs::create_dir_all(&log_dir);
    let log = std::fs::File::create(log_dir.join(format!("{}-{name}.log", config.kafka.group_id)))
        .expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_persister"))
        .arg("run")
        .env("QUIZ_KAFKA_BROKERS", &config.kafka.brokers)
        .env("QUIZ_KAFKA_TOPIC", &config.kafka.topic)
        .env("PERSISTER_GROUP_ID", &config.kafka.group_id)
        .env("QUIZ_MONGODB_URI", &config.mongodb.uri)
        .env("QUIZ_MONGODB_DB", &config.mongodb.database)
        .env(
            "PERSISTER_BATCH_MAX_EVENTS",
            config.batch.max_events.to_string(),
        )
        .env(
            "PERSISTER_BATCH_MAX_WAIT_MS",
            config.batch.max_wait_ms.to_string(),
        )
        .env("PERSISTER_SESSION_TIMEOUT_MS", "6000")
        .env("PERSISTER_STATISTICS_INTERVAL_MS", "1000")
        .env("PERSISTER_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("PERSISTER_LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn persister");
    Proc {
        child,
        http: ([127, 0, 0, 1], port).into(),
    }
}

async fn persisted(p: &Proc) -> f64 {
    match http_get(p.http, "/metrics").await {
        Some((200, page)) => metric(&page, "persister_events_persisted_total").unwrap_or(0.0),
        _ => 0.0,
    }
}

fn sigterm(p: &Proc) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(p.child.id().to_string())
        .status()
        .expect("kill -TERM");
    assert!(status.success());
}

async fn wait_exit(p: &mut Proc, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = p.child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "persister did not exit within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_then_restart_loses_and_duplicates_nothing() {
    let mut config = test_config("sigkill", 3).await;
    config.batch.max_events = 100;
    let scenarios: Vec<Scenario> = (0..2)
        .map(|_| scenario(&testkit::unique_quiz_id(), 20, 12))
        .collect();
    let total_answers: u64 = scenarios.iter().map(|s| s.answers as u64).sum();
    for s in &scenarios {
        produce(&config.kafka.brokers, &config.kafka.topic, &s.records).await;
    }
    let db = database(&config).await;

    let mut first = spawn(&config, "first");
    let at_kill = testkit::eventually("some answers written", WAIT, || async {
        let n = count(&db, "answers", doc! {}).await;
        (n >= 100).then_some(n)
    })
    .await;
    first.child.kill().expect("SIGKILL");
    let _ = first.child.wait();
    let after_kill = count(&db, "answers", doc! {}).await;
    assert!(
        after_kill < total_answers,
        "the kill came too late to be mid-stream ({after_kill}/{total_answers})"
    );
    eprintln!("killed at {at_kill}..{after_kill} of {total_answers} answers");

    let second = spawn(&config, "second");
    for s in &scenarios {
        wait_complete(&db, s, WAIT).await;
        assert_invariant(&db, s).await;
    }
    assert_eq!(count(&db, "answers", doc! {}).await, total_answers);
    // The restarted process re-applied the uncommitted tail idempotently.
    assert!(persisted(&second).await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_partitions_and_rebalance_without_loss() {
    let mut config = test_config("scale", 4).await;
    config.batch.max_events = 100;
    let scenarios: Vec<Scenario> = (0..12)
        .map(|_| scenario(&testkit::unique_quiz_id(), 6, 4))
        .collect();
    let db = database(&config).await;

    let mut a = spawn(&config, "a");
    let b = spawn(&config, "b");
    // Let both join (cooperative rebalancing takes a few rounds) before the
    // traffic starts.
    for p in [&a, &b] {
        testkit::eventually("partitions assigned to both", WAIT, || async {
            let page = http_get(p.http, "/metrics").await?.1;
            (metric(&page, "persister_assigned_partitions")? > 0.0).then_some(())
        })
        .await;
    }
    for s in &scenarios[..4] {
        produce(&config.kafka.brokers, &config.kafka.topic, &s.records).await;
    }
    for s in &scenarios[..4] {
        wait_complete(&db, s, WAIT).await;
    }

    // A third one joins while events flow.
    let c = spawn(&config, "c");
    for s in &scenarios[4..8] {
        produce(&config.kafka.brokers, &config.kafka.topic, &s.records).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // One leaves (SIGTERM: it finishes its batch and commits) while events flow.
    let pa = persisted(&a).await;
    sigterm(&a);
    for s in &scenarios[8..] {
        produce(&config.kafka.brokers, &config.kafka.topic, &s.records).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = wait_exit(&mut a, Duration::from_secs(60)).await;
    assert!(status.success(), "SIGTERM exit status {status}");

    for s in &scenarios {
        wait_complete(&db, s, WAIT).await;
        assert_invariant(&db, s).await;
    }
    let total: usize = scenarios.iter().map(|s| s.records.len()).sum();
    let (pb, pc) = (persisted(&b).await, persisted(&c).await);
    eprintln!("persisted: a {pa}+, b {pb}, c {pc} of {total}");
    // Which process owns which quiz depends on key hashing; with 12 quizzes
    // on 4 partitions, more than one process must have written some.
    let writers = [pa, pb, pc].iter().filter(|&&p| p > 0.0).count();
    assert!(writers >= 2, "the work was shared ({pa}, {pb}, {pc})");
    drop((b, c));
}
