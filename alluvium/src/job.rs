//! Job files: a pipeline in TOML, with the same vocabulary as the Rust builder.
//!
//! ```toml
//! [pipeline]
//! name = "generate"              # keys checkpoints and file names
//! parallelism = 2                # lanes; each lane is its own region
//!
//! [checkpoint]
//! interval = "1s"
//! location = "${ALLUVIUM_OUTPUT:-./out/generate}/_checkpoints"
//!
//! [source]
//! type = "generate"
//! rows = ${ALLUVIUM_ROWS:-1000000}
//!
//! [[stages]]
//! type = "fault"                 # optional stages, in order
//! dead_letter_every = 1000
//!
//! [sink]
//! type = "parquet"
//! path = "${ALLUVIUM_OUTPUT:-./out/generate}"
//!
//! [dead_letters]                 # optional; default: JSON Lines beside the checkpoints
//! type = "jsonl"
//! path = "${ALLUVIUM_OUTPUT:-./out/generate}/_dead_letters"
//! ```
//!
//! The vocabulary so far:
//!
//! | section | `type` | what |
//! |---|---|---|
//! | `[source]` | `generate` | deterministic synthetic rows (`rows`, `batch_size`, `payload_bytes`, `split_rows`, `rows_per_second`, `seed`) |
//! | `[source]` | `objects` | every object under `uri` (a directory or `s3://…/`), `extensions`, globs, key ranges, time windows, `continuous`; user metadata and S3 tags as columns; a versioned bucket `as_of` a time; or an S3 Inventory report (`inventory`) |
//! | `[source]` | `delta`, `lance`, `iceberg` | a table's rows, or those appended after `since_version`; `continuous` tails it (iceberg: `catalog`) |
//! | `[source]` | `manifest` | the rows of CSV, JSON Lines or Parquet `paths`: `uri_column`, `columns`, `base_uri`, `split_bytes` |
//! | `[[stages]]` | `fetch`, `hash`, `probe` | object bytes; blake3 hash (streamed); sniffed content type and size |
//! | `[[stages]]` | `decode_image`, `resize`, `encode_image` | images: `max_pixels`, `target`; `width`, `height`, `fit`; `format`, `quality` |
//! | `[[stages]]` | `chunk_text`, `embed` | text chunks by tokens (`max_tokens`, `overlap`); embeddings from a local `model` (`modality`, `batch_rows`, `workers`, `max_workers`, `gpus`) or a remote endpoint (`url`, `protocol`, `api_key_env`, `requests_per_minute`, `tokens_per_minute`, `outage_timeout`) |
//! | `[[stages]]` | `fault` | chaos testing: `dead_letter_every`, `fail_subtask`, `fail_after_rows`, `fail_times`, `delay_per_batch` |
//! | `[sink]`, `[dead_letters]` | `parquet`, `jsonl` | transactional files in a directory or under a URL |
//! | `[sink]` | `delta`, `iceberg`, `lance` | exactly-once lake tables ([`crate::lake`]) |
//! | `[io]`, `[io.access]` | | object stores (`s3`, `gcs`, `azure` options, retries, timeouts, concurrency) and which references may be read |
//!
//! Every stage also takes `name`, `parallelism` and `edge = "forward" | "rebalance"`.
//!
//! Processing is three pure steps, then one with IO:
//! 1. Parsing, then `${VAR}` and `${VAR:-default}` from the environment (`$$` is a literal `$`),
//!    so one file serves many runs and secrets stay out of files. They are substituted into the
//!    parsed values, never into the TOML text: a value cannot add a key or break the file, and an
//!    error about a value that came from the environment shows `${VAR}`, never the value. Inside a
//!    quoted string they may be anywhere; outside quotes a `${VAR}` must be a whole value, and its
//!    value a number or `true`/`false` (`rows = ${ROWS:-1000}`). An unset variable without a
//!    default is an error naming the variable, the key and the line. (The text-level
//!    [`interpolate`] is the same substitution on one string.)
//! 2. `--set key=value` overrides ([`apply_override`]) on the parsed TOML (`stages.3.workers=2`: a
//!    number picks a list entry, from 1).
//! 3. Typed parsing with unknown keys refused ([`JobFile`]); errors name the key and the line.
//! 4. [`JobFile::build`] checks every size and count against its range and every local output
//!    directory (`limits`), then makes the [`Pipeline`] (it checks the checkpoint directory is
//!    writable). `alluvium validate` and `alluvium run` both build the pipeline so: one set of
//!    checks.

mod limits;
mod vars;

pub use limits::MAX_PARALLELISM;

use std::time::Duration;

use serde::Deserialize;

use alluvium_core::files::{FileSink, JsonLines};
use alluvium_core::ops::Fault;
use alluvium_core::sink::Sink;
use alluvium_core::sources::Generate;
use alluvium_core::{Edge, Error, Pipeline, PipelineBuilder, Result, Stage};

/// A whole job file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// `[pipeline]`: name and runtime settings.
    pub pipeline: PipelineSection,
    /// `[checkpoint]`: interval and location.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// `[source]`.
    pub source: SourceConfig,
    /// `[[stages]]`, in order.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    /// `[sink]`.
    pub sink: SinkConfig,
    /// `[dead_letters]`.
    #[serde(default)]
    pub dead_letters: Option<SinkConfig>,
    /// `[io]`: object stores and the access policy for references.
    #[cfg(feature = "object")]
    #[serde(default)]
    pub io: Option<alluvium_object::StoreConfig>,
    /// The values taken from the environment, kept out of error messages.
    #[serde(skip)]
    interpolated: vars::Interpolated,
    /// The buckets and containers the job file names (`s3://B/…`, `gs://B/…`, `az://C/…`): the
    /// default of `[io.access] buckets`.
    #[serde(skip)]
    #[cfg_attr(not(feature = "object"), allow(dead_code))]
    named_buckets: Vec<String>,
}

/// The buckets and containers named by the `s3`, `gs`, `az` URLs among the string values of `doc`,
/// named as `[io.access] buckets` lists them (`alluvium_object::access::bucket_of`: the bucket or
/// container, `container@account` for `abfs[s]://container@account.dfs.core.windows.net/…`).
#[cfg_attr(not(feature = "object"), allow(dead_code))]
fn named_buckets(doc: &toml::Table) -> Vec<String> {
    fn walk(v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::String(s) => {
                let Ok(url) = url::Url::parse(s.trim()) else { return };
                let host = url.host_str().unwrap_or_default();
                // Kept in step with `alluvium_object::access::bucket_of` (this also builds
                // without the `object` feature).
                let name = match (url.scheme(), url.username()) {
                    ("az" | "abfs" | "abfss", container) if !container.is_empty() => {
                        format!("{container}@{}", host.split('.').next().unwrap_or_default())
                    }
                    ("s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss", _) => host.to_string(),
                    _ => return,
                };
                if !name.is_empty() && !out.contains(&name) {
                    out.push(name);
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            toml::Value::Table(t) => t.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    doc.values().for_each(|v| walk(v, &mut out));
    out
}

/// `[pipeline]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// The pipeline's name: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Default parallelism of every stage (1).
    #[serde(default)]
    pub parallelism: Option<usize>,
    /// Bytes buffered at most in the input channels of one subtask (64 MiB).
    #[serde(default)]
    pub channel_bytes: Option<u64>,
    /// Consecutive failures of a region before the job fails (3).
    #[serde(default)]
    pub max_restarts: Option<u32>,
    /// Delay before restarting a failed region, doubling per consecutive failure (`1s`).
    #[serde(default, with = "opt_duration")]
    pub restart_delay: Option<Duration>,
    /// How long the job waits out a table, catalog or store that keeps failing (`10m`): commits
    /// wait, and regions failing with retryable external errors keep restarting, then it stops.
    #[serde(default, with = "opt_duration")]
    pub outage_timeout: Option<Duration>,
}

/// `[checkpoint]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Time between checkpoints of each region (`10s`).
    #[serde(default, with = "opt_duration")]
    pub interval: Option<Duration>,
    /// A directory or URL (default `.alluvium/<name>/checkpoints`).
    #[serde(default)]
    pub location: Option<String>,
    /// Start a new job on a new (or deleted) checkpoint location even when the sink holds commits
    /// of a job that checkpointed there: every row is written again (false). Without it such a
    /// run stops with an error instead. `alluvium run --start-over` sets it.
    #[serde(default)]
    pub start_over: bool,
}

/// `[source]`, by `type`.
// A job's one source section, parsed once: boxing the large variants would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Deterministic synthetic rows (`id`, `payload`).
    Generate {
        /// Number of rows.
        rows: u64,
        /// Rows per batch (8192).
        #[serde(default)]
        batch_size: Option<usize>,
        /// Payload bytes per row (32).
        #[serde(default)]
        payload_bytes: Option<usize>,
        /// Rows per split (100000).
        #[serde(default)]
        split_rows: Option<u64>,
        /// Rate limit per reader.
        #[serde(default)]
        rows_per_second: Option<f64>,
        /// Changes the payloads (0).
        #[serde(default)]
        seed: Option<u64>,
        /// Readers (the pipeline's parallelism).
        #[serde(default)]
        parallelism: Option<usize>,
    },
    /// Every object under a prefix, as ObjectRef rows (`ref`).
    #[cfg(feature = "object")]
    Objects {
        /// A directory, or a URL such as `s3://bucket/prefix/`.
        uri: String,
        /// Keep only these extensions (`["jpg", "png"]`).
        #[serde(default)]
        extensions: Option<Vec<String>>,
        /// Objects per split (1000).
        #[serde(default)]
        split_objects: Option<usize>,
        /// Rows per batch (64).
        #[serde(default)]
        batch_size: Option<usize>,
        /// Keep objects last modified at or after this time (RFC 3339 or `YYYY-MM-DD`; empty: no bound).
        #[serde(default)]
        modified_since: Option<String>,
        /// Keep objects last modified before this time (RFC 3339 or `YYYY-MM-DD`; empty: no bound).
        #[serde(default)]
        modified_before: Option<String>,
        /// Keep keys (relative to `uri`) matching one of these globs (`**/*.jpg`).
        #[serde(default)]
        include: Vec<String>,
        /// Drop keys matching any of these globs.
        #[serde(default)]
        exclude: Vec<String>,
        /// Keep keys (relative to `uri`) after this one…
        #[serde(default)]
        start_after: Option<String>,
        /// …and before this one.
        #[serde(default)]
        end_before: Option<String>,
        /// Utf8 columns from the keys' `name=value` segments (`["dt", "country"]`).
        #[serde(default)]
        partition_columns: Vec<String>,
        /// Never end: re-list every `poll_interval`, emitting each new or overwritten object once.
        #[serde(default)]
        continuous: bool,
        /// Continuous mode: time between listings (`10s`).
        #[serde(default, with = "opt_duration")]
        poll_interval: Option<Duration>,
        /// Continuous mode: how long after its modification time an object may first be listed
        /// (`5m`); later ones are missed.
        #[serde(default, with = "opt_duration")]
        max_lateness: Option<Duration>,
        /// Utf8 columns of the objects' user metadata (`x-amz-meta-NAME`): one HEAD per object.
        #[serde(default)]
        metadata: Vec<String>,
        /// Utf8 columns of the objects' S3 tags: one `GetObjectTagging` per object.
        #[serde(default)]
        tags: Vec<String>,
        /// Take the objects from this S3 Inventory report (its configuration's folder, or a
        /// `manifest.json`) instead of listing `uri`.
        #[serde(default)]
        inventory: Option<String>,
        /// A versioned S3 bucket as it was at this time (RFC 3339 or `YYYY-MM-DD`): each key's
        /// version then, with its version id (from `ListObjectVersions`, or an inventory of all
        /// versions).
        #[serde(default)]
        as_of: Option<String>,
        /// Readers (the pipeline's parallelism).
        #[serde(default)]
        parallelism: Option<usize>,
    },
    /// The rows of CSV, JSON Lines or Parquet manifests, as ObjectRef rows (`ref`) and the
    /// declared columns.
    #[cfg(feature = "object")]
    Manifest {
        /// Manifest files, or prefixes/directories of them (ending in `/`).
        paths: Vec<String>,
        /// `csv`, `jsonl` or `parquet` (default: from the extension).
        #[serde(default)]
        format: Option<alluvium_object::ManifestFormat>,
        /// The column holding the URI (`uri`).
        #[serde(default)]
        uri_column: Option<String>,
        /// The output ObjectRef column (`ref`).
        #[serde(default)]
        ref_column: Option<String>,
        /// Other columns kept, `"name"` or `"name: type"`.
        #[serde(default)]
        columns: Vec<String>,
        /// Relative URIs resolve against this (default: the manifest's directory).
        #[serde(default)]
        base_uri: Option<String>,
        /// CSV: whether the first line is a header (true).
        #[serde(default)]
        header: Option<bool>,
        /// CSV: the field delimiter, one character (`,`; tab for `.tsv`).
        #[serde(default)]
        delimiter: Option<char>,
        /// Bytes of manifest per split (32 MiB).
        #[serde(default)]
        split_bytes: Option<u64>,
        /// Rows per batch (1024).
        #[serde(default)]
        batch_size: Option<usize>,
        /// Readers (the pipeline's parallelism).
        #[serde(default)]
        parallelism: Option<usize>,
    },
    /// A Lance dataset: a snapshot, or the rows appended after a version, once or tailing.
    #[cfg(feature = "lance")]
    Lance(TableSourceConfig),
    /// A Delta table: a snapshot, or the rows appended after a version, once or tailing.
    #[cfg(feature = "delta")]
    Delta(TableSourceConfig),
    /// An Iceberg table in a catalog: a snapshot, or the rows appended after a snapshot id, once
    /// or tailing.
    #[cfg(feature = "iceberg")]
    Iceberg(TableSourceConfig),
}

/// The `[source]` keys of a table source (`delta`, `lance`, `iceberg`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(any(feature = "delta", feature = "lance", feature = "iceberg")), allow(dead_code))]
pub struct TableSourceConfig {
    /// The table: a directory or a URL (`s3://bucket/tables/t`); for Iceberg `namespace.table`.
    table: String,
    /// Iceberg: the catalog, a SQLite file, a postgres:// URL or a REST http(s):// URL.
    #[serde(default)]
    catalog: Option<String>,
    /// Iceberg: the warehouse to ask a REST catalog for (SQL catalogs need none to read).
    #[serde(default)]
    warehouse: Option<String>,
    /// Iceberg: the catalog's name (`alluvium`).
    #[serde(default)]
    catalog_name: Option<String>,
    /// Iceberg: properties for the catalog client (REST: `token`, `credential`, `header.NAME`, …).
    #[serde(default)]
    catalog_properties: std::collections::HashMap<String, String>,
    /// Only these columns, in order (default: all).
    #[serde(default)]
    columns: Option<Vec<String>>,
    /// Only the rows appended by versions after this one (default: the whole table).
    #[serde(default)]
    since_version: Option<u64>,
    /// Never end: keep emitting each new version's appends once.
    #[serde(default)]
    continuous: bool,
    /// Continuous mode: time between looks for new versions (`10s`).
    #[serde(default, with = "opt_duration")]
    poll_interval: Option<Duration>,
    /// Rows per batch (8192).
    #[serde(default)]
    batch_size: Option<usize>,
    /// Readers (the pipeline's parallelism).
    #[serde(default)]
    parallelism: Option<usize>,
}

#[cfg_attr(not(any(feature = "delta", feature = "lance", feature = "iceberg")), allow(dead_code))]
impl TableSourceConfig {
    fn read(&self) -> Result<alluvium_core::sources::TableRead> {
        let mut read = alluvium_core::sources::TableRead::new(self.table.clone());
        if let Some(c) = &self.columns {
            read = read.columns(c.clone());
        }
        if let Some(v) = self.since_version {
            read = read.since_version(v);
        }
        if self.continuous {
            read = read.continuous(self.poll_interval.unwrap_or(Duration::from_secs(10)));
        } else if self.poll_interval.is_some() {
            return Err(Error::config("source.poll_interval needs `continuous = true`; add it, or remove `poll_interval`"));
        }
        if let Some(n) = self.batch_size {
            read = read.batch_size(n);
        }
        Ok(read)
    }

    /// Delta and Lance tables are named by their location alone.
    #[cfg(any(feature = "delta", feature = "lance"))]
    fn without_catalog(&self, kind: &str) -> Result<&Self> {
        if self.catalog.is_some()
            || self.warehouse.is_some()
            || self.catalog_name.is_some()
            || !self.catalog_properties.is_empty()
        {
            return Err(Error::config(format!(
                "source: `catalog`, `warehouse`, `catalog_name` and `catalog_properties` are for iceberg tables; a {kind} \
                 table is named by its location in `table` alone, so remove them"
            )));
        }
        Ok(self)
    }

    /// The Iceberg catalog the keys name.
    #[cfg(feature = "iceberg")]
    fn catalog(&self) -> Result<std::sync::Arc<alluvium_catalog::IcebergCatalog>> {
        let uri = self.catalog.as_deref().ok_or_else(|| {
            Error::config(
                "iceberg source: `catalog` is missing; set it to the catalog's SQLite file, postgres:// or REST http(s):// URL",
            )
        })?;
        crate::lake::iceberg_catalog(
            uri,
            self.warehouse.as_deref().unwrap_or_default(),
            &self.catalog_name,
            &self.catalog_properties,
        )
    }

    fn add<S: alluvium_core::Source>(&self, b: PipelineBuilder, source: S) -> PipelineBuilder {
        add_source(b, source, self.parallelism)
    }
}

/// Adds `source` with its own `parallelism`, or the pipeline's.
fn add_source<S: alluvium_core::Source>(b: PipelineBuilder, source: S, parallelism: Option<usize>) -> PipelineBuilder {
    match parallelism {
        Some(p) => b.source_with_parallelism(source, p),
        None => b.source(source),
    }
}

/// A point in time as job files and the CLI write it: RFC 3339 (`2026-11-01T06:00:00Z`, the `T`
/// and zone optional) or a date (`2026-11-01`, midnight UTC). `None` for an empty value.
pub fn parse_time(key: &str, value: &str) -> Result<Option<std::time::SystemTime>> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let full = if v.len() == 10 { format!("{v}T00:00:00Z") } else { v.to_string() };
    humantime::parse_rfc3339_weak(full.trim_end_matches('Z'))
        .map(Some)
        .map_err(|e| Error::config(format!("`{key}` = `{v}` is not a time ({e}); write 2026-11-01 or 2026-11-01T06:00:00Z")))
}

/// Settings every stage has.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageCommon {
    /// The stage's name (default: its type).
    #[serde(default)]
    pub name: Option<String>,
    /// The stage's parallelism (default: the pipeline's).
    #[serde(default)]
    pub parallelism: Option<usize>,
    /// `forward` (default) or `rebalance`.
    #[serde(default)]
    pub edge: Option<EdgeConfig>,
    /// Async stages (fetch, hash, probe, remote calls): batches in flight per subtask (4).
    #[serde(default)]
    pub batches_in_flight: Option<usize>,
    /// Async stages: `false` emits results as they complete instead of in input order (true).
    #[serde(default)]
    pub ordered: Option<bool>,
}

/// An edge in a job file.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum EdgeConfig {
    /// Subtask i → subtask i.
    Forward,
    /// Every upstream subtask → every downstream subtask.
    Rebalance,
}

/// `[[stages]]`, by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StageConfig {
    /// Injects failures on purpose (chaos testing).
    Fault {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// Rows whose `id` is a multiple of this become dead letters.
        #[serde(default)]
        dead_letter_every: Option<u64>,
        /// This subtask fails (a stage error, restarting its region)…
        #[serde(default)]
        fail_subtask: Option<usize>,
        /// …after it has seen this many rows…
        #[serde(default)]
        fail_after_rows: Option<u64>,
        /// …this many times (1).
        #[serde(default)]
        fail_times: Option<u32>,
        /// The failures are panics (a buggy stage) rather than errors.
        #[serde(default)]
        fail_with_panic: Option<bool>,
        /// Sleep per batch, e.g. `10ms` (a slow stage).
        #[serde(default, with = "opt_duration")]
        delay_per_batch: Option<Duration>,
    },
    /// ObjectRef → bytes (`bytes`, `content_hash`, `fetched_bytes`).
    #[cfg(feature = "object")]
    Fetch {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// The ObjectRef column (`ref`).
        #[serde(default)]
        column: Option<String>,
        /// Larger objects become dead letters (64 MiB).
        #[serde(default)]
        max_object_bytes: Option<u64>,
        /// Bytes being fetched at once (256 MiB).
        #[serde(default)]
        memory_budget: Option<u64>,
        /// Objects fetched at once per batch (16).
        #[serde(default)]
        concurrency: Option<usize>,
        /// How long to wait for an object store that does not answer before the job stops (`10m`).
        #[serde(default, with = "opt_duration")]
        outage_timeout: Option<Duration>,
    },
    /// ObjectRef → `content_hash` (blake3, streamed in constant memory) and `size`.
    #[cfg(feature = "object")]
    Hash {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// The ObjectRef column (`ref`).
        #[serde(default)]
        column: Option<String>,
        /// How long to wait for an object store that does not answer before the job stops (`10m`).
        #[serde(default, with = "opt_duration")]
        outage_timeout: Option<Duration>,
    },
    /// ObjectRef → `content_type` (sniffed from the first bytes) and `size`.
    #[cfg(feature = "object")]
    Probe {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// The ObjectRef column (`ref`).
        #[serde(default)]
        column: Option<String>,
        /// How long to wait for an object store that does not answer before the job stops (`10m`).
        #[serde(default, with = "opt_duration")]
        outage_timeout: Option<Duration>,
    },
    /// Encoded image bytes → RGB pixels (`image`) and the original `width`/`height`.
    #[cfg(feature = "formats")]
    DecodeImage {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// The Binary column (`bytes`).
        #[serde(default)]
        column: Option<String>,
        /// Larger images become dead letters (80,000,000).
        #[serde(default)]
        max_pixels: Option<u64>,
        /// `[width, height]` the images will be resized to: JPEGs decode at a reduced DCT scale.
        #[serde(default)]
        target: Option<[u32; 2]>,
        /// Bytes of decoded pixels per output batch (512 MiB); one image over it is a dead letter.
        #[serde(default)]
        max_batch_bytes: Option<u64>,
    },
    /// Resizes the decoded `image`.
    #[cfg(feature = "formats")]
    Resize {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// Target width.
        width: u32,
        /// Target height.
        height: u32,
        /// `exact` (default), `fit` (keep aspect, within) or `fill` (keep aspect, crop).
        #[serde(default)]
        fit: Option<FitConfig>,
        /// Bytes of resized pixels per output batch (512 MiB); one image over it is a dead letter.
        #[serde(default)]
        max_batch_bytes: Option<u64>,
    },
    /// ObjectRef → `video` (`alluvium.video`: duration, fps, codec, size, rotation), by FFmpeg.
    #[cfg(feature = "video")]
    ProbeVideo {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// The ObjectRef column (`ref`).
        #[serde(default)]
        column: Option<String>,
    },
    /// Videos → frame rows (`source`, `frame_index`, `pts_ms`, `keyframe`, `image`), streamed.
    #[cfg(feature = "video")]
    ExtractFrames {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// Sampling, size, encoding, limits.
        #[serde(flatten)]
        frames: ExtractFramesConfig,
    },
    /// ObjectRef → `audio` (`alluvium.audio`: duration, sample rate, channels, codec), by FFmpeg.
    #[cfg(feature = "video")]
    ProbeAudio {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// The ObjectRef column (`ref`).
        #[serde(default)]
        column: Option<String>,
    },
    /// Audio → window rows (`source`, `window_index`, `start_ms`, `duration_ms`, `sample_rate`,
    /// `audio`), resampled and streamed.
    #[cfg(feature = "video")]
    AudioWindows {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// Rate, channels, windows, encoding, limits.
        #[serde(flatten)]
        windows: AudioWindowsConfig,
    },
    /// Decoded `image` → a normalised Float32 `tensor` [3, height, width], on a GPU if asked.
    #[cfg(feature = "gpu")]
    ToTensor {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// Tensor width.
        width: usize,
        /// Tensor height.
        height: usize,
        /// The decoded image column (`image`).
        #[serde(default)]
        column: Option<String>,
        /// The tensor column (`tensor`).
        #[serde(default)]
        output: Option<String>,
        /// Per-channel means on the 0–1 scale (ImageNet's).
        #[serde(default)]
        mean: Option<[f32; 3]>,
        /// Per-channel standard deviations (ImageNet's).
        #[serde(default)]
        std: Option<[f32; 3]>,
        /// GPUs per subtask: 0 (the CPU, default), a fraction (shared) or a whole number.
        #[serde(default)]
        gpus: Option<f64>,
        /// GPU memory per subtask, bytes.
        #[serde(default)]
        gpu_memory: Option<u64>,
    },
    /// Text → chunks of at most `max_tokens` tokens of a model's tokenizer, overlapping by `overlap`.
    #[cfg(feature = "models")]
    ChunkText {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// The model whose tokenizer counts the tokens: a path or a registry name (all-MiniLM-L6-v2).
        #[serde(default)]
        model: Option<String>,
        /// The text column: Utf8, or Binary holding UTF-8 such as `fetch`'s `bytes` (`text`).
        #[serde(default)]
        column: Option<String>,
        /// The chunk column (`text`).
        #[serde(default)]
        output: Option<String>,
        /// Tokens per chunk at most (128).
        #[serde(default)]
        max_tokens: Option<usize>,
        /// Tokens each chunk shares with the one before (16).
        #[serde(default)]
        overlap: Option<usize>,
        /// A document with more chunks becomes a dead letter (100000).
        #[serde(default)]
        max_outputs_per_input: Option<u64>,
        /// A document whose chunks come to more bytes becomes a dead letter (1 GiB).
        #[serde(default)]
        max_output_bytes_per_input: Option<u64>,
    },
    /// Text → embeddings with a local model in a pool of workers shared by every lane.
    #[cfg(feature = "models")]
    Embed {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// Embedding settings.
        #[serde(flatten)]
        embed: EmbedConfig,
    },
    /// Encodes the decoded `image` into an `alluvium.image` column.
    #[cfg(feature = "formats")]
    EncodeImage {
        /// Name, parallelism, edge.
        #[serde(flatten)]
        common: StageCommon,
        /// `jpeg` (default), `png` or `webp`.
        #[serde(default)]
        format: Option<EncodeFormat>,
        /// JPEG quality 1–100 (85).
        #[serde(default)]
        quality: Option<u32>,
        /// The output column (`thumbnail`).
        #[serde(default)]
        output: Option<String>,
    },
}

/// `[[stages]] type = "extract_frames"`: which frames, at what size, in what encoding.
#[cfg(feature = "video")]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractFramesConfig {
    /// The videos' ObjectRef column (`ref`), or a `probe_video` column.
    #[serde(default)]
    pub column: Option<String>,
    /// Frames per second to keep (the default sampling: 1).
    #[serde(default)]
    pub fps: Option<f64>,
    /// Keep frames 0, N, 2N, …
    #[serde(default)]
    pub every_nth: Option<u64>,
    /// Keep keyframes only (decodes only them: fast).
    #[serde(default)]
    pub keyframes: Option<bool>,
    /// Keep the first frame at or after each of these times (ms).
    #[serde(default)]
    pub timestamps_ms: Option<Vec<i64>>,
    /// Keep the first frame of each scene: a luma-histogram change over this fraction (0.3).
    #[serde(default)]
    pub scene_threshold: Option<f64>,
    /// Frames come out this many pixels on the shorter side (224; never enlarged)…
    #[serde(default)]
    pub short_side: Option<u32>,
    /// …or within `[width, height]`, keeping the aspect ratio…
    #[serde(default)]
    pub fit: Option<[u32; 2]>,
    /// …or at the video's own size.
    #[serde(default)]
    pub original_size: Option<bool>,
    /// `jpeg` (default), `png` or `webp`.
    #[serde(default)]
    pub format: Option<EncodeFormat>,
    /// JPEG quality 1–100 (90).
    #[serde(default)]
    pub quality: Option<u32>,
    /// Frame rows per output batch (64).
    #[serde(default)]
    pub frames_per_batch: Option<usize>,
    /// Videos with more pixels per frame become dead letters (80,000,000).
    #[serde(default)]
    pub max_pixels: Option<u64>,
    /// Give up on one video after this long (`10m`).
    #[serde(default, with = "opt_duration")]
    pub time_budget: Option<Duration>,
    /// Decoder threads per video (1: one core per lane).
    #[serde(default)]
    pub threads: Option<usize>,
    /// A video with more frames to extract becomes a dead letter (100000).
    #[serde(default)]
    pub max_outputs_per_input: Option<u64>,
    /// A video whose encoded frames come to more bytes becomes a dead letter (2 GiB).
    #[serde(default)]
    pub max_output_bytes_per_input: Option<u64>,
}

/// `[[stages]] type = "audio_windows"`: the target rate and channels, the windows, the encoding.
#[cfg(feature = "video")]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioWindowsConfig {
    /// The audio's ObjectRef column (`ref`), or a `probe_audio` column.
    #[serde(default)]
    pub column: Option<String>,
    /// Samples per second of the windows (16000).
    #[serde(default)]
    pub sample_rate: Option<u32>,
    /// Channels of the windows: 1 = mono (the default), 2 = stereo, up to 8.
    #[serde(default)]
    pub channels: Option<u16>,
    /// Window length in ms (10000).
    #[serde(default)]
    pub window_ms: Option<u32>,
    /// From one window's start to the next (the window length: back to back; less overlaps).
    #[serde(default)]
    pub hop_ms: Option<u32>,
    /// The last, partial window: `pad` (with zeros, the default), `drop`, or `short` (WAV only).
    #[serde(default)]
    pub last: Option<LastWindowConfig>,
    /// `tensor` (Float32 `[channels, samples]`, the default) or `wav` (16-bit PCM clips).
    #[serde(default)]
    pub encoding: Option<AudioEncodingConfig>,
    /// The output column (`audio`).
    #[serde(default)]
    pub output: Option<String>,
    /// About this many bytes of windows per output batch (16 MiB).
    #[serde(default)]
    pub batch_bytes: Option<usize>,
    /// Give up on one item after this long (`10m`).
    #[serde(default, with = "opt_duration")]
    pub time_budget: Option<Duration>,
    /// An item with more windows becomes a dead letter (100000).
    #[serde(default)]
    pub max_outputs_per_input: Option<u64>,
    /// An item whose windows come to more bytes becomes a dead letter (2 GiB).
    #[serde(default)]
    pub max_output_bytes_per_input: Option<u64>,
}

/// `last` of an audio_windows stage.
#[cfg(feature = "video")]
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum LastWindowConfig {
    /// Zero-padded to a whole window.
    Pad,
    /// Dropped.
    Drop,
    /// Kept short (WAV only).
    Short,
}

/// `encoding` of an audio_windows stage.
#[cfg(feature = "video")]
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum AudioEncodingConfig {
    /// Float32 tensors.
    Tensor,
    /// WAV clips.
    Wav,
}

/// `fit` of a resize stage.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum FitConfig {
    /// Exactly the target size.
    Exact,
    /// Within the target size, keeping the aspect ratio.
    Fit,
    /// The target size, keeping the aspect ratio by cropping.
    Fill,
}

/// `format` of an encode stage.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum EncodeFormat {
    /// JPEG.
    Jpeg,
    /// PNG.
    Png,
    /// Lossless WebP.
    Webp,
}

/// `[sink]` and `[dead_letters]`, by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// Parquet files in a directory, made visible at commit.
    #[cfg(feature = "parquet")]
    Parquet(alluvium_parquet::ParquetSinkConfig),
    /// A Delta table.
    #[cfg(feature = "delta")]
    Delta(crate::lake::DeltaConfig),
    /// An Iceberg table in a catalog.
    #[cfg(feature = "iceberg")]
    Iceberg(crate::lake::IcebergConfig),
    /// A Lance dataset.
    #[cfg(feature = "lance")]
    Lance(crate::lake::LanceConfig),
    /// JSON Lines files in a directory, made visible at commit.
    Jsonl {
        /// The directory or URL.
        path: String,
        /// Sink parallelism (default: the pipeline's).
        #[serde(default)]
        parallelism: Option<usize>,
    },
}

impl SinkConfig {
    /// Builds the sink this section describes (no IO).
    pub fn build(&self) -> Result<std::sync::Arc<dyn Sink>> {
        Ok(match self {
            #[cfg(feature = "parquet")]
            SinkConfig::Parquet(c) => std::sync::Arc::new(c.build()?),
            #[cfg(feature = "delta")]
            SinkConfig::Delta(c) => c.build()?,
            #[cfg(feature = "iceberg")]
            SinkConfig::Iceberg(c) => c.build()?,
            #[cfg(feature = "lance")]
            SinkConfig::Lance(c) => c.build()?,
            SinkConfig::Jsonl { path, .. } => std::sync::Arc::new(FileSink::new(JsonLines, path.clone())),
        })
    }
    fn parallelism(&self) -> Option<usize> {
        match self {
            #[cfg(feature = "parquet")]
            SinkConfig::Jsonl { parallelism, .. } => *parallelism,
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
    /// Where it writes.
    pub fn path(&self) -> &str {
        match self {
            #[cfg(feature = "parquet")]
            SinkConfig::Parquet(c) => &c.path,
            #[cfg(feature = "delta")]
            SinkConfig::Delta(c) => &c.table,
            #[cfg(feature = "iceberg")]
            SinkConfig::Iceberg(c) => &c.table,
            #[cfg(feature = "lance")]
            SinkConfig::Lance(c) => &c.table,
            SinkConfig::Jsonl { path, .. } => path,
        }
    }
}

pub(crate) mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s).map_err(|e| {
                serde::de::Error::custom(format!("`{s}` is not a duration ({e}); write e.g. \"500ms\", \"10s\", \"5m\""))
            })
        })
        .transpose()
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` in `text` with values from `env`; `$$` stands for `$`.
/// A default may itself refer to variables: `${CATALOG:-${OUTPUT:-./out}/catalog.db}`. Job files
/// apply this to each string value once parsed ([`JobFile::parse_with_env`]), never to their text.
pub fn interpolate(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<String> {
    vars::expand(text, &env, &mut Vec::new())
        .map_err(|(at, message)| Error::config(format!("line {}: {message}", vars::line_of(text, at))))
}

/// Applies `key.path=value` to a parsed TOML document; `value` is parsed as TOML when it can be
/// (numbers, booleans, quoted strings), and taken as a string otherwise. A number in the path picks
/// an entry of a list, counted from 1 as error messages count them: `stages.3.workers=2` is the
/// third `[[stages]]` entry.
pub fn apply_override(doc: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| Error::config(format!("--set `{assignment}` has no `=`; write --set section.key=value")))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    set_in_table(doc, &parts, value, key.trim())
}

fn set_in_table(table: &mut toml::Table, parts: &[&str], value: toml::Value, key: &str) -> Result<()> {
    let (first, rest) = parts.split_first().expect("split yields one part at least");
    if rest.is_empty() {
        table.insert(first.to_string(), value);
        return Ok(());
    }
    let entry = table.entry(first.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
    match entry {
        toml::Value::Table(t) => set_in_table(t, rest, value, key),
        toml::Value::Array(items) => {
            let n = items.len();
            let item =
                rest[0].parse::<usize>().ok().and_then(|i| i.checked_sub(1)).and_then(|i| items.get_mut(i)).ok_or_else(|| {
                    Error::config(format!(
                        "--set `{key}`: `{first}` is a list of {n}; pick an entry with a number from 1 to {n} (`{first}.1.…`)"
                    ))
                })?;
            match (item, rest.len()) {
                (item, 1) => {
                    *item = value;
                    Ok(())
                }
                (toml::Value::Table(t), _) => set_in_table(t, &rest[1..], value, key),
                _ => Err(Error::config(format!("--set `{key}`: entry {} of `{first}` is not a section", rest[0]))),
            }
        }
        _ => Err(Error::config(format!("--set `{key}`: `{first}` is not a section"))),
    }
}

impl JobFile {
    /// Parses a job file's text: interpolation from the process environment, overrides, typed parsing.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Self> {
        Self::parse_with_env(text, overrides, |k| std::env::var(k).ok())
    }

    /// As [`JobFile::parse`], with an explicit environment.
    pub fn parse_with_env(text: &str, overrides: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let env: vars::Env = &env;
        // The text parsed holds no value from the environment (see `vars`): none can change its
        // structure or show in a parse error.
        let prepared = vars::Prepared::new(text, env)?;
        let mut hidden = prepared.hidden.clone();
        let mut root =
            toml::de::DeTable::parse(&prepared.text).map_err(|e| prepared.error(&hidden, format!("invalid job file: {e}")))?;
        prepared.resolve(root.get_mut(), env, &mut hidden)?;
        let mut buckets = Vec::new();
        let mut job = if overrides.is_empty() {
            if let Ok(doc) = toml::Table::deserialize(toml::de::Deserializer::from(root.clone())) {
                buckets = named_buckets(&doc);
            }
            let doc = root.clone();
            JobFile::deserialize(toml::de::Deserializer::from(root)).map_err(|mut e| {
                e.set_input(Some(&prepared.text));
                let doc = toml::Table::deserialize(toml::de::Deserializer::from(doc)).ok();
                let message = match doc.as_ref().and_then(|d| misplaced_key(&prepared.text, d, &e)) {
                    Some(what) => format!("invalid job file: {e}({what})"),
                    None => format!("invalid job file: {e}"),
                };
                prepared.error(&hidden, message)
            })?
        } else {
            let mut doc = toml::Table::deserialize(toml::de::Deserializer::from(root))
                .map_err(|e| prepared.error(&hidden, format!("invalid job file: {e}")))?;
            for o in overrides {
                apply_override(&mut doc, o)?;
            }
            buckets = named_buckets(&doc);
            JobFile::deserialize(doc).map_err(|e| prepared.error(&hidden, format!("after --set overrides: {}", e.message())))?
        };
        job.interpolated = hidden;
        job.named_buckets = buckets;
        Ok(job)
    }

    /// Builds the pipeline, as `alluvium run` does before it starts and `alluvium validate` does
    /// instead of running it: first the ranges of sizes and counts and the local output
    /// directories (every error names the key, dotted as `--set` takes it), then the pipeline's
    /// own checks (it checks the checkpoint directory can be written: local locations). Errors
    /// show `${VAR}` where a value came from the environment.
    pub fn build(&self) -> Result<Pipeline> {
        self.check().and_then(|()| self.assemble()).map_err(|e| self.interpolated.hide_error(e))
    }

    /// Makes the pipeline of a file [`JobFile::check`] passed.
    fn assemble(&self) -> Result<Pipeline> {
        let b = Pipeline::builder(self.pipeline.name.clone());
        #[cfg(feature = "object")]
        let registry = {
            let mut io = self.io.clone().unwrap_or_default();
            if io.access.buckets.is_none() {
                io.access.buckets = Some(self.named_buckets.clone());
            }
            io.validate()?;
            std::sync::Arc::new(alluvium_object::ObjectStoreRegistry::new(io))
        };
        #[cfg(not(feature = "object"))]
        let registry = ();
        let mut b = self.source(b, &registry)?;
        for (i, s) in self.stages.iter().enumerate() {
            b = b.then(stage(s, &registry).map_err(|e| e.context(format!("[[stages]] entry {}", i + 1)))?);
        }
        b = b.sink_with(self.sink.build().map_err(|e| e.context("[sink]"))?, self.sink.parallelism(), Edge::Forward);
        if let Some(d) = &self.dead_letters {
            b = b.dead_letters_shared(d.build().map_err(|e| e.context("[dead_letters]"))?);
        }
        let p = &self.pipeline;
        if let Some(v) = p.parallelism {
            b = b.parallelism(v);
        }
        if let Some(v) = p.channel_bytes {
            b = b.channel_bytes(v);
        }
        if let Some(v) = p.max_restarts {
            b = b.max_restarts(v);
        }
        if let Some(v) = p.restart_delay {
            b = b.restart_delay(v);
        }
        if let Some(v) = p.outage_timeout {
            b = b.outage_timeout(v);
        }
        if let Some(v) = self.checkpoint.interval {
            b = b.checkpoint_every(v);
        }
        if let Some(v) = &self.checkpoint.location {
            b = b.checkpoint_location(v.clone());
        }
        b.start_over(self.checkpoint.start_over).build()
    }
}

#[cfg(feature = "object")]
type Registry = std::sync::Arc<alluvium_object::ObjectStoreRegistry>;
#[cfg(not(feature = "object"))]
type Registry = ();

impl JobFile {
    fn source(&self, b: PipelineBuilder, registry: &Registry) -> Result<PipelineBuilder> {
        let _ = registry;
        match &self.source {
            SourceConfig::Generate { rows, batch_size, payload_bytes, split_rows, rows_per_second, seed, parallelism } => {
                let mut g = Generate::new(*rows);
                if let Some(v) = batch_size {
                    g = g.batch_size(*v);
                }
                if let Some(v) = payload_bytes {
                    g = g.payload_bytes(*v);
                }
                if let Some(v) = split_rows {
                    g = g.split_rows(*v);
                }
                if let Some(v) = rows_per_second {
                    g = g.rows_per_second(*v);
                }
                if let Some(v) = seed {
                    g = g.seed(*v);
                }
                Ok(add_source(b, g, *parallelism))
            }
            #[cfg(feature = "object")]
            SourceConfig::Objects {
                uri,
                extensions,
                split_objects,
                batch_size,
                modified_since,
                modified_before,
                include,
                exclude,
                start_after,
                end_before,
                partition_columns,
                continuous,
                poll_interval,
                max_lateness,
                metadata,
                tags,
                inventory,
                as_of,
                parallelism,
            } => {
                let mut src = alluvium_object::ObjectStoreSource::prefix(registry.clone(), uri.clone())
                    .include(include)?
                    .exclude(exclude)?
                    .key_range(start_after.clone(), end_before.clone())
                    .partition_columns(partition_columns.clone())
                    .metadata(metadata.clone())
                    .tags(tags.clone());
                if *continuous {
                    src = src.continuous(
                        poll_interval.unwrap_or(Duration::from_secs(10)),
                        max_lateness.unwrap_or(Duration::from_secs(300)),
                    );
                } else if poll_interval.is_some() || max_lateness.is_some() {
                    return Err(Error::config(
                        "objects source: `poll_interval` and `max_lateness` need `continuous = true`; add it, or remove them",
                    ));
                }
                let since = parse_time("source.modified_since", modified_since.as_deref().unwrap_or_default())?;
                let before = parse_time("source.modified_before", modified_before.as_deref().unwrap_or_default())?;
                if since.is_some() || before.is_some() {
                    src = src.modified_between(since, before);
                }
                if let Some(e) = extensions {
                    src = src.extensions(e.clone());
                }
                if let Some(inv) = inventory.as_deref().filter(|i| !i.trim().is_empty()) {
                    src = src.inventory(inv);
                }
                if let Some(t) = parse_time("source.as_of", as_of.as_deref().unwrap_or_default())? {
                    src = src.as_of(t);
                }
                if let Some(n) = split_objects {
                    src = src.split_objects(*n);
                }
                if let Some(n) = batch_size {
                    src = src.batch_size(*n);
                }
                Ok(add_source(b, src, *parallelism))
            }
            #[cfg(feature = "object")]
            SourceConfig::Manifest {
                paths,
                format,
                uri_column,
                ref_column,
                columns,
                base_uri,
                header,
                delimiter,
                split_bytes,
                batch_size,
                parallelism,
            } => {
                let mut src = alluvium_object::ManifestSource::new(registry.clone(), paths.clone()).columns(columns)?;
                if let Some(f) = format {
                    src = src.format(*f);
                }
                if let Some(c) = uri_column {
                    src = src.uri_column(c.clone());
                }
                if let Some(c) = ref_column {
                    src = src.ref_column(c.clone());
                }
                if let Some(u) = base_uri {
                    src = src.base_uri(u.clone());
                }
                if let Some(h) = header {
                    src = src.header(*h);
                }
                if let Some(d) = delimiter {
                    let byte = u8::try_from(*d).ok().filter(u8::is_ascii).ok_or_else(|| {
                        Error::config(format!(
                            "source.delimiter: `{d}` is not one ASCII character; write \",\", \";\" or \"\\t\""
                        ))
                    })?;
                    src = src.delimiter(byte);
                }
                if let Some(n) = split_bytes {
                    src = src.split_bytes(*n);
                }
                if let Some(n) = batch_size {
                    src = src.batch_size(*n);
                }
                Ok(add_source(b, src, *parallelism))
            }
            #[cfg(feature = "lance")]
            SourceConfig::Lance(t) => Ok(t.add(b, alluvium_lance::LanceSource::new(t.without_catalog("lance")?.read()?))),
            #[cfg(feature = "delta")]
            SourceConfig::Delta(t) => Ok(t.add(b, alluvium_delta::DeltaSource::new(t.without_catalog("delta")?.read()?))),
            #[cfg(feature = "iceberg")]
            SourceConfig::Iceberg(t) => {
                let source = alluvium_iceberg::IcebergSource::new(t.read()?, t.catalog()?);
                alluvium_core::Source::validate(&source).map_err(|e| e.context("key `source.table`"))?;
                Ok(t.add(b, source))
            }
        }
    }
}

fn stage(s: &StageConfig, registry: &Registry) -> Result<Stage> {
    let _ = registry;
    let (common, stage) = match s {
        StageConfig::Fault {
            common,
            dead_letter_every,
            fail_subtask,
            fail_after_rows,
            fail_times,
            fail_with_panic,
            delay_per_batch,
        } => {
            let f = fault(*dead_letter_every, *fail_subtask, *fail_after_rows, *fail_times, *delay_per_batch)?;
            (common, Stage::from(f.panic_instead(fail_with_panic.unwrap_or(false))))
        }
        #[cfg(feature = "object")]
        StageConfig::Fetch { common, column, max_object_bytes, memory_budget, concurrency, outage_timeout } => {
            let mut f = alluvium_object::Fetch::new(registry.clone());
            if let Some(c) = column {
                f = f.column(c.clone());
            }
            if let Some(n) = max_object_bytes {
                f = f.max_object_bytes(*n);
            }
            if let Some(n) = memory_budget {
                f = f.memory_budget(*n);
            }
            if let Some(n) = concurrency {
                f = f.concurrency(*n);
            }
            if let Some(t) = outage_timeout {
                f = f.outage_timeout(*t);
            }
            (common, Stage::from(f))
        }
        #[cfg(feature = "object")]
        StageConfig::Hash { common, column, outage_timeout } => {
            let mut h = alluvium_object::Hash::new(registry.clone());
            if let Some(t) = outage_timeout {
                h = h.outage_timeout(*t);
            }
            (
                common,
                Stage::from(match column {
                    Some(c) => h.column(c.clone()),
                    None => h,
                }),
            )
        }
        #[cfg(feature = "object")]
        StageConfig::Probe { common, column, outage_timeout } => {
            let mut p = alluvium_object::Probe::new(registry.clone());
            if let Some(t) = outage_timeout {
                p = p.outage_timeout(*t);
            }
            (
                common,
                Stage::from(match column {
                    Some(c) => p.column(c.clone()),
                    None => p,
                }),
            )
        }
        #[cfg(feature = "formats")]
        StageConfig::DecodeImage { common, column, max_pixels, target, max_batch_bytes } => {
            let mut d = alluvium_formats::DecodeImage::rgb();
            if let Some(c) = column {
                d = d.column(c.clone());
            }
            if let Some(n) = max_pixels {
                d = d.max_pixels(*n);
            }
            if let Some([w, h]) = target {
                d = d.target(*w, *h);
            }
            if let Some(n) = max_batch_bytes {
                d = d.max_batch_bytes(*n as usize);
            }
            (common, Stage::from(d))
        }
        #[cfg(feature = "formats")]
        StageConfig::Resize { common, width, height, fit, max_batch_bytes } => {
            if *width == 0 || *height == 0 {
                return Err(Error::config(format!(
                    "resize: {width}×{height} has a zero side; set `width` and `height` to 1 or more"
                )));
            }
            let fit = match fit.unwrap_or(FitConfig::Exact) {
                FitConfig::Exact => alluvium_formats::Fit::Exact,
                FitConfig::Fit => alluvium_formats::Fit::Fit,
                FitConfig::Fill => alluvium_formats::Fit::Fill,
            };
            let mut r = alluvium_formats::Resize::to(*width, *height).fit(fit);
            if let Some(n) = max_batch_bytes {
                r = r.max_batch_bytes(*n as usize);
            }
            (common, Stage::from(r))
        }
        #[cfg(feature = "video")]
        StageConfig::ProbeVideo { common, column } => {
            let p = alluvium_formats::ProbeVideo::new(registry.clone());
            (common, Stage::from(p.column(column.clone().unwrap_or_else(|| "ref".into()))))
        }
        #[cfg(feature = "video")]
        StageConfig::ExtractFrames { common, frames } => (common, Stage::from(frames.build(registry)?)),
        #[cfg(feature = "video")]
        StageConfig::ProbeAudio { common, column } => {
            let p = alluvium_formats::ProbeAudio::new(registry.clone());
            (common, Stage::from(p.column(column.clone().unwrap_or_else(|| "ref".into()))))
        }
        #[cfg(feature = "video")]
        StageConfig::AudioWindows { common, windows } => (common, Stage::from(windows.build(registry)?)),
        #[cfg(feature = "gpu")]
        StageConfig::ToTensor { common, width, height, column, output, mean, std, gpus, gpu_memory } => {
            let mut t = alluvium_gpu::ToTensor::new(*width, *height)
                .resources(alluvium_gpu::Resources::gpu(gpus.unwrap_or(0.0)).memory(gpu_memory.unwrap_or(0)));
            if mean.is_some() || std.is_some() {
                let d = (alluvium_gpu::tensor::IMAGENET_MEAN, alluvium_gpu::tensor::IMAGENET_STD);
                t = t.normalize(mean.unwrap_or(d.0), std.unwrap_or(d.1));
            }
            if let Some(c) = column {
                t = t.column(c.clone());
            }
            if let Some(o) = output {
                t = t.output(o.clone());
            }
            t.validate()?;
            (common, Stage::from(t))
        }
        #[cfg(feature = "models")]
        StageConfig::ChunkText {
            common,
            model,
            column,
            output,
            max_tokens,
            overlap,
            max_outputs_per_input,
            max_output_bytes_per_input,
        } => {
            let model = model.as_deref().unwrap_or(alluvium_models::MINILM);
            let dir = alluvium_models::resolve(model, &["tokenizer.json"]).map_err(|e| e.context("chunk_text"))?;
            let mut c = alluvium_models::ChunkText::new(alluvium_models::TextTokenizer::load(&dir, usize::MAX)?)
                .tokens(max_tokens.unwrap_or(128), overlap.unwrap_or(16));
            if let Some(col) = column {
                c = c.column(col.clone());
            }
            if let Some(o) = output {
                c = c.output(o.clone());
            }
            if let Some(n) = max_outputs_per_input {
                c = c.max_outputs_per_input(*n);
            }
            if let Some(n) = max_output_bytes_per_input {
                c = c.max_output_bytes_per_input(*n);
            }
            c.validate()?;
            (common, Stage::new("chunk_text", c))
        }
        #[cfg(feature = "models")]
        StageConfig::Embed { common, embed } => (common, embed.build(common.name.as_deref().unwrap_or("embed"))?),
        #[cfg(feature = "formats")]
        StageConfig::EncodeImage { common, format, quality, output } => {
            if quality.is_some_and(|q| q == 0 || q > 100) {
                return Err(Error::config("encode_image: `quality` must be between 1 and 100"));
            }
            let mut e = alluvium_formats::EncodeImage::jpeg(quality.unwrap_or(85) as u8);
            match format.unwrap_or(EncodeFormat::Jpeg) {
                EncodeFormat::Jpeg => {}
                EncodeFormat::Png => e = e.format(alluvium_formats::ImageFormat::Png),
                EncodeFormat::Webp => e = e.format(alluvium_formats::ImageFormat::WebP),
            }
            if let Some(o) = output {
                e = e.output(o.clone());
            }
            (common, Stage::from(e))
        }
    };
    with_common(stage, common)
}

/// The settings of an `embed` stage.
#[cfg(feature = "models")]
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbedConfig {
    /// The model: a path or a registry name (all-MiniLM-L6-v2). A CLIP model embeds images.
    #[serde(default)]
    pub model: Option<String>,
    /// What a local model embeds: `image` or `text` (a CLIP model has both towers; by default it
    /// embeds images, and `text` puts texts in the same space).
    #[serde(default)]
    pub modality: Option<String>,
    /// The input column (`text`; `image` for an image model).
    #[serde(default)]
    pub column: Option<String>,
    /// The embedding column (`embedding`).
    #[serde(default)]
    pub output: Option<String>,
    /// Rows per model call at most (32).
    #[serde(default)]
    pub batch_rows: Option<usize>,
    /// Longest wait for a call's batch to fill, e.g. `10ms`.
    #[serde(default, with = "opt_duration")]
    pub max_wait: Option<Duration>,
    /// Model workers (instances) at the start and at least (1).
    #[serde(default)]
    pub workers: Option<usize>,
    /// Model workers at most: the pool grows with its queue up to this (`workers`).
    #[serde(default)]
    pub max_workers: Option<usize>,
    /// GPUs per worker (0: the CPU).
    #[serde(default)]
    pub gpus: Option<f64>,
    /// Time one call may take before it is retried, e.g. `60s`.
    #[serde(default, with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// How long the stage waits for an endpoint that is down (refused connections, timeouts, 5xx,
    /// 429) before the job stops with an error, e.g. `10m` (the default). Meanwhile the stage holds
    /// its input, nothing becomes a dead letter and checkpoints go on; a rerun resumes.
    #[serde(default, with = "opt_duration")]
    pub outage_timeout: Option<Duration>,
    /// A remote endpoint instead of a local model: its base URL (`https://api.openai.com`,
    /// `http://127.0.0.1:8080` for `alluvium serve-model`). `model` is then the name it serves.
    #[serde(default)]
    pub url: Option<String>,
    /// The endpoint's protocol: `openai` (default) or `kserve`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// The environment variable holding the endpoint's API key (sent as a bearer token).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Calls per minute to the endpoint at most.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Input tokens per minute to the endpoint at most.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    /// The metric the embedding column records: `cosine`, `dot` or `l2` (default: what a local
    /// model declares, `similarity_fn_name`; cosine for an endpoint).
    #[serde(default)]
    pub metric: Option<alluvium_core::types::Metric>,
}

#[cfg(feature = "models")]
impl EmbedConfig {
    fn build(&self, name: &str) -> Result<Stage> {
        let model = self.model.as_deref().unwrap_or(alluvium_models::MINILM);
        let mut e = match &self.url {
            None => {
                for (key, set) in [
                    ("protocol", self.protocol.is_some()),
                    ("api_key_env", self.api_key_env.is_some()),
                    ("requests_per_minute", self.requests_per_minute.is_some()),
                    ("tokens_per_minute", self.tokens_per_minute.is_some()),
                ] {
                    if set {
                        return Err(Error::config(format!(
                            "stage `{name}`: `{key}` is for remote endpoints; set `url` too, or remove `{key}`"
                        )));
                    }
                }
                let modality = match self.modality.as_deref() {
                    None => None,
                    Some("text") => Some(alluvium_models::Modality::Text),
                    Some("image") => Some(alluvium_models::Modality::Image),
                    Some(other) => {
                        return Err(Error::config(format!(
                            "stage `{name}`: key `modality` is `{other}`; write `image` or `text`"
                        )))
                    }
                };
                alluvium_models::Embed::local(model, modality).map_err(|e| e.context(format!("stage `{name}`")))?
            }
            Some(url) => {
                for (key, set) in [("gpus", self.gpus.is_some()), ("modality", self.modality.is_some())] {
                    if set {
                        return Err(Error::config(format!(
                            "stage `{name}`: `{key}` is for local models; a remote endpoint (`url`) serves one model \
                             on its own hardware: remove `{key}`"
                        )));
                    }
                }
                let protocol = alluvium_models::Protocol::parse(self.protocol.as_deref().unwrap_or("openai"))
                    .map_err(|e| e.context(format!("stage `{name}`: key `protocol`")))?;
                let mut endpoint = alluvium_models::Endpoint::new(protocol, url.clone(), model);
                if let Some(var) = &self.api_key_env {
                    endpoint = endpoint.api_key_env(var.clone());
                }
                if let Some(n) = self.requests_per_minute {
                    endpoint = endpoint.requests_per_minute(n);
                }
                if let Some(n) = self.tokens_per_minute {
                    endpoint = endpoint.tokens_per_minute(n);
                }
                alluvium_models::Embed::remote(endpoint)
            }
        };
        if let Some(c) = &self.column {
            e = e.column(c.clone());
        }
        if let Some(o) = &self.output {
            e = e.output(o.clone());
        }
        if let Some(n) = self.batch_rows {
            e = e.batch_rows(n);
        }
        if let Some(w) = self.max_wait {
            e = e.max_wait(w);
        }
        let min = self.workers.unwrap_or(1);
        e = e.workers(min, self.max_workers.unwrap_or(min));
        if let Some(g) = self.gpus {
            e = e.gpus(g);
        }
        if let Some(t) = self.timeout {
            e = e.timeout(t);
        }
        if let Some(t) = self.outage_timeout {
            if t.is_zero() {
                return Err(Error::config(format!(
                    "stage `{name}`: `outage_timeout` is 0; give how long to wait for an endpoint that is down, e.g. \"10m\""
                )));
            }
            e = e.outage_timeout(t);
        }
        if let Some(m) = self.metric {
            e = e.metric(m);
        }
        e.build(name)
    }
}

#[cfg(feature = "video")]
impl ExtractFramesConfig {
    fn build(&self, registry: &Registry) -> Result<alluvium_formats::ExtractFrames> {
        use alluvium_formats::{FrameSize, ImageFormat, Sampling};
        let c = self;
        let mut modes = Vec::new();
        if let Some(r) = c.fps {
            modes.push(("fps", Sampling::PerSecond(r)));
        }
        if let Some(n) = c.every_nth {
            modes.push(("every_nth", Sampling::EveryNth(n)));
        }
        if c.keyframes == Some(true) {
            modes.push(("keyframes", Sampling::Keyframes));
        }
        if let Some(t) = &c.timestamps_ms {
            modes.push(("timestamps_ms", Sampling::Timestamps(t.clone())));
        }
        if let Some(t) = c.scene_threshold {
            modes.push(("scene_threshold", Sampling::SceneChanges(t)));
        }
        if modes.len() > 1 {
            let names: Vec<&str> = modes.iter().map(|m| m.0).collect();
            return Err(Error::config(format!(
                "extract_frames: `{}` each choose the frames; keep one of them",
                names.join("`, `")
            )));
        }
        let sampling = modes.pop().map_or(Sampling::PerSecond(1.0), |m| m.1);
        let size = match (c.short_side, c.fit, c.original_size) {
            (None, None, None | Some(false)) => FrameSize::ShortSide(224),
            (Some(s), None, None | Some(false)) => FrameSize::ShortSide(s),
            (None, Some([w, h]), None | Some(false)) => FrameSize::Fit(w, h),
            (None, None, Some(true)) => FrameSize::Original,
            _ => {
                return Err(Error::config(
                    "extract_frames: `short_side`, `fit` and `original_size` each set the frame size; keep one of them",
                ))
            }
        };
        if c.quality.is_some_and(|q| q == 0 || q > 100) {
            return Err(Error::config("extract_frames: `quality` must be between 1 and 100"));
        }
        let format = match c.format.unwrap_or(EncodeFormat::Jpeg) {
            EncodeFormat::Jpeg => ImageFormat::Jpeg { quality: c.quality.unwrap_or(90) as u8 },
            EncodeFormat::Png => ImageFormat::Png,
            EncodeFormat::Webp => ImageFormat::WebP,
        };
        let defaults = alluvium_formats::video::Limits::default();
        let limits = alluvium_formats::video::Limits {
            max_pixels: c.max_pixels.unwrap_or(defaults.max_pixels),
            time_budget: c.time_budget.unwrap_or(defaults.time_budget),
            threads: c.threads.unwrap_or(defaults.threads).max(1),
        };
        let mut e = alluvium_formats::ExtractFrames::new(registry.clone())
            .sampling(sampling)
            .size(size)
            .format(format)
            .limits(limits)
            .frames_per_batch(c.frames_per_batch.unwrap_or(64));
        if let Some(col) = &c.column {
            e = e.column(col.clone());
        }
        if let Some(n) = c.max_outputs_per_input {
            e = e.max_outputs_per_input(n);
        }
        if let Some(n) = c.max_output_bytes_per_input {
            e = e.max_output_bytes_per_input(n);
        }
        e.validate()?;
        Ok(e)
    }
}

#[cfg(feature = "video")]
impl AudioWindowsConfig {
    fn build(&self, registry: &Registry) -> Result<alluvium_formats::AudioWindows> {
        use alluvium_formats::{AudioEncoding, LastWindow, Target, Windowing};
        let c = self;
        let window_ms = c.window_ms.unwrap_or(10_000);
        let mut w = alluvium_formats::AudioWindows::new(registry.clone())
            .target(Target { sample_rate: c.sample_rate.unwrap_or(16_000), channels: c.channels.unwrap_or(1) })
            .windowing(Windowing {
                window_ms,
                hop_ms: c.hop_ms.unwrap_or(window_ms),
                last: match c.last.unwrap_or(LastWindowConfig::Pad) {
                    LastWindowConfig::Pad => LastWindow::Pad,
                    LastWindowConfig::Drop => LastWindow::Drop,
                    LastWindowConfig::Short => LastWindow::Short,
                },
            })
            .encoding(match c.encoding.unwrap_or(AudioEncodingConfig::Tensor) {
                AudioEncodingConfig::Tensor => AudioEncoding::Tensor,
                AudioEncodingConfig::Wav => AudioEncoding::Wav,
            });
        if let Some(col) = &c.column {
            w = w.column(col.clone());
        }
        if let Some(o) = &c.output {
            w = w.output(o.clone());
        }
        if let Some(n) = c.batch_bytes {
            w = w.batch_bytes(n);
        }
        if let Some(t) = c.time_budget {
            w = w.time_budget(t);
        }
        if let Some(n) = c.max_outputs_per_input {
            w = w.max_outputs_per_input(n);
        }
        if let Some(n) = c.max_output_bytes_per_input {
            w = w.max_output_bytes_per_input(n);
        }
        w.validate()?;
        Ok(w)
    }
}

fn fault(
    dead_letter_every: Option<u64>,
    fail_subtask: Option<usize>,
    fail_after_rows: Option<u64>,
    fail_times: Option<u32>,
    delay_per_batch: Option<Duration>,
) -> Result<Fault> {
    let mut f = Fault::new();
    if let Some(n) = dead_letter_every {
        f = f.dead_letter_every(n);
    }
    if let Some(sub) = fail_subtask {
        f = f.fail_subtask(sub, fail_after_rows.unwrap_or(0), fail_times.unwrap_or(1));
    } else if fail_after_rows.is_some() || fail_times.is_some() {
        return Err(Error::config("`fail_after_rows` and `fail_times` need `fail_subtask`; add fail_subtask = 0"));
    }
    if let Some(d) = delay_per_batch {
        f = f.delay_per_batch(d);
    }
    Ok(f)
}

fn with_common(mut stage: Stage, common: &StageCommon) -> Result<Stage> {
    if let Some(name) = &common.name {
        stage = stage.named(name.clone());
    }
    if let Some(p) = common.parallelism {
        stage = stage.parallelism(p);
    }
    if common.edge == Some(EdgeConfig::Rebalance) {
        stage = stage.rebalance();
    }
    if (common.batches_in_flight.is_some() || common.ordered.is_some()) && !stage.is_async() {
        return Err(Error::config(format!(
            "`batches_in_flight` and `ordered` apply to async stages (fetch, hash, probe); stage `{}` runs one batch \
             at a time: remove them, or raise its `parallelism`",
            stage.name()
        )));
    }
    if let Some(n) = common.batches_in_flight {
        if n == 0 {
            return Err(Error::config("`batches_in_flight` is 0; give 1 or more"));
        }
        stage = stage.concurrency(n);
    }
    if common.ordered == Some(false) {
        stage = stage.unordered();
    }
    Ok(stage)
}

/// When a value of the wrong type (or out of its type's range) sits in a `type = "…"` section,
/// toml can point only at the section's header, since serde reads those sections whole: the words
/// that name the key (and its range, if it has one), from `doc` (the parsed and interpolated file)
/// and the file's `text` the error's span is in. E.g. `` the value of `stages.2.quality`: give 1 to 100 ``.
fn misplaced_key(text: &str, doc: &toml::Table, e: &toml::de::Error) -> Option<String> {
    let message = e.message();
    let (unexpected, out_of_range) = match message.strip_prefix("invalid type: ") {
        Some(m) => (m, false),
        None => (message.strip_prefix("invalid value: ")?, true),
    };
    let unexpected = unexpected.split(", expected").next()?.to_string();
    let span = e.span()?;
    let header = text.get(span.clone())?.trim();
    let (path, section) = if let Some(name) = header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
        // The how-many-th `[[name]]` table this header opens, counted from 1 as `--set` does.
        let index = text.get(..span.start)?.matches(&format!("[[{name}]]")).count();
        (format!("{name}.{}", index + 1), doc.get(name)?.as_array()?.get(index)?.as_table()?)
    } else {
        let name = header.strip_prefix('[')?.strip_suffix(']')?;
        (name.to_string(), name.split('.').try_fold(doc, |t, k| t.get(k)?.as_table())?)
    };
    let rendered = |v: &toml::Value| match v {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(i) => format!("integer `{i}`"),
        toml::Value::Float(f) => format!("floating point `{f}`"),
        toml::Value::Boolean(b) => format!("boolean `{b}`"),
        toml::Value::Array(_) => "sequence".into(),
        toml::Value::Table(_) => "map".into(),
        toml::Value::Datetime(d) => format!("string {:?}", d.to_string()),
    };
    let mut keys = section.iter().filter(|(_, v)| rendered(v) == unexpected).map(|(k, _)| k.clone());
    let key = keys.next()?;
    // Two keys with the same value: do not guess.
    if keys.next().is_some() {
        return None;
    }
    let kind = section.get("type").and_then(toml::Value::as_str).unwrap_or(path.as_str());
    Some(match limits::hint(kind, &key).filter(|_| out_of_range) {
        Some(hint) => format!("the value of `{path}.{key}`: {hint}"),
        None => format!("the value of `{path}.{key}`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "OUT" => Some("/data/out".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn the_buckets_a_job_names_are_its_default_bucket_allow_list() {
        let doc: toml::Table = toml::from_str(
            "[source]\nuri = \"s3://photos/2026/\"\n[sink]\ntable = \"gs://lake/t\"\n[checkpoint]\nlocation = \"s3://photos/ck\"\nx = [\"az://box/a\", \"./local\", \"abfss://logs@acct.dfs.core.windows.net/p\", \"https://cdn.example.com/a\"]",
        )
        .unwrap();
        let mut named = named_buckets(&doc);
        named.sort();
        assert_eq!(named, ["box", "lake", "logs@acct", "photos"]);
    }

    #[test]
    fn interpolation_with_defaults_and_escapes() {
        assert_eq!(interpolate("a ${OUT} b", env).unwrap(), "a /data/out b");
        assert_eq!(interpolate("${MISSING:-1000}", env).unwrap(), "1000");
        assert_eq!(interpolate("${EMPTY:-x}", env).unwrap(), "x");
        assert_eq!(interpolate("cost $$5 and $x", env).unwrap(), "cost $5 and $x");
        assert_eq!(interpolate("${MISSING:-${OUT:-x}/c.db}", env).unwrap(), "/data/out/c.db");
        assert_eq!(interpolate("${MISSING:-${NONE:-./o}/c.db}", env).unwrap(), "./o/c.db");
        let e = interpolate("a = 1\nb = \"${NOPE}\"", env).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("NOPE") && e.contains("${NOPE:-default}"), "{e}");
        assert!(interpolate("${BAD NAME}", env).is_err());
    }

    const JOB: &str = r#"
[pipeline]
name = "t"
parallelism = 2
[checkpoint]
interval = "250ms"
location = "${OUT}/ckpt"
[source]
type = "generate"
rows = ${ROWS:-10}
[[stages]]
type = "fault"
dead_letter_every = 3
edge = "forward"
[sink]
type = "jsonl"
path = "${OUT}"
"#;

    #[test]
    fn parses_a_job_with_overrides() {
        let job = JobFile::parse_with_env(JOB, &["pipeline.parallelism=3".into(), "source.rows=99".into()], env).unwrap();
        assert_eq!(job.pipeline.parallelism, Some(3));
        assert_eq!(job.checkpoint.interval, Some(Duration::from_millis(250)));
        assert_eq!(job.checkpoint.location.as_deref(), Some("/data/out/ckpt"));
        assert!(matches!(job.source, SourceConfig::Generate { rows: 99, .. }));
        assert_eq!(job.sink.path(), "/data/out");
        // A number picks a list entry, counted from 1.
        let job = JobFile::parse_with_env(JOB, &["stages.1.dead_letter_every=5".into()], env).unwrap();
        assert!(format!("{:?}", job.stages[0]).contains("dead_letter_every: Some(5)"), "{:?}", job.stages[0]);
        for (bad, says) in [
            ("stages.0.dead_letter_every=5", "a list of 1; pick an entry with a number from 1 to 1"),
            ("stages.x.dead_letter_every=5", "a list of 1"),
            ("pipeline.name.x=5", "`name` is not a section"),
        ] {
            let e = JobFile::parse_with_env(JOB, &[bad.into()], env).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named_with_their_line() {
        let e = JobFile::parse_with_env(&JOB.replace("dead_letter_every", "dead_leter_every"), &[], env).unwrap_err().to_string();
        assert!(e.contains("dead_leter_every") && e.contains("line"), "{e}");
        let e = JobFile::parse_with_env(&JOB.replace("250ms", "soon"), &[], env).unwrap_err().to_string();
        assert!(e.contains("soon") && e.contains("duration"), "{e}");
        let e = JobFile::parse_with_env(&JOB.replace("type = \"jsonl\"", "type = \"csv\""), &[], env).unwrap_err().to_string();
        assert!(e.contains("csv") && e.contains("jsonl"), "{e}");
        // A wrong type inside a `type = "…"` section names the key, not only the section.
        let e = JobFile::parse_with_env(&JOB.replace("${ROWS:-10}", "\"ten\""), &[], env).unwrap_err().to_string();
        assert!(e.contains("line 8") && e.contains("the value of `source.rows`"), "{e}");
        let e = JobFile::parse_with_env(&JOB.replace("dead_letter_every = 3", "dead_letter_every = true"), &[], env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the value of `stages.1.dead_letter_every`"), "{e}");
        // Out of its type's range: the key and the allowed range.
        let e = JobFile::parse_with_env(&JOB.replace("rows = ${ROWS:-10}", "rows = -3"), &[], env).unwrap_err().to_string();
        assert!(e.contains("the value of `source.rows`"), "{e}");
    }

    /// The reference in docs/job-files.md parses and builds, and so does each commented-out
    /// alternative `[source]` and `[sink]` put in place of the active one.
    #[test]
    fn the_reference_job_file_is_valid() {
        let doc = include_str!("../../docs/job-files.md");
        let reference = doc.split("```toml\n").nth(1).unwrap().split("\n```").next().unwrap();
        let out = std::env::temp_dir().join(format!("alluvium-reference-{}", std::process::id()));
        let env = |k: &str| match k {
            "ALLUVIUM_OUTPUT" => Some(out.display().to_string()),
            "ICEBERG_TOKEN" => Some("t".into()),
            _ => None,
        };
        let build = |text: &str| {
            let job = JobFile::parse_with_env(text, &[], env).unwrap_or_else(|e| panic!("{e}\n{text}"));
            job.build().unwrap_or_else(|e| panic!("{e}\n{text}"));
        };
        build(reference);
        let blocks: Vec<&str> = reference.split("\n\n").collect();
        let mut alternatives = 0;
        for section in ["[source]", "[sink]"] {
            let active = blocks.iter().find(|b| b.starts_with(section)).unwrap();
            for alt in blocks.iter().filter(|b| b.starts_with(&format!("# {section}"))) {
                let uncommented: Vec<&str> = alt.lines().map(|l| l.strip_prefix("# ").unwrap_or(l)).collect();
                build(&reference.replace(active, &uncommented.join("\n")));
                alternatives += 1;
            }
        }
        assert_eq!(alternatives, 7, "manifest, delta, iceberg, generate; delta, iceberg, lance sinks");
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    fn as_of_and_tags_need_s3() {
        let job = JOB.replace(
            "type = \"generate\"\nrows = ${ROWS:-10}",
            "type = \"objects\"\nuri = \"gs://b/p/\"\nas_of = \"2026-11-01\"",
        );
        let e = JobFile::parse_with_env(&job, &[], env).unwrap().build().unwrap_err().to_string();
        assert!(e.contains("`as_of`") && e.contains("gs://b/p/") && e.contains("remove `as_of`"), "{e}");
        let tags = job.replace("as_of = \"2026-11-01\"", "tags = [\"team\"]");
        let e = JobFile::parse_with_env(&tags, &[], env).unwrap().build().unwrap_err().to_string();
        assert!(e.contains("`tags`") && e.contains("S3"), "{e}");
        let e = JobFile::parse_with_env(&job.replace("2026-11-01", "last week"), &[], env).unwrap().build().unwrap_err();
        assert!(e.to_string().contains("source.as_of"), "{e}");
    }

    #[test]
    fn in_flight_settings_are_for_async_stages_only() {
        let job =
            JobFile::parse_with_env(&JOB.replace("edge = \"forward\"", "edge = \"forward\"\nbatches_in_flight = 8"), &[], env)
                .unwrap();
        let e = job.build().unwrap_err().to_string();
        assert!(e.contains("batches_in_flight") && e.contains("`fault`") && e.contains("[[stages]] entry 1"), "{e}");
    }

    /// A job with every value from this test's temporary directory, and `vars` for the rest.
    fn job_in(dir: &std::path::Path, vars: &[(&str, &str)], text: &str) -> Result<JobFile> {
        let out = dir.display().to_string();
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env =
            |k: &str| if k == "OUT" { Some(out.clone()) } else { vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()) };
        JobFile::parse_with_env(text, &[], env)
    }

    #[test]
    fn values_from_the_environment_cannot_add_keys() {
        let dir = tempfile::tempdir().unwrap();
        let evil = "x\"\nchannel_bytes = 0\n#";
        let job = job_in(
            dir.path(),
            &[("JOBNAME", evil), ("N", "3"), ("OK", "true")],
            &JOB.replace("name = \"t\"", "name = \"${JOBNAME}\"").replace("parallelism = 2", "parallelism = ${N}"),
        )
        .unwrap();
        assert_eq!(job.pipeline.name, evil, "the whole value, as one string");
        assert_eq!(job.pipeline.channel_bytes, None, "no key added");
        assert_eq!(job.pipeline.parallelism, Some(3), "an unquoted ${{N}} takes a number's place");
        let e = job.build().unwrap_err().to_string();
        assert!(e.contains("pipeline name `${JOBNAME}` is not valid") && !e.contains("channel_bytes = 0"), "{e}");
        // Unquoted, a value must be one number or boolean: nothing that could be more TOML.
        for (value, ok) in
            [("1\nchannel_bytes = 0", false), ("[1, 2]", false), ("{ a = 1 }", false), ("2 # c", false), ("8", true)]
        {
            let parsed = job_in(dir.path(), &[("N", value)], &JOB.replace("parallelism = 2", "parallelism = ${N}"));
            match parsed {
                Ok(job) => {
                    assert!(ok && job.pipeline.parallelism == Some(8) && job.pipeline.channel_bytes.is_none(), "{value:?}")
                }
                Err(e) => {
                    let e = e.to_string();
                    assert!(!ok, "{value:?}: {e}");
                    assert!(e.contains("`pipeline.parallelism` = ${N}") && e.contains("not a number or true/false"), "{e}");
                    assert!(!e.contains(value), "{e}");
                }
            }
        }
        // `${…}` outside quotes works as a whole value only.
        let e = job_in(dir.path(), &[("N", "3")], &JOB.replace("parallelism = 2", "${N} = 2")).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("`${N}`") && e.contains("values only"), "{e}");
        let e =
            job_in(dir.path(), &[("N", "3")], &JOB.replace("parallelism = 2", "parallelism = 1${N}")).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("${N}") && !e.contains('\u{E000}'), "{e}");
        // Comments are not interpolated: an unset variable there is no error.
        job_in(dir.path(), &[], &JOB.replace("parallelism = 2", "parallelism = 2 # ${NOT_SET}")).unwrap();
        let e = job_in(dir.path(), &[], &JOB.replace("name = \"t\"", "name = \"${NOT_SET}\"")).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("`pipeline.name`") && e.contains("`NOT_SET` is not set"), "{e}");
    }

    #[test]
    fn values_from_the_environment_never_reach_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "hunter2\"-s3cr3t-\\value";
        let vars = [("LABEL", secret)];
        // A broken file: parsed before any value is substituted, so the excerpt shows `${LABEL}`.
        let e = job_in(dir.path(), &vars, &JOB.replace("name = \"t\"", "name = \"${LABEL}\" oops")).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("name = \"${LABEL}\" oops") && !e.contains("hunter2"), "{e}");
        // A value of the wrong type: serde's message quotes it.
        let e = job_in(dir.path(), &vars, &JOB.replace("${ROWS:-10}", "\"${LABEL}\"")).unwrap_err().to_string();
        assert!(e.contains("the value of `source.rows`") && e.contains("${LABEL}") && !e.contains("hunter2"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = job_in(dir.path(), &vars, &JOB.replace("250ms", "${LABEL}")).unwrap_err().to_string();
        assert!(e.contains("not a duration") && !e.contains("s3cr3t"), "{e}");
        // Building: a time, a path, a name.
        let e = job_in(dir.path(), &vars, &JOB.replace("name = \"t\"", "name = \"a-${LABEL}\"")).unwrap().build().unwrap_err();
        assert!(e.to_string().contains("`a-${LABEL}`") && !e.to_string().contains("s3cr3t"), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        // After --set overrides too.
        let env = |k: &str| (k == "LABEL").then(|| secret.to_string()).or_else(|| (k == "OUT").then(|| "/o".into()));
        let e = JobFile::parse_with_env(&JOB.replace("${ROWS:-10}", "\"${LABEL}\""), &["pipeline.parallelism=1".into()], env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("after --set overrides") && e.contains("${LABEL}") && !e.contains("s3cr3t"), "{e}");
        // Debug output of a job does not list what was hidden (here `${OUT}` and `${OUT}/ckpt`).
        let job = job_in(dir.path(), &vars, JOB).unwrap();
        assert!(format!("{job:?}").contains("Interpolated(2 values)"), "{job:?}");
    }

    #[test]
    fn sizes_and_counts_are_bounded_and_zeros_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = JOB.to_string();
        let fails = |from: &str, to: &str, says: &str| {
            let job = job_in(dir.path(), &[], &text.replace(from, to)).unwrap_or_else(|e| panic!("{to}: {e}"));
            let e = job.build().unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config, "{to}: {e}");
            assert!(e.to_string().contains(says), "{to}: {e}");
        };
        fails("parallelism = 2", "parallelism = 0", "`pipeline.parallelism` = `0` is out of range; give 1 to 1024");
        fails("parallelism = 2", "parallelism = 100000", "`pipeline.parallelism` = `100000` is out of range; give 1 to 1024");
        fails("parallelism = 2", "parallelism = 2\nchannel_bytes = 0", "`pipeline.channel_bytes` = `0` is out of range");
        fails("250ms", "0s", "`checkpoint.interval` is 0");
        fails("rows = ${ROWS:-10}", "rows = 10\nbatch_size = 0", "`source.batch_size` = `0` is out of range; give 1 to 1048576");
        fails(
            "rows = ${ROWS:-10}",
            "rows = 10\npayload_bytes = 1000000000000",
            "`source.payload_bytes` = `1000000000000` is out of range; give 0 to 67108864 (64 MiB)",
        );
        fails(
            "rows = ${ROWS:-10}",
            "rows = 10\npayload_bytes = 67108864",
            "`source.batch_size` × `source.payload_bytes` is 512 GiB",
        );
        fails("rows = ${ROWS:-10}", "rows = 10\nsplit_rows = 0", "`source.split_rows` = `0` is out of range; give 1 or more");
        fails("rows = ${ROWS:-10}", "rows = 10\nparallelism = 5000", "`source.parallelism` = `5000`");
        fails("dead_letter_every = 3", "dead_letter_every = 0", "`stages.1.dead_letter_every` = `0`");
        fails("edge = \"forward\"", "parallelism = 2000", "`stages.1.parallelism` = `2000` is out of range; give 1 to 1024");
        fails("type = \"jsonl\"", "type = \"jsonl\"\nparallelism = 0", "`sink.parallelism` = `0`");
        // Within the ranges, it builds.
        job_in(dir.path(), &[], &text.replace("parallelism = 2", "parallelism = 1024")).unwrap().build().unwrap();
    }

    #[cfg(all(feature = "object", feature = "formats", feature = "parquet"))]
    #[test]
    fn stage_and_sink_settings_are_bounded_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = JOB.replace(
            "[[stages]]\ntype = \"fault\"\ndead_letter_every = 3\nedge = \"forward\"\n[sink]\ntype = \"jsonl\"\npath = \"${OUT}\"",
            "[[stages]]\ntype = \"fault\"\n[[stages]]\ntype = \"fetch\"\ncolumn = \"payload\"\n[[stages]]\ntype = \"encode_image\"\nquality = 85\n\
             [sink]\ntype = \"parquet\"\npath = \"${OUT}/data\"",
        );
        assert!(text.contains("fetch") && text.contains("parquet"), "{text}");
        let err = |from: &str, to: &str| {
            let parsed = job_in(dir.path(), &[], &text.replace(from, to));
            parsed.and_then(|j| j.build().map(|_| ())).unwrap_err().to_string()
        };
        let e = err("column = \"payload\"", "max_object_bytes = 0");
        assert!(e.contains("`stages.2.max_object_bytes` = `0` is out of range; give 1 to 1073741824 (1 GiB)"), "{e}");
        let e = err("column = \"payload\"", "memory_budget = 0");
        assert!(e.contains("`stages.2.memory_budget` = `0`"), "{e}");
        // Quality: 0 is a u8 but out of range; 300 is not even a u8. Both name the key and the range.
        let e = err("quality = 85", "quality = 0");
        assert!(e.contains("`stages.3.quality` = `0` is out of range; give 1 to 100"), "{e}");
        let e = err("quality = 85", "quality = 300");
        assert!(e.contains("`stages.3.quality` = `300` is out of range; give 1 to 100"), "{e}");
        let e = err("path = \"${OUT}/data\"", "path = \"${OUT}/data\"\nrow_group_bytes = 0");
        assert!(e.contains("`sink.row_group_bytes` = `0`"), "{e}");
        // A sink path that is an existing file (or under one): refused before anything runs,
        // naming the key. The path came from the environment: shown as written.
        std::fs::write(dir.path().join("data"), b"a file").unwrap();
        let e = err("quality = 85", "quality = 85");
        assert!(e.contains("`sink.path` = `${OUT}/data` is an existing file, not a directory"), "{e}");
        let e = err("path = \"${OUT}/data\"", "path = \"${OUT}/data/below\"");
        assert!(e.contains("`sink.path`") && e.contains("an existing file"), "{e}");
        let e = err("path = \"${OUT}/data\"", "path = \"${OUT}/out\"\n[dead_letters]\ntype = \"jsonl\"\npath = \"${OUT}/data\"");
        assert!(e.contains("`dead_letters.path`") && e.contains("an existing file"), "{e}");
        job_in(dir.path(), &[], &text.replace("${OUT}/data", "${OUT}/out")).unwrap().build().unwrap();
    }

    #[test]
    fn every_stage_type_parses_and_builds() {
        let dir = std::env::temp_dir().join(format!("alluvium-job-{}", std::process::id()));
        let env = |k: &str| (k == "OUT").then(|| dir.display().to_string());
        let job = r#"
[pipeline]
name = "media"
[checkpoint]
location = "${OUT}/ckpt"
[io]
max_concurrency = 8
s3 = { region = "eu-west-1" }
[io.access]
file_roots = ["/data"]
http_allow_hosts = ["*.example.com"]
[source]
type = "objects"
uri = "s3://bucket/photos/"
extensions = ["jpg"]
inventory = "s3://inventories/bucket/daily/"
as_of = "2026-11-01"
metadata = ["owner"]
tags = ["license"]
[[stages]]
type = "probe"
[[stages]]
type = "hash"
name = "hash-original"
[[stages]]
type = "fetch"
max_object_bytes = 1000000
batches_in_flight = 8
ordered = false
[[stages]]
type = "decode_image"
target = [64, 64]
[[stages]]
type = "resize"
width = 64
height = 64
fit = "fit"
[[stages]]
type = "encode_image"
format = "webp"
[sink]
type = "jsonl"
path = "${OUT}/out"
"#;
        let p = JobFile::parse_with_env(job, &[], env).unwrap().build().unwrap();
        assert_eq!(p.topology(), "objects[1] -> probe[1] -> hash-original[1] -> fetch[1] -> decode_image[1] -> resize[1] -> encode_image[1] -> jsonl[1]");
        let e = JobFile::parse_with_env(&job.replace("fit = \"fit\"", "fit = \"stretch\""), &[], env).unwrap_err().to_string();
        assert!(e.contains("stretch") && e.contains("fill"), "{e}");
        let e =
            JobFile::parse_with_env(&job.replace("width = 64", "width = 0"), &[], env).unwrap().build().unwrap_err().to_string();
        assert!(e.contains("`stages.5.width` = `0` is out of range; give 1 to 16384"), "{e}");
        let e =
            JobFile::parse_with_env(&job.replace("region = ", "regoin = "), &[], env).unwrap().build().unwrap_err().to_string();
        assert!(e.contains("[io.s3]") && e.contains("`regoin`"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(feature = "video")]
    #[cfg(feature = "models")]
    #[test]
    fn model_stages_parse_build_and_name_bad_settings() {
        // The model is installed by models/install.sh all-MiniLM-L6-v2 (CI runs it); a missing one is a
        // config error that says how to install it, checked below with a path that has none.
        let stages = r#"[[stages]]
type = "chunk_text"
column = "payload"
max_tokens = 64
overlap = 8
[[stages]]
type = "embed"
batch_rows = 16
max_wait = "20ms"
workers = 1
max_workers = 3
timeout = "30s"
[sink]"#;
        let job = JOB.replace("[[stages]]\ntype = \"fault\"\ndead_letter_every = 3\nedge = \"forward\"\n[sink]", stages);
        let p = JobFile::parse_with_env(&job, &[], env).unwrap().build().unwrap();
        assert_eq!(p.topology(), "generate[2] -> chunk_text[2] -> embed[2] -> jsonl[2]");
        let bad = |from: &str, to: &str| {
            let parsed = JobFile::parse_with_env(&job.replace(from, to), &[], env);
            parsed.and_then(|j| j.build().map(|_| ())).unwrap_err().to_string()
        };
        let e = bad("overlap = 8", "overlap = 64");
        assert!(e.contains("`overlap` (64) must be less than `max_tokens` (64)"), "{e}");
        let e = bad("workers = 1", "workers = 4");
        assert!(e.contains("`max_workers`"), "{e}");
        let e = bad("batch_rows = 16", "batch_rows = 16\nmodel = \"/nowhere/minilm\"");
        assert!(e.contains("embed") && e.contains("/nowhere/minilm") && e.contains("model.safetensors"), "{e}");
        let e = bad("batch_rows = 16", "batch_rows = 16\nbatch = 3");
        assert!(e.contains("batch"), "{e}");
        // A remote endpoint: no model files needed; its keys are checked and named.
        let remote =
            "batch_rows = 16\nurl = \"http://127.0.0.1:9\"\nmodel = \"m\"\nprotocol = \"kserve\"\nrequests_per_minute = 600";
        let j = JobFile::parse_with_env(&job.replace("batch_rows = 16", remote), &[], env).unwrap();
        assert_eq!(j.build().unwrap().topology(), "generate[2] -> chunk_text[2] -> embed[2] -> jsonl[2]");
        let e = bad("batch_rows = 16", "batch_rows = 16\napi_key_env = \"KEY\"");
        assert!(e.contains("`api_key_env` is for remote endpoints; set `url`"), "{e}");
        let e = bad("batch_rows = 16", &format!("{remote}\ngpus = 1"));
        assert!(e.contains("`gpus` is for local models"), "{e}");
        let e = bad("batch_rows = 16", &format!("{remote}\nmodality = \"text\""));
        assert!(e.contains("`modality` is for local models"), "{e}");
        let e = bad("batch_rows = 16", "batch_rows = 16\nmodality = \"sound\"");
        assert!(e.contains("key `modality` is `sound`; write `image` or `text`"), "{e}");
        let e = bad("batch_rows = 16", "batch_rows = 16\nmodality = \"image\"");
        assert!(e.contains("is a text model; images need a CLIP model"), "{e}");
        let e = bad("batch_rows = 16", &remote.replace("kserve", "grpc"));
        assert!(e.contains("`protocol`") && e.contains("grpc"), "{e}");
        let e = bad("batch_rows = 16", &format!("{remote}\napi_key_env = \"ALLUVIUM_TEST_JOB_UNSET_KEY\""));
        assert!(e.contains("`ALLUVIUM_TEST_JOB_UNSET_KEY` (for header `authorization`) is not set"), "{e}");
        let e = bad("batch_rows = 16", &remote.replace("http://", "tcp://"));
        assert!(e.contains("not an http:// or https:// URL"), "{e}");
        // How long to wait for an endpoint that is down.
        let waits =
            JobFile::parse_with_env(&job.replace("batch_rows = 16", &format!("{remote}\noutage_timeout = \"3s\"")), &[], env)
                .unwrap();
        assert!(format!("{:?}", waits.stages[1]).contains("outage_timeout: Some(3s)"), "{:?}", waits.stages[1]);
        waits.build().unwrap();
        let e = bad("batch_rows = 16", &format!("{remote}\noutage_timeout = \"0s\""));
        assert!(e.contains("`outage_timeout` is 0"), "{e}");
    }

    #[test]
    fn media_stages_parse_build_and_name_bad_settings() {
        let stages = r#"[[stages]]
type = "probe_video"
[[stages]]
type = "extract_frames"
keyframes = true
fit = [640, 360]
[[stages]]
type = "probe_audio"
column = "source"
[[stages]]
type = "audio_windows"
column = "source"
sample_rate = 8000
channels = 2
window_ms = 5000
hop_ms = 2500
last = "short"
encoding = "wav"
output = "clip"
[[stages]]
type = "to_tensor"
width = 224
height = 224
gpus = 0.5
gpu_memory = 1073741824
[sink]"#;
        let job = JOB.replace("[[stages]]\ntype = \"fault\"\ndead_letter_every = 3\nedge = \"forward\"\n[sink]", stages);
        let p = JobFile::parse_with_env(&job, &[], env).unwrap().build().unwrap();
        assert_eq!(
            p.topology(),
            "generate[2] -> probe_video[2] -> extract_frames[2] -> probe_audio[2] -> audio_windows[2] -> to_tensor[2] -> jsonl[2]"
        );
        let bad = |from: &str, to: &str| {
            let parsed = JobFile::parse_with_env(&job.replace(from, to), &[], env);
            parsed.and_then(|j| j.build().map(|_| ())).unwrap_err().to_string()
        };
        let e = bad("encoding = \"wav\"", "encoding = \"tensor\"");
        assert!(e.contains("audio_windows") && e.contains("`last = \"short\"`") && e.contains("\"pad\""), "{e}");
        let e = bad("channels = 2", "channels = 0");
        assert!(e.contains("`stages.4.channels` = `0` is out of range; give 1 to 8"), "{e}");
        let e =
            bad("sample_rate = 8000\nchannels = 2\nwindow_ms = 5000", "sample_rate = 96000\nchannels = 2\nwindow_ms = 3600000");
        assert!(e.contains("`stages.4.window_ms`") && e.contains("over 1 GiB"), "{e}");
        let e = bad("keyframes = true", "keyframes = true\nthreads = 0");
        assert!(e.contains("`stages.2.threads` = `0` is out of range; give 1 to 64"), "{e}");
        let e = bad("encoding = \"wav\"", "encoding = \"mp3\"");
        assert!(e.contains("mp3") && e.contains("wav"), "{e}");
        let e = bad("gpus = 0.5", "gpus = 1.5");
        assert!(e.contains("to_tensor") && e.contains("`gpus = 1.5`") && e.contains("whole number"), "{e}");
        let e = bad("keyframes = true", "keyframes = true\nfps = 2");
        assert!(e.contains("`fps`, `keyframes`") && e.contains("keep one of them"), "{e}");
    }
}
