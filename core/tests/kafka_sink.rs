//! `KafkaSink` against the local Kafka (`deploy/local/stack up`,
//! `QUIZ_KAFKA_BROKERS`, default `127.0.0.1:9092`). Each test produces to its
//! own fresh topic, so runs never see each other's records. Fails loudly when
//! Kafka is missing, never skips.
//!
//! The `EventSink` contract itself (durable on `Ok`, each quiz's order,
//! failures reported) is checked for every sink by
//! `event_sink_conformance.rs`; here: what is Kafka's own (the record's key,
//! headers and JSON, the producer queue's bound, SASL, librdkafka settings).

mod event_support;

use std::collections::HashMap;
use std::time::Duration;

use event_support::{answer_event, quiz_created, unreachable_kafka};
use quiz_core::events::kafka::{Compression, KafkaOptions, KafkaSink};
use quiz_core::events::{Event, EventError, EventSink};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};

fn brokers() -> String {
    std::env::var("QUIZ_KAFKA_BROKERS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".into())
}

/// Creates a fresh 3-partition topic; panics (loudly) if Kafka is not there.
async fn fresh_topic(name: &str) -> String {
    let topic = format!("test-{name}-{:08x}", rand::random::<u32>());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let res = tokio::time::timeout(
        Duration::from_secs(20),
        admin.create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &opts,
        ),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "Kafka at {} is required (deploy/local/stack up): timed out",
            brokers()
        )
    })
    .unwrap_or_else(|e| {
        panic!(
            "Kafka at {} is required (deploy/local/stack up): {e}",
            brokers()
        )
    });
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
    topic
}

fn sink(topic: &str) -> KafkaSink {
    KafkaSink::new(KafkaOptions {
        brokers: brokers(),
        topic: topic.to_string(),
        compression: Compression::Zstd,
        ..KafkaOptions::default()
    })
    .expect("sink")
}

struct Received {
    key: String,
    headers: HashMap<String, String>,
    event: Event,
}

/// Reads `n` records of `topic` from the beginning.
async fn consume(topic: &str, n: usize) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{topic}-check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        let msg = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} records arrived in 30 s", out.len()))
            .expect("recv");
        let key = String::from_utf8(msg.key().expect("key").to_vec()).expect("utf8 key");
        let mut headers = HashMap::new();
        if let Some(h) = msg.headers() {
            for hdr in h.iter() {
                let v = hdr.value.map(|v| String::from_utf8_lossy(v).into_owned());
                headers.insert(hdr.key.to_string(), v.unwrap_or_default());
            }
        }
        let event: Event = serde_json::from_slice(msg.payload().expect("payload")).expect("json");
        out.push(Received {
            key,
            headers,
            event,
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_round_trip_with_key_headers_and_json() {
    let topic = fresh_topic("roundtrip").await;
    let sink = sink(&topic);
    let quiz = format!("kq-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let created = quiz_created(&quiz, 1_700_000_000_000);
    let scored = answer_event(&quiz, 0);
    sink.publish(&created).await.expect("publish created");
    sink.publish(&scored).await.expect("publish scored");
    assert!(sink.ready());
    sink.flush(Duration::from_secs(5)).await.expect("flush");

    let got = consume(&topic, 2).await;
    for (r, want) in got.iter().zip([&created, &scored]) {
        assert_eq!(r.key, quiz);
        assert_eq!(&r.event, want);
        assert_eq!(r.headers.get("event_id"), Some(&want.event_id));
        assert_eq!(
            r.headers.get("type").map(String::as_str),
            Some(want.type_name())
        );
    }
    // The raw JSON is the documented flat record.
    let raw = serde_json::to_value(&scored).expect("json");
    assert_eq!(raw["type"], "answer_scored");
    assert_eq!(raw["event_id"], format!("{quiz}:answer:p0:0"));
    assert_eq!(raw["score_after"], 900);
    assert_eq!(raw["player_id"], "p0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_gives_backpressure_then_delivery_error() {
    // Nothing listens on 127.0.0.1:1: deliveries time out.
    let sink = std::sync::Arc::new(
        KafkaSink::new(KafkaOptions {
            max_buffered_messages: 1,
            ..unreachable_kafka()
        })
        .expect("sink"),
    );
    assert!(sink.ready());
    let first = {
        let sink = std::sync::Arc::clone(&sink);
        tokio::spawn(async move { sink.publish(&answer_event("kq-down", 0)).await })
    };
    // Let the first event take the only slot of the queue.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!sink.ready(), "queue at its bound: not ready");
    let started = std::time::Instant::now();
    match sink.publish(&answer_event("kq-down", 1)).await {
        Err(EventError::Backpressure) => {}
        other => panic!("expected Backpressure, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "backpressure is immediate"
    );
    match tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("bounded attempts")
        .expect("task")
    {
        Err(EventError::Delivery(_)) => {}
        other => panic!("expected Delivery error, got {other:?}"),
    }
    assert!(!sink.ready(), "failing deliveries: not ready");
}

fn sasl_brokers() -> String {
    testkit::Settings::from_env().kafka_sasl_brokers
}

/// Producer properties for the local stack's SASL/PLAIN listener.
fn sasl_properties(password: &str) -> Vec<(String, String)> {
    [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "PLAIN"),
        ("sasl.username", testkit::KAFKA_SASL_USER),
        ("sasl.password", password),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `kafka_properties` reach librdkafka: through an authenticating listener
/// (SASL/PLAIN, as managed Kafka services require) the events are
/// delivered, and read back through the plain listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_listener_delivers_with_the_right_credentials() {
    let topic = fresh_topic("sasl").await;
    let sink = KafkaSink::new(KafkaOptions {
        brokers: sasl_brokers(),
        topic: topic.clone(),
        properties: sasl_properties(testkit::KAFKA_SASL_PASSWORD),
        ..KafkaOptions::default()
    })
    .expect("sink");
    let quiz = format!("kq-{:06x}", rand::random::<u32>() & 0xff_ffff);
    for n in 0..3 {
        tokio::time::timeout(
            Duration::from_secs(20),
            sink.publish(&answer_event(&quiz, n)),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "Kafka's SASL listener at {} is required (deploy/local/stack up): timed out",
                sasl_brokers()
            )
        })
        .expect("delivered through SASL");
    }
    let got = consume(&topic, 3).await;
    assert!(got.iter().all(|r| r.key == quiz));
    assert!(sink.ready());
}

/// A wrong password is a delivery failure the sink reports (and `ready()`
/// turns false), never a silent drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_listener_refuses_a_wrong_password() {
    let sink = KafkaSink::new(KafkaOptions {
        brokers: sasl_brokers(),
        topic: "test-sasl-refused".into(),
        message_timeout_ms: 2_000,
        delivery_attempts: 1,
        unhealthy_after_failures: 1,
        properties: sasl_properties("not-the-password"),
        ..KafkaOptions::default()
    })
    .expect("sink");
    match tokio::time::timeout(
        Duration::from_secs(15),
        sink.publish(&answer_event("kq-sasl-bad", 0)),
    )
    .await
    .expect("a bounded failure")
    {
        Err(EventError::Delivery(_)) => {}
        other => panic!("expected a delivery error, got {other:?}"),
    }
    assert!(!sink.ready(), "failed authentication: not ready");
}

/// An unknown property fails at start-up with librdkafka's message naming it.
#[test]
fn unknown_property_fails_at_start_naming_it() {
    let err = KafkaSink::new(KafkaOptions {
        properties: vec![("no.such.property".into(), "1".into())],
        ..KafkaOptions::default()
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("no.such.property"), "{err}");
}
