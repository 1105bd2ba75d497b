//! The Parquet [`FileFormat`] and [`ParquetSink`].
//!
//! Memory is bounded by bytes: a row group is flushed once its encoded size reaches
//! `row_group_bytes` (default 64 MiB), and the encoded bytes are streamed to storage as they are
//! produced (multipart uploads), so a file never sits whole in memory.

use alluvium_core::arrow::datatypes::SchemaRef;
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::files::{FileEncoder, FileFormat, FileSink};
use alluvium_core::{Error, Result};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Parquet, with a compression codec and a row-group size in bytes.
#[derive(Debug, Clone)]
pub struct ParquetFormat {
    compression: Compression,
    row_group_bytes: usize,
}

impl Default for ParquetFormat {
    fn default() -> Self {
        Self { compression: Compression::ZSTD(ZstdLevel::default()), row_group_bytes: 64 << 20 }
    }
}

impl ParquetFormat {
    /// Sets the codec: `zstd` (default), `zstd(3)`, `snappy`, `uncompressed`, … as Parquet names them.
    pub fn compression(mut self, codec: &str) -> Result<Self> {
        self.compression = codec.parse().map_err(|e| {
            Error::config(format!("unknown parquet compression `{codec}` ({e}); use zstd, snappy or uncompressed"))
        })?;
        Ok(self)
    }
    /// Flushes a row group once it reaches this many encoded bytes.
    pub fn row_group_bytes(mut self, bytes: usize) -> Self {
        self.row_group_bytes = bytes.max(1);
        self
    }
}

struct Encoder {
    writer: ArrowWriter<Vec<u8>>,
}

fn parquet_err(e: parquet::errors::ParquetError) -> Error {
    Error::internal("parquet encoding failed").with_source(e)
}

impl FileEncoder for Encoder {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch).map_err(parquet_err)
    }
    fn encoded(&mut self) -> &mut Vec<u8> {
        // ArrowWriter counts the bytes it wrote itself; clearing what it wrote so far is safe.
        self.writer.inner_mut()
    }
    fn finish(&mut self) -> Result<()> {
        self.writer.finish().map_err(parquet_err)?;
        Ok(())
    }
    fn buffered_bytes(&self) -> u64 {
        self.writer.in_progress_size() as u64
    }
}

impl FileFormat for ParquetFormat {
    fn name(&self) -> &'static str {
        "parquet"
    }
    fn extension(&self) -> &'static str {
        "parquet"
    }
    fn encoder(&self, schema: SchemaRef) -> Result<Box<dyn FileEncoder>> {
        let props = WriterProperties::builder()
            .set_compression(self.compression)
            .set_max_row_group_bytes(Some(self.row_group_bytes))
            .build();
        let writer = ArrowWriter::try_new(Vec::new(), schema, Some(props)).map_err(parquet_err)?;
        Ok(Box::new(Encoder { writer }))
    }
}

/// A transactional Parquet sink. See the crate docs.
pub type ParquetSink = FileSink<ParquetFormat>;

impl ParquetFormat {
    /// A transactional sink writing this format into `location` (a directory or URL).
    pub fn sink(self, location: impl Into<String>) -> ParquetSink {
        FileSink::new(self, location)
    }
}

/// A Parquet sink with default settings (zstd, 64 MiB row groups, 128 MiB files) writing into `location`.
pub fn parquet_sink(location: impl Into<String>) -> ParquetSink {
    ParquetFormat::default().sink(location)
}
