//! `IcebergSource`: an Iceberg table as a source, whole or as the data appended after a snapshot.
//!
//! The read ([`TableRead`]: snapshot, `since_version`, continuous) and the walk over versions
//! ([`VersionEnumerator`]) are shared with the other table sources. An Iceberg version is a
//! snapshot id; the walk follows the current snapshot's parent chain, so the snapshots after one
//! are its descendants, oldest first. `0` stands for the empty table before the first snapshot:
//! `since_version = 0` reads every append one snapshot at a time.
//!
//! ```text
//!  snapshot S (whole)   every live data file of S's data manifests
//!  appended by S        the entries S's manifests mark ADDED by S itself (append snapshots)
//!  each data file       one split; its reader's position is the rows it returned
//! ```
//!
//! This is how one pipeline's output feeds another: the second tails the first's table and sees
//! each committed row once. Only appends flow on, as with Spark's `skipChangeCommits`: a
//! `replace` snapshot (compaction) rewrites rows already read and is skipped; an `overwrite` or
//! `delete` snapshot is skipped with a warning, as the files it writes hold rows read before
//! (copy-on-write) and the rows it removes cannot be retracted downstream. A whole read of a
//! snapshot with row-level delete files is refused with a clear error, as its data files alone
//! would return deleted rows.
//!
//! Columns come from the table's current schema (projected with `columns`) and are matched to a
//! data file's columns by name; files written before a column was added read it as null. Data
//! files are read with Alluvium's stores (the `AWS_*` settings), like the sink's.

use std::sync::{Arc, Mutex};

use alluvium_core::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use alluvium_core::error::redact;
use alluvium_core::sources::{rows_done, TableRead, TableVersions, VersionEnumerator};
use alluvium_core::store::ObjectStores;
use alluvium_core::types::lake::from_lake_schema;
use alluvium_core::{Error, Result, Source, Split, SplitEnumerator, SplitReader, State};
use alluvium_parquet::read::DataFileReader;
use async_trait::async_trait;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataContentType, ManifestContentType, ManifestStatus, Operation, SnapshotRef};
use iceberg::table::Table;
use serde::{Deserialize, Serialize};

use crate::{CatalogConnector, CatalogTable};

/// Reads an Iceberg table. See the [module docs](self).
#[derive(Clone)]
pub struct IcebergSource {
    /// `read.table` is `namespace.table`.
    read: TableRead,
    table: CatalogTable,
    stores: ObjectStores,
}

impl std::fmt::Debug for IcebergSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IcebergSource({})", self.table.what())
    }
}

impl IcebergSource {
    /// Reads the table `read.table` (`namespace.table`) of the catalog `catalog` opens.
    pub fn new(read: TableRead, catalog: Arc<dyn CatalogConnector>) -> Self {
        let table = CatalogTable { name: read.table.clone(), catalog };
        Self { read, table, stores: ObjectStores::default() }
    }

    /// The table as the catalog has it now (its schema learned); `None` when there is none.
    async fn load(&self) -> Result<Option<Table>> {
        let catalog = self.table.catalog.connect().await?;
        let Some(table) = self.table.load(catalog.as_ref()).await? else { return Ok(None) };
        if !self.read.knows_schema() {
            let arrow = schema_to_arrow_schema(table.metadata().current_schema()).map_err(|e| self.table.err("reading", e))?;
            self.read.learn_schema(from_lake_schema(&without_field_ids(&arrow)), &self.table.what())?;
        }
        Ok(Some(table))
    }
}

/// The schema without the `PARQUET:field_id` metadata Iceberg's Arrow schemas carry: ids are the
/// table's business, and the rows read may go to a table with ids of its own.
fn without_field_ids(schema: &Schema) -> Schema {
    fn field(f: &FieldRef) -> FieldRef {
        let mut md = f.metadata().clone();
        md.remove(PARQUET_FIELD_ID);
        let data_type = match f.data_type() {
            DataType::Struct(children) => DataType::Struct(children.iter().map(field).collect()),
            DataType::List(item) => DataType::List(field(item)),
            DataType::LargeList(item) => DataType::LargeList(field(item)),
            DataType::FixedSizeList(item, n) => DataType::FixedSizeList(field(item), *n),
            DataType::Map(entries, sorted) => DataType::Map(field(entries), *sorted),
            other => other.clone(),
        };
        Arc::new(Field::new(f.name(), data_type, f.is_nullable()).with_metadata(md))
    }
    Schema::new_with_metadata(schema.fields().iter().map(field).collect::<Vec<_>>(), schema.metadata().clone())
}

/// The Arrow field-metadata key of a Parquet field id.
const PARQUET_FIELD_ID: &str = "PARQUET:field_id";

/// A data file to read: its full URI, size and the snapshot that listed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DataFile {
    uri: String,
    size: u64,
    snapshot: i64,
}

#[async_trait]
impl Source for IcebergSource {
    fn name(&self) -> String {
        "iceberg".into()
    }

    /// See [`TableRead::schema`].
    fn schema(&self) -> SchemaRef {
        self.read.schema()
    }

    fn validate(&self) -> Result<()> {
        self.table.ident().map(|_| ())
    }

    async fn enumerator(&self, restored: Option<State>) -> Result<Box<dyn SplitEnumerator>> {
        let versions = Versions { source: self.clone(), table: Mutex::new(None) };
        Ok(Box::new(VersionEnumerator::new(versions, &self.read, restored)?))
    }

    async fn open(&self, split: &Split, position: Option<&State>) -> Result<Box<dyn SplitReader>> {
        let file: DataFile = serde_json::from_value(split.payload.clone())
            .map_err(|e| Error::checkpoint(format!("iceberg source: split `{}` is malformed: {e}", split.id)))?;
        if !self.read.knows_schema() {
            self.load().await?;
        }
        let (store, path) = self.stores.resolve(&file.uri)?;
        let what = format!("{} file `{}` (snapshot {})", self.table.what(), redact(&file.uri), file.snapshot);
        let reader =
            DataFileReader::open(store, path, Some(file.size), self.schema(), rows_done(position), self.read.batch_size, what)
                .await?;
        Ok(Box::new(reader))
    }
}

/// What the snapshots of the table hold. The table is loaded once per look for new snapshots
/// ([`TableVersions::latest`]) and kept for the walk that follows.
struct Versions {
    source: IcebergSource,
    table: Mutex<Option<Table>>,
}

/// A snapshot id as a version (ids are positive; `0` is before the first snapshot).
fn version(id: i64) -> Result<u64> {
    u64::try_from(id).map_err(|_| Error::data(format!("iceberg snapshot id {id} is negative; the table's metadata is invalid")))
}

impl Versions {
    async fn table(&self) -> Result<Table> {
        if let Some(t) = self.table.lock().expect("table").clone() {
            return Ok(t);
        }
        let t = self.source.load().await?.ok_or_else(|| Error::config(format!("{} is gone", self.what())))?;
        *self.table.lock().expect("table") = Some(t.clone());
        Ok(t)
    }

    fn snapshot_of(&self, table: &Table, v: u64) -> Result<SnapshotRef> {
        table.metadata().snapshot_by_id(v as i64).cloned().ok_or_else(|| {
            Error::config(format!(
                "{} has no snapshot {v} (expired, or never there); start from a snapshot (drop `since_version`) or a \
                 newer snapshot id",
                self.what()
            ))
        })
    }

    /// Splits for the data files of `snapshot`: its live ones, or (`added_only`) those it added.
    async fn files(&self, table: &Table, snapshot: &SnapshotRef, added_only: bool) -> Result<Vec<Split>> {
        let id = snapshot.snapshot_id();
        let err = |e| self.source.table.err("reading the manifests of", e);
        let list = table.manifest_list_reader(snapshot).load().await.map_err(err)?;
        let mut files = Vec::new();
        for m in list.entries() {
            if added_only && (m.added_snapshot_id != id || !m.has_added_files()) {
                continue;
            }
            if m.content == ManifestContentType::Deletes {
                if added_only {
                    continue;
                }
                return Err(Error::config(format!(
                    "{} cannot be read whole by the iceberg source: snapshot {id} has row-level delete files \
                     (merge-on-read); compact the table first, or read the appends of later snapshots with \
                     `since_version`",
                    self.what()
                )));
            }
            let manifest = m.load_manifest(table.file_io()).await.map_err(err)?;
            for e in manifest.entries() {
                let wanted =
                    if added_only { e.status() == ManifestStatus::Added && e.snapshot_id() == Some(id) } else { e.is_alive() };
                if wanted && e.content_type() == DataContentType::Data {
                    let file = DataFile { uri: e.file_path().to_string(), size: e.file_size_in_bytes(), snapshot: id };
                    let split_id = format!("s{id}/{}", file.uri.rsplit('/').next().unwrap_or_default());
                    files.push(Split { id: split_id, payload: serde_json::to_value(file).expect("serializable") });
                }
            }
        }
        Ok(files)
    }
}

#[async_trait]
impl TableVersions for Versions {
    fn what(&self) -> String {
        self.source.table.what()
    }

    /// The current snapshot (`0` for a table without one).
    async fn latest(&self) -> Result<Option<u64>> {
        let table = self.source.load().await?;
        let latest = match &table {
            Some(t) => Some(t.metadata().current_snapshot_id().map_or(Ok(0), version)?),
            None => None,
        };
        *self.table.lock().expect("table") = table;
        Ok(latest)
    }

    async fn snapshot(&self, v: u64) -> Result<Vec<Split>> {
        if v == 0 {
            return Ok(Vec::new());
        }
        let table = self.table().await?;
        let snapshot = self.snapshot_of(&table, v)?;
        self.files(&table, &snapshot, false).await
    }

    async fn appended(&self, v: u64) -> Result<Vec<Split>> {
        let table = self.table().await?;
        let snapshot = self.snapshot_of(&table, v)?;
        match snapshot.summary().operation {
            Operation::Append => {}
            // Rewritten rows (compaction): read already.
            Operation::Replace => return Ok(Vec::new()),
            Operation::Overwrite | Operation::Delete => {
                tracing::warn!(
                    table = %self.what(),
                    snapshot = v,
                    "skipping the snapshot: it changes or removes rows, and the iceberg source passes on appends only"
                );
                return Ok(Vec::new());
            }
        }
        self.files(&table, &snapshot, true).await
    }

    /// The child of `v` on the current snapshot's parent chain (`0`: the chain's first snapshot).
    async fn after(&self, v: u64, target: u64) -> Result<Option<u64>> {
        if v == target {
            return Ok(None);
        }
        let table = self.table().await?;
        let md = table.metadata();
        let mut at = target as i64;
        while let Some(s) = md.snapshot_by_id(at) {
            match s.parent_snapshot_id() {
                Some(parent) if parent == v as i64 => return Ok(Some(version(at)?)),
                None if v == 0 => return Ok(Some(version(at)?)),
                Some(parent) => at = parent,
                None => break,
            }
        }
        Err(Error::config(format!(
            "{}: snapshot {v} is not an ancestor of snapshot {target}, the one to read up to (the table was rolled back, \
             or its history expired); start from a snapshot (drop `since_version`) or an ancestor's id",
            self.what()
        )))
    }
}
