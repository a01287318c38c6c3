//! `quiz-core`: parse the configuration, bind, run until SIGTERM / ctrl-c.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = quiz_core::Config::load(&quiz_core::config::Cli::parse())?;
    quiz_core::init_tracing(&config);
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let shutdown = quiz_core::Shutdown::on_signals_after(std::time::Duration::from_millis(
        config.shutdown_drain_ms,
    ));
    quiz_core::run(config, listener, shutdown).await
}
