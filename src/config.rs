//! Command-line configuration of `calsync-operator run`. Every flag has an environment
//! fallback: `CALSYNC_` plus the flag name in upper snake case.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use url::Url;

/// An invalid combination of flags; each message names the flag to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither or both token sources were given.
    #[error(
        "exactly one token source is required: --token-file, or --token-secret-namespace with \
         --token-secret-name"
    )]
    TokenSource,
    /// Only one of the two Secret flags was given.
    #[error("--token-secret-namespace and --token-secret-name must be given together")]
    IncompleteSecret,
    /// The MyTimetable URL is not an http(s) URL ending in `/api/v0`.
    #[error("invalid --mytimetable-url {url:?}: {reason}")]
    MytimetableUrl { url: String, reason: &'static str },
    /// A count flag was zero.
    #[error("invalid {flag} 0: must be at least 1")]
    Zero { flag: &'static str },
    /// The leader-election durations are not ordered.
    #[error(transparent)]
    LeaseTiming(#[from] crate::leader::Error),
    /// The CA bundle could not be read.
    #[error("reading --ca-bundle {path:?} failed")]
    CaBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// Flags of `calsync-operator run`.
#[derive(Args, Clone, Debug)]
pub struct RunConfig {
    /// Base URL of the MyTimetable API, ending in /api/v0 (for example
    /// https://mytimetable.example.edu/api/v0).
    #[arg(long, env = "CALSYNC_MYTIMETABLE_URL", value_name = "URL")]
    pub mytimetable_url: Url,

    /// File that contains the MyTimetable API token; re-read when it changes.
    #[arg(long, env = "CALSYNC_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Namespace of the Secret that contains the MyTimetable API token.
    #[arg(long, env = "CALSYNC_TOKEN_SECRET_NAMESPACE", value_name = "NS")]
    pub token_secret_namespace: Option<String>,

    /// Name of the Secret that contains the MyTimetable API token; re-read when it changes.
    #[arg(long, env = "CALSYNC_TOKEN_SECRET_NAME", value_name = "NAME")]
    pub token_secret_name: Option<String>,

    /// Key of the token in that Secret.
    #[arg(
        long,
        env = "CALSYNC_TOKEN_SECRET_KEY",
        value_name = "KEY",
        default_value = "token"
    )]
    pub token_secret_key: String,

    /// PEM file of CA certificates that MyTimetable's TLS certificate is checked against, in
    /// addition to the system roots.
    #[arg(long, env = "CALSYNC_CA_BUNDLE", value_name = "PATH")]
    pub ca_bundle: Option<PathBuf>,

    /// Comma-separated namespaces to watch; all namespaces when empty.
    #[arg(
        long,
        env = "CALSYNC_NAMESPACES",
        value_name = "NS,...",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,

    /// Label selector that CalendarUsers and CalendarSyncs must match to be reconciled.
    #[arg(long, env = "CALSYNC_LABEL_SELECTOR", value_name = "SELECTOR")]
    pub label_selector: Option<String>,

    /// Maximum number of reconciles running at once, per kind.
    #[arg(
        long,
        env = "CALSYNC_MAX_CONCURRENT_RECONCILES",
        value_name = "N",
        default_value_t = 16
    )]
    pub max_concurrent_reconciles: u16,

    /// Maximum MyTimetable requests per second.
    #[arg(
        long,
        env = "CALSYNC_REQUESTS_PER_SECOND",
        value_name = "N",
        default_value_t = 20
    )]
    pub requests_per_second: u32,

    /// Maximum MyTimetable requests in flight at once.
    #[arg(
        long,
        env = "CALSYNC_MAX_CONCURRENT_REQUESTS",
        value_name = "N",
        default_value_t = 8
    )]
    pub max_concurrent_requests: usize,

    /// Timeout of one MyTimetable request (for example 30s, 1m).
    #[arg(long, env = "CALSYNC_REQUEST_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// How often the users and synchronizations are listed from MyTimetable to detect drift
    /// (for example 5m).
    #[arg(long, env = "CALSYNC_RESYNC_INTERVAL", value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// Address of the read-only API, /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "CALSYNC_HTTP_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub http_listen: SocketAddr,

    /// Whether to hold a Lease so that only one replica reconciles; true by default inside a
    /// cluster, false outside.
    #[arg(long, env = "CALSYNC_LEADER_ELECTION", value_name = "BOOL")]
    pub leader_election: Option<bool>,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "CALSYNC_LEASE_NAME",
        value_name = "NAME",
        default_value = "calsync-operator"
    )]
    pub lease_name: String,

    /// Namespace of the leader-election Lease; the pod's namespace by default.
    #[arg(long, env = "CALSYNC_LEASE_NAMESPACE", value_name = "NS")]
    pub lease_namespace: Option<String>,

    /// How long another replica waits for an unchanged leader-election Lease before it takes
    /// over (for example 15s). A crashed leader blocks its successor this long.
    #[arg(long, env = "CALSYNC_LEASE_DURATION", value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How long the leader keeps reconciling without a successful renewal of the Lease; must
    /// be shorter than --lease-duration.
    #[arg(long, env = "CALSYNC_LEASE_RENEW_DEADLINE", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub lease_renew_deadline: Duration,

    /// Time between two attempts to take or renew the Lease; must be shorter than
    /// --lease-renew-deadline.
    #[arg(long, env = "CALSYNC_LEASE_RETRY_PERIOD", value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub lease_retry_period: Duration,

    /// Log line format.
    #[arg(long, env = "CALSYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax, for example info or calsync_operator=debug);
    /// RUST_LOG wins when set.
    #[arg(
        long,
        env = "CALSYNC_LOG_LEVEL",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log_level: String,

    /// How long in-flight reconciles may take to finish after SIGTERM.
    #[arg(long, env = "CALSYNC_SHUTDOWN_GRACE_PERIOD", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace_period: Duration,

    /// Kubeconfig file; the usual inference (KUBECONFIG, ~/.kube/config, in-cluster) when
    /// unset.
    #[arg(long, env = "CALSYNC_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

/// The source of the MyTimetable token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    File(PathBuf),
    Secret {
        namespace: String,
        name: String,
        key: String,
    },
}

impl RunConfig {
    /// Checks what clap cannot check flag by flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.token_source()?;
        check_mytimetable_url(&self.mytimetable_url)?;
        let counts = [
            (
                "--max-concurrent-reconciles",
                self.max_concurrent_reconciles as usize,
            ),
            ("--requests-per-second", self.requests_per_second as usize),
            ("--max-concurrent-requests", self.max_concurrent_requests),
        ];
        for (flag, value) in counts {
            if value == 0 {
                return Err(ConfigError::Zero { flag });
            }
        }
        self.lease_timing().validate()?;
        Ok(())
    }

    /// Returns the leader-election durations.
    pub fn lease_timing(&self) -> crate::leader::LeaseTiming {
        crate::leader::LeaseTiming {
            lease_duration: self.lease_duration,
            renew_deadline: self.lease_renew_deadline,
            retry_period: self.lease_retry_period,
        }
    }

    /// Returns the one configured token source.
    pub fn token_source(&self) -> Result<TokenSource, ConfigError> {
        let secret = match (&self.token_secret_namespace, &self.token_secret_name) {
            (Some(namespace), Some(name)) => Some(TokenSource::Secret {
                namespace: namespace.clone(),
                name: name.clone(),
                key: self.token_secret_key.clone(),
            }),
            (None, None) => None,
            _ => return Err(ConfigError::IncompleteSecret),
        };
        match (&self.token_file, secret) {
            (Some(path), None) => Ok(TokenSource::File(path.clone())),
            (None, Some(secret)) => Ok(secret),
            _ => Err(ConfigError::TokenSource),
        }
    }

    /// Reads the CA bundle, if one is configured.
    pub fn read_ca_bundle(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.ca_bundle else {
            return Ok(None);
        };
        std::fs::read(path)
            .map(Some)
            .map_err(|source| ConfigError::CaBundle {
                path: path.clone(),
                source,
            })
    }

    /// Returns whether leader election is on: the flag, or else whether the process runs in
    /// a Kubernetes pod.
    pub fn leader_election_enabled(&self) -> bool {
        self.leader_election
            .unwrap_or_else(|| std::env::var_os("KUBERNETES_SERVICE_HOST").is_some())
    }

    /// How long after a create was recorded MyTimetable may still apply it.
    ///
    /// A timed-out PUT may still be applied, so the request timeout counts in full. The
    /// request may also have waited up to about one more timeout for the client's rate limit
    /// and concurrency slots. The last 10 seconds cover clock skew between this process and
    /// a restarted one.
    // NOTE: a PUT that waited longer than one request timeout for a client slot before it was
    // sent, followed by a controller restart, could still land after this window and be
    // created a second time.
    pub fn create_settle(&self) -> jiff::SignedDuration {
        let timeout = jiff::SignedDuration::try_from(self.request_timeout)
            .unwrap_or(jiff::SignedDuration::from_secs(30));
        timeout * 2 + jiff::SignedDuration::from_secs(10)
    }
}

fn check_mytimetable_url(url: &Url) -> Result<(), ConfigError> {
    let invalid = |reason| ConfigError::MytimetableUrl {
        url: url.to_string(),
        reason,
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if !url.path().trim_end_matches('/').ends_with("/api/v0") {
        return Err(invalid("the path must end in /api/v0"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a query or fragment is not allowed"));
    }
    Ok(())
}

/// Parses a positive duration such as `30s`, `5m`, `1h` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed: jiff::SignedDuration = text.trim().parse().map_err(|_| {
        format!("invalid duration {text:?}: use a number and a unit, such as 30s, 5m or 1h")
    })?;
    if parsed.is_negative() || parsed.is_zero() {
        return Err(format!(
            "invalid duration {text:?}: must be greater than zero"
        ));
    }
    Duration::try_from(parsed).map_err(|_| format!("invalid duration {text:?}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunConfig,
    }

    fn parse(args: &[&str]) -> Result<RunConfig, clap::Error> {
        let mut argv = vec!["calsync-operator"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| cli.run)
    }

    const URL: &str = "--mytimetable-url=http://127.0.0.1:9/api/v0";

    #[test]
    fn defaults_match_the_documented_values() {
        let config = parse(&[URL, "--token-file=/tmp/token"]).expect("valid");
        assert_eq!(config.max_concurrent_reconciles, 16);
        assert_eq!(config.requests_per_second, 20);
        assert_eq!(config.max_concurrent_requests, 8);
        assert_eq!(config.request_timeout, Duration::from_secs(30));
        assert_eq!(config.resync_interval, Duration::from_secs(300));
        assert_eq!(config.shutdown_grace_period, Duration::from_secs(30));
        assert_eq!(config.lease_name, "calsync-operator");
        assert_eq!(config.log_format, LogFormat::Plain);
        assert!(config.namespaces.is_empty());
        assert!(config.validate().is_ok());
    }

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn durations_reject_zero_negative_and_garbage() {
        for text in ["0s", "-5m", "soon", ""] {
            assert!(parse_duration(text).is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn namespaces_split_on_commas() {
        let config = parse(&[URL, "--token-file=/t", "--namespaces=a,b"]).expect("valid");
        assert_eq!(config.namespaces, vec!["a", "b"]);
    }

    #[test]
    fn secret_token_source_uses_default_key() {
        let config = parse(&[
            URL,
            "--token-secret-namespace=ops",
            "--token-secret-name=mytimetable",
        ])
        .expect("valid");
        assert_eq!(
            config.token_source().expect("source"),
            TokenSource::Secret {
                namespace: "ops".to_string(),
                name: "mytimetable".to_string(),
                key: "token".to_string(),
            }
        );
    }

    #[test]
    fn both_token_sources_are_rejected() {
        let config = parse(&[
            URL,
            "--token-file=/t",
            "--token-secret-namespace=ops",
            "--token-secret-name=mytimetable",
        ])
        .expect("parses");
        let error = config.validate().expect_err("two sources");
        assert!(error.to_string().contains("--token-file"), "{error}");
    }

    #[test]
    fn missing_token_source_is_rejected() {
        let config = parse(&[URL]).expect("parses");
        assert!(matches!(config.validate(), Err(ConfigError::TokenSource)));
    }

    #[test]
    fn secret_name_without_namespace_is_rejected() {
        let config = parse(&[URL, "--token-secret-name=x"]).expect("parses");
        assert!(matches!(
            config.validate(),
            Err(ConfigError::IncompleteSecret)
        ));
    }

    #[test]
    fn url_without_api_path_is_rejected() {
        let config =
            parse(&["--mytimetable-url=http://127.0.0.1:9/", "--token-file=/t"]).expect("parses");
        let error = config.validate().expect_err("no /api/v0");
        assert!(error.to_string().contains("--mytimetable-url"), "{error}");
    }

    #[test]
    fn zero_concurrency_is_rejected() {
        let config =
            parse(&[URL, "--token-file=/t", "--max-concurrent-reconciles=0"]).expect("parses");
        let error = config.validate().expect_err("zero");
        assert!(
            error.to_string().contains("--max-concurrent-reconciles"),
            "{error}"
        );
    }

    #[test]
    fn lease_timing_defaults_and_order() {
        let config = parse(&[URL, "--token-file=/t"]).expect("valid");
        assert_eq!(config.lease_timing(), crate::leader::LeaseTiming::default());
        let config =
            parse(&[URL, "--token-file=/t", "--lease-renew-deadline=20s"]).expect("parses");
        let error = config
            .validate()
            .expect_err("renew deadline above lease duration");
        assert!(
            error.to_string().contains("--lease-renew-deadline"),
            "{error}"
        );
    }

    #[test]
    fn invalid_duration_flag_names_the_flag() {
        let Err(error) = parse(&[URL, "--token-file=/t", "--resync-interval=soon"]) else {
            panic!("--resync-interval=soon accepted");
        };
        assert!(error.to_string().contains("--resync-interval"), "{error}");
    }

    #[test]
    fn missing_url_is_rejected() {
        assert!(parse(&["--token-file=/t"]).is_err());
    }
}
