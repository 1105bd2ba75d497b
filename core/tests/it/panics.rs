//! A stage that panics on some rows (a bug triggered by data) never stops the job: the batch is
//! bisected down to the rows that panic, those become dead letters, and every other row lands once.

use std::time::Duration;

use alluvium_core::arrow::array::{Array, Int64Array};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::files::{FileSink, JsonLines};
use alluvium_core::operator::{AsyncOperator, Map, Output, TaskContext};
use alluvium_core::pipeline::Stage;
use alluvium_core::sources::Generate;
use alluvium_core::{Pipeline, Result};
use async_trait::async_trait;

use crate::common::*;

const EVERY: i64 = 997;

fn poisoned(batch: &RecordBatch) -> bool {
    let ids = batch.column_by_name("id").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
    (0..ids.len()).any(|i| ids.value(i) % EVERY == 0)
}

/// Panics on any batch holding an id that is a multiple of [`EVERY`].
fn sync_stage() -> Stage {
    Stage::new(
        "buggy",
        Map::new(|batch: RecordBatch| -> Result<Output> {
            assert!(!poisoned(&batch), "index out of bounds: a bug that this row triggers");
            Ok(batch.into())
        }),
    )
}

struct BuggyAsync;

#[async_trait]
impl AsyncOperator for BuggyAsync {
    async fn process(&self, batch: RecordBatch, _ctx: &TaskContext) -> Result<Output> {
        tokio::task::yield_now().await;
        assert!(!poisoned(&batch), "unwrap on a None that this row triggers");
        Ok(batch.into())
    }
}

async fn run_with(stage: Stage) {
    let dir = tempfile::tempdir().unwrap();
    let (out, dl) = (dir.path().join("out"), dir.path().join("dead"));
    let n = 10_000u64;
    let summary = Pipeline::builder("panics")
        .source(Generate::new(n).batch_size(500).split_rows(2500))
        .then(stage)
        .sink(FileSink::new(JsonLines, out.to_str().unwrap()))
        .dead_letters(FileSink::new(JsonLines, dl.to_str().unwrap()))
        .parallelism(2)
        .checkpoint_every(Duration::from_millis(50))
        .checkpoint_location(dir.path().join("ckpt").to_str().unwrap())
        .max_restarts(0)
        .build()
        .unwrap()
        .run()
        .await
        .expect("a panicking row must not stop the job");

    let counts = id_counts(&read_jsonl(&out));
    let bad: Vec<i64> = (0..n as i64).filter(|i| i % EVERY == 0).collect();
    for id in 0..n as i64 {
        assert_eq!(counts.get(&id).copied().unwrap_or(0), usize::from(id % EVERY != 0), "id {id}");
    }
    let dead = read_jsonl(&dl);
    let mut dead_ids: Vec<i64> = dead
        .iter()
        .map(|d| {
            assert_eq!(d["stage"], "buggy", "{d}");
            assert_eq!(d["kind"], "internal", "{d}");
            let msg = d["message"].as_str().unwrap();
            assert!(msg.contains("panicked on this row") && msg.contains("this row triggers"), "{msg}");
            serde_json::from_str::<serde_json::Value>(d["row"].as_str().unwrap()).unwrap()["id"].as_i64().unwrap()
        })
        .collect();
    dead_ids.sort_unstable();
    assert_eq!(dead_ids, bad);
    assert_eq!(summary.rows_committed + summary.dead_letters, n);
    assert_eq!(summary.restarts, 0, "no region restarted: {summary:?}");
    let stage = summary.metrics.stages.iter().find(|s| s.name == "buggy").unwrap();
    assert!(stage.panics >= bad.len() as u64, "{stage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_stage_that_panics_on_some_rows_dead_letters_exactly_those_rows() {
    run_with(sync_stage()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_stage_that_panics_on_some_rows_dead_letters_exactly_those_rows() {
    run_with(Stage::new_async("buggy", BuggyAsync).concurrency(2)).await;
}
