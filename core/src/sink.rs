//! Sinks as two-phase commits, tied to regional checkpoints.
//!
//! A [`Sink`] is shared by the whole pipeline; each sink subtask gets its own [`SinkWriter`].
//!
//! ```text
//!   SinkWriter (in the region's sink task)          Sink (called by the region's coordinator)
//!   ──────────────────────────────────────          ─────────────────────────────────────────
//!   write(batch) … write(batch)
//!   barrier n ──▶ prepare(n) ──▶ Committable ─┐
//!                                             │ stored in region manifest n (durable)
//!                                             └──────────────▶ commit(region, [committables ≤ n])
//!   restart ──────────────────────────────────────────────────▶ recover(region, pending) + commit(pending)
//! ```
//!
//! 1. **Pre-commit** (`prepare`): at a checkpoint barrier the writer closes its files (under names
//!    unique to region/epoch/checkpoint) and returns a [`Committable`]: a serializable description of
//!    what to make visible. The runtime stores it in the region's checkpoint manifest.
//! 2. **Commit** (`commit`): once the region's checkpoint manifest is durable, the coordinator asks the
//!    sink to commit. A commit must be **idempotent**: after a crash the runtime commits the pending
//!    committables of the restored manifest again, and some of them may already be visible.
//! 3. **Abort** (`abort`): a prepared committable whose checkpoint will never complete (the region
//!    failed first). Best effort: the next `recover` cleans what an abort missed.
//! 4. **Recover** (`recover`): on a region (re)start, before the first write; the sink may delete
//!    leftovers of earlier epochs that no pending committable references (proven orphans).
//! 5. **Guard** (`committed_checkpoints`): before any region starts, a sink that keeps idempotency
//!    keys in its table says which checkpoint of each region it holds; a table ahead of the
//!    checkpoint store means checkpoint state was lost, and the run stops instead of committing
//!    past it (`runtime::guard`).

pub mod testing;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::source::State;

/// What a writer prepared at a barrier: rows and bytes for accounting, and the sink's own payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Committable {
    /// Rows this committable makes visible.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Sink-specific description (file names, table actions).
    pub payload: State,
}

/// Identifies a region's writer or commit for the sink.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// The pipeline's name.
    pub pipeline: String,
    /// The id of the pipeline's checkpoints (16 hex digits), the same in every run that resumes
    /// them: a fresh checkpoint location is a new job.
    pub instance: String,
    /// The region.
    pub region: usize,
    /// The region's epoch (increments on each restart, so file names never collide).
    pub epoch: u64,
    /// The writer's name, unique within the region (`sink-0`, `decode-1`); empty in commit calls.
    pub writer: String,
}

impl SinkContext {
    /// `alluvium/pipeline/instance/region-R`: the stable identity of a region's commits, stored in
    /// lake tables as the idempotency key next to the last committed checkpoint id.
    pub fn sink_key(&self) -> String {
        format!("alluvium/{}/{}/region-{}", self.pipeline, self.instance, self.region)
    }

    /// `INSTANCE-rR-eE-WRITER`: a file-name prefix unique to this writer's attempt, even across
    /// pipelines writing the same table.
    pub fn file_prefix(&self) -> String {
        format!("{}e{}-{}", self.region_file_prefix(), self.epoch, self.writer)
    }

    /// `INSTANCE-rR-`: the start of the file names of every attempt of this region.
    pub fn region_file_prefix(&self) -> String {
        format!("{}-r{}-", &self.instance[..self.instance.len().min(8)], self.region)
    }
}

/// Writes batches of one sink subtask and prepares them for commit.
#[async_trait]
pub trait SinkWriter: Send {
    /// Writes a batch (to a staging area: nothing is visible before commit).
    async fn write(&mut self, batch: RecordBatch) -> Result<()>;
    /// Closes what was written since the last barrier and describes it. `None` when nothing was written.
    async fn prepare(&mut self, checkpoint: u64) -> Result<Option<Committable>>;
}

/// A transactional sink.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// A short name for logs ("parquet", "lance").
    fn name(&self) -> String;
    /// Creates the writer of one sink subtask. Should do no IO until the first write.
    async fn writer(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter>>;
    /// Makes `committables` (all prepared by `ctx.region`, checkpoint `checkpoint` and earlier)
    /// visible, atomically per committable and idempotently.
    async fn commit(&self, ctx: &SinkContext, checkpoint: u64, committables: &[Committable]) -> Result<()>;
    /// Discards prepared committables that will never be committed.
    async fn abort(&self, _ctx: &SinkContext, _committables: &[Committable]) -> Result<()> {
        Ok(())
    }
    /// Called when a region (re)starts, with the committables still pending in its manifest.
    async fn recover(&self, _ctx: &SinkContext, _pending: &[Committable]) -> Result<()> {
        Ok(())
    }
    /// The highest checkpoint the table records as committed for each of `keys` (idempotency keys,
    /// [`SinkContext::sink_key`]); keys without a commit are absent. `None` when the sink keeps no
    /// idempotency keys in its output and cannot tell. Reads, never writes.
    async fn committed_checkpoints(&self, _keys: &[String]) -> Result<Option<BTreeMap<String, u64>>> {
        Ok(None)
    }
    /// Checks the sink's configuration without IO; called by `Pipeline::build`.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    /// The directory or table the sink writes to, when it has one: two sinks of a pipeline must not
    /// share it (each one's recovery owns its staging area).
    fn location(&self) -> Option<String> {
        None
    }
    /// Describes the table as it is now (rows, schema, last commits with their idempotency keys),
    /// for `alluvium inspect`. Reads, never writes.
    async fn inspect(&self) -> Result<TableInfo> {
        Err(crate::Error::config(format!("`inspect` does not know how to describe {} sinks", self.name())))
    }
}

/// What [`Sink::inspect`] tells about a table.
#[derive(Debug, Clone, Default)]
pub struct TableInfo {
    /// The format ("delta", "iceberg", "lance").
    pub format: String,
    /// The table, as the sink names it (credentials redacted).
    pub table: String,
    /// Whether the table exists yet (the rest is empty when not).
    pub exists: bool,
    /// The current version (Delta version, Iceberg snapshot id, Lance version).
    pub version: Option<i64>,
    /// Rows in the current version, when the table's metadata says.
    pub rows: Option<u64>,
    /// Data files in the current version.
    pub files: Option<u64>,
    /// The table's schema, as Arrow.
    pub schema: Option<arrow::datatypes::SchemaRef>,
    /// The last commits, newest first: at most [`TableInfo::COMMITS`].
    pub commits: Vec<CommitInfo>,
}

impl TableInfo {
    /// How many of the last commits [`Sink::inspect`] lists.
    pub const COMMITS: usize = 10;
}

/// One commit of a table, as [`TableInfo`] lists it.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    /// The version (or snapshot id) the commit made.
    pub version: i64,
    /// When, in ms since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// The operation ("WRITE", "append", "Append", …).
    pub operation: String,
    /// Rows the commit added, when recorded.
    pub rows_added: Option<u64>,
    /// The idempotency key an Alluvium region wrote with it (`alluvium/PIPELINE/INSTANCE/region-R`)
    /// and the checkpoint it committed; `None` for commits of other writers.
    pub key: Option<(String, u64)>,
}

const _: Option<&dyn Sink> = None;
const _: Option<&dyn SinkWriter> = None;

/// A shared sink.
pub type SharedSink = Arc<dyn Sink>;
