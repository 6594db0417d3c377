//! Helpers shared by the client and simulator tests: a simulator per test, clients with
//! short timeouts, unique tokens, and a capture of every log line of the test process.

#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use calsync_operator::mytimetable::{Client, ClientConfig, Token};
use calsync_operator::sim::{RunningSimulator, SimConfig, Simulator};

/// Every log line of this test process at TRACE level, from all tests and all threads.
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

#[derive(Clone)]
struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufferWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process-wide TRACE subscriber on first use. It also receives `log` records
/// (reqwest logs through `log`).
pub fn logs() -> &'static LogCapture {
    static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        // Plain reqwest clients in tests need the same crypto provider as the library.
        calsync_operator::install_rustls_provider();
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = BufferWriter(buffer.clone());
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("no other global subscriber in this test binary");
        LogCapture { buffer }
    })
}

impl LogCapture {
    pub fn text(&self) -> String {
        let buffer = self
            .buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        String::from_utf8_lossy(&buffer).into_owned()
    }

    /// Fails when `token` appears anywhere in the captured logs.
    pub fn assert_never_contains(&self, token: &str) {
        let text = self.text();
        assert!(!text.is_empty(), "the log capture recorded nothing");
        if let Some(position) = text.find(token) {
            let start = text[..position].rfind('\n').map_or(0, |i| i + 1);
            let end = text[position..]
                .find('\n')
                .map_or(text.len(), |i| position + i);
            panic!(
                "the token appears in a log line: {}",
                text[start..end].replace(token, "<TOKEN>")
            );
        }
    }
}

/// Returns a token unique to one test, so that a test can check the shared log capture for its
/// own token only.
pub fn unique_token(test: &str) -> String {
    format!("tok-{test}-{:016x}", rand::random::<u64>())
}

pub fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub async fn start_sim(token: &str) -> RunningSimulator {
    start_sim_with(SimConfig::new(token)).await
}

pub async fn start_sim_with(config: SimConfig) -> RunningSimulator {
    logs();
    Simulator::start(loopback(), config)
        .await
        .expect("simulator starts on a free loopback port")
}

/// Client settings with delays short enough for tests: 20 ms first retry, 200 ms maximum,
/// 2 s request timeout, and no request-rate limit worth noticing.
pub fn test_config(sim: &RunningSimulator, token: &str) -> ClientConfig {
    let mut config = ClientConfig::new(sim.base_url(), Token::new(token));
    config.retry_min_delay = Duration::from_millis(20);
    config.retry_max_delay = Duration::from_millis(200);
    config.request_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(2);
    config.requests_per_second = 1000;
    config
}

pub fn client(sim: &RunningSimulator, token: &str) -> Client {
    Client::new(test_config(sim, token)).expect("valid client configuration")
}

/// Fails when `text`, such as an error's Display and Debug output, contains `token`.
pub fn assert_no_token(text: &str, token: &str) {
    assert!(
        !text.contains(token),
        "the token appears in: {}",
        text.replace(token, "<TOKEN>")
    );
}
