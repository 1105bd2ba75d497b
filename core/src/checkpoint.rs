//! The checkpoint store: durable region manifests, epoch claims and the split-assignment log, on any
//! object store (a local directory by default).
//!
//! Layout under the checkpoint location:
//!
//! ```text
//! pipeline.json                         name, topology fingerprint, number of regions
//! assignments/00000000000000000007.json  split assignments, in order, each with the enumerator state
//! regions/0/epochs/0000000003            one object per (re)start of region 0, naming its claimant (create-if-absent)
//! regions/0/chk-00000000000000000042.json  region 0's manifest of checkpoint 42
//! ```
//!
//! Every object is written once with create-if-absent (`PutMode::Create`), so two processes running the
//! same pipeline cannot silently overwrite each other's state: the second one fails with a clear
//! error. A create whose reply was lost and that the client retried finds its own bytes there and
//! counts as written (each object's bytes are unique to its writer). The latest manifest of a
//! region is the one with the highest checkpoint id; older ones are pruned, keeping a few. A
//! manifest that cannot be parsed, or whose format version is not ours, is an error that says
//! what to do; it is never skipped.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sink::Committable;
use crate::source::{Split, State};
use crate::store::Location;

/// The `format` field of every file we write.
pub const FORMAT: &str = "alluvium.checkpoint";
/// The current format version; manifests of other versions are refused.
pub const VERSION: u32 = 1;
/// How many manifests per region are kept.
const KEEP_MANIFESTS: usize = 3;

/// A split and the position reached in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitState {
    /// The split.
    pub split: Split,
    /// Where reading resumes; `None` when the split was not started.
    pub position: Option<State>,
}

/// The state of one source subtask (reader).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReaderState {
    /// The reader's index (source subtask).
    pub reader: usize,
    /// The highest assignment sequence number this reader had received; later assignments are replayed
    /// from the log on restore.
    pub received_through: Option<u64>,
    /// Splits received and not yet finished, in order, with positions.
    pub splits: Vec<SplitState>,
    /// Whether the reader was told that no more splits will come.
    pub no_more_splits: bool,
}

/// Committables prepared at one checkpoint and not yet known to be committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingCommit {
    /// The checkpoint that prepared them.
    pub checkpoint: u64,
    /// For the main sink.
    pub sink: Vec<Committable>,
    /// For the dead-letter sink.
    pub dead_letters: Vec<Committable>,
}

/// A region's checkpoint manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written.
    pub version: u32,
    /// The pipeline's name.
    pub pipeline: String,
    /// The region.
    pub region: usize,
    /// The checkpoint id (increasing per region).
    pub checkpoint: u64,
    /// The region's epoch when the checkpoint was taken.
    pub epoch: u64,
    /// Wall-clock time the manifest was written, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// The region's input was finished: nothing is left to do.
    pub is_final: bool,
    /// Source subtasks of the region.
    pub readers: Vec<ReaderState>,
    /// Operator state by `stage#subtask`.
    pub operators: BTreeMap<String, State>,
    /// Committables not yet known to be committed, oldest first.
    pub pending: Vec<PendingCommit>,
}

/// `pipeline.json`: what the checkpoints belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written.
    pub version: u32,
    /// The pipeline's name.
    pub pipeline: String,
    /// A description of the topology (stages, parallelism, edges); a restore needs the same one.
    pub topology: String,
    /// Number of regions.
    pub regions: usize,
    /// A random id given when the checkpoints were created: sinks put it into their idempotency
    /// keys and file names, so a fresh checkpoint location is a new job, never mistaken for an old one.
    #[serde(default)]
    pub instance: String,
}

/// One entry of the split-assignment log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    /// Sequence number, from 0, without gaps.
    pub seq: u64,
    /// `(reader, split)` pairs.
    pub splits: Vec<(usize, Split)>,
    /// The enumerator's state after producing these splits.
    pub enumerator: State,
    /// No split will follow.
    pub exhausted: bool,
}

/// Durable state of one pipeline, on an object store.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    location: Location,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

/// A new random instance id (16 hex digits).
pub fn new_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's random source; mix in the time for good measure.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("{:016x}", h.finish())
}

/// The instance id of a new job whose checkpoints live at `location`: derived from the location
/// (and, for a local directory, from the host), so a job whose checkpoint location was deleted and
/// made again gets its old id back, and the table's record of that job's commits is recognised
/// (`runtime::guard` then stops the run instead of writing every row again). A job that is meant to
/// start over gets a [random id](new_instance_id) instead.
pub fn instance_for(location: &Location) -> String {
    let mut identity = location.url.as_str().trim_end_matches('/').to_string();
    if location.is_local {
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_default();
        identity = format!("{}@{identity}", host.trim());
    }
    format!("{:016x}", fnv1a(identity.as_bytes()))
}

/// What an epoch claim holds: who claimed it (process, time, sequence), unique to this claim, so
/// that a retried claim recognises itself.
fn claimant() -> Bytes {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Bytes::from(format!("{{\"pid\": {}, \"nanos\": {nanos}, \"seq\": {seq}}}", std::process::id()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl CheckpointStore {
    /// A store at `location`.
    pub fn new(location: Location) -> Self {
        Self { location }
    }

    /// Where it is (redacted).
    pub fn display(&self) -> &str {
        &self.location.display
    }

    fn store(&self) -> &dyn ObjectStore {
        self.location.store.as_ref()
    }

    /// Creates `rel` holding `bytes` unless it exists; `false` when another writer created it.
    ///
    /// A create whose reply was lost (the object was written, the connection dropped) is retried
    /// by the client and then finds the object there: that is our own write when the object holds
    /// exactly our bytes, so every caller writes bytes no other writer would write.
    async fn put_new(&self, rel: &str, bytes: Bytes) -> Result<bool> {
        let path = self.location.child(rel);
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        let failed =
            |e: object_store::Error| Error::from(e).context(format!("writing {rel} in checkpoint location {}", self.display()));
        match self.store().put_opts(&path, PutPayload::from(bytes.clone()), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                match self.store().get(&path).await {
                    Ok(found) => Ok(found.bytes().await.map_err(failed)? == bytes),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(failed(e)),
                }
            }
            Err(e) => Err(failed(e)),
        }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, rel: &str) -> Result<Option<T>> {
        let path = self.location.child(rel);
        let bytes = match self.store().get(&path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::from(e).context(format!("reading {rel} in checkpoint location {}", self.display()))),
        };
        decode(&format!("{rel} in {}", self.display()), &bytes).map(Some)
    }

    async fn list_names(&self, rel_dir: &str) -> Result<Vec<String>> {
        let prefix = self.location.child(rel_dir);
        let metas: Vec<_> = self
            .store()
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| Error::from(e).context(format!("listing {rel_dir} in checkpoint location {}", self.display())))?;
        Ok(metas.into_iter().filter_map(|m| m.location.filename().map(str::to_string)).collect())
    }

    /// Checks that the location can be written, by creating and deleting a probe object.
    pub async fn probe(&self) -> Result<()> {
        let rel = format!("_probe-{}-{}", std::process::id(), now_ms());
        let path = self.location.child(&rel);
        self.store().put(&path, PutPayload::from_static(b"probe")).await.map_err(|e| {
            Error::config(format!("checkpoint location {} is not writable; choose a writable location", self.display()))
                .with_source(e)
        })?;
        self.store().delete(&path).await?;
        Ok(())
    }

    /// Where it is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Reads `pipeline.json`, or writes `meta` when there is none; an existing one must match.
    /// Returns the stored meta (its `instance` is the one of the first run) and whether this call
    /// created it (a new job).
    pub async fn open_pipeline(&self, meta: &PipelineMeta) -> Result<(PipelineMeta, bool)> {
        if let Some(existing) = self.get_json::<PipelineMeta>("pipeline.json").await? {
            if existing.pipeline != meta.pipeline || existing.topology != meta.topology {
                return Err(Error::checkpoint(format!(
                    "the checkpoints in {} belong to pipeline `{}` with topology `{}`, but this pipeline is `{}` with \
                     topology `{}`; restore the old name and parallelism to resume (a fresh checkpoint location would \
                     be a new job that writes every row again)",
                    self.display(),
                    existing.pipeline,
                    existing.topology,
                    meta.pipeline,
                    meta.topology
                )));
            }
            let mut existing = existing;
            if existing.instance.is_empty() {
                // Written before instance ids existed: derive a stable one.
                existing.instance = format!("{:016x}", fnv1a(existing.pipeline.as_bytes()));
            }
            return Ok((existing, false));
        }
        let bytes = Bytes::from(serde_json::to_vec_pretty(meta).expect("serializable"));
        if !self.put_new("pipeline.json", bytes).await? {
            // Written concurrently by another process: check it matches.
            return Box::pin(self.open_pipeline(meta)).await;
        }
        Ok((meta.clone(), true))
    }

    /// `pipeline.json`, if the location holds checkpoints.
    pub async fn pipeline_meta(&self) -> Result<Option<PipelineMeta>> {
        self.get_json("pipeline.json").await
    }

    /// The manifest of `region` at `checkpoint`, if it is still kept.
    pub async fn manifest(&self, region: usize, checkpoint: u64) -> Result<Option<RegionManifest>> {
        self.get_json(&manifest_name(region, checkpoint)).await
    }

    /// The checkpoint ids of `region`'s manifests, ascending.
    pub async fn manifest_ids(&self, region: usize) -> Result<Vec<u64>> {
        let mut ids: Vec<u64> = self
            .list_names(&format!("regions/{region}"))
            .await?
            .iter()
            .filter_map(|n| n.strip_prefix("chk-")?.strip_suffix(".json")?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The latest manifest of `region`, if any.
    pub async fn latest(&self, pipeline: &str, region: usize) -> Result<Option<RegionManifest>> {
        let ids = self.manifest_ids(region).await?;
        let Some(id) = ids.last() else { return Ok(None) };
        let rel = manifest_name(region, *id);
        let m: RegionManifest = self
            .get_json(&rel)
            .await?
            .ok_or_else(|| Error::checkpoint(format!("checkpoint manifest {rel} disappeared while it was being read")))?;
        if m.pipeline != pipeline || m.region != region || m.checkpoint != *id {
            return Err(Error::checkpoint(format!(
                "checkpoint manifest {rel} in {} describes pipeline `{}` region {} checkpoint {}; it does not belong here",
                self.display(),
                m.pipeline,
                m.region,
                m.checkpoint
            )));
        }
        Ok(Some(m))
    }

    /// Writes a region manifest (create-if-absent), then prunes old ones.
    pub async fn write_manifest(&self, m: &RegionManifest) -> Result<()> {
        let rel = manifest_name(m.region, m.checkpoint);
        let bytes = Bytes::from(serde_json::to_vec(m).expect("serializable"));
        if !self.put_new(&rel, bytes).await? {
            return Err(Error::checkpoint(format!(
                "checkpoint manifest {rel} already exists in {}: is another process running this pipeline?",
                self.display()
            )));
        }
        // Pruning is housekeeping: the manifest is durable, and a failed listing (a body cut off
        // after the store's retries) must not fail the region; the next checkpoint prunes.
        let ids = match self.manifest_ids(m.region).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "could not list old checkpoint manifests to prune them");
                return Ok(());
            }
        };
        if ids.len() > KEEP_MANIFESTS {
            for id in &ids[..ids.len() - KEEP_MANIFESTS] {
                let path = self.location.child(&manifest_name(m.region, *id));
                match self.store().delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => tracing::warn!(error = %Error::from(e), "could not prune an old checkpoint manifest"),
                }
            }
        }
        Ok(())
    }

    /// Claims a fresh epoch for `region`, greater than `after`: each (re)start gets its own, even
    /// when earlier starts died before writing a manifest.
    pub async fn claim_epoch(&self, region: usize, after: Option<u64>) -> Result<u64> {
        let mut epoch = after.map_or(0, |e| e + 1);
        loop {
            if self.put_new(&format!("regions/{region}/epochs/{epoch:010}"), claimant()).await? {
                return Ok(epoch);
            }
            epoch += 1;
        }
    }

    /// Deletes assignment `seq`, compacted away (already gone counts as deleted).
    pub async fn delete_assignment(&self, seq: u64) -> Result<()> {
        let path = self.location.child(&format!("assignments/{seq:020}.json"));
        match self.store().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::from(e).context(format!("deleting split assignment {seq} in {}", self.display()))),
        }
    }

    /// Appends to the assignment log. Fails if `record.seq` exists (another process is running).
    pub async fn append_assignment(&self, record: &AssignmentRecord) -> Result<()> {
        let rel = format!("assignments/{:020}.json", record.seq);
        let mut v = serde_json::to_value(record).expect("serializable");
        v["format"] = FORMAT.into();
        v["version"] = VERSION.into();
        if !self.put_new(&rel, Bytes::from(serde_json::to_vec(&v).expect("serializable"))).await? {
            return Err(Error::checkpoint(format!(
                "split assignment {rel} already exists in {}: is another process running this pipeline?",
                self.display()
            )));
        }
        Ok(())
    }

    /// The assignment log, in order: from its oldest record not compacted away (see
    /// `runtime::assign`) to the newest, without gaps.
    pub async fn assignments(&self) -> Result<Vec<AssignmentRecord>> {
        let mut seqs: Vec<u64> =
            self.list_names("assignments").await?.iter().filter_map(|n| n.strip_suffix(".json")?.parse().ok()).collect();
        seqs.sort_unstable();
        let first = seqs.first().copied().unwrap_or(0);
        let mut out = Vec::with_capacity(seqs.len());
        for (i, seq) in seqs.iter().enumerate() {
            if *seq != first + i as u64 {
                return Err(Error::checkpoint(format!(
                    "the split assignment log in {} has a gap before entry {seq}; it cannot be resumed safely",
                    self.display()
                )));
            }
            let rel = format!("assignments/{seq:020}.json");
            out.push(self.get_json(&rel).await?.ok_or_else(|| Error::checkpoint(format!("{rel} disappeared")))?);
        }
        Ok(out)
    }
}

/// One of our checkpoint files, `what` naming it in errors: JSON with our format and version, and
/// the fields of `T`. Every failure is a checkpoint error saying what to do.
fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::checkpoint(format!(
            "checkpoint file {what} is corrupt ({e}); restore it from a backup to resume. Deleting it makes the next \
             run fall back to the previous checkpoint, which is safe only while the table holds no later commit of \
             this job: the run checks that and stops rather than lose or double rows"
        ))
    })?;
    let format = value.get("format").and_then(|v| v.as_str()).unwrap_or_default();
    let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if format != FORMAT || version != VERSION as u64 {
        return Err(Error::checkpoint(format!(
            "checkpoint file {what} has format `{format}` version {version}, but this Alluvium reads `{FORMAT}` \
             version {VERSION}; run the version that wrote it"
        )));
    }
    serde_json::from_value(value)
        .map_err(|e| Error::checkpoint(format!("checkpoint file {what} is not a valid {FORMAT} file ({e})")))
}

/// Parses a region manifest (`regions/R/chk-N.json`) as the store reads it: for tools that read
/// checkpoints themselves, and for the fuzzer.
pub fn parse_manifest(bytes: &[u8]) -> Result<RegionManifest> {
    decode("(a region manifest)", bytes)
}

/// Parses an assignment log entry (`assignments/N.json`) as the store reads it.
pub fn parse_assignment(bytes: &[u8]) -> Result<AssignmentRecord> {
    decode("(an assignment record)", bytes)
}

fn manifest_name(region: usize, checkpoint: u64) -> String {
    format!("regions/{region}/chk-{checkpoint:020}.json")
}

/// A new manifest with the current time and format fields set.
#[allow(clippy::too_many_arguments)]
pub(crate) fn manifest(
    pipeline: &str,
    region: usize,
    checkpoint: u64,
    epoch: u64,
    is_final: bool,
    readers: Vec<ReaderState>,
    operators: BTreeMap<String, State>,
    pending: Vec<PendingCommit>,
) -> RegionManifest {
    RegionManifest {
        format: FORMAT.into(),
        version: VERSION,
        pipeline: pipeline.into(),
        region,
        checkpoint,
        epoch,
        created_at_ms: now_ms(),
        is_final,
        readers,
        operators,
        pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> CheckpointStore {
        CheckpointStore::new(Location::parse(dir.to_str().unwrap()).unwrap())
    }

    #[tokio::test]
    async fn latest_manifest_wins_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert!(s.latest("p", 0).await.unwrap().is_none());
        for id in 1..=5 {
            s.write_manifest(&manifest("p", 0, id, 0, false, vec![], BTreeMap::new(), vec![])).await.unwrap();
        }
        assert_eq!(s.latest("p", 0).await.unwrap().unwrap().checkpoint, 5);
        let files = std::fs::read_dir(dir.path().join("regions/0"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("chk-"));
        assert_eq!(files.count(), KEEP_MANIFESTS);
        // Another process (another epoch) writing checkpoint 5 is refused; the same bytes again are
        // what a retried write whose reply was lost sends, and count as written.
        let again = s.write_manifest(&manifest("p", 0, 5, 1, false, vec![], BTreeMap::new(), vec![])).await;
        assert!(again.unwrap_err().to_string().contains("another process"));
        let m = manifest("p", 0, 6, 0, false, vec![], BTreeMap::new(), vec![]);
        s.write_manifest(&m).await.unwrap();
        s.write_manifest(&m).await.unwrap();
    }

    #[tokio::test]
    async fn a_corrupt_or_foreign_manifest_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.write_manifest(&manifest("p", 0, 1, 0, false, vec![], BTreeMap::new(), vec![])).await.unwrap();
        std::fs::write(dir.path().join("regions/0/chk-00000000000000000002.json"), b"{not json").unwrap();
        let e = s.latest("p", 0).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Checkpoint);
        assert!(e.to_string().contains("corrupt"), "{e}");
        let mut future = serde_json::to_value(manifest("p", 0, 3, 0, false, vec![], BTreeMap::new(), vec![])).unwrap();
        future["version"] = 99.into();
        std::fs::write(dir.path().join("regions/0/chk-00000000000000000003.json"), future.to_string()).unwrap();
        let e = s.latest("p", 0).await.unwrap_err();
        assert!(e.to_string().contains("version 99"), "{e}");
    }

    #[tokio::test]
    async fn epochs_are_unique_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert_eq!(s.claim_epoch(1, None).await.unwrap(), 0);
        assert_eq!(s.claim_epoch(1, None).await.unwrap(), 1);
        assert_eq!(s.claim_epoch(1, Some(0)).await.unwrap(), 2);
        assert_eq!(s.claim_epoch(0, None).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_different_topology_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let meta = PipelineMeta {
            format: FORMAT.into(),
            version: VERSION,
            pipeline: "p".into(),
            topology: "a[2]".into(),
            regions: 2,
            instance: new_instance_id(),
        };
        assert!(s.open_pipeline(&meta).await.unwrap().1, "the first open creates it");
        assert!(!s.open_pipeline(&meta).await.unwrap().1);
        let other = PipelineMeta { topology: "a[3]".into(), ..meta };
        assert!(s.open_pipeline(&other).await.unwrap_err().to_string().contains("restore the old name"));
    }
}
