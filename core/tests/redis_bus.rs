//! `RedisBus` against the local stack's `redis-tls` node
//! (`deploy/local/stack up`): what is the Redis bus's own. The `ControlBus`
//! contract itself (every subscriber of every node, at most once, lag) is
//! checked on the Redis Cluster and over TLS with an ACL user by
//! `control_bus_conformance.rs`. Fails loudly without the node.

mod tls_node;

use std::time::Duration;

use quiz_core::bus::redis::RedisBus;

use tls_node::tls_urls;

/// The node the subscriber reports (logs, diagnostics) carries no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_node_carries_no_password() {
    let (urls, ca) = tls_urls(testkit::REDIS_TLS_PASSWORD);
    let bus = RedisBus::connect_with(&urls, Some(ca))
        .await
        .unwrap_or_else(|e| panic!("the redis-tls node is required (deploy/local/stack up): {e}"));
    let node = bus.subscribed_node().expect("subscribed");
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
