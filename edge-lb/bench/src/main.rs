//! edge-lb-bench: a bounded load tool for the side-by-side benchmark against HAProxy.
//!
//! `edge-lb-bench backends --base-port 7101 --count 3 --seconds 600` runs echo backends
//! (`edge_lb_testing::Backend`, named core-1..N). `edge-lb-bench ws --target ADDR[,ADDR…]
//! --conns N --quizzes Q --msgs M --pid PID` opens N WebSocket connections (Q quizzes, bounded
//! concurrency), measures setups per second, the proxy's RSS growth per connection (`--pid`),
//! then measures round-trip latency at light load (10 connections × 200 sequential echoes:
//! `lat_p50_us`/`lat_p99_us`), then has every connection do M round trips at once
//! (`msgs_per_s` counts messages through the proxy, both directions, and `loaded_rtt_*`),
//! then closes them all (`proxy_cpu_us_per_close`: where a tunnel's access record is written).
//! `edge-lb-bench http --target ADDR --requests N --concurrency C --pid PID` sends N plain
//! `GET`s over C kept-alive connections and reports requests per second and the proxy's CPU
//! per request. One JSON line of results on stdout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use edge_lb_testing::{ws_connect, Backend, Client};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run echo backends on 127.0.0.1:base-port.. until --seconds elapse.
    Backends {
        #[arg(long, default_value_t = 18101)]
        base_port: u16,
        #[arg(long, default_value_t = 3)]
        count: u16,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// WebSocket load through a proxy (or straight at backends for the anchor).
    Ws {
        /// One address, or several (quiz i goes to address i mod n: the no-proxy anchor).
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 2000)]
        conns: usize,
        #[arg(long, default_value_t = 200)]
        quizzes: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 20)]
        msgs: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Proxy pid whose RSS growth is divided by the connection count.
        #[arg(long)]
        pid: Option<u32>,
        /// The echo backends' pid: their CPU per setup and per message is reported too, beside
        /// this client's own, so a proxy that makes the others work harder shows.
        #[arg(long)]
        backends_pid: Option<u32>,
        /// Label printed with the results.
        #[arg(long, default_value = "run")]
        label: String,
        /// Hard bound for the whole run.
        #[arg(long, default_value_t = 300)]
        max_seconds: u64,
    },
    /// Plain HTTP load through a proxy: kept-alive connections, sequential GETs on each.
    Http {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 20000)]
        requests: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 200)]
        quizzes: usize,
        /// Proxy pid whose CPU time is divided by the request count.
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long, default_value = "run")]
        label: String,
        #[arg(long, default_value_t = 300)]
        max_seconds: u64,
    },
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time (ns) of every thread of `pid` so far, from `/proc/PID/task/*/schedstat` (nanosecond
/// resolution, unlike the 10 ms ticks of `/proc/PID/stat`).
fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let s = std::fs::read_to_string(path).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Backends {
            base_port,
            count,
            seconds,
        } => {
            let mut v = Vec::new();
            for i in 0..count {
                let b = Backend::start(
                    &format!("core-{}", i + 1),
                    &format!("127.0.0.1:{}", base_port + i),
                )
                .await?;
                eprintln!("backend {} on {}", b.name, b.addr);
                v.push(b);
            }
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            Ok(())
        }
        Cmd::Ws {
            target,
            conns,
            quizzes,
            concurrency,
            msgs,
            size,
            pid,
            backends_pid,
            label,
            max_seconds,
        } => {
            let targets: Vec<SocketAddr> = target
                .split(',')
                .map(|t| t.parse())
                .collect::<Result<_, _>>()?;
            let r = tokio::time::timeout(
                Duration::from_secs(max_seconds),
                run_ws(
                    targets,
                    conns,
                    quizzes.max(1),
                    concurrency,
                    msgs,
                    size,
                    pid,
                    backends_pid,
                ),
            )
            .await
            .map_err(|_| anyhow::anyhow!("run exceeded {max_seconds} s"))??;
            let mut v = r;
            v["label"] = label.into();
            println!("{v}");
            Ok(())
        }
        Cmd::Http {
            target,
            requests,
            concurrency,
            quizzes,
            pid,
            label,
            max_seconds,
        } => {
            let mut v = tokio::time::timeout(
                Duration::from_secs(max_seconds),
                run_http(target, requests, concurrency.max(1), quizzes.max(1), pid),
            )
            .await
            .map_err(|_| anyhow::anyhow!("run exceeded {max_seconds} s"))??;
            v["label"] = label.into();
            println!("{v}");
            Ok(())
        }
    }
}

/// `requests` GETs over `concurrency` kept-alive connections (each sequential), with a token
/// in the query as a client's would be.
async fn run_http(
    target: SocketAddr,
    requests: usize,
    concurrency: usize,
    quizzes: usize,
    pid: Option<u32>,
) -> anyhow::Result<serde_json::Value> {
    let cpu0 = pid.and_then(cpu_ns);
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let n = requests / concurrency + usize::from(w < requests % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0usize;
            let mut s = tokio::net::TcpStream::connect(target).await?;
            s.set_nodelay(true)?;
            for i in 0..n {
                let q = (w * 7919 + i) % quizzes;
                let req = format!(
                    "GET /v1/quizzes/q{q}/state?token=v2.p.q{q}.player.1999999999.mac HTTP/1.1\r\nHost: bench\r\n\r\n"
                );
                if get(&mut s, req.as_bytes()).await? == 200 {
                    ok += 1;
                }
            }
            Ok::<usize, anyhow::Error>(ok)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await??;
    }
    let took = t0.elapsed();
    let cpu1 = pid.and_then(cpu_ns);
    Ok(serde_json::json!({
        "requests": requests,
        "ok": ok,
        "requests_per_s": ok as f64 / took.as_secs_f64(),
        "proxy_cpu_us_per_request": match (cpu0, cpu1) {
            (Some(a), Some(b)) if ok > 0 => Some(b.saturating_sub(a) as f64 / 1000.0 / ok as f64),
            _ => None,
        },
    }))
}

/// One request on a kept-alive connection; returns the status once the whole response (by
/// `content-length`) is read.
async fn get(s: &mut tokio::net::TcpStream, req: &[u8]) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(req).await?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if s.read_buf(&mut buf).await? == 0 {
            anyhow::bail!("closed mid-response");
        }
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])?;
    let status: u16 = head.split(' ').nth(1).unwrap_or("0").parse()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        if s.read_buf(&mut buf).await? == 0 {
            anyhow::bail!("closed mid-body");
        }
    }
    Ok(status)
}

/// CPU (ns) so far of the proxy, the backends and this client, and the machine's busy time
/// (all CPUs, from `/proc/stat`): one snapshot per phase boundary.
#[derive(Clone, Copy)]
struct Cpu {
    proxy: Option<u64>,
    backends: Option<u64>,
    client: Option<u64>,
    machine_busy: Option<u64>,
}

impl Cpu {
    fn now(pid: Option<u32>, backends: Option<u32>) -> Cpu {
        Cpu {
            proxy: pid.and_then(cpu_ns),
            backends: backends.and_then(cpu_ns),
            client: cpu_ns(std::process::id()),
            machine_busy: machine_busy_ns(),
        }
    }
}

/// Busy time of every CPU of the machine so far (user + nice + system + irq + softirq +
/// steal, in ns), from the first line of `/proc/stat` (USER_HZ ticks).
fn machine_busy_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?;
    Some(busy * 10_000_000)
}

#[allow(clippy::too_many_arguments)]
async fn run_ws(
    targets: Vec<SocketAddr>,
    conns: usize,
    quizzes: usize,
    concurrency: usize,
    msgs: usize,
    size: usize,
    pid: Option<u32>,
    backends_pid: Option<u32>,
) -> anyhow::Result<serde_json::Value> {
    let rss0 = pid.and_then(rss_kib);
    let all0 = Cpu::now(pid, backends_pid);
    let cpu0 = all0.proxy;
    // Phase 1: set up connections with bounded concurrency.
    let t0 = Instant::now();
    let (mut clients, failed) = connect_all(&targets, conns, quizzes, concurrency).await?;
    let setup = t0.elapsed();
    let all1 = Cpu::now(pid, backends_pid);
    let cpu1 = all1.proxy;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = pid.and_then(rss_kib);
    // Phase 2, latency at light load: 10 connections each do 200 sequential round trips.
    let lat_n = clients.len().min(10);
    let rest = clients.split_off(lat_n);
    let payload = "x".repeat(size);
    let (mut clients, lat) = round_trips(clients, 200, &payload).await?;
    clients.extend(rest);
    // Phase 3, throughput: every connection does `msgs` round trips, all at once.
    let t1 = Instant::now();
    let all2 = Cpu::now(pid, backends_pid);
    let cpu2 = all2.proxy;
    let (mut clients, hist) = round_trips(clients, msgs, &payload).await?;
    let msg_time = t1.elapsed();
    let all3 = Cpu::now(pid, backends_pid);
    let cpu3 = all3.proxy;
    let closed = clients.len();
    for c in clients.iter_mut() {
        let _ = c.close().await;
    }
    drop(clients);
    // The proxy ends each tunnel (and writes its access record) once both sides are gone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu4 = pid.and_then(cpu_ns);
    let per_conn = match (rss0, rss1) {
        (Some(a), Some(b)) if conns > failed => {
            Some(((b.saturating_sub(a)) as f64 * 1024.0) / (conns - failed) as f64)
        }
        _ => None,
    };
    // The proxy's own CPU per unit of work: independent of how fast the client and the
    // backends (sharing the machine) can go, so steadier than the rates on a noisy box.
    let per = |a: Option<u64>, b: Option<u64>, n: usize| match (a, b) {
        (Some(a), Some(b)) if n > 0 => Some(b.saturating_sub(a) as f64 / 1000.0 / n as f64),
        _ => None,
    };
    let setups = conns - failed;
    let msgs_moved = 2 * hist.len() as usize;
    Ok(serde_json::json!({
        "backends_cpu_us_per_setup": per(all0.backends, all1.backends, setups),
        "client_cpu_us_per_setup": per(all0.client, all1.client, setups),
        "machine_busy_us_per_setup": per(all0.machine_busy, all1.machine_busy, setups),
        "backends_cpu_us_per_msg": per(all2.backends, all3.backends, msgs_moved),
        "client_cpu_us_per_msg": per(all2.client, all3.client, msgs_moved),
        "machine_busy_us_per_msg": per(all2.machine_busy, all3.machine_busy, msgs_moved),
        "proxy_cpu_us_per_setup": per(cpu0, cpu1, conns - failed),
        "proxy_cpu_us_per_msg": per(cpu2, cpu3, 2 * hist.len() as usize),
        "proxy_cpu_us_per_close": per(cpu3, cpu4, closed),
        "conns": conns,
        "failed": failed,
        "setup_s": setup.as_secs_f64(),
        "setups_per_s": (conns - failed) as f64 / setup.as_secs_f64(),
        "round_trips": hist.len(),
        "msgs_per_s": (2 * hist.len()) as f64 / msg_time.as_secs_f64(),
        "lat_p50_us": lat.value_at_quantile(0.5),
        "lat_p99_us": lat.value_at_quantile(0.99),
        "loaded_rtt_p50_us": hist.value_at_quantile(0.5),
        "loaded_rtt_p99_us": hist.value_at_quantile(0.99),
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "bytes_per_conn": per_conn,
    }))
}

/// Open `conns` WebSockets (quiz i % `quizzes`, to target quiz % targets), at most
/// `concurrency` handshakes at a time, each waiting for its backend's greeting. Returns the
/// clients and how many failed.
async fn connect_all(
    targets: &[SocketAddr],
    conns: usize,
    quizzes: usize,
    concurrency: usize,
) -> anyhow::Result<(Vec<Client>, usize)> {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(conns);
    for i in 0..conns {
        let permit = sem.clone().acquire_owned().await?;
        let q = i % quizzes;
        let addr = targets[q % targets.len()];
        tasks.push(tokio::spawn(async move {
            let r = async {
                let mut c = ws_connect(addr, &format!("/v1/quizzes/q{q}/ws?token=bench")).await?;
                c.node().await?;
                Ok::<Client, String>(c)
            }
            .await;
            drop(permit);
            r
        }));
    }
    let mut clients = Vec::with_capacity(conns);
    let mut failed = 0usize;
    for t in tasks {
        match t.await {
            Ok(Ok(c)) => clients.push(c),
            _ => failed += 1,
        }
    }
    Ok((clients, failed))
}

/// Every client does `n` sequential echoes of `payload`, all clients at once; a client stops
/// at its first failure. Returns the clients and the round-trip times (µs) of them all.
async fn round_trips(
    clients: Vec<Client>,
    n: usize,
    payload: &str,
) -> anyhow::Result<(Vec<Client>, Histogram<u64>)> {
    let mut tasks = Vec::with_capacity(clients.len());
    for mut c in clients {
        let payload = payload.to_string();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            for _ in 0..n {
                let s = Instant::now();
                if c.send_text(&payload).await.is_err() || c.recv_text().await.is_err() {
                    break;
                }
                let _ = h.record(s.elapsed().as_micros().max(1) as u64);
            }
            (c, h)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut clients = Vec::new();
    for t in tasks {
        if let Ok((c, h)) = t.await {
            all.add(h)?;
            clients.push(c);
        }
    }
    Ok((clients, all))
}
