//! `persister [--config FILE] [run]` drains the topic into MongoDB;
//! `persister [--config FILE] replay [--quiz ID]` rebuilds MongoDB from it;
//! `persister --check-config` prints the effective configuration. A
//! configuration error exits 2 naming the key and its layer.
//! Everything else lives in the library (`src/lib.rs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use persister::{store::mongo::MongoStore, Config};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version = settings::version!(),
    about = "Drains quiz-events from Kafka into MongoDB, idempotently"
)]
struct Cli {
    /// TOML configuration file; PERSISTER_* / QUIZ_* variables and --set override it.
    #[arg(long, global = true, env = "PERSISTER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: settings::ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the topic and write to MongoDB (the default).
    Run,
    /// Rebuild the MongoDB state of one quiz (or all) from the topic.
    Replay {
        #[arg(long)]
        quiz: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = cli
        .settings
        .overrides()
        .map_err(persister::config::ConfigError::from)
        .and_then(|set| Config::load_with(cli.config.as_deref(), &|n| std::env::var(n).ok(), &set));
    let config = match loaded {
        Ok((_, layers)) if cli.settings.check_config => {
            print!("{}", persister::config::SCHEME.render(&layers));
            return ExitCode::SUCCESS;
        }
        Ok((config, _)) => config,
        Err(e) => {
            eprintln!("persister: {e}");
            return ExitCode::from(settings::EXIT_INVALID);
        }
    };
    persister::init_logging(&config.log);
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let shutdown = CancellationToken::new();
            tokio::spawn(signals(shutdown.clone()));
            persister::run(config, shutdown).await
        }
        Command::Replay { quiz } => replay(config, quiz).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "persister failed");
            ExitCode::FAILURE
        }
    }
}

async fn replay(config: Config, quiz: Option<String>) -> Result<(), persister::Error> {
    let store = MongoStore::from_config(&config).await?;
    let report = persister::replay::replay(&config, Arc::new(store), quiz.as_deref()).await?;
    println!(
        "replayed: read {} records, applied {} events, skipped {} poison",
        report.read, report.applied, report.poison
    );
    Ok(())
}

/// SIGTERM or Ctrl-C: finish the batch, commit, exit.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("signal received: shutting down");
    shutdown.cancel();
}
