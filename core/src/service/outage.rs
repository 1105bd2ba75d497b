//! Outages: an endpoint that is down is not bad input.
//!
//! A transient failure ([`ServiceError::transient`]: a refused connection, a timeout, 5xx, 429, a
//! TLS error) says nothing about the rows of the call: it is the service's. A call is retried a
//! few times (`retries`, with backoff and jitter, never sooner than `Retry-After`); when one call's
//! retries are spent, the service is taken to be **down**, and the pool's circuit breaker opens:
//!
//! ```text
//!  closed ──(a call's retries spent)──▶ open ──(probe due: backoff × 2^k, jitter)──▶ half-open
//!    ▲                                   ▲                                               │
//!    └───────────(the probe is answered)─┼───────────────────────────────────────────────┤
//!                                        └─────────────(the probe fails)─────────────────┤
//!                            gave up ◀───(the probe fails after `outage_timeout`)────────┘
//! ```
//!
//! * **Open**: the workers hold the requests they have, make no calls and so take no more; the
//!   queue fills and the lanes wait (backpressure holds the sources). Service stages are unaligned:
//!   barriers pass the waiting requests, which are recorded in each checkpoint, so checkpoints go
//!   on, and a stop does not wait for the service. Nothing becomes a dead letter: retries spent
//!   during an outage are not the rows' fault, and after it every request has a fresh budget.
//! * **Half-open**: one held request at a time probes the service, spaced like retries (doubling
//!   up to `max_backoff`, with jitter, never sooner than the server's `Retry-After` up to
//!   `max_retry_after`). An answer closes the breaker, and every held request goes on where it
//!   was: nothing lost, nothing doubled.
//! * **Gave up**: when a probe fails after `outage_timeout`, every waiting request, and every later
//!   call, fails with an [`ErrorKind::External`](crate::ErrorKind::External) error naming the
//!   stage, the endpoint and the last failure (redacted). The pipeline stops on it (its restarts
//!   fail at once, so they are few); a rerun resumes from the last checkpoint.
//!
//! [`service_status`] says, for metrics and progress displays, which stage waits on its endpoint
//! and since when; the log says it when the breaker opens, every 30 s while it stays open, and
//! when the service answers again.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::{fail_queued, unit_random, Abandoned, Inner, PoolSettings, ServiceError};
use crate::error::{redact, Error};

/// How often a waiting worker looks again whether anyone still waits for its requests.
pub(super) const TICK: Duration = Duration::from_millis(250);
/// How often the log says again that a stage is still waiting.
const REMIND_EVERY: Duration = Duration::from_secs(30);

/// The circuit breaker of a pool.
#[derive(Default)]
pub(super) struct Breaker {
    state: Mutex<State>,
    /// Wakes the workers waiting for the service when it opens, closes, or a probe ends.
    changed: Notify,
}

#[derive(Default)]
struct State {
    /// The service is down: since when, and how it is probed.
    open: Option<Open>,
    /// The outage outlasted `outage_timeout`: every call fails with this message.
    gave_up: Option<String>,
    /// Outages so far.
    outages: u64,
}

struct Open {
    since: SystemTime,
    at: Instant,
    last_failure: String,
    probes: u32,
    next_probe: Instant,
    /// A worker is calling the service (half-open), since this instant.
    probing: Option<Instant>,
    reminded: Instant,
}

/// What a worker holding requests may do now.
pub(super) enum Admit {
    /// The service is up: call it.
    Call,
    /// The service is down and it is this worker's turn to probe it: call it, then report with
    /// `service_answered` or `probe_failed`.
    Probe,
    /// The outage outlasted `outage_timeout`.
    GaveUp(String),
    /// Nobody waits for the requests any more.
    Abandoned,
}

/// A stage waiting on its service.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    /// When the service was found down.
    pub since: SystemTime,
    /// How long the stage has waited so far.
    pub waited: Duration,
    /// The service's last failure (without secrets).
    pub last_failure: String,
    /// Probes made since.
    pub probes: u32,
    /// The wait outlasted `outage_timeout`: the stage has failed.
    pub gave_up: bool,
}

/// A service stage of a running pipeline and whether it waits on its service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStatus {
    /// The pipeline's name.
    pub pipeline: String,
    /// The stage's name.
    pub stage: String,
    /// The pool's name.
    pub service: String,
    /// Where the service is (a URL without credentials), when it is remote.
    pub endpoint: Option<String>,
    /// Since when and why the stage waits, while the service is down.
    pub waiting: Option<Waiting>,
}

/// The error of a stage whose service stayed down longer than `outage_timeout`.
pub(super) fn outage_error(why: &str) -> Error {
    Error::external(why.to_string()).with_retryable(false)
}

fn registry() -> &'static Mutex<Vec<Weak<Inner>>> {
    static POOLS: OnceLock<Mutex<Vec<Weak<Inner>>>> = OnceLock::new();
    POOLS.get_or_init(Default::default)
}

/// Lists `pool` for [`service_status`].
pub(super) fn register(pool: &Arc<Inner>) {
    let mut pools = registry().lock().unwrap_or_else(|e| e.into_inner());
    pools.retain(|p| p.strong_count() > 0);
    pools.push(Arc::downgrade(pool));
}

/// A dependency other than a service pool that stages wait on while it is down (the object
/// stores `fetch` reads): what [`service_status`] lists for it.
pub trait WaitSource: Send + Sync {
    /// One entry per stage using it (and per endpoint), with `waiting` set while it is down.
    fn status(&self) -> Vec<ServiceStatus>;
}

fn wait_sources() -> &'static Mutex<Vec<Weak<dyn WaitSource>>> {
    static SOURCES: OnceLock<Mutex<Vec<Weak<dyn WaitSource>>>> = OnceLock::new();
    SOURCES.get_or_init(Default::default)
}

/// Lists `source` in [`service_status`] for as long as it lives.
pub fn register_wait_source(source: Weak<dyn WaitSource>) {
    let mut sources = wait_sources().lock().unwrap_or_else(|e| e.into_inner());
    sources.retain(|s| s.strong_count() > 0);
    sources.push(source);
}

/// Every service stage of this process that has been called, and whether it waits on its service
/// (since when, the last failure), and every other dependency a stage waits on
/// ([`register_wait_source`]): for `/metrics`, progress displays and tests.
pub fn service_status() -> Vec<ServiceStatus> {
    let pools: Vec<Arc<Inner>> = {
        let mut pools = registry().lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.iter().filter_map(Weak::upgrade).collect()
    };
    let mut out = Vec::new();
    for pool in pools {
        let waiting = pool.waiting();
        let endpoint = pool.endpoint.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let users = pool.users.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (pipeline, stage) in users {
            out.push(ServiceStatus {
                pipeline,
                stage,
                service: pool.name.clone(),
                endpoint: endpoint.clone(),
                waiting: waiting.clone(),
            });
        }
    }
    let sources: Vec<Arc<dyn WaitSource>> = {
        let mut sources = wait_sources().lock().unwrap_or_else(|e| e.into_inner());
        sources.retain(|s| s.strong_count() > 0);
        sources.iter().filter_map(Weak::upgrade).collect()
    };
    out.extend(sources.iter().flat_map(|s| s.status()));
    out
}

/// The wait before probe number `probes + 1`: `backoff` doubling per probe up to `max_backoff`,
/// half of it fixed and half random (so that the probes of many jobs spread out, and none is
/// immediate).
fn probe_delay(s: &PoolSettings, probes: u32) -> Duration {
    let base = s.backoff.max(Duration::from_millis(10));
    let cap = base.saturating_mul(1u32 << probes.min(16)).min(s.max_backoff.max(base));
    cap / 2 + (cap / 2).mul_f64(unit_random(0x5eed_0000 + probes as u64))
}

fn seconds(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.breaker.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the service is down.
    pub(super) fn is_open(&self) -> bool {
        self.state().open.is_some()
    }

    /// Why the stage gave up waiting, once it has.
    pub(super) fn gave_up(&self) -> Option<String> {
        self.state().gave_up.clone()
    }

    /// Outages so far, and since when the service is down.
    pub(super) fn outage_counts(&self) -> (u64, Option<SystemTime>) {
        let st = self.state();
        (st.outages, st.open.as_ref().map(|o| o.since))
    }

    /// Since when and why the stage waits, while the service is down.
    pub(super) fn waiting(&self) -> Option<Waiting> {
        let st = self.state();
        st.open.as_ref().map(|o| Waiting {
            since: o.since,
            waited: o.at.elapsed(),
            last_failure: o.last_failure.clone(),
            probes: o.probes,
            gave_up: st.gave_up.is_some(),
        })
    }

    /// Notes that lanes of `stage` in `pipeline` call this pool.
    pub(super) fn used_by(&self, pipeline: &str, stage: &str) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if !users.iter().any(|(p, s)| p == pipeline && s == stage) {
            users.push((pipeline.to_string(), stage.to_string()));
        }
    }

    /// The stages calling this pool, for messages (the pool's name before the first call).
    fn stage_label(&self) -> String {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let mut stages: Vec<&str> = users.iter().map(|(_, s)| s.as_str()).collect();
        stages.sort_unstable();
        stages.dedup();
        if stages.is_empty() {
            self.name.clone()
        } else {
            stages.join("`, `")
        }
    }

    /// "its endpoint URL", or "its service `NAME`" for a service without one.
    fn endpoint_label(&self) -> String {
        match &*self.endpoint.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => format!("its endpoint {e}"),
            None => format!("its service `{}`", self.name),
        }
    }

    /// Waits until the worker holding requests may call the service: at once while it is up; when
    /// it is down, until this worker's turn to probe it. `abandoned` is looked at every [`TICK`].
    pub(super) async fn admit(&self, abandoned: Abandoned<'_>) -> Admit {
        loop {
            let notified = self.breaker.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if abandoned() {
                return Admit::Abandoned;
            }
            let until = {
                let mut st = self.state();
                if let Some(why) = &st.gave_up {
                    return Admit::GaveUp(why.clone());
                }
                let Some(open) = st.open.as_mut() else { return Admit::Call };
                let now = Instant::now();
                // A probe takes at most `timeout`; one that never reported (its worker is gone)
                // does not keep the others waiting.
                let stuck = open.probing.is_some_and(|p| now.duration_since(p) > self.settings.timeout + 4 * TICK);
                if open.probing.is_some() && !stuck {
                    now + TICK
                } else {
                    // A last probe is due when the outage timeout is reached.
                    let due = open.next_probe.min(open.at + self.settings.outage_timeout);
                    if now >= due {
                        open.probing = Some(now);
                        return Admit::Probe;
                    }
                    due.min(now + TICK)
                }
            };
            let _ = tokio::time::timeout_at(until.into(), notified).await;
        }
    }

    /// A call failed transiently and its retries are spent (the service is down: the breaker
    /// opens), or it failed while the service was down already (the failure is noted).
    pub(super) fn service_failed(&self, e: &ServiceError, asked: Option<Duration>) {
        let message = redact(&e.message);
        let now = Instant::now();
        let since = SystemTime::now();
        {
            let mut st = self.state();
            if st.gave_up.is_some() {
                return;
            }
            if let Some(open) = st.open.as_mut() {
                open.last_failure = message;
                return;
            }
            st.outages += 1;
            let first = probe_delay(&self.settings, 0).max(asked.unwrap_or_default());
            st.open = Some(Open {
                since,
                at: now,
                last_failure: message.clone(),
                probes: 0,
                next_probe: now + first,
                probing: None,
                reminded: now,
            });
        }
        tracing::warn!(
            stage = %self.stage_label(),
            service = %self.name,
            since = %humantime::format_rfc3339_seconds(since),
            outage_timeout = %humantime::format_duration(self.settings.outage_timeout),
            error = %message,
            "stage `{}` is waiting on {}: the service is failing, not the rows; new input is held, nothing becomes a \
             dead letter, and the endpoint is probed until it answers",
            self.stage_label(),
            self.endpoint_label()
        );
        self.breaker.changed.notify_waiters();
    }

    /// A probe failed transiently: the next one is spaced further, or, past `outage_timeout`, the
    /// stage gives up (every waiting request and every later call fails).
    pub(super) fn probe_failed(&self, e: &ServiceError, asked: Option<Duration>) {
        let (stage, endpoint) = (self.stage_label(), self.endpoint_label());
        let now = Instant::now();
        let timeout = self.settings.outage_timeout;
        let mut st = self.state();
        let gave_up = {
            let Some(open) = st.open.as_mut() else { return };
            open.probing = None;
            open.probes += 1;
            open.last_failure = redact(&e.message);
            open.next_probe = now + probe_delay(&self.settings, open.probes).max(asked.unwrap_or_default());
            let waited = now.duration_since(open.at);
            if waited >= timeout {
                Some(redact(&format!(
                    "stage `{stage}` gave up waiting for {endpoint}: it has been failing since {} ({}, longer than \
                     `outage_timeout` = {}); last failure: {}. The job stops here; once the endpoint answers, rerun it \
                     to resume from its last checkpoint",
                    humantime::format_rfc3339_seconds(open.since),
                    seconds(waited),
                    humantime::format_duration(timeout),
                    open.last_failure
                )))
            } else {
                if now.duration_since(open.reminded) >= REMIND_EVERY {
                    open.reminded = now;
                    tracing::warn!(
                        stage = %stage,
                        service = %self.name,
                        since = %humantime::format_rfc3339_seconds(open.since),
                        probes = open.probes,
                        gives_up_in = %seconds(timeout - waited),
                        error = %open.last_failure,
                        "stage `{stage}` is still waiting on {endpoint} (for {})",
                        seconds(waited)
                    );
                }
                tracing::debug!(service = %self.name, probes = open.probes, error = %open.last_failure, "probe failed");
                None
            }
        };
        match gave_up {
            Some(why) => {
                st.gave_up = Some(why.clone());
                drop(st);
                tracing::error!(service = %self.name, "{why}");
                self.breaker.changed.notify_waiters();
                fail_queued(self, || outage_error(&why));
            }
            None => {
                drop(st);
                self.breaker.changed.notify_waiters();
            }
        }
    }

    /// The service answered (values, or a refusal of the rows): if it was down, the breaker
    /// closes and every held request goes on.
    pub(super) fn service_answered(&self) {
        let open = {
            let mut st = self.state();
            if st.open.is_none() || st.gave_up.is_some() {
                return;
            }
            st.open.take().expect("open")
        };
        tracing::info!(
            stage = %self.stage_label(),
            service = %self.name,
            probes = open.probes,
            "{} answers again after {}: stage `{}` goes on where it was",
            self.endpoint_label(),
            seconds(open.at.elapsed()),
            self.stage_label()
        );
        self.breaker.changed.notify_waiters();
    }
}
