//! `LanceSource`: a Lance dataset as a source, whole or as the data appended after a version.
//!
//! ```text
//!  snapshot        every fragment of the latest version (or of the version at the start)
//!  since_version   the fragments each `Append` after it added, version by version
//!  continuous      after that, poll for new versions and emit each one's appends once (tailing)
//! ```
//!
//! Each fragment is a split, read as of the version that added it (so later deletions do not
//! shift the rows under a resumed reader); a reader's position is the rows it returned. The
//! enumerator checkpoints the last version it handed out, so a restart neither skips nor repeats
//! a version. The kind of each version comes from its transaction: only `Append`s flow on; a
//! compaction (`Rewrite`) moves rows already read and is skipped; deletes, updates and overwrites
//! are not retracted downstream (they are logged as a warning).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use alluvium_core::arrow::datatypes::{Schema, SchemaRef};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::{Discovery, Error, Result, Source, Split, SplitEnumerator, SplitReader, State};
use async_trait::async_trait;
use futures::StreamExt;
use lance::dataset::scanner::DatasetRecordBatchStream;
use lance::dataset::transaction::Operation;
use lance::Dataset;
use serde::{Deserialize, Serialize};

use crate::{storage_options, without_location};

/// Reads a Lance dataset. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct LanceSource {
    table: String,
    columns: Option<Vec<String>>,
    since: Option<u64>,
    poll: Option<Duration>,
    batch_size: usize,
    /// The projected schema, known once the dataset was opened.
    schema: Arc<OnceLock<SchemaRef>>,
}

impl LanceSource {
    /// Every row of the dataset at `table` (a directory or URL), as of its latest version.
    pub fn new(table: impl Into<String>) -> Self {
        Self { table: table.into(), columns: None, since: None, poll: None, batch_size: 8192, schema: Default::default() }
    }
    /// Only these columns, in this order.
    pub fn columns(mut self, columns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }
    /// Only the rows appended by the versions after `version` (not the snapshot).
    pub fn since_version(mut self, version: u64) -> Self {
        self.since = Some(version);
        self
    }
    /// Never ends: after the snapshot (or the versions after `since_version`), polls for new
    /// versions every `poll` and emits each one's appends once.
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
        format!("Lance dataset `{}`", alluvium_core::error::redact(&self.table))
    }

    fn err(&self, doing: &str, e: lance::Error) -> Error {
        Error::external(format!("{doing} {}: {}", self.what(), alluvium_core::error::redact(without_location(&e.to_string()))))
            .with_retryable(true)
    }

    fn uri(&self) -> Result<String> {
        crate::dataset_uri(&self.table).map_err(|e| e.context("lance source `table`"))
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
        if self.schema.get().is_none() {
            let full = alluvium_core::types::lake::from_lake_schema(&Schema::from(ds.schema()));
            let schema = match &self.columns {
                None => full,
                Some(cols) => Arc::new(Schema::new(
                    cols.iter()
                        .map(|c| {
                            full.field_with_name(c).cloned().map_err(|_| {
                                let names: Vec<&str> = full.fields().iter().map(|f| f.name().as_str()).collect();
                                Error::config(format!(
                                    "lance source `columns`: {} has no column `{c}`; it has {}",
                                    self.what(),
                                    names.join(", ")
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>>>()?,
                )),
            };
            let _ = self.schema.set(schema);
        }
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

/// Durable discovery state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct EnumState {
    /// The last version whose fragments were handed out.
    version: Option<u64>,
    /// A bounded read stops after this version (the latest when it started).
    until: Option<u64>,
}

#[async_trait]
impl Source for LanceSource {
    fn name(&self) -> String {
        "lance".into()
    }

    /// The projected schema once the dataset has been opened (by the enumerator or a reader);
    /// an empty schema before.
    fn schema(&self) -> SchemaRef {
        self.schema.get().cloned().unwrap_or_else(|| Arc::new(Schema::empty()))
    }

    fn validate(&self) -> Result<()> {
        self.uri().map(|_| ())
    }

    async fn enumerator(&self, restored: Option<State>) -> Result<Box<dyn SplitEnumerator>> {
        let state = match restored {
            Some(s) => serde_json::from_value(s)
                .map_err(|e| Error::checkpoint(format!("lance source: the checkpointed enumerator state is malformed: {e}")))?,
            None => EnumState::default(),
        };
        Ok(Box::new(Enumerator { source: self.clone(), state }))
    }

    async fn open(&self, split: &Split, position: Option<&State>) -> Result<Box<dyn SplitReader>> {
        let part: FragmentSplit = serde_json::from_value(split.payload.clone())
            .map_err(|e| Error::checkpoint(format!("lance source: split `{}` is malformed: {e}", split.id)))?;
        let latest = self.open().await?.ok_or_else(|| Error::config(format!("{} is gone", self.what())))?;
        let ds = self.at(&latest, part.version).await?;
        let fragment = ds.get_fragment(part.fragment as usize).ok_or_else(|| {
            Error::checkpoint(format!("{}: version {} has no fragment {}", self.what(), part.version, part.fragment))
        })?;
        let done = position.and_then(|p| p.get("rows")?.as_u64()).unwrap_or(0);
        let names: Vec<String> = self.schema().fields().iter().map(|f| f.name().clone()).collect();
        let mut scan = fragment.scan();
        scan.project(&names)
            .and_then(|s| s.limit(None, (done > 0).then_some(done as i64)))
            .map_err(|e| self.err("scanning", e))?
            .batch_size(self.batch_size);
        let stream = scan.try_into_stream().await.map_err(|e| self.err("scanning", e))?;
        Ok(Box::new(Reader { stream, schema: self.schema(), done, source: self.clone() }))
    }
}

struct Enumerator {
    source: LanceSource,
    state: EnumState,
}

impl Enumerator {
    fn splits(version: u64, fragments: impl IntoIterator<Item = u64>) -> Discovery {
        Discovery::Splits(
            fragments
                .into_iter()
                .map(|fragment| Split {
                    id: format!("v{version}/f{fragment}"),
                    payload: serde_json::to_value(FragmentSplit { version, fragment }).expect("serializable"),
                })
                .collect(),
        )
    }

    /// The fragments version `v` appended (none for any other kind of version).
    async fn appended(&self, latest: &Dataset, v: u64) -> Result<Vec<u64>> {
        let src = &self.source;
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
                let before = if v > 1 { src.at(latest, v - 1).await?.manifest().max_fragment_id() } else { None };
                let after = src.at(latest, v).await?;
                Ok(after.fragments().iter().map(|f| f.id).filter(|id| before.is_none_or(|b| *id > b)).collect())
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

#[async_trait]
impl SplitEnumerator for Enumerator {
    async fn discover(&mut self) -> Result<Discovery> {
        let Some(latest) = self.source.open().await? else {
            return match self.source.poll {
                Some(poll) => Ok(Discovery::Idle(poll)),
                None => Err(Error::config(format!("there is no {}; check `table`", self.source.what()))),
            };
        };
        let newest = latest.version().version;
        if self.source.poll.is_none() && self.state.until.is_none() {
            self.state.until = Some(newest);
        }
        let target = self.state.until.unwrap_or(newest);
        let Some(mut at) = self.state.version.or(self.source.since) else {
            let ds = self.source.at(&latest, target).await?;
            let ids: Vec<u64> = ds.fragments().iter().map(|f| f.id).collect();
            self.state.version = Some(target);
            return Ok(Self::splits(target, ids));
        };
        while at < target {
            at += 1;
            let ids = self.appended(&latest, at).await?;
            self.state.version = Some(at);
            if !ids.is_empty() {
                return Ok(Self::splits(at, ids));
            }
        }
        Ok(match self.source.poll {
            Some(poll) => Discovery::Idle(poll),
            None => Discovery::Exhausted,
        })
    }

    fn snapshot(&self) -> State {
        serde_json::to_value(&self.state).expect("serializable")
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
        serde_json::json!({ "rows": self.done })
    }
}
