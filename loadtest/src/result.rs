//! The result of a run: what the JSON result file holds ([`RunResult`]), how it is put
//! together from the workers' results, the merged metrics and the process samples
//! ([`RunResult::assemble`]), the pass/fail verdict ([`judge`]), and reading it back
//! ([`load_result`]). [`crate::report`] renders it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::metrics::{summarize, Aggregator, SeriesPoint, Summary, WireMetrics, HISTS};
use crate::procmon::{Monitor, ProcSample, ProcSeries};
use crate::scenario::Scenario;
use crate::verify::Mismatch;
use crate::worker::WorkerResult;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cores: u64,
    pub cpu_model: String,
    pub kernel: String,
    pub mem_total_mb: u64,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(0),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            mem_total_mb: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                / 1024,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub planned: u64,
    pub joined: u64,
    pub ended: u64,
    pub failed: u64,
    pub verified: u64,
    pub answers_sent: u64,
    pub answers_acked: u64,
    pub unacknowledged: u64,
    pub frames_in: u64,
    pub max_connected: u64,
    /// Players that left on purpose before the end (`[[stages]]` ramp down).
    #[serde(default)]
    pub left: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rates {
    pub answers_per_s_mean: f64,
    pub answers_per_s_peak: f64,
    pub frames_per_s_mean: f64,
    pub frames_per_s_peak: f64,
}

/// The generator's own cost: the budget is ~5 µs CPU and ~1.5 KB per frame.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GeneratorCost {
    pub workers: u64,
    pub cpu_s: f64,
    pub peak_rss_mb: f64,
    pub cpu_us_per_frame: f64,
    /// The same in the steady phase only (all players connected, none done):
    /// the marginal cost of a frame, without joins, handshakes, verification.
    #[serde(default)]
    pub steady_cpu_us_per_frame: f64,
    #[serde(default)]
    pub steady_frames: u64,
    pub peak_rss_kb_per_connection: f64,
    pub peak_rss_bytes_per_frame: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcUsage {
    pub cpu_s: f64,
    pub cpu_cores_mean: f64,
    pub cpu_cores_max: f64,
    pub rss_mb_max: f64,
}

/// Everything a run produced; the JSON result file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub format: u32,
    pub tool_version: String,
    pub scenario: String,
    pub scenario_file: String,
    pub scenario_config: Option<Scenario>,
    pub target: String,
    pub target_kind: String,
    pub started_at: String,
    pub elapsed_s: f64,
    pub machine: Machine,
    pub passed: bool,
    pub failure_reasons: Vec<String>,
    pub counts: Counts,
    pub latency_ms: BTreeMap<String, Summary>,
    pub rates: Rates,
    pub counters: BTreeMap<String, u64>,
    pub generator: GeneratorCost,
    pub processes: BTreeMap<String, ProcUsage>,
    pub mismatch_count: u64,
    pub mismatches: Vec<Mismatch>,
    pub warning_count: u64,
    pub warnings: Vec<Mismatch>,
    pub failures: Vec<String>,
    pub host_errors: Vec<String>,
    pub series: Vec<SeriesPoint>,
    pub proc_series: ProcSeries,
    /// Whole-run histograms (V2, base64), for exact re-aggregation.
    pub histograms: WireMetrics,
    /// What the scenario's `[attack]` did (outcomes by reason), if it had one.
    #[serde(default)]
    pub attack: Option<crate::attack::AttackReport>,
    /// Every check the verdict rests on, by name (failed ones are also in
    /// `failure_reasons`).
    #[serde(default)]
    pub checks: Vec<CheckOutcome>,
    /// Every threshold, judged (breached ones are also in `failure_reasons`).
    #[serde(default)]
    pub thresholds: Vec<crate::thresholds::ThresholdOutcome>,
}

/// One named check of the verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOutcome {
    pub name: String,
    pub passed: bool,
    pub message: String,
}

impl CheckOutcome {
    pub fn new(name: &str, passed: bool, message: String) -> CheckOutcome {
        CheckOutcome {
            name: name.to_string(),
            passed,
            message,
        }
    }
}

/// Format a Unix time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_string(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

impl RunResult {
    /// The result of a run from what the coordinator gathered; mismatches found after the
    /// run, host errors and the verdict are the caller's to add.
    #[allow(clippy::too_many_arguments)]
    pub fn assemble(
        sc: &Scenario,
        scenario_file: &Path,
        target: String,
        started: u64,
        elapsed_s: f64,
        agg: &Aggregator,
        results: &[WorkerResult],
        monitor: &Monitor,
    ) -> RunResult {
        let mut r = RunResult {
            format: 1,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            scenario: sc.name.clone(),
            scenario_file: scenario_file.display().to_string(),
            scenario_config: Some(sc.clone()),
            target,
            target_kind: format!("{:?}", sc.target.kind),
            started_at: utc_string(started / 1_000_000),
            elapsed_s,
            machine: Machine::detect(),
            counters: agg.total.counters.clone(),
            histograms: agg.total.to_wire(),
            attack: None,
            series: agg.series(),
            ..Default::default()
        };
        for (name, h) in HISTS.iter().zip(&agg.total.hists) {
            r.latency_ms.insert(name.to_string(), summarize(h));
        }
        r.counts.planned = sc.load.players;
        r.add_workers(results);
        r.rates = Rates::over(&r.series);
        r.proc_series = monitor.series.clone();
        r.processes = ProcUsage::of(monitor);
        r
    }

    /// Sum the workers' counts, findings and own cost.
    fn add_workers(&mut self, results: &[WorkerResult]) {
        let mut gen = GeneratorCost {
            workers: results.len() as u64,
            ..Default::default()
        };
        let mut self_usage = ProcSample::default();
        let (mut steady_cpu, mut steady_frames) = (0u64, 0u64);
        for w in results {
            let c = &mut self.counts;
            c.joined += w.joined;
            c.ended += w.ended;
            c.left += w.left;
            c.failed += w.failed;
            c.verified += w.verified;
            c.answers_sent += w.answers_sent;
            c.answers_acked += w.answers_acked;
            c.unacknowledged += w.unacknowledged;
            c.frames_in += w.frames_in;
            c.max_connected += w.max_connected;
            self.mismatch_count += w.mismatch_count;
            self.mismatches.extend(w.mismatches.iter().cloned());
            self.warning_count += w.warning_count;
            self.warnings.extend(w.warnings.iter().cloned());
            self.failures.extend(w.failures.iter().cloned());
            self_usage.cpu_us += w.self_usage.cpu_us;
            steady_cpu += w.steady_cpu_us;
            steady_frames += w.steady_frames;
            self_usage.peak_rss_kb += w.self_usage.peak_rss_kb;
        }
        self.warnings.truncate(200);
        self.failures.truncate(50);
        gen.cpu_s = self_usage.cpu_us as f64 / 1e6;
        gen.peak_rss_mb = self_usage.peak_rss_kb as f64 / 1024.0;
        if self.counts.frames_in > 0 {
            gen.cpu_us_per_frame = self_usage.cpu_us as f64 / self.counts.frames_in as f64;
            gen.peak_rss_bytes_per_frame =
                self_usage.peak_rss_kb as f64 * 1024.0 / self.counts.frames_in as f64;
        }
        gen.steady_frames = steady_frames;
        if steady_frames > 0 {
            gen.steady_cpu_us_per_frame = steady_cpu as f64 / steady_frames as f64;
        }
        if self.counts.max_connected > 0 {
            gen.peak_rss_kb_per_connection =
                self_usage.peak_rss_kb as f64 / self.counts.max_connected as f64;
        }
        self.generator = gen;
    }

    /// The figure the threshold `name` bounds (None: its histogram had no samples), for
    /// [`crate::thresholds::evaluate`].
    pub fn threshold_figure(&self, name: &str) -> Option<f64> {
        match name {
            "errors_max" => Some(
                self.counters
                    .iter()
                    .filter(|(k, _)| k.starts_with("error."))
                    .map(|(_, v)| *v)
                    .sum::<u64>() as f64,
            ),
            "answers_unacknowledged_max" => Some(self.counts.unacknowledged as f64),
            "players_failed_max" => Some(self.counts.failed as f64),
            _ => {
                let stem = name.strip_suffix("_ms")?;
                let (hist, stat) = stem.rsplit_once('_')?;
                let s = self.latency_ms.get(hist)?;
                if s.count == 0 {
                    return None;
                }
                Some(match stat {
                    "p50" => s.p50_ms,
                    "p90" => s.p90_ms,
                    "p99" => s.p99_ms,
                    "p999" => s.p999_ms,
                    "max" => s.max_ms,
                    "mean" => s.mean_ms,
                    _ => return None,
                })
            }
        }
    }
}

impl Rates {
    /// Rates over the seconds that had any traffic.
    fn over(series: &[SeriesPoint]) -> Rates {
        let active: Vec<&SeriesPoint> = series
            .iter()
            .filter(|p| p.frames > 0 || p.answers > 0)
            .collect();
        let mut r = Rates::default();
        if !active.is_empty() {
            let n = active.len() as f64;
            r.answers_per_s_mean = active.iter().map(|p| p.answers as f64).sum::<f64>() / n;
            r.frames_per_s_mean = active.iter().map(|p| p.frames as f64).sum::<f64>() / n;
            r.answers_per_s_peak = active.iter().map(|p| p.answers as f64).fold(0.0, f64::max);
            r.frames_per_s_peak = active.iter().map(|p| p.frames as f64).fold(0.0, f64::max);
        }
        r
    }
}

impl ProcUsage {
    /// Each watched process's usage over the run, from the monitor's samples.
    fn of(monitor: &Monitor) -> BTreeMap<String, ProcUsage> {
        let mut out = BTreeMap::new();
        for (label, pts) in &monitor.series.procs {
            let first = monitor.first.get(label).copied().unwrap_or_default();
            let last = monitor.latest.get(label).copied().unwrap_or_default();
            let n = pts.len().max(1) as f64;
            out.insert(
                label.clone(),
                ProcUsage {
                    cpu_s: last.cpu_us.saturating_sub(first.cpu_us) as f64 / 1e6,
                    cpu_cores_mean: pts.iter().map(|p| p.cpu_cores).sum::<f64>() / n,
                    cpu_cores_max: pts.iter().map(|p| p.cpu_cores).fold(0.0, f64::max),
                    rss_mb_max: pts.iter().map(|p| p.rss_mb).fold(0.0, f64::max),
                },
            );
        }
        out
    }
}

/// Decide pass/fail: the named checks, then the scenario's thresholds.
/// Mismatches, failed players, live players who never saw `quiz_ended`,
/// unacknowledged answers and host errors always fail: each is a game that
/// did not happen as the players were promised, whatever the scenario
/// tolerates on the way. `checks.fail_on_errors` adds the strict part: any
/// `error.*` count at all (a join retried after a 503 and then admitted is
/// otherwise tolerated: it is how admission control and failovers look to
/// a client). A breached threshold fails. Checks added by the caller before
/// (the MongoDB record) are kept.
pub fn judge(sc: &Scenario, r: &mut RunResult, workers: u64) {
    let kept: Vec<CheckOutcome> = std::mem::take(&mut r.checks)
        .into_iter()
        .filter(|c| c.name == "durable_record")
        .collect();
    let mut checks: Vec<CheckOutcome> = Vec::new();
    let mut add = |name: &str, ok: bool, msg: String| checks.push(CheckOutcome::new(name, ok, msg));
    add(
        "records_match",
        r.mismatch_count == 0,
        format!(
            "{} mismatches between the platform and the tool's record",
            r.mismatch_count
        ),
    );
    add(
        "players_joined",
        r.counts.joined > 0,
        if r.counts.joined == 0 {
            "no player joined".into()
        } else {
            format!("{} of {} players joined", r.counts.joined, r.counts.planned)
        },
    );
    add(
        "workers_reported",
        r.generator.workers >= workers,
        format!(
            "{} of {workers} workers reported a result",
            r.generator.workers
        ),
    );
    if sc.checks.fail_on_errors {
        let errors: u64 = r
            .counters
            .iter()
            .filter(|(k, _)| k.starts_with("error."))
            .map(|(_, v)| v)
            .sum();
        add(
            "no_errors",
            errors == 0,
            format!("{errors} errors (checks.fail_on_errors)"),
        );
    }
    add(
        "no_failed_players",
        r.counts.failed == 0,
        format!("{} players failed", r.counts.failed),
    );
    if sc.mode_is_live() {
        let expected = r.counts.joined.saturating_sub(r.counts.left);
        add(
            "quiz_ended_seen",
            r.counts.ended >= expected,
            format!(
                "{} of {expected} joined players (that did not leave) saw quiz_ended",
                r.counts.ended
            ),
        );
    }
    add(
        "answers_acknowledged",
        r.counts.unacknowledged == 0,
        format!("{} answers never acknowledged", r.counts.unacknowledged),
    );
    add(
        "no_host_errors",
        r.host_errors.is_empty(),
        format!("{} host errors", r.host_errors.len()),
    );
    checks.extend(kept);
    let judged = crate::thresholds::evaluate(&sc.thresholds, |name| r.threshold_figure(name));
    r.thresholds = judged;
    r.failure_reasons = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.message.clone())
        .chain(
            r.thresholds
                .iter()
                .filter(|t| !t.passed)
                .map(|t| t.message.clone()),
        )
        .collect();
    r.checks = checks;
    r.passed = r.failure_reasons.is_empty();
}

/// Read a result file.
pub fn load_result(path: &Path) -> anyhow::Result<RunResult> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(utc_string(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_string(1_798_761_600), "2027-01-01T00:00:00Z");
        assert_eq!(utc_string(951_825_600), "2000-02-29T12:00:00Z");
    }

    #[test]
    fn judge_fails_on_mismatch_and_optionally_on_errors() {
        let mut sc = Scenario::parse(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/smoke.toml"))
                .unwrap(),
            "toml",
        )
        .unwrap();
        let mut r = RunResult::default();
        r.counts.joined = 10;
        r.counts.ended = 10;
        r.generator.workers = 1;
        sc.checks.fail_on_errors = false;
        judge(&sc, &mut r, 1);
        assert!(r.passed, "{:?}", r.failure_reasons);
        r.counters.insert("error.join.timeout".into(), 1);
        judge(&sc, &mut r, 1);
        assert!(r.passed);
        sc.checks.fail_on_errors = true;
        judge(&sc, &mut r, 1);
        assert!(!r.passed);
        r.counters.clear();
        r.mismatch_count = 1;
        judge(&sc, &mut r, 1);
        assert!(!r.passed);
        assert!(r.failure_reasons[0].contains("mismatch"));
    }

    /// A game that did not happen as promised fails even a tolerant run:
    /// players who never saw the end, answers never acknowledged, host
    /// errors, failed players.
    #[test]
    fn judge_always_fails_an_unfinished_game() {
        let mut sc = Scenario::parse(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/smoke.toml"))
                .unwrap(),
            "toml",
        )
        .unwrap();
        sc.checks.fail_on_errors = false;
        let good = || {
            let mut r = RunResult::default();
            r.counts.joined = 10;
            r.counts.ended = 10;
            r.generator.workers = 1;
            r
        };
        let mut r = good();
        r.counts.ended = 0;
        judge(&sc, &mut r, 1);
        assert!(!r.passed && r.failure_reasons[0].contains("quiz_ended"));
        let mut r = good();
        r.counts.unacknowledged = 3;
        judge(&sc, &mut r, 1);
        assert!(!r.passed && r.failure_reasons[0].contains("acknowledged"));
        let mut r = good();
        r.counts.failed = 1;
        judge(&sc, &mut r, 1);
        assert!(!r.passed && r.failure_reasons[0].contains("failed"));
        let mut r = good();
        r.host_errors.push("POST /next: 503".into());
        judge(&sc, &mut r, 1);
        assert!(!r.passed && r.failure_reasons[0].contains("host"));
    }

    #[test]
    fn thresholds_judged_on_a_result() {
        let mut r = RunResult::default();
        r.latency_ms.insert(
            "answer".into(),
            crate::metrics::Summary {
                count: 10,
                p99_ms: 300.0,
                ..Default::default()
            },
        );
        r.latency_ms
            .insert("reconnect".into(), crate::metrics::Summary::default());
        r.counters.insert("error.join.http_429".into(), 2);
        r.counts.unacknowledged = 0;
        let mut t = std::collections::BTreeMap::new();
        t.insert(
            "answer_p99_ms".to_string(),
            crate::thresholds::Bound::AtMost(250.0),
        );
        t.insert(
            "reconnect_p99_ms".to_string(),
            crate::thresholds::Bound::AtMost(1.0),
        );
        t.insert(
            "errors_max".to_string(),
            crate::thresholds::Bound::Expr("<3".into()),
        );
        t.insert(
            "answers_unacknowledged_max".to_string(),
            crate::thresholds::Bound::Expr("<0".into()),
        );
        let out = crate::thresholds::evaluate(&t, |name| r.threshold_figure(name));
        let by = |n: &str| out.iter().find(|o| o.name == n).unwrap().clone();
        assert!(!by("answer_p99_ms").passed);
        assert!(by("answer_p99_ms").message.contains("breached"));
        assert_eq!(by("answer_p99_ms").actual, Some(300.0));
        assert!(by("reconnect_p99_ms").passed);
        assert_eq!(by("reconnect_p99_ms").actual, None);
        assert!(by("errors_max").passed);
        // `<0` can never hold: strictly below zero.
        assert!(!by("answers_unacknowledged_max").passed);
    }
}
