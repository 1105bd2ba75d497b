//! `ObjectStoreSource` (bounded): every object under a prefix, as ObjectRef rows.
//!
//! The enumerator lists the prefix (through the registry, so the access policy applies), keeps the
//! objects whose names end with one of `extensions`, sorts them by key and hands them out in splits
//! of `split_objects` objects; its checkpointed state is the last key handed out, so a restored
//! run lists again and continues after it. Each row is an ObjectRef (`ref`) pinned to the ETag and
//! size the listing saw, so an object changed after listing becomes a dead letter at fetch time.
//!
//! `modified_between` keeps the objects last modified in a time window (what `alluvium backfill`
//! sets per window). This is the bounded (backfill) first cut: it lists the whole prefix before the first split. The
//! streaming, continuous and Hive-partitioned variants come with the sources work.

use std::sync::Arc;

use alluvium_core::arrow::array::StructArray;
use alluvium_core::arrow::datatypes::{Schema, SchemaRef};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::types::{ObjectRef, ObjectRefType};
use alluvium_core::{Discovery, Error, Result, Source, Split, SplitEnumerator, SplitReader, State};
use async_trait::async_trait;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::registry::ObjectStoreRegistry;

/// Lists a prefix into ObjectRef rows. See the module docs.
#[derive(Debug, Clone)]
pub struct ObjectStoreSource {
    registry: Arc<ObjectStoreRegistry>,
    uri: String,
    extensions: Vec<String>,
    split_objects: usize,
    batch_size: usize,
    /// Keeps objects last modified in `[since, before)`, in ms since the Unix epoch.
    modified: (Option<i64>, Option<i64>),
}

impl ObjectStoreSource {
    /// Every object under `uri` (`s3://bucket/prefix/`, `file:///dir/`), in splits of 1,000.
    pub fn prefix(registry: Arc<ObjectStoreRegistry>, uri: impl Into<String>) -> Self {
        Self { registry, uri: uri.into(), extensions: Vec::new(), split_objects: 1000, batch_size: 64, modified: (None, None) }
    }
    /// Keeps only objects last modified at or after `since` and before `before` (a backfill
    /// window over an append-only prefix).
    pub fn modified_between(mut self, since: Option<std::time::SystemTime>, before: Option<std::time::SystemTime>) -> Self {
        let ms = |t: std::time::SystemTime| match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        };
        self.modified = (since.map(ms), before.map(ms));
        self
    }
    /// Keeps only names ending with one of these extensions (case-insensitive, without the dot).
    pub fn extensions(mut self, exts: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.extensions = exts.into_iter().map(|e| e.into().trim_start_matches('.').to_ascii_lowercase()).collect();
        self
    }
    /// Objects per split.
    pub fn split_objects(mut self, n: usize) -> Self {
        self.split_objects = n.max(1);
        self
    }
    /// Rows per batch (small by default: later stages hold each object's bytes).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// `self.uri` as a URL: a plain local path becomes an absolute `file://` URL.
    fn url(&self) -> Result<Url> {
        match Url::parse(&self.uri) {
            Ok(u) if u.scheme().len() > 1 => Ok(u),
            _ => {
                let abs = std::fs::canonicalize(&self.uri)
                    .map_err(|e| Error::config(format!("objects source: cannot open directory `{}`: {e}", self.uri)))?;
                Url::from_directory_path(&abs)
                    .map_err(|_| Error::config(format!("objects source: `{}` is not a directory", self.uri)))
            }
        }
    }

    /// The URI of `location` in the store behind `self.uri`.
    fn base(&self) -> Result<String> {
        let url = self.url()?;
        Ok(match url.scheme() {
            "file" => "file:///".to_string(),
            s => format!("{s}://{}/", url.host_str().unwrap_or_default()),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Entry {
    uri: String,
    size: u64,
    etag: Option<String>,
}

#[async_trait]
impl Source for ObjectStoreSource {
    fn name(&self) -> String {
        "objects".into()
    }

    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![ObjectRefType::field("ref", false)]))
    }

    fn validate(&self) -> Result<()> {
        if self.uri.trim().is_empty() {
            return Err(Error::config("objects source: `uri` is empty; set a directory or a URL such as s3://bucket/prefix/"));
        }
        Ok(())
    }

    async fn enumerator(&self, restored: Option<State>) -> Result<Box<dyn SplitEnumerator>> {
        let after = restored.and_then(|s| s.get("after").and_then(|v| v.as_str()).map(str::to_string));
        Ok(Box::new(Enumerator { source: self.clone(), after, listed: None }))
    }

    async fn open(&self, split: &Split, position: Option<&State>) -> Result<Box<dyn SplitReader>> {
        let entries: Vec<Entry> = serde_json::from_value(split.payload.clone())
            .map_err(|e| Error::checkpoint(format!("objects source: split `{}` is malformed: {e}", split.id)))?;
        let next = position.and_then(|p| p.get("next").and_then(|v| v.as_u64())).unwrap_or(0) as usize;
        Ok(Box::new(Reader { entries, next, batch_size: self.batch_size, schema: self.schema() }))
    }
}

struct Enumerator {
    source: ObjectStoreSource,
    after: Option<String>,
    /// Keys still to hand out, sorted, last first.
    listed: Option<Vec<Entry>>,
}

#[async_trait]
impl SplitEnumerator for Enumerator {
    async fn discover(&mut self) -> Result<Discovery> {
        if self.listed.is_none() {
            let src = &self.source;
            let (store, prefix) = match src.registry.resolve(src.url()?.as_str()).await? {
                Ok(sp) => sp,
                Err(refused) => return Err(Error::config(format!("objects source `{}`: {}", src.uri, refused.0))),
            };
            let base = src.base()?;
            let mut entries: Vec<Entry> = store
                .list(Some(&prefix))
                .map_err(|e| Error::from(e).context(format!("listing {}", src.uri)))
                .try_filter_map(|m| {
                    let name = m.location.as_ref().to_ascii_lowercase();
                    let modified = m.last_modified.timestamp_millis();
                    let in_window = src.modified.0.is_none_or(|t| modified >= t) && src.modified.1.is_none_or(|t| modified < t);
                    let wanted = in_window
                        && (src.extensions.is_empty() || src.extensions.iter().any(|e| name.ends_with(&format!(".{e}"))));
                    futures::future::ready(Ok(wanted.then(|| Entry {
                        uri: format!("{base}{}", m.location),
                        size: m.size,
                        etag: m.e_tag,
                    })))
                })
                .try_collect()
                .await?;
            entries.sort_by(|a, b| b.uri.cmp(&a.uri));
            if let Some(after) = &self.after {
                entries.retain(|e| e.uri.as_str() > after.as_str());
            }
            self.listed = Some(entries);
        }
        let listed = self.listed.as_mut().expect("listed");
        if listed.is_empty() {
            return Ok(Discovery::Exhausted);
        }
        let take = self.source.split_objects.min(listed.len());
        let split: Vec<Entry> = listed.split_off(listed.len() - take).into_iter().rev().collect();
        let last = split.last().expect("non-empty").uri.clone();
        let id = format!("objects-after-{}", self.after.as_deref().unwrap_or(""));
        self.after = Some(last);
        Ok(Discovery::Splits(vec![Split { id, payload: serde_json::to_value(split).expect("serializable") }]))
    }

    fn snapshot(&self) -> State {
        serde_json::json!({ "after": self.after })
    }
}

struct Reader {
    entries: Vec<Entry>,
    next: usize,
    batch_size: usize,
    schema: SchemaRef,
}

#[async_trait]
impl SplitReader for Reader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.next >= self.entries.len() {
            return Ok(None);
        }
        let end = (self.next + self.batch_size).min(self.entries.len());
        let refs: StructArray = self.entries[self.next..end]
            .iter()
            .map(|e| {
                let r = ObjectRef::new(e.uri.clone()).size(e.size);
                match &e.etag {
                    Some(t) => r.etag(t.clone()),
                    None => r,
                }
            })
            .collect();
        self.next = end;
        Ok(Some(RecordBatch::try_new(self.schema.clone(), vec![Arc::new(refs)])?))
    }

    fn position(&self) -> State {
        serde_json::json!({ "next": self.next })
    }
}
