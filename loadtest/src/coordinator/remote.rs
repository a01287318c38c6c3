//! Workers on other hosts: `loadtest worker --connect COORDINATOR` dials the
//! coordinator's `--listen-workers` address over TCP. The protocol on that
//! link is the pipe protocol of a local worker, unchanged: the coordinator
//! writes the [`WorkerPlan`] as JSON and ends its side of the stream (a
//! local worker's stdin closing); the worker writes JSON lines
//! ([`crate::worker::WorkerMsg`]) until it is done and closes (a local
//! worker's stdout). Only the transport differs.
//!
//! Bounded: [`accept`] waits at most `wait` for every worker, each plan is
//! written within 30 s, and a link that closes without a result is reported
//! by the collector (the run then fails its `workers_reported` check); a
//! link that stays silent ends at the run's hard stop.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::collect::FromWorker;
use super::forward_lines;
use crate::plan::WorkerPlan;

/// Wait (at most `wait`) for `n` workers to connect to `addr`; they get
/// worker numbers in the order they connected.
pub(super) async fn accept(
    addr: &str,
    n: u64,
    wait: Duration,
    log: &impl Fn(&str),
) -> anyhow::Result<Vec<(TcpStream, SocketAddr)>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("--listen-workers {addr}: cannot listen"))?;
    let local = listener.local_addr()?;
    log(&format!(
        "waiting up to {} s for {n} workers on {local} (loadtest worker --connect {local})",
        wait.as_secs()
    ));
    let deadline = tokio::time::Instant::now() + wait;
    let mut links = Vec::new();
    while (links.len() as u64) < n {
        match tokio::time::timeout_at(deadline, listener.accept()).await {
            Ok(Ok((s, peer))) => {
                let _ = s.set_nodelay(true);
                log(&format!("worker {} connected from {peer}", links.len()));
                links.push((s, peer));
            }
            Ok(Err(e)) => eprintln!("--listen-workers {local}: accept: {e}"),
            Err(_) => bail!(
                "--remote-workers {n}: only {} workers connected to {local} within {} s",
                links.len(),
                wait.as_secs()
            ),
        }
    }
    Ok(links)
}

/// Send each worker its plan, then read its JSON lines onto the returned
/// channel; the tasks reading the links are returned so the coordinator can
/// close them at the end.
pub(super) async fn send_plans(
    links: Vec<(TcpStream, SocketAddr)>,
    plans: &[WorkerPlan],
) -> anyhow::Result<(mpsc::UnboundedReceiver<FromWorker>, Vec<JoinHandle<()>>)> {
    let (tx, rx) = mpsc::unbounded_channel::<FromWorker>();
    let mut tasks = Vec::new();
    for ((stream, peer), plan) in links.into_iter().zip(plans) {
        let (read, mut write) = stream.into_split();
        let bytes = serde_json::to_vec(plan)?;
        tokio::time::timeout(Duration::from_secs(30), async {
            write.write_all(&bytes).await?;
            // End of the plan, as a local worker's stdin closing.
            write.shutdown().await
        })
        .await
        .with_context(|| {
            format!(
                "worker {} ({peer}): sending the plan timed out",
                plan.worker
            )
        })?
        .with_context(|| format!("worker {} ({peer}): sending the plan", plan.worker))?;
        let w = plan.worker;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            // The write half lives as long as the link is read.
            let _write = write;
            forward_lines(w, read, tx).await;
        }));
    }
    Ok((rx, tasks))
}
