//! What table sources (Delta, Lance, Iceberg) share: the settings of a read and the enumerator that walks
//! a table's versions.
//!
//! ```text
//!  snapshot        the splits of every row of the latest version (or of the version at the start)
//!  since_version   the splits of what each version after it appended, in order
//!  continuous      after that, look for new versions every `poll` and emit each one's appends once
//! ```
//!
//! A format says what its versions hold through [`TableVersions`]; [`VersionEnumerator`] does the
//! rest. Its checkpointed state is the last version handed out (and, for a bounded read, the
//! version it stops at), so a restart neither skips nor repeats a version.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::source::{Discovery, Split, SplitEnumerator, State};

/// What to read from a table.
#[derive(Debug, Clone)]
pub struct TableRead {
    /// The table: a directory or a URL.
    pub table: String,
    /// Only these columns, in this order (all when `None`).
    pub columns: Option<Vec<String>>,
    /// Only the rows appended by the versions after this one (the snapshot when `None`).
    pub since_version: Option<u64>,
    /// Never end: look for new versions this often.
    pub poll: Option<Duration>,
    /// Rows per batch.
    pub batch_size: usize,
    /// The projected schema, known once the table was opened (shared by clones).
    schema: Arc<OnceLock<SchemaRef>>,
}

impl TableRead {
    /// Every row of `table` as of its latest version, in batches of 8192.
    pub fn new(table: impl Into<String>) -> Self {
        Self { table: table.into(), columns: None, since_version: None, poll: None, batch_size: 8192, schema: Default::default() }
    }
    /// Only these columns, in this order.
    pub fn columns(mut self, columns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }
    /// Only the rows appended by the versions after `version` (not the snapshot).
    pub fn since_version(mut self, version: u64) -> Self {
        self.since_version = Some(version);
        self
    }
    /// Never ends: after the snapshot (or the versions after `since_version`), looks for new
    /// versions every `poll` and emits each one's appends once.
    pub fn continuous(mut self, poll: Duration) -> Self {
        self.poll = Some(poll.max(Duration::from_millis(10)));
        self
    }
    /// Rows per batch.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Learns the table's schema `full` (the first time it is opened): keeps it projected to
    /// the wanted columns; `what` names the table in errors.
    pub fn learn_schema(&self, full: SchemaRef, what: &str) -> Result<()> {
        if self.schema.get().is_none() {
            let _ = self.schema.set(self.project(full, what)?);
        }
        Ok(())
    }

    /// Whether [`TableRead::learn_schema`] has been called.
    pub fn knows_schema(&self) -> bool {
        self.schema.get().is_some()
    }

    /// The projected schema of what is read: known once the table was opened (by the enumerator
    /// or a reader), an empty schema before. What table sources return as `Source::schema`.
    pub fn schema(&self) -> SchemaRef {
        self.schema.get().cloned().unwrap_or_else(|| Arc::new(Schema::empty()))
    }

    fn project(&self, full: SchemaRef, what: &str) -> Result<SchemaRef> {
        let Some(cols) = &self.columns else { return Ok(full) };
        let fields = cols
            .iter()
            .map(|c| {
                full.field_with_name(c).cloned().map_err(|_| {
                    let names: Vec<&str> = full.fields().iter().map(|f| f.name().as_str()).collect();
                    Error::config(format!("source `columns`: {what} has no column `{c}`; it has {}", names.join(", ")))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }
}

/// The position of a reader of a table's split: the rows it has returned.
pub fn rows_position(rows: u64) -> State {
    serde_json::json!({ "rows": rows })
}

/// The rows a [`rows_position`] says were read (0 without one).
pub fn rows_done(position: Option<&State>) -> u64 {
    position.and_then(|p| p.get("rows")?.as_u64()).unwrap_or(0)
}

/// What a table format tells the [`VersionEnumerator`].
#[async_trait]
pub trait TableVersions: Send + Sync + 'static {
    /// The table, for messages (`Delta table `s3://…``).
    fn what(&self) -> String;
    /// The latest version; `None` while there is no table.
    async fn latest(&self) -> Result<Option<u64>>;
    /// Splits that read every row of `version`.
    async fn snapshot(&self, version: u64) -> Result<Vec<Split>>;
    /// Splits that read the rows `version` appended; none for a version of another kind.
    async fn appended(&self, version: u64) -> Result<Vec<Split>>;
    /// The version after `version` on the way to `target` (`None` at `target`). Versions count up
    /// by one by default; a format whose versions are ids (Iceberg snapshots) walks its history.
    async fn after(&self, version: u64, target: u64) -> Result<Option<u64>> {
        Ok((version < target).then_some(version + 1))
    }
}

/// Durable discovery state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct VersionState {
    /// The last version whose splits were handed out.
    version: Option<u64>,
    /// A bounded read stops after this version (the latest when it started).
    until: Option<u64>,
}

/// Walks a table's versions into splits. See the module docs.
pub struct VersionEnumerator<T> {
    versions: T,
    since: Option<u64>,
    poll: Option<Duration>,
    state: VersionState,
}

impl<T: TableVersions> VersionEnumerator<T> {
    /// An enumerator for `read` over `versions`, resumed from `restored`.
    pub fn new(versions: T, read: &TableRead, restored: Option<State>) -> Result<Self> {
        let state = match restored {
            Some(s) => serde_json::from_value(s).map_err(|e| {
                Error::checkpoint(format!("{}: the checkpointed enumerator state is malformed: {e}", versions.what()))
            })?,
            None => VersionState::default(),
        };
        Ok(Self { versions, since: read.since_version, poll: read.poll, state })
    }
}

#[async_trait]
impl<T: TableVersions> SplitEnumerator for VersionEnumerator<T> {
    async fn discover(&mut self) -> Result<Discovery> {
        let Some(latest) = self.versions.latest().await? else {
            return match self.poll {
                Some(poll) => Ok(Discovery::Idle(poll)),
                None => Err(Error::config(format!("there is no {}; check `table`", self.versions.what()))),
            };
        };
        if self.poll.is_none() && self.state.until.is_none() {
            self.state.until = Some(latest);
        }
        let target = self.state.until.unwrap_or(latest);
        let Some(mut at) = self.state.version.or(self.since) else {
            let splits = self.versions.snapshot(target).await?;
            self.state.version = Some(target);
            return Ok(Discovery::Splits(splits));
        };
        // The versions after `at`, up to one with appends at a time.
        while let Some(next) = self.versions.after(at, target).await? {
            at = next;
            let splits = self.versions.appended(at).await?;
            self.state.version = Some(at);
            if !splits.is_empty() {
                return Ok(Discovery::Splits(splits));
            }
        }
        Ok(match self.poll {
            Some(poll) => Discovery::Idle(poll),
            None => Discovery::Exhausted,
        })
    }

    fn snapshot(&self) -> State {
        serde_json::to_value(&self.state).expect("serializable")
    }
}
