//! Output: the summary table (terminal), the HTML report (self-contained,
//! inline SVG plots drawn here, no scripts, no CDN), and `compare`.

use std::fmt::Write as _;

use crate::metrics::HISTS;
use crate::result::RunResult;

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The end-of-run table.
pub fn summary(r: &RunResult) -> String {
    let mut s = String::new();
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(
        s,
        "== loadtest {} -> {} ({}) at {}: {verdict} in {:.1} s",
        r.scenario, r.target, r.target_kind, r.started_at, r.elapsed_s
    );
    let c = &r.counts;
    let _ = writeln!(
        s,
        "players: planned {} joined {} ended {} left {} failed {} verified {} | max connected {}",
        c.planned, c.joined, c.ended, c.left, c.failed, c.verified, c.max_connected
    );
    let _ = writeln!(
        s,
        "answers: sent {} acknowledged {} unacknowledged {} | frames received {}",
        c.answers_sent, c.answers_acked, c.unacknowledged, c.frames_in
    );
    let _ = writeln!(
        s,
        "{:<12} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency ms", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for name in HISTS {
        if let Some(l) = r.latency_ms.get(name) {
            if l.count == 0 {
                continue;
            }
            let _ = writeln!(
                s,
                "{:<12} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
                name,
                l.count,
                fmt_ms(l.p50_ms),
                fmt_ms(l.p90_ms),
                fmt_ms(l.p99_ms),
                fmt_ms(l.p999_ms),
                fmt_ms(l.max_ms)
            );
        }
    }
    let _ = writeln!(
        s,
        "rates: answers/s mean {:.0} peak {:.0} | frames/s mean {:.0} peak {:.0}",
        r.rates.answers_per_s_mean,
        r.rates.answers_per_s_peak,
        r.rates.frames_per_s_mean,
        r.rates.frames_per_s_peak
    );
    let g = &r.generator;
    let _ = writeln!(
        s,
        "generator: {} workers, CPU {:.2} s = {:.2} µs/frame overall, {:.2} µs/frame steady ({} frames; budget 5), peak RSS {:.1} MB = {:.2} KB/connection, {:.0} B/frame (budget 1500)",
        g.workers,
        g.cpu_s,
        g.cpu_us_per_frame,
        g.steady_cpu_us_per_frame,
        g.steady_frames,
        g.peak_rss_mb,
        g.peak_rss_kb_per_connection,
        g.peak_rss_bytes_per_frame
    );
    for (label, p) in &r.processes {
        let _ = writeln!(
            s,
            "process {label}: CPU {:.2} s, mean {:.2} cores, max {:.2} cores, max RSS {:.1} MB",
            p.cpu_s, p.cpu_cores_mean, p.cpu_cores_max, p.rss_mb_max
        );
    }
    let notable: Vec<String> = r
        .counters
        .iter()
        .filter(|(k, _)| {
            k.starts_with("error.")
                || k.starts_with("close.")
                || k.starts_with("answers_rejected.")
                || k.starts_with("answers_resent")
                || k.as_str() == "reconnects"
                || k.as_str() == "storm_drops"
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !notable.is_empty() {
        let _ = writeln!(s, "errors/closes: {}", notable.join(" "));
    }
    if let Some(a) = &r.attack {
        let outcomes: Vec<String> = a.outcomes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let held = match (a.held_ms_p50, a.held_ms_max) {
            (Some(p50), Some(max)) => format!(" | held by the server p50 {p50} ms max {max} ms"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "attack {} from {}: {} attempts, {} frames{held} | {}",
            a.kind,
            a.source_ip,
            a.attempts,
            a.frames_sent,
            outcomes.join(" ")
        );
    }
    for e in r.host_errors.iter().take(10) {
        let _ = writeln!(s, "host error: {e}");
    }
    for f in r.failures.iter().take(10) {
        let _ = writeln!(s, "failure: {f}");
    }
    if r.warning_count > 0 {
        let _ = writeln!(
            s,
            "warnings: {} (first: {:?})",
            r.warning_count,
            r.warnings.first().map(|w| &w.detail)
        );
    }
    if r.mismatch_count > 0 {
        let _ = writeln!(s, "MISMATCHES: {}", r.mismatch_count);
        for m in r.mismatches.iter().take(20) {
            let _ = writeln!(
                s,
                "  [{}] quiz {} player {}: {}",
                m.kind,
                m.quiz_id,
                m.player_id.as_deref().unwrap_or("-"),
                m.detail
            );
        }
    }
    for t in &r.thresholds {
        let _ = writeln!(
            s,
            "{} {}",
            if t.passed {
                "threshold ok:"
            } else {
                "THRESHOLD"
            },
            t.message
        );
    }
    for w in &r.failure_reasons {
        let _ = writeln!(s, "FAIL: {w}");
    }
    s
}

/// A JUnit XML report for CI: one test suite, one test case per check and
/// per threshold, a `<failure>` with the message for each that failed.
pub fn junit(r: &RunResult) -> String {
    let cases: Vec<(&str, &str, bool, &str)> = r
        .checks
        .iter()
        .map(|c| ("checks", c.name.as_str(), c.passed, c.message.as_str()))
        .chain(
            r.thresholds
                .iter()
                .map(|t| ("thresholds", t.name.as_str(), t.passed, t.message.as_str())),
        )
        .collect();
    let failures = cases.iter().filter(|c| !c.2).count();
    let suite = format!("loadtest.{}", r.scenario);
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"loadtest\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{:.3}\">",
        cases.len(),
        r.elapsed_s
    );
    let _ = writeln!(
        s,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{:.3}\" timestamp=\"{}\">",
        esc(&suite),
        cases.len(),
        r.elapsed_s,
        esc(r.started_at.trim_end_matches('Z'))
    );
    let _ = writeln!(
        s,
        "    <properties><property name=\"target\" value=\"{}\"/><property name=\"target_kind\" value=\"{}\"/><property name=\"players\" value=\"{}\"/><property name=\"answers_acked\" value=\"{}\"/></properties>",
        esc(&r.target),
        esc(&r.target_kind),
        r.counts.joined,
        r.counts.answers_acked
    );
    for (class, name, passed, message) in &cases {
        let _ = write!(
            s,
            "    <testcase classname=\"{}.{class}\" name=\"{}\" time=\"0\"",
            esc(&suite),
            esc(name)
        );
        if *passed {
            let _ = writeln!(s, "><system-out>{}</system-out></testcase>", esc(message));
        } else {
            let _ = writeln!(
                s,
                "><failure message=\"{}\" type=\"{class}\">{}</failure></testcase>",
                esc(message),
                esc(message)
            );
        }
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A line chart as inline SVG.
pub fn svg_chart(title: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h) = (760.0, 260.0);
    let (l, r, t, b) = (60.0, 170.0, 28.0, 36.0);
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut xmax, mut ymax) = (0.0f64, 0.0f64);
    for (x, y) in pts {
        xmax = xmax.max(*x);
        ymax = ymax.max(*y);
    }
    if xmax <= 0.0 {
        xmax = 1.0;
    }
    if ymax <= 0.0 {
        ymax = 1.0;
    }
    ymax = nice_ceiling(ymax);
    let sx = |x: f64| l + x / xmax * (w - l - r);
    let sy = |y: f64| h - b - y / ymax * (h - t - b);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        s,
        r#"<text x="{l}" y="16" font-size="13" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for i in 0..=4 {
        let yv = ymax * i as f64 / 4.0;
        let y = sy(yv);
        let _ = write!(
            s,
            r##"<line x1="{l}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - r,
            l - 4.0,
            y + 4.0,
            trim_num(yv)
        );
        let xv = xmax * i as f64 / 4.0;
        let x = sx(xv);
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            h - b + 14.0,
            trim_num(xv)
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{l}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{l}" y1="{t}" x2="{l}" y2="{:.1}" stroke="#333"/>"##,
        h - b,
        w - r,
        h - b,
        h - b
    );
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since start</text><text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"#,
        (l + w - r) / 2.0,
        h - 4.0,
        h / 2.0,
        h / 2.0,
        esc(y_label)
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        if !p.is_empty() {
            let d: Vec<String> = p
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"#,
                d.join(" ")
            );
            if p.len() <= 60 {
                for (x, y) in p {
                    let _ = write!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="{color}"/>"#,
                        sx(*x),
                        sy(*y)
                    );
                }
            }
        }
        let ly = t + 4.0 + i as f64 * 16.0;
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            w - r + 10.0,
            ly,
            w - r + 26.0,
            ly + 5.0,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn nice_ceiling(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn trim_num(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The self-contained HTML report.
pub fn html(r: &RunResult) -> String {
    let mut s = String::new();
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let color = if r.passed { "#2ca02c" } else { "#d62728" };
    let _ = write!(
        s,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>loadtest {name}</title>
<style>body{{font-family:sans-serif;margin:24px;max-width:1000px}}table{{border-collapse:collapse;margin:8px 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f4f4f4}}td:first-child,th:first-child{{text-align:left}}pre{{background:#f8f8f8;padding:8px;overflow-x:auto}}</style></head><body>
<h1>loadtest: {name} <span style="color:{color}">{verdict}</span></h1>
<p>target {target} ({kind}) &middot; started {started} &middot; {elapsed:.1} s &middot; machine: {cores} cores, {cpu}, {mem} MB, kernel {kernel} &middot; tool {ver}</p>"#,
        name = esc(&r.scenario),
        target = esc(&r.target),
        kind = esc(&r.target_kind),
        started = esc(&r.started_at),
        elapsed = r.elapsed_s,
        cores = r.machine.cores,
        cpu = esc(&r.machine.cpu_model),
        mem = r.machine.mem_total_mb,
        kernel = esc(&r.machine.kernel),
        ver = esc(&r.tool_version),
    );
    if !r.failure_reasons.is_empty() {
        s.push_str("<ul>");
        for w in &r.failure_reasons {
            let _ = write!(s, "<li><b>{}</b></li>", esc(w));
        }
        s.push_str("</ul>");
    }
    if !r.checks.is_empty() || !r.thresholds.is_empty() {
        s.push_str("<h2>Checks and thresholds</h2><table><tr><th>name</th><th>kind</th><th>result</th><th>detail</th></tr>");
        let rows = r
            .checks
            .iter()
            .map(|c| (c.name.as_str(), "check", c.passed, c.message.as_str()))
            .chain(
                r.thresholds
                    .iter()
                    .map(|t| (t.name.as_str(), "threshold", t.passed, t.message.as_str())),
            );
        for (name, kind, passed, msg) in rows {
            let (word, color) = if passed {
                ("passed", "#2ca02c")
            } else {
                ("FAILED", "#d62728")
            };
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{kind}</td><td style=\"color:{color}\">{word}</td><td style=\"text-align:left\">{}</td></tr>",
                esc(name),
                esc(msg)
            );
        }
        s.push_str("</table>");
    }
    s.push_str("<h2>Summary</h2><pre>");
    s.push_str(&esc(&summary(r)));
    s.push_str("</pre>");

    s.push_str("<h2>Latency (ms, from the scheduled time)</h2><table><tr><th>metric</th><th>count</th><th>min</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</th></tr>");
    for name in HISTS {
        if let Some(l) = r.latency_ms.get(name) {
            let _ = write!(
                s,
                "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                l.count,
                fmt_ms(l.min_ms),
                fmt_ms(l.p50_ms),
                fmt_ms(l.p90_ms),
                fmt_ms(l.p99_ms),
                fmt_ms(l.p999_ms),
                fmt_ms(l.max_ms),
                fmt_ms(l.mean_ms)
            );
        }
    }
    s.push_str("</table>");

    s.push_str("<h2>Latency percentiles over time</h2>");
    for name in [
        "answer",
        "question",
        "join",
        "connect",
        "reconnect",
        "leaderboard",
    ] {
        let p50: Vec<(f64, f64)> = r
            .series
            .iter()
            .filter_map(|p| p.p50.get(name).map(|v| (p.t as f64, *v)))
            .collect();
        if p50.is_empty() {
            continue;
        }
        let p99: Vec<(f64, f64)> = r
            .series
            .iter()
            .filter_map(|p| p.p99.get(name).map(|v| (p.t as f64, *v)))
            .collect();
        s.push_str(&svg_chart(
            &format!("{name} latency"),
            "ms",
            &[(format!("{name} p50"), p50), (format!("{name} p99"), p99)],
        ));
    }
    s.push_str("<h2>Throughput over time</h2>");
    let xs = |f: &dyn Fn(&crate::metrics::SeriesPoint) -> u64| -> Vec<(f64, f64)> {
        r.series.iter().map(|p| (p.t as f64, f(p) as f64)).collect()
    };
    s.push_str(&svg_chart(
        "throughput",
        "per second",
        &[
            ("frames/s".into(), xs(&|p| p.frames)),
            ("answers/s".into(), xs(&|p| p.answers)),
            ("answer_results/s".into(), xs(&|p| p.acks)),
            ("errors/s".into(), xs(&|p| p.errors)),
        ],
    ));
    s.push_str("<h2>Connections over time</h2>");
    s.push_str(&svg_chart(
        "open WebSocket connections",
        "connections",
        &[("connected".into(), xs(&|p| p.connected))],
    ));
    if !r.proc_series.procs.is_empty() {
        s.push_str("<h2>Processes (sampled from /proc)</h2>");
        let cpu: Vec<(String, Vec<(f64, f64)>)> = r
            .proc_series
            .procs
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|p| (p.t, p.cpu_cores)).collect()))
            .collect();
        s.push_str(&svg_chart("CPU", "cores", &cpu));
        let rss: Vec<(String, Vec<(f64, f64)>)> = r
            .proc_series
            .procs
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|p| (p.t, p.rss_mb)).collect()))
            .collect();
        s.push_str(&svg_chart("resident memory", "MB", &rss));
    }
    s.push_str("<h2>Counters</h2><table><tr><th>counter</th><th>value</th></tr>");
    for (k, v) in &r.counters {
        let _ = write!(s, "<tr><td>{}</td><td>{v}</td></tr>", esc(k));
    }
    s.push_str("</table>");
    if !r.mismatches.is_empty() {
        s.push_str("<h2>Mismatches</h2><table><tr><th>kind</th><th>quiz</th><th>player</th><th>detail</th></tr>");
        for m in r.mismatches.iter().take(200) {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
                esc(&m.kind),
                esc(&m.quiz_id),
                esc(m.player_id.as_deref().unwrap_or("-")),
                esc(&m.detail)
            );
        }
        s.push_str("</table>");
    }
    s.push_str("</body></html>\n");
    s
}

/// Rows of `compare`: (label, value extractor).
type Extract = fn(&RunResult) -> Option<f64>;

fn lat(r: &RunResult, name: &str, q: fn(&crate::metrics::Summary) -> f64) -> Option<f64> {
    r.latency_ms.get(name).filter(|l| l.count > 0).map(q)
}

const ROWS: &[(&str, Extract)] = &[
    ("players joined", |r| Some(r.counts.joined as f64)),
    ("max connected", |r| Some(r.counts.max_connected as f64)),
    ("answers acknowledged", |r| {
        Some(r.counts.answers_acked as f64)
    }),
    ("answers/s mean", |r| Some(r.rates.answers_per_s_mean)),
    ("answers/s peak", |r| Some(r.rates.answers_per_s_peak)),
    ("frames/s mean", |r| Some(r.rates.frames_per_s_mean)),
    ("frames/s peak", |r| Some(r.rates.frames_per_s_peak)),
    ("join p50 ms", |r| lat(r, "join", |l| l.p50_ms)),
    ("join p99 ms", |r| lat(r, "join", |l| l.p99_ms)),
    ("connect p99 ms", |r| lat(r, "connect", |l| l.p99_ms)),
    ("reconnect p99 ms", |r| lat(r, "reconnect", |l| l.p99_ms)),
    ("answer p50 ms", |r| lat(r, "answer", |l| l.p50_ms)),
    ("answer p99 ms", |r| lat(r, "answer", |l| l.p99_ms)),
    ("answer p99.9 ms", |r| lat(r, "answer", |l| l.p999_ms)),
    ("question p50 ms", |r| lat(r, "question", |l| l.p50_ms)),
    ("question p99 ms", |r| lat(r, "question", |l| l.p99_ms)),
    ("leaderboard p99 ms", |r| {
        lat(r, "leaderboard", |l| l.p99_ms)
    }),
    ("errors", |r| {
        Some(
            r.counters
                .iter()
                .filter(|(k, _)| k.starts_with("error."))
                .map(|(_, v)| *v)
                .sum::<u64>() as f64,
        )
    }),
    ("mismatches", |r| Some(r.mismatch_count as f64)),
    ("generator µs/frame", |r| {
        Some(r.generator.cpu_us_per_frame)
    }),
    ("gen. steady µs/frame", |r| {
        Some(r.generator.steady_cpu_us_per_frame).filter(|v| *v > 0.0)
    }),
    ("generator KB/conn", |r| {
        Some(r.generator.peak_rss_kb_per_connection)
    }),
];

/// Two or more results side by side; ratios against the first.
pub fn compare(results: &[(String, RunResult)]) -> String {
    let mut s = String::new();
    let names: Vec<String> = results
        .iter()
        .map(|(p, r)| {
            let file = std::path::Path::new(p)
                .file_stem()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_else(|| p.clone());
            format!("{} ({})", file, r.target_kind)
        })
        .collect();
    let _ = writeln!(s, "baseline (ratio 1.00): {}", names[0]);
    for (i, n) in names.iter().enumerate() {
        let _ = writeln!(
            s,
            "  [{i}] {n}: {}",
            if results[i].1.passed {
                "passed"
            } else {
                "FAILED"
            }
        );
    }
    let _ = write!(s, "{:<22}", "metric");
    for i in 0..results.len() {
        let _ = write!(s, " {:>12}", format!("[{i}]"));
        if i > 0 {
            let _ = write!(s, " {:>8}", format!("[{i}]/[0]"));
        }
    }
    s.push('\n');
    for (label, f) in ROWS {
        let vals: Vec<Option<f64>> = results.iter().map(|(_, r)| f(r)).collect();
        if vals.iter().all(|v| v.is_none()) {
            continue;
        }
        let _ = write!(s, "{label:<22}");
        for (i, v) in vals.iter().enumerate() {
            let _ = write!(
                s,
                " {:>12}",
                v.map(|v| if v.abs() >= 100.0 || v.fract() == 0.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                })
                .unwrap_or_else(|| "-".into())
            );
            if i > 0 {
                let ratio = match (vals[0], v) {
                    (Some(a), Some(b)) if a != 0.0 => format!("{:.2}", b / a),
                    _ => "-".into(),
                };
                let _ = write!(s, " {ratio:>8}");
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Summary;

    fn result(p99: f64, rate: f64) -> RunResult {
        let mut r = RunResult {
            scenario: "x".into(),
            passed: true,
            ..Default::default()
        };
        r.latency_ms.insert(
            "answer".into(),
            Summary {
                count: 10,
                p99_ms: p99,
                ..Default::default()
            },
        );
        r.rates.answers_per_s_mean = rate;
        r
    }

    #[test]
    fn compare_shows_ratios() {
        let out = compare(&[
            ("a.json".into(), result(2.0, 100.0)),
            ("b.json".into(), result(3.0, 50.0)),
        ]);
        let line = out
            .lines()
            .find(|l| l.starts_with("answer p99 ms"))
            .unwrap();
        assert!(line.contains("1.50"), "{line}");
        let line = out
            .lines()
            .find(|l| l.starts_with("answers/s mean"))
            .unwrap();
        assert!(line.contains("0.50"), "{line}");
    }

    #[test]
    fn html_is_self_contained() {
        let mut r = result(2.0, 1.0);
        r.series.push(crate::metrics::SeriesPoint {
            t: 1,
            connected: 5,
            frames: 9,
            ..Default::default()
        });
        let h = html(&r);
        assert!(h.contains("<svg") && h.contains("polyline"));
        assert!(!h.contains("<script") && !h.contains("https://"));
    }

    #[test]
    fn junit_has_a_case_per_check_and_threshold() {
        let mut r = result(300.0, 1.0);
        r.checks = vec![
            crate::result::CheckOutcome::new("records_match", true, "0 mismatches".into()),
            crate::result::CheckOutcome::new("no_errors", false, "2 errors <&>".into()),
        ];
        r.thresholds = vec![crate::thresholds::ThresholdOutcome {
            name: "answer_p99_ms".into(),
            passed: false,
            message: "threshold breached: answer_p99_ms = 300".into(),
            ..Default::default()
        }];
        let x = junit(&r);
        assert!(x.starts_with("<?xml"));
        assert_eq!(x.matches("<testcase ").count(), 3);
        assert_eq!(x.matches("<failure ").count(), 2);
        assert!(x.contains("tests=\"3\" failures=\"2\""));
        assert!(x.contains("name=\"answer_p99_ms\""));
        assert!(x.contains("2 errors &lt;&amp;&gt;"));
        assert!(!x.contains("<&>"));
        let h = html(&r);
        assert!(h.contains("Checks and thresholds") && h.contains("answer_p99_ms"));
    }

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(0.42), 0.5);
        assert_eq!(nice_ceiling(180.0), 200.0);
    }
}
