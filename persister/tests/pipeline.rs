//! In-process integration tests against the real Kafka and MongoDB
//! (FerretDB) of `deploy/local/stack up`.

mod common;

use std::sync::Arc;
use std::time::Duration;

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
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", testkit::unique_name("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&config.dlq_topic()])
        .expect("subscribe");
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
