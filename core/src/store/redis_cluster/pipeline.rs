//! The wire: building the cluster client, and one pipeline of script calls
//! to one slot's master (EVALSHA, NOSCRIPT → EVAL, then WAIT for the
//! replicas when the calls write).

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{ServerErrorKind, Value};

use super::scripts::Lua;
use super::shared::{unavailable, RedisOptions, Shared};
use crate::store::StoreError;

/// One script call, routed by the slot of its keys.
pub(super) struct Call {
    pub(super) script: &'static Lua,
    pub(super) keys: Vec<String>,
    pub(super) args: Vec<String>,
}

pub(super) fn cluster_client(
    nodes: &[String],
    opts: &RedisOptions,
) -> Result<ClusterClient, StoreError> {
    if nodes.is_empty() {
        return Err(unavailable("no Redis nodes configured"));
    }
    let urls: Vec<String> = nodes.iter().map(|n| node_url(n)).collect();
    let mut builder = ClusterClientBuilder::new(urls);
    if let Some(ca) = &opts.tls_ca {
        builder = builder.certs(tls_certificates(ca));
    }
    builder
        .connection_timeout(opts.connect_timeout)
        .response_timeout(opts.command_timeout)
        // A failover takes a few seconds; the client re-routes (MOVED,
        // READONLY, CLUSTERDOWN) within this budget, the store's own attempts
        // cover the rest.
        .retries(6)
        .min_retry_wait(50)
        .max_retry_wait(1000)
        .build()
        .map_err(unavailable)
}

/// Trust `ca_pem` (a private CA) for `rediss://` connections.
pub(crate) fn tls_certificates(ca_pem: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca_pem.to_vec()),
    }
}

/// Accepts `host:port` as well as full `redis://` URLs.
pub(crate) fn node_url(node: &str) -> String {
    if node.contains("://") {
        node.to_string()
    } else {
        format!("redis://{node}")
    }
}

/// A single call in its own pipeline to the master of its first key's slot,
/// followed by WAIT when `durable`.
pub(super) async fn run_one(
    shared: &Shared,
    call: &Call,
    durable: bool,
) -> Result<Value, StoreError> {
    let route = Route::with_key(&call.keys[0], SlotAddr::Master);
    run_pipeline(shared, route, vec![call], durable)
        .await
        .pop()
        .unwrap_or_else(|| Err(unavailable("empty reply")))
}

fn push_call(pipe: &mut redis::Pipeline, call: &Call, by_sha: bool) {
    let mut cmd = if by_sha {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&call.script.sha);
        c
    } else {
        let mut c = redis::cmd("EVAL");
        c.arg(call.script.body);
        c
    };
    cmd.arg(call.keys.len()).arg(&call.keys).arg(&call.args);
    pipe.add_command(cmd);
}

/// Sends `calls` (all in the slot of `route`) as one pipeline to that slot's
/// master, followed by WAIT when `durable`; returns one result per call.
/// Calls answered NOSCRIPT are re-sent once as EVAL.
pub(super) async fn run_pipeline(
    shared: &Shared,
    route: Route,
    calls: Vec<&Call>,
    durable: bool,
) -> Vec<Result<Value, StoreError>> {
    let n = calls.len();
    let mut results: Vec<Option<Result<Value, StoreError>>> = (0..n).map(|_| None).collect();
    let mut pending: Vec<usize> = (0..n).collect();
    for by_sha in [true, false] {
        if pending.is_empty() {
            break;
        }
        let out = send_once(shared, route, &calls, &pending, by_sha, durable).await;
        let mut retry = Vec::new();
        match out {
            Err(e) => {
                for &i in &pending {
                    results[i] = Some(Err(unavailable(&e)));
                }
            }
            Ok(values) => {
                for (&i, v) in pending.iter().zip(values) {
                    match v {
                        Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript) => {
                            retry.push(i);
                            results[i] = Some(Err(unavailable("NOSCRIPT")));
                        }
                        Value::ServerError(e) => {
                            results[i] = Some(Err(unavailable(format!(
                                "{} {}",
                                e.code(),
                                e.details().unwrap_or("")
                            ))));
                        }
                        v => results[i] = Some(Ok(v)),
                    }
                }
            }
        }
        pending = retry;
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(unavailable("no reply"))))
        .collect()
}

/// One pipeline round trip: the calls at `idx`, then WAIT if `durable`.
/// A WAIT reaching fewer replicas than required fails every call (each is
/// idempotent, so the caller's retry is safe).
async fn send_once(
    shared: &Shared,
    route: Route,
    calls: &[&Call],
    idx: &[usize],
    by_sha: bool,
    durable: bool,
) -> Result<Vec<Value>, String> {
    let opts = &shared.opts;
    let wait = durable && opts.wait_replicas > 0;
    let mut pipe = redis::pipe();
    for &i in idx {
        push_call(&mut pipe, calls[i], by_sha);
    }
    if wait {
        // Keyless, so it does not affect routing: the pipeline goes to the
        // master of `route`'s slot and WAIT runs right after the scripts on
        // the same connection.
        pipe.add_command(
            redis::cmd("WAIT")
                .arg(opts.wait_replicas)
                .arg(opts.wait_timeout.as_millis() as u64)
                .clone(),
        );
    }
    let count = idx.len() + usize::from(wait);
    let mut conn = shared.conn.clone();
    let deadline = opts.command_timeout
        + if wait {
            opts.wait_timeout
        } else {
            Duration::ZERO
        };
    let mut values = tokio::time::timeout(
        deadline,
        conn.route_pipeline(pipe, 0, count, SingleNodeRoutingInfo::SpecificNode(route)),
    )
    .await
    .map_err(|_| "redis pipeline timed out".to_string())?
    .map_err(|e| e.to_string())?;
    if values.len() != count {
        return Err(format!(
            "pipeline returned {} replies for {count} commands",
            values.len()
        ));
    }
    if wait {
        match values.pop() {
            Some(Value::Int(acked)) if acked >= i64::from(opts.wait_replicas) => {}
            Some(Value::Int(acked)) => {
                return Err(format!(
                    "write reached {acked} of {} replicas within {:?}",
                    opts.wait_replicas, opts.wait_timeout
                ))
            }
            other => return Err(format!("unexpected WAIT reply {other:?}")),
        }
    }
    Ok(values)
}
