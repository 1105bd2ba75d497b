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

#[cfg(feature = "iceberg")]
pub use alluvium_catalog as catalog;
pub use alluvium_core as core;
#[cfg(feature = "delta")]
pub use alluvium_delta as delta;
#[cfg(feature = "formats")]
pub use alluvium_formats as formats;
#[cfg(feature = "gpu")]
pub use alluvium_gpu as gpu;
#[cfg(feature = "iceberg")]
pub use alluvium_iceberg as iceberg;
#[cfg(feature = "lance")]
pub use alluvium_lance as lance;
#[cfg(feature = "models")]
pub use alluvium_models as models;
#[cfg(feature = "object")]
pub use alluvium_object as object;
#[cfg(feature = "parquet")]
pub use alluvium_parquet as parquet;

pub use alluvium_core::{Error, ErrorKind, Pipeline, PipelineBuilder, Result, Stage, Summary};

/// Tunes glibc's malloc for a process that streams large buffers: call it first thing in `main`
/// (the `alluvium` binary does). Encoders grow and drop buffers of many megabytes (Parquet row
/// groups, Lance pages, batches of images), which glibc by default maps from and returns to the
/// kernel every time; the page faults and zeroing that follow took over half the CPU time of a
/// Parquet write (`cargo bench -p alluvium --bench lake_write`). With this, large blocks come
/// from the heap and freed memory is kept for reuse (peak RSS is unchanged: memory kept is
/// memory that was in use). A no-op on other C libraries and when `MALLOC_MMAP_THRESHOLD_` or
/// `MALLOC_TRIM_THRESHOLD_` is set in the environment (the user's own choice wins).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |name: &str| std::env::var_os(name).is_some();
        if !set("MALLOC_MMAP_THRESHOLD_") && !set("MALLOC_TRIM_THRESHOLD_") {
            // SAFETY: mallopt only sets allocator parameters; it is called before other threads start.
            #[allow(unsafe_code)]
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    }
}

/// Returns the memory glibc's malloc holds freed to the kernel (`malloc_trim`); a no-op on other
/// C libraries. [`tune_allocator`] keeps freed memory for reuse, and malloc keeps it per arena
/// (one per thread, up to 8 per core): a long job whose threads take turns with short-lived
/// large buffers (a Delta log replay allocates tens of MB at once) then grows its RSS arena by
/// arena, though its live heap stays flat. The `alluvium` binary calls this every
/// [`TRIM_EVERY`] while a job runs; do the same in a long-running process of your own.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; it takes the arenas' locks itself.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often the `alluvium` binary calls [`release_freed_memory`] while a job runs.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

pub mod job;
#[cfg(any(feature = "delta", feature = "iceberg", feature = "lance"))]
pub mod lake;
