//! Per-stage and per-pipeline metrics: the telemetry contract every stage and connector shares.
//!
//! The runtime counts for every stage: rows and bytes in and out, time busy (processing), time
//! backpressured (waiting for room downstream), errors (stage failures), dead letters, and the bytes
//! buffered in its input channels (now and peak). For the pipeline: checkpoints completed and their
//! duration, commits and their latency, rows and dead letters committed, region restarts. Progress
//! displays and exporters read [`Metrics::snapshot`]; no stage needs special cases.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::channel::BufferGauge;

/// Counters of one stage, shared by its subtasks.
#[derive(Debug, Default)]
pub struct StageMetrics {
    /// The stage's name.
    pub name: String,
    /// Rows received (for sources: rows read).
    pub rows_in: AtomicU64,
    /// Rows emitted (for sinks: rows written to staging).
    pub rows_out: AtomicU64,
    /// Bytes received (in-memory Arrow size).
    pub bytes_in: AtomicU64,
    /// Bytes emitted.
    pub bytes_out: AtomicU64,
    /// Nanoseconds spent processing.
    pub busy_ns: AtomicU64,
    /// Nanoseconds spent waiting for room downstream.
    pub backpressure_ns: AtomicU64,
    /// Stage failures (each restarts a region).
    pub errors: AtomicU64,
    /// Rows sent to the dead-letter output.
    pub dead_letters: AtomicU64,
    /// Bytes buffered in the stage's input channels.
    pub input_buffer: Arc<BufferGauge>,
}

impl StageMetrics {
    pub(crate) fn new(name: &str) -> Self {
        Self { name: name.to_string(), ..Default::default() }
    }
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_time(counter: &AtomicU64, d: Duration) {
        counter.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Pipeline-wide counters.
#[derive(Debug, Default)]
pub struct PipelineCounters {
    /// Region checkpoints completed (manifest durable).
    pub checkpoints: AtomicU64,
    /// Sum of checkpoint durations (trigger → manifest durable), nanoseconds.
    pub checkpoint_ns: AtomicU64,
    /// Longest checkpoint, nanoseconds.
    pub checkpoint_max_ns: AtomicU64,
    /// Successful sink commit calls.
    pub commits: AtomicU64,
    /// Sum of commit latencies, nanoseconds.
    pub commit_ns: AtomicU64,
    /// Rows made visible in the sink by this run's commits.
    pub rows_committed: AtomicU64,
    /// Dead letters made visible by this run's commits.
    pub dead_letters_committed: AtomicU64,
    /// Rows of restored checkpoints committed again at a region start (idempotent: they may have
    /// been visible already, when the earlier run died after its commit).
    pub rows_recommitted: AtomicU64,
    /// Region restarts after failures.
    pub restarts: AtomicU64,
}

/// All metrics of a running pipeline.
#[derive(Debug, Default)]
pub struct Metrics {
    /// One entry per stage, source first, sink last.
    pub stages: Vec<Arc<StageMetrics>>,
    /// Pipeline-wide counters.
    pub pipeline: PipelineCounters,
}

/// A point-in-time copy of one stage's metrics.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[allow(missing_docs)]
pub struct StageSnapshot {
    pub name: String,
    pub rows_in: u64,
    pub rows_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub busy_ms: u64,
    pub backpressure_ms: u64,
    pub errors: u64,
    pub dead_letters: u64,
    pub buffered_bytes: u64,
    pub peak_buffered_bytes: u64,
}

/// A point-in-time copy of all metrics.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[allow(missing_docs)]
pub struct MetricsSnapshot {
    pub stages: Vec<StageSnapshot>,
    pub checkpoints: u64,
    pub checkpoint_avg_ms: f64,
    pub checkpoint_max_ms: f64,
    pub commits: u64,
    pub commit_avg_ms: f64,
    pub rows_committed: u64,
    pub dead_letters_committed: u64,
    pub rows_recommitted: u64,
    pub restarts: u64,
}

impl Metrics {
    /// Copies the current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ms = |ns: u64| ns / 1_000_000;
        let avg = |sum: u64, n: u64| if n == 0 { 0.0 } else { sum as f64 / n as f64 / 1e6 };
        let p = &self.pipeline;
        MetricsSnapshot {
            stages: self
                .stages
                .iter()
                .map(|s| StageSnapshot {
                    name: s.name.clone(),
                    rows_in: get(&s.rows_in),
                    rows_out: get(&s.rows_out),
                    bytes_in: get(&s.bytes_in),
                    bytes_out: get(&s.bytes_out),
                    busy_ms: ms(get(&s.busy_ns)),
                    backpressure_ms: ms(get(&s.backpressure_ns)),
                    errors: get(&s.errors),
                    dead_letters: get(&s.dead_letters),
                    buffered_bytes: s.input_buffer.now(),
                    peak_buffered_bytes: s.input_buffer.peak(),
                })
                .collect(),
            checkpoints: get(&p.checkpoints),
            checkpoint_avg_ms: avg(get(&p.checkpoint_ns), get(&p.checkpoints)),
            checkpoint_max_ms: get(&p.checkpoint_max_ns) as f64 / 1e6,
            commits: get(&p.commits),
            commit_avg_ms: avg(get(&p.commit_ns), get(&p.commits)),
            rows_committed: get(&p.rows_committed),
            dead_letters_committed: get(&p.dead_letters_committed),
            rows_recommitted: get(&p.rows_recommitted),
            restarts: get(&p.restarts),
        }
    }
}
