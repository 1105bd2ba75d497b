//! The exactly-once Lance sink.
//!
//! ```text
//!  write      ──▶ Lance data files, streamed by an uncommitted insert (invisible: in no manifest)
//!  prepare(C) ──▶ Committable { fragments, uuid, version seen }   (stored in region manifest C)
//!  commit(C)  ──▶ one Lance transaction: Append(fragments),
//!                 transaction properties alluvium.sink-key = key, alluvium.checkpoint = C
//! ```
//!
//! **Idempotency.** Lance has no server-side dedup: re-submitting an Append after it landed would
//! rebase and append the rows again. So before every commit (and after every failed one) the sink
//! reads the transactions committed since the checkpoint was prepared and looks for its own key and
//! checkpoint in their properties: found means done. The properties are set on the `Transaction`
//! itself (Lance 11 ignores `CommitBuilder::with_transaction_properties`).
//!
//! **Concurrency.** Appends from regions and pipelines rebase onto each other (Lance's conflict
//! resolver accepts concurrent appends); manifests are written put-if-absent on local disk and S3.
//!
//! **Schema.** Lance stores every Arrow type as it is: embeddings stay `FixedSizeList<Float32, D>`
//! (what Lance's vector indexes need) and extension metadata is kept. New nullable columns are
//! added to an existing dataset (all null for old rows); other changes are errors naming the column.
//!
//! **Orphans.** Lance names data files itself, so files of failed attempts are left to Lance's own
//! `cleanup_old_versions`, which deletes unreferenced files older than 7 days.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use alluvium_core::arrow::datatypes::{Schema, SchemaRef};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::error::redact;
use alluvium_core::sink::{CommitInfo, TableInfo};
use alluvium_core::types::lake::{diff_schema, to_lake};
use alluvium_core::{Committable, Error, Result, Sink, SinkContext, SinkWriter};
use async_trait::async_trait;
use futures::StreamExt;
use lance::dataset::transaction::{Operation, TransactionBuilder};
use lance::dataset::{CommitBuilder, InsertBuilder, WriteMode, WriteParams};
use lance::deps::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use lance::table::format::Fragment;
use lance::Dataset;
use serde::{Deserialize, Serialize};

mod source;
pub use source::LanceSource;

/// The transaction-property key naming the region that committed a version.
pub const PROPERTY_SINK_KEY: &str = "alluvium.sink-key";
/// The transaction-property key holding the checkpoint a version committed.
pub const PROPERTY_CHECKPOINT: &str = "alluvium.checkpoint";

/// Settings of a [`LanceSink`].
#[derive(Debug, Clone)]
pub struct LanceSinkConfig {
    /// The dataset: a local directory or a URL (`s3://bucket/images.lance`).
    pub table: String,
    /// Start a new data file after this many rows (default 1 Mi rows).
    pub max_rows_per_file: usize,
}

impl LanceSinkConfig {
    /// Defaults for `table`.
    pub fn new(table: impl Into<String>) -> Self {
        Self { table: table.into(), max_rows_per_file: 1 << 20 }
    }
}

/// Writes a Lance dataset exactly once. See the [module docs](self).
#[derive(Clone)]
pub struct LanceSink {
    config: Arc<LanceSinkConfig>,
}

impl std::fmt::Debug for LanceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LanceSink({})", redact(&self.config.table))
    }
}

/// A committable's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LanceFiles {
    /// The dataset version the writer saw before writing: a commit of this checkpoint can only be
    /// in a later version.
    seen_version: u64,
    uuid: String,
    fragments: Vec<Fragment>,
}

/// Lance appends the Rust source location to its messages (`…, /…/lance-file-11.0.0/src/writer/
/// structural.rs:255:9`): useful to Lance's developers, noise to a user.
fn without_location(message: &str) -> &str {
    match message.rsplit_once(", ") {
        Some((head, tail)) if tail.contains(".rs:") && !tail.contains(' ') => head,
        _ => message,
    }
}

fn files_of(c: &Committable) -> Result<LanceFiles> {
    serde_json::from_value(c.payload.clone())
        .map_err(|e| Error::checkpoint(format!("a lance sink committable in the checkpoint is malformed: {e}")))
}

/// Lance storage options for `uri` from the same `AWS_*` variables as every other Alluvium location.
fn storage_options(uri: &str) -> HashMap<String, String> {
    let mut o = HashMap::new();
    if uri.starts_with("s3://") || uri.starts_with("s3a://") {
        for (env, key) in [
            ("AWS_ENDPOINT", "aws_endpoint"),
            ("AWS_ENDPOINT_URL", "aws_endpoint"),
            ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
            ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
            ("AWS_SESSION_TOKEN", "aws_session_token"),
            ("AWS_REGION", "aws_region"),
            ("AWS_ALLOW_HTTP", "allow_http"),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "aws_virtual_hosted_style_request"),
        ] {
            if let Ok(v) = std::env::var(env) {
                o.insert(key.to_string(), v);
            }
        }
    }
    o
}

/// The dataset URI of `table`: local paths made absolute (Lance resolves relative paths itself,
/// but an absolute one keeps messages and restarts unambiguous).
fn dataset_uri(table: &str) -> Result<String> {
    let t = table.trim();
    if t.is_empty() {
        return Err(Error::config("`table` is empty; set it to a directory or an s3:// URL"));
    }
    if let Some(dir) = alluvium_core::store::Location::local_dir(t) {
        let abs =
            if dir.is_absolute() { dir } else { std::env::current_dir().map_err(|e| Error::config(e.to_string()))?.join(dir) };
        return Ok(abs.to_string_lossy().into_owned());
    }
    Ok(t.to_string())
}

impl LanceSink {
    /// A sink for the dataset in `config`.
    pub fn new(config: LanceSinkConfig) -> Self {
        Self { config: Arc::new(config) }
    }

    fn uri(&self) -> Result<String> {
        dataset_uri(&self.config.table).map_err(|e| e.context("lance sink"))
    }

    fn what(&self) -> String {
        format!("Lance dataset `{}`", redact(&self.config.table))
    }

    fn err(&self, doing: &str, e: lance::Error) -> Error {
        let text = e.to_string();
        let message = format!("{doing} {}: {}", self.what(), redact(without_location(&text)));
        if alluvium_core::error::is_misconfigured_path(&text) {
            return Error::config(format!("{message}; check the sink's `table` path and its permissions"));
        }
        Error::external(message).with_retryable(true)
    }

    async fn open(&self) -> Result<Option<Dataset>> {
        let uri = self.uri()?;
        match lance::dataset::builder::DatasetBuilder::from_uri(&uri).with_storage_options(storage_options(&uri)).load().await {
            Ok(ds) => Ok(Some(ds)),
            Err(lance::Error::DatasetNotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("opening", e)),
        }
    }

    fn params(&self, mode: WriteMode) -> Result<WriteParams> {
        let uri = self.uri()?;
        let store_params = lance::io::ObjectStoreParams {
            storage_options_accessor: Some(Arc::new(lance::io::StorageOptionsAccessor::with_static_options(storage_options(
                &uri,
            )))),
            ..Default::default()
        };
        Ok(WriteParams {
            mode,
            max_rows_per_file: self.config.max_rows_per_file,
            skip_auto_cleanup: true,
            store_params: Some(store_params),
            ..Default::default()
        })
    }

    /// Opens the dataset, creating it (empty) or adding nullable columns to fit `schema`.
    async fn ensure(&self, schema: &SchemaRef) -> Result<Dataset> {
        let ds = match self.open().await? {
            Some(ds) => ds,
            None => {
                let uri = self.uri()?;
                let empty = alluvium_core::arrow::record_batch::RecordBatchIterator::new(std::iter::empty(), schema.clone());
                match Dataset::write(empty, uri.as_str(), Some(self.params(WriteMode::Create)?)).await {
                    Ok(ds) => {
                        tracing::info!(table = %self.what(), "created the dataset");
                        ds
                    }
                    // Created concurrently by another region or pipeline.
                    Err(e) => self.open().await?.ok_or_else(|| self.err("creating", e))?,
                }
            }
        };
        let current: Schema = ds.schema().into();
        let diff = diff_schema(&current, schema, &self.what())?;
        if diff.added.is_empty() {
            return Ok(ds);
        }
        let mut ds = ds;
        let names: Vec<&str> = diff.added.iter().map(|f| f.name().as_str()).collect();
        let added = Arc::new(Schema::new(diff.added.clone()));
        match ds.add_columns(lance::dataset::NewColumnTransform::AllNulls(added), None, None).await {
            Ok(()) => tracing::info!(table = %self.what(), columns = ?names, "added nullable columns"),
            // Added concurrently: the reopened dataset must fit now.
            Err(e) => {
                ds = self.open().await?.ok_or_else(|| Error::external(format!("{} vanished", self.what())))?;
                let current: Schema = ds.schema().into();
                if !diff_schema(&current, schema, &self.what())?.added.is_empty() {
                    return Err(self.err("adding columns to", e));
                }
            }
        }
        Ok(ds)
    }

    /// The highest checkpoint of `key` committed in a version after `since`.
    async fn committed(&self, ds: &Dataset, key: &str, since: u64) -> Result<Option<u64>> {
        Ok(self.committed_keys(ds, since).await?.remove(key))
    }

    /// The highest checkpoint of every key committed in a version after `since` (the versions'
    /// transactions are read a few at a time).
    async fn committed_keys(&self, ds: &Dataset, since: u64) -> Result<BTreeMap<String, u64>> {
        use futures::{StreamExt, TryStreamExt};
        let latest = ds.latest_version_id().await.map_err(|e| self.err("reading", e))?;
        let transactions: Vec<_> = futures::stream::iter((since + 1)..=latest)
            .map(|v| ds.read_transaction_by_version(v))
            .buffered(4)
            .try_collect()
            .await
            .map_err(|e| self.err("reading", e))?;
        let mut best = BTreeMap::new();
        for p in transactions.iter().flatten().filter_map(|t| t.transaction_properties.as_ref()) {
            let key = p.get(PROPERTY_SINK_KEY);
            let cp = p.get(PROPERTY_CHECKPOINT).and_then(|c| c.parse::<u64>().ok());
            if let (Some(key), Some(cp)) = (key, cp) {
                let e = best.entry(key.clone()).or_insert(cp);
                *e = (*e).max(cp);
            }
        }
        Ok(best)
    }
}

#[async_trait]
impl Sink for LanceSink {
    fn name(&self) -> String {
        "lance".into()
    }

    fn validate(&self) -> Result<()> {
        self.uri().map(|_| ())
    }

    fn location(&self) -> Option<String> {
        Some(self.config.table.clone())
    }

    async fn inspect(&self) -> Result<TableInfo> {
        let mut info = TableInfo { format: "lance".into(), table: self.what(), ..Default::default() };
        let Some(ds) = self.open().await? else { return Ok(info) };
        info.exists = true;
        info.schema = Some(Arc::new(Schema::from(ds.schema())));
        info.version = Some(ds.version().version as i64);
        info.rows = Some(ds.count_rows(None).await.map_err(|e| self.err("counting the rows of", e))? as u64);
        info.files = Some(ds.get_fragments().len() as u64);
        let mut versions = ds.versions().await.map_err(|e| self.err("listing the versions of", e))?;
        versions.sort_by_key(|v| std::cmp::Reverse(v.version));
        for v in versions.into_iter().take(TableInfo::COMMITS) {
            let t = ds.read_transaction_by_version(v.version).await.map_err(|e| self.err("reading", e))?;
            let props = t.as_ref().and_then(|t| t.transaction_properties.as_ref());
            let rows_added = t.as_ref().and_then(|t| match &t.operation {
                Operation::Append { fragments } => fragments.iter().map(|f| f.physical_rows.map(|n| n as u64)).sum(),
                _ => None,
            });
            info.commits.push(CommitInfo {
                version: v.version as i64,
                timestamp_ms: Some(v.timestamp.timestamp_millis()),
                operation: t.as_ref().map_or("unknown", |t| t.operation.name()).to_string(),
                rows_added,
                key: props
                    .and_then(|p| p.get(PROPERTY_SINK_KEY).cloned().zip(p.get(PROPERTY_CHECKPOINT).and_then(|c| c.parse().ok()))),
            });
        }
        Ok(info)
    }

    async fn committed_checkpoints(&self, keys: &[String]) -> Result<Option<BTreeMap<String, u64>>> {
        let Some(ds) = self.open().await? else { return Ok(Some(BTreeMap::new())) };
        let mut all = self.committed_keys(&ds, 0).await?;
        Ok(Some(keys.iter().filter_map(|k| Some((k.clone(), all.remove(k)?))).collect()))
    }

    async fn writer(&self, _ctx: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(LanceWriter { sink: self.clone(), open: None }))
    }

    async fn commit(&self, ctx: &SinkContext, checkpoint: u64, committables: &[Committable]) -> Result<()> {
        let files: Vec<LanceFiles> = committables.iter().map(files_of).collect::<Result<_>>()?;
        let fragments: Vec<Fragment> = files.iter().flat_map(|f| f.fragments.iter().cloned()).collect();
        if fragments.is_empty() {
            return Ok(());
        }
        let since = files.iter().map(|f| f.seen_version).min().unwrap_or(0);
        let key = ctx.sink_key();
        let ds = self.open().await?.ok_or_else(|| {
            Error::checkpoint(format!(
                "{} is gone, but checkpoint {checkpoint} of region {} has files to commit to it; it was deleted outside \
                 Alluvium",
                self.what(),
                ctx.region
            ))
        })?;
        if self.committed(&ds, &key, since).await?.is_some_and(|c| c >= checkpoint) {
            tracing::debug!(region = ctx.region, checkpoint, "already committed to the lance dataset");
            return Ok(());
        }
        let props: HashMap<String, String> =
            [(PROPERTY_SINK_KEY.to_string(), key.clone()), (PROPERTY_CHECKPOINT.to_string(), checkpoint.to_string())].into();
        let txn = TransactionBuilder::new(ds.version().version, Operation::Append { fragments })
            .uuid(files[0].uuid.clone())
            .transaction_properties(Some(Arc::new(props)))
            .build();
        let ds = Arc::new(ds);
        let outcome = CommitBuilder::new(ds.clone())
            .with_max_retries(100)
            .with_skip_auto_cleanup(true)
            .with_store_params(self.params(WriteMode::Append)?.store_params.unwrap_or_default())
            .execute(txn)
            .await;
        match outcome {
            Ok(done) => {
                tracing::debug!(
                    region = ctx.region,
                    checkpoint,
                    version = done.version().version,
                    "committed to the lance dataset"
                );
                Ok(())
            }
            Err(e) => {
                let error = self.err(&format!("committing region {} checkpoint {checkpoint} to", ctx.region), e);
                // The outcome may be unknown: the dataset tells.
                if let Some(ds) = self.open().await? {
                    if self.committed(&ds, &key, since).await?.is_some_and(|c| c >= checkpoint) {
                        tracing::info!(region = ctx.region, checkpoint, "the commit landed despite an error: {error}");
                        return Ok(());
                    }
                }
                Err(error)
            }
        }
    }
}

type Batches = tokio::sync::mpsc::Sender<std::result::Result<RecordBatch, lance::deps::datafusion::error::DataFusionError>>;

/// An uncommitted insert in progress: batches go through a small channel (two batches) into
/// Lance's writer, which streams them to data files.
struct OpenInsert {
    schema: SchemaRef,
    target: SchemaRef,
    seen_version: u64,
    tx: Batches,
    task: tokio::task::JoinHandle<lance::Result<lance::dataset::transaction::Transaction>>,
}

struct LanceWriter {
    sink: LanceSink,
    open: Option<OpenInsert>,
}

impl LanceWriter {
    async fn start(&mut self, schema: SchemaRef) -> Result<()> {
        let ds = Arc::new(self.sink.ensure(&schema).await?);
        let target: SchemaRef = Arc::new(Schema::from(ds.schema()));
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) }).boxed();
        let params = self.sink.params(WriteMode::Append)?;
        let seen_version = ds.version().version;
        let source = Box::pin(RecordBatchStreamAdapter::new(target.clone(), stream));
        let task = tokio::spawn(async move {
            InsertBuilder::new(ds)
                .with_params(&params)
                .execute_uncommitted_stream(source as lance::deps::datafusion::execution::SendableRecordBatchStream)
                .await
        });
        self.open = Some(OpenInsert { schema, target, seen_version, tx, task });
        Ok(())
    }

    /// Ends the insert and returns its fragments.
    async fn finish(&mut self) -> Result<Option<LanceFiles>> {
        let Some(open) = self.open.take() else { return Ok(None) };
        drop(open.tx);
        let txn = open
            .task
            .await
            .map_err(|e| Error::internal(format!("the lance writer task failed: {e}")))?
            .map_err(|e| self.sink.err("writing", e))?;
        let Operation::Append { fragments } = txn.operation else {
            return Err(Error::internal(format!("lance returned a {} where an append was expected", txn.operation)));
        };
        Ok(Some(LanceFiles { seen_version: open.seen_version, uuid: txn.uuid, fragments }))
    }
}

#[async_trait]
impl SinkWriter for LanceWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.open.as_ref().is_some_and(|o| o.schema != batch.schema()) {
            return Err(Error::internal(
                "the lance sink got batches of two schemas between checkpoints; the pipeline must produce one schema",
            ));
        }
        if self.open.is_none() {
            self.start(batch.schema()).await?;
        }
        let open = self.open.as_ref().expect("started above");
        let batch = to_lake(&batch, &open.target).map_err(|e| e.context(self.sink.what()))?;
        if open.tx.send(Ok(batch)).await.is_err() {
            // The writer stopped: its error says why.
            let e = self.finish().await.err();
            return Err(e.unwrap_or_else(|| Error::internal("the lance writer stopped early")));
        }
        Ok(())
    }

    async fn prepare(&mut self, _checkpoint: u64) -> Result<Option<Committable>> {
        let Some(files) = self.finish().await? else { return Ok(None) };
        if files.fragments.is_empty() {
            return Ok(None);
        }
        let rows = files.fragments.iter().map(|f| f.physical_rows.unwrap_or(0) as u64).sum();
        let bytes =
            files.fragments.iter().flat_map(|f| f.files.iter()).map(|d| d.file_size_bytes.get().map_or(0, |n| n.get())).sum();
        let payload = serde_json::to_value(files).expect("serializable");
        Ok(Some(Committable { rows, bytes, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::without_location;

    #[test]
    fn lance_source_locations_are_cut_from_messages() {
        let m = "LanceError(IO): No space left on device (os error 28), /root/.cargo/registry/src/x/lance-file-11.0.0/src/writer/structural.rs:255:9";
        assert_eq!(without_location(m), "LanceError(IO): No space left on device (os error 28)");
        assert_eq!(without_location("Not found: a, b"), "Not found: a, b");
    }
}
