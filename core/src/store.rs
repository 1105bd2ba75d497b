//! Locations on object storage: a URL (or a local path) resolved to an `object_store` and a prefix.
//!
//! `./dir`, `/abs/dir` and `file:///abs/dir` are local directories (created when absent);
//! `s3://bucket/prefix` uses the usual `AWS_*` environment variables (`AWS_ENDPOINT`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`); other schemes
//! are resolved by `object_store::parse_url`. Credentials never appear in errors: URLs are
//! redacted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

use crate::error::{redact, Error, Result};

/// A resolved location.
#[derive(Clone)]
pub struct Location {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The prefix within the store under which everything lives.
    pub prefix: Path,
    /// The location as the user wrote it (redacted), for messages.
    pub display: String,
    /// A local directory (not a remote object store).
    pub is_local: bool,
    /// The location as a URL (`file:///abs/dir/`, `s3://bucket/prefix`), for libraries that take one.
    pub url: Url,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Location({})", self.display)
    }
}

impl Location {
    /// Resolves `location`. Local directories are created if absent.
    pub fn parse(location: &str) -> Result<Self> {
        let display = redact(location);
        if location.trim().is_empty() {
            return Err(Error::config("an empty location was given; use a directory path or a URL such as s3://bucket/prefix"));
        }
        let url = match Url::parse(location) {
            Ok(u) if u.scheme().len() > 1 => u,
            // No scheme, or a Windows drive letter: a local path.
            _ => return Self::local(std::path::Path::new(location), display),
        };
        match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|_| Error::config(format!("`{display}` is not a valid file:// URL; use file:///absolute/path")))?;
                Self::local(&path, display)
            }
            "s3" | "s3a" => {
                let store = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(location)
                    .build()
                    .map_err(|e| Error::config(format!("cannot use `{display}`")).with_source(e))?;
                let prefix = Path::from_url_path(url.path())
                    .map_err(|e| Error::config(format!("bad path in `{display}`")).with_source(e))?;
                Ok(Self { store: Arc::new(store), prefix, display, is_local: false, url })
            }
            _ => {
                let (store, prefix) = object_store::parse_url(&url).map_err(|e| {
                    Error::config(format!("unsupported location `{display}`; use a local path, file://, or s3://")).with_source(e)
                })?;
                Ok(Self { store: Arc::from(store), prefix, display, is_local: false, url })
            }
        }
    }

    fn local(path: &std::path::Path, display: String) -> Result<Self> {
        std::fs::create_dir_all(path)
            .map_err(|e| Error::config(format!("cannot create directory `{display}`: {e}; choose a writable location")))?;
        let abs = std::fs::canonicalize(path).map_err(|e| Error::config(format!("cannot resolve directory `{display}`: {e}")))?;
        let store = LocalFileSystem::new_with_prefix(&abs)
            .map_err(|e| Error::config(format!("cannot open directory `{display}`")).with_source(e))?;
        let url = Url::from_directory_path(&abs)
            .map_err(|_| Error::config(format!("cannot turn `{display}` into a file:// URL; use an absolute path")))?;
        Ok(Self { store: Arc::new(store), prefix: Path::default(), display, is_local: true, url })
    }

    /// The store with its root at the root of the URL's scheme (the filesystem root for local
    /// directories, the bucket for S3), as libraries that take a store and a URL expect.
    pub fn root_store(&self) -> Arc<dyn ObjectStore> {
        if self.is_local {
            Arc::new(LocalFileSystem::new())
        } else {
            self.store.clone()
        }
    }

    /// The size of the parts of streamed uploads: S3 needs at least 5 MiB per part; local files
    /// are written best in small pieces that stay in the CPU cache.
    pub fn upload_part_bytes(&self) -> usize {
        if self.is_local {
            256 << 10
        } else {
            8 << 20
        }
    }

    /// A path under this location.
    pub fn child(&self, relative: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in relative.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// Whether the location is a local directory (`file://` or a path).
    pub fn local_dir(location: &str) -> Option<std::path::PathBuf> {
        match Url::parse(location) {
            Ok(u) if u.scheme() == "file" => u.to_file_path().ok(),
            Ok(u) if u.scheme().len() > 1 => None,
            _ => Some(std::path::PathBuf::from(location)),
        }
    }
}

/// Stores for objects named by full URIs (`/abs/file`, `file:///abs/file`, `s3://bucket/key`, …),
/// as lake metadata names its files: one store per `scheme://authority`, opened on first use and
/// kept.
#[derive(Default, Clone)]
pub struct ObjectStores {
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl std::fmt::Debug for ObjectStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectStores")
    }
}

impl ObjectStores {
    /// The store holding the object at `uri` and the object's path within it.
    pub fn resolve(&self, uri: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let bad = |why: String| Error::config(format!("`{}` is not an object's location: {why}", redact(uri)));
        let local = |p: &str| -> Result<(Arc<dyn ObjectStore>, Path)> {
            let object = Path::from_absolute_path(p).map_err(|e| bad(e.to_string()))?;
            Ok((Arc::new(LocalFileSystem::new()), object))
        };
        if uri.starts_with('/') {
            return local(uri);
        }
        let url = Url::parse(uri).map_err(|e| bad(e.to_string()))?;
        if url.scheme() == "file" {
            let p = url.to_file_path().map_err(|_| bad("a file:// URL must hold an absolute path".into()))?;
            return local(&p.to_string_lossy());
        }
        let root = format!("{}://{}", url.scheme(), url.authority());
        let object = Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
        let mut stores = self.stores.lock().expect("store cache");
        if let Some(s) = stores.get(&root) {
            return Ok((s.clone(), object));
        }
        let store = Location::parse(&root)?.store;
        stores.insert(root, store.clone());
        Ok((store, object))
    }
}
