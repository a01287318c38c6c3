//! The `QuizStore` conformance suite: one set of checks, run against every
//! implementation (the in-process `MemoryStore` and `RedisClusterStore` on the
//! local Redis Cluster from `deploy/local/stack up`).
//!
//! The Redis half needs the cluster: it fails loudly when it is missing
//! (`QUIZ_REDIS_NODES`, default `127.0.0.1:7000..7005`), it never skips.
//! Every test works on its own fresh quiz id, so runs never interfere.
//!
//! The Redis Cluster store runs the suite twice: with ordinary quizzes
//! (one slot) and with every quiz's scoring over 3 shards
//! (`redis_cluster_sharded_store`, `Layout { shards: 3 }`: each player's
//! score, answers and pending events in one of three slots, one per
//! master). The layout of the quizzes a check creates is the task-local
//! [`SHARDS`], set by the instantiating macro.

use std::collections::HashMap;
use std::sync::Arc;

use quiz_core::events::{Event, EventKind};
use quiz_core::model::{
    AnswerRecord, ApplyOutcome, Layout, Mode, Phase, Player, Question, QuizDef, QuizState,
};
use quiz_core::store::memory::MemoryStore;
use quiz_core::store::redis_cluster::{self, RedisClusterStore, RedisOptions};
use quiz_core::store::{QuizStore, Retention, StoreError};

type Store = Arc<dyn QuizStore>;

async fn memory() -> Store {
    Arc::new(MemoryStore::new())
}

fn redis_nodes() -> Vec<String> {
    match std::env::var("QUIZ_REDIS_NODES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => (7000..=7005).map(|p| format!("127.0.0.1:{p}")).collect(),
    }
}

async fn redis() -> Store {
    let nodes = redis_nodes();
    match RedisClusterStore::connect(&nodes, RedisOptions::default()).await {
        Ok(s) => Arc::new(s),
        Err(e) => panic!(
            "Redis Cluster at {nodes:?} is required for this test (run `deploy/local/stack up`): {e}"
        ),
    }
}

/// The local stack's `redis-tls` node: TLS with a private CA and an ACL
/// user, as managed Redis services run, through the same URLs and
/// settings core builds from `redis_tls`, `redis_username`,
/// `QUIZ_REDIS_PASSWORD` and `redis_tls_ca_file`. It has no replica, so
/// no `WAIT`.
async fn redis_tls() -> Store {
    let settings = testkit::Settings::from_env();
    let config = quiz_core::config::Config {
        redis_nodes: vec![settings.redis_tls_node.clone()],
        redis_tls: true,
        redis_username: testkit::REDIS_TLS_USER.into(),
        redis_password: testkit::REDIS_TLS_PASSWORD.into(),
        ..Default::default()
    };
    let ca = std::fs::read(&settings.redis_tls_ca).unwrap_or_else(|e| {
        panic!(
            "the redis-tls node's CA {} is required (deploy/local/stack up): {e}",
            settings.redis_tls_ca
        )
    });
    let opts = RedisOptions {
        wait_replicas: 0,
        tls_ca: Some(ca),
        ..RedisOptions::default()
    };
    match RedisClusterStore::connect(&config.redis_urls(), opts).await {
        Ok(s) => Arc::new(s),
        Err(e) => panic!(
            "the redis-tls node at {} is required (deploy/local/stack up): {e}",
            settings.redis_tls_node
        ),
    }
}

fn unique(name: &str) -> String {
    format!("t-{name}-{:08x}", rand::random::<u32>())
}

tokio::task_local! {
    /// The scoring shards of the quizzes the running check creates (1
    /// outside a `SHARDS.scope`).
    static SHARDS: u32;
}

fn def(quiz_id: &str, questions: u32) -> QuizDef {
    def_with(quiz_id, questions, SHARDS.try_with(|s| *s).unwrap_or(1))
}

/// A definition laid out over `shards` scoring shards.
fn def_with(quiz_id: &str, questions: u32, shards: u32) -> QuizDef {
    QuizDef {
        quiz_id: quiz_id.to_string(),
        title: "Conformance".into(),
        mode: Mode::Live,
        questions: (0..questions)
            .map(|i| Question {
                id: i,
                index: i,
                text: format!("question {i}"),
                options: vec!["a".into(), "b".into(), "c".into(), "d".into()],
                correct: vec![0],
                time_limit_ms: 20_000,
                points: 1000,
            })
            .collect(),
        created_at_ms: 1_700_000_000_000,
        layout: Layout {
            spread: 1,
            shards: shards.max(1),
        },
    }
}

fn player(id: &str, nickname: &str) -> Player {
    Player {
        player_id: id.to_string(),
        nickname: nickname.to_string(),
        joined_at_ms: 1_700_000_000_001,
    }
}

fn answer(pid: &str, q: u32, choices: &[u32], points: u32) -> AnswerRecord {
    AnswerRecord {
        player_id: pid.to_string(),
        nickname: format!("nick-{pid}"),
        question_id: q,
        choices: choices.to_vec(),
        correct: points > 0,
        late: false,
        points,
        response_ms: 1234,
        answered_at_ms: 1_700_000_000_500,
    }
}

async fn new_quiz(store: &Store, name: &str, questions: u32) -> String {
    let id = unique(name);
    store
        .create_quiz(&def(&id, questions), &QuizState::new_lobby())
        .await
        .expect("create_quiz");
    id
}

async fn join(store: &Store, quiz: &str, pid: &str) {
    store
        .add_player(quiz, &player(pid, &format!("nick-{pid}")), u64::MAX)
        .await
        .expect("add_player");
}

/// The state after the host's start: version 2, question 0 open.
fn started() -> QuizState {
    QuizState {
        version: 2,
        phase: Phase::Running,
        current_question: Some(0),
        opens_at_ms: Some(1_700_000_000_000),
        closes_at_ms: Some(1_700_000_020_000),
    }
}

fn applied(o: ApplyOutcome) -> (u64, u64) {
    match o {
        ApplyOutcome::Applied { score, rank } => (score, rank),
        other => panic!("expected Applied, got {other:?}"),
    }
}

/// The checks, each a generic async fn over a store.
mod suite {
    use super::*;

    pub async fn create_get_conflict(store: Store) {
        let id = unique("create");
        let d = def(&id, 3);
        assert!(store.get_quiz(&id).await.expect("get").is_none());
        assert!(store.get_state(&id).await.expect("get").is_none());
        store
            .create_quiz(&d, &QuizState::new_lobby())
            .await
            .expect("create");
        let got = store.get_quiz(&id).await.expect("get").expect("exists");
        assert_eq!(*got, d);
        assert_eq!(
            store.get_state(&id).await.expect("state"),
            Some(QuizState::new_lobby())
        );
        // The very same definition again is a retried create: accepted.
        store
            .create_quiz(&d, &QuizState::new_lobby())
            .await
            .expect("retried create");
        let mut other = d.clone();
        other.title = "someone else".into();
        match store.create_quiz(&other, &QuizState::new_lobby()).await {
            Err(StoreError::Conflict(_)) => {}
            r => panic!("expected Conflict, got {r:?}"),
        }
        assert_eq!(*store.get_quiz(&id).await.expect("get").expect("exists"), d);
    }

    pub async fn state_compare_and_set(store: Store) {
        let id = new_quiz(&store, "cas", 2).await;
        let running = QuizState {
            version: 2,
            phase: Phase::Running,
            current_question: Some(0),
            opens_at_ms: Some(10),
            closes_at_ms: Some(20_010),
        };
        assert!(store.set_state(&id, 1, &running).await.expect("cas"));
        // A second writer that read version 1 loses.
        let ended = QuizState {
            version: 2,
            phase: Phase::Ended,
            ..running.clone()
        };
        assert!(!store.set_state(&id, 1, &ended).await.expect("cas"));
        assert_eq!(
            store.get_state(&id).await.expect("get"),
            Some(running.clone())
        );
        let next = QuizState {
            version: 3,
            current_question: Some(1),
            ..running.clone()
        };
        assert!(store.set_state(&id, 2, &next).await.expect("cas"));
        assert_eq!(store.get_state(&id).await.expect("get"), Some(next));
        // next.version must be expected + 1.
        assert!(matches!(
            store.set_state(&id, 3, &running).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.set_state(&unique("nope"), 1, &running).await,
            Err(StoreError::NotFound(_))
        ));
    }

    pub async fn add_player_nicknames(store: Store) {
        let id = new_quiz(&store, "join", 1).await;
        store
            .add_player(&id, &player("p1", "Alice"), u64::MAX)
            .await
            .expect("join");
        for taken in ["alice", "  ALICE ", "Alice"] {
            match store.add_player(&id, &player("p2", taken), u64::MAX).await {
                Err(StoreError::Conflict(_)) => {}
                r => panic!("nickname {taken:?}: expected Conflict, got {r:?}"),
            }
        }
        store
            .add_player(&id, &player("p2", "Bob"), u64::MAX)
            .await
            .expect("join");
        // The very same player again is a retried join: accepted.
        store
            .add_player(&id, &player("p2", "Bob"), u64::MAX)
            .await
            .expect("retried join");
        assert_eq!(
            store.get_player(&id, "p1").await.expect("get"),
            Some(player("p1", "Alice"))
        );
        assert!(store.get_player(&id, "p9").await.expect("get").is_none());
        let lb = store.leaderboard(&id, 10).await.expect("lb");
        assert_eq!(lb.total_players, 2);
        assert!(lb.top.iter().all(|e| e.score == 0 && e.rank == 1));
        let s = store.standing(&id, "p1").await.expect("standing");
        assert_eq!(s.map(|s| (s.score, s.rank)), Some((0, 1)));
        assert!(store.standing(&id, "p9").await.expect("standing").is_none());
        assert!(matches!(
            store
                .add_player(&unique("nope"), &player("p1", "x"), u64::MAX)
                .await,
            Err(StoreError::NotFound(_))
        ));
    }

    /// What idempotent joins rely on (`QuizService::join_with_key`): adding
    /// a player whose id exists never overwrites it, never resets its score,
    /// never adds a second player and never reserves the other nickname.
    pub async fn existing_player_id_is_never_overwritten(store: Store) {
        let id = new_quiz(&store, "rejoin", 1).await;
        join(&store, &id, "p1").await;
        let (score, _) = applied(
            store
                .apply_answer(&id, &answer("p1", 0, &[1], 700))
                .await
                .expect("apply"),
        );
        assert_eq!(score, 700);
        let original = player("p1", "nick-p1");
        let later = Player {
            joined_at_ms: original.joined_at_ms + 5000,
            ..original.clone()
        };
        for again in [later, player("p1", "Other")] {
            match store.add_player(&id, &again, u64::MAX).await {
                Err(StoreError::Conflict(_)) => {}
                r => panic!("{again:?}: expected Conflict, got {r:?}"),
            }
        }
        // The identical record is a no-op success.
        store
            .add_player(&id, &original, u64::MAX)
            .await
            .expect("identical record");
        assert_eq!(
            store.get_player(&id, "p1").await.expect("get"),
            Some(original)
        );
        let s = store.standing(&id, "p1").await.expect("standing");
        assert_eq!(s.map(|s| s.score), Some(700));
        assert_eq!(
            store.leaderboard(&id, 10).await.expect("lb").total_players,
            1
        );
        // "Other" was not reserved by the refused add.
        store
            .add_player(&id, &player("p2", "Other"), u64::MAX)
            .await
            .expect("nickname still free");
        assert_eq!(
            store.leaderboard(&id, 10).await.expect("lb").total_players,
            2
        );
    }

    pub async fn apply_answer_applied_and_duplicate(store: Store) {
        let id = new_quiz(&store, "apply", 2).await;
        join(&store, &id, "p1").await;
        join(&store, &id, "p2").await;
        let first = answer("p1", 0, &[0], 900);
        let (score, rank) = applied(store.apply_answer(&id, &first).await.expect("apply"));
        assert_eq!((score, rank), (900, 1));
        let mut later = answer("p1", 0, &[1], 0);
        later.answered_at_ms += 10;
        match store.apply_answer(&id, &later).await.expect("apply") {
            ApplyOutcome::Duplicate {
                original,
                score,
                rank,
                ..
            } => {
                assert_eq!(original, first);
                assert_eq!((score, rank), (900, 1));
            }
            other => panic!("expected Duplicate, got {other:?}"),
        }
        assert_eq!(
            store.get_answer(&id, "p1", 0).await.expect("get"),
            Some(first)
        );
        assert!(store.get_answer(&id, "p1", 1).await.expect("get").is_none());
        let (score, _) = applied(
            store
                .apply_answer(&id, &answer("p1", 1, &[0], 500))
                .await
                .expect("apply"),
        );
        assert_eq!(score, 1400);
        let (score, rank) = applied(
            store
                .apply_answer(&id, &answer("p2", 0, &[2], 0))
                .await
                .expect("apply"),
        );
        assert_eq!((score, rank), (0, 2));
        assert!(matches!(
            store.apply_answer(&id, &answer("ghost", 0, &[0], 10)).await,
            Err(StoreError::NotFound(_))
        ));
    }

    pub async fn ranks_with_ties_and_leaderboard(store: Store) {
        let id = new_quiz(&store, "ranks", 2).await;
        for p in ["pa", "pb", "pc", "pd", "pe"] {
            join(&store, &id, p).await;
        }
        let v0 = store.leaderboard(&id, 10).await.expect("lb").version;
        for (p, pts) in [("pa", 1000), ("pb", 1000), ("pc", 500), ("pd", 0)] {
            store
                .apply_answer(&id, &answer(p, 0, &[0], pts))
                .await
                .expect("apply");
        }
        let lb = store.leaderboard(&id, 10).await.expect("lb");
        assert_eq!(lb.quiz_id, id);
        assert_eq!(lb.total_players, 5);
        assert_eq!(lb.version, v0 + 4, "one version per applied answer");
        let got: Vec<(u64, &str, u64, &str)> = lb
            .top
            .iter()
            .map(|e| (e.rank, e.player_id.as_str(), e.score, e.nickname.as_str()))
            .collect();
        // "1224" ranks; ties ordered by descending player id (Redis order).
        assert_eq!(
            got,
            vec![
                (1, "pb", 1000, "nick-pb"),
                (1, "pa", 1000, "nick-pa"),
                (3, "pc", 500, "nick-pc"),
                (4, "pe", 0, "nick-pe"),
                (4, "pd", 0, "nick-pd"),
            ]
        );
        let top2 = store.leaderboard(&id, 2).await.expect("lb");
        assert_eq!(top2.top.len(), 2);
        assert_eq!(top2.total_players, 5);
        for (p, rank) in [("pa", 1), ("pb", 1), ("pc", 3), ("pd", 4), ("pe", 4)] {
            let s = store
                .standing(&id, p)
                .await
                .expect("standing")
                .expect("player");
            assert_eq!(s.rank, rank, "rank of {p}");
        }
        // A duplicate changes nothing, the version included.
        store
            .apply_answer(&id, &answer("pa", 0, &[0], 1000))
            .await
            .expect("dup");
        assert_eq!(
            store.leaderboard(&id, 10).await.expect("lb").version,
            lb.version
        );
        // A join bumps the version.
        join(&store, &id, "pf").await;
        assert_eq!(
            store.leaderboard(&id, 10).await.expect("lb").version,
            lb.version + 1
        );
        assert!(matches!(
            store.leaderboard(&unique("nope"), 10).await,
            Err(StoreError::NotFound(_))
        ));
    }

    pub async fn distribution(store: Store) {
        let id = new_quiz(&store, "dist", 2).await;
        for p in ["p1", "p2", "p3", "p4", "p5"] {
            join(&store, &id, p).await;
        }
        store
            .apply_answer(&id, &answer("p1", 0, &[0], 1))
            .await
            .expect("a");
        store
            .apply_answer(&id, &answer("p2", 0, &[0, 2], 0))
            .await
            .expect("a");
        store
            .apply_answer(&id, &answer("p3", 0, &[1], 0))
            .await
            .expect("a");
        // Duplicates and late answers do not count.
        store
            .apply_answer(&id, &answer("p3", 0, &[3], 0))
            .await
            .expect("a");
        let mut late = answer("p4", 0, &[3], 0);
        late.late = true;
        store.apply_answer(&id, &late).await.expect("a");
        store
            .apply_answer(&id, &answer("p5", 1, &[3], 0))
            .await
            .expect("a");
        assert_eq!(
            store.distribution(&id, 0, 4).await.expect("dist"),
            vec![2, 1, 1, 0]
        );
        assert_eq!(
            store.distribution(&id, 1, 4).await.expect("dist"),
            vec![0, 0, 0, 1]
        );
        assert_eq!(
            store.distribution(&id, 1, 2).await.expect("dist"),
            vec![0, 0]
        );
    }

    pub async fn question_sent_at_sticks(store: Store) {
        let id = new_quiz(&store, "sent", 2).await;
        join(&store, &id, "p1").await;
        assert_eq!(
            store.question_sent_at(&id, "p1", 0, 100).await.expect("s"),
            100
        );
        assert_eq!(
            store.question_sent_at(&id, "p1", 0, 200).await.expect("s"),
            100
        );
        assert_eq!(
            store.question_sent_at(&id, "p1", 1, 300).await.expect("s"),
            300
        );
        assert_eq!(
            store.question_sent_at(&id, "p2", 0, 400).await.expect("s"),
            400
        );
        assert!(matches!(
            store.question_sent_at(&unique("nope"), "p1", 0, 1).await,
            Err(StoreError::NotFound(_))
        ));
    }

    /// The state guard: an answer scored against a state version that is
    /// no longer current writes nothing (`None`); at the current version it
    /// is an ordinary apply, duplicates included.
    pub async fn apply_answer_at_state_guard(store: Store) {
        let id = new_quiz(&store, "guard", 2).await;
        join(&store, &id, "p1").await;
        let s1 = store.get_state(&id).await.expect("state").expect("quiz");
        let mut s2 = s1.clone();
        s2.version = s1.version + 1;
        s2.phase = Phase::Running;
        assert!(store.set_state(&id, s1.version, &s2).await.expect("set"));
        let a = answer("p1", 0, &[0], 700);
        // Scored against the old state: refused, nothing written.
        assert_eq!(
            store
                .apply_answer_at_state(&id, &a, s1.version)
                .await
                .expect("apply"),
            None
        );
        assert!(store.get_answer(&id, "p1", 0).await.expect("get").is_none());
        let v0 = store.leaderboard(&id, 10).await.expect("lb").version;
        // At the current version: applied, then a duplicate.
        let o = store
            .apply_answer_at_state(&id, &a, s2.version)
            .await
            .expect("apply")
            .expect("current version");
        assert_eq!(applied(o), (700, 1));
        let mut again = answer("p1", 0, &[1], 0);
        again.answered_at_ms += 5;
        assert!(matches!(
            store.apply_answer_at_state(&id, &again, s2.version).await,
            Ok(Some(ApplyOutcome::Duplicate { score: 700, .. }))
        ));
        assert_eq!(
            store.leaderboard(&id, 10).await.expect("lb").version,
            v0 + 1
        );
        // Concurrent guarded answers at one version count once each.
        join(&store, &id, "p2").await;
        let mut tasks = Vec::new();
        for q in 0..2u32 {
            for pid in ["p1", "p2"] {
                let (store, id) = (Arc::clone(&store), id.clone());
                let a = answer(pid, q, &[0], 10);
                let v = s2.version;
                tasks.push(tokio::spawn(async move {
                    store.apply_answer_at_state(&id, &a, v).await
                }));
            }
        }
        for t in tasks {
            assert!(t.await.expect("join").expect("apply").is_some());
        }
        assert_eq!(
            store.standing(&id, "p2").await.expect("s").map(|s| s.score),
            Some(20)
        );
    }

    /// `present_question`: the send time is set once; an answered question
    /// is `None` and gets no send time; an unknown quiz is `NotFound`.
    pub async fn present_question_once_and_skips_answered(store: Store) {
        let id = new_quiz(&store, "present", 3).await;
        join(&store, &id, "p1").await;
        let p = |q, now| {
            let (store, id) = (Arc::clone(&store), id.clone());
            async move { store.present_question(&id, "p1", q, now).await }
        };
        assert_eq!(p(0, 100).await.expect("p"), Some(100));
        assert_eq!(p(0, 200).await.expect("p"), Some(100));
        // Agrees with question_sent_at (the same stored value).
        assert_eq!(
            store.question_sent_at(&id, "p1", 0, 300).await.expect("s"),
            100
        );
        applied(
            store
                .apply_answer(&id, &answer("p1", 1, &[0], 10))
                .await
                .expect("apply"),
        );
        assert_eq!(p(1, 400).await.expect("p"), None);
        // Many at once (the Redis store batches them): one value each.
        let all = futures::future::join_all((0..20).map(|i| p(2, 500 + i))).await;
        let firsts: Vec<_> = all.into_iter().map(|r| r.expect("p")).collect();
        assert!(firsts.iter().all(|v| *v == firsts[0]), "{firsts:?}");
        assert!(matches!(
            store.present_question(&unique("nope"), "p1", 0, 1).await,
            Err(StoreError::NotFound(_))
        ));
    }

    pub async fn concurrent_same_answer_counts_once(store: Store) {
        let id = new_quiz(&store, "same", 1).await;
        join(&store, &id, "p1").await;
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let store = Arc::clone(&store);
                let id = id.clone();
                tokio::spawn(
                    async move { store.apply_answer(&id, &answer("p1", 0, &[0], 700)).await },
                )
            })
            .collect();
        let mut applied = 0;
        let mut dups = 0;
        for t in tasks {
            match t.await.expect("join").expect("apply") {
                ApplyOutcome::Applied { score, .. } => {
                    assert_eq!(score, 700);
                    applied += 1;
                }
                ApplyOutcome::Duplicate { score, .. } => {
                    assert_eq!(score, 700);
                    dups += 1;
                }
            }
        }
        assert_eq!((applied, dups), (1, 63));
        let s = store.standing(&id, "p1").await.expect("s").expect("player");
        assert_eq!(s.score, 700);
        assert_eq!(
            store.distribution(&id, 0, 4).await.expect("d"),
            vec![1, 0, 0, 0]
        );
    }

    /// Player ids are opaque to the store: ids holding the separators of
    /// the Redis script's packed argument (space, `:`, `|`, `,`, digits
    /// after a colon) still apply, dedupe and rank exactly.
    pub async fn odd_player_ids(store: Store) {
        let id = new_quiz(&store, "odd", 2).await;
        let odd = ["a b", "x:1", "1 2 3 4|5 y:0", ":", "p|q,r"];
        for p in odd {
            join(&store, &id, p).await;
        }
        for (i, p) in odd.iter().enumerate() {
            let a = answer(p, 1, &[0, 2], 100 * (i as u32 + 1));
            let (score, rank) = applied(store.apply_answer(&id, &a).await.expect("apply"));
            assert_eq!((score, rank), (100 * (i as u64 + 1), 1), "{p:?}");
            assert_eq!(store.get_answer(&id, p, 1).await.expect("get"), Some(a));
            let again = answer(p, 1, &[1], 5);
            assert!(
                matches!(
                    store.apply_answer(&id, &again).await.expect("apply"),
                    ApplyOutcome::Duplicate { .. }
                ),
                "{p:?}"
            );
        }
        let s = store.standing(&id, "a b").await.expect("standing");
        assert_eq!(s.map(|s| (s.score, s.rank)), Some((100, 5)));
        assert_eq!(
            store.distribution(&id, 1, 4).await.expect("dist"),
            vec![5, 0, 5, 0]
        );
    }

    /// `max_players` holds under concurrent joins: exactly the cap gets in,
    /// every other join is `Full`; a retried join of a player who got in
    /// still succeeds at the cap.
    pub async fn max_players_is_atomic(store: Store) {
        const CAP: u64 = 7;
        let id = new_quiz(&store, "full", 1).await;
        let tasks: Vec<_> = (0..40)
            .map(|p| {
                let store = Arc::clone(&store);
                let id = id.clone();
                tokio::spawn(async move {
                    let pl = player(&format!("p{p:02}"), &format!("nick{p:02}"));
                    (pl.clone(), store.add_player(&id, &pl, CAP).await)
                })
            })
            .collect();
        let (mut ok, mut full) = (Vec::new(), 0);
        for t in tasks {
            match t.await.expect("join") {
                (pl, Ok(())) => ok.push(pl),
                (_, Err(StoreError::Full(_))) => full += 1,
                (_, Err(e)) => panic!("unexpected {e}"),
            }
        }
        assert_eq!((ok.len() as u64, full), (CAP, 40 - CAP as usize));
        let lb = store.leaderboard(&id, 100).await.expect("lb");
        assert_eq!(lb.total_players, CAP);
        store
            .add_player(&id, &ok[0], CAP)
            .await
            .expect("a retried join of a player who is in");
        assert!(matches!(
            store.add_player(&id, &player("late", "late"), CAP).await,
            Err(StoreError::Full(_))
        ));
    }

    /// The event outbox: each write that produces an event records it as
    /// pending in the same step (only when the write applies), the
    /// pending events come back exactly as recorded, an answer's with the
    /// score it gave, a duplicate says whether the original's event is
    /// still pending, and `clear_pending` removes acknowledged ones.
    pub async fn pending_events_outbox(store: Store) {
        let id = unique("pending");
        let d = def(&id, 2);
        let created = Event::new(
            &id,
            d.created_at_ms,
            EventKind::QuizCreated {
                title: d.title.clone(),
                mode: d.mode,
                questions: d.questions.clone(),
            },
        );
        store
            .create_quiz_with_event(&d, &QuizState::new_lobby(), Some(&created))
            .await
            .expect("create");
        let p1 = player("p1", "nick-p1");
        let joined = Event::new(
            &id,
            p1.joined_at_ms,
            EventKind::PlayerJoined {
                player_id: "p1".into(),
                nickname: "nick-p1".into(),
            },
        );
        store
            .add_player_with_event(&id, &p1, u64::MAX, Some(&joined))
            .await
            .expect("join");
        // A replayed join records nothing new (and nothing twice).
        store
            .add_player_with_event(&id, &p1, u64::MAX, Some(&joined))
            .await
            .expect("join again");
        let running = started();
        let started = Event::new(&id, 1_700_000_000_000, EventKind::QuizStarted);
        let opened = Event::new(
            &id,
            1_700_000_000_000,
            EventKind::QuestionOpened {
                question_id: 0,
                opens_at_ms: 1_700_000_000_000,
                closes_at_ms: 1_700_000_020_000,
            },
        );
        assert!(store
            .set_state_with_events(&id, 1, &running, &[started.clone(), opened.clone()])
            .await
            .expect("start"));
        // A lost compare-and-set records nothing.
        let lost = Event::new(&id, 1, EventKind::QuizEnded { top: vec![] });
        assert!(!store
            .set_state_with_events(&id, 1, &running, std::slice::from_ref(&lost))
            .await
            .expect("lost cas"));
        let first = answer("p1", 0, &[0], 900);
        applied(store.apply_answer(&id, &first).await.expect("apply"));
        let scored = Event::new(
            &id,
            first.answered_at_ms,
            EventKind::AnswerScored {
                answer: first.clone(),
                score_after: 900,
            },
        );
        let sorted = |mut v: Vec<Event>| {
            v.sort_by(|a, b| a.event_id.cmp(&b.event_id));
            v
        };
        let all = vec![
            created.clone(),
            joined.clone(),
            started.clone(),
            opened.clone(),
            scored.clone(),
        ];
        assert_eq!(
            sorted(store.pending_events(&id, 100).await.expect("pending")),
            sorted(all.clone())
        );
        assert!(store.pending_events(&id, 2).await.expect("pending").len() <= 5);
        assert!(!store.is_pending(&id, &lost.event_id).await.expect("is"));
        assert!(store.is_pending(&id, &scored.event_id).await.expect("is"));
        // The original's event is pending: a duplicate says so.
        match store.apply_answer(&id, &answer("p1", 0, &[1], 0)).await {
            Ok(ApplyOutcome::Duplicate { pending: true, .. }) => {}
            other => panic!("expected a duplicate with a pending event, got {other:?}"),
        }
        // The log acknowledged the answer and the creation.
        store
            .clear_pending(
                &id,
                &[
                    scored.event_id.clone(),
                    created.event_id.clone(),
                    "x".into(),
                ],
            )
            .await
            .expect("clear");
        assert!(!store.is_pending(&id, &scored.event_id).await.expect("is"));
        assert!(!store.is_pending(&id, &created.event_id).await.expect("is"));
        assert!(store.is_pending(&id, &joined.event_id).await.expect("is"));
        match store.apply_answer(&id, &answer("p1", 0, &[1], 0)).await {
            Ok(ApplyOutcome::Duplicate { pending: false, .. }) => {}
            other => panic!("expected a duplicate with no pending event, got {other:?}"),
        }
        assert_eq!(
            sorted(store.pending_events(&id, 100).await.expect("pending")),
            sorted(vec![joined, started, opened])
        );
        assert!(store
            .pending_events(&unique("none"), 10)
            .await
            .expect("unknown quiz")
            .is_empty());
    }

    /// The same joins and answers in a one-slot quiz and in a quiz over
    /// three shards give the same replies, the same leaderboard (order,
    /// ties, ranks, totals, version), standings and distributions: the
    /// shards are invisible. The players are picked so that ties span
    /// shards (in the Redis store, `shard_of` spreads them).
    pub async fn sharded_quiz_scores_like_one_slot(store: Store) {
        let one = unique("one");
        let three = unique("three");
        for (id, shards) in [(&one, 1), (&three, 3)] {
            store
                .create_quiz(&def_with(id, 3, shards), &QuizState::new_lobby())
                .await
                .expect("create");
        }
        let pids: Vec<String> = (0..24).map(|i| format!("p{i:02}")).collect();
        for p in &pids {
            for id in [&one, &three] {
                join(&store, id, p).await;
            }
        }
        // Few distinct point values: many ties, across shards.
        let mut replies = Vec::new();
        for q in 0..3u32 {
            for (i, p) in pids.iter().enumerate() {
                if (i as u32 + q) % 5 == 0 {
                    continue; // some players skip a question
                }
                let pts = [0, 500, 1000][(i * 7 + q as usize) % 3];
                let a = answer(p, q, &[(i as u32 + q) % 4], pts);
                let r1 = store.apply_answer(&one, &a).await.expect("apply");
                let r3 = store.apply_answer(&three, &a).await.expect("apply");
                assert_eq!(r1, r3, "{p} q{q}");
                replies.push(r1);
            }
        }
        // A duplicate too.
        let dup = answer("p01", 0, &[3], 1000);
        assert_eq!(
            store.apply_answer(&one, &dup).await.expect("dup"),
            store.apply_answer(&three, &dup).await.expect("dup")
        );
        for limit in [1, 5, 7, 24, 100] {
            let mut l1 = store.leaderboard(&one, limit).await.expect("lb");
            let l3 = store.leaderboard(&three, limit).await.expect("lb");
            l1.quiz_id.clone_from(&l3.quiz_id);
            assert_eq!(l1, l3, "top {limit}");
        }
        for p in &pids {
            assert_eq!(
                store.standing(&one, p).await.expect("s"),
                store.standing(&three, p).await.expect("s"),
                "{p}"
            );
            assert_eq!(
                store.get_answer(&one, p, 1).await.expect("a"),
                store.get_answer(&three, p, 1).await.expect("a")
            );
        }
        for q in 0..3 {
            assert_eq!(
                store.distribution(&one, q, 4).await.expect("d"),
                store.distribution(&three, q, 4).await.expect("d")
            );
        }
        let full = store.leaderboard(&three, 100).await.expect("lb");
        assert_eq!(full.total_players, 24);
        assert!(full.top.iter().any(|e| e.rank > 1 && e.rank < 24));
        assert!(store.standing(&three, "ghost").await.expect("s").is_none());
        assert!(matches!(
            store
                .apply_answer(&three, &answer("ghost", 0, &[0], 1))
                .await,
            Err(StoreError::NotFound(_))
        ));
    }

    /// Ranks stay exact when many answers with equal scores arrive at
    /// once: in a sharded quiz they share the batcher's rounds, their
    /// shards' batches, and the one count per shard and round of the other
    /// shards' scores (deduplicated: equal scores counted once, their
    /// counts handed to every answer carrying them). Answers worth 0 points
    /// leave every score as it is, so each such answer's rank must be
    /// exactly 1 + the players strictly higher, even under concurrency.
    pub async fn equal_scores_at_once_rank_exactly(store: Store) {
        const PLAYERS: usize = 60;
        let id = new_quiz(&store, "eqrank", 2).await;
        let pids: Vec<String> = (0..PLAYERS).map(|i| format!("p{i:03}")).collect();
        for p in &pids {
            join(&store, &id, p).await;
        }
        // Three point values: ~20 players on each score, spread over the
        // shards; all sent at once.
        let points = |i: usize| [0u32, 500, 1000][i % 3];
        let send = |q: u32, pts: &dyn Fn(usize) -> u32| {
            pids.iter()
                .enumerate()
                .map(|(i, p)| {
                    let store = Arc::clone(&store);
                    let id = id.clone();
                    let a = answer(p, q, &[0], pts(i));
                    tokio::spawn(async move { store.apply_answer(&id, &a).await })
                })
                .collect::<Vec<_>>()
        };
        let mut first = Vec::new();
        for t in send(0, &points) {
            first.push(applied(t.await.expect("join").expect("apply")));
        }
        let higher = |s: u64| (0..PLAYERS).filter(|i| u64::from(points(*i)) > s).count() as u64;
        for (i, (score, rank)) in first.iter().enumerate() {
            assert_eq!(*score, u64::from(points(i)));
            // Counted after the write: never more players above than at
            // the end (scores only grow), never fewer than 1.
            assert!(*rank >= 1 && *rank <= 1 + higher(*score), "{i}: {rank}");
        }
        // Nothing moves now: every rank is exact.
        for (i, t) in send(1, &|_| 0).into_iter().enumerate() {
            let (score, rank) = applied(t.await.expect("join").expect("apply"));
            assert_eq!(score, u64::from(points(i)));
            assert_eq!(rank, 1 + higher(score), "{}", pids[i]);
        }
        for (i, p) in pids.iter().enumerate() {
            let s = store.standing(&id, p).await.expect("s").expect("player");
            assert_eq!(s.rank, 1 + higher(u64::from(points(i))), "{p}");
        }
    }

    pub async fn many_players_concurrent_totals(store: Store) {
        const PLAYERS: u32 = 40;
        const QUESTIONS: u32 = 10;
        let id = new_quiz(&store, "many", QUESTIONS).await;
        for p in 0..PLAYERS {
            join(&store, &id, &format!("p{p:03}")).await;
        }
        let v0 = store.leaderboard(&id, 1).await.expect("lb").version;
        // Every player answers every question, all at once, each answer
        // also sent twice (a retrying client): totals must be exact.
        let mut tasks = Vec::new();
        let mut expected: HashMap<String, u64> = HashMap::new();
        for p in 0..PLAYERS {
            let pid = format!("p{p:03}");
            for q in 0..QUESTIONS {
                let pts = (p * 7 + q * 13) % 1000;
                *expected.entry(pid.clone()).or_default() += u64::from(pts);
                for _ in 0..2 {
                    let store = Arc::clone(&store);
                    let id = id.clone();
                    let a = answer(&pid, q, &[q % 4], pts);
                    tasks.push(tokio::spawn(
                        async move { store.apply_answer(&id, &a).await },
                    ));
                }
            }
        }
        let mut applied = 0;
        for t in tasks {
            if let ApplyOutcome::Applied { .. } = t.await.expect("join").expect("apply") {
                applied += 1;
            }
        }
        assert_eq!(applied, PLAYERS * QUESTIONS);
        let lb = store.leaderboard(&id, 1000).await.expect("lb");
        assert_eq!(lb.total_players, u64::from(PLAYERS));
        assert_eq!(lb.version, v0 + u64::from(PLAYERS * QUESTIONS));
        for e in &lb.top {
            assert_eq!(
                Some(&e.score),
                expected.get(&e.player_id),
                "{}",
                e.player_id
            );
            let higher = expected.values().filter(|s| **s > e.score).count() as u64;
            assert_eq!(e.rank, higher + 1);
        }
        assert!(lb.top.windows(2).all(|w| w[0].score >= w[1].score));
    }
}

/// Instantiates every check of the suite for one store factory, its
/// quizzes laid out over `$shards` scoring shards.
macro_rules! conformance {
    ($name:ident, $factory:path) => {
        conformance!($name, $factory, 1);
    };
    ($name:ident, $factory:path, $shards:expr) => {
        mod $name {
            use super::*;

            macro_rules! check {
                ($t:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $t() {
                        let store = $factory().await;
                        SHARDS.scope($shards, suite::$t(store)).await;
                    }
                };
            }

            check!(create_get_conflict);
            check!(state_compare_and_set);
            check!(add_player_nicknames);
            check!(existing_player_id_is_never_overwritten);
            check!(apply_answer_applied_and_duplicate);
            check!(ranks_with_ties_and_leaderboard);
            check!(distribution);
            check!(question_sent_at_sticks);
            check!(apply_answer_at_state_guard);
            check!(present_question_once_and_skips_answered);
            check!(concurrent_same_answer_counts_once);
            check!(odd_player_ids);
            check!(many_players_concurrent_totals);
            check!(max_players_is_atomic);
            check!(pending_events_outbox);
            check!(sharded_quiz_scores_like_one_slot);
            check!(equal_scores_at_once_rank_exactly);
        }
    };
}

conformance!(memory_store, memory);
conformance!(redis_cluster_store, redis);
conformance!(redis_cluster_sharded_store, redis, 3);
conformance!(redis_tls_store, redis_tls);

/// Retention of the Redis store's keys (the memory store's quizzes: below):
/// every key of a quiz has a lifetime from the moment it exists,
/// the live retention while the quiz runs (also when its host abandons it
/// mid-question), the ended retention once it ends. Nothing of a quiz stays
/// in Redis for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_of_a_quiz_expire_live_and_after_the_end() {
    keys_expire(1).await;
}

/// The same over three shards: every shard's keys (state copy, scores,
/// answers, distributions, sent times, pending answers) too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_of_a_sharded_quiz_expire_live_and_after_the_end() {
    keys_expire(3).await;
}

/// The memory store keeps a quiz as long as Redis keeps its keys: the live
/// retention after its creation or last state change, the ended retention
/// after its end; then it is gone, its id is free again, and its memory is
/// freed (by the lookup, or by the sweep a later creation runs).
#[tokio::test(start_paused = true)]
async fn memory_quizzes_expire_live_and_after_the_end() {
    use quiz_core::store::memory::SWEEP_EVERY;
    use std::time::Duration;
    let live = Duration::from_secs(3600);
    let ended = Duration::from_secs(120);
    let memory = Arc::new(MemoryStore::with_retention(Retention { live, ended }));
    let store: Store = memory.clone();
    let minute = Duration::from_secs(60);

    // Abandoned in the lobby: kept for the live retention, then gone.
    let abandoned = new_quiz(&store, "abandoned", 2).await;
    join(&store, &abandoned, "p1").await;
    tokio::time::advance(live - minute).await;
    assert!(store.get_quiz(&abandoned).await.unwrap().is_some());

    // Started now: a state change renews the live retention.
    let running = started();
    let renewed = new_quiz(&store, "renewed", 2).await;
    tokio::time::advance(minute * 2).await;
    assert!(store.get_quiz(&abandoned).await.unwrap().is_none());
    assert!(store.get_state(&abandoned).await.unwrap().is_none());
    assert!(matches!(
        store
            .add_player(&abandoned, &player("p2", "nick-p2"), u64::MAX)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.set_state(&renewed, 1, &running).await.unwrap());
    tokio::time::advance(live - minute).await;
    assert!(store.get_quiz(&renewed).await.unwrap().is_some());

    // Ended: kept for the ended retention from the end.
    let ended_state = QuizState {
        version: 3,
        phase: Phase::Ended,
        current_question: None,
        opens_at_ms: None,
        closes_at_ms: None,
    };
    assert!(store.set_state(&renewed, 2, &ended_state).await.unwrap());
    tokio::time::advance(ended - Duration::from_secs(1)).await;
    assert_eq!(store.get_state(&renewed).await.unwrap(), Some(ended_state));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(store.get_state(&renewed).await.unwrap().is_none());

    // An expired quiz's id can be created again, as a new quiz.
    store
        .create_quiz(&def(&renewed, 3), &QuizState::new_lobby())
        .await
        .expect("the expired id is free");
    assert_eq!(
        store
            .get_quiz(&renewed)
            .await
            .unwrap()
            .unwrap()
            .questions
            .len(),
        3
    );

    // Expired quizzes nobody looks up are freed by a later creation's sweep.
    let before = memory.quiz_count();
    let forgotten = new_quiz(&store, "forgotten", 1).await;
    assert_eq!(memory.quiz_count(), before + 1);
    tokio::time::advance(live + SWEEP_EVERY).await;
    let _fresh = new_quiz(&store, "fresh", 1).await;
    assert_eq!(memory.quiz_count(), 1, "only the fresh quiz is left");
    assert!(store.get_quiz(&forgotten).await.unwrap().is_none());
}

/// The hash tags of a quiz's slots: the main one, then its shards'.
fn tags_of(id: &str, shards: u32) -> Vec<String> {
    let mut tags = vec![id.to_string()];
    if shards > 1 {
        tags.extend((0..shards).map(|s| redis_cluster::shard_tag(id, s, shards)));
    }
    tags
}

async fn keys_expire(shards: u32) {
    use redis::AsyncCommands;
    let live = std::time::Duration::from_secs(3600);
    let ended = std::time::Duration::from_secs(120);
    let opts = RedisOptions {
        retention: Retention { live, ended },
        ..RedisOptions::default()
    };
    let store: Store = Arc::new(
        RedisClusterStore::connect(&redis_nodes(), opts)
            .await
            .expect("the Redis Cluster is required (deploy/local/stack up)"),
    );
    let mut redis = testkit::require_redis_cluster().await;
    let id = SHARDS.scope(shards, new_quiz(&store, "retention", 2)).await;
    join(&store, &id, "p1").await;
    join(&store, &id, "p2").await;
    let running = started();
    assert!(store.set_state(&id, 1, &running).await.expect("start"));
    // Written after the last state change: these keys must inherit a
    // lifetime when they are created (an abandoned quiz stops here).
    store
        .apply_answer(&id, &answer("p1", 0, &[0], 900))
        .await
        .expect("answer");
    store
        .present_question(&id, "p2", 0, 1_700_000_000_100)
        .await
        .expect("present");
    // A join's pending event (the event outbox): its hash is created now.
    let late = player("p3", "nick-p3");
    let joined = Event::new(
        &id,
        late.joined_at_ms,
        EventKind::PlayerJoined {
            player_id: "p3".into(),
            nickname: "nick-p3".into(),
        },
    );
    store
        .add_player_with_event(&id, &late, u64::MAX, Some(&joined))
        .await
        .expect("join with event");
    let suffixes = [
        "def",
        "state",
        "players",
        "nicks",
        "leaderboard",
        "answers",
        "lbver",
        "sent",
        "dist:0",
        "pending",
        "pending_answers",
    ];
    let keys: Vec<String> = tags_of(&id, shards)
        .iter()
        .flat_map(|t| suffixes.iter().map(move |s| format!("quiz:{{{t}}}:{s}")))
        .collect();
    // Every key that exists (a sharded quiz's keys are spread: not every
    // slot has every kind), and at least the ordinary quiz's eleven.
    let ttls = async |redis: &mut redis::cluster_async::ClusterConnection| {
        let mut out = Vec::new();
        for k in &keys {
            let ttl: i64 = redis.ttl(k).await.expect("TTL");
            if ttl != -2 {
                out.push((k.clone(), ttl));
            }
        }
        assert!(out.len() >= suffixes.len(), "too few keys: {out:?}");
        out
    };
    for (k, ttl) in ttls(&mut redis).await {
        assert!(
            ttl > (live.as_secs() as i64) - 60 && ttl <= live.as_secs() as i64,
            "{k}: TTL {ttl} s, expected the live retention ({} s)",
            live.as_secs()
        );
    }
    let ended_state = QuizState {
        version: 3,
        phase: Phase::Ended,
        current_question: Some(0),
        opens_at_ms: None,
        closes_at_ms: None,
    };
    assert!(store.set_state(&id, 2, &ended_state).await.expect("end"));
    for (k, ttl) in ttls(&mut redis).await {
        assert!(
            ttl > 0 && ttl <= ended.as_secs() as i64,
            "{k}: TTL {ttl} s after the end, expected at most {} s",
            ended.as_secs()
        );
    }
}

/// A sharded quiz's store on the local cluster and a plain connection to
/// it, for the checks that reach under the store (Redis only).
async fn sharded_fixture(name: &str) -> (Store, redis::cluster_async::ClusterConnection, String) {
    let store = redis().await;
    let conn = testkit::require_redis_cluster().await;
    let id = SHARDS.scope(3, new_quiz(&store, name, 2)).await;
    (store, conn, id)
}

/// The key `suffix` of `player`'s shard of a 3-shard quiz.
fn shard_key(id: &str, player: &str, suffix: &str) -> String {
    let tag = redis_cluster::shard_tag(id, redis_cluster::shard_of(player, 3), 3);
    format!("quiz:{{{tag}}}:{suffix}")
}

/// A join's second step (its player's score 0 in the shard) lost, as
/// when the node dies between the two scripts: the player's answer is
/// still applied (the store finds them in the main slot and redoes the
/// shard step), their standing is found, a retried join redoes it too,
/// and nothing is counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sharded_join_whose_shard_step_was_lost_is_repaired() {
    use redis::AsyncCommands;
    let (store, conn, id) = sharded_fixture("joinfix").await;
    for p in ["p1", "p2", "p3", "p4"] {
        join(&store, &id, p).await;
    }
    let lost = |p: &'static str| {
        let (k, mut conn) = (shard_key(&id, p, "leaderboard"), conn.clone());
        async move {
            let removed: i64 = conn.zrem(&k, p).await.expect("ZREM");
            assert_eq!(removed, 1, "{p} was in its shard");
        }
    };
    // An answer of a player missing from its shard: applied, exactly once.
    lost("p1").await;
    assert_eq!(
        store.leaderboard(&id, 10).await.expect("lb").total_players,
        3
    );
    let (score, rank) = applied(
        store
            .apply_answer(&id, &answer("p1", 0, &[0], 800))
            .await
            .expect("apply"),
    );
    assert_eq!((score, rank), (800, 1));
    let lb = store.leaderboard(&id, 10).await.expect("lb");
    assert_eq!(lb.total_players, 4);
    assert_eq!((lb.top[0].player_id.as_str(), lb.top[0].score), ("p1", 800));
    // A standing of a player missing from its shard: found, at 0.
    lost("p2").await;
    let s = store.standing(&id, "p2").await.expect("standing");
    assert_eq!(s.map(|s| (s.score, s.rank)), Some((0, 2)));
    // A retried join (the very same player): the shard step again.
    lost("p3").await;
    join(&store, &id, "p3").await;
    assert_eq!(
        store.leaderboard(&id, 10).await.expect("lb").total_players,
        4
    );
    // A guarded answer too.
    lost("p4").await;
    let v = store
        .get_state(&id)
        .await
        .expect("state")
        .expect("quiz")
        .version;
    let o = store
        .apply_answer_at_state(&id, &answer("p4", 0, &[1], 300), v)
        .await
        .expect("apply")
        .expect("current version");
    assert_eq!(applied(o), (300, 2));
    // Not a player at all is still NotFound.
    assert!(matches!(
        store.apply_answer(&id, &answer("p9", 0, &[0], 1)).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.distribution(&id, 0, 4).await.expect("dist"),
        vec![1, 1, 0, 0]
    );
}

/// A shard's state copy lagging behind the main state, as when the node
/// that changed the state dies before pushing the copies. An answer scored
/// at the new version is applied (the store pushes the main state to the
/// shard first, never applying it against the old copy); a reader of the
/// new state (any node) first brings every copy up to it, after which an
/// answer scored at the old version is refused like in one slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sharded_lagging_state_copy_is_caught_up_never_used() {
    let (store, mut conn, id) = sharded_fixture("lag").await;
    let pid = "p1";
    join(&store, &id, pid).await;
    let s1 = store.get_state(&id).await.expect("state").expect("quiz");
    let s2 = QuizState {
        version: s1.version + 1,
        phase: Phase::Running,
        current_question: Some(0),
        opens_at_ms: Some(1_700_000_000_000),
        closes_at_ms: Some(1_700_000_020_000),
    };
    assert!(store.set_state(&id, s1.version, &s2).await.expect("set"));
    let copy = shard_key(&id, pid, "state");
    let lag = async |conn: &mut redis::cluster_async::ClusterConnection| {
        let _: () = redis::cmd("SET")
            .arg(&copy)
            .arg(serde_json::to_string(&s1).expect("json"))
            .arg("KEEPTTL")
            .query_async(conn)
            .await
            .expect("SET");
    };
    // Another node (a fresh store: it has verified no copy), answers
    // scored at the main state's version meet the old copy.
    lag(&mut conn).await;
    let other = redis().await;
    let o = other
        .apply_answer_at_state(&id, &answer(pid, 0, &[0], 600), s2.version)
        .await
        .expect("apply")
        .expect("applied after the copy caught up");
    assert_eq!(applied(o), (600, 1));
    let got: String = redis::cmd("GET")
        .arg(&copy)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(serde_json::from_str::<QuizState>(&got).expect("state"), s2);
    // Lagging again; a third node reads the state: the copies first.
    lag(&mut conn).await;
    let third = redis().await;
    assert_eq!(third.get_state(&id).await.expect("state"), Some(s2.clone()));
    // An answer scored at the old version is refused: nothing written.
    assert_eq!(
        third
            .apply_answer_at_state(&id, &answer(pid, 1, &[0], 600), s1.version)
            .await
            .expect("apply"),
        None
    );
    assert!(third.get_answer(&id, pid, 1).await.expect("get").is_none());
    // A push of an older state never moves a copy back: the state change
    // after s2 with s2's copy already there is a plain CAS.
    let s3 = QuizState {
        version: s2.version + 1,
        ..s2.clone()
    };
    assert!(third.set_state(&id, s2.version, &s3).await.expect("set"));
    assert_eq!(
        store
            .apply_answer_at_state(&id, &answer(pid, 1, &[0], 1), s2.version)
            .await
            .expect("apply"),
        None
    );
}

/// A sharded quiz's ranks when the batcher's guesses of the new scores are
/// wrong (Redis only: the guesses are the Redis store's): another node
/// (a second store) moves the players' scores behind the first one's back,
/// so the first one's guesses (last score seen + points) miss for those
/// players and their answers are counted again after the round. Answers
/// worth 0 points leave every score as it is: each rank must be exactly 1 +
/// the players strictly higher, whichever way it was counted, also for an
/// answer alone in its round (the other shards then get a count of their
/// own in the same round trip).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sharded_ranks_exact_when_guesses_miss() {
    const PLAYERS: usize = 30;
    let connect = || async {
        let s: Store = Arc::new(
            RedisClusterStore::connect(&redis_nodes(), RedisOptions::default())
                .await
                .expect("the Redis Cluster is required (deploy/local/stack up)"),
        );
        s
    };
    let (a, b) = (connect().await, connect().await);
    let id = SHARDS.scope(3, new_quiz(&a, "guess", 4)).await;
    let pids: Vec<String> = (0..PLAYERS).map(|i| format!("p{i:02}")).collect();
    for p in &pids {
        join(&a, &id, p).await;
    }
    let all_at_once = |store: &Store, q: u32, pts: fn(usize) -> u32| {
        let tasks: Vec<_> = pids
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let store = Arc::clone(store);
                let (id, ans) = (id.clone(), answer(p, q, &[0], pts(i)));
                tokio::spawn(async move { store.apply_answer(&id, &ans).await })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for t in tasks {
                out.push(applied(t.await.expect("join").expect("apply")));
            }
            out
        }
    };
    // Store a learns every score; store b then moves half of them.
    let q0 = |i: usize| [0, 500, 1000][i % 3];
    let q1 = |i: usize| [0, 1000][i % 2];
    all_at_once(&a, 0, q0).await;
    all_at_once(&b, 1, q1).await;
    let score = |i: usize| u64::from(q0(i) + q1(i));
    let higher = |s: u64| (0..PLAYERS).filter(|i| score(*i) > s).count() as u64;
    for (i, (s, rank)) in all_at_once(&a, 2, |_| 0).await.into_iter().enumerate() {
        assert_eq!(s, score(i), "{}", pids[i]);
        assert_eq!(rank, 1 + higher(s), "{}", pids[i]);
    }
    // One answer alone in its round, guessed right this time.
    let (s, rank) = applied(
        a.apply_answer(&id, &answer(&pids[4], 3, &[0], 0))
            .await
            .expect("apply"),
    );
    assert_eq!((s, rank), (score(4), 1 + higher(score(4))));
}

/// A queue of one job in front of the batcher, one batch in flight, and
/// 300 answers at once: nearly every caller finds the queue full and
/// waits for room (the path a burst takes past `queue_capacity`), and
/// every answer is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_answers_wait_for_room_in_a_full_queue() {
    let opts = RedisOptions {
        queue_capacity: 1,
        max_in_flight: 1,
        ..RedisOptions::default()
    };
    let store: Store = Arc::new(
        RedisClusterStore::connect(&redis_nodes(), opts)
            .await
            .expect("the Redis Cluster is required (deploy/local/stack up)"),
    );
    const PLAYERS: usize = 300;
    let id = new_quiz(&store, "full-queue", 1).await;
    for p in 0..PLAYERS {
        join(&store, &id, &format!("p{p}")).await;
    }
    assert!(store.set_state(&id, 1, &started()).await.expect("start"));
    let answers = (0..PLAYERS).map(|p| {
        let store = Arc::clone(&store);
        let id = id.clone();
        tokio::spawn(async move {
            store
                .apply_answer(&id, &answer(&format!("p{p}"), 0, &[0], 1000))
                .await
        })
    });
    let outcomes = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        futures::future::join_all(answers),
    )
    .await
    .expect("every answer within 60 s");
    for o in outcomes {
        let o = o.expect("task").expect("applied, not refused");
        assert!(
            matches!(o, ApplyOutcome::Applied { score: 1000, .. }),
            "{o:?}"
        );
    }
    let board = store.leaderboard(&id, PLAYERS).await.expect("leaderboard");
    assert_eq!(board.top.len(), PLAYERS);
    assert!(board.top.iter().all(|e| e.score == 1000), "{board:?}");
}
