//! Split-based sources (the shape of Flink's FLIP-27).
//!
//! A [`Source`] is a factory for two things:
//!
//! * one [`SplitEnumerator`], run by the pipeline's coordinator, which *discovers* units of work
//!   ([`Split`]s: a key range of a listing, a manifest's byte range, a table snapshot's files, a
//!   range of generated ids). The coordinator assigns every split to exactly one source subtask and
//!   records the assignment durably before that subtask sees it.
//! * a [`SplitReader`] per split, run inside a region, which turns the split into Arrow batches and
//!   reports its [`SplitReader::position`], the state from which reading resumes after a restore.
//!
//! ```text
//!  coordinator                         region r (lane r)
//!  ┌────────────────┐  assign (logged) ┌──────────────────────────────────────────────┐
//!  │ SplitEnumerator│ ───────────────▶ │ source task: split queue → SplitReader → ... │
//!  └────────────────┘                  └──────────────────────────────────────────────┘
//! ```
//!
//! Bounded sources (backfills) end: their enumerator returns [`Discovery::Exhausted`]. Unbounded
//! sources (continuous discovery) return [`Discovery::Idle`] and are asked again later. Both are the
//! same graph; the runtime ends a region when its splits are all read and no more will come.
//!
//! Positions and splits are opaque JSON ([`State`]) so that any source can put what it needs into a
//! checkpoint manifest, and a person can read it.

use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::operator::RowFailure;

/// Opaque, serializable state: split descriptions, reader positions, operator state.
pub type State = serde_json::Value;

/// A unit of source work, assigned to exactly one source subtask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// Unique within the source, stable across runs (it keys the split's state in checkpoints).
    pub id: String,
    /// What the reader needs to read the split.
    pub payload: State,
}

/// What an enumerator found when asked.
#[derive(Debug)]
pub enum Discovery {
    /// New splits to assign (possibly one page of a longer listing; the enumerator is asked again at once).
    Splits(Vec<Split>),
    /// Nothing new now; ask again after this delay (continuous discovery).
    Idle(Duration),
    /// No split will ever come again (bounded sources).
    Exhausted,
}

/// Discovers splits. Runs in the coordinator; its state is checkpointed with every assignment.
#[async_trait]
pub trait SplitEnumerator: Send {
    /// Finds the next splits. Must not return the same split twice across calls, nor after a
    /// restore from [`SplitEnumerator::snapshot`].
    async fn discover(&mut self) -> Result<Discovery>;
    /// The state to resume discovery from; stored durably with each assignment.
    fn snapshot(&self) -> State;
}

/// Reads one split.
#[async_trait]
pub trait SplitReader: Send {
    /// The next batch, or `None` when the split is done. Must be cancel-safe: if the future is
    /// dropped before it completes, no row may be lost or skipped (update positions only after the
    /// batch is produced).
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>>;
    /// The position after the last batch returned: reading resumes from here after a restore.
    fn position(&self) -> State;
    /// The records read for the last batch that could not become rows (a malformed manifest
    /// line). The runtime sends them to the dead-letter output, committed with the checkpoint that
    /// covers [`SplitReader::position`], so they are neither lost nor repeated. Called after every
    /// batch; a batch may be empty when every record of it was rejected.
    fn rejected(&mut self) -> Option<Rejected> {
        None
    }
}

/// Records a reader could not turn into rows, with the reasons.
#[derive(Debug)]
pub struct Rejected {
    /// The records as read, a row each, with what a person needs to find them (e.g. `file`,
    /// `line`, `text`).
    pub records: RecordBatch,
    /// Why each failed: `failures[i].row` indexes `records`.
    pub failures: Vec<RowFailure>,
}

/// A source of record batches, split into units of work.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// A short name for logs and metrics ("generate", "s3-listing").
    fn name(&self) -> String;
    /// The schema of every batch the readers produce.
    fn schema(&self) -> SchemaRef;
    /// Creates the enumerator, resuming from `restored` (the last durable [`SplitEnumerator::snapshot`]).
    async fn enumerator(&self, restored: Option<State>) -> Result<Box<dyn SplitEnumerator>>;
    /// Opens a reader for `split`, resuming from `position` when the split was partly read before.
    async fn open(&self, split: &Split, position: Option<&State>) -> Result<Box<dyn SplitReader>>;
    /// Checks the source's configuration without IO; called by `Pipeline::build`.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

const _: Option<&dyn Source> = None;
const _: Option<&dyn SplitReader> = None;
const _: Option<&dyn SplitEnumerator> = None;
