//! Helpers shared by the runtime tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::files::{FileSink, JsonLines};
use alluvium_core::{Committable, Result, Sink, SinkContext, SinkWriter};
use async_trait::async_trait;

/// Reads every committed JSON Lines row under `dir` (skipping `_`-prefixed folders, as readers do).
pub fn read_jsonl(dir: &Path) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return rows };
    for e in entries {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('_') || name.starts_with('.') || !name.ends_with(".jsonl") {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            rows.push(serde_json::from_str(line).unwrap());
        }
    }
    rows
}

/// Counts of each id in `rows`.
pub fn id_counts(rows: &[serde_json::Value]) -> BTreeMap<i64, usize> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(r["id"].as_i64().expect("id")).or_insert(0) += 1;
    }
    m
}

/// What an [`Observed`] sink saw.
#[derive(Default)]
pub struct Log {
    /// (region, when) of every commit call.
    pub commits: Vec<(usize, Instant)>,
    /// (region, when) of every recover call (one per region start).
    pub starts: Vec<(usize, Instant)>,
}

/// A JSON Lines file sink that records its commits and region starts, can be slow, and its
/// "table" can be down (`down`: every commit fails with a retryable error; `writes_down`: every
/// write does).
pub struct Observed {
    pub inner: FileSink<JsonLines>,
    pub log: Arc<Mutex<Log>>,
    pub write_delay: Option<Duration>,
    pub down: Arc<std::sync::atomic::AtomicBool>,
    pub writes_down: Arc<std::sync::atomic::AtomicBool>,
}

impl Observed {
    pub fn new(dir: &Path) -> (Self, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let inner = FileSink::new(JsonLines, dir.to_str().unwrap());
        (Self { inner, log: log.clone(), write_delay: None, down: Default::default(), writes_down: Default::default() }, log)
    }
}

struct SlowWriter {
    inner: Box<dyn SinkWriter>,
    delay: Option<Duration>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl SinkWriter for SlowWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(
                alluvium_core::Error::external("the store: error sending request: connection refused").with_retryable(true)
            );
        }
        self.inner.write(batch).await
    }
    async fn prepare(&mut self, checkpoint: u64) -> Result<Option<Committable>> {
        self.inner.prepare(checkpoint).await
    }
}

#[async_trait]
impl Sink for Observed {
    fn name(&self) -> String {
        "observed".into()
    }
    async fn writer(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(SlowWriter { inner: self.inner.writer(ctx).await?, delay: self.write_delay, down: self.writes_down.clone() }))
    }
    async fn commit(&self, ctx: &SinkContext, checkpoint: u64, c: &[Committable]) -> Result<()> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(alluvium_core::Error::external("the table's catalog: error sending request: connection refused")
                .with_retryable(true));
        }
        self.inner.commit(ctx, checkpoint, c).await?;
        self.log.lock().unwrap().commits.push((ctx.region, Instant::now()));
        Ok(())
    }
    async fn recover(&self, ctx: &SinkContext, pending: &[Committable]) -> Result<()> {
        self.log.lock().unwrap().starts.push((ctx.region, Instant::now()));
        self.inner.recover(ctx, pending).await
    }
}
