//! Giving a Kafka client its `bootstrap.servers` again.
//!
//! Why this exists: since librdkafka 2.10 a client forgets every broker that
//! a Metadata response leaves out, and a Kafka broker in controlled shutdown
//! can answer without itself. When the whole cluster restarts (the one broker
//! of the local stack; every broker in a full restart) a client can be left
//! knowing no broker at all. librdkafka's own recovery
//! (`metadata.recovery.rebootstrap.trigger.ms`) starts its timer when a
//! Metadata request is sent, which needs a broker, so it never fires: the
//! consumer cannot find its group coordinator, never rejoins and consumes
//! nothing, for good (2 of 5 runs of `tests/kafka_outage.rs` before this),
//! and a producer fails every send. Adding the configured brokers is what
//! librdkafka's re-bootstrap does; adding a broker that is already
//! configured is a no-op, so calling this again is harmless.

use std::ffi::CString;

use rdkafka::client::{Client, ClientContext};
use tracing::warn;

/// Adds `brokers` (the `bootstrap.servers` list) to `client`; returns how
/// many librdkafka accepted.
pub fn add_bootstrap_brokers<C: ClientContext>(client: &Client<C>, brokers: &str) -> i32 {
    let Ok(list) = CString::new(brokers) else {
        return 0;
    };
    // SAFETY: the handle lives as long as `client`, which is borrowed for
    // the call; `rd_kafka_brokers_add` is thread-safe and copies the string.
    let added =
        unsafe { rdkafka::bindings::rd_kafka_brokers_add(client.native_ptr(), list.as_ptr()) };
    warn!(
        added,
        brokers, "Kafka client without a usable broker: bootstrap servers added again"
    );
    added
}
