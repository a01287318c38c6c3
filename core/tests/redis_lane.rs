//! The store's direct lanes (`store/redis_cluster/lane.rs`) against the
//! local Redis Cluster (`deploy/local/stack up`): a one-slot quiz's answers
//! take them from the store's first answer, and cutting a lane's
//! connection in the middle of a stream of concurrent answers loses and
//! doubles nothing (its answers fail `Unavailable`, the callers' retries
//! take the batcher, and the lane comes back once the slot map has been
//! read again). Fails loudly without the cluster.

mod cluster_admin;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_admin::*;
use quiz_core::model::ApplyOutcome;
use quiz_core::store::redis_cluster::{RedisClusterStore, RedisOptions, LANE_CLIENT_NAME};
use quiz_core::store::QuizStore;

const PLAYERS: u32 = 100;
const QUESTIONS: u32 = 40;
/// Questions answered by the stream; the rest after the lane is back.
const STREAMED: u32 = 30;
const WORKERS: usize = 20;

/// The ids of the lane connections open on the master at `addr`.
async fn lane_clients(addr: &str) -> Vec<String> {
    let list: String = query(addr, redis::cmd("CLIENT").arg("LIST"))
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter(|l| l.contains(&format!(" name={LANE_CLIENT_NAME} ")))
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_lane_loses_and_doubles_nothing_and_comes_back() {
    let nodes = redis_nodes();
    let seed = nodes[0].clone();
    let store = healthy_store(&nodes).await;
    let (quiz, pids) = quiz_with_players(&store, "lane", PLAYERS, QUESTIONS, 1).await;
    let slot = slot_of(&seed, &format!("quiz:{{{quiz}}}:answers")).await;
    let (master, _) = owner(&seed, slot).await;

    // The store's very first answer takes the lane (the store read the slot
    // map and connected before it returned).
    let first = answer(&pids[0], STREAMED);
    let before = store.answers_on_lanes();
    assert!(matches!(
        store.apply_answer(&quiz, &first).await,
        Ok(ApplyOutcome::Applied { .. })
    ));
    assert_eq!(
        store.answers_on_lanes(),
        before + 1,
        "the first answer took the lane"
    );
    let mut expected: HashMap<String, u64> = HashMap::new();
    *expected.entry(first.player_id.clone()).or_default() += u64::from(first.points);

    // A stream of concurrent answers; a third in, the master's lane
    // connections are killed.
    let counters = Arc::new(StreamCounters::default());
    let workers = answer_stream(
        &store,
        &quiz,
        &pids,
        StreamPlan {
            questions: STREAMED,
            workers: WORKERS,
            pace: Duration::from_millis(2),
            hold_fraction: 2,
        },
        &counters,
    );
    let total = (PLAYERS * STREAMED) as usize;
    wait_done(&counters, total / 3, "the cut").await;
    let on_lanes_at_cut = store.answers_on_lanes();
    let closures_at_cut = store.lane_closures();
    let lanes = lane_clients(&master.addr).await;
    assert!(
        !lanes.is_empty(),
        "a lane connection is open on {}",
        master.addr
    );
    for id in &lanes {
        let _: redis::Value = query(
            &master.addr,
            redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id),
        )
        .await
        .expect("CLIENT KILL");
    }
    counters.disruption_over.store(true, Ordering::Relaxed);
    for w in workers {
        let (acked, _) = w.await.expect("worker");
        for (pid, pts) in acked {
            *expected.entry(pid).or_default() += pts;
        }
    }
    eprintln!(
        "{total} answers; {} on lanes before the cut, {} in all; {} failed calls retried, {} retries came back Duplicate",
        on_lanes_at_cut,
        store.answers_on_lanes(),
        counters.failed_calls.load(Ordering::Relaxed),
        counters.duplicates_of_own.load(Ordering::Relaxed),
    );
    assert!(
        on_lanes_at_cut > before + 1,
        "the stream took the lane before the cut"
    );
    // The killed connection is counted (`quiz_redis_lane_closures_total`).
    assert!(
        store.lane_closures() > closures_at_cut,
        "the cut lane counted as closed"
    );

    // The lane comes back after its pause: the remaining questions, one
    // player at a time, until one of them takes it again (bounded).
    let back_by = Instant::now() + Duration::from_secs(20);
    let mut back = false;
    let mut after_cut = 0;
    for q in STREAMED + 1..QUESTIONS {
        for pid in &pids {
            let a = answer(pid, q);
            let lanes_before = store.answers_on_lanes();
            match store.apply_answer(&quiz, &a).await {
                Ok(ApplyOutcome::Applied { .. }) => {}
                other => panic!("answer {pid}/{q}: {other:?}"),
            }
            *expected.entry(pid.clone()).or_default() += u64::from(a.points);
            after_cut += 1;
            back |= store.answers_on_lanes() > lanes_before;
        }
        if back {
            break;
        }
        assert!(Instant::now() < back_by, "the lane did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "the lane came back after the cut");
    assert!(!lane_clients(&master.addr).await.is_empty());

    // Every acknowledged answer counted exactly once.
    let (scores, recorded) = stored_scores(&seed, &quiz, 1).await;
    assert_eq!(scores.len(), PLAYERS as usize);
    for (pid, score) in &scores {
        assert_eq!(
            *score as u64,
            expected.get(pid).copied().unwrap_or(0),
            "score of {pid}"
        );
    }
    assert_eq!(recorded, 1 + total + after_cut, "answers recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_off_leave_every_answer_to_the_batcher() {
    let nodes = redis_nodes();
    wait_healthy(&nodes).await;
    let opts = RedisOptions {
        direct_lane: false,
        ..RedisOptions::default()
    };
    let store = RedisClusterStore::connect(&nodes, opts)
        .await
        .expect("Redis Cluster is required");
    let (quiz, pids) = quiz_with_players(&store, "nolane", 3, 2, 1).await;
    for pid in &pids {
        assert!(matches!(
            store.apply_answer(&quiz, &answer(pid, 0)).await,
            Ok(ApplyOutcome::Applied { .. })
        ));
    }
    assert_eq!(store.answers_on_lanes(), 0);
}
