//! The runtime end to end, in process: exactly-once output, dead letters, resume, regional
//! failover and backpressure.

use std::sync::atomic::Ordering;
use std::time::Duration;

use alluvium_core::files::{FileSink, JsonLines};
use alluvium_core::ops::Fault;
use alluvium_core::sources::Generate;
use alluvium_core::Pipeline;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_lands_once_and_failures_become_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dl = dir.path().join("dead");
    let n = 20_000;
    let build = || {
        Pipeline::builder("exact")
            .source(Generate::new(n).batch_size(500).split_rows(3000))
            .then(Fault::new().dead_letter_every(97))
            .sink(FileSink::new(JsonLines, out.to_str().unwrap()))
            .dead_letters(FileSink::new(JsonLines, dl.to_str().unwrap()))
            .parallelism(2)
            .checkpoint_every(Duration::from_millis(20))
            .checkpoint_location(dir.path().join("ckpt").to_str().unwrap())
            .build()
            .unwrap()
    };
    let p = build();
    assert_eq!(p.regions(), 2);
    let summary = p.run().await.unwrap();

    let counts = id_counts(&read_jsonl(&out));
    let bad: Vec<i64> = (0..n as i64).filter(|i| i % 97 == 0).collect();
    for id in 0..n as i64 {
        let expect = if id % 97 == 0 { 0 } else { 1 };
        assert_eq!(counts.get(&id).copied().unwrap_or(0), expect, "id {id}");
    }
    assert_eq!(counts.len() as u64, n - bad.len() as u64);

    let dead = read_jsonl(&dl);
    assert_eq!(dead.len(), bad.len());
    for d in &dead {
        assert_eq!(d["stage"], "fault");
        assert_eq!(d["kind"], "data");
        assert!(d["message"].as_str().unwrap().contains("multiple of 97"));
        let row: serde_json::Value = serde_json::from_str(d["row"].as_str().unwrap()).unwrap();
        assert_eq!(row["id"].as_i64().unwrap() % 97, 0);
    }
    // in = out + dead letters
    assert_eq!(summary.rows_read, n);
    assert_eq!(summary.rows_committed + summary.dead_letters, n);
    assert_eq!(summary.dead_letters, bad.len() as u64);
    assert!(summary.checkpoints >= 2, "{summary:?}");
    // Nothing is left in staging.
    let staged: Vec<_> = walk(&out.join("_staging"));
    assert!(staged.is_empty(), "{staged:?}");

    // A rerun of a finished pipeline commits nothing new.
    let again = build().run().await.unwrap();
    assert_eq!(again.rows_committed, 0);
    assert_eq!(again.rows_read, 0);
    assert_eq!(id_counts(&read_jsonl(&out)), counts);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_lane_restarts_alone_while_the_other_keeps_committing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (sink, log) = Observed::new(&out);
    let n = 12_000;
    let delay = Duration::from_millis(1500);
    let p = Pipeline::builder("failover")
        // 2 lanes × 2000 rows/s: about 3 s of work, plus the restart delay.
        .source(Generate::new(n).batch_size(200).split_rows(1000).rows_per_second(2000.0))
        .then(Fault::new().fail_subtask(1, 1000, 1))
        .sink(sink)
        .parallelism(2)
        .checkpoint_every(Duration::from_millis(100))
        .checkpoint_location(dir.path().join("ckpt").to_str().unwrap())
        .restart_delay(delay)
        .build()
        .unwrap();
    let summary = p.run().await.unwrap();
    assert_eq!(summary.restarts, 1);
    assert_eq!(summary.metrics.stages[1].errors, 1, "the failure is attributed to the fault stage");
    // Rows read again after the restart are read once as far as the summary goes.
    assert!(summary.metrics.rows_replayed > 0, "lane 1 read past its last checkpoint before it failed: {summary:?}");
    assert_eq!(summary.metrics.stages[0].rows_in, n + summary.metrics.rows_replayed);
    assert_eq!(summary.rows_read, n, "each source row once");

    let log = log.lock().unwrap();
    let starts1: Vec<_> = log.starts.iter().filter(|(r, _)| *r == 1).map(|(_, t)| *t).collect();
    let starts0 = log.starts.iter().filter(|(r, _)| *r == 0).count();
    assert_eq!(starts0, 1, "lane 0 must never restart");
    assert_eq!(starts1.len(), 2, "lane 1 restarts once");
    // Lane 1 was down for `delay` before its restart; lane 0 committed during that time.
    let restart = starts1[1];
    let down_from = restart - delay;
    let during = log.commits.iter().filter(|(r, t)| *r == 0 && *t > down_from && *t < restart).count();
    assert!(during >= 3, "lane 0 committed {during} times while lane 1 was down");
    let lane1_during = log.commits.iter().filter(|(r, t)| *r == 1 && *t > down_from && *t < restart).count();
    assert_eq!(lane1_during, 0);

    // And the output is still exact.
    let counts = id_counts(&read_jsonl(&out));
    assert_eq!(counts.len() as u64, n);
    assert!(counts.values().all(|c| *c == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_bounds_the_bytes_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (mut sink, _) = Observed::new(&out);
    sink.write_delay = Some(Duration::from_millis(20));
    let budget: u64 = 4 << 20;
    // ~1.1 MB batches from a source that could produce hundreds per second.
    let p = Pipeline::builder("backpressure")
        .source(Generate::new(40 * 1024).batch_size(1024).payload_bytes(1024))
        .then(Fault::new())
        .sink(sink)
        .channel_bytes(budget)
        .checkpoint_every(Duration::from_millis(200))
        .checkpoint_location(dir.path().join("ckpt").to_str().unwrap())
        .build()
        .unwrap();
    let summary = p.run().await.unwrap();
    assert_eq!(summary.rows_committed, 40 * 1024);
    for s in &summary.metrics.stages[1..] {
        assert!(s.peak_buffered_bytes <= budget, "{} buffered {} > {budget}", s.name, s.peak_buffered_bytes);
        assert!(s.peak_buffered_bytes > 0, "{}", s.name);
    }
    let source = &summary.metrics.stages[0];
    let fault = &summary.metrics.stages[1];
    assert!(
        source.backpressure_ms + fault.backpressure_ms > 200,
        "the fast side must have waited for the slow sink: {summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_manifest_stops_the_run_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let build = || {
        Pipeline::builder("corrupt")
            .source(Generate::new(1000).batch_size(100))
            .sink(FileSink::new(JsonLines, dir.path().join("out").to_str().unwrap()))
            .checkpoint_every(Duration::from_millis(10))
            .checkpoint_location(ckpt.to_str().unwrap())
            .build()
            .unwrap()
    };
    build().run().await.unwrap();
    std::fs::write(ckpt.join("regions/0/chk-00000000000000000099.json"), b"\x00garbage").unwrap();
    let err = build().run().await.unwrap_err();
    assert_eq!(err.kind(), alluvium_core::ErrorKind::Checkpoint, "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

mod async_stages {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use alluvium_core::arrow::array::Int64Array;
    use alluvium_core::arrow::record_batch::RecordBatch;
    use alluvium_core::files::{FileSink, JsonLines};
    use alluvium_core::sources::Generate;
    use alluvium_core::{AsyncOperator, Output, Pipeline, Result, Stage, TaskContext};
    use async_trait::async_trait;

    use crate::common::read_jsonl;

    /// Sleeps longer for earlier batches, so completions come back out of order.
    #[derive(Default)]
    struct Remote {
        in_flight: AtomicUsize,
        peak: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl AsyncOperator for Remote {
        async fn process(&self, batch: RecordBatch, _ctx: &TaskContext) -> Result<Output> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            let first = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
            tokio::time::sleep(Duration::from_millis(30 - (first / 100 % 3) as u64 * 10)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(batch.into())
        }
    }

    async fn run(ordered: bool) -> (Vec<i64>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let remote = Remote::default();
        let peak = remote.peak.clone();
        let mut stage = Stage::new_async("remote", remote).concurrency(3);
        if !ordered {
            stage = stage.unordered();
        }
        let summary = Pipeline::builder("async")
            .source(Generate::new(3000).batch_size(100))
            .then(stage)
            .sink(FileSink::new(JsonLines, out.to_str().unwrap()).target_file_bytes(u64::MAX))
            .checkpoint_every(Duration::from_secs(60))
            .checkpoint_location(dir.path().join("ckpt").to_str().unwrap())
            .build()
            .unwrap()
            .run()
            .await
            .unwrap();
        assert_eq!(summary.rows_committed, 3000);
        let ids = read_jsonl(&out).iter().map(|r| r["id"].as_i64().unwrap()).collect();
        (ids, peak.load(Ordering::SeqCst))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ordered_output_keeps_input_order_within_the_concurrency_limit() {
        let (ids, peak) = run(true).await;
        assert_eq!(ids, (0..3000).collect::<Vec<_>>(), "one file, in input order");
        assert_eq!(peak, 3, "three calls in flight at most, and the limit is used");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unordered_output_has_every_row_once() {
        let (mut ids, peak) = run(false).await;
        assert_ne!(ids, (0..3000).collect::<Vec<_>>(), "completions come back out of order");
        ids.sort_unstable();
        assert_eq!(ids, (0..3000).collect::<Vec<_>>());
        assert_eq!(peak, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_stop_commits_a_last_checkpoint_and_a_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 20_000;
    let build = || {
        Pipeline::builder("stop")
            .source(Generate::new(n).batch_size(200).split_rows(2000).rows_per_second(5000.0))
            .sink(FileSink::new(JsonLines, out.to_str().unwrap()))
            .parallelism(2)
            .checkpoint_every(Duration::from_secs(60))
            .checkpoint_location(dir.path().join("ckpt").to_str().unwrap())
            .build()
            .unwrap()
    };
    let first = build().run_until(tokio::time::sleep(Duration::from_millis(600))).await.unwrap();
    assert!(first.stopped);
    // No periodic checkpoint in 600 ms (interval 60 s): what was read is committed by the stop.
    assert_eq!(first.checkpoints, 2, "one stop checkpoint per region");
    assert_eq!(first.rows_committed, first.rows_read);
    assert!(first.rows_read > 0 && first.rows_read < n, "{first:?}");
    let second = build().run().await.unwrap();
    assert!(!second.stopped);
    assert_eq!(first.rows_committed + second.rows_committed, n);
    let counts = id_counts(&read_jsonl(&out));
    assert_eq!(counts.len() as u64, n);
    assert!(counts.values().all(|c| *c == 1));
}

/// A source of a trillion rows in splits of 10: enumeration waits for the readers, so in a short
/// run the splits assigned are those read plus a bounded few (not a hundred billion), and the
/// checkpoints that carry the readers' unread splits stay small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enumerating_a_huge_source_waits_for_its_readers() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let p = Pipeline::builder("huge")
        .source(Generate::new(1_000_000_000_000).batch_size(10).split_rows(10).rows_per_second(20_000.0))
        .sink(FileSink::new(JsonLines, dir.path().join("out").to_str().unwrap()))
        .parallelism(2)
        .checkpoint_every(Duration::from_millis(100))
        .checkpoint_location(ckpt.to_str().unwrap())
        .build()
        .unwrap();
    let s = p.run_until(tokio::time::sleep(Duration::from_millis(800))).await.unwrap();
    assert!(s.stopped && s.rows_read > 0, "{s:?}");
    // Splits assigned so far: where the enumerator stood in the newest record (older ones may be
    // compacted away).
    let mut assigned = 0;
    for e in std::fs::read_dir(ckpt.join("assignments")).unwrap() {
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
        assigned = assigned.max(record["enumerator"]["next"].as_u64().unwrap() / 10);
    }
    // Beyond the splits read: at most one discovery (Generate finds up to 1000 splits at a time)
    // on top of the 2 × 64 unread splits the readers may hold.
    let read = s.rows_read.div_ceil(10);
    assert!(assigned >= read && assigned <= read + 1000 + 128, "{assigned} splits assigned, {read} read");
}

/// The split-assignment log is compacted as the regions checkpoint: a source of 3000 splits,
/// discovered 20 at a time, leaves a few dozen records in the store, not 150; a region that fails
/// mid-run resumes from the compacted log, every row lands once, and a rerun opens the compacted
/// log and finds the job finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assignment_log_is_compacted_as_regions_checkpoint() {
    use alluvium_core::Stage;
    let dir = tempfile::tempdir().unwrap();
    let (out, ckpt) = (dir.path().join("out"), dir.path().join("ckpt"));
    let n = 30_000;
    let build = || {
        Pipeline::builder("compact")
            .source(Generate::new(n).batch_size(10).split_rows(10).rows_per_second(40_000.0).splits_per_discovery(20))
            .then(Stage::new("fail", Fault::new().fail_subtask(1, 12_000, 1)))
            .sink(FileSink::new(JsonLines, out.to_str().unwrap()))
            .parallelism(2)
            .checkpoint_every(Duration::from_millis(20))
            .checkpoint_location(ckpt.to_str().unwrap())
            .restart_delay(Duration::from_millis(20))
            .build()
            .unwrap()
    };
    let summary = build().run().await.unwrap();
    assert_eq!(summary.restarts, 1, "{summary:?}");
    let counts = id_counts(&read_jsonl(&out));
    assert_eq!(counts.len() as u64, n);
    assert!(counts.values().all(|c| *c == 1), "a row landed twice");
    let seqs: Vec<u64> = std::fs::read_dir(ckpt.join("assignments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().trim_end_matches(".json").parse().unwrap())
        .collect();
    let newest = *seqs.iter().max().unwrap();
    assert!(newest >= 149, "3000 splits 20 at a time: {newest}");
    assert!(seqs.len() < 80, "{} of {} records left: not compacted", seqs.len(), newest + 1);
    // What is left is the newest run of records, without gaps.
    assert_eq!(seqs.iter().min().unwrap() + seqs.len() as u64 - 1, newest);
    let again = build().run().await.unwrap();
    assert_eq!((again.rows_read, again.commits), (0, 0), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalanced_pipeline_is_one_region_that_aligns_barriers_and_recovers_whole() {
    use alluvium_core::{Edge, Stage};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 30_000;
    let p = Pipeline::builder("rebalance")
        .source(Generate::new(n).batch_size(250).split_rows(2500).rows_per_second(40_000.0))
        .then(Stage::new("wide", Fault::new().fail_subtask(2, 2000, 1).dead_letter_every(1000)).parallelism(3).rebalance())
        .sink_with(std::sync::Arc::new(FileSink::new(JsonLines, out.to_str().unwrap())), Some(2), Edge::Rebalance)
        .parallelism(2)
        .checkpoint_every(Duration::from_millis(10))
        .checkpoint_location(dir.path().join("ckpt").to_str().unwrap())
        .restart_delay(Duration::from_millis(50))
        .dead_letters(FileSink::new(JsonLines, dir.path().join("dl").to_str().unwrap()))
        .build()
        .unwrap();
    assert_eq!(p.regions(), 1);
    let summary = p.run().await.unwrap();
    assert_eq!(summary.restarts, 1);
    assert!(summary.checkpoints >= 3, "{summary:?}");
    let counts = id_counts(&read_jsonl(&out));
    assert_eq!(counts.len() as u64, n - n / 1000);
    assert!(counts.values().all(|c| *c == 1));
    assert_eq!(read_jsonl(&dir.path().join("dl")).len() as u64, n / 1000);
    // Channels torn down by the restart gave their bytes back.
    assert!(summary.metrics.stages.iter().all(|s| s.buffered_bytes == 0), "{summary:?}");
}

/// The sink's table is down: its commits wait (no region restarts) and go on when it is back;
/// down past `outage_timeout`, the job stops saying nothing is lost, and a rerun commits
/// the durable checkpoints first: every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_wait_for_a_table_that_is_down_and_past_the_timeout_a_rerun_commits_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 6_000;
    let pipeline = |timeout: Duration| {
        let (sink, log) = Observed::new(&out);
        let down = sink.down.clone();
        let p = Pipeline::builder("table-down")
            .source(Generate::new(n).batch_size(100).split_rows(n / 2).rows_per_second(1500.0))
            .sink(sink)
            .parallelism(2)
            .checkpoint_every(Duration::from_millis(100))
            .checkpoint_location(dir.path().join("ckpt").to_str().unwrap())
            .restart_delay(Duration::from_millis(50))
            .outage_timeout(timeout)
            .build()
            .unwrap();
        (p, down, log)
    };

    // Down from 0.5 s until 2 s after the commits say they wait (past the quick retries).
    let (p, down, log) = pipeline(Duration::from_secs(60));
    let flip = {
        let down = down.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            down.store(true, Ordering::SeqCst);
            let waited = loop {
                let s = alluvium_core::service::service_status();
                if let Some(w) = s.iter().find(|s| s.pipeline == "table-down" && s.waiting.is_some()) {
                    break w.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            tokio::time::sleep(Duration::from_secs(2)).await;
            down.store(false, Ordering::SeqCst);
            waited
        })
    };
    let summary = p.run().await.unwrap();
    let waited = flip.await.unwrap();
    assert_eq!((waited.stage.as_str(), waited.service.as_str()), ("observed", "table commits"));
    assert!(waited.waiting.unwrap().last_failure.contains("connection refused"));
    assert_eq!(summary.restarts, 0, "{summary:?}");
    assert_eq!(log.lock().unwrap().starts.len(), 2, "no region restarted");
    let counts = id_counts(&read_jsonl(&out));
    assert!(counts.len() as u64 == n && counts.values().all(|c| *c == 1), "every row once");

    // Down for good with a 1 s timeout: the job stops, nothing lost; back up, a rerun commits.
    let out_rows = read_jsonl(&out).len();
    std::fs::remove_dir_all(dir.path().join("ckpt")).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    let (p, down, _) = pipeline(Duration::from_secs(1));
    down.store(true, Ordering::SeqCst);
    let err = p.run().await.expect_err("the table stayed down");
    let text = err.to_string();
    assert!(text.contains("the commits of sink `observed` gave up waiting for its table"), "{text}");
    assert!(text.contains("`pipeline.outage_timeout` = 1s") && text.contains("Nothing is lost"), "{text}");
    assert!(read_jsonl(&out).is_empty(), "nothing committed while the table was down");
    let (p, _, _) = pipeline(Duration::from_secs(60));
    p.run().await.unwrap();
    let counts = id_counts(&read_jsonl(&out));
    assert!(counts.len() == out_rows && counts.values().all(|c| *c == 1), "every row once after the rerun");
}

/// The sink's store is down for 3 s (writes fail with retryable errors): the region restarts past
/// `max_restarts`, waiting the outage out, and the job finishes with every row once. Down past
/// `outage_timeout`, the job stops naming it; a failure that is not a dependency's stops it after
/// `max_restarts` as before (the fault stage's errors are not retryable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_waits_out_a_store_that_is_down_past_max_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 4_000;
    let pipeline = |timeout: Duration| {
        let (sink, _) = Observed::new(&out);
        let down = sink.writes_down.clone();
        let p = Pipeline::builder("store-down")
            .source(Generate::new(n).batch_size(100).split_rows(n / 2).rows_per_second(1000.0))
            .sink(sink)
            .parallelism(2)
            .checkpoint_every(Duration::from_millis(100))
            .checkpoint_location(dir.path().join("ckpt").to_str().unwrap())
            .restart_delay(Duration::from_millis(20))
            .max_restarts(2)
            .outage_timeout(timeout)
            .build()
            .unwrap();
        (p, down)
    };
    let (p, down) = pipeline(Duration::from_secs(60));
    let flip = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        down.store(false, Ordering::SeqCst);
    });
    let summary = p.run().await.unwrap();
    flip.await.unwrap();
    assert!(summary.restarts > 2 * 2, "past max_restarts: {summary:?}");
    let counts = id_counts(&read_jsonl(&out));
    assert!(counts.len() as u64 == n && counts.values().all(|c| *c == 1), "every row once");

    std::fs::remove_dir_all(dir.path().join("ckpt")).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    let (p, down) = pipeline(Duration::from_millis(1500));
    down.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let err = p.run().await.expect_err("the store stayed down");
    assert!(started.elapsed() >= Duration::from_millis(1500), "{:?}", started.elapsed());
    let text = err.to_string();
    assert!(text.contains("longer than `pipeline.outage_timeout` = 1s 500ms") && text.contains("connection refused"), "{text}");
}
