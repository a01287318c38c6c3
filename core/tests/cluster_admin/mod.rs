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
