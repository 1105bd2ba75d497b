//! The Parquet sink through the runtime: committed files are readable Parquet with exactly the
//! committed rows; staging is skipped; file rolling keeps files near the target size.

use std::time::Duration;

use alluvium_core::arrow::array::Int64Array;
use alluvium_core::sources::Generate;
use alluvium_core::Pipeline;
use alluvium_parquet::ParquetSinkConfig;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_files_hold_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cfg: ParquetSinkConfig =
        toml::from_str(&format!("path = '{}'\ncompression = 'snappy'\ntarget_file_bytes = 200000", out.display())).unwrap();
    let n = 50_000u64;
    let summary = Pipeline::builder("pq")
        .source(Generate::new(n).batch_size(1000).split_rows(10_000).payload_bytes(64))
        .sink(cfg.build().unwrap())
        .parallelism(2)
        .checkpoint_every(Duration::from_millis(50))
        .checkpoint_location(dir.path().join("ckpt").to_str().unwrap())
        .build()
        .unwrap()
        .run()
        .await
        .unwrap();
    assert_eq!(summary.rows_committed, n);

    let mut ids = Vec::new();
    let mut files = 0;
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('_') {
            continue;
        }
        assert!(name.ends_with(".parquet"), "{name}");
        files += 1;
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(e.path()).unwrap()).unwrap().build().unwrap();
        for b in reader {
            let b = b.unwrap();
            ids.extend(b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().iter().copied());
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..n as i64).collect::<Vec<_>>());
    assert!(files >= 4, "files roll at the target size: {files}");
}

#[test]
fn config_errors_name_the_key() {
    let cfg: ParquetSinkConfig = toml::from_str("path = '/tmp/x'\ncompression = 'nope'").unwrap();
    let e = cfg.build().unwrap_err().to_string();
    assert!(e.contains("compression") && e.contains("nope"), "{e}");
    let e = toml::from_str::<ParquetSinkConfig>("path = '/tmp/x'\ncompresion = 'zstd'").unwrap_err().to_string();
    assert!(e.contains("compresion"), "{e}");
}

#[test]
fn multimodal_types_survive_parquet_and_other_readers_see_ordinary_columns() {
    use alluvium_core::files::FileFormat;
    use alluvium_core::types::{assert_sample_batch, sample_batch};
    use alluvium_parquet::ParquetFormat;

    let batch = sample_batch();
    let mut enc = ParquetFormat::default().encoder(batch.schema()).unwrap();
    enc.write(&batch).unwrap();
    enc.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("types.parquet");
    std::fs::write(&path, enc.encoded()).unwrap();

    let mut reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap().build().unwrap();
    let back = reader.next().unwrap().unwrap();
    assert_sample_batch(&back);

    if let Some(py) = alluvium_integration::python() {
        let script = "import sys, pyarrow.parquet as pq\n\
                      t = pq.read_table(sys.argv[1])\n\
                      print(t.schema.field('ref').type.field('uri').type, t.schema.field('embedding').type)\n\
                      print(t.column('ref')[1]['uri'], t.column('embedding')[1].values.to_pylist())";
        let out = std::process::Command::new(py).args(["-c", script, path.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "string fixed_size_list<item: float not null>[3]", "{text}");
        assert!(lines[1].starts_with("file:///data/b.mp4 [0.4"), "{text}");
    }
}
