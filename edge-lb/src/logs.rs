//! The process's logger: tracing-subscriber's fmt layer on stdout, `text` (the default) or
//! `json` (`edge_lb.log_format`: one object per line, the event's fields at the top level
//! beside `timestamp`, `level` and `target`), filtered by `RUST_LOG` (default `info`). Access
//! records ([`crate::access`]) go through it under their own target.

use crate::config::LogFormat;

/// Install the global logger. Called once, by the binary, after the configuration is read
/// (a configuration error is printed by `main`'s error path, before any logger exists).
/// Returns an error if a logger is already installed.
pub fn init(format: LogFormat) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        // Flattened: `{"timestamp":…,"level":"INFO","message":"access","client":…,
        // "target":"edge_lb::access"}`, the shape log pipelines index without a nested path.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        // Colours only on a terminal: a file or a collector would get escape codes.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .try_init(),
    }
}
