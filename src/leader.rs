//! Leader election on a `coordination.k8s.io/v1` Lease, so that one replica reconciles while
//! the others serve the read-only API and wait.
//!
//! # Guarantee
//! Every write to the Lease is a replace carrying the resourceVersion that the decision was
//! made from, so two replicas can never both take it: the second write fails with a
//! conflict. A candidate takes a Lease held by another replica only after the Lease's record
//! stayed unchanged for its `leaseDurationSeconds`. The candidate measures that on its own
//! clock from when it first saw the record, so clocks of different nodes are never compared. The holder
//! stops its work when no renewal succeeded within the renew deadline, counted from when the
//! last successful renewal was sent. Because the renew deadline is shorter than the lease
//! duration, the holder has stopped before any candidate may take over, provided the clocks
//! of both nodes run at about the same rate. Work is stopped by dropping its future, which
//! cancels every reconcile task it spawned.
//!
//! # Why not a crate
//! `kube-leader-election` 0.44 builds on kube 4 and `kubert` 0.25 on k8s-openapi 0.25, so
//! neither fits kube 5. `kube-lease-manager` 0.13 fits, but keeps reporting leadership while
//! renewals fail, takes over by comparing the Lease's `renewTime` with the local clock, and
//! clears an expired Lease with a patch that carries no resourceVersion.

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Telemetry;

/// How long a release of the Lease may take at shutdown. When the API server does not respond
/// in time the Lease expires on its own, and shutdown is not held up for it.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Candidates wait between 1 and 1.2 retry periods between attempts, so that replicas
/// started together do not ask in lockstep (the jitter factor of client-go).
const RETRY_JITTER: f64 = 0.2;

/// An invalid leader-election setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The durations do not satisfy retry period < renew deadline < lease duration.
    #[error(
        "invalid lease timing: --lease-retry-period ({retry_period:?}) < --lease-renew-deadline \
         ({renew_deadline:?}) < --lease-duration ({lease_duration:?}) is required"
    )]
    Timing {
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    },
}

/// The durations of the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a candidate waits for an unchanged Lease record before it takes the Lease;
    /// also how long a crashed leader blocks its successor.
    pub lease_duration: Duration,
    /// How long the holder keeps working without a successful renewal.
    pub renew_deadline: Duration,
    /// The time between two attempts to take or renew the Lease.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    /// 15 s, 10 s and 2 s, the defaults of client-go and controller-runtime. A crash stops
    /// reconciling for at most about 15 s. The holder gets five attempts to renew before it
    /// gives up. The 5 s between renew deadline and lease duration cover dropping the
    /// in-flight reconciles and differences in clock rate.
    fn default() -> Self {
        LeaseTiming {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTiming {
    pub fn validate(&self) -> Result<(), Error> {
        let ordered = !self.retry_period.is_zero()
            && self.retry_period < self.renew_deadline
            && self.renew_deadline < self.lease_duration;
        if ordered {
            Ok(())
        } else {
            Err(Error::Timing {
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            })
        }
    }

    // The Lease stores whole seconds; rounding up makes candidates wait at least as long as
    // this replica promised.
    fn lease_duration_seconds(&self) -> i32 {
        let seconds =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(seconds).unwrap_or(i32::MAX)
    }
}

/// The Lease to hold, the identity to hold it as, and the durations.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// The `holderIdentity` this replica writes; unique per process.
    pub identity: String,
    pub timing: LeaseTiming,
}

/// Returns an identity unique to this process: the pod name (`POD_NAME`) or else the host
/// name, and a random suffix, so that a restarted process never mistakes the Lease of its
/// predecessor for its own.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_string())
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "calsync-operator".to_string());
    format!("{base}_{:08x}", rand::rng().random::<u32>())
}

/// The end of a run of [`Elector::run`] or [`run_unelected`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was requested and the work finished, or was abandoned after the grace
    /// period.
    Shutdown,
    /// The work ended although no shutdown was requested.
    WorkEnded,
}

#[derive(Clone, Copy)]
enum Write {
    Create,
    Renew,
    Take,
}

// The end of one term of leading.
enum Term {
    Finished,
    Abandoned,
    Lost,
}

/// Takes part in the election for one Lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    telemetry: Telemetry,
    // The record last seen, and when this replica first saw it.
    observed: Option<(LeaseSpec, Instant)>,
    // The Lease as this replica last wrote it while holding it.
    held: Option<Lease>,
}

impl Elector {
    pub fn new(
        client: kube::Client,
        config: LeaseConfig,
        telemetry: Telemetry,
    ) -> Result<Elector, Error> {
        config.timing.validate()?;
        Ok(Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            telemetry,
            observed: None,
            held: None,
        })
    }

    /// Runs `follow()` while another replica leads and `lead(stop)` while this replica holds
    /// the Lease, until `shutdown` is cancelled.
    ///
    /// On shutdown, `stop` is cancelled and the work has `grace` to finish before it is
    /// dropped. Then the Lease is released, so that a successor takes over at once. When a
    /// renewal fails past the renew deadline, or another replica took the Lease, the work is
    /// dropped at once and this replica becomes a candidate again.
    pub async fn run<L, LF, F, FF>(
        mut self,
        shutdown: CancellationToken,
        grace: Duration,
        mut lead: L,
        mut follow: F,
    ) -> Stopped
    where
        L: FnMut(CancellationToken) -> LF,
        LF: Future<Output = ()>,
        F: FnMut() -> FF,
        FF: Future<Output = ()>,
    {
        let lease = self.config.name.clone();
        let identity = self.config.identity.clone();
        tracing::info!(%lease, namespace = %self.config.namespace, %identity, "Joining leader election");
        loop {
            // Phase 1: follow until this replica holds the Lease.
            let acquired = {
                let following = follow();
                tokio::pin!(following);
                let acquire = self.acquire(&shutdown);
                tokio::pin!(acquire);
                let mut follows = true;
                loop {
                    tokio::select! {
                        acquired = &mut acquire => break acquired,
                        () = &mut following, if follows => follows = false,
                    }
                }
            };
            let Some(acquired_sent) = acquired else {
                return Stopped::Shutdown;
            };
            tracing::info!(%lease, %identity, "Acquired leadership");

            // Phase 2: lead while renewing; the work is dropped when this block ends.
            let stop = shutdown.child_token();
            let telemetry = self.telemetry.clone();
            let term = {
                let renew = self.keep_renewed(acquired_sent);
                supervise(lead(stop), renew, &shutdown, grace, &telemetry).await
            };
            match term {
                Term::Lost => {
                    tracing::warn!(%lease, %identity, "Lost leadership; stopped reconciling");
                    self.held = None;
                    if shutdown.is_cancelled() {
                        return Stopped::Shutdown;
                    }
                }
                Term::Finished | Term::Abandoned => {
                    self.release().await;
                    if shutdown.is_cancelled() {
                        return Stopped::Shutdown;
                    }
                    return Stopped::WorkEnded;
                }
            }
        }
    }

    // Tries until this replica holds the Lease and returns when the successful request was
    // sent; None when shutdown came first.
    async fn acquire(&mut self, shutdown: &CancellationToken) -> Option<Instant> {
        let timing = self.config.timing;
        let mut last_holder: Option<String> = None;
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            let sent = Instant::now();
            let attempt =
                tokio::time::timeout(timing.renew_deadline, self.try_acquire_or_renew()).await;
            self.telemetry.health.lease_attempted();
            match attempt {
                Ok(Ok(true)) => return Some(sent),
                Ok(Ok(false)) => {
                    let holder = self.observed_holder();
                    if holder != last_holder {
                        tracing::info!(lease = %self.config.name, holder = holder.as_deref().unwrap_or(""), "Lease is held by another replica");
                        last_holder = holder;
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, lease = %self.config.name, "Taking the Lease failed; retrying");
                }
                Err(_) => {
                    tracing::warn!(lease = %self.config.name, timeout_ms = timing.renew_deadline.as_millis() as u64, "Taking the Lease timed out; retrying");
                }
            }
            let jitter = rand::rng().random_range(0.0..=RETRY_JITTER);
            let wait = timing.retry_period.mul_f64(1.0 + jitter);
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    // Renews every retry period; returns when leadership is lost: another replica holds the
    // Lease, or no renewal succeeded within the renew deadline. `last_sent` is when the
    // request that acquired the Lease was sent.
    async fn keep_renewed(&mut self, mut last_sent: Instant) {
        let timing = self.config.timing;
        loop {
            let deadline = last_sent + timing.renew_deadline;
            tokio::time::sleep_until((Instant::now() + timing.retry_period).min(deadline)).await;
            let sent = Instant::now();
            let attempt = tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await;
            self.telemetry.health.lease_attempted();
            match attempt {
                Ok(Ok(true)) => last_sent = sent,
                Ok(Ok(false)) => {
                    tracing::warn!(lease = %self.config.name, holder = self.observed_holder().as_deref().unwrap_or(""), "Another replica took the Lease");
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, lease = %self.config.name, "Renewing the Lease failed; retrying");
                }
                Err(_) => {
                    tracing::warn!(lease = %self.config.name, "No renewal of the Lease succeeded within the renew deadline");
                    return;
                }
            }
            if Instant::now() >= last_sent + timing.renew_deadline {
                tracing::warn!(lease = %self.config.name, "No renewal of the Lease succeeded within the renew deadline");
                return;
            }
        }
    }

    // One attempt: Ok(true) when this replica holds the Lease afterwards, Ok(false) when
    // another replica holds it or won a concurrent write.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let name = self.config.name.clone();
        let params = PostParams::default();

        // The holder renews from the Lease it wrote last; a conflict means someone else wrote
        // since, so it falls back to reading the Lease. `held` stays set while the request
        // runs, because this future may be dropped at any await and a release still needs it.
        if let Some(held) = self.held.clone() {
            let spec = held.spec.clone().unwrap_or_default();
            let renewed = Lease {
                metadata: held.metadata,
                spec: Some(self.next_spec(&spec, Write::Renew)),
            };
            match self.api.replace(&name, &params, &renewed).await {
                Ok(lease) => return Ok(self.now_holding(lease)),
                Err(kube::Error::Api(status)) if status.is_conflict() => self.held = None,
                Err(error) => return Err(error),
            }
        }

        let Some(current) = self.api.get_opt(&name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.next_spec(&LeaseSpec::default(), Write::Create)),
            };
            return match self.api.create(&params, &lease).await {
                Ok(lease) => Ok(self.now_holding(lease)),
                Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(false),
                Err(error) => Err(error),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        self.observe(&spec);
        let holder = spec
            .holder_identity
            .as_deref()
            .filter(|holder| !holder.is_empty());
        let ours = holder == Some(self.config.identity.as_str());
        if holder.is_some() && !ours && !self.observed_expired(&spec) {
            return Ok(false);
        }
        let write = if ours { Write::Renew } else { Write::Take };
        let next = Lease {
            metadata: current.metadata,
            spec: Some(self.next_spec(&spec, write)),
        };
        match self.api.replace(&name, &params, &next).await {
            Ok(lease) => Ok(self.now_holding(lease)),
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(error) => Err(error),
        }
    }

    // The record to write: a renewal keeps the acquire time and the transition count, taking
    // the Lease from another holder (or after a release) counts one more transition.
    fn next_spec(&self, current: &LeaseSpec, write: Write) -> LeaseSpec {
        let now = Some(MicroTime(Timestamp::now()));
        let transitions = current.lease_transitions.unwrap_or(0);
        let (acquire_time, lease_transitions) = match write {
            Write::Create => (now.clone(), 0),
            Write::Renew => (current.acquire_time.clone(), transitions),
            Write::Take => (now.clone(), transitions.saturating_add(1)),
        };
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.timing.lease_duration_seconds()),
            acquire_time,
            renew_time: now,
            lease_transitions: Some(lease_transitions),
            ..current.clone()
        }
    }

    fn now_holding(&mut self, lease: Lease) -> bool {
        self.observe(&lease.spec.clone().unwrap_or_default());
        self.held = Some(lease);
        true
    }

    // Restarts the expiry clock whenever the record changed.
    fn observe(&mut self, spec: &LeaseSpec) {
        let unchanged = self.observed.as_ref().is_some_and(|(seen, _)| seen == spec);
        if !unchanged {
            self.observed = Some((spec.clone(), Instant::now()));
        }
    }

    // Whether the record has stayed unchanged for its lease duration on this replica's clock.
    fn observed_expired(&self, spec: &LeaseSpec) -> bool {
        let duration = spec
            .lease_duration_seconds
            .and_then(|seconds| u64::try_from(seconds).ok())
            .map_or(self.config.timing.lease_duration, Duration::from_secs);
        self.observed
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= duration)
    }

    fn observed_holder(&self) -> Option<String> {
        self.observed
            .as_ref()
            .and_then(|(spec, _)| spec.holder_identity.clone())
    }

    // Clears the holder so that a candidate takes the Lease on its next attempt. A failure is
    // logged; the Lease then expires on its own.
    async fn release(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let lease = self.config.name.clone();
        let result = tokio::time::timeout(RELEASE_TIMEOUT, self.clear_holder(held)).await;
        match result {
            Ok(Ok(true)) => tracing::info!(%lease, "Released the Lease"),
            Ok(Ok(false)) => {
                tracing::info!(%lease, "Lease already held by another replica; nothing to release")
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, %lease, "Releasing the Lease failed; it expires on its own")
            }
            Err(_) => {
                tracing::warn!(%lease, timeout_ms = RELEASE_TIMEOUT.as_millis() as u64, "Releasing the Lease timed out; it expires on its own")
            }
        }
    }

    // Returns false when another replica holds the Lease by now.
    async fn clear_holder(&self, held: Lease) -> Result<bool, kube::Error> {
        let name = &self.config.name;
        let mut lease = held;
        // Two tries: a conflict may come from a change that left this replica the holder,
        // such as a label added to the Lease.
        for _ in 0..2 {
            let spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(false);
            }
            let now = Some(MicroTime(Timestamp::now()));
            // The shape client-go writes on release: no holder and a 1 s duration.
            let released = Lease {
                metadata: lease.metadata.clone(),
                spec: Some(LeaseSpec {
                    holder_identity: None,
                    lease_duration_seconds: Some(1),
                    acquire_time: now.clone(),
                    renew_time: now,
                    ..spec
                }),
            };
            match self
                .api
                .replace(name, &PostParams::default(), &released)
                .await
            {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    lease = self.api.get(name).await?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(false)
    }
}

/// Runs `lead(stop)` without an election (one replica, or election turned off), with the
/// same shutdown and grace period as [`Elector::run`].
pub async fn run_unelected<L, LF>(
    shutdown: CancellationToken,
    grace: Duration,
    telemetry: &Telemetry,
    lead: L,
) -> Stopped
where
    L: FnOnce(CancellationToken) -> LF,
    LF: Future<Output = ()>,
{
    let stop = shutdown.child_token();
    let term = supervise(
        lead(stop),
        std::future::pending(),
        &shutdown,
        grace,
        telemetry,
    )
    .await;
    match term {
        Term::Lost => unreachable!("leadership without election cannot be lost"),
        Term::Finished | Term::Abandoned if shutdown.is_cancelled() => Stopped::Shutdown,
        Term::Finished | Term::Abandoned => Stopped::WorkEnded,
    }
}

// Runs the work of one term until it finishes, leadership is lost, or the grace period after
// shutdown ran out. The work is dropped before this returns.
async fn supervise(
    work: impl Future<Output = ()>,
    lost: impl Future<Output = ()>,
    shutdown: &CancellationToken,
    grace: Duration,
    telemetry: &Telemetry,
) -> Term {
    telemetry.metrics.set_leader(true);
    let grace_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    let term = tokio::select! {
        () = work => Term::Finished,
        () = lost => Term::Lost,
        () = grace_over => {
            tracing::warn!(grace_period_ms = grace.as_millis() as u64, "Abandoned the reconciles still running after the shutdown grace period");
            Term::Abandoned
        }
    };
    telemetry.metrics.set_leader(false);
    term
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(lease: u64, renew: u64, retry: u64) -> LeaseTiming {
        LeaseTiming {
            lease_duration: Duration::from_millis(lease),
            renew_deadline: Duration::from_millis(renew),
            retry_period: Duration::from_millis(retry),
        }
    }

    #[test]
    fn default_timing_is_valid() {
        assert_eq!(LeaseTiming::default().validate(), Ok(()));
    }

    #[test]
    fn timing_must_be_ordered() {
        for invalid in [
            timing(10_000, 10_000, 2_000),
            timing(10_000, 12_000, 2_000),
            timing(15_000, 10_000, 10_000),
            timing(15_000, 10_000, 0),
        ] {
            let error = invalid.validate().expect_err("invalid timing accepted");
            assert!(
                error.to_string().contains("--lease-renew-deadline"),
                "{error}"
            );
        }
    }

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(timing(15_000, 1, 0).lease_duration_seconds(), 15);
        assert_eq!(timing(2_500, 1, 0).lease_duration_seconds(), 3);
    }

    #[test]
    fn identity_is_unique_per_call() {
        let first = default_identity();
        let second = default_identity();
        assert_ne!(first, second);
        assert!(first.contains('_'), "{first}");
    }
}
