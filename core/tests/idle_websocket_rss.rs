//! Memory per idle WebSocket connection, measured on a real `quiz-core`
//! process (embedded mode): RSS after opening N idle connections minus RSS
//! before, divided by N. The goal is ≤ 4 KB of user space per connection;
//! the test prints the measurement and fails above 6 KB (allocator slack
//! makes the number noisy; docs/core.md records measured values).
//! `QUIZ_CORE_BIN=/path/to/quiz-core` measures another build.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const N: usize = 2000;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn request(addr: &str, raw: String) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Opens a WebSocket by hand (no client library: the client's memory is not
/// what we measure, but keep it small anyway) and reads the welcome frame.
async fn open_ws(addr: &str, quiz: &str, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /v1/quizzes/{quiz}/ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // Read the 101 response and the welcome frame (a few hundred bytes).
    let mut buf = vec![0u8; 2048];
    let mut got = 0;
    while got < 4 || !String::from_utf8_lossy(&buf[..got]).contains("welcome") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf[got..]))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before welcome");
        got += n;
    }
    assert!(String::from_utf8_lossy(&buf[..got]).starts_with("HTTP/1.1 101"));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websocket_memory() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(testkit::unique_name("core-mem"));
    std::fs::create_dir_all(&dir).unwrap();
    // The joins below come from one address: lift the per-IP POST limit.
    let config = dir.join("core.toml");
    std::fs::write(
        &config,
        "http_post_rate_per_sec = 100000\nhttp_post_burst = 100000\n",
    )
    .unwrap();
    // QUIZ_CORE_BIN measures another build (e.g. target/release/quiz-core).
    let bin = std::env::var("QUIZ_CORE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_quiz-core").to_string());
    let mut child = Command::new(bin)
        .env_remove("QUIZ_REDIS_NODES")
        .env_remove("QUIZ_KAFKA_BROKERS")
        .env("QUIZ_LISTEN", &addr)
        .env("QUIZ_EVENT_LOG", dir.join("events.jsonl"))
        .env("QUIZ_TOKEN_SECRET", "memory-test-secret-0123")
        .env("QUIZ_DEMO_QUIZ", "false")
        .env("QUIZ_CONFIG", &config)
        .env("RUST_LOG", "warn,quiz_core::http=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("quiz-core exited").unwrap();
        if line.contains("listening") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});

    let body = r#"{"title":"m","mode":"live","quiz_id":"mem","questions":[{"text":"q","options":["a","b"],"correct":[0],"time_limit_ms":5000,"points":1000}]}"#;
    let r = request(
        &addr,
        format!(
            "POST /v1/quizzes HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 201"), "{r}");
    // One player per connection: a player's newer connection replaces the
    // older. Joined before measuring (the players live in the store).
    let mut tokens = Vec::with_capacity(N + 100);
    for i in 0..N + 100 {
        let join = format!(r#"{{"nickname":"m{i}"}}"#);
        let r = request(
            &addr,
            format!(
                "POST /v1/quizzes/mem/players HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{join}",
                join.len()
            ),
        )
        .await;
        let v: serde_json::Value =
            serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        tokens.push(v["player_token"].as_str().unwrap().to_string());
    }

    // Warm up: the first connections create the room, tasks, allocator arenas.
    let mut conns = Vec::with_capacity(N + 100);
    for token in &tokens[..100] {
        conns.push(open_ws(&addr, "mem", token).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = rss_kb(pid);
    for token in &tokens[100..] {
        conns.push(open_ws(&addr, "mem", token).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = rss_kb(pid);
    let per_conn = (after.saturating_sub(before) * 1024) / N as u64;
    println!(
        "idle WebSocket: RSS {before} KiB → {after} KiB for {N} connections: {per_conn} bytes each"
    );
    drop(conns);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    assert!(per_conn <= 6144, "{per_conn} bytes per idle connection");
}
