//! Transactional file sinks: the commit protocol that every file-based sink shares.
//!
//! A [`FileSink`] writes files of one [`FileFormat`] (Parquet in `alluvium-parquet`, JSON Lines here)
//! into a directory on any object store. Nothing a writer produces is visible until its region's
//! checkpoint completes:
//!
//! ```text
//!  write ──▶ _staging/region-R/E/part-rR-eE-W-S.ext       (streamed: multipart upload, 8 MiB parts on S3)
//!  prepare(C) ──▶ Committable { files: [staging → final, rows, bytes] }   (stored in region manifest C)
//!  commit ──▶ rename _staging/…/part-….ext → part-….ext   (idempotent: a file already at its final
//!                                                         name with no staged copy is committed)
//!  recover ──▶ delete everything under _staging/region-R/ that no pending committable names
//! ```
//!
//! Standard readers (pyarrow, DuckDB, Polars, Spark) skip `_`-prefixed folders, so they see exactly
//! the committed files. Final names are unique per region (R), epoch (E), writer (W) and sequence
//! (S), so a restarted region never overwrites a file from an earlier attempt, and a rename
//! repeated after a crash is harmless.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, WriteMultipart};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sink::{Committable, Sink, SinkContext, SinkWriter};
use crate::store::Location;

/// Encodes batches into a file format, incrementally.
pub trait FileEncoder: Send {
    /// Encodes a batch.
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    /// The bytes encoded and not yet uploaded. The caller uploads and clears them while the file is
    /// still open; the buffer keeps its capacity, so steady-state encoding allocates nothing.
    fn encoded(&mut self) -> &mut Vec<u8>;
    /// Finishes the file: its last bytes (a footer) are appended to [`FileEncoder::encoded`].
    fn finish(&mut self) -> Result<()>;
    /// Bytes encoded but held back by the encoder (an open Parquet row group), counted towards the
    /// file's target size.
    fn buffered_bytes(&self) -> u64 {
        0
    }
}

/// A file format for [`FileSink`].
pub trait FileFormat: Send + Sync + 'static {
    /// A short name ("parquet").
    fn name(&self) -> &'static str;
    /// The file extension, without the dot.
    fn extension(&self) -> &'static str;
    /// A new encoder for a file whose batches have `schema`.
    fn encoder(&self, schema: SchemaRef) -> Result<Box<dyn FileEncoder>>;
}

/// JSON Lines: one JSON object per row. Used for dead letters by default (readable with any tool).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

struct JsonLinesEncoder {
    buf: Vec<u8>,
}

impl FileEncoder for JsonLinesEncoder {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut self.buf);
        w.write(batch)?;
        w.finish()?;
        Ok(())
    }
    fn encoded(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

impl FileFormat for JsonLines {
    fn name(&self) -> &'static str {
        "jsonl"
    }
    fn extension(&self) -> &'static str {
        "jsonl"
    }
    fn encoder(&self, _schema: SchemaRef) -> Result<Box<dyn FileEncoder>> {
        Ok(Box::new(JsonLinesEncoder { buf: Vec::new() }))
    }
}

/// One staged file of a committable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedFile {
    /// Path of the staged file, relative to the sink's directory.
    pub staging: String,
    /// Path the commit renames it to, relative to the sink's directory.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// The payload of a [`FileSink`] committable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesCommittable {
    /// The files, in write order.
    pub files: Vec<StagedFile>,
}

/// The staging folder of all regions (skipped by readers: it starts with `_`).
pub const STAGING_DIR: &str = "_staging";

/// A transactional sink writing files of format `F` into a directory.
pub struct FileSink<F> {
    format: Arc<F>,
    location: String,
    resolved: std::sync::OnceLock<Location>,
    target_file_bytes: u64,
}

impl<F: FileFormat> std::fmt::Debug for FileSink<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileSink({}, {})", self.format.name(), crate::error::redact(&self.location))
    }
}

impl<F: FileFormat> FileSink<F> {
    /// A sink writing into `location` (a local directory or an object store URL).
    pub fn new(format: F, location: impl Into<String>) -> Self {
        Self { format: Arc::new(format), location: location.into(), resolved: Default::default(), target_file_bytes: 128 << 20 }
    }

    /// Rolls to a new file once this many bytes are written (default 128 MiB).
    pub fn target_file_bytes(mut self, bytes: u64) -> Self {
        self.target_file_bytes = bytes.max(1);
        self
    }

    /// Where the sink writes, as given.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn resolve(&self) -> Result<&Location> {
        if let Some(l) = self.resolved.get() {
            return Ok(l);
        }
        let l = Location::parse(&self.location).map_err(|e| e.context(format!("{} sink", self.format.name())))?;
        Ok(self.resolved.get_or_init(|| l))
    }

    fn region_staging(&self, region: usize) -> String {
        format!("{STAGING_DIR}/region-{region}")
    }
}

fn files_of(c: &Committable) -> Result<FilesCommittable> {
    serde_json::from_value(c.payload.clone())
        .map_err(|e| Error::checkpoint(format!("a file sink committable in the checkpoint is malformed: {e}")))
}

#[async_trait]
impl<F: FileFormat> Sink for FileSink<F> {
    fn name(&self) -> String {
        self.format.name().to_string()
    }

    fn validate(&self) -> Result<()> {
        if self.location.trim().is_empty() {
            return Err(Error::config(format!(
                "the {} sink has an empty `path`; set it to a directory or URL",
                self.format.name()
            )));
        }
        Ok(())
    }

    fn location(&self) -> Option<String> {
        Some(self.location.clone())
    }

    async fn writer(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        let loc = self.resolve()?.clone();
        let dir = format!("{}/{}", self.region_staging(ctx.region), ctx.epoch);
        let prefix = format!("part-r{}-e{}-{}", ctx.region, ctx.epoch, ctx.writer);
        Ok(Box::new(FileWriter { files: RollingWriter::new(self.format.clone(), loc, &dir, prefix, self.target_file_bytes) }))
    }

    async fn commit(&self, _ctx: &SinkContext, _checkpoint: u64, committables: &[Committable]) -> Result<()> {
        let loc = self.resolve()?;
        for c in committables {
            for f in files_of(c)?.files {
                let from = loc.child(&f.staging);
                let to = loc.child(&f.path);
                match loc.store.rename(&from, &to).await {
                    Ok(()) => {}
                    Err(object_store::Error::NotFound { .. }) => {
                        // Committed before (a retried commit after a crash), unless the final file is missing too.
                        if let Err(e) = loc.store.head(&to).await {
                            return Err(Error::checkpoint(format!(
                                "staged file {} is gone and {} does not exist: the data of this checkpoint was deleted \
                                 outside Alluvium",
                                f.staging, f.path
                            ))
                            .with_source(e));
                        }
                    }
                    Err(e) => return Err(Error::from(e).context(format!("committing {}", f.path))),
                }
            }
        }
        Ok(())
    }

    async fn abort(&self, _ctx: &SinkContext, committables: &[Committable]) -> Result<()> {
        let loc = self.resolve()?;
        for c in committables {
            for f in files_of(c)?.files {
                match loc.store.delete(&loc.child(&f.staging)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    async fn recover(&self, ctx: &SinkContext, pending: &[Committable]) -> Result<()> {
        let loc = self.resolve()?;
        let mut keep = std::collections::HashSet::new();
        for c in pending {
            for f in files_of(c)?.files {
                keep.insert(loc.child(&f.staging));
            }
        }
        let dir = loc.child(&self.region_staging(ctx.region));
        let leftovers: Vec<Path> = loc
            .store
            .list(Some(&dir))
            .map_ok(|m| m.location)
            .try_filter(|p| futures::future::ready(!keep.contains(p)))
            .try_collect()
            .await?;
        if !leftovers.is_empty() {
            tracing::info!(region = ctx.region, files = leftovers.len(), "deleting staged files of failed attempts");
        }
        delete_files(loc, leftovers).await
    }
}

/// Deletes `paths` (already gone is fine).
pub async fn delete_files(loc: &Location, paths: impl IntoIterator<Item = Path>) -> Result<()> {
    for p in paths {
        match loc.store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Files directly in `loc` whose names start with `name_prefix`, are not in `keep` (file names),
/// and were last modified at least `grace` ago: the candidates for orphan deletion of a region's
/// failed attempts. The caller removes those its table still references before deleting.
pub async fn orphan_candidates(
    loc: &Location,
    name_prefix: &str,
    keep: &std::collections::HashSet<String>,
    grace: std::time::Duration,
) -> Result<Vec<Path>> {
    let cutoff = std::time::SystemTime::now() - grace;
    let cutoff_ms = cutoff.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    Ok(loc
        .store
        .list(Some(&loc.prefix))
        .try_filter(|m| {
            let name = m.location.filename().unwrap_or_default();
            let old = m.last_modified.timestamp_millis() <= cutoff_ms;
            futures::future::ready(name.starts_with(name_prefix) && old && !keep.contains(name))
        })
        .map_ok(|m| m.location)
        .try_collect()
        .await?)
}

struct OpenFile {
    name: String,
    encoder: Box<dyn FileEncoder>,
    upload: WriteMultipart,
    rows: u64,
    bytes: u64,
}

impl OpenFile {
    /// Hands what the encoder produced to the upload without copying it (the upload slices it
    /// into parts); the encoder gets a new buffer of the same capacity.
    fn upload_encoded(&mut self) {
        let buf = self.encoder.encoded();
        if buf.is_empty() {
            return;
        }
        self.bytes += buf.len() as u64;
        let full = std::mem::replace(buf, Vec::with_capacity(buf.capacity()));
        self.upload.put(bytes::Bytes::from(full));
    }
}

/// A file closed by a [`RollingWriter`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WrittenFile {
    /// Path relative to the writer's location.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// Streams batches into files of one format in a folder, rolling to a new file at a target size.
///
/// The encoded bytes go to storage as they are produced (multipart uploads, at most two parts in
/// flight), so memory stays bounded by the format's buffer (a Parquet row group) whatever the file
/// size. Files are named `PREFIX-SEQ.EXT`. Every transactional file-based sink is built on this:
/// the plain file sink, Delta and Iceberg.
pub struct RollingWriter {
    format: Arc<dyn FileFormat>,
    loc: Location,
    dir: String,
    prefix: String,
    target: u64,
    seq: u64,
    open: Option<OpenFile>,
    closed: Vec<WrittenFile>,
}

impl RollingWriter {
    /// Writes into `dir` (relative to `loc`; empty for its root), files `PREFIX-SEQ.EXT`, rolling at `target_file_bytes`.
    pub fn new(format: Arc<dyn FileFormat>, loc: Location, dir: &str, prefix: String, target_file_bytes: u64) -> Self {
        let dir = dir.trim_matches('/').to_string();
        Self { format, loc, dir, prefix, target: target_file_bytes.max(1), seq: 0, open: None, closed: Vec::new() }
    }

    fn relative(&self, name: &str) -> String {
        if self.dir.is_empty() {
            name.to_string()
        } else {
            format!("{}/{}", self.dir, name)
        }
    }

    async fn open_file(&mut self, schema: SchemaRef) -> Result<OpenFile> {
        let name = format!("{}-{}.{}", self.prefix, self.seq, self.format.extension());
        self.seq += 1;
        let path = self.loc.child(&self.relative(&name));
        let upload = self.loc.store.put_multipart(&path).await.map_err(|e| Error::from(e).context(format!("creating {name}")))?;
        Ok(OpenFile {
            name,
            encoder: self.format.encoder(schema)?,
            upload: WriteMultipart::new_with_chunk_size(upload, self.loc.upload_part_bytes()),
            rows: 0,
            bytes: 0,
        })
    }

    async fn close_file(&mut self) -> Result<()> {
        let Some(mut f) = self.open.take() else { return Ok(()) };
        f.encoder.finish()?;
        f.upload_encoded();
        f.upload.finish().await.map_err(|e| Error::from(e).context(format!("finishing {}", f.name)))?;
        self.closed.push(WrittenFile { path: self.relative(&f.name), rows: f.rows, bytes: f.bytes });
        Ok(())
    }

    /// Encodes and uploads a batch; waits while two parts are in flight (backpressure).
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.open.is_none() {
            let f = self.open_file(batch.schema()).await?;
            self.open = Some(f);
        }
        let f = self.open.as_mut().expect("open file");
        f.encoder.write(batch)?;
        f.rows += batch.num_rows() as u64;
        f.upload_encoded();
        f.upload.wait_for_capacity(2).await.map_err(|e| Error::from(e).context(format!("uploading {}", f.name)))?;
        if f.bytes + f.encoder.buffered_bytes() >= self.target {
            self.close_file().await?;
        }
        Ok(())
    }

    /// Closes the open file (the next batch starts a new one), e.g. because the schema changes.
    pub async fn roll(&mut self) -> Result<()> {
        self.close_file().await
    }

    /// Closes the open file and returns every file closed since the last call.
    pub async fn finish(&mut self) -> Result<Vec<WrittenFile>> {
        self.close_file().await?;
        Ok(std::mem::take(&mut self.closed))
    }
}

struct FileWriter {
    files: RollingWriter,
}

#[async_trait]
impl SinkWriter for FileWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.files.write(&batch).await
    }

    async fn prepare(&mut self, _checkpoint: u64) -> Result<Option<Committable>> {
        let written = self.files.finish().await?;
        if written.is_empty() {
            return Ok(None);
        }
        let staging_dir = format!("{}/", self.files.dir);
        let files: Vec<StagedFile> = written
            .into_iter()
            .map(|f| StagedFile {
                path: f.path.strip_prefix(&staging_dir).unwrap_or(&f.path).to_string(),
                staging: f.path,
                rows: f.rows,
                bytes: f.bytes,
            })
            .collect();
        let rows = files.iter().map(|f| f.rows).sum();
        let bytes = files.iter().map(|f| f.bytes).sum();
        let payload = serde_json::to_value(FilesCommittable { files }).expect("serializable");
        Ok(Some(Committable { rows, bytes, payload }))
    }
}
