//! The metric names PromQL expressions read, as Prometheus's own parser sees them
//! (`deploy/tools/promql-metrics`, built from `github.com/prometheus/prometheus`'s
//! `promql/parser`): a syntax error is reported with the parser's message.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::tools::{self, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum PromqlError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("`{expr}`: {message}")]
    Invalid { expr: String, message: String },
    #[error("promql-metrics: {0}")]
    Output(String),
}

/// Grafana's interval variables, replaced by a duration so the expression is PromQL.
/// (Other variables, such as `$namespace`, are inside label-matcher strings.)
const GRAFANA_DURATIONS: &[(&str, &str)] = &[
    ("$__rate_interval", "1m"),
    ("$__interval", "1m"),
    ("$__range", "1h"),
];

/// An expression from a Grafana dashboard, as Prometheus receives it.
pub fn from_grafana(expr: &str) -> String {
    GRAFANA_DURATIONS
        .iter()
        .fold(expr.to_string(), |e, (var, d)| e.replace(var, d))
}

/// For each expression, the metric names its selectors read (in the input's order).
/// The first expression that does not parse is the error.
pub fn metric_names(exprs: &[String]) -> Result<Vec<BTreeSet<String>>, PromqlError> {
    let t = tools::tools()?;
    let input = serde_json::to_vec(exprs).map_err(|e| PromqlError::Output(e.to_string()))?;
    let out = tools::run(
        &mut Command::new(&t.promql_metrics),
        Some(&input),
        Duration::from_secs(60),
    )?;
    if !out.ok() {
        return Err(PromqlError::Output(out.text()));
    }
    let results: Vec<Value> =
        serde_json::from_str(&out.stdout).map_err(|e| PromqlError::Output(format!("{e}")))?;
    if results.len() != exprs.len() {
        return Err(PromqlError::Output(format!(
            "{} results for {} expressions",
            results.len(),
            exprs.len()
        )));
    }
    results
        .iter()
        .zip(exprs)
        .map(|(r, e)| {
            if let Some(message) = r["error"].as_str() {
                return Err(PromqlError::Invalid {
                    expr: e.clone(),
                    message: message.into(),
                });
            }
            Ok(r["metrics"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect())
        })
        .collect()
}
