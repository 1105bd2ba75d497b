//! # alluvium-core
//!
//! The engine of Alluvium: the types every connector shares, the traits they implement, and the
//! runtime that runs pipelines exactly-once with regional checkpoints.
//!
//! ## A tour
//!
//! * **Data** flows as Arrow [`RecordBatch`](arrow::record_batch::RecordBatch)es, always: no
//!   row-at-a-time paths between stages.
//! * A [`Source`] discovers [`Split`]s with a [`SplitEnumerator`] and reads them with
//!   [`SplitReader`]s whose positions go into checkpoints ([`source`]).
//! * An [`Operator`] (sync, CPU work) or [`AsyncOperator`] (IO work, concurrent) maps batches and
//!   reports failed rows, which become **dead letters** ([`operator`], [`dead_letter`]).
//! * A [`Sink`] is a two-phase commit: writers `write` and `prepare` a [`Committable`] at each
//!   barrier; the sink `commit`s it idempotently once the region's checkpoint is durable ([`sink`]).
//!   [`files::FileSink`] is the shared implementation for file formats.
//! * [`Pipeline::builder`] chains them, with parallelism and forward/rebalance edges ([`pipeline`]).
//!   Forward-connected lanes are independent **regions** that checkpoint, fail and recover on their
//!   own ([`runtime`]); their manifests live in a [`CheckpointStore`] on any object store
//!   ([`checkpoint`]).
//! * Channels between stages are bounded in **bytes** ([`channel`]); every stage reports the same
//!   [`metrics`].
//! * Codecs that seek read references through [`OpenObject`] (ranged reads, bounded memory)
//!   ([`open`]).
//! * Large assets travel as references: [`types::ObjectRef`] and the other multimodal extension
//!   types (images, embeddings, tensors, video/audio refs, frames) over plain Arrow layouts ([`types`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use alluvium_core::{files::{FileSink, JsonLines}, ops::Fault, sources::Generate, Pipeline};
//!
//! # async fn demo() -> alluvium_core::Result<()> {
//! let pipeline = Pipeline::builder("demo")
//!     .source(Generate::new(1_000_000))
//!     .then(Fault::new().dead_letter_every(1000))    // every 1000th row → dead letters
//!     .sink(FileSink::new(JsonLines, "/tmp/demo-out"))
//!     .parallelism(2)                                 // two lanes = two regions
//!     .checkpoint_every(Duration::from_secs(1))
//!     .checkpoint_location("/tmp/demo-checkpoints")
//!     .build()?;
//! let summary = pipeline.run().await?;                // rerun after a crash: resumes
//! println!("{} rows committed, {} dead letters", summary.rows_committed, summary.dead_letters);
//! # Ok(()) }
//! ```

pub mod channel;
pub mod checkpoint;
pub mod dead_letter;
pub mod error;
pub mod files;
pub mod metrics;
pub mod open;
pub mod operator;
pub mod ops;
pub mod pipeline;
pub mod runtime;
pub mod service;
pub mod sink;
pub mod source;
pub mod sources;
pub mod store;
pub mod types;

pub use checkpoint::CheckpointStore;
pub use error::{Error, ErrorKind, Result};
pub use open::{OpenObject, ReadSeek};
pub use operator::{AsyncOperator, Map, Operator, Output, RowFailure, RowResults, TaskContext};
pub use pipeline::{Edge, PipelineBuilder, Stage};
pub use runtime::{Pipeline, Summary};
pub use service::{Service, ServiceError, ServicePool, ServiceStage};
pub use sink::{Committable, Sink, SinkContext, SinkWriter};
pub use source::{Discovery, Rejected, Source, Split, SplitEnumerator, SplitReader, State};

/// Arrow, re-exported so connectors and users agree on one version.
pub use arrow;
