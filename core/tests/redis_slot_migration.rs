//! A live slot migration (resharding) in the middle of a stream of
//! concurrent answers, against the local Redis Cluster (`deploy/local/stack
//! up`): the path where the store meets `ASK` redirections (a key already
//! moved), `TRYAGAIN` (a script whose keys are split between the two
//! masters) and, once the slot has moved, `MOVED`.
//!
//! The quiz's slot is migrated key by key, slowly, from its master to
//! another master while workers keep applying answers (retrying what the
//! store did not acknowledge, as a player's client would), then migrated
//! back. Afterwards every player's score must equal the sum of the points
//! acknowledged to them, and re-applying every answer must come back
//! `Duplicate` with the very answer that counted: nothing acknowledged
//! lost, nothing counted twice. Fails loudly without the cluster.

mod cluster_admin;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_admin::*;
use quiz_core::model::{AnswerRecord, ApplyOutcome, Mode, Player, Question, QuizDef, QuizState};
use quiz_core::store::redis_cluster::{RedisClusterStore, RedisOptions};
use quiz_core::store::{QuizStore, StoreError};

const PLAYERS: u32 = 100;
const QUESTIONS: u32 = 30;
const WORKERS: usize = 20;

fn answer(pid: &str, q: u32) -> AnswerRecord {
    let points = (pid.len() as u32 * 37 + q * 13) % 1000 + 1;
    AnswerRecord {
        player_id: pid.to_string(),
        nickname: pid.to_string(),
        question_id: q,
        choices: vec![q % 4],
        correct: true,
        late: false,
        points,
        response_ms: 500,
        answered_at_ms: 1_700_000_000_000 + u64::from(q),
    }
}

/// Moves `slot` from `from` to `to` the way `redis-cli --cluster reshard`
/// does (IMPORTING / MIGRATING, `MIGRATE` in batches, `SETSLOT NODE`), one
/// key per `MIGRATE` with a pause between, so that answers keep arriving
/// while some of the quiz's keys are on each side. Returns the keys moved.
async fn migrate_slot(slot: u16, from: &Node, to: &Node, masters: &[Node]) -> usize {
    let setslot = |state: &str, id: &str| {
        let mut c = redis::cmd("CLUSTER");
        c.arg("SETSLOT").arg(slot).arg(state).arg(id);
        c
    };
    let _: () = query(&to.addr, &setslot("IMPORTING", &from.id))
        .await
        .expect("SETSLOT IMPORTING");
    let _: () = query(&from.addr, &setslot("MIGRATING", &to.id))
        .await
        .expect("SETSLOT MIGRATING");
    let (host, port) = to.addr.rsplit_once(':').expect("host:port");
    let mut moved = 0;
    loop {
        let keys: Vec<String> = query(
            &from.addr,
            redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(1),
        )
        .await
        .expect("GETKEYSINSLOT");
        let Some(key) = keys.first() else { break };
        let r: redis::RedisResult<String> = query(
            &from.addr,
            redis::cmd("MIGRATE")
                .arg(host)
                .arg(port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(key),
        )
        .await;
        match r {
            Ok(_) => moved += 1,
            // The key vanished or was (re)created meanwhile: look again.
            Err(e) => eprintln!("MIGRATE {key}: {e} (retrying)"),
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // The new owner first, then the old one, then everyone else (what
    // redis-cli does), so no node points back at the source.
    let _: () = query(&to.addr, &setslot("NODE", &to.id))
        .await
        .expect("SETSLOT NODE (target)");
    let _: () = query(&from.addr, &setslot("NODE", &to.id))
        .await
        .expect("SETSLOT NODE (source)");
    for m in masters {
        if m.id != from.id && m.id != to.id {
            let _: redis::RedisResult<()> = query(&m.addr, &setslot("NODE", &to.id)).await;
        }
    }
    moved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_migration_loses_and_doubles_nothing() {
    let nodes = redis_nodes();
    let seed = nodes[0].clone();
    wait_healthy(&nodes).await;
    let store = Arc::new(
        RedisClusterStore::connect(&nodes, RedisOptions::default())
            .await
            .unwrap_or_else(|e| panic!("Redis Cluster at {nodes:?} is required: {e}")),
    );
    let quiz = format!("mig-{:08x}", rand::random::<u32>());
    let def = QuizDef {
        quiz_id: quiz.clone(),
        title: "migration".into(),
        mode: Mode::SelfPaced,
        questions: (0..QUESTIONS)
            .map(|i| Question {
                id: i,
                index: i,
                text: format!("q{i}"),
                options: vec!["a".into(), "b".into(), "c".into(), "d".into()],
                correct: vec![i % 4],
                time_limit_ms: 20_000,
                points: 1000,
            })
            .collect(),
        created_at_ms: 1,
    };
    store
        .create_quiz(&def, &QuizState::new_lobby())
        .await
        .expect("create");
    let pids: Vec<String> = (0..PLAYERS).map(|p| format!("player{p:04}")).collect();
    for pid in &pids {
        store
            .add_player(
                &quiz,
                &Player {
                    player_id: pid.clone(),
                    nickname: pid.clone(),
                    joined_at_ms: 1,
                },
            )
            .await
            .expect("join");
    }
    // Every key of a quiz shares the hash tag, so any of them names the slot.
    let slot = slot_of(&seed, &format!("{{{quiz}}}")).await;
    let (source, _) = owner(&seed, slot).await;
    let masters: Vec<Node> = cluster_nodes(&seed)
        .await
        .into_iter()
        .filter(|n| n.master && !n.slots.is_empty())
        .collect();
    let target = masters
        .iter()
        .find(|m| m.id != source.id)
        .cloned()
        .expect("another master");
    eprintln!(
        "quiz {quiz}: slot {slot}, migrating {} -> {} and back",
        source.addr, target.addr
    );

    let mut work: Vec<Vec<(String, u32)>> = vec![Vec::new(); WORKERS];
    let mut i = 0;
    for q in 0..QUESTIONS {
        for pid in &pids {
            work[i % WORKERS].push((pid.clone(), q));
            i += 1;
        }
    }
    let done = Arc::new(AtomicUsize::new(0));
    let failed_calls = Arc::new(AtomicUsize::new(0));
    // Each worker holds back its last fifth until both migrations are
    // over, so answers land before, during and after them however long
    // they take on a loaded machine.
    let migrated = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = work
        .into_iter()
        .map(|items| {
            let store = Arc::clone(&store);
            let quiz = quiz.clone();
            let done = Arc::clone(&done);
            let failed_calls = Arc::clone(&failed_calls);
            let migrated = Arc::clone(&migrated);
            tokio::spawn(async move {
                let mut acked: HashMap<String, u64> = HashMap::new();
                let hold_at = items.len() * 4 / 5;
                for (n, (pid, q)) in items.into_iter().enumerate() {
                    if n == hold_at {
                        let until = Instant::now() + Duration::from_secs(180);
                        while !migrated.load(Ordering::Relaxed) {
                            assert!(Instant::now() < until, "the migration never finished");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    let a = answer(&pid, q);
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let points = loop {
                        match store.apply_answer(&quiz, &a).await {
                            Ok(ApplyOutcome::Applied { .. }) => break a.points,
                            Ok(ApplyOutcome::Duplicate { original, .. }) => {
                                assert_eq!(original, a, "duplicate of a foreign answer");
                                break original.points;
                            }
                            Err(StoreError::Unavailable(e)) => {
                                failed_calls.fetch_add(1, Ordering::Relaxed);
                                assert!(
                                    Instant::now() < deadline,
                                    "answer {pid}/{q} not acknowledged within 60 s: {e}"
                                );
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => panic!("apply_answer {pid}/{q}: {e}"),
                        }
                    };
                    *acked.entry(pid).or_default() += u64::from(points);
                    done.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                acked
            })
        })
        .collect();

    let total = (PLAYERS * QUESTIONS) as usize;
    let until = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::Relaxed) < total / 5 {
        assert!(
            Instant::now() < until,
            "answer stream stalled before the migration"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let there = migrate_slot(slot, &source, &target, &masters).await;
    let mid = done.load(Ordering::Relaxed);
    let back = migrate_slot(slot, &target, &source, &masters).await;
    migrated.store(true, Ordering::Relaxed);
    let at_end = done.load(Ordering::Relaxed);
    eprintln!(
        "migrations started after {at} answers, half-way at {mid}, done at {at_end} in {:?}; \
         {there} keys moved there, {back} back; {} failed calls retried",
        t0.elapsed(),
        failed_calls.load(Ordering::Relaxed)
    );
    assert!(there > 0 && back > 0, "the quiz's keys moved both ways");
    assert!(
        mid > at && at_end > mid,
        "answers were applied during each migration ({at} → {mid} → {at_end})"
    );

    let mut expected: HashMap<String, u64> = HashMap::new();
    for w in workers {
        for (pid, pts) in w.await.expect("worker") {
            *expected.entry(pid).or_default() += pts;
        }
    }
    wait_healthy(&nodes).await;
    for pid in &pids {
        let standing = store
            .standing(&quiz, pid)
            .await
            .expect("standing")
            .expect("player on the board");
        assert_eq!(standing.score, expected[pid], "score of {pid}");
    }
    // Every answer is recorded once: applying it again finds it.
    for pid in &pids {
        for q in 0..QUESTIONS {
            let a = answer(pid, q);
            match store.apply_answer(&quiz, &a).await.expect("re-apply") {
                ApplyOutcome::Duplicate { original, .. } => assert_eq!(original, a),
                ApplyOutcome::Applied { .. } => panic!("answer {pid}/{q} was not recorded"),
            }
        }
    }
}
