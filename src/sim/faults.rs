//! Fault injection: what the simulator does wrong, and to which requests.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Faults applied to `/api/v0` requests. Set at start (`SimConfig::faults`, the binary's
/// flags) and replaced at run time with `PUT /_sim/faults`. The default injects nothing.
///
/// JSON field names are camelCase; durations are whole milliseconds (`latencyMs`) and
/// `Retry-After` whole seconds (`retryAfterSecs`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Faults {
    /// Delay added before every request is handled.
    #[serde(rename = "latencyMs", with = "millis")]
    pub latency: Duration,
    /// Requests that get a 500 and are not applied.
    pub server_errors: FaultRule,
    /// Requests that get a 429 with `Retry-After` and are not applied.
    pub rate_limits: FaultRule,
    /// The `Retry-After` value of injected 429s, in seconds.
    pub retry_after_secs: u64,
    /// Requests that are applied but get their response only after
    /// `slow_response_delay`, to exceed a client's timeout.
    pub slow_responses: FaultRule,
    #[serde(rename = "slowResponseDelayMs", with = "millis")]
    pub slow_response_delay: Duration,
    /// Requests that are applied, after which the connection is closed without a response.
    pub dropped_responses: FaultRule,
}

/// The selection of requests that a fault hits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct FaultRule {
    /// Fraction of matching requests hit at random, from 0.0 (none) to 1.0 (all).
    pub rate: f64,
    /// The number of next matching requests that are hit regardless of `rate`. Each hit
    /// counts down by one.
    pub next: u32,
    /// Only requests to this endpoint, written as method and route relative to `/api/v0`,
    /// for example `PUT /synchronizations` or `DELETE /users/{username}`. None matches all.
    pub endpoint: Option<String>,
}

/// A fault setting that cannot be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid fault {field}: {reason}")]
pub struct InvalidFault {
    pub field: &'static str,
    pub reason: &'static str,
}

impl FaultRule {
    /// Returns a rule that hits every matching request.
    pub fn always() -> FaultRule {
        FaultRule {
            rate: 1.0,
            ..FaultRule::default()
        }
    }

    /// Returns a rule that hits the next `count` requests.
    pub fn next(count: u32) -> FaultRule {
        FaultRule {
            next: count,
            ..FaultRule::default()
        }
    }

    /// Restricts the rule to one endpoint, for example `PUT /synchronizations`.
    pub fn on(mut self, endpoint: &str) -> FaultRule {
        self.endpoint = Some(endpoint.to_owned());
        self
    }

    // Decides whether this request is hit, counting down `next` when it is.
    fn hits(&mut self, endpoint: &str, rng: &mut impl Rng) -> bool {
        if self
            .endpoint
            .as_deref()
            .is_some_and(|wanted| wanted != endpoint)
        {
            return false;
        }
        if self.next > 0 {
            self.next -= 1;
            return true;
        }
        self.rate > 0.0 && rng.random::<f64>() < self.rate
    }

    fn validate(&self, field: &'static str) -> Result<(), InvalidFault> {
        if !(0.0..=1.0).contains(&self.rate) {
            return Err(InvalidFault {
                field,
                reason: "rate must be between 0.0 and 1.0",
            });
        }
        Ok(())
    }
}

impl Faults {
    /// Checks that every rate is a fraction.
    pub fn validate(&self) -> Result<(), InvalidFault> {
        self.server_errors.validate("serverErrors")?;
        self.rate_limits.validate("rateLimits")?;
        self.slow_responses.validate("slowResponses")?;
        self.dropped_responses.validate("droppedResponses")
    }

    /// Decides which faults hit one request to `endpoint` and counts down the `next`
    /// counters of those that do.
    pub(crate) fn decide(&mut self, endpoint: &str) -> Decision {
        let mut rng = rand::rng();
        // Rejections come first: a request that gets a 500 or 429 is never applied, so it
        // cannot also be slow or lose its response.
        let rejection = if self.server_errors.hits(endpoint, &mut rng) {
            Some(Rejection::ServerError)
        } else if self.rate_limits.hits(endpoint, &mut rng) {
            Some(Rejection::RateLimited {
                retry_after_secs: self.retry_after_secs,
            })
        } else {
            None
        };
        let (slow, drop_response) = match rejection {
            Some(_) => (None, false),
            None => (
                self.slow_responses
                    .hits(endpoint, &mut rng)
                    .then_some(self.slow_response_delay),
                self.dropped_responses.hits(endpoint, &mut rng),
            ),
        };
        Decision {
            latency: self.latency,
            rejection,
            slow,
            drop_response,
        }
    }
}

/// The faults that hit one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decision {
    pub latency: Duration,
    pub rejection: Option<Rejection>,
    pub slow: Option<Duration>,
    pub drop_response: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rejection {
    ServerError,
    RateLimited { retry_after_secs: u64 },
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_faults_hit_nothing() {
        let mut faults = Faults::default();
        for _ in 0..100 {
            let decision = faults.decide("GET /users");
            assert_eq!(decision.rejection, None);
            assert_eq!(decision.slow, None);
            assert!(!decision.drop_response);
        }
    }

    #[test]
    fn next_counts_down_then_stops() {
        let mut faults = Faults {
            server_errors: FaultRule::next(2),
            ..Faults::default()
        };
        assert_eq!(
            faults.decide("GET /users").rejection,
            Some(Rejection::ServerError)
        );
        assert_eq!(
            faults.decide("GET /users").rejection,
            Some(Rejection::ServerError)
        );
        assert_eq!(faults.decide("GET /users").rejection, None);
        assert_eq!(faults.server_errors.next, 0);
    }

    #[test]
    fn endpoint_filter_spares_other_endpoints() {
        let mut faults = Faults {
            dropped_responses: FaultRule::next(1).on("PUT /synchronizations"),
            ..Faults::default()
        };
        assert!(!faults.decide("GET /synchronizations").drop_response);
        assert!(faults.decide("PUT /synchronizations").drop_response);
        assert!(!faults.decide("PUT /synchronizations").drop_response);
    }

    #[test]
    fn rejected_requests_are_not_also_dropped() {
        let mut faults = Faults {
            rate_limits: FaultRule::always(),
            retry_after_secs: 3,
            dropped_responses: FaultRule::always(),
            ..Faults::default()
        };
        let decision = faults.decide("PUT /users/{username}");
        assert_eq!(
            decision.rejection,
            Some(Rejection::RateLimited {
                retry_after_secs: 3
            })
        );
        assert!(!decision.drop_response);
    }

    #[test]
    fn rate_outside_fraction_is_invalid() {
        for rate in [-0.1, 1.5, f64::NAN] {
            let faults = Faults {
                slow_responses: FaultRule {
                    rate,
                    ..FaultRule::default()
                },
                ..Faults::default()
            };
            let error = faults.validate().unwrap_err();
            assert_eq!(error.field, "slowResponses");
        }
    }

    #[test]
    fn json_uses_milliseconds_and_defaults() {
        let faults: Faults = serde_json::from_str(
            r#"{"latencyMs": 20, "serverErrors": {"rate": 0.5}, "slowResponseDelayMs": 1500}"#,
        )
        .unwrap();
        assert_eq!(faults.latency, Duration::from_millis(20));
        assert_eq!(faults.server_errors.rate, 0.5);
        assert_eq!(faults.slow_response_delay, Duration::from_millis(1500));
        assert_eq!(faults.rate_limits, FaultRule::default());
        let back: Faults = serde_json::from_str(&serde_json::to_string(&faults).unwrap()).unwrap();
        assert_eq!(back, faults);
    }

    #[test]
    fn json_rejects_unknown_fields() {
        assert!(serde_json::from_str::<Faults>(r#"{"latency": 20}"#).is_err());
    }
}
