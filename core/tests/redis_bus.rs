//! `RedisBus` over TLS against the local stack's `redis-tls` node
//! (`deploy/local/stack up`): an ACL user, a private CA, and the refusals.
//! The `ControlBus` contract itself (every subscriber of every node, at most
//! once, lag) is checked on the Redis Cluster by
//! `control_bus_conformance.rs`. Fails loudly without the node.

mod bus_wait;

use std::time::Duration;

use quiz_core::bus::redis::RedisBus;
use quiz_core::bus::{Changed, ControlBus};

use bus_wait::expect;

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
