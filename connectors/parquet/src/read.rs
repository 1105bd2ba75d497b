//! Reading one Parquet data file of a table as a source split: the table sources' shared reader.
//!
//! A lake table's data files are Parquet (Delta, Iceberg). Each becomes one split; its reader
//! projects the wanted columns, casts them to the table's current types (files written before a
//! column was added get nulls for it), and counts the rows it has returned so that a restored
//! reader skips exactly those and goes on.

use std::sync::Arc;

use alluvium_core::arrow::array::RecordBatch;
use alluvium_core::arrow::datatypes::SchemaRef;
use alluvium_core::{Error, Result, SplitReader, State};
use async_trait::async_trait;
use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStore;
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder};
use parquet::arrow::ProjectionMask;

/// Reads the columns of `schema` from one Parquet file. See the module docs.
pub struct DataFileReader {
    stream: ParquetRecordBatchStream<ParquetObjectReader>,
    schema: SchemaRef,
    /// Where the file is, for messages.
    what: String,
    /// Rows returned so far (the position).
    done: u64,
}

impl DataFileReader {
    /// Opens `path` (of `size` bytes) in `store`, skipping the first `skip` rows (a restored
    /// position, [`alluvium_core::sources::rows_done`]). `what` names the file in errors.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        path: Path,
        size: Option<u64>,
        schema: SchemaRef,
        skip: u64,
        batch_size: usize,
        what: String,
    ) -> Result<Self> {
        let mut reader = ParquetObjectReader::new(store, path);
        if let Some(size) = size {
            reader = reader.with_file_size(size);
        }
        let bad = |e: parquet::errors::ParquetError| Error::data(format!("{what} is not a readable Parquet file: {e}"));
        let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(bad)?;
        let file = builder.schema().clone();
        let roots: Vec<usize> = schema.fields().iter().filter_map(|f| file.index_of(f.name()).ok()).collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let stream =
            builder.with_projection(mask).with_offset(skip as usize).with_batch_size(batch_size.max(1)).build().map_err(bad)?;
        Ok(Self { stream, schema, what, done: skip })
    }
}

#[async_trait]
impl SplitReader for DataFileReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let Some(raw) = self.stream.next().await else { return Ok(None) };
        let raw = raw.map_err(|e| Error::external(format!("reading {}: {e}", self.what)).with_retryable(true))?;
        // The table's types, by name; columns added after the file was written are null.
        let batch = alluvium_core::types::lake::to_lake(&raw, &self.schema).map_err(|e| e.context(self.what.clone()))?;
        self.done += raw.num_rows() as u64;
        Ok(Some(batch))
    }

    fn position(&self) -> State {
        alluvium_core::sources::rows_position(self.done)
    }
}
