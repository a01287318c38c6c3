//! The Redis client's floor for core's answer batches: what a pipeline of
//! one script call carrying K answers plus a `WAIT` costs the CLIENT
//! process, per answer, through redis-rs' cluster connection (the way
//! `RedisClusterStore`'s batcher sends it) and through a bare socket with
//! the RESP written and read by hand (the least any client can do).
//!
//! ```text
//! deploy/local/stack up
//! cargo run --release -p quiz-core --example redis_floor -- \
//!     [--batches 20000] [--answers-per-batch 45] [--in-flight 8] [--runs 3] \
//!     [--reply lines|ints|values]
//! ```
//! Each run measures both clients in turn, each in a child process of its
//! own (`redis_floor child redis-rs|raw …`), whose user and system CPU
//! (/proc) over the batches, divided by the answers, is printed. The
//! script stands in for `apply_batch` on the client's side: the same
//! arguments (one packed string of ~100 bytes per answer) and the same
//! reply, with almost no work in Redis: `lines` one string with a line per
//! answer (`A <score> <rank>`), `ints` 3 integers per answer (a verdict
//! code, a score, a rank), `values` 3 values per answer (a tag string, a
//! score, a rank; `apply_batch`'s reply until 2026-12-05). `QUIZ_REDIS_NODES` (default `127.0.0.1:7000..7005`) names the
//! cluster; the key `{bench}:floor` picks the master. Recorded in
//! `docs/performance.md` ("The Redis client's floor").

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use redis::cluster::ClusterClient;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};

/// Returns one string with a line per argument, like `apply_batch`'s reply.
const SCRIPT_LINES: &str = "local r = {} for i = 1, #ARGV do \
    r[i] = 'A ' .. (1000 + i) .. ' ' .. i .. '\\n' end return table.concat(r)";
/// Returns 3 integers per argument (a verdict code, a score, a rank).
const SCRIPT_INTS: &str = "local r = {} for i = 1, #ARGV do \
    r[#r + 1] = 0 r[#r + 1] = 1000 + i r[#r + 1] = i end return r";
/// Returns 3 values per argument, like `apply_batch`'s reply before.
const SCRIPT_VALUES: &str = "local r = {} for i = 1, #ARGV do \
    r[#r + 1] = 'A' r[#r + 1] = 1000 + i r[#r + 1] = i end return r";
const KEY: &str = "{bench}:floor";

#[derive(Clone)]
struct Args {
    batches: usize,
    per_batch: usize,
    in_flight: usize,
    runs: usize,
    /// The reply's shape.
    reply: Shape,
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// One string, a line per answer.
    Lines,
    /// 3 integers per answer.
    Ints,
    /// 3 values per answer, the first a string.
    Values,
}

impl Args {
    fn script(&self) -> &'static str {
        match self.reply {
            Shape::Lines => SCRIPT_LINES,
            Shape::Ints => SCRIPT_INTS,
            Shape::Values => SCRIPT_VALUES,
        }
    }

    /// The values a client must at least look at in one script reply.
    fn leaves(&self) -> usize {
        match self.reply {
            Shape::Lines => 1,
            Shape::Ints | Shape::Values => 3 * self.per_batch,
        }
    }

    /// Whether the script's reply has the shape asked for.
    fn reply_ok(&self, v: &redis::Value) -> bool {
        match v {
            redis::Value::BulkString(b) if self.reply == Shape::Lines => {
                b.iter().filter(|c| **c == b'\n').count() == self.per_batch
            }
            redis::Value::Array(x) if self.reply != Shape::Lines => x.len() == 3 * self.per_batch,
            _ => false,
        }
    }
}

fn parse_args(argv: &[String]) -> anyhow::Result<Args> {
    let mut a = Args {
        batches: 20_000,
        per_batch: 45,
        in_flight: 8,
        runs: 3,
        reply: Shape::Lines,
    };
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{k} needs a value"))?;
        if k == "--reply" {
            a.reply = match v.as_str() {
                "lines" => Shape::Lines,
                "ints" => Shape::Ints,
                "values" => Shape::Values,
                other => anyhow::bail!("--reply lines|ints|values, not {other}"),
            };
            continue;
        }
        let v: usize = v.parse()?;
        match k.as_str() {
            "--batches" => a.batches = v.clamp(1, 1_000_000),
            "--answers-per-batch" => a.per_batch = v.clamp(1, 256),
            "--in-flight" => a.in_flight = v.clamp(1, 64),
            "--runs" => a.runs = v.clamp(1, 20),
            _ => anyhow::bail!("unknown option {k}"),
        }
    }
    Ok(a)
}

/// One answer's packed argument, the size of `apply_batch`'s.
fn answer_arg(i: usize) -> String {
    format!(
        "1 870 0,2 {:016x}|c10;870;2100;1764201234567;0,2 p-{:08}-a1b2c3d4:7",
        i as u64 * 7919,
        i
    )
}

/// This process's user + system CPU so far, in seconds.
fn cpu_s() -> f64 {
    common::cpu_seconds(std::process::id())
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("child") {
        let which = argv.get(1).cloned().unwrap_or_default();
        let a = parse_args(&argv[2..])?;
        let (seconds, cpu) = match which.as_str() {
            "redis-rs" => redis_rs_client(&a)?,
            "raw" => raw_client(&a)?,
            other => anyhow::bail!("unknown client {other}"),
        };
        println!("floor {seconds:.3} {cpu:.3}");
        return Ok(());
    }
    let a = parse_args(&argv)?;
    let answers = (a.batches * a.per_batch) as f64;
    // The master's main thread too: what the reply's shape costs Redis.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let master = rt.block_on(common::master_of(&common::redis_nodes()[0], KEY))?;
    let master_cpu = || rt.block_on(common::redis_main_cpu(&master));
    let mut per: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut master_per: Vec<f64> = Vec::new();
    for run in 0..a.runs {
        for (i, which) in ["redis-rs", "raw"].iter().enumerate() {
            let m0 = master_cpu();
            let out = std::process::Command::new(std::env::current_exe()?)
                .args(["child", which])
                .args(argv.iter())
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let Some(line) = text.lines().find(|l| l.starts_with("floor ")) else {
                anyhow::bail!(
                    "{which} child failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let f: Vec<f64> = line[6..]
                .split(' ')
                .filter_map(|x| x.parse().ok())
                .collect();
            let us = f[1] * 1e6 / answers;
            let master_us = (master_cpu() - m0) * 1e6 / answers;
            per[i].push(us);
            master_per.push(master_us);
            println!(
                "run {run}: {which:8} {} batches x {} answers in {:.2} s: client CPU {us:.2} us, \
                 master {master_us:.2} us per answer",
                a.batches, a.per_batch, f[0]
            );
        }
    }
    let [rs, raw] = per.map(common::median);
    println!(
        "median of {} runs, reply as {}: redis-rs {rs:.2} us, raw {raw:.2} us per answer \
         (redis-rs / raw = {:.2}); the master {:.2} us per answer",
        a.runs,
        match a.reply {
            Shape::Lines => "lines",
            Shape::Ints => "ints",
            Shape::Values => "values",
        },
        rs / raw,
        common::median(master_per)
    );
    Ok(())
}

/// Core's way: the cluster connection's `route_pipeline` to the slot's
/// master, `in_flight` batches at a time.
fn redis_rs_client(a: &Args) -> anyhow::Result<(f64, f64)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = ClusterClient::new(
            common::redis_nodes()
                .iter()
                .map(|n| format!("redis://{n}"))
                .collect::<Vec<_>>(),
        )?;
        let conn = client.get_async_connection().await?;
        let args: Vec<String> = (0..a.per_batch).map(answer_arg).collect();
        let (t0, c0) = (Instant::now(), cpu_s());
        let per_task = a.batches.div_ceil(a.in_flight);
        let mut tasks = Vec::new();
        for t in 0..a.in_flight {
            let mut conn = conn.clone();
            let args = args.clone();
            let n = per_task.min(a.batches.saturating_sub(t * per_task));
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..n {
                    let mut pipe = redis::pipe();
                    pipe.cmd("EVAL").arg(a.script()).arg(1).arg(KEY).arg(&args);
                    pipe.cmd("WAIT").arg(1).arg(200);
                    let route = Route::with_key(KEY, SlotAddr::Master);
                    let v = conn
                        .route_pipeline(pipe, 0, 2, SingleNodeRoutingInfo::SpecificNode(route))
                        .await?;
                    anyhow::ensure!(a.reply_ok(&v[0]), "unexpected reply {:?}", v.first());
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok((t0.elapsed().as_secs_f64(), cpu_s() - c0))
    })
}

/// The least a client can do: one socket to the master, the pipeline's
/// bytes written once per batch, the replies read by a parser that only
/// counts what it must.
fn raw_client(a: &Args) -> anyhow::Result<(f64, f64)> {
    let seed = common::redis_nodes().remove(0);
    let master = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(common::master_of(&seed, KEY))?;
    let mut s = TcpStream::connect(&master)?;
    s.set_nodelay(true)?;
    let args: Vec<String> = (0..a.per_batch).map(answer_arg).collect();
    let mut buf = Vec::with_capacity(8192);
    let mut inbuf: Vec<u8> = Vec::with_capacity(1 << 16);
    let (t0, c0) = (Instant::now(), cpu_s());
    let mut sent = 0;
    let mut done = 0;
    let mut outstanding: VecDeque<usize> = VecDeque::new();
    while done < a.batches {
        while sent < a.batches && outstanding.len() < a.in_flight {
            buf.clear();
            encode(&mut buf, &["EVAL", a.script(), "1", KEY], &args);
            encode(&mut buf, &["WAIT", "1", "200"], &[]);
            s.write_all(&buf)?;
            outstanding.push_back(2);
            sent += 1;
        }
        // Read until the oldest batch's two replies are in.
        while outstanding.front().is_some_and(|n| *n > 0) {
            if let Some(values) = next_reply(&mut inbuf)? {
                if let Some(n) = outstanding.front_mut() {
                    if *n == 2 {
                        let want = a.leaves();
                        anyhow::ensure!(values == want, "unexpected reply of {values} values");
                    }
                    *n -= 1;
                }
                continue;
            }
            let mut chunk = [0u8; 16384];
            let n = s.read(&mut chunk)?;
            anyhow::ensure!(n > 0, "the master closed the connection");
            inbuf.extend_from_slice(&chunk[..n]);
        }
        outstanding.pop_front();
        done += 1;
    }
    Ok((t0.elapsed().as_secs_f64(), cpu_s() - c0))
}

/// RESP: an array of bulk strings.
fn encode(out: &mut Vec<u8>, head: &[&str], tail: &[String]) {
    let mut n = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(n.format(head.len() + tail.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in head.iter().copied().chain(tail.iter().map(String::as_str)) {
        out.push(b'$');
        out.extend_from_slice(n.format(a.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Takes one whole reply off the front of `buf`: `Some(leaf values)` (what
/// a client must at least look at; nothing is built), or `None` if `buf`
/// does not hold a whole reply yet.
fn next_reply(buf: &mut Vec<u8>) -> anyhow::Result<Option<usize>> {
    let mut pos = 0;
    let n = value(buf, &mut pos)?;
    if n.is_some() {
        buf.drain(..pos);
    }
    Ok(n)
}

fn line(buf: &[u8], pos: &mut usize) -> Option<(u8, i64)> {
    let start = *pos;
    let end = start + buf.get(start..)?.windows(2).position(|w| w == b"\r\n")?;
    let kind = buf[start];
    let n = std::str::from_utf8(&buf[start + 1..end])
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
        .unwrap_or(0);
    *pos = end + 2;
    Some((kind, n))
}

fn value(buf: &[u8], pos: &mut usize) -> anyhow::Result<Option<usize>> {
    let Some((kind, n)) = line(buf, pos) else {
        return Ok(None);
    };
    match kind {
        b':' | b'+' => Ok(Some(1)),
        b'-' => anyhow::bail!("server error"),
        b'$' if n < 0 => Ok(Some(1)),
        b'$' => {
            let end = *pos + n as usize + 2;
            if buf.len() < end {
                return Ok(None);
            }
            *pos = end;
            Ok(Some(1))
        }
        b'*' => {
            let mut leaves = 0;
            for _ in 0..n.max(0) {
                match value(buf, pos)? {
                    Some(l) => leaves += l,
                    None => return Ok(None),
                }
            }
            Ok(Some(leaves))
        }
        other => anyhow::bail!("unexpected RESP type {other}"),
    }
}
