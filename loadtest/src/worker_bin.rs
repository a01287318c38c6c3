//! `loadtest-worker`: the load test's worker alone, the same as `loadtest
//! worker` (`loadtest-worker worker [--connect …]`).
//!
//! Why a binary of its own: a worker's memory is what the generator's cost
//! per player is judged by, and a worker running the whole tool's
//! executable had 8.2 MB of file-backed pages at 10 000 players (the
//! coordinator, the MongoDB client and the report renderer beside the
//! worker's own code on the same pages); this one has 4.0 MB, libc and the
//! loader included (docs/loadtest.md, *Session of 2026-12-04, 20:31–22:10
//! UTC*). `loadtest run` spawns it when it sits
//! next to `loadtest` (both are built together), else its own `worker`
//! command.

use clap::Parser;

/// jemalloc, as in `loadtest` (see there).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "loadtest-worker",
    version,
    about = "The load test's worker alone"
)]
enum Cli {
    /// A worker: spawned by `loadtest run` (plan on stdin, JSON lines on
    /// stdout), or on another host with --connect COORDINATOR.
    Worker(loadtest::worker::WorkerArgs),
}

/// Exit status: 0 done, 2 it could not run (as `loadtest worker`).
fn main() -> std::process::ExitCode {
    let Cli::Worker(args) = Cli::parse();
    match loadtest::worker::worker_main(args.into_link()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest-worker: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
