//! `alluvium backfill JOB --from T1 --to T2 [--window 1d]`: a bounded job, window by window.
//!
//! Each window `[start, end)` runs the job file once, with the window in the environment the file
//! is interpolated from:
//!
//! | variable | example |
//! |---|---|
//! | `ALLUVIUM_WINDOW_START` | `2026-11-01T00:00:00Z` |
//! | `ALLUVIUM_WINDOW_END` | `2026-11-02T00:00:00Z` |
//! | `ALLUVIUM_WINDOW_DATE` | `2026-11-01` (the start's date, for `dt=` partitions) |
//! | `ALLUVIUM_WINDOW` | `20261101T000000Z` (a name-safe label) |
//!
//! so a job selects its window's input (`modified_since = "${ALLUVIUM_WINDOW_START}"`, or a
//! partitioned prefix `s3://logs/dt=${ALLUVIUM_WINDOW_DATE}/`). Every window has checkpoints of its
//! own under the job's checkpoint location (`windows/LABEL/`), so a window interrupted in any way
//! resumes exactly-once on the next run; a finished window is recorded (`backfill/LABEL.json`)
//! and skipped by later runs. Windows run in order and the backfill stops at the first that fails.

use std::time::{Duration, SystemTime};

use super::rfc3339;
use alluvium::core::store::Location;
use alluvium::job::JobFile;
use alluvium::{Error, Result};
use object_store::{ObjectStoreExt, PutPayload};

/// One window, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Inclusive.
    pub start: SystemTime,
    /// Exclusive.
    pub end: SystemTime,
}

impl Window {
    fn label(&self) -> String {
        rfc3339(self.start).replace(['-', ':'], "")
    }
}

/// `[from, to)` cut into windows of `step` (the last one shorter when `step` does not divide it).
pub fn windows(from: SystemTime, to: SystemTime, step: Duration) -> Result<Vec<Window>> {
    if to <= from {
        return Err(Error::config(format!("--to {} is not after --from {}; give a later --to", rfc3339(to), rfc3339(from))));
    }
    if step.is_zero() {
        return Err(Error::config("--window is zero; give a duration such as 1d or 6h"));
    }
    let mut out = Vec::new();
    let mut start = from;
    while start < to {
        let end = (start + step).min(to);
        out.push(Window { start, end });
        start = end;
    }
    if out.len() > 100_000 {
        return Err(Error::config(format!("{} windows is too many; give a longer --window", out.len())));
    }
    Ok(out)
}

/// Runs `text` (the job file's text) once per window not yet recorded as finished; stops early
/// (without error) once `stop` is set, after the running window's last checkpoint.
pub async fn backfill(
    path: &std::path::Path,
    text: &str,
    set: &[String],
    windows: &[Window],
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let (mut run, mut skipped, mut rows, mut dead) = (0, 0, 0u64, 0u64);
    for (i, w) in windows.iter().enumerate() {
        let vars = [
            ("ALLUVIUM_WINDOW_START", rfc3339(w.start)),
            ("ALLUVIUM_WINDOW_END", rfc3339(w.end)),
            ("ALLUVIUM_WINDOW_DATE", rfc3339(w.start)[..10].to_string()),
            ("ALLUVIUM_WINDOW", w.label()),
        ];
        let env = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()).or_else(|| std::env::var(k).ok());
        let mut job = JobFile::parse_with_env(text, set, env).map_err(|e| e.context(format!("job file {}", path.display())))?;
        let base = job
            .checkpoint
            .location
            .clone()
            .unwrap_or_else(|| format!(".alluvium/{}/checkpoints", job.pipeline.name))
            .trim_end_matches('/')
            .to_string();
        job.checkpoint.location = Some(format!("{base}/windows/{}", w.label()));
        let records = Location::parse(&base).map_err(|e| e.context("checkpoint location"))?;
        let record = records.child(&format!("backfill/{}.json", w.label()));
        let span = format!("window {}/{} [{} .. {})", i + 1, windows.len(), rfc3339(w.start), rfc3339(w.end));
        match records.store.head(&record).await {
            Ok(_) => {
                println!("{span}: finished by an earlier run, skipped");
                skipped += 1;
                continue;
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::from(e).context(format!("reading the backfill record in {}", records.display))),
        }
        let pipeline = job.build().map_err(|e| e.context(span.clone()))?;
        let mut stop = stop.clone();
        let summary = pipeline
            .run_until(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .map_err(|e| e.context(span.clone()))?;
        println!(
            "{span}: {} rows read, {} committed, {} dead letters, in {:.1?}",
            summary.rows_read, summary.rows_committed, summary.dead_letters, summary.elapsed
        );
        if summary.stopped {
            println!("backfill stopped on request; rerun the same command to resume from this window");
            return Ok(());
        }
        let done = serde_json::json!({
            "start": rfc3339(w.start),
            "end": rfc3339(w.end),
            "rows_read": summary.rows_read,
            "rows_committed": summary.rows_committed,
            "dead_letters": summary.dead_letters,
            "finished_at": rfc3339(SystemTime::now()),
        });
        records
            .store
            .put(&record, PutPayload::from(serde_json::to_vec_pretty(&done).expect("serializable")))
            .await
            .map_err(|e| Error::from(e).context(format!("recording the finished {span} in {}", records.display)))?;
        run += 1;
        rows += summary.rows_committed;
        dead += summary.dead_letters;
    }
    println!(
        "backfill finished: {} windows ({run} run now, {skipped} finished earlier); {rows} rows committed and {dead} dead letters now",
        windows.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_range_once() {
        let t = |s: &str| alluvium::job::parse_time("t", s).unwrap().unwrap();
        let w = windows(t("2026-11-01"), t("2026-11-03T12:00:00Z"), Duration::from_secs(86_400)).unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!((w[0].start, w[2].end), (t("2026-11-01"), t("2026-11-03T12:00:00")));
        assert!(w.windows(2).all(|p| p[0].end == p[1].start));
        assert_eq!(w[1].label(), "20261102T000000Z");
        assert!(windows(t("2026-11-02"), t("2026-11-01"), Duration::from_secs(1)).unwrap_err().to_string().contains("--to"));
    }
}
