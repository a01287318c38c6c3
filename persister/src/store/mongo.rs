//! The MongoDB store (tested against FerretDB 1.24 on PostgreSQL, which
//! speaks the wire protocol but has no transactions and no `bulkWrite`
//! command).
//!
//! Hot path, per batch and collection, two kinds of raw command:
//! - `insert`, `ordered: false`, for every statement that cannot change an
//!   existing document (`Upsert::insert_doc`: answers, players, a join's
//!   score): a duplicate key (11000 in `writeErrors`, the shape of both
//!   MongoDB and FerretDB) means the document is already there and counts
//!   as written. On FerretDB/PostgreSQL an insert is one multi-row
//!   `INSERT` checked by the unique `_id` index, where an upsert scans the
//!   whole collection for its `_id` (see `docs/persister.md`);
//! - `update`, `ordered: false`, every statement an upsert by `_id`, for the
//!   rest (score changes, quiz documents), split at
//!   `max_statements_per_command`.
//!
//! The insert commands of the collections run concurrently with each other
//! and with the updates (each holds one FerretDB backend connection for its
//! transaction, whatever its size); the updates run one collection after
//! another by default, or concurrently with `mongodb.parallel_collections`,
//! each collection's commands in turn. Unordered lets the server report each
//! bad statement in `writeErrors` instead of stopping at the first.

use std::time::Duration;

use async_trait::async_trait;
use bson::{doc, Bson, Document};
use futures::future::{try_join, try_join_all};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database, IndexModel};

use super::{Rejection, Store, StoreError};
use crate::writes::{Upsert, WritePlan, ANSWERS, COLLECTIONS, PLAYERS, QUIZZES, SCORES};

pub struct MongoStore {
    db: Database,
    /// The URI's write concern (`w`, `j`, `wtimeoutMS`) as the
    /// `writeConcern` field of every write command: `run_command` sends a
    /// command as it is given and ignores the client's write concern, so
    /// without this `w=majority` in the URI would be silently ignored.
    write_concern: Option<Document>,
    max_command_bytes: usize,
    parallel: bool,
    command_timeout: Duration,
    max_statements: usize,
    /// Insert the statements `Upsert::insert_doc` allows instead of
    /// upserting them; off only to measure the path of before.
    insert_immutable: bool,
    max_documents_per_insert: usize,
}

/// The duplicate-key code, in `writeErrors` of an unordered insert, on
/// MongoDB (with `keyPattern`/`keyValue` and an `errmsg` naming the index)
/// and FerretDB 1.24 (`errmsg` "E11000 duplicate key error collection: …",
/// no key fields) alike; only the code is read.
const DUPLICATE_KEY: i32 = 11000;

/// What a command's statements are: duplicate keys mean "try again" for an
/// upsert (two writers raced to create the document) and "already written"
/// for an insert of an immutable document.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Update,
    Insert,
}

impl MongoStore {
    /// Connects lazily: the driver connects on first use, so this succeeds
    /// while the server is down; `ping`/`ensure_schema` tell when it is up.
    pub async fn connect(
        uri: &str,
        database: &str,
        max_command_bytes: usize,
    ) -> Result<MongoStore, StoreError> {
        let options = ClientOptions::parse(uri)
            .await
            .map_err(|e| StoreError(format!("mongodb.uri: {e}")))?;
        MongoStore::connect_with(options, database, max_command_bytes)
    }

    /// [`MongoStore::connect`] with options already parsed (a test adds a
    /// command monitor this way).
    pub fn connect_with(
        mut options: ClientOptions,
        database: &str,
        max_command_bytes: usize,
    ) -> Result<MongoStore, StoreError> {
        options
            .app_name
            .get_or_insert_with(|| "quiz-persister".into());
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(3));
        options
            .connect_timeout
            .get_or_insert(Duration::from_secs(3));
        // FerretDB has no sessions; every statement is idempotent and the
        // pipeline retries whole batches itself.
        options.retry_writes = Some(false);
        let write_concern = options
            .write_concern
            .as_ref()
            .map(bson::to_document)
            .transpose()
            .map_err(|e| StoreError(format!("mongodb.uri write concern: {e}")))?
            .filter(|wc| !wc.is_empty());
        let client = Client::with_options(options).map_err(|e| StoreError(e.to_string()))?;
        Ok(MongoStore {
            db: client.database(database),
            write_concern,
            max_command_bytes,
            parallel: false,
            command_timeout: Duration::from_secs(30),
            max_statements: 25,
            insert_immutable: true,
            max_documents_per_insert: 1000,
        })
    }

    /// Connects with every `mongodb.*` setting of `config`.
    pub async fn from_config(config: &crate::config::Config) -> Result<MongoStore, StoreError> {
        let m = &config.mongodb;
        Ok(
            MongoStore::connect(&m.uri, &m.database, m.max_command_bytes)
                .await?
                .with_parallel_collections(m.parallel_collections)
                .with_command_timeout(Duration::from_millis(m.command_timeout_ms))
                .with_max_statements(m.max_statements_per_command)
                .with_inserts(m.insert_immutable, m.max_documents_per_insert),
        )
    }

    /// Whether immutable documents are inserted (the default) rather than
    /// upserted, and how many documents one `insert` command carries at
    /// most. FerretDB 1.24 writes an insert command in one transaction per
    /// 100 documents and holds one backend connection for it, whatever its
    /// size; MongoDB accepts 100 000 per command.
    pub fn with_inserts(mut self, enabled: bool, max_documents: usize) -> MongoStore {
        self.insert_immutable = enabled;
        self.max_documents_per_insert = max_documents.max(1);
        self
    }

    /// Sends the per-collection commands of a batch concurrently.
    pub fn with_parallel_collections(mut self, parallel: bool) -> MongoStore {
        self.parallel = parallel;
        self
    }

    /// How long one write command may take before the batch is retried.
    pub fn with_command_timeout(mut self, timeout: Duration) -> MongoStore {
        self.command_timeout = timeout;
        self
    }

    /// Statements per `update` command. FerretDB 1.24 keeps one backend
    /// connection per statement that matched an existing document until the
    /// command ends (`msg_update.go` closes each statement's query iterator
    /// only on return), so a command with more such statements than its
    /// pool never answers and wedges every later command until FerretDB
    /// restarts: on SQLite (pool 100) 50 answered and 100 hung; on
    /// PostgreSQL (`pool_max_conns`, 50 by default, 200 in the local stack)
    /// 100 answer and 1000 hang with the pool of 200. Hence 25 by default,
    /// below both pools with one command in flight; MongoDB accepts 100 000.
    pub fn with_max_statements(mut self, n: usize) -> MongoStore {
        self.max_statements = n.max(1);
        self
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Splits one collection's statements into commands bounded in bytes
    /// and statements: `insert` commands for the statements that may be
    /// inserts, `update` commands for the rest. Each command comes with the
    /// indexes (into `upserts`) of its statements, in order.
    fn commands(&self, collection: &str, upserts: &[Upsert]) -> Commands {
        let mut inserts = Splitter::new(self.max_documents_per_insert, self.max_command_bytes);
        let mut updates = Splitter::new(self.max_statements, self.max_command_bytes);
        for (i, u) in upserts.iter().enumerate() {
            let size = u.bytes + u.id.len() + 64;
            match u.insert_doc().filter(|_| self.insert_immutable) {
                Some(doc) => inserts.push(Bson::Document(doc), i, size, |docs| {
                    self.insert_command(collection, docs)
                }),
                None => updates.push(
                    Bson::Document(doc! {
                        "q": { "_id": u.id.as_str() },
                        "u": u.update_doc(),
                        "upsert": true,
                    }),
                    i,
                    size,
                    |statements| self.update_command(collection, statements),
                ),
            }
        }
        Commands {
            inserts: inserts.finish(|docs| self.insert_command(collection, docs)),
            updates: updates.finish(|statements| self.update_command(collection, statements)),
        }
    }

    /// An unordered `insert` command carrying the URI's write concern.
    pub fn insert_command(&self, collection: &str, documents: Vec<Bson>) -> Document {
        let mut command = doc! { "insert": collection, "documents": documents, "ordered": false };
        if let Some(wc) = &self.write_concern {
            command.insert("writeConcern", wc.clone());
        }
        command
    }

    /// An unordered `update` command carrying the URI's write concern.
    pub fn update_command(&self, collection: &str, statements: Vec<Bson>) -> Document {
        let mut command = doc! { "update": collection, "updates": statements, "ordered": false };
        if let Some(wc) = &self.write_concern {
            command.insert("writeConcern", wc.clone());
        }
        command
    }

    async fn run(&self, command: Document, kind: Kind) -> Result<Vec<WriteError>, StoreError> {
        // A bounded wait: a command that never answers becomes a retry.
        let reply = tokio::time::timeout(self.command_timeout, self.db.run_command(command))
            .await
            .map_err(|_| StoreError(format!("no reply within {:?}", self.command_timeout)))?
            .map_err(|e| StoreError(e.to_string()))?;
        write_errors(&reply, kind)
    }

    /// Runs commands one after the other; the write errors of each, with
    /// the command's members.
    async fn run_in_turn(
        &self,
        collection: usize,
        commands: Vec<(Document, Vec<usize>)>,
        kind: Kind,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut results = Vec::with_capacity(commands.len());
        for (command, members) in commands {
            let errors = self.run(command, kind).await?;
            results.push((collection, members, errors));
        }
        Ok(results)
    }
}

/// One command's statements, split by kind, each with its members.
struct Commands {
    inserts: Vec<(Document, Vec<usize>)>,
    updates: Vec<(Document, Vec<usize>)>,
}

/// A statement the server refused: its index in the command, code, message.
type WriteError = (usize, i32, String);

/// A command's collection, members and write errors.
type Outcome = (usize, Vec<usize>, Vec<WriteError>);

/// Cuts a list of statements into commands of at most `max` statements and
/// about `max_bytes`.
struct Splitter {
    max: usize,
    max_bytes: usize,
    bytes: usize,
    items: Vec<Bson>,
    members: Vec<usize>,
    out: Vec<(Document, Vec<usize>)>,
}

impl Splitter {
    fn new(max: usize, max_bytes: usize) -> Splitter {
        Splitter {
            max,
            max_bytes,
            bytes: 0,
            items: Vec::new(),
            members: Vec::new(),
            out: Vec::new(),
        }
    }

    fn push(
        &mut self,
        item: Bson,
        member: usize,
        size: usize,
        command: impl Fn(Vec<Bson>) -> Document,
    ) {
        if !self.items.is_empty()
            && (self.bytes + size > self.max_bytes || self.items.len() >= self.max)
        {
            self.out.push((
                command(std::mem::take(&mut self.items)),
                std::mem::take(&mut self.members),
            ));
            self.bytes = 0;
        }
        self.items.push(item);
        self.members.push(member);
        self.bytes += size;
    }

    fn finish(mut self, command: impl Fn(Vec<Bson>) -> Document) -> Vec<(Document, Vec<usize>)> {
        if !self.items.is_empty() {
            self.out.push((command(self.items), self.members));
        }
        self.out
    }
}

/// Write-error codes that say "try again", not "this statement is bad":
/// the server going away mid-command, and for an upsert a duplicate key
/// (two writers racing to insert the same document: the retry finds it and
/// updates it).
const TRANSIENT_CODES: &[i32] = &[
    6, 7, 50, 64, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// Reads a write command's reply: a write concern error or a transient
/// write error fails the attempt (retried), a duplicate key of an insert is
/// a document already written (dropped), every other write error is the
/// statement's own (returned, to be isolated).
fn write_errors(reply: &Document, kind: Kind) -> Result<Vec<WriteError>, StoreError> {
    if let Ok(wce) = reply.get_document("writeConcernError") {
        return Err(StoreError(format!("write concern error: {wce}")));
    }
    let mut errors = Vec::new();
    if let Ok(list) = reply.get_array("writeErrors") {
        for item in list {
            let Bson::Document(e) = item else { continue };
            let index = int_field(e, "index").unwrap_or(-1);
            let code = int_field(e, "code").unwrap_or(-1) as i32;
            let message = e.get_str("errmsg").unwrap_or("").to_string();
            let transient =
                TRANSIENT_CODES.contains(&code) || (code == DUPLICATE_KEY && kind == Kind::Update);
            if transient {
                return Err(StoreError(format!(
                    "transient write error {code}: {message}"
                )));
            }
            if code == DUPLICATE_KEY {
                continue;
            }
            errors.push((usize::try_from(index).unwrap_or(usize::MAX), code, message));
        }
    }
    Ok(errors)
}

fn int_field(doc: &Document, key: &str) -> Option<i64> {
    match doc.get(key)? {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}

fn is_code(err: &mongodb::error::Error, code: i32) -> bool {
    matches!(&*err.kind, mongodb::error::ErrorKind::Command(c) if c.code == code)
}

#[async_trait]
impl Store for MongoStore {
    async fn ensure_schema(&self) -> Result<(), StoreError> {
        let existing = self
            .db
            .list_collection_names()
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        for name in COLLECTIONS {
            if !existing.iter().any(|n| n == name) {
                if let Err(e) = self.db.create_collection(name).await {
                    // 48 NamespaceExists: another persister won the race.
                    if !is_code(&e, 48) {
                        return Err(StoreError(e.to_string()));
                    }
                }
            }
        }
        let indexes: [(&str, Document); 4] = [
            (PLAYERS, doc! { "quiz_id": 1 }),
            (SCORES, doc! { "quiz_id": 1, "score": -1 }),
            (ANSWERS, doc! { "quiz_id": 1, "player_id": 1 }),
            (QUIZZES, doc! { "state": 1 }),
        ];
        for (name, keys) in indexes {
            self.db
                .collection::<Document>(name)
                .create_index(IndexModel::builder().keys(keys).build())
                .await
                .map_err(|e| StoreError(format!("create index on {name}: {e}")))?;
        }
        Ok(())
    }

    async fn apply(&self, plan: &WritePlan) -> Result<Vec<Rejection>, StoreError> {
        // Per collection, its insert and its update commands. Transitions
        // are few (one per quiz start or end); one command after the rest.
        let (inserts, updates): (Vec<_>, Vec<_>) = plan
            .upserts
            .iter()
            .enumerate()
            .map(|(c, upserts)| {
                let Commands { inserts, updates } = self.commands(COLLECTIONS[c], upserts);
                ((c, inserts), (c, updates))
            })
            .unzip();
        // Inserts: every collection at once, each one's commands in turn.
        // On FerretDB 1.24 an insert command holds one backend connection
        // (one transaction per 100 documents), so this adds at most four to
        // what the updates hold.
        let inserting = async {
            try_join_all(
                inserts
                    .into_iter()
                    .map(|(c, commands)| self.run_in_turn(c, commands, Kind::Insert)),
            )
            .await
        };
        // Updates: sequential by default. With `parallel_collections`, the
        // collections are written concurrently but each one's commands in
        // turn: at most one command per collection in flight. That bound
        // matters on FerretDB 1.24, which holds a backend connection for
        // every statement that matched an existing document until its
        // command ends: in-flight statements beyond its pool (PostgreSQL
        // `pool_max_conns`, 50 by default; SQLite 100) wait for each other
        // forever. On SQLite concurrent writers also wait for each other's
        // locks (we measured stalls of seconds).
        let updating = async {
            if self.parallel {
                try_join_all(
                    updates
                        .into_iter()
                        .map(|(c, commands)| self.run_in_turn(c, commands, Kind::Update)),
                )
                .await
            } else {
                let mut results = Vec::new();
                for (c, commands) in updates {
                    results.push(self.run_in_turn(c, commands, Kind::Update).await?);
                }
                Ok(results)
            }
        };
        let (inserted, updated) = try_join(inserting, updating).await?;
        let results = inserted.into_iter().chain(updated).flatten();
        let mut rejections = Vec::new();
        for (c, members, errors) in results {
            for (index, code, message) in errors {
                let Some(&i) = members.get(index) else {
                    return Err(StoreError(format!(
                        "write error {code} for statement {index} out of range: {message}"
                    )));
                };
                rejections.push(Rejection {
                    events: plan.upserts[c][i].events.clone(),
                    code,
                    message,
                });
            }
        }
        if !plan.transitions.is_empty() {
            let statements: Vec<Bson> = plan
                .transitions
                .iter()
                .map(|t| {
                    Bson::Document(doc! {
                        "q": { "_id": t.quiz_id.as_str(), "state_rank": { "$lt": t.rank } },
                        "u": { "$set": { "state": t.state, "state_rank": t.rank } },
                    })
                })
                .collect();
            let command = self.update_command(QUIZZES, statements);
            for (index, code, message) in self.run(command, Kind::Update).await? {
                if let Some(t) = plan.transitions.get(index) {
                    rejections.push(Rejection {
                        events: t.events.clone(),
                        code,
                        message,
                    });
                }
            }
        }
        Ok(rejections)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! { "ping": 1 })
            .await
            .map(|_| ())
            .map_err(|e| StoreError(e.to_string()))
    }

    async fn clear(&self, quiz_id: Option<&str>) -> Result<(), StoreError> {
        for name in COLLECTIONS {
            let filter = match (quiz_id, name) {
                (None, _) => doc! {},
                (Some(q), QUIZZES) => doc! { "_id": q },
                (Some(q), _) => doc! { "quiz_id": q },
            };
            self.db
                .collection::<Document>(name)
                .delete_many(filter)
                .await
                .map_err(|e| StoreError(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lazy_store(uri: &str) -> MongoStore {
        // Connecting is lazy: no server is needed to build commands.
        MongoStore::connect(uri, "quiz", 1 << 20)
            .await
            .expect("store")
    }

    #[tokio::test]
    async fn the_uri_write_concern_is_in_every_update_command() {
        let store =
            lazy_store("mongodb://127.0.0.1:1/?w=majority&wtimeoutMS=5000&journal=true").await;
        let command = store.update_command(PLAYERS, Vec::new());
        assert_eq!(
            command.get_document("writeConcern").expect("writeConcern"),
            &doc! { "w": "majority", "wtimeout": 5000, "j": true }
        );
        let numbered = lazy_store("mongodb://127.0.0.1:1/?w=2").await;
        assert_eq!(
            numbered
                .update_command(SCORES, Vec::new())
                .get_document("writeConcern")
                .expect("writeConcern")
                .get("w"),
            Some(&Bson::Int32(2))
        );
    }

    #[tokio::test]
    async fn the_uri_write_concern_is_in_every_insert_command() {
        let store = lazy_store("mongodb://127.0.0.1:1/?w=majority&journal=true").await;
        let command = store.insert_command(ANSWERS, Vec::new());
        assert_eq!(command.get_str("insert").ok(), Some(ANSWERS));
        assert_eq!(command.get_bool("ordered").ok(), Some(false));
        assert_eq!(
            command.get_document("writeConcern").expect("writeConcern"),
            &doc! { "w": "majority", "j": true }
        );
        let plain = lazy_store("mongodb://127.0.0.1:1/").await;
        assert!(!plain
            .insert_command(ANSWERS, Vec::new())
            .contains_key("writeConcern"));
    }

    /// The duplicate-key shapes of an unordered insert, as each server
    /// sends them (MongoDB 7: `keyPattern`, `keyValue`, the index in the
    /// message; FerretDB 1.24: the code and a shorter message only).
    #[test]
    fn a_duplicate_key_is_written_for_an_insert_and_a_retry_for_an_upsert() {
        let mongodb = doc! {
            "n": 1, "ok": 1.0,
            "writeErrors": [{
                "index": 0, "code": 11000,
                "keyPattern": { "_id": 1 }, "keyValue": { "_id": "q:p:0" },
                "errmsg": "E11000 duplicate key error collection: quiz.answers index: _id_ dup key: { _id: \"q:p:0\" }",
            }],
        };
        let ferretdb = doc! {
            "n": 1_i32, "ok": 1.0,
            "writeErrors": [{
                "index": 2_i32, "code": 11000_i32,
                "errmsg": "E11000 duplicate key error collection: quiz.answers",
            }],
        };
        for reply in [&mongodb, &ferretdb] {
            assert_eq!(write_errors(reply, Kind::Insert).expect("written"), vec![]);
            assert!(
                write_errors(reply, Kind::Update).is_err(),
                "an upsert race retries"
            );
        }
        // A duplicate among other errors: only the others are rejections.
        let mixed = doc! {
            "ok": 1.0,
            "writeErrors": [
                { "index": 0, "code": 11000, "errmsg": "E11000 duplicate key error" },
                { "index": 1, "code": 2, "errmsg": "bad value" },
            ],
        };
        assert_eq!(
            write_errors(&mixed, Kind::Insert).expect("answered"),
            vec![(1, 2, "bad value".to_string())]
        );
        // A write concern error fails the attempt whatever the kind.
        let wce = doc! { "ok": 1.0, "writeConcernError": { "code": 64, "errmsg": "timeout" } };
        assert!(write_errors(&wce, Kind::Insert).is_err());
    }

    #[tokio::test]
    async fn immutable_statements_become_inserts_and_the_rest_updates() {
        let join = crate::event::Event::parse(
            br#"{"v":1,"event_id":"q:joined:p","type":"player_joined","quiz_id":"q","at_ms":1,"player_id":"p","nickname":"n"}"#,
        )
        .expect("event");
        let answer = crate::event::Event::parse(
            br#"{"v":1,"event_id":"q:answer:o:0","type":"answer_scored","quiz_id":"q","at_ms":2,"player_id":"o","nickname":"m","question_id":0,"choices":[1],"correct":true,"late":false,"points":900,"response_ms":1,"answered_at_ms":2,"score_after":900}"#,
        )
        .expect("event");
        let plan = crate::writes::plan([&join, &answer].into_iter().enumerate().map(
            |(index, event)| crate::writes::PlanInput {
                index,
                event,
                bytes: 100,
            },
        ));
        let store = lazy_store("mongodb://127.0.0.1:1/").await;
        let scores = store.commands(SCORES, &plan.upserts[3]);
        assert_eq!(scores.inserts.len(), 1, "the join's score");
        assert_eq!(scores.updates.len(), 1, "the answer's score");
        let answers = store.commands(ANSWERS, &plan.upserts[2]);
        assert_eq!((answers.inserts.len(), answers.updates.len()), (1, 0));
        let players = store.commands(PLAYERS, &plan.upserts[1]);
        assert_eq!((players.inserts.len(), players.updates.len()), (1, 0));
        let before = lazy_store("mongodb://127.0.0.1:1/")
            .await
            .with_inserts(false, 1000);
        let answers = before.commands(ANSWERS, &plan.upserts[2]);
        assert_eq!((answers.inserts.len(), answers.updates.len()), (0, 1));
    }

    #[tokio::test]
    async fn without_a_write_concern_the_server_default_applies() {
        let store = lazy_store("mongodb://127.0.0.1:1/").await;
        assert!(!store
            .update_command(ANSWERS, Vec::new())
            .contains_key("writeConcern"));
    }
}
