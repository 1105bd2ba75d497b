//! Alluvium as a library: the thumbnails pipeline, built in Rust, into a Lance dataset.
//!
//! ```text
//! cargo run --release -p alluvium --example library -- [INPUT_DIR] [OUTPUT_DIR]
//! ```
//!
//! Every image under `INPUT_DIR` (default: the bundled `examples/data/images`) is listed as an
//! ObjectRef, fetched, decoded (JPEGs at a reduced DCT scale), cut to 224×224 and encoded as JPEG,
//! then appended exactly once to the Lance dataset `OUTPUT_DIR/thumbnails.lance` (default
//! `./out/library`). Images that cannot be decoded become dead letters in
//! `OUTPUT_DIR/_dead_letters`, each with the stage and the reason. Rerun it: the checkpoints in
//! `OUTPUT_DIR/_checkpoints` make the second run a no-op; kill it midway and it resumes.
//!
//! The same pipeline as a job file is `examples/images_to_lance.toml`.

use std::sync::Arc;
use std::time::Duration;

use alluvium::formats::{DecodeImage, EncodeImage, Fit, Resize};
use alluvium::lance::{LanceSink, LanceSinkConfig};
use alluvium::object::{AccessPolicy, Fetch, ObjectStoreRegistry, ObjectStoreSource, StoreConfig};
use alluvium::{Pipeline, Summary};

/// Builds and runs the pipeline; returns its summary.
pub async fn thumbnails(input: &str, output: &str) -> alluvium::Result<Summary> {
    // Object IO: one registry for every store, with a policy for which references may be read.
    let io = StoreConfig { access: AccessPolicy::default().allow_file_root(input), ..Default::default() };
    let registry = Arc::new(ObjectStoreRegistry::new(io));

    Pipeline::builder("library-thumbnails")
        .source(
            ObjectStoreSource::prefix(registry.clone(), input)
                .extensions(["jpg", "jpeg", "png", "webp", "gif", "tif", "tiff", "bmp"]),
        )
        .then(Fetch::new(registry).max_object_bytes(64 << 20)) // bytes, bounded in memory
        .then(DecodeImage::rgb().target(224, 224)) // bad images → dead letters
        .then(Resize::to(224, 224).fit(Fit::Fill))
        .then(EncodeImage::jpeg(85))
        .sink(LanceSink::new(LanceSinkConfig::new(format!("{output}/thumbnails.lance"))))
        .dead_letters(alluvium::core::files::FileSink::new(alluvium::core::files::JsonLines, format!("{output}/_dead_letters")))
        .parallelism(2)
        .checkpoint_every(Duration::from_secs(2))
        .checkpoint_location(format!("{output}/_checkpoints"))
        .build()? // every config error names the setting and the fix
        .run()
        .await
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    alluvium::tune_allocator();
    let mut args = std::env::args().skip(1);
    let input = args.next().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/data/images").to_string());
    let output = args.next().unwrap_or_else(|| "./out/library".to_string());
    match thumbnails(&input, &output).await {
        Ok(s) => {
            println!(
                "{} images read: {} thumbnails committed to {output}/thumbnails.lance, {} dead letters",
                s.rows_read, s.rows_committed, s.dead_letters
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
