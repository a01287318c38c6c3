//! The `Store` contract (`persister/src/store.rs`), checked the same way on
//! every implementation: the in-memory model and MongoDB (FerretDB on the
//! local stack). Each check runs on a fresh store and then compares what
//! the two implementations hold, so the model the pipeline tests rely on
//! cannot drift from the real database.
//!
//! What the contract promises and what is checked:
//! - `ensure_schema` is idempotent;
//! - a batch applied once holds the contract's invariant (a player's score
//!   is the sum of their answers' points, one answer per player and
//!   question);
//! - applying a batch again changes nothing (redelivery after a crash);
//! - the final state does not depend on the order batches arrive in
//!   (partitions and retries reorder them);
//! - `clear(Some(quiz))` removes that quiz only, `clear(None)` everything;
//! - `ping` answers while the store is up.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bson::Document;
use common::*;
use futures::TryStreamExt;
use persister::event::Event;
use persister::store::memory::MemoryStore;
use persister::store::mongo::MongoStore;
use persister::store::{write_batch, BatchEvent, Store};
use persister::writes::COLLECTIONS;

/// Every document by collection and `_id`, `_id` itself left out.
type Contents = BTreeMap<String, BTreeMap<String, Document>>;

/// One implementation under test and a way to read back what it holds.
enum Subject {
    Memory(Arc<MemoryStore>),
    Mongo(Arc<MongoStore>),
}

impl Subject {
    fn store(&self) -> Arc<dyn Store> {
        match self {
            Subject::Memory(s) => s.clone(),
            Subject::Mongo(s) => s.clone(),
        }
    }

    async fn contents(&self) -> Contents {
        let mut out = Contents::new();
        for name in COLLECTIONS {
            let docs: Vec<Document> = match self {
                Subject::Memory(s) => s
                    .snapshot()
                    .get(name)
                    .map(|c| c.values().cloned().collect())
                    .unwrap_or_default(),
                Subject::Mongo(s) => s
                    .database()
                    .collection::<Document>(name)
                    .find(bson::doc! {})
                    .await
                    .expect("find")
                    .try_collect()
                    .await
                    .expect("collect"),
            };
            let by_id = docs
                .into_iter()
                .map(|mut d| {
                    let id = d.get_str("_id").unwrap_or_default().to_string();
                    d.remove("_id");
                    (id, normalise(d))
                })
                .collect();
            out.insert(name.to_string(), by_id);
        }
        out
    }
}

/// Numbers compared by value, not by BSON width (the model keeps what it
/// was given; a server may store an int64 as int32 or the reverse).
fn normalise(d: Document) -> Document {
    d.into_iter()
        .map(|(k, v)| (k, normalise_value(v)))
        .collect()
}

fn normalise_value(v: bson::Bson) -> bson::Bson {
    use bson::Bson;
    match v {
        Bson::Int32(n) => Bson::Int64(i64::from(n)),
        Bson::Document(d) => Bson::Document(normalise(d)),
        Bson::Array(a) => Bson::Array(a.into_iter().map(normalise_value).collect()),
        other => other,
    }
}

async fn memory() -> Subject {
    Subject::Memory(Arc::new(MemoryStore::new()))
}

async fn mongo() -> Subject {
    let settings = testkit::Settings::from_env();
    testkit::require_mongodb().await;
    let store = MongoStore::connect(
        &settings.mongodb_uri,
        &testkit::unique_db("store_conformance"),
        16 << 20,
    )
    .await
    .expect("mongodb store");
    Subject::Mongo(Arc::new(store))
}

fn events(s: &Scenario) -> Vec<Event> {
    s.records
        .iter()
        .map(|r| Event::parse(&r.value).expect("valid event"))
        .collect()
}

async fn apply(store: &dyn Store, events: &[Event]) {
    let batch: Vec<BatchEvent<'_>> = events
        .iter()
        .map(|event| BatchEvent { event, bytes: 256 })
        .collect();
    let rejected = write_batch(store, &batch).await.expect("write");
    assert!(rejected.is_empty(), "nothing rejected: {rejected:?}");
}

/// Scores equal the sum of answer points, per player, for quiz `s`.
fn assert_invariant_in(contents: &Contents, s: &Scenario) {
    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
    let answers = &contents["answers"];
    let mine = answers
        .values()
        .filter(|a| a.get_str("quiz_id").ok() == Some(s.quiz_id.as_str()));
    let mut count = 0;
    for a in mine {
        count += 1;
        *sums
            .entry(a.get_str("player_id").unwrap_or_default().to_string())
            .or_insert(0) += int(a, "points");
    }
    assert_eq!(count, s.answers, "answers of {}", s.quiz_id);
    let scores: BTreeMap<String, i64> = contents["scores"]
        .values()
        .filter(|d| d.get_str("quiz_id").ok() == Some(s.quiz_id.as_str()))
        .map(|d| {
            (
                d.get_str("player_id").unwrap_or_default().to_string(),
                int(d, "score"),
            )
        })
        .collect();
    assert_eq!(scores, s.expected_scores, "scores of {}", s.quiz_id);
    assert_eq!(scores, sums, "score = sum of points for {}", s.quiz_id);
}

/// Runs every check of the contract on a fresh subject from `make`, and
/// returns what it holds at the end (for the comparison across
/// implementations).
async fn conformance(name: &str, make: impl AsyncFn() -> Subject) -> Contents {
    let a = scenario("conf-quiz-a", 4, 3);
    let b = scenario("conf-quiz-b", 3, 2);
    let (ea, eb) = (events(&a), events(&b));

    // Schema, twice; ping.
    let subject = make().await;
    let store = subject.store();
    store.ensure_schema().await.expect("schema");
    store.ensure_schema().await.expect("schema again");
    store.ping().await.expect("ping");

    // Once, then again: nothing changes.
    apply(store.as_ref(), &ea).await;
    apply(store.as_ref(), &eb).await;
    let once = subject.contents().await;
    assert_invariant_in(&once, &a);
    assert_invariant_in(&once, &b);
    assert_eq!(once["quizzes"].len(), 2, "{name}: two quizzes");
    apply(store.as_ref(), &ea).await;
    apply(store.as_ref(), &eb[..eb.len() / 2]).await;
    assert_eq!(
        subject.contents().await,
        once,
        "{name}: redelivery changed the state"
    );

    // Batches in another order reach the same state.
    let shuffled = make().await;
    let other = shuffled.store();
    other.ensure_schema().await.expect("schema");
    let thirds: Vec<&[Event]> = ea.chunks(ea.len().div_ceil(3)).collect();
    for part in [thirds[2], thirds[0], thirds[1]] {
        apply(other.as_ref(), part).await;
    }
    apply(other.as_ref(), &eb).await;
    assert_eq!(
        shuffled.contents().await,
        once,
        "{name}: the order of batches changed the state"
    );

    // Clearing one quiz leaves the other; clearing all leaves nothing.
    other.clear(Some("conf-quiz-a")).await.expect("clear a");
    let left = shuffled.contents().await;
    for (collection, docs) in &left {
        for (id, d) in docs {
            let quiz = d.get_str("quiz_id").unwrap_or(id.as_str());
            assert_eq!(
                quiz, "conf-quiz-b",
                "{name}: {collection}/{id} survived clear(a)"
            );
        }
    }
    assert_invariant_in(&left, &b);
    other.clear(None).await.expect("clear all");
    assert!(
        shuffled.contents().await.values().all(BTreeMap::is_empty),
        "{name}: clear(None) left documents"
    );
    once
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_keeps_the_contract_and_they_agree() {
    let in_memory = conformance("memory", memory).await;
    let in_mongo = conformance("mongodb", mongo).await;
    assert_eq!(
        in_memory, in_mongo,
        "the in-memory model and MongoDB hold different documents"
    );
}
