//! `ObjectStoreSource`: every object under a prefix, as ObjectRef rows, once (bounded) or as they come (continuous).
//!
//! The enumerator lists the prefix (through the registry, so the access policy applies), keeps the
//! objects whose names end with one of `extensions`, sorts them by key and hands them out in splits
//! of `split_objects` objects; its checkpointed state is the last key handed out, so a restored
//! run lists again and continues after it. Each row is an ObjectRef (`ref`) pinned to the ETag and
//! size the listing saw, so an object changed after listing becomes a dead letter at fetch time.
//!
//! Each row also has `last_modified` (µs, UTC) and, with `partition_columns`, one Utf8 column per
//! Hive-style `name=value` segment of the key; with `metadata`, one per user-metadata name (read
//! by the readers with a HEAD per object); with `tags`, one per S3 object tag ([`crate::s3`]). `include`/`exclude` globs and a key range
//! (`key_range`) select keys relative to the prefix. `modified_between` keeps the objects last modified in a time window (what `alluvium backfill`
//! sets per window).
//!
//! **Continuous mode** ([`ObjectStoreSource::continuous`]) never ends: it re-lists the prefix every
//! poll interval and emits each new or overwritten object once, oldest first. What it has emitted
//! is checkpointed with every split assignment as a watermark (the newest modification time
//! emitted) plus the objects emitted within `lateness` of it, so the state stays small however
//! many objects pass, and a restart neither skips nor repeats objects. An object that shows up
//! modified longer than `lateness` before the watermark (copied in with its old time) is told
//! from the ones emitted before by the versions the process knows below that floor, and picked up
//! with a warning; across a restart only a fingerprint of those is kept, so one that arrived while
//! the job was down is reported (a warning with the counts), not picked up: size `lateness` to
//! the longest time a job may be down.
//!
//! A bounded listing of a store that lists in key order (S3, GCS, Azure, and local directories,
//! walked in key order by `walk`) is consumed as it arrives: the first split goes out
//! after the first page, so time to first row does not grow with the prefix, and a restore asks
//! the store to start after the last key handed out. Continuous re-listings are listed whole
//! first. A local directory lists its regular files only (FIFOs, sockets and devices are skipped
//! unopened), follows no link out of its root, and makes each name that cannot be a key (not
//! UTF-8) a dead letter under its percent-escaped name, rejected by the reader of its split.
//!
//! **An S3 Inventory report** ([`ObjectStoreSource::inventory`], [`crate::inventory`]) replaces the
//! listing of a bucket too large to list: its data files are streamed in order, the same filters
//! apply, and the checkpointed position is the file and row reached.
//!
//! **A versioned S3 bucket as of a time** ([`ObjectStoreSource::as_of`]): each key at its newest
//! version then, pinned to its version id, from `ListObjectVersions` in key order (so it streams
//! and restores like a listing) or from an inventory of all versions.

use std::sync::Arc;

use alluvium_core::arrow::array::{ArrayRef, StringArray, StructArray, TimestampMicrosecondArray};
use alluvium_core::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::source::Rejected;
use alluvium_core::types::{ObjectRef, ObjectRefType};
use alluvium_core::{Discovery, Error, ErrorKind, Result, RowFailure, Source, Split, SplitEnumerator, SplitReader, State};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::{Attribute, Attributes, GetOptions};
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
    /// Keys (relative to the prefix) must match one of these, when any are given…
    include: Option<globset::GlobSet>,
    /// …and none of these.
    exclude: Option<globset::GlobSet>,
    /// Keys (relative to the prefix) after this one…
    start_after: Option<String>,
    /// …and before this one.
    end_before: Option<String>,
    /// Columns taken from `name=value` segments of the key (Hive-style partitions).
    partition_columns: Vec<String>,
    /// Continuous discovery: re-list every `poll`; objects may show up to `lateness` after their
    /// modification time.
    continuous: Option<(std::time::Duration, std::time::Duration)>,
    /// User metadata (`x-amz-meta-NAME` on S3) read into Utf8 columns of these names.
    metadata: Vec<String>,
    /// S3 object tags read into Utf8 columns of these names.
    tags: Vec<String>,
    /// Read this S3 Inventory report instead of listing.
    inventory: Option<String>,
    /// With an inventory of all versions: each key's newest version at or before this time (µs).
    as_of_us: Option<i64>,
}

/// `t` in µs since the Unix epoch (negative before it).
fn epoch_us(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// The URI of the root of `url`'s store (`s3://bucket/`, `file:///`), to which object paths are
/// appended.
pub(crate) fn store_root(url: &Url) -> String {
    match url.scheme() {
        "file" => "file:///".to_string(),
        s => format!("{s}://{}/", url.host_str().unwrap_or_default()),
    }
}

fn glob_set(patterns: &[String], key: &str) -> Result<Option<globset::GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = globset::GlobSetBuilder::new();
    for p in patterns {
        let glob = globset::GlobBuilder::new(p).literal_separator(true).build().map_err(|e| {
            Error::config(format!("objects source `{key}`: `{p}` is not a glob ({e}); write e.g. \"**/*.jpg\" or \"2026-*/**\""))
        })?;
        set.add(glob);
    }
    set.build().map(Some).map_err(|e| Error::config(format!("objects source `{key}`: {e}")))
}

impl ObjectStoreSource {
    /// Every object under `uri` (`s3://bucket/prefix/`, `file:///dir/`), in splits of 1,000.
    pub fn prefix(registry: Arc<ObjectStoreRegistry>, uri: impl Into<String>) -> Self {
        Self {
            registry,
            uri: uri.into(),
            extensions: Vec::new(),
            split_objects: 1000,
            batch_size: 64,
            modified: (None, None),
            include: None,
            exclude: None,
            start_after: None,
            end_before: None,
            partition_columns: Vec::new(),
            continuous: None,
            metadata: Vec::new(),
            tags: Vec::new(),
            inventory: None,
            as_of_us: None,
        }
    }
    /// Takes the objects from an S3 Inventory report instead of listing the prefix (for buckets
    /// too large to list): `uri` is the inventory configuration's folder
    /// (`s3://dest/PREFIX/SOURCE-BUCKET/CONFIG-ID/`, the newest report is read) or a report's
    /// `manifest.json`. The report's rows pass the same filters as a listing. See
    /// [`crate::inventory`].
    pub fn inventory(mut self, uri: impl Into<String>) -> Self {
        self.inventory = Some(uri.into());
        self
    }
    /// Reads each key of a versioned S3 bucket as it was at `time`: its newest version then, with
    /// its version id (none if it was deleted or not yet written), so a backfill sees the bucket
    /// as of a point in time. The versions come from `ListObjectVersions` ([`crate::s3`]), or
    /// from the [`inventory`](Self::inventory) when one is given (it must include all versions).
    pub fn as_of(mut self, time: std::time::SystemTime) -> Self {
        self.as_of_us = Some(epoch_us(time));
        self
    }
    /// Never ends: re-lists the prefix every `poll` and emits each new or overwritten object once
    /// (an overwrite is a new ETag or modification time). The checkpointed record of what was emitted is a watermark
    /// (the newest modification time emitted) and the objects emitted within `lateness` of it, so
    /// it stays small however many objects pass. An object listed more than `lateness` after its
    /// modification time, older than the watermark by more than that, is picked up with a warning
    /// while the job runs; one that arrived while it was down is reported, not picked up.
    pub fn continuous(mut self, poll: std::time::Duration, lateness: std::time::Duration) -> Self {
        self.continuous = Some((poll.max(std::time::Duration::from_millis(10)), lateness));
        self
    }
    /// Keeps only keys (relative to the prefix) matching one of these globs (`**/*.jpg`; `*`
    /// stays within one path segment, `**` crosses them).
    pub fn include(mut self, globs: &[String]) -> Result<Self> {
        self.include = glob_set(globs, "include")?;
        Ok(self)
    }
    /// Drops keys (relative to the prefix) matching any of these globs.
    pub fn exclude(mut self, globs: &[String]) -> Result<Self> {
        self.exclude = glob_set(globs, "exclude")?;
        Ok(self)
    }
    /// Keeps keys (relative to the prefix) in `(start_after, end_before)`, in byte order: a
    /// backfill of part of a prefix, or of one key range per job.
    pub fn key_range(mut self, start_after: Option<String>, end_before: Option<String>) -> Self {
        self.start_after = start_after.filter(|k| !k.is_empty());
        self.end_before = end_before.filter(|k| !k.is_empty());
        self
    }
    /// Adds a nullable Utf8 column per name, from the key's `name=value` segments
    /// (`dt=2026-11-01/country=fr/x.jpg`); null where the key has no such segment.
    pub fn partition_columns(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.partition_columns = names.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a nullable Utf8 column per name with the object's user metadata of that name
    /// (`x-amz-meta-NAME` on S3; what the store's HEAD returns elsewhere): one HEAD request per
    /// object, made by the readers, 16 at a time, pinned to the listed ETag. An object gone or
    /// changed since it was listed becomes a dead letter with the reason.
    pub fn metadata(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.metadata = names.into_iter().map(|n| n.into().to_ascii_lowercase()).collect();
        self
    }

    /// Adds a nullable Utf8 column per name with the S3 object tag of that name (case-sensitive):
    /// one `GetObjectTagging` request per object, made by the readers, 16 at a time, for the
    /// listed version when the reference has one. An object gone since it was listed becomes a
    /// dead letter with the reason.
    pub fn tags(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.tags = names.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the key (relative to the prefix) passes the globs and the key range.
    fn wanted(&self, key: &str) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(key))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(key))
            && self.start_after.as_deref().is_none_or(|a| key > a)
            && self.end_before.as_deref().is_none_or(|b| key < b)
    }
    /// Keeps only objects last modified at or after `since` and before `before` (a backfill
    /// window over an append-only prefix).
    pub fn modified_between(mut self, since: Option<std::time::SystemTime>, before: Option<std::time::SystemTime>) -> Self {
        let ms = |t| epoch_us(t) / 1000;
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

    /// The wanted objects under the prefix, as the store lists them (after `offset`, a URI, when
    /// given: the store starts there).
    async fn stream(&self, offset: Option<&str>) -> Result<futures::stream::BoxStream<'static, Result<Entry>>> {
        let src = self.clone();
        let (store, prefix) = match src.registry.resolve(src.url()?.as_str()).await? {
            Ok(sp) => sp,
            Err(refused) => return Err(Error::config(format!("objects source `{}`: {}", src.uri, refused.0))),
        };
        let base = src.base()?;
        let url = src.url()?;
        let offset = offset.and_then(|uri| uri.strip_prefix(base.as_str()));
        let listing = if let (Some(at), None) = (src.as_of_us, &src.inventory) {
            let api = src.registry.s3_api(url.host_str().unwrap_or_default())?;
            let mut folder = prefix.to_string();
            if !folder.is_empty() {
                folder.push('/');
            }
            let base = base.clone();
            api.as_of(&folder, offset, at).map_ok(move |row| Entry::version(&base, row)).boxed()
        } else if url.scheme() == "file" {
            let root =
                url.to_file_path().map_err(|_| Error::config(format!("objects source: `{}` is not a directory", src.uri)))?;
            let after = offset.map(|k| k.strip_prefix(prefix.as_ref()).unwrap_or(k).trim_start_matches('/').to_string());
            let base = base.clone();
            crate::walk::sorted(store, root, after).map_ok(move |w| Entry::walked(&base, w)).boxed()
        } else {
            let context = format!("listing {}", src.uri);
            let listing = match offset {
                Some(key) => store.list_with_offset(Some(&prefix), &object_store::path::Path::from(key)),
                None => store.list(Some(&prefix)),
            };
            let base = base.clone();
            listing.map_ok(move |m| Entry::listed(&base, m)).map_err(move |e| Error::from(e).context(context.clone())).boxed()
        };
        Ok(listing
            .try_filter_map(move |found| {
                let key = found.uri.get(base.len()..).unwrap_or_default().to_string();
                futures::future::ready(Ok(src.keep(prefix.as_ref(), &key, found)))
            })
            .boxed())
    }

    /// `found` (the object at `path` in its store) if it passes the filters, with its partition
    /// values.
    fn keep(&self, prefix: &str, path: &str, mut found: Entry) -> Option<Entry> {
        let key = path.strip_prefix(prefix).unwrap_or(path).trim_start_matches('/');
        if found.rejected.is_some() && key.ends_with('/') {
            // A directory that could not be listed (a dead letter): the files under it might
            // have been wanted, so only the key range and the exclusions leave it out.
            let in_range = self.start_after.as_deref().is_none_or(|a| key > a)
                && self.end_before.as_deref().is_none_or(|b| key < b)
                && !self.exclude.as_ref().is_some_and(|g| g.is_match(key));
            return in_range.then_some(found);
        }
        let name = path.to_ascii_lowercase();
        let modified = found.modified_us.unwrap_or(0).div_euclid(1000);
        let in_window = self.modified.0.is_none_or(|t| modified >= t) && self.modified.1.is_none_or(|t| modified < t);
        let wanted = in_window
            && self.wanted(key)
            && (self.extensions.is_empty() || self.extensions.iter().any(|e| name.ends_with(&format!(".{e}"))));
        found.partitions = partition_values(key, &self.partition_columns);
        wanted.then_some(found)
    }

    /// Opens the inventory walk, from `cursor`, checked to list the bucket of `uri`.
    async fn walk(&self, inventory: &str, cursor: Option<crate::inventory::Cursor>) -> Result<crate::inventory::Walk> {
        let inv = crate::inventory::Inventory::open(&self.registry, inventory).await?;
        let url = self.url()?;
        if url.scheme() == "file" || url.host_str() != Some(inv.source_bucket.as_str()) {
            return Err(Error::config(format!(
                "objects source: inventory `{}` lists bucket `{}`, but `uri` is `{}`; set `uri` to s3://{}/ or a prefix in it",
                inv.manifest, inv.source_bucket, self.uri, inv.source_bucket
            )));
        }
        Ok(crate::inventory::Walk::new(inv, self.registry.clone(), self.as_of_us, cursor))
    }

    /// Lists the prefix: the wanted objects, in no particular order.
    pub(crate) async fn list(&self) -> Result<Vec<Entry>> {
        self.stream(None).await?.try_collect().await
    }

    /// Whether the store lists keys in order, so a listing can be consumed as it arrives (S3, GCS
    /// and Azure do, and local directories are walked in order, [`crate::walk`]; others are
    /// listed whole and sorted).
    fn sorted_listing(&self) -> bool {
        self.url().is_ok_and(|u| matches!(u.scheme(), "file" | "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "azure" | "adl"))
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
        Ok(store_root(&self.url()?))
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) uri: String,
    pub(crate) size: u64,
    pub(crate) etag: Option<String>,
    /// The version id (objects from an inventory of all versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// Last modified, µs since the Unix epoch.
    #[serde(default)]
    modified_us: Option<i64>,
    /// The values of the partition columns, in order.
    #[serde(default)]
    partitions: Vec<Option<String>>,
    /// Why the listing found this entry but it cannot be an object (a local file whose name
    /// cannot be a key): the reader makes it a dead letter. `uri` shows the name escaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rejected: Option<String>,
}

impl Entry {
    /// An object as a listing gave it (`base` is its store's root URI).
    fn listed(base: &str, m: object_store::ObjectMeta) -> Self {
        Entry {
            uri: format!("{base}{}", m.location),
            size: m.size,
            etag: m.e_tag,
            version: None,
            modified_us: Some(m.last_modified.timestamp_micros()),
            partitions: Vec::new(),
            rejected: None,
        }
    }
    /// What the walk of a local directory found: an object, or an entry that cannot be one (its
    /// name cannot be a key), to become a dead letter.
    fn walked(base: &str, w: crate::walk::Walked) -> Self {
        match w {
            crate::walk::Walked::Object(m) => Self::listed(base, m),
            crate::walk::Walked::Unreadable { location, why, modified_us } => Entry {
                uri: format!("{base}{location}"),
                size: 0,
                etag: None,
                version: None,
                modified_us,
                partitions: Vec::new(),
                rejected: Some(why),
            },
        }
    }
    /// An object version from an inventory or a versions listing.
    fn version(base: &str, row: crate::inventory::Row) -> Self {
        Entry {
            uri: format!("{base}{}", row.key),
            size: row.size,
            etag: row.etag,
            version: row.version,
            modified_us: row.modified_us,
            partitions: Vec::new(),
            rejected: None,
        }
    }
}

/// The value of each `name` in the key's `name=value` segments.
fn partition_values(key: &str, names: &[String]) -> Vec<Option<String>> {
    names
        .iter()
        .map(|n| key.split('/').find_map(|seg| seg.strip_prefix(n.as_str())?.strip_prefix('=').map(str::to_string)))
        .collect()
}

#[async_trait]
impl Source for ObjectStoreSource {
    fn name(&self) -> String {
        "objects".into()
    }

    fn schema(&self) -> SchemaRef {
        let mut fields = vec![
            ObjectRefType::field("ref", false),
            Field::new("last_modified", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        ];
        fields.extend(
            self.partition_columns.iter().chain(&self.metadata).chain(&self.tags).map(|n| Field::new(n, DataType::Utf8, true)),
        );
        Arc::new(Schema::new(fields))
    }

    fn validate(&self) -> Result<()> {
        if self.uri.trim().is_empty() {
            return Err(Error::config("objects source: `uri` is empty; set a directory or a URL such as s3://bucket/prefix/"));
        }
        let mut taken: Vec<&str> = vec!["ref", "last_modified"];
        for (key, names) in [("partition_columns", &self.partition_columns), ("metadata", &self.metadata), ("tags", &self.tags)] {
            if let Some(bad) = names.iter().find(|n| n.is_empty() || taken.contains(&n.as_str())) {
                return Err(Error::config(format!(
                    "objects source `{key}`: `{bad}` is not a usable column name (taken by {}); each becomes a column \
                     of its own name",
                    taken.join(", ")
                )));
            }
            taken.extend(names.iter().map(String::as_str));
        }
        let s3 = self.url().is_ok_and(|u| matches!(u.scheme(), "s3" | "s3a"));
        if !self.tags.is_empty() && !s3 {
            return Err(Error::config(format!(
                "objects source `tags`: object tags are an S3 feature and `uri` is `{}`; remove `tags`",
                self.uri
            )));
        }
        if self.as_of_us.is_some() && self.continuous.is_some() {
            return Err(Error::config(
                "objects source: `as_of` reads the bucket as it was at one time, a bounded listing; remove `continuous` or `as_of`",
            ));
        }
        if self.inventory.is_some() && self.continuous.is_some() {
            return Err(Error::config(
                "objects source: an `inventory` is a bounded listing; remove `continuous`, or the inventory to list the prefix",
            ));
        }
        if self.as_of_us.is_some() && self.inventory.is_none() && !s3 {
            return Err(Error::config(format!(
                "objects source `as_of`: object versions are read from S3 (or an S3 Inventory of all versions) and `uri` \
                 is `{}`; remove `as_of`",
                self.uri
            )));
        }
        Ok(())
    }

    async fn enumerator(&self, restored: Option<State>) -> Result<Box<dyn SplitEnumerator>> {
        let after = restored.as_ref().and_then(|s| s.get("after").and_then(|v| v.as_str()).map(str::to_string));
        let continuous =
            match (&self.continuous, restored.as_ref().and_then(|s| s.get("continuous"))) {
                (None, _) => None,
                (Some(_), None) => Some(Continuous::default()),
                (Some(_), Some(state)) => Some(serde_json::from_value(state.clone()).map_err(|e| {
                    Error::checkpoint(format!("objects source: the checkpointed listing state is malformed: {e}"))
                })?),
            };
        let walk = match &self.inventory {
            Some(inv) => {
                let cursor = match restored.as_ref().and_then(|s| s.get("inventory")) {
                    Some(c) => Some(serde_json::from_value(c.clone()).map_err(|e| {
                        Error::checkpoint(format!("objects source: the checkpointed inventory position is malformed: {e}"))
                    })?),
                    None => None,
                };
                Some(self.walk(inv, cursor).await?)
            }
            None => None,
        };
        Ok(Box::new(Enumerator {
            source: self.clone(),
            after,
            listed: None,
            continuous,
            listed_at: None,
            pages: None,
            walk,
            below: None,
        }))
    }

    async fn open(&self, split: &Split, position: Option<&State>) -> Result<Box<dyn SplitReader>> {
        let entries: Vec<Entry> = serde_json::from_value(split.payload.clone())
            .map_err(|e| Error::checkpoint(format!("objects source: split `{}` is malformed: {e}", split.id)))?;
        let next = position.and_then(|p| p.get("next").and_then(|v| v.as_u64())).unwrap_or(0) as usize;
        Ok(Box::new(Reader { source: self.clone(), entries, next, schema: self.schema(), rejected: None }))
    }
}

struct Enumerator {
    source: ObjectStoreSource,
    /// Bounded mode: the last key handed out.
    after: Option<String>,
    /// Listed and not yet handed out, last first.
    listed: Option<Vec<Entry>>,
    /// Continuous mode: what was emitted.
    continuous: Option<Continuous>,
    /// Continuous mode: when the prefix was last listed.
    listed_at: Option<std::time::Instant>,
    /// Bounded mode on a store that lists in order: the listing, consumed as it arrives.
    pages: Option<futures::stream::BoxStream<'static, Result<Entry>>>,
    /// Bounded mode from an inventory report.
    walk: Option<crate::inventory::Walk>,
    /// Continuous mode: the versions known below the floor (the watermark − `lateness`): listed
    /// there before, or emitted and since passed by the floor. A version that shows up below the
    /// floor and is not among them arrived late: it is picked up, not dropped. Kept in memory only
    /// (the listing is in memory anyway); `None` until the first listing of this process.
    below: Option<std::collections::HashSet<Version>>,
}

/// An object's version as a continuous listing tells them apart: `(uri, etag, modified µs)`.
type Version = (String, Option<String>, i64);

/// The count and an order-free hash of a set of versions: what a checkpoint keeps of the versions
/// below the floor, so that a restore can tell whether objects arrived late while the job was down.
fn fingerprint<'a>(versions: impl Iterator<Item = &'a Version>) -> (u64, u64) {
    use std::hash::{Hash, Hasher};
    versions.fold((0, 0), |(n, x), v| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        v.hash(&mut h);
        (n + 1, x ^ h.finish())
    })
}

/// The checkpointed record of a continuous listing: bounded by the objects modified within
/// `lateness` of the watermark, not by every key ever seen.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Continuous {
    /// The newest modification time (µs) among the objects emitted.
    watermark_us: Option<i64>,
    /// `(uri, etag, modified µs)` of the objects emitted within `lateness` of the watermark.
    recent: Vec<(String, Option<String>, i64)>,
    /// Splits emitted so far (their names).
    splits: u64,
    /// [`fingerprint`] of the versions known below the floor.
    #[serde(default)]
    below: Option<(u64, u64)>,
}

impl Enumerator {
    /// Hands out the next split of what was listed (the caller checked there is one).
    fn next_split(&mut self, id: String) -> (Split, Vec<(String, Option<String>, i64)>) {
        let listed = self.listed.as_mut().expect("listed");
        let take = self.source.split_objects.min(listed.len());
        let split: Vec<Entry> = listed.split_off(listed.len() - take).into_iter().rev().collect();
        let emitted = split.iter().map(|e| (e.uri.clone(), e.etag.clone(), e.modified_us.unwrap_or(0))).collect();
        (Split { id, payload: serde_json::to_value(split).expect("serializable") }, emitted)
    }

    /// The next split of an inventory's objects.
    async fn discover_inventory(&mut self) -> Result<Discovery> {
        let walk = self.walk.as_mut().expect("inventory");
        let url = self.source.url()?;
        let base = self.source.base()?;
        // Keys under the prefix as a folder, as a listing takes it.
        let mut prefix = percent_encoding::percent_decode_str(url.path()).decode_utf8_lossy().trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let start = walk.cursor();
        let mut split = Vec::with_capacity(self.source.split_objects.min(4096));
        while split.len() < self.source.split_objects {
            let Some(row) = walk.next().await? else { break };
            if !row.key.starts_with(&prefix) {
                continue;
            }
            let key = row.key.clone();
            split.extend(self.source.keep(&prefix, &key, Entry::version(&base, row)));
        }
        if split.is_empty() {
            return Ok(Discovery::Exhausted);
        }
        let id = format!("inventory-{}-{}", start.file, start.row);
        Ok(Discovery::Splits(vec![Split { id, payload: serde_json::to_value(split).expect("serializable") }]))
    }

    async fn discover_bounded(&mut self) -> Result<Discovery> {
        if self.walk.is_some() {
            return self.discover_inventory().await;
        }
        if self.source.sorted_listing() {
            return self.discover_streaming().await;
        }
        if self.listed.is_none() {
            let mut entries = self.source.list().await?;
            entries.sort_by(|a, b| b.uri.cmp(&a.uri));
            if let Some(after) = &self.after {
                entries.retain(|e| e.uri.as_str() > after.as_str());
            }
            self.listed = Some(entries);
        }
        if self.listed.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Discovery::Exhausted);
        }
        let (split, emitted) = self.next_split(format!("objects-after-{}", self.after.as_deref().unwrap_or("")));
        self.after = emitted.last().map(|(uri, _, _)| uri.clone());
        Ok(Discovery::Splits(vec![split]))
    }

    /// A bounded listing of a store that lists in key order, consumed a split at a time: the first
    /// split goes out after the first page, not after the whole prefix was listed, and a restore
    /// asks the store to start after the last key handed out.
    async fn discover_streaming(&mut self) -> Result<Discovery> {
        if self.pages.is_none() {
            self.pages = Some(self.source.stream(self.after.as_deref()).await?);
        }
        let pages = self.pages.as_mut().expect("listing");
        let mut split = Vec::with_capacity(self.source.split_objects.min(4096));
        while split.len() < self.source.split_objects {
            match pages.try_next().await? {
                // Keys come in order; one at or before the last handed out is not new.
                Some(e) if self.after.as_deref().is_some_and(|a| e.uri.as_str() <= a) => continue,
                Some(e) => split.push(e),
                None => break,
            }
        }
        let Some(last) = split.last() else { return Ok(Discovery::Exhausted) };
        let id = format!("objects-after-{}", self.after.as_deref().unwrap_or(""));
        self.after = Some(last.uri.clone());
        Ok(Discovery::Splits(vec![Split { id, payload: serde_json::to_value(split).expect("serializable") }]))
    }

    async fn discover_continuous(&mut self, poll: std::time::Duration, lateness: std::time::Duration) -> Result<Discovery> {
        let lateness_us = lateness.as_micros() as i64;
        if self.listed.as_ref().is_none_or(Vec::is_empty) {
            if let Some(at) = self.listed_at {
                if at.elapsed() < poll {
                    return Ok(Discovery::Idle(poll - at.elapsed()));
                }
            }
            let state = self.continuous.as_ref().expect("continuous");
            // A version is (uri, etag, modification time): stores that list no ETags still show
            // an overwrite by its new modification time.
            let seen: std::collections::HashSet<(&str, Option<&str>, i64)> =
                state.recent.iter().map(|(u, t, m)| (u.as_str(), t.as_deref(), *m)).collect();
            let floor = state.watermark_us.map(|w| w - lateness_us);
            let version = |e: &Entry| (e.uri.clone(), e.etag.clone(), e.modified_us.unwrap_or(0));
            let (mut fresh, below): (Vec<Entry>, Vec<Entry>) = self
                .source
                .list()
                .await?
                .into_iter()
                .filter(|e| !seen.contains(&(e.uri.as_str(), e.etag.as_deref(), e.modified_us.unwrap_or(0))))
                .partition(|e| floor.is_none_or(|f| e.modified_us.unwrap_or(0) >= f));
            // Below the floor: known versions, or versions that arrived late.
            match &mut self.below {
                Some(known) => {
                    let late: Vec<Entry> = below.into_iter().filter(|e| !known.contains(&version(e))).collect();
                    if !late.is_empty() {
                        let oldest = late.iter().filter_map(|e| e.modified_us).min().unwrap_or(0);
                        tracing::warn!(
                            source = %self.source.uri,
                            objects = late.len(),
                            late_by_s = (floor.unwrap_or(0) - oldest) / 1_000_000,
                            "{} object(s) showed up modified longer than `max_lateness` before the newest one \
                             seen; they are picked up, but raise `max_lateness` if this is usual",
                            late.len()
                        );
                        fresh.extend(late);
                    }
                }
                None => {
                    let known: std::collections::HashSet<Version> = below.iter().map(version).collect();
                    // The first listing after a restore: the checkpoint's fingerprint tells whether
                    // versions arrived below the floor while the job was down (they cannot be told
                    // from the ones emitted before).
                    if let Some((n, hash)) = state.below {
                        let (now, now_hash) = fingerprint(known.iter());
                        if (now, now_hash) != (n, hash) {
                            tracing::warn!(
                                source = %self.source.uri,
                                before = n,
                                now,
                                "the listing holds other objects modified longer than `max_lateness` before the newest \
                                 one emitted than at the last checkpoint ({n} then, {now} now): some arrived late (or \
                                 were deleted) while the job was down, and late ones are not picked up; raise \
                                 `max_lateness` to cover the time a job may be down"
                            );
                        }
                    }
                    self.below = Some(known);
                }
            }
            // Oldest first (handed out from the end): the watermark only moves forward.
            fresh.sort_by(|a, b| (b.modified_us, &b.uri).cmp(&(a.modified_us, &a.uri)));
            self.listed = Some(fresh);
            self.listed_at = Some(std::time::Instant::now());
            if self.listed.as_ref().is_some_and(Vec::is_empty) {
                return Ok(Discovery::Idle(poll));
            }
        }
        let n = self.continuous.as_ref().expect("continuous").splits + 1;
        let (split, emitted) = self.next_split(format!("objects-{n}"));
        let state = self.continuous.as_mut().expect("continuous");
        state.splits = n;
        for (uri, etag, m) in emitted {
            state.watermark_us = Some(state.watermark_us.map_or(m, |w| w.max(m)));
            state.recent.push((uri, etag, m));
        }

        let floor = state.watermark_us.unwrap_or(0) - lateness_us;
        // What the floor passes (late versions picked up are below it at once) is known below it.
        let below = self.below.get_or_insert_with(Default::default);
        below.extend(state.recent.extract_if(.., |(_, _, m)| *m < floor));
        state.below = Some(fingerprint(below.iter()));
        Ok(Discovery::Splits(vec![split]))
    }
}

#[async_trait]
impl SplitEnumerator for Enumerator {
    async fn discover(&mut self) -> Result<Discovery> {
        match self.source.continuous {
            Some((poll, lateness)) => self.discover_continuous(poll, lateness).await,
            None => self.discover_bounded().await,
        }
    }

    fn snapshot(&self) -> State {
        match &self.continuous {
            Some(c) => serde_json::json!({ "continuous": c }),
            None => match &self.walk {
                Some(w) => serde_json::json!({ "inventory": w.cursor() }),
                None => serde_json::json!({ "after": self.after }),
            },
        }
    }
}

/// Why an object's metadata was not read: it is not the object listed.
const CHANGED: &str = "metadata: the object changed since it was listed (ETag/version pin)";

struct Reader {
    source: ObjectStoreSource,
    entries: Vec<Entry>,
    next: usize,
    schema: SchemaRef,
    /// Objects gone or changed before their metadata or tags were read.
    rejected: Option<Rejected>,
}

/// What the readers add to a listed object: its user metadata and tags.
#[derive(Default)]
struct Extras {
    metadata: Attributes,
    tags: Vec<(String, String)>,
}

impl Reader {
    /// The user metadata (HEAD requests, pinned to the listed ETag/version) and tags of each
    /// object, or why they could not be read: gone or changed since listing.
    async fn extras(&self, rows: &[&Entry]) -> Result<Vec<std::result::Result<Extras, String>>> {
        let pins: Vec<(String, Option<String>, Option<String>, u64)> =
            rows.iter().map(|e| (e.uri.clone(), e.etag.clone(), e.version.clone(), e.size)).collect();
        let (metadata, tags) = (!self.source.metadata.is_empty(), !self.source.tags.is_empty());
        let registry = self.source.registry.clone();
        let (base, url) = (self.source.base()?, self.source.url()?);
        let api = match tags {
            true => Some(registry.s3_api(url.host_str().unwrap_or_default())?),
            false => None,
        };
        futures::stream::iter(pins)
            .map(move |(uri, etag, version, size)| {
                let (registry, api, key) = (registry.clone(), api.clone(), uri.get(base.len()..).unwrap_or_default().to_string());
                async move {
                    let mut extras = Extras::default();
                    if metadata {
                        let (store, path) = match registry.resolve(&uri).await? {
                            Ok(sp) => sp,
                            Err(refused) => return Ok(Err(refused.0)),
                        };
                        // Before the store opens it (a HEAD of a local file opens it): a FIFO
                        // would keep the read waiting forever.
                        if let Some(why) = crate::fetch::not_regular(&uri) {
                            return Ok(Err(format!("metadata: {why}")));
                        }
                        let opts =
                            GetOptions { head: true, if_match: etag.clone(), version: version.clone(), ..Default::default() };
                        // Stores that ignore `If-Match` still return the ETag, which is compared
                        // too (and the size, for listings without ETags).
                        match store.get_opts(&path, opts).await {
                            Ok(got) if (etag.is_none() || got.meta.e_tag == etag) && got.meta.size == size => {
                                extras.metadata = got.attributes
                            }
                            Ok(_) | Err(object_store::Error::Precondition { .. }) => return Ok(Err(CHANGED.into())),
                            Err(object_store::Error::NotFound { .. }) => {
                                return Ok(Err("metadata: the object is gone since it was listed".into()))
                            }
                            Err(err) => return Err(Error::from(err).context(format!("reading the metadata of {uri}"))),
                        }
                    }
                    if let Some(api) = api {
                        match api
                            .tags(&key, version.as_deref())
                            .await
                            .map_err(|e| e.context(format!("reading the tags of {uri}")))?
                        {
                            Some(t) => extras.tags = t,
                            None => return Ok(Err("tags: the object is gone since it was listed".into())),
                        }
                    }
                    Ok(Ok(extras))
                }
            })
            .buffered(16)
            .try_collect()
            .await
    }
}

#[async_trait]
impl SplitReader for Reader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.next >= self.entries.len() {
            return Ok(None);
        }
        let end = (self.next + self.source.batch_size).min(self.entries.len());
        // Entries the listing found but could not make objects of are dead letters, with the
        // objects gone or changed before their metadata or tags were read.
        let mut bad: Vec<(&str, String)> = Vec::new();
        let mut rows: Vec<&Entry> = Vec::with_capacity(end - self.next);
        for e in &self.entries[self.next..end] {
            match &e.rejected {
                Some(why) => bad.push((e.uri.as_str(), why.clone())),
                None => rows.push(e),
            }
        }
        let mut extras = Vec::new();
        if (!self.source.metadata.is_empty() || !self.source.tags.is_empty()) && !rows.is_empty() {
            let found = self.extras(&rows).await?;
            let mut kept = Vec::new();
            for (e, x) in rows.into_iter().zip(found) {
                match x {
                    Ok(x) => {
                        kept.push(e);
                        extras.push(x);
                    }
                    Err(why) => bad.push((e.uri.as_str(), why)),
                }
            }
            rows = kept;
        }
        if !bad.is_empty() {
            let records = RecordBatch::try_from_iter([(
                "uri",
                Arc::new(StringArray::from_iter_values(bad.iter().map(|b| b.0))) as ArrayRef,
            )])
            .expect("fixed schema");
            let failures = bad.into_iter().enumerate().map(|(i, (_, why))| RowFailure::new(i, ErrorKind::Data, why)).collect();
            self.rejected = Some(Rejected { records, failures });
        }
        let refs: StructArray = rows
            .iter()
            .map(|e| {
                let mut r = ObjectRef::new(e.uri.clone()).size(e.size);
                if let Some(t) = &e.etag {
                    r = r.etag(t.clone());
                }
                if let Some(v) = &e.version {
                    r = r.version(v.clone());
                }
                r
            })
            .collect();
        let modified = TimestampMicrosecondArray::from_iter(rows.iter().map(|e| e.modified_us)).with_timezone("UTC");
        let mut columns: Vec<ArrayRef> = vec![Arc::new(refs), Arc::new(modified)];
        for i in 0..self.source.partition_columns.len() {
            let values: StringArray = rows.iter().map(|e| e.partitions.get(i).cloned().flatten()).collect();
            columns.push(Arc::new(values));
        }
        for name in &self.source.metadata {
            let key = Attribute::Metadata(name.clone().into());
            let values: StringArray = extras.iter().map(|x| x.metadata.get(&key).map(|v| v.to_string())).collect();
            columns.push(Arc::new(values));
        }
        for name in &self.source.tags {
            let values: StringArray =
                extras.iter().map(|x| x.tags.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).collect();
            columns.push(Arc::new(values));
        }
        self.next = end;
        Ok(Some(RecordBatch::try_new(self.schema.clone(), columns)?))
    }

    fn position(&self) -> State {
        serde_json::json!({ "next": self.next })
    }

    fn rejected(&mut self) -> Option<Rejected> {
        self.rejected.take()
    }
}
