//! The Iceberg sink with the SQL catalog on SQLite and on a real PostgreSQL server, checked by
//! pyiceberg reading the same catalog.

use std::sync::Arc;
use std::time::Duration;

use alluvium_catalog::{IcebergCatalog, IcebergCatalogConfig};
use alluvium_core::sink::testing::{concurrent_regions, context, id_batch, prepare, write_and_commit};
use alluvium_core::types::sample_batch;
use alluvium_core::{Sink, SinkContext};
use alluvium_iceberg::{IcebergSink, IcebergSinkConfig};

fn sink(catalog: &str, warehouse: &std::path::Path, table: &str) -> IcebergSink {
    let mut c = IcebergSinkConfig::new(table);
    c.orphan_grace = Duration::ZERO;
    IcebergSink::new(c, Arc::new(IcebergCatalog::new(IcebergCatalogConfig::new(catalog, warehouse.to_str().unwrap()))))
}

/// Reads `table` through pyiceberg's SqlCatalog named `alluvium`.
const READ: &str = r#"
import sys, json
from pyiceberg.catalog.sql import SqlCatalog
uri, warehouse, table = sys.argv[1], sys.argv[2], sys.argv[3]
if "://" not in uri:
    uri = "sqlite:///" + uri
elif uri.startswith("postgres://"):
    uri = "postgresql+psycopg2://" + uri[len("postgres://"):]
cat = SqlCatalog("alluvium", uri=uri, warehouse="file://" + warehouse)
t = cat.load_table(table)
a = t.scan().to_arrow()
out = {"rows": a.num_rows, "schema": {f.name: str(f.type) for f in a.schema},
       "snapshots": len(t.metadata.snapshots),
       "properties": {k: v for k, v in t.properties.items() if k.startswith("alluvium.")}}
if "id" in a.column_names:
    out["distinct"] = len(set(a.column("id").to_pylist()))
if "ref" in a.column_names:
    out["uri"] = sorted(r["uri"] for r in a.column("ref").to_pylist())
    out["embedding"] = sorted(a.column("embedding").to_pylist())
print(json.dumps(out))
"#;

fn read(catalog: &str, warehouse: &std::path::Path, table: &str) -> Option<serde_json::Value> {
    let py = alluvium_integration::python()?;
    let out = alluvium_integration::python_run(&py, READ, &[catalog, warehouse.to_str().unwrap(), table]);
    Some(serde_json::from_str(&out).unwrap())
}

#[tokio::test]
async fn multimodal_columns_round_trip_on_sqlite_and_a_replayed_commit_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.db");
    let catalog = catalog.to_str().unwrap();
    let s = sink(catalog, dir.path(), "default.images");
    let ctx = context("p", 0, 1);
    let c = write_and_commit(&s, &ctx, 1, vec![sample_batch()]).await.unwrap();
    s.commit(&SinkContext { writer: String::new(), ..ctx.clone() }, 1, &c).await.unwrap();
    let Some(t) = read(catalog, dir.path(), "default.images") else { return };
    assert_eq!(t["rows"], 2, "{t}");
    assert_eq!(t["snapshots"], 1, "{t}");
    assert_eq!(t["properties"][format!("alluvium.commit.{}", ctx.sink_key())], "1", "{t}");
    assert_eq!(t["uri"], serde_json::json!(["file:///data/b.mp4", "s3://b/a.jpg"]));
    assert!((t["embedding"][0][2].as_f64().unwrap() - 0.3).abs() < 1e-6, "{t}");
    let schema = &t["schema"];
    assert!(
        schema["embedding"].as_str().unwrap().starts_with("list<") && schema["embedding"].as_str().unwrap().contains("float"),
        "{schema}"
    );
    assert!(schema["ref"].as_str().unwrap().starts_with("struct<uri: string"), "{schema}");
}

async fn concurrent(catalog: &str, warehouse: &std::path::Path) {
    let a: Arc<dyn Sink> = Arc::new(sink(catalog, warehouse, "ns.t"));
    let b: Arc<dyn Sink> = Arc::new(sink(catalog, warehouse, "ns.t"));
    let (ra, rb) = tokio::join!(concurrent_regions(a, "pa", 3, 3, 50), async {
        let n = 3 * 3 * 50;
        let ctx = context("pb", 0, 1);
        for cp in 1..=3i64 {
            write_and_commit(b.as_ref(), &ctx, cp as u64, vec![id_batch(n + (cp - 1) * 50..n + cp * 50)]).await?;
        }
        Ok::<_, alluvium_core::Error>(150)
    });
    let total = ra.unwrap() + rb.unwrap();
    let Some(t) = read(catalog, warehouse, "ns.t") else { return };
    assert_eq!((t["rows"].as_i64().unwrap(), t["distinct"].as_i64().unwrap()), (total, total), "{t}");
    assert_eq!(t["snapshots"], 12, "one snapshot per committed checkpoint: {t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_regions_and_pipelines_commit_every_row_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.db");
    concurrent(catalog.to_str().unwrap(), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_regions_and_pipelines_commit_every_row_once_on_postgres() {
    let Some(pg) = alluvium_integration::PostgresServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    concurrent(&pg.database(), dir.path()).await;
}

#[tokio::test]
async fn nullable_columns_are_added_and_incompatible_changes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.db");
    let catalog = catalog.to_str().unwrap();
    let s = sink(catalog, dir.path(), "default.t");
    let ctx = context("p", 0, 1);
    write_and_commit(&s, &ctx, 1, vec![id_batch(0..10).project(&[0]).unwrap()]).await.unwrap();
    write_and_commit(&s, &ctx, 2, vec![id_batch(10..20)]).await.unwrap();
    let bad = id_batch(0..1).project(&[1]).unwrap();
    let bad = alluvium_core::arrow::record_batch::RecordBatch::try_new(
        Arc::new(alluvium_core::arrow::datatypes::Schema::new(vec![alluvium_core::arrow::datatypes::Field::new(
            "id",
            alluvium_core::arrow::datatypes::DataType::Utf8,
            false,
        )])),
        vec![bad.column(0).clone()],
    )
    .unwrap();
    let e = prepare(&s, &ctx, 3, vec![bad]).await.unwrap_err().to_string();
    assert!(e.contains("`id`") && e.contains("Iceberg table `default.t`"), "{e}");
    let Some(t) = read(catalog, dir.path(), "default.t") else { return };
    assert_eq!(t["rows"], 20, "{t}");
    assert_eq!(t["schema"]["payload"], "large_string", "{t}");
}

#[tokio::test]
async fn an_unreachable_catalog_is_a_retryable_error_naming_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let s = sink("postgres://nobody@127.0.0.1:1/nothing", dir.path(), "default.t");
    let e = prepare(&s, &context("p", 0, 1), 1, vec![id_batch(0..1)]).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let text = e.to_string();
    assert!(text.contains("PostgreSQL catalog") && text.contains("127.0.0.1:1") && text.contains("refused"), "{text}");
}

#[tokio::test]
async fn recovery_deletes_only_files_proven_orphaned() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.db");
    let catalog = catalog.to_str().unwrap();
    let s = sink(catalog, dir.path(), "default.t");
    let e1 = context("p", 0, 1);
    write_and_commit(&s, &e1, 1, vec![id_batch(0..10)]).await.unwrap();
    let pending = prepare(&s, &e1, 2, vec![id_batch(10..20)]).await.unwrap();
    let _lost = prepare(&s, &e1, 3, vec![id_batch(20..30)]).await.unwrap();
    let data = dir.path().join("default").join("t").join("data");
    let files =
        || std::fs::read_dir(&data).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".parquet")).count();
    assert_eq!(files(), 3);
    let e2 = SinkContext { epoch: 2, writer: String::new(), ..e1.clone() };
    s.recover(&e2, &pending).await.unwrap();
    assert_eq!(files(), 2);
    s.commit(&e2, 2, &pending).await.unwrap();
    s.recover(&e2, &[]).await.unwrap();
    assert_eq!(files(), 2, "committed files are never deleted");
    let Some(t) = read(catalog, dir.path(), "default.t") else { return };
    assert_eq!(t["rows"], 20, "{t}");
}

/// 22 commits to `default.t` with snapshot expiry every 5 commits, keeping 3; then a replay of
/// checkpoint 2, whose snapshot is long expired. Returns the snapshots left and the region's
/// committed-checkpoint property, as the catalog reports them.
async fn expiring(catalog: &str, warehouse: &std::path::Path) -> (usize, Option<String>, String) {
    let mut c = IcebergSinkConfig::new("default.t");
    c.expire_snapshots_every = 5;
    // Everything older than 1 ms may go, but the 3 newest snapshots stay.
    c.properties = [("history.expire.max-snapshot-age-ms", "1"), ("history.expire.min-snapshots-to-keep", "3")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let connector = Arc::new(IcebergCatalog::new(IcebergCatalogConfig::new(catalog, warehouse.to_str().unwrap())));
    let s = IcebergSink::new(c, connector.clone());
    let ctx = context("p", 0, 1);
    let mut second = Vec::new();
    for cp in 1..=22u64 {
        let batch = id_batch((cp as i64 - 1) * 50..cp as i64 * 50);
        let c = write_and_commit(&s, &ctx, cp, vec![batch]).await.unwrap();
        if cp == 2 {
            second = c;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The table property still knows checkpoint 2 landed: the replay is a no-op.
    s.commit(&SinkContext { writer: String::new(), ..ctx.clone() }, 2, &second).await.unwrap();
    let cat = alluvium_iceberg::CatalogConnector::connect(connector.as_ref()).await.unwrap();
    let t = cat.load_table(&iceberg::TableIdent::from_strs(["default", "t"]).unwrap()).await.unwrap();
    let key = format!("alluvium.commit.{}", ctx.sink_key());
    (t.metadata().snapshots().count(), t.metadata().properties().get(&key).cloned(), key)
}

#[tokio::test]
async fn snapshots_are_expired_as_commits_go_and_a_replayed_commit_still_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.db");
    let catalog = catalog.to_str().unwrap();
    // Expired at the 20th commit down to 3, then 2 more commits.
    let (snapshots, committed, key) = expiring(catalog, dir.path()).await;
    assert_eq!((snapshots, committed.as_deref()), (5, Some("22")));
    let Some(t) = read(catalog, dir.path(), "default.t") else { return };
    assert_eq!((t["rows"].as_i64().unwrap(), t["distinct"].as_i64().unwrap()), (22 * 50, 22 * 50), "{t}");
    assert_eq!(t["snapshots"], 5, "{t}");
    assert_eq!(t["properties"][key], "22", "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_expired_in_a_rest_catalog_too() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = alluvium_integration::RestCatalogServer::start(&dir.path().join("warehouse")) else { return };
    let (snapshots, committed, _) = expiring(&server.uri, &dir.path().join("warehouse")).await;
    assert_eq!((snapshots, committed.as_deref()), (5, Some("22")));
}
