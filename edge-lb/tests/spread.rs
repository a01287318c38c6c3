//! A quiz over several nodes (spread): real backends (`edge_lb_testing::Backend`, each answering
//! the upgrade with `node=<name>`) and real edge-lb instances on loopback. The tokens are shaped
//! like core's (`v3.<role>.<quiz>.<player>.<expires>.<spread>.<mac>`); edge-lb does not verify
//! the MAC, so any will do.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use edge_lb_testing::{ws_connect, Client};

fn player_token(quiz: &str, player: &str, k: usize) -> String {
    format!("v3.p.{quiz}.{player}.4102444800.{k}.bWFjLW5vdC1jaGVja2Vk")
}

fn host_token(quiz: &str, k: usize) -> String {
    format!("v3.h.{quiz}..4102444800.{k}.bWFjLW5vdC1jaGVja2Vk")
}

/// Open a WebSocket of `quiz` with `token` through `addr`: the node that answered, the client.
async fn ws(addr: SocketAddr, quiz: &str, token: &str) -> (String, Client) {
    let mut c = ws_connect(addr, &format!("/v1/quizzes/{quiz}/ws?token={token}"))
        .await
        .unwrap();
    (c.node().await.unwrap(), c)
}

/// The admin view of `quiz`'s WebSocket route (with `query`, e.g. `?player=p1&spread=3`).
async fn ws_route(admin: SocketAddr, quiz: &str, query: &str) -> serde_json::Value {
    admin_json(admin, "GET", &format!("/admin/route/{quiz}{query}")).await["websocket"].clone()
}

/// The spread's nodes as the admin view lists them.
fn spread_nodes(v: &serde_json::Value) -> Vec<String> {
    v["spread"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_spread_over_three_nodes_host_and_http_stay_on_the_first() {
    let bs = backends(3).await;
    let e = edge(&bs, Opts::default()).await;
    let q = "bigquiz";
    let first = http_node(e.addr, q).await;
    // 90 players of a quiz spread over 3 nodes, each with its WebSocket open.
    let mut players = Vec::new();
    for i in 0..90 {
        let p = format!("player{i}");
        let (node, c) = ws(e.addr, q, &player_token(q, &p, 3)).await;
        players.push((p, node, c));
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for (_, n, _) in &players {
        *per_node.entry(n.clone()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "not on all 3 nodes: {per_node:?}");
    for (n, c) in &per_node {
        assert!(*c >= 15, "{n} got only {c} of 90: {per_node:?}");
    }
    // The same player always lands on the same node, and the admin view predicts it.
    for (p, n, _) in players.iter().take(30) {
        let (again, mut c) = ws(e.addr, q, &player_token(q, p, 3)).await;
        assert_eq!(&again, n, "{p} reconnected elsewhere");
        c.close().await.unwrap();
        let v = ws_route(e.admin, q, &format!("?player={p}&spread=3")).await;
        assert_eq!(v["player"]["choice"]["node"], n.as_str(), "{v}");
        assert_eq!(v["player"]["choice"]["fallback"], serde_json::Value::Null);
    }
    // The host, an ordinary (v2) player and every HTTP request: the quiz's first node.
    let (host_node, mut host) = ws(e.addr, q, &host_token(q, 3)).await;
    assert_eq!(host_node, first);
    let v2 = format!("v2.p.{q}.player1.4102444800.bWFj");
    for _ in 0..3 {
        assert_eq!(ws(e.addr, q, &v2).await.0, first);
        assert_eq!(http_node(e.addr, q).await, first);
    }
    // Another quiz's token, or an unreadable spread, routes as k = 1.
    let other = player_token("otherquiz", "player5", 3);
    assert_eq!(ws(e.addr, q, &other).await.0, first);
    let bad = format!("v3.p.{q}.player5.4102444800.99.bWFj");
    assert_eq!(ws(e.addr, q, &bad).await.0, first);

    // The admin view: k as seen, the spread's nodes (first node first) with eligibility, and
    // the quiz's open tunnels per node (the 90 players and the host).
    let want = {
        let mut w = per_node.clone();
        *w.entry(first.clone()).or_default() += 1;
        w
    };
    wait_until(Duration::from_secs(5), || {
        let v = e.cluster().explain(q);
        let by_node = &v["websocket"]["spread"]["tunnels_by_node"];
        want.iter().all(|(n, c)| by_node[n] == *c)
    })
    .await;
    let v = ws_route(e.admin, q, "").await;
    assert_eq!(v["spread"]["k"], 3);
    assert_eq!(v["spread"]["k_seen"], 3);
    let nodes = spread_nodes(&v);
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[0], first);
    for n in v["spread"]["nodes"].as_array().unwrap() {
        assert_eq!(n["eligible"], true);
        assert_eq!(n["tunnels"], want[n["node"].as_str().unwrap()], "{v}");
    }
    // Closing tunnels counts down.
    host.close().await.unwrap();
    for (_, _, c) in players.iter_mut().take(10) {
        c.close().await.unwrap();
    }
    let closed_on_first = 1 + players
        .iter()
        .take(10)
        .filter(|(_, n, _)| *n == first)
        .count();
    wait_until(Duration::from_secs(5), || {
        let v = e.cluster().explain(q);
        v["websocket"]["spread"]["tunnels_by_node"][&first] == want[&first] - closed_on_first
    })
    .await;
    let home = e
        .cluster()
        .metrics
        .spread_routes
        .with_label_values(&["core", "home"]);
    assert!(home.get() >= 120, "{}", home.get());
    assert!(e
        .cluster()
        .metrics
        .render()
        .contains("edge_lb_spread_routes_total"));
    // A bad spread query is refused with a clear answer.
    let (status, _, _) =
        edge_lb_testing::http_get(e.admin, &format!("/admin/route/{q}?player=a&spread=65"))
            .await
            .unwrap();
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_agree_on_every_player() {
    let bs = backends(3).await;
    let (a, b, pa, pb, shared) = two_edges_sharing_a_port(&bs).await;
    let q = "sharedquiz";
    // Fresh tables: the same choice for 3 000 players, whatever k.
    for i in 0..3000 {
        let p = format!("p{i}");
        let k = 2 + i % 3;
        let ca = a.cluster().explain_player(q, Some(&p), Some(k));
        let cb = b.cluster().explain_player(q, Some(&p), Some(k));
        assert_eq!(
            ca["websocket"]["player"]["choice"], cb["websocket"]["player"]["choice"],
            "{p}"
        );
    }
    // Through each process's own port: the same backend for every player.
    let mut node_of = HashMap::new();
    for i in 0..60 {
        let p = format!("p{i}");
        let t = player_token(q, &p, 3);
        let (na, _ca) = ws(pa, q, &t).await;
        let (nb, _cb) = ws(pb, q, &t).await;
        assert_eq!(na, nb, "{p}");
        node_of.insert(p, na);
    }
    let used: HashSet<&String> = node_of.values().collect();
    assert_eq!(used.len(), 3);
    // Through the shared SO_REUSEPORT port (the kernel picks the process): every connection
    // of a player reaches that player's node.
    let ok_before = |c: &Edge| {
        c.cluster()
            .metrics
            .upgrades
            .with_label_values(&["ok"])
            .get()
    };
    let (a0, b0) = (ok_before(&a), ok_before(&b));
    for round in 0..3 {
        for (p, n) in &node_of {
            let (got, mut c) = ws(shared, q, &player_token(q, p, 3)).await;
            assert_eq!(&got, n, "{p} (round {round})");
            c.close().await.unwrap();
        }
    }
    assert!(
        ok_before(&a) > a0 && ok_before(&b) > b0,
        "SO_REUSEPORT did not spread the connections over both processes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_spread_node_moves_only_its_players_and_gets_them_back() {
    let bs = backends(4).await;
    let e = edge(
        &bs,
        Opts {
            hold_down_ms: 500,
            ..Opts::default()
        },
    )
    .await;
    let q = "lossquiz";
    let mut players = Vec::new();
    for i in 0..80 {
        let p = format!("player{i}");
        let (n, c) = ws(e.addr, q, &player_token(q, &p, 3)).await;
        players.push((p, n, c));
    }
    let v = ws_route(e.admin, q, "").await;
    let nodes = spread_nodes(&v);
    assert_eq!(nodes.len(), 3);
    let outside: Vec<String> = bs
        .iter()
        .map(|b| b.name.clone())
        .filter(|n| !nodes.contains(n))
        .collect();
    assert_eq!(outside.len(), 1);
    for (_, n, _) in &players {
        assert!(nodes.contains(n), "{n} is not in the spread {nodes:?}");
    }
    // Lose a node of the spread other than the first: it stops being ready, keeps its sockets.
    let lost = nodes[1].clone();
    let lost_idx = bs.iter().position(|b| b.name == lost).unwrap();
    let on_lost = players.iter().filter(|(_, n, _)| *n == lost).count();
    assert!(on_lost >= 10, "only {on_lost} players on {lost}");
    bs[lost_idx].set_ready(false);
    let mut moved = 0;
    let mut moved_to: HashMap<String, usize> = HashMap::new();
    for (p, n, c) in players.iter_mut() {
        if *n == lost {
            let r = tokio::time::timeout(Duration::from_secs(3), c.recv_text()).await;
            assert!(
                matches!(&r, Ok(Err(e)) if e == "closed 1012"),
                "{p}'s tunnel to the lost node not closed with 1012: {r:?}"
            );
            // Reconnects to another node of the spread, never outside it.
            let (n2, c2) = ws(e.addr, q, &player_token(q, p, 3)).await;
            assert_ne!(n2, lost);
            assert!(nodes.contains(&n2), "{p} left the spread for {n2}");
            let v = ws_route(e.admin, q, &format!("?player={p}")).await;
            assert_eq!(v["player"]["choice"]["node"], n2.as_str());
            assert_eq!(v["player"]["choice"]["home"], lost.as_str());
            assert_eq!(v["player"]["choice"]["fallback"], "spread");
            *moved_to.entry(n2).or_default() += 1;
            *c = c2;
            moved += 1;
        } else {
            // Untouched: still open and echoing; a reconnect lands on the same node.
            c.send_text("still").await.unwrap();
            assert_eq!(c.recv_text().await.unwrap(), "still");
            let (again, mut c2) = ws(e.addr, q, &player_token(q, p, 3)).await;
            assert_eq!(&again, n, "{p} moved although its node stayed");
            c2.close().await.unwrap();
        }
    }
    assert_eq!(moved, on_lost);
    assert!(!moved_to.contains_key(&outside[0]));
    let v = ws_route(e.admin, q, "").await;
    let lost_view = &v["spread"]["nodes"][1];
    assert_eq!(lost_view["node"], lost.as_str());
    assert_eq!(lost_view["eligible"], false);
    // The node returns (after the hold-down): its players' interim tunnels are closed and they
    // reconnect to it; nobody else's tunnel is touched.
    bs[lost_idx].set_ready(true);
    for (p, n, c) in players.iter_mut() {
        if *n == lost {
            let r = tokio::time::timeout(Duration::from_secs(5), c.recv_text()).await;
            assert!(matches!(r, Ok(Err(_))), "{p}'s interim tunnel not closed");
            let (n3, c3) = ws(e.addr, q, &player_token(q, p, 3)).await;
            assert_eq!(&n3, n, "{p} did not return");
            *c = c3;
        }
    }
    for (_, _, c) in players.iter_mut() {
        c.send_text("after").await.unwrap();
        assert_eq!(c.recv_text().await.unwrap(), "after");
    }
}
