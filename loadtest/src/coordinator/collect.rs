//! The load phase as the coordinator sees it: the workers' per-second progress merged into an
//! [`Aggregator`] (and their summed gauges passed on to the hosts), their results gathered,
//! the host events (a node killed for `node_failure` when its question opens), the processes
//! under test sampled from /proc each second, and a live line printed. It ends when every
//! worker has exited, or at the hard stop (the workers are then killed).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::{mpsc, watch};

use super::host::{kill_node, Gauges, HostEvent};
use crate::clock::wall_us;
use crate::metrics::{Aggregator, Metrics};
use crate::procmon::Monitor;
use crate::scenario::Scenario;
use crate::worker::{WorkerMsg, WorkerResult};

/// A line from a worker's stdout or TCP link (None: the worker exited or
/// its link closed).
pub(super) type FromWorker = (u64, Option<WorkerMsg>);

/// What the load phase gathered.
pub(super) struct Collected {
    pub(super) agg: Aggregator,
    pub(super) results: Vec<WorkerResult>,
    pub(super) host_errors: Vec<String>,
    pub(super) monitor: Monitor,
}

pub(super) struct Collector<'a> {
    sc: &'a Scenario,
    quiet: bool,
    /// The run's time zero (wall clock, µs): the live line's and the samples' clock.
    t0: u64,
    /// The node `node_failure` kills, once.
    kill_pid: Option<u32>,
    killed: bool,
    /// The workers' gauges summed, for the hosts (kept open by the caller until the hosts are
    /// stopped).
    gauge_tx: &'a watch::Sender<Gauges>,
    gauges: BTreeMap<u64, Gauges>,
    open_workers: u64,
    /// Processes under test, then the workers: sampled each second.
    watched: Vec<(u32, String)>,
    worker_pids: Vec<(u32, String)>,
    tty: bool,
    ticks: u64,
    out: Collected,
}

enum Flow {
    Go,
    Stop,
}

impl<'a> Collector<'a> {
    pub(super) fn new(
        sc: &'a Scenario,
        quiet: bool,
        t0: u64,
        kill_pid: Option<u32>,
        gauge_tx: &'a watch::Sender<Gauges>,
        children: &[Child],
        workers: u64,
    ) -> Collector<'a> {
        let mut watched: Vec<(u32, String)> = sc
            .target
            .watch_pids
            .iter()
            .map(|p| {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                (*p, comm.trim().to_string())
            })
            .collect();
        watched.extend(crate::procmon::pids_named(&sc.target.watch_process_names));
        let worker_pids = children
            .iter()
            .filter_map(|c| c.id())
            .map(|p| (p, "loadtest-worker".to_string()))
            .collect();
        Collector {
            sc,
            quiet,
            t0,
            kill_pid,
            killed: false,
            gauge_tx,
            gauges: BTreeMap::new(),
            open_workers: workers,
            watched,
            worker_pids,
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            ticks: 0,
            out: Collected {
                agg: Aggregator::default(),
                results: Vec::new(),
                host_errors: Vec::new(),
                monitor: Monitor::default(),
            },
        }
    }

    /// Run until every worker has exited, or until `hard_stop` (then kill `children`).
    pub(super) async fn run(
        mut self,
        mut from_workers: mpsc::UnboundedReceiver<FromWorker>,
        mut host_events: mpsc::UnboundedReceiver<HostEvent>,
        children: &mut [Child],
        hard_stop: tokio::time::Instant,
    ) -> Collected {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut host_open = true;
        loop {
            tokio::select! {
                m = from_workers.recv() => {
                    if let Flow::Stop = self.on_worker(m) {
                        break;
                    }
                }
                ev = host_events.recv(), if host_open => match ev {
                    Some(ev) => self.on_host(ev),
                    None => host_open = false,
                },
                _ = tick.tick() => {
                    self.on_tick();
                    if tokio::time::Instant::now() >= hard_stop {
                        self.out.host_errors.push(format!(
                            "{} workers stopped at the hard stop (verification grace exceeded)",
                            self.open_workers
                        ));
                        for c in children.iter_mut() {
                            let _ = c.start_kill();
                        }
                        break;
                    }
                }
            }
        }
        if self.tty && !self.quiet {
            eprintln!();
        }
        self.out
    }

    fn on_worker(&mut self, m: Option<FromWorker>) -> Flow {
        match m {
            Some((
                w,
                Some(WorkerMsg::Progress {
                    worker,
                    second,
                    connected,
                    joined,
                    done,
                    metrics,
                }),
            )) => {
                match Metrics::from_wire(&metrics) {
                    Ok(m) => self.out.agg.add_interval(worker, second, connected, &m),
                    Err(e) => eprintln!("worker {w}: {e}"),
                }
                self.gauges.insert(
                    worker,
                    Gauges {
                        connected,
                        joined,
                        done,
                    },
                );
                let total = self.gauges.values().fold(Gauges::default(), |a, g| Gauges {
                    connected: a.connected + g.connected,
                    joined: a.joined + g.joined,
                    done: a.done + g.done,
                });
                let _ = self.gauge_tx.send(total);
            }
            Some((_, Some(WorkerMsg::Result(r)))) => self.out.results.push(*r),
            Some((w, None)) => {
                self.open_workers -= 1;
                if !self.out.results.iter().any(|r| r.worker == w) {
                    self.out.host_errors.push(format!(
                        "worker {w} exited (or its link closed) without a result"
                    ));
                }
                if self.open_workers == 0 {
                    return Flow::Stop;
                }
            }
            None => return Flow::Stop,
        }
        Flow::Go
    }

    fn on_host(&mut self, ev: HostEvent) {
        match ev {
            HostEvent::Opened { quiz, question } => {
                let Some(nf) = &self.sc.node_failure else {
                    return;
                };
                let Some(pid) = self.kill_pid else { return };
                if self.killed || quiz != 0 || question != nf.at_question {
                    return;
                }
                self.killed = true;
                let after = nf.after_ms;
                let tx = self.gauge_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after)).await;
                    match kill_node(pid) {
                        Ok(()) => eprintln!("node_failure: killed pid {pid}"),
                        Err(e) => eprintln!("node_failure: {e}"),
                    }
                    drop(tx);
                });
            }
            HostEvent::Error(e) => {
                if !self.quiet {
                    eprintln!("host: {e}");
                }
                self.out.host_errors.push(e);
            }
        }
    }

    /// Once a second: sample the processes, print the live line.
    fn on_tick(&mut self) {
        let t = (wall_us().saturating_sub(self.t0)) as f64 / 1e6;
        self.out.monitor.tick(t, &self.watched);
        self.out.monitor.tick(t, &self.worker_pids);
        self.ticks += 1;
        if self.quiet {
            return;
        }
        let window = if self.tty { 1 } else { 5 };
        let line = progress_line(t, &self.out.agg, &self.gauges, self.sc.load.players, window);
        if self.tty {
            // One live line, rewritten in place.
            eprint!("\r\x1b[K{line}");
        } else if self.ticks % 5 == 0 {
            eprintln!("{line}");
        }
    }
}

fn progress_line(
    t: f64,
    agg: &Aggregator,
    gauges: &BTreeMap<u64, Gauges>,
    players: u64,
    window: usize,
) -> String {
    let joined: u64 = gauges.values().map(|g| g.joined).sum();
    let done: u64 = gauges.values().map(|g| g.done).sum();
    let Some(m) = agg.recent(window) else {
        return format!("[{t:6.1}s] waiting for workers");
    };
    let w = window as u64;
    let (ans, frames, p99a, p99q, errs) = (
        m.counter("answers_sent") / w,
        m.counter("frames_in") / w,
        m.hist(crate::metrics::H::Answer),
        m.hist(crate::metrics::H::Question),
        m.counters
            .iter()
            .filter(|(k, _)| k.starts_with("error."))
            .map(|(_, v)| v)
            .sum::<u64>()
            / w,
    );
    let p = |h: &hdrhistogram::Histogram<u64>| {
        if h.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}ms", h.value_at_quantile(0.99) as f64 / 1000.0)
        }
    };
    let total_errs: u64 = agg
        .total
        .counters
        .iter()
        .filter(|(k, _)| k.starts_with("error."))
        .map(|(_, v)| v)
        .sum();
    format!(
        "[{t:6.1}s] joined {joined}/{players} connected {} done {done} | answers/s {ans} frames/s {frames} | p99 answer {} question {} | errors {errs}/s ({total_errs} total)",
        agg.connected_now(),
        p(p99a),
        p(p99q)
    )
}
