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
//! - a batch of which some documents are already written (a redelivery
//!   overlapping new events: on MongoDB, inserts of which some are
//!   duplicate keys) writes the new ones and changes nothing else;
//! - `clear(Some(quiz))` removes that quiz only, `clear(None)` everything;
//! - `ping` answers while the store is up.
//!
//! And for MongoDB only, which command carries which document: immutable
//! documents go in unordered `insert`s, score changes in `update`s.

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

    // Some documents already there, others new, in one batch: the new
    // ones are written, the old ones stay as they were.
    let overlapping = make().await;
    let third = overlapping.store();
    third.ensure_schema().await.expect("schema");
    apply(third.as_ref(), &ea[..ea.len() / 2]).await;
    apply(third.as_ref(), &eb[eb.len() / 3..]).await;
    let mut mixed: Vec<Event> = ea.clone();
    mixed.extend(eb.iter().cloned());
    apply(third.as_ref(), &mixed).await;
    assert_eq!(
        overlapping.contents().await,
        once,
        "{name}: a batch overlapping what was written"
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

/// Command names and statement counts per collection, as the driver sent
/// them.
type Sent = Arc<std::sync::Mutex<Vec<(String, String, usize)>>>;

async fn monitored_mongo(sent: &Sent) -> MongoStore {
    use mongodb::event::command::CommandEvent;
    use mongodb::event::EventHandler;
    let settings = testkit::Settings::from_env();
    testkit::require_mongodb().await;
    let mut options = mongodb::options::ClientOptions::parse(&settings.mongodb_uri)
        .await
        .expect("uri");
    let log = sent.clone();
    options.command_event_handler = Some(EventHandler::callback(move |e: CommandEvent| {
        let CommandEvent::Started(e) = e else { return };
        let (list, name) = match e.command_name.as_str() {
            "insert" => ("documents", "insert"),
            "update" => ("updates", "update"),
            _ => return,
        };
        let collection = e.command.get_str(name).unwrap_or_default().to_string();
        let n = e.command.get_array(list).map_or(0, Vec::len);
        if let Ok(mut log) = log.lock() {
            log.push((name.to_string(), collection, n));
        }
    }));
    MongoStore::connect_with(options, &testkit::unique_db("store_commands"), 16 << 20)
        .expect("mongodb store")
}

/// Statements sent per (command, collection) since the last call.
fn drain(sent: &Sent) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for (command, collection, n) in sent.lock().expect("log").drain(..) {
        *out.entry((command, collection)).or_insert(0) += n;
    }
    out
}

fn count(sent: &BTreeMap<(String, String), usize>, command: &str, collection: &str) -> usize {
    sent.get(&(command.to_string(), collection.to_string()))
        .copied()
        .unwrap_or(0)
}

/// Answers, players and a join's score are inserted (cheap on FerretDB:
/// one multi-row `INSERT`, where every upsert scans its collection); only
/// score changes and quiz documents are upserts. Redelivered, the inserts
/// meet duplicate keys, which count as written: nothing is rejected and
/// nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_documents_are_inserted_and_duplicate_keys_count_as_written() {
    let sent: Sent = Arc::default();
    let store = Arc::new(monitored_mongo(&sent).await);
    store.ensure_schema().await.expect("schema");
    let s = scenario("cmd-quiz", 5, 3);
    let all = events(&s);
    let (joins, rest): (Vec<Event>, Vec<Event>) = all
        .iter()
        .cloned()
        .partition(|e| e.type_name() == "player_joined");
    let answers = rest
        .iter()
        .filter(|e| e.type_name() == "answer_scored")
        .count();
    drain(&sent);

    apply(store.as_ref(), &joins).await;
    let joined = drain(&sent);
    assert_eq!(
        count(&joined, "insert", "players"),
        joins.len(),
        "{joined:?}"
    );
    assert_eq!(
        count(&joined, "insert", "scores"),
        joins.len(),
        "{joined:?}"
    );
    assert_eq!(count(&joined, "update", "players"), 0, "{joined:?}");
    assert_eq!(count(&joined, "update", "scores"), 0, "{joined:?}");

    apply(store.as_ref(), &rest).await;
    let answered = drain(&sent);
    assert_eq!(
        count(&answered, "insert", "answers"),
        answers,
        "{answered:?}"
    );
    assert_eq!(count(&answered, "update", "answers"), 0, "{answered:?}");
    // One folded statement per player: an update when the score moved
    // above 0, else (a $max of 0 changes nothing) an insert.
    let scored = s.expected_scores.values().filter(|&&v| v > 0).count();
    assert!(scored > 0);
    assert_eq!(count(&answered, "update", "scores"), scored, "{answered:?}");
    assert_eq!(
        count(&answered, "insert", "scores"),
        s.expected_scores.len() - scored,
        "{answered:?}"
    );
    let subject = Subject::Mongo(store.clone());
    let once = subject.contents().await;
    assert_invariant_in(&once, &s);

    // Redelivered whole: every insert is a duplicate key, none is rejected
    // (`apply` asserts it), the contents are the same.
    apply(store.as_ref(), &all).await;
    assert_eq!(
        subject.contents().await,
        once,
        "redelivery changed the state"
    );
}
