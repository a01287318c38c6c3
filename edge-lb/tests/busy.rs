//! Busy is not dead (docs/edge-lb.md): a core node that answers its health checks late keeps
//! its quizzes and tunnels; a node that is really gone loses them.
//!
//! The busy node is a separate OS process so that it can be frozen with `SIGSTOP`, as a
//! CPU-starved machine freezes it: the kernel still accepts connections into its listen
//! backlog, so edge-lb's probes connect and then time out reading. The process is this test
//! binary itself, started again to run only [`child_backend`] (edge-lb-testing's backend on a
//! given address).

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{admin_json, backends, edge_for, free_port, named, tunnels, Opts};
use edge_lb_testing::{http_get, Backend, Client};

/// Set in the child's environment: the address its backend listens on.
const CHILD_ADDR: &str = "EDGE_LB_BUSY_CHILD_ADDR";
const BUSY: &str = "busy";

/// The child process's body, not a test of its own: serves edge-lb-testing's backend (named
/// `busy`) on `$EDGE_LB_BUSY_CHILD_ADDR` until killed. Does nothing without that variable.
#[test]
#[ignore = "the backend process of the tests below; they start it"]
fn child_backend() {
    let Ok(addr) = std::env::var(CHILD_ADDR) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _b = Backend::start(BUSY, &addr).await.unwrap();
        std::future::pending::<()>().await;
    });
}

/// The backend process. Dropping it (test end or panic) continues and kills it, so no
/// process is left behind, stopped or not.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    async fn start() -> Node {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["child_backend", "--exact", "--ignored", "--test-threads=1"])
            .env(CHILD_ADDR, addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let node = Node { child, addr };
        let t = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "child backend did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.child.id());
    }

    fn stop(&self) {
        self.signal(libc::SIGSTOP);
    }

    fn cont(&self) {
        self.signal(libc::SIGCONT);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SAFETY: as in `signal`; errors (already reaped) are irrelevant here.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The busy node as edge-lb sees it: (health, slow, eligible).
fn state(e: &common::Edge) -> (&'static str, bool, bool) {
    let b = e
        .cluster()
        .backends()
        .into_iter()
        .find(|b| b.name == BUSY)
        .unwrap();
    (b.health, b.slow, b.eligible)
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

/// Tunnels through edge-lb to the busy node (and one in-process node beside it).
async fn setup(o: Opts) -> (Node, Vec<Backend>, common::Edge, Vec<Client>) {
    let node = Node::start().await;
    let others = backends(1).await;
    let mut all = named(&others);
    all.push((BUSY.to_string(), node.addr));
    let e = edge_for(&all, o).await;
    let busy: Vec<Client> = tunnels(e.addr, "busy", 12)
        .await
        .into_iter()
        .filter(|(_, n, _)| n == BUSY)
        .map(|(_, _, c)| c)
        .collect();
    assert!(!busy.is_empty(), "no quiz placed on the busy node");
    (node, others, e, busy)
}

/// (a) Stopped 1.5 s of every 2 s for 10 s (far longer than `failure_threshold` × the
/// 100 ms interval, with a 300 ms timeout): never marked down, shown slow, its tunnels carry
/// messages after each `SIGCONT`. (b) Then killed: marked down within `failure_threshold`
/// checks, its tunnels closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_busy_not_dead_and_a_killed_one_is_lost() {
    let (node, _others, e, mut busy) = setup(Opts::default()).await;
    let (mut seen_slow_admin, mut seen_slow_metric) = (false, false);
    for cycle in 0..5 {
        node.stop();
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(1500) {
            let (health, slow, eligible) = state(&e);
            assert!(
                health == "up" && eligible,
                "cycle {cycle}: the stopped node was judged {health} (eligible {eligible}) after {:?}",
                t.elapsed()
            );
            if slow && !seen_slow_admin {
                let v = admin_json(e.admin, "GET", "/admin/backends").await;
                let b = v["backends"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|b| b["name"] == BUSY)
                    .unwrap()
                    .clone();
                // The admin call may straddle the next probe; only a slow view counts.
                if b["slow"] == true {
                    assert_eq!(b["health"], "up", "{b}");
                    assert_eq!(b["last_outcome"], "slow", "{b}");
                    assert!(b["last_ready_ms_ago"].as_u64().is_some(), "{b}");
                    seen_slow_admin = true;
                }
            }
            if slow && !seen_slow_metric {
                let (_, _, m) = http_get(e.admin, "/metrics").await.unwrap();
                seen_slow_metric |=
                    metric(&m, &format!("edge_lb_backend_slow{{backend=\"{BUSY}\"}}")) == Some(1.0);
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        node.cont();
        // The tunnels were never closed, and carry a message again.
        for (i, c) in busy.iter_mut().enumerate() {
            let msg = format!("cycle {cycle} tunnel {i}");
            c.send_text(&msg).await.unwrap();
            let r = tokio::time::timeout(Duration::from_secs(3), c.recv_text()).await;
            assert_eq!(r, Ok(Ok(msg)), "cycle {cycle}: tunnel {i}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        seen_slow_admin,
        "/admin/backends never showed the node slow"
    );
    assert!(seen_slow_metric, "edge_lb_backend_slow never 1");
    let m = e.cluster().metrics.render();
    let label = format!("{{backend=\"{BUSY}\",to=\"down\"}}");
    assert_eq!(
        metric(&m, &format!("edge_lb_health_transitions_total{label}")),
        None,
        "{m}"
    );
    assert!(
        metric(
            &m,
            &format!("edge_lb_health_transitions_total{{backend=\"{BUSY}\",to=\"slow\"}}")
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert!(metric(&m, "edge_lb_tunnels_closed_total{reason=\"node_lost\"}").is_none());

    // (b) Killed: refused at once, so lost within failure_threshold (2) checks.
    let t = Instant::now();
    node.signal(libc::SIGKILL);
    let limit = Duration::from_millis(2 * (100 + 300) + 1000);
    while state(&e).0 != "down" {
        assert!(
            t.elapsed() < limit,
            "killed node not down after {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, c) in busy.iter_mut().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(2), c.recv_text()).await;
        assert!(matches!(r, Ok(Err(_))), "tunnel {i} still open: {r:?}");
    }
}

/// (c) Stopped for good: lost once it has not answered ready for `unresponsive_after` (3 s),
/// not before; its tunnels are closed (1012) so the clients reconnect elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_past_unresponsive_after_is_lost() {
    let (node, _others, e, mut busy) = setup(Opts {
        unresponsive_after_ms: 3000,
        ..Opts::default()
    })
    .await;
    let t = Instant::now();
    node.stop();
    loop {
        let (health, slow, _) = state(&e);
        if health == "down" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_millis(3000 + 2 * (100 + 300) + 1500),
            "stopped node not lost after {:?} ({health}, slow {slow})",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lost_after = t.elapsed();
    // Counted from its last ready answer, up to one check round (~0.1-0.4 s) before the stop.
    assert!(
        lost_after >= Duration::from_millis(2500),
        "lost after {lost_after:?}, before unresponsive_after"
    );
    for (i, c) in busy.iter_mut().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(2), c.recv_text()).await;
        assert!(
            matches!(&r, Ok(Err(e)) if e == "closed 1012"),
            "tunnel {i}: {r:?}"
        );
    }
    // Continued, it answers again and comes back up (held down before new quizzes).
    node.cont();
    common::wait_until(Duration::from_secs(5), || state(&e).0 == "up").await;
}
