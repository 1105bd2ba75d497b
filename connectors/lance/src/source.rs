//! `LanceSource`: a Lance dataset as a source, whole or as the data appended after a version.
//!
//! The read ([`TableRead`]: snapshot, `since_version`, continuous) and the walk over versions
//! ([`VersionEnumerator`]) are shared with the other table sources.
//!
//! Each fragment is a split, read as of the version that added it (so later deletions do not
//! shift the rows under a resumed reader); a reader's position is the rows it returned. The kind
//! of each version comes from its transaction: only `Append`s flow on; a
//! compaction (`Rewrite`) moves rows already read and is skipped; deletes, updates and overwrites
//! are not retracted downstream (they are logged as a warning).

use alluvium_core::arrow::datatypes::{Schema, SchemaRef};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::sources::{rows_done, rows_position, TableRead, TableVersions, VersionEnumerator};
use alluvium_core::{Error, Result, Source, Split, SplitEnumerator, SplitReader, State};
use async_trait::async_trait;
use futures::StreamExt;
use lance::dataset::scanner::DatasetRecordBatchStream;
use lance::dataset::transaction::Operation;
use lance::Dataset;
use serde::{Deserialize, Serialize};

use crate::{storage_options, without_location};

/// Reads a Lance dataset. How: the module docs of `source.rs`.
#[derive(Debug, Clone)]
pub struct LanceSource {
    read: TableRead,
}

impl LanceSource {
    /// Reads the dataset `read` names (a directory or URL).
    pub fn new(read: TableRead) -> Self {
        Self { read }
    }

    fn what(&self) -> String {
        format!("Lance dataset `{}`", alluvium_core::error::redact(&self.read.table))
    }

    fn err(&self, doing: &str, e: lance::Error) -> Error {
        Error::external(format!("{doing} {}: {}", self.what(), alluvium_core::error::redact(without_location(&e.to_string()))))
            .with_retryable(true)
    }

    fn uri(&self) -> Result<String> {
        crate::dataset_uri(&self.read.table).map_err(|e| e.context("lance source `table`"))
    }

    /// The dataset at its latest version (`None`: there is none yet); sets the schema.
    async fn open(&self) -> Result<Option<Dataset>> {
        let uri = self.uri()?;
        let ds = match lance::dataset::builder::DatasetBuilder::from_uri(&uri)
            .with_storage_options(storage_options(&uri))
            .load()
            .await
        {
            Ok(ds) => ds,
            Err(lance::Error::DatasetNotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err("opening", e)),
        };
        self.read.learn_schema(alluvium_core::types::lake::from_lake_schema(&Schema::from(ds.schema())), &self.what())?;
        Ok(Some(ds))
    }

    async fn at(&self, ds: &Dataset, version: u64) -> Result<Dataset> {
        ds.checkout_version(version).await.map_err(|e| self.err(&format!("opening version {version} of"), e))
    }
}

/// A fragment to read, as of the version that added it (or the snapshot's).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FragmentSplit {
    version: u64,
    fragment: u64,
}

#[async_trait]
impl Source for LanceSource {
    fn name(&self) -> String {
        "lance".into()
    }

    /// See [`TableRead::schema`].
    fn schema(&self) -> SchemaRef {
        self.read.schema()
    }

    fn validate(&self) -> Result<()> {
        self.uri().map(|_| ())
    }

    async fn enumerator(&self, restored: Option<State>) -> Result<Box<dyn SplitEnumerator>> {
        Ok(Box::new(VersionEnumerator::new(Versions(self.clone()), &self.read, restored)?))
    }

    async fn open(&self, split: &Split, position: Option<&State>) -> Result<Box<dyn SplitReader>> {
        let part: FragmentSplit = serde_json::from_value(split.payload.clone())
            .map_err(|e| Error::checkpoint(format!("lance source: split `{}` is malformed: {e}", split.id)))?;
        let latest = self.open().await?.ok_or_else(|| Error::config(format!("{} is gone", self.what())))?;
        let ds = self.at(&latest, part.version).await?;
        let fragment = ds.get_fragment(part.fragment as usize).ok_or_else(|| {
            Error::checkpoint(format!("{}: version {} has no fragment {}", self.what(), part.version, part.fragment))
        })?;
        let done = rows_done(position);
        let names: Vec<String> = self.schema().fields().iter().map(|f| f.name().clone()).collect();
        let mut scan = fragment.scan();
        scan.project(&names)
            .and_then(|s| s.limit(None, (done > 0).then_some(done as i64)))
            .map_err(|e| self.err("scanning", e))?
            .batch_size(self.read.batch_size);
        let stream = scan.try_into_stream().await.map_err(|e| self.err("scanning", e))?;
        Ok(Box::new(Reader { stream, schema: self.schema(), done, source: self.clone() }))
    }
}

/// What the versions of the dataset hold.
struct Versions(LanceSource);

fn splits(version: u64, fragments: impl IntoIterator<Item = u64>) -> Vec<Split> {
    fragments
        .into_iter()
        .map(|fragment| Split {
            id: format!("v{version}/f{fragment}"),
            payload: serde_json::to_value(FragmentSplit { version, fragment }).expect("serializable"),
        })
        .collect()
}

impl Versions {
    async fn latest_dataset(&self) -> Result<Dataset> {
        self.0.open().await?.ok_or_else(|| Error::config(format!("{} is gone", self.0.what())))
    }
}

#[async_trait]
impl TableVersions for Versions {
    fn what(&self) -> String {
        self.0.what()
    }

    async fn latest(&self) -> Result<Option<u64>> {
        Ok(self.0.open().await?.map(|ds| ds.version().version))
    }

    async fn snapshot(&self, version: u64) -> Result<Vec<Split>> {
        let ds = self.0.at(&self.latest_dataset().await?, version).await?;
        Ok(splits(version, ds.fragments().iter().map(|f| f.id)))
    }

    /// The fragments version `v` appended (none for any other kind of version).
    async fn appended(&self, v: u64) -> Result<Vec<Split>> {
        let src = &self.0;
        let latest = self.latest_dataset().await?;
        let txn = latest.read_transaction_by_version(v).await.map_err(|e| src.err(&format!("reading version {v} of"), e))?;
        let Some(txn) = txn else {
            return Err(Error::external(format!(
                "{}: version {v} has no transaction file, so what it changed is unknown",
                src.what()
            )));
        };
        match txn.operation {
            Operation::Append { .. } => {
                // Lance numbers an append's fragments when it commits: those above the previous
                // version's highest id.
                let before = if v > 1 { src.at(&latest, v - 1).await?.manifest().max_fragment_id() } else { None };
                let after = src.at(&latest, v).await?;
                Ok(splits(v, after.fragments().iter().map(|f| f.id).filter(|id| before.is_none_or(|b| *id > b))))
            }
            Operation::Rewrite { .. }
            | Operation::CreateIndex { .. }
            | Operation::ReserveFragments { .. }
            | Operation::UpdateConfig { .. }
            | Operation::Project { .. } => Ok(Vec::new()),
            other => {
                tracing::warn!(dataset = %src.what(), version = v, operation = other.name(), "the version changes rows; the lance source passes on appends only");
                Ok(Vec::new())
            }
        }
    }
}

struct Reader {
    stream: DatasetRecordBatchStream,
    schema: SchemaRef,
    done: u64,
    source: LanceSource,
}

#[async_trait]
impl SplitReader for Reader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let Some(batch) = self.stream.next().await else { return Ok(None) };
        let batch = batch.map_err(|e| self.source.err("reading", e))?;
        let batch = alluvium_core::types::lake::to_lake(&batch, &self.schema)?;
        self.done += batch.num_rows() as u64;
        Ok(Some(batch))
    }

    fn position(&self) -> State {
        rows_position(self.done)
    }
}
