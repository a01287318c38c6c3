//! DNS discovery end to end: a real UDP DNS server on loopback (answers encoded with
//! hickory-proto) serving SRV + A records from a table the test changes, a real edge-lb
//! resolving it with hickory-resolver, and real WebSocket/HTTP backends on 127.0.0.x.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use edge_lb_testing::{http_get, Backend, Client};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const SERVICE: &str = "_http._tcp.core.quiz.svc.cluster.local.";
const DOMAIN: &str = "core.quiz.svc.cluster.local.";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Answer,
    ServFail,
    NxDomain,
    /// Read queries and never answer (a DNS server that is down or unreachable).
    Silent,
}

/// What the DNS server answers: SRV targets `<node>.core.quiz.svc.cluster.local.` with their
/// ports and A records.
#[derive(Clone)]
struct Zone {
    mode: Mode,
    nodes: Vec<(String, SocketAddr)>,
    /// Put the targets' A records in the SRV answer's additional section (CoreDNS does);
    /// when off, edge-lb must ask for each target's address.
    additionals: bool,
}

struct Dns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<Mutex<usize>>,
    stop: CancellationToken,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Dns {
    async fn start(nodes: Vec<(String, SocketAddr)>) -> Dns {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone {
            mode: Mode::Answer,
            nodes,
            additionals: true,
        }));
        let queries = Arc::new(Mutex::new(0));
        let stop = CancellationToken::new();
        let (z, q, s) = (zone.clone(), queries.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = sock.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                };
                *q.lock().unwrap() += 1;
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let zone = z.lock().unwrap().clone();
                let Some(resp) = answer(&req, &zone) else {
                    continue;
                };
                let _ = sock.send_to(&resp.to_vec().unwrap(), peer).await;
            }
        });
        Dns {
            addr,
            zone,
            queries,
            stop,
        }
    }

    fn set(&self, f: impl FnOnce(&mut Zone)) {
        f(&mut self.zone.lock().unwrap());
    }

    fn queries(&self) -> usize {
        *self.queries.lock().unwrap()
    }
}

fn target(node: &str) -> Name {
    Name::from_ascii(format!("{node}.{DOMAIN}")).unwrap()
}

fn answer(req: &Message, zone: &Zone) -> Option<Message> {
    if zone.mode == Mode::Silent || req.metadata.message_type != MessageType::Query {
        return None;
    }
    let q = req.queries.first()?;
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    resp.add_query(q.clone());
    let code = match zone.mode {
        Mode::ServFail => ResponseCode::ServFail,
        Mode::NxDomain => ResponseCode::NXDomain,
        _ => ResponseCode::NoError,
    };
    resp.metadata.response_code = code;
    if code != ResponseCode::NoError {
        return Some(resp);
    }
    let a = |node: &str, ip: IpAddr| match ip {
        IpAddr::V4(v4) => Record::from_rdata(target(node), 0, RData::A(A(v4))),
        IpAddr::V6(_) => unreachable!("the test uses IPv4"),
    };
    let name = q.name.to_lowercase();
    if name == Name::from_ascii(SERVICE).unwrap() && q.query_type == RecordType::SRV {
        for (node, addr) in &zone.nodes {
            resp.add_answer(Record::from_rdata(
                name.clone(),
                0,
                RData::SRV(SRV::new(0, 50, addr.port(), target(node))),
            ));
            if zone.additionals {
                resp.add_additional(a(node, addr.ip()));
            }
        }
        return Some(resp);
    }
    if let Some((node, addr)) = zone.nodes.iter().find(|(n, _)| target(n) == name) {
        if q.query_type == RecordType::A {
            resp.add_answer(a(node, addr.ip()));
        }
        // AAAA: the name exists, no records (NOERROR, empty).
        return Some(resp);
    }
    resp.metadata.response_code = ResponseCode::NXDomain;
    Some(resp)
}

fn config(dns: SocketAddr, listen: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "version: 1
threads: 1
grace_period_seconds: 0
graceful_shutdown_timeout_seconds: 1
edge_lb:
  listen: [\"{listen}\"]
  admin_listen: \"{admin}\"
  quiz_idle_ttl: 10m
  # Caps far away, so a quiz's route is its ring position (bounded loads are tested in
  # edge.rs) and the share of routes a scale-up moves is the ring's.
  balance_factor: 10
  pools:
    - name: core
      discovery:
        dns: {{name: \"{SERVICE}\", interval: 100ms, timeout: 600ms, remove_after: 300ms, nameserver: \"{dns}\"}}
  health: {{interval: 100ms, timeout: 300ms, success_threshold: 2, failure_threshold: 2, hold_down: 20s}}
  tunnel: {{idle_timeout: 10m, connect_timeout: 1s, handshake_timeout: 2s, close_linger: 1s}}
  drain: {{close_rate_per_sec: 1000}}
"
    )
}

async fn backend(name: &str, ip: &str) -> Backend {
    Backend::start(name, &format!("{ip}:0")).await.unwrap()
}

/// `/admin/backends` as name → (addr, eligible, health).
async fn admin_backends(admin: SocketAddr) -> HashMap<String, (String, bool, String)> {
    let v = admin_json(admin, "GET", "/admin/backends").await;
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                (
                    b["addr"].as_str().unwrap().to_string(),
                    b["eligible"].as_bool().unwrap(),
                    b["health"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

async fn wait_backends(
    admin: SocketAddr,
    limit: Duration,
    what: &str,
    f: impl Fn(&HashMap<String, (String, bool, String)>) -> bool,
) {
    let start = std::time::Instant::now();
    loop {
        let b = admin_backends(admin).await;
        if f(&b) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}: {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn metrics(admin: SocketAddr) -> String {
    http_get(admin, "/metrics").await.unwrap().2
}

/// Value of one series in Prometheus text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn routes(admin: SocketAddr, quizzes: &[String]) -> Vec<String> {
    let mut v = Vec::new();
    for q in quizzes {
        v.push(admin_route(admin, q).await);
    }
    v
}

/// Open a tunnel for `q` and return the serving node.
async fn echoes(c: &mut Client) -> bool {
    c.send_text("ping").await.is_ok()
        && matches!(
            tokio::time::timeout(Duration::from_secs(2), c.recv_text()).await,
            Ok(Ok(t)) if t == "ping"
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_follows_scale_up_removal_and_ip_change_and_survives_dns_failures() {
    let mut bs = vec![
        backend("core-0", "127.0.0.2").await,
        backend("core-1", "127.0.0.3").await,
        backend("core-2", "127.0.0.4").await,
    ];
    let dns = Dns::start(bs.iter().map(|b| (b.name.clone(), b.addr)).collect()).await;
    // 0. Until the service resolves, the pool has no backend: edge-lb is
    //    alive but not ready (its pod gets no traffic to answer 503 to).
    dns.set(|z| z.mode = Mode::NxDomain);
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = config(dns.addr, listen, admin);
    let dir = std::env::temp_dir().join(format!(
        "edge-lb-disc-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("edge.yaml");
    std::fs::write(&path, &text).unwrap();
    let (sc, ec) = edge_lb::parse_config(&text).unwrap();
    let running = edge_lb::start(sc, ec, Some(path.clone())).unwrap();
    let cluster = running.cluster.clone();
    wait_until(Duration::from_secs(5), || dns.queries() > 0).await;
    wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect(admin).is_ok()
    })
    .await;
    let (status, _, body) = http_get(admin, "/readyz").await.unwrap();
    assert_eq!(status, 503, "no backend known yet: {body}");
    assert!(body.contains("pools_without_backends"), "{body}");
    let (status, _, _) = http_get(admin, "/healthz").await.unwrap();
    assert_eq!(status, 200, "alive all the same");
    dns.set(|z| z.mode = Mode::Answer);

    // 1. The nodes appear (from DNS only: the file lists no backend) and get routes.
    wait_until(Duration::from_secs(10), || {
        cluster.backends().len() == 3 && cluster.all_eligible()
    })
    .await;
    let b = admin_backends(admin).await;
    for x in &bs {
        assert_eq!(b[&x.name].0, x.addr.to_string(), "{b:?}");
    }
    wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect(listen).is_ok()
    })
    .await;
    let mut served = HashMap::<String, usize>::new();
    for i in 0..150 {
        *served
            .entry(http_node(listen, &format!("h{i}")).await)
            .or_default() += 1;
    }
    assert_eq!(served.len(), 3, "every discovered node serves: {served:?}");
    let (status, _, body) = http_get(admin, "/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");

    // Live quizzes: a tunnel each.
    let mut live = Vec::new();
    for i in 0..45 {
        let q = format!("live{i}");
        let (n, c) = tunnel(listen, &q).await;
        live.push((q, n, c));
    }
    // Where quizzes that are not active yet would go (the ring, keyed by name).
    let fresh: Vec<String> = (0..600).map(|i| format!("fresh{i}")).collect();
    let before = routes(admin, &fresh).await;

    // 2. Scale-up: core-3 appears in DNS while still starting (not ready). It is listed at
    // once but gets nothing until its checks pass, and then without the hold-down (20 s) a
    // returning node would wait: it never had quizzes.
    let b3 = backend("core-3", "127.0.0.5").await;
    b3.set_ready(false);
    dns.set(|z| z.nodes.push((b3.name.clone(), b3.addr)));
    wait_backends(admin, Duration::from_secs(5), "core-3 listed", |b| {
        b.get("core-3").is_some_and(|x| x.2 == "down" && !x.1)
    })
    .await;
    for (q, n, _) in &live {
        assert_eq!(&admin_route(admin, q).await, n, "{q} moved on scale-up");
    }
    assert!(!routes(admin, &fresh).await.contains(&"core-3".to_string()));
    b3.set_ready(true);
    wait_backends(admin, Duration::from_secs(3), "core-3 eligible", |b| {
        b.get("core-3").is_some_and(|x| x.1 && x.2 == "up")
    })
    .await;
    bs.push(b3);
    let after = routes(admin, &fresh).await;
    let moved: Vec<usize> = (0..fresh.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    let share = moved.len() as f64 / fresh.len() as f64;
    assert!(
        (0.12..=0.40).contains(&share),
        "scale 3 → 4 should move ~1/4 of the ring, moved {share:.2}"
    );
    for &i in &moved {
        assert_eq!(after[i], "core-3", "{} moved between old nodes", fresh[i]);
    }
    // Live quizzes stay where they are (sticky) and keep their tunnels.
    for (q, n, c) in live.iter_mut() {
        assert_eq!(&admin_route(admin, q).await, n, "{q} moved on scale-up");
        assert!(echoes(c).await, "{q}'s tunnel broke on scale-up");
    }

    // 3. Removal: core-1 leaves DNS (its process keeps running: only discovery removes it).
    // After remove_after (300 ms) it is gone, its tunnels are closed, its quizzes move; the
    // others are untouched.
    let removed_count = live.iter().filter(|(_, n, _)| n == "core-1").count();
    assert!(
        removed_count >= 5,
        "core-1 owns only {removed_count} live quizzes"
    );
    dns.set(|z| z.nodes.retain(|(n, _)| n != "core-1"));
    wait_backends(admin, Duration::from_secs(3), "core-1 removed", |b| {
        !b.contains_key("core-1") && b.len() == 3
    })
    .await;
    for (q, n, c) in live.iter_mut() {
        if n == "core-1" {
            let r = tokio::time::timeout(Duration::from_secs(3), c.recv_text()).await;
            assert!(
                matches!(r, Ok(Err(_))),
                "{q}: tunnel to removed node not closed: {r:?}"
            );
            let (n2, c2) = tunnel(listen, q).await;
            assert_ne!(n2, "core-1");
            *n = n2;
            *c = c2;
        } else {
            assert!(
                echoes(c).await,
                "{q}'s tunnel broke when core-1 was removed"
            );
            assert_eq!(&admin_route(admin, q).await, n, "{q} moved on removal");
        }
    }
    // The removed node's side of those tunnels is closed too.
    wait_until(Duration::from_secs(3), || {
        bs[1].ws_open.load(std::sync::atomic::Ordering::SeqCst) == 0
    })
    .await;

    // 4. IP change: core-2 comes back as a new pod at another address (and, this time, the
    // server sends no additional records, so edge-lb asks for the target's A record). Every
    // route stays; new connections reach the new address.
    let routes_before_ip = routes(admin, &fresh).await;
    let new2 = backend("core-2", "127.0.0.6").await;
    dns.set(|z| {
        z.additionals = false;
        for (n, a) in z.nodes.iter_mut() {
            if n == "core-2" {
                *a = new2.addr;
            }
        }
    });
    let new_addr = new2.addr.to_string();
    wait_backends(admin, Duration::from_secs(3), "core-2 readdressed", |b| {
        b.get("core-2").is_some_and(|x| x.0 == new_addr && x.1)
    })
    .await;
    assert_eq!(
        routes(admin, &fresh).await,
        routes_before_ip,
        "an address change moved routes"
    );
    // The old pod goes away: its tunnels end, and their clients reconnect to the same node
    // at its new address.
    bs[2].kill();
    let mut on2 = 0;
    for (q, n, c) in live.iter_mut() {
        assert_eq!(
            &admin_route(admin, q).await,
            n,
            "{q} moved on address change"
        );
        if n == "core-2" {
            on2 += 1;
            let r = tokio::time::timeout(Duration::from_secs(3), c.recv_text()).await;
            assert!(
                matches!(r, Ok(Err(_))),
                "{q}: old pod's tunnel still open: {r:?}"
            );
            let (n2, mut c2) = tunnel(listen, q).await;
            assert_eq!(n2, "core-2", "{q} left its node after an address change");
            assert!(echoes(&mut c2).await);
            *c = c2;
        } else {
            assert!(
                echoes(c).await,
                "{q}'s tunnel broke on another node's address change"
            );
        }
    }
    assert!(on2 >= 3, "core-2 owns only {on2} live quizzes");
    assert_eq!(
        new2.ws_total.load(std::sync::atomic::Ordering::SeqCst),
        on2,
        "reconnects did not reach the new address"
    );

    // 5. A reload keeps the discovered backends (the file lists none).
    let v = admin_json(admin, "POST", "/admin/reload").await;
    assert_eq!(v["removed"].as_array().unwrap().len(), 0, "{v}");
    let set = admin_backends(admin).await;
    assert_eq!(set.len(), 3, "{set:?}");

    // 6. DNS failures keep the last known set, far beyond remove_after.
    let stable = routes(admin, &fresh).await;
    for (mode, outcome) in [
        (Mode::ServFail, "error"),
        (Mode::NxDomain, "empty"),
        (Mode::Silent, "error"),
    ] {
        let series =
            format!("edge_lb_discovery_resolutions_total{{outcome=\"{outcome}\",pool=\"core\"}}");
        let n0 = metric(&metrics(admin).await, &series);
        dns.set(|z| z.mode = mode);
        let start = std::time::Instant::now();
        loop {
            let n = metric(&metrics(admin).await, &series);
            if n >= n0 + 3.0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{mode:?}: {outcome} count stuck at {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            admin_backends(admin).await,
            set,
            "{mode:?} changed the backends"
        );
        assert_eq!(routes(admin, &fresh).await, stable, "{mode:?} moved routes");
    }
    for (q, _, c) in live.iter_mut() {
        assert!(echoes(c).await, "{q}'s tunnel broke during DNS failures");
    }
    // The server answers again: same set, discovery succeeds again.
    let q0 = dns.queries();
    let ok = "edge_lb_discovery_resolutions_total{outcome=\"ok\",pool=\"core\"}";
    let ok0 = metric(&metrics(admin).await, ok);
    dns.set(|z| z.mode = Mode::Answer);
    let start = std::time::Instant::now();
    while metric(&metrics(admin).await, ok) < ok0 + 2.0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no successful resolution after recovery"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dns.queries() > q0);
    assert_eq!(admin_backends(admin).await, set);

    // 7. Metrics describe it all.
    let m = metrics(admin).await;
    let get = |s: &str| metric(&m, s);
    assert_eq!(get("edge_lb_discovery_backends{pool=\"core\"}"), 3.0, "{m}");
    assert_eq!(
        get("edge_lb_discovery_changes_total{change=\"added\",pool=\"core\"}"),
        4.0
    );
    assert_eq!(
        get("edge_lb_discovery_changes_total{change=\"removed\",pool=\"core\"}"),
        1.0
    );
    assert_eq!(
        get("edge_lb_discovery_changes_total{change=\"readdressed\",pool=\"core\"}"),
        1.0
    );
    assert!(get("edge_lb_tunnels_closed_total{reason=\"removed\"}") >= removed_count as f64);

    drop(live);
    running.stop();
    let _ = std::fs::remove_dir_all(dir);
}
