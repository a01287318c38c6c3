//! The `ControlBus` conformance suite: one set of checks of the trait's
//! contract (`core/src/bus.rs`), run against every implementation: the
//! in-process `MemoryBus`, and `RedisBus` on the local Redis Cluster from
//! `deploy/local/stack up` (`QUIZ_REDIS_NODES`, default
//! `127.0.0.1:7000..7005`) and on its TLS node with an ACL user
//! (`QUIZ_REDIS_TLS_NODE`, default `127.0.0.1:7010`). The Redis halves fail
//! loudly when Redis is missing, they never skip.
//!
//! A check asks its factory for the buses of several core nodes of one
//! deployment: `RedisBus` gives each node its own connection and
//! subscription; `MemoryBus` serves a single node, so every "node" is that
//! one in-process bus. Each check works on quiz ids of its own, and skips
//! other quizzes' messages (other tests share the Redis channel).
//!
//! What the contract promises, and the check that holds each bus to it:
//! - `publish` reaches every subscriber of every node, including the
//!   publishing node's own, and a dropped subscriber does not stop the
//!   others (`every_subscriber_of_every_node_sees_it`);
//! - at most once: no subscriber sees a notification twice
//!   (`at_most_once`);
//! - `subscribe` is node-wide: one receiver sees every quiz's
//!   notifications, quiz id and version unchanged (`one_stream_for_every_quiz`);
//! - publishing with nobody listening is not an error
//!   (`publish_without_subscribers_is_ok`);
//! - a receiver that falls behind sees `RecvError::Lagged` (the node-local
//!   fan-out is bounded) and then goes on receiving, while a receiver that
//!   keeps up misses nothing of it (`a_lagging_receiver_sees_lagged`).

mod tls_node;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use quiz_core::bus::memory::{MemoryBus, DEFAULT_CAPACITY};
use quiz_core::bus::redis::RedisBus;
use quiz_core::bus::{Changed, ControlBus};
use tokio::sync::broadcast::{self, error::RecvError};

use tls_node::tls_urls;

/// A deployment's nodes, as a check sees them.
enum Nodes {
    /// One process: every node is this bus.
    Memory(Arc<MemoryBus>),
    /// Redis: each node connects on its own, through these URLs (with this
    /// CA for `rediss://`).
    Redis {
        urls: Vec<String>,
        tls_ca: Option<Vec<u8>>,
    },
}

impl Nodes {
    /// The bus of one more core node.
    async fn node(&self) -> Arc<dyn ControlBus> {
        match self {
            Nodes::Memory(bus) => Arc::clone(bus) as Arc<dyn ControlBus>,
            Nodes::Redis { urls, tls_ca } => {
                match RedisBus::connect_with(urls, tls_ca.clone()).await {
                    Ok(bus) => Arc::new(bus),
                    Err(e) => {
                        panic!("Redis at {urls:?} is required (deploy/local/stack up): {e}")
                    }
                }
            }
        }
    }
}

async fn memory() -> Nodes {
    Nodes::Memory(Arc::new(MemoryBus::new()))
}

/// The local Redis Cluster (ports 7000-7005).
async fn redis() -> Nodes {
    Nodes::Redis {
        urls: testkit::Settings::from_env().redis_nodes,
        tls_ca: None,
    }
}

/// The local stack's `redis-tls` node: TLS with a private CA and an ACL
/// user, as managed Redis services run (a one-node cluster).
async fn redis_tls() -> Nodes {
    let (urls, ca) = tls_urls(testkit::REDIS_TLS_PASSWORD);
    Nodes::Redis {
        urls,
        tls_ca: Some(ca),
    }
}

/// How long a notification may take to reach a subscriber.
const DELIVERY: Duration = Duration::from_secs(5);

/// Waits for `want` on `rx`, skipping everything else (other quizzes'
/// messages: other tests share the channel; `Lagged`); panics after
/// [`DELIVERY`].
async fn expect(rx: &mut broadcast::Receiver<Changed>, want: &Changed) {
    let found = tokio::time::timeout(DELIVERY, async {
        loop {
            match rx.recv().await {
                Ok(c) if &c == want => return,
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(e) => panic!("bus closed: {e}"),
            }
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "did not receive {want:?} within {DELIVERY:?}"
    );
}

fn changed(quiz_id: &str, version: u64) -> Changed {
    Changed {
        quiz_id: quiz_id.to_string(),
        version,
    }
}

/// The versions of `quiz_id` that `rx` receives until `end` (included)
/// arrives, in arrival order, with the `Lagged` gaps counted.
async fn collect_until(
    rx: &mut broadcast::Receiver<Changed>,
    quiz_id: &str,
    end: u64,
) -> (Vec<u64>, u64) {
    let mut versions = Vec::new();
    let mut lagged = 0;
    let done = tokio::time::timeout(DELIVERY, async {
        loop {
            match rx.recv().await {
                Ok(c) if c.quiz_id == quiz_id => {
                    versions.push(c.version);
                    if c.version == end {
                        return;
                    }
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => lagged += n,
                Err(e) => panic!("bus closed: {e}"),
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "version {end} of {quiz_id} did not arrive within {DELIVERY:?} (got {} others)",
        versions.len()
    );
    (versions, lagged)
}

fn quiz_id(name: &str) -> String {
    testkit::unique_name(name)
}

/// The checks, each a generic async fn over a deployment's nodes.
mod suite {
    use super::*;

    pub async fn every_subscriber_of_every_node_sees_it(nodes: Nodes) {
        let a = nodes.node().await;
        let b = nodes.node().await;
        let mut a1 = a.subscribe();
        let mut a2 = a.subscribe();
        let mut b1 = b.subscribe();
        let dropped = b.subscribe();
        drop(dropped);
        let quiz = quiz_id("every");
        let from_a = changed(&quiz, 2);
        a.publish(from_a.clone()).await.expect("publish on a");
        for rx in [&mut a1, &mut a2, &mut b1] {
            expect(rx, &from_a).await;
        }
        let from_b = changed(&quiz, 3);
        b.publish(from_b.clone()).await.expect("publish on b");
        for rx in [&mut a1, &mut a2, &mut b1] {
            expect(rx, &from_b).await;
        }
    }

    pub async fn at_most_once(nodes: Nodes) {
        const N: u64 = 50;
        let a = nodes.node().await;
        let b = nodes.node().await;
        let mut on_a = a.subscribe();
        let mut on_b = b.subscribe();
        let quiz = quiz_id("once");
        for v in 1..=N {
            a.publish(changed(&quiz, v)).await.expect("publish");
        }
        // A last one, after a pause in which any second copy would arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.publish(changed(&quiz, N + 1)).await.expect("publish");
        for (name, rx) in [("a", &mut on_a), ("b", &mut on_b)] {
            let (versions, _) = collect_until(rx, &quiz, N + 1).await;
            let mut counts: HashMap<u64, usize> = HashMap::new();
            for v in &versions {
                *counts.entry(*v).or_default() += 1;
            }
            let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
            assert!(
                twice.is_empty(),
                "node {name} saw these more than once: {twice:?}"
            );
        }
    }

    pub async fn one_stream_for_every_quiz(nodes: Nodes) {
        let a = nodes.node().await;
        let b = nodes.node().await;
        let mut rx = b.subscribe();
        // Quiz ids use the whole alphabet a quiz id may have; versions the
        // whole range of a u64.
        let sent = [
            changed(&quiz_id("Quiz_A-1"), 0),
            changed(&quiz_id("quiz-b"), 1),
            changed(&quiz_id("QUIZ_C"), u64::MAX),
        ];
        for c in &sent {
            a.publish(c.clone()).await.expect("publish");
        }
        for c in &sent {
            expect(&mut rx, c).await;
        }
    }

    pub async fn publish_without_subscribers_is_ok(nodes: Nodes) {
        let a = nodes.node().await;
        a.publish(changed(&quiz_id("nobody"), 1))
            .await
            .expect("nobody listening is not an error");
    }

    pub async fn a_lagging_receiver_sees_lagged(nodes: Nodes) {
        // Past the node-local bound (both buses keep `DEFAULT_CAPACITY`).
        const CHUNK: u64 = 64;
        let burst = DEFAULT_CAPACITY as u64 + CHUNK;
        let a = nodes.node().await;
        let b = nodes.node().await;
        let mut lagger = b.subscribe();
        let mut reader = b.subscribe();
        let quiz = quiz_id("lag");
        // In chunks the reader drains before the next one: it never falls
        // far behind, while `lagger` reads nothing.
        for first in (1..=burst).step_by(CHUNK as usize) {
            let last = first + CHUNK - 1;
            for v in first..=last {
                a.publish(changed(&quiz, v)).await.expect("publish");
            }
            let (versions, lagged) = collect_until(&mut reader, &quiz, last).await;
            assert_eq!(lagged, 0, "a receiver that keeps up does not lag");
            assert_eq!(
                versions,
                (first..=last).collect::<Vec<_>>(),
                "a receiver that keeps up misses nothing"
            );
        }
        match lagger.recv().await {
            Err(RecvError::Lagged(n)) => assert!(n > 0),
            other => panic!("a receiver {burst} messages behind must see Lagged, got {other:?}"),
        }
        // After the gap it reads on, to the end of the burst.
        let (tail, _) = collect_until(&mut lagger, &quiz, burst).await;
        assert!(!tail.is_empty() && tail.len() as u64 <= DEFAULT_CAPACITY as u64);
    }
}

/// Instantiates every check of the suite for one bus factory.
macro_rules! conformance {
    ($name:ident, $factory:path) => {
        mod $name {
            use super::*;

            macro_rules! check {
                ($t:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $t() {
                        suite::$t($factory().await).await;
                    }
                };
            }

            check!(every_subscriber_of_every_node_sees_it);
            check!(at_most_once);
            check!(one_stream_for_every_quiz);
            check!(publish_without_subscribers_is_ok);
            check!(a_lagging_receiver_sees_lagged);
        }
    };
}

conformance!(memory_bus, memory);
conformance!(redis_bus, redis);
conformance!(redis_tls_bus, redis_tls);
