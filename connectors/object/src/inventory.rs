//! S3 Inventory reports as the objects source's listing, for buckets too large to list.
//!
//! S3 writes an inventory of a bucket daily or weekly: under the destination
//! `PREFIX/SOURCE-BUCKET/CONFIG-ID/`, a `YYYY-MM-DDTHH-MMZ/manifest.json` names the report's data
//! files (gzipped CSV or Parquet; ORC is refused with a clear error) and their columns. Reading
//! them is a few large GETs instead of a billion-key listing, and the same filters as a listing
//! apply ([`crate::ObjectStoreSource::inventory`]).
//!
//! ```text
//!  inventory = …/CONFIG-ID/                     the newest report under it (or a manifest.json)
//!  the report's files, in order                 streamed: gunzip → CSV decoder, or Parquet batches
//!  rows of one key (all its versions)           one object: the latest version, or (as_of) the
//!                                               newest version at or before the time; a delete
//!                                               marker there means the key did not exist
//!  position                                     (file, rows consumed), always between two keys
//! ```
//!
//! An inventory that includes all versions is how a versioned bucket is backfilled as of a point
//! in time: each object reference then carries its version id. The versions of one key are
//! expected next to each other, as S3 writes them (a report is sorted by key).
//!
//! CSV keys are URL-encoded (`+` for a space) and are decoded; ETags get the quotes listings give
//! them, so references from an inventory and from a listing pin alike.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use alluvium_core::arrow::array::{Array, AsArray, RecordBatch};
use alluvium_core::arrow::compute::cast;
use alluvium_core::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit, TimestampMicrosecondType};
use alluvium_core::{Error, Result};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::registry::ObjectStoreRegistry;

/// Rows decoded at a time.
const BATCH_ROWS: usize = 8192;

/// An inventory report, from its `manifest.json`.
#[derive(Debug, Clone)]
pub(crate) struct Inventory {
    /// The manifest's URI, for messages.
    pub(crate) manifest: String,
    /// The bucket the report lists.
    pub(crate) source_bucket: String,
    parquet: bool,
    /// CSV: the columns' names in order (Parquet files name their own).
    columns: Vec<String>,
    /// The data files' URIs, in order.
    files: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestJson {
    source_bucket: String,
    file_format: String,
    #[serde(default)]
    file_schema: String,
    files: Vec<FileJson>,
}

#[derive(Deserialize)]
struct FileJson {
    key: String,
}

/// One object version as an inventory lists it.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// The key, decoded.
    pub(crate) key: String,
    pub(crate) version: Option<String>,
    pub(crate) latest: bool,
    pub(crate) delete_marker: bool,
    pub(crate) size: u64,
    /// Last modified, µs since the Unix epoch.
    pub(crate) modified_us: Option<i64>,
    /// Quoted, as listings give it.
    pub(crate) etag: Option<String>,
}

/// The snake-case name of a CSV `fileSchema` field (`LastModifiedDate` → `last_modified_date`),
/// as Parquet reports name their columns.
fn snake(name: &str) -> String {
    match name.trim() {
        "ETag" => "e_tag".into(),
        n => {
            let mut out = String::new();
            for (i, c) in n.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            }
            out
        }
    }
}

async fn resolve(registry: &ObjectStoreRegistry, uri: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let found =
        registry.resolve(uri).await?.map_err(|r| Error::config(format!("objects source `inventory` `{uri}`: {}", r.0)))?;
    // Before the store opens it: opening a FIFO would wait for a writer forever.
    if let Some(why) = crate::fetch::not_regular(uri) {
        return Err(Error::config(format!("objects source `inventory` `{uri}`: {why}")));
    }
    Ok(found)
}

impl Inventory {
    /// Reads the report `uri` names: a `manifest.json`, or a configuration's folder, whose newest
    /// `YYYY-MM-DDTHH-MMZ/manifest.json` is taken.
    pub(crate) async fn open(registry: &ObjectStoreRegistry, uri: &str) -> Result<Self> {
        let manifest = if uri.ends_with(".json") { uri.to_string() } else { Self::newest(registry, uri).await? };
        let (store, path) = resolve(registry, &manifest).await?;
        let bytes = store.get(&path).await.map_err(|e| Error::from(e).context(format!("reading inventory `{manifest}`")))?;
        let bytes = bytes.bytes().await?;
        let json: ManifestJson = serde_json::from_slice(&bytes)
            .map_err(|e| Error::config(format!("inventory `{manifest}` is not an S3 Inventory manifest.json: {e}")))?;
        let parquet = match json.file_format.to_ascii_lowercase().as_str() {
            "csv" => false,
            "parquet" => true,
            _ => {
                return Err(Error::config(format!(
                    "inventory `{manifest}` is in {} format, which the objects source does not read; configure the \
                     inventory to write CSV or Parquet",
                    json.file_format
                )))
            }
        };
        let columns: Vec<String> = json.file_schema.split(',').map(snake).collect();
        if !parquet && !columns.iter().any(|c| c == "key") {
            return Err(Error::config(format!("inventory `{manifest}`: its fileSchema has no Key column")));
        }
        // Data file keys are relative to the destination bucket, which holds the manifest.
        let url = Url::parse(&manifest).map_err(|e| Error::config(format!("inventory `{manifest}`: {e}")))?;
        let root = crate::source::store_root(&url);
        let files = json.files.iter().map(|f| format!("{root}{}", f.key.trim_start_matches('/'))).collect();
        Ok(Self { manifest, source_bucket: json.source_bucket, parquet, columns, files })
    }

    /// The newest report's manifest under a configuration's folder.
    async fn newest(registry: &ObjectStoreRegistry, folder: &str) -> Result<String> {
        let folder = format!("{}/", folder.trim_end_matches('/'));
        let (store, path) = resolve(registry, &folder).await?;
        let listing = store
            .list_with_delimiter(Some(&path))
            .await
            .map_err(|e| Error::from(e).context(format!("listing inventory `{folder}`")))?;
        let dated = |p: &Path| {
            let name = p.filename().unwrap_or_default().to_string();
            let b = name.as_bytes();
            (b.len() == 17 && b[4] == b'-' && b[10] == b'T' && name.ends_with('Z')).then_some(name)
        };
        let newest = listing.common_prefixes.iter().filter_map(dated).max().ok_or_else(|| {
            Error::config(format!(
                "inventory `{folder}` holds no report (no YYYY-MM-DDTHH-MMZ/ folder); give the inventory configuration's \
                 folder or a manifest.json"
            ))
        })?;
        Ok(format!("{folder}{newest}/manifest.json"))
    }
}

/// Where a walk is: the data file, and the rows of it consumed (always between two keys).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Cursor {
    pub(crate) file: usize,
    pub(crate) row: u64,
}

/// The objects of an inventory, one per key, in the report's order.
pub(crate) struct Walk {
    inventory: Inventory,
    registry: Arc<ObjectStoreRegistry>,
    /// Keep the newest version at or before this time (µs) instead of the latest.
    as_of_us: Option<i64>,
    cursor: Cursor,
    /// The open file and its rows decoded but not yet consumed.
    reader: Option<FileRows>,
    buffered: VecDeque<Row>,
}

impl Walk {
    /// A walk over `inventory` from `cursor`.
    pub(crate) fn new(
        inventory: Inventory,
        registry: Arc<ObjectStoreRegistry>,
        as_of_us: Option<i64>,
        cursor: Option<Cursor>,
    ) -> Self {
        Self { inventory, registry, as_of_us, cursor: cursor.unwrap_or_default(), reader: None, buffered: VecDeque::new() }
    }

    pub(crate) fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Whether more rows of the current file can be had (opening it when needed).
    async fn fill(&mut self) -> Result<bool> {
        if !self.buffered.is_empty() {
            return Ok(true);
        }
        if self.reader.is_none() {
            let Some(uri) = self.inventory.files.get(self.cursor.file).cloned() else { return Ok(false) };
            self.reader = Some(FileRows::open(&self.registry, &self.inventory, &uri, self.cursor.row).await?);
        }
        let reader = self.reader.as_mut().expect("opened");
        match reader.next().await? {
            Some(rows) => {
                self.buffered.extend(rows);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next object: the chosen version of the next key that has one; `None` at the end.
    pub(crate) async fn next(&mut self) -> Result<Option<Row>> {
        loop {
            if !self.fill().await? {
                if self.cursor.file >= self.inventory.files.len() {
                    return Ok(None);
                }
                self.cursor = Cursor { file: self.cursor.file + 1, row: 0 };
                self.reader = None;
                continue;
            }
            // The rows of one key: the versions that follow in this file.
            let mut group = vec![self.buffered.pop_front().expect("filled")];
            loop {
                if self.buffered.is_empty() && !self.fill().await? {
                    break;
                }
                if self.buffered.front().is_some_and(|r| r.key == group[0].key) {
                    group.push(self.buffered.pop_front().expect("front"));
                } else {
                    break;
                }
            }
            self.cursor.row += group.len() as u64;
            if let Some(row) = choose(group, self.as_of_us) {
                return Ok(Some(row));
            }
        }
    }
}

/// The version of a key to read: the latest (not a delete marker), or the newest at or before
/// `as_of_us` unless that is a delete marker. Versions written within one tick of the clock
/// (S3 times have a second's precision) keep the order they are given in, which for a listing
/// is S3's: newest first.
pub(crate) fn choose(mut group: Vec<Row>, as_of_us: Option<i64>) -> Option<Row> {
    group.sort_by_key(|r| std::cmp::Reverse((r.modified_us, r.latest)));
    let row = match as_of_us {
        None => group.into_iter().find(|r| r.latest)?,
        Some(t) => group.into_iter().find(|r| r.modified_us.is_some_and(|m| m <= t))?,
    };
    (!row.delete_marker).then_some(row)
}

/// The rows of one data file, decoded a batch at a time.
enum FileRows {
    Csv {
        bytes: BoxStream<'static, object_store::Result<Bytes>>,
        gunzip: Option<Box<flate2::write::MultiGzDecoder<Vec<u8>>>>,
        decoder: Box<arrow_csv::reader::Decoder>,
        /// Decoded text not yet taken by the CSV decoder.
        text: Vec<u8>,
        ended: bool,
        uri: String,
    },
    Parquet {
        stream: ParquetRecordBatchStream<ParquetObjectReader>,
        uri: String,
    },
}

impl FileRows {
    async fn open(registry: &ObjectStoreRegistry, inventory: &Inventory, uri: &str, skip: u64) -> Result<Self> {
        let (store, path) = resolve(registry, uri).await?;
        if inventory.parquet {
            let bad = |e: parquet::errors::ParquetError| Error::data(format!("inventory file `{uri}`: {e}"));
            let builder = ParquetRecordBatchStreamBuilder::new(ParquetObjectReader::new(store, path)).await.map_err(bad)?;
            let stream = builder.with_offset(skip as usize).with_batch_size(BATCH_ROWS).build().map_err(bad)?;
            return Ok(Self::Parquet { stream, uri: uri.to_string() });
        }
        let fields: Vec<Field> = inventory.columns.iter().map(|c| Field::new(c, DataType::Utf8, true)).collect();
        let decoder = Box::new(
            arrow_csv::ReaderBuilder::new(Arc::new(Schema::new(fields)))
                .with_header(false)
                .with_batch_size(BATCH_ROWS)
                .with_bounds(skip as usize, usize::MAX)
                .build_decoder(),
        );
        let get = store.get(&path).await.map_err(|e| Error::from(e).context(format!("reading inventory file `{uri}`")))?;
        Ok(Self::Csv { bytes: get.into_stream(), gunzip: None, decoder, text: Vec::new(), ended: false, uri: uri.to_string() })
    }

    /// The next rows; `None` at the end of the file.
    async fn next(&mut self) -> Result<Option<Vec<Row>>> {
        match self {
            Self::Parquet { stream, uri } => match stream.next().await {
                None => Ok(None),
                Some(batch) => {
                    let batch = batch.map_err(|e| Error::external(format!("reading inventory file `{uri}`: {e}")))?;
                    rows(&batch, false, uri).map(Some)
                }
            },
            Self::Csv { bytes, gunzip, decoder, text, ended, uri } => loop {
                let bad = |e: &dyn std::fmt::Display| Error::data(format!("inventory file `{uri}`: {e}"));
                // Hand the decoder the text there is; an empty slice only at the end (it means
                // the end of the input to the CSV reader, which then ends a last unterminated line).
                let mut at = 0;
                while at < text.len() || *ended {
                    let n = decoder.decode(&text[at..]).map_err(|e| bad(&e))?;
                    at += n;
                    if n == 0 || decoder.capacity() == 0 {
                        break;
                    }
                }
                text.drain(..at);
                if decoder.capacity() == 0 || *ended {
                    match decoder.flush().map_err(|e| bad(&e))? {
                        Some(batch) => return rows(&batch, true, uri).map(Some),
                        None if *ended && text.is_empty() => return Ok(None),
                        None => continue,
                    }
                }
                match bytes.try_next().await.map_err(|e| Error::from(e).context(format!("reading inventory file `{uri}`")))? {
                    Some(chunk) => {
                        if gunzip.is_none() && text.is_empty() && chunk.starts_with(&[0x1f, 0x8b]) {
                            *gunzip = Some(Box::new(flate2::write::MultiGzDecoder::new(Vec::new())));
                        }
                        match gunzip {
                            Some(g) => {
                                g.write_all(&chunk).map_err(|e| bad(&e))?;
                                text.append(g.get_mut());
                            }
                            None => text.extend_from_slice(&chunk),
                        }
                    }
                    None => {
                        if let Some(g) = gunzip {
                            g.try_finish().map_err(|e| bad(&e))?;
                            text.append(g.get_mut());
                        }
                        *ended = true;
                    }
                }
            },
        }
    }
}

/// The form-decoding of CSV keys (`+` is a space, `%XX` a byte).
fn decode_key(raw: &str) -> String {
    percent_encoding::percent_decode_str(&raw.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// An inventory batch as rows; `csv` batches are all text (keys URL-encoded).
fn rows(batch: &RecordBatch, csv: bool, uri: &str) -> Result<Vec<Row>> {
    let column = |name: &str, to: &DataType| -> Result<Option<Arc<dyn Array>>> {
        let Some(c) = batch.column_by_name(name) else { return Ok(None) };
        cast(c, to).map(Some).map_err(|e| Error::data(format!("inventory file `{uri}`: column `{name}`: {e}")))
    };
    let n = batch.num_rows();
    let key =
        column("key", &DataType::Utf8)?.ok_or_else(|| Error::data(format!("inventory file `{uri}` has no `key` column")))?;
    let key = key.as_string::<i32>();
    let text = |name: &str| column(name, &DataType::Utf8);
    let (version, etag) = (text("version_id")?, text("e_tag")?);
    let flag = |name: &str| column(name, &DataType::Boolean);
    let (latest, marker) = (flag("is_latest")?, flag("is_delete_marker")?);
    let size = column("size", &DataType::Int64)?;
    let modified = column("last_modified_date", &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())))?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        fn s(c: &Option<Arc<dyn Array>>, i: usize) -> Option<&str> {
            c.as_ref().filter(|c| c.is_valid(i)).map(|c| c.as_string::<i32>().value(i))
        }
        let b = |c: &Option<Arc<dyn Array>>| c.as_ref().filter(|c| c.is_valid(i)).map(|c| c.as_boolean().value(i));
        let raw = key.value(i);
        let etag =
            s(&etag, i).filter(|t| !t.is_empty()).map(|t| if t.starts_with('"') { t.to_string() } else { format!("\"{t}\"") });
        out.push(Row {
            key: if csv { decode_key(raw) } else { raw.to_string() },
            version: s(&version, i).filter(|v| !v.is_empty() && *v != "null").map(str::to_string),
            latest: b(&latest).unwrap_or(true),
            delete_marker: b(&marker).unwrap_or(false),
            size: size.as_ref().filter(|c| c.is_valid(i)).map_or(0, |c| c.as_primitive::<Int64Type>().value(i).max(0) as u64),
            modified_us: modified
                .as_ref()
                .filter(|c| c.is_valid(i))
                .map(|c| c.as_primitive::<TimestampMicrosecondType>().value(i)),
            etag,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, version: &str, latest: bool, marker: bool, modified: i64) -> Row {
        Row {
            key: key.into(),
            version: Some(version.into()),
            latest,
            delete_marker: marker,
            size: 1,
            modified_us: Some(modified),
            etag: None,
        }
    }

    #[test]
    fn a_key_is_read_at_its_latest_version_or_as_of_a_time() {
        let group = || vec![row("k", "v3", true, false, 30), row("k", "v2", false, true, 20), row("k", "v1", false, false, 10)];
        assert_eq!(choose(group(), None).unwrap().version.as_deref(), Some("v3"));
        assert_eq!(choose(group(), Some(35)).unwrap().version.as_deref(), Some("v3"));
        assert!(choose(group(), Some(25)).is_none(), "deleted at that time");
        assert_eq!(choose(group(), Some(10)).unwrap().version.as_deref(), Some("v1"));
        assert!(choose(group(), Some(5)).is_none(), "not there yet");
        assert!(choose(vec![row("k", "v1", true, true, 10)], None).is_none(), "deleted now");
    }

    #[test]
    fn csv_names_and_keys_are_decoded() {
        assert_eq!(snake("LastModifiedDate"), "last_modified_date");
        assert_eq!(snake(" ETag"), "e_tag");
        assert_eq!(snake("IsDeleteMarker"), "is_delete_marker");
        assert_eq!(decode_key("a+b/c%2Bd%C3%A9.jpg"), "a b/c+dé.jpg");
    }
}
