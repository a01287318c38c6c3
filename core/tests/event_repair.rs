//! No event lost on any path (the event outbox, `event_outbox.rs`): a
//! publish that fails after the store applied a join, a host action or an
//! answer is repaired by the server, without the client ever retrying; a
//! duplicate answer whose event is on Kafka costs no Kafka write; a keyed
//! create retried after a failed publish gets the same quiz.
//!
//! Against the local stack's real Kafka (a fresh topic per test) and Redis
//! Cluster (and the memory store), through a sink that is the real
//! `KafkaSink` behind a switch: while "down" a publish fails without
//! reaching Kafka (what a broker outage looks like to the service once the
//! store has applied the change). Every wait is bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quiz_core::bus::memory::MemoryBus;
use quiz_core::config::Config;
use quiz_core::events::kafka::{KafkaOptions, KafkaSink};
use quiz_core::events::{Event, EventError, EventKind, EventSink};
use quiz_core::metrics::Metrics;
use quiz_core::protocol::{AnswerReason, CreateQuizReq};
use quiz_core::rules::HostAction;
use quiz_core::service::{Caller, QuizService};
use quiz_core::store::memory::MemoryStore;
use quiz_core::store::redis_cluster::{RedisClusterStore, RedisOptions};
use quiz_core::store::QuizStore;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

/// The real Kafka sink behind a switch.
struct SwitchedSink {
    kafka: KafkaSink,
    down: AtomicBool,
}

#[async_trait::async_trait]
impl EventSink for SwitchedSink {
    async fn publish(&self, event: &Event) -> Result<(), EventError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(EventError::Delivery("switched off by the test".into()));
        }
        self.kafka.publish(event).await
    }
    fn ready(&self) -> bool {
        self.kafka.ready()
    }
    async fn flush(&self, timeout: Duration) -> Result<(), EventError> {
        self.kafka.flush(timeout).await
    }
}

struct Node {
    svc: Arc<QuizService>,
    sink: Arc<SwitchedSink>,
    topic: String,
    kafka: testkit::Kafka,
}

impl Node {
    fn down(&self, down: bool) {
        self.sink.down.store(down, Ordering::SeqCst);
    }
}

async fn node(store: Arc<dyn QuizStore>) -> Node {
    let kafka = testkit::require_kafka().await;
    let topic = testkit::unique_name("repair");
    kafka.create_topic(&topic, 3).await;
    let sink = Arc::new(SwitchedSink {
        kafka: KafkaSink::new(KafkaOptions {
            brokers: kafka.brokers.clone(),
            topic: topic.clone(),
            ..KafkaOptions::default()
        })
        .expect("kafka sink"),
        down: AtomicBool::new(false),
    });
    let config = Arc::new(Config {
        token_secret: "event-repair-test-secret".into(),
        event_repair_grace_ms: 300,
        event_repair_interval_ms: 200,
        ..Config::default()
    });
    let svc = QuizService::with_backends(
        config,
        store,
        Arc::clone(&sink) as Arc<dyn EventSink>,
        Arc::new(MemoryBus::new()),
        Arc::new(Metrics::new()),
    );
    Node {
        svc,
        sink,
        topic,
        kafka,
    }
}

async fn redis() -> Arc<dyn QuizStore> {
    let nodes = testkit::Settings::from_env().redis_nodes;
    Arc::new(
        RedisClusterStore::connect(&nodes, RedisOptions::default())
            .await
            .unwrap_or_else(|e| {
                panic!("Redis Cluster at {nodes:?} is required (deploy/local/stack up): {e}")
            }),
    )
}

fn memory() -> Arc<dyn QuizStore> {
    Arc::new(MemoryStore::new())
}

/// Reads the topic from the start until `done` holds for the records seen
/// (by event id), or `within` passes; returns them.
async fn read_until(
    node: &Node,
    within: Duration,
    done: impl Fn(&HashMap<String, Vec<Event>>) -> bool,
) -> HashMap<String, Vec<Event>> {
    let consumer: StreamConsumer = node
        .kafka
        .config()
        .set("group.id", testkit::unique_name("repair-check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&node.topic]).expect("subscribe");
    let mut seen: HashMap<String, Vec<Event>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + within;
    while !done(&seen) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(msg) => {
                let msg = msg.expect("recv");
                let event: Event =
                    serde_json::from_slice(msg.payload().expect("payload")).expect("event json");
                seen.entry(event.event_id.clone()).or_default().push(event);
            }
        }
    }
    seen
}

fn create_req(title: &str) -> CreateQuizReq {
    serde_json::from_value(serde_json::json!({
        "title": title, "mode": "live",
        "questions": [{"text": "q0", "options": ["a", "b"], "correct": [0],
                       "time_limit_ms": 30000, "points": 1000}],
    }))
    .expect("request")
}

async fn player(svc: &QuizService, quiz_id: &str, nickname: &str) -> Caller {
    let (_, _, p, token, _) = svc.join(quiz_id, nickname).await.expect("join");
    Caller {
        claims: svc.tokens.verify(&token).expect("token"),
        nickname: p.nickname,
    }
}

/// The join, the start (with its question) and the answer whose publish
/// failed reach Kafka once Kafka is back, with no client retry; then a
/// duplicate of the (now delivered) answer writes nothing to Kafka.
async fn repaired_without_the_client(store: Arc<dyn QuizStore>) {
    let node = node(store).await;
    let svc = &node.svc;
    let (def, _) = svc.create_quiz(create_req("repair")).await.expect("create");
    let quiz = def.quiz_id.clone();
    let ann = player(svc, &quiz, "ann").await;

    // Kafka "down": the store applies each change, the publish fails, the
    // client sees 503 / unavailable and never retries.
    node.down(true);
    let e = svc.join(&quiz, "bob").await.expect_err("join while down");
    assert_eq!(e.code(), "unavailable");
    let e = svc
        .host_action(&quiz, HostAction::Start)
        .await
        .expect_err("start while down");
    assert_eq!(e.code(), "unavailable");
    let e = svc
        .answer(&def, &ann, 0, &[0], None)
        .await
        .expect_err("answer while down");
    assert_eq!(e.code(), "unavailable");
    // The host's retry of the start is refused (the quiz did start): only
    // the server can repair its events.
    assert!(svc.host_action(&quiz, HostAction::Start).await.is_err());

    let lb = svc.store.leaderboard(&quiz, 10).await.expect("leaderboard");
    let bob = lb
        .top
        .iter()
        .find(|e| e.nickname == "bob")
        .expect("bob was stored")
        .player_id
        .clone();
    assert_eq!(
        lb.top
            .iter()
            .find(|e| e.player_id == ann.claims.player_id)
            .map(|e| e.score),
        Some(1000),
        "the answer was applied"
    );
    let wanted = [
        format!("{quiz}:joined:{bob}"),
        format!("{quiz}:started"),
        format!("{quiz}:question:0"),
        format!("{quiz}:answer:{}:0", ann.claims.player_id),
    ];

    // Kafka back: the sweep publishes what was left behind.
    node.down(false);
    let seen = read_until(&node, Duration::from_secs(30), |seen| {
        wanted.iter().all(|id| seen.contains_key(id))
    })
    .await;
    for id in &wanted {
        let records = seen
            .get(id)
            .unwrap_or_else(|| panic!("{id} never reached Kafka; got {:?}", seen.keys()));
        // At least once, and every copy the same record: once in effect.
        assert!(
            records.windows(2).all(|w| w[0] == w[1]),
            "{id}: {records:?}"
        );
    }
    let scored = &seen[&wanted[3]][0];
    match &scored.kind {
        EventKind::AnswerScored {
            answer,
            score_after,
        } => {
            assert_eq!((answer.points, *score_after), (1000, 1000));
            assert_eq!(answer.nickname, "ann");
        }
        other => panic!("expected answer_scored, got {other:?}"),
    }
    // Nothing left pending once the acknowledgements are processed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = svc.store.pending_events(&quiz, 100).await.expect("pending");
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending after 10 s: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A duplicate of the delivered answer: answered as a duplicate, and no
    // Kafka write (counted up to a marker published after it, through the
    // same sink, hence the same partition and order).
    let before = seen[&wanted[3]].len();
    for _ in 0..3 {
        let r = svc
            .answer(&def, &ann, 0, &[1], None)
            .await
            .expect("duplicate");
        assert_eq!(r.reason, Some(AnswerReason::Duplicate));
        assert_eq!(r.score, 1000);
    }
    let marker = Event::new(&quiz, 1, EventKind::QuizEnded { top: vec![] });
    node.sink.publish(&marker).await.expect("marker");
    let marker_id = marker.event_id.clone();
    let seen = read_until(&node, Duration::from_secs(30), |seen| {
        seen.contains_key(&marker_id)
    })
    .await;
    assert!(seen.contains_key(&marker_id), "the marker never arrived");
    assert_eq!(
        seen[&wanted[3]].len(),
        before,
        "a duplicate of a delivered answer was written to Kafka again"
    );
    node.kafka.delete_topic(&node.topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_events_repaired_without_the_client() {
    repaired_without_the_client(redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_events_repaired_without_the_client() {
    repaired_without_the_client(memory()).await;
}

/// A create whose publish failed: the retry with the same Idempotency-Key
/// gets the same quiz (id and host token), and its `quiz_created` reaches
/// Kafka; the key with another definition is a conflict.
async fn create_retried_after_a_failed_publish(store: Arc<dyn QuizStore>) {
    let node = node(store).await;
    let svc = &node.svc;
    let key = testkit::unique_name("create-key");
    node.down(true);
    let e = svc
        .create_quiz_with_key(create_req("keyed"), Some(key.as_bytes()))
        .await
        .expect_err("create while down");
    assert_eq!(e.code(), "unavailable");
    node.down(false);
    let (first, token) = svc
        .create_quiz_with_key(create_req("keyed"), Some(key.as_bytes()))
        .await
        .expect("retried create");
    let (again, token_again) = svc
        .create_quiz_with_key(create_req("keyed"), Some(key.as_bytes()))
        .await
        .expect("second retry");
    assert_eq!(
        first.quiz_id, again.quiz_id,
        "a retry must find the same quiz"
    );
    assert_eq!(token, token_again);
    let e = svc
        .create_quiz_with_key(create_req("another title"), Some(key.as_bytes()))
        .await
        .expect_err("same key, other quiz");
    assert_eq!(e.code(), "conflict");
    let created = format!("{}:created", first.quiz_id);
    let seen = read_until(&node, Duration::from_secs(30), |seen| {
        seen.contains_key(&created)
    })
    .await;
    let records = seen.get(&created).expect("quiz_created reached Kafka");
    assert!(records.windows(2).all(|w| w[0] == w[1]), "{records:?}");
    node.kafka.delete_topic(&node.topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_create_retried_after_a_failed_publish() {
    create_retried_after_a_failed_publish(redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_create_retried_after_a_failed_publish() {
    create_retried_after_a_failed_publish(memory()).await;
}
