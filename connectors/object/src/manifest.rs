//! `ManifestSource`: the rows of CSV, JSON Lines or Parquet files that carry URIs and metadata, as
//! ObjectRef rows.
//!
//! A manifest is the other way to say which objects to ingest, when listing a prefix is not it: a
//! dataset's index (`uri,label,caption`), an export of another system, the output of a query. Each
//! row becomes an ObjectRef (`ref`) plus the declared `columns`, typed:
//!
//! ```text
//!  manifest.csv                                   rows
//!  uri,label,caption                              ref                      label  caption
//!  images/a.jpg,3,a cat              ──────▶      file:///data/images/a.jpg  3    "a cat"
//!  s3://b/x.png,7,"a dog, asleep"                 s3://b/x.png               7    "a dog, asleep"
//!  images/c.jpg,three,?              ──────▶      dead letter: line 4, column `label`: `three` is not an int64
//! ```
//!
//! **Splits.** Files are read in parallel: a Parquet file by groups of row groups, a CSV or JSON
//! Lines file by byte ranges cut at line ends. To number lines across ranges, the enumerator scans
//! a large text file once for its line ends (counting newlines runs at memory speed; the file is
//! read twice, which is small next to the objects it lists); a file up to `split_bytes` is one
//! split and is not scanned. Each split records its first line (or row), so a reader always knows
//! the line number of what it reads, and its position (byte offset and line, or row) makes a
//! restored reader resume at the next row, not at the start of the split.
//!
//! **Bad rows never stop the job and are never lost.** A line that does not parse (wrong number of
//! fields, a value that is not of its column's type, broken JSON) or has no usable URI goes to the
//! dead-letter output with the manifest, its line number (1-based, as an editor shows it; for
//! Parquet the 0-based row) and its text. A file that lacks the URI column or a declared column is a
//! configuration error naming the file and the column.
//!
//! **URIs.** Absolute URIs (`s3://…`, `https://…`, `file:///…`) and absolute paths are taken as they
//! are; relative ones resolve against `base_uri`, by default the directory of the manifest that
//! lists them.
//!
//! CSV records are one per line: a quoted field may hold the delimiter, not a newline (such a record
//! becomes dead letters). The first line is the header, unless `header = false`; then the columns
//! are the URI column and the declared columns, in that order.

use std::sync::Arc;

use alluvium_core::arrow::array::{new_null_array, Array, ArrayRef, AsArray, RecordBatchOptions, StringArray, UInt64Array};
use alluvium_core::arrow::compute::{cast, concat_batches, filter_record_batch, take_record_batch};
use alluvium_core::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use alluvium_core::arrow::error::ArrowError;
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::types::{ObjectRef, ObjectRefBuilder, ObjectRefType};
use alluvium_core::{
    Discovery, Error, ErrorKind, Rejected, Result, RowFailure, Source, Split, SplitEnumerator, SplitReader, State,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::registry::ObjectStoreRegistry;
use crate::source::ObjectStoreSource;

/// The format of a manifest file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestFormat {
    /// Comma- (or `delimiter`-) separated values, one record per line.
    Csv,
    /// One JSON object per line (`.jsonl`, `.ndjson`).
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

impl ManifestFormat {
    const ALL: [Self; 3] = [Self::Csv, Self::Jsonl, Self::Parquet];

    /// The format a file name says (`.csv`, `.tsv`, `.jsonl`, `.ndjson`, `.json`, `.parquet`).
    pub fn of(name: &str) -> Option<Self> {
        let ext = name.rsplit('.').next()?.to_ascii_lowercase();
        Self::ALL.into_iter().find(|f| f.extensions().contains(&ext.as_str()))
    }

    fn extensions(self) -> &'static [&'static str] {
        match self {
            Self::Csv => &["csv", "tsv"],
            Self::Jsonl => &["jsonl", "ndjson", "json"],
            Self::Parquet => &["parquet", "pq"],
        }
    }
}

/// Reads manifests into ObjectRef rows. See the module docs.
#[derive(Debug, Clone)]
pub struct ManifestSource {
    registry: Arc<ObjectStoreRegistry>,
    paths: Vec<String>,
    format: Option<ManifestFormat>,
    uri_column: String,
    ref_column: String,
    columns: Vec<Field>,
    base_uri: Option<String>,
    header: bool,
    delimiter: u8,
    split_bytes: u64,
    batch_size: usize,
}

impl ManifestSource {
    /// The manifests at `paths`: files, or directories/prefixes (ending in `/`) whose files of the
    /// format are read in key order. The format comes from the first file's extension unless set.
    pub fn new(registry: Arc<ObjectStoreRegistry>, paths: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            registry,
            paths: paths.into_iter().map(Into::into).collect(),
            format: None,
            uri_column: "uri".into(),
            ref_column: "ref".into(),
            columns: Vec::new(),
            base_uri: None,
            header: true,
            delimiter: b',',
            split_bytes: 32 << 20,
            batch_size: 1024,
        }
    }
    /// Sets the format instead of taking it from the extension.
    pub fn format(mut self, format: ManifestFormat) -> Self {
        self.format = Some(format);
        self
    }
    /// The column that holds each row's URI (`uri`).
    pub fn uri_column(mut self, name: impl Into<String>) -> Self {
        self.uri_column = name.into();
        self
    }
    /// The name of the output ObjectRef column (`ref`).
    pub fn ref_column(mut self, name: impl Into<String>) -> Self {
        self.ref_column = name.into();
        self
    }
    /// The columns kept besides the URI, in order, each `"name"` (text) or `"name: type"`, the
    /// type one of `string`, `int32`, `int64`, `float32`, `float64`, `bool`, `date`, `timestamp`
    /// (µs, UTC) or an Arrow type name (`Decimal128(10, 2)`).
    pub fn columns(mut self, specs: &[String]) -> Result<Self> {
        self.columns = specs.iter().map(|s| column_spec(s)).collect::<Result<_>>()?;
        Ok(self)
    }
    /// Resolves relative URIs against this URI instead of the manifest's directory.
    pub fn base_uri(mut self, uri: impl Into<String>) -> Self {
        self.base_uri = Some(uri.into());
        self
    }
    /// Whether CSV files start with a header line (true).
    pub fn header(mut self, header: bool) -> Self {
        self.header = header;
        self
    }
    /// The CSV field delimiter (`,`; `\t` for `.tsv` files when not set).
    pub fn delimiter(mut self, delimiter: u8) -> Self {
        self.delimiter = delimiter;
        self
    }
    /// The bytes of manifest per split (32 MiB): the unit of parallelism and of restart.
    pub fn split_bytes(mut self, n: u64) -> Self {
        self.split_bytes = n.max(1);
        self
    }
    /// Rows per batch (1024).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    fn format_of(&self, uri: &str) -> Result<ManifestFormat> {
        self.format.or_else(|| ManifestFormat::of(uri)).ok_or_else(|| {
            Error::config(format!(
                "manifest source: cannot tell the format of `{uri}` from its name; set `format` to \"csv\", \"jsonl\" or \"parquet\""
            ))
        })
    }

    /// The files of the manifest, in order: each path, or the files of the format under it.
    async fn files(&self) -> Result<Vec<FileEntry>> {
        let mut files = Vec::new();
        for p in &self.paths {
            if p.ends_with('/') || std::path::Path::new(p).is_dir() {
                let formats = self.format.map_or(ManifestFormat::ALL.to_vec(), |f| vec![f]);
                let exts = formats.iter().flat_map(|f| f.extensions().iter().copied());
                let mut listed = ObjectStoreSource::prefix(self.registry.clone(), p.clone()).extensions(exts).list().await?;
                listed.sort_by(|a, b| a.uri.cmp(&b.uri));
                for e in listed {
                    // A local entry whose name cannot be a key (the source's readers make it a
                    // dead letter; a manifest cannot be read at all): said, and left out.
                    if let Some(why) = e.rejected {
                        tracing::warn!("manifest source: skipping `{}`: {why}", e.uri);
                        continue;
                    }
                    files.push(FileEntry { uri: e.uri, size: e.size, etag: e.etag });
                }
            } else {
                let uri = file_url(p)?;
                let (store, path) = self.resolve(&uri).await?;
                let meta = store.head(&path).await.map_err(|e| Error::from(e).context(format!("manifest `{uri}`")))?;
                files.push(FileEntry { uri, size: meta.size, etag: meta.e_tag });
            }
        }
        Ok(files)
    }

    async fn resolve(&self, uri: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let found = self.registry.resolve(uri).await?.map_err(|r| Error::config(format!("manifest `{uri}`: {}", r.0)))?;
        // Before the store opens it: opening a FIFO would wait for a writer forever.
        if let Some(why) = crate::fetch::not_regular(uri) {
            return Err(Error::config(format!("manifest `{uri}`: {why}")));
        }
        Ok(found)
    }

    fn delimiter_for(&self, uri: &str) -> u8 {
        if self.delimiter == b',' && uri.to_ascii_lowercase().ends_with(".tsv") {
            b'\t'
        } else {
            self.delimiter
        }
    }

    /// The error for a manifest file without a wanted column; `has` are the columns it has.
    fn missing(&self, file: &FileEntry, column: &str, has: &[impl AsRef<str>]) -> Error {
        let has: Vec<&str> = has.iter().map(AsRef::as_ref).collect();
        let uri_hint = if column == self.uri_column { " or set `uri_column`" } else { "" };
        Error::config(format!(
            "manifest `{}` has no column `{column}` (it has: {}); fix `columns`{uri_hint}",
            file.uri,
            has.join(", ")
        ))
    }

    /// The columns read from a file: the URI column, then the declared ones.
    fn read_schema(&self) -> SchemaRef {
        let mut fields = vec![Field::new(&self.uri_column, DataType::Utf8, true)];
        fields.extend(self.columns.iter().cloned());
        Arc::new(Schema::new(fields))
    }
}

/// A plain local path as a `file://` URL; URLs as they are.
fn file_url(p: &str) -> Result<String> {
    match Url::parse(p) {
        Ok(u) if u.scheme().len() > 1 => Ok(p.to_string()),
        _ => {
            let abs = std::path::absolute(p).map_err(|e| Error::config(format!("manifest source: bad path `{p}`: {e}")))?;
            Url::from_file_path(&abs)
                .map(|u| u.to_string())
                .map_err(|_| Error::config(format!("manifest source: `{p}` is not a file path")))
        }
    }
}

/// `"name"` or `"name: type"`.
fn column_spec(spec: &str) -> Result<Field> {
    let (name, ty) = match spec.split_once(':') {
        Some((n, t)) => (n.trim(), t.trim()),
        None => (spec.trim(), "string"),
    };
    if name.is_empty() {
        return Err(Error::config(format!("manifest source `columns`: `{spec}` has no column name; write \"label: int64\"")));
    }
    let data_type = match ty.to_ascii_lowercase().as_str() {
        "string" | "str" | "text" | "utf8" => DataType::Utf8,
        "int" | "int64" | "long" => DataType::Int64,
        "int32" => DataType::Int32,
        "float" | "float64" | "double" => DataType::Float64,
        "float32" => DataType::Float32,
        "bool" | "boolean" => DataType::Boolean,
        "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => ty.parse::<DataType>().map_err(|_| {
            Error::config(format!(
                "manifest source `columns`: `{ty}` (for `{name}`) is not a type; use string, int32, int64, float32, float64, bool, date, timestamp or an Arrow type name"
            ))
        })?,
    };
    Ok(Field::new(name, data_type, true))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileEntry {
    uri: String,
    size: u64,
    etag: Option<String>,
}

/// What a split reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Part {
    /// Lines `[start, end)` of a text file; `first_line` is the (1-based) number of the line at `start`.
    Text { file: FileEntry, format: ManifestFormat, start: u64, end: u64, first_line: u64, header: Option<Vec<String>> },
    /// Row groups `[from, to)` of a Parquet file; `first_row` is the file's row index of their first row.
    Parquet { file: FileEntry, from: usize, to: usize, first_row: u64 },
}

#[async_trait]
impl Source for ManifestSource {
    fn name(&self) -> String {
        "manifest".into()
    }

    fn schema(&self) -> SchemaRef {
        let mut fields = vec![ObjectRefType::field(&self.ref_column, false)];
        fields.extend(self.columns.iter().cloned());
        Arc::new(Schema::new(fields))
    }

    fn validate(&self) -> Result<()> {
        if self.paths.is_empty() {
            return Err(Error::config("manifest source: `paths` is empty; list the manifest files or prefixes"));
        }
        if let Some(f) = self.columns.iter().find(|f| f.name() == &self.uri_column || f.name() == &self.ref_column) {
            return Err(Error::config(format!(
                "manifest source `columns`: `{}` is the URI or ObjectRef column; list only the other columns",
                f.name()
            )));
        }
        Ok(())
    }

    async fn enumerator(&self, restored: Option<State>) -> Result<Box<dyn SplitEnumerator>> {
        let state = match restored {
            Some(s) => Some(serde_json::from_value(s).map_err(|e| {
                Error::checkpoint(format!("manifest source: the checkpointed enumerator state is malformed: {e}"))
            })?),
            None => None,
        };
        Ok(Box::new(Enumerator { source: self.clone(), state }))
    }

    async fn open(&self, split: &Split, position: Option<&State>) -> Result<Box<dyn SplitReader>> {
        let part: Part = serde_json::from_value(split.payload.clone())
            .map_err(|e| Error::checkpoint(format!("manifest source: split `{}` is malformed: {e}", split.id)))?;
        let position: Option<Position> = position
            .map(|p| serde_json::from_value(p.clone()))
            .transpose()
            .map_err(|e| Error::checkpoint(format!("manifest source: the position in split `{}` is malformed: {e}", split.id)))?;
        match part {
            Part::Text { file, format, start, end, first_line, header } => {
                let at = position.unwrap_or(Position { offset: start, line: first_line, rows: 0 });
                let reader = TextReader::open(self.clone(), file, format, header, at, end).await?;
                Ok(Box::new(reader))
            }
            Part::Parquet { file, from, to, first_row } => {
                let done = position.map_or(0, |p| p.rows);
                Ok(Box::new(ParquetReader::open(self.clone(), file, from..to, first_row, done).await?))
            }
        }
    }
}

// ---------------------------------------------------------------- enumerator

/// Durable discovery state: the files not yet fully split, and where the first one is at.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EnumState {
    pending: std::collections::VecDeque<FileEntry>,
    /// Byte offset of the next split in the first pending file (text formats).
    offset: u64,
    /// Its line number.
    line: u64,
    header: Option<Vec<String>>,
    splits: u64,
}

struct Enumerator {
    source: ManifestSource,
    state: Option<EnumState>,
}

impl Enumerator {
    fn split(&mut self, part: Part) -> Split {
        let state = self.state.as_mut().expect("listed");
        state.splits += 1;
        Split { id: format!("manifest-{}", state.splits), payload: serde_json::to_value(part).expect("serializable") }
    }

    /// The next split of the first pending text file.
    async fn text_split(&mut self, file: FileEntry, format: ManifestFormat) -> Result<Split> {
        let src = &self.source;
        let (store, path) = src.resolve(&file.uri).await?;
        let state = self.state.as_mut().expect("listed");
        if state.offset == 0 {
            state.line = 1;
            state.header = None;
            if format == ManifestFormat::Csv && src.header {
                let (line, end) = first_line(&store, &path, &file).await?;
                state.header = Some(csv_header(&line, src.delimiter_for(&file.uri), &file.uri)?);
                state.offset = end;
                state.line = 2;
            }
        }
        let start = state.offset;
        let (end, lines) = if file.size - start <= src.split_bytes {
            (file.size, 0)
        } else {
            cut(&store, &path, &file, start, src.split_bytes).await?
        };
        let part = Part::Text { file: file.clone(), format, start, end, first_line: state.line, header: state.header.clone() };
        state.offset = end;
        state.line += lines;
        if end >= file.size {
            state.pending.pop_front();
            state.offset = 0;
        }
        Ok(self.split(part))
    }

    /// The splits of the first pending Parquet file: runs of row groups of about `split_bytes`.
    async fn parquet_splits(&mut self, file: FileEntry) -> Result<Vec<Split>> {
        let (store, path) = self.source.resolve(&file.uri).await?;
        let meta = parquet_metadata(store, path, &file).await?;
        let mut parts = Vec::new();
        let (mut from, mut bytes, mut first_row, mut rows) = (0, 0u64, 0u64, 0u64);
        let groups = meta.row_groups();
        for (i, g) in groups.iter().enumerate() {
            bytes += g.compressed_size().max(0) as u64;
            rows += g.num_rows().max(0) as u64;
            if bytes >= self.source.split_bytes || i + 1 == groups.len() {
                parts.push(Part::Parquet { file: file.clone(), from, to: i + 1, first_row });
                (from, bytes, first_row) = (i + 1, 0, first_row + rows);
                rows = 0;
            }
        }
        self.state.as_mut().expect("listed").pending.pop_front();
        Ok(parts.into_iter().map(|p| self.split(p)).collect())
    }
}

#[async_trait]
impl SplitEnumerator for Enumerator {
    async fn discover(&mut self) -> Result<Discovery> {
        if self.state.is_none() {
            let files = self.source.files().await?;
            self.state = Some(EnumState { pending: files.into(), offset: 0, line: 1, header: None, splits: 0 });
        }
        loop {
            let Some(file) = self.state.as_ref().expect("listed").pending.front().cloned() else {
                return Ok(Discovery::Exhausted);
            };
            if file.size == 0 {
                self.state.as_mut().expect("listed").pending.pop_front();
                continue;
            }
            return Ok(Discovery::Splits(match self.source.format_of(&file.uri)? {
                ManifestFormat::Parquet => self.parquet_splits(file).await?,
                f => vec![self.text_split(file, f).await?],
            }));
        }
    }

    fn snapshot(&self) -> State {
        serde_json::to_value(&self.state).expect("serializable")
    }
}

async fn get_range(store: &Arc<dyn ObjectStore>, path: &Path, file: &FileEntry, range: std::ops::Range<u64>) -> Result<Bytes> {
    let opts = GetOptions { range: Some(GetRange::Bounded(range)), if_match: file.etag.clone(), ..Default::default() };
    let got = store.get_opts(path, opts).await.map_err(|e| changed(e, file))?;
    got.bytes().await.map_err(|e| changed(e, file))
}

/// An error reading a manifest: when its ETag no longer matches, say that it changed.
fn changed(e: object_store::Error, file: &FileEntry) -> Error {
    match e {
        object_store::Error::Precondition { .. } => Error::external(format!(
            "manifest `{}` changed while the job was reading it; rerun the job against a manifest that is not rewritten in place",
            file.uri
        )),
        e => Error::from(e).context(format!("reading manifest `{}`", file.uri)),
    }
}

/// The file's first line (without its newline) and the offset after it.
async fn first_line(store: &Arc<dyn ObjectStore>, path: &Path, file: &FileEntry) -> Result<(Vec<u8>, u64)> {
    let mut want = 64 << 10;
    loop {
        let n = want.min(file.size);
        let bytes = get_range(store, path, file, 0..n).await?;
        if let Some(i) = memchr::memchr(b'\n', &bytes) {
            return Ok((bytes[..i].to_vec(), i as u64 + 1));
        }
        if n == file.size {
            return Ok((bytes.to_vec(), n));
        }
        want *= 4;
    }
}

/// Where a split of about `target` bytes from `start` ends (after a newline), and its line count.
async fn cut(store: &Arc<dyn ObjectStore>, path: &Path, file: &FileEntry, start: u64, target: u64) -> Result<(u64, u64)> {
    let end = (start + target).min(file.size);
    let bytes = get_range(store, path, file, start..end).await?;
    let lines = memchr::memchr_iter(b'\n', &bytes).count() as u64;
    let Some(last) = memchr::memrchr(b'\n', &bytes) else {
        // One line longer than a split: it ends further on.
        let mut at = end;
        loop {
            let to = (at + target).min(file.size);
            let more = get_range(store, path, file, at..to).await?;
            if let Some(i) = memchr::memchr(b'\n', &more) {
                return Ok((at + i as u64 + 1, 1));
            }
            if to == file.size {
                return Ok((to, 1));
            }
            at = to;
        }
    };
    Ok((start + last as u64 + 1, lines))
}

fn csv_header(line: &[u8], delimiter: u8, uri: &str) -> Result<Vec<String>> {
    let format = arrow_csv::reader::Format::default().with_header(true).with_delimiter(delimiter);
    let (schema, _) = format
        .infer_schema(std::io::Cursor::new(line), Some(0))
        .map_err(|e| Error::data(format!("manifest `{uri}`: cannot read the CSV header: {e}")))?;
    Ok(schema.fields().iter().map(|f| f.name().trim().to_string()).collect())
}

async fn parquet_metadata(
    store: Arc<dyn ObjectStore>,
    path: Path,
    file: &FileEntry,
) -> Result<Arc<parquet::file::metadata::ParquetMetaData>> {
    use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
    let mut reader = parquet::arrow::async_reader::ParquetObjectReader::new(store, path).with_file_size(file.size);
    let meta = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::default())
        .await
        .map_err(|e| Error::data(format!("manifest `{}` is not a readable Parquet file: {e}", file.uri)))?;
    Ok(meta.metadata().clone())
}

// ---------------------------------------------------------------- readers

/// A reader's position: the next byte and line (text), or the rows done (Parquet).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Position {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    line: u64,
    #[serde(default)]
    rows: u64,
}

/// What both readers do with decoded rows: URIs into ObjectRefs, bad rows into rejects.
struct Rows {
    source: ManifestSource,
    file: FileEntry,
    base: Option<Url>,
    out: SchemaRef,
}

impl Rows {
    fn new(source: ManifestSource, file: FileEntry) -> Self {
        let base = source.base_uri.as_deref().and_then(|b| Url::parse(b).ok()).or_else(|| Url::parse(&file.uri).ok());
        let out = source.schema();
        Self { source, file, base, out }
    }

    /// Turns `batch` (the URI column, then the declared columns) into output rows; the rows it
    /// cannot use are returned as `(row, reason)`.
    fn finish(&self, batch: &RecordBatch) -> Result<(RecordBatch, Vec<(usize, String)>)> {
        let uris = batch.column(0).as_string::<i32>();
        let mut refs = ObjectRefBuilder::new();
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut bad = Vec::new();
        for (i, raw) in uris.iter().enumerate() {
            match resolve_uri(raw, self.base.as_ref(), &self.source.uri_column) {
                Ok(uri) => {
                    refs.append(&ObjectRef::new(uri));
                    keep.push(true);
                }
                Err(reason) => {
                    bad.push((i, reason));
                    keep.push(false);
                }
            }
        }
        let kept = filter_record_batch(batch, &keep.into())?;
        let mut columns: Vec<ArrayRef> = vec![Arc::new(refs.finish())];
        columns.extend(kept.columns()[1..].iter().cloned());
        let rows = RecordBatch::try_new_with_options(
            self.out.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(kept.num_rows())),
        )?;
        Ok((rows, bad))
    }

    /// The rejects of a text split: `(line number, text, reason)`.
    fn rejected(&self, bad: Vec<(u64, String, String)>) -> Option<Rejected> {
        if bad.is_empty() {
            return None;
        }
        let n = bad.len();
        let records = RecordBatch::try_from_iter([
            ("manifest", Arc::new(StringArray::from(vec![self.file.uri.as_str(); n])) as ArrayRef),
            ("line", Arc::new(UInt64Array::from_iter_values(bad.iter().map(|b| b.0))) as ArrayRef),
            ("text", Arc::new(StringArray::from_iter_values(bad.iter().map(|b| b.1.as_str()))) as ArrayRef),
        ])
        .expect("fixed schema");
        let failures = bad.into_iter().enumerate().map(|(i, (_, _, why))| RowFailure::new(i, ErrorKind::Data, why)).collect();
        Some(Rejected { records, failures })
    }
}

fn resolve_uri(raw: Option<&str>, base: Option<&Url>, column: &str) -> std::result::Result<String, String> {
    let raw = raw.map(str::trim).unwrap_or_default();
    if raw.is_empty() {
        return Err(format!("the row has no `{column}`"));
    }
    match Url::parse(raw) {
        Ok(u) if u.scheme().len() > 1 => return Ok(raw.to_string()),
        Err(url::ParseError::RelativeUrlWithoutBase) | Ok(_) => {}
        Err(e) => return Err(format!("`{raw}` is not a URI: {e}")),
    }
    if raw.starts_with('/') {
        return Url::from_file_path(raw).map(|u| u.to_string()).map_err(|_| format!("`{raw}` is not a valid path"));
    }
    match base {
        Some(b) => b.join(raw).map(|u| u.to_string()).map_err(|e| format!("`{raw}` does not resolve against `{b}`: {e}")),
        None => Err(format!("`{raw}` is relative and there is no `base_uri` to resolve it against")),
    }
}

/// The indices below `n` that are not among the failed `bad` ones, in order: where the rows of a
/// batch made of the survivors came from.
fn survivors(n: usize, bad: &[(usize, String)]) -> Vec<usize> {
    let failed: std::collections::HashSet<usize> = bad.iter().map(|(i, _)| *i).collect();
    (0..n).filter(|i| !failed.contains(i)).collect()
}

/// At most this much of a rejected line is kept in its dead letter.
const MAX_REJECTED_TEXT: usize = 64 << 10;

/// Reads lines `[offset, end)` of a CSV or JSON Lines file.
struct TextReader {
    rows: Rows,
    decode: LineDecoder,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    buf: Vec<u8>,
    eof: bool,
    at: Position,
    rejected: Option<Rejected>,
}

impl TextReader {
    async fn open(
        source: ManifestSource,
        file: FileEntry,
        format: ManifestFormat,
        header: Option<Vec<String>>,
        at: Position,
        end: u64,
    ) -> Result<Self> {
        let decode = LineDecoder::new(&source, &file, format, header)?;
        let (store, path) = source.resolve(&file.uri).await?;
        let stream = if at.offset < end {
            let opts =
                GetOptions { range: Some(GetRange::Bounded(at.offset..end)), if_match: file.etag.clone(), ..Default::default() };
            store.get_opts(&path, opts).await.map_err(|e| changed(e, &file))?.into_stream()
        } else {
            futures::stream::empty().boxed()
        };
        Ok(Self { rows: Rows::new(source, file), decode, stream, buf: Vec::new(), eof: at.offset >= end, at, rejected: None })
    }

    /// Decodes the whole lines of `self.buf[..len]`.
    fn take(&mut self, len: usize) -> Result<RecordBatch> {
        let chunk: Vec<u8> = self.buf.drain(..len).collect();
        let mut lines = Vec::new();
        let mut line = self.at.line;
        let mut start = 0;
        while start < chunk.len() {
            let end = memchr::memchr(b'\n', &chunk[start..]).map_or(chunk.len(), |i| start + i + 1);
            let text = &chunk[start..end];
            if !text.iter().all(u8::is_ascii_whitespace) {
                lines.push((line, start..end));
            }
            line += 1;
            start = end;
        }
        let (batch, mut bad) = self.decode.lines(&chunk, &lines)?;
        let (rows, unusable) = self.rows.finish(&batch)?;
        // `batch` rows are the lines that decoded, in order; map their indices back to lines.
        let decoded = survivors(lines.len(), &bad);
        bad.extend(unusable.into_iter().map(|(r, why)| (decoded[r], why)));
        bad.sort_by_key(|(i, _)| *i);
        let rejects = bad
            .into_iter()
            .map(|(i, why)| {
                let (n, range) = &lines[i];
                let mut text = String::from_utf8_lossy(&chunk[range.clone()]).trim_end_matches(['\r', '\n']).to_string();
                if text.len() > MAX_REJECTED_TEXT {
                    let cut = (0..=MAX_REJECTED_TEXT).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
                    text.truncate(cut);
                    text.push('…');
                }
                (*n, text, format!("line {n}: {why}"))
            })
            .collect();
        self.rejected = self.rows.rejected(rejects);
        self.at = Position { offset: self.at.offset + chunk.len() as u64, line, rows: 0 };
        Ok(rows)
    }
}

#[async_trait]
impl SplitReader for TextReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            // A batch ends after the `batch_size`th whole line.
            if let Some(end) = memchr::memchr_iter(b'\n', &self.buf).nth(self.rows.source.batch_size - 1) {
                return self.take(end + 1).map(Some);
            }
            if self.eof {
                return if self.buf.is_empty() { Ok(None) } else { self.take(self.buf.len()).map(Some) };
            }
            match self.stream.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk.map_err(|e| changed(e, &self.rows.file))?),
                None => self.eof = true,
            }
        }
    }

    fn position(&self) -> State {
        serde_json::to_value(self.at).expect("serializable")
    }

    fn rejected(&mut self) -> Option<Rejected> {
        self.rejected.take()
    }
}

/// Decodes lines of one text file into batches of the URI column and the declared columns.
enum LineDecoder {
    Csv { schema: SchemaRef, projection: Vec<usize>, delimiter: u8 },
    Json { schema: SchemaRef },
}

impl LineDecoder {
    fn new(source: &ManifestSource, file: &FileEntry, format: ManifestFormat, header: Option<Vec<String>>) -> Result<Self> {
        let wanted = source.read_schema();
        match format {
            ManifestFormat::Jsonl => Ok(Self::Json { schema: wanted }),
            ManifestFormat::Csv => {
                let names: Vec<String> = header.unwrap_or_else(|| wanted.fields().iter().map(|f| f.name().clone()).collect());
                // Undeclared columns are read as text (and not kept).
                let fields: Vec<Field> = names
                    .iter()
                    .map(|n| Field::new(n, wanted.field_with_name(n).map_or(DataType::Utf8, |f| f.data_type().clone()), true))
                    .collect();
                let projection = wanted
                    .fields()
                    .iter()
                    .map(|f| names.iter().position(|n| n == f.name()).ok_or_else(|| source.missing(file, f.name(), &names)))
                    .collect::<Result<_>>()?;
                Ok(Self::Csv { schema: Arc::new(Schema::new(fields)), projection, delimiter: source.delimiter_for(&file.uri) })
            }
            ManifestFormat::Parquet => Err(Error::internal("Parquet manifests are not read as lines")),
        }
    }

    fn decode(&self, bytes: &[u8], rows: usize) -> std::result::Result<RecordBatch, ArrowError> {
        let batch = match self {
            Self::Csv { schema, projection, delimiter } => {
                let mut d = arrow_csv::ReaderBuilder::new(schema.clone())
                    .with_header(false)
                    .with_delimiter(*delimiter)
                    .with_projection(projection.clone())
                    .with_batch_size(rows.max(1))
                    .build_decoder();
                feed(bytes, |b| d.decode(b))?;
                d.flush()?
            }
            Self::Json { schema } => {
                let mut d = alluvium_core::arrow::json::ReaderBuilder::new(schema.clone())
                    .with_batch_size(rows.max(1))
                    .build_decoder()?;
                feed(bytes, |b| d.decode(b))?;
                d.flush()?
            }
        };
        let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(self.schema()));
        if batch.num_rows() != rows {
            return Err(ArrowError::ParseError(format!("expected {rows} records, read {}", batch.num_rows())));
        }
        Ok(batch)
    }

    fn schema(&self) -> SchemaRef {
        match self {
            Self::Csv { schema, projection, .. } => Arc::new(schema.project(projection).expect("valid projection")),
            Self::Json { schema } => schema.clone(),
        }
    }

    /// An Arrow parse error as a person reads it: no `Parser error:` prefix, no decoder-relative
    /// line number (the caller gives the file's), the column by name.
    fn explain(&self, e: ArrowError) -> String {
        let text = match e {
            ArrowError::ParseError(m) | ArrowError::CsvError(m) | ArrowError::JsonError(m) => m,
            e => e.to_string(),
        };
        let text = rewrite_number(&text, " at line ", |_| None);
        let text = rewrite_number(&text, " for line ", |_| None);
        match self {
            Self::Csv { schema, .. } => {
                rewrite_number(&text, " for column ", |i| schema.fields().get(i).map(|f| f.name().clone()))
            }
            Self::Json { .. } => text,
        }
    }

    /// Decodes `lines` of `chunk`: all at once, or on an error one at a time, so that a bad line
    /// costs only itself. Returns the batch of the lines that decoded and `(line index, reason)`
    /// for the others.
    fn lines(&self, chunk: &[u8], lines: &[(u64, std::ops::Range<usize>)]) -> Result<(RecordBatch, Vec<(usize, String)>)> {
        let joined = || {
            let mut all = Vec::with_capacity(chunk.len() + 1);
            for (_, r) in lines {
                all.extend_from_slice(&chunk[r.clone()]);
                if all.last() != Some(&b'\n') {
                    all.push(b'\n');
                }
            }
            all
        };
        if let Ok(batch) = self.decode(&joined(), lines.len()) {
            return Ok((batch, Vec::new()));
        }
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for (i, (_, r)) in lines.iter().enumerate() {
            let mut one = chunk[r.clone()].to_vec();
            if one.last() != Some(&b'\n') {
                one.push(b'\n');
            }
            match self.decode(&one, 1) {
                Ok(b) => good.push(b),
                Err(e) => bad.push((i, self.explain(e))),
            }
        }
        Ok((concat_batches(&self.schema(), &good)?, bad))
    }
}

/// Feeds `bytes` to a push decoder until it has taken them all.
fn feed(
    mut bytes: &[u8],
    mut decode: impl FnMut(&[u8]) -> std::result::Result<usize, ArrowError>,
) -> std::result::Result<(), ArrowError> {
    while !bytes.is_empty() {
        let n = decode(bytes)?;
        if n == 0 {
            break;
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Removes `marker` and the number after it from `text`, or renames the number with `name`.
fn rewrite_number(text: &str, marker: &str, name: impl Fn(usize) -> Option<String>) -> String {
    let Some(i) = text.find(marker) else { return text.to_string() };
    let rest = &text[i + marker.len()..];
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let tail = &rest[digits..];
    match rest[..digits].parse().ok().and_then(&name) {
        Some(n) => format!("{}{marker}`{n}`{tail}", &text[..i]),
        None => format!("{}{tail}", &text[..i]),
    }
}

/// Reads row groups of a Parquet manifest.
struct ParquetReader {
    rows: Rows,
    stream: parquet::arrow::async_reader::ParquetRecordBatchStream<parquet::arrow::async_reader::ParquetObjectReader>,
    /// The file's row index of the first row of the split, and the rows read so far.
    first_row: u64,
    done: u64,
    rejected: Option<Rejected>,
}

impl ParquetReader {
    async fn open(
        source: ManifestSource,
        file: FileEntry,
        groups: std::ops::Range<usize>,
        first_row: u64,
        done: u64,
    ) -> Result<Self> {
        use parquet::arrow::{async_reader::ParquetRecordBatchStreamBuilder, ProjectionMask};
        let (store, path) = source.resolve(&file.uri).await?;
        let reader = parquet::arrow::async_reader::ParquetObjectReader::new(store, path).with_file_size(file.size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| Error::data(format!("manifest `{}` is not a readable Parquet file: {e}", file.uri)))?;
        let file_schema = builder.schema().clone();
        let roots = source
            .read_schema()
            .fields()
            .iter()
            .map(|f| {
                file_schema.index_of(f.name()).map_err(|_| {
                    let names: Vec<&String> = file_schema.fields().iter().map(|f| f.name()).collect();
                    source.missing(&file, f.name(), &names)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let stream = builder
            .with_row_groups(groups.collect())
            .with_projection(mask)
            .with_offset(done as usize)
            .with_batch_size(source.batch_size)
            .build()
            .map_err(|e| Error::data(format!("manifest `{}`: {e}", file.uri)))?;
        Ok(Self { rows: Rows::new(source, file), stream, first_row, done, rejected: None })
    }

    /// The URI column and the declared columns of `raw`, cast to their types; `(row, reason)`
    /// for each value that does not convert.
    fn typed(&self, raw: &RecordBatch) -> Result<(RecordBatch, Vec<(usize, String)>)> {
        let wanted = self.rows.source.read_schema();
        let mut bad = Vec::new();
        let mut columns = Vec::new();
        for f in wanted.fields() {
            let col = raw.column_by_name(f.name()).expect("projected");
            let typed = cast(col, f.data_type()).unwrap_or_else(|_| new_null_array(f.data_type(), col.len()));
            for r in 0..col.len() {
                if col.is_valid(r) && typed.is_null(r) {
                    let shown = alluvium_core::arrow::util::display::array_value_to_string(col, r).unwrap_or_default();
                    bad.push((r, format!("column `{}`: `{shown}` is not a {}", f.name(), f.data_type())));
                }
            }
            columns.push(typed);
        }
        Ok((RecordBatch::try_new(wanted, columns)?, bad))
    }
}

#[async_trait]
impl SplitReader for ParquetReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let Some(raw) = self.stream.next().await else { return Ok(None) };
        let raw = raw.map_err(|e| Error::data(format!("reading manifest `{}`: {e}", self.rows.file.uri)))?;
        let (typed, mut bad) = self.typed(&raw)?;
        let kept_rows = survivors(typed.num_rows(), &bad);
        let kept = take_record_batch(&typed, &UInt64Array::from_iter_values(kept_rows.iter().map(|r| *r as u64)))?;
        let (rows, unusable) = self.rows.finish(&kept)?;
        bad.extend(unusable.into_iter().map(|(r, why)| (kept_rows[r], why)));
        bad.sort_by_key(|(r, _)| *r);
        bad.dedup_by_key(|(r, _)| *r);
        let base = self.first_row + self.done;
        self.rejected = (!bad.is_empty()).then(|| {
            let idx = UInt64Array::from_iter_values(bad.iter().map(|(r, _)| *r as u64));
            let mut cols: Vec<(String, ArrayRef)> = vec![
                ("manifest".into(), Arc::new(StringArray::from(vec![self.rows.file.uri.as_str(); bad.len()])) as ArrayRef),
                ("row".into(), Arc::new(UInt64Array::from_iter_values(bad.iter().map(|(r, _)| base + *r as u64))) as ArrayRef),
            ];
            for (f, c) in raw.schema().fields().iter().zip(raw.columns()) {
                cols.push((f.name().clone(), alluvium_core::arrow::compute::take(c, &idx, None).expect("in bounds")));
            }
            let records = RecordBatch::try_from_iter(cols).expect("same lengths");
            let failures = bad
                .iter()
                .enumerate()
                .map(|(i, (r, why))| RowFailure::new(i, ErrorKind::Data, format!("row {}: {why}", base + *r as u64)))
                .collect();
            Rejected { records, failures }
        });
        self.done += raw.num_rows() as u64;
        Ok(Some(rows))
    }

    fn position(&self) -> State {
        serde_json::to_value(Position { rows: self.done, ..Default::default() }).expect("serializable")
    }

    fn rejected(&mut self) -> Option<Rejected> {
        self.rejected.take()
    }
}
