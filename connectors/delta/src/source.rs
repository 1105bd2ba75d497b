//! `DeltaSource`: a Delta table as a source, whole or as the data appended after a version.
//!
//! The read ([`TableRead`]: snapshot, `since_version`, continuous) and the walk over versions
//! ([`VersionEnumerator`]) are shared with the other table sources; a version's appends are the
//! files its log entry `add`s with `dataChange = true`.
//!
//! This is how one pipeline's output feeds another: the second tails the first's table and sees
//! each committed row once. Each data file is a split; its reader's position is the rows it
//! returned ([`alluvium_parquet::read`]), so a restored reader resumes inside the file.
//!
//! Only appends flow on, as with Spark's `skipChangeCommits`: a compaction (`dataChange = false`)
//! rewrites rows already read and is skipped; a version that deletes or updates rows (a `remove`
//! with `dataChange = true`) is skipped with a warning, as the files it adds hold rows read
//! before (copy-on-write) and the rows it removes cannot be retracted downstream. Partitioned tables, deletion vectors and column mapping are refused with a
//! clear error; the tables Alluvium writes use none of them. The columns come from the table's
//! schema (projected with `columns`); structs with the fields of an ObjectRef are ObjectRefs again.

use alluvium_core::arrow::datatypes::SchemaRef;
use alluvium_core::sources::{rows_done, TableRead, TableVersions, VersionEnumerator};
use alluvium_core::store::Location;
use alluvium_core::types::lake::from_lake_schema;
use alluvium_core::{Error, Result, Source, Split, SplitEnumerator, SplitReader, State};
use alluvium_parquet::read::DataFileReader;
use async_trait::async_trait;
use deltalake::DeltaTable;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

/// Reads a Delta table. How: the module docs of `source.rs`.
#[derive(Debug, Clone)]
pub struct DeltaSource {
    read: TableRead,
}

impl DeltaSource {
    /// Reads the table `read` names (a directory or URL).
    pub fn new(read: TableRead) -> Self {
        Self { read }
    }

    fn what(&self) -> String {
        format!("Delta table `{}`", alluvium_core::error::redact(&self.read.table))
    }

    fn location(&self) -> Result<Location> {
        Location::parse(&self.read.table).map_err(|e| e.context("delta source `table`"))
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
        self.read.learn_schema(full, &self.what())?;
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

#[async_trait]
impl Source for DeltaSource {
    fn name(&self) -> String {
        "delta".into()
    }

    /// See [`TableRead::schema`].
    fn schema(&self) -> SchemaRef {
        self.read.schema()
    }

    fn validate(&self) -> Result<()> {
        self.location().map(|_| ())
    }

    async fn enumerator(&self, restored: Option<State>) -> Result<Box<dyn SplitEnumerator>> {
        let versions = Versions { source: self.clone(), loc: self.location()? };
        Ok(Box::new(VersionEnumerator::new(versions, &self.read, restored)?))
    }

    async fn open(&self, split: &Split, position: Option<&State>) -> Result<Box<dyn SplitReader>> {
        let file: DataFile = serde_json::from_value(split.payload.clone())
            .map_err(|e| Error::checkpoint(format!("delta source: split `{}` is malformed: {e}", split.id)))?;
        let loc = self.location()?;
        if !self.read.knows_schema() {
            self.load(&loc).await?;
        }
        let what = format!("{} file `{}` (version {})", self.what(), file.path, file.version);
        let reader = DataFileReader::open(
            loc.store.clone(),
            loc.child(&file.path),
            Some(file.size),
            self.schema(),
            rows_done(position),
            self.read.batch_size,
            what,
        )
        .await?;
        Ok(Box::new(reader))
    }
}

/// What the versions of the table hold.
struct Versions {
    source: DeltaSource,
    loc: Location,
}

fn splits(files: Vec<DataFile>) -> Vec<Split> {
    files
        .into_iter()
        .map(|f| Split { id: format!("v{}/{}", f.version, f.path), payload: serde_json::to_value(f).expect("serializable") })
        .collect()
}

#[async_trait]
impl TableVersions for Versions {
    fn what(&self) -> String {
        self.source.what()
    }

    async fn latest(&self) -> Result<Option<u64>> {
        Ok(self.source.load(&self.loc).await?.map(|t| t.version().unwrap_or(0)))
    }

    async fn snapshot(&self, version: u64) -> Result<Vec<Split>> {
        let mut table = self.source.load(&self.loc).await?.ok_or_else(|| Error::config(format!("{} is gone", self.what())))?;
        if table.version() != Some(version) {
            table
                .load_version(version)
                .await
                .map_err(|e| Error::external(format!("loading version {version} of {}: {e}", self.what())))?;
        }
        let state = table.snapshot().map_err(|e| Error::external(format!("reading {}: {e}", self.what())))?;
        let files = state
            .log_data()
            .iter()
            .map(|f| DataFile { path: f.path().to_string(), size: f.size().max(0) as u64, version: version as i64 })
            .collect();
        Ok(splits(files))
    }

    /// The files version `v` added with new data, from its log entry.
    async fn appended(&self, v: u64) -> Result<Vec<Split>> {
        let path = self.loc.child(&format!("_delta_log/{v:020}.json"));
        let bytes = match self.loc.store.get(&path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::config(format!(
                    "{}: version {v} is no longer in the log (cleaned up); start from a snapshot (drop `since_version`) or a later version",
                    self.what()
                )))
            }
            Err(e) => return Err(Error::from(e).context(format!("reading version {v} of {}", self.what()))),
        };
        let mut files = Vec::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| Error::data(format!("{}: version {v} has a malformed log entry: {e}", self.what())))?;
            if let Some(add) = action.get("add").filter(|a| a["dataChange"].as_bool() != Some(false)) {
                let raw = add["path"].as_str().unwrap_or_default();
                let path = percent_encoding::percent_decode_str(raw).decode_utf8_lossy().to_string();
                files.push(DataFile { path, size: add["size"].as_u64().unwrap_or(0), version: v as i64 });
            } else if action.get("remove").is_some_and(|r| r["dataChange"].as_bool() != Some(false)) {
                tracing::warn!(
                    table = %self.what(),
                    version = v,
                    "skipping the version: it changes or removes rows, and the delta source passes on appends only"
                );
                return Ok(Vec::new());
            }
        }
        Ok(splits(files))
    }
}
