//! The Lance sink against real Lance datasets, checked by pylance.

use std::sync::Arc;

use alluvium_core::sink::testing::{concurrent_regions, context, id_batch, write_and_commit};
use alluvium_core::types::sample_batch;
use alluvium_core::{Sink, SinkContext};
use alluvium_lance::{LanceSink, LanceSinkConfig};

const READ: &str = r#"
import sys, json, lance
ds = lance.dataset(sys.argv[1])
t = ds.to_table()
out = {"rows": t.num_rows, "version": ds.version, "schema": {f.name: str(f.type) for f in t.schema}}
if "id" in t.column_names:
    out["distinct"] = len(set(t.column("id").to_pylist()))
if "ref" in t.column_names:
    out["uri"] = sorted(r["uri"] for r in t.column("ref").to_pylist())
    out["embedding"] = sorted(t.column("embedding").to_pylist())
    out["props"] = ds.get_transactions(1)[0].transaction_properties
print(json.dumps(out))
"#;

fn read(path: &std::path::Path) -> Option<serde_json::Value> {
    let py = alluvium_integration::python()?;
    Some(serde_json::from_str(&alluvium_integration::python_run(&py, READ, &[path.to_str().unwrap()])).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multimodal_columns_round_trip_with_fixed_size_embeddings_and_a_replay_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.lance");
    let s = LanceSink::new(LanceSinkConfig::new(path.to_str().unwrap()));
    let ctx = context("p", 0, 1);
    let c = write_and_commit(&s, &ctx, 1, vec![sample_batch()]).await.unwrap();
    s.commit(&SinkContext { writer: String::new(), ..ctx.clone() }, 1, &c).await.unwrap();
    let Some(t) = read(&path) else { return };
    assert_eq!(t["rows"], 2, "{t}");
    assert_eq!(t["version"], 2, "create + one append: {t}");
    assert_eq!(t["uri"], serde_json::json!(["file:///data/b.mp4", "s3://b/a.jpg"]));
    assert!(t["schema"]["embedding"].as_str().unwrap().starts_with("fixed_size_list<"), "vector-indexable: {t}");
    assert!((t["embedding"][0][2].as_f64().unwrap() - 0.3).abs() < 1e-6, "{t}");
    assert_eq!(t["props"]["alluvium.sink-key"], ctx.sink_key(), "{t}");
    assert_eq!(t["props"]["alluvium.checkpoint"], "1", "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_regions_commit_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.lance");
    let s: Arc<dyn Sink> = Arc::new(LanceSink::new(LanceSinkConfig::new(path.to_str().unwrap())));
    let total = concurrent_regions(s, "p", 3, 3, 100).await.unwrap();
    let Some(t) = read(&path) else { return };
    assert_eq!((t["rows"].as_i64().unwrap(), t["distinct"].as_i64().unwrap()), (total, total), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nullable_columns_are_added_and_incompatible_changes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.lance");
    let s = LanceSink::new(LanceSinkConfig::new(path.to_str().unwrap()));
    let ctx = context("p", 0, 1);
    write_and_commit(&s, &ctx, 1, vec![id_batch(0..10).project(&[0]).unwrap()]).await.unwrap();
    write_and_commit(&s, &ctx, 2, vec![id_batch(10..20)]).await.unwrap();
    let payload_as_id = id_batch(0..1).project(&[1]).unwrap();
    let bad = alluvium_core::arrow::record_batch::RecordBatch::try_new(
        Arc::new(alluvium_core::arrow::datatypes::Schema::new(vec![alluvium_core::arrow::datatypes::Field::new(
            "id",
            alluvium_core::arrow::datatypes::DataType::Utf8,
            true,
        )])),
        vec![payload_as_id.column(0).clone()],
    )
    .unwrap();
    let e = write_and_commit(&s, &ctx, 3, vec![bad]).await.unwrap_err().to_string();
    assert!(e.contains("`id`") && e.contains("Lance dataset"), "{e}");
    let Some(t) = read(&path) else { return };
    assert_eq!(t["rows"], 20, "{t}");
}
