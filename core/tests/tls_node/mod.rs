//! The local stack's `redis-tls` node, for the tests of the Redis bus
//! (`redis_bus.rs`, `control_bus_conformance.rs`).

/// The local stack's `redis-tls` node as core reaches it with `redis_tls`,
/// an ACL user (with `password`) and `redis_tls_ca_file`: its URLs and the
/// CA's PEM.
pub fn tls_urls(password: &str) -> (Vec<String>, Vec<u8>) {
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
