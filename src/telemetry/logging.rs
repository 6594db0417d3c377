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
    let filter = filter_from(std::env::var("RUST_LOG").ok(), level)?;
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

// Builds the filter from `RUST_LOG` when it is set and not empty, else from `level`.
fn filter_from(rust_log: Option<String>, level: &str) -> Result<EnvFilter, LoggingError> {
    let (origin, value) = match rust_log {
        Some(value) if !value.trim().is_empty() => ("RUST_LOG", value),
        _ => ("--log-level", level.to_string()),
    };
    EnvFilter::try_new(&value).map_err(|source| LoggingError::Filter {
        origin,
        value,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_over_level() {
        let filter = filter_from(Some("warn".to_string()), "debug").expect("valid");
        assert_eq!(filter.to_string(), "warn");
        let filter = filter_from(Some(" ".to_string()), "debug").expect("valid");
        assert_eq!(filter.to_string(), "debug");
        let filter = filter_from(None, "calsync_operator=debug").expect("valid");
        assert_eq!(filter.to_string(), "calsync_operator=debug");
    }

    #[test]
    fn invalid_filter_names_its_origin() {
        let error = filter_from(None, "info,=[").expect_err("invalid level");
        assert!(
            error.to_string().starts_with("invalid --log-level"),
            "{error}"
        );
        let error = filter_from(Some("=[".to_string()), "info").expect_err("invalid RUST_LOG");
        assert!(error.to_string().starts_with("invalid RUST_LOG"), "{error}");
    }
}
