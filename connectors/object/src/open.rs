//! Blocking random access to objects ([`OpenObject`] for the registry): what a video demuxer
//! needs to seek inside an object in storage without downloading it.
//!
//! A [`RangedReader`] reads through one read-ahead buffer of `chunk` bytes (4 MiB by default),
//! refilled with a ranged GET at the position read, so memory per open object is one chunk
//! whatever its size. Every GET is pinned to the reference's ETag (`If-Match`, and the ETag
//! served is compared, for stores that ignore it) and version; an
//! object that changed under the reader fails the read with a reason instead of mixing two
//! versions' bytes. Requests go through the registry's stores, so the access policy, retries and
//! the per-store concurrency limit apply, and failures read as the Fetch stage's do (redacted).

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use alluvium_core::types::ObjectRef;
use alluvium_core::{OpenObject, ReadSeek};
use bytes::Bytes;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};

use crate::fetch::{changed, classify};
use crate::registry::ObjectStoreRegistry;

/// Read-ahead per open object.
const CHUNK: u64 = 4 << 20;

/// A blocking `Read + Seek` over a byte range of an object, by ranged GETs. See the module docs.
pub struct RangedReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    uri: String,
    runtime: tokio::runtime::Handle,
    etag: Option<String>,
    version: Option<String>,
    /// The readable range of the object: `[start, start + len)`.
    start: u64,
    len: u64,
    /// The position, relative to `start`.
    pos: u64,
    /// Buffered bytes and where they begin (relative to `start`).
    buf: Bytes,
    buf_at: u64,
    chunk: u64,
    /// Bytes read from storage so far.
    fetched: u64,
}

impl std::fmt::Debug for RangedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RangedReader({}, {} bytes at {})", self.uri, self.len, self.pos)
    }
}

impl RangedReader {
    /// Bytes read from storage so far (what the reader cost, next to its length).
    pub fn fetched(&self) -> u64 {
        self.fetched
    }
    /// Reads ahead this many bytes per request (4 MiB by default): the reader's memory.
    pub fn chunk(mut self, bytes: u64) -> Self {
        self.chunk = bytes.max(4096);
        self
    }
    /// The length of the readable range.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let from = self.start + self.pos;
        let to = self.start + (self.pos + self.chunk).min(self.len);
        let opts = GetOptions {
            range: Some(GetRange::Bounded(from..to)),
            if_match: self.etag.clone(),
            version: self.version.clone(),
            ..Default::default()
        };
        let (store, path) = (self.store.clone(), self.path.clone());
        let got = self.runtime.block_on(async move {
            let got = store.get_opts(&path, opts).await?;
            let served = got.meta.e_tag.clone();
            Ok::<_, object_store::Error>((served, got.bytes().await?))
        });
        let failed = |why: String| std::io::Error::other(format!("reading {} at byte {from}: {why}", self.uri));
        let (served, bytes) = got.map_err(|e| failed(classify(&e).1))?;
        if let Some(why) = changed(self.etag.as_deref(), served.as_deref()) {
            return Err(failed(why));
        }
        self.fetched += bytes.len() as u64;
        self.buf = bytes;
        self.buf_at = self.pos;
        Ok(())
    }
}

impl Read for RangedReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let in_buf = self.pos >= self.buf_at && self.pos < self.buf_at + self.buf.len() as u64;
        if !in_buf {
            self.fill()?;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let at = (self.pos - self.buf_at) as usize;
        let n = out.len().min(self.buf.len() - at);
        out[..n].copy_from_slice(&self.buf[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangedReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.pos = target;
        Ok(target)
    }
}

impl ObjectStoreRegistry {
    /// Opens `r` as a [`RangedReader`] (the current tokio runtime drives its requests; call it
    /// from a blocking-pool thread). Its size comes from the reference or a HEAD request.
    pub fn open_ranged(&self, r: &ObjectRef) -> std::result::Result<RangedReader, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| format!("reading {}: no tokio runtime to drive the requests", r.uri))?;
        let (store, path) = match runtime.block_on(self.resolve(&r.uri)) {
            Ok(Ok(sp)) => sp,
            Ok(Err(refused)) => return Err(refused.0),
            Err(e) => return Err(e.to_string()),
        };
        // Before the store opens it: opening a FIFO would wait for a writer forever.
        if let Some(why) = crate::fetch::not_regular(&r.uri) {
            return Err(format!("reading {}: {why}", r.uri));
        }
        let size = match r.size {
            Some(s) => s,
            None => {
                let opts = GetOptions { head: true, if_match: r.etag.clone(), version: r.version.clone(), ..Default::default() };
                let head = runtime
                    .block_on(store.get_opts(&path, opts))
                    .map_err(|e| format!("reading {}: {}", r.uri, classify(&e).1))?;
                head.meta.size
            }
        };
        let start = r.offset.unwrap_or(0).min(size);
        let len = r.length.unwrap_or(size - start).min(size - start);
        Ok(RangedReader {
            store,
            path,
            uri: r.uri.clone(),
            runtime,
            etag: r.etag.clone(),
            version: r.version.clone(),
            start,
            len,
            pos: 0,
            buf: Bytes::new(),
            buf_at: 0,
            chunk: CHUNK,
            fetched: 0,
        })
    }
}

impl OpenObject for ObjectStoreRegistry {
    fn open(&self, r: &ObjectRef) -> std::result::Result<Box<dyn ReadSeek>, String> {
        Ok(Box::new(self.open_ranged(r)?))
    }
}
