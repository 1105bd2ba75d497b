//! `DeltaSource`: a Delta table as a source, whole or as the data appended after a version.
//!
//! ```text
//!  snapshot        every data file of the latest version (or of the version at the start)
//!  since_version   the files `add`ed (dataChange = true) by each version after it, in order
//!  continuous      after that, poll the log and emit each new version's appends once (tailing)
//! ```
//!
//! This is how one pipeline's output feeds another: the second tails the first's table and sees
//! each committed row once. Each data file is a split; its reader's position is the rows it
//! returned ([`alluvium_parquet::read`]), so a restored reader resumes inside the file. The
//! enumerator checkpoints the last version it handed out, so a restart neither skips nor repeats
//! a version.
//!
//! Only appends flow on: a compaction (`dataChange = false`) rewrites rows already read and is
//! skipped, and rows a version deletes or updates are not retracted downstream (the version is
//! logged as a warning). Partitioned tables, deletion vectors and column mapping are refused with a
//! clear error; the tables Alluvium writes use none of them. The columns come from the table's
//! schema (projected with `columns`); structs with the fields of an ObjectRef are ObjectRefs again.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use alluvium_core::arrow::datatypes::{Schema, SchemaRef};
use alluvium_core::store::Location;
use alluvium_core::types::lake::from_lake_schema;
use alluvium_core::{Discovery, Error, Result, Source, Split, SplitEnumerator, SplitReader, State};
use alluvium_parquet::read::{rows_done, DataFileReader};
use async_trait::async_trait;
use deltalake::DeltaTable;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

/// Reads a Delta table. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct DeltaSource {
    table: String,
    columns: Option<Vec<String>>,
    since: Option<i64>,
    poll: Option<Duration>,
    batch_size: usize,
    /// The projected schema, known once the table was opened.
    schema: Arc<OnceLock<SchemaRef>>,
}

impl DeltaSource {
    /// Every row of the table at `table` (a directory or URL), as of its latest version.
    pub fn new(table: impl Into<String>) -> Self {
        Self { table: table.into(), columns: None, since: None, poll: None, batch_size: 8192, schema: Default::default() }
    }
    /// Only these columns, in this order.
    pub fn columns(mut self, columns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }
    /// Only the rows appended by the versions after `version` (not the snapshot).
    pub fn since_version(mut self, version: i64) -> Self {
        self.since = Some(version);
        self
    }
    /// Never ends: after the snapshot (or the versions after `since_version`), polls the log
    /// every `poll` and emits each new version's appends once.
    pub fn continuous(mut self, poll: Duration) -> Self {
        self.poll = Some(poll.max(Duration::from_millis(10)));
        self
    }
    /// Rows per batch (8192).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    fn what(&self) -> String {
        format!("Delta table `{}`", alluvium_core::error::redact(&self.table))
    }

    fn location(&self) -> Result<Location> {
        Location::parse(&self.table).map_err(|e| e.context("delta source `table`"))
    }

    /// The table at its latest version, checked to be one this source reads; `None` when there is
    /// no table (yet).
    async fn load(&self, loc: &Location) -> Result<Option<DeltaTable>> {
        let (table, exists) = crate::load_table(loc).await.map_err(|(doing, e)| {
            Error::external(format!("{doing} {}: {}", self.what(), alluvium_core::error::redact(&e.to_string())))
                .with_retryable(true)
        })?;
        if !exists {
            return Ok(None);
        }
        let state = table.snapshot().map_err(|e| Error::external(format!("reading {}: {e}", self.what())))?;
        let metadata = serde_json::to_value(state.metadata()).unwrap_or_default();
        let partitions = metadata["partitionColumns"].as_array().map_or(0, Vec::len);
        let config = &metadata["configuration"];
        let refused = if partitions > 0 {
            Some("it is partitioned")
        } else if config["delta.enableDeletionVectors"].as_str() == Some("true") {
            Some("it has deletion vectors enabled")
        } else if config["delta.columnMapping.mode"].as_str().is_some_and(|m| m != "none") {
            Some("it uses column mapping")
        } else {
            None
        };
        if let Some(why) = refused {
            return Err(Error::config(format!(
                "{} cannot be read by the delta source: {why}; read an unpartitioned table without deletion vectors or column mapping (such as one Alluvium writes)",
                self.what()
            )));
        }
        let full = from_lake_schema(crate::table_schema(&table)?.as_ref());
        let schema = match &self.columns {
            None => full,
            Some(cols) => {
                let fields = cols
                    .iter()
                    .map(|c| {
                        full.field_with_name(c).cloned().map_err(|_| {
                            let names: Vec<&str> = full.fields().iter().map(|f| f.name().as_str()).collect();
                            Error::config(format!(
                                "delta source `columns`: {} has no column `{c}`; it has {}",
                                self.what(),
                                names.join(", ")
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Arc::new(Schema::new(fields))
            }
        };
        let _ = self.schema.set(schema);
        Ok(Some(table))
    }
}

/// A data file to read: its path relative to the table (decoded), size and version.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DataFile {
    path: String,
    size: u64,
    version: i64,
}

/// Durable discovery state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct EnumState {
    /// The last version whose files were handed out.
    version: Option<i64>,
    /// A bounded read stops after this version (the latest when it started).
    until: Option<i64>,
}

#[async_trait]
impl Source for DeltaSource {
    fn name(&self) -> String {
        "delta".into()
    }

    /// The projected table schema once the table has been opened (by the enumerator or a
    /// reader); an empty schema before.
    fn schema(&self) -> SchemaRef {
        self.schema.get().cloned().unwrap_or_else(|| Arc::new(Schema::empty()))
    }

    fn validate(&self) -> Result<()> {
        self.location().map(|_| ())
    }

    async fn enumerator(&self, restored: Option<State>) -> Result<Box<dyn SplitEnumerator>> {
        let state = match restored {
            Some(s) => serde_json::from_value(s)
                .map_err(|e| Error::checkpoint(format!("delta source: the checkpointed enumerator state is malformed: {e}")))?,
            None => EnumState::default(),
        };
        Ok(Box::new(Enumerator { source: self.clone(), loc: self.location()?, state }))
    }

    async fn open(&self, split: &Split, position: Option<&State>) -> Result<Box<dyn SplitReader>> {
        let file: DataFile = serde_json::from_value(split.payload.clone())
            .map_err(|e| Error::checkpoint(format!("delta source: split `{}` is malformed: {e}", split.id)))?;
        let loc = self.location()?;
        if self.schema.get().is_none() {
            self.load(&loc).await?;
        }
        let what = format!("{} file `{}` (version {})", self.what(), file.path, file.version);
        let reader = DataFileReader::open(
            loc.store.clone(),
            loc.child(&file.path),
            Some(file.size),
            self.schema(),
            rows_done(position),
            self.batch_size,
            what,
        )
        .await?;
        Ok(Box::new(reader))
    }
}

struct Enumerator {
    source: DeltaSource,
    loc: Location,
    state: EnumState,
}

impl Enumerator {
    fn splits(files: Vec<DataFile>) -> Discovery {
        Discovery::Splits(
            files
                .into_iter()
                .map(|f| Split {
                    id: format!("v{}/{}", f.version, f.path),
                    payload: serde_json::to_value(f).expect("serializable"),
                })
                .collect(),
        )
    }

    /// Caught up: wait for new versions, or end.
    fn caught_up(&self) -> Discovery {
        match self.source.poll {
            Some(poll) => Discovery::Idle(poll),
            None => Discovery::Exhausted,
        }
    }

    /// The files version `v` added with new data, from its log entry.
    async fn appended(&self, v: i64) -> Result<Vec<DataFile>> {
        let path = self.loc.child(&format!("_delta_log/{v:020}.json"));
        let bytes = match self.loc.store.get(&path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::config(format!(
                    "{}: version {v} is no longer in the log (cleaned up); start from a snapshot (drop `since_version`) or a later version",
                    self.source.what()
                )))
            }
            Err(e) => return Err(Error::from(e).context(format!("reading version {v} of {}", self.source.what()))),
        };
        let mut files = Vec::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| Error::data(format!("{}: version {v} has a malformed log entry: {e}", self.source.what())))?;
            if let Some(add) = action.get("add").filter(|a| a["dataChange"].as_bool() != Some(false)) {
                let raw = add["path"].as_str().unwrap_or_default();
                let path = percent_encoding::percent_decode_str(raw).decode_utf8_lossy().to_string();
                files.push(DataFile { path, size: add["size"].as_u64().unwrap_or(0), version: v });
            } else if action.get("remove").is_some_and(|r| r["dataChange"].as_bool() != Some(false)) {
                tracing::warn!(table = %self.source.what(), version = v, "the version removes data; the delta source passes on appends only");
            }
        }
        Ok(files)
    }
}

#[async_trait]
impl SplitEnumerator for Enumerator {
    async fn discover(&mut self) -> Result<Discovery> {
        let Some(table) = self.source.load(&self.loc).await? else {
            return match self.source.poll {
                Some(poll) => Ok(Discovery::Idle(poll)),
                None => Err(Error::config(format!("there is no {}; check `table`", self.source.what()))),
            };
        };
        let latest = table.version().unwrap_or(0) as i64;
        if self.source.poll.is_none() && self.state.until.is_none() {
            self.state.until = Some(latest);
        }
        let target = self.state.until.unwrap_or(latest);
        let Some(mut at) = self.state.version.or(self.source.since) else {
            // The snapshot, as of `target`.
            let mut table = table;
            if target != latest {
                table
                    .load_version(target as u64)
                    .await
                    .map_err(|e| Error::external(format!("loading version {target} of {}: {e}", self.source.what())))?;
            }
            let state = table.snapshot().map_err(|e| Error::external(format!("reading {}: {e}", self.source.what())))?;
            let files = state
                .log_data()
                .iter()
                .map(|f| DataFile { path: f.path().to_string(), size: f.size().max(0) as u64, version: target })
                .collect();
            self.state.version = Some(target);
            return Ok(Self::splits(files));
        };
        // The versions after `at`, one with appends at a time.
        while at < target {
            at += 1;
            let files = self.appended(at).await?;
            self.state.version = Some(at);
            if !files.is_empty() {
                return Ok(Self::splits(files));
            }
        }
        Ok(self.caught_up())
    }

    fn snapshot(&self) -> State {
        serde_json::to_value(&self.state).expect("serializable")
    }
}
