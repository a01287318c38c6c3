//! An in-process store with the operator semantics of MongoDB for the subset
//! `writes.rs` uses (`$setOnInsert`, `$set` with dotted paths, `$max`,
//! `$min`, filtered transitions). It can fail on demand (an outage) and
//! reject chosen statements (a poison event), which makes the pipeline's
//! error paths testable without a server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use bson::{Bson, Document};

use super::{Rejection, Store, StoreError};
use crate::writes::{Upsert, WritePlan, COLLECTIONS, QUIZZES};

type Collections = BTreeMap<&'static str, BTreeMap<String, Document>>;
type RejectFn = Box<dyn Fn(&str, &Upsert) -> Option<String> + Send + Sync>;

#[derive(Default)]
pub struct MemoryStore {
    data: Mutex<Collections>,
    fail_next: AtomicUsize,
    reject: Option<RejectFn>,
    pub applies: AtomicUsize,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Rejects statements for which `f(collection, upsert)` returns a reason.
    pub fn rejecting(f: impl Fn(&str, &Upsert) -> Option<String> + Send + Sync + 'static) -> Self {
        MemoryStore {
            reject: Some(Box::new(f)),
            ..MemoryStore::default()
        }
    }

    /// The next `n` calls to `apply` fail as if the server were down.
    pub fn fail_next(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// A copy of every collection, for assertions.
    pub fn snapshot(&self) -> BTreeMap<&'static str, BTreeMap<String, Document>> {
        self.data.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

fn set_path(doc: &mut Document, path: &str, value: Bson) {
    match path.split_once('.') {
        None => {
            doc.insert(path, value);
        }
        Some((head, rest)) => {
            if !matches!(doc.get(head), Some(Bson::Document(_))) {
                doc.insert(head, Document::new());
            }
            if let Some(Bson::Document(inner)) = doc.get_mut(head) {
                set_path(inner, rest, value);
            }
        }
    }
}

fn apply_upsert(docs: &mut BTreeMap<String, Document>, u: &Upsert) {
    let inserting = !docs.contains_key(&u.id);
    let doc = docs.entry(u.id.clone()).or_insert_with(|| {
        let mut d = Document::new();
        d.insert("_id", u.id.as_str());
        d
    });
    if inserting {
        for (k, v) in &u.set_on_insert {
            set_path(doc, k, v.clone());
        }
    }
    for (k, v) in &u.set {
        set_path(doc, k, v.clone());
    }
    for (k, v) in &u.max {
        let replace = match (doc.get(k), v) {
            (Some(Bson::Int64(old)), Bson::Int64(new)) => new > old,
            _ => true,
        };
        if replace {
            doc.insert(k, v.clone());
        }
    }
    for (k, v) in &u.min {
        let replace = match (doc.get(k), v) {
            (Some(Bson::Int64(old)), Bson::Int64(new)) => new < old,
            _ => true,
        };
        if replace {
            doc.insert(k, v.clone());
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn ensure_schema(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn apply(&self, plan: &WritePlan) -> Result<Vec<Rejection>, StoreError> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError("memory store: simulated outage".into()));
        }
        let mut data = self
            .data
            .lock()
            .map_err(|_| StoreError("memory store poisoned".into()))?;
        let mut rejections = Vec::new();
        for (c, upserts) in plan.upserts.iter().enumerate() {
            let docs = data.entry(COLLECTIONS[c]).or_default();
            for u in upserts {
                if let Some(reason) = self.reject.as_ref().and_then(|f| f(COLLECTIONS[c], u)) {
                    rejections.push(Rejection {
                        events: u.events.clone(),
                        code: 2,
                        message: reason,
                    });
                    continue;
                }
                apply_upsert(docs, u);
            }
        }
        let quizzes = data.entry(QUIZZES).or_default();
        for t in &plan.transitions {
            if let Some(doc) = quizzes.get_mut(&t.quiz_id) {
                let rank = doc.get_i32("state_rank").unwrap_or(0);
                if rank < t.rank {
                    doc.insert("state", t.state);
                    doc.insert("state_rank", t.rank);
                }
            }
        }
        Ok(rejections)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn clear(&self, quiz_id: Option<&str>) -> Result<(), StoreError> {
        let mut data = self
            .data
            .lock()
            .map_err(|_| StoreError("memory store poisoned".into()))?;
        for (name, docs) in data.iter_mut() {
            match quiz_id {
                None => docs.clear(),
                Some(q) => docs.retain(|id, d| {
                    if *name == QUIZZES {
                        id != q
                    } else {
                        d.get_str("quiz_id").map(|x| x != q).unwrap_or(true)
                    }
                }),
            }
        }
        Ok(())
    }
}
