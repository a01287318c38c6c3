//! Small pieces shared by the load examples (`e2e_answers`, `fanout`): a
//! keep-alive HTTP/1.1 client, a hand-written WebSocket client (no client
//! library: clients must be cheap, thousands per process), core run in a
//! child process, and CPU time from /proc. Not an example itself
//! (`examples/common/mod.rs` is not auto-discovered).
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The shipped binary's allocator (`src/main.rs`), so a bench's core (run in
/// this process or its child) costs what the real one does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// One keep-alive HTTP/1.1 connection.
pub struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Http> {
        Ok(Http {
            stream: TcpStream::connect(addr).await?,
            buf: Vec::new(),
        })
    }

    /// Sends one request, returns (status, JSON body or Null).
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        bearer: Option<&str>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let body = body.unwrap_or("");
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(req.as_bytes()).await?;
        let (status, body) = self.read_response().await?;
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Ok((status, v))
    }

    /// Sends a body-less request, returns the body as text (`/metrics`).
    pub async fn call_raw(&mut self, method: &str, path: &str) -> anyhow::Result<String> {
        let req = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await?;
        let (_, body) = self.read_response().await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Reads one response: (status, body of `Content-Length` bytes).
    async fn read_response(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line: {head}"))?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < head_end + len {
            self.fill().await?;
        }
        Ok((
            status,
            self.buf.drain(..head_end + len).skip(head_end).collect(),
        ))
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "HTTP connection closed");
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Connects from `source` (an address of 127.0.0.0/8, to spread ports).
pub async fn connect_from(source: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    sock.connect(addr).await
}

/// Opens a WebSocket to core; returns the stream and what was read past the
/// 101 response (the start of the first frames).
pub async fn ws_open(
    source: Option<IpAddr>,
    addr: SocketAddr,
    quiz: &str,
    token: &str,
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut s = connect_from(source, addr).await?;
    let req = format!(
        "GET /v1/quizzes/{quiz}/ws?token={token} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk)).await??;
        anyhow::ensure!(n > 0, "closed during the upgrade");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            anyhow::ensure!(
                buf.starts_with(b"HTTP/1.1 101"),
                "upgrade refused: {}",
                String::from_utf8_lossy(&buf[..i])
            );
            return Ok((s, buf.split_off(i + 4)));
        }
    }
}

/// A masked client text frame.
pub fn client_text(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x81);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// An unmasked server text frame (what core writes).
pub fn server_text(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if n <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// Splits server frames off the front of `buf`: calls `f(opcode, payload)`
/// for each complete frame and keeps the incomplete rest.
pub fn drain_frames(buf: &mut Vec<u8>, mut f: impl FnMut(u8, &[u8])) {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        if rest.len() < 2 {
            break;
        }
        let (len, hdr) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&rest[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if rest.len() < hdr + len {
            break;
        }
        f(rest[0] & 0x0f, &rest[hdr..hdr + len]);
        at += hdr + len;
    }
    buf.drain(..at);
}

/// User + system CPU seconds of process `pid` (Linux /proc), 0 if unknown.
pub fn cpu_seconds(pid: u32) -> f64 {
    let (user, kernel) = cpu_split(pid);
    user + kernel
}

/// CPU seconds of a process (all its threads) in user space and in the
/// kernel, (0, 0) if unknown. On loopback the kernel part of a socket write
/// includes the receiving side's TCP work, so it is the part no user-space
/// change can cut.
pub fn cpu_split(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // Fields after the command name, which is in parentheses.
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return (0.0, 0.0);
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 here.
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

/// Busy CPU seconds of the whole machine (all cores; /proc/stat: user +
/// nice + system + irq + softirq + steal), 0 if unknown.
pub fn machine_busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| f.get(i))
        .sum::<f64>();
    busy / 100.0
}

/// Main-thread CPU seconds of a Redis server (`INFO cpu`), 0 if unknown.
pub async fn redis_main_cpu(node: &str) -> f64 {
    let Some(info) = redis_info(node, "cpu").await else {
        return 0.0;
    };
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_user_main_thread" || *k == "used_cpu_sys_main_thread")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// `INFO <section>` of one Redis node, on a connection of its own; `None`
/// when the node cannot be reached (the callers then report nothing rather
/// than fail the run).
pub async fn redis_info(node: &str, section: &str) -> Option<String> {
    let client = redis::Client::open(format!("redis://{node}")).ok()?;
    let mut c = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut c)
        .await
        .ok()
}

/// CPU seconds spent by core, the client (this process), the Redis master
/// under test (main thread) and the whole machine, between two snapshots.
#[derive(Clone, Copy, Default)]
pub struct CpuSnap {
    pub core: f64,
    /// The kernel's part of `core`.
    pub core_kernel: f64,
    pub client: f64,
    pub redis: f64,
    pub machine: f64,
}

impl CpuSnap {
    pub async fn take(core_pid: u32, master: &str) -> CpuSnap {
        let (core_user, core_kernel) = cpu_split(core_pid);
        CpuSnap {
            core: core_user + core_kernel,
            core_kernel,
            client: cpu_seconds(std::process::id()),
            redis: redis_main_cpu(master).await,
            machine: machine_busy_seconds(),
        }
    }

    pub fn since(self, before: CpuSnap) -> CpuSnap {
        CpuSnap {
            core: self.core - before.core,
            core_kernel: self.core_kernel - before.core_kernel,
            client: self.client - before.client,
            redis: self.redis - before.redis,
            machine: self.machine - before.machine,
        }
    }

    pub fn add(&mut self, d: CpuSnap) {
        self.core += d.core;
        self.core_kernel += d.core_kernel;
        self.client += d.client;
        self.redis += d.redis;
        self.machine += d.machine;
    }

    /// "core X us (kernel K), Redis Y us, client Z us, rest W us per answer".
    pub fn per(&self, answers: u64) -> String {
        let n = answers.max(1) as f64 / 1e6;
        format!(
            "CPU per answer: core {:.1} us (kernel {:.1}), Redis master {:.1} us, client {:.1} us, rest of the machine (Kafka, replicas, other work) {:.0} us",
            self.core / n,
            self.core_kernel / n,
            self.redis / n,
            self.client / n,
            (self.machine - self.core - self.client - self.redis).max(0.0) / n
        )
    }
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_listening(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{addr} not listening after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs quiz-core with `config` in this process until killed (the example's
/// `serve` mode, started as a child so that core is a process of its own).
pub fn serve_core(config: quiz_core::Config) -> anyhow::Result<()> {
    // Core's warnings (store retries, failed presentations) go to stderr.
    quiz_core::init_tracing(&config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.listen).await?;
        let shutdown = quiz_core::Shutdown::new();
        quiz_core::run(config, listener, shutdown).await
    })
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18_080)
}

// ------------------------------------------- the redis-benchmark anchor

/// The cluster's seed nodes: `QUIZ_REDIS_NODES` (comma-separated
/// `host:port`), else the local stack's `127.0.0.1:7000..=7005`.
pub fn redis_nodes() -> Vec<String> {
    match std::env::var("QUIZ_REDIS_NODES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => (7000..=7005).map(|p| format!("127.0.0.1:{p}")).collect(),
    }
}

/// The `host:port` of the master owning `key`'s slot.
pub async fn master_of(seed: &str, key: &str) -> anyhow::Result<String> {
    let client = redis::Client::open(format!("redis://{seed}"))?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut c)
        .await?;
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await?;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") {
            continue;
        }
        let owns = f[8..].iter().any(|r| match r.split_once('-') {
            Some((a, b)) => matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot)),
            None => r.parse::<u16>().ok() == Some(slot),
        });
        if owns {
            if let Some(addr) = f[1].split('@').next() {
                return Ok(addr.to_string());
            }
        }
    }
    anyhow::bail!("no master owns slot {slot}")
}

/// Finds a quiz id (starting with `prefix`) hashing to the same slot as `{bench}`: store and anchor
/// then load the very same Redis process.
pub fn quiz_id_in_slot_of_bench(prefix: &str, run: usize) -> String {
    use redis::cluster_routing::{Route, SlotAddr};
    let target = Route::with_key("{bench}", SlotAddr::Master);
    let salt = rand::random::<u32>();
    for i in 0..1_000_000u32 {
        let id = format!("{prefix}{run}-{salt:x}-{i}");
        if Route::with_key(format!("{{{id}}}"), SlotAddr::Master) == target {
            return id;
        }
    }
    // Astronomically unlikely; any quiz still measures the store.
    format!("{prefix}{run}-{salt:x}")
}

pub fn anchor(master: &str, answers: usize) -> anyhow::Result<f64> {
    let (host, port) = master.rsplit_once(':').unwrap_or((master, "7000"));
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "-c", "50", "-n"])
        .arg(answers.to_string())
        .args([
            "-P",
            "16",
            "-q",
            "ZINCRBY",
            "quiz:{bench}:leaderboard",
            "1",
            "__rand_int__",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last line reads "<command>: 123456.78 requests per second, p50=…".
    let rps = text
        .rsplit(": ")
        .find_map(|s| {
            s.split(" requests per second")
                .next()?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("cannot parse redis-benchmark output: {text}"))?;
    Ok(rps)
}

/// The median of a few runs (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
