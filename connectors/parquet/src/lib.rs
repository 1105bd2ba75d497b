//! # alluvium-parquet
//!
//! The reference transactional sink: Parquet files in a directory on any object store (a local
//! directory, `file://`, `s3://`), made visible by the commit step. It is the simplest real sink and
//! the one the runtime's exactly-once tests use.
//!
//! The commit protocol is the one every file sink shares ([`alluvium_core::files`]): files are
//! streamed to `_staging/region-R/EPOCH/` while a checkpoint is open, listed in the checkpoint's
//! committable at the barrier, and renamed to the directory's top level once the region's checkpoint
//! is durable. pyarrow, DuckDB and Polars skip `_`-prefixed folders, so reading the directory
//! shows exactly the committed rows.
//!
//! ```no_run
//! use alluvium_parquet::{parquet_sink, ParquetFormat};
//! let sink = parquet_sink("s3://lake/events").target_file_bytes(256 << 20);
//! let snappy = ParquetFormat::default().compression("snappy")?.sink("/data/events");
//! # Ok::<(), alluvium_core::Error>(())
//! ```
//!
//! Layout: [`config`] (the job-file section, validated without IO), [`sink`] (the format and sink),
//! [`read`] (a table's Parquet data file as a source split, for the table sources).

pub mod config;
pub mod read;
pub mod sink;

pub use config::ParquetSinkConfig;
pub use sink::{parquet_sink, ParquetFormat, ParquetSink};
