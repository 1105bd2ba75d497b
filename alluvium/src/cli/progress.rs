//! Progress while a job runs: a bar per stage on a terminal, periodic log lines otherwise.
//!
//! On a terminal (stderr), each stage gets a line with its rows in and out, rows/s and MB/s
//! (over the last second), buffered bytes and dead letters; the source's line is a bar with an
//! ETA when the job knows its total rows (the `generate` source). Log lines printed meanwhile go
//! above the bars ([`LogWriter`]). Elsewhere (CI, files, pipes), one `progress` log line every
//! `every`. A service stage whose endpoint is down says so on its line (and in a warning line
//! every `every` elsewhere): waiting on which endpoint, since when, and the last failure.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use alluvium::core::metrics::Metrics;
use alluvium::core::service::{service_status, ServiceStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars being drawn, if any: the log writer prints above them.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Writes log lines to stderr, above the progress bars when they are shown.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BARS.get() {
            Some(bars) => bars.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Shows progress until the returned handle is aborted (or [`finish`] is called).
pub fn spawn(metrics: Arc<Metrics>, total_rows: Option<u64>, every: Duration) -> tokio::task::JoinHandle<()> {
    if std::io::stderr().is_terminal() {
        tokio::spawn(bars(metrics, total_rows))
    } else {
        tokio::spawn(lines(metrics, every))
    }
}

/// Clears the bars (before the summary is printed).
pub fn finish() {
    if let Some(bars) = BARS.get() {
        let _ = bars.clear();
    }
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    now.saturating_sub(before) as f64 / secs.max(1e-3)
}

async fn bars(metrics: Arc<Metrics>, total_rows: Option<u64>) {
    let multi = BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)));
    let stages = metrics.snapshot().stages;
    let width = stages.iter().map(|s| s.name.len()).max().unwrap_or(8);
    let spinner = ProgressStyle::with_template("{prefix} {spinner} {msg}").expect("template");
    let bar = ProgressStyle::with_template("{prefix} [{bar:24}] {percent:>3}% eta {eta:<4} {msg}")
        .expect("template")
        .progress_chars("=> ");
    let lines: Vec<ProgressBar> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let pb = match total_rows.filter(|_| i == 0) {
                Some(total) => ProgressBar::new(total).with_style(bar.clone()),
                None => ProgressBar::new_spinner().with_style(spinner.clone()),
            };
            multi.add(pb.with_prefix(format!("{:>width$}", s.name)))
        })
        .collect();
    let mut last = (Instant::now(), metrics.snapshot());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = metrics.snapshot();
        let waiting = waiting_stages();
        let secs = last.0.elapsed().as_secs_f64();
        if secs < 1.0 {
            for pb in &lines {
                pb.tick();
            }
            continue;
        }
        for ((pb, s), before) in lines.iter().zip(&now.stages).zip(&last.1.stages) {
            pb.set_position(s.rows_out);
            let mut msg = format!(
                "{} in, {} out, {:.0} rows/s, {:.1} MB/s",
                s.rows_in,
                s.rows_out,
                rate(s.rows_out, before.rows_out, secs),
                // Sinks emit nothing: their rate is what they take in.
                rate(s.bytes_out.max(s.bytes_in), before.bytes_out.max(before.bytes_in), secs) / 1e6
            );
            if s.buffered_bytes > 0 {
                msg.push_str(&format!(", {:.1} MiB buffered", s.buffered_bytes as f64 / (1 << 20) as f64));
            }
            if s.dead_letters > 0 {
                msg.push_str(&format!(", {} dead letters", s.dead_letters));
            }
            if let Some(w) = waiting.iter().find(|w| w.stage == s.name) {
                msg.push_str(&format!(", {}", waiting_text(w)));
            }
            pb.set_message(msg);
        }
        last = (Instant::now(), now);
    }
}

async fn lines(metrics: Arc<Metrics>, every: Duration) {
    let start = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let m = metrics.snapshot();
        let read = m.stages.first().map_or(0, |s| s.rows_in);
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        tracing::info!(
            rows_read = read,
            rows_committed = m.rows_committed,
            dead_letters = m.dead_letters_committed,
            checkpoints = m.checkpoints,
            rows_per_s = (read as f64 / secs) as u64,
            "progress"
        );
        for w in waiting_stages() {
            tracing::warn!(stage = %w.stage, "stage `{}`: {}", w.stage, waiting_text(&w));
        }
    }
}

/// The service stages waiting on their endpoint now (a CLI process runs one pipeline).
fn waiting_stages() -> Vec<ServiceStatus> {
    service_status().into_iter().filter(|s| s.waiting.is_some()).collect()
}

/// "waiting on its endpoint URL since TIME (for 42s): LAST FAILURE".
fn waiting_text(s: &ServiceStatus) -> String {
    let Some(w) = &s.waiting else { return String::new() };
    let on = s.endpoint.as_deref().map_or_else(|| format!("its service `{}`", s.service), |e| format!("its endpoint {e}"));
    let what = if w.gave_up { "gave up waiting on" } else { "waiting on" };
    let cut: String = w.last_failure.chars().take(160).collect();
    format!(
        "{what} {on} since {} (for {}): {cut}",
        humantime::format_rfc3339_seconds(w.since),
        humantime::format_duration(std::time::Duration::from_secs(w.waited.as_secs()))
    )
}
