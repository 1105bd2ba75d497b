//! Service stages: a model or a remote endpoint shared by every lane of a pipeline (the idea of
//! Flink's RpcOperator, FLIP-582). Inference is part of the dataflow, not a black box behind a UDF.
//!
//! ```text
//!  lane 0 ─ ServiceStage ─┐ requests (≤ max_batch_rows)   ┌─ worker 0 (its own model instance)
//!  lane 1 ─ ServiceStage ─┼──▶ queue, bounded in rows ────┼─ worker 1
//!  lane 2 ─ ServiceStage ─┘ ◀── answers (values, failures) └─ worker … (min..max, resizable)
//! ```
//!
//! * A [`Service`] answers one batch of requests with one value per row. Its error says whose
//!   failure it is: the **service's** ([`ServiceError::transient`], optionally with the server's
//!   `Retry-After`: a refused connection, a timeout, 5xx, 429, a TLS error), the **rows'**
//!   ([`ServiceError::permanent`]: a 4xx naming the input, an answer that cannot be decoded, a
//!   per-row error in the answer), or the **setup's** ([`ServiceError::fatal`]: a rejected API key,
//!   a model the server does not have), which stops the pipeline with the message instead of
//!   turning every row into a dead letter. Only the rows' failures become dead letters.
//! * A [`ServicePool`] runs workers, each with its own instance made by the pool's start function
//!   (model weights load once per worker; a new worker takes traffic only once it has started).
//!   * **Dynamic batching**: a worker takes queued requests, from any lane, up to
//!     `max_batch_rows`, waiting at most `max_wait` for a batch to fill.
//!   * **Backpressure**: the queue holds at most `queue_rows` rows; a lane that wants more waits.
//!   * **Timeouts and retries**: each call has a `timeout`; transient failures are retried up to
//!     `retries` times with exponential backoff and full jitter, never sooner than `Retry-After`
//!     (which is believed up to `max_retry_after`, 60 s: a server asking for a day does not stall
//!     the job for a day).
//!   * **Outages are not bad input** ([`outage`]): when one call's retries are spent, the service
//!     is down, not the rows. A circuit breaker opens: workers hold the requests they have and
//!     take no more, the queue fills and lanes wait (backpressure holds the sources), checkpoints
//!     go on (the stage is unaligned), and one request at a time probes the service with backoff
//!     and jitter. When it answers, work goes on where it was, nothing lost or doubled. After
//!     `outage_timeout` (10 minutes) the stage fails with an error naming it, the endpoint and the
//!     last failure; the job stops and a rerun resumes from its last checkpoint. Metrics
//!     ([`service_status`]), the progress line and the log say which stage waits and since when.
//!   * **Dead letters for permanent failures**: a batch that fails permanently is split in halves
//!     until the failing rows are found, so one bad row never takes its neighbours down.
//!   * **Non-disruptive scaling**: [`ServicePool::resize`] changes the number of workers while the
//!     pipeline runs, and between `min_workers` and `max_workers` the pool scales itself from the
//!     depth of its queue. A removed worker finishes the batch it holds before it stops; no lane
//!     restarts and no request is lost.
//! * A [`ServiceStage`] is the [`AsyncOperator`] lanes use to call the pool. [`ServicePool::stage`]
//!   makes it a pipeline [`Stage`] with **unaligned checkpoints**: a barrier does not wait for the
//!   requests in flight; they are recorded in the lane's checkpoint and issued again after a
//!   restore, so a checkpoint takes the same time whether a model call takes a millisecond or a
//!   minute, and the output stays exactly-once.
//!
//! The pool is its own region: a lane that fails and restarts does not restart the pool; the
//! requests of the failed lane that are still queued are skipped (nobody waits for them).

pub mod outage;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arrow::array::{new_null_array, Array, ArrayRef, BooleanArray};
use arrow::compute::{concat, concat_batches, filter, filter_record_batch};
use arrow::datatypes::{DataType, Field};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::error::{redact, Error, ErrorKind, Result};
use crate::operator::{with_columns, AsyncOperator, Output, RowFailure, TaskContext};
use crate::pipeline::Stage;

pub use outage::{register_wait_source, service_status, ServiceStatus, WaitSource, Waiting};
use outage::{Admit, Breaker};

/// Why a call to a [`Service`] failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceError {
    /// A retry may succeed (overload, a timeout, a restarting server).
    pub transient: bool,
    /// No call can succeed (bad credentials, an unknown model): the stage fails with this message.
    pub fatal: bool,
    /// The server asked to wait this long before the next try (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// What failed, for a person. Never contains a secret.
    pub message: String,
}

impl ServiceError {
    /// A failure of the service, not of the rows (HTTP 429/5xx, a timeout, a refused or dropped
    /// connection, a TLS error): retried, and while it lasts the stage waits for the service
    /// instead of making dead letters (see [`outage`]).
    pub fn transient(message: impl Into<String>) -> Self {
        Self { transient: true, fatal: false, retry_after: None, message: message.into() }
    }
    /// A failure of the rows that no retry fixes (HTTP 400 naming the input, an input the model
    /// rejects, an answer that cannot be decoded): the rows that fail become dead letters.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { transient: false, fatal: false, retry_after: None, message: message.into() }
    }
    /// A failure of the setup, not of the rows (HTTP 401/403/404): the pipeline stops with a config
    /// error saying what to fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self { transient: false, fatal: true, retry_after: None, message: message.into() }
    }
    /// Waits at least `after` before the next try.
    pub fn retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A model or endpoint: answers a batch of requests with one value per request row.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// Answers `requests` (the request columns of up to `max_batch_rows` rows, from any lanes) with
    /// an array of the same length. CPU-heavy services run their work off the async reactor
    /// (`tokio::task::spawn_blocking`).
    async fn call(&self, requests: RecordBatch) -> std::result::Result<ArrayRef, ServiceError>;

    /// Where the service is, for messages, metrics and logs (a URL without credentials); `None`
    /// for a model in the process.
    fn endpoint(&self) -> Option<String> {
        None
    }
}

/// Makes worker `n`'s service: loads weights, opens connections. Called once per worker.
pub type StartWorker = Arc<dyn Fn(usize) -> BoxFuture<'static, Result<Arc<dyn Service>>> + Send + Sync>;

/// The pool's settings, with their defaults.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Rows per call at most (64).
    pub max_batch_rows: usize,
    /// How long a worker waits for a batch to fill before it calls with what it has (5 ms).
    pub max_wait: Duration,
    /// Workers at the start (1).
    pub workers: usize,
    /// Fewest workers the pool scales itself down to (`workers`).
    pub min_workers: usize,
    /// Most workers the pool scales itself up to (`workers`; equal to `min_workers`: no autoscaling).
    pub max_workers: usize,
    /// Rows queued at most before callers wait (4 × `max_batch_rows`).
    pub queue_rows: usize,
    /// Time one call may take before it is abandoned and retried (60 s).
    pub timeout: Duration,
    /// Retries of a transient failure of one call (4; 5 attempts in all) before the service is
    /// taken to be down (an outage: the stage waits for it, see [`outage`]). Never a reason for a
    /// dead letter.
    pub retries: u32,
    /// First backoff; it doubles with every retry, with full jitter (100 ms). Probes of a service
    /// that is down are spaced the same way, up to `max_backoff`.
    pub backoff: Duration,
    /// Longest backoff (10 s).
    pub max_backoff: Duration,
    /// Longest wait a server's `Retry-After` is believed for (60 s).
    pub max_retry_after: Duration,
    /// How long the stage waits for a service that is down before it fails, stopping the job
    /// (10 minutes). A rerun resumes from the last checkpoint.
    pub outage_timeout: Duration,
    /// How often the pool looks at its queue to scale itself (500 ms).
    pub scale_interval: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_batch_rows: 64,
            max_wait: Duration::from_millis(5),
            workers: 1,
            min_workers: 1,
            max_workers: 1,
            queue_rows: 256,
            timeout: Duration::from_secs(60),
            retries: 4,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            outage_timeout: Duration::from_secs(600),
            scale_interval: Duration::from_millis(500),
        }
    }
}

impl PoolSettings {
    /// Checks the settings; errors name the setting and the fix.
    pub fn validate(&self, name: &str) -> Result<()> {
        let bad = |what: String| Err(Error::config(format!("service `{name}`: {what}")));
        if self.max_batch_rows == 0 {
            return bad("`max_batch_rows` must be at least 1".into());
        }
        if self.min_workers == 0 || self.workers == 0 {
            return bad("`workers` and `min_workers` must be at least 1".into());
        }
        if self.min_workers > self.max_workers {
            return bad(format!(
                "`min_workers` ({}) is more than `max_workers` ({}): raise `max_workers`",
                self.min_workers, self.max_workers
            ));
        }
        if self.workers < self.min_workers || self.workers > self.max_workers {
            return bad(format!(
                "`workers` ({}) must lie between `min_workers` ({}) and `max_workers` ({})",
                self.workers, self.min_workers, self.max_workers
            ));
        }
        if self.queue_rows < self.max_batch_rows {
            return bad(format!(
                "`queue_rows` ({}) must hold at least one batch (`max_batch_rows` = {})",
                self.queue_rows, self.max_batch_rows
            ));
        }
        if self.timeout.is_zero() {
            return bad("`timeout` must be more than zero".into());
        }
        if self.outage_timeout.is_zero() {
            return bad(
                "`outage_timeout` must be more than zero (how long to wait for an endpoint that is down, e.g. 10m)".into()
            );
        }
        Ok(())
    }
}

/// What the pool answers one caller: a value per row (null where the row failed) and the failures.
#[derive(Debug, Clone)]
pub struct Answer {
    /// One value per request row; failed rows hold null.
    pub values: ArrayRef,
    /// The rows that failed, indexed within the request.
    pub failures: Vec<RowFailure>,
}

/// Counters of a pool, for metrics, progress and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolStats {
    /// Workers taking traffic.
    pub workers: usize,
    /// Workers still starting (warming up).
    pub starting: usize,
    /// The number of workers the pool is moving towards.
    pub target: usize,
    /// Rows waiting in the queue.
    pub queued_rows: usize,
    /// Calls made (retries included).
    pub calls: u64,
    /// Calls that were retries.
    pub retries: u64,
    /// Rows answered with a value.
    pub rows: u64,
    /// Rows that failed for good (the rows' failures: dead letters).
    pub failed_rows: u64,
    /// Calls in flight right now.
    pub in_flight: u64,
    /// Most calls in flight at once so far.
    pub peak_in_flight: u64,
    /// Outages so far: times the service was taken to be down and the stage waited for it.
    pub outages: u64,
    /// Since when the stage has been waiting for its service, while it is down.
    pub waiting_since: Option<SystemTime>,
}

struct Request {
    batch: RecordBatch,
    reply: oneshot::Sender<Result<Answer>>,
    enqueued: Instant,
    _room: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Queue {
    requests: VecDeque<Request>,
    rows: usize,
}

#[derive(Default)]
struct Workers {
    live: usize,
    starting: usize,
    target: usize,
    next_id: usize,
    /// Why no worker could start, when none is live: callers get this instead of waiting forever.
    broken: Option<String>,
    runtime: Option<tokio::runtime::Handle>,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    retries: AtomicU64,
    rows: AtomicU64,
    failed_rows: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

struct Inner {
    name: String,
    settings: PoolSettings,
    start: StartWorker,
    queue: Mutex<Queue>,
    work: Notify,
    room: Arc<Semaphore>,
    workers: Mutex<Workers>,
    counters: Counters,
    /// Whether the service is down, since when, and the last failure.
    breaker: Breaker,
    /// Where the service is ([`Service::endpoint`] of the first worker that started), redacted.
    endpoint: Mutex<Option<String>>,
    /// The (pipeline, stage) pairs whose lanes call this pool, for metrics.
    users: Mutex<Vec<(String, String)>>,
}

/// A pool of service workers shared by all lanes. Cloning shares the pool. See the module docs.
#[derive(Clone)]
pub struct ServicePool {
    inner: Arc<Inner>,
}

impl fmt::Debug for ServicePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServicePool").field("name", &self.inner.name).field("stats", &self.stats()).finish()
    }
}

impl ServicePool {
    /// A pool named `name` whose workers are made by `start`. Workers start on the first call.
    pub fn new<F, Fut>(name: impl Into<String>, settings: PoolSettings, start: F) -> Result<Self>
    where
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Arc<dyn Service>>> + Send + 'static,
    {
        let name = name.into();
        settings.validate(&name)?;
        let start: StartWorker = Arc::new(move |n| Box::pin(start(n)));
        let room = Arc::new(Semaphore::new(settings.queue_rows));
        let workers = Mutex::new(Workers { target: settings.workers, ..Default::default() });
        let inner = Inner {
            name,
            settings,
            start,
            queue: Default::default(),
            work: Notify::new(),
            room,
            workers,
            counters: Default::default(),
            breaker: Default::default(),
            endpoint: Mutex::new(None),
            users: Mutex::new(Vec::new()),
        };
        let inner = Arc::new(inner);
        outage::register(&inner);
        Ok(Self { inner })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The pool's settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// Whether the stage is waiting for its service (it is down), since when and why; `None` while
    /// the service answers.
    pub fn waiting(&self) -> Option<Waiting> {
        self.inner.waiting()
    }

    /// The pool's counters now.
    pub fn stats(&self) -> PoolStats {
        let c = &self.inner.counters;
        let (outages, waiting_since) = self.inner.outage_counts();
        let w = self.inner.workers.lock().expect("workers");
        PoolStats {
            workers: w.live,
            starting: w.starting,
            target: w.target,
            queued_rows: self.inner.queue.lock().expect("queue").rows,
            calls: c.calls.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            rows: c.rows.load(Ordering::Relaxed),
            failed_rows: c.failed_rows.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
            peak_in_flight: c.peak_in_flight.load(Ordering::Relaxed),
            outages,
            waiting_since,
        }
    }

    /// Changes the number of workers while the pipeline runs. New workers start (load their model)
    /// before they take requests; removed workers finish the batch they hold, then stop. Takes
    /// effect at once if the pool is running, else at its first call.
    pub fn resize(&self, workers: usize) {
        let workers = workers.max(1);
        let from = {
            let mut w = self.inner.workers.lock().expect("workers");
            std::mem::replace(&mut w.target, workers)
        };
        if from != workers {
            tracing::info!(service = %self.inner.name, from, to = workers, "service pool resized");
        }
        self.inner.spawn_missing();
        // Idle workers look at the target again.
        self.inner.work.notify_waiters();
    }

    /// Calls the service on `requests`: splits them into requests of at most `max_batch_rows`, waits
    /// for room in the queue (backpressure), and gathers the answers in row order. While the service
    /// is down the answers wait for it (see [`outage`]). `Err` only when the pool cannot work at
    /// all: no worker could start, the setup is wrong (a config error), or the service stayed down
    /// longer than `outage_timeout` (an external error naming the endpoint and the last failure).
    pub async fn call(&self, requests: RecordBatch) -> Result<Answer> {
        self.inner.ensure_started();
        if let Some(why) = self.inner.gave_up() {
            return Err(outage::outage_error(&why));
        }
        let max = self.inner.settings.max_batch_rows;
        let mut replies = Vec::new();
        let mut offset = 0;
        while offset < requests.num_rows() {
            let len = max.min(requests.num_rows() - offset);
            let room = self.inner.room.clone().acquire_many_owned(len as u32).await.map_err(|_| self.inner.closed())?;
            if let Some(why) = &self.inner.workers.lock().expect("workers").broken {
                return Err(Error::external(format!("service `{}` has no worker: {why}", self.inner.name)));
            }
            if let Some(why) = self.inner.gave_up() {
                return Err(outage::outage_error(&why));
            }
            let (reply, answer) = oneshot::channel();
            let batch = requests.slice(offset, len);
            {
                let mut q = self.inner.queue.lock().expect("queue");
                q.rows += len;
                q.requests.push_back(Request { batch, reply, enqueued: Instant::now(), _room: room });
            }
            self.inner.work.notify_one();
            replies.push((offset, answer));
            offset += len;
        }
        let mut values = Vec::with_capacity(replies.len());
        let mut failures = Vec::new();
        for (offset, answer) in replies {
            let a = answer.await.map_err(|_| self.inner.closed())??;
            values.push(a.values);
            failures.extend(a.failures.into_iter().map(|f| RowFailure { row: f.row + offset, ..f }));
        }
        let values = match values.len() {
            0 => new_null_array(&DataType::Null, 0),
            1 => values.pop().expect("one"),
            _ => concat_values(values)?,
        };
        Ok(Answer { values, failures })
    }

    /// A pipeline stage calling this pool with the `columns` of each row; the answers go into column
    /// `output`. Unaligned checkpoints, and up to 4 calls in flight per lane, in input order.
    pub fn stage(&self, name: impl Into<String>, columns: &[&str], output: impl Into<String>) -> Stage {
        let op = ServiceStage::new(self.clone(), columns, output);
        Stage::new_async(name, op).unaligned()
    }
}

/// Concatenates arrays of one type, or of `Null` (all-failed pieces) and one other type.
fn concat_values(parts: Vec<ArrayRef>) -> Result<ArrayRef> {
    let ty = parts.iter().map(|a| a.data_type()).find(|t| **t != DataType::Null).cloned().unwrap_or(DataType::Null);
    let parts: Vec<ArrayRef> =
        parts.into_iter().map(|a| if *a.data_type() == ty { a } else { new_null_array(&ty, a.len()) }).collect();
    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
    Ok(concat(&refs)?)
}

impl Inner {
    fn closed(&self) -> Error {
        Error::internal(format!("service `{}` stopped", self.name)).with_retryable(true)
    }

    /// Starts the workers on the caller's runtime at the first call.
    fn ensure_started(self: &Arc<Self>) {
        {
            let mut w = self.workers.lock().expect("workers");
            if w.runtime.is_some() {
                return;
            }
            w.runtime = Some(tokio::runtime::Handle::current());
        }
        self.spawn_missing();
        if self.settings.max_workers > self.settings.min_workers {
            let weak = Arc::downgrade(self);
            tokio::spawn(autoscale(weak, self.settings.scale_interval));
        }
    }

    /// Spawns workers until live + starting reaches the target.
    fn spawn_missing(self: &Arc<Self>) {
        let mut w = self.workers.lock().expect("workers");
        let Some(rt) = w.runtime.clone() else { return };
        while w.live + w.starting < w.target {
            w.starting += 1;
            let id = w.next_id;
            w.next_id += 1;
            rt.spawn(worker(self.clone(), id));
        }
    }

    /// Whether worker should stop now (the pool is shrinking); if so it is counted out.
    fn retire(&self) -> bool {
        let mut w = self.workers.lock().expect("workers");
        if w.live > w.target {
            w.live -= 1;
            true
        } else {
            false
        }
    }

    /// Waits for requests and takes a batch of them: up to `max_batch_rows`, waiting at most
    /// `max_wait` after the oldest for more. `None`: this worker retires.
    async fn take(&self) -> Option<Vec<Request>> {
        let max = self.settings.max_batch_rows;
        let mut taken: Vec<Request> = Vec::new();
        let mut rows = 0;
        let mut deadline: Option<Instant> = None;
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if taken.is_empty() && self.retire() {
                return None;
            }
            let left_behind = {
                let mut q = self.queue.lock().expect("queue");
                while let Some(r) = q.requests.front() {
                    if r.reply.is_closed() {
                        // Its lane restarted: nobody waits for this answer.
                        let r = q.requests.pop_front().expect("front");
                        q.rows -= r.batch.num_rows();
                        continue;
                    }
                    if rows + r.batch.num_rows() > max && !taken.is_empty() {
                        break;
                    }
                    let r = q.requests.pop_front().expect("front");
                    q.rows -= r.batch.num_rows();
                    rows += r.batch.num_rows();
                    deadline.get_or_insert(r.enqueued + self.settings.max_wait);
                    taken.push(r);
                }
                !q.requests.is_empty()
            };
            if left_behind {
                // Hand what this worker cannot take to another one.
                self.work.notify_one();
            }
            match deadline {
                Some(d) if rows >= max || left_behind || Instant::now() >= d => return Some(taken),
                Some(d) => {
                    let _ = tokio::time::timeout_at(d.into(), notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// Calls `service` on `batch`: with the timeout, the retries of a transient failure, and, when
    /// the service is down, waiting for it (see [`outage`]). Returns the outcome and the number of
    /// calls made for `batch`. A transient failure never comes back: it is retried, then waited
    /// out, until the outage lasts longer than `outage_timeout`.
    async fn call_with_retries(&self, service: &dyn Service, batch: &RecordBatch, abandoned: Abandoned<'_>) -> (Outcome, u32) {
        let s = &self.settings;
        let mut attempts = 0u32;
        // Retries of this call while the service is up; an outage gives a fresh budget after it.
        let mut retried = 0u32;
        loop {
            let probe = match self.admit(abandoned).await {
                Admit::Call => false,
                Admit::Probe => true,
                Admit::GaveUp(why) => return (Outcome::GaveUp(why), attempts),
                Admit::Abandoned => return (Outcome::Abandoned, attempts),
            };
            attempts += 1;
            let c = &self.counters;
            c.calls.fetch_add(1, Ordering::Relaxed);
            if attempts > 1 {
                c.retries.fetch_add(1, Ordering::Relaxed);
            }
            let now = c.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            c.peak_in_flight.fetch_max(now, Ordering::Relaxed);
            let result = match tokio::time::timeout(s.timeout, service.call(batch.clone())).await {
                Ok(Ok(values)) if values.len() == batch.num_rows() => Ok(values),
                Ok(Ok(values)) => Err(ServiceError::permanent(format!(
                    "the service answered {} values for {} requests",
                    values.len(),
                    batch.num_rows()
                ))),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ServiceError::transient(format!("no answer within {}", humantime::format_duration(s.timeout)))),
            };
            c.in_flight.fetch_sub(1, Ordering::Relaxed);
            let e = match result {
                Ok(values) => {
                    self.service_answered();
                    return (Outcome::Values(values), attempts);
                }
                // An answer, even a refusal, says the service is up: the failure is the rows' (or
                // the setup's).
                Err(e) if !e.transient => {
                    self.service_answered();
                    return (Outcome::Failed(e), attempts);
                }
                Err(e) => e,
            };
            // The server's wait, believed up to `max_retry_after`.
            let asked = e.retry_after.map(|d| d.min(s.max_retry_after));
            if probe {
                self.probe_failed(&e, asked);
                continue;
            }
            if self.is_open() {
                // Down already (another worker found out): wait with the others, spending nothing.
                self.service_failed(&e, asked);
                continue;
            }
            if retried < s.retries {
                retried += 1;
                let wait = backoff(s, retried).max(asked.unwrap_or_default());
                tracing::debug!(service = %self.name, attempt = attempts, wait_ms = wait.as_millis() as u64, error = %redact(&e.message), "retrying");
                if sleep_unless(wait, abandoned).await {
                    return (Outcome::Abandoned, attempts);
                }
                continue;
            }
            // Every retry of this call failed: the service is down, not the rows.
            self.service_failed(&e, asked);
            retried = 0;
        }
    }

    /// Answers every row of `batch`: calls, and on a permanent failure of several rows, splits the
    /// batch in halves to find the rows that fail. Pieces come back in row order.
    fn answer<'a>(
        &'a self,
        service: &'a dyn Service,
        batch: RecordBatch,
        first_row: usize,
        abandoned: Abandoned<'a>,
    ) -> BoxFuture<'a, Vec<Piece>> {
        Box::pin(async move {
            let (outcome, attempts) = self.call_with_retries(service, &batch, abandoned).await;
            match outcome {
                Outcome::Values(values) => vec![Piece::Values(values)],
                Outcome::GaveUp(why) => vec![Piece::Stop(outage::outage_error(&why))],
                Outcome::Abandoned => vec![Piece::Abandoned],
                Outcome::Failed(e) if e.fatal => {
                    vec![Piece::Stop(Error::config(redact(&format!("service `{}`: {}", self.name, e.message))))]
                }
                Outcome::Failed(_) if batch.num_rows() > 1 => {
                    let half = batch.num_rows() / 2;
                    let mut pieces = self.answer(service, batch.slice(0, half), first_row, abandoned).await;
                    if matches!(pieces.last(), Some(Piece::Stop(_) | Piece::Abandoned)) {
                        return pieces;
                    }
                    pieces.extend(
                        self.answer(service, batch.slice(half, batch.num_rows() - half), first_row + half, abandoned).await,
                    );
                    pieces
                }
                Outcome::Failed(e) => {
                    // The row's own failure: a dead letter, with the server's words (never a secret).
                    let message = redact(&format!("service `{}`: {}", self.name, e.message));
                    let failures = (0..batch.num_rows())
                        .map(|r| RowFailure::new(first_row + r, ErrorKind::Data, message.clone()).attempts(attempts))
                        .collect();
                    vec![Piece::Failed(batch.num_rows(), failures)]
                }
            }
        })
    }
}

/// Whether every caller of a batch has gone (their lanes stopped or restarted): then nobody waits
/// for its answer, and a worker waiting for the service drops it.
type Abandoned<'a> = &'a (dyn Fn() -> bool + Send + Sync);

/// What calling the service on one batch came to.
enum Outcome {
    /// A value per row.
    Values(ArrayRef),
    /// The service answered with a failure of the rows (or of the setup, when fatal).
    Failed(ServiceError),
    /// The service stayed down longer than `outage_timeout`.
    GaveUp(String),
    /// Nobody waits for the answer any more.
    Abandoned,
}

enum Piece {
    Values(ArrayRef),
    Failed(usize, Vec<RowFailure>),
    /// The stage cannot go on: every caller gets this error.
    Stop(Error),
    Abandoned,
}

/// Sleeps `wait`, or less when `abandoned` becomes true (looked at every quarter second). Returns
/// whether it was abandoned.
async fn sleep_unless(wait: Duration, abandoned: Abandoned<'_>) -> bool {
    let until = Instant::now() + wait;
    loop {
        if abandoned() {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        tokio::time::sleep((until - now).min(outage::TICK)).await;
    }
}

/// A random number in [0, 1).
fn unit_random(salt: u64) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(salt);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Exponential backoff with full jitter: a random time in [0, min(max, base × 2^(attempt-1))].
fn backoff(s: &PoolSettings, attempt: u32) -> Duration {
    let cap = s.backoff.saturating_mul(1u32 << (attempt.max(1) - 1).min(16)).min(s.max_backoff);
    cap.mul_f64(unit_random(attempt as u64))
}

async fn worker(pool: Arc<Inner>, id: usize) {
    let started = (pool.start)(id).await;
    let service = {
        let mut w = pool.workers.lock().expect("workers");
        w.starting -= 1;
        match started {
            Ok(s) => {
                w.live += 1;
                w.broken = None;
                s
            }
            Err(e) => {
                tracing::error!(service = %pool.name, worker = id, error = %e, "a service worker could not start");
                if w.live + w.starting == 0 {
                    w.broken = Some(e.to_string());
                    drop(w);
                    let why = e.to_string();
                    fail_queued(&pool, || Error::external(format!("service `{}` has no worker: {why}", pool.name)));
                }
                return;
            }
        }
    };
    if let Some(endpoint) = service.endpoint() {
        let mut known = pool.endpoint.lock().expect("endpoint");
        if known.is_none() {
            *known = Some(redact(&endpoint));
        }
    }
    tracing::debug!(service = %pool.name, worker = id, "service worker started");
    while let Some(requests) = pool.take().await {
        serve(&pool, service.as_ref(), requests).await;
    }
    tracing::debug!(service = %pool.name, worker = id, "service worker stopped");
}

/// Fails every queued request with `error()`: the pool cannot answer them.
fn fail_queued(pool: &Inner, error: impl Fn() -> Error) {
    let drained: Vec<Request> = {
        let mut q = pool.queue.lock().expect("queue");
        q.rows = 0;
        q.requests.drain(..).collect()
    };
    for r in drained {
        let _ = r.reply.send(Err(error()));
    }
}

/// Calls the service on the requests as one batch and answers each request its share.
async fn serve(pool: &Inner, service: &dyn Service, requests: Vec<Request>) {
    let batches: Vec<RecordBatch> = requests.iter().map(|r| r.batch.clone()).collect();
    let merged = match concat_batches(&batches[0].schema(), &batches) {
        Ok(b) => b,
        Err(e) => {
            // Lanes sent different schemas: answer them one by one.
            tracing::debug!(service = %pool.name, error = %e, "requests do not share a schema");
            for r in requests {
                Box::pin(serve(pool, service, vec![r])).await;
            }
            return;
        }
    };
    let abandoned = || requests.iter().all(|r| r.reply.is_closed());
    let pieces = pool.answer(service, merged, 0, &abandoned).await;
    if pieces.iter().any(|p| matches!(p, Piece::Abandoned)) {
        tracing::debug!(service = %pool.name, "nobody waits for these requests any more (their lanes stopped); dropped");
        return;
    }
    if let Some(Piece::Stop(e)) = pieces.iter().find(|p| matches!(p, Piece::Stop(_))) {
        if e.kind() == ErrorKind::Config {
            tracing::error!(service = %pool.name, error = %e, "the service cannot work; stopping");
        }
        for r in requests {
            let _ = r.reply.send(Err(e.clone()));
        }
        return;
    }
    // One value per row (null where failed) and the failures, then each request its rows.
    let mut parts = Vec::new();
    let mut failures = Vec::new();
    for p in pieces {
        match p {
            Piece::Values(v) => parts.push(v),
            Piece::Failed(n, f) => {
                parts.push(new_null_array(&DataType::Null, n));
                failures.extend(f);
            }
            Piece::Stop(_) | Piece::Abandoned => unreachable!("answered above"),
        }
    }
    let c = &pool.counters;
    c.failed_rows.fetch_add(failures.len() as u64, Ordering::Relaxed);
    let values = concat_values(parts);
    let mut offset = 0;
    for r in requests {
        let n = r.batch.num_rows();
        let answer = values.as_ref().map_err(|e| Error::internal(e.to_string())).map(|v| Answer {
            values: v.slice(offset, n),
            failures: failures
                .iter()
                .filter(|f| f.row >= offset && f.row < offset + n)
                .map(|f| RowFailure { row: f.row - offset, ..f.clone() })
                .collect(),
        });
        if let Ok(a) = &answer {
            c.rows.fetch_add((n - a.failures.len()) as u64, Ordering::Relaxed);
        }
        let _ = r.reply.send(answer);
        offset += n;
    }
}

/// Scales the pool between its bounds from the depth of its queue: up by one when more than a full
/// batch per worker waits (not while the service is down), down by one after three looks at an
/// empty queue with a worker idle.
async fn autoscale(pool: std::sync::Weak<Inner>, every: Duration) {
    let mut quiet = 0;
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let s = &pool.settings;
        let queued = pool.queue.lock().expect("queue").rows;
        let busy = pool.counters.in_flight.load(Ordering::Relaxed) as usize;
        let (target, live) = {
            let w = pool.workers.lock().expect("workers");
            (w.target, w.live)
        };
        // A queue that grows because the service is down is no load to scale for.
        let down = pool.is_open();
        let to = if queued > s.max_batch_rows * target.max(1) && target < s.max_workers && !down {
            quiet = 0;
            target + 1
        } else if queued == 0 && busy < live && target > s.min_workers {
            quiet += 1;
            if quiet >= 3 {
                quiet = 0;
                target - 1
            } else {
                target
            }
        } else {
            quiet = 0;
            target
        };
        if to != target {
            tracing::info!(service = %pool.name, from = target, to, queued_rows = queued, "service pool scaled itself");
            ServicePool { inner: pool }.resize(to);
        }
    }
}

/// The stage lanes use to call a [`ServicePool`]: the request columns go to the pool, the answers
/// come back as column `output`. Rows with a null request, and rows the service fails for good,
/// become dead letters with the reason.
#[derive(Clone)]
pub struct ServiceStage {
    pool: ServicePool,
    columns: Vec<String>,
    output: String,
    field: OutputField,
}

/// Makes the output field from its name and the answers' type.
type OutputField = Arc<dyn Fn(&str, &DataType) -> Result<Field> + Send + Sync>;

impl ServiceStage {
    /// Calls `pool` with `columns`; answers go into `output` (a plain nullable field of the answers' type).
    pub fn new(pool: ServicePool, columns: &[&str], output: impl Into<String>) -> Self {
        Self {
            pool,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            output: output.into(),
            field: Arc::new(|name, ty| Ok(Field::new(name, ty.clone(), true))),
        }
    }

    /// Makes the output field from its name and the answers' type (to add an extension type, say).
    pub fn output_field(mut self, f: impl Fn(&str, &DataType) -> Result<Field> + Send + Sync + 'static) -> Self {
        self.field = Arc::new(f);
        self
    }
}

#[async_trait]
impl AsyncOperator for ServiceStage {
    async fn process(&self, batch: RecordBatch, ctx: &TaskContext) -> Result<Output> {
        self.pool.inner.used_by(&ctx.pipeline, &ctx.stage);
        let mut indices = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            let i = batch.schema().index_of(c).map_err(|_| {
                Error::config(format!(
                    "stage `{}`: the input has no column `{c}` (it has: {}); set `column` to one of them",
                    ctx.stage,
                    batch.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                ))
            })?;
            indices.push(i);
        }
        let requests = batch.project(&indices)?;
        // Rows with a null request never reach the service.
        let present: BooleanArray =
            (0..batch.num_rows()).map(|r| Some(indices.iter().all(|&i| batch.column(i).is_valid(r)))).collect();
        let mut failures: Vec<RowFailure> = Vec::new();
        let mut rows: Vec<usize> = Vec::with_capacity(batch.num_rows());
        for r in 0..batch.num_rows() {
            if present.value(r) {
                rows.push(r);
            } else {
                failures.push(RowFailure::new(
                    r,
                    ErrorKind::Data,
                    format!("the request column `{}` is null", self.columns.join("`, `")),
                ));
            }
        }
        let requests = if failures.is_empty() { requests } else { filter_record_batch(&requests, &present)? };
        let answer = self.pool.call(requests).await?;
        failures.extend(answer.failures.iter().map(|f| RowFailure { row: rows[f.row], ..f.clone() }));
        // Keep the rows that were sent and answered.
        let mut answered = vec![true; rows.len()];
        for f in &answer.failures {
            answered[f.row] = false;
        }
        let mut keep = vec![false; batch.num_rows()];
        for (k, &r) in rows.iter().enumerate() {
            keep[r] = answered[k];
        }
        let values = filter(&answer.values, &BooleanArray::from(answered))?;
        let kept = filter_record_batch(&batch, &BooleanArray::from(keep))?;
        let out = if kept.num_rows() == 0 {
            kept
        } else {
            let field = (self.field)(&self.output, values.data_type())?;
            with_columns(&kept, None, vec![(field, values)])?
        };
        failures.sort_by_key(|f| f.row);
        Ok(Output::with_failures(out, failures))
    }
}
