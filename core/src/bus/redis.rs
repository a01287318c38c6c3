//! [`RedisBus`]: the [`ControlBus`] on Redis Cluster pub/sub.
//!
//! Classic `PUBLISH` in a Redis Cluster is broadcast over the cluster bus to
//! every node, so one subscription on *any* reachable node sees every
//! message. Messages go on the channel [`CHANNEL`] with the payload
//! `"<quiz_id> <version>"` (a quiz id never contains a space).
//!
//! One background task per `RedisBus` holds that subscription and feeds a
//! tokio broadcast channel that every room of this node subscribes to. If its
//! node dies (the message stream ends, or a periodic PING gets no answer) it
//! moves on to the next configured node, with capped exponential back-off.
//! Messages published while no subscription was up are lost, which the
//! bus contract allows: rooms also re-read their state periodically.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use tokio::sync::{broadcast, watch};

use super::{BusError, Changed, ControlBus};
use crate::store::redis_cluster::{node_url, tls_certificates};

/// The pub/sub channel of control messages.
pub const CHANNEL: &str = "quiz-control";

/// Bound of the node-local fan-out; a subscriber further behind sees
/// `Lagged` and reconciles all its rooms. The same bound as the in-process
/// bus's.
const LOCAL_CAPACITY: usize = super::memory::DEFAULT_CAPACITY;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct RedisBus {
    conn: ClusterConnection,
    tx: broadcast::Sender<Changed>,
    /// Which node the subscriber is on (None while reconnecting); for tests
    /// and diagnostics.
    subscribed: watch::Receiver<Option<String>>,
    task: tokio::task::AbortHandle,
}

impl RedisBus {
    /// Connects for publishing (cluster-aware) and starts the subscriber;
    /// returns once the subscription is up, so a message published by anyone
    /// after `connect` returns is seen. Must be called inside a tokio runtime.
    pub async fn connect(nodes: &[String]) -> Result<Self, BusError> {
        Self::connect_with(nodes, None).await
    }

    /// [`RedisBus::connect`], trusting `tls_ca` (PEM) for `rediss://` nodes.
    pub async fn connect_with(nodes: &[String], tls_ca: Option<Vec<u8>>) -> Result<Self, BusError> {
        if nodes.is_empty() {
            return Err(BusError("no Redis nodes configured".into()));
        }
        let urls: Vec<String> = nodes.iter().map(|n| node_url(n)).collect();
        let mut builder = ClusterClientBuilder::new(urls.clone());
        if let Some(ca) = &tls_ca {
            builder = builder.certs(tls_certificates(ca));
        }
        let client = builder
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| BusError(e.to_string()))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection())
            .await
            .map_err(|_| BusError("timed out connecting to the Redis cluster".into()))?
            .map_err(|e| BusError(e.to_string()))?;
        let (tx, _) = broadcast::channel(LOCAL_CAPACITY);
        let (sub_tx, mut subscribed) = watch::channel(None);
        let task = tokio::spawn(subscriber(urls, tls_ca, tx.clone(), sub_tx)).abort_handle();
        let first = tokio::time::timeout(
            CONNECT_TIMEOUT.saturating_mul(2),
            subscribed.wait_for(|s| s.is_some()),
        )
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
        if !first {
            task.abort();
            return Err(BusError(format!(
                "could not subscribe to {CHANNEL} on any of {nodes:?}"
            )));
        }
        Ok(RedisBus {
            conn,
            tx,
            subscribed,
            task,
        })
    }

    /// The node the subscription currently lives on, if any.
    pub fn subscribed_node(&self) -> Option<String> {
        self.subscribed.borrow().clone()
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn parse(payload: &[u8]) -> Option<Changed> {
    let s = std::str::from_utf8(payload).ok()?;
    let (quiz_id, version) = s.rsplit_once(' ')?;
    if quiz_id.is_empty() {
        return None;
    }
    Some(Changed {
        quiz_id: quiz_id.to_string(),
        version: version.parse().ok()?,
    })
}

/// Holds one subscription at a time, rotating over `urls` when it breaks.
/// Runs until the `RedisBus` is dropped (aborted).
async fn subscriber(
    urls: Vec<String>,
    tls_ca: Option<Vec<u8>>,
    tx: broadcast::Sender<Changed>,
    subscribed: watch::Sender<Option<String>>,
) {
    // Start at a random node so that many core nodes spread their
    // subscriptions over the cluster.
    let mut next = rand::random::<u32>() as usize % urls.len();
    let mut backoff = BACKOFF_MIN;
    loop {
        let url = &urls[next % urls.len()];
        next += 1;
        // The URL may carry a password: logs and diagnostics get it without.
        let node = redacted(url);
        match subscribe_once(url, tls_ca.as_deref()).await {
            Ok((mut sink, mut stream)) => {
                subscribed.send_replace(Some(node.clone()));
                backoff = BACKOFF_MIN;
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.tick().await;
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => match parse(msg.get_payload_bytes()) {
                                // No local subscriber is fine.
                                Some(changed) => { let _ = tx.send(changed); }
                                None => tracing::warn!(
                                    payload = ?String::from_utf8_lossy(msg.get_payload_bytes()),
                                    "ignoring malformed control message"
                                ),
                            },
                            None => break,
                        },
                        _ = ping.tick() => {
                            let pong = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                subscribed.send_replace(None);
                tracing::warn!(node = %node, "control bus subscription lost, moving on");
            }
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "control bus: cannot subscribe");
                // Back off only once every node has been tried.
                if next % urls.len() == 0 {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// `url` without its userinfo (`redis://user:secret@host:port` →
/// `redis://host:port`).
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

async fn subscribe_once(
    url: &str,
    tls_ca: Option<&[u8]>,
) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), String> {
    let client = match tls_ca {
        Some(ca) => redis::Client::build_with_tls(url, tls_certificates(ca)),
        None => redis::Client::open(url),
    }
    .map_err(|e| e.to_string())?;
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(CONNECT_TIMEOUT, pubsub.subscribe(CHANNEL))
        .await
        .map_err(|_| "subscribe timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(pubsub.split())
}

#[async_trait]
impl ControlBus for RedisBus {
    async fn publish(&self, changed: Changed) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let payload = format!("{} {}", changed.quiz_id, changed.version);
        let res: Result<redis::Value, _> = tokio::time::timeout(
            CONNECT_TIMEOUT,
            redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(payload)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| BusError("publish timed out".into()))?;
        res.map(|_| ()).map_err(|e| BusError(e.to_string()))
    }

    fn subscribe(&self) -> broadcast::Receiver<Changed> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, redacted};

    #[test]
    fn urls_lose_their_password_in_logs() {
        assert_eq!(
            redacted("redis://u:p%40ss@10.0.0.1:6379"),
            "redis://10.0.0.1:6379"
        );
        assert_eq!(redacted("rediss://:pw@h:1"), "rediss://h:1");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn parses_payloads() {
        let c = parse(b"quiz-1 42").expect("valid");
        assert_eq!((c.quiz_id.as_str(), c.version), ("quiz-1", 42));
        assert!(parse(b"quiz-1").is_none());
        assert!(parse(b" 42").is_none());
        assert!(parse(b"q x").is_none());
        assert!(parse(&[0xff, b' ', b'1']).is_none());
    }
}
