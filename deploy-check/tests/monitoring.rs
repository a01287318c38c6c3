//! The Prometheus alert rules pass `promtool check rules` and their unit tests (`promtool
//! test rules`, a firing and a silent case for every alert), every alert has a runbook, the
//! scrape configuration passes `promtool check config`, and the Grafana dashboard and the
//! alerts only use metrics the binaries export (read from each crate's source, the
//! expressions parsed by Prometheus's own parser) and cover what operators must see.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::read;
use deploy_check::{promql_names, promtool, repo_root, runbooks, sources};
use serde_json::Value;

const ALERTS: &str = "deploy/monitoring/prometheus-alerts.yaml";
const ALERT_TESTS: &str = "deploy/monitoring/tests/alerts.test.yaml";
const SCRAPE: &str = "deploy/monitoring/prometheus-scrape.yaml";

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
    let v: Value = serde_yaml::from_str(&read(ALERTS)).expect("alerts are YAML");
    let groups = v["groups"].as_array().expect("groups");
    assert!(!groups.is_empty());
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Every dashboard and alert expression parses (Prometheus's parser; Grafana's interval
/// variables replaced by a duration) and reads only metrics a binary exports.
#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let all = exported();
    let d = dashboard();
    let mut exprs: Vec<String> = dashboard_exprs(&d)
        .iter()
        .map(|e| promql_names::from_grafana(e))
        .collect();
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
    let names = promql_names::metric_names(&exprs).unwrap_or_else(|err| panic!("{err}"));
    for (e, names) in exprs.iter().zip(names) {
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

/// `promtool check rules`: the rule file parses, every expression is PromQL, every
/// annotation template renders, no rule is duplicated (`--lint-fatal`).
#[test]
fn alert_rules_pass_promtool_check_rules() {
    let out = promtool::check_rules(&[&repo_root().join(ALERTS)]).unwrap_or_else(|e| panic!("{e}"));
    let n = alert_rules().len();
    assert!(
        out.contains(&format!("SUCCESS: {n} rules found")),
        "promtool saw a different number of rules than {n}: {out}"
    );
}

/// The unit tests: their rule file is the real one; every alert has a test where it fires
/// and one where it stays silent; every series they feed is a metric a binary exports (so
/// an alert that fires in its test reads real metrics); `promtool test rules` passes.
#[test]
fn every_alert_has_passing_unit_tests_that_fire_and_stay_silent() {
    let tests: Value = serde_yaml::from_str(&read(ALERT_TESTS)).expect("alert tests are YAML");
    let rule_files: Vec<&str> = tests["rule_files"]
        .as_array()
        .expect("rule_files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let test_dir = Path::new(ALERT_TESTS).parent().expect("a folder");
    let targets: BTreeSet<_> = rule_files
        .iter()
        .map(|f| normalize(&test_dir.join(f)))
        .collect();
    assert_eq!(
        targets,
        BTreeSet::from([normalize(Path::new(ALERTS))]),
        "{ALERT_TESTS} must test {ALERTS}"
    );

    // alert name -> (fires somewhere, silent somewhere)
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut series = BTreeSet::new();
    for t in tests["tests"].as_array().expect("tests") {
        for s in t["input_series"].as_array().into_iter().flatten() {
            let s = s["series"].as_str().expect("series");
            series.insert(s.split('{').next().unwrap_or(s).trim().to_string());
        }
        for a in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = a["alertname"].as_str().expect("alertname").to_string();
            let fires = a["exp_alerts"].as_array().is_some_and(|x| !x.is_empty());
            let c = cases.entry(name).or_default();
            if fires {
                c.0 = true;
            } else {
                c.1 = true;
            }
        }
    }
    for r in alert_rules() {
        let name = r["alert"].as_str().expect("alert");
        let (fires, silent) = cases.get(name).copied().unwrap_or_default();
        assert!(fires, "{name}: no unit test where it fires ({ALERT_TESTS})");
        assert!(
            silent,
            "{name}: no unit test where it stays silent ({ALERT_TESTS})"
        );
    }
    let all = exported();
    for s in &series {
        assert!(
            all.contains(s) || s == "up",
            "{ALERT_TESTS} feeds {s}, which no binary exports"
        );
    }
    promtool::test_rules(&repo_root().join(ALERT_TESTS)).unwrap_or_else(|e| panic!("{e}"));
}

/// `a/b/../c` -> `a/c`, for comparing the paths a test file names.
fn normalize(p: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Every alert's `runbook_url` is `docs/runbooks.md#<anchor>` and the anchor is a heading
/// there; every heading of an alert section names an alert that exists.
#[test]
fn every_alert_has_a_runbook() {
    let rules: Value = serde_yaml::from_str(&read(ALERTS)).expect("alerts are YAML");
    let doc = read(runbooks::DOC);
    let problems = runbooks::problems(&rules, &doc);
    assert!(problems.is_empty(), "runbooks:\n{}", problems.join("\n"));
    let names: BTreeSet<String> = alert_rules()
        .iter()
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect();
    for line in doc.lines().filter(|l| l.starts_with("### Quiz")) {
        let title = line.trim_start_matches("### ").trim();
        assert!(
            names.contains(title),
            "{}: section {title} is for no alert",
            runbooks::DOC
        );
    }
}

/// `promtool check config` on the scrape configuration. Debian's promtool is built without
/// Kubernetes service discovery, so it checks a copy whose `kubernetes_sd_configs` (checked
/// here: pod role, nothing else) is an empty `static_configs`; everything else (relabelling
/// regexes and actions, intervals, job names) is promtool's to judge.
#[test]
fn scrape_config_passes_promtool_check_config() {
    let mut v: Value = serde_yaml::from_str(&read(SCRAPE)).expect("scrape config is YAML");
    let jobs = v["scrape_configs"].as_array_mut().expect("scrape_configs");
    assert!(!jobs.is_empty());
    for job in jobs {
        let job = job.as_object_mut().expect("a scrape config is a mapping");
        let sd = job
            .remove("kubernetes_sd_configs")
            .expect("kubernetes_sd_configs");
        assert_eq!(
            sd,
            serde_json::json!([{"role": "pod"}]),
            "the relabelling reads pod meta labels: role pod"
        );
        job.insert(
            "static_configs".into(),
            serde_json::json!([{"targets": []}]),
        );
    }
    let dir = std::env::temp_dir().join(format!("deploy-check-scrape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prometheus.yaml");
    std::fs::write(&file, serde_yaml::to_string(&v).unwrap()).unwrap();
    let result = promtool::check_config(&file);
    std::fs::remove_dir_all(&dir).ok();
    result.unwrap_or_else(|e| panic!("{e}"));
}
