//! Outages of object stores: a store that is down is waited for, never turned into dead letters.
//!
//! A read that fails with a refused connection, a timeout, a reset, a 5xx or a 429 after the
//! store's own retries ([`store_failing`]) says nothing yet about the object. [`StoreOutages`]
//! asks the store whether it answers at all: one `HEAD` of a path that does not exist (any answer,
//! a 404 included, means it is up).
//!
//! * **It answers**: the failure is the object's, and the row is a dead letter with the reason.
//! * **It does not**: the store is down. The read waits (backoff doubling from 1 s to 30 s, with
//!   jitter) and is tried again, as are all the stage's other reads of that store; the stage holds
//!   its input, backpressure holds the source, and checkpoints go on (`fetch` is unaligned). The
//!   log says so when it starts, every 30 s, and when the store answers again; `/metrics` and the
//!   progress line list the stage as waiting ([`alluvium_core::service::service_status`]).
//! * **Down longer than `outage_timeout`** (10 minutes by default): the stage fails with an
//!   error naming it, the store and the last failure, the job stops, and a rerun resumes from the
//!   last checkpoint. Later reads of that store fail at once, so the region's restarts are quick.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use alluvium_core::error::redact;
use alluvium_core::service::{ServiceStatus, WaitSource, Waiting};
use alluvium_core::{Error, ErrorKind};
use object_store::path::Path;
use object_store::ObjectStoreExt;

use crate::fetch::RowError;
use crate::registry::ObjectStoreRegistry;

/// `outage_timeout` by default.
pub const OUTAGE_TIMEOUT: Duration = Duration::from_secs(600);
/// The first wait before a read of a store that is down is tried again; it doubles up to
/// [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(30);
const REMIND_EVERY: Duration = Duration::from_secs(30);
/// The words that start the reason of a read that failed because the store did not answer.
pub(crate) const DOWN: &str = "the store did not answer: ";

/// Whether `e` is the store failing (a refused or reset connection, a timeout, a 5xx or a 429),
/// not an answer about the object.
pub fn store_failing(e: &object_store::Error) -> bool {
    use object_store::client::HttpErrorKind as K;
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(http) = s.downcast_ref::<object_store::client::HttpError>() {
            return matches!(http.kind(), K::Connect | K::Request | K::Timeout | K::Interrupted);
        }
        // object_store's status errors are private types: known by their words.
        let text = s.to_string();
        if let Some(code) = text.split("status code: ").nth(1).and_then(|r| r.get(..3)) {
            return code.starts_with('5') || code == "429";
        }
        source = s.source();
    }
    false
}

/// What to do about a read that failed because the store did not answer.
enum Verdict {
    /// The store answers other requests: the failure is the object's (a dead letter).
    Object(RowError),
    /// The store is down: try again after this long.
    Wait(Duration),
    /// Down longer than `outage_timeout`: the stage fails with this error.
    GaveUp(Error),
}

/// The outages of the stores one stage reads. See the module docs.
pub struct StoreOutages {
    timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// `(pipeline, stage)`s reading through this value.
    users: Vec<(String, String)>,
    /// Stores that are down, by their address (`scheme://host[:port]`, no credentials).
    down: HashMap<String, Down>,
    /// Stores given up on, with the error.
    gave_up: HashMap<String, String>,
}

struct Down {
    since: SystemTime,
    at: Instant,
    last_failure: String,
    reminded: Instant,
}

impl StoreOutages {
    /// Waits for a store that is down up to `outage_timeout`; listed in `service_status`.
    pub fn new(outage_timeout: Duration) -> Arc<Self> {
        let me = Arc::new(Self { timeout: outage_timeout, state: Default::default() });
        let weak: Weak<dyn WaitSource> = Arc::downgrade(&(me.clone() as Arc<dyn WaitSource>));
        alluvium_core::service::register_wait_source(weak);
        me
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `stage` of `pipeline` reads through this value.
    pub(crate) fn used_by(&self, pipeline: &str, stage: &str) {
        let mut st = self.state();
        if !st.users.iter().any(|(p, s)| p == pipeline && s == stage) {
            st.users.push((pipeline.to_string(), stage.to_string()));
        }
    }

    /// Runs `read` (one object's read of `uri` by `stage`) until it succeeds or fails for a reason
    /// of the object's, waiting while the store does not answer: `Err` only when the stage gives
    /// up waiting.
    pub(crate) async fn read<T, Fut>(
        &self,
        registry: &ObjectStoreRegistry,
        uri: Option<&str>,
        stage: &str,
        read: impl Fn() -> Fut,
    ) -> alluvium_core::Result<std::result::Result<T, RowError>>
    where
        Fut: std::future::Future<Output = std::result::Result<T, RowError>>,
    {
        let mut tries = 0;
        loop {
            match (read().await, uri) {
                (Err((ErrorKind::External, why)), Some(uri)) if why.starts_with(DOWN) => {
                    match self.failed(registry, uri, stage, &why, tries).await {
                        Verdict::Object(e) => return Ok(Err(e)),
                        Verdict::Wait(d) => tokio::time::sleep(d).await,
                        Verdict::GaveUp(e) => return Err(e),
                    }
                    tries += 1;
                }
                (done, uri) => {
                    if let (Some(uri), true) = (uri, tries > 0) {
                        self.answered(uri, stage);
                    }
                    return Ok(done);
                }
            }
        }
    }

    /// The store behind `uri` answered: if it was down, it is up again.
    pub(crate) fn answered(&self, uri: &str, stage: &str) {
        let store = store_of(uri);
        let Some(down) = self.state().down.remove(&store) else { return };
        tracing::info!(
            stage = %stage,
            store = %store,
            "the object store {store} answers again after {}: stage `{stage}` goes on where it was",
            seconds(down.at.elapsed())
        );
    }

    /// A read of `uri` by `stage` failed with `failure` (the store did not answer), `tries` times
    /// so far: the object's failure, or a wait, or the end of waiting.
    async fn failed(&self, registry: &ObjectStoreRegistry, uri: &str, stage: &str, failure: &str, tries: u32) -> Verdict {
        let store = store_of(uri);
        let failure = redact(failure.strip_prefix(DOWN).unwrap_or(failure));
        if let Some(why) = self.state().gave_up.get(&store) {
            return Verdict::GaveUp(outage_error(why));
        }
        if self.answers(registry, uri).await {
            self.answered(uri, stage);
            return Verdict::Object((
                ErrorKind::External,
                format!("{failure} (the store answers other requests: this object's failure is its own)"),
            ));
        }
        let now = Instant::now();
        let mut st = self.state();
        let down = st.down.entry(store.clone()).or_insert_with(|| {
            tracing::warn!(
                stage = %stage,
                store = %store,
                outage_timeout = %humantime::format_duration(self.timeout),
                error = %failure,
                "stage `{stage}` is waiting on the object store {store}: the store is failing, not the objects; new \
                 input is held, nothing becomes a dead letter, and reads are tried again until it answers"
            );
            Down { since: SystemTime::now(), at: now, last_failure: failure.clone(), reminded: now }
        });
        down.last_failure = failure;
        let waited = now.duration_since(down.at);
        if waited >= self.timeout {
            let why = format!(
                "stage `{stage}` gave up waiting for the object store {store}: it has been failing since {} ({}, \
                 longer than `outage_timeout` = {}); last failure: {}. The job stops here; once the store answers, \
                 rerun it to resume from its last checkpoint",
                humantime::format_rfc3339_seconds(down.since),
                seconds(waited),
                humantime::format_duration(self.timeout),
                down.last_failure
            );
            tracing::error!(stage = %stage, store = %store, "{why}");
            st.gave_up.insert(store, why.clone());
            return Verdict::GaveUp(outage_error(&why));
        }
        if now.duration_since(down.reminded) >= REMIND_EVERY {
            down.reminded = now;
            tracing::warn!(
                stage = %stage,
                store = %store,
                gives_up_in = %seconds(self.timeout - waited),
                error = %down.last_failure,
                "stage `{stage}` is still waiting on the object store {store} (for {})",
                seconds(waited)
            );
        }
        // Doubling per try, half fixed and half random, never past the outage's end.
        let cap = FIRST_WAIT.saturating_mul(1u32 << tries.min(8)).min(MAX_WAIT);
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let jitter = (nanos as f64 / 1e9 + tries as f64 * 0.618).fract();
        let wait = (cap / 2 + (cap / 2).mul_f64(jitter)).min(self.timeout.saturating_sub(waited));
        Verdict::Wait(wait.max(Duration::from_millis(50)))
    }

    /// Whether the store behind `uri` answers a `HEAD` of a path that does not exist.
    async fn answers(&self, registry: &ObjectStoreRegistry, uri: &str) -> bool {
        let Ok(Ok((store, _))) = registry.resolve(uri).await else { return true };
        match store.head(&Path::from("alluvium-probe-of-an-absent-object")).await {
            Ok(_) => true,
            Err(e) => !store_failing(&e),
        }
    }
}

impl WaitSource for StoreOutages {
    fn status(&self) -> Vec<ServiceStatus> {
        let st = self.state();
        // The store waited on longest, for each stage.
        let down = st.down.iter().min_by_key(|(_, d)| d.since);
        st.users
            .iter()
            .map(|(pipeline, stage)| ServiceStatus {
                pipeline: pipeline.clone(),
                stage: stage.clone(),
                service: "object store".into(),
                endpoint: down.map(|(store, _)| store.clone()),
                waiting: down.map(|(store, d)| Waiting {
                    since: d.since,
                    waited: d.at.elapsed(),
                    last_failure: d.last_failure.clone(),
                    probes: 0,
                    gave_up: st.gave_up.contains_key(store),
                }),
            })
            .collect()
    }
}

/// The error a stage fails with once it gives up waiting: not retried by a region restart.
fn outage_error(why: &str) -> Error {
    Error::external(why.to_string()).with_retryable(false)
}

/// `scheme://host[:port]` of `uri`, without credentials (the store's address in messages).
fn store_of(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(u) => match u.port() {
            Some(p) => format!("{}://{}:{p}", u.scheme(), u.host_str().unwrap_or_default()),
            None => format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default()),
        },
        Err(_) => "the store".into(),
    }
}

fn seconds(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}
