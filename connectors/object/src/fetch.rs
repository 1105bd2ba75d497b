//! `Fetch`: ObjectRef → bytes, streamed, hashed, pinned and bounded.
//!
//! For every row of the ObjectRef column (default `ref`), `Fetch` resolves the reference through the
//! [`ObjectStoreRegistry`] (which applies the access policy), reads the object — or its byte range
//! — as a stream, hashes it with blake3 while reading, and appends three columns: `bytes` (Binary),
//! `content_hash` (blake3, hex) and `fetched_bytes` (UInt64).
//!
//! * **Pins**: a reference with an `etag` (or `version`) reads only that object: the request carries
//!   `If-Match` (or the version id), and the ETag the store returns is compared too, so a changed
//!   object becomes a dead letter instead of a silent read of new bytes.
//! * **Bounds**: an object larger than `max_object_bytes` is refused before its body is read; the
//!   bytes of objects being fetched at once never exceed `memory_budget` (objects wait for room).
//! * **Failures** are per row: not found, access denied, refused by the access policy, changed,
//!   too large, and errors that outlasted the store's retries become dead letters with the reason;
//!   the batch goes on.
//!
//! Objects of one batch are fetched concurrently (`concurrency`, default 16); output keeps input order.

use std::sync::Arc;
use std::time::Duration;

use alluvium_core::arrow::array::{ArrayRef, BinaryBuilder, StringBuilder, UInt64Builder};
use alluvium_core::arrow::datatypes::{DataType, Field};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::error::redact;
use alluvium_core::operator::with_columns;
use alluvium_core::types::{ObjectRef, ObjectRefArray};
use alluvium_core::{AsyncOperator, Error, ErrorKind, Output, Result, RowResults, Stage, TaskContext};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange};
use tokio::sync::Semaphore;

use crate::outage::{StoreOutages, DOWN, OUTAGE_TIMEOUT};
use crate::registry::ObjectStoreRegistry;

/// The Fetch stage. See the module docs.
#[derive(Clone)]
pub struct Fetch {
    registry: Arc<ObjectStoreRegistry>,
    column: String,
    max_object_bytes: u64,
    memory: Arc<Semaphore>,
    memory_budget: u64,
    concurrency: usize,
    outages: Arc<StoreOutages>,
}

struct Fetched {
    bytes: bytes::Bytes,
    hash: String,
}

impl Fetch {
    /// Fetches the `ref` column: objects up to 64 MiB, 256 MiB in flight, 16 at a time.
    pub fn new(registry: Arc<ObjectStoreRegistry>) -> Self {
        let budget = 256u64 << 20;
        Self {
            registry,
            column: "ref".into(),
            max_object_bytes: 64 << 20,
            memory: Arc::new(Semaphore::new(budget as usize)),
            memory_budget: budget,
            concurrency: 16,
            outages: StoreOutages::new(OUTAGE_TIMEOUT),
        }
    }
    /// How long to wait for a store that does not answer before the stage fails (10 minutes);
    /// see [`crate::outage`].
    pub fn outage_timeout(mut self, timeout: Duration) -> Self {
        self.outages = StoreOutages::new(timeout);
        self
    }
    /// The ObjectRef column to fetch.
    pub fn column(mut self, name: impl Into<String>) -> Self {
        self.column = name.into();
        self
    }
    /// Larger objects (or ranges) become dead letters.
    pub fn max_object_bytes(mut self, bytes: u64) -> Self {
        self.max_object_bytes = bytes;
        self
    }
    /// Bytes being fetched at once, across all subtasks of this stage.
    pub fn memory_budget(mut self, bytes: u64) -> Self {
        let bytes = bytes.clamp(1, u32::MAX as u64);
        self.memory = Arc::new(Semaphore::new(bytes as usize));
        self.memory_budget = bytes;
        self
    }
    /// Objects fetched at once per batch.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    async fn fetch_one(&self, r: Option<ObjectRef>) -> std::result::Result<Fetched, (ErrorKind, String)> {
        let data = |m: String| (ErrorKind::Data, m);
        let result = open(&self.registry, r, None).await?;
        let len = result.range.end - result.range.start;
        if len > self.max_object_bytes {
            return Err(data(format!("the object is {len} bytes, over max_object_bytes = {}", self.max_object_bytes)));
        }
        let _permit = self
            .memory
            .acquire_many(len.clamp(1, self.memory_budget) as u32)
            .await
            .map_err(|_| (ErrorKind::Internal, "the memory budget was closed".to_string()))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = bytes::BytesMut::with_capacity(len as usize);
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.try_next().await.map_err(|e| classify(&e))? {
            if (buf.len() + chunk.len()) as u64 > self.max_object_bytes {
                return Err(data(format!("the object grew past max_object_bytes = {} while it was read", self.max_object_bytes)));
            }
            hasher.update(&chunk);
            buf.extend_from_slice(&chunk);
        }
        if buf.len() as u64 != len {
            return Err((
                ErrorKind::External,
                format!("the store sent {} bytes of {len}: the response was truncated", buf.len()),
            ));
        }
        Ok(Fetched { bytes: buf.freeze(), hash: hasher.finalize().to_hex().to_string() })
    }
}

/// The ObjectRef column `column` of `batch`; a missing or mistyped column is a config error of `stage`.
pub(crate) fn refs(batch: &RecordBatch, column: &str, stage: &str) -> Result<ObjectRefArray> {
    let c = batch.column_by_name(column).ok_or_else(|| {
        Error::config(format!("{stage}: the input has no column `{column}`; set `column` to the ObjectRef column"))
    })?;
    ObjectRefArray::try_new(c).map_err(|e| e.context(format!("{stage}: column `{column}`")))
}

/// A row's failure: its kind and the reason.
pub(crate) type RowError = (ErrorKind, String);

/// Resolves `r` (applying the access policy) and starts reading it — its byte range, or only the
/// first `head` bytes of it — pinned to its ETag/version.
pub(crate) async fn open(
    registry: &ObjectStoreRegistry,
    r: Option<ObjectRef>,
    head: Option<u64>,
) -> std::result::Result<object_store::GetResult, RowError> {
    let data = |m: String| (ErrorKind::Data, m);
    let r = r.ok_or_else(|| data("the reference is null".into()))?;
    let (store, path) = match registry.resolve(&r.uri).await {
        Ok(Ok(sp)) => sp,
        Ok(Err(refused)) => return Err(data(format!("refused: {}", refused.0))),
        Err(e) => return Err((ErrorKind::Config, e.to_string())),
    };
    // Before the store opens it: opening a FIFO would wait for a writer forever.
    if let Some(why) = not_regular(&r.uri) {
        return Err(data(why));
    }
    let start = r.offset.unwrap_or(0);
    let end = match (r.length, head) {
        (Some(l), Some(h)) => Some(start + l.min(h)),
        (Some(l), None) => Some(start + l),
        (None, Some(h)) => Some(start + h),
        (None, None) => None,
    };
    let range = match end {
        Some(e) => Some(GetRange::Bounded(start..e)),
        None if start > 0 => Some(GetRange::Offset(start)),
        None => None,
    };
    let opts = GetOptions { if_match: r.etag.clone(), version: r.version.clone(), range, ..Default::default() };
    let result = store.get_opts(&path, opts).await.map_err(|e| classify(&e))?;
    if let Some(why) = changed(r.etag.as_deref(), result.meta.e_tag.as_deref()) {
        return Err(data(why));
    }
    Ok(result)
}

/// Why the `file://` reference `uri` cannot be read, when it names something other than a regular
/// file or a directory (whose read fails as not found): a FIFO, which the store's open would wait
/// on for a writer forever, a socket or a device. `None` for other URIs, and for paths that cannot
/// be looked at (the read says why). One `stat`, following links, as the access check does; it
/// never opens the file.
pub(crate) fn not_regular(uri: &str) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let url = url::Url::parse(uri).ok().filter(|u| u.scheme() == "file")?;
    let t = std::fs::metadata(url.to_file_path().ok()?).ok()?.file_type();
    let what = if t.is_file() || t.is_dir() {
        return None;
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    };
    Some(format!("not a regular file: the path is {what}; only regular files are read"))
}

/// Why a read is not of the pinned object, when the store answered with another ETag (stores that
/// ignore `If-Match` still return the ETag they served).
pub(crate) fn changed(pinned: Option<&str>, served: Option<&str>) -> Option<String> {
    let (pinned, now) = (pinned?, served?);
    (pinned.trim_matches('"') != now.trim_matches('"'))
        .then(|| format!("the object changed since its reference was made (ETag {now}, pinned {pinned})"))
}

/// A per-row reason for an `object_store` error (retries, where they apply, are already spent).
pub(crate) fn classify(e: &object_store::Error) -> (ErrorKind, String) {
    use object_store::Error as E;
    // A redirect or address the access policy refused, somewhere in the error's chain (the
    // refusal is an error of its own there, so a server's error body quoting the words is not one).
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if text.starts_with(crate::access::REFUSED) {
            return (ErrorKind::Data, format!("refused: {}", redact(&text)));
        }
        source = s.source();
    }
    match e {
        E::NotFound { .. } => (ErrorKind::Data, "object not found".into()),
        E::Precondition { .. } => (ErrorKind::Data, "the object changed since its reference was made (ETag/version pin)".into()),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            (ErrorKind::External, format!("access denied: {}", redact(&e.to_string())))
        }
        _ if crate::outage::store_failing(e) => {
            (ErrorKind::External, format!("{DOWN}read failed after retries: {}", redact(&e.to_string())))
        }
        _ => (ErrorKind::External, format!("read failed after retries: {}", redact(&e.to_string()))),
    }
}

#[async_trait]
impl AsyncOperator for Fetch {
    async fn process(&self, batch: RecordBatch, ctx: &TaskContext) -> Result<Output> {
        let refs = refs(&batch, &self.column, "fetch")?;
        self.outages.used_by(&ctx.pipeline, &ctx.stage);
        let one = |r: Option<ObjectRef>| async move {
            let uri = r.as_ref().map(|r| r.uri.clone());
            self.outages.read(&self.registry, uri.as_deref(), &ctx.stage, || self.fetch_one(r.clone())).await
        };
        let results: Vec<_> =
            futures::stream::iter((0..refs.len()).map(|i| one(refs.get(i)))).buffered(self.concurrency).try_collect().await?;
        let rows = RowResults::collect(results);
        let kept = rows.kept(&batch)?;
        let total: usize = rows.ok.iter().map(|f| f.bytes.len()).sum();
        let mut bytes = BinaryBuilder::with_capacity(rows.ok.len(), total);
        let mut hashes = StringBuilder::new();
        let mut sizes = UInt64Builder::new();
        for f in &rows.ok {
            bytes.append_value(&f.bytes);
            hashes.append_value(&f.hash);
            sizes.append_value(f.bytes.len() as u64);
        }
        let out = with_columns(
            &kept,
            None,
            vec![
                (Field::new("bytes", DataType::Binary, false), Arc::new(bytes.finish()) as ArrayRef),
                (Field::new("content_hash", DataType::Utf8, false), Arc::new(hashes.finish())),
                (Field::new("fetched_bytes", DataType::UInt64, false), Arc::new(sizes.finish())),
            ],
        )?;
        Ok(Output::with_failures(out, rows.failures))
    }
}

/// Unaligned: a checkpoint records the references in flight (small) instead of waiting for
/// their objects, so slow stores and a stage downstream waiting out an outage never hold
/// checkpoints up; they are fetched again after a restore.
impl From<Fetch> for Stage {
    fn from(f: Fetch) -> Stage {
        Stage::new_async("fetch", f).unaligned()
    }
}
