//! Iceberg's file IO over `object_store`: one storage for every scheme Alluvium reads and writes.
//!
//! iceberg-rust 0.10.1 ships only local and in-memory storage. [`ObjectStorage`] implements its
//! public `Storage` trait on the same `object_store` stores (and the same `AWS_*` settings) as the
//! rest of Alluvium, so tables live on local disk or S3 alike. Uploads stream as multipart uploads;
//! reads are ranged GETs.

use std::ops::Range;
use std::sync::Arc;

use alluvium_core::store::ObjectStores;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use iceberg::io::{FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig, StorageFactory};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use serde::{Deserialize, Serialize};

/// Builds [`ObjectStorage`] for catalogs (`with_storage_factory`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectStorageFactory;

#[typetag::serde]
impl StorageFactory for ObjectStorageFactory {
    fn build(&self, _config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(ObjectStorage::default()))
    }
}

/// Iceberg storage on `object_store`: `file://` and plain absolute paths, `s3://` (settings from
/// `AWS_*` variables), and what `object_store::parse_url` knows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectStorage {
    /// Stores by `scheme://authority`, opened on first use.
    #[serde(skip)]
    stores: ObjectStores,
}

fn io_err(what: &str, path: &str, e: impl std::fmt::Display) -> iceberg::Error {
    let kind = if e.to_string().contains("not found") || e.to_string().contains("NotFound") {
        iceberg::ErrorKind::DataInvalid
    } else {
        iceberg::ErrorKind::Unexpected
    };
    iceberg::Error::new(
        kind,
        format!("{what} {}: {}", alluvium_core::error::redact(path), alluvium_core::error::redact(&e.to_string())),
    )
}

impl ObjectStorage {
    /// The store holding `path` and the object's path within it.
    fn resolve(&self, path: &str) -> iceberg::Result<(Arc<dyn ObjectStore>, Path)> {
        self.stores.resolve(path).map_err(|e| io_err("cannot open", path, e))
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for ObjectStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let (store, p) = self.resolve(path)?;
        match store.head(&p).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_err("checking", path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let (store, p) = self.resolve(path)?;
        let meta = store.head(&p).await.map_err(|e| io_err("reading metadata of", path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let (store, p) = self.resolve(path)?;
        let got = store.get(&p).await.map_err(|e| io_err("reading", path, e))?;
        got.bytes().await.map_err(|e| io_err("reading", path, e))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        let (store, p) = self.resolve(path)?;
        Ok(Box::new(Reader { store, path: p }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        let (store, p) = self.resolve(path)?;
        store.put(&p, bs.into()).await.map_err(|e| io_err("writing", path, e))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let (store, p) = self.resolve(path)?;
        let upload = store.put_multipart(&p).await.map_err(|e| io_err("creating", path, e))?;
        Ok(Box::new(Writer { upload: Some(WriteMultipart::new_with_chunk_size(upload, 8 << 20)), path: path.to_string() }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        let (store, p) = self.resolve(path)?;
        match store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err("deleting", path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        let (store, p) = self.resolve(path)?;
        let mut listing = store.list(Some(&p));
        while let Some(m) = listing.next().await {
            let m = m.map_err(|e| io_err("listing", path, e))?;
            match store.delete(&m.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io_err("deleting", path, e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

struct Reader {
    store: Arc<dyn ObjectStore>,
    path: Path,
}

#[async_trait]
impl FileRead for Reader {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store.get_range(&self.path, range).await.map_err(|e| io_err("reading", self.path.as_ref(), e))
    }
}

struct Writer {
    upload: Option<WriteMultipart>,
    path: String,
}

#[async_trait]
impl FileWrite for Writer {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        let upload = self.upload.as_mut().ok_or_else(|| io_err("writing", &self.path, "the file is closed"))?;
        upload.put(bs);
        upload.wait_for_capacity(2).await.map_err(|e| io_err("uploading", &self.path, e))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        let upload = self.upload.take().ok_or_else(|| io_err("closing", &self.path, "the file is closed"))?;
        upload.finish().await.map_err(|e| io_err("finishing", &self.path, e))?;
        Ok(())
    }
}
