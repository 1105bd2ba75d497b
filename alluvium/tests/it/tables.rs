//! Table sources through the binary: a second pipeline reads what a first one writes into a lake
//! table, tailing it while it grows and across SIGKILLs, and reads just the versions after one.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alluvium::core::arrow::array::{Array, AsArray};
use alluvium::core::arrow::datatypes::Int64Type;

use crate::bin;
use crate::cli::committed_batches;

fn write_job(path: &Path, name: &str, source: &str, sink: &str, checkpoints: &Path) {
    std::fs::write(
        path,
        format!(
            r#"
[pipeline]
name = "{name}"
parallelism = 2
restart_delay = "100ms"
[checkpoint]
interval = "200ms"
location = "{checkpoints}"
[source]
{source}
[sink]
{sink}
"#,
            checkpoints = checkpoints.display()
        ),
    )
    .unwrap();
}

/// `(id, payload) → times` of the committed Parquet rows under `dir`.
fn committed_rows(dir: &Path) -> BTreeMap<(i64, String), usize> {
    let mut rows = BTreeMap::new();
    for b in committed_batches(dir) {
        let id = b.column_by_name("id").unwrap().as_primitive::<Int64Type>().clone();
        let payload = b.column_by_name("payload").map(|p| p.as_string::<i32>().clone());
        for i in 0..b.num_rows() {
            let p = payload.as_ref().map(|p| p.value(i).to_string()).unwrap_or_default();
            *rows.entry((id.value(i), p)).or_insert(0) += 1;
        }
    }
    rows
}

/// The latest version of the table `job` writes, as `alluvium inspect` shows it.
fn version(job: &Path) -> u64 {
    version_of(job).unwrap_or_else(|| panic!("no table for {}", job.display()))
}

/// The latest version, or `None` while the table does not exist.
fn version_of(job: &Path) -> Option<u64> {
    let out = bin().args(["inspect", job.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.trim().strip_prefix("version "))?;
    line.split(',').next()?.parse().ok()
}

fn run(job: &Path) -> String {
    let out = bin().args(["run", job.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{} failed: {}", job.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn start(job: &Path) -> Child {
    bin().args(["run", job.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn a_pipeline_tails_another_ones_delta_table_exactly_once_across_kills() {
    let dir = tempfile::tempdir().unwrap();
    let table = format!("table = \"{}\"", dir.path().join("table").display());
    tail_and_since(&dir, "delta", &table, "target_file_bytes = 100000");
}

#[test]
fn a_pipeline_tails_another_ones_lance_dataset_exactly_once_across_kills() {
    let dir = tempfile::tempdir().unwrap();
    let table = format!("table = \"{}\"", dir.path().join("table").display());
    tail_and_since(&dir, "lance", &table, "max_rows_per_file = 3000");
}

#[test]
fn a_pipeline_tails_another_ones_iceberg_table_exactly_once_across_kills() {
    let dir = tempfile::tempdir().unwrap();
    let table = format!(
        "table = \"default.t\"\ncatalog = \"{}\"\nwarehouse = \"{}\"",
        dir.path().join("catalog.db").display(),
        dir.path().join("warehouse").display()
    );
    tail_and_since(&dir, "iceberg", &table, "target_file_bytes = 100000");
}

/// Two writers append to a `format` table (named by the keys `table`) while a second pipeline
/// tails it (killed twice on the way); then a bounded read takes just the versions after the
/// first writer's.
fn tail_and_since(dir: &tempfile::TempDir, format: &str, table: &str, sink_options: &str) {
    let sink = format!("type = \"{format}\"\n{table}\n{sink_options}");
    let writer = |name: &str, rows: u64, seed: u64| {
        let job = dir.path().join(format!("{name}.toml"));
        let source = format!(
            "type = \"generate\"\nrows = {rows}\nbatch_size = 500\nsplit_rows = 5000\nrows_per_second = 10000\nseed = {seed}"
        );
        write_job(&job, name, &source, &sink, &dir.path().join(format!("{name}-checkpoints")));
        job
    };
    let first = writer("first", 20_000, 1);
    let second = writer("second", 10_000, 2);

    let out = dir.path().join("out");
    let tail = dir.path().join("tail.toml");
    let source = format!("type = \"{format}\"\n{table}\ncontinuous = true\npoll_interval = \"100ms\"\nbatch_size = 700");
    write_job(&tail, "tail", &source, &format!("type = \"parquet\"\npath = \"{}\"", out.display()), &out.join("_checkpoints"));

    // The first writer runs while the tail starts, is killed twice and restarts.
    let mut writing = start(&first);
    while version_of(&first).is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pause in [700, 900] {
        let mut tailing = start(&tail);
        std::thread::sleep(Duration::from_millis(pause));
        tailing.kill().unwrap(); // SIGKILL
        tailing.wait().unwrap();
    }
    let tailing = start(&tail);
    assert!(writing.wait().unwrap().success());
    let after_first = version(&first);
    run(&second);
    let t = Instant::now();
    while committed_rows(&out).values().sum::<usize>() < 30_000 {
        assert!(t.elapsed() < Duration::from_secs(60), "the tail has {} rows after 60 s", committed_rows(&out).len());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(Command::new("kill").args(["-TERM", &tailing.id().to_string()]).status().unwrap().success());
    let stopped = tailing.wait_with_output().unwrap();
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let rows = committed_rows(&out);
    assert_eq!(rows.len(), 30_000, "every row of both writers");
    assert!(rows.values().all(|n| *n == 1), "a row was committed twice");
    let ids = |lo: i64, hi: i64| rows.keys().filter(|(id, _)| (lo..hi).contains(id)).count();
    assert_eq!((ids(0, 10_000), ids(10_000, 20_000)), (20_000, 10_000));

    // A bounded read of the versions after the first writer's: the second writer's rows, `id` only.
    let since = dir.path().join("since.toml");
    let out2 = dir.path().join("out2");
    let source = format!("type = \"{format}\"\n{table}\nsince_version = {after_first}\ncolumns = [\"id\"]");
    write_job(
        &since,
        "since",
        &source,
        &format!("type = \"parquet\"\npath = \"{}\"", out2.display()),
        &out2.join("_checkpoints"),
    );
    let summary = run(&since);
    let batches = committed_batches(&out2);
    assert!(batches.iter().all(|b| b.num_columns() == 1), "projected to `id`");
    let mut ids: Vec<i64> = batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
    ids.sort();
    assert_eq!(ids, (0..10_000).collect::<Vec<_>>(), "{summary}");
    assert!(batches.iter().all(|b| b.column(0).null_count() == 0));
}

/// The ids of the rows `job` commits to its Parquet output `out`, sorted.
fn ids_read(job: &Path, out: &Path) -> Vec<i64> {
    run(job);
    let mut ids: Vec<i64> = committed_rows(out).into_iter().flat_map(|((id, _), n)| std::iter::repeat_n(id, n)).collect();
    ids.sort();
    ids
}

/// A table another implementation wrote (pyiceberg: partitioned, with a copy-on-write delete
/// between appends) read whole, from a snapshot on, and from before the first snapshot.
#[test]
fn an_iceberg_table_pyiceberg_wrote_is_read_whole_and_from_a_snapshot_on() {
    let Some(py) = alluvium_integration::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import sys, pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import NestedField, LongType, StringType
from pyiceberg.partitioning import PartitionSpec, PartitionField
from pyiceberg.transforms import IdentityTransform
root = sys.argv[1]
cat = SqlCatalog("alluvium", uri="sqlite:///" + root + "/catalog.db", warehouse="file://" + root + "/warehouse")
cat.create_namespace("default")
schema = Schema(NestedField(1, "id", LongType(), required=False), NestedField(2, "payload", StringType(), required=False))
spec = PartitionSpec(PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="payload"))
t = cat.create_table("default.foreign", schema=schema, partition_spec=spec)
arrow = pa.schema([pa.field("id", pa.int64()), pa.field("payload", pa.string())])
def append(lo, hi):
    t.append(pa.table({"id": list(range(lo, hi)), "payload": ["ab"[i % 2] for i in range(lo, hi)]}, schema=arrow))
    return t.current_snapshot().snapshot_id
first = append(0, 100)
second = append(100, 200)
t.delete("id < 50")
deleted = t.current_snapshot().snapshot_id
append(200, 300)
print(first, second, deleted)
"#;
    let text = alluvium_integration::python_run(&py, script, &[dir.path().to_str().unwrap()]);
    let snaps: Vec<u64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let catalog = dir.path().join("catalog.db");
    let read = |name: &str, keys: &str| {
        let (job, out) = (dir.path().join(format!("{name}.toml")), dir.path().join(name));
        let source = format!("type = \"iceberg\"\ntable = \"default.foreign\"\ncatalog = \"{}\"\n{keys}", catalog.display());
        let sink = format!("type = \"parquet\"\npath = \"{}\"", out.display());
        write_job(&job, name, &source, &sink, &out.join("_checkpoints"));
        ids_read(&job, &out)
    };
    assert_eq!(read("whole", ""), (50..300).collect::<Vec<_>>(), "the current snapshot: the delete applied");
    // The appends after `first`; the delete's snapshots are skipped (they rewrite rows read before).
    assert_eq!(read("second-on", &format!("since_version = {}", snaps[0])), (100..300).collect::<Vec<_>>());
    assert_eq!(read("after-delete", &format!("since_version = {}", snaps[2])), (200..300).collect::<Vec<_>>());
    assert_eq!(read("every-append", "since_version = 0"), (0..300).collect::<Vec<_>>());
    // A snapshot id that is not in the table's history is a config error naming it.
    let job = dir.path().join("bad.toml");
    let source =
        format!("type = \"iceberg\"\ntable = \"default.foreign\"\ncatalog = \"{}\"\nsince_version = 12345", catalog.display());
    write_job(
        &job,
        "bad",
        &source,
        &format!("type = \"parquet\"\npath = \"{}\"", dir.path().join("bad").display()),
        &dir.path().join("bad-ck"),
    );
    let out = bin().args(["run", job.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("12345") && err.contains("since_version"), "{err}");
}

/// A Delta table another implementation wrote (deltalake, with a copy-on-write delete between
/// appends): read whole, and its appends after a version, the delete's version skipped.
#[test]
fn a_delta_table_deltalake_wrote_is_read_whole_and_from_a_version_on() {
    let Some(py) = alluvium_integration::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("foreign");
    let script = r#"
import sys, os, pyarrow as pa
from deltalake import DeltaTable, write_deltalake
path = sys.argv[1]
def append(lo, hi):
    write_deltalake(path, pa.table({"id": pa.array(range(lo, hi), pa.int64()), "payload": ["ab"[i % 2] for i in range(lo, hi)]}), mode="append")
append(0, 100)
append(100, 200)
DeltaTable(path).delete("id < 50")
append(200, 300)
print(DeltaTable(path).version())
sys.stdout.flush(); os._exit(0)
"#;
    let text = alluvium_integration::python_run(&py, script, &[table.to_str().unwrap()]);
    assert_eq!(text.trim(), "3", "versions 0, 1 (append), 2 (delete), 3 (append)");
    let read = |name: &str, keys: &str| {
        let (job, out) = (dir.path().join(format!("{name}.toml")), dir.path().join(name));
        let source = format!("type = \"delta\"\ntable = \"{}\"\n{keys}", table.display());
        write_job(&job, name, &source, &format!("type = \"parquet\"\npath = \"{}\"", out.display()), &out.join("_checkpoints"));
        ids_read(&job, &out)
    };
    assert_eq!(read("whole", ""), (50..300).collect::<Vec<_>>(), "the latest version: the delete applied");
    assert_eq!(read("appends", "since_version = 0"), (100..300).collect::<Vec<_>>(), "versions 1 and 3");
}
