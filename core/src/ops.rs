//! Built-in operators that need no connector.
//!
//! [`Fault`] injects failures on purpose: per-row failures (which become dead letters) and stage
//! failures in one subtask (which restart that subtask's region). Chaos testing is part of the
//! product: it is how the exactly-once, failover and dead-letter guarantees are shown, by users as
//! much as by our tests (`type = "fault"` in a job file).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::Int64Array;
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;

use crate::error::{Error, ErrorKind, Result};
use crate::operator::{Operator, Output, RowFailure, TaskContext};
use crate::pipeline::Stage;

/// Injects failures. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    dead_letter_every: Option<u64>,
    fail_subtask: Option<usize>,
    fail_after_rows: u64,
    fail_times: u32,
    delay_per_batch: Option<Duration>,
    panic: bool,
    failed: Arc<AtomicU32>,
    subtask: usize,
    rows_seen: u64,
}

impl Fault {
    /// No faults until configured.
    pub fn new() -> Self {
        Self::default()
    }
    /// Rows whose `id` column is a multiple of `n` fail with a data error (they become dead letters).
    pub fn dead_letter_every(mut self, n: u64) -> Self {
        self.dead_letter_every = Some(n.max(1));
        self
    }
    /// Subtask `subtask` fails (a stage error) after it has seen `after_rows` rows, `times` times in
    /// all (counted across restarts within this process).
    pub fn fail_subtask(mut self, subtask: usize, after_rows: u64, times: u32) -> Self {
        self.fail_subtask = Some(subtask);
        self.fail_after_rows = after_rows;
        self.fail_times = times;
        self
    }
    /// The injected stage failures are panics (a buggy stage) instead of errors.
    pub fn panic_instead(mut self, panic: bool) -> Self {
        self.panic = panic;
        self
    }
    /// Sleeps this long per batch (a slow stage).
    pub fn delay_per_batch(mut self, d: Duration) -> Self {
        self.delay_per_batch = Some(d);
        self
    }
}

impl Operator for Fault {
    fn open(&mut self, ctx: &TaskContext) -> Result<()> {
        self.subtask = ctx.subtask;
        self.rows_seen = 0;
        Ok(())
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Output> {
        if let Some(d) = self.delay_per_batch {
            std::thread::sleep(d);
        }
        self.rows_seen += batch.num_rows() as u64;
        if self.fail_subtask == Some(self.subtask)
            && self.rows_seen > self.fail_after_rows
            && self.failed.load(Ordering::SeqCst) < self.fail_times
        {
            let n = self.failed.fetch_add(1, Ordering::SeqCst) + 1;
            if self.panic {
                panic!("injected panic {n} of {} in subtask {}", self.fail_times, self.subtask);
            }
            return Err(Error::external(format!("injected failure {n} of {} in subtask {}", self.fail_times, self.subtask)));
        }
        let Some(every) = self.dead_letter_every else { return Ok(batch.into()) };
        let ids = batch
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or_else(|| Error::config("the fault stage's `dead_letter_every` needs an Int64 column named `id`"))?;
        let mut failures = Vec::new();
        let keep: arrow::array::BooleanArray = ids
            .iter()
            .enumerate()
            .map(|(row, id)| {
                let bad = id.is_some_and(|id| (id as u64).is_multiple_of(every));
                if bad {
                    failures.push(RowFailure::new(row, ErrorKind::Data, format!("injected: id is a multiple of {every}")));
                }
                Some(!bad)
            })
            .collect();
        Ok(Output::with_failures(filter_record_batch(&batch, &keep)?, failures))
    }
}

impl From<Fault> for Stage {
    fn from(f: Fault) -> Stage {
        Stage::new("fault", f)
    }
}

/// Crash points for kill tests of the commit protocol: with `ALLUVIUM_CRASH_AT=POINT:N` in the
/// environment, the process aborts (no cleanup, like a SIGKILL) the `N`th time it reaches `POINT`.
/// Points: `before-commit` (the checkpoint's manifest is durable, the table commit not made) and
/// `after-commit` (the table commit landed; the runtime has not recorded it).
pub fn crash_point(point: &str) {
    use std::sync::atomic::AtomicU64;
    static REACHED: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var("ALLUVIUM_CRASH_AT") else { return };
    let Some((name, n)) = spec.split_once(':') else { return };
    if name != point {
        return;
    }
    let n: u64 = n.parse().unwrap_or(1);
    if REACHED.fetch_add(1, Ordering::SeqCst) + 1 == n {
        eprintln!("ALLUVIUM_CRASH_AT: aborting at {point} #{n}");
        std::process::abort();
    }
}
