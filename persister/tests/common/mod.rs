//! Shared helpers of the persister's integration tests: a generator of
//! realistic event streams with their expected end state, a producer, and the
//! checks of the contract's invariant against MongoDB.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use bson::{doc, Document};
use futures::future::join_all;
use futures::TryStreamExt;
use persister::Config;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;

/// One record to produce: key (quiz id) and JSON value.
#[derive(Clone, Debug)]
pub struct Rec {
    pub key: String,
    pub value: Vec<u8>,
}

/// A quiz's events, and what MongoDB must hold once they are persisted.
pub struct Scenario {
    pub quiz_id: String,
    pub records: Vec<Rec>,
    /// player id → sum of points.
    pub expected_scores: BTreeMap<String, i64>,
    pub answers: usize,
    pub players: usize,
}

fn rec(quiz: &str, value: serde_json::Value) -> Rec {
    Rec {
        key: quiz.to_string(),
        value: value.to_string().into_bytes(),
    }
}

/// A live quiz of `questions` questions and `players` players who all answer
/// every question; points vary per player and question (some late, some
/// wrong), so sums are not trivial.
pub fn scenario(quiz: &str, players: usize, questions: usize) -> Scenario {
    let mut records = Vec::new();
    let qs: Vec<serde_json::Value> = (0..questions)
        .map(|i| {
            json!({"id": i, "index": i, "text": format!("question {i}"), "options": ["a","b","c"],
                   "correct": [i % 3], "time_limit_ms": 20000, "points": 1000})
        })
        .collect();
    records.push(rec(
        quiz,
        json!({"v":1,"event_id":format!("{quiz}:created"),"type":"quiz_created","quiz_id":quiz,
               "at_ms":1000,"title":"T","mode":"live","questions":qs}),
    ));
    for p in 0..players {
        let pid = format!("p{p}");
        records.push(rec(
            quiz,
            json!({"v":1,"event_id":format!("{quiz}:joined:{pid}"),"type":"player_joined",
                   "quiz_id":quiz,"at_ms":1100 + p,"player_id":pid,"nickname":format!("nick {p}")}),
        ));
    }
    records.push(rec(
        quiz,
        json!({"v":1,"event_id":format!("{quiz}:started"),"type":"quiz_started","quiz_id":quiz,"at_ms":2000}),
    ));
    let mut expected_scores: BTreeMap<String, i64> =
        (0..players).map(|p| (format!("p{p}"), 0)).collect();
    let mut answers = 0;
    for q in 0..questions {
        let opens = 10_000 + 30_000 * q as i64;
        records.push(rec(
            quiz,
            json!({"v":1,"event_id":format!("{quiz}:question:{q}"),"type":"question_opened",
                   "quiz_id":quiz,"at_ms":opens,"question_id":q,"opens_at_ms":opens,"closes_at_ms":opens + 20000}),
        ));
        for p in 0..players {
            let pid = format!("p{p}");
            let correct = (p + q) % 4 != 0;
            let late = (p * 7 + q) % 11 == 0;
            let points = if correct && !late {
                1000 - ((p * 13 + q * 7) % 500) as i64
            } else {
                0
            };
            let total = expected_scores.entry(pid.clone()).or_insert(0);
            *total += points;
            answers += 1;
            records.push(rec(
                quiz,
                json!({"v":1,"event_id":format!("{quiz}:answer:{pid}:{q}"),"type":"answer_scored",
                       "quiz_id":quiz,"at_ms":opens + 1000,"player_id":pid,"nickname":format!("nick {p}"),
                       "question_id":q,"choices":[q % 3],"correct":correct,"late":late,"points":points,
                       "response_ms":1000,"answered_at_ms":opens + 1000,"score_after":*total}),
            ));
        }
    }
    records.push(rec(
        quiz,
        json!({"v":1,"event_id":format!("{quiz}:ended"),"type":"quiz_ended","quiz_id":quiz,
               "at_ms":10_000 + 30_000 * questions as i64,"top":[{"rank":1,"player_id":"p0","nickname":"nick 0","score":1}]}),
    ));
    Scenario {
        quiz_id: quiz.to_string(),
        records,
        expected_scores,
        answers,
        players,
    }
}

pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces every record and waits for all acknowledgements.
pub async fn produce(brokers: &str, topic: &str, records: &[Rec]) {
    let producer = producer(brokers);
    for chunk in records.chunks(5000) {
        let sends = chunk.iter().map(|r| {
            producer.send(
                FutureRecord::to(topic).key(&r.key).payload(&r.value),
                Duration::from_secs(30),
            )
        });
        for result in join_all(sends).await {
            result.expect("produced");
        }
    }
}

/// A config of the test's own: unique topic (created with `partitions`),
/// database and group; metrics on an ephemeral port; small batches.
pub async fn test_config(prefix: &str, partitions: i32) -> Config {
    let kafka = testkit::require_kafka().await;
    let settings = testkit::Settings::from_env();
    let topic = testkit::unique_topic(prefix);
    kafka.create_topic(&topic, partitions).await;
    let mut config = Config::default();
    config.kafka.brokers = settings.kafka_brokers;
    config.kafka.topic = topic;
    config.kafka.group_id = testkit::unique_name("g");
    config.kafka.statistics_interval_ms = 1000;
    config.kafka.session_timeout_ms = 6000;
    config.mongodb.uri = settings.mongodb_uri;
    config.mongodb.database = testkit::unique_db("persister");
    config.batch.max_events = 200;
    config.batch.max_wait_ms = 50;
    config.retry.max_backoff_ms = 1000;
    config.http.listen = "127.0.0.1:0".into();
    config.shutdown_grace_ms = 5000;
    config
}

pub async fn database(config: &Config) -> mongodb::Database {
    testkit::require_mongodb()
        .await
        .database(&config.mongodb.database)
}

pub async fn count(db: &mongodb::Database, collection: &str, filter: Document) -> u64 {
    db.collection::<Document>(collection)
        .count_documents(filter)
        .await
        .unwrap_or(0)
}

/// Every document of the four collections, sorted by `_id`.
pub async fn snapshot(db: &mongodb::Database) -> BTreeMap<String, Vec<Document>> {
    let mut out = BTreeMap::new();
    for name in persister::writes::COLLECTIONS {
        let mut docs: Vec<Document> = db
            .collection::<Document>(name)
            .find(doc! {})
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("collect");
        docs.sort_by(|a, b| {
            a.get_str("_id")
                .unwrap_or_default()
                .cmp(b.get_str("_id").unwrap_or_default())
        });
        out.insert(name.to_string(), docs);
    }
    out
}

/// True once the scenario is fully persisted.
pub async fn complete(db: &mongodb::Database, s: &Scenario) -> bool {
    count(db, "answers", doc! {"quiz_id": &s.quiz_id}).await == s.answers as u64
        && count(db, "players", doc! {"quiz_id": &s.quiz_id}).await == s.players as u64
        && count(db, "quizzes", doc! {"_id": &s.quiz_id, "state": "ended"}).await == 1
        && scores(db, &s.quiz_id).await == s.expected_scores
}

pub async fn scores(db: &mongodb::Database, quiz: &str) -> BTreeMap<String, i64> {
    let docs: Vec<Document> = db
        .collection::<Document>("scores")
        .find(doc! {"quiz_id": quiz})
        .await
        .expect("find scores")
        .try_collect()
        .await
        .expect("collect scores");
    docs.iter()
        .map(|d| {
            (
                d.get_str("player_id").unwrap_or_default().to_string(),
                int(d, "score"),
            )
        })
        .collect()
}

pub fn int(d: &Document, key: &str) -> i64 {
    match d.get(key) {
        Some(bson::Bson::Int64(v)) => *v,
        Some(bson::Bson::Int32(v)) => i64::from(*v),
        Some(bson::Bson::Double(v)) => *v as i64,
        _ => i64::MIN,
    }
}

/// The contract's invariant: for every player, scores.score = the sum of
/// their answers.points; and nothing is duplicated (one answer per
/// player and question by construction of `_id`, counted here).
pub async fn assert_invariant(db: &mongodb::Database, s: &Scenario) {
    let answers: Vec<Document> = db
        .collection::<Document>("answers")
        .find(doc! {"quiz_id": &s.quiz_id})
        .await
        .expect("find answers")
        .try_collect()
        .await
        .expect("collect answers");
    assert_eq!(answers.len(), s.answers, "answers of {}", s.quiz_id);
    let mut sums: BTreeMap<String, i64> =
        s.expected_scores.keys().map(|p| (p.clone(), 0)).collect();
    for a in &answers {
        *sums
            .entry(a.get_str("player_id").unwrap_or_default().to_string())
            .or_insert(0) += int(a, "points");
    }
    let scores = scores(db, &s.quiz_id).await;
    assert_eq!(
        scores, sums,
        "scores.score = sum(answers.points) for {}",
        s.quiz_id
    );
    assert_eq!(
        scores, s.expected_scores,
        "expected scores for {}",
        s.quiz_id
    );
}

pub async fn wait_complete(db: &mongodb::Database, s: &Scenario, timeout: Duration) {
    testkit::eventually(
        &format!("quiz {} persisted", s.quiz_id),
        timeout,
        || async { complete(db, s).await.then_some(()) },
    )
    .await;
}

/// GET a path of the persister's HTTP endpoint: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The value of an unlabelled metric in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

// ------------------------------------------ stopping a service of the stack

/// `deploy/local/stack` of this workspace (through symlinks: the script
/// finds its state beside its real path).
pub fn stack_path() -> std::path::PathBuf {
    let manifest = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    manifest.join("../deploy/local/stack")
}

/// `deploy/local/stack <verb> <service>`, panicking if it fails.
pub fn stack(verb: &str, service: &str) {
    let stack = stack_path();
    let status = std::process::Command::new(&stack)
        .args([verb, service])
        .status()
        .unwrap_or_else(|e| panic!("{} {verb} {service}: {e}", stack.display()));
    assert!(
        status.success(),
        "{} {verb} {service}: {status}",
        stack.display()
    );
}

/// Starts the service again however the test ends (a no-op when it runs),
/// so a failing outage test never leaves the shared stack broken.
pub struct RestartOnDrop(pub &'static str);

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new(stack_path())
            .args(["start", self.0])
            .status();
    }
}
