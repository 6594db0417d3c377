//! `mytimetable-sim`: the MyTimetable provisioning API simulator as a program. Prints the
//! API base URL on standard output once it listens, logs to standard error, and stops on
//! SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use calsync_operator::sim::{DEFAULT_SYNC_TYPES, FaultRule, Faults, SimConfig, Simulator};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// Simulator of the MyTimetable provisioning API (version 3.0, or later with
/// --later-version), with a calendar model, request counters and fault injection under
/// /_sim/.
#[derive(Parser, Debug)]
#[command(name = "mytimetable-sim", version)]
struct Args {
    /// Address to listen on. Port 0 picks a free port; the base URL printed at start shows
    /// which.
    #[arg(long, default_value = "127.0.0.1:8090", env = "MYTIMETABLE_SIM_LISTEN")]
    listen: SocketAddr,

    /// API token that requests must send in the apiToken header. Prefer --token-file: a
    /// token on the command line is visible to other users of the machine.
    #[arg(
        long,
        env = "MYTIMETABLE_SIM_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,

    /// File containing the API token; surrounding white space is ignored.
    #[arg(long, env = "MYTIMETABLE_SIM_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// Serve the later-version API: 404 when deleting an unknown user, GET /users/{username},
    /// POST /users, per-user synchronization endpoints and extra synchronization fields.
    #[arg(long)]
    later_version: bool,

    /// Synchronization types the simulated site has adapters for, comma-separated. An empty
    /// value accepts every type.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_SYNC_TYPES.map(String::from))]
    types: Vec<String>,

    /// File that keeps users, synchronizations and events across restarts.
    #[arg(long)]
    state_file: Option<PathBuf>,

    /// Delay added to every API request, for example 20ms or 1s.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    latency: Duration,

    /// Fraction of API requests that get a 500 and are not applied (0.0 to 1.0).
    #[arg(long, value_parser = parse_fraction, default_value_t = 0.0)]
    error_rate: f64,

    /// Fraction of API requests that get a 429 with Retry-After and are not applied (0.0 to
    /// 1.0).
    #[arg(long, value_parser = parse_fraction, default_value_t = 0.0)]
    rate_limit_rate: f64,

    /// Retry-After of injected 429 responses, in whole seconds.
    #[arg(long, default_value_t = 1)]
    retry_after_secs: u64,

    /// Fraction of API requests that are applied but get their response only after
    /// --slow-delay (0.0 to 1.0).
    #[arg(long, value_parser = parse_fraction, default_value_t = 0.0)]
    slow_rate: f64,

    /// Delay of slow responses, for example 35s to pass a 30 s client timeout.
    #[arg(long, value_parser = parse_duration, default_value = "35s")]
    slow_delay: Duration,

    /// Fraction of API requests that are applied, after which the connection is closed
    /// without a response (0.0 to 1.0).
    #[arg(long, value_parser = parse_fraction, default_value_t = 0.0)]
    drop_response_rate: f64,

    /// Log filter, for example info or calsync_operator=debug. RUST_LOG wins when set.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = text.parse().map_err(|error| {
        format!("invalid duration {text:?} ({error}): expected for example 20ms, 1s or 5m")
    })?;
    Duration::try_from(signed)
        .map_err(|_| format!("invalid duration {text:?}: must not be negative"))
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("invalid fraction {text:?}: expected a number from 0.0 to 1.0"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!(
            "invalid fraction {text:?}: must be from 0.0 to 1.0"
        ));
    }
    Ok(value)
}

fn rate(rate: f64) -> FaultRule {
    FaultRule {
        rate,
        ..FaultRule::default()
    }
}

fn config_from(args: &Args) -> anyhow::Result<SimConfig> {
    let token = match (&args.token, &args.token_file) {
        (Some(token), None) => token.trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("failed to read the token file {}", path.display()))?
            .trim()
            .to_owned(),
        _ => bail!("missing token: pass --token-file FILE or --token TOKEN"),
    };
    if token.is_empty() {
        bail!("the token is empty: put a non-empty token into the file or flag");
    }
    Ok(SimConfig {
        token,
        later_version: args.later_version,
        faults: Faults {
            latency: args.latency,
            server_errors: rate(args.error_rate),
            rate_limits: rate(args.rate_limit_rate),
            retry_after_secs: args.retry_after_secs,
            slow_responses: rate(args.slow_rate),
            slow_response_delay: args.slow_delay,
            dropped_responses: rate(args.drop_response_rate),
        },
        state_file: args.state_file.clone(),
        sync_types: args
            .types
            .iter()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect(),
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = config_from(&args)?;
    // Both handlers are installed before the base URL is printed, because a caller may send
    // a signal as soon as it reads that line. `tokio::signal::ctrl_c()` would install its
    // handler only when first polled, so until then SIGINT would kill the process.
    let mut interrupt =
        signal(SignalKind::interrupt()).context("failed to install the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("failed to install the SIGTERM handler")?;
    let simulator = Simulator::start(args.listen, config).await?;
    println!("{}", simulator.base_url());

    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    simulator.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&args.log_level));
    let filter = match filter {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!(
                "mytimetable-sim: invalid --log-level {:?}: {error}",
                args.log_level
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mytimetable-sim: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mytimetable-sim: {error:#}");
            ExitCode::FAILURE
        }
    }
}
