use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// A failure to set up logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter from `RUST_LOG` or `--log-level` is not valid `EnvFilter` syntax.
    #[error("invalid {origin} {value:?}: expected a filter such as info or calsync_operator=debug")]
    Filter {
        /// `RUST_LOG` or `--log-level`.
        origin: &'static str,
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// Another global subscriber was installed first.
    #[error("a global log subscriber is already installed")]
    AlreadyInstalled(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Installs the process-wide log subscriber: lines on standard output in `format`, filtered
/// by `RUST_LOG` when it is set and not empty, else by `level` (the `--log-level` flag).
///
/// JSON lines carry the event's fields at the top level, the current span's fields under
/// `span` and every enclosing span under `spans`.
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    let (origin, value) = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => ("RUST_LOG", value),
        _ => ("--log-level", level.to_string()),
    };
    let filter = EnvFilter::try_new(&value).map_err(|source| LoggingError::Filter {
        origin,
        value: value.clone(),
        source,
    })?;
    // Colours only on a terminal, so that log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let installed = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(LoggingError::AlreadyInstalled)
}
