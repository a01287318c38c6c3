//! Just enough PromQL to list the metric names an expression reads.
//!
//! Identifiers inside `{…}` (label matchers), `[…]` (ranges), quoted strings and the label
//! lists of `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` are skipped; an
//! identifier followed by `(` must be a known function or aggregation (so a typo there is
//! caught too); every other identifier is a metric name.

use std::collections::BTreeSet;

const FUNCTIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "changes",
    "resets",
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "floor",
    "round",
    "clamp",
    "clamp_min",
    "clamp_max",
    "histogram_quantile",
    "label_replace",
    "label_join",
    "sort",
    "sort_desc",
    "time",
    "timestamp",
    "vector",
    "scalar",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "quantile_over_time",
    "predict_linear",
];

const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN",
];

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

#[derive(Debug, thiserror::Error)]
#[error("`{expr}`: {message}")]
pub struct PromqlError {
    pub expr: String,
    pub message: String,
}

/// The metric names `expr` reads.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, PromqlError> {
    let bad = |message: String| PromqlError {
        expr: expr.to_string(),
        message,
    };
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let mut skip_parens = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                i += 1;
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' {
                        i += 1;
                        while i < chars.len() && chars[i] != '"' {
                            if chars[i] == '\\' {
                                i += 1;
                            }
                            i += 1;
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_parens => {
                skip_parens = false;
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let call = j < chars.len() && chars[j] == '(';
                if GROUPING.contains(&word.as_str()) {
                    skip_parens = true;
                } else if KEYWORDS.contains(&word.as_str())
                    || (!call && FUNCTIONS.contains(&word.as_str()))
                {
                    // keyword, or an aggregation written `sum by (x) (...)`
                } else if call {
                    if !FUNCTIONS.contains(&word.as_str()) {
                        return Err(bad(format!("unknown function `{word}`")));
                    }
                } else {
                    out.insert(word);
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // numbers, including 1e3 and durations outside brackets (offset 5m)
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            '$' => {
                // Grafana variables outside strings ($__rate_interval is inside [..])
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_metrics_only() {
        let e = r#"histogram_quantile(0.99, sum by (le, node) (rate(quiz_broadcast_seconds_bucket{node=~"$node"}[$__rate_interval]))) > 0.1 and on(node) up{job="x"} == 1"#;
        let m = metric_names(e).unwrap();
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            vec!["quiz_broadcast_seconds_bucket", "up"]
        );
        assert!(metric_names("rated(x[5m])").is_err());
        let m = metric_names("sum without (partition) (persister_consumer_lag) offset 5m").unwrap();
        assert_eq!(m.len(), 1);
    }
}
