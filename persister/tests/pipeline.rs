//! In-process integration tests against the real Kafka and MongoDB
//! (FerretDB) of `deploy/local/stack up`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::doc;
use common::*;
use persister::store::mongo::MongoStore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_kind_lands() {
    let config = test_config("kinds", 3).await;
    let s = scenario(&testkit::unique_quiz_id(), 5, 4);
    produce(&config.kafka.brokers, &config.kafka.topic, &s.records).await;

    let shutdown = CancellationToken::new();
    let running = persister::start(config.clone(), shutdown.clone())
        .await
        .expect("start");
    let _stop = shutdown.clone().drop_guard();
    let db = database(&config).await;
    wait_complete(&db, &s, WAIT).await;
    assert_invariant(&db, &s).await;

    let quiz = db
        .collection::<bson::Document>("quizzes")
        .find_one(doc! {"_id": &s.quiz_id})
        .await
        .expect("find")
        .expect("quiz document");
    assert_eq!(quiz.get_str("title").ok(), Some("T"));
    assert_eq!(quiz.get_str("mode").ok(), Some("live"));
    assert_eq!(quiz.get_str("state").ok(), Some("ended"));
    assert_eq!(int(&quiz, "question_count"), 4);
    assert_eq!(quiz.get_array("questions").map(|a| a.len()).ok(), Some(4));
    assert_eq!(int(&quiz, "created_at_ms"), 1000);
    assert_eq!(int(&quiz, "started_at_ms"), 2000);
    assert_eq!(int(&quiz, "current_question"), 3);
    assert!(quiz.get_document("question_windows").is_ok(), "{quiz}");
    assert_eq!(quiz.get_array("final_top").map(|a| a.len()).ok(), Some(1));

    let player = db
        .collection::<bson::Document>("players")
        .find_one(doc! {"_id": format!("{}:p1", s.quiz_id)})
        .await
        .expect("find")
        .expect("player document");
    assert_eq!(player.get_str("nickname").ok(), Some("nick 1"));
    assert_eq!(int(&player, "joined_at_ms"), 1101);

    let answer = db
        .collection::<bson::Document>("answers")
        .find_one(doc! {"_id": format!("{}:p1:2", s.quiz_id)})
        .await
        .expect("find")
        .expect("answer document");
    for key in [
        "points",
        "answered_at_ms",
        "response_ms",
        "score_after",
        "question_id",
    ] {
        assert!(answer.contains_key(key), "answers.{key} in {answer}");
    }
    assert!(answer.get_bool("correct").is_ok());
    let score = db
        .collection::<bson::Document>("scores")
        .find_one(doc! {"_id": format!("{}:p1", s.quiz_id)})
        .await
        .expect("find")
        .expect("score document");
    assert_eq!(score.get_str("nickname").ok(), Some("nick 1"));

    let (status, _) = http_get(running.http_addr.expect("http"), "/readyz")
        .await
        .expect("readyz");
    assert_eq!(status, 200);
    let (_, page) = http_get(running.http_addr.expect("http"), "/metrics")
        .await
        .expect("metrics");
    assert_eq!(
        metric(&page, "persister_events_persisted_total"),
        Some(s.records.len() as f64)
    );
    shutdown.cancel();
    running.wait().await.expect("clean stop");
}

/// `w=majority` in `mongodb.uri` is sent with every write command (the
/// driver's `run_command` does not add the client's write concern itself),
/// and the server accepts it: the events land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_write_concern_in_the_uri_is_used_and_accepted() {
    let mut config = test_config("write-concern", 1).await;
    let separator = if config.mongodb.uri.contains('?') {
        '&'
    } else {
        '?'
    };
    config.mongodb.uri = format!(
        "{}{separator}w=majority&wtimeoutMS=10000",
        config.mongodb.uri
    );
    let store = persister::store::mongo::MongoStore::from_config(&config)
        .await
        .expect("store");
    assert_eq!(
        store
            .update_command("scores", Vec::new())
            .get_document("writeConcern")
            .ok()
            .and_then(|wc| wc.get_str("w").ok()),
        Some("majority")
    );
    let s = scenario(&testkit::unique_quiz_id(), 3, 2);
    produce(&config.kafka.brokers, &config.kafka.topic, &s.records).await;
    let shutdown = CancellationToken::new();
    let running = persister::start(config.clone(), shutdown.clone())
        .await
        .expect("start");
    let _stop = shutdown.clone().drop_guard();
    let db = database(&config).await;
    wait_complete(&db, &s, WAIT).await;
    assert_invariant(&db, &s).await;
    assert_eq!(running.metrics.dead_lettered_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_replayed_events_change_nothing() {
    let config = test_config("redeliver", 3).await;
    let s = scenario(&testkit::unique_quiz_id(), 8, 5);
    produce(&config.kafka.brokers, &config.kafka.topic, &s.records).await;

    let shutdown = CancellationToken::new();
    let running = persister::start(config.clone(), shutdown.clone())
        .await
        .expect("start");
    let _stop = shutdown.clone().drop_guard();
    let db = database(&config).await;
    wait_complete(&db, &s, WAIT).await;
    let before = snapshot(&db).await;

    // The same events delivered again, in the same and in reverse order.
    produce(&config.kafka.brokers, &config.kafka.topic, &s.records).await;
    let mut reversed = s.records.clone();
    reversed.reverse();
    produce(&config.kafka.brokers, &config.kafka.topic, &reversed).await;
    testkit::eventually("three copies consumed", WAIT, || async {
        (running.metrics.events_persisted.get() == 3 * s.records.len() as u64).then_some(())
    })
    .await;
    assert_eq!(snapshot(&db).await, before, "redelivery changed the state");
    assert_invariant(&db, &s).await;
    shutdown.cancel();
    running.wait().await.expect("clean stop");

    // A second consumer group reads the whole topic again from the start.
    let mut again = config.clone();
    again.kafka.group_id = testkit::unique_name("g2");
    let shutdown = CancellationToken::new();
    let running = persister::start(again, shutdown.clone())
        .await
        .expect("start");
    let _stop = shutdown.clone().drop_guard();
    testkit::eventually("the topic re-read", WAIT, || async {
        (running.metrics.events_persisted.get() == 3 * s.records.len() as u64).then_some(())
    })
    .await;
    assert_eq!(
        snapshot(&db).await,
        before,
        "a replayed log changed the state"
    );
    shutdown.cancel();
    running.wait().await.expect("clean stop");

    // `replay` rebuilds a damaged quiz from the topic alone.
    db.collection::<bson::Document>("scores")
        .update_many(
            doc! {"quiz_id": &s.quiz_id},
            doc! {"$set": {"score": 0_i64}},
        )
        .await
        .expect("damage");
    db.collection::<bson::Document>("answers")
        .delete_many(doc! {"quiz_id": &s.quiz_id})
        .await
        .expect("damage");
    let store = MongoStore::from_config(&config).await.expect("store");
    let report = persister::replay::replay(&config, Arc::new(store), Some(&s.quiz_id))
        .await
        .expect("replay");
    assert_eq!(report.applied, 3 * s.records.len() as u64);
    assert_eq!(
        snapshot(&db).await,
        before,
        "replay did not rebuild the state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_dead_lettered_and_the_rest_flows() {
    let config = test_config("poison", 2).await;
    let s = scenario(&testkit::unique_quiz_id(), 4, 3);
    let q = s.quiz_id.clone();
    let poison = [
        b"this is not json".to_vec(),
        format!(r#"{{"v":1,"event_id":"{q}:x","type":"quiz_exploded","quiz_id":"{q}","at_ms":1}}"#)
            .into_bytes(),
        format!(r#"{{"v":1,"event_id":"{q}:joined:zz","type":"player_joined","quiz_id":"{q}","at_ms":1,"player_id":"zz"}}"#)
            .into_bytes(),
    ];
    let mut records = s.records.clone();
    for (i, p) in poison.iter().enumerate() {
        records.insert(
            3 + i * 5,
            Rec {
                key: q.clone(),
                value: p.clone(),
            },
        );
    }
    produce(&config.kafka.brokers, &config.kafka.topic, &records).await;

    let shutdown = CancellationToken::new();
    let running = persister::start(config.clone(), shutdown.clone())
        .await
        .expect("start");
    let _stop = shutdown.clone().drop_guard();
    let db = database(&config).await;
    wait_complete(&db, &s, WAIT).await;
    assert_invariant(&db, &s).await;
    testkit::eventually("3 dead-lettered", WAIT, || async {
        (running.metrics.dead_lettered_total() == 3).then_some(())
    })
    .await;

    // The dead-letter topic holds the three records, unchanged, with reasons.
    let consumer = dlq_reader(&config);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while seen.len() < 3 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m.headers().expect("headers");
            let get = |k: &str| {
                headers
                    .iter()
                    .find(|h| h.key == k)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).to_string())
            };
            assert_eq!(
                get("dlq_original_topic").as_deref(),
                Some(config.kafka.topic.as_str())
            );
            assert!(get("dlq_original_offset").is_some());
            assert!(get("dlq_original_partition").is_some());
            assert!(get("dlq_reason").is_some());
            seen.push((
                get("dlq_reason_kind").unwrap_or_default(),
                m.payload().map(<[u8]>::to_vec),
            ));
        }
    }
    seen.sort();
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["invalid", "unknown_type", "unparsable"]);
    for (_, payload) in &seen {
        assert!(
            poison.iter().any(|p| Some(p) == payload.as_ref()),
            "payload kept"
        );
    }
    shutdown.cancel();
    running.wait().await.expect("clean stop");
}

/// MongoDB refusing one statement for its content: the in-memory store
/// rejects the `quizzes` statement that carries question 1's window, which
/// the batch folded together with every other quiz event. `write_batch`
/// isolates the culprit, the pipeline dead-letters it (`rejected_by_mongodb`,
/// original bytes), writes the rest of the batch and commits its offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_rejected_by_mongodb_dead_letters_only_its_event() {
    use persister::store::memory::MemoryStore;
    use persister::store::Store;
    use rdkafka::{Offset, TopicPartitionList};

    // One partition and a generous time bound, so the whole topic is one batch.
    let mut config = test_config("rejected", 1).await;
    config.batch.max_events = 1000;
    config.batch.max_wait_ms = 2000;
    let s = scenario(&testkit::unique_quiz_id(), 4, 3);
    let culprit = s
        .records
        .iter()
        .position(|r| {
            String::from_utf8_lossy(&r.value).contains(&format!("\"{}:question:1\"", s.quiz_id))
        })
        .expect("question 1 is opened");
    produce(&config.kafka.brokers, &config.kafka.topic, &s.records).await;

    let store = Arc::new(MemoryStore::rejecting(|collection, upsert| {
        (collection == "quizzes" && upsert.set.contains_key("question_windows.1"))
            .then(|| "simulated: document failed validation".to_string())
    }));
    let shutdown = CancellationToken::new();
    let running = persister::start_with_store(
        config.clone(),
        store.clone() as Arc<dyn Store>,
        shutdown.clone(),
    )
    .await
    .expect("start");
    let _stop = shutdown.clone().drop_guard();
    let total = s.records.len() as u64;
    testkit::eventually("the batch written", WAIT, || async {
        (running.metrics.events_persisted.get() + running.metrics.dead_lettered_total() == total)
            .then_some(())
    })
    .await;
    assert_eq!(running.metrics.events_persisted.get(), total - 1);
    assert_eq!(
        running
            .metrics
            .dead_lettered
            .with_label_values(&["rejected_by_mongodb"])
            .get(),
        1
    );
    assert_eq!(running.metrics.dead_lettered_total(), 1);
    assert_eq!(
        running.metrics.batch_size.get_sample_count(),
        1,
        "one batch"
    );
    assert_eq!(running.metrics.batch_size.get_sample_sum(), total as f64);

    // Offsets: the group's committed position is the end of the partition.
    let reader: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let topic = config.kafka.topic.clone();
    testkit::eventually("offsets committed", WAIT, || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, 0);
        let committed = reader
            .committed_offsets(tpl, Duration::from_secs(5))
            .ok()
            .and_then(|c| c.find_partition(&topic, 0).map(|p| p.offset()));
        async move { (committed == Some(Offset::Offset(total as i64))).then_some(()) }
    })
    .await;

    // The rest of the batch is written: every answer, player and score, the
    // invariant, and the quiz with every question window but the rejected one.
    let data = store.snapshot();
    let quiz_docs: Vec<_> = data
        .get("quizzes")
        .map(|d| d.values().collect())
        .unwrap_or_default();
    assert_eq!(quiz_docs.len(), 1);
    let quiz = quiz_docs[0];
    assert_eq!(quiz.get_str("state").ok(), Some("ended"), "{quiz}");
    assert_eq!(quiz.get_str("title").ok(), Some("T"));
    assert_eq!(int(quiz, "question_count"), 3);
    assert_eq!(int(quiz, "started_at_ms"), 2000);
    assert_eq!(quiz.get_array("final_top").map(|a| a.len()).ok(), Some(1));
    let windows = quiz.get_document("question_windows").expect("windows");
    let mut keys: Vec<&str> = windows.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["0", "2"], "only question 1's window is missing");
    let of_quiz = |c: &str| -> Vec<bson::Document> {
        data.get(c)
            .map(|d| {
                d.values()
                    .filter(|d| d.get_str("quiz_id").ok() == Some(s.quiz_id.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(of_quiz("players").len(), s.players);
    let answers = of_quiz("answers");
    assert_eq!(answers.len(), s.answers);
    let mut sums: std::collections::BTreeMap<String, i64> =
        s.expected_scores.keys().map(|p| (p.clone(), 0)).collect();
    for a in &answers {
        *sums
            .entry(a.get_str("player_id").unwrap_or_default().to_string())
            .or_insert(0) += int(a, "points");
    }
    let scores: std::collections::BTreeMap<String, i64> = of_quiz("scores")
        .iter()
        .map(|d| {
            (
                d.get_str("player_id").unwrap_or_default().to_string(),
                int(d, "score"),
            )
        })
        .collect();
    assert_eq!(scores, sums, "scores.score = sum(answers.points)");
    assert_eq!(scores, s.expected_scores);

    // The dead-letter topic holds the culprit, unchanged, with its reason.
    let consumer = dlq_reader(&config);
    let mut seen = Vec::new();
    // Read until the copy arrives, then a little longer to see no other.
    let deadline = std::time::Instant::now() + WAIT;
    let mut quiet_until: Option<std::time::Instant> = None;
    while std::time::Instant::now() < deadline
        && quiet_until.is_none_or(|t| std::time::Instant::now() < t)
    {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m.headers().expect("headers");
            let get = |k: &str| {
                headers
                    .iter()
                    .find(|h| h.key == k)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).to_string())
            };
            seen.push((
                get("dlq_reason_kind"),
                get("dlq_reason"),
                get("dlq_original_topic"),
                get("dlq_original_partition"),
                get("dlq_original_offset"),
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
            ));
            quiet_until.get_or_insert(std::time::Instant::now() + Duration::from_secs(2));
        }
    }
    assert_eq!(seen.len(), 1, "exactly one dead-lettered record");
    let (kind, reason, topic, partition, offset, key, payload) = &seen[0];
    assert_eq!(kind.as_deref(), Some("rejected_by_mongodb"));
    let reason = reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("rejected by MongoDB") && reason.contains("failed validation"),
        "{reason}"
    );
    assert_eq!(topic.as_deref(), Some(config.kafka.topic.as_str()));
    assert_eq!(partition.as_deref(), Some("0"));
    assert_eq!(offset.as_deref(), Some(culprit.to_string().as_str()));
    assert_eq!(key.as_deref(), Some(s.quiz_id.as_bytes()));
    assert_eq!(
        payload.as_deref(),
        Some(s.records[culprit].value.as_slice())
    );
    shutdown.cancel();
    running.wait().await.expect("clean stop");
}

/// A consumer of `config`'s dead-letter topic from its beginning.
fn dlq_reader(config: &persister::config::Config) -> BaseConsumer {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", testkit::unique_name("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&config.dlq_topic()])
        .expect("subscribe");
    consumer
}

/// Points `config` at the local stack's SASL/PLAIN listener, as an
/// operator would: properties in the file, the password from the Secret.
fn use_sasl_listener(config: &mut persister::config::Config, password: &str) {
    config.kafka.brokers = testkit::Settings::from_env().kafka_sasl_brokers;
    for (k, v) in [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "PLAIN"),
        ("sasl.username", testkit::KAFKA_SASL_USER),
    ] {
        config.kafka.properties.insert(k.into(), v.into());
    }
    config.kafka.sasl_password = password.into();
}

/// The Kafka security settings reach every client of the persister: with
/// the brokers set to the local stack's SASL/PLAIN listener and the
/// credentials in `kafka.properties` + the password field (what
/// `QUIZ_KAFKA_SASL_PASSWORD` fills), the events land in MongoDB and the
/// dead-letter topic is created through the same authenticated connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_through_a_sasl_listener() {
    let mut config = test_config("sasl", 2).await;
    let s = scenario(&testkit::unique_quiz_id(), 3, 2);
    produce(&config.kafka.brokers, &config.kafka.topic, &s.records).await;

    use_sasl_listener(&mut config, testkit::KAFKA_SASL_PASSWORD);
    config.kafka.create_dlq_topic = true;
    config.validate().expect("valid");

    let shutdown = CancellationToken::new();
    let running = persister::start(config.clone(), shutdown.clone())
        .await
        .expect("start");
    let _stop = shutdown.clone().drop_guard();
    let db = database(&config).await;
    wait_complete(&db, &s, WAIT).await;
    assert_invariant(&db, &s).await;
    shutdown.cancel();
    running.wait().await.expect("clean stop");
}

/// A wrong password never consumes (so never commits) anything: the
/// persister does not get a batch while authentication fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sasl_password_consumes_nothing() {
    let mut config = test_config("sasl-bad", 1).await;
    let s = scenario(&testkit::unique_quiz_id(), 2, 1);
    produce(&config.kafka.brokers, &config.kafka.topic, &s.records).await;
    use_sasl_listener(&mut config, "not-the-password");
    let shutdown = CancellationToken::new();
    let running = persister::start(config.clone(), shutdown.clone())
        .await
        .expect("start");
    let _stop = shutdown.clone().drop_guard();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let db = database(&config).await;
    assert_eq!(
        count(&db, "answers", doc! {}).await + count(&db, "players", doc! {}).await,
        0,
        "nothing may be persisted without authentication ({} events wait)",
        s.records.len()
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), running.wait()).await;
}

/// FerretDB 1.24 holds one backend connection for every statement of an
/// `update` command that matched an existing document until the command ends,
/// so a command with more such statements than its pool (SQLite: 100,
/// PostgreSQL: `pool_max_conns`, 50 by default, 200 in the local stack) waits
/// for itself forever and wedges every later command: the hang behind
/// `mongodb.max_statements_per_command` (measured on the local stack: 100
/// answer, 1000 never do). Commands of the persister's default size and of
/// 100 statements of its shape (upserts by `_id`, `ordered: false`,
/// `$setOnInsert`, `$max`, `$set`) answer when they insert every document and
/// when they modify every one of them, and the database answers afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_commands_of_default_and_100_statements_modifying_documents_answer() {
    let db = testkit::require_mongodb()
        .await
        .database(&testkit::unique_db("persister_big"));
    let default = persister::Config::default()
        .mongodb
        .max_statements_per_command;
    for n in [default, 100] {
        let collection = format!("big{n}");
        for round in 0..3i64 {
            let updates: Vec<bson::Bson> = (0..n)
                .map(|i| {
                    bson::Bson::Document(doc! {
                        "q": { "_id": format!("doc-{i}") },
                        "u": {
                            "$setOnInsert": { "n": i as i64 },
                            "$max": { "round": round },
                            "$set": { "last": round },
                        },
                        "upsert": true,
                    })
                })
                .collect();
            let command = doc! { "update": &collection, "updates": updates, "ordered": false };
            let t0 = Instant::now();
            let reply = tokio::time::timeout(Duration::from_secs(60), db.run_command(command))
                .await
                .unwrap_or_else(|_| {
                    panic!("an update of {n} statements (round {round}) did not answer in 60 s")
                })
                .expect("update");
            eprintln!(
                "update of {n} statements, round {round}: {:?}",
                t0.elapsed()
            );
            assert!(reply.get("writeErrors").is_none(), "{reply}");
            assert_eq!(int(&reply, "n"), n as i64, "{reply}");
            let modified = if round == 0 { 0 } else { n as i64 };
            assert_eq!(int(&reply, "nModified"), modified, "{reply}");
        }
        assert_eq!(count(&db, &collection, doc! { "round": 2 }).await, n as u64);
    }
    tokio::time::timeout(Duration::from_secs(10), db.run_command(doc! { "ping": 1 }))
        .await
        .expect("a ping after the large commands answers")
        .expect("ping");
}
