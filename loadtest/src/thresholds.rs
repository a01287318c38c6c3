//! Thresholds: upper bounds on a run's figures (`[thresholds]` in the
//! scenario, `--threshold` on the command line), judged on the final result
//! beside the checks. A breach fails the run like a failed check (exit 1).
//!
//! A threshold is `name = limit` (at most `limit`) or `name = "<limit"`
//! (strictly below), `"<=limit"` also accepted. Names:
//!
//! - `<histogram>_<stat>_ms` for every histogram (`join`, `connect`,
//!   `reconnect`, `answer`, `question`, `leaderboard`) and stat (`p50`,
//!   `p90`, `p99`, `p999`, `max`, `mean`), e.g. `answer_p99_ms`; a histogram
//!   without samples holds every bound (nothing was measured above it), and
//!   the outcome says "no samples";
//! - `errors_max`: all `error.*` counters summed;
//! - `answers_unacknowledged_max`: answers never acknowledged;
//! - `players_failed_max`: players that failed (join, connect, reconnect).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::HISTS;

const STATS: [&str; 6] = ["p50", "p90", "p99", "p999", "max", "mean"];
const COUNTS: [&str; 3] = [
    "errors_max",
    "answers_unacknowledged_max",
    "players_failed_max",
];

/// A scenario's bound as written: a number (at most) or `"<250"`/`"<=250"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bound {
    AtMost(f64),
    Expr(String),
}

/// A parsed bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub limit: f64,
    /// `<` rather than `<=`.
    pub strict: bool,
}

impl Limit {
    fn op(&self) -> &'static str {
        if self.strict {
            "<"
        } else {
            "<="
        }
    }

    fn holds(&self, actual: f64) -> bool {
        if self.strict {
            actual < self.limit
        } else {
            actual <= self.limit
        }
    }
}

impl Bound {
    pub fn limit(&self) -> Result<Limit, String> {
        let (strict, num) = match self {
            Bound::AtMost(v) => (false, *v),
            Bound::Expr(s) => {
                let s = s.trim();
                let (strict, rest) = if let Some(r) = s.strip_prefix("<=") {
                    (false, r)
                } else if let Some(r) = s.strip_prefix('<') {
                    (true, r)
                } else {
                    (false, s)
                };
                let v: f64 = rest
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{s}` is not a bound like 250, \"<250\" or \"<=250\""))?;
                (strict, v)
            }
        };
        if !num.is_finite() || num < 0.0 {
            return Err(format!("must be a finite number >= 0, got {num}"));
        }
        Ok(Limit { limit: num, strict })
    }
}

/// Is `name` a threshold this tool knows?
pub fn known(name: &str) -> bool {
    if COUNTS.contains(&name) {
        return true;
    }
    let Some(stem) = name.strip_suffix("_ms") else {
        return false;
    };
    HISTS.iter().any(|h| {
        stem.strip_prefix(h)
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(|stat| STATS.contains(&stat))
    })
}

/// Every threshold name, for error messages and the docs.
pub fn names_help() -> String {
    format!(
        "<{}>_<{}>_ms, {}",
        HISTS.join("|"),
        STATS.join("|"),
        COUNTS.join(", ")
    )
}

/// Validate a scenario's `[thresholds]`; `Err((name, message))`.
pub fn validate(t: &BTreeMap<String, Bound>) -> Result<(), (String, String)> {
    for (name, b) in t {
        if !known(name) {
            return Err((
                name.clone(),
                format!("unknown threshold; known: {}", names_help()),
            ));
        }
        b.limit().map_err(|m| (name.clone(), m))?;
    }
    Ok(())
}

/// Parse one `--threshold` argument: `answer_p99_ms<250`,
/// `answer_p99_ms<=250` or `errors_max=0`.
pub fn parse_cli(arg: &str) -> Result<(String, Bound), String> {
    let at = arg.find(['<', '=']).ok_or_else(|| {
        format!("--threshold `{arg}`: expected NAME<VALUE, NAME<=VALUE or NAME=VALUE")
    })?;
    let (name, rest) = arg.split_at(at);
    let name = name.trim().to_string();
    let expr = rest.strip_prefix('=').unwrap_or(rest).to_string();
    let bound = Bound::Expr(expr);
    if !known(&name) {
        return Err(format!(
            "--threshold `{arg}`: unknown threshold `{name}`; known: {}",
            names_help()
        ));
    }
    bound
        .limit()
        .map_err(|m| format!("--threshold `{arg}`: {m}"))?;
    Ok((name, bound))
}

/// One threshold judged, in the result file and the JUnit output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThresholdOutcome {
    pub name: String,
    /// `<` or `<=`.
    pub op: String,
    pub limit: f64,
    /// None: the histogram had no samples.
    pub actual: Option<f64>,
    pub passed: bool,
    pub message: String,
}

/// Judge every threshold (names already validated) against the figures `actual` gives by
/// threshold name (None: the histogram had no samples); the run's result gives them
/// ([`crate::result::RunResult::threshold_figure`]).
pub fn evaluate(
    t: &BTreeMap<String, Bound>,
    actual: impl Fn(&str) -> Option<f64>,
) -> Vec<ThresholdOutcome> {
    t.iter()
        .map(|(name, b)| {
            let Ok(l) = b.limit() else {
                return ThresholdOutcome {
                    name: name.clone(),
                    message: format!("threshold {name}: invalid bound {b:?}"),
                    ..Default::default()
                };
            };
            let got = actual(name);
            let passed = got.is_none_or(|v| l.holds(v));
            let message = match got {
                None => format!("threshold {name} {} {}: no samples", l.op(), l.limit),
                Some(v) if passed => format!("threshold {name} {} {}: {v}", l.op(), l.limit),
                Some(v) => format!(
                    "threshold breached: {name} = {v}, required {} {}",
                    l.op(),
                    l.limit
                ),
            };
            ThresholdOutcome {
                name: name.clone(),
                op: l.op().to_string(),
                limit: l.limit,
                actual: got,
                passed,
                message,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for n in [
            "answer_p99_ms",
            "join_p99_ms",
            "question_p50_ms",
            "leaderboard_max_ms",
            "reconnect_p999_ms",
            "errors_max",
            "answers_unacknowledged_max",
        ] {
            assert!(known(n), "{n}");
        }
        for n in [
            "answer_p98_ms",
            "answer_p99",
            "p99_ms",
            "errors",
            "answerx_p99_ms",
        ] {
            assert!(!known(n), "{n}");
        }
    }

    #[test]
    fn bounds_and_cli() {
        assert_eq!(
            Bound::AtMost(250.0).limit().unwrap(),
            Limit {
                limit: 250.0,
                strict: false
            }
        );
        assert!(Bound::Expr("<250".into()).limit().unwrap().strict);
        assert!(!Bound::Expr("<= 250".into()).limit().unwrap().strict);
        assert!(Bound::Expr("abc".into()).limit().is_err());
        assert!(Bound::AtMost(-1.0).limit().is_err());
        let (n, b) = parse_cli("answer_p99_ms<250").unwrap();
        assert_eq!(n, "answer_p99_ms");
        assert_eq!(
            b.limit().unwrap(),
            Limit {
                limit: 250.0,
                strict: true
            }
        );
        let (n, b) = parse_cli("errors_max=0").unwrap();
        assert_eq!(n, "errors_max");
        assert_eq!(
            b.limit().unwrap(),
            Limit {
                limit: 0.0,
                strict: false
            }
        );
        assert!(parse_cli("errors_max<=3").is_ok());
        assert!(parse_cli("nope<3")
            .unwrap_err()
            .contains("unknown threshold"));
        assert!(parse_cli("answer_p99_ms").is_err());
        assert!(parse_cli("answer_p99_ms<x").is_err());
    }

    #[test]
    fn evaluate_judges_each_figure() {
        let mut t = BTreeMap::new();
        t.insert("answer_p99_ms".to_string(), Bound::AtMost(250.0));
        t.insert("reconnect_p99_ms".to_string(), Bound::AtMost(1.0));
        t.insert("errors_max".to_string(), Bound::Expr("<3".into()));
        t.insert(
            "answers_unacknowledged_max".to_string(),
            Bound::Expr("<0".into()),
        );
        let out = evaluate(&t, |name| match name {
            "answer_p99_ms" => Some(300.0),
            "errors_max" => Some(2.0),
            "answers_unacknowledged_max" => Some(0.0),
            _ => None,
        });
        let by = |n: &str| out.iter().find(|o| o.name == n).unwrap().clone();
        assert!(!by("answer_p99_ms").passed);
        assert!(by("answer_p99_ms").message.contains("breached"));
        assert_eq!(by("answer_p99_ms").actual, Some(300.0));
        assert!(by("reconnect_p99_ms").passed);
        assert!(by("reconnect_p99_ms").message.contains("no samples"));
        assert!(by("errors_max").passed);
        // `<0` can never hold: strictly below zero.
        assert!(!by("answers_unacknowledged_max").passed);
    }
}
