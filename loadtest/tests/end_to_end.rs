//! The whole tool against the in-process mock platform: a clean run passes,
//! and a platform that lies fails the run with a report naming the lie.

mod support;

use std::path::PathBuf;

use loadtest::coordinator::{run, RunOptions};
use support::Bug;

fn opts(port: u16, out: &str) -> RunOptions {
    RunOptions {
        scenario: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/smoke.toml")),
        target: Some(format!("http://127.0.0.1:{port}")),
        players: Some(12),
        duration_s: Some(40),
        out_dir: std::env::temp_dir().join(out),
        // The worker alone, as `loadtest run` spawns it when built (the
        // remote-worker tests run the whole tool's `worker` command).
        worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_loadtest-worker"))),
        quiet: true,
        seed: 7,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_passes_against_an_honest_platform() {
    let addr = support::start(Bug::None).await;
    let (r, path) = run(opts(addr.port(), "loadtest-e2e-ok")).await.unwrap();
    assert!(r.passed, "{}", loadtest::report::summary(&r));
    assert_eq!(r.counts.joined, 12);
    assert_eq!(r.counts.ended, 12);
    assert_eq!(r.counts.answers_acked, r.counts.answers_sent);
    assert!(r.latency_ms["answer"].count > 0);
    assert!(path.exists() && path.with_extension("html").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_final_score_fails_the_run() {
    let addr = support::start(Bug::ScoreOffByOne).await;
    let (r, _) = run(opts(addr.port(), "loadtest-e2e-score")).await.unwrap();
    assert!(!r.passed);
    assert!(
        r.mismatches.iter().any(|m| m.kind == "final_score"),
        "{:?}",
        r.mismatches
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_leaderboard_fails_the_run() {
    let addr = support::start(Bug::LeaderboardDropsPlayer).await;
    let (r, _) = run(opts(addr.port(), "loadtest-e2e-lb")).await.unwrap();
    assert!(!r.passed);
    assert!(
        r.mismatches
            .iter()
            .any(|m| m.kind.starts_with("leaderboard")),
        "{:?}",
        r.mismatches
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_players_reconnect_and_scores_still_match() {
    let addr = support::start(Bug::None).await;
    let smoke =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/smoke.toml"))
            .unwrap();
    let dir = std::env::temp_dir().join("loadtest-e2e-storm");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("storm.toml");
    std::fs::write(
        &path,
        format!("{smoke}\n[reconnect_storm]\nshare = 0.5\nat_question = 1\nafter_ms = 400\n"),
    )
    .unwrap();
    let mut o = opts(addr.port(), "loadtest-e2e-storm");
    o.scenario = path;
    let (r, _) = run(o).await.unwrap();
    assert!(r.passed, "{}", loadtest::report::summary(&r));
    let drops = r.counters.get("storm_drops").copied().unwrap_or(0);
    assert!(drops >= 3, "{drops} drops");
    assert_eq!(r.latency_ms["reconnect"].count, drops);
}

/// Answer sent, connection dropped before its result (the platform had
/// recorded it), reconnect, re-send, `duplicate`: acknowledged once, with
/// the original's points, and every check passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_ack_is_resent_and_the_duplicate_counts_once() {
    let addr = support::start(Bug::LosesAck).await;
    let (r, _) = run(opts(addr.port(), "loadtest-e2e-resend")).await.unwrap();
    assert!(r.passed, "{}", loadtest::report::summary(&r));
    let count = |k: &str| r.counters.get(k).copied().unwrap_or(0);
    // Every player answers question 1 and loses that ack once.
    assert_eq!(count("answers_resent"), 12, "{:?}", r.counters);
    assert_eq!(count("answers_rejected.duplicate"), 12, "{:?}", r.counters);
    assert_eq!(count("answers_resent_refused"), 0, "{:?}", r.counters);
    assert_eq!(count("close.none_eof"), 12, "{:?}", r.counters);
    assert_eq!(r.counts.answers_acked, r.counts.answers_sent);
    assert_eq!(r.counts.unacknowledged, 0);
    assert_eq!(count("final_score_inferred"), 0, "{:?}", r.counters);
}

/// The fallback: a platform that refuses the re-send (`not_open`, as core
/// did once the question had moved on) leaves no mismatch: a lost answer
/// that scored is resolved from the welcome's score; a lost wrong one
/// (0 points: nothing to infer) stays unacknowledged, as before re-sends
/// (the strict smoke scenario fails on that, and only on that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_resend_falls_back_to_the_welcome_score() {
    let addr = support::start(Bug::LosesAckRefusesResend).await;
    let (r, _) = run(opts(addr.port(), "loadtest-e2e-resend-refused"))
        .await
        .unwrap();
    let summary = loadtest::report::summary(&r);
    assert_eq!(r.mismatch_count, 0, "{summary}");
    assert!(
        r.failure_reasons
            .iter()
            .all(|w| w.contains("never acknowledged")),
        "{summary}"
    );
    let count = |k: &str| r.counters.get(k).copied().unwrap_or(0);
    assert_eq!(count("answers_resent"), 12, "{:?}", r.counters);
    assert_eq!(count("answers_resent_refused"), 12, "{:?}", r.counters);
    assert_eq!(r.counts.answers_acked + 12, r.counts.answers_sent);
    assert!(r.counts.unacknowledged < 12, "{summary}");
}

/// A player the platform never lets in (each join refused with 429 and
/// `Retry-After`) keeps trying while its quiz runs, then gives up 30 s
/// after the quiz ended: the run fails naming it, instead of waiting for
/// the duration cap (here 300 s) as it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_refused_past_the_end_fails_the_run_before_its_cap() {
    let addr = support::start(Bug::FullAtFivePlayers).await;
    let mut o = opts(addr.port(), "loadtest-e2e-refused");
    o.duration_s = Some(300);
    let (r, _) = run(o).await.unwrap();
    let summary = loadtest::report::summary(&r);
    assert!(!r.passed, "{summary}");
    let count = |k: &str| r.counters.get(k).copied().unwrap_or(0);
    // 12 players over 2 quizzes of room for 5: one refused in each.
    assert_eq!(r.counts.joined, 10, "{summary}");
    assert_eq!(
        count("error.join.refused_past_the_end"),
        2,
        "{:?}",
        r.counters
    );
    assert!(count("join.retry_after") > 2, "{:?}", r.counters);
    assert!(
        r.elapsed_s < 200.0,
        "the run waited for its cap: {} s",
        r.elapsed_s
    );
}

#[tokio::test]
async fn non_loopback_target_is_refused_before_any_traffic() {
    let mut o = opts(80, "loadtest-e2e-refuse");
    o.target = Some("http://192.168.1.10:8080".into());
    let e = run(o).await.unwrap_err().to_string();
    assert!(e.contains("loopback"), "{e}");
    // An allow list admits its own networks only.
    let mut o = opts(80, "loadtest-e2e-refuse");
    o.target = Some("http://192.168.1.10:8080".into());
    o.allow_targets = vec!["10.1.2.0/24".into()];
    let e = run(o).await.unwrap_err().to_string();
    assert!(e.contains("--allow-target"), "{e}");
}

/// `--threshold` and `--junit`: every check passes against the honest
/// platform, an impossible latency bound is breached, the run fails on it
/// alone, and the JUnit file has one case per check and threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breached_threshold_fails_the_run_and_junit_says_which() {
    let addr = support::start(Bug::None).await;
    let mut o = opts(addr.port(), "loadtest-e2e-threshold");
    let junit = std::env::temp_dir().join("loadtest-e2e-threshold.xml");
    let _ = std::fs::remove_file(&junit);
    o.junit = Some(junit.clone());
    o.thresholds = vec![
        "answer_p99_ms<0.001".into(),
        "errors_max=0".into(),
        "reconnect_p99_ms<1".into(),
    ];
    let (r, _) = run(o).await.unwrap();
    let summary = loadtest::report::summary(&r);
    assert!(!r.passed, "{summary}");
    assert!(r.checks.iter().all(|c| c.passed), "{summary}");
    assert_eq!(r.failure_reasons.len(), 1, "{summary}");
    assert!(r.failure_reasons[0].contains("threshold breached: answer_p99_ms"));
    let by = |n: &str| r.thresholds.iter().find(|t| t.name == n).unwrap();
    assert!(!by("answer_p99_ms").passed);
    assert!(by("errors_max").passed);
    // No reconnect happened: no samples, nothing measured above the bound.
    assert!(by("reconnect_p99_ms").passed && by("reconnect_p99_ms").actual.is_none());
    let x = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(
        x.matches("<testcase ").count(),
        r.checks.len() + r.thresholds.len()
    );
    assert_eq!(x.matches("<failure ").count(), 1, "{x}");
    assert!(x.contains("name=\"answer_p99_ms\""), "{x}");
}

/// A free port of 127.0.0.1 in 26400..27000 (the range these tests may
/// use), a different one for each caller: tests run in parallel.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(26400);
    loop {
        let p = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(p < 27000, "no free port in 26400..27000");
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// `loadtest worker --connect` from a source address of its own.
fn remote_worker(port: u16, bind: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["worker", "--connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--bind", bind, "--connect-wait", "60", "--plan-wait", "60"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The two-host shape on one machine: the coordinator listens on
/// 127.0.0.1, two worker processes connect from 127.0.0.2 and 127.0.0.3
/// and get their plans over TCP. Its checks, players and acknowledged
/// answers equal those of a run with local workers (same scenario, seed,
/// worker count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_workers_over_tcp_equal_a_one_process_run() {
    let addr = support::start(Bug::None).await;
    let mut local = opts(addr.port(), "loadtest-e2e-local2");
    local.workers = Some(2);
    let (a, _) = run(local).await.unwrap();
    assert!(a.passed, "{}", loadtest::report::summary(&a));

    let port = free_port();
    let mut workers = [
        remote_worker(port, "127.0.0.2"),
        remote_worker(port, "127.0.0.3"),
    ];
    let mut o = opts(addr.port(), "loadtest-e2e-remote");
    o.listen_workers = Some(format!("127.0.0.1:{port}"));
    o.remote_workers = Some(2);
    o.worker_wait_s = Some(60);
    let res = run(o).await;
    let mut logs = String::new();
    for w in &mut workers {
        // Each ends by itself once its result is sent.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while w.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = w.kill();
        let out = w.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(w.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(out.success(), "worker: {out:?} {err}");
        logs.push_str(&err);
    }
    let (b, _) = res.unwrap();
    assert!(b.passed, "{}", loadtest::report::summary(&b));
    assert!(logs.contains("from 127.0.0.2:"), "{logs}");
    assert!(logs.contains("from 127.0.0.3:"), "{logs}");
    let checks = |r: &loadtest::result::RunResult| {
        r.checks
            .iter()
            .map(|c| (c.name.clone(), c.passed))
            .collect::<Vec<_>>()
    };
    assert_eq!(checks(&a), checks(&b));
    assert_eq!(a.passed, b.passed);
    assert_eq!(a.generator.workers, 2);
    assert_eq!(b.generator.workers, 2);
    assert_eq!(a.counts.joined, b.counts.joined);
    assert_eq!(a.counts.ended, b.counts.ended);
    assert_eq!(a.counts.answers_sent, b.counts.answers_sent);
    assert_eq!(a.counts.answers_acked, b.counts.answers_acked);
    assert_eq!(a.mismatch_count, b.mismatch_count);
}

/// A worker whose link closes after it took its plan: the run fails, and
/// says which worker and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_worker_link_fails_the_run() {
    use tokio::io::AsyncReadExt;
    let addr = support::start(Bug::None).await;
    let port = free_port();
    let mut o = opts(addr.port(), "loadtest-e2e-lost-link");
    o.listen_workers = Some(format!("127.0.0.1:{port}"));
    o.remote_workers = Some(1);
    o.worker_wait_s = Some(30);
    let fake = tokio::spawn(async move {
        let mut s = loop {
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        };
        let mut plan = String::new();
        s.read_to_string(&mut plan).await.unwrap();
        plan.len()
        // dropped: the link closes without a result
    });
    let (r, _) = run(o).await.unwrap();
    assert!(fake.await.unwrap() > 100);
    assert!(!r.passed);
    let c = r
        .checks
        .iter()
        .find(|c| c.name == "workers_reported")
        .unwrap();
    assert!(!c.passed && c.message.contains("0 of 1"), "{c:?}");
    assert!(
        r.host_errors
            .iter()
            .any(|e| e.contains("worker 0") && e.contains("without a result")),
        "{:?}",
        r.host_errors
    );
}

/// Too few remote workers: the run does not start, within the wait.
#[tokio::test]
async fn missing_remote_workers_is_an_error_within_the_wait() {
    let addr = support::start(Bug::None).await;
    let mut o = opts(addr.port(), "loadtest-e2e-no-workers");
    o.listen_workers = Some(format!("127.0.0.1:{}", free_port()));
    o.remote_workers = Some(2);
    o.worker_wait_s = Some(1);
    let t = std::time::Instant::now();
    let e = run(o).await.unwrap_err().to_string();
    assert!(e.contains("only 0 workers connected"), "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
}

/// `[[stages]]`: up to 12 players in 2 s, hold, down to 6 during the quiz.
/// The six that leave close cleanly, are not expected to see the end, and
/// their acknowledged answers still count: every check passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_ramp_up_hold_and_down_and_checks_still_hold() {
    let addr = support::start(Bug::None).await;
    let smoke =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/smoke.toml"))
            .unwrap()
            .replace("players = 20", "players = 12");
    let dir = std::env::temp_dir().join("loadtest-e2e-stages");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stages.toml");
    std::fs::write(
        &path,
        format!(
            "{smoke}\n[[stages]]\nduration_s = 2\ntarget = 12\n[[stages]]\nduration_s = 4\ntarget = 12\n[[stages]]\nduration_s = 2\ntarget = 6\n"
        ),
    )
    .unwrap();
    let mut o = opts(addr.port(), "loadtest-e2e-stages");
    o.scenario = path;
    o.players = None;
    let (r, _) = run(o).await.unwrap();
    let summary = loadtest::report::summary(&r);
    assert!(r.passed, "{summary}");
    assert_eq!(r.counts.joined, 12, "{summary}");
    assert_eq!(r.counts.left, 6, "{summary}");
    assert_eq!(r.counts.ended, 6, "{summary}");
    assert_eq!(
        r.counters.get("players_left").copied(),
        Some(6),
        "{summary}"
    );
    assert_eq!(r.counts.unacknowledged, 0, "{summary}");
    assert!(r
        .checks
        .iter()
        .any(|c| c.name == "quiz_ended_seen" && c.passed));
}
