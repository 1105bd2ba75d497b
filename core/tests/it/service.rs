//! Service stages: a pool shared by the lanes, dynamic batching, retries, dead letters, resizing,
//! unaligned checkpoints that do not wait for slow calls, and outages: a service that is down is
//! waited for (no dead letters, checkpoints go on, a stop does not wait), up to `outage_timeout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alluvium_core::arrow::array::{Array, ArrayRef, Int64Array};
use alluvium_core::arrow::datatypes::{DataType, Field, Schema};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::files::{FileSink, JsonLines};
use alluvium_core::ops::Fault;
use alluvium_core::service::{PoolSettings, Service, ServiceError, ServicePool, ServiceStage};
use alluvium_core::sources::Generate;
use alluvium_core::{Pipeline, Stage};
use async_trait::async_trait;

use crate::common::*;

/// A model that answers `id × 2` after `latency`; ids that are multiples of `reject` fail for good,
/// and every `flaky`-th call fails with a transient error asking to wait 2 ms; with `flaky_once`,
/// a request (known by its first id and its size) fails so at most once, so that its retries never
/// run out however the workers' calls interleave (the counter is shared by all workers).
#[derive(Default)]
struct Doubler {
    latency: Duration,
    reject: Option<i64>,
    flaky: Option<u64>,
    flaky_once: bool,
    failed_once: std::sync::Mutex<std::collections::HashSet<(Option<i64>, usize)>>,
    calls: AtomicU64,
    largest_batch: AtomicU64,
}

#[async_trait]
impl Service for Doubler {
    async fn call(&self, requests: RecordBatch) -> Result<ArrayRef, ServiceError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.largest_batch.fetch_max(requests.num_rows() as u64, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        let ids = requests.column(0).as_any().downcast_ref::<Int64Array>().expect("ids");
        if self.flaky.is_some_and(|k| n.is_multiple_of(k))
            && (!self.flaky_once || self.failed_once.lock().unwrap().insert((ids.iter().next().flatten(), ids.len())))
        {
            return Err(ServiceError::transient("HTTP 503: busy").retry_after(Some(Duration::from_millis(2))));
        }
        if let Some(bad) = ids.iter().flatten().find(|id| self.reject.is_some_and(|k| id % k == 0)) {
            return Err(ServiceError::permanent(format!("HTTP 400: id {bad} is not accepted")));
        }
        Ok(Arc::new(ids.iter().map(|v| v.map(|v| v * 2)).collect::<Int64Array>()))
    }
}

fn pool(settings: PoolSettings, service: Arc<Doubler>) -> ServicePool {
    ServicePool::new("doubler", settings, move |_| {
        let s = service.clone();
        async move { Ok(s as Arc<dyn Service>) }
    })
    .unwrap()
}

fn ids(range: std::ops::Range<i64>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(range))]).unwrap()
}

/// Every id in `0..n` is in `out` once with `doubled = 2 × id`, except the `rejected` ones.
fn assert_exact(out: &std::path::Path, n: i64, rejected: impl Fn(i64) -> bool) {
    let rows = read_jsonl(out);
    let counts = id_counts(&rows);
    let wrong: Vec<(i64, usize)> = (0..n)
        .map(|id| (id, counts.get(&id).copied().unwrap_or(0)))
        .filter(|&(id, count)| count != usize::from(!rejected(id)))
        .collect();
    assert!(wrong.is_empty(), "ids with the wrong number of rows (id, rows): {wrong:?}");
    for r in &rows {
        assert_eq!(r["doubled"].as_i64().unwrap(), 2 * r["id"].as_i64().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaligned_checkpoints_do_not_wait_for_slow_calls_and_a_restore_reissues_them() {
    // Long calls, so that the bounds below keep a wide margin on a loaded CI machine.
    let latency = Duration::from_millis(900);
    let n = 1200;
    // Runs the pipeline, stopped after 0.7 s and then run again to the end; or to the end at once
    // with a lane failure after the model stage. Returns the slowest checkpoint of the first run.
    let run = |unaligned: bool, fail: bool| async move {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let build = || {
            let settings = PoolSettings { max_batch_rows: 50, workers: 4, min_workers: 4, max_workers: 4, ..Default::default() };
            let model = Arc::new(Doubler { latency, ..Default::default() });
            let stage = ServiceStage::new(pool(settings, model), &["id"], "doubled");
            let stage = if unaligned { Stage::new_async("model", stage).unaligned() } else { Stage::new_async("model", stage) };
            let fault = if fail { Fault::new().fail_subtask(0, 300, 1) } else { Fault::new() };
            Pipeline::builder("slow-model")
                // Read for about 1.5 s, so that periodic barriers meet calls in flight.
                .source(Generate::new(n).batch_size(50).split_rows(300).rows_per_second(400.0))
                .then(stage)
                .then(fault)
                .sink(FileSink::new(JsonLines, out.to_str().unwrap()))
                .parallelism(2)
                .checkpoint_every(Duration::from_millis(50))
                .restart_delay(Duration::from_millis(10))
                .checkpoint_location(dir.path().join("ckpt").to_str().unwrap())
                .build()
                .unwrap()
        };
        let first = if fail {
            let s = build().run().await.unwrap();
            assert_eq!(s.restarts, 1);
            s
        } else {
            let s = build().run_until(tokio::time::sleep(Duration::from_millis(700))).await.unwrap();
            // Unaligned, the stop does not wait for the model: the rest is left for the rerun.
            assert!(!unaligned || s.rows_committed < n, "{s:?}");
            build().run().await.unwrap();
            s
        };
        assert_exact(&out, n as i64, |_| false);
        Duration::from_secs_f64(first.metrics.checkpoint_max_ms / 1e3)
    };
    // Aligned: the stop barrier waits behind the calls in flight. Unaligned: it passes them, and
    // the rerun issues them again.
    let aligned = run(false, false).await;
    let unaligned = run(true, false).await;
    assert!(aligned >= latency / 2, "aligned: {aligned:?}");
    assert!(unaligned < latency / 3, "unaligned: {unaligned:?}");

    // A lane fails after the model stage: it restarts from a checkpoint that recorded requests in
    // flight, issues them again, and the output is still exactly once.
    run(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_permanent_ones_become_dead_letters_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (out, dead) = (dir.path().join("out"), dir.path().join("dead"));
    let n = 3000;
    let model = Arc::new(Doubler { reject: Some(101), flaky: Some(4), flaky_once: true, ..Default::default() });
    let settings = PoolSettings { max_batch_rows: 64, workers: 2, backoff: Duration::from_millis(1), ..PoolSettings::default() };
    let settings = PoolSettings { min_workers: 2, max_workers: 2, ..settings };
    let pool = pool(settings, model.clone());
    let p = Pipeline::builder("flaky-model")
        .source(Generate::new(n).batch_size(100).split_rows(1000))
        .then(pool.stage("model", &["id"], "doubled"))
        .sink(FileSink::new(JsonLines, out.to_str().unwrap()))
        .dead_letters(FileSink::new(JsonLines, dead.to_str().unwrap()))
        .parallelism(2)
        .checkpoint_every(Duration::from_millis(20))
        .checkpoint_location(dir.path().join("ckpt").to_str().unwrap())
        .build()
        .unwrap();
    let summary = p.run().await.unwrap();
    assert_eq!(summary.restarts, 0, "{summary:?}");
    let rejected = |id: i64| id % 101 == 0;
    // The dead letters first: a row missing from the output is most likely there, with its reason.
    let dead = read_jsonl(&dead);
    for d in &dead {
        assert_eq!(d["stage"], "model");
        assert_eq!(d["kind"], "data");
        assert!(d["message"].as_str().unwrap().contains("is not accepted"), "{d}");
        let row: serde_json::Value = serde_json::from_str(d["row"].as_str().unwrap()).unwrap();
        assert!(rejected(row["id"].as_i64().unwrap()));
    }
    assert_eq!(dead.len() as u64, (0..n as i64).filter(|i| rejected(*i)).count() as u64);
    assert_exact(&out, n as i64, rejected);
    assert_eq!(summary.rows_committed + summary.dead_letters, n);
    let stats = pool.stats();
    assert!(stats.retries > 0, "{stats:?}");
    assert_eq!(stats.failed_rows, summary.dead_letters);
    // Requests from both lanes were batched together up to the limit, never beyond it.
    assert!(model.largest_batch.load(Ordering::SeqCst) <= 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_keeps_failing_transiently_waits_for_the_service_then_fails_the_call_not_the_rows() {
    // Every call fails with a 503: the service's failure. After the retries the pool waits for it
    // (probing), and after `outage_timeout` the call fails; no row is a dead letter.
    let model = Arc::new(Doubler { flaky: Some(1), ..Default::default() });
    let settings = PoolSettings {
        retries: 2,
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
        outage_timeout: Duration::from_millis(400),
        ..Default::default()
    };
    let pool = pool(settings, model.clone());
    let started = std::time::Instant::now();
    let err = pool.call(ids(0..3)).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    assert_eq!(err.kind(), alluvium_core::ErrorKind::External, "{err}");
    let text = err.to_string();
    assert!(text.contains("`doubler`") && text.contains("outage_timeout") && text.contains("503: busy"), "{text}");
    assert!(model.calls.load(Ordering::SeqCst) > 3, "probed after the retries");
    assert_eq!(model.largest_batch.load(Ordering::SeqCst), 3, "no splitting on the service's failures");
    let stats = pool.stats();
    assert_eq!((stats.failed_rows, stats.rows, stats.outages), (0, 0, 1), "{stats:?}");
    assert!(pool.waiting().is_some_and(|w| w.gave_up && w.last_failure.contains("503")), "{:?}", pool.waiting());
    // Once given up, later calls fail at once with the same reason (the job is stopping).
    let started = std::time::Instant::now();
    let again = pool.call(ids(3..5)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(200) && again.to_string().contains("outage_timeout"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_size_sets_the_calls_in_flight_and_resizing_loses_no_request() {
    // 1 worker: one call at a time. 4 workers: four.
    for workers in [1, 4] {
        let model = Arc::new(Doubler { latency: Duration::from_millis(30), ..Default::default() });
        let settings =
            PoolSettings { max_batch_rows: 10, workers, min_workers: workers, max_workers: workers, ..Default::default() };
        let pool = pool(settings, model);
        let calls: Vec<_> = (0..16).map(|k| pool.call(ids(k * 10..k * 10 + 10))).collect();
        futures::future::join_all(calls).await;
        assert_eq!(pool.stats().peak_in_flight, workers as u64);
    }

    // Shrink and grow while 300 requests are under way: every one is answered, exactly.
    let model = Arc::new(Doubler { latency: Duration::from_millis(5), ..Default::default() });
    let settings = PoolSettings { max_batch_rows: 8, workers: 4, min_workers: 1, max_workers: 4, ..Default::default() };
    let settings = PoolSettings { scale_interval: Duration::from_secs(3600), ..settings };
    let pool = pool(settings, model);
    let tasks: Vec<_> = (0..300)
        .map(|k| {
            let pool = pool.clone();
            tokio::spawn(async move { (k, pool.call(ids(k * 5..k * 5 + 5)).await.unwrap()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    pool.resize(1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    pool.resize(3);
    for t in tasks {
        let (k, answer) = t.await.unwrap();
        assert!(answer.failures.is_empty());
        let v = answer.values.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(v.values().to_vec(), (k * 5..k * 5 + 5).map(|i| i * 2).collect::<Vec<_>>());
    }
    let stats = pool.stats();
    assert_eq!((stats.workers, stats.target, stats.rows), (3, 3, 1500), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_scales_itself_with_its_queue() {
    let model = Arc::new(Doubler { latency: Duration::from_millis(40), ..Default::default() });
    let settings = PoolSettings {
        max_batch_rows: 4,
        queue_rows: 400,
        workers: 1,
        min_workers: 1,
        max_workers: 3,
        scale_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let pool = pool(settings, model);
    let calls: Vec<_> = (0..60).map(|k| pool.call(ids(k * 4..k * 4 + 4))).collect();
    let answers = futures::future::join_all(calls).await;
    assert!(answers.iter().all(|a| a.as_ref().unwrap().failures.is_empty()));
    assert_eq!(pool.stats().peak_in_flight, 3, "the pool grew to its maximum under load");
    // Idle: it shrinks back to its minimum.
    for _ in 0..100 {
        if pool.stats().workers == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pool.stats().workers, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_workers_cannot_start_fails_its_callers_instead_of_hanging() {
    let pool = ServicePool::new("missing-model", PoolSettings::default(), |_| async {
        Err::<Arc<dyn Service>, _>(alluvium_core::Error::config("no model at /nowhere/model.safetensors"))
    })
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), pool.call(ids(0..3))).await.expect("no hang").unwrap_err();
    assert!(err.to_string().contains("missing-model") && err.to_string().contains("/nowhere"), "{err}");

    let bad = PoolSettings { min_workers: 3, max_workers: 2, ..Default::default() };
    let err = ServicePool::new("x", bad, |_| async { Err::<Arc<dyn Service>, _>(alluvium_core::Error::internal("unused")) })
        .unwrap_err()
        .to_string();
    assert!(err.contains("`min_workers` (3) is more than `max_workers` (2)"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_with_a_null_request_are_dead_letters_and_never_reach_the_service() {
    use alluvium_core::{AsyncOperator, TaskContext};
    let model = Arc::new(Doubler::default());
    let stage = ServiceStage::new(pool(PoolSettings::default(), model.clone()), &["id"], "doubled");
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
    let input = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![Some(1), None, Some(3)]))]).unwrap();
    let ctx = TaskContext { pipeline: "p".into(), stage: "model".into(), subtask: 0, parallelism: 1, region: 0, epoch: 1 };
    let out = stage.process(input, &ctx).await.unwrap();
    assert_eq!(out.failures.len(), 1);
    assert_eq!(out.failures[0].row, 1);
    assert!(out.failures[0].message.contains("`id` is null"), "{}", out.failures[0].message);
    let doubled = out.batch.column_by_name("doubled").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(doubled.values().to_vec(), vec![2, 6]);
    assert_eq!(model.largest_batch.load(Ordering::SeqCst), 2, "the null row was not sent");

    // A missing request column is a config error that names the columns there are.
    let other = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("key", DataType::Int64, true)])),
        vec![Arc::new(Int64Array::from(vec![1]))],
    )
    .unwrap();
    let err = stage.process(other, &ctx).await.unwrap_err().to_string();
    assert!(err.contains("no column `id`") && err.contains("it has: key"), "{err}");
}

/// A service that answers `id × 2`, except while it is down (from `down.start` to `down.end` after
/// it was made, or while `off`): then every call fails as a refused connection does, asking to
/// wait `retry_after` if set. It counts the rows it answered, by id.
struct Flaky {
    born: std::time::Instant,
    down: std::ops::Range<Duration>,
    off: std::sync::atomic::AtomicBool,
    retry_after: Option<Duration>,
    calls: AtomicU64,
    answered: std::sync::Mutex<std::collections::BTreeMap<i64, usize>>,
}

impl Flaky {
    fn new(down: std::ops::Range<Duration>, retry_after: Option<Duration>) -> Arc<Self> {
        Arc::new(Self {
            born: std::time::Instant::now(),
            down,
            off: Default::default(),
            retry_after,
            calls: AtomicU64::new(0),
            answered: Default::default(),
        })
    }
    fn switch(&self, off: bool) {
        self.off.store(off, Ordering::SeqCst);
    }
    /// Ids answered more than once, or not at all, in `0..n`.
    fn not_once(&self, n: i64) -> Vec<(i64, usize)> {
        let answered = self.answered.lock().unwrap();
        (0..n).map(|id| (id, answered.get(&id).copied().unwrap_or(0))).filter(|&(_, k)| k != 1).collect()
    }
}

#[async_trait]
impl Service for Flaky {
    async fn call(&self, requests: RecordBatch) -> Result<ArrayRef, ServiceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
        if self.off.load(Ordering::SeqCst) || self.down.contains(&self.born.elapsed()) {
            return Err(ServiceError::transient("http://model.invalid/v1: error sending request: connection refused")
                .retry_after(self.retry_after));
        }
        let ids = requests.column(0).as_any().downcast_ref::<Int64Array>().expect("ids");
        let mut answered = self.answered.lock().unwrap();
        for id in ids.iter().flatten() {
            *answered.entry(id).or_insert(0) += 1;
        }
        Ok(Arc::new(ids.iter().map(|v| v.map(|v| v * 2)).collect::<Int64Array>()))
    }

    fn endpoint(&self) -> Option<String> {
        Some("http://model.invalid/v1".into())
    }
}

fn flaky_pool(settings: PoolSettings, service: Arc<Flaky>) -> ServicePool {
    ServicePool::new("flaky", settings, move |_| {
        let s = service.clone();
        async move { Ok(s as Arc<dyn Service>) }
    })
    .unwrap()
}

/// Quick retries and probes, two workers.
fn outage_settings() -> PoolSettings {
    PoolSettings {
        max_batch_rows: 32,
        workers: 2,
        min_workers: 2,
        max_workers: 2,
        retries: 2,
        backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(100),
        ..Default::default()
    }
}

/// `n` rows read at `rate` rows/s per lane (two lanes) → `pool` as stage `model` → JSON Lines.
fn outage_pipeline(name: &str, dir: &std::path::Path, n: u64, rate: f64, pool: &ServicePool) -> Pipeline {
    Pipeline::builder(name)
        .source(Generate::new(n).batch_size(30).split_rows(n / 2).rows_per_second(rate))
        .then(pool.stage("model", &["id"], "doubled"))
        .sink(FileSink::new(JsonLines, dir.join("out").to_str().unwrap()))
        .dead_letters(FileSink::new(JsonLines, dir.join("dead").to_str().unwrap()))
        .parallelism(2)
        .checkpoint_every(Duration::from_millis(50))
        .restart_delay(Duration::from_millis(10))
        .checkpoint_location(dir.join("ckpt").to_str().unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_is_down_for_a_while_holds_its_rows_and_answers_each_once() {
    // Down from 0.6 s to 2 s while the source reads for about 3 s.
    let n = 1800;
    let service = Flaky::new(Duration::from_millis(600)..Duration::from_millis(2000), None);
    let pool = flaky_pool(PoolSettings { outage_timeout: Duration::from_secs(60), ..outage_settings() }, service.clone());
    let dir = tempfile::tempdir().unwrap();
    let p = outage_pipeline("down-model", dir.path(), n, 300.0, &pool);
    // While the service is down: the checkpoints completed, and what /metrics says.
    let metrics = p.metrics();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let (pool, done) = (pool.clone(), done.clone());
        tokio::spawn(async move {
            let (mut first, mut last, mut text) = (None, 0, String::new());
            while !done.load(Ordering::SeqCst) {
                if pool.waiting().is_some() {
                    let checkpoints = metrics.pipeline.checkpoints.load(Ordering::Relaxed);
                    first.get_or_insert(checkpoints);
                    last = checkpoints;
                    if text.is_empty() {
                        text = metrics.prometheus("down-model");
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (first, last, text)
        })
    };
    let summary = p.run().await.unwrap();
    done.store(true, Ordering::SeqCst);
    let (first, last, text) = watch.await.unwrap();

    assert_eq!((summary.dead_letters, summary.restarts), (0, 0), "{summary:?}");
    assert!(read_jsonl(&dir.path().join("dead")).is_empty());
    assert_exact(&dir.path().join("out"), n as i64, |_| false);
    let not_once = service.not_once(n as i64);
    assert!(not_once.is_empty(), "every row answered by the service exactly once (id, answers): {not_once:?}");
    let stats = pool.stats();
    assert!(stats.outages >= 1 && stats.failed_rows == 0 && stats.waiting_since.is_none(), "{stats:?}");
    let first = first.expect("the stage waited for its service");
    assert!(last >= first + 3, "checkpoints went on while the service was down: {first} → {last}");
    assert!(text.contains("alluvium_service_waiting{pipeline=\"down-model\",stage=\"model\"} 1\n"), "{text}");
    let since = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("alluvium_service_waiting_since_timestamp_seconds{pipeline=\"down-model\",stage=\"model\"} ")
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no since: {text}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(since > now - 60.0 && since <= now, "since {since}, now {now}");
    let status = alluvium_core::service::service_status();
    let mine = status.iter().find(|s| s.pipeline == "down-model" && s.stage == "model").expect("listed");
    assert_eq!(mine.endpoint.as_deref(), Some("http://model.invalid/v1"));
    assert!(mine.waiting.is_none(), "the service answers again: {mine:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_down_past_outage_timeout_stops_the_job_and_a_rerun_finishes_exactly_once() {
    let n = 1200;
    let dir = tempfile::tempdir().unwrap();
    let service = Flaky::new(Duration::ZERO..Duration::ZERO, None);
    service.switch(true);
    let settings = PoolSettings { outage_timeout: Duration::from_millis(500), ..outage_settings() };
    let started = std::time::Instant::now();
    let err = outage_pipeline("gone-model", dir.path(), n, 400.0, &flaky_pool(settings.clone(), service.clone()))
        .run()
        .await
        .expect_err("the job stops: its service stayed down");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert_eq!(err.kind(), alluvium_core::ErrorKind::External, "{err}");
    let text = err.to_string();
    assert!(text.contains("stage `model` gave up waiting for its endpoint http://model.invalid/v1"), "{text}");
    assert!(text.contains("`outage_timeout` = 500ms") && text.contains("connection refused"), "{text}");
    assert!(read_jsonl(&dir.path().join("dead")).is_empty(), "an outage makes no dead letters");

    // The service is back: a rerun resumes from the last checkpoint, and every row is there once.
    service.switch(false);
    let summary =
        outage_pipeline("gone-model", dir.path(), n, 400.0, &flaky_pool(settings, service.clone())).run().await.unwrap();
    assert_eq!(summary.dead_letters, 0);
    assert!(read_jsonl(&dir.path().join("dead")).is_empty());
    assert_exact(&dir.path().join("out"), n as i64, |_| false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_does_not_wait_for_a_service_that_asks_to_retry_in_a_day() {
    // Down, answering `Retry-After: 86400`: the pool waits at most `max_retry_after` (60 s) at a
    // time, checkpoints go on meanwhile, and a stop ends the run at once.
    let n = 3000;
    let dir = tempfile::tempdir().unwrap();
    let service = Flaky::new(Duration::ZERO..Duration::ZERO, Some(Duration::from_secs(86_400)));
    service.switch(true);
    let settings = PoolSettings { retries: 4, ..outage_settings() };
    let p = outage_pipeline("stopped-model", dir.path(), n, 500.0, &flaky_pool(settings.clone(), service.clone()));
    let started = std::time::Instant::now();
    let summary = p.run_until(tokio::time::sleep(Duration::from_millis(1500))).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(6), "the stop waited: {:?}", started.elapsed());
    assert!(summary.stopped, "{summary:?}");
    assert_eq!(summary.dead_letters, 0, "{summary:?}");
    assert!(summary.checkpoints >= 5, "checkpoints went on while the service was down: {summary:?}");
    assert!(read_jsonl(&dir.path().join("dead")).is_empty());

    service.switch(false);
    let summary =
        outage_pipeline("stopped-model", dir.path(), n, 5000.0, &flaky_pool(settings, service.clone())).run().await.unwrap();
    assert_eq!(summary.dead_letters, 0);
    assert_exact(&dir.path().join("out"), n as i64, |_| false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_retry_after_is_believed_up_to_max_retry_after() {
    // Down for 300 ms, asking to wait a day: the pool waits 100 ms at a time, not a day.
    let service = Flaky::new(Duration::ZERO..Duration::from_millis(300), Some(Duration::from_secs(86_400)));
    let settings = PoolSettings { max_retry_after: Duration::from_millis(100), ..outage_settings() };
    let pool = flaky_pool(settings, service.clone());
    let answer = tokio::time::timeout(Duration::from_secs(10), pool.call(ids(0..8))).await.expect("no day-long wait").unwrap();
    assert!(answer.failures.is_empty(), "{:?}", answer.failures);
    let not_once = service.not_once(8);
    assert!(not_once.is_empty(), "{not_once:?}");
}

/// An async stage that passes its input on, unaligned (as `fetch` is).
struct Relay;

#[async_trait]
impl alluvium_core::AsyncOperator for Relay {
    async fn process(
        &self,
        batch: RecordBatch,
        _ctx: &alluvium_core::TaskContext,
    ) -> alluvium_core::Result<alluvium_core::Output> {
        Ok(batch.into())
    }
}

/// A source read as fast as it goes into channels of 4 KiB, so that while the service is down
/// every channel is full and the source (and a relay) wait to send: checkpoints still go on, their
/// barriers passing the held batches. Down past `outage_timeout`, the job stops; the rerun
/// restores from a checkpoint taken during the outage, and every row is answered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_full_channels_checkpoints_go_on_while_the_service_is_down_and_a_rerun_is_exact() {
    for relay in [false, true] {
        let name = if relay { "full-relay" } else { "full-direct" };
        let n: u64 = 30_000;
        let dir = tempfile::tempdir().unwrap();
        let service = Flaky::new(Duration::ZERO..Duration::ZERO, None);
        let settings = PoolSettings { outage_timeout: Duration::from_millis(2500), ..outage_settings() };
        let pipeline = |pool: &ServicePool| {
            let mut b = Pipeline::builder(name).source(Generate::new(n).batch_size(30).split_rows(n / 2));
            if relay {
                b = b.then(Stage::new_async("relay", Relay).unaligned());
            }
            b.then(pool.stage("model", &["id"], "doubled"))
                .sink(FileSink::new(JsonLines, dir.path().join("out").to_str().unwrap()))
                .dead_letters(FileSink::new(JsonLines, dir.path().join("dead").to_str().unwrap()))
                .parallelism(2)
                .channel_bytes(4096)
                .checkpoint_every(Duration::from_millis(50))
                .restart_delay(Duration::from_millis(10))
                .checkpoint_location(dir.path().join("ckpt").to_str().unwrap())
                .build()
                .unwrap()
        };
        let pool = flaky_pool(settings.clone(), service.clone());
        let p = pipeline(&pool);
        let metrics = p.metrics();
        let watch = {
            let (pool, service) = (pool.clone(), service.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                service.switch(true);
                while pool.waiting().is_none() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // Long enough for every channel to fill.
                tokio::time::sleep(Duration::from_millis(400)).await;
                let first = metrics.pipeline.checkpoints.load(Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1000)).await;
                (first, metrics.pipeline.checkpoints.load(Ordering::Relaxed))
            })
        };
        let err = p.run().await.expect_err("the job stops: its service stayed down");
        assert!(err.to_string().contains("gave up waiting for its endpoint"), "{name}: {err}");
        let (first, last) = watch.await.unwrap();
        assert!(last >= first + 5, "{name}: checkpoints went on with full channels while the service was down: {first} → {last}");
        let answered = service.answered.lock().unwrap().len();
        assert!(answered > 0 && answered < n as usize, "{name}: {answered} rows answered before the outage");

        service.switch(false);
        let summary = pipeline(&flaky_pool(settings, service.clone())).run().await.unwrap();
        assert_eq!(summary.dead_letters, 0, "{name}");
        assert!(read_jsonl(&dir.path().join("dead")).is_empty());
        assert_exact(&dir.path().join("out"), n as i64, |_| false);
    }
}
