//! The per-IP POST limiter keys on the client a trusted proxy names in
//! `X-Forwarded-For`, and on the TCP peer otherwise: a node started on
//! loopback (embedded mode: the limiter needs no store), a tight POST rate,
//! and POSTs whose `X-Forwarded-For` varies. A POST the limiter lets
//! through fails validation (400); one it stops is 429.

use std::net::SocketAddr;
use std::time::Duration;

use quiz_core::config::Config;
use quiz_core::shutdown::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(
    trusted: &[&str],
) -> (
    SocketAddr,
    Shutdown,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let config = Config {
        listen: "127.0.0.1:0".into(),
        node_name: "trusted-proxy-test".into(),
        demo_quiz: false,
        event_log: std::env::temp_dir().join(format!("trusted-proxy-{}.jsonl", std::process::id())),
        http_post_rate_per_sec: 1,
        http_post_burst: 2,
        trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
        shutdown_grace_ms: 1000,
        ..Config::default()
    };
    config.validate().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(quiz_core::run(config, listener, shutdown.clone()));
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (addr, shutdown, task)
}

/// `POST /v1/quizzes` with an empty (invalid) body from `xff`; the status.
async fn post_from(addr: SocketAddr, xff: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/quizzes HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {xff}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn stop(shutdown: Shutdown, task: tokio::task::JoinHandle<anyhow::Result<()>>) {
    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_client() {
    let (addr, sd, task) = start(&["127.0.0.0/8"]).await;
    assert_ne!(post_from(addr, "203.0.113.1").await, 429);
    assert_ne!(post_from(addr, "203.0.113.1").await, 429);
    assert_eq!(post_from(addr, "203.0.113.1").await, 429);
    // Another client behind the same proxy has a bucket of its own.
    assert_ne!(post_from(addr, "203.0.113.2").await, 429);
    // The last entry is the one the proxy wrote.
    assert_eq!(post_from(addr, "198.51.100.9, 203.0.113.1").await, 429);
    stop(sd, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_of_an_untrusted_peer_is_ignored() {
    for trusted in [&[][..], &["10.0.0.0/8"][..]] {
        let (addr, sd, task) = start(trusted).await;
        assert_ne!(post_from(addr, "203.0.113.1").await, 429);
        assert_ne!(post_from(addr, "203.0.113.2").await, 429);
        // Same peer (127.0.0.1), whatever the header claims: its bucket is empty.
        assert_eq!(post_from(addr, "203.0.113.3").await, 429, "{trusted:?}");
        stop(sd, task).await;
    }
}
