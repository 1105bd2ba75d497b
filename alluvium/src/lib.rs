//! # Alluvium
//!
//! Ingest multimodal data (images, video, audio, documents) into data lakes, in batch and
//! streaming mode, exactly-once. This is the façade crate: it re-exports the public API of the
//! layer crates behind features, and holds the job-file format that the `alluvium` CLI runs.
//!
//! ```text
//!   alluvium-core  ◀──  alluvium-formats  ◀──  connectors (alluvium-parquet, …)  ◀──  alluvium (this crate, CLI)
//!        ▲                                          ▲
//!        └──────────── alluvium-gpu, alluvium-catalog ┘
//! ```
//!
//! * [`core`]: types, traits, the runtime ([`Pipeline`]).
//! * [`parquet`] (feature `parquet`, default): the reference transactional Parquet sink.
//! * [`object`] (feature `object`, default): object IO — registry, access policy, `objects`
//!   source, `Fetch`.
//! * [`formats`] (feature `formats`, default): media stages (images).
//! * [`job`]: TOML job files — the same vocabulary as the Rust builder.
//!
//! ```no_run
//! use std::time::Duration;
//! use alluvium::{core::sources::Generate, parquet::parquet_sink, Pipeline};
//!
//! # async fn demo() -> alluvium::Result<()> {
//! let summary = Pipeline::builder("demo")
//!     .source(Generate::new(1_000_000))
//!     .sink(parquet_sink("./out/demo"))
//!     .parallelism(2)
//!     .checkpoint_every(Duration::from_secs(1))
//!     .build()?
//!     .run()
//!     .await?;
//! println!("{} rows committed", summary.rows_committed);
//! # Ok(()) }
//! ```

pub use alluvium_core as core;
#[cfg(feature = "formats")]
pub use alluvium_formats as formats;
#[cfg(feature = "object")]
pub use alluvium_object as object;
#[cfg(feature = "parquet")]
pub use alluvium_parquet as parquet;

pub use alluvium_core::{Error, ErrorKind, Pipeline, PipelineBuilder, Result, Stage, Summary};

pub mod job;
#[cfg(any(feature = "delta", feature = "iceberg", feature = "lance"))]
pub mod lake;
