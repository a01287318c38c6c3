//! Degrading the optional first, against the local stack (Redis Cluster and
//! Kafka of `deploy/local/stack up`): a real slow store read — every Redis
//! master paused with `CLIENT PAUSE` — makes a room skip its leaderboard
//! ticks (counted `read_in_flight`) instead of queueing reads behind the one
//! in flight, while an answer sent during the pause is still acknowledged
//! only after the store applied it (the pause holds the acknowledgement)
//! and its event is in Kafka.
//!
//! A file of its own: the pause stalls every quiz on the cluster, and the
//! contract suite's tests (run in parallel in their binary) must not feel it.

mod cluster_admin;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use quiz_core::{Config, Shutdown};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the masters are paused.
const PAUSE: Duration = Duration::from_millis(1500);
/// The room's tick here: many ticks fall within one pause.
const TICK_MS: u64 = 100;

/// One HTTP/1.1 request on its own connection: status and JSON body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut text))
        .await
        .expect("a response within 20 s")
        .unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A `/metrics` series' value (summed over the series whose labels contain
/// `label`).
async fn metric(addr: SocketAddr, name: &str, label: &str) -> u64 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
        .await
        .expect("metrics within 10 s")
        .unwrap();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

type Ws = WebSocket<TcpStream>;

async fn ws(addr: SocketAddr, quiz: &str, token: &str) -> Ws {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /v1/quizzes/{quiz}/ws?token={token} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
         Connection: upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        fastwebsockets::handshake::generate_key()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.expect("a response head"));
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    WebSocket::after_handshake(s, Role::Client)
}

/// The next text message of type `ty`, skipping others.
async fn expect(w: &mut Ws, ty: &str) -> Value {
    let next = async {
        loop {
            let f = w.read_frame().await.expect("a frame");
            if f.opcode == OpCode::Text {
                let v: Value = serde_json::from_slice(&f.payload).unwrap();
                if v["type"] == ty {
                    return v;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), next)
        .await
        .unwrap_or_else(|_| panic!("no {ty} within 15 s"))
}

/// Pauses every master of the cluster for `PAUSE` (all commands).
async fn pause_masters() {
    let settings = testkit::Settings::from_env();
    let seed = settings
        .redis_nodes
        .first()
        .expect("QUIZ_REDIS_NODES")
        .clone();
    let masters: Vec<_> = cluster_admin::cluster_nodes(&seed)
        .await
        .into_iter()
        .filter(|n| n.master)
        .collect();
    assert!(!masters.is_empty(), "no master in CLUSTER NODES");
    for m in &masters {
        let _: () = cluster_admin::query(
            &m.addr,
            redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(PAUSE.as_millis() as u64)
                .arg("ALL"),
        )
        .await
        .expect("CLIENT PAUSE");
    }
}

/// The quiz's `answer_scored` event in `topic`, read from the start until
/// it is seen (bounded).
async fn answer_scored_in(topic: &str, quiz: &str) -> Value {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    let kafka = testkit::require_kafka().await;
    let consumer: StreamConsumer = kafka
        .config()
        .set("group.id", testkit::unique_name("pressure"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .expect("the answer's event in Kafka within 30 s")
            .unwrap();
        let v: Value = serde_json::from_slice(msg.payload().unwrap_or_default()).unwrap();
        if v["quiz_id"] == quiz && v["type"] == "answer_scored" {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_store_skips_board_ticks_and_answers_still_wait_for_the_store_and_kafka() {
    testkit::require_redis_cluster().await;
    let kafka = testkit::require_kafka().await;
    let topic = testkit::unique_topic("pressure");
    kafka.create_topic(&topic, 1).await;
    let s = testkit::Settings::from_env();
    let config = Config {
        listen: "127.0.0.1:0".into(),
        node_name: testkit::unique_name("node"),
        token_secret: format!("pressure-secret-{}", testkit::unique_name("s")),
        demo_quiz: false,
        redis_nodes: s.redis_nodes,
        kafka_brokers: s.kafka_brokers,
        kafka_topic: topic.clone(),
        admin_open: true,
        leaderboard_interval_ms: TICK_MS,
        // The periodic state re-read is awaited in the room task itself: one
        // falling in the pause would hold the whole loop (ticks then are
        // delayed, and the first after it skipped as `late`). Out of the way
        // here, so the ticks during the slow read are seen and counted.
        reconcile_interval_ms: 60_000,
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(quiz_core::run(config, listener, shutdown.clone()));
    testkit::eventually(
        "the node answers /healthz",
        Duration::from_secs(20),
        || async {
            match TcpStream::connect(addr).await {
                Ok(_) => {
                    (http(addr, "GET", "/healthz", None, &Value::Null).await.0 == 200).then_some(())
                }
                Err(_) => None,
            }
        },
    )
    .await;

    let quiz = testkit::unique_quiz_id();
    let (st, v) = http(
        addr,
        "POST",
        "/v1/quizzes",
        None,
        &json!({"title": "Pressure", "mode": "live", "quiz_id": quiz, "questions": [
            {"text": "q", "options": ["a", "b"], "correct": [1], "time_limit_ms": 30000, "points": 1000}
        ]}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let host_token = v["host_token"].as_str().unwrap().to_string();
    let (st, v) = http(
        addr,
        "POST",
        &format!("/v1/quizzes/{quiz}/players"),
        None,
        &json!({"nickname": "ann"}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let token = v["player_token"].as_str().unwrap().to_string();
    let mut w = ws(addr, &quiz, &token).await;
    expect(&mut w, "welcome").await;
    let (st, v) = http(
        addr,
        "POST",
        &format!("/v1/quizzes/{quiz}/start"),
        Some(&host_token),
        &Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    expect(&mut w, "question").await;
    // The room has been ticking, reading on time: nothing skipped yet.
    tokio::time::sleep(Duration::from_millis(5 * TICK_MS)).await;
    let skipped_before = metric(
        addr,
        "quiz_board_ticks_skipped_total",
        "reason=\"read_in_flight\"",
    )
    .await;
    let reads_before = metric(addr, "quiz_store_seconds_count", "op=\"leaderboard\"").await;

    // A real slow store: every master paused. The room's next board read
    // (at least every second tick) hangs for the rest of the pause.
    pause_masters().await;
    let paused_at = Instant::now();
    let answer = json!({"type": "answer", "question_id": 0, "choices": [1]});
    w.write_frame(Frame::text(Payload::Owned(answer.to_string().into_bytes())))
        .await
        .unwrap();
    let result = expect(&mut w, "answer_result").await;
    let acked_after = paused_at.elapsed();
    // Counted as the pause ends (the answer is acknowledged then), not after the
    // Kafka wait below: the ticks after the pause read on every board change, so a
    // slow consumer (a loaded machine) would add reads that have nothing to do with it.
    let skipped = metric(
        addr,
        "quiz_board_ticks_skipped_total",
        "reason=\"read_in_flight\"",
    )
    .await
        - skipped_before;
    let reads = metric(addr, "quiz_store_seconds_count", "op=\"leaderboard\"").await - reads_before;
    assert_eq!(result["accepted"], true, "{result}");
    // Acknowledged only once the store could apply it (and WAIT): not
    // before the pause ended.
    assert!(
        acked_after >= PAUSE - Duration::from_millis(300),
        "an answer acknowledged {acked_after:?} into a {PAUSE:?} store pause"
    );
    // ... and its event was delivered to Kafka.
    let event = answer_scored_in(&topic, &quiz).await;
    assert_eq!(event["points"], result["points"], "{event}");

    // The ticks that fell in the pause were skipped, not queued: a handful
    // of reads, not one per tick.
    let ticks = PAUSE.as_millis() as u64 / TICK_MS;
    assert!(
        skipped >= ticks / 2,
        "{skipped} of ~{ticks} ticks in a slow read skipped"
    );
    eprintln!(
        "store paused {PAUSE:?}: answer acknowledged after {acked_after:?}; \
         {skipped} of ~{ticks} board ticks skipped (read in flight); {reads} leaderboard reads"
    );
    assert!(
        reads <= 4,
        "{reads} leaderboard reads across a {PAUSE:?} pause of a {TICK_MS} ms tick"
    );
    // Boards resume after it: a change shows up in the next boards.
    let (st, v) = http(
        addr,
        "POST",
        &format!("/v1/quizzes/{quiz}/players"),
        None,
        &json!({"nickname": "bob"}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while expect(&mut w, "leaderboard").await["total_players"] != 2 {
        assert!(
            Instant::now() < deadline,
            "no board with the new player within 15 s"
        );
    }

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("the node stops")
        .unwrap()
        .unwrap();
}
