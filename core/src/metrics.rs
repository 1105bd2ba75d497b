//! Per-stage and per-pipeline metrics: the telemetry contract every stage and connector shares.
//!
//! The runtime counts for every stage: rows and bytes in and out, time busy (processing), time
//! backpressured (waiting for room downstream), errors (stage failures), dead letters, and the bytes
//! buffered in its input channels (now and peak). For the pipeline: checkpoints completed and their
//! duration, commits and their latency, rows and dead letters committed, region restarts; for
//! service stages (models, remote endpoints), whether each waits on its endpoint and since when
//! ([`crate::service::service_status`]). Progress
//! displays and exporters read [`Metrics::snapshot`]; no stage needs special cases.
//! [`Metrics::prometheus`] renders them in Prometheus' text format (the CLI's `--metrics` endpoint).

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
    /// Bytes received: the Arrow data, as [`crate::types::data_bytes`] counts it.
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
    /// Panics caught in the stage's code (each one bisects its batch down to the row that panics,
    /// which becomes a dead letter).
    pub panics: AtomicU64,
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
    /// Rows the sources read in region attempts that failed, after those attempts' last completed
    /// checkpoint: read again after the restart (the source stage's `rows_in` counts them twice).
    pub rows_replayed: AtomicU64,
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
    pub panics: u64,
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
    pub rows_replayed: u64,
}

impl Metrics {
    /// The metrics in Prometheus' text exposition format (version 0.0.4), labelled with the
    /// pipeline's name and, per stage, the stage's. Times are in seconds.
    pub fn prometheus(&self, pipeline: &str) -> String {
        use std::fmt::Write;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let secs = |a: &AtomicU64| get(a) as f64 / 1e9;
        let raw_pipeline = pipeline;
        let pipeline = pipeline.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, values: &mut dyn Iterator<Item = (String, f64)>| {
            let _ = writeln!(out, "# HELP alluvium_{name} {help}\n# TYPE alluvium_{name} {kind}");
            for (labels, v) in values {
                let _ = writeln!(out, "alluvium_{name}{{pipeline=\"{pipeline}\"{labels}}} {v}");
            }
        };
        type StageValue = fn(&StageMetrics) -> f64;
        let stage_families: [(&str, &str, &str, StageValue); 10] = [
            ("stage_rows_in_total", "counter", "Rows a stage received.", |s| s.rows_in.load(Ordering::Relaxed) as f64),
            ("stage_rows_out_total", "counter", "Rows a stage emitted.", |s| s.rows_out.load(Ordering::Relaxed) as f64),
            ("stage_bytes_in_total", "counter", "Bytes a stage received.", |s| s.bytes_in.load(Ordering::Relaxed) as f64),
            ("stage_bytes_out_total", "counter", "Bytes a stage emitted.", |s| s.bytes_out.load(Ordering::Relaxed) as f64),
            ("stage_busy_seconds_total", "counter", "Time a stage spent processing.", |s| {
                s.busy_ns.load(Ordering::Relaxed) as f64 / 1e9
            }),
            ("stage_backpressure_seconds_total", "counter", "Time a stage waited for room downstream.", |s| {
                s.backpressure_ns.load(Ordering::Relaxed) as f64 / 1e9
            }),
            ("stage_errors_total", "counter", "Failures of a stage (each restarts its region).", |s| {
                s.errors.load(Ordering::Relaxed) as f64
            }),
            ("stage_dead_letters_total", "counter", "Rows a stage sent to the dead letters.", |s| {
                s.dead_letters.load(Ordering::Relaxed) as f64
            }),
            ("stage_panics_total", "counter", "Panics caught in a stage (the rows that panic become dead letters).", |s| {
                s.panics.load(Ordering::Relaxed) as f64
            }),
            ("stage_buffered_bytes", "gauge", "Bytes waiting in a stage's input channels.", |s| s.input_buffer.now() as f64),
        ];
        for (name, kind, help, value) in stage_families {
            family(name, kind, help, &mut self.stages.iter().map(|s| (format!(",stage=\"{}\"", s.name), value(s))));
        }
        let p = &self.pipeline;
        let pipeline_families: [(&str, &str, &str, f64); 10] = [
            ("checkpoints_total", "counter", "Checkpoints completed (all regions).", get(&p.checkpoints) as f64),
            ("checkpoint_seconds_total", "counter", "Time spent taking checkpoints.", secs(&p.checkpoint_ns)),
            ("checkpoint_seconds_max", "gauge", "The longest checkpoint so far.", secs(&p.checkpoint_max_ns)),
            ("commits_total", "counter", "Sink commits.", get(&p.commits) as f64),
            ("commit_seconds_total", "counter", "Time spent committing to the sink.", secs(&p.commit_ns)),
            ("rows_committed_total", "counter", "Rows committed to the sink.", get(&p.rows_committed) as f64),
            ("dead_letters_committed_total", "counter", "Dead letters committed.", get(&p.dead_letters_committed) as f64),
            (
                "rows_recommitted_total",
                "counter",
                "Rows of restored pending commits committed again.",
                get(&p.rows_recommitted) as f64,
            ),
            ("region_restarts_total", "counter", "Region restarts after failures (retries).", get(&p.restarts) as f64),
            (
                "rows_replayed_total",
                "counter",
                "Rows read again after a region restart (read after its last checkpoint before it failed).",
                get(&p.rows_replayed) as f64,
            ),
        ];
        for (name, kind, help, v) in pipeline_families {
            family(name, kind, help, &mut std::iter::once((String::new(), v)));
        }
        // Service stages (models, remote endpoints): whether each waits on its endpoint, since when.
        let services: Vec<crate::service::ServiceStatus> =
            crate::service::service_status().into_iter().filter(|s| s.pipeline == raw_pipeline).collect();
        if !services.is_empty() {
            let label =
                |s: &crate::service::ServiceStatus| format!(",stage=\"{}\"", s.stage.replace('\\', "\\\\").replace('"', "\\\""));
            let since = |s: &crate::service::ServiceStatus| {
                s.waiting
                    .as_ref()
                    .map_or(0.0, |w| w.since.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs() as f64))
            };
            family(
                "service_waiting",
                "gauge",
                "Whether a service stage is waiting on its endpoint, which is down (1), holding its input.",
                &mut services.iter().map(|s| (label(s), if s.waiting.is_some() { 1.0 } else { 0.0 })),
            );
            family(
                "service_waiting_since_timestamp_seconds",
                "gauge",
                "Since when a service stage has been waiting on its endpoint (Unix time; 0 while it answers).",
                &mut services.iter().map(|s| (label(s), since(s))),
            );
            family(
                "service_waiting_seconds",
                "gauge",
                "How long a service stage has been waiting on its endpoint (0 while it answers).",
                &mut services.iter().map(|s| (label(s), s.waiting.as_ref().map_or(0.0, |w| w.waited.as_secs_f64()))),
            );
        }
        out
    }

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
                    panics: get(&s.panics),
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
            rows_replayed: get(&p.rows_replayed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stage counter and pipeline counter appears once per series, labelled, with its value.
    #[test]
    fn prometheus_text_has_every_series_labelled() {
        let stage = Arc::new(StageMetrics::new("decode"));
        stage.rows_in.store(7, Ordering::Relaxed);
        stage.busy_ns.store(1_500_000_000, Ordering::Relaxed);
        let m = Metrics { stages: vec![stage], ..Default::default() };
        m.pipeline.commits.store(3, Ordering::Relaxed);
        let text = m.prometheus("thumb\"s");
        assert!(text.contains("alluvium_stage_rows_in_total{pipeline=\"thumb\\\"s\",stage=\"decode\"} 7\n"), "{text}");
        assert!(text.contains("alluvium_stage_busy_seconds_total{pipeline=\"thumb\\\"s\",stage=\"decode\"} 1.5\n"), "{text}");
        assert!(text.contains("alluvium_commits_total{pipeline=\"thumb\\\"s\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE alluvium_stage_buffered_bytes gauge\n"));
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 10 + 10, "ten series per stage, ten for the pipeline");
    }
}
