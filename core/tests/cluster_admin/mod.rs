//! Redis Cluster administration for the tests that change the cluster's
//! layout under a running store (`redis_failover.rs`,
//! `redis_slot_migration.rs`): read `CLUSTER NODES`, find a slot's owner,
//! wait until every node agrees and the cluster is healthy again.

#![allow(dead_code)] // each test file uses its own part

use std::time::{Duration, Instant};

pub fn redis_nodes() -> Vec<String> {
    match std::env::var("QUIZ_REDIS_NODES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => (7000..=7005).map(|p| format!("127.0.0.1:{p}")).collect(),
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub addr: String,
    pub master: bool,
    pub master_id: String,
    pub slots: Vec<(u16, u16)>,
}

pub async fn conn(addr: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{addr}")).expect("client");
    tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    .unwrap_or_else(|_| panic!("Redis node {addr} is required: connect timed out"))
    .unwrap_or_else(|e| panic!("Redis node {addr} is required (deploy/local/stack up): {e}"))
}

pub async fn query<T: redis::FromRedisValue>(
    addr: &str,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    let mut c = conn(addr).await;
    cmd.query_async(&mut c).await
}

/// `CLUSTER NODES` as seen from `addr`.
pub async fn cluster_nodes(addr: &str) -> Vec<Node> {
    let text: String = query(addr, redis::cmd("CLUSTER").arg("NODES"))
        .await
        .expect("CLUSTER NODES");
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split('@').next()?.to_string();
            let flags = f[2];
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            Some(Node {
                id: f[0].to_string(),
                addr,
                master: flags.contains("master") && !flags.contains("fail"),
                master_id: f[3].to_string(),
                slots,
            })
        })
        .collect()
}

pub async fn slot_of(addr: &str, key: &str) -> u16 {
    query(addr, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
        .await
        .expect("CLUSTER KEYSLOT")
}

/// (master, one of its replicas) for `slot`. Right after a failover the old
/// master is still listed as a slot-less master for a moment before it turns
/// into the new master's replica, so wait (bounded) for the replica to show.
pub async fn owner(seed: &str, slot: u16) -> (Node, Node) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = cluster_nodes(seed).await;
        let master = nodes
            .iter()
            .find(|n| n.master && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .cloned();
        let replica = master.as_ref().and_then(|m| {
            nodes
                .iter()
                .find(|n| !n.master && n.master_id == m.id)
                .cloned()
        });
        match (master, replica) {
            (Some(m), Some(r)) => return (m, r),
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (m, _) => panic!(
                "slot {slot}: no master with a replica within 30 s (master {:?}): {nodes:?}",
                m.map(|m| m.addr)
            ),
        }
    }
}

/// The id of the master owning `slot`, as `seed` sees it.
pub async fn owner_id(seed: &str, slot: u16) -> Option<String> {
    cluster_nodes(seed)
        .await
        .into_iter()
        .find(|n| n.master && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .map(|n| n.id)
}

/// Waits until every node reports `cluster_state:ok` and there are 3
/// masters with slots, each with a replica.
pub async fn wait_healthy(nodes: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ok = true;
        for addr in nodes {
            let info: String = query(addr, redis::cmd("CLUSTER").arg("INFO"))
                .await
                .unwrap_or_default();
            ok &= info.contains("cluster_state:ok");
        }
        let view = cluster_nodes(&nodes[0]).await;
        let masters: Vec<&Node> = view
            .iter()
            .filter(|n| n.master && !n.slots.is_empty())
            .collect();
        ok &= masters.len() == 3
            && masters
                .iter()
                .all(|m| view.iter().any(|r| !r.master && r.master_id == m.id));
        // Every node must see the same slot owners: a test that starts while
        // the gossip still disagrees reads a stale owner.
        let owners_of = |v: &[Node]| {
            let mut o: Vec<(String, Vec<(u16, u16)>)> = v
                .iter()
                .filter(|n| n.master && !n.slots.is_empty())
                .map(|n| (n.id.clone(), n.slots.clone()))
                .collect();
            o.sort();
            o
        };
        let reference = owners_of(&view);
        for addr in &nodes[1..] {
            ok &= owners_of(&cluster_nodes(addr).await) == reference;
        }
        // And every replica linked to its master again: right after a
        // failback the demoted node is still resyncing, and a takeover
        // started then was once resolved back to the old master.
        for addr in nodes {
            let info: String = query(addr, redis::cmd("INFO").arg("replication"))
                .await
                .unwrap_or_default();
            ok &= !info.contains("role:slave") || info.contains("master_link_status:up");
        }
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cluster not healthy within 30 s: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------- the answer stream under test

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use quiz_core::model::{
    AnswerRecord, ApplyOutcome, Layout, Mode, Player, Question, QuizDef, QuizState,
};
use quiz_core::store::redis_cluster::{shard_tag, RedisClusterStore, RedisOptions};
use quiz_core::store::{QuizStore, StoreError};

/// A store on the local cluster, once it is healthy.
pub async fn healthy_store(nodes: &[String]) -> Arc<RedisClusterStore> {
    wait_healthy(nodes).await;
    Arc::new(
        RedisClusterStore::connect(nodes, RedisOptions::default())
            .await
            .unwrap_or_else(|e| panic!("Redis Cluster at {nodes:?} is required: {e}")),
    )
}

/// A fresh self-paced quiz `<prefix>-<random>` of `questions` questions,
/// its scoring over `shards` hash slots, with `players` players
/// `player0000…` joined; returns (quiz id, players).
pub async fn quiz_with_players(
    store: &RedisClusterStore,
    prefix: &str,
    players: u32,
    questions: u32,
    shards: u32,
) -> (String, Vec<String>) {
    let quiz = format!("{prefix}-{:08x}", rand::random::<u32>());
    let def = QuizDef {
        quiz_id: quiz.clone(),
        title: prefix.into(),
        mode: Mode::SelfPaced,
        questions: (0..questions)
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
        layout: Layout { spread: 1, shards },
    };
    store
        .create_quiz(&def, &QuizState::new_lobby())
        .await
        .expect("create");
    let pids: Vec<String> = (0..players).map(|p| format!("player{p:04}")).collect();
    for pid in &pids {
        store
            .add_player(
                &quiz,
                &Player {
                    player_id: pid.clone(),
                    nickname: pid.clone(),
                    joined_at_ms: 1,
                },
                u64::MAX,
            )
            .await
            .expect("join");
    }
    (quiz, pids)
}

/// The hash tags of the slots holding a quiz's scores: the quiz id for an
/// ordinary quiz, its shards' tags for a sharded one.
pub fn score_tags(quiz: &str, shards: u32) -> Vec<String> {
    (0..shards.max(1))
        .map(|s| shard_tag(quiz, s, shards))
        .collect()
}

/// Every player's score and the number of recorded answers, read straight
/// from the masters owning the quiz's score slots (as `seed` sees them).
pub async fn stored_scores(seed: &str, quiz: &str, shards: u32) -> (Vec<(String, f64)>, usize) {
    let mut scores = Vec::new();
    let mut recorded = 0;
    for tag in score_tags(quiz, shards) {
        let slot = slot_of(seed, &format!("{{{tag}}}")).await;
        let (master, _) = owner(seed, slot).await;
        let part: Vec<(String, f64)> = query(
            &master.addr,
            redis::cmd("ZRANGE")
                .arg(format!("quiz:{{{tag}}}:leaderboard"))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
        )
        .await
        .expect("ZRANGE");
        scores.extend(part);
        let n: usize = query(
            &master.addr,
            redis::cmd("HLEN").arg(format!("quiz:{{{tag}}}:answers")),
        )
        .await
        .expect("HLEN");
        recorded += n;
    }
    (scores, recorded)
}

/// The answer of `pid` to question `q`, its points a function of both.
pub fn answer(pid: &str, q: u32) -> AnswerRecord {
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

/// What the workers of an [`answer_stream`] count.
#[derive(Default)]
pub struct StreamCounters {
    /// Answers acknowledged.
    pub done: AtomicUsize,
    /// Calls the store did not acknowledge (retried).
    pub failed_calls: AtomicUsize,
    /// Retries that found the answer already recorded (an earlier,
    /// unacknowledged call had landed).
    pub duplicates_of_own: AtomicUsize,
    /// Set by the test once the disruption is over: each worker holds back
    /// its last `1 / hold_fraction` until then.
    pub disruption_over: AtomicBool,
}

/// The shape of an [`answer_stream`].
pub struct StreamPlan {
    /// Questions each player answers (0..questions).
    pub questions: u32,
    /// Concurrent workers.
    pub workers: usize,
    /// Pause of a worker between two answers.
    pub pace: Duration,
    /// A worker's last `1 / hold_fraction` waits for
    /// `counters.disruption_over`.
    pub hold_fraction: usize,
}

/// What one worker of an [`answer_stream`] returns: player → acknowledged
/// points, and its answer latencies.
pub type WorkerResult = (HashMap<String, u64>, Vec<Duration>);

/// Every (player, question) answer, question-major, applied by concurrent
/// workers, each retrying what the store did not acknowledge (as a
/// player's client would) for up to 60 s.
pub fn answer_stream(
    store: &Arc<RedisClusterStore>,
    quiz: &str,
    pids: &[String],
    plan: StreamPlan,
    counters: &Arc<StreamCounters>,
) -> Vec<tokio::task::JoinHandle<WorkerResult>> {
    let StreamPlan {
        questions,
        workers,
        pace,
        hold_fraction,
    } = plan;
    let mut work: Vec<Vec<(String, u32)>> = vec![Vec::new(); workers];
    let mut i = 0;
    for q in 0..questions {
        for pid in pids {
            work[i % workers].push((pid.clone(), q));
            i += 1;
        }
    }
    work.into_iter()
        .map(|items| {
            let store = Arc::clone(store);
            let quiz = quiz.to_string();
            let c = Arc::clone(counters);
            tokio::spawn(async move {
                let mut acked: HashMap<String, u64> = HashMap::new();
                let mut latencies = Vec::new();
                let hold_at = items.len() - items.len() / hold_fraction.max(1);
                for (n, (pid, q)) in items.into_iter().enumerate() {
                    if n == hold_at {
                        let until = Instant::now() + Duration::from_secs(180);
                        while !c.disruption_over.load(Ordering::Relaxed) {
                            assert!(Instant::now() < until, "the disruption never ended");
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
                                c.duplicates_of_own.fetch_add(1, Ordering::Relaxed);
                                break original.points;
                            }
                            Err(StoreError::Unavailable(e)) => {
                                c.failed_calls.fetch_add(1, Ordering::Relaxed);
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
                    c.done.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pace).await;
                }
                (acked, latencies)
            })
        })
        .collect()
}

/// Waits (bounded) until `counters.done` reaches `n`.
pub async fn wait_done(counters: &StreamCounters, n: usize, what: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while counters.done.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < until,
            "answer stream stalled before {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
