//! The MongoDB store (tested against FerretDB 1.24 on PostgreSQL, which
//! speaks the wire protocol but has no transactions and no `bulkWrite`
//! command).
//!
//! Hot path: one raw `update` command per collection per batch (split at
//! `max_statements_per_command`), with every statement an upsert and
//! `ordered: false`. That is the fewest round trips the server allows (sent
//! one after the other by default; with `mongodb.parallel_collections` the
//! four collections concurrently, each one's commands in turn), and
//! unordered lets the server report each bad statement in `writeErrors`
//! instead of stopping at the first.

use std::time::Duration;

use async_trait::async_trait;
use bson::{doc, Bson, Document};
use futures::future::try_join_all;
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
}

/// Write-error codes that say "try again", not "this statement is bad":
/// a duplicate key on an upsert by `_id` is two writers racing to insert the
/// same document (the retry finds it and updates it), the rest are the
/// server going away mid-command.
const TRANSIENT_CODES: &[i32] = &[
    6, 7, 50, 64, 89, 91, 112, 189, 262, 9001, 10107, 11000, 11600, 11602, 13435, 13436,
];

impl MongoStore {
    /// Connects lazily: the driver connects on first use, so this succeeds
    /// while the server is down; `ping`/`ensure_schema` tell when it is up.
    pub async fn connect(
        uri: &str,
        database: &str,
        max_command_bytes: usize,
    ) -> Result<MongoStore, StoreError> {
        let mut options = ClientOptions::parse(uri)
            .await
            .map_err(|e| StoreError(format!("mongodb.uri: {e}")))?;
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
        })
    }

    /// Connects with every `mongodb.*` setting of `config`.
    pub async fn from_config(config: &crate::Config) -> Result<MongoStore, StoreError> {
        let m = &config.mongodb;
        Ok(
            MongoStore::connect(&m.uri, &m.database, m.max_command_bytes)
                .await?
                .with_parallel_collections(m.parallel_collections)
                .with_command_timeout(Duration::from_millis(m.command_timeout_ms))
                .with_max_statements(m.max_statements_per_command),
        )
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

    /// Splits one collection's upserts into commands bounded in bytes and
    /// statements.
    fn commands(&self, collection: &str, upserts: &[Upsert]) -> Vec<(Document, Vec<usize>)> {
        let mut out = Vec::new();
        let mut statements = Vec::new();
        let mut members = Vec::new();
        let mut bytes = 0usize;
        for (i, u) in upserts.iter().enumerate() {
            let size = u.bytes + u.id.len() + 64;
            if !statements.is_empty()
                && (bytes + size > self.max_command_bytes
                    || statements.len() >= self.max_statements)
            {
                out.push((
                    self.update_command(collection, std::mem::take(&mut statements)),
                    std::mem::take(&mut members),
                ));
                bytes = 0;
            }
            statements.push(Bson::Document(doc! {
                "q": { "_id": u.id.as_str() },
                "u": u.update_doc(),
                "upsert": true,
            }));
            members.push(i);
            bytes += size;
        }
        if !statements.is_empty() {
            out.push((self.update_command(collection, statements), members));
        }
        out
    }

    /// An unordered `update` command carrying the URI's write concern.
    pub fn update_command(&self, collection: &str, statements: Vec<Bson>) -> Document {
        let mut command = doc! { "update": collection, "updates": statements, "ordered": false };
        if let Some(wc) = &self.write_concern {
            command.insert("writeConcern", wc.clone());
        }
        command
    }

    async fn run(&self, command: Document) -> Result<Vec<(usize, i32, String)>, StoreError> {
        // A bounded wait: a command that never answers becomes a retry.
        let reply = tokio::time::timeout(self.command_timeout, self.db.run_command(command))
            .await
            .map_err(|_| StoreError(format!("no reply within {:?}", self.command_timeout)))?
            .map_err(|e| StoreError(e.to_string()))?;
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
                if TRANSIENT_CODES.contains(&code) {
                    return Err(StoreError(format!(
                        "transient write error {code}: {message}"
                    )));
                }
                errors.push((usize::try_from(index).unwrap_or(usize::MAX), code, message));
            }
        }
        Ok(errors)
    }
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
        // One list of commands per collection. Transitions are few (one per
        // quiz start or end); one command after the upserts.
        let per_collection: Vec<(usize, Vec<(Document, Vec<usize>)>)> = plan
            .upserts
            .iter()
            .enumerate()
            .map(|(c, upserts)| (c, self.commands(COLLECTIONS[c], upserts)))
            .collect();
        // Sequential by default. With `parallel_collections`, the
        // collections are written concurrently but each one's commands in
        // turn: at most one command per collection in flight. That bound
        // matters on FerretDB 1.24, which holds a backend connection for
        // every statement that matched an existing document until its
        // command ends: in-flight statements beyond its pool (PostgreSQL
        // `pool_max_conns`, 50 by default; SQLite 100) wait for each other
        // forever. On SQLite concurrent writers also wait for each other's
        // locks (we measured stalls of seconds).
        let run_collection = |(c, commands): (usize, Vec<(Document, Vec<usize>)>)| async move {
            let mut results = Vec::with_capacity(commands.len());
            for (command, members) in commands {
                let errors = self.run(command).await?;
                results.push((c, members, errors));
            }
            Ok::<_, StoreError>(results)
        };
        let results: Vec<(usize, Vec<usize>, Vec<(usize, i32, String)>)> = if self.parallel {
            try_join_all(per_collection.into_iter().map(run_collection))
                .await?
                .into_iter()
                .flatten()
                .collect()
        } else {
            let mut results = Vec::new();
            for collection in per_collection {
                results.extend(run_collection(collection).await?);
            }
            results
        };
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
            for (index, code, message) in self.run(self.update_command(QUIZZES, statements)).await?
            {
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
    async fn without_a_write_concern_the_server_default_applies() {
        let store = lazy_store("mongodb://127.0.0.1:1/").await;
        assert!(!store
            .update_command(ANSWERS, Vec::new())
            .contains_key("writeConcern"));
    }
}
