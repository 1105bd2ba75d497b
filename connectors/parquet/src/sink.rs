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
use parquet::basic::{Compression, ConvertedType, Type as PhysicalType, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

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
        let mut props =
            WriterProperties::builder().set_compression(self.compression).set_max_row_group_bytes(Some(self.row_group_bytes));
        // Dictionary encoding pays off for repeated values (strings, ids, enums), not for floats
        // (embeddings) or opaque bytes (images, blobs): there it interns every value of a row
        // group before giving up, about a tenth of the encoding time of an embedding-and-blob
        // table. Min/max statistics of opaque bytes prune nothing and copy large values.
        let leaves = parquet::arrow::ArrowSchemaConverter::new().convert(&schema).map_err(parquet_err)?;
        for leaf in leaves.columns() {
            let opaque = leaf.physical_type() == PhysicalType::BYTE_ARRAY
                && leaf.logical_type_ref().is_none()
                && leaf.converted_type() == ConvertedType::NONE;
            if opaque || matches!(leaf.physical_type(), PhysicalType::FLOAT | PhysicalType::DOUBLE) {
                props = props.set_column_dictionary_enabled(leaf.path().clone(), false);
            }
            if opaque {
                props = props.set_column_statistics_enabled(leaf.path().clone(), EnabledStatistics::None);
            }
        }
        let props = props.build();
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

#[cfg(test)]
mod tests {
    use super::*;
    use alluvium_core::types::sample_batch;
    use parquet::basic::Encoding;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// Strings keep dictionary encoding and statistics; embeddings (floats) and image bytes are
    /// written plainly, and the bytes without min/max statistics.
    #[test]
    fn dictionaries_only_where_values_repeat() {
        let batch = sample_batch();
        let mut enc = ParquetFormat::default().encoder(batch.schema()).unwrap();
        enc.write(&batch).unwrap();
        enc.finish().unwrap();
        let bytes = bytes::Bytes::from(std::mem::take(enc.encoded()));
        let reader = SerializedFileReader::new(bytes).unwrap();
        let group = reader.metadata().row_group(0);
        let column = |path: &str| {
            (0..group.num_columns()).map(|i| group.column(i)).find(|c| c.column_path().string() == path).unwrap_or_else(|| {
                let all: Vec<_> = (0..group.num_columns()).map(|i| group.column(i).column_path().string()).collect();
                panic!("no column {path} in {all:?}")
            })
        };
        let dictionary =
            |path: &str| column(path).encodings().any(|e| e == Encoding::RLE_DICTIONARY || e == Encoding::PLAIN_DICTIONARY);
        assert!(dictionary("ref.uri"), "strings keep their dictionary");
        assert!(!dictionary("embedding.list.item"), "floats are written plainly");
        assert!(!dictionary("image.data"), "opaque bytes are written plainly");
        assert!(column("ref.uri").statistics().is_some());
        assert!(column("image.data").statistics().is_none(), "no min/max of image bytes");
    }
}
