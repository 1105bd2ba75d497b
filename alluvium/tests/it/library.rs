//! The Rust library example (`examples/library.rs`), run as a user would call it: its images land
//! in Lance once (as pylance reads them), bad ones become dead letters, a rerun adds nothing.

#[allow(dead_code)] // its `main` is for `cargo run --example library`
#[path = "../../examples/library.rs"]
mod example;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_example_writes_thumbnails_once() {
    let images = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/data/images");
    let out = tempfile::tempdir().unwrap();
    let output = out.path().to_str().unwrap();
    let first = example::thumbnails(images, output).await.unwrap();
    assert_eq!((first.rows_read, first.rows_committed, first.dead_letters), (6, 3, 3));
    let again = example::thumbnails(images, output).await.unwrap();
    assert_eq!((again.rows_read, again.rows_committed), (0, 0), "a rerun resumes to nothing");
    let Some(py) = alluvium_integration::python() else { return };
    let script = "import sys, lance\nt = lance.dataset(sys.argv[1]).to_table()\nprint(t.num_rows, t.column('thumbnail').combine_chunks().field('width').to_pylist())\n";
    let seen = alluvium_integration::python_run(&py, script, &[&format!("{output}/thumbnails.lance")]);
    assert_eq!(seen.trim(), "3 [224, 224, 224]");
}
