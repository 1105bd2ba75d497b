//! Service stages: a pool shared by the lanes, dynamic batching, retries, dead letters, resizing,
//! and unaligned checkpoints that do not wait for slow calls.

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
async fn a_request_that_keeps_failing_transiently_becomes_a_dead_letter_with_its_attempts() {
    let model = Arc::new(Doubler { flaky: Some(1), ..Default::default() });
    let settings = PoolSettings { retries: 2, backoff: Duration::from_millis(1), ..Default::default() };
    let answer = pool(settings, model.clone()).call(ids(0..3)).await.unwrap();
    assert_eq!(answer.failures.len(), 3);
    assert_eq!(answer.values.logical_null_count(), 3);
    let f = &answer.failures[0];
    assert_eq!((f.row, f.attempts), (0, 3));
    assert!(f.message.contains("503") && f.message.contains("gave up after 3 attempts"), "{}", f.message);
    assert_eq!(model.calls.load(Ordering::SeqCst), 3, "no splitting on transient failures");
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
