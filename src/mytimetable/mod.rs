//! The MyTimetable provisioning API client.
//!
//! [`Client`] has one method per endpoint of the 3.0 API (see the module `wire` for the
//! JSON shapes). Every request carries the `apiToken` header from a [`Token`], which
//! [`token::watch_file`] or [`token::watch_secret`] keep current. Idempotent calls (GET,
//! `PUT /users/{username}`, DELETE) are retried on transient failures with capped
//! exponential backoff and jitter, honouring `Retry-After`. `PUT /synchronizations` is sent
//! once, because a repeat can create a duplicate. A rate limit and a concurrency limit,
//! shared by all clones of a client, keep the load on MyTimetable bounded.
//!
//! The token never appears in a log line, an error or a metric of this module.

mod client;
mod error;
mod metrics;
pub mod token;
pub mod wire;

pub use client::{Client, ClientConfig, SyncDeletion};
pub use error::{ConfigError, Error, parse_retry_after};
pub use metrics::ClientMetrics;
pub use token::Token;
