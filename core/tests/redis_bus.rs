//! `RedisBus` against the local Redis Cluster (`deploy/local/stack up`):
//! two buses (as two core nodes would hold) see each other's messages.
//! Fails loudly without the cluster (`QUIZ_REDIS_NODES`, default
//! `127.0.0.1:7000..7005`).

use std::time::Duration;

use quiz_core::bus::redis::RedisBus;
use quiz_core::bus::{Changed, ControlBus};
use tokio::sync::broadcast;

fn redis_nodes() -> Vec<String> {
    match std::env::var("QUIZ_REDIS_NODES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => (7000..=7005).map(|p| format!("127.0.0.1:{p}")).collect(),
    }
}

async fn bus() -> RedisBus {
    let nodes = redis_nodes();
    match RedisBus::connect(&nodes).await {
        Ok(b) => b,
        Err(e) => panic!("Redis Cluster at {nodes:?} is required (deploy/local/stack up): {e}"),
    }
}

/// Waits for `want` on `rx`, skipping other quizzes' messages (other tests
/// share the channel).
async fn expect(rx: &mut broadcast::Receiver<Changed>, want: &Changed) {
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Ok(c) if &c == want => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("bus closed: {e}"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "did not receive {want:?} within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_buses_see_each_others_messages() {
    let a = bus().await;
    let b = bus().await;
    let mut rx_a = a.subscribe();
    let mut rx_b = b.subscribe();
    let quiz = format!("bus-{:08x}", rand::random::<u32>());
    let from_a = Changed {
        quiz_id: quiz.clone(),
        version: 2,
    };
    let from_b = Changed {
        quiz_id: quiz.clone(),
        version: 3,
    };
    a.publish(from_a.clone()).await.expect("publish a");
    expect(&mut rx_b, &from_a).await;
    expect(&mut rx_a, &from_a).await;
    b.publish(from_b.clone()).await.expect("publish b");
    expect(&mut rx_a, &from_b).await;
    expect(&mut rx_b, &from_b).await;
    assert!(a.subscribed_node().is_some() && b.subscribed_node().is_some());
}

/// The local stack's `redis-tls` node as core reaches it with `redis_tls`,
/// an ACL user and `redis_tls_ca_file`.
fn tls_urls(password: &str) -> (Vec<String>, Vec<u8>) {
    let settings = testkit::Settings::from_env();
    let config = quiz_core::config::Config {
        redis_nodes: vec![settings.redis_tls_node.clone()],
        redis_tls: true,
        redis_username: testkit::REDIS_TLS_USER.into(),
        redis_password: password.into(),
        ..Default::default()
    };
    let ca = std::fs::read(&settings.redis_tls_ca).unwrap_or_else(|e| {
        panic!(
            "the redis-tls node's CA {} is required (deploy/local/stack up): {e}",
            settings.redis_tls_ca
        )
    });
    (config.redis_urls(), ca)
}

/// Control messages flow over TLS with AUTH, and the node the subscriber
/// reports carries no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_over_tls_with_an_acl_user() {
    let (urls, ca) = tls_urls(testkit::REDIS_TLS_PASSWORD);
    let a = RedisBus::connect_with(&urls, Some(ca.clone()))
        .await
        .unwrap_or_else(|e| panic!("the redis-tls node is required (deploy/local/stack up): {e}"));
    let b = RedisBus::connect_with(&urls, Some(ca))
        .await
        .expect("second bus");
    let mut rx_b = b.subscribe();
    let msg = Changed {
        quiz_id: format!("bus-tls-{:08x}", rand::random::<u32>()),
        version: 7,
    };
    a.publish(msg.clone()).await.expect("publish");
    expect(&mut rx_b, &msg).await;
    let node = b.subscribed_node().expect("subscribed");
    assert!(
        node.starts_with("rediss://") && !node.contains(testkit::REDIS_TLS_PASSWORD),
        "{node}"
    );
}

/// An untrusted certificate or a wrong password is a clear connect error,
/// never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_the_ca_or_with_a_wrong_password_is_refused() {
    let (urls, ca) = tls_urls(testkit::REDIS_TLS_PASSWORD);
    let untrusted = tokio::time::timeout(Duration::from_secs(15), RedisBus::connect(&urls))
        .await
        .expect("bounded");
    assert!(
        untrusted.is_err(),
        "a private CA's certificate must not be trusted by default"
    );
    let (bad_urls, _) = tls_urls("not-the-password");
    let unauthorized = tokio::time::timeout(
        Duration::from_secs(15),
        RedisBus::connect_with(&bad_urls, Some(ca)),
    )
    .await
    .expect("bounded");
    assert!(unauthorized.is_err(), "a wrong password must be refused");
}
