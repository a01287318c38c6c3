//! core's `/metrics`, scraped from a real instance on loopback: the process metrics and the
//! build info are there, no series carries the node's name (the scrape labels it), an answer
//! over a real WebSocket moves the acknowledgement histogram of its result, and each HTTP
//! request its route template's histogram (never the raw path).
//!
//! Each scenario runs embedded (memory store, file event log) and distributed (Redis Cluster +
//! Kafka: `deploy/local/stack up`; testkit's `require_*` fail loudly without it).

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

// ------------------------------------------------------------------ a node

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Embedded,
    Distributed,
}

struct Node {
    addr: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(kind: Kind) -> Node {
    let mut c = Config {
        listen: "127.0.0.1:0".into(),
        node_name: testkit::unique_name("metrics-node"),
        token_secret: format!("metrics-secret-{}", testkit::unique_name("s")),
        event_log: std::env::temp_dir()
            .join(testkit::unique_name("core-metrics"))
            .join("events.jsonl"),
        demo_quiz: false,
        shutdown_grace_ms: 3000,
        ..Config::default()
    };
    if kind == Kind::Distributed {
        testkit::require_redis_cluster().await;
        let kafka = testkit::require_kafka().await;
        let topic = testkit::unique_topic("core-metrics");
        kafka.create_topic(&topic, 1).await;
        let s = testkit::Settings::from_env();
        c.redis_nodes = s.redis_nodes;
        c.kafka_brokers = s.kafka_brokers;
        c.kafka_topic = topic;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(quiz_core::run(c, listener, shutdown.clone()));
    testkit::eventually(
        "the node answers /healthz",
        Duration::from_secs(20),
        || async { (http(addr, "GET", "/healthz", None, None).await.0 == 200).then_some(()) },
    )
    .await;
    Node {
        addr,
        shutdown,
        task,
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

// ---------------------------------------------------------- HTTP and /metrics

/// One request per connection (`Authorization: Bearer` when `bearer` is given): status and
/// body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

async fn post(addr: SocketAddr, path: &str, body: &Value) -> Value {
    let (s, b) = http(addr, "POST", path, None, Some(body)).await;
    assert!(s == 200 || s == 201, "POST {path}: {s} {b}");
    serde_json::from_str(&b).unwrap()
}

async fn scrape(addr: SocketAddr) -> String {
    let (s, body) = http(addr, "GET", "/metrics", None, None).await;
    assert_eq!(s, 200, "{body}");
    body
}

/// The value of the series `name` whose labels include every pair of `labels` (summed when
/// several match); `None` when none does.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

// -------------------------------------------------------------- WebSocket

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
    let (ws, resp) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// The next message of type `ty`, skipping others.
async fn expect(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let f = tokio::time::timeout(Duration::from_secs(15), ws.read_frame())
            .await
            .unwrap_or_else(|_| panic!("no {ty} within 15 s"))
            .unwrap();
        match f.opcode {
            OpCode::Text => {
                let v: Value = serde_json::from_slice(&f.payload).unwrap();
                if v["type"] == ty {
                    return v;
                }
            }
            OpCode::Close => panic!("closed while waiting for {ty}"),
            _ => {}
        }
    }
}

async fn answer(ws: &mut Ws, q: u64, choice: u64) -> Value {
    let msg = json!({"type": "answer", "question_id": q, "choices": [choice]});
    ws.write_frame(Frame::text(Payload::Owned(msg.to_string().into_bytes())))
        .await
        .unwrap();
    expect(ws, "answer_result").await
}

// -------------------------------------------------------------- scenarios

const ACK: &str = "quiz_answer_ack_seconds_count";
const HTTP: &str = "quiz_http_request_duration_seconds_count";

/// The process metrics (the capacity limit of a node is its open files), the build info,
/// and no `node` label anywhere.
async fn process_build_info_and_no_node_label(kind: Kind) {
    let n = start(kind).await;
    let text = scrape(n.addr).await;
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(sample(&text, name, &[]).is_some(), "no {name} in:\n{text}");
    }
    let v = |name| sample(&text, name, &[]).unwrap();
    // This test process: its sockets and files are open, under its own limit.
    assert!(v("process_open_fds") >= 3.0, "{}", v("process_open_fds"));
    assert!(v("process_open_fds") < v("process_max_fds"));
    assert!(v("process_resident_memory_bytes") > 1e6);
    assert!(v("process_threads") >= 2.0, "a multi-thread runtime");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = v("process_start_time_seconds");
    assert!(started <= now + 1.0 && started > now - 3600.0, "{started}");
    // Unprefixed, as every exporter names them.
    assert!(!text.contains("quiz_process_"), "{text}");

    let version = env!("CARGO_PKG_VERSION");
    let info = text
        .lines()
        .find(|l| l.starts_with("quiz_core_build_info{"))
        .unwrap_or_else(|| panic!("no quiz_core_build_info in:\n{text}"));
    assert!(info.ends_with(" 1"), "{info}");
    assert!(info.contains(&format!("version=\"{version}\"")), "{info}");
    for label in ["commit", "rustc"] {
        let at = info
            .find(&format!("{label}=\""))
            .unwrap_or_else(|| panic!("no {label}: {info}"));
        let value = info[at + label.len() + 2..].split('"').next().unwrap();
        assert!(!value.is_empty(), "{info}");
    }

    // The node's name is not a label: Prometheus's `instance`/`pod` says which node.
    let labelled: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("node=\""))
        .collect();
    assert!(labelled.is_empty(), "series labelled node: {labelled:?}");
    n.stop().await;
}

/// Answers over a WebSocket: each result's acknowledgement count moves by one; HTTP requests
/// are counted under their route template and status class.
async fn answers_and_routes_are_timed(kind: Kind) {
    let n = start(kind).await;
    let a = n.addr;
    let id = testkit::unique_quiz_id();
    let q = json!({"text": "q", "options": ["a", "b"], "correct": [1],
                   "time_limit_ms": 20000, "points": 1000});
    let created = post(
        a,
        "/v1/quizzes",
        &json!({"title": "Metrics", "mode": "live", "quiz_id": id, "questions": [q]}),
    )
    .await;
    let host_token = created["host_token"].as_str().unwrap().to_string();
    let joined = post(
        a,
        &format!("/v1/quizzes/{id}/players"),
        &json!({"nickname": "ann"}),
    )
    .await;
    let token = joined["player_token"].as_str().unwrap();
    let mut w = ws(a, &id, token).await;
    expect(&mut w, "welcome").await;

    let before = scrape(a).await;
    let count = |text: &str, result| sample(text, ACK, &[("result", result)]).unwrap_or(0.0);
    // Before the question opens: not_open.
    let r = answer(&mut w, 0, 1).await;
    assert_eq!(r["reason"], "not_open", "{r}");
    let start = format!("/v1/quizzes/{id}/start");
    let (s, b) = http(a, "POST", &start, None, None).await;
    assert_eq!(s, 401, "no bearer: {b}");
    let (s, b) = http(a, "POST", &start, Some(&host_token), None).await;
    assert_eq!(s, 200, "{b}");
    expect(&mut w, "question").await;
    let r = answer(&mut w, 0, 1).await;
    assert_eq!(r["accepted"], true, "{r}");
    let r = answer(&mut w, 0, 1).await;
    assert_eq!(r["reason"], "duplicate", "{r}");
    let r = answer(&mut w, 7, 0).await;
    assert_eq!(r["reason"], "invalid", "{r}");
    // A path nobody routes, with the quiz id in it.
    let odd = format!("/v1/quizzes/{id}/nothing/here");
    assert_eq!(http(a, "GET", &odd, None, None).await.0, 404);

    let after = scrape(a).await;
    for result in ["not_open", "accepted", "duplicate", "invalid"] {
        assert_eq!(
            count(&after, result) - count(&before, result),
            1.0,
            "{result}: {before}\n---\n{after}"
        );
    }
    assert_eq!(count(&after, "late"), 0.0);
    // The store's own counters: an ordinary quiz's answers that reach Redis
    // (the accepted one and its duplicate) take the direct lane.
    let lane = |text: &str| sample(text, "quiz_redis_lane_answers_total", &[]);
    if kind == Kind::Distributed {
        let sent = lane(&after).unwrap_or(0.0) - lane(&before).unwrap_or(0.0);
        assert_eq!(sent, 2.0, "{before}\n---\n{after}");
        let closures = sample(&after, "quiz_redis_lane_closures_total", &[]);
        assert_eq!(closures, Some(0.0), "{after}");
    } else {
        assert_eq!(lane(&after), None, "no Redis, no lanes: {after}");
    }
    // The acknowledgement histogram's buckets hold the observations (le="+Inf" = count).
    assert_eq!(
        sample(
            &after,
            "quiz_answer_ack_seconds_bucket",
            &[("result", "accepted"), ("le", "+Inf")]
        ),
        Some(1.0)
    );

    let route = |text: &str, route, class| {
        sample(text, HTTP, &[("route", route), ("class", class)]).unwrap_or(0.0)
    };
    assert_eq!(route(&after, "/v1/quizzes", "2xx"), 1.0);
    assert_eq!(route(&after, "/v1/quizzes/{quiz_id}/players", "2xx"), 1.0);
    assert_eq!(route(&after, "/v1/quizzes/{quiz_id}/start", "4xx"), 1.0);
    assert_eq!(route(&after, "/v1/quizzes/{quiz_id}/start", "2xx"), 1.0);
    assert_eq!(route(&after, "/v1/quizzes/{quiz_id}/ws", "1xx"), 1.0);
    assert!(route(&after, "/healthz", "2xx") >= 1.0);
    // Scrapes are counted once they are answered: the first one is in the second.
    assert!(route(&after, "/metrics", "2xx") >= 1.0);
    assert_eq!(route(&after, "other", "4xx"), 1.0);
    // Route templates only: no id reaches a label.
    assert!(!after.contains(&id), "a quiz id in a label:\n{after}");
    n.stop().await;
}

macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Embedded).await
                }
            )*
        }
        mod distributed {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Distributed).await
                }
            )*
        }
    };
}

both_modes!(
    process_build_info_and_no_node_label,
    answers_and_routes_are_timed
);
