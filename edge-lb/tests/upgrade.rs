//! Graceful binary upgrade with the real binary, per pingora's procedure (docs/edge-lb.md,
//! Operations): a second `edge-lb -u` takes the listening sockets over through `upgrade_sock`
//! when the old process gets `SIGQUIT`. Shows that
//! - no new connection is refused or fails at any point of the handover (a prober opens a
//!   WebSocket every 25 ms throughout),
//! - tunnels established on the old process keep echoing while both processes accept
//!   (pingora's 5 s after sending the sockets); once the old one stops accepting it closes
//!   them with 1012 within its `grace_period_seconds`, and their clients reconnect to the
//!   new process,
//! - once the old process has stopped accepting, new connections are served by the new
//!   process (checked by which process owns the proxy-side socket, from /proc) and survive
//!   the old process's exit.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{backends, free_port, named};
use edge_lb_testing::{ws_connect, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn spawn_edge(conf: &Path, log: &Path, upgrade: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-lb"));
    cmd.arg("-c").arg(conf);
    if upgrade {
        cmd.arg("-u");
    }
    // edge-lb logs (tracing's fmt subscriber) to stdout.
    let log = std::fs::File::create(log).unwrap();
    let err = log.try_clone().unwrap();
    cmd.env("RUST_LOG", "info")
        .stdout(log)
        .stderr(err)
        .spawn()
        .unwrap()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// SIGKILLs the edge-lb processes this test started if it panics, so a failed run leaves no
/// process behind (the normal path stops them with [`stop`]).
struct KillOnPanic(Vec<u32>);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for pid in &self.0 {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}

/// Stop a child we started: SIGINT (pingora's fast shutdown), SIGKILL if it lingers.
fn stop(child: &mut Child) {
    if child.try_wait().unwrap().is_none() {
        signal(child.id(), "INT");
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `/proc/net/tcp` renders 127.0.0.1:port as `0100007F:PORT` (address little-endian).
fn hex_addr(a: SocketAddr) -> String {
    let SocketAddr::V4(v4) = a else {
        panic!("loopback v4 only")
    };
    let o = v4.ip().octets();
    format!(
        "{:02X}{:02X}{:02X}{:02X}:{:04X}",
        o[3],
        o[2],
        o[1],
        o[0],
        v4.port()
    )
}

/// Which of `pids` holds the proxy side of the client connection `client` → `proxy`.
fn serving_pid(proxy: SocketAddr, client: SocketAddr, pids: &[u32]) -> Option<u32> {
    let (want_local, want_remote) = (hex_addr(proxy), hex_addr(client));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 9 && f[1] == want_local && f[2] == want_remote).then(|| f[9].to_string())
    })?;
    let link = format!("socket:[{inode}]");
    pids.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|d| {
            d.flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == link))
        })
    })
}

/// One probe: a WebSocket upgrade through the proxy, answered 101 with the backend's greeting.
/// With `pids`, returns which of them served it (looked up while the connection is open, on a
/// blocking thread: /proc/net/tcp can be large).
async fn probe(proxy: SocketAddr, q: usize, pids: &[u32]) -> Result<Option<u32>, String> {
    let mut s = TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let req = format!(
        "GET /v1/quizzes/p{q}/ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(512);
    let read = async {
        // The head and the greeting frame ("node=…").
        while !(buf.starts_with(b"HTTP/1.1 101") && buf.windows(5).any(|w| w == b"node=")) {
            if buf.len() > 4096 || s.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .map_err(|_| "no answer within 3 s".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    if !(buf.starts_with(b"HTTP/1.1 101") && buf.windows(5).any(|w| w == b"node=")) {
        return Err(format!("answer: {}", String::from_utf8_lossy(&buf)));
    }
    if pids.is_empty() {
        return Ok(None);
    }
    let pids = pids.to_vec();
    let owner = tokio::task::spawn_blocking(move || serving_pid(proxy, local, &pids))
        .await
        .map_err(|e| e.to_string())?;
    drop(s);
    Ok(owner)
}

async fn echo(c: &mut Client, text: &str) -> Result<(), String> {
    tokio::time::timeout(Duration::from_secs(2), async {
        c.send_text(text).await?;
        let got = c.recv_text().await?;
        if got == text {
            Ok(())
        } else {
            Err(format!("echo mismatch: {got}"))
        }
    })
    .await
    .map_err(|_| "echo timeout".to_string())?
}

async fn open_tunnels(proxy: SocketAddr, n: usize, tag: &str) -> Vec<Client> {
    let mut v = Vec::new();
    for i in 0..n {
        let mut c = ws_connect(proxy, &format!("/v1/quizzes/{tag}{i}/ws"))
            .await
            .unwrap();
        c.node().await.unwrap();
        v.push(c);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_keeps_old_tunnels_and_refuses_no_connection() {
    // The backends get a runtime and thread of their own: the prober's /proc lookups block
    // (a large /proc/net/tcp takes tens of ms to read) and must not starve their health checks.
    let (addrs_tx, addrs_rx) = tokio::sync::oneshot::channel();
    let (stop_backends, backends_stop) = tokio::sync::oneshot::channel::<()>();
    let backend_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let bs = backends(2).await;
            let _ = addrs_tx.send(named(&bs));
            let _ = backends_stop.await;
        });
    });
    let backend_addrs = addrs_rx.await.unwrap();
    let dir = std::env::temp_dir().join(format!(
        "edge-lb-upgrade-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sock = dir.join("upgrade.sock");
    let mut backends_yaml = String::new();
    for (name, addr) in &backend_addrs {
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
grace_period_seconds: 2
graceful_shutdown_timeout_seconds: 1
edge_lb:
  listen: [\"{proxy}\"]
  admin_listen: \"{admin}\"
  pools:
    - name: core
      backends:
{backends_yaml}  health: {{interval: 100ms, timeout: 300ms, success_threshold: 2, failure_threshold: 2, hold_down: 1s}}
",
            pid = dir.join("edge.pid").display(),
            sock = sock.display(),
        ),
    )
    .unwrap();

    let (old_log, new_log) = (dir.join("old.log"), dir.join("new.log"));
    let mut old = spawn_edge(&conf, &old_log, false);
    let old_pid = old.id();
    let mut reaper = KillOnPanic(vec![old_pid]);
    let t = Instant::now();
    while probe(proxy, 0, &[]).await.is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "old edge-lb did not serve"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut pre = open_tunnels(proxy, 20, "pre").await;
    for (i, c) in pre.iter_mut().enumerate() {
        echo(c, &format!("pre-{i}")).await.unwrap();
    }

    // The prober: a fresh WebSocket every 25 ms through the whole handover (bounded).
    let stop_probing = Arc::new(AtomicBool::new(false));
    let pids = Arc::new(parking_lot::Mutex::new(vec![old_pid]));
    let prober = {
        let (stop_probing, pids) = (stop_probing.clone(), pids.clone());
        tokio::spawn(async move {
            let mut results = Vec::new();
            let start = Instant::now();
            for q in 0..2000 {
                if stop_probing.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(40)
                {
                    break;
                }
                // Every 4th probe also finds out which process served it.
                let known = if q % 4 == 0 {
                    pids.lock().clone()
                } else {
                    Vec::new()
                };
                results.push((Instant::now(), probe(proxy, q, &known).await));
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            results
        })
    };

    // The new process waits on `upgrade_sock` for the old one's listeners (pingora retries
    // for 5 s), so it is started first and the old one is told to hand over once it listens.
    let mut new = spawn_edge(&conf, &new_log, true);
    let new_pid = new.id();
    reaper.0.push(new_pid);
    pids.lock().push(new_pid);
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "new edge-lb never opened {sock:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let quit_at = Instant::now();
    signal(old_pid, "QUIT");

    // The old process keeps accepting for pingora's 5 s, then stops (shutdown broadcast) and
    // keeps its connections for the grace period. Its tunnels must echo all along.
    let stopped_accepting = async {
        let mut round = 0;
        loop {
            if std::fs::read_to_string(&old_log)
                .is_ok_and(|s| s.contains("Graceful shutdown started"))
            {
                return Instant::now();
            }
            assert!(
                quit_at.elapsed() < Duration::from_secs(15),
                "old edge-lb never began its shutdown"
            );
            for (i, c) in pre.iter_mut().enumerate() {
                echo(c, &format!("pre-{i}-{round}"))
                    .await
                    .unwrap_or_else(|e| panic!("old tunnel {i} broke during the handover: {e}"));
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    assert!(
        stopped_accepting.duration_since(quit_at) >= Duration::from_secs(4),
        "old process stopped accepting early"
    );

    // In the grace period: the old process no longer accepts, so new tunnels are the new
    // process's; the old tunnels still echo.
    let mut post = Vec::new();
    for i in 0..5 {
        let mut c = ws_connect(proxy, &format!("/v1/quizzes/post{i}/ws"))
            .await
            .unwrap();
        c.node().await.unwrap();
        post.push(c);
    }
    assert_eq!(
        probe(proxy, 9999, &[old_pid, new_pid]).await.unwrap(),
        Some(new_pid),
        "a connection accepted after the old process stopped accepting went to the old one"
    );
    assert!(
        old.try_wait().unwrap().is_none(),
        "old process gone before its grace period"
    );
    // Once it stopped accepting, the old process closes its tunnels with 1012 (service
    // restart), spread over its grace period, before it exits; the clients reconnect and land
    // on the new process.
    // (The 1012 is only appended at a frame boundary of the backend's stream; a tunnel closed
    // mid-frame, or by the runtime's end, gets a bare TCP close. Seen once in CI on a loaded
    // machine: one tunnel of 20 with a bare close. Hence "most", with the outcomes printed.)
    let mut with_1012 = 0;
    let mut outcomes = Vec::new();
    for (i, c) in pre.iter_mut().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(3), c.recv_text()).await;
        match &r {
            Ok(Err(e)) if e == "closed 1012" => with_1012 += 1,
            Ok(Err(_)) => {}
            _ => panic!("old tunnel {i} not closed in the grace period: {r:?}"),
        }
        outcomes.push(format!("{r:?}"));
        let mut again = ws_connect(proxy, &format!("/v1/quizzes/pre{i}/ws"))
            .await
            .unwrap();
        again.node().await.unwrap();
        *c = again;
    }
    assert!(
        with_1012 * 4 >= pre.len() * 3,
        "only {with_1012} of {} old tunnels closed with 1012: {outcomes:?}; old process log:\n{}",
        pre.len(),
        std::fs::read_to_string(&old_log).unwrap_or_default()
    );
    assert!(
        old.try_wait().unwrap().is_none(),
        "old process gone before its grace period ended"
    );
    let reconnected_on_new = probe(proxy, 9998, &[old_pid, new_pid]).await.unwrap();
    assert_eq!(reconnected_on_new, Some(new_pid));

    // The old process exits after grace_period_seconds (+ at most the runtime timeout).
    let t = Instant::now();
    let status = loop {
        if let Some(s) = old.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "old edge-lb did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exited_at = Instant::now();
    let exited_after = exited_at.duration_since(quit_at);
    assert!(status.success(), "old edge-lb exit status {status}");
    assert!(
        stopped_accepting.elapsed() >= Duration::from_millis(1500),
        "old process did not keep its connections for the grace period"
    );
    // The reconnected tunnels are the new process's: they outlive the old one.
    for (i, c) in pre.iter_mut().enumerate() {
        echo(c, &format!("pre-{i}-after"))
            .await
            .unwrap_or_else(|e| panic!("reconnected tunnel {i} broke: {e}"));
    }
    for (i, c) in post.iter_mut().enumerate() {
        echo(c, &format!("post-{i}"))
            .await
            .unwrap_or_else(|e| panic!("tunnel {i} on the new process broke: {e}"));
    }
    let mut late = open_tunnels(proxy, 5, "late").await;
    for (i, c) in late.iter_mut().enumerate() {
        echo(c, &format!("late-{i}")).await.unwrap();
    }

    tokio::time::sleep(Duration::from_millis(600)).await;
    stop_probing.store(true, Ordering::Relaxed);
    let results = prober.await.unwrap();
    let failures: Vec<_> = results
        .iter()
        .filter_map(|(at, r)| r.as_ref().err().map(|e| (at.duration_since(quit_at), e)))
        .collect();
    assert!(
        failures.is_empty(),
        "probes failed during the handover: {failures:?}"
    );
    let by_old = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok(Some(p)) if *p == old_pid))
        .count();
    let by_new = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok(Some(p)) if *p == new_pid))
        .count();
    let late_on_old = results
        .iter()
        .filter(|(at, r)| *at > stopped_accepting && matches!(r, Ok(Some(p)) if *p == old_pid))
        .count();
    eprintln!(
        "handover: {} probes, 0 failed; served by old {by_old}, by new {by_new}; old stopped \
         accepting {:?} and exited {:?} after SIGQUIT",
        results.len(),
        stopped_accepting.duration_since(quit_at),
        exited_after
    );
    // Probes ran through every phase: both processes accepting, the old one in its grace
    // period (not accepting, still alive), the old one gone.
    let phase = |from: Instant, to: Instant| {
        results
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .count()
    };
    let now = Instant::now();
    let phases = [
        phase(quit_at, stopped_accepting),
        phase(stopped_accepting, exited_at),
        phase(exited_at, now),
    ];
    assert!(
        phases.iter().all(|n| *n >= 3),
        "probes per phase: {phases:?}"
    );
    assert!(by_old > 0 && by_new > 0, "old {by_old}, new {by_new}");
    assert_eq!(
        late_on_old, 0,
        "probes served by the old process after it stopped accepting"
    );

    stop(&mut new);
    stop(&mut old);
    let _ = stop_backends.send(());
    let _ = backend_thread.join();
    let _ = std::fs::remove_dir_all(&dir);
}
