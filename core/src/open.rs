//! Random access to the object behind a reference, for codecs that seek: a video demuxer reads
//! an MP4's index (often at the end of the file) before its frames, and jumps between keyframes.
//!
//! [`OpenObject`] is implemented by `alluvium-object`'s registry with ranged GETs through a
//! bounded read-ahead buffer, so a 2 GB video is never held in memory; the codecs of
//! `alluvium-formats` take an `Arc<dyn OpenObject>` and stay free of storage code. Reads are
//! blocking: codecs run on the blocking pool ([`crate::Operator`]).

use std::io::{Read, Seek};

use crate::types::ObjectRef;

/// A blocking reader with random access.
pub trait ReadSeek: Read + Seek + Send {}

impl<T: Read + Seek + Send> ReadSeek for T {}

/// Opens references for random access.
pub trait OpenObject: Send + Sync + 'static {
    /// Opens `r` (its byte range, when it has one), pinned to its ETag/version when it carries
    /// them. `Err(reason)` for a reference that cannot be read (refused, missing, changed): a
    /// dead letter, not a stage failure.
    fn open(&self, r: &ObjectRef) -> std::result::Result<Box<dyn ReadSeek>, String>;
}

/// Opens `file://` references and plain paths from the local disk, with no access policy: for
/// tests and local tools. Pipelines use the registry's opener.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalFiles;

impl OpenObject for LocalFiles {
    fn open(&self, r: &ObjectRef) -> std::result::Result<Box<dyn ReadSeek>, String> {
        let path = r.uri.strip_prefix("file://").unwrap_or(&r.uri);
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, file)))
    }
}
