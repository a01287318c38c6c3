//! `loadtest`: the tool that proves what the quiz platform holds, and the way
//! every performance figure in this project is measured.
//!
//! Map of the crate (data flows top to bottom):
//!
//! - [`scenario`]: typed scenario files (`scenarios/*.toml`), validation
//!   errors naming the key; caps on players, duration and connections.
//! - [`target`]: the guard every address passes through: loopback only,
//!   unless a network is allowed with `--allow-target`.
//! - [`thresholds`]: `[thresholds]`/`--threshold` bounds on the result
//!   (`answer_p99_ms < 250`), judged with the checks.
//! - [`coordinator`]: one run, phase by phase: creates the quizzes and hosts
//!   them (start/next/end), spawns the workers (or takes remote ones over
//!   TCP, `coordinator::remote`), collects their progress and
//!   results, injects faults, checks the leaderboards, writes the result.
//! - [`attack`]: a hostile client beside the load (`[attack]`), its
//!   outcomes counted by reason.
//! - [`worker`]: one process with up to 19 000 players from its own source
//!   address; progress and results as JSON lines on stdout (or its TCP link
//!   to a coordinator on another host).
//! - [`plan`]: the [`plan::WorkerPlan`] the coordinator hands a worker.
//! - [`player`]: one simulated player (join, WebSocket, answers, record); the
//!   hot path, driven by the hub and the timers without a task of its own.
//! - [`timers`]: one timer heap per worker for every player's plans.
//! - [`net`]: TCP from a chosen source address (IP_BIND_ADDRESS_NO_PORT), a
//!   minimal HTTP/1.1 client and a minimal WebSocket client whose sockets a
//!   per-worker hub reads (one epoll; boards handled without waking the
//!   player's task).
//! - [`protocol`]: the platform's messages.
//! - [`metrics`]: HdrHistograms measured from the scheduled time (no
//!   coordinated omission), counters, per-second aggregation across workers.
//! - [`verify`]: the correctness checker (platform vs the tool's record).
//! - [`mongo`]: the optional durable-record check in MongoDB.
//! - [`procmon`]: CPU and RSS of processes from /proc.
//! - [`clock`]: the wall clock in microseconds every part of the tool uses.
//! - [`result`]: the [`result::RunResult`] (the JSON result file), assembled
//!   from the workers' results and judged pass/fail.
//! - [`report`]: renders results: summary table, self-contained HTML with SVG
//!   plots, JUnit XML, compare.

pub mod attack;
pub mod clock;
pub mod coordinator;
pub mod metrics;
pub mod mongo;
pub mod net;
pub mod plan;
pub mod player;
pub mod procmon;
pub mod protocol;
pub mod report;
pub mod result;
pub mod scenario;
pub mod target;
pub mod thresholds;
pub mod timers;
pub mod verify;
pub mod worker;
