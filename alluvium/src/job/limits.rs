//! The checks of a job file that `alluvium run` and `alluvium validate` share before anything
//! runs ([`JobFile::build`] makes them first): every size and count within a range (an error names
//! the key, dotted as `--set` takes it, and the range), and every local output directory not an
//! existing file.
//!
//! The ranges keep a typo or a wrong unit from taking the machine down: `payload_bytes = 1e12`
//! would allocate terabytes, `parallelism = 100000` would write hundreds of thousands of files and
//! checkpoints for a thousand rows.

use std::path::Path;

use alluvium_core::{Error, Result};

use super::{JobFile, SinkConfig, SourceConfig, StageCommon, StageConfig};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Lanes of a stage at most: each is a region with its own files and checkpoints.
pub const MAX_PARALLELISM: u64 = 1024;
/// Rows per batch of a source at most.
pub const MAX_BATCH_ROWS: u64 = 1 << 20;
/// Bytes of one generated batch's payloads at most (`batch_size` × `payload_bytes`).
pub const MAX_GENERATED_BATCH_BYTES: u64 = GIB;
/// Pixels of one image or video frame at most (3 bytes each, decoded).
pub const MAX_PIXELS: u64 = 1_000_000_000;
/// Pixels on one side of a resized image or frame at most.
pub const MAX_SIDE: u64 = 16_384;
/// Bytes of one audio window at most (Float32 samples).
#[cfg_attr(not(feature = "video"), allow(dead_code))]
pub const MAX_WINDOW_BYTES: u64 = GIB;

/// The allowed range of `key` in a section of `kind`: `pipeline`, or the `type` of a source,
/// stage or sink. `None`: the key has no range (or is not a number).
pub(crate) fn range(kind: &str, key: &str) -> Option<(u64, u64)> {
    Some(match (kind, key) {
        (_, "parallelism") => (1, MAX_PARALLELISM),
        ("pipeline", "channel_bytes") => (1, 4 * GIB),
        ("pipeline", "max_restarts") => (0, 1000),
        (_, "batches_in_flight") => (1, 1024),
        (_, "batch_size") => (1, MAX_BATCH_ROWS),
        ("generate", "payload_bytes") => (0, 64 * MIB),
        ("generate", "split_rows") => (1, u64::MAX),
        ("objects", "split_objects") => (1, 1_000_000),
        ("manifest", "split_bytes") => (1, 4 * GIB),
        ("fault", "dead_letter_every") => (1, u64::MAX),
        ("fetch", "max_object_bytes") => (1, GIB),
        // The fetch stage counts its budget in a semaphore of u32 permits.
        ("fetch", "memory_budget") => (1, u64::from(u32::MAX)),
        ("fetch", "concurrency") => (1, 1024),
        ("decode_image" | "extract_frames", "max_pixels") => (1, MAX_PIXELS),
        ("decode_image", "target") | ("resize", "width" | "height") | ("extract_frames", "short_side" | "fit") => (1, MAX_SIDE),
        ("encode_image" | "extract_frames", "quality") => (1, 100),
        ("extract_frames", "frames_per_batch") => (1, 65_536),
        ("extract_frames", "threads") => (1, 64),
        ("extract_frames", "every_nth") => (1, u64::MAX),
        // alluvium_formats::audio::{MIN_SAMPLE_RATE, MAX_SAMPLE_RATE}.
        ("audio_windows", "sample_rate") => (1_000, 768_000),
        ("audio_windows", "channels") => (1, 8),
        ("audio_windows", "window_ms") => (1, 3_600_000),
        ("audio_windows", "hop_ms") => (1, 86_400_000),
        ("audio_windows", "batch_bytes") => (1, GIB),
        ("extract_frames" | "audio_windows" | "chunk_text", "max_outputs_per_input") => (1, 1 << 32),
        ("extract_frames" | "audio_windows" | "chunk_text", "max_output_bytes_per_input") => (1, TIB),
        // One Arrow Binary array holds at most 2 GiB − 1.
        ("decode_image" | "resize", "max_batch_bytes") => (1, 2 * GIB - 1),
        ("to_tensor", "width" | "height") => (1, 8192),
        ("to_tensor", "gpu_memory") => (0, TIB),
        ("chunk_text", "max_tokens") => (1, 65_536),
        ("chunk_text", "overlap") => (0, 65_535),
        ("embed", "batch_rows") => (1, 65_536),
        ("embed", "workers" | "max_workers") => (1, 256),
        ("embed", "requests_per_minute" | "tokens_per_minute") => (1, u64::from(u32::MAX)),
        ("parquet" | "delta" | "iceberg", "target_file_bytes") => (1, 64 * GIB),
        ("parquet" | "delta" | "iceberg", "row_group_bytes") => (1, GIB),
        ("lance", "max_rows_per_file") => (1, 1 << 30),
        _ => return None,
    })
}

/// "give 1 to 1024": the allowed values of `key` (`None` when it has no range).
pub(crate) fn hint(kind: &str, key: &str) -> Option<String> {
    range(kind, key).map(|(min, max)| format!("give {}", allowed(key, min, max)))
}

fn allowed(key: &str, min: u64, max: u64) -> String {
    if max == u64::MAX {
        format!("{min} or more")
    } else if key.ends_with("_bytes") || key == "memory_budget" || key == "gpu_memory" {
        format!("{min} to {max} ({})", human(max))
    } else {
        format!("{min} to {max}")
    }
}

/// `n` bytes in KiB, MiB, GiB or TiB.
fn human(n: u64) -> String {
    for (unit, size) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if n >= size {
            return if n.is_multiple_of(size) {
                format!("{} {unit}", n / size)
            } else {
                format!("about {} {unit}", (n + size / 2) / size)
            };
        }
    }
    format!("{n} bytes")
}

/// A number a job file holds.
trait Number: Copy {
    fn wide(self) -> u64;
}

macro_rules! number {
    ($($t:ty),*) => {
        $(impl Number for $t {
            fn wide(self) -> u64 {
                self as u64
            }
        })*
    };
}
number!(u8, u16, u32, u64, usize);

/// A section of the file: what `range` knows it as, and its dotted name (`stages.3`).
struct Section<'a> {
    kind: &'a str,
    name: &'a str,
}

impl Section<'_> {
    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }

    /// `key`, if set, within its range.
    fn check(&self, key: &str, value: Option<impl Number>) -> Result<()> {
        self.check_as(key, key, value)
    }

    /// As [`Section::check`], for the key `shown` (an entry of `key`: `target.1`).
    fn check_as(&self, key: &str, shown: &str, value: Option<impl Number>) -> Result<()> {
        let (Some(v), Some((min, max))) = (value.map(Number::wide), range(self.kind, key)) else { return Ok(()) };
        if v < min || v > max {
            return Err(Error::config(format!("`{}` = `{v}` is out of range; give {}", self.key(shown), allowed(key, min, max))));
        }
        Ok(())
    }

    /// The settings every stage has.
    fn common(&self, common: &StageCommon) -> Result<()> {
        self.check("parallelism", common.parallelism)?;
        self.check("batches_in_flight", common.batches_in_flight)
    }
}

impl JobFile {
    /// The ranges of sizes and counts, and the local output directories: see the module docs.
    pub(super) fn check(&self) -> Result<()> {
        let p = &self.pipeline;
        let pipeline = Section { kind: "pipeline", name: "pipeline" };
        pipeline.check("parallelism", p.parallelism)?;
        pipeline.check("channel_bytes", p.channel_bytes)?;
        pipeline.check("max_restarts", p.max_restarts)?;
        if self.checkpoint.interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::config("`checkpoint.interval` is 0; give a positive duration such as \"10s\""));
        }
        self.check_source()?;
        for (i, stage) in self.stages.iter().enumerate() {
            check_stage(&format!("stages.{}", i + 1), stage)?;
        }
        check_sink("sink", &self.sink)?;
        if let Some(d) = &self.dead_letters {
            check_sink("dead_letters", d)?;
        }
        Ok(())
    }

    fn check_source(&self) -> Result<()> {
        let at = |kind: &'static str| Section { kind, name: "source" };
        match &self.source {
            SourceConfig::Generate { batch_size, payload_bytes, split_rows, rows_per_second, parallelism, .. } => {
                let s = at("generate");
                s.check("batch_size", *batch_size)?;
                s.check("payload_bytes", *payload_bytes)?;
                s.check("split_rows", *split_rows)?;
                s.check("parallelism", *parallelism)?;
                if let Some(r) = rows_per_second {
                    // Also false for NaN.
                    if r.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                        return Err(Error::config(format!(
                            "`source.rows_per_second` = `{r}` is not a positive number; give a rate such as 50000, or remove it"
                        )));
                    }
                }
                // Generate's defaults: 8192 rows of 32 bytes.
                let rows = batch_size.unwrap_or(8192) as u64;
                let bytes = rows.saturating_mul(payload_bytes.unwrap_or(32) as u64);
                if bytes > MAX_GENERATED_BATCH_BYTES {
                    return Err(Error::config(format!(
                        "`source.batch_size` × `source.payload_bytes` is {} of payload per batch, over {}; lower either \
                         (`batch_size` is 8192 unless set)",
                        human(bytes),
                        human(MAX_GENERATED_BATCH_BYTES)
                    )));
                }
                Ok(())
            }
            #[cfg(feature = "object")]
            SourceConfig::Objects { split_objects, batch_size, parallelism, .. } => {
                let s = at("objects");
                s.check("split_objects", *split_objects)?;
                s.check("batch_size", *batch_size)?;
                s.check("parallelism", *parallelism)
            }
            #[cfg(feature = "object")]
            SourceConfig::Manifest { split_bytes, batch_size, parallelism, .. } => {
                let s = at("manifest");
                s.check("split_bytes", *split_bytes)?;
                s.check("batch_size", *batch_size)?;
                s.check("parallelism", *parallelism)
            }
            #[cfg(feature = "lance")]
            SourceConfig::Lance(t) => check_table(&at("lance"), t),
            #[cfg(feature = "delta")]
            SourceConfig::Delta(t) => check_table(&at("delta"), t),
            #[cfg(feature = "iceberg")]
            SourceConfig::Iceberg(t) => check_table(&at("iceberg"), t),
        }
    }
}

#[cfg(any(feature = "delta", feature = "lance", feature = "iceberg"))]
fn check_table(s: &Section<'_>, t: &super::TableSourceConfig) -> Result<()> {
    s.check("batch_size", t.batch_size)?;
    s.check("parallelism", t.parallelism)
}

fn check_stage(name: &str, stage: &StageConfig) -> Result<()> {
    let at = |kind: &'static str| Section { kind, name };
    match stage {
        StageConfig::Fault { common, dead_letter_every, .. } => {
            let s = at("fault");
            s.common(common)?;
            s.check("dead_letter_every", *dead_letter_every)
        }
        #[cfg(feature = "object")]
        StageConfig::Fetch { common, max_object_bytes, memory_budget, concurrency, .. } => {
            let s = at("fetch");
            s.common(common)?;
            s.check("max_object_bytes", *max_object_bytes)?;
            s.check("memory_budget", *memory_budget)?;
            s.check("concurrency", *concurrency)
        }
        #[cfg(feature = "object")]
        StageConfig::Hash { common, .. } | StageConfig::Probe { common, .. } => at("").common(common),
        #[cfg(feature = "formats")]
        StageConfig::DecodeImage { common, max_pixels, target, max_batch_bytes, .. } => {
            let s = at("decode_image");
            s.common(common)?;
            s.check("max_pixels", *max_pixels)?;
            s.check("max_batch_bytes", *max_batch_bytes)?;
            if let Some([w, h]) = target {
                s.check_as("target", "target.1", Some(*w))?;
                s.check_as("target", "target.2", Some(*h))?;
            }
            Ok(())
        }
        #[cfg(feature = "formats")]
        StageConfig::Resize { common, width, height, max_batch_bytes, .. } => {
            let s = at("resize");
            s.common(common)?;
            s.check("max_batch_bytes", *max_batch_bytes)?;
            s.check("width", Some(*width))?;
            s.check("height", Some(*height))
        }
        #[cfg(feature = "video")]
        StageConfig::ProbeVideo { common, .. } | StageConfig::ProbeAudio { common, .. } => at("").common(common),
        #[cfg(feature = "video")]
        StageConfig::ExtractFrames { common, frames: f } => {
            let s = at("extract_frames");
            s.common(common)?;
            s.check("quality", f.quality)?;
            s.check("frames_per_batch", f.frames_per_batch)?;
            s.check("max_pixels", f.max_pixels)?;
            s.check("threads", f.threads)?;
            s.check("short_side", f.short_side)?;
            s.check("every_nth", f.every_nth)?;
            s.check("max_outputs_per_input", f.max_outputs_per_input)?;
            s.check("max_output_bytes_per_input", f.max_output_bytes_per_input)?;
            if let Some([w, h]) = f.fit {
                s.check_as("fit", "fit.1", Some(w))?;
                s.check_as("fit", "fit.2", Some(h))?;
            }
            Ok(())
        }
        #[cfg(feature = "video")]
        StageConfig::AudioWindows { common, windows: w } => {
            let s = at("audio_windows");
            s.common(common)?;
            s.check("sample_rate", w.sample_rate)?;
            s.check("channels", w.channels)?;
            s.check("window_ms", w.window_ms)?;
            s.check("hop_ms", w.hop_ms)?;
            s.check("batch_bytes", w.batch_bytes)?;
            s.check("max_outputs_per_input", w.max_outputs_per_input)?;
            s.check("max_output_bytes_per_input", w.max_output_bytes_per_input)?;
            // The stage's defaults: 10 s windows of 16 kHz mono, as Float32 (4 bytes) or 16-bit WAV.
            let (rate, channels, ms) = (
                u64::from(w.sample_rate.unwrap_or(16_000)),
                u64::from(w.channels.unwrap_or(1)),
                u64::from(w.window_ms.unwrap_or(10_000)),
            );
            let bytes = rate.saturating_mul(channels).saturating_mul(ms) / 1000 * 4;
            if bytes > MAX_WINDOW_BYTES {
                return Err(Error::config(format!(
                    "`{name}.window_ms`: windows of {ms} ms at {rate} Hz and {channels} channel(s) are {} each, over {}; \
                     shorten `window_ms`",
                    human(bytes),
                    human(MAX_WINDOW_BYTES)
                )));
            }
            Ok(())
        }
        #[cfg(feature = "gpu")]
        StageConfig::ToTensor { common, width, height, gpu_memory, .. } => {
            let s = at("to_tensor");
            s.common(common)?;
            s.check("width", Some(*width))?;
            s.check("height", Some(*height))?;
            s.check("gpu_memory", *gpu_memory)
        }
        #[cfg(feature = "models")]
        StageConfig::ChunkText { common, max_tokens, overlap, max_outputs_per_input, max_output_bytes_per_input, .. } => {
            let s = at("chunk_text");
            s.common(common)?;
            s.check("max_tokens", *max_tokens)?;
            s.check("overlap", *overlap)?;
            s.check("max_outputs_per_input", *max_outputs_per_input)?;
            s.check("max_output_bytes_per_input", *max_output_bytes_per_input)
        }
        #[cfg(feature = "models")]
        StageConfig::Embed { common, embed: e } => {
            let s = at("embed");
            s.common(common)?;
            s.check("batch_rows", e.batch_rows)?;
            s.check("workers", e.workers)?;
            s.check("max_workers", e.max_workers)?;
            s.check("requests_per_minute", e.requests_per_minute)?;
            s.check("tokens_per_minute", e.tokens_per_minute)
        }
        #[cfg(feature = "formats")]
        StageConfig::EncodeImage { common, quality, .. } => {
            let s = at("encode_image");
            s.common(common)?;
            s.check("quality", *quality)
        }
    }
}

fn check_sink(name: &str, sink: &SinkConfig) -> Result<()> {
    let at = |kind: &'static str| Section { kind, name };
    match sink {
        #[cfg(feature = "parquet")]
        SinkConfig::Parquet(c) => {
            let s = at("parquet");
            s.check("target_file_bytes", c.target_file_bytes)?;
            s.check("row_group_bytes", c.row_group_bytes)?;
            local_directory(&s.key("path"), &c.path)
        }
        #[cfg(feature = "delta")]
        SinkConfig::Delta(c) => {
            let s = at("delta");
            s.check("target_file_bytes", c.target_file_bytes)?;
            s.check("row_group_bytes", c.row_group_bytes)?;
            local_directory(&s.key("table"), &c.table)
        }
        #[cfg(feature = "iceberg")]
        SinkConfig::Iceberg(c) => {
            // `table` names a table in the catalog, not a location.
            let s = at("iceberg");
            s.check("target_file_bytes", c.target_file_bytes)?;
            s.check("row_group_bytes", c.row_group_bytes)
        }
        #[cfg(feature = "lance")]
        SinkConfig::Lance(c) => {
            let s = at("lance");
            s.check("max_rows_per_file", c.max_rows_per_file)?;
            local_directory(&s.key("table"), &c.table)
        }
        SinkConfig::Jsonl { path, parallelism } => {
            let s = at("jsonl");
            s.check("parallelism", *parallelism)?;
            local_directory(&s.key("path"), path)
        }
    }
}

/// A local output `location` (a path or `file://` URL; others are not checked) must be a
/// directory or not exist yet, and the nearest of its parents that exists must be a directory: a
/// sink cannot write into a file, and would find out only when it first commits.
fn local_directory(key: &str, location: &str) -> Result<()> {
    let Some(dir) = alluvium_core::store::Location::local_dir(location) else { return Ok(()) };
    let mut at: &Path = &dir;
    loop {
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => {
                let what = if at == dir.as_path() {
                    "is an existing file".to_string()
                } else {
                    format!("is under `{}`, an existing file", at.display())
                };
                return Err(Error::config(format!(
                    "`{key}` = `{location}` {what}, not a directory; give a directory (it is created if missing) or a URL"
                )));
            }
            Err(_) => match at.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                _ => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_well() {
        assert_eq!(hint("pipeline", "parallelism").unwrap(), "give 1 to 1024");
        assert_eq!(hint("fetch", "memory_budget").unwrap(), "give 1 to 4294967295 (about 4 GiB)");
        assert_eq!(hint("generate", "payload_bytes").unwrap(), "give 0 to 67108864 (64 MiB)");
        assert_eq!(hint("fault", "dead_letter_every").unwrap(), "give 1 or more");
        assert!(hint("generate", "seed").is_none());
    }

    #[test]
    fn a_local_output_must_not_be_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("taken");
        std::fs::write(&file, b"x").unwrap();
        let e = local_directory("sink.path", file.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("`sink.path`") && e.contains("is an existing file"), "{e}");
        let e = local_directory("sink.path", file.join("below").to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("an existing file"), "{e}");
        local_directory("sink.path", dir.path().join("new/dir").to_str().unwrap()).unwrap();
        local_directory("sink.path", dir.path().to_str().unwrap()).unwrap();
        local_directory("sink.path", "s3://bucket/prefix").unwrap();
        local_directory("sink.path", "relative/never/made").unwrap();
    }
}
