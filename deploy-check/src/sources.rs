//! What the binaries export, read from their source: the Prometheus metric names each
//! crate registers.
//!
//! The scan is deliberately simple and fails loudly rather than guessing: in every `.rs`
//! file of a crate's `src/`, a string literal that is the first argument of a metric
//! constructor (`Opts::new`, `HistogramOpts::new`, `IntCounter::new`, `IntGauge::new`,
//! `Histogram::new`, `Counter::new`, `Gauge::new`, or a local helper closure named `c`,
//! `g`, `h`, `cv`, `gv`, `hv`) is a metric name; a `Registry::new_custom(Some("p"), …)` in the
//! same file prefixes them with `p_`. Histograms also export `_bucket`, `_sum`, `_count`.
//! A `ProcessCollector::for_self()` exports the `prometheus` crate's fixed process family
//! ([`PROCESS_METRICS`], never prefixed: it names its own metrics).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const CONSTRUCTORS: &[&str] = &[
    "Opts::new",
    "HistogramOpts::new",
    "IntCounter::new",
    "IntGauge::new",
    "Histogram::new",
    "Counter::new",
    "Gauge::new",
];
const HELPERS: &[&str] = &["c", "g", "h", "cv", "gv", "hv"];

/// What the `prometheus` crate's `ProcessCollector` exports on Linux (its `process`
/// feature), whatever registry it is registered on.
pub const PROCESS_METRICS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// Metric name → whether it is a histogram.
pub type Exported = BTreeMap<String, bool>;

/// Every metric registered by the crate whose source root is `src`.
pub fn exported_metrics(src: &Path) -> std::io::Result<Exported> {
    let mut out = Exported::new();
    let mut files = Vec::new();
    collect_rs(src, &mut files)?;
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        if strip_comments(&text).contains("ProcessCollector::for_self()") {
            out.extend(PROCESS_METRICS.iter().map(|n| (n.to_string(), false)));
        }
        scan(&text, &mut out);
    }
    Ok(out)
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect_rs(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Scans one file's text.
pub fn scan(text: &str, out: &mut Exported) {
    let text = &strip_comments(text);
    let prefix = text.find("Registry::new_custom(").and_then(|at| {
        let rest = &text[at..];
        let s = rest.find("Some(\"")? + 6;
        let e = rest[s..].find('"')?;
        Some(format!("{}_", &rest[s..s + e]))
    });
    let prefix = prefix.unwrap_or_default();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find('(') {
        let open = i + off;
        i = open + 1;
        // the callee: identifier characters and `::` right before `(`
        let mut s = open;
        while s > 0
            && (bytes[s - 1].is_ascii_alphanumeric()
                || bytes[s - 1] == b'_'
                || bytes[s - 1] == b':')
        {
            s -= 1;
        }
        let callee = &text[s..open];
        let is_ctor = CONSTRUCTORS.iter().any(|c| callee.ends_with(c)) || HELPERS.contains(&callee);
        if !is_ctor {
            continue;
        }
        let rest = text[open + 1..].trim_start();
        let Some(lit) = rest.strip_prefix('"') else {
            continue;
        };
        let Some(end) = lit.find('"') else {
            continue;
        };
        let name = &lit[..end];
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        let histogram = callee.ends_with("HistogramOpts::new")
            || callee.ends_with("Histogram::new")
            || callee == "h"
            || callee == "hv";
        let full = format!("{prefix}{name}");
        let e = out.entry(full).or_insert(false);
        *e |= histogram;
    }
}

/// Every series name a scrape shows for these metrics (histograms' suffixes included).
pub fn series_names(exported: &Exported) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    for (name, histogram) in exported {
        s.insert(name.clone());
        if *histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                s.insert(format!("{name}{suffix}"));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_names_prefix_and_histograms() {
        let src = r#"
            let registry = Registry::new_custom(Some("quiz".into()), None);
            let g = |name: &str, help: &str| IntGauge::new(name, help);
            connections: reg(&registry, g("ws_connections", "Open")),
            // c("commented_out", "x")
            h("broadcast_seconds", "Encode"),
            HistogramVec::new(HistogramOpts::new("store_seconds", "x"), &["op"]),
        "#;
        let mut out = Exported::new();
        scan(src, &mut out);
        let out: Vec<_> = out.into_iter().collect();
        assert_eq!(
            out,
            vec![
                ("quiz_broadcast_seconds".to_string(), true),
                ("quiz_store_seconds".to_string(), true),
                ("quiz_ws_connections".to_string(), false),
            ]
        );
    }
}
