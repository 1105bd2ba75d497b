//! A malformed pipeline fails at `build()` with an error that names the stage and the fix.

use alluvium_core::files::{FileSink, JsonLines};
use alluvium_core::ops::Fault;
use alluvium_core::sources::Generate;
use alluvium_core::{ErrorKind, Pipeline, Stage};

fn err(b: alluvium_core::PipelineBuilder) -> String {
    match b.build() {
        Ok(_) => panic!("build must fail"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Config, "{e}");
            e.to_string()
        }
    }
}

fn base(dir: &std::path::Path) -> alluvium_core::PipelineBuilder {
    Pipeline::builder("p").checkpoint_location(dir.join("ckpt").to_str().unwrap())
}

#[test]
fn missing_source_or_sink() {
    let dir = tempfile::tempdir().unwrap();
    let sink = || FileSink::new(JsonLines, dir.path().join("o").to_str().unwrap().to_string());
    assert!(err(base(dir.path()).sink(sink())).contains("has no source"));
    assert!(err(base(dir.path()).source(Generate::new(1))).contains("has no sink"));
}

#[test]
fn zero_parallelism_names_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FileSink::new(JsonLines, dir.path().join("o").to_str().unwrap().to_string());
    let e = err(base(dir.path()).source(Generate::new(1)).then(Stage::new("slow", Fault::new()).parallelism(0)).sink(sink));
    assert!(e.contains("`slow` has parallelism 0"), "{e}");
    let sink = FileSink::new(JsonLines, dir.path().join("o").to_str().unwrap().to_string());
    assert!(err(base(dir.path()).source(Generate::new(1)).sink(sink).parallelism(0)).contains("parallelism is 0"));
}

#[test]
fn forward_edge_between_different_parallelisms_suggests_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FileSink::new(JsonLines, dir.path().join("o").to_str().unwrap().to_string());
    let e = err(base(dir.path())
        .source(Generate::new(1))
        .then(Stage::new("wide", Fault::new()).parallelism(3))
        .sink(sink)
        .parallelism(2));
    assert!(e.contains("`wide`") && e.contains("rebalance"), "{e}");
    // With a rebalance edge the same shape builds, as a single region.
    let sink = FileSink::new(JsonLines, dir.path().join("o").to_str().unwrap().to_string());
    let p = base(dir.path())
        .source(Generate::new(1))
        .then(Stage::new("wide", Fault::new()).parallelism(3).rebalance())
        .sink_with(std::sync::Arc::new(sink), Some(3), alluvium_core::Edge::Forward)
        .parallelism(2)
        .build()
        .unwrap();
    assert_eq!(p.regions(), 1);
    assert_eq!(p.topology(), "generate[2] => wide[3] -> jsonl[3]");
}

#[test]
fn duplicate_stage_names() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FileSink::new(JsonLines, dir.path().join("o").to_str().unwrap().to_string());
    let e = err(base(dir.path()).source(Generate::new(1)).then(Fault::new()).then(Fault::new()).sink(sink));
    assert!(e.contains("two stages are named `fault`"), "{e}");
}

#[test]
fn unwritable_checkpoint_location() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let sink = FileSink::new(JsonLines, dir.path().join("o").to_str().unwrap().to_string());
    let e =
        err(Pipeline::builder("p").source(Generate::new(1)).sink(sink).checkpoint_location(file.join("sub").to_str().unwrap()));
    assert!(e.contains("checkpoint location") && e.contains("writable"), "{e}");
}

#[test]
fn zero_checkpoint_interval_and_bad_source_settings() {
    let dir = tempfile::tempdir().unwrap();
    let sink = || FileSink::new(JsonLines, dir.path().join("o").to_str().unwrap().to_string());
    let e = err(base(dir.path()).source(Generate::new(1)).sink(sink()).checkpoint_every(std::time::Duration::ZERO));
    assert!(e.contains("checkpoint interval"), "{e}");
    let e = err(base(dir.path()).source(Generate::new(1).batch_size(0)).sink(sink()));
    assert!(e.contains("batch_size"), "{e}");
}

#[test]
fn dead_letters_may_not_share_the_sink_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o").to_str().unwrap().to_string();
    let e = err(base(dir.path())
        .source(Generate::new(1))
        .sink(FileSink::new(JsonLines, out.clone()))
        .dead_letters(FileSink::new(JsonLines, format!("{out}/"))));
    assert!(e.contains("same location") && e.contains("_dead_letters"), "{e}");
}
