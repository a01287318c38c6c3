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
//!
//! Twice: an ordinary quiz (its one slot's master fails over), and a quiz
//! whose scoring is over three shards (the master of one shard's slot fails
//! over while the other two keep scoring, and ranks keep counting them
//! all). The two never run at once (`ONE_AT_A_TIME`).

mod cluster_admin;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_admin::*;
use quiz_core::store::QuizStore;

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

/// One cluster, one failover at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_loses_and_doubles_nothing() {
    failover_during_answers(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_of_one_shard_loses_and_doubles_nothing() {
    failover_during_answers(3).await;
}

async fn failover_during_answers(shards: u32) {
    let _one = ONE_AT_A_TIME.lock().await;
    let nodes = redis_nodes();
    let seed = nodes[0].clone();
    let store = healthy_store(&nodes).await;
    let (quiz, pids) = quiz_with_players(&store, "fo", PLAYERS, QUESTIONS, shards).await;
    // The slot of the quiz's scores (of its first shard when sharded).
    let tag = &score_tags(&quiz, shards)[0];
    let slot = slot_of(&seed, &format!("quiz:{{{tag}}}:leaderboard")).await;
    let (master, replica) = owner(&seed, slot).await;
    eprintln!(
        "quiz {quiz}: slot {slot} on {} (replica {})",
        master.addr, replica.addr
    );

    // The stream, paced so that it lasts a few seconds and the failover
    // lands in its middle; each worker holds back its last quarter until
    // the failover is done, so answers are applied before, during and after
    // it however long Redis takes to fail over on a loaded machine.
    let counters = Arc::new(StreamCounters::default());
    let started = Instant::now();
    let workers = answer_stream(
        &store,
        &quiz,
        &pids,
        StreamPlan {
            questions: QUESTIONS,
            workers: WORKERS,
            pace: Duration::from_millis(10),
            hold_fraction: 4,
        },
        &counters,
    );
    let total = (PLAYERS * QUESTIONS) as usize;
    wait_done(&counters, total / 4, "the failover").await;
    let at = counters.done.load(Ordering::Relaxed);
    // An ordinary quiz's answers take the store's direct lane (`lane.rs`):
    // the failover is the lane's to survive as well.
    let on_lanes = store.answers_on_lanes();
    assert_eq!(on_lanes > 0, shards == 1, "{on_lanes} answers on the lanes");
    let t_failover = Instant::now();
    fail_over_to(&replica, slot).await;
    counters.disruption_over.store(true, Ordering::Relaxed);
    let failover_took = t_failover.elapsed();
    let at_end = counters.done.load(Ordering::Relaxed);

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
    let pct = |p: usize| latencies[(latencies.len() - 1) * p / 100];
    let slow: Vec<_> = latencies.iter().filter(|l| l.as_secs_f64() > 1.0).collect();
    eprintln!(
        "answer latency p50 {:?} p99 {:?}; {} answers over 1 s: {:?}",
        pct(50),
        pct(99),
        slow.len(),
        &slow[..slow.len().min(10)]
    );
    eprintln!(
        "{total} answers in {:?}; failover started after {at}, done after {at_end} answers, took {failover_took:?}; \
         {} failed calls retried, {} retries came back Duplicate; max answer latency {:?}; \
         {on_lanes} answers on the lanes before the failover, {} in all",
        started.elapsed(),
        counters.failed_calls.load(Ordering::Relaxed),
        counters.duplicates_of_own.load(Ordering::Relaxed),
        latencies.last().copied().unwrap_or_default(),
        store.answers_on_lanes()
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
    // The replica did take the slot over mid-stream (`fail_over_to` saw it
    // own the slot, and `at_end < total` above). Seen once in CI right after
    // the previous test's failback: the cluster then gave the slot back to
    // the old master (the two claims' epochs resolved in its favour). That
    // is Redis's choice, not the store's; what this test is for still holds
    // and is checked below against whichever node owns the slot now: every
    // acknowledged answer counted exactly once.
    let taken_back = new_master.id != replica.id;
    if taken_back {
        eprintln!(
            "slot {slot} is back on {} after the takeover: checking the scores there",
            new_master.addr
        );
    }
    let (scores, recorded) = stored_scores(&seed, &quiz, shards).await;
    assert_eq!(scores.len(), PLAYERS as usize);
    for (pid, score) in &scores {
        assert_eq!(
            *score as u64,
            expected.get(pid).copied().unwrap_or(0),
            "score of {pid}"
        );
    }
    assert_eq!(recorded, total);
    if shards > 1 {
        // Ranks across the shards, once the stream is over: exact.
        let board = store
            .leaderboard(&quiz, PLAYERS as usize)
            .await
            .expect("lb");
        assert_eq!(board.total_players, u64::from(PLAYERS));
        for e in &board.top {
            let higher = expected.values().filter(|s| **s > e.score).count() as u64;
            assert_eq!(e.rank, higher + 1, "rank of {}", e.player_id);
        }
    }

    // Fail back to the original layout (unless the cluster already did),
    // and leave a healthy cluster.
    if !taken_back {
        fail_over_to(&master, slot).await;
    }
    wait_healthy(&nodes).await;
}
