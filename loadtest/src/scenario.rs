//! Scenario files: the typed description of one load run.
//!
//! A scenario is TOML (`.toml`) or YAML (`.yaml`/`.yml`). Unknown keys are
//! rejected, and [`Scenario::validate`] checks ranges; every error names the
//! offending key (`load.players: ...`), so a typo never silently becomes a
//! default. See `docs/loadtest.md` for the table of keys.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::attack::AttackConfig;
use crate::target::{Target, TargetError};

/// Most connections one worker process may hold: the hard open-file limit of
/// the machine is 20 000 per process, and a worker needs a few for itself.
pub const MAX_PER_WORKER: u64 = 19_000;
/// Absolute ceiling on players in one run, whatever the scenario says.
pub const MAX_PLAYERS: u64 = 400_000;
/// Absolute ceiling on a run's duration (a soak may take hours, not days).
pub const MAX_DURATION_S: u64 = 6 * 3600;

#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario {path}: {message}")]
    Parse { path: String, message: String },
    #[error("scenario {path}: unknown extension (use .toml, .yaml or .yml)")]
    Extension { path: String },
    #[error("scenario key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("scenario key `target.url`: {0}")]
    Target(TargetError),
    #[error("scenario key `thresholds.{name}`: {message}")]
    Threshold { name: String, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub target: TargetConfig,
    pub load: LoadConfig,
    pub quiz: QuizConfig,
    pub answers: AnswerConfig,
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    #[serde(default)]
    pub reconnect_storm: Option<StormConfig>,
    #[serde(default)]
    pub node_failure: Option<NodeFailureConfig>,
    /// A hostile client beside the load (the `hostile/` scenarios).
    #[serde(default)]
    pub attack: Option<AttackConfig>,
    #[serde(default)]
    pub checks: CheckConfig,
    /// Upper bounds on the result's figures (`answer_p99_ms = 250`); a
    /// breach fails the run. See [`crate::thresholds`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub thresholds: BTreeMap<String, crate::thresholds::Bound>,
    /// k6-style stages: the number of connected players ramps linearly
    /// toward each stage's `target` over its `duration_s` (up: players join;
    /// down: players leave, closing their socket cleanly). Empty: joins at
    /// `load.ramp_per_sec` and nobody leaves early.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
}

/// One stage of `[[stages]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub duration_s: u64,
    pub target: u64,
}

/// What is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// The edge load balancer in front of several core nodes.
    EdgeLb,
    /// One core node, directly.
    Core,
    /// Any other proxy, for comparison.
    Proxy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub kind: TargetKind,
    /// `http://127.x.y.z:PORT`; loopback only. Overridable with `--target`.
    pub url: String,
    /// Processes under test to sample from /proc (CPU, RSS).
    #[serde(default)]
    pub watch_pids: Vec<u32>,
    /// Process names (`/proc/PID/comm`) to sample, e.g. `quiz-core`.
    #[serde(default)]
    pub watch_process_names: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Live,
    SelfPaced,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadConfig {
    /// Simulated players in total, spread evenly over the quizzes.
    pub players: u64,
    /// Quizzes created by the tool (it is their host).
    pub quizzes: u64,
    pub mode: Mode,
    /// Joins started per second (the schedule latency is measured against).
    pub ramp_per_sec: f64,
    /// Hard cap on the whole run: the tool stops by itself after it.
    pub duration_s: u64,
    /// Hard cap on simultaneous connections across all workers.
    pub max_connections: u64,
    /// Worker processes; 0 = as few as hold `players` at 19 000 each.
    #[serde(default)]
    pub workers: u64,
    /// Delay between the starts of consecutive quizzes (classroom realism).
    #[serde(default)]
    pub stagger_ms: u64,
    /// Players sharing one loopback source address (each worker gets its own
    /// addresses): the platform's per-client-IP limits then see many clients.
    #[serde(default = "default_players_per_source_ip")]
    pub players_per_source_ip: u64,
    /// Longest wait for all joins before the host starts anyway.
    #[serde(default = "default_lobby_wait_s")]
    pub lobby_wait_s: u64,
}

fn default_players_per_source_ip() -> u64 {
    100
}

fn default_lobby_wait_s() -> u64 {
    30
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuizConfig {
    pub questions: u32,
    #[serde(default = "default_options")]
    pub options: u32,
    pub time_limit_ms: u64,
    #[serde(default = "default_points")]
    pub points: u32,
    /// Live mode: the host calls `/next` (or `/end`) this long after a
    /// question opened.
    pub advance_after_ms: u64,
    /// Sent as the quiz's `expected_players` size hint: a quiz expecting
    /// more than core's `players_per_node` is spread over several nodes.
    #[serde(default)]
    pub expected_players: Option<u64>,
}

fn default_options() -> u32 {
    4
}
fn default_points() -> u32 {
    1000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerConfig {
    /// Share of answers that choose the correct option.
    pub share_correct: f64,
    /// Share of players that answer a given question at all.
    #[serde(default = "one")]
    pub share_answering: f64,
    pub think_time: ThinkTime,
    /// A share of players answers within `within_ms` of the question opening.
    #[serde(default)]
    pub burst: Option<BurstConfig>,
}

fn one() -> f64 {
    1.0
}

/// Think time from the question opening (server `opens_at_ms`) to the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum ThinkTime {
    Fixed {
        ms: u64,
    },
    Uniform {
        min_ms: u64,
        max_ms: u64,
    },
    /// Exponential with the given mean, shifted by `min_ms`, cut at `max_ms`.
    Exponential {
        mean_ms: u64,
        min_ms: u64,
        max_ms: u64,
    },
    /// Log-normal with the given median and sigma, cut at `max_ms`.
    LogNormal {
        median_ms: u64,
        sigma: f64,
        max_ms: u64,
    },
}

impl ThinkTime {
    /// Sample with two independent uniforms in [0, 1).
    pub fn sample(&self, u1: f64, u2: f64) -> u64 {
        match *self {
            ThinkTime::Fixed { ms } => ms,
            ThinkTime::Uniform { min_ms, max_ms } => {
                min_ms + ((max_ms - min_ms) as f64 * u1) as u64
            }
            ThinkTime::Exponential {
                mean_ms,
                min_ms,
                max_ms,
            } => {
                let x = -(1.0 - u1).ln() * mean_ms as f64;
                (min_ms + x as u64).min(max_ms)
            }
            ThinkTime::LogNormal {
                median_ms,
                sigma,
                max_ms,
            } => {
                // Box-Muller for a standard normal.
                let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let x = median_ms as f64 * (sigma * z).exp();
                (x as u64).min(max_ms)
            }
        }
    }

    fn max_ms(&self) -> u64 {
        match *self {
            ThinkTime::Fixed { ms } => ms,
            ThinkTime::Uniform { max_ms, .. }
            | ThinkTime::Exponential { max_ms, .. }
            | ThinkTime::LogNormal { max_ms, .. } => max_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstConfig {
    pub share: f64,
    pub within_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectConfig {
    /// Reconnect after an unexpected close (node failure, drops).
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First backoff; doubles per attempt, with jitter.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_attempts() -> u32 {
    8
}
fn default_backoff() -> u64 {
    100
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            enabled: true,
            max_attempts: default_attempts(),
            backoff_ms: default_backoff(),
        }
    }
}

/// A share of players drops its connection at the same instant and
/// reconnects with its token at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormConfig {
    pub share: f64,
    /// 0-based question index during which the storm happens.
    pub at_question: u32,
    /// Offset from that question's `opens_at_ms`.
    pub after_ms: u64,
}

/// A core node is killed (SIGKILL) mid-quiz; players reconnect through the
/// edge load balancer and continue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFailureConfig {
    pub at_question: u32,
    pub after_ms: u64,
    /// File holding the pid of the node to kill (`--kill-pid` overrides).
    #[serde(default)]
    pub pid_file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrossCheck {
    Off,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Share of players whose score is fetched over HTTP and compared.
    #[serde(default = "one")]
    pub verify_players: f64,
    /// Compare each quiz's leaderboard with the tool's record.
    #[serde(default = "yes")]
    pub leaderboard: bool,
    /// Check the points of each acknowledged answer against the scoring rule.
    #[serde(default = "default_cross_check")]
    pub cross_check_points: CrossCheck,
    /// Fail the run when any error (failed join, lost connection) happened.
    #[serde(default)]
    pub fail_on_errors: bool,
}

fn default_cross_check() -> CrossCheck {
    CrossCheck::Warn
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            verify_players: 1.0,
            leaderboard: true,
            cross_check_points: CrossCheck::Warn,
            fail_on_errors: false,
        }
    }
}

impl Scenario {
    /// Read, parse and validate a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let scenario = Self::parse(&text, ext).map_err(|e| match e {
            ScenarioError::Parse { message, .. } => ScenarioError::Parse {
                path: path.display().to_string(),
                message,
            },
            ScenarioError::Extension { .. } => ScenarioError::Extension {
                path: path.display().to_string(),
            },
            other => other,
        })?;
        Ok(scenario)
    }

    /// Parse and validate scenario text; `ext` is `toml`, `yaml` or `yml`.
    pub fn parse(text: &str, ext: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = match ext {
            "toml" => toml::from_str(text).map_err(|e| ScenarioError::Parse {
                path: String::new(),
                message: e.to_string(),
            })?,
            "yaml" | "yml" => serde_yaml::from_str(text).map_err(|e| ScenarioError::Parse {
                path: String::new(),
                message: e.to_string(),
            })?,
            _ => {
                return Err(ScenarioError::Extension {
                    path: String::new(),
                })
            }
        };
        scenario.validate()?;
        Ok(scenario)
    }

    /// Range checks, each error naming its key.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        let target = Target::parse(&self.target.url).map_err(ScenarioError::Target)?;
        let l = &self.load;
        if l.players == 0 || l.players > MAX_PLAYERS {
            return Err(invalid(
                "load.players",
                format!("must be 1..={MAX_PLAYERS}, got {}", l.players),
            ));
        }
        if l.quizzes == 0 || l.quizzes > l.players {
            return Err(invalid(
                "load.quizzes",
                format!("must be 1..=load.players, got {}", l.quizzes),
            ));
        }
        if !(l.ramp_per_sec > 0.0 && l.ramp_per_sec <= 100_000.0) {
            return Err(invalid(
                "load.ramp_per_sec",
                format!("must be in (0, 100000], got {}", l.ramp_per_sec),
            ));
        }
        if l.duration_s == 0 || l.duration_s > MAX_DURATION_S {
            return Err(invalid(
                "load.duration_s",
                format!("must be 1..={MAX_DURATION_S}, got {}", l.duration_s),
            ));
        }
        if l.max_connections == 0 {
            return Err(invalid("load.max_connections", "must be at least 1"));
        }
        if l.players > l.max_connections {
            return Err(invalid(
                "load.max_connections",
                format!(
                    "is {} but load.players is {}: raise the cap or lower the players",
                    l.max_connections, l.players
                ),
            ));
        }
        let workers = self.worker_count();
        if l.players.div_ceil(workers) > MAX_PER_WORKER {
            return Err(invalid(
                "load.workers",
                format!(
                    "{workers} workers would hold {} connections each; at most {MAX_PER_WORKER} per worker",
                    l.players.div_ceil(workers)
                ),
            ));
        }
        if l.players_per_source_ip == 0 {
            return Err(invalid("load.players_per_source_ip", "must be at least 1"));
        }
        if workers * self.sources_per_worker() > 250 * 254 * 254 {
            return Err(invalid(
                "load.players_per_source_ip",
                "needs more loopback source addresses than 127.0.0.0/8 has",
            ));
        }
        if workers > 200 {
            return Err(invalid("load.workers", "at most 200"));
        }
        let q = &self.quiz;
        if q.questions == 0 || q.questions > 500 {
            return Err(invalid("quiz.questions", "must be 1..=500"));
        }
        if !(2..=6).contains(&q.options) {
            return Err(invalid("quiz.options", "must be 2..=6"));
        }
        if !(5000..=240_000).contains(&q.time_limit_ms) {
            return Err(invalid("quiz.time_limit_ms", "must be 5000..=240000"));
        }
        if ![0, 1000, 2000].contains(&q.points) {
            return Err(invalid("quiz.points", "must be 0, 1000 or 2000"));
        }
        if q.advance_after_ms < 100 {
            return Err(invalid("quiz.advance_after_ms", "must be at least 100"));
        }
        let a = &self.answers;
        share("answers.share_correct", a.share_correct)?;
        share("answers.share_answering", a.share_answering)?;
        match a.think_time {
            ThinkTime::Uniform { min_ms, max_ms } if min_ms > max_ms => {
                return Err(invalid("answers.think_time.min_ms", "must be <= max_ms"))
            }
            ThinkTime::Exponential {
                mean_ms,
                min_ms,
                max_ms,
            } if mean_ms == 0 || min_ms > max_ms => {
                return Err(invalid(
                    "answers.think_time.mean_ms",
                    "mean_ms must be > 0 and min_ms <= max_ms",
                ))
            }
            ThinkTime::LogNormal {
                median_ms, sigma, ..
            } if median_ms == 0 || !(0.0..=5.0).contains(&sigma) => {
                return Err(invalid(
                    "answers.think_time.sigma",
                    "median_ms must be > 0 and sigma in [0, 5]",
                ))
            }
            _ => {}
        }
        if self.mode_is_live() && a.think_time.max_ms() >= q.advance_after_ms {
            // Not an error: late answers are part of some scenarios. But say so
            // loudly when every answer would be late.
            if let ThinkTime::Fixed { ms } = a.think_time {
                if ms >= q.advance_after_ms {
                    return Err(invalid(
                        "answers.think_time.ms",
                        "every answer would arrive after the host moves on (quiz.advance_after_ms)",
                    ));
                }
            }
        }
        if let Some(b) = &a.burst {
            share("answers.burst.share", b.share)?;
            if b.within_ms == 0 || b.within_ms > q.time_limit_ms {
                return Err(invalid(
                    "answers.burst.within_ms",
                    "must be 1..=quiz.time_limit_ms",
                ));
            }
        }
        if self.reconnect.max_attempts > 100 {
            return Err(invalid("reconnect.max_attempts", "at most 100"));
        }
        if let Some(s) = &self.reconnect_storm {
            share("reconnect_storm.share", s.share)?;
            if s.at_question >= q.questions {
                return Err(invalid(
                    "reconnect_storm.at_question",
                    "must be below quiz.questions",
                ));
            }
        }
        if let Some(n) = &self.node_failure {
            if n.at_question >= q.questions {
                return Err(invalid(
                    "node_failure.at_question",
                    "must be below quiz.questions",
                ));
            }
        }
        if let Some(a) = &self.attack {
            a.check(l.duration_s)
                .map_err(|(key, message)| invalid(key, message))?;
            if !target.is_loopback() {
                return Err(invalid(
                    "attack",
                    "an attack runs only against a loopback target (target.url)",
                ));
            }
        }
        self.validate_stages()?;
        share("checks.verify_players", self.checks.verify_players)?;
        crate::thresholds::validate(&self.thresholds)
            .map_err(|(name, message)| ScenarioError::Threshold { name, message })?;
        Ok(())
    }

    /// Stages: durations of at least 1 s within `load.duration_s`, one peak
    /// (targets rise, then fall: each player joins once and leaves at most
    /// once), the peak equal to `load.players`.
    fn validate_stages(&self) -> Result<(), ScenarioError> {
        if self.stages.is_empty() {
            return Ok(());
        }
        if self.stages.len() > 100 {
            return Err(invalid("stages", "at most 100 stages"));
        }
        if self.stages.iter().any(|s| s.duration_s == 0) {
            return Err(invalid(
                "stages.duration_s",
                "every stage lasts at least 1 s",
            ));
        }
        let total: u64 = self.stages.iter().map(|s| s.duration_s).sum();
        if total > self.load.duration_s {
            return Err(invalid(
                "stages.duration_s",
                format!(
                    "the stages last {total} s, longer than load.duration_s ({})",
                    self.load.duration_s
                ),
            ));
        }
        let mut falling = false;
        let mut prev = 0;
        for s in &self.stages {
            if s.target < prev {
                falling = true;
            } else if s.target > prev && falling {
                return Err(invalid(
                    "stages.target",
                    "targets must rise, then fall (one peak): a player joins once and leaves at most once",
                ));
            }
            prev = s.target;
        }
        let peak = self.stages.iter().map(|s| s.target).max().unwrap_or(0);
        if peak != self.load.players {
            return Err(invalid(
                "stages.target",
                format!(
                    "the highest target ({peak}) must equal load.players ({})",
                    self.load.players
                ),
            ));
        }
        Ok(())
    }

    /// When player `index` joins, from the run's time zero (µs): at
    /// `index / load.ramp_per_sec`, or with stages when the target curve
    /// first reaches `index + 1` (so at most ⌊curve⌋ players are in).
    pub fn join_offset_us(&self, index: u64) -> u64 {
        if self.stages.is_empty() {
            return (index as f64 * 1e6 / self.load.ramp_per_sec) as u64;
        }
        let level = (index + 1) as f64;
        let (mut start_s, mut from) = (0.0, 0.0);
        for s in &self.stages {
            let to = s.target as f64;
            if to > from && level > from && level <= to {
                return ((start_s + s.duration_s as f64 * (level - from) / (to - from)) * 1e6)
                    as u64;
            }
            start_s += s.duration_s as f64;
            from = to;
        }
        (start_s * 1e6) as u64
    }

    /// When player `index` leaves (µs from time zero): with stages, when the
    /// falling curve drops below `index + 1`; None: it stays to the end.
    pub fn leave_offset_us(&self, index: u64) -> Option<u64> {
        let level = (index + 1) as f64;
        let (mut start_s, mut from) = (0.0, 0.0);
        for s in &self.stages {
            let to = s.target as f64;
            if to < from && level > to && level <= from {
                return Some(
                    ((start_s + s.duration_s as f64 * (from - level) / (from - to)) * 1e6) as u64,
                );
            }
            start_s += s.duration_s as f64;
            from = to;
        }
        None
    }

    /// Seconds from time zero until the last player has been scheduled to join.
    pub fn ramp_s(&self) -> f64 {
        if self.stages.is_empty() {
            return self.load.players as f64 / self.load.ramp_per_sec;
        }
        self.join_offset_us(self.load.players.saturating_sub(1)) as f64 / 1e6
    }

    pub fn mode_is_live(&self) -> bool {
        self.load.mode == Mode::Live
    }

    /// Source addresses each worker binds its players to.
    pub fn sources_per_worker(&self) -> u64 {
        let per_worker = self.load.players.div_ceil(self.worker_count());
        per_worker.div_ceil(self.load.players_per_source_ip).max(1)
    }

    /// Worker processes this scenario runs with.
    pub fn worker_count(&self) -> u64 {
        if self.load.workers > 0 {
            self.load.workers
        } else {
            self.load.players.div_ceil(MAX_PER_WORKER).max(1)
        }
    }
}

fn share(key: &'static str, v: f64) -> Result<(), ScenarioError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(invalid(key, format!("must be in [0, 1], got {v}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SMOKE: &str = r#"
name = "t"
[target]
kind = "core"
url = "http://127.0.0.1:8080"
[load]
players = 10
quizzes = 2
mode = "live"
ramp_per_sec = 100
duration_s = 30
max_connections = 100
[quiz]
questions = 2
time_limit_ms = 5000
advance_after_ms = 3000
[answers]
share_correct = 0.5
think_time = { dist = "uniform", min_ms = 100, max_ms = 1000 }
"#;

    #[test]
    fn parses_minimal_toml_with_defaults() {
        let s = Scenario::parse(SMOKE, "toml").unwrap();
        assert_eq!(s.load.players, 10);
        assert_eq!(s.quiz.options, 4);
        assert_eq!(s.quiz.points, 1000);
        assert!(s.reconnect.enabled);
        assert_eq!(s.worker_count(), 1);
        assert_eq!(s.checks.cross_check_points, CrossCheck::Warn);
    }

    #[test]
    fn parses_yaml() {
        let y = r#"
name: y
target: { kind: edge_lb, url: "http://127.0.0.1:9000" }
load: { players: 5, quizzes: 1, mode: live, ramp_per_sec: 10, duration_s: 10, max_connections: 5 }
quiz: { questions: 1, time_limit_ms: 5000, advance_after_ms: 2000 }
answers:
  share_correct: 1.0
  think_time: { dist: fixed, ms: 100 }
  burst: { share: 1.0, within_ms: 1000 }
"#;
        let s = Scenario::parse(y, "yaml").unwrap();
        assert_eq!(s.target.kind, TargetKind::EdgeLb);
        assert_eq!(s.answers.think_time, ThinkTime::Fixed { ms: 100 });
    }

    fn err_of(text: &str) -> String {
        Scenario::parse(text, "toml").unwrap_err().to_string()
    }

    #[test]
    fn unknown_key_is_named() {
        let t = SMOKE.replace("ramp_per_sec = 100", "ramp_per_sec = 100\nrmap = 3");
        let e = err_of(&t);
        assert!(e.contains("rmap"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let t = SMOKE.replace("players = 10", "players = \"ten\"");
        let e = err_of(&t);
        assert!(e.contains("players"), "{e}");
    }

    #[test]
    fn range_errors_name_the_key() {
        let cases = [
            ("players = 10", "players = 0", "load.players"),
            ("quizzes = 2", "quizzes = 11", "load.quizzes"),
            (
                "time_limit_ms = 5000",
                "time_limit_ms = 10",
                "quiz.time_limit_ms",
            ),
            (
                "share_correct = 0.5",
                "share_correct = 1.5",
                "answers.share_correct",
            ),
            (
                "max_connections = 100",
                "max_connections = 5",
                "load.max_connections",
            ),
            ("duration_s = 30", "duration_s = 0", "load.duration_s"),
            (
                "min_ms = 100, max_ms = 1000",
                "min_ms = 2000, max_ms = 1000",
                "answers.think_time.min_ms",
            ),
        ];
        for (from, to, key) in cases {
            let e = err_of(&SMOKE.replace(from, to));
            assert!(e.contains(key), "{to}: {e}");
        }
    }

    #[test]
    fn thresholds_parse_and_unknown_ones_are_named() {
        let t = format!(
            "{SMOKE}[thresholds]\nanswer_p99_ms = 250\njoin_p99_ms = \"<100\"\nerrors_max = 0\n"
        );
        let s = Scenario::parse(&t, "toml").unwrap();
        assert_eq!(s.thresholds.len(), 3);
        let e = err_of(&format!("{SMOKE}[thresholds]\nanswer_p98_ms = 250\n"));
        assert!(
            e.contains("thresholds.answer_p98_ms") && e.contains("unknown"),
            "{e}"
        );
        let e = err_of(&format!("{SMOKE}[thresholds]\nanswer_p99_ms = \"fast\"\n"));
        assert!(e.contains("thresholds.answer_p99_ms"), "{e}");
    }

    fn staged(stages: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(&format!("{SMOKE}{stages}"), "toml")
    }

    #[test]
    fn stages_schedule_joins_and_leaves() {
        // 0 -> 10 over 10 s, hold 5 s, down to 4 over 6 s.
        let s = staged(
            "[[stages]]\nduration_s = 10\ntarget = 10\n[[stages]]\nduration_s = 5\ntarget = 10\n[[stages]]\nduration_s = 6\ntarget = 4\n",
        )
        .unwrap();
        assert_eq!(s.join_offset_us(0), 1_000_000);
        assert_eq!(s.join_offset_us(9), 10_000_000);
        assert_eq!(s.ramp_s(), 10.0);
        // The last to join leaves first, at the start of the ramp down.
        assert_eq!(s.leave_offset_us(9), Some(15_000_000));
        assert_eq!(s.leave_offset_us(4), Some(20_000_000));
        assert_eq!(s.leave_offset_us(3), None);
        // Connected at any instant never exceeds the curve.
        for t in (0..=21_000_000).step_by(250_000) {
            let curve = if t <= 10_000_000 {
                t as f64 / 1e6
            } else if t <= 15_000_000 {
                10.0
            } else {
                10.0 - (t - 15_000_000) as f64 / 1e6
            };
            let inside = (0..10)
                .filter(|&i| {
                    s.join_offset_us(i) <= t && s.leave_offset_us(i).is_none_or(|l| t <= l)
                })
                .count();
            assert_eq!(inside, curve.floor() as usize, "t = {t}");
        }
        // Without stages: the ramp, nobody leaves.
        let plain = Scenario::parse(SMOKE, "toml").unwrap();
        assert_eq!(plain.join_offset_us(5), 50_000);
        assert_eq!(plain.leave_offset_us(5), None);
    }

    #[test]
    fn stage_errors_name_the_key() {
        for (stages, key) in [
            ("[[stages]]\nduration_s = 0\ntarget = 10\n", "stages.duration_s"),
            ("[[stages]]\nduration_s = 40\ntarget = 10\n", "stages.duration_s"),
            ("[[stages]]\nduration_s = 5\ntarget = 9\n", "stages.target"),
            (
                "[[stages]]\nduration_s = 5\ntarget = 10\n[[stages]]\nduration_s = 5\ntarget = 2\n[[stages]]\nduration_s = 5\ntarget = 6\n",
                "stages.target",
            ),
            ("[[stages]]\nduration_s = 5\ntarget = 10\nramp = 3\n", "ramp"),
        ] {
            let e = staged(stages).unwrap_err().to_string();
            assert!(e.contains(key), "{stages}: {e}");
        }
    }

    #[test]
    fn non_loopback_target_is_refused() {
        let e = err_of(&SMOKE.replace("127.0.0.1:8080", "10.0.0.5:8080"));
        assert!(e.contains("target.url") && e.contains("loopback"), "{e}");
    }

    #[test]
    fn too_many_players_per_worker() {
        let t = SMOKE
            .replace("players = 10", "players = 40000")
            .replace("max_connections = 100", "max_connections = 50000")
            .replace("mode = \"live\"", "mode = \"live\"\nworkers = 2");
        let e = err_of(&t);
        assert!(e.contains("load.workers"), "{e}");
        let t = t.replace("workers = 2", "workers = 0");
        let s = Scenario::parse(&t, "toml").unwrap();
        assert_eq!(s.worker_count(), 3);
    }

    #[test]
    fn think_time_samples_stay_in_bounds() {
        let d = [
            ThinkTime::Uniform {
                min_ms: 10,
                max_ms: 20,
            },
            ThinkTime::Exponential {
                mean_ms: 100,
                min_ms: 5,
                max_ms: 300,
            },
            ThinkTime::LogNormal {
                median_ms: 100,
                sigma: 1.0,
                max_ms: 400,
            },
        ];
        for t in &d {
            for i in 0..100 {
                let u = i as f64 / 100.0;
                let v = t.sample(u, 1.0 - u);
                assert!(v <= t.max_ms(), "{t:?} {v}");
            }
        }
    }

    #[test]
    fn shipped_scenarios_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut dirs = vec![root];
        let (mut n, mut attacks) = (0, 0);
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                    continue;
                }
                let sc = Scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
                attacks += usize::from(sc.attack.is_some());
            }
        }
        assert!(n >= 13, "{n} scenarios");
        assert_eq!(attacks, 6, "one scenario per attack kind under hostile/");
    }
}
