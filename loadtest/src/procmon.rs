//! CPU and memory of processes, sampled from /proc: the processes under test
//! (by pid or by `comm` name) and the tool's own workers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One reading of one process.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcSample {
    /// utime + stime, microseconds.
    pub cpu_us: u64,
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
}

fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Parse utime+stime (fields 14 and 15) from a `/proc/PID/stat` line. The
/// command name (field 2) may contain spaces and parentheses, so fields are
/// counted after the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 -> index 11.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn status_kb(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ticks = parse_stat_cpu_ticks(&stat)?;
    Some(ProcSample {
        cpu_us: ticks * 1_000_000 / clk_tck(),
        rss_kb: status_kb(&status, "VmRSS:"),
        peak_rss_kb: status_kb(&status, "VmHWM:"),
    })
}

pub fn sample_self() -> ProcSample {
    sample(std::process::id()).unwrap_or_default()
}

/// Pids whose `/proc/PID/comm` equals one of `names` (compared on the first
/// 15 bytes, as the kernel stores it).
pub fn pids_named(names: &[String]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    if names.is_empty() {
        return out;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            let comm = comm.trim();
            // The kernel truncates comm to 15 bytes.
            if names
                .iter()
                .any(|n| n == comm || (n.len() > 15 && n.as_bytes()[..15] == *comm.as_bytes()))
            {
                out.push((pid, comm.to_string()));
            }
        }
    }
    out
}

/// A time line of CPU share and RSS per watched process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcSeries {
    /// label ("quiz-core[1234]") -> points.
    pub procs: BTreeMap<String, Vec<ProcPoint>>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProcPoint {
    /// Seconds since t0.
    pub t: f64,
    /// CPU used since the previous sample, in cores (1.0 = one core busy).
    pub cpu_cores: f64,
    pub rss_mb: f64,
}

/// Samples a set of processes at each `tick`.
#[derive(Default)]
pub struct Monitor {
    last: BTreeMap<u32, (f64, ProcSample)>,
    pub series: ProcSeries,
    pub first: BTreeMap<String, ProcSample>,
    pub latest: BTreeMap<String, ProcSample>,
}

impl Monitor {
    pub fn tick(&mut self, t: f64, procs: &[(u32, String)]) {
        for (pid, name) in procs {
            let Some(s) = sample(*pid) else { continue };
            let label = format!("{name}[{pid}]");
            self.first.entry(label.clone()).or_insert(s);
            self.latest.insert(label.clone(), s);
            if let Some((lt, ls)) = self.last.get(pid) {
                let dt = t - lt;
                if dt > 0.0 {
                    let p = ProcPoint {
                        t,
                        cpu_cores: s.cpu_us.saturating_sub(ls.cpu_us) as f64 / 1e6 / dt,
                        rss_mb: s.rss_kb as f64 / 1024.0,
                    };
                    self.series.procs.entry(label).or_default().push(p);
                }
            }
            self.last.insert(*pid, (t, s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let stat = "1234 (a b) c) S 1 1 1 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn samples_self() {
        let s = sample_self();
        assert!(s.rss_kb > 0);
    }
}
