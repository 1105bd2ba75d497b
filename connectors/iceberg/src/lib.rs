//! The exactly-once Apache Iceberg sink, and the Iceberg table source ([`source`]).
//!
//! ```text
//!  write      ──▶ TABLE/data/part-INSTANCE-rR-eE-WRITER-S.parquet  (streamed; invisible: in no snapshot)
//!  prepare(C) ──▶ Committable { files: [path, rows, bytes] }        (stored in region manifest C)
//!  commit(C)  ──▶ one catalog commit: fast-append of the files
//!                 + table property   alluvium.commit.<sink key> = C
//!                 + snapshot summary alluvium.sink-key, alluvium.checkpoint
//!  recover    ──▶ files of this region that are neither pending nor in the table, older than the
//!                 grace period, are deleted
//! ```
//!
//! **Idempotency.** The table property and the appended files are one `TableCommit`, so the
//! region's last committed checkpoint is read back from the table after any crash and nothing is
//! committed twice. The snapshot summaries carry the same key, a second witness if someone removes
//! the property.
//!
//! **Unknown outcomes and zombies.** A failed commit is never retried blind: the table is reloaded
//! and the property read again. Iceberg's duplicate-file check stays on, so a commit re-applied on
//! top of our own landed commit (a retried request whose first try succeeded) is rejected instead
//! of appending the files twice.
//!
//! **Snapshot expiry.** Every commit adds a snapshot, and the table's metadata lists them all: a
//! continuous job committing every few seconds would grow it (and each commit's work) without
//! bound. Every [`IcebergSinkConfig::expire_snapshots_every`] commits, the sink expires snapshots
//! by the table's own `history.expire.*` properties (Java's `ExpireSnapshots` rules: older than
//! `max-snapshot-age-ms`, keeping `min-snapshots-to-keep`); tables it creates keep one day and at
//! least 10. Expiry rewrites metadata only: with appends, every data file stays in the current
//! snapshot, and idempotency reads the table property, never an old snapshot. A failed expiry is
//! logged and retried at the next round; it never fails a commit.
//!
//! **Concurrency.** Regions and pipelines append concurrently: a catalog conflict reloads the table
//! and re-applies the append (`commit.retry.num-retries`, set to 50 on tables this sink creates).
//!
//! **Catalogs** are reached through [`CatalogConnector`] (implemented in `alluvium-catalog` for the
//! SQL catalog on SQLite/PostgreSQL and the REST catalog). Data files are written with Alluvium's
//! own streamed Parquet writer, with Iceberg field ids in the Parquet schema, so any Iceberg reader
//! maps columns without a name mapping.

pub mod source;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use alluvium_core::arrow::datatypes::{Schema, SchemaRef};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::error::redact;
use alluvium_core::files::{delete_files, orphan_candidates, RollingWriter, WrittenFile};
use alluvium_core::sink::{CommitInfo, TableInfo};
use alluvium_core::store::Location;
use alluvium_core::types::lake::{diff_schema, lake_schema, to_lake, LakeTypes};
use alluvium_core::{Committable, Error, Result, Sink, SinkContext, SinkWriter};
use alluvium_parquet::ParquetFormat;
use async_trait::async_trait;
use iceberg::arrow::{arrow_schema_to_schema_auto_assign_ids, schema_to_arrow_schema};
use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableCreation, TableIdent};
use serde::{Deserialize, Serialize};

pub use source::IcebergSource;

/// Opens a catalog. Connecting is lazy (on a region's first write or commit), so an unreachable
/// catalog fails the region, which retries with backoff, instead of the whole job at start.
#[async_trait]
pub trait CatalogConnector: Send + Sync + 'static {
    /// Connects (or returns a cached connection).
    async fn connect(&self) -> Result<Arc<dyn Catalog>>;
    /// What the catalog is, for messages (no secrets).
    fn describe(&self) -> String;
}

/// The table property prefix of the per-region watermarks.
pub const COMMIT_PROPERTY_PREFIX: &str = "alluvium.commit.";
/// The snapshot-summary key naming the region that committed a snapshot.
pub const SUMMARY_SINK_KEY: &str = "alluvium.sink-key";
/// The snapshot-summary key holding the checkpoint a snapshot committed.
pub const SUMMARY_CHECKPOINT: &str = "alluvium.checkpoint";

/// Settings of an [`IcebergSink`].
#[derive(Debug, Clone)]
pub struct IcebergSinkConfig {
    /// `namespace.table` (nested namespaces: `a.b.table`).
    pub table: String,
    /// Roll to a new data file at this many bytes (default 128 MiB).
    pub target_file_bytes: u64,
    /// The Parquet encoding of data files.
    pub parquet: ParquetFormat,
    /// Files of failed attempts are deleted only when older than this (default 1 hour).
    pub orphan_grace: Duration,
    /// Extra properties of tables this sink creates.
    pub properties: HashMap<String, String>,
    /// Expire snapshots after this many commits of this sink (default 50; 0: never). See the
    /// module docs.
    pub expire_snapshots_every: u64,
}

impl IcebergSinkConfig {
    /// Defaults for `table`.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            target_file_bytes: 128 << 20,
            parquet: ParquetFormat::default(),
            orphan_grace: Duration::from_secs(3600),
            properties: HashMap::new(),
            expire_snapshots_every: 50,
        }
    }
}

/// Writes an Iceberg table exactly once. See the [module docs](self).
#[derive(Clone)]
pub struct IcebergSink {
    config: Arc<IcebergSinkConfig>,
    table: CatalogTable,
    /// Commits by this sink (all its regions), for snapshot expiry.
    commits: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for IcebergSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IcebergSink({})", self.table.what())
    }
}

/// A committable's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IcebergFiles {
    /// The table's data folder (a URL) the paths are relative to.
    data: String,
    files: Vec<WrittenFile>,
}

fn files_of(c: &Committable) -> Result<IcebergFiles> {
    serde_json::from_value(c.payload.clone())
        .map_err(|e| Error::checkpoint(format!("an iceberg sink committable in the checkpoint is malformed: {e}")))
}

impl IcebergSink {
    /// A sink writing `config.table` in the catalog `catalog` opens.
    pub fn new(config: IcebergSinkConfig, catalog: Arc<dyn CatalogConnector>) -> Self {
        let table = CatalogTable { name: config.table.clone(), catalog };
        Self { config: Arc::new(config), table, commits: Arc::default() }
    }

    /// Loads the table, creating it (or adding nullable columns) to fit `incoming`.
    async fn ensure_table(&self, incoming: &Schema) -> Result<Table> {
        let catalog = self.table.catalog.connect().await?;
        let mapped = lake_schema(incoming, LakeTypes::Widened);
        let table = match self.table.load(catalog.as_ref()).await? {
            Some(t) => t,
            None => self.create(catalog.as_ref(), &mapped).await?,
        };
        let current =
            Arc::new(schema_to_arrow_schema(table.metadata().current_schema()).map_err(|e| self.table.err("reading", e))?);
        let diff = diff_schema(&current, &mapped, &self.table.what())?;
        if diff.added.is_empty() {
            return Ok(table);
        }
        let names: Vec<&str> = diff.added.iter().map(|f| f.name().as_str()).collect();
        let mut action = Transaction::new(&table).update_schema();
        for f in &diff.added {
            let typed = arrow_schema_to_schema_auto_assign_ids(&Schema::new(vec![f.clone()]))
                .map_err(|e| Error::config(format!("{}: column `{}`: {e}", self.table.what(), f.name())))?;
            let field = typed.as_struct().fields()[0].clone();
            action = action.add_column(AddColumn::optional(f.name(), (*field.field_type).clone()));
        }
        let tx = action.apply(Transaction::new(&table)).map_err(|e| self.table.err("evolving", e))?;
        match tx.commit(catalog.as_ref()).await {
            Ok(t) => {
                tracing::info!(table = %self.table.what(), columns = ?names, "added nullable columns");
                Ok(t)
            }
            // Added concurrently by another writer: the reloaded table must fit now.
            Err(_) => {
                let t = self
                    .table
                    .load(catalog.as_ref())
                    .await?
                    .ok_or_else(|| Error::external(format!("{} vanished", self.table.what())))?;
                let current = schema_to_arrow_schema(t.metadata().current_schema()).map_err(|e| self.table.err("reading", e))?;
                if !diff_schema(&current, &mapped, &self.table.what())?.added.is_empty() {
                    return Err(
                        Error::external(format!("{}: adding columns {names:?} failed", self.table.what())).with_retryable(true)
                    );
                }
                Ok(t)
            }
        }
    }

    async fn create(&self, catalog: &dyn Catalog, schema: &Schema) -> Result<Table> {
        let ident = self.table.ident()?;
        let iceberg_schema = arrow_schema_to_schema_auto_assign_ids(schema)
            .map_err(|e| Error::config(format!("{}: the pipeline's schema has no Iceberg equivalent: {e}", self.table.what())))?;
        let ns = ident.namespace().clone();
        if !catalog.namespace_exists(&ns).await.map_err(|e| self.table.err("looking up the namespace of", e))? {
            // Another writer may create it at the same time.
            if let Err(e) = catalog.create_namespace(&ns, HashMap::new()).await {
                if !catalog.namespace_exists(&ns).await.unwrap_or(false) {
                    return Err(self.table.err("creating the namespace of", e));
                }
            }
        }
        let mut properties: HashMap<String, String> = [
            ("commit.retry.num-retries", "50"),
            ("commit.retry.min-wait-ms", "20"),
            ("commit.retry.max-wait-ms", "2000"),
            ("write.parquet.compression-codec", "zstd"),
            ("history.expire.max-snapshot-age-ms", "86400000"),
            ("history.expire.min-snapshots-to-keep", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        properties.extend(self.config.properties.clone());
        let creation =
            TableCreation::builder().name(ident.name().to_string()).schema(iceberg_schema).properties(properties).build();
        match catalog.create_table(&ns, creation).await {
            Ok(t) => {
                tracing::info!(table = %self.table.what(), location = %redact(t.metadata().location()), "created the table");
                Ok(t)
            }
            Err(e) => match self.table.load(catalog).await? {
                Some(t) => Ok(t),
                None => Err(self.table.err("creating", e)),
            },
        }
    }

    /// The region's last committed checkpoint: the table property, or the newest snapshot summary
    /// that names the region.
    fn committed(table: &Table, key: &str) -> Option<u64> {
        let md = table.metadata();
        let property = md.properties().get(&format!("{COMMIT_PROPERTY_PREFIX}{key}")).and_then(|v| v.parse().ok());
        let summaries = md.snapshots().filter_map(|s| {
            let p = &s.summary().additional_properties;
            (p.get(SUMMARY_SINK_KEY).map(String::as_str) == Some(key)).then(|| p.get(SUMMARY_CHECKPOINT)?.parse().ok())?
        });
        property.into_iter().chain(summaries).max()
    }

    /// Expires snapshots of `table` (as our last commit left it: the transaction reloads the table
    /// itself before committing and plans again on a newer one) by its `history.expire.*`
    /// properties; failures are logged only.
    async fn expire_snapshots(&self, catalog: &dyn Catalog, table: &Table) {
        let run = async {
            let before = table.metadata().snapshots().count();
            let tx = Transaction::new(table);
            let tx = tx.expire_snapshots().apply(tx).map_err(|e| self.table.err("expiring snapshots of", e))?;
            let table = tx.commit(catalog).await.map_err(|e| self.table.err("expiring snapshots of", e))?;
            Ok::<_, Error>((before, table.metadata().snapshots().count()))
        };
        match run.await {
            Ok((before, after)) if after < before => {
                tracing::info!(table = %self.table.what(), expired = before - after, kept = after, "expired snapshots");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(table = %self.table.what(), "snapshot expiry failed; it is tried again later: {e}"),
        }
    }

    /// Paths of the data files of the table's current snapshot.
    async fn live_files(&self, table: &Table) -> Result<HashSet<String>> {
        let mut live = HashSet::new();
        let Some(snapshot) = table.metadata().current_snapshot() else { return Ok(live) };
        let list = table.manifest_list_reader(snapshot).load().await.map_err(|e| self.table.err("reading", e))?;
        for m in list.entries() {
            let manifest = m.load_manifest(table.file_io()).await.map_err(|e| self.table.err("reading", e))?;
            for e in manifest.entries() {
                if e.is_alive() {
                    live.insert(e.data_file().file_path().to_string());
                }
            }
        }
        Ok(live)
    }
}

/// A table in a catalog, as the sink and the source find it.
#[derive(Clone)]
pub(crate) struct CatalogTable {
    /// `namespace.table`.
    pub(crate) name: String,
    pub(crate) catalog: Arc<dyn CatalogConnector>,
}

impl CatalogTable {
    pub(crate) fn what(&self) -> String {
        format!("Iceberg table `{}` in {}", self.name, self.catalog.describe())
    }

    pub(crate) fn err(&self, doing: &str, e: iceberg::Error) -> Error {
        let retryable = !matches!(e.kind(), iceberg::ErrorKind::FeatureUnsupported);
        let text = format!("{e:?}");
        let message = format!("{doing} {}: {}", self.what(), redact(&without_headers(&e.to_string())));
        if alluvium_core::error::is_misconfigured_path(&text) {
            return Error::config(format!("{message}; check the sink's `warehouse` and `catalog` paths and their permissions"));
        }
        Error::external(message).with_retryable(retryable)
    }

    pub(crate) fn ident(&self) -> Result<TableIdent> {
        let parts: Vec<&str> = self.name.split('.').collect();
        if parts.len() < 2 || parts.iter().any(|p| p.trim().is_empty()) {
            return Err(Error::config(format!(
                "iceberg `table` is `{}`; write it as `namespace.table` (for example `default.images`)",
                self.name
            )));
        }
        TableIdent::from_strs(parts).map_err(|e| Error::config(format!("iceberg `table`: {e}")))
    }

    /// The table; `None` when the catalog has no such table.
    pub(crate) async fn load(&self, catalog: &dyn Catalog) -> Result<Option<Table>> {
        let ident = self.ident()?;
        match catalog.table_exists(&ident).await {
            Ok(false) => Ok(None),
            Ok(true) => catalog.load_table(&ident).await.map(Some).map_err(|e| self.err("loading", e)),
            Err(e) => Err(self.err("looking up", e)),
        }
    }
}

fn join(dir: &str, file: &str) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), file)
}

#[async_trait]
impl Sink for IcebergSink {
    fn name(&self) -> String {
        "iceberg".into()
    }

    fn validate(&self) -> Result<()> {
        self.table.ident().map(|_| ())
    }

    fn location(&self) -> Option<String> {
        Some(format!("iceberg:{}:{}", self.table.catalog.describe(), self.table.name))
    }

    async fn inspect(&self) -> Result<TableInfo> {
        let catalog = self.table.catalog.connect().await?;
        let mut info = TableInfo { format: "iceberg".into(), table: self.table.what(), ..Default::default() };
        let Some(table) = self.table.load(catalog.as_ref()).await? else { return Ok(info) };
        let md = table.metadata();
        let summary_number = |s: &iceberg::spec::Snapshot, key: &str| {
            s.summary().additional_properties.get(key).and_then(|v| v.parse::<u64>().ok())
        };
        info.exists = true;
        info.schema = Some(Arc::new(schema_to_arrow_schema(md.current_schema()).map_err(|e| self.table.err("reading", e))?));
        if let Some(current) = md.current_snapshot() {
            info.version = Some(current.snapshot_id());
            info.rows = summary_number(current, "total-records");
            info.files = summary_number(current, "total-data-files");
        }
        let mut snapshots: Vec<_> = md.snapshots().collect();
        snapshots.sort_by_key(|s| std::cmp::Reverse(s.sequence_number()));
        info.commits = snapshots
            .into_iter()
            .take(TableInfo::COMMITS)
            .map(|s| {
                let p = &s.summary().additional_properties;
                CommitInfo {
                    version: s.snapshot_id(),
                    timestamp_ms: Some(s.timestamp_ms()),
                    operation: s.summary().operation.as_str().to_string(),
                    rows_added: summary_number(s, "added-records"),
                    key: p.get(SUMMARY_SINK_KEY).cloned().zip(summary_number(s, SUMMARY_CHECKPOINT)),
                }
            })
            .collect();
        Ok(info)
    }

    async fn writer(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(IcebergWriter { sink: self.clone(), prefix: format!("part-{}", ctx.file_prefix()), open: None }))
    }

    async fn committed_checkpoints(&self, keys: &[String]) -> Result<Option<BTreeMap<String, u64>>> {
        let catalog = self.table.catalog.connect().await?;
        let Some(table) = self.table.load(catalog.as_ref()).await? else { return Ok(Some(BTreeMap::new())) };
        Ok(Some(keys.iter().filter_map(|k| Some((k.clone(), Self::committed(&table, k)?))).collect()))
    }

    async fn commit(&self, ctx: &SinkContext, checkpoint: u64, committables: &[Committable]) -> Result<()> {
        let mut paths = Vec::new();
        for c in committables {
            let f = files_of(c)?;
            for w in f.files {
                paths.push((join(&f.data, &w.path), w));
            }
        }
        if paths.is_empty() {
            return Ok(());
        }
        let catalog = self.table.catalog.connect().await?;
        let key = ctx.sink_key();
        let table = self.table.load(catalog.as_ref()).await?.ok_or_else(|| {
            Error::checkpoint(format!(
                "{} is gone, but checkpoint {checkpoint} of region {} has files to commit to it; it was dropped outside \
                 Alluvium",
                self.table.what(),
                ctx.region
            ))
        })?;
        if Self::committed(&table, &key).is_some_and(|c| c >= checkpoint) {
            tracing::debug!(region = ctx.region, checkpoint, "already committed to the iceberg table");
            return Ok(());
        }
        let spec = table.metadata().default_partition_spec_id();
        let mut files = Vec::with_capacity(paths.len());
        for (path, w) in paths {
            let file = DataFileBuilder::default()
                .content(DataContentType::Data)
                .file_path(path)
                .file_format(DataFileFormat::Parquet)
                .record_count(w.rows)
                .file_size_in_bytes(w.bytes)
                .partition_spec_id(spec)
                .build()
                .map_err(|e| Error::internal(format!("building an iceberg data file: {e}")))?;
            files.push(file);
        }
        let summary: HashMap<String, String> =
            [(SUMMARY_SINK_KEY.to_string(), key.clone()), (SUMMARY_CHECKPOINT.to_string(), checkpoint.to_string())].into();
        let tx = Transaction::new(&table);
        let tx = tx
            .fast_append()
            .add_data_files(files)
            .set_snapshot_properties(summary)
            .apply(tx)
            .map_err(|e| self.table.err("committing to", e))?;
        let tx = tx
            .update_table_properties()
            .set(format!("{COMMIT_PROPERTY_PREFIX}{key}"), checkpoint.to_string())
            .apply(tx)
            .map_err(|e| self.table.err("committing to", e))?;
        match tx.commit(catalog.as_ref()).await {
            Ok(table) => {
                tracing::debug!(region = ctx.region, checkpoint, "committed to the iceberg table");
                let every = self.config.expire_snapshots_every;
                let n = self.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if every > 0 && n.is_multiple_of(every) {
                    self.expire_snapshots(catalog.as_ref(), &table).await;
                }
                Ok(())
            }
            Err(e) => {
                let error = self.table.err(&format!("committing region {} checkpoint {checkpoint} to", ctx.region), e);
                // The outcome may be unknown: the table tells.
                if let Some(t) = self.table.load(catalog.as_ref()).await? {
                    if Self::committed(&t, &key).is_some_and(|c| c >= checkpoint) {
                        tracing::info!(region = ctx.region, checkpoint, "the commit landed despite an error: {error}");
                        return Ok(());
                    }
                }
                Err(error.with_retryable(true))
            }
        }
    }

    async fn recover(&self, ctx: &SinkContext, pending: &[Committable]) -> Result<()> {
        let catalog = self.table.catalog.connect().await?;
        let Some(table) = self.table.load(catalog.as_ref()).await? else { return Ok(()) };
        let data = join(table.metadata().location(), "data");
        let loc = Location::parse(&data).map_err(|e| e.context(self.table.what()))?;
        // Data file names are unique in the table's data folder, so names identify them.
        let name = |path: &str| path.rsplit('/').next().unwrap_or_default().to_string();
        let mut keep = HashSet::new();
        for c in pending {
            keep.extend(files_of(c)?.files.iter().map(|w| name(&w.path)));
        }
        let prefix = format!("part-{}", ctx.region_file_prefix());
        let candidates = orphan_candidates(&loc, &prefix, &keep, self.config.orphan_grace).await?;
        if candidates.is_empty() {
            return Ok(());
        }
        let live: HashSet<String> = self.live_files(&table).await?.iter().map(|p| name(p)).collect();
        let orphans: Vec<_> = candidates.into_iter().filter(|p| !live.contains(p.filename().unwrap_or_default())).collect();
        if !orphans.is_empty() {
            tracing::info!(region = ctx.region, files = orphans.len(), table = %self.table.what(), "deleting data files of failed attempts");
        }
        delete_files(&loc, orphans).await
    }
}

struct OpenTable {
    incoming: SchemaRef,
    target: SchemaRef,
    data: String,
    files: RollingWriter,
}

struct IcebergWriter {
    sink: IcebergSink,
    prefix: String,
    open: Option<OpenTable>,
}

#[async_trait]
impl SinkWriter for IcebergWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.open.as_ref().is_none_or(|o| o.incoming != batch.schema()) {
            let table = self.sink.ensure_table(&batch.schema()).await?;
            let target = Arc::new(
                schema_to_arrow_schema(table.metadata().current_schema()).map_err(|e| self.sink.table.err("reading", e))?,
            );
            let data = join(table.metadata().location(), "data");
            match &mut self.open {
                // Same table, new columns: keep the files written so far.
                Some(o) if o.data == data => {
                    o.files.roll().await.map_err(|e| e.context(self.sink.table.what()))?;
                    o.incoming = batch.schema();
                    o.target = target;
                }
                _ => {
                    let loc = Location::parse(&data).map_err(|e| e.context(self.sink.table.what()))?;
                    let files = RollingWriter::new(
                        Arc::new(self.sink.config.parquet.clone()),
                        loc,
                        "",
                        self.prefix.clone(),
                        self.sink.config.target_file_bytes,
                    );
                    self.open = Some(OpenTable { incoming: batch.schema(), target, data, files });
                }
            }
        }
        let open = self.open.as_mut().expect("opened above");
        let batch = to_lake(&batch, &open.target).map_err(|e| e.context(self.sink.table.what()))?;
        open.files.write(&batch).await.map_err(|e| e.context(self.sink.table.what()))
    }

    async fn prepare(&mut self, _checkpoint: u64) -> Result<Option<Committable>> {
        let Some(open) = self.open.as_mut() else { return Ok(None) };
        let files = open.files.finish().await.map_err(|e| e.context(self.sink.table.what()))?;
        if files.is_empty() {
            return Ok(None);
        }
        let rows = files.iter().map(|f| f.rows).sum();
        let bytes = files.iter().map(|f| f.bytes).sum();
        let payload = serde_json::to_value(IcebergFiles { data: open.data.clone(), files }).expect("serializable");
        Ok(Some(Committable { rows, bytes, payload }))
    }
}

/// Drops the HTTP response headers a REST catalog error carries (`headers: {…}, `): a dozen
/// lines of noise around the server's message, and a place a cookie or token could show.
fn without_headers(message: &str) -> String {
    let Some(start) = message.find("headers: {") else { return message.to_string() };
    let Some(len) = message[start..].find('}') else { return message.to_string() };
    let end = start + len + 1;
    let end = if message[end..].starts_with(", ") { end + 2 } else { end };
    format!("{}{}", &message[..start], &message[end..])
}

#[cfg(test)]
mod tests {
    /// A REST catalog error keeps its status and the server's message, not the response headers.
    #[test]
    fn rest_errors_lose_their_headers() {
        let raw = r#"Unexpected, context: { status: 400 Bad Request, headers: {"set-cookie": "s=secret", "date": "x"}, json: {"error":{"message":"Unknown warehouse"}} } => Received response"#;
        let tidy = super::without_headers(raw);
        assert_eq!(
            tidy,
            r#"Unexpected, context: { status: 400 Bad Request, json: {"error":{"message":"Unknown warehouse"}} } => Received response"#
        );
        assert_eq!(super::without_headers("no headers here"), "no headers here");
    }
}
