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
use parquet::file::properties::{
    EnabledStatistics, WriterProperties, WriterPropertiesBuilder, DEFAULT_PAGE_SIZE, DEFAULT_WRITE_BATCH_SIZE,
};

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
        // parquet's parser wants a level for these; without one, their default level.
        let codec = match codec.trim().to_ascii_lowercase().as_str() {
            "zstd" => "zstd(1)".to_string(),
            "gzip" => "gzip(6)".to_string(),
            "brotli" => "brotli(1)".to_string(),
            other => other.to_string(),
        };
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

/// The writer is made at the first batch, when the width of a row is known (see [`write_batch_rows`]).
struct Encoder {
    schema: SchemaRef,
    props: Option<WriterPropertiesBuilder>,
    writer: Option<ArrowWriter<Vec<u8>>>,
    /// What [`FileEncoder::encoded`] hands out before the first batch.
    empty: Vec<u8>,
}

/// Rows per write mini-batch: about a quarter of a data page (1 MiB), so pages end between 1 and
/// 1.25 MiB. The Parquet writer checks a page's size only between mini-batches (1024 rows by
/// default): with rows of 20 KB images that is 20 MB pages, copied and compressed out of cache.
/// Narrow rows keep the default.
fn write_batch_rows(batch: &RecordBatch) -> usize {
    let row_bytes = alluvium_core::types::data_bytes(batch) as usize / batch.num_rows().max(1);
    (DEFAULT_PAGE_SIZE / 4 / row_bytes.max(1)).clamp(1, DEFAULT_WRITE_BATCH_SIZE)
}

impl Encoder {
    fn writer(&mut self, batch: &RecordBatch) -> Result<&mut ArrowWriter<Vec<u8>>> {
        if let Some(props) = self.props.take() {
            let props = props.set_write_batch_size(write_batch_rows(batch)).build();
            self.writer = Some(ArrowWriter::try_new(Vec::new(), self.schema.clone(), Some(props)).map_err(parquet_err)?);
        }
        Ok(self.writer.as_mut().expect("made above"))
    }
}

fn parquet_err(e: parquet::errors::ParquetError) -> Error {
    Error::internal("parquet encoding failed").with_source(e)
}

impl FileEncoder for Encoder {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer(batch)?.write(batch).map_err(parquet_err)
    }
    fn encoded(&mut self) -> &mut Vec<u8> {
        // ArrowWriter counts the bytes it wrote itself; clearing what it wrote so far is safe.
        match &mut self.writer {
            Some(w) => w.inner_mut(),
            None => &mut self.empty,
        }
    }
    fn finish(&mut self) -> Result<()> {
        let schema = self.schema.clone();
        let writer = self.writer(&RecordBatch::new_empty(schema))?;
        writer.finish().map_err(parquet_err)?;
        Ok(())
    }
    fn buffered_bytes(&self) -> u64 {
        self.writer.as_ref().map_or(0, |w| w.in_progress_size() as u64)
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
        Ok(Box::new(Encoder { schema, props: Some(props), writer: None, empty: Vec::new() }))
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

    /// Codecs are accepted with or without a level.
    #[test]
    fn codecs_with_and_without_levels() {
        for codec in ["zstd", "ZSTD", "zstd(5)", "snappy", "gzip", "brotli", "lz4_raw", "uncompressed"] {
            assert!(ParquetFormat::default().compression(codec).is_ok(), "{codec}");
        }
        let e = ParquetFormat::default().compression("zip").unwrap_err().to_string();
        assert!(e.contains("unknown parquet compression `zip`"), "{e}");
    }

    /// Rows of 20 KB blobs are cut into pages of about the 1 MiB page size, not one page per
    /// 1024-row mini-batch; a file with no batches is still a valid (empty) Parquet file.
    #[test]
    fn wide_rows_make_pages_of_about_a_mebibyte() {
        use alluvium_core::arrow::array::{ArrayRef, BinaryArray};
        use alluvium_core::arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let blobs: Vec<Vec<u8>> =
            (0..200u32).map(|i| (0..20_480u32).map(|j| (i ^ j.wrapping_mul(2_654_435_761)) as u8).collect()).collect();
        let column: ArrayRef = Arc::new(BinaryArray::from_iter_values(blobs.iter()));
        let batch =
            RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("blob", DataType::Binary, false)])), vec![column]).unwrap();
        let mut enc = ParquetFormat::default().encoder(batch.schema()).unwrap();
        enc.write(&batch).unwrap();
        enc.finish().unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(std::mem::take(enc.encoded()))).unwrap();
        let pages: Vec<_> = reader.get_row_group(0).unwrap().get_column_page_reader(0).unwrap().map(|p| p.unwrap()).collect();
        let largest = pages.iter().map(|p| p.buffer().len()).max().unwrap();
        assert!(pages.len() >= 3 && largest < (5 << 20) / 4, "{} pages, the largest {largest} bytes", pages.len());

        let mut empty = ParquetFormat::default().encoder(batch.schema()).unwrap();
        empty.finish().unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(std::mem::take(empty.encoded()))).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
    }
}
