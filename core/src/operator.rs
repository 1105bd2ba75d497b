//! Operators: the stages between a source and a sink.
//!
//! An operator has one required method, `process`, which maps an Arrow batch to an [`Output`]: the
//! rows that go on, plus the rows that failed ([`RowFailure`]). Failed rows never stop the pipeline
//! and never disappear: the runtime copies them out of the input batch into the dead-letter output
//! with the stage name, the error kind, the message and the number of attempts, so that
//! `rows in = rows out + dead letters` always holds.
//!
//! Returning `Err` from `process` means something else: the *stage* failed (a bug, a lost
//! connection). The runtime then restarts the stage's region from its last completed checkpoint.
//!
//! Two flavours:
//! * [`Operator`] — synchronous, `&mut self`, CPU work. The runtime runs it off the async reactor
//!   (on tokio's blocking pool), so a slow decode never stalls IO.
//! * [`AsyncOperator`] — `&self`, IO work (remote calls, fetches). The runtime keeps up to
//!   `concurrency` batches in flight per subtask and emits results in input order or as they
//!   complete ([`crate::pipeline::Stage::unordered`]). At a checkpoint barrier the in-flight batches are
//!   drained first (aligned checkpoints).
//!
//! Hooks have defaults, and the runtime owns the control loop: operators never see barriers.

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::error::{ErrorKind, Result};
use crate::source::State;

/// Where an operator instance runs; given to [`Operator::open`].
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The pipeline's name.
    pub pipeline: String,
    /// The stage's name.
    pub stage: String,
    /// This subtask's index within the stage (the lane, for forward-connected pipelines).
    pub subtask: usize,
    /// The stage's parallelism.
    pub parallelism: usize,
    /// The region this subtask belongs to.
    pub region: usize,
    /// The region's epoch: it increases every time the region is (re)started.
    pub epoch: u64,
}

/// One row of the input batch that could not be processed.
#[derive(Debug, Clone, PartialEq)]
pub struct RowFailure {
    /// The row's index in the *input* batch.
    pub row: usize,
    /// The kind of error (usually [`ErrorKind::Data`] or [`ErrorKind::External`]).
    pub kind: ErrorKind,
    /// A message for a person: what failed and why.
    pub message: String,
    /// How many times the stage tried.
    pub attempts: u32,
}

impl RowFailure {
    /// A failed row with one attempt.
    pub fn new(row: usize, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { row, kind, message: message.into(), attempts: 1 }
    }
    /// Sets the number of attempts.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }
}

/// Per-row outcomes of a fallible step, split the way an [`Output`] needs them.
#[derive(Debug)]
pub struct RowResults<T> {
    /// The successes, in row order.
    pub ok: Vec<T>,
    /// For every input row: whether it succeeded (a filter mask for the input batch).
    pub keep: arrow::array::BooleanArray,
    /// The failed rows, with their reasons.
    pub failures: Vec<RowFailure>,
}

impl<T> RowResults<T> {
    /// Collects one result per input row, in row order.
    pub fn collect(results: impl IntoIterator<Item = std::result::Result<T, (ErrorKind, String)>>) -> Self {
        let mut ok = Vec::new();
        let mut keep = Vec::new();
        let mut failures = Vec::new();
        for (row, r) in results.into_iter().enumerate() {
            match r {
                Ok(v) => {
                    ok.push(v);
                    keep.push(true);
                }
                Err((kind, message)) => {
                    failures.push(RowFailure::new(row, kind, message));
                    keep.push(false);
                }
            }
        }
        Self { ok, keep: keep.into(), failures }
    }

    /// The input rows that succeeded.
    pub fn kept(&self, input: &RecordBatch) -> Result<RecordBatch> {
        Ok(arrow::compute::filter_record_batch(input, &self.keep)?)
    }
}

/// `batch` without column `drop`, with the `add` columns appended; an added column replaces an
/// existing one of the same name. Schema metadata is kept.
pub fn with_columns(
    batch: &RecordBatch,
    drop: Option<&str>,
    add: Vec<(arrow::datatypes::Field, arrow::array::ArrayRef)>,
) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if Some(f.name().as_str()) == drop || add.iter().any(|(a, _)| a.name() == f.name()) {
            continue;
        }
        fields.push(f.as_ref().clone());
        cols.push(c.clone());
    }
    for (f, c) in add {
        fields.push(f);
        cols.push(c);
    }
    let schema = arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone());
    Ok(RecordBatch::try_new(std::sync::Arc::new(schema), cols)?)
}

/// The result of processing one batch.
#[derive(Debug, Clone)]
pub struct Output {
    /// The rows that go on to the next stage (may be empty).
    pub batch: RecordBatch,
    /// The input rows that failed.
    pub failures: Vec<RowFailure>,
}

impl Output {
    /// An output with no failures.
    pub fn new(batch: RecordBatch) -> Self {
        Self { batch, failures: Vec::new() }
    }
    /// An output with failed rows.
    pub fn with_failures(batch: RecordBatch, failures: Vec<RowFailure>) -> Self {
        Self { batch, failures }
    }
}

impl From<RecordBatch> for Output {
    fn from(batch: RecordBatch) -> Self {
        Output::new(batch)
    }
}

/// A synchronous operator on record batches. `Clone` makes one instance per subtask and per restart.
pub trait Operator: Send + 'static {
    /// Processes one batch.
    fn process(&mut self, batch: RecordBatch) -> Result<Output>;
    /// Processes one batch whose output may be far larger than its input (a video's frames),
    /// handing `emit` the output a piece at a time. The runtime sends each piece downstream
    /// before `emit` returns, so memory stays bounded by the channel budget however long the
    /// video. Each piece's failures index rows of `batch`. The default emits
    /// [`process`](Operator::process)'s output once.
    fn process_into(&mut self, batch: RecordBatch, emit: &mut dyn FnMut(Output) -> Result<()>) -> Result<()> {
        emit(self.process(batch)?)
    }
    /// Called once before the first batch (and again on a fresh instance after a restart).
    fn open(&mut self, _ctx: &TaskContext) -> Result<()> {
        Ok(())
    }
    /// State to store in the region's checkpoint; `None` for stateless operators.
    fn snapshot(&mut self) -> Result<Option<State>> {
        Ok(None)
    }
    /// Restores what [`Operator::snapshot`] returned, before the first batch after a restart.
    fn restore(&mut self, _state: State) -> Result<()> {
        Ok(())
    }
    /// Called when the input is exhausted, before the final checkpoint: emit buffered rows here.
    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        Ok(None)
    }
}

/// An asynchronous operator on record batches, shared by the in-flight calls of one subtask.
#[async_trait]
pub trait AsyncOperator: Send + Sync + 'static {
    /// Processes one batch; may be called concurrently (up to the stage's concurrency).
    async fn process(&self, batch: RecordBatch, ctx: &TaskContext) -> Result<Output>;
}

const _: Option<&dyn Operator> = None;
const _: Option<&dyn AsyncOperator> = None;

/// An operator from a closure: `Map::new(|batch| Ok(batch.into()))`.
pub struct Map<F> {
    f: F,
}

impl<F> Map<F>
where
    F: FnMut(RecordBatch) -> Result<Output> + Clone + Send + 'static,
{
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        Self { f }
    }
}

impl<F: Clone> Clone for Map<F> {
    fn clone(&self) -> Self {
        Self { f: self.f.clone() }
    }
}

impl<F> Operator for Map<F>
where
    F: FnMut(RecordBatch) -> Result<Output> + Clone + Send + 'static,
{
    fn process(&mut self, batch: RecordBatch) -> Result<Output> {
        (self.f)(batch)
    }
}
