//! The `[sink]` / `[dead_letters]` section of a job file for `type = "parquet"`, validated
//! without IO.
//!
//! ```toml
//! [sink]
//! type = "parquet"
//! path = "${ALLUVIUM_OUTPUT:-./out}"   # a directory or URL (s3://bucket/prefix)
//! compression = "zstd"                 # zstd (default), zstd(5), snappy, uncompressed
//! target_file_bytes = 134217728         # roll to a new file after this many bytes (128 MiB)
//! row_group_bytes = 67108864            # flush a row group at this many encoded bytes (64 MiB)
//! ```

use serde::Deserialize;

use crate::sink::{ParquetFormat, ParquetSink};
use alluvium_core::{Error, Result};

/// Settings of a Parquet sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// The directory or URL to write into.
    pub path: String,
    /// Compression codec (default `zstd`).
    #[serde(default)]
    pub compression: Option<String>,
    /// Roll to a new file after this many bytes (default 128 MiB).
    #[serde(default)]
    pub target_file_bytes: Option<u64>,
    /// Flush a row group at this many encoded bytes (default 64 MiB).
    #[serde(default)]
    pub row_group_bytes: Option<u64>,
}

impl ParquetSinkConfig {
    /// Builds the sink (no IO happens until the first write).
    pub fn build(&self) -> Result<ParquetSink> {
        if self.path.trim().is_empty() {
            return Err(Error::config("parquet sink: `path` is empty; set it to a directory or an s3:// URL"));
        }
        let mut format = ParquetFormat::default();
        if let Some(c) = &self.compression {
            format = format.compression(c).map_err(|e| e.context("key `compression`"))?;
        }
        if let Some(b) = self.row_group_bytes {
            format = format.row_group_bytes(b as usize);
        }
        let mut sink = format.sink(self.path.clone());
        if let Some(b) = self.target_file_bytes {
            sink = sink.target_file_bytes(b);
        }
        Ok(sink)
    }
}
