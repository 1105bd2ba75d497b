//! The exactly-once Delta Lake sink.
//!
//! ```text
//!  write      ──▶ TABLE/part-INSTANCE-rR-eE-WRITER-S.parquet   (streamed; invisible: not in the log yet)
//!  prepare(C) ──▶ Committable { files: [path, rows, bytes] }     (stored in region manifest C)
//!  commit(C)  ──▶ one Delta version: Add actions + txn(app_id = sink key, version = C)
//!  recover    ──▶ files of this region that are neither pending nor in the table, older than the
//!                 grace period, are deleted
//! ```
//!
//! **Idempotency.** The `txn` action (`appId` = [`SinkContext::sink_key`], `version` = checkpoint id)
//! is written in the same atomic log entry as the files, so after any crash the sink reads the
//! region's last committed checkpoint back from the table and skips what is already there. Region
//! checkpoint ids only grow, across restarts too, so `version` never goes backwards.
//!
//! **Unknown outcomes.** When a commit fails without a clear answer (a timeout, a lost response),
//! the sink reloads the table and reads the `txn` version again: committed means done, absent means
//! the error is returned and the runtime retries. Delta's log is itself a put-if-absent of
//! `_delta_log/N.json`, and its conflict checker rejects a second commit carrying our `appId`, so a
//! zombie commit of an earlier attempt can never land twice.
//!
//! **Concurrency.** Regions and pipelines append concurrently; Delta retries version conflicts
//! (appends never conflict with appends), up to `commit_retries` times.
//!
//! **Schema.** The table is created from the first batch's schema when absent, with the
//! multimodal mapping of [`alluvium_core::types::lake`] (embeddings as `array<float>`, ObjectRef as
//! a struct, unsigned integers widened). New nullable columns are added to an existing table;
//! any other difference is an error naming the table and the column.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use alluvium_core::arrow::datatypes::{Schema, SchemaRef};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::files::{delete_files, orphan_candidates, RollingWriter, WrittenFile};
use alluvium_core::sink::{CommitInfo, TableInfo};
use alluvium_core::store::Location;
use alluvium_core::types::lake::{diff_schema, lake_schema, to_lake, LakeTypes};
use alluvium_core::{Committable, Error, Result, Sink, SinkContext, SinkWriter};
use alluvium_parquet::ParquetFormat;
use async_trait::async_trait;
use deltalake::kernel::engine::arrow_conversion::{TryIntoArrow, TryIntoKernel};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use serde::{Deserialize, Serialize};

mod source;
pub use source::DeltaSource;

/// Settings of a [`DeltaSink`].
#[derive(Debug, Clone)]
pub struct DeltaSinkConfig {
    /// The table: a local directory or a URL (`s3://bucket/tables/images`).
    pub table: String,
    /// Roll to a new data file at this many bytes (default 128 MiB).
    pub target_file_bytes: u64,
    /// The Parquet encoding of data files.
    pub parquet: ParquetFormat,
    /// How many times a commit is retried on version conflicts with concurrent writers (default 100).
    pub commit_retries: usize,
    /// Files of failed attempts are deleted only when older than this (default 1 hour), so that a
    /// commit still in flight from a previous process never loses its files.
    pub orphan_grace: Duration,
    /// `delta.checkpointInterval` of a table this sink creates (default 10, Spark's default;
    /// delta-rs's is 100): a log checkpoint every N commits. Every commit re-reads the log back to
    /// its last checkpoint, all entries at once, so with a commit a second and 100 entries between
    /// checkpoints a job spent ~60 MB of transient buffers and dozens of IO threads per commit,
    /// and its RSS crept up. Tables that exist keep their own setting.
    pub log_checkpoint_interval: u64,
}

impl DeltaSinkConfig {
    /// Defaults for `table`.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            target_file_bytes: 128 << 20,
            parquet: ParquetFormat::default(),
            commit_retries: 100,
            orphan_grace: Duration::from_secs(3600),
            log_checkpoint_interval: 10,
        }
    }
}

/// Writes a Delta table exactly once. See the [module docs](self).
#[derive(Clone)]
pub struct DeltaSink {
    config: DeltaSinkConfig,
    loc: OnceLock<Location>,
    /// What this process knows of the table between commits; commits hold it one at a time.
    known: Arc<tokio::sync::Mutex<Known>>,
}

/// What a sink's commits know of the table, so a steady commit reads only what is new.
#[derive(Default)]
struct Known {
    /// The table as the last commit saw it, brought up to date before the next one: reading
    /// only the log entries written since, not the whole log back to its last checkpoint.
    table: Option<DeltaTable>,
    /// Per idempotency key (region), the checkpoint known to be in the table: read from the
    /// table on a region's first commit after each (re)start, then kept by its own commits, so a
    /// steady commit does not replay the log's `txn` actions (every JSON entry back to the last
    /// log checkpoint, read at once: hundreds of MB of transient buffers). Forgotten on
    /// `recover` and after a failed commit, when only the table can say.
    committed: HashMap<String, i64>,
}

impl std::fmt::Debug for DeltaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeltaSink({})", alluvium_core::error::redact(&self.config.table))
    }
}

/// A committable's payload: the data files one writer closed at a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeltaFiles {
    files: Vec<WrittenFile>,
    /// Milliseconds since the epoch when the files were closed (their modification time).
    closed_ms: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl DeltaSink {
    /// A sink for the table in `config`.
    pub fn new(config: DeltaSinkConfig) -> Self {
        Self { config, loc: OnceLock::new(), known: Arc::default() }
    }

    fn what(&self) -> String {
        format!("Delta table `{}`", alluvium_core::error::redact(&self.config.table))
    }

    fn err(&self, doing: &str, e: DeltaTableError) -> Error {
        let retryable = !matches!(e, DeltaTableError::NotATable(_) | DeltaTableError::InvalidTableLocation(_));
        let message = format!("{doing} {}: {}", self.what(), alluvium_core::error::redact(&e.to_string()));
        if alluvium_core::error::is_misconfigured_path(&format!("{e:?}")) {
            return Error::config(format!("{message}; check the sink's `table` path and its permissions"));
        }
        Error::external(message).with_retryable(retryable)
    }

    fn location(&self) -> Result<&Location> {
        if let Some(l) = self.loc.get() {
            return Ok(l);
        }
        let l = Location::parse(&self.config.table).map_err(|e| e.context("delta sink `table`"))?;
        Ok(self.loc.get_or_init(|| l))
    }

    /// The table handle, loaded; `false` when no table exists there yet.
    async fn load(&self) -> Result<(DeltaTable, bool)> {
        load_table(self.location()?).await.map_err(|(doing, e)| self.err(doing, e))
    }

    /// Loads the table, creating it (or adding nullable columns) to fit `incoming`; returns the
    /// table's schema as Arrow, which batches are cast to.
    async fn ensure_table(&self, incoming: &Schema) -> Result<SchemaRef> {
        let mapped = lake_schema(incoming, LakeTypes::Widened);
        let (mut table, exists) = self.load().await?;
        if !exists {
            let kernel: StructType =
                mapped.as_ref().try_into_kernel().map_err(|e| Error::config(format!("{}: {e}", self.what())))?;
            let create = table
                .create()
                .with_columns(kernel.fields().cloned())
                .with_configuration_property(
                    deltalake::TableProperty::CheckpointInterval,
                    Some(self.config.log_checkpoint_interval.max(1).to_string()),
                )
                .with_save_mode(SaveMode::ErrorIfExists);
            match create.await {
                Ok(t) => {
                    tracing::info!(table = %self.what(), "created the table");
                    table = t
                }
                // Another region or pipeline created it first.
                Err(_) => table = self.load().await?.0,
            }
        }
        let current = table_schema(&table).map_err(|e| e.context(self.what()))?;
        let diff = diff_schema(&current, &mapped, &self.what())?;
        if diff.added.is_empty() {
            return Ok(current);
        }
        let added: StructType =
            (&Schema::new(diff.added.clone())).try_into_kernel().map_err(|e| Error::config(format!("{}: {e}", self.what())))?;
        let names: Vec<&str> = diff.added.iter().map(|f| f.name().as_str()).collect();
        match table.add_columns().with_fields(added.fields().cloned().collect::<Vec<_>>()).await {
            Ok(t) => {
                tracing::info!(table = %self.what(), columns = ?names, "added nullable columns");
                table = t;
            }
            // Added concurrently by another writer: the reload below tells.
            Err(_) => table = self.load().await?.0,
        }
        let current = table_schema(&table)?;
        diff_schema(&current, &mapped, &self.what())?;
        Ok(current)
    }

    /// The cached table, brought up to date (loaded on first use, or again after a failure);
    /// `None` when there is no table.
    async fn latest<'a>(&self, cached: &'a mut Option<DeltaTable>) -> Result<Option<&'a DeltaTable>> {
        if let Some(table) = cached.as_mut() {
            if table.update_incremental(None).await.is_ok() {
                return Ok(cached.as_ref());
            }
            *cached = None;
        }
        let (table, exists) = self.load().await?;
        if !exists {
            return Ok(None);
        }
        *cached = Some(table);
        Ok(cached.as_ref())
    }

    /// The region's last committed checkpoint: known from this process's own commits, else read
    /// from the table's `txn` actions.
    async fn committed(&self, table: &DeltaTable, known: &mut HashMap<String, i64>, ctx: &SinkContext) -> Result<Option<i64>> {
        let key = ctx.sink_key();
        if let Some(v) = known.get(&key) {
            return Ok(Some(*v));
        }
        let state = table.snapshot().map_err(|e| self.err("reading", e))?;
        let v = state.transaction_version(table.log_store().as_ref(), &key).await.map_err(|e| self.err("reading", e))?;
        if let Some(v) = v {
            known.insert(key, v);
        }
        Ok(v)
    }
}

/// The table at `loc`, loaded at its latest version; `false` when there is no table yet. An error
/// says what was being done.
async fn load_table(loc: &Location) -> std::result::Result<(DeltaTable, bool), (&'static str, DeltaTableError)> {
    register_log_stores();
    let mut table = DeltaTableBuilder::from_url(loc.url.clone())
        .map_err(|e| ("opening", e))?
        .with_storage_backend(loc.root_store(), loc.url.clone())
        .build()
        .map_err(|e| ("opening", e))?;
    match table.load().await {
        Ok(()) => Ok((table, true)),
        Err(DeltaTableError::NotATable(_)) => Ok((table, false)),
        Err(e) => Err(("loading", e)),
    }
}

/// Delta's log on object stores: delta-rs only knows `file://` and `memory://` unless its
/// per-cloud crates are linked, which bring their own clients and lock services (DynamoDB). Our
/// stores come from [`Location`] (one client and one set of `AWS_*`/`AZURE_*`/`GOOGLE_*` settings for
/// all of Alluvium), and every one of them supports the conditional put (`If-None-Match: *`) that
/// delta-rs's default log store uses to create `_delta_log/N.json`, so that log store serves every
/// scheme.
fn register_log_stores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let registry = deltalake::logstore::logstore_factories();
        for scheme in ["s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "adl"] {
            let url = url::Url::parse(&format!("{scheme}://")).expect("a scheme URL");
            registry.entry(url).or_insert_with(|| Arc::new(ConditionalPutLogStores));
        }
    });
}

struct ConditionalPutLogStores;

impl deltalake::logstore::LogStoreFactory for ConditionalPutLogStores {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &url::Url,
        options: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
        Ok(deltalake::logstore::default_logstore(prefixed_store, root_store, location, options))
    }
}

fn table_schema(table: &DeltaTable) -> Result<SchemaRef> {
    let state = table.snapshot().map_err(|e| Error::external(format!("reading the table's snapshot: {e}")))?;
    let schema: Schema =
        state.schema().as_ref().try_into_arrow().map_err(|e| Error::external(format!("the table's schema: {e}")))?;
    Ok(Arc::new(schema))
}

/// What `inspect` shows of one `_delta_log/N.json`: its `commitInfo`, `txn` (our key) and the
/// rows its `add`s carry in their statistics.
fn log_entry(version: i64, json_lines: &[u8]) -> CommitInfo {
    let mut commit = CommitInfo { version, ..Default::default() };
    let mut rows: Option<u64> = None;
    for line in json_lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        if let Some(c) = action.get("commitInfo") {
            commit.timestamp_ms = c.get("timestamp").and_then(|t| t.as_i64());
            commit.operation = c.get("operation").and_then(|o| o.as_str()).unwrap_or_default().to_string();
        } else if let Some(t) = action.get("txn") {
            let app = t.get("appId").and_then(|a| a.as_str()).map(str::to_string);
            commit.key = app.zip(t.get("version").and_then(|v| v.as_u64()));
        } else if let Some(stats) = action.get("add").and_then(|a| a.get("stats")).and_then(|s| s.as_str()) {
            let n = serde_json::from_str::<serde_json::Value>(stats).ok().and_then(|s| s.get("numRecords")?.as_u64());
            rows = Some(rows.unwrap_or(0) + n.unwrap_or(0));
        }
    }
    commit.rows_added = rows;
    commit
}

fn files_of(c: &Committable) -> Result<DeltaFiles> {
    serde_json::from_value(c.payload.clone())
        .map_err(|e| Error::checkpoint(format!("a delta sink committable in the checkpoint is malformed: {e}")))
}

#[async_trait]
impl Sink for DeltaSink {
    fn name(&self) -> String {
        "delta".into()
    }

    fn validate(&self) -> Result<()> {
        if self.config.table.trim().is_empty() {
            return Err(Error::config("the delta sink has an empty `table`; set it to a directory or URL"));
        }
        Ok(())
    }

    fn location(&self) -> Option<String> {
        Some(self.config.table.clone())
    }

    async fn inspect(&self) -> Result<TableInfo> {
        use object_store::ObjectStoreExt;
        let mut info = TableInfo { format: "delta".into(), table: self.what(), ..Default::default() };
        let (table, exists) = self.load().await?;
        if !exists {
            return Ok(info);
        }
        info.exists = true;
        info.schema = Some(table_schema(&table)?);
        let state = table.snapshot().map_err(|e| self.err("reading", e))?;
        let version = state.version() as i64;
        info.version = Some(version);
        let records: Vec<Option<usize>> = state.log_data().iter().map(|f| f.num_records()).collect();
        info.files = Some(records.len() as u64);
        info.rows = records.iter().try_fold(0u64, |sum, n| n.map(|n| sum + n as u64));
        // The last commits, from the log's JSON entries (older ones may be cleaned up).
        let loc = self.location()?;
        for v in (0..=version).rev().take(TableInfo::COMMITS) {
            let path = loc.child(&format!("_delta_log/{v:020}.json"));
            let bytes = match loc.store.get(&path).await {
                Ok(r) => r.bytes().await?,
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(Error::from(e).context(format!("reading the log of {}", self.what()))),
            };
            info.commits.push(log_entry(v, &bytes));
        }
        Ok(info)
    }

    async fn writer(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        let loc = self.location()?.clone();
        let files = RollingWriter::new(
            Arc::new(self.config.parquet.clone()),
            loc,
            "",
            format!("part-{}", ctx.file_prefix()),
            self.config.target_file_bytes,
        );
        Ok(Box::new(DeltaWriter { sink: self.clone(), files, schema: None }))
    }

    async fn commit(&self, ctx: &SinkContext, checkpoint: u64, committables: &[Committable]) -> Result<()> {
        let mut adds = Vec::new();
        for c in committables {
            let f = files_of(c)?;
            for w in f.files {
                adds.push(Action::Add(Add {
                    path: w.path.clone(),
                    size: w.bytes as i64,
                    modification_time: f.closed_ms,
                    data_change: true,
                    stats: Some(format!("{{\"numRecords\":{}}}", w.rows)),
                    ..Default::default()
                }));
            }
        }
        if adds.is_empty() {
            return Ok(());
        }
        let version = checkpoint as i64;
        // A concurrent metadata change (another writer creating the table or adding a column)
        // fails Delta's conflict check: reload and try again; appends themselves are retried by
        // Delta's own commit loop.
        let mut attempt = 0;
        let mut guard = self.known.lock().await;
        let known = &mut *guard;
        loop {
            let Some(table) = self.latest(&mut known.table).await? else {
                return Err(Error::checkpoint(format!(
                    "{} is gone, but checkpoint {checkpoint} of region {} has files to commit to it; it was deleted \
                     outside Alluvium",
                    self.what(),
                    ctx.region
                )));
            };
            if self.committed(table, &mut known.committed, ctx).await?.is_some_and(|v| v >= version) {
                tracing::debug!(region = ctx.region, checkpoint, "committed to the delta table");
                return Ok(());
            }
            let txn = Transaction::new_with_last_update(ctx.sink_key(), version, Some(now_ms()));
            let props =
                CommitProperties::default().with_application_transaction(txn).with_max_retries(self.config.commit_retries);
            let state = table.snapshot().map_err(|e| self.err("reading", e))?;
            let op = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
            match CommitBuilder::from(props).with_actions(adds.clone()).build(Some(state), table.log_store(), op).await {
                Ok(done) => {
                    tracing::debug!(region = ctx.region, checkpoint, version = done.version(), "committed to the delta table");
                    known.committed.insert(ctx.sink_key(), version);
                    return Ok(());
                }
                Err(e) => {
                    // The outcome may be unknown (a lost response): the reload at the top of the
                    // loop reads the txn version again before anything is retried.
                    let error = self.err(&format!("committing region {} checkpoint {checkpoint} to", ctx.region), e);
                    known.table = None;
                    known.committed.remove(&ctx.sink_key());
                    attempt += 1;
                    if attempt >= 10 {
                        let (table, _) = self.load().await?;
                        if self.committed(&table, &mut known.committed, ctx).await?.is_some_and(|v| v >= version) {
                            return Ok(());
                        }
                        return Err(error);
                    }
                    tracing::debug!(region = ctx.region, checkpoint, "commit attempt failed, re-reading the table: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
                }
            }
        }
    }

    async fn committed_checkpoints(&self, keys: &[String]) -> Result<Option<BTreeMap<String, u64>>> {
        let (table, exists) = self.load().await?;
        let mut out = BTreeMap::new();
        if !exists {
            return Ok(Some(out));
        }
        let state = table.snapshot().map_err(|e| self.err("reading", e))?;
        for key in keys {
            let v = state.transaction_version(table.log_store().as_ref(), key).await.map_err(|e| self.err("reading", e))?;
            if let Some(v) = v.and_then(|v| u64::try_from(v).ok()) {
                out.insert(key.clone(), v);
            }
        }
        Ok(Some(out))
    }

    async fn recover(&self, ctx: &SinkContext, pending: &[Committable]) -> Result<()> {
        // A restarted region asks the table what is committed (another process may have
        // committed for it).
        self.known.lock().await.committed.remove(&ctx.sink_key());
        let loc = self.location()?;
        let (table, exists) = self.load().await?;
        if !exists {
            return Ok(());
        }
        let mut keep = HashSet::new();
        for c in pending {
            keep.extend(files_of(c)?.files.into_iter().map(|f| f.path));
        }
        let prefix = format!("part-{}", ctx.region_file_prefix());
        let candidates = orphan_candidates(loc, &prefix, &keep, self.config.orphan_grace).await?;
        if candidates.is_empty() {
            return Ok(());
        }
        let live: HashSet<String> = table
            .get_file_uris()
            .map_err(|e| self.err("listing the files of", e))?
            .filter_map(|u| u.rsplit('/').next().map(str::to_string))
            .collect();
        let orphans: Vec<_> = candidates.into_iter().filter(|p| !live.contains(p.filename().unwrap_or_default())).collect();
        if !orphans.is_empty() {
            tracing::info!(region = ctx.region, files = orphans.len(), table = %self.what(), "deleting data files of failed attempts");
        }
        delete_files(loc, orphans).await
    }
}

struct DeltaWriter {
    sink: DeltaSink,
    files: RollingWriter,
    /// The table's schema, once the table is ensured (on the first batch).
    schema: Option<(SchemaRef, SchemaRef)>,
}

#[async_trait]
impl SinkWriter for DeltaWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let target = match &self.schema {
            Some((incoming, target)) if incoming == &batch.schema() => target.clone(),
            _ => {
                let target = self.sink.ensure_table(&batch.schema()).await?;
                self.files.roll().await.map_err(|e| e.context(self.sink.what()))?;
                self.schema = Some((batch.schema(), target.clone()));
                target
            }
        };
        let batch = to_lake(&batch, &target).map_err(|e| e.context(self.sink.what()))?;
        self.files.write(&batch).await.map_err(|e| e.context(self.sink.what()))
    }

    async fn prepare(&mut self, _checkpoint: u64) -> Result<Option<Committable>> {
        let files = self.files.finish().await.map_err(|e| e.context(self.sink.what()))?;
        if files.is_empty() {
            return Ok(None);
        }
        let rows = files.iter().map(|f| f.rows).sum();
        let bytes = files.iter().map(|f| f.bytes).sum();
        let payload = serde_json::to_value(DeltaFiles { files, closed_ms: now_ms() }).expect("serializable");
        Ok(Some(Committable { rows, bytes, payload }))
    }
}

#[cfg(test)]
mod tests {
    /// A log entry as delta-rs writes it for one of our commits: operation, time, key, rows.
    #[test]
    fn a_log_entry_gives_operation_key_and_rows() {
        let entry = concat!(
            r#"{"add":{"path":"a.parquet","size":1,"modificationTime":1,"dataChange":true,"stats":"{\"numRecords\":5}"}}"#,
            "\n",
            r#"{"add":{"path":"b.parquet","size":1,"modificationTime":1,"dataChange":true,"stats":"{\"numRecords\":7}"}}"#,
            "\n",
            r#"{"txn":{"appId":"alluvium/p/abc/region-1","version":4,"lastUpdated":1}}"#,
            "\n",
            r#"{"commitInfo":{"timestamp":1700000000000,"operation":"WRITE"}}"#,
            "\n"
        );
        let c = super::log_entry(3, entry.as_bytes());
        assert_eq!(
            (c.version, c.operation.as_str(), c.timestamp_ms, c.rows_added),
            (3, "WRITE", Some(1_700_000_000_000), Some(12))
        );
        assert_eq!(c.key, Some(("alluvium/p/abc/region-1".to_string(), 4)));
        let other = super::log_entry(0, br#"{"commitInfo":{"operation":"CREATE TABLE"}}"#);
        assert_eq!((other.key, other.rows_added), (None, None));
    }
}
