//! `Hash` and `Probe`: what an object is, without keeping its bytes.
//!
//! * [`Hash`](struct@Hash) streams each referenced object (or its byte range) through blake3 and appends
//!   `content_hash` (hex) and `size`. Memory per object is one network chunk, so a 2 GB object
//!   needs no more memory than a 2 KB one.
//! * [`Probe`] reads only the first bytes of each object and appends `content_type` (sniffed from
//!   the magic bytes; the store's or the reference's type when the bytes are not recognised) and
//!   `size` (the object's full size, from the store).
//!
//! Both pin the reference's ETag/version, turn every per-object failure into a dead letter and
//! wait for a store that does not answer ([`crate::outage`]), like [`Fetch`](crate::Fetch).

use std::sync::Arc;

use alluvium_core::arrow::array::{ArrayRef, StringArray, UInt64Array};
use alluvium_core::arrow::datatypes::{DataType, Field};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::operator::with_columns;
use alluvium_core::types::ObjectRef;
use alluvium_core::{AsyncOperator, ErrorKind, Output, Result, RowResults, Stage, TaskContext};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};

use crate::fetch::{classify, open, refs, RowError};
use crate::outage::{StoreOutages, OUTAGE_TIMEOUT};
use crate::registry::ObjectStoreRegistry;

/// Runs `one` on every reference of `column` (`concurrency` at a time, in order), waiting while
/// a store does not answer, and appends its results as a Utf8 column `name` and a UInt64 column
/// `size`; failed rows become dead letters.
async fn per_object<Fut>(
    batch: RecordBatch,
    (registry, outages, ctx): (&ObjectStoreRegistry, &StoreOutages, &TaskContext),
    column: &str,
    concurrency: usize,
    name: &str,
    one: impl Fn(Option<ObjectRef>) -> Fut,
) -> Result<Output>
where
    Fut: std::future::Future<Output = std::result::Result<(String, u64), RowError>>,
{
    let refs = refs(&batch, column, &ctx.stage)?;
    outages.used_by(&ctx.pipeline, &ctx.stage);
    let one = |r: Option<ObjectRef>| {
        let uri = r.as_ref().map(|r| r.uri.clone());
        let one = &one;
        async move { outages.read(registry, uri.as_deref(), &ctx.stage, || one(r.clone())).await }
    };
    let results: Vec<_> =
        futures::stream::iter((0..refs.len()).map(|i| one(refs.get(i)))).buffered(concurrency).try_collect().await?;
    let rows = RowResults::collect(results);
    let out = with_columns(
        &rows.kept(&batch)?,
        None,
        vec![
            (
                Field::new(name, DataType::Utf8, false),
                Arc::new(StringArray::from_iter_values(rows.ok.iter().map(|(t, _)| t))) as ArrayRef,
            ),
            (
                Field::new("size", DataType::UInt64, false),
                Arc::new(UInt64Array::from_iter_values(rows.ok.iter().map(|(_, s)| *s))),
            ),
        ],
    )?;
    Ok(Output::with_failures(out, rows.failures))
}

/// Streams objects through blake3. See the module docs.
#[derive(Clone)]
pub struct Hash {
    registry: Arc<ObjectStoreRegistry>,
    column: String,
    concurrency: usize,
    outages: Arc<StoreOutages>,
}

impl Hash {
    /// Hashes the `ref` column, 8 objects at a time.
    pub fn new(registry: Arc<ObjectStoreRegistry>) -> Self {
        Self { registry, column: "ref".into(), concurrency: 8, outages: StoreOutages::new(OUTAGE_TIMEOUT) }
    }
    /// How long to wait for a store that does not answer before the stage fails (10 minutes).
    pub fn outage_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.outages = StoreOutages::new(timeout);
        self
    }
    /// The ObjectRef column.
    pub fn column(mut self, name: impl Into<String>) -> Self {
        self.column = name.into();
        self
    }
    /// Objects hashed at once per batch.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    async fn hash_one(&self, r: Option<ObjectRef>) -> std::result::Result<(String, u64), RowError> {
        let result = open(&self.registry, r, None).await?;
        let expected = result.range.end - result.range.start;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.try_next().await.map_err(|e| classify(&e))? {
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        if size != expected {
            return Err((ErrorKind::External, format!("the store sent {size} bytes of {expected}: the response was truncated")));
        }
        Ok((hasher.finalize().to_hex().to_string(), size))
    }
}

#[async_trait]
impl AsyncOperator for Hash {
    async fn process(&self, batch: RecordBatch, ctx: &TaskContext) -> Result<Output> {
        let io = (&*self.registry, &*self.outages, ctx);
        per_object(batch, io, &self.column, self.concurrency, "content_hash", |r| self.hash_one(r)).await
    }
}

/// Unaligned, as [`Fetch`](crate::Fetch) is: a checkpoint records the references in flight.
impl From<Hash> for Stage {
    fn from(h: Hash) -> Stage {
        Stage::new_async("hash", h).unaligned()
    }
}

/// Sniffs content types from the first bytes. See the module docs.
#[derive(Clone)]
pub struct Probe {
    registry: Arc<ObjectStoreRegistry>,
    column: String,
    concurrency: usize,
    outages: Arc<StoreOutages>,
}

/// Bytes read per object.
const SNIFF_BYTES: u64 = 64;

impl Probe {
    /// Probes the `ref` column, 16 objects at a time.
    pub fn new(registry: Arc<ObjectStoreRegistry>) -> Self {
        Self { registry, column: "ref".into(), concurrency: 16, outages: StoreOutages::new(OUTAGE_TIMEOUT) }
    }
    /// How long to wait for a store that does not answer before the stage fails (10 minutes).
    pub fn outage_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.outages = StoreOutages::new(timeout);
        self
    }
    /// The ObjectRef column.
    pub fn column(mut self, name: impl Into<String>) -> Self {
        self.column = name.into();
        self
    }

    async fn probe_one(&self, r: Option<ObjectRef>) -> std::result::Result<(String, u64), RowError> {
        let declared = r.as_ref().and_then(|r| r.content_type.clone());
        let result = open(&self.registry, r, Some(SNIFF_BYTES)).await?;
        let size = result.meta.size;
        let store_type = result.attributes.get(&object_store::Attribute::ContentType).map(|v| v.to_string());
        let head = result.bytes().await.map_err(|e| classify(&e))?;
        let ty =
            sniff(&head).map(str::to_string).or(store_type).or(declared).unwrap_or_else(|| "application/octet-stream".into());
        Ok((ty, size))
    }
}

/// The MIME type of a file from its first bytes, for the formats the pipelines handle.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| head.starts_with(magic);
    let at = |offset: usize, magic: &[u8]| head.len() >= offset + magic.len() && &head[offset..offset + magic.len()] == magic;
    Some(match () {
        _ if starts(b"\xFF\xD8\xFF") => "image/jpeg",
        _ if starts(b"\x89PNG\r\n\x1a\n") => "image/png",
        _ if starts(b"GIF87a") || starts(b"GIF89a") => "image/gif",
        _ if starts(b"RIFF") && at(8, b"WEBP") => "image/webp",
        _ if starts(b"RIFF") && at(8, b"WAVE") => "audio/wav",
        _ if starts(b"RIFF") && at(8, b"AVI ") => "video/x-msvideo",
        _ if starts(b"II*\0") || starts(b"MM\0*") => "image/tiff",
        _ if starts(b"BM") => "image/bmp",
        _ if at(4, b"ftyp") && (at(8, b"qt  ")) => "video/quicktime",
        _ if at(4, b"ftyp") && (at(8, b"M4A ")) => "audio/mp4",
        _ if at(4, b"ftyp") && (at(8, b"avif") || at(8, b"heic")) => "image/avif",
        _ if at(4, b"ftyp") => "video/mp4",
        _ if starts(b"\x1A\x45\xDF\xA3") => "video/webm",
        _ if starts(b"fLaC") => "audio/flac",
        _ if starts(b"OggS") => "audio/ogg",
        _ if starts(b"ID3") || (head.len() > 1 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0) => "audio/mpeg",
        _ if starts(b"%PDF-") => "application/pdf",
        _ if starts(b"PAR1") => "application/vnd.apache.parquet",
        _ => return None,
    })
}

#[async_trait]
impl AsyncOperator for Probe {
    async fn process(&self, batch: RecordBatch, ctx: &TaskContext) -> Result<Output> {
        let io = (&*self.registry, &*self.outages, ctx);
        per_object(batch, io, &self.column, self.concurrency, "content_type", |r| self.probe_one(r)).await
    }
}

/// Unaligned, as [`Fetch`](crate::Fetch) is.
impl From<Probe> for Stage {
    fn from(p: Probe) -> Stage {
        Stage::new_async("probe", p).unaligned()
    }
}

#[cfg(test)]
mod tests {
    use super::sniff;

    #[test]
    fn sniffs_common_formats() {
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0\x00\x10JFIF"), Some("image/jpeg"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"\x00\x00\x00\x18ftypisom"), Some("video/mp4"));
        assert_eq!(sniff(b"fLaC\x00"), Some("audio/flac"));
        assert_eq!(sniff(b"hello world"), None);
        assert_eq!(sniff(b""), None);
    }
}
