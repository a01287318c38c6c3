//! Logs and the access log, with the real binary (its stdout is the log) in front of real
//! backends on loopback (docs/edge-lb.md, *Logs*):
//! - `log_format: json` makes every line a JSON object, access records included;
//! - an access record for a proxied request carries its status, quiz, node (name and
//!   address) and body bytes; a tunnel's record appears when it ends, with its frame bytes and
//!   how it ended (client closed, idle, drained, node closed); refusals carry their reason;
//! - sample 1.0 records every success, 0.0 none, while every refusal is recorded at 0.0;
//! - the token in a query string never reaches the log.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{backends, free_port, named};
use edge_lb_testing::{http_get, http_request, ws_connect};
use serde_json::Value;

const SECRET: &str = "v2.p.quiz.player.1999999999.S3CR3T-MAC";

/// One edge-lb process of this test; SIGKILLed on drop if still running (a failed assertion
/// must not leave it behind), stopped with SIGINT by [`EdgeProc::stop`].
struct EdgeProc {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    dir: PathBuf,
}

impl EdgeProc {
    async fn start(bs: &[(String, SocketAddr)], edge_lb_extra: &str) -> EdgeProc {
        let dir = std::env::temp_dir().join(format!(
            "edge-lb-access-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut backends_yaml = String::new();
        for (name, addr) in bs {
            backends_yaml.push_str(&format!("        - {{name: {name}, addr: \"{addr}\"}}\n"));
        }
        let conf = dir.join("edge.yaml");
        std::fs::write(
            &conf,
            format!(
                "version: 1
threads: 1
pid_file: {pid}
upgrade_sock: {sock}
grace_period_seconds: 0
graceful_shutdown_timeout_seconds: 1
edge_lb:
  listen: [\"{proxy}\"]
  admin_listen: \"{admin}\"
  pools:
    - name: core
      backends:
{backends_yaml}  health: {{interval: 100ms, timeout: 300ms, success_threshold: 2, failure_threshold: 2, hold_down: 1s}}
  drain: {{close_rate_per_sec: 1000}}
{edge_lb_extra}",
                pid = dir.join("edge.pid").display(),
                sock = dir.join("upgrade.sock").display(),
            ),
        )
        .unwrap();
        let log = dir.join("edge.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_edge-lb"))
            .arg("-c")
            .arg(&conf)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let e = EdgeProc {
            child,
            proxy,
            admin,
            log,
            dir,
        };
        // A bare connection that sends nothing is not a request: no record.
        let t = Instant::now();
        while tokio::net::TcpStream::connect(proxy).await.is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "edge-lb did not listen"
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        e
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every line, parsed (the test fails on a line that is not a JSON object).
    fn json_lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
                assert!(v.is_object(), "not an object: {l}");
                v
            })
            .collect()
    }

    /// Access records so far.
    fn access(&self) -> Vec<Value> {
        self.json_lines()
            .into_iter()
            .filter(|v| v["target"] == "edge_lb::access")
            .collect()
    }

    /// Wait (bounded) for the access record for which `pick` says yes.
    async fn record(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            if let Some(v) = self.access().into_iter().find(&pick) {
                return v;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no access record for {what}; log:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    async fn admin_post(&self, path: &str) {
        let (status, _, body) = http_request(
            self.admin,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{path}: {body}");
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let t = Instant::now();
        while self.child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for EdgeProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn addr_of(bs: &[(String, SocketAddr)], node: &str) -> String {
    bs.iter()
        .find(|(n, _)| n == node)
        .map(|(_, a)| a.to_string())
        .unwrap_or_else(|| panic!("no backend {node}"))
}

fn assert_no_secret(e: &EdgeProc) {
    let text = e.text();
    assert!(
        !text.contains("S3CR3T") && !text.contains("token="),
        "a token reached the log:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_records_for_requests_tunnels_and_refusals() {
    let bs = backends(2).await;
    let named = named(&bs);
    let e = EdgeProc::start(
        &named,
        "  tunnel: {idle_timeout: 1500ms, close_linger: 1s}
  limits: {per_client: {max_connections: 0, connections_per_sec: 0, requests_per_sec: 0}}
  log_format: json
  access_log: {enabled: true, sample: 1.0}
",
    )
    .await;

    // A proxied request with a body: status, quiz, node and its address, body bytes both ways.
    let body = "0123456789abcdef";
    let (status, _, answer) = http_request(
        e.proxy,
        &format!(
            "POST /v1/quizzes/acc-http/answers?token={SECRET} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    let node = serde_json::from_str::<Value>(&answer).unwrap()["node"]
        .as_str()
        .unwrap()
        .to_string();
    let r = e
        .record("the POST", |v| v["path"] == "/v1/quizzes/acc-http/answers")
        .await;
    assert_eq!(r["kind"], "http", "{r}");
    assert_eq!(r["method"], "POST", "{r}");
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["quiz"], "acc-http", "{r}");
    assert_eq!(r["node"], node.as_str(), "{r}");
    assert_eq!(r["node_addr"], addr_of(&named, &node).as_str(), "{r}");
    assert_eq!(r["bytes_received"], body.len() as u64, "{r}");
    assert_eq!(r["bytes_sent"], answer.len() as u64, "{r}");
    assert_eq!(r["end"], "done", "{r}");
    assert_eq!(r["reason"], "-", "{r}");
    assert_eq!(r["level"], "INFO", "{r}");
    assert!(
        r["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{r}"
    );
    assert!(r["duration_ms"].as_f64().unwrap() >= 0.0, "{r}");

    // sample 1.0: every success is recorded.
    for i in 0..20 {
        let (s, _, _) = http_get(e.proxy, &format!("/v1/quizzes/all-{i}?token={SECRET}"))
            .await
            .unwrap();
        assert_eq!(s, 200);
    }
    let t = Instant::now();
    loop {
        let n = e
            .access()
            .iter()
            .filter(|v| {
                v["path"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("/v1/quizzes/all-")
            })
            .count();
        if n == 20 {
            break;
        }
        assert!(
            n < 20 && t.elapsed() < Duration::from_secs(5),
            "{n} records of 20"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    // A tunnel the client closes: its record appears at its end, with the frame bytes.
    let mut c = ws_connect(e.proxy, &format!("/v1/quizzes/acc-ws/ws?token={SECRET}"))
        .await
        .unwrap();
    let ws_node = c.node().await.unwrap();
    c.send_text("hello").await.unwrap();
    assert_eq!(c.recv_text().await.unwrap(), "hello");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !e.access().iter().any(|v| v["quiz"] == "acc-ws"),
        "a tunnel's record was written before it ended"
    );
    c.close().await.unwrap();
    let r = e
        .record("the closed tunnel", |v| v["quiz"] == "acc-ws")
        .await;
    drop(c);
    assert_eq!(r["kind"], "ws", "{r}");
    assert_eq!(r["path"], "/v1/quizzes/acc-ws/ws", "{r}");
    assert_eq!(r["status"], 101, "{r}");
    assert_eq!(r["node"], ws_node.as_str(), "{r}");
    assert_eq!(r["node_addr"], addr_of(&named, &ws_node).as_str(), "{r}");
    assert_eq!(r["end"], "client_closed", "{r}");
    // Client → node: the masked text frame (2 + 4 + 5) and the close frame (2 + 4 + 2).
    assert_eq!(r["bytes_received"], 11 + 8, "{r}");
    // Node → client: the greeting (2 + `node=core-N`), the echo (2 + 5), the close answer
    // (2 + 2).
    let greeting = 2 + "node=".len() + ws_node.len();
    assert_eq!(r["bytes_sent"], (greeting + 7 + 4) as u64, "{r}");

    // An idle tunnel: closed by edge-lb after `idle_timeout`, and recorded as such.
    let mut idle = ws_connect(e.proxy, "/v1/quizzes/acc-idle/ws")
        .await
        .unwrap();
    idle.node().await.unwrap();
    let r = e
        .record("the idle tunnel", |v| v["quiz"] == "acc-idle")
        .await;
    assert_eq!(r["end"], "idle", "{r}");
    assert!(r["duration_ms"].as_f64().unwrap() >= 1400.0, "{r}");

    // A refusal of edge-lb's own: a node's /metrics asked from outside.
    let (s, _, _) = http_get(e.proxy, &format!("/metrics?token={SECRET}"))
        .await
        .unwrap();
    assert_eq!(s, 404);
    let r = e
        .record("the /metrics refusal", |v| v["path"] == "/metrics")
        .await;
    assert_eq!(r["status"], 404, "{r}");
    assert_eq!(r["end"], "refused", "{r}");
    assert_eq!(r["reason"], "not_public", "{r}");
    assert_eq!(r["node"], "-", "{r}");

    // A drained node's tunnel: ended by edge-lb, and the record says it was the drain.
    let mut d = ws_connect(e.proxy, "/v1/quizzes/acc-drain/ws")
        .await
        .unwrap();
    let drained = d.node().await.unwrap();
    e.admin_post(&format!("/admin/backends/{drained}/drain"))
        .await;
    let r = e
        .record("the drained tunnel", |v| v["quiz"] == "acc-drain")
        .await;
    assert_eq!(r["end"], "drain", "{r}");
    assert_eq!(r["node"], drained.as_str(), "{r}");
    drop(d);

    // A tunnel whose node goes away (process killed) without a WebSocket close: it vanished
    // (edge-lb closed it with a 1012 and a comeback; always recorded).
    let mut k = ws_connect(e.proxy, "/v1/quizzes/acc-kill/ws")
        .await
        .unwrap();
    let killed = k.node().await.unwrap();
    assert_ne!(killed, drained, "a drained node got a new quiz");
    bs.iter().find(|b| b.name == killed).unwrap().kill();
    let r = e
        .record("the killed node's tunnel", |v| v["quiz"] == "acc-kill")
        .await;
    assert_eq!(r["end"], "node_vanished", "{r}");
    assert_eq!(
        k.recv_text().await,
        Err("closed 1012".to_string()),
        "the client's close"
    );
    drop(k);

    // Every line of the process is JSON (pingora's own lines too), with the logger's fields.
    let lines = e.json_lines();
    assert!(lines.len() > 25, "{} lines", lines.len());
    for v in &lines {
        for f in ["timestamp", "level", "target"] {
            assert!(v.get(f).is_some(), "no {f}: {v}");
        }
    }
    assert_no_secret(&e);
    e.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_zero_records_no_success_but_every_refusal() {
    let bs = backends(1).await;
    let e = EdgeProc::start(
        &named(&bs),
        "  limits: {per_client: {max_connections: 0, connections_per_sec: 0, requests_per_sec: 1, requests_burst: 25}}
  log_format: json
  access_log: {sample: 0.0}
",
    )
    .await;
    let (s, _, _) = http_get(e.proxy, &format!("//readyz/?token={SECRET}"))
        .await
        .unwrap();
    assert_eq!(s, 404);
    // Successes: HTTP and tunnels, none recorded.
    for i in 0..15 {
        let (s, _, _) = http_get(e.proxy, &format!("/v1/quizzes/zero-{i}?token={SECRET}"))
            .await
            .unwrap();
        assert_eq!(s, 200);
    }
    for i in 0..3 {
        let mut c = ws_connect(
            e.proxy,
            &format!("/v1/quizzes/zero-ws-{i}/ws?token={SECRET}"),
        )
        .await
        .unwrap();
        c.node().await.unwrap();
        c.close().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), c.recv_text()).await;
    }
    // Past the burst (25 tokens, 1/s): 429s, every one recorded with its reason.
    let mut limited = 0;
    for i in 0..15 {
        let (s, _, _) = http_get(e.proxy, &format!("/v1/quizzes/over-{i}?token={SECRET}"))
            .await
            .unwrap();
        if s == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 5, "only {limited} requests were limited");
    e.record("the 404", |v| v["status"] == 404).await;
    let t = Instant::now();
    let records = loop {
        let recs = e.access();
        let n = recs.iter().filter(|v| v["status"] == 429).count();
        if n >= limited {
            break recs;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{n} of {limited} 429s recorded"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = if e.access().len() > records.len() {
        e.access()
    } else {
        records
    };
    for r in &records {
        let status = r["status"].as_u64().unwrap();
        assert!(status >= 400, "a success recorded at sample 0.0: {r}");
        assert_eq!(r["end"], "refused", "{r}");
        if status == 429 {
            assert_eq!(r["reason"], "client_request_rate", "{r}");
            assert!(
                r["path"].as_str().unwrap().starts_with("/v1/quizzes/over-"),
                "{r}"
            );
            assert!(r["quiz"].as_str().unwrap().starts_with("over-"), "{r}");
        } else {
            assert_eq!(r["reason"], "not_public", "{r}");
            assert_eq!(r["path"], "//readyz/", "{r}");
        }
    }
    assert_eq!(records.len(), limited + 1, "{records:?}");
    assert_no_secret(&e);
    e.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_format_and_access_log_off() {
    let bs = backends(1).await;
    // The default format (text) still carries the access records, on their own target.
    let e = EdgeProc::start(&named(&bs), "  access_log: {sample: 1.0}\n").await;
    let (s, _, _) = http_get(e.proxy, &format!("/v1/quizzes/txt?token={SECRET}"))
        .await
        .unwrap();
    assert_eq!(s, 200);
    let t = Instant::now();
    let line = loop {
        if let Some(l) = e.text().lines().find(|l| l.contains("edge_lb::access")) {
            break l.to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no access line:\n{}",
            e.text()
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    assert!(serde_json::from_str::<Value>(&line).is_err(), "{line}");
    for want in [
        "status=200",
        "quiz=\"txt\"",
        "path=\"/v1/quizzes/txt\"",
        "end=\"done\"",
    ] {
        assert!(line.contains(want), "{want} not in {line}");
    }
    assert_no_secret(&e);
    e.stop();

    // Off: not even a refusal is recorded.
    let e = EdgeProc::start(
        &named(&bs),
        "  log_format: json\n  access_log: {enabled: false}\n",
    )
    .await;
    let (s, _, _) = http_get(e.proxy, "/metrics").await.unwrap();
    assert_eq!(s, 404);
    let (s, _, _) = http_get(e.proxy, "/v1/quizzes/off").await.unwrap();
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(e.access().is_empty(), "{:?}", e.access());
    e.stop();
}
