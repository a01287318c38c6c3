//! The contract suite (`docs/api/`), run against both modes:
//! every scenario is an async fn taking a [`Factory`], instantiated by the
//! `contract!` macro as `embedded::<name>` and `distributed::<name>`.
//! Distributed tests need `deploy/local/stack up` (Redis Cluster + Kafka);
//! they fail loudly (testkit's `require_*`) when it is not running.
//! Every response, server message, close code and event record the suite
//! sees is also checked against `docs/api/` (`testkit::api`): a drift fails.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use http_body_util::Empty;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::Request;
use hyper_util::rt::TokioIo;
use quiz_core::{Config, Shutdown};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ------------------------------------------------------------------ nodes

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Embedded,
    Distributed,
}

/// Starts core instances of one kind. Instances of one factory share their
/// backends (distributed: one Redis Cluster, one fresh Kafka topic).
struct Factory {
    kind: Kind,
    secret: String,
    topic: String,
    dir: std::path::PathBuf,
}

struct Node {
    addr: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Factory {
    async fn new(kind: Kind) -> Factory {
        let topic = testkit::unique_topic("core");
        if kind == Kind::Distributed {
            testkit::require_redis_cluster().await;
            let kafka = testkit::require_kafka().await;
            kafka.create_topic(&topic, 3).await;
        }
        let dir = std::env::temp_dir().join(testkit::unique_name("core-contract"));
        Factory {
            kind,
            secret: format!("contract-secret-{}", testkit::unique_name("s")),
            topic,
            dir,
        }
    }

    fn config(&self) -> Config {
        let mut c = Config {
            listen: "127.0.0.1:0".into(),
            node_name: testkit::unique_name("node"),
            token_secret: self.secret.clone(),
            event_log: self.dir.join("events.jsonl"),
            demo_quiz: false,
            // Generous: the flood test is the one that trips it.
            ws_rate_per_sec: 20,
            ws_rate_burst: 40,
            shutdown_grace_ms: 3000,
            ..Config::default()
        };
        if self.kind == Kind::Distributed {
            let s = testkit::Settings::from_env();
            c.redis_nodes = s.redis_nodes;
            c.kafka_brokers = s.kafka_brokers;
            c.kafka_topic = self.topic.clone();
        }
        c
    }

    async fn start(&self) -> Node {
        self.start_with(self.config()).await
    }

    async fn start_with(&self, config: Config) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(quiz_core::run(config, listener, shutdown.clone()));
        // Ready when /healthz answers.
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_ok() {
                let (s, _) = http(addr, "GET", "/healthz", &[], None).await;
                if s == 200 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Node {
            addr,
            shutdown,
            task,
        }
    }
}

impl Node {
    async fn stop(self) {
        self.shutdown.trigger();
        let r = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("node stops within the grace period");
        r.unwrap().unwrap();
    }
}

// ------------------------------------------------------------------- HTTP

/// A minimal HTTP/1.1 client (one request per connection): status + JSON.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, Value) {
    let (s, _, v) = http_full(addr, method, path, headers, body).await;
    (s, v)
}

async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String, Value) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.map(<[u8]>::to_vec).unwrap_or_default();
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    // Write concurrently with reading: the server may answer (413) before
    // it has read the whole body.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(req.as_bytes()).await;
        let _ = wr.write_all(&body).await;
        wr
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut buf)).await;
    drop(writer);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 0 {
        testkit::api::check_http(method, path, status, body);
    }
    let v = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, head.to_string(), v)
}

async fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
    .await
}

async fn host(addr: SocketAddr, quiz: &str, action: &str, token: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    http(
        addr,
        "POST",
        &format!("/v1/quizzes/{quiz}/{action}"),
        &[("Authorization", &auth)],
        None,
    )
    .await
}

fn quiz_body(id: &str, mode: &str, n: usize) -> Value {
    let questions: Vec<Value> = (0..n)
        .map(|i| {
            json!({"text": format!("q{i}"), "options": ["a", "b", "c"], "correct": [1],
                   "time_limit_ms": 5000, "points": 1000})
        })
        .collect();
    json!({"title": "Contract", "mode": mode, "quiz_id": id, "questions": questions})
}

async fn create(addr: SocketAddr, mode: &str, n: usize) -> (String, String) {
    let id = testkit::unique_quiz_id();
    let (s, v) = post(addr, "/v1/quizzes", &quiz_body(&id, mode, n)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["quiz_id"], id.as_str());
    (id, v["host_token"].as_str().unwrap().to_string())
}

async fn join(addr: SocketAddr, quiz: &str, nick: &str) -> (String, String) {
    let (s, v) = post(
        addr,
        &format!("/v1/quizzes/{quiz}/players"),
        &json!({"nickname": nick}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    (
        v["player_id"].as_str().unwrap().to_string(),
        v["player_token"].as_str().unwrap().to_string(),
    )
}

// --------------------------------------------------------------------- WS

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

type Ws = WebSocket<TokioIo<hyper::upgrade::Upgraded>>;

async fn ws(addr: SocketAddr, quiz: &str, token: &str) -> Ws {
    let stream = TcpStream::connect(addr).await.unwrap();
    let req = Request::builder()
        .method("GET")
        .uri(format!("http://{addr}/v1/quizzes/{quiz}/ws?token={token}"))
        .header("Host", addr.to_string())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (mut ws, resp) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.set_auto_close(true);
    ws
}

enum Got {
    Msg(Value),
    Closed(u16),
}

async fn recv(ws: &mut Ws) -> Got {
    loop {
        let f = tokio::time::timeout(Duration::from_secs(15), ws.read_frame())
            .await
            .expect("a frame within 15 s");
        let Ok(f) = f else {
            return Got::Closed(0);
        };
        match f.opcode {
            OpCode::Text => {
                let v = serde_json::from_slice(&f.payload).unwrap();
                testkit::api::check_ws_server(&v);
                return Got::Msg(v);
            }
            OpCode::Close => {
                let code = if f.payload.len() >= 2 {
                    u16::from_be_bytes([f.payload[0], f.payload[1]])
                } else {
                    1005
                };
                testkit::api::check_close_code(code);
                return Got::Closed(code);
            }
            _ => continue,
        }
    }
}

/// The next message of type `ty`, skipping others (leaderboards, counts…).
async fn expect(ws: &mut Ws, ty: &str) -> Value {
    loop {
        match recv(ws).await {
            Got::Msg(v) if v["type"] == ty => return v,
            Got::Msg(_) => continue,
            Got::Closed(code) => panic!("closed with {code} while waiting for {ty}"),
        }
    }
}

async fn expect_close(ws: &mut Ws) -> u16 {
    loop {
        match recv(ws).await {
            Got::Msg(_) => continue,
            Got::Closed(code) => return code,
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    send_raw(ws, v.to_string().into_bytes()).await
}

async fn send_raw(ws: &mut Ws, bytes: Vec<u8>) {
    ws.write_frame(Frame::text(Payload::Owned(bytes)))
        .await
        .unwrap();
}

async fn answer(ws: &mut Ws, q: u64, choices: &[u64]) -> Value {
    let msg = json!({"type": "answer", "question_id": q, "choices": choices});
    testkit::api::check_ws_client(&msg);
    send(ws, msg).await;
    expect(ws, "answer_result").await
}

// -------------------------------------------------------------- scenarios

async fn http_api(f: Factory) {
    let n = f.start().await;
    let a = n.addr;
    // Create: generated id, 8 lowercase alphanumerics.
    let mut body = quiz_body("x", "live", 2);
    body.as_object_mut().unwrap().remove("quiz_id");
    let (s, v) = post(a, "/v1/quizzes", &body).await;
    assert_eq!(s, 201, "{v}");
    let gen = v["quiz_id"].as_str().unwrap();
    assert_eq!(gen.len(), 8);
    assert!(gen
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    // Invalid bodies name the field.
    let mut bad = quiz_body(&testkit::unique_quiz_id(), "live", 1);
    bad["questions"][0]["time_limit_ms"] = json!(100);
    let (s, v) = post(a, "/v1/quizzes", &bad).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "invalid");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("time_limit_ms"),
        "{v}"
    );
    let (s, v) = post(a, "/v1/quizzes", &json!({"mode": "live", "questions": []})).await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("title"),
        "{v}"
    );
    let (s, v) = post(a, "/v1/quizzes", &quiz_body("bad.id", "live", 1)).await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("quiz_id"),
        "{v}"
    );
    let (s, v) = http(a, "POST", "/v1/quizzes", &[], Some(b"{not json")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid")));
    // Too large.
    let big = vec![b' '; (1 << 20) + 10];
    let (s, v) = http(a, "POST", "/v1/quizzes", &[], Some(&big)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (413, Some("too_large")));
    // Supplied id; taken → 409.
    let (id, host_token) = create(a, "live", 2).await;
    let (s, v) = post(a, "/v1/quizzes", &quiz_body(&id, "live", 1)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    // Get.
    let (s, v) = http(a, "GET", &format!("/v1/quizzes/{id}"), &[], None).await;
    assert_eq!(s, 200);
    assert_eq!(v["state"], "lobby");
    assert_eq!(v["question_count"], 2);
    assert_eq!(v["mode"], "live");
    let (s, v) = http(a, "GET", "/v1/quizzes/nope-nope-nope", &[], None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    // Join; nickname rules.
    let (pid, _) = join(a, &id, "  Alice ").await;
    let (s, v) = post(
        a,
        &format!("/v1/quizzes/{id}/players"),
        &json!({"nickname": "alice"}),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    let (s, v) = post(
        a,
        &format!("/v1/quizzes/{id}/players"),
        &json!({"nickname": "   "}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("nickname"));
    let (s, _) = post(
        a,
        &format!("/v1/quizzes/{id}/players"),
        &json!({"nickname": "x".repeat(25)}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, v) = post(
        a,
        "/v1/quizzes/nope-nope/players",
        &json!({"nickname": "a"}),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = http(
        a,
        "GET",
        &format!("/v1/quizzes/{id}/players/{pid}"),
        &[],
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["nickname"], "Alice");
    assert_eq!(
        (v["score"].as_u64(), v["rank"].as_u64()),
        (Some(0), Some(1))
    );
    let (s, _) = http(
        a,
        "GET",
        &format!("/v1/quizzes/{id}/players/nobody"),
        &[],
        None,
    )
    .await;
    assert_eq!(s, 404);
    // Leaderboard.
    let (s, v) = http(
        a,
        "GET",
        &format!("/v1/quizzes/{id}/leaderboard?limit=5"),
        &[],
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["total_players"], 1);
    assert_eq!(v["top"][0]["player_id"], pid.as_str());
    for bad in ["0", "101", "x"] {
        let (s, v) = http(
            a,
            "GET",
            &format!("/v1/quizzes/{id}/leaderboard?limit={bad}"),
            &[],
            None,
        )
        .await;
        assert_eq!(s, 400);
        assert!(v["error"]["message"].as_str().unwrap().contains("limit"));
    }
    // Host auth: none → 401, forged → 401, another quiz's host → 403, player → 403.
    let (s, v) = http(a, "POST", &format!("/v1/quizzes/{id}/start"), &[], None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, _) = host(a, &id, "start", "v1.h.x..AAAA").await;
    assert_eq!(s, 401);
    let (other, other_host) = create(a, "live", 1).await;
    let (s, v) = host(a, &id, "start", &other_host).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (_, ptoken) = join(a, &other, "bob").await;
    let (s, _) = host(a, &other, "start", &ptoken).await;
    assert_eq!(s, 403);
    // State machine.
    let (s, v) = host(a, &id, "next", &host_token).await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = host(a, &id, "start", &host_token).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["current_question"].as_u64()),
        (Some("running"), Some(0))
    );
    let (s, _) = host(a, &id, "start", &host_token).await;
    assert_eq!(s, 409);
    let (s, v) = host(a, &id, "next", &host_token).await;
    assert_eq!((s, v["current_question"].as_u64()), (200, Some(1)));
    let (s, v) = host(a, &id, "next", &host_token).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    // A late joiner sees the released questions, without correct answers.
    let (s, v) = post(
        a,
        &format!("/v1/quizzes/{id}/players"),
        &json!({"nickname": "Carol"}),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(v["quiz"]["questions"].as_array().unwrap().len(), 2);
    assert!(v["quiz"]["questions"][0].get("correct").is_none());
    assert_eq!(v["leaderboard"]["total_players"], 2);
    let (s, v) = host(a, &id, "end", &host_token).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("ended")));
    let (s, _) = host(a, &id, "end", &host_token).await;
    assert_eq!(s, 409);
    // Operations.
    let (s, _) = http(a, "GET", "/healthz", &[], None).await;
    assert_eq!(s, 200);
    let (s, v) = http(a, "GET", "/readyz", &[], None).await;
    assert_eq!(s, 200, "{v}");
    let (s, head, _) = http_full(a, "GET", "/metrics", &[], None).await;
    assert_eq!(s, 200);
    assert!(head.contains("text/plain"));
    let (s, v) = http(a, "GET", "/v1/nothing", &[], None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    n.stop().await;
}

async fn live_game(f: Factory) {
    let n = f.start().await;
    let a = n.addr;
    let (id, host_token) = create(a, "live", 2).await;
    let (pa, ta) = join(a, &id, "ann").await;
    let (_pb, tb) = join(a, &id, "ben").await;
    let (_pc, tc) = join(a, &id, "cid").await;
    let mut wa = ws(a, &id, &ta).await;
    let w = expect(&mut wa, "welcome").await;
    assert_eq!(w["player_id"], pa.as_str());
    assert_eq!(
        (w["state"].as_str(), w["score"].as_u64()),
        (Some("lobby"), Some(0))
    );
    assert!(w.get("question").is_none());
    let mut wb = ws(a, &id, &tb).await;
    expect(&mut wb, "welcome").await;
    let mut wh = ws(a, &id, &host_token).await;
    let hw = expect(&mut wh, "welcome").await;
    assert_eq!(hw["role"], "host");
    // Not open yet.
    let r = answer(&mut wa, 0, &[1]).await;
    assert_eq!(
        (r["accepted"].as_bool(), r["reason"].as_str()),
        (Some(false), Some("not_open"))
    );
    // Start: everyone gets the question.
    let (s, _) = host(a, &id, "start", &host_token).await;
    assert_eq!(s, 200);
    for w in [&mut wa, &mut wb, &mut wh] {
        let q = expect(w, "question").await;
        assert_eq!(q["question"]["id"], 0);
        assert!(q["question"].get("correct").is_none());
        assert_eq!(
            q["closes_at_ms"].as_u64().unwrap() - q["opens_at_ms"].as_u64().unwrap(),
            5000
        );
    }
    // Scoring, on the server clock.
    let r = answer(&mut wa, 0, &[1]).await;
    assert_eq!(r["accepted"], true, "{r}");
    assert_eq!(r["correct"], true);
    let pts = r["points"].as_u64().unwrap();
    assert!((500..=1000).contains(&pts), "{r}");
    assert_eq!(
        (r["score"].as_u64(), r["rank"].as_u64()),
        (Some(pts), Some(1))
    );
    // Invalid choices are refused and not recorded.
    let r = answer(&mut wb, 0, &[7]).await;
    assert_eq!(r["reason"], "invalid");
    let r = answer(&mut wb, 0, &[0]).await;
    assert_eq!(
        (
            r["accepted"].as_bool(),
            r["correct"].as_bool(),
            r["points"].as_u64()
        ),
        (Some(true), Some(false), Some(0))
    );
    assert_eq!(r["rank"], 2);
    // One answer per question: duplicates.
    let r = answer(&mut wa, 0, &[0]).await;
    assert_eq!(
        (r["accepted"].as_bool(), r["reason"].as_str()),
        (Some(false), Some("duplicate"))
    );
    assert_eq!(r["score"].as_u64(), Some(pts));
    // Not open: a future question.
    let r = answer(&mut wa, 1, &[1]).await;
    assert_eq!(r["reason"], "not_open");
    // The leaderboard message, with ann on top.
    let lb = loop {
        let lb = expect(&mut wb, "leaderboard").await;
        if lb["top"][0]["score"].as_u64() == Some(pts) {
            break lb;
        }
    };
    assert_eq!(lb["quiz_id"], id.as_str());
    assert_eq!(lb["total_players"], 3);
    assert_eq!(lb["top"][0]["player_id"], pa.as_str());
    assert_eq!(lb["top"][0]["rank"], 1);
    // Reconnect keeps score and answers.
    drop(wa);
    let mut wa = ws(a, &id, &ta).await;
    let w = expect(&mut wa, "welcome").await;
    assert_eq!(
        (w["score"].as_u64(), w["rank"].as_u64()),
        (Some(pts), Some(1))
    );
    assert_eq!(w["question"]["question"]["id"], 0);
    assert_eq!(w["answered"], true);
    let r = answer(&mut wa, 0, &[1]).await;
    assert_eq!(r["reason"], "duplicate");
    // Next: question 0 closes (distribution), question 1 opens.
    let (s, _) = host(a, &id, "next", &host_token).await;
    assert_eq!(s, 200);
    let c = expect(&mut wb, "question_closed").await;
    assert_eq!(c["question_id"], 0);
    assert_eq!(c["correct"], json!([1]));
    assert_eq!(c["distribution"], json!([1, 1, 0]));
    let hc = expect(&mut wh, "question_closed").await;
    assert_eq!(hc["distribution"], json!([1, 1, 0]));
    let q = expect(&mut wb, "question").await;
    assert_eq!(q["question"]["id"], 1);
    // Late: cid answers the closed question 0; recorded with 0 points.
    let mut wc = ws(a, &id, &tc).await;
    expect(&mut wc, "welcome").await;
    let r = answer(&mut wc, 0, &[1]).await;
    assert_eq!(
        (
            r["accepted"].as_bool(),
            r["reason"].as_str(),
            r["points"].as_u64()
        ),
        (Some(false), Some("late"), Some(0))
    );
    let r = answer(&mut wc, 0, &[1]).await;
    assert_eq!(r["reason"], "duplicate");
    // End: quiz_ended with the final top.
    let (s, _) = host(a, &id, "end", &host_token).await;
    assert_eq!(s, 200);
    for w in [&mut wa, &mut wb, &mut wc, &mut wh] {
        let e = expect(w, "quiz_ended").await;
        assert_eq!(e["top"][0]["player_id"], pa.as_str());
    }
    let (_, v) = http(
        a,
        "GET",
        &format!("/v1/quizzes/{id}/players/{pa}"),
        &[],
        None,
    )
    .await;
    assert_eq!(v["score"].as_u64(), Some(pts));
    n.stop().await;
}

/// The closing window itself: a question closes by time (5 s), and
/// `question_closed` arrives without a host action.
async fn question_closes_by_time(f: Factory) {
    let n = f.start().await;
    let a = n.addr;
    let (id, host_token) = create(a, "live", 1).await;
    let (_, t) = join(a, &id, "ann").await;
    let mut w = ws(a, &id, &t).await;
    expect(&mut w, "welcome").await;
    host(a, &id, "start", &host_token).await;
    expect(&mut w, "question").await;
    let c = expect(&mut w, "question_closed").await;
    assert_eq!(c["distribution"], json!([0, 0, 0]));
    let r = answer(&mut w, 0, &[1]).await;
    assert_eq!(r["reason"], "late");
    n.stop().await;
}

/// A started self-paced quiz of 2 questions with one player, "ann", whose
/// socket has received question 0: (quiz, host token, player token,
/// socket, the question message).
async fn started_self_paced(a: SocketAddr) -> (String, String, String, Ws, Value) {
    let (id, host_token) = create(a, "self_paced", 2).await;
    let (_, t) = join(a, &id, "ann").await;
    let mut w = ws(a, &id, &t).await;
    let wel = expect(&mut w, "welcome").await;
    assert_eq!(wel["state"], "lobby");
    let (s, v) = host(a, &id, "start", &host_token).await;
    assert_eq!(s, 200, "{v}");
    let q = expect(&mut w, "question").await;
    assert_eq!(q["question"]["id"], 0);
    (id, host_token, t, w, q)
}

async fn self_paced(f: Factory) {
    let n = f.start().await;
    let a = n.addr;
    let (id, host_token, t, mut w, _) = started_self_paced(a).await;
    let (s, _) = host(a, &id, "next", &host_token).await;
    assert_eq!(s, 409);
    let r = answer(&mut w, 1, &[1]).await;
    assert_eq!(r["reason"], "not_open");
    let r = answer(&mut w, 0, &[1]).await;
    assert_eq!(r["accepted"], true, "{r}");
    let q = expect(&mut w, "question").await;
    assert_eq!(q["question"]["id"], 1);
    // Reconnect: the same question, with the same clock.
    drop(w);
    let mut w = ws(a, &id, &t).await;
    let wel = expect(&mut w, "welcome").await;
    assert_eq!(wel["question"]["question"]["id"], 1);
    assert_eq!(wel["question"]["opens_at_ms"], q["opens_at_ms"]);
    let r = answer(&mut w, 1, &[0]).await;
    assert_eq!(
        (r["accepted"].as_bool(), r["correct"].as_bool()),
        (Some(true), Some(false))
    );
    host(a, &id, "end", &host_token).await;
    expect(&mut w, "quiz_ended").await;
    n.stop().await;
}

/// Self-paced: a question whose time runs out unanswered is followed by
/// the next one without the player doing anything; the last one's expiry
/// sends nothing more; answering the expired one afterwards is late.
async fn self_paced_expiry_presents_the_next_question(f: Factory) {
    let n = f.start().await;
    let (_, _, _, mut w, q0) = started_self_paced(n.addr).await;
    let closes = q0["closes_at_ms"].as_u64().unwrap();
    // Say nothing: 5 s later (+ the grace) question 1 arrives by itself.
    let q1 = expect(&mut w, "question").await;
    assert_eq!(q1["question"]["id"], 1, "{q1}");
    let opens = q1["opens_at_ms"].as_u64().unwrap();
    assert!(
        opens >= closes,
        "q1 opened at {opens}, before q0 closed at {closes}"
    );
    let r = answer(&mut w, 0, &[1]).await;
    assert_eq!(r["reason"], "late", "{r}");
    assert_eq!(r["points"], 0, "{r}");
    // The last question expires too: nothing follows but what we ask for.
    tokio::time::sleep(Duration::from_millis(5600)).await;
    send(&mut w, json!({"type": "ping"})).await;
    loop {
        match recv(&mut w).await {
            Got::Msg(v) if v["type"] == "pong" => break,
            Got::Msg(v) => assert_ne!(v["type"], "question", "nothing after the last expiry: {v}"),
            Got::Closed(code) => panic!("closed with {code}"),
        }
    }
    n.stop().await;
}

async fn ws_errors(f: Factory) {
    let n = f.start().await;
    let a = n.addr;
    let (id, _) = create(a, "live", 1).await;
    let (_, t) = join(a, &id, "ann").await;
    // Malformed and unknown messages: an error, the socket stays open.
    let mut w = ws(a, &id, &t).await;
    expect(&mut w, "welcome").await;
    send_raw(&mut w, b"{nope".to_vec()).await;
    let e = expect(&mut w, "error").await;
    assert_eq!(e["code"], "malformed");
    send(&mut w, json!({"type": "dance"})).await;
    let e = expect(&mut w, "error").await;
    assert_eq!(e["code"], "unknown_type");
    send(&mut w, json!({"type": "answer", "question_id": "x"})).await;
    expect(&mut w, "error").await;
    send(&mut w, json!({"type": "ping"})).await;
    expect(&mut w, "pong").await;
    // Oversize frame → 1009.
    send_raw(&mut w, vec![b' '; 5000]).await;
    assert_eq!(expect_close(&mut w).await, 1009);
    // Flood → 1008.
    let mut w = ws(a, &id, &t).await;
    expect(&mut w, "welcome").await;
    for _ in 0..200 {
        if w.write_frame(Frame::text(Payload::Owned(br#"{"type":"ping"}"#.to_vec())))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(expect_close(&mut w).await, 1008);
    // Bad token → 4001; unknown quiz → 4004.
    let mut w = ws(a, &id, "garbage").await;
    assert_eq!(expect_close(&mut w).await, 4001);
    let mut w = ws(a, &id, "v1.p.x.y.AAAA").await;
    assert_eq!(expect_close(&mut w).await, 4001);
    // A good token of a quiz that does not exist (expired from the store,
    // say): 4004.
    let gone = quiz_core::token::TokenKey::new(f.secret.as_bytes(), 3600).sign(
        &quiz_core::token::Claims {
            quiz_id: "no-such-quiz".into(),
            role: quiz_core::token::Role::Player,
            player_id: "p1".into(),
            spread: 1,
        },
        quiz_core::model::now_ms(),
    );
    let mut w = ws(a, "no-such-quiz", &gone).await;
    assert_eq!(expect_close(&mut w).await, 4004);
    // A token of another quiz → 4001, whether the path's quiz exists or not
    // (checked before the store is asked: `connection::check_token`).
    let (other, _) = create(a, "live", 1).await;
    let mut w = ws(a, &other, &t).await;
    assert_eq!(expect_close(&mut w).await, 4001);
    let mut w = ws(a, "no-such-quiz", &t).await;
    assert_eq!(expect_close(&mut w).await, 4001);
    n.stop().await;
}

/// The close frame a server sent right behind its 101 head: code, reason.
async fn read_close(s: &mut TcpStream) -> (u16, String) {
    let read = async {
        let mut hdr = [0u8; 2];
        s.read_exact(&mut hdr).await.unwrap();
        assert_eq!(hdr[0], 0x88, "a close frame");
        let mut payload = vec![0u8; usize::from(hdr[1] & 0x7f)];
        s.read_exact(&mut payload).await.unwrap();
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        (code, String::from_utf8_lossy(&payload[2..]).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a close frame within 10 s")
}

fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A token refused before the upgrade (MAC, expiry, the path's quiz) still
/// gets its 101 and the contract's 4001 with the same reasons as ever, and
/// that 101 carries `x-quiz-auth: refused` (what edge-lb counts per client
/// address); a good token's 101 does not.
async fn refused_tokens_get_a_marked_101_then_4001(f: Factory) {
    let n = f.start().await;
    let a = n.addr;
    let (id, host_token) = create(a, "live", 1).await;
    let (_, t) = join(a, &id, "ann").await;
    let (other, _) = create(a, "live", 1).await;
    // The last character of the MAC changed.
    let last = if t.ends_with('A') { "B" } else { "A" };
    let tampered = format!("{}{last}", &t[..t.len() - 1]);
    let forged_host = format!("v1.h.{id}..AAAA");
    for (quiz, token, reason) in [
        (id.as_str(), "garbage", "bad token"),
        (&id, &tampered, "bad token"),
        (&id, &forged_host, "bad token"),
        (&other, &t, "token is for another quiz"),
        ("no-such-quiz", &t, "token is for another quiz"),
    ] {
        let (status, head, mut s) = raw_upgrade(a, quiz, token).await;
        assert_eq!(status, 101, "{token}: {head}");
        assert_eq!(header_of(&head, "x-quiz-auth"), Some("refused"), "{head}");
        assert_eq!(
            read_close(&mut s).await,
            (4001, reason.to_string()),
            "{token}"
        );
    }
    for token in [&t, &host_token] {
        let (status, head, mut s) = raw_upgrade(a, &id, token).await;
        assert_eq!(status, 101, "{head}");
        assert_eq!(header_of(&head, "x-quiz-auth"), None, "{head}");
        let mut first = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut first))
            .await
            .expect("a frame within 10 s")
            .unwrap();
        assert_eq!(first[0], 0x81, "a text frame (the welcome), not a close");
    }
    n.stop().await;
}

/// Shutdown closes sockets with 1001 and the node exits.
async fn shutdown_closes_with_1001(f: Factory) {
    let n = f.start().await;
    let a = n.addr;
    let (id, _) = create(a, "live", 1).await;
    let (_, t) = join(a, &id, "ann").await;
    let mut w = ws(a, &id, &t).await;
    expect(&mut w, "welcome").await;
    n.shutdown.trigger();
    assert_eq!(expect_close(&mut w).await, 1001);
    tokio::time::timeout(Duration::from_secs(15), n.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The drain phase before shutdown: `/readyz` turns 503 at once (edge-lb
/// stops routing here) while open sockets and the API keep working; at its
/// end the sockets close with 1001.
async fn drain_then_close_with_1001(f: Factory) {
    let n = f.start().await;
    let a = n.addr;
    let (id, _) = create(a, "live", 1).await;
    let (_, t) = join(a, &id, "ann").await;
    let mut w = ws(a, &id, &t).await;
    expect(&mut w, "welcome").await;
    let (s, _) = http(a, "GET", "/readyz", &[], None).await;
    assert_eq!(s, 200);
    let started = std::time::Instant::now();
    n.shutdown.drain_then_trigger(Duration::from_millis(1500));
    let (s, v) = http(a, "GET", "/readyz", &[], None).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "unavailable", "{v}");
    // Still serving during the drain: the socket answers, a player joins.
    send(&mut w, json!({"type": "ping"})).await;
    expect(&mut w, "pong").await;
    join(a, &id, "late bee").await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "checked inside the drain"
    );
    assert_eq!(expect_close(&mut w).await, 1001);
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "closed only after the drain ({:?})",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(15), n.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Tiers: an api node refuses the ws route; a ws node refuses the API.
async fn tiers(f: Factory) {
    let api = f
        .start_with(Config {
            tier: quiz_core::config::Tier::Api,
            ..f.config()
        })
        .await;
    let (id, _) = create(api.addr, "live", 1).await;
    let (s, v) = http(
        api.addr,
        "GET",
        &format!("/v1/quizzes/{id}/ws?token=x"),
        &[],
        None,
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let wsn = f
        .start_with(Config {
            tier: quiz_core::config::Tier::Ws,
            ..f.config()
        })
        .await;
    let (s, _) = post(wsn.addr, "/v1/quizzes", &quiz_body("zz", "live", 1)).await;
    assert_eq!(s, 404);
    let (s, _) = http(wsn.addr, "GET", "/healthz", &[], None).await;
    assert_eq!(s, 200);
    api.stop().await;
    wsn.stop().await;
}

/// `POST …/players` with an `Idempotency-Key` header.
/// `GET /v1/quizzes/{id}/leaderboard`'s body.
async fn leaderboard(addr: SocketAddr, id: &str) -> Value {
    http(
        addr,
        "GET",
        &format!("/v1/quizzes/{id}/leaderboard"),
        &[],
        None,
    )
    .await
    .1
}

async fn join_keyed(addr: SocketAddr, quiz: &str, nick: &str, key: &str) -> (u16, Value) {
    http(
        addr,
        "POST",
        &format!("/v1/quizzes/{quiz}/players"),
        &[
            ("Content-Type", "application/json"),
            ("Idempotency-Key", key),
        ],
        Some(json!({ "nickname": nick }).to_string().as_bytes()),
    )
    .await
}

fn error_of(v: &Value) -> (Option<&str>, &str) {
    (
        v["error"]["code"].as_str(),
        v["error"]["message"].as_str().unwrap_or_default(),
    )
}

/// Idempotent joins (contract extension, docs/core.md): a join retried with the same
/// `Idempotency-Key` gets the same player (id, token, score) instead of 409.
async fn idempotent_join(f: Factory) {
    let n = f.start().await;
    let a = n.addr;
    let (id, host_token) = create(a, "live", 2).await;
    let players = format!("/v1/quizzes/{id}/players");
    let key = testkit::unique_name("join-key");
    // First join with a key: an ordinary 201.
    let (s, first) = join_keyed(a, &id, "ann", &key).await;
    assert_eq!(s, 201, "{first}");
    let pid = first["player_id"].as_str().unwrap().to_string();
    let token = first["player_token"].as_str().unwrap().to_string();
    assert_eq!(pid.len(), 12);
    // The same key and nickname again: the same player, answered exactly
    // like a first join.
    let (s, again) = join_keyed(a, &id, " ann ", &key).await;
    assert_eq!(s, 201, "{again}");
    assert_eq!(again["player_id"], pid.as_str());
    assert_eq!(again["player_token"], token.as_str());
    assert_eq!(again["quiz"]["state"], "lobby");
    assert_eq!(again["leaderboard"]["total_players"], 1, "{again}");
    // The same key with another nickname (also another case): 409.
    for other in ["bob", "Ann"] {
        let (s, v) = join_keyed(a, &id, other, &key).await;
        assert_eq!(s, 409, "{v}");
        let (code, msg) = error_of(&v);
        assert_eq!(code, Some("conflict"));
        assert!(msg.contains("Idempotency-Key"), "{v}");
    }
    // Another key, the same nickname: taken, 409.
    let (s, v) = join_keyed(a, &id, "ann", &testkit::unique_name("other-key")).await;
    assert_eq!(s, 409, "{v}");
    let (code, msg) = error_of(&v);
    assert_eq!(code, Some("conflict"));
    assert!(msg.contains("nickname"), "{v}");
    // Without the header: unchanged (taken nickname 409, new one a random id).
    let (s, v) = post(a, &players, &json!({"nickname": "ann"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    let (pb, tb) = join(a, &id, "ben").await;
    assert_ne!(pb, pid);
    // Bad keys: 400 naming the header; nothing joined.
    let long = "k".repeat(65);
    for bad in ["", "two words", long.as_str()] {
        let (s, v) = join_keyed(a, &id, "cid", bad).await;
        assert_eq!(s, 400, "{bad:?}: {v}");
        let (code, msg) = error_of(&v);
        assert_eq!(code, Some("invalid"));
        assert!(msg.contains("Idempotency-Key"), "{v}");
    }
    let body = json!({"nickname": "cid"}).to_string();
    let (s, v) = http(
        a,
        "POST",
        &players,
        &[("Idempotency-Key", "k1"), ("Idempotency-Key", "k2")],
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!((s, error_of(&v).0), (400, Some("invalid")), "{v}");
    let (s, v) = join_keyed(a, &id, "cid", &"k".repeat(64)).await;
    assert_eq!(s, 201, "a 64-character key is fine: {v}");
    let lb = leaderboard(a, &id).await;
    assert_eq!(lb["total_players"], 3, "{lb}");
    // Score kept across a replay: ann scores, then her join is replayed.
    let mut wa = ws(a, &id, &token).await;
    expect(&mut wa, "welcome").await;
    let (s, _) = host(a, &id, "start", &host_token).await;
    assert_eq!(s, 200);
    expect(&mut wa, "question").await;
    let r = answer(&mut wa, 0, &[1]).await;
    assert_eq!(r["accepted"], true, "{r}");
    let score = r["score"].as_u64().unwrap();
    assert!(score > 0, "{r}");
    // Distributed: the retry lands on another node (as behind a proxy);
    // same secret, same store, same answer.
    let n2 = if f.kind == Kind::Distributed {
        Some(f.start().await)
    } else {
        None
    };
    let b = n2.as_ref().map_or(a, |n| n.addr);
    let (s, replay) = join_keyed(b, &id, "ann", &key).await;
    assert_eq!(s, 201, "{replay}");
    assert_eq!(replay["player_id"], pid.as_str());
    assert_eq!(replay["player_token"], token.as_str());
    assert_eq!(replay["quiz"]["state"], "running");
    assert_eq!(
        replay["quiz"]["questions"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(replay["leaderboard"]["total_players"], 3, "{replay}");
    let (s, v) = http(b, "GET", &format!("{players}/{pid}"), &[], None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["nickname"].as_str(), v["score"].as_u64()),
        (Some("ann"), Some(score))
    );
    assert_eq!(v["rank"], 1);
    // Concurrent replays of a new key: one player, every answer the same.
    let key2 = testkit::unique_name("race-key");
    let tries: Vec<_> = (0..6)
        .map(|i| {
            let (id, key2) = (id.clone(), key2.clone());
            let to = if i % 2 == 0 { a } else { b };
            tokio::spawn(async move { join_keyed(to, &id, "dot", &key2).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tries {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, 201, "{v}");
        ids.push(v["player_id"].as_str().unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let lb = leaderboard(b, &id).await;
    assert_eq!(lb["total_players"], 4, "{lb}");
    // The replayed token reconnects to the same player and score.
    let mut wa2 = ws(b, &id, replay["player_token"].as_str().unwrap()).await;
    let w = expect(&mut wa2, "welcome").await;
    assert_eq!(
        (w["player_id"].as_str(), w["score"].as_u64()),
        (Some(pid.as_str()), Some(score))
    );
    drop((wa, wa2, tb));
    if let Some(n2) = n2 {
        n2.stop().await;
    }
    n.stop().await;
    if f.kind == Kind::Distributed {
        // Replays re-publish the same `joined` event id; nothing else.
        let want = vec![
            format!("{id}:joined:{pid}"),
            format!("{id}:joined:{pb}"),
            format!("{id}:joined:{}", ids[0]),
        ];
        consume_quiz_events(&f.topic, &id, &want).await;
    }
}

/// A `duplicate` answer to a re-send: the original's `correct` and `points`.
#[track_caller]
fn assert_duplicate_of(r: &Value, original: &Value) {
    assert_eq!(r["accepted"], false, "{r}");
    assert_eq!(r["reason"], "duplicate", "{r}");
    assert_eq!(r["correct"], original["correct"], "{r} vs {original}");
    assert_eq!(r["points"], original["points"], "{r} vs {original}");
    assert_eq!(r["question_id"], original["question_id"], "{r}");
}

/// Sends an answer identical to `original`'s again, checks the duplicate.
async fn resend(w: &mut Ws, q: u64, choices: &[u64], original: &Value) {
    let r = answer(w, q, choices).await;
    assert_duplicate_of(&r, original);
}

/// The client rule (contract extension, docs/api/README.md): a client re-sends an answer
/// whose `answer_result` it never got, after reconnecting. Whatever the
/// quiz did meanwhile, a re-send of an answer that was recorded reaches the
/// store and comes back `duplicate` with the original's result, and the
/// original's `answer_scored` event is published again (same event id):
/// this is what repairs a node killed between the store and Kafka. Live:
/// question open, next question open, question closed by time, quiz ended,
/// each also on a new connection. Self-paced: an earlier question, the
/// last question, a new connection after the last question (nothing is
/// presented to it), the quiz ended.
async fn resent_answer_is_a_duplicate(f: Factory) {
    let n = f.start().await;
    let a = n.addr;
    // ---- live
    let (id, host_token) = create(a, "live", 2).await;
    let (pa, t) = join(a, &id, "ann").await;
    let mut w = ws(a, &id, &t).await;
    expect(&mut w, "welcome").await;
    host(a, &id, "start", &host_token).await;
    expect(&mut w, "question").await;
    let r0 = answer(&mut w, 0, &[1]).await;
    assert_eq!(
        (r0["accepted"].as_bool(), r0["correct"].as_bool()),
        (Some(true), Some(true)),
        "{r0}"
    );
    resend(&mut w, 0, &[1], &r0).await; // still open
    let (s, v) = host(a, &id, "next", &host_token).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(expect(&mut w, "question").await["question"]["id"], 1);
    resend(&mut w, 0, &[1], &r0).await; // the next question is open
    let r1 = answer(&mut w, 1, &[0]).await;
    assert_eq!(
        (r1["accepted"].as_bool(), r1["correct"].as_bool()),
        (Some(true), Some(false)),
        "{r1}"
    );
    // Question 1 closes by time (5 s), still the current one.
    loop {
        let c = expect(&mut w, "question_closed").await;
        if c["question_id"] == 1 {
            break;
        }
    }
    resend(&mut w, 1, &[0], &r1).await;
    resend(&mut w, 0, &[1], &r0).await;
    drop(w);
    let mut w = ws(a, &id, &t).await;
    assert_eq!(expect(&mut w, "welcome").await["score"], r0["score"]);
    resend(&mut w, 0, &[1], &r0).await;
    resend(&mut w, 1, &[0], &r1).await;
    let (s, v) = host(a, &id, "end", &host_token).await;
    assert_eq!(s, 200, "{v}");
    expect(&mut w, "quiz_ended").await;
    resend(&mut w, 0, &[1], &r0).await;
    resend(&mut w, 1, &[0], &r1).await;
    drop(w);
    let mut w = ws(a, &id, &t).await;
    expect(&mut w, "welcome").await;
    resend(&mut w, 0, &[1], &r0).await;
    resend(&mut w, 1, &[0], &r1).await;
    drop(w);
    // ---- self-paced
    let (sid, shost, st, mut sw, _) = started_self_paced(a).await;
    let (_, v) = http(
        a,
        "GET",
        &format!("/v1/quizzes/{sid}/leaderboard"),
        &[],
        None,
    )
    .await;
    let sp = v["top"][0]["player_id"].as_str().unwrap().to_string();
    let s0 = answer(&mut sw, 0, &[1]).await;
    assert_eq!(s0["accepted"], true, "{s0}");
    assert_eq!(expect(&mut sw, "question").await["question"]["id"], 1);
    resend(&mut sw, 0, &[1], &s0).await; // an earlier question
    let s1 = answer(&mut sw, 1, &[1]).await;
    assert_eq!(s1["accepted"], true, "{s1}");
    resend(&mut sw, 1, &[1], &s1).await; // the last question
    drop(sw);
    // A new connection after the last question: nothing is presented to
    // it (this re-send used to be refused `not_open`, without re-publish).
    let mut sw = ws(a, &sid, &st).await;
    let wel = expect(&mut sw, "welcome").await;
    assert!(wel["question"].is_null(), "{wel}");
    resend(&mut sw, 1, &[1], &s1).await;
    resend(&mut sw, 0, &[1], &s0).await;
    let (s, v) = host(a, &sid, "end", &shost).await;
    assert_eq!(s, 200, "{v}");
    expect(&mut sw, "quiz_ended").await;
    drop(sw);
    let mut sw = ws(a, &sid, &st).await;
    expect(&mut sw, "welcome").await;
    resend(&mut sw, 0, &[1], &s0).await;
    resend(&mut sw, 1, &[1], &s1).await;
    drop(sw);
    n.stop().await;
    // The original's event is on the log, same id, same record each time.
    // A re-send publishes it again only while it is still pending (the
    // event outbox: its acknowledgement's removal is queued, so a re-send
    // right after may still see it pending): at least once, at most the
    // original plus once per re-send (`event_repair.rs` checks that a
    // re-send of an acknowledged answer writes nothing).
    let want = [
        (id.clone(), format!("{id}:answer:{pa}:0"), 7),
        (id.clone(), format!("{id}:answer:{pa}:1"), 5),
        (sid.clone(), format!("{sid}:answer:{sp}:0"), 4),
        (sid.clone(), format!("{sid}:answer:{sp}:1"), 4),
    ];
    match f.kind {
        Kind::Embedded => {
            let log = std::fs::read_to_string(f.dir.join("events.jsonl")).unwrap();
            for line in log.lines() {
                testkit::api::check_event(&serde_json::from_str(line).unwrap());
            }
            for (_, event_id, times) in &want {
                let quoted = format!("\"{event_id}\"");
                let n = log.matches(&quoted).count();
                assert!((1..=*times).contains(&n), "{event_id}: {n} times");
            }
        }
        Kind::Distributed => {
            for (quiz, event_id, times) in &want {
                let seen = consume_quiz_events_n(&f.topic, quiz, &[(event_id.clone(), 1)]).await;
                let same: Vec<&Value> = seen
                    .iter()
                    .filter(|e| e["event_id"] == event_id.as_str())
                    .collect();
                assert!((1..=*times).contains(&same.len()), "{event_id}: {same:?}");
                // The same record each time (score_after may grow).
                for e in &same {
                    assert_eq!(e["points"], same[0]["points"], "{e}");
                    assert_eq!(e["answered_at_ms"], same[0]["answered_at_ms"], "{e}");
                }
            }
        }
    }
}

/// Upgraded WebSockets count against `max_connections`: the connection's
/// permit moves to the socket at the upgrade (it used to be released there,
/// so any number of sockets escaped the cap).
async fn websockets_count_against_max_connections(f: Factory) {
    let n = f
        .start_with(Config {
            max_connections: 3,
            ..f.config()
        })
        .await;
    let (id, _) = create(n.addr, "live", 1).await;
    let mut tokens = Vec::new();
    for i in 0..3 {
        tokens.push(join(n.addr, &id, &format!("cap{i}")).await.1);
    }
    // The HTTP connections above have given their places back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut socks = Vec::new();
    for t in &tokens {
        let mut w = ws(n.addr, &id, t).await;
        expect(&mut w, "welcome").await;
        socks.push(w);
    }
    // Three sockets hold the three places: a fourth connection is closed
    // at once, without a response.
    let (s, _) = http(n.addr, "GET", "/healthz", &[], None).await;
    assert_eq!(s, 0, "a connection past max_connections was served");
    // One socket closes: its place frees up.
    drop(socks.pop());
    testkit::eventually(
        "a place under max_connections",
        Duration::from_secs(10),
        || async { (http(n.addr, "GET", "/healthz", &[], None).await.0 == 200).then_some(()) },
    )
    .await;
    drop(socks);
    n.stop().await;
}

/// One live connection per player: a newer one replaces the older, which
/// is closed with 4009 (a phone that reconnects is never refused by its
/// own ghost). Hosts are not limited.
async fn newer_connection_replaces_older(f: Factory) {
    let n = f.start().await;
    let (id, host_token) = create(n.addr, "live", 1).await;
    let (_, token) = join(n.addr, &id, "twice").await;
    let mut old = ws(n.addr, &id, &token).await;
    expect(&mut old, "welcome").await;
    let mut new = ws(n.addr, &id, &token).await;
    expect(&mut new, "welcome").await;
    assert_eq!(expect_close(&mut old).await, 4009);
    // The newer one is served.
    send(&mut new, json!({"type": "ping"})).await;
    expect(&mut new, "pong").await;
    // And replaced in turn by a third.
    let mut third = ws(n.addr, &id, &token).await;
    expect(&mut third, "welcome").await;
    assert_eq!(expect_close(&mut new).await, 4009);
    send(&mut third, json!({"type": "ping"})).await;
    expect(&mut third, "pong").await;
    // Two host connections (host page and a projector) both stay open.
    let mut h1 = ws(n.addr, &id, &host_token).await;
    expect(&mut h1, "welcome").await;
    let mut h2 = ws(n.addr, &id, &host_token).await;
    expect(&mut h2, "welcome").await;
    for h in [&mut h1, &mut h2] {
        send(h, json!({"type": "ping"})).await;
        expect(h, "pong").await;
    }
    n.stop().await;
}

/// The server pings every `ws_ping_interval_ms`; a client that answers
/// (pongs count as inbound) stays, one that sends nothing for
/// `ws_idle_timeout_ms` is closed with 4010.
async fn server_pings_and_closes_idle_connections(f: Factory) {
    let n = f
        .start_with(Config {
            ws_ping_interval_ms: 300,
            ws_idle_timeout_ms: 1500,
            ..f.config()
        })
        .await;
    let (id, _) = create(n.addr, "live", 1).await;
    let (_, live_token) = join(n.addr, &id, "answers").await;
    let (_, mute_token) = join(n.addr, &id, "mute").await;
    // Answers pings (fastwebsockets' auto-pong, on every read).
    let mut live = ws(n.addr, &id, &live_token).await;
    expect(&mut live, "welcome").await;
    // Reads, but never answers a ping.
    let mut mute = ws(n.addr, &id, &mute_token).await;
    mute.set_auto_pong(false);
    expect(&mut mute, "welcome").await;
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        loop {
            let f = tokio::time::timeout(Duration::from_secs(10), mute.read_frame())
                .await
                .expect("a frame within 10 s");
            let Ok(f) = f else { return (pings, 0) };
            match f.opcode {
                OpCode::Ping => pings += 1,
                OpCode::Close => {
                    let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                    testkit::api::check_close_code(code);
                    return (pings, code);
                }
                _ => {}
            }
        }
    });
    // The answering client outlives the idle timeout several times over.
    let until = tokio::time::Instant::now() + Duration::from_millis(4000);
    loop {
        match tokio::time::timeout_at(until, live.read_frame()).await {
            Err(_) => break,
            Ok(Ok(f)) => assert_ne!(f.opcode, OpCode::Close, "the answering client was closed"),
            Ok(Err(e)) => panic!("the answering client lost its socket: {e}"),
        }
    }
    let (pings, code) = reader.await.unwrap();
    assert!(pings >= 2, "{pings} pings before the idle close");
    assert_eq!(code, 4010);
    send(&mut live, json!({"type": "ping"})).await;
    expect(&mut live, "pong").await;
    n.stop().await;
}

/// Pongs are rate-limited like every other frame, inside a fragmented
/// message too (they used to be skipped there, unlimited).
async fn control_frames_are_rate_limited(f: Factory) {
    let n = f.start().await;
    let (id, _) = create(n.addr, "live", 1).await;
    let (_, token) = join(n.addr, &id, "flood").await;
    let mut w = ws(n.addr, &id, &token).await;
    expect(&mut w, "welcome").await;
    // The first fragment of a text message, then pongs only.
    w.write_frame(Frame::new(
        false,
        OpCode::Text,
        None,
        Payload::Owned(b"{\"type\":".to_vec()),
    ))
    .await
    .unwrap();
    for _ in 0..200 {
        if w.write_frame(Frame::pong(Payload::Owned(Vec::new())))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(expect_close(&mut w).await, 1008);
    n.stop().await;
}

/// Limits a crowd cannot push past: players per quiz (409 `quiz_full`,
/// exactly the cap under concurrent joins), the size of a quiz definition
/// (413, below Kafka's message limit), and the admin key.
async fn crowd_limits(f: Factory) {
    let n = f
        .start_with(Config {
            max_players_per_quiz: 5,
            max_quiz_bytes: 4096,
            admin_key: Some("contract-admin-key-0123".into()),
            ..f.config()
        })
        .await;
    let a = n.addr;
    let admin = [
        ("Content-Type", "application/json"),
        ("X-Admin-Key", "contract-admin-key-0123"),
    ];
    // The admin key: missing or wrong → 401; right → 201.
    let id = testkit::unique_quiz_id();
    let body = quiz_body(&id, "live", 1).to_string();
    let (s, v) = post(a, "/v1/quizzes", &quiz_body(&id, "live", 1)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let wrong = [
        ("Content-Type", "application/json"),
        ("X-Admin-Key", "contract-admin-key-0124"),
    ];
    let (s, _) = http(a, "POST", "/v1/quizzes", &wrong, Some(body.as_bytes())).await;
    assert_eq!(s, 401);
    let (s, v) = http(a, "POST", "/v1/quizzes", &admin, Some(body.as_bytes())).await;
    assert_eq!(s, 201, "{v}");
    // A definition over max_quiz_bytes → 413 naming the key.
    let mut big = quiz_body(&testkit::unique_quiz_id(), "live", 5);
    for q in big["questions"].as_array_mut().unwrap() {
        q["text"] = json!("x".repeat(900));
    }
    let big = big.to_string();
    let (s, v) = http(a, "POST", "/v1/quizzes", &admin, Some(big.as_bytes())).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_quiz_bytes"),
        "{v}"
    );
    // 12 concurrent joins into a quiz capped at 5: exactly 5 get in.
    let joins: Vec<_> = (0..12)
        .map(|i| {
            let id = id.clone();
            tokio::spawn(async move {
                post(
                    a,
                    &format!("/v1/quizzes/{id}/players"),
                    &json!({"nickname": format!("crowd{i}")}),
                )
                .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for j in joins {
        let (s, v) = j.await.unwrap();
        if s == 409 {
            assert_eq!(v["error"]["code"], "quiz_full", "{v}");
        }
        statuses.push(s);
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [201, 201, 201, 201, 201, 409, 409, 409, 409, 409, 409, 409]
    );
    let lb = leaderboard(a, &id).await;
    assert_eq!(lb["total_players"], 5);
    n.stop().await;
}

/// The count of store leaderboard reads in `/metrics`.
async fn store_leaderboard_reads(addr: SocketAddr) -> u64 {
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
        .filter(|l| l.starts_with("quiz_store_seconds_count{") && l.contains("op=\"leaderboard\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `GET …/leaderboard` is public: the store is read at most once per quiz
/// and limit per `leaderboard_interval_ms`, however many ask; a change
/// shows up by the next tick.
async fn leaderboard_route_reads_the_store_once_per_tick(f: Factory) {
    let n = f
        .start_with(Config {
            leaderboard_interval_ms: 2000,
            ..f.config()
        })
        .await;
    let a = n.addr;
    let (id, _) = create(a, "live", 1).await;
    join(a, &id, "one").await;
    let before = store_leaderboard_reads(a).await;
    let path = format!("/v1/quizzes/{id}/leaderboard");
    for _ in 0..30 {
        let (s, v) = http(a, "GET", &path, &[], None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["total_players"], 1);
    }
    let reads = store_leaderboard_reads(a).await - before;
    // One per 2 s tick: 30 requests on loopback span one or two ticks.
    assert!(reads <= 3, "{reads} store reads for 30 requests");
    join(a, &id, "two").await;
    testkit::eventually(
        "the new player on the cached board",
        Duration::from_secs(10),
        || async {
            let (_, v) = http(a, "GET", &path, &[], None).await;
            (v["total_players"] == 2).then_some(())
        },
    )
    .await;
    n.stop().await;
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Factory::new(super::Kind::Embedded).await).await
                }
            )*
        }
        mod distributed {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Factory::new(super::Kind::Distributed).await).await
                }
            )*
        }
    };
}

contract!(
    http_api,
    live_game,
    question_closes_by_time,
    self_paced,
    self_paced_expiry_presents_the_next_question,
    ws_errors,
    refused_tokens_get_a_marked_101_then_4001,
    shutdown_closes_with_1001,
    drain_then_close_with_1001,
    tiers,
    idempotent_join,
    resent_answer_is_a_duplicate,
    websockets_count_against_max_connections,
    newer_connection_replaces_older,
    server_pings_and_closes_idle_connections,
    control_frames_are_rate_limited,
    crowd_limits,
    leaderboard_route_reads_the_store_once_per_tick,
);

/// Tokens expire with their quiz's retention (`redis_retention_live_s +
/// redis_retention_ended_s` after the join or the creation): then the
/// WebSocket closes with 4001 and host actions answer 401. (Embedded: the
/// memory store keeps the quiz, so only the token's expiry is at play.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_tokens_expire_with_the_quiz_retention() {
    let f = Factory::new(Kind::Embedded).await;
    let n = f
        .start_with(Config {
            redis_retention_live_s: 1,
            redis_retention_ended_s: 1,
            ..f.config()
        })
        .await;
    let (id, host_token) = create(n.addr, "live", 1).await;
    let (_, token) = join(n.addr, &id, "brief").await;
    let mut w = ws(n.addr, &id, &token).await;
    expect(&mut w, "welcome").await;
    drop(w);
    // Past the 2 s lifetime (whole seconds: at most 3 s).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let mut w = ws(n.addr, &id, &token).await;
    assert_eq!(expect_close(&mut w).await, 4001);
    let (s, v) = host(n.addr, &id, "start", &host_token).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
    n.stop().await;
}

/// The schema check has teeth: live values, deliberately broken, fail it
/// (a response, a server message, an event-log record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broken_live_values_fail_the_schema_check() {
    let f = Factory::new(Kind::Embedded).await;
    let n = f.start().await;
    let c = testkit::api::contract();
    let (id, _) = create(n.addr, "live", 1).await;
    let path = format!("/v1/quizzes/{id}");
    let (s, v) = http(n.addr, "GET", &path, &[], None).await;
    assert_eq!(s, 200, "{v}");
    let mut broken = v.clone();
    broken.as_object_mut().unwrap().remove("state");
    assert!(c
        .check_http("GET", &path, 200, &broken.to_string())
        .is_err());
    broken = v.clone();
    broken["mode"] = json!("self-paced");
    assert!(c
        .check_http("GET", &path, 200, &broken.to_string())
        .is_err());
    let (_, token) = join(n.addr, &id, "ann").await;
    let mut w = ws(n.addr, &id, &token).await;
    let mut welcome = expect(&mut w, "welcome").await;
    welcome["score"] = json!(-1);
    assert!(c.check_ws_server(&welcome).is_err());
    let log = std::fs::read_to_string(f.dir.join("events.jsonl")).unwrap();
    let mut created: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    c.check_event(&created).unwrap();
    created.as_object_mut().unwrap().remove("event_id");
    assert!(c.check_event(&created).is_err());
    n.stop().await;
}

// ------------------------------------------------------------- two nodes

/// Two core instances on the same Redis Cluster and Kafka share one quiz:
/// players split across them both see the question, answers count once
/// (also after reconnecting to the other node), leaderboards agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_two_nodes_share_a_quiz() {
    let f = Factory::new(Kind::Distributed).await;
    let n1 = f.start().await;
    let n2 = f.start().await;
    let (id, host_token) = create(n1.addr, "live", 2).await;
    let (pa, ta) = join(n1.addr, &id, "ann").await;
    let (pb, tb) = join(n2.addr, &id, "ben").await;
    let mut wa = ws(n1.addr, &id, &ta).await;
    let mut wb = ws(n2.addr, &id, &tb).await;
    expect(&mut wa, "welcome").await;
    expect(&mut wb, "welcome").await;
    // The host starts on node 1; node 2's player sees it via the bus.
    let (s, _) = host(n1.addr, &id, "start", &host_token).await;
    assert_eq!(s, 200);
    assert_eq!(expect(&mut wa, "question").await["question"]["id"], 0);
    assert_eq!(expect(&mut wb, "question").await["question"]["id"], 0);
    let ra = answer(&mut wa, 0, &[1]).await;
    assert_eq!(ra["accepted"], true, "{ra}");
    let rb = answer(&mut wb, 0, &[0]).await;
    assert_eq!(rb["accepted"], true, "{rb}");
    // ann reconnects to node 2: duplicate there too, score kept.
    drop(wa);
    let mut wa2 = ws(n2.addr, &id, &ta).await;
    let w = expect(&mut wa2, "welcome").await;
    assert_eq!(w["score"], ra["score"]);
    let r = answer(&mut wa2, 0, &[1]).await;
    assert_eq!(r["reason"], "duplicate");
    // Both nodes agree on the leaderboard.
    let (_, l1) = http(
        n1.addr,
        "GET",
        &format!("/v1/quizzes/{id}/leaderboard"),
        &[],
        None,
    )
    .await;
    let (_, l2) = http(
        n2.addr,
        "GET",
        &format!("/v1/quizzes/{id}/leaderboard"),
        &[],
        None,
    )
    .await;
    assert_eq!(l1, l2);
    assert_eq!(l1["top"][0]["player_id"], pa.as_str());
    assert_eq!(l1["top"][1]["player_id"], pb.as_str());
    assert_eq!(l1["top"][0]["score"], ra["score"]);
    // Node 2's members see the leaderboard broadcast with ann's score.
    loop {
        let lb = expect(&mut wb, "leaderboard").await;
        if lb["top"][0]["score"] == ra["score"] {
            break;
        }
    }
    // Question close and end reach node 2 too; distribution counts both.
    host(n1.addr, &id, "next", &host_token).await;
    let c = expect(&mut wb, "question_closed").await;
    assert_eq!(c["distribution"], json!([1, 1, 0]));
    host(n1.addr, &id, "end", &host_token).await;
    expect(&mut wb, "quiz_ended").await;
    expect(&mut wa2, "quiz_ended").await;
    n1.stop().await;
    n2.stop().await;
    // The durable record: every state change is an event on the topic,
    // each answer once by id (the duplicate re-published the same id).
    let want: Vec<String> = vec![
        format!("{id}:created"),
        format!("{id}:joined:{pa}"),
        format!("{id}:joined:{pb}"),
        format!("{id}:started"),
        format!("{id}:question:0"),
        format!("{id}:question:1"),
        format!("{id}:answer:{pa}:0"),
        format!("{id}:answer:{pb}:0"),
        format!("{id}:ended"),
    ];
    let events = consume_quiz_events(&f.topic, &id, &want).await;
    let answers: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "answer_scored")
        .collect();
    let mut ids: Vec<&str> = answers
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2, "{answers:?}");
    let a0 = answers
        .iter()
        .find(|e| e["player_id"] == pa.as_str())
        .unwrap();
    assert_eq!(a0["points"], ra["points"]);
    assert_eq!(a0["score_after"], ra["score"]);
    assert_eq!(a0["correct"], true);
    assert_eq!(a0["choices"], json!([1]));
}

/// A quiz created with a size hint is spread: its tokens are v3 and carry
/// the spread (edge-lb reads it), and every node runs its room: players on
/// three nodes see the same question, the same boards (stamped on the
/// shared wall-clock tick) and exact ranks. A hint out of range is a 400
/// naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_spread_quiz_runs_on_every_node() {
    let f = Factory::new(Kind::Distributed).await;
    let nodes = [f.start().await, f.start().await, f.start().await];
    let id = testkit::unique_quiz_id();
    let mut body = quiz_body(&id, "live", 2);
    for bad in [json!(0), json!(10_000_001)] {
        body["expected_players"] = bad;
        let (s, v) = post(nodes[0].addr, "/v1/quizzes", &body).await;
        assert_eq!(s, 400, "{v}");
        assert!(v.to_string().contains("expected_players"), "{v}");
    }
    // 15 000 players at the default 5 000 per node: three nodes.
    body["expected_players"] = json!(15_000);
    let (s, v) = post(nodes[0].addr, "/v1/quizzes", &body).await;
    assert_eq!(s, 201, "{v}");
    let host_token = v["host_token"].as_str().unwrap().to_string();
    assert!(
        host_token.starts_with(&format!("v3.h.{id}..")),
        "{host_token}"
    );
    let mut players = Vec::new();
    let mut sockets = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let (pid, token) = join(n.addr, &id, &format!("p{i}")).await;
        let spread = token.rsplit('.').nth(1);
        assert_eq!(spread, Some("3"), "{token}");
        let mut w = ws(n.addr, &id, &token).await;
        expect(&mut w, "welcome").await;
        players.push(pid);
        sockets.push(w);
    }
    let (s, _) = host(nodes[0].addr, &id, "start", &host_token).await;
    assert_eq!(s, 200);
    for w in &mut sockets {
        assert_eq!(expect(w, "question").await["question"]["id"], 0);
    }
    // p0 right (1000 points at once), p1 right later, p2 wrong: ranks 1, 2, 3
    // although each node applied one answer.
    let r0 = answer(&mut sockets[0], 0, &[1]).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r1 = answer(&mut sockets[1], 0, &[1]).await;
    let r2 = answer(&mut sockets[2], 0, &[0]).await;
    let all_acknowledged_ms = quiz_core::model::now_ms();
    assert_eq!(
        (r0["rank"].as_u64(), r1["rank"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(r2["rank"], 3, "{r2}");
    // Every node's board reaches the final version with the same content,
    // stamped on a shared 500 ms tick. A board showing the final top is not
    // necessarily final: one read between p1's answer and p2's already shows
    // it (p2's wrong answer leaves its 0), one version short. Final is such a
    // board of a tick after the last acknowledgement (its read came after),
    // or, as boards are only sent when their version moves, the last such
    // board when no other follows for a few ticks.
    let looks_final = |lb: &Value| {
        lb["top"].as_array().map(Vec::len) == Some(3)
            && lb["top"][2]["score"] == 0
            && lb["top"][1]["score"] == r1["score"]
    };
    let mut finals = Vec::new();
    for w in &mut sockets {
        let mut candidate = None;
        let lb = loop {
            match tokio::time::timeout(Duration::from_secs(3), expect(w, "leaderboard")).await {
                Ok(lb) if looks_final(&lb) => {
                    if lb["ts_ms"]
                        .as_u64()
                        .is_some_and(|t| t > all_acknowledged_ms)
                    {
                        break lb;
                    }
                    candidate = Some(lb);
                }
                Ok(_) => {}
                Err(_) => {
                    break candidate
                        .take()
                        .expect("a final board within 3 s of the last")
                }
            }
        };
        assert_eq!(lb["ts_ms"].as_u64().unwrap() % 500, 0, "{lb}");
        finals.push((
            lb["version"].clone(),
            lb["total_players"].clone(),
            lb["top"].clone(),
        ));
    }
    assert!(finals.windows(2).all(|w| w[0] == w[1]), "{finals:?}");
    assert_eq!(finals[0].2[0]["player_id"], players[0].as_str());
    host(nodes[0].addr, &id, "end", &host_token).await;
    for w in &mut sockets {
        expect(w, "quiz_ended").await;
    }
    for n in nodes {
        n.stop().await;
    }
}

/// Admission control of joins (`admission.rs`): with one place and no
/// queue, joins arriving together are partly refused with 503
/// `unavailable` and a `Retry-After` of 1–3 s, and a refused join wrote
/// nothing: the board counts exactly the admitted ones, and each refused
/// player's retry (same nickname) is an ordinary join. Distributed: a join
/// there holds its place for a store round trip and a Kafka delivery, so
/// 40 joins sent together overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_joins_past_admission_are_refused_before_any_write() {
    let f = Factory::new(Kind::Distributed).await;
    let n = f
        .start_with(Config {
            join_max_in_flight: 1,
            join_queue_ms: 0,
            ..f.config()
        })
        .await;
    let (id, _) = create(n.addr, "live", 1).await;
    let path = format!("/v1/quizzes/{id}/players");
    let attempts = (0..40).map(|i| {
        let path = path.clone();
        async move {
            let body = json!({"nickname": format!("n{i}")}).to_string();
            let (s, h, v) = http_full(
                n.addr,
                "POST",
                &path,
                &[("Content-Type", "application/json")],
                Some(body.as_bytes()),
            )
            .await;
            (i, s, h, v)
        }
    });
    let results = futures::future::join_all(attempts).await;
    let mut admitted = 0;
    let mut refused = Vec::new();
    for (i, s, h, v) in results {
        match s {
            201 => admitted += 1,
            503 => {
                assert_eq!(v["error"]["code"], "unavailable", "{v}");
                let after: u64 = h
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("retry-after")
                            .then(|| v.trim().parse().ok())?
                    })
                    .expect("Retry-After");
                assert!((1..=3).contains(&after), "{after}");
                refused.push(i);
            }
            _ => panic!("join {i}: {s} {v}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "40 joins at once through one place: none refused"
    );
    assert_eq!(leaderboard(n.addr, &id).await["total_players"], admitted);
    for i in &refused {
        join(n.addr, &id, &format!("n{i}")).await;
    }
    assert_eq!(leaderboard(n.addr, &id).await["total_players"], 40);
    n.stop().await;
}

/// The sum of the `/metrics` series named `name` whose labels contain
/// `label` (e.g. `code="4009"`; "" for every series of the name).
async fn metric_sum(addr: SocketAddr, name: &str, label: &str) -> i64 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
        .await
        .expect("metrics within 10 s")
        .unwrap();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum()
}

/// One WebSocket upgrade request over a raw connection: the status and
/// head of the response, and the connection (left open: a 101 keeps the
/// socket, whose welcome is never read here).
async fn raw_upgrade(addr: SocketAddr, quiz: &str, token: &str) -> (u16, String, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /v1/quizzes/{quiz}/ws?token={token} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
         Connection: upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        fastwebsockets::handshake::generate_key()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // The head byte by byte: nothing past it is consumed.
    let mut head = Vec::new();
    let read_head = async {
        while !head.ends_with(b"\r\n\r\n") {
            let b = s.read_u8().await.expect("a response head");
            head.push(b);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_head)
        .await
        .expect("a response head within 20 s");
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (status, head, s)
}

/// Admission control of WebSocket upgrades (`admission.rs`): with one
/// place and no queue, upgrades arriving together are partly refused with
/// 503 `unavailable` and a `Retry-After` of 1–3 s before the 101, and a
/// refused upgrade registered nothing: the open-connection gauge counts
/// exactly the admitted ones, and each refused player's retry connects
/// without replacing a ghost of itself (no 4009 anywhere). Distributed:
/// an upgrade's setup holds its place for several store round trips, so
/// 40 upgrades sent together overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_upgrades_past_admission_are_refused_before_any_registration() {
    let f = Factory::new(Kind::Distributed).await;
    let n = f
        .start_with(Config {
            upgrade_max_in_flight: 1,
            upgrade_queue_ms: 0,
            ..f.config()
        })
        .await;
    let (id, _) = create(n.addr, "live", 1).await;
    let mut tokens = Vec::new();
    for i in 0..40 {
        tokens.push(join(n.addr, &id, &format!("u{i}")).await.1);
    }
    let attempts = tokens.iter().enumerate().map(|(i, t)| {
        let id = id.clone();
        async move {
            let (s, head, sock) = raw_upgrade(n.addr, &id, t).await;
            (i, s, head, sock)
        }
    });
    let results = futures::future::join_all(attempts).await;
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for (i, s, head, sock) in results {
        match s {
            101 => admitted.push(sock),
            503 => {
                let after: u64 = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("retry-after")
                            .then(|| v.trim().parse().ok())?
                    })
                    .expect("Retry-After");
                assert!((1..=3).contains(&after), "{after}");
                refused.push(i);
            }
            _ => panic!("upgrade {i}: {s} {head}"),
        }
    }
    eprintln!(
        "40 upgrades at once: {} admitted, {} refused",
        admitted.len(),
        refused.len()
    );
    assert!(
        !refused.is_empty(),
        "40 upgrades at once through one place: none refused"
    );
    let refusals = metric_sum(n.addr, "quiz_admission_refused_total", "what=\"upgrade\"").await;
    assert_eq!(refusals, refused.len() as i64);
    // The refused ones never became connections: the gauge settles at the
    // admitted count (their setups finish in the background).
    let want = admitted.len() as i64;
    testkit::eventually(
        "the admitted upgrades counted as connections",
        Duration::from_secs(10),
        || async { (metric_sum(n.addr, "quiz_ws_connections", "").await == want).then_some(()) },
    )
    .await;
    // Each refused player retries, as a client would after the hint (here
    // at once, and again on a 503: the previous retry's setup may still
    // hold the one place): an ordinary connect with a welcome, replacing
    // nobody.
    let mut retried = Vec::new();
    for i in &refused {
        let mut tries = 0;
        let sock = loop {
            let (s, head, sock) = raw_upgrade(n.addr, &id, &tokens[*i]).await;
            match s {
                101 => break sock,
                503 if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => panic!("retry of {i}: {s} {head}"),
            }
        };
        let mut w = WebSocket::after_handshake(sock, fastwebsockets::Role::Client);
        let welcome = async {
            loop {
                let frame = w.read_frame().await.expect("a frame");
                if frame.opcode == OpCode::Text {
                    let v: Value = serde_json::from_slice(&frame.payload).unwrap();
                    if v["type"] == "welcome" {
                        return v;
                    }
                }
            }
        };
        let welcome = tokio::time::timeout(Duration::from_secs(15), welcome)
            .await
            .expect("a welcome within 15 s");
        assert_eq!(welcome["role"], "player");
        retried.push(w);
    }
    assert_eq!(
        metric_sum(n.addr, "quiz_ws_connections", "").await,
        40,
        "every player connected once"
    );
    assert_eq!(
        metric_sum(n.addr, "quiz_ws_closes_total", "code=\"4009\"").await,
        0,
        "a retry replaced a refused upgrade's ghost"
    );
    drop(admitted);
    drop(retried);
    n.stop().await;
}

/// Reads `topic` from the start until every id of `want` for `quiz` was seen.
async fn consume_quiz_events(topic: &str, quiz: &str, want: &[String]) -> Vec<Value> {
    let want: Vec<(String, usize)> = want.iter().map(|id| (id.clone(), 1)).collect();
    consume_quiz_events_n(topic, quiz, &want).await
}

/// Reads `topic` from the start until each id of `want` for `quiz` was seen
/// at least its number of times; returns `quiz`'s events read. Every
/// message is keyed by its own quiz id.
async fn consume_quiz_events_n(topic: &str, quiz: &str, want: &[(String, usize)]) -> Vec<Value> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    let kafka = testkit::require_kafka().await;
    let consumer: StreamConsumer = kafka
        .config()
        .set("group.id", testkit::unique_name("contract"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let have = |(id, n): &&(String, usize)| {
            seen.iter()
                .filter(|e: &&Value| e["event_id"] == id.as_str())
                .count()
                >= *n
        };
        if want.iter().all(|w| have(&w)) {
            return seen;
        }
        let missing: Vec<&(String, usize)> = want.iter().filter(|w| !have(w)).collect();
        let msg = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("events missing from {topic}: {missing:?}"))
            .unwrap();
        let v: Value = serde_json::from_slice(msg.payload().unwrap_or_default()).unwrap();
        testkit::api::check_event(&v);
        assert_eq!(msg.key(), v["quiz_id"].as_str().map(str::as_bytes), "{v}");
        if v["quiz_id"] == quiz {
            seen.push(v);
        }
    }
}
