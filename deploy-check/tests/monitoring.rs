//! The Grafana dashboard and the Prometheus alert rules only use metrics the binaries
//! export (read from each crate's source), and cover what operators must see.

mod common;

use std::collections::BTreeSet;

use common::read;
use deploy_check::{promql, repo_root, sources};
use serde_json::Value;

/// Every series any binary of the workspace exports.
fn exported() -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for krate in ["core", "edge-lb", "persister"] {
        let m = sources::exported_metrics(&repo_root().join(krate).join("src"))
            .unwrap_or_else(|e| panic!("{krate}: {e}"));
        assert!(
            m.len() >= 8,
            "{krate}: only {} metrics found: {m:?}",
            m.len()
        );
        all.extend(sources::series_names(&m));
    }
    all
}

/// The scanner is not blind: every metric named in the metric tables of docs/core.md and
/// docs/edge-lb.md is found in the source.
#[test]
fn source_scan_finds_every_documented_metric() {
    let all = exported();
    for (doc, prefix) in [("docs/core.md", "quiz_"), ("docs/edge-lb.md", "edge_lb_")] {
        let text = read(doc);
        let mut n = 0;
        for line in text.lines().filter(|l| l.starts_with("| `")) {
            let cell = line.split('|').nth(1).unwrap_or("");
            for name in cell.split('`').skip(1).step_by(2) {
                let name = name.split('{').next().unwrap_or("");
                if name.starts_with(prefix) {
                    n += 1;
                    assert!(
                        all.contains(name),
                        "{doc} documents {name}, not found in source"
                    );
                }
            }
        }
        assert!(n >= 8, "{doc}: metric table not found");
    }
}

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/monitoring/grafana-dashboard.json"))
        .expect("dashboard is JSON")
}

/// Every PromQL expression of the dashboard (panels, nested rows, templating).
fn dashboard_exprs(d: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        ("query", Value::String(s)) if s.starts_with("label_values(") => {
                            // label_values(<series selector>, label)
                            let inner = &s["label_values(".len()..s.rfind(',').unwrap_or(s.len())];
                            out.push(inner.to_string());
                        }
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(d, &mut out);
    out
}

fn alert_rules() -> Vec<Value> {
    let v: Value = serde_yaml::from_str(&read("deploy/monitoring/prometheus-alerts.yaml"))
        .expect("alerts are YAML");
    let groups = v["groups"].as_array().expect("groups");
    assert!(!groups.is_empty());
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let all = exported();
    let d = dashboard();
    let mut exprs = dashboard_exprs(&d);
    assert!(
        exprs.len() >= 20,
        "dashboard has {} expressions",
        exprs.len()
    );
    exprs.extend(
        alert_rules()
            .iter()
            .map(|r| r["expr"].as_str().expect("expr").to_string()),
    );
    for e in &exprs {
        let names = promql::metric_names(e).unwrap_or_else(|err| panic!("{err}"));
        assert!(!names.is_empty(), "`{e}` reads no metric");
        for n in names {
            assert!(
                all.contains(&n) || n == "up",
                "`{e}` uses {n}, which no binary exports"
            );
        }
    }
}

#[test]
fn dashboard_covers_what_operators_watch() {
    let d = dashboard();
    let exprs = dashboard_exprs(&d).join("\n");
    for (what, metric) in [
        ("connections", "quiz_ws_connections"),
        ("edge connections", "edge_lb_downstream_connections"),
        ("answers/s by outcome", "quiz_answers_total"),
        ("broadcast latency", "quiz_broadcast_seconds_bucket"),
        ("queue drops", "quiz_stale_leaderboards_dropped_total"),
        ("slow consumers", "quiz_slow_consumer_closes_total"),
        ("consumer lag", "persister_consumer_lag"),
        ("health transitions", "edge_lb_health_transitions_total"),
    ] {
        assert!(exprs.contains(metric), "dashboard lacks {what} ({metric})");
    }
    assert!(
        exprs.contains("sum by (outcome)"),
        "answers must be split by outcome"
    );
    // panel ids unique, every panel has a datasource
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate panel id"
        );
        if p["type"] != "row" {
            assert!(
                p["datasource"].is_object(),
                "panel {} has no datasource",
                p["title"]
            );
            assert!(p["targets"].as_array().is_some_and(|t| !t.is_empty()));
        }
    }
}

#[test]
fn alert_rules_are_well_formed_and_cover_the_failure_modes() {
    let rules = alert_rules();
    let mut names = BTreeSet::new();
    for r in &rules {
        let name = r["alert"].as_str().expect("alert name");
        assert!(names.insert(name.to_string()), "duplicate alert {name}");
        assert!(
            matches!(
                r["labels"]["severity"].as_str(),
                Some("critical" | "warning" | "info")
            ),
            "{name}: severity"
        );
        assert!(r["annotations"]["summary"].is_string(), "{name}: summary");
        if let Some(f) = r.get("for") {
            let f = f.as_str().expect("for is a duration string");
            assert!(f.ends_with('m') || f.ends_with('s'), "{name}: for {f}");
        }
    }
    let all: String = rules
        .iter()
        .filter_map(|r| r["expr"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for m in [
        "edge_lb_health_transitions_total",
        "quiz_answers_total",
        "quiz_broadcast_seconds_bucket",
        "quiz_slow_consumer_closes_total",
        "persister_consumer_lag",
        "persister_ready",
        "quiz_connections_refused_total",
    ] {
        assert!(all.contains(m), "no alert on {m}");
    }
}

/// The scrape configuration sets the labels the dashboard filters on.
#[test]
fn scrape_config_sets_the_labels_the_dashboard_uses() {
    let v: Value = serde_yaml::from_str(&read("deploy/monitoring/prometheus-scrape.yaml"))
        .expect("scrape config is YAML");
    let relabel = v["scrape_configs"][0]["relabel_configs"]
        .as_array()
        .expect("relabel_configs");
    let targets: BTreeSet<&str> = relabel
        .iter()
        .filter_map(|r| r["target_label"].as_str())
        .collect();
    for l in ["namespace", "pod", "job", "__address__", "__metrics_path__"] {
        assert!(targets.contains(l), "scrape config does not set {l}");
    }
}
