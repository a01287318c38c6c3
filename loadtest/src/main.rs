//! `loadtest run|worker|compare|check`: parses the command line and calls the
//! library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loadtest",
    version = settings::version!(),
    about = "Load generator and correctness checker for the quiz platform (loopback targets only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Scenario file (TOML or YAML), e.g. loadtest/scenarios/smoke.toml.
    scenario: PathBuf,
    /// Override target.url, e.g. http://127.0.0.1:8080 (loopback only).
    #[arg(long, env = "LOADTEST_TARGET")]
    target: Option<String>,
    /// Override target.kind: edge_lb, core or proxy (what --target points at).
    #[arg(long, value_parser = ["edge_lb", "core", "proxy"])]
    kind: Option<String>,
    #[arg(long)]
    players: Option<u64>,
    /// Override quiz.expected_players: the size hint that spreads one quiz
    /// over several core nodes.
    #[arg(long)]
    expected_players: Option<u64>,
    #[arg(long)]
    quizzes: Option<u64>,
    /// Override load.duration_s (the hard cap of the load phase).
    #[arg(long)]
    duration: Option<u64>,
    #[arg(long)]
    workers: Option<u64>,
    #[arg(long)]
    ramp: Option<f64>,
    /// Directory for the JSON result and the HTML report.
    #[arg(long, default_value = "loadtest/results")]
    out: PathBuf,
    /// Pid of the core node to kill in a node_failure scenario.
    #[arg(long)]
    kill_pid: Option<u32>,
    /// Pids of processes under test to sample (CPU, RSS).
    #[arg(long = "watch-pid")]
    watch_pids: Vec<u32>,
    /// Process names (/proc/PID/comm) under test to sample.
    #[arg(long = "watch-name")]
    watch_names: Vec<String>,
    /// No live progress lines.
    #[arg(long)]
    quiet: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// After the run, check the durable record in this MongoDB (loopback
    /// only), e.g. mongodb://127.0.0.1:27017/
    #[arg(long, env = "LOADTEST_MONGODB_URI")]
    mongo_uri: Option<String>,
    /// Database of the durable record.
    #[arg(long, default_value = "quiz")]
    mongo_db: String,
    /// Seconds to wait for the persister to drain before the MongoDB check fails.
    #[arg(long, default_value_t = 60)]
    mongo_drain: u64,
    /// Run without the scenario's `[attack]`: the baseline of a hostile run.
    #[arg(long)]
    no_attack: bool,
    /// Sent as X-Admin-Key when creating quizzes (core's admin_key).
    #[arg(long, env = "LOADTEST_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Add or override a threshold: `answer_p99_ms<250`, `join_p99_ms<=100`,
    /// `errors_max=0` (repeatable). A breach fails the run (exit 1).
    #[arg(long = "threshold", value_name = "NAME<VALUE")]
    thresholds: Vec<String>,
    /// Also write a JUnit XML report (one test case per check and threshold).
    #[arg(long, value_name = "PATH")]
    junit: Option<PathBuf>,
    /// Permit targets in this network besides loopback, e.g. 10.1.2.0/24
    /// (repeatable). Off by default: only 127.0.0.0/8 and [::1].
    #[arg(long = "allow-target", value_name = "CIDR")]
    allow_targets: Vec<String>,
    /// Wait for remote workers (`loadtest worker --connect ADDR:PORT`) on this
    /// address instead of spawning local ones; needs --remote-workers.
    #[arg(long, value_name = "ADDR:PORT")]
    listen_workers: Option<String>,
    /// How many remote workers to wait for (they share the players).
    #[arg(long, value_name = "N")]
    remote_workers: Option<u64>,
    /// Seconds to wait for every remote worker before giving up (exit 2).
    #[arg(long, default_value_t = 60, value_name = "S")]
    worker_wait: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario: create quizzes, spawn workers, drive, verify, report.
    Run(Box<RunArgs>),
    /// A worker: spawned by `run` (plan on stdin, JSON lines on stdout), or
    /// on another host with --connect COORDINATOR.
    Worker(loadtest::worker::WorkerArgs),
    /// Put two or more result files side by side, with ratios to the first.
    Compare {
        #[arg(required = true, num_args = 2..)]
        results: Vec<PathBuf>,
    },
    /// Validate scenario files without running them.
    Check {
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
}

/// jemalloc rather than glibc's malloc, for the workers' memory: a player's
/// join and connect allocate and free a few KB while the long-lived state
/// of the players connected before it sits beside; glibc kept those holes
/// (2.4–5 MB at 10 000 players), jemalloc's size classes keep the two
/// apart (docs/loadtest.md, *Session of 2026-12-04, 20:31–22:10 UTC*).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status: 0 passed, 1 the run failed its checks, 2 it could not run
/// (bad scenario, refused or unreachable target, ...).
fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    match Cli::parse().cmd {
        Cmd::Worker(w) => loadtest::worker::worker_main(w.into_link()).map(|_| ok),
        Cmd::Check { scenarios } => {
            for p in scenarios {
                let s = loadtest::scenario::Scenario::load(&p)?;
                println!(
                    "{}: ok ({}, {} players, {} quizzes)",
                    p.display(),
                    s.name,
                    s.load.players,
                    s.load.quizzes
                );
            }
            Ok(ok)
        }
        Cmd::Compare { results } => {
            let mut loaded = Vec::new();
            for p in results {
                loaded.push((p.display().to_string(), loadtest::result::load_result(&p)?));
            }
            print!("{}", loadtest::report::compare(&loaded));
            Ok(ok)
        }
        Cmd::Run(args) => {
            let RunArgs {
                scenario,
                target,
                kind,
                players,
                expected_players,
                quizzes,
                duration,
                workers,
                ramp,
                out,
                kill_pid,
                watch_pids,
                watch_names,
                quiet,
                seed,
                admin_key,
                mongo_uri,
                mongo_db,
                mongo_drain,
                no_attack,
                thresholds,
                junit,
                allow_targets,
                listen_workers,
                remote_workers,
                worker_wait,
            } = *args;
            let opts = loadtest::coordinator::RunOptions {
                scenario,
                target,
                target_kind: kind,
                players,
                expected_players,
                quizzes,
                duration_s: duration,
                workers,
                ramp_per_sec: ramp,
                out_dir: out,
                kill_pid,
                watch_pids,
                watch_names,
                quiet,
                seed,
                worker_exe: None,
                admin_key,
                mongo_uri,
                mongo_db: Some(mongo_db),
                mongo_drain_s: Some(mongo_drain),
                no_attack,
                thresholds,
                junit,
                allow_targets,
                listen_workers,
                remote_workers,
                worker_wait_s: Some(worker_wait),
            };
            let junit_path = opts.junit.clone();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let (result, path) = rt.block_on(loadtest::coordinator::run(opts))?;
            print!("{}", loadtest::report::summary(&result));
            if let Some(j) = &junit_path {
                println!("junit: {}", j.display());
            }
            println!(
                "result: {} (report: {})",
                path.display(),
                path.with_extension("html").display()
            );
            if result.passed {
                Ok(ok)
            } else {
                Ok(std::process::ExitCode::from(1))
            }
        }
    }
}
