//! The `EventSink` conformance suite: one set of checks of the trait's
//! contract (`core/src/events.rs`), run against every implementation: the
//! embedded `FileSink` and `KafkaSink` on the local Kafka from
//! `deploy/local/stack up` (`QUIZ_KAFKA_BROKERS`, default `127.0.0.1:9092`).
//!
//! Each check gets a fresh sink with its own log (a new file, a new
//! 3-partition topic) and reads back what the sink made durable: the file's
//! lines, or a consumer of the topic from its beginning. The Kafka half fails
//! loudly when Kafka is missing, it never skips.
//!
//! What the contract promises, and the check that holds each sink to it:
//! - `publish` is `Ok` only once the event is durable: the log holds every
//!   acknowledged event, unchanged, with no flush in between
//!   (`ok_means_durable`);
//! - events of one quiz published from one task keep their order, with
//!   many tasks publishing at once, and none is lost
//!   (`each_quizs_order_under_concurrent_publishers`);
//! - publishing the same event twice is allowed (`same_event_twice_is_allowed`);
//! - `ready` is true and `flush` succeeds on a healthy sink
//!   (`healthy_sink_is_ready_and_flushes`);
//! - `Err` means "not durable, do not acknowledge", and a sink that cannot
//!   deliver says so: `publish` fails (in bounded time) and `ready` turns
//!   false, never an `Ok` for an event that went nowhere
//!   (`failure_is_an_error_never_a_silent_drop`, on a sink whose log
//!   cannot be written: `/dev/full`, a broker address nobody listens on).

mod event_support;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use event_support::{answer_event, quiz_created, unreachable_kafka};
use quiz_core::events::file::FileSink;
use quiz_core::events::kafka::{KafkaOptions, KafkaSink};
use quiz_core::events::{Event, EventKind, EventSink};
use quiz_core::model::LeaderboardEntry;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;

/// How long a consumer may take to see what the broker acknowledged.
const READ_BACK: Duration = Duration::from_secs(30);

/// A sink under test, with the way to read back its log.
struct Under {
    sink: Arc<dyn EventSink>,
    log: Log,
}

enum Log {
    File(PathBuf),
    Kafka {
        kafka: testkit::Kafka,
        topic: String,
    },
}

impl Under {
    /// The log's events, in the log's order (file: line order; Kafka: each
    /// partition's order, so each quiz's). A file is read once, as it is now:
    /// what `publish` acknowledged must already be there. A topic is read
    /// until every id of `want` has appeared, for up to [`READ_BACK`].
    async fn read_back(&self, want: &HashSet<String>) -> Vec<Event> {
        match &self.log {
            Log::File(path) => std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
                .collect(),
            Log::Kafka { kafka, topic } => consume(kafka, topic, want).await,
        }
    }

    async fn cleanup(self) {
        drop(self.sink);
        match self.log {
            Log::File(path) => {
                let _ = std::fs::remove_file(&path);
                if let Some(dir) = path.parent() {
                    let _ = std::fs::remove_dir(dir);
                }
            }
            Log::Kafka { kafka, topic } => kafka.delete_topic(&topic).await,
        }
    }
}

async fn consume(kafka: &testkit::Kafka, topic: &str, want: &HashSet<String>) -> Vec<Event> {
    let consumer: StreamConsumer = kafka
        .config()
        .set("group.id", testkit::unique_name("sink-conformance"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out: Vec<Event> = Vec::new();
    let mut missing = want.clone();
    let deadline = tokio::time::Instant::now() + READ_BACK;
    while !missing.is_empty() {
        let Ok(msg) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        let msg = msg.expect("recv");
        let event: Event = serde_json::from_slice(msg.payload().expect("payload")).expect("json");
        missing.remove(&event.event_id);
        out.push(event);
    }
    out
}

// ---- factories ----

async fn file() -> Under {
    let dir = std::env::temp_dir().join(testkit::unique_name("sink-conformance"));
    let path = dir.join("events.jsonl");
    let sink = FileSink::open(&path).await.expect("open the event file");
    Under {
        sink: Arc::new(sink),
        log: Log::File(path),
    }
}

async fn kafka() -> Under {
    let kafka = testkit::require_kafka().await;
    let topic = testkit::unique_topic("sink-conformance");
    kafka.create_topic(&topic, 3).await;
    let sink = KafkaSink::new(KafkaOptions {
        brokers: kafka.brokers.clone(),
        topic: topic.clone(),
        ..KafkaOptions::default()
    })
    .expect("sink");
    Under {
        sink: Arc::new(sink),
        log: Log::Kafka { kafka, topic },
    }
}

/// A file sink whose every write fails (`ENOSPC`).
async fn broken_file() -> Arc<dyn EventSink> {
    Arc::new(FileSink::open("/dev/full").await.expect("open /dev/full"))
}

/// A Kafka sink whose brokers never answer (nothing listens on port 1), with
/// short timeouts so the failure comes quickly.
async fn broken_kafka() -> Arc<dyn EventSink> {
    Arc::new(KafkaSink::new(unreachable_kafka()).expect("sink"))
}

// ---- events ----

fn quiz_id(name: &str) -> String {
    testkit::unique_name(name)
}

/// One event of every kind, in the order a quiz produces them.
fn every_kind(quiz: &str) -> Vec<Event> {
    let at = 1_700_000_000_000;
    vec![
        quiz_created(quiz, at),
        Event::new(
            quiz,
            at + 1,
            EventKind::PlayerJoined {
                player_id: "p0".into(),
                nickname: "Zoë 🦀".into(),
            },
        ),
        Event::new(quiz, at + 2, EventKind::QuizStarted),
        Event::new(
            quiz,
            at + 3,
            EventKind::QuestionOpened {
                question_id: 0,
                opens_at_ms: at + 3,
                closes_at_ms: at + 20_003,
            },
        ),
        answer_event(quiz, 0),
        Event::new(
            quiz,
            at + 5,
            EventKind::QuizEnded {
                top: vec![LeaderboardEntry {
                    rank: 1,
                    player_id: "p0".into(),
                    nickname: "Zoë 🦀".into(),
                    score: 900,
                }],
            },
        ),
    ]
}

fn ids(events: &[Event]) -> HashSet<String> {
    events.iter().map(|e| e.event_id.clone()).collect()
}

/// `events` without repeats of an `event_id` (consumers deduplicate on it,
/// so the contract allows them), first occurrence kept.
fn deduplicated(events: &[Event]) -> Vec<&Event> {
    let mut seen = HashSet::new();
    events
        .iter()
        .filter(|e| seen.insert(e.event_id.as_str()))
        .collect()
}

/// The checks, each a generic async fn over a sink under test.
mod suite {
    use super::*;

    pub async fn ok_means_durable(under: &Under) {
        let quiz = quiz_id("durable");
        let events = every_kind(&quiz);
        for e in &events {
            under.sink.publish(e).await.expect("publish");
        }
        // No flush: an `Ok` alone promises the event is in the log.
        let got = under.read_back(&ids(&events)).await;
        let got: Vec<&Event> = deduplicated(&got)
            .into_iter()
            .filter(|e| e.quiz_id == quiz)
            .collect();
        let want: Vec<&Event> = events.iter().collect();
        assert_eq!(
            got, want,
            "the log holds every acknowledged event, as published"
        );
    }

    pub async fn each_quizs_order_under_concurrent_publishers(under: &Under) {
        const QUIZZES: usize = 4;
        const PER_QUIZ: u32 = 40;
        let quizzes: Vec<String> = (0..QUIZZES).map(|_| quiz_id("order")).collect();
        // One task per quiz publishing in sequence (the contract's unit of
        // order), all quizzes at once.
        let tasks: Vec<_> = quizzes
            .iter()
            .cloned()
            .map(|q| {
                let sink = Arc::clone(&under.sink);
                tokio::spawn(async move {
                    for n in 0..PER_QUIZ {
                        sink.publish(&answer_event(&q, n)).await.expect("publish");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("publishing task");
        }
        let published: Vec<Event> = quizzes
            .iter()
            .flat_map(|q| (0..PER_QUIZ).map(move |n| answer_event(q, n)))
            .collect();
        let got = under.read_back(&ids(&published)).await;
        let mut per_quiz: HashMap<&str, Vec<&Event>> = HashMap::new();
        for e in deduplicated(&got) {
            per_quiz.entry(e.quiz_id.as_str()).or_default().push(e);
        }
        for q in &quizzes {
            let want: Vec<Event> = (0..PER_QUIZ).map(|n| answer_event(q, n)).collect();
            let want: Vec<&Event> = want.iter().collect();
            let seen = per_quiz.get(q.as_str()).cloned().unwrap_or_default();
            assert_eq!(
                seen.len(),
                want.len(),
                "every event of {q} is in the log, none other"
            );
            assert_eq!(
                seen, want,
                "{q}'s events in the order its task published them"
            );
        }
    }

    pub async fn same_event_twice_is_allowed(under: &Under) {
        let quiz = quiz_id("twice");
        let first = answer_event(&quiz, 0);
        let next = answer_event(&quiz, 1);
        under.sink.publish(&first).await.expect("first publish");
        under
            .sink
            .publish(&first)
            .await
            .expect("the same event again");
        under.sink.publish(&next).await.expect("the next event");
        let got = under.read_back(&ids(&[first.clone(), next.clone()])).await;
        let mine: Vec<&Event> = got.iter().filter(|e| e.quiz_id == quiz).collect();
        let copies = mine.iter().filter(|e| **e == &first).count();
        assert!(
            (1..=2).contains(&copies),
            "the twice-published event is in the log once or twice, got {copies}"
        );
        let deduped: Vec<&Event> = deduplicated(&got)
            .into_iter()
            .filter(|e| e.quiz_id == quiz)
            .collect();
        assert_eq!(
            deduped,
            vec![&first, &next],
            "deduplicated on event_id, in order"
        );
    }

    pub async fn healthy_sink_is_ready_and_flushes(under: &Under) {
        assert!(under.sink.ready(), "a fresh sink on a healthy log is ready");
        let quiz = quiz_id("flush");
        let events: Vec<Event> = (0..20).map(|n| answer_event(&quiz, n)).collect();
        let tasks: Vec<_> = events
            .iter()
            .cloned()
            .map(|e| {
                let sink = Arc::clone(&under.sink);
                tokio::spawn(async move { sink.publish(&e).await })
            })
            .collect();
        under
            .sink
            .flush(Duration::from_secs(10))
            .await
            .expect("flush on a healthy sink");
        for t in tasks {
            t.await.expect("task").expect("publish");
        }
        under
            .sink
            .flush(Duration::from_secs(10))
            .await
            .expect("flush with nothing pending");
        let got = under.read_back(&ids(&events)).await;
        let got_ids: HashSet<String> = got
            .iter()
            .filter(|e| e.quiz_id == quiz)
            .map(|e| e.event_id.clone())
            .collect();
        assert_eq!(got_ids, ids(&events), "every published event is in the log");
        assert!(under.sink.ready(), "still ready after the burst");
    }

    pub async fn failure_is_an_error_never_a_silent_drop(sink: Arc<dyn EventSink>) {
        let e = answer_event(&quiz_id("broken"), 0);
        let outcome = tokio::time::timeout(Duration::from_secs(20), sink.publish(&e))
            .await
            .expect("a failing publish ends in bounded time");
        assert!(
            outcome.is_err(),
            "publish to a log that cannot be written must fail, got {outcome:?}"
        );
        assert!(
            !sink.ready(),
            "a sink that just failed to deliver is not ready"
        );
    }
}

/// Instantiates every check of the suite for one sink factory and the
/// factory of the same kind of sink on a log it cannot write.
macro_rules! conformance {
    ($name:ident, $factory:path, $broken:path) => {
        mod $name {
            use super::*;

            macro_rules! check {
                ($t:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $t() {
                        let under = $factory().await;
                        suite::$t(&under).await;
                        under.cleanup().await;
                    }
                };
            }

            check!(ok_means_durable);
            check!(each_quizs_order_under_concurrent_publishers);
            check!(same_event_twice_is_allowed);
            check!(healthy_sink_is_ready_and_flushes);

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failure_is_an_error_never_a_silent_drop() {
                suite::failure_is_an_error_never_a_silent_drop($broken().await).await;
            }
        }
    };
}

conformance!(file_sink, file, broken_file);
conformance!(kafka_sink, kafka, broken_kafka);
