//! Integration tests of the local stack itself (`deploy/local/stack up`):
//! the Redis Cluster's shape and a manual failover, Kafka's idempotent
//! producer and committed consumer offsets, and the MongoDB features the
//! persister relies on (unique indexes, E11000, `$setOnInsert` + `$max` upserts)
//! as FerretDB serves them. They fail, never skip, when the stack is down.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bson::{doc, Document};
use futures::StreamExt;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use testkit::{eventually, require_kafka, require_mongodb, require_redis_cluster, unique_db};
use testkit::{unique_name, unique_topic, Settings};

// ------------------------------------------------------------------ Redis Cluster

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct Node {
    id: String,
    addr: String,
    master: bool,
    failed: bool,
    master_id: Option<String>,
    connected: bool,
    slots: Vec<(u16, u16)>,
}

fn parse_cluster_nodes(text: &str) -> Vec<Node> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 8, "short CLUSTER NODES line: {line}");
            // ip:port@cport[,hostname]
            let addr = f[1].split('@').next().unwrap_or(f[1]).to_owned();
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('[')) // migrating/importing markers
                .map(|s| match s.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (s.parse().unwrap(), s.parse().unwrap()),
                })
                .collect();
            Node {
                id: f[0].to_owned(),
                addr,
                master: flags.contains(&"master"),
                failed: flags.iter().any(|fl| fl.starts_with("fail")),
                master_id: (f[3] != "-").then(|| f[3].to_owned()),
                connected: f[7] == "connected",
                slots,
            }
        })
        .collect()
}

async fn node_conn(addr: &str) -> MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{addr}")).unwrap();
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap_or_else(|e| panic!("connecting to redis node {addr}: {e}"))
}

async fn cluster_nodes(addr: &str) -> Vec<Node> {
    let mut c = node_conn(addr).await;
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await
        .unwrap();
    parse_cluster_nodes(&text)
}

/// The shape the stack promises: 3 healthy masters covering all 16384 slots,
/// each with exactly one connected replica. Returns the nodes when it holds.
fn healthy_shape(nodes: &[Node]) -> Result<(), String> {
    let masters: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.master && !n.failed && !n.slots.is_empty())
        .collect();
    if masters.len() != 3 {
        return Err(format!("{} masters own slots, want 3", masters.len()));
    }
    let mut covered = vec![false; 16384];
    for m in &masters {
        for &(a, b) in &m.slots {
            for s in a..=b {
                if covered[s as usize] {
                    return Err(format!("slot {s} owned twice"));
                }
                covered[s as usize] = true;
            }
        }
    }
    let n_covered = covered.iter().filter(|c| **c).count();
    if n_covered != 16384 {
        return Err(format!("{n_covered} of 16384 slots covered"));
    }
    for m in &masters {
        let replicas = nodes
            .iter()
            .filter(|n| !n.master && n.master_id.as_deref() == Some(&m.id))
            .collect::<Vec<_>>();
        if replicas.len() != 1 {
            return Err(format!(
                "master {} has {} replicas, want 1",
                m.addr,
                replicas.len()
            ));
        }
        if replicas[0].failed || !replicas[0].connected {
            return Err(format!("the replica of {} is not connected", m.addr));
        }
    }
    Ok(())
}

/// Every node says `cluster_state:ok` and every replica's link is up.
async fn cluster_healthy(settings: &Settings) -> Result<(), String> {
    for addr in &settings.redis_nodes {
        let mut c = node_conn(addr).await;
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        if !info.contains("cluster_state:ok") {
            return Err(format!("{addr} is not cluster_state:ok"));
        }
        let repl: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
            return Err(format!("replica {addr} has no link to its master"));
        }
    }
    healthy_shape(&cluster_nodes(&settings.redis_nodes[0]).await)
}

async fn wait_cluster_healthy(settings: &Settings) {
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        match cluster_healthy(settings).await {
            Ok(()) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the Redis Cluster did not become healthy within 60 s: {last}");
}

/// `CLUSTER FAILOVER` on `replica`, retried until it is a master (a manual
/// failover is refused or times out while the replica is catching up).
async fn promote(replica: &str, seed: &str) {
    for attempt in 1..=3 {
        let mut c = node_conn(replica).await;
        let reply: redis::RedisResult<String> = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut c)
            .await;
        if let Err(e) = &reply {
            eprintln!("CLUSTER FAILOVER on {replica} (attempt {attempt}): {e}");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let nodes = cluster_nodes(seed).await;
            let me = nodes.iter().find(|n| n.addr == replica);
            let mine_seen_as_master = me.is_some_and(|n| n.master && !n.slots.is_empty());
            let role: redis::Value = redis::cmd("ROLE").query_async(&mut c).await.unwrap();
            let role_master = matches!(&role, redis::Value::Array(v)
                if matches!(v.first(), Some(redis::Value::BulkString(b)) if b == b"master"));
            if mine_seen_as_master && role_master {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("{replica} did not become a master after 3 CLUSTER FAILOVER attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_shape_and_manual_failover_keep_data() {
    let mut cluster = require_redis_cluster().await;
    let settings = Settings::from_env();
    let seed = settings.redis_nodes[0].clone();
    wait_cluster_healthy(&settings).await;

    let nodes = cluster_nodes(&seed).await;
    healthy_shape(&nodes).unwrap_or_else(|e| panic!("cluster shape: {e}\n{nodes:#?}"));

    // A key of quiz "quiz-x": its hash tag puts it in one slot, owned by one master.
    let key = format!("quiz:{{quiz-x}}:failover-probe:{}", unique_name("k"));
    let value = unique_name("v");
    let _: () = cluster.set_ex(&key, &value, 600).await.unwrap();

    let mut seed_conn = node_conn(&seed).await;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&key)
        .query_async(&mut seed_conn)
        .await
        .unwrap();
    let owner = nodes
        .iter()
        .find(|n| n.master && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
        .expect("a master owns the slot")
        .clone();
    let replica = nodes
        .iter()
        .find(|n| n.master_id.as_deref() == Some(&owner.id))
        .expect("the owner has a replica")
        .clone();

    // The key must be on the replica before the failover (WAIT for 1 replica).
    let mut owner_conn = node_conn(&owner.addr).await;
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut owner_conn)
        .await
        .unwrap();
    assert_eq!(
        acked, 1,
        "the replica {} did not acknowledge the write",
        replica.addr
    );

    promote(&replica.addr, &seed).await;
    let after = cluster_nodes(&seed).await;
    let old = after.iter().find(|n| n.id == owner.id).unwrap();
    assert!(
        !old.master && old.master_id.as_deref() == Some(&replica.id),
        "the old master {} should now replicate {}: {old:?}",
        owner.addr,
        replica.addr
    );

    // The cluster client follows the MOVED redirection to the new master.
    let got: Option<String> = eventually(
        "the key readable after the failover",
        Duration::from_secs(30),
        || {
            let mut c = cluster.clone();
            let key = key.clone();
            async move { c.get::<_, Option<String>>(&key).await.ok() }
        },
    )
    .await;
    assert_eq!(got.as_deref(), Some(value.as_str()));
    let mut new_master = node_conn(&replica.addr).await;
    let direct: Option<String> = new_master.get(&key).await.unwrap();
    assert_eq!(
        direct.as_deref(),
        Some(value.as_str()),
        "the promoted replica serves the key"
    );

    // Fail back, so the stack keeps the layout it was created with.
    wait_cluster_healthy(&settings).await;
    promote(&owner.addr, &seed).await;
    wait_cluster_healthy(&settings).await;
    let got: Option<String> = eventually(
        "the key readable after failing back",
        Duration::from_secs(30),
        || {
            let mut c = cluster.clone();
            let key = key.clone();
            async move { c.get::<_, Option<String>>(&key).await.ok() }
        },
    )
    .await;
    assert_eq!(got.as_deref(), Some(value.as_str()));
    let _: () = cluster.del(&key).await.unwrap();
}

// ------------------------------------------------------------------ Kafka

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_idempotent_producer_and_committed_group_offsets() {
    const N: usize = 300;
    const KEYS: usize = 12;
    let kafka = require_kafka().await;
    let topic = unique_topic("stack");
    let group = unique_name("g-stack");
    kafka.create_topic(&topic, 4).await;

    let producer: FutureProducer = kafka
        .config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    let sends = (0..N).map(|i| {
        let producer = &producer;
        let topic = &topic;
        async move {
            let key = format!("quiz-{}", i % KEYS);
            let payload = format!("{{\"seq\":{i}}}");
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("delivery of record {i} failed: {e}"))
        }
    });
    let delivered = futures::future::join_all(sends).await;
    assert_eq!(delivered.len(), N);

    let consumer = group_consumer(&kafka, &group, &topic);
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    let mut total = 0;
    let mut stream = consumer.stream();
    while total < N {
        let msg = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .unwrap_or_else(|_| panic!("consumed {total} of {N} records in 60 s"))
            .expect("the stream ended")
            .expect("consume error");
        let key = String::from_utf8(msg.key().unwrap().to_vec()).unwrap();
        let payload: serde_json::Value = serde_json::from_slice(msg.payload().unwrap()).unwrap();
        seen.entry(key)
            .or_default()
            .push(payload["seq"].as_u64().unwrap() as usize);
        total += 1;
    }
    drop(stream);
    // Every record exactly once, and in send order within a key (one partition per key).
    let mut all: Vec<usize> = seen.values().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..N).collect::<Vec<_>>(), "each record exactly once");
    for (key, seqs) in &seen {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "order within {key}: {seqs:?}"
        );
    }
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    let committed: i64 = committed_total(&consumer, &topic);
    assert_eq!(committed, N as i64, "committed offsets cover all records");
    drop(consumer); // leaves the group

    // A new member of the same group starts from the committed offsets: it
    // sees only what is produced after them.
    let marker = unique_name("after-commit");
    producer
        .send(
            FutureRecord::to(&topic).key("quiz-0").payload(&marker),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("delivery of the marker failed: {e}"));
    let second = group_consumer(&kafka, &group, &topic);
    let msg = tokio::time::timeout(Duration::from_secs(60), second.recv())
        .await
        .expect("the second consumer received nothing in 60 s")
        .expect("consume error");
    assert_eq!(
        msg.payload(),
        Some(marker.as_bytes()),
        "the second consumer must start after the committed offsets, got an old record"
    );
    drop(msg);
    let extra = tokio::time::timeout(Duration::from_secs(3), second.recv()).await;
    assert!(extra.is_err(), "nothing else is new for the group");
    drop(second);
    kafka.delete_topic(&topic).await;
}

fn group_consumer(kafka: &testkit::Kafka, group: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = kafka
        .config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

fn committed_total(consumer: &StreamConsumer, topic: &str) -> i64 {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

// ------------------------------------------------------------------ MongoDB

fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_unique_index_duplicate_and_upsert() {
    let client = require_mongodb().await;
    let db = client.database(&unique_db("t_stack"));
    let scores = db.collection::<Document>("scores");

    let index = IndexModel::builder()
        .keys(doc! { "quiz_id": 1, "nickname": 1 })
        .options(
            IndexOptions::builder()
                .unique(true)
                .name("quiz_nickname".to_owned())
                .build(),
        )
        .build();
    scores
        .create_index(index)
        .await
        .expect("create a unique index");

    let player =
        doc! { "_id": "q1:p1", "quiz_id": "q1", "player_id": "p1", "nickname": "ann", "score": 0 };
    scores
        .insert_one(player.clone())
        .await
        .expect("first insert");

    // Same _id: E11000.
    let dup = scores
        .insert_one(player.clone())
        .await
        .expect_err("duplicate _id");
    assert_eq!(error_code(&dup), Some(11000), "duplicate _id: {dup}");
    assert!(dup.to_string().contains("E11000"), "{dup}");
    // Same (quiz_id, nickname) under another _id: E11000 from the unique index.
    let dup = scores
        .insert_one(doc! { "_id": "q1:p2", "quiz_id": "q1", "player_id": "p2", "nickname": "ann", "score": 0 })
        .await
        .expect_err("duplicate nickname");
    assert_eq!(error_code(&dup), Some(11000), "duplicate index key: {dup}");

    // The persister's write: upsert with $setOnInsert for identity, $max for the score.
    let upsert = |score: i64| {
        let scores = scores.clone();
        async move {
            scores
                .update_one(
                    doc! { "_id": "q1:p3" },
                    doc! {
                        "$setOnInsert": { "quiz_id": "q1", "player_id": "p3", "nickname": "bob" },
                        "$max": { "score": score },
                    },
                )
                .upsert(true)
                .await
                .expect("upsert")
        }
    };
    let first = upsert(500).await;
    assert!(first.upserted_id.is_some(), "the first upsert inserts");
    let lower = upsert(300).await;
    assert!(lower.upserted_id.is_none());
    assert_eq!(
        lower.modified_count, 0,
        "$max with a lower score changes nothing"
    );
    upsert(900).await;
    upsert(900).await; // a replay is a no-op

    let doc = scores
        .find_one(doc! { "_id": "q1:p3" })
        .await
        .expect("find")
        .expect("the upserted document");
    assert_eq!(doc.get_str("nickname").unwrap(), "bob");
    assert_eq!(doc.get_str("quiz_id").unwrap(), "q1");
    assert_eq!(doc.get_i64("score").unwrap(), 900);

    let count = scores
        .count_documents(doc! { "quiz_id": "q1" })
        .await
        .unwrap();
    assert_eq!(count, 2);
    let names: HashSet<String> = scores
        .distinct("nickname", doc! {})
        .await
        .unwrap()
        .into_iter()
        .filter_map(|b| b.as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, HashSet::from(["ann".to_owned(), "bob".to_owned()]));

    db.drop().await.expect("drop the test database");
}

#[test]
fn parse_cluster_nodes_lines() {
    let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7003@17003 slave a1 0 1 1 connected
c3 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922 [93->-b2]
";
    let nodes = parse_cluster_nodes(text);
    assert_eq!(nodes.len(), 3);
    assert!(nodes[0].master && nodes[0].slots == vec![(0, 5460)]);
    assert_eq!(nodes[1].master_id.as_deref(), Some("a1"));
    assert_eq!(nodes[2].slots, vec![(5461, 10922)]);
}
