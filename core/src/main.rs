//! `quiz-core`: parse the configuration, bind, run until SIGTERM / ctrl-c.
//! `--check-config` prints the effective configuration and exits; a
//! configuration error exits 2 naming the key and its layer.

use std::process::ExitCode;

use clap::Parser;

/// jemalloc rather than glibc's malloc: on the live answer path it took
/// ~14 % off core's CPU per answer, and its size classes hold an idle
/// WebSocket in 2.7–2.8 KB where glibc needs 3.5 KB (docs/performance.md,
/// "CPU per answer: the allocator, frames due together, one read per
/// frame"). mimalloc, tried before, was as fast but grew the idle socket
/// to 5.2 KB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = quiz_core::config::Cli::parse();
    let (config, layers) =
        match quiz_core::Config::load_with(&cli, &|name| std::env::var(name).ok()) {
            Ok(loaded) => loaded,
            Err(e) => {
                eprintln!("quiz-core: {e}");
                return ExitCode::from(settings::EXIT_INVALID);
            }
        };
    if cli.settings.check_config {
        print!("{}", quiz_core::config::SCHEME.render(&layers));
        return ExitCode::SUCCESS;
    }
    quiz_core::init_tracing(&config);
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quiz-core: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: quiz_core::Config) -> anyhow::Result<()> {
    // The kernel's descriptor table grown once, at start, to what the connection limit needs
    // (one socket per connection, room for Redis, Kafka and the listener): grown during a
    // join ramp instead, each doubling would stop every runtime thread for an RCU grace
    // period (9–15 ms each here; the `descriptors` crate). A failure costs only those stalls.
    let wanted = config.max_connections as u64 + 1024;
    if let Err(e) = descriptors::reserve_table(wanted) {
        tracing::warn!("descriptor table not grown up front ({wanted} wanted): {e}");
    }
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let shutdown = quiz_core::Shutdown::on_signals_after(std::time::Duration::from_millis(
        config.shutdown_drain_ms,
    ));
    quiz_core::run(config, listener, shutdown).await
}
