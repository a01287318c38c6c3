//! A Redis master failover in the middle of a stream of concurrent answers,
//! against the local Redis Cluster (`deploy/local/stack up`).
//!
//! `CLUSTER FAILOVER` is sent to the replica of the master that owns the
//! quiz's slot while workers keep applying answers. Each worker retries an
//! answer the store did not acknowledge (as a player's client would), with a
//! fresh call each time. Afterwards every player's sorted-set score must equal
//! the sum of the points of the answers acknowledged to them: nothing
//! acknowledged lost, nothing counted twice (a retry of an answer that had in
//! fact landed comes back `Duplicate` with that very answer, or `Applied`).
//!
//! The test then fails back, so the cluster has its original layout and three
//! healthy masters again. Fails loudly without the cluster.

mod cluster_admin;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_admin::*;
use quiz_core::model::{AnswerRecord, ApplyOutcome, Mode, Player, Question, QuizDef, QuizState};
use quiz_core::store::redis_cluster::{RedisClusterStore, RedisOptions};
use quiz_core::store::{QuizStore, StoreError};

const PLAYERS: u32 = 200;
const QUESTIONS: u32 = 40;
const WORKERS: usize = 40;

/// Sends CLUSTER FAILOVER to `replica` and waits until it owns `slot`.
async fn fail_over_to(replica: &Node, slot: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    // `CLUSTER FAILOVER FORCE`: the replica takes over without first syncing
    // with its master, as after a master crash. Writes the master confirmed
    // but had not replicated would be lost here, which is exactly what the
    // store's `WAIT 1` before acknowledging must prevent. (A plain manual
    // failover pauses the master until the replica catches up, and on a
    // loaded machine it was seen to time out and revert.) Right after an
    // earlier failover the replica may still be syncing and Redis refuses
    // outright; so ask, wait up to 10 s for the takeover, ask again, bounded.
    loop {
        let r: redis::RedisResult<redis::Value> = query(
            &replica.addr,
            redis::cmd("CLUSTER").arg("FAILOVER").arg("FORCE"),
        )
        .await;
        if let Err(e) = &r {
            eprintln!(
                "CLUSTER FAILOVER on {} refused ({e}), retrying",
                replica.addr
            );
        }
        let attempt_end = (Instant::now() + Duration::from_secs(10)).min(deadline);
        while r.is_ok() && Instant::now() < attempt_end {
            if owner_id(&replica.addr, slot).await.as_deref() == Some(replica.id.as_str()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not take over slot {slot} within 60 s",
            replica.addr
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn answer(pid: &str, q: u32) -> AnswerRecord {
    let points = (pid.len() as u32 * 31 + q * 17) % 1000 + 1;
    AnswerRecord {
        player_id: pid.to_string(),
        nickname: pid.to_string(),
        question_id: q,
        choices: vec![q % 4],
        correct: true,
        late: false,
        points,
        response_ms: 700,
        answered_at_ms: 1_700_000_000_000 + u64::from(q),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_loses_and_doubles_nothing() {
    let nodes = redis_nodes();
    let seed = nodes[0].clone();
    wait_healthy(&nodes).await;
    let store = Arc::new(
        RedisClusterStore::connect(&nodes, RedisOptions::default())
            .await
            .unwrap_or_else(|e| panic!("Redis Cluster at {nodes:?} is required: {e}")),
    );
    let quiz = format!("fo-{:08x}", rand::random::<u32>());
    let def = QuizDef {
        quiz_id: quiz.clone(),
        title: "failover".into(),
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
    let slot = slot_of(&seed, &format!("quiz:{{{quiz}}}:leaderboard")).await;
    let (master, replica) = owner(&seed, slot).await;
    eprintln!(
        "quiz {quiz}: slot {slot} on {} (replica {})",
        master.addr, replica.addr
    );

    // The stream: all (player, question) pairs, question-major, split over
    // the workers; each worker paces itself so the stream lasts a few
    // seconds and the failover lands in its middle.
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
    let duplicates_of_own = Arc::new(AtomicUsize::new(0));
    // Each worker holds back its last quarter until the failover is done, so
    // answers are applied before, during and after it however long Redis
    // takes to fail over on a loaded machine.
    let failover_done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = work
        .into_iter()
        .map(|items| {
            let store = Arc::clone(&store);
            let quiz = quiz.clone();
            let done = Arc::clone(&done);
            let failed_calls = Arc::clone(&failed_calls);
            let dups = Arc::clone(&duplicates_of_own);
            let failover_done = Arc::clone(&failover_done);
            tokio::spawn(async move {
                // player → acknowledged points
                let mut acked: HashMap<String, u64> = HashMap::new();
                let mut latencies = Vec::new();
                let hold_at = items.len() * 3 / 4;
                for (n, (pid, q)) in items.into_iter().enumerate() {
                    if n == hold_at {
                        let until = Instant::now() + Duration::from_secs(120);
                        while !failover_done.load(Ordering::Relaxed) {
                            assert!(Instant::now() < until, "the failover never finished");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    let a = answer(&pid, q);
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let t0 = Instant::now();
                    let points = loop {
                        match store.apply_answer(&quiz, &a).await {
                            Ok(ApplyOutcome::Applied { .. }) => break a.points,
                            Ok(ApplyOutcome::Duplicate { original, .. }) => {
                                // Only an earlier, unacknowledged call of
                                // ours can have recorded this answer.
                                assert_eq!(original, a, "duplicate of a foreign answer");
                                dups.fetch_add(1, Ordering::Relaxed);
                                break original.points;
                            }
                            Err(StoreError::Unavailable(e)) => {
                                failed_calls.fetch_add(1, Ordering::Relaxed);
                                assert!(
                                    Instant::now() < deadline,
                                    "answer {pid}/{q} not acknowledged within 60 s: {e}"
                                );
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(e) => panic!("apply_answer {pid}/{q}: {e}"),
                        }
                    };
                    latencies.push(t0.elapsed());
                    *acked.entry(pid).or_default() += u64::from(points);
                    done.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (acked, latencies)
            })
        })
        .collect();

    let total = (PLAYERS * QUESTIONS) as usize;
    let until = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::Relaxed) < total / 4 {
        assert!(
            Instant::now() < until,
            "answer stream stalled before the failover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at = done.load(Ordering::Relaxed);
    let t_failover = Instant::now();
    fail_over_to(&replica, slot).await;
    failover_done.store(true, Ordering::Relaxed);
    let failover_took = t_failover.elapsed();
    let at_end = done.load(Ordering::Relaxed);

    let mut expected: HashMap<String, u64> = HashMap::new();
    let mut latencies = Vec::new();
    for w in workers {
        let (acked, lat) = w.await.expect("worker");
        for (pid, pts) in acked {
            *expected.entry(pid).or_default() += pts;
        }
        latencies.extend(lat);
    }
    latencies.sort();
    eprintln!(
        "{total} answers in {:?}; failover started after {at}, done after {at_end} answers, took {failover_took:?}; \
         {} failed calls retried, {} retries came back Duplicate; max answer latency {:?}",
        started.elapsed(),
        failed_calls.load(Ordering::Relaxed),
        duplicates_of_own.load(Ordering::Relaxed),
        latencies.last().copied().unwrap_or_default()
    );
    assert!(
        at_end < total,
        "the failover must happen in the middle of the stream ({at_end} of {total} done)"
    );

    // Every acknowledged answer counted exactly once, read straight from
    // the new master's sorted set.
    // The seed's view of the cluster catches up with the takeover through
    // the gossip, a moment after the new master's own view: wait (bounded).
    let view_deadline = Instant::now() + Duration::from_secs(30);
    let new_master = loop {
        let (m, _) = owner(&seed, slot).await;
        if m.id == replica.id || Instant::now() > view_deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(new_master.id, replica.id, "the replica took over");
    let scores: Vec<(String, f64)> = query(
        &new_master.addr,
        redis::cmd("ZRANGE")
            .arg(format!("quiz:{{{quiz}}}:leaderboard"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES"),
    )
    .await
    .expect("ZRANGE");
    assert_eq!(scores.len(), PLAYERS as usize);
    for (pid, score) in &scores {
        assert_eq!(
            *score as u64,
            expected.get(pid).copied().unwrap_or(0),
            "score of {pid}"
        );
    }
    let recorded: usize = query(
        &new_master.addr,
        redis::cmd("HLEN").arg(format!("quiz:{{{quiz}}}:answers")),
    )
    .await
    .expect("HLEN");
    assert_eq!(recorded, total);

    // Fail back to the original layout, and leave a healthy cluster.
    fail_over_to(&master, slot).await;
    wait_healthy(&nodes).await;
}
