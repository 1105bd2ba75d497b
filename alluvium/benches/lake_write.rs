//! Lake write benchmark: `cargo bench -p alluvium --bench lake_write`.
//!
//! The same Arrow data — rows of `id: Int64`, `ref: ObjectRef` (a struct), `embedding: 384 ×
//! Float32` (a fixed-size list) and `blob: Binary` (20 KB of random bytes), 2 GiB in all — is
//! written once to a Delta table, an Iceberg table (SQLite catalog) and a Lance dataset by our
//! sinks, and by the Python writers of the same formats from PyPI: `deltalake` (delta-rs),
//! `pyarrow.parquet` (the Parquet files an Iceberg table is made of; pyiceberg's `append` takes a
//! whole table in memory, so its peak would be the data size) and `pylance`.
//!
//! Every writer runs in a process of its own (so its peak RSS is its own, read from `VmHWM` or
//! `ru_maxrss`) and streams the batches from the same Arrow IPC stream file, one batch at a time.
//! Our sinks go through the sink protocol as the runtime drives it: one writer, `prepare` and
//! `commit` (a checkpoint) at every 512 MiB of input. Parquet is zstd on both sides.
//! Reported: input MB/s (the IPC stream's bytes over wall-clock seconds), peak RSS, and CPU seconds
//! split into user (our code and the libraries') and system (the kernel's page cache and page
//! faults; on a shared VM the noisiest part).
//!
//! Targets: at least the Python writers' speed; peak RSS bounded by the configured buffers
//! (Parquet row groups of 64 MiB, two batches in flight), not by the data size.
//!
//! Both run with [`alluvium::tune_allocator`], as the `alluvium` binary does (without it, glibc's
//! malloc maps and unmaps the encoders' large buffers and our Parquet writes take about 1.7× as
//! long, most of it in the kernel's page faults).
//!
//! Each writer runs `BENCH_RUNS` times (default 3), interleaved, after a `sync`; the median time
//! and the highest peak RSS are reported.
//!
//! Environment: `BENCH_BYTES` (default 2 GiB), `BENCH_RUNS`, `BENCH_ONLY` (one writer's name, as printed),
//! `BENCH_DIR` (where data and tables go; default `$CARGO_TARGET_DIR/bench/lake_write`). Results are
//! printed and written as JSON to `$CARGO_TARGET_DIR/bench/lake_write.json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use alluvium::core::arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch};
use alluvium::core::arrow::datatypes::{Field, Schema};
use alluvium::core::arrow::ipc::reader::StreamReader;
use alluvium::core::arrow::ipc::writer::StreamWriter;
use alluvium::core::sink::testing::context;
use alluvium::core::types::{data_bytes, embedding_array, EmbeddingType, Metric, ObjectRef, ObjectRefBuilder, ObjectRefType};
use alluvium::core::{Sink, SinkContext};

mod common;
use common::cpu_seconds;

const ROWS_PER_BATCH: usize = 256;
const DIMENSIONS: usize = 384;
const BLOB: usize = 20 * 1024;
const CHECKPOINT_BYTES: u64 = 512 << 20;

/// xorshift64*: fast, deterministic filler for floats and blobs (incompressible, like media).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn batch(first: i64, rng: &mut Rng) -> RecordBatch {
    let ids = Int64Array::from_iter_values(first..first + ROWS_PER_BATCH as i64);
    let mut refs = ObjectRefBuilder::new();
    for i in first..first + ROWS_PER_BATCH as i64 {
        refs.append(
            &ObjectRef::new(format!("s3://bench-assets/images/{i:09}.jpg"))
                .size(BLOB as u64)
                .etag(format!("\"{:016x}\"", rng.next())),
        );
    }
    let floats: Vec<f32> = (0..ROWS_PER_BATCH * DIMENSIONS).map(|_| (rng.next() >> 40) as f32 / (1u64 << 24) as f32).collect();
    let mut blobs = Vec::with_capacity(ROWS_PER_BATCH);
    for _ in 0..ROWS_PER_BATCH {
        let mut b = Vec::with_capacity(BLOB);
        while b.len() < BLOB {
            b.extend_from_slice(&rng.next().to_le_bytes());
        }
        blobs.push(b);
    }
    let embedding = EmbeddingType::new("bench-384", Metric::Cosine, DIMENSIONS).expect("embedding type");
    let schema = Schema::new(vec![
        Field::new("id", alluvium::core::arrow::datatypes::DataType::Int64, false),
        ObjectRefType::field("ref", false),
        embedding.field("embedding", false),
        Field::new("blob", alluvium::core::arrow::datatypes::DataType::Binary, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids),
        Arc::new(refs.finish()),
        Arc::new(embedding_array(DIMENSIONS, floats).expect("embedding")),
        Arc::new(BinaryArray::from_iter_values(blobs.iter())),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("bench batch")
}

/// Writes the data set once (kept between runs when its size matches).
fn data(dir: &Path, bytes: u64) -> PathBuf {
    let path = dir.join(format!("data-{bytes}.arrows"));
    if path.exists() {
        return path;
    }
    eprintln!("generating {} MiB of rows into {}", bytes >> 20, path.display());
    let tmp = dir.join("data.partial");
    let file = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&tmp).expect("data file"));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let first = batch(0, &mut rng);
    let mut w = StreamWriter::try_new(file, &first.schema()).expect("ipc writer");
    w.write(&first).expect("ipc write");
    let (mut next, mut written) = (ROWS_PER_BATCH as i64, data_bytes(&first));
    while written < bytes {
        let b = batch(next, &mut rng);
        w.write(&b).expect("ipc write");
        written += data_bytes(&b);
        next += ROWS_PER_BATCH as i64;
    }
    w.finish().expect("ipc finish");
    w.into_inner().expect("flush").flush().expect("flush");
    std::fs::rename(&tmp, &path).expect("rename");
    path
}

fn sink_for(format: &str, out: &Path) -> Arc<dyn Sink> {
    let table = out.to_str().expect("utf-8 path").to_string();
    match format {
        "delta" => Arc::new(alluvium::delta::DeltaSink::new(alluvium::delta::DeltaSinkConfig::new(table))),
        "iceberg" => {
            let catalog =
                alluvium::catalog::IcebergCatalogConfig::new(format!("{table}/catalog.db"), format!("{table}/warehouse"));
            Arc::new(alluvium::iceberg::IcebergSink::new(
                alluvium::iceberg::IcebergSinkConfig::new("bench.rows"),
                Arc::new(alluvium::catalog::IcebergCatalog::new(catalog)),
            ))
        }
        "lance" => {
            Arc::new(alluvium::lance::LanceSink::new(alluvium::lance::LanceSinkConfig::new(format!("{table}/rows.lance"))))
        }
        other => panic!("unknown format {other}"),
    }
}

/// The child process of one of our writers: streams `data` into `format` at `out`, prints JSON.
fn child(format: &str, data: &Path, out: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let start = Instant::now();
    rt.block_on(async {
        let sink = sink_for(format, out);
        let ctx = context("bench", 0, 1);
        let reader = StreamReader::try_new(std::io::BufReader::new(std::fs::File::open(data).expect("data")), None).expect("ipc");
        let mut checkpoint = 0u64;
        let mut since = 0u64;
        let mut writer = sink.writer(&ctx).await.expect("writer");
        for b in reader {
            let b = b.expect("ipc batch");
            since += data_bytes(&b);
            writer.write(b).await.expect("write");
            if since >= CHECKPOINT_BYTES {
                checkpoint += 1;
                commit(sink.as_ref(), &ctx, checkpoint, writer.prepare(checkpoint).await.expect("prepare")).await;
                since = 0;
            }
        }
        checkpoint += 1;
        commit(sink.as_ref(), &ctx, checkpoint, writer.prepare(checkpoint).await.expect("prepare")).await;
    });
    let seconds = start.elapsed().as_secs_f64();
    let (user, system) = cpu_seconds();
    println!(
        "{}",
        serde_json::json!({ "seconds": seconds, "peak_rss_mib": alluvium_integration::peak_rss_mib(), "user_s": user, "sys_s": system })
    );
}

async fn commit(sink: &dyn Sink, ctx: &SinkContext, checkpoint: u64, committable: Option<alluvium::core::Committable>) {
    if let Some(c) = committable {
        sink.commit(&SinkContext { writer: String::new(), ..ctx.clone() }, checkpoint, &[c]).await.expect("commit");
    }
}

const PYTHON: &str = r#"
import sys, time, json, resource
import pyarrow as pa, pyarrow.ipc as ipc
fmt, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.time()
reader = ipc.open_stream(pa.OSFile(data, "rb"))
if fmt == "deltalake":
    from deltalake import write_deltalake, WriterProperties
    write_deltalake(out + "/table", reader, writer_properties=WriterProperties(compression="ZSTD"))
elif fmt == "pyarrow":
    import pyarrow.parquet as pq
    n, size, w = 0, 0, None
    for b in reader:
        if w is None:
            w = pq.ParquetWriter("%s/part-%d.parquet" % (out, n), reader.schema, compression="zstd")
            n += 1
        w.write_batch(b)
        size += b.nbytes
        if size >= 128 << 20:
            w.close()
            w, size = None, 0
    if w is not None:
        w.close()
elif fmt == "pylance":
    import lance
    lance.write_dataset(reader, out + "/rows.lance")
seconds = time.time() - start
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "peak_rss_mib": ru.ru_maxrss / 1024, "user_s": ru.ru_utime, "sys_s": ru.ru_stime}))
sys.stdout.flush()
import os; os._exit(0)
"#;

/// One writer's run, as its process reported it.
struct Run {
    seconds: f64,
    rss: f64,
    written: f64,
    user: f64,
    system: f64,
}

struct Writer {
    name: &'static str,
    format: &'static str,
    ours: bool,
}

fn main() {
    // As the `alluvium` binary does.
    alluvium::tune_allocator();
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    if let Some("--child") = args.next().as_deref() {
        let (format, data, out) = (args.next().unwrap(), args.next().unwrap(), args.next().unwrap());
        return child(&format, Path::new(&data), Path::new(&out));
    }
    let bytes: u64 = std::env::var("BENCH_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(2 << 30);
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("target"));
    let dir = std::env::var("BENCH_DIR").map(PathBuf::from).unwrap_or_else(|_| target.join("bench/lake_write"));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let data = data(&dir, bytes);
    let input = std::fs::metadata(&data).expect("data").len() as f64 / 1e6;
    let python = alluvium_integration::python();
    let writers = [
        Writer { name: "alluvium delta", format: "delta", ours: true },
        Writer { name: "deltalake (python)", format: "deltalake", ours: false },
        Writer { name: "alluvium iceberg", format: "iceberg", ours: true },
        Writer { name: "pyarrow parquet", format: "pyarrow", ours: false },
        Writer { name: "alluvium lance", format: "lance", ours: true },
        Writer { name: "pylance", format: "pylance", ours: false },
    ];
    let only = std::env::var("BENCH_ONLY").ok();
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let writers: Vec<&Writer> = writers.iter().filter(|w| only.as_deref().is_none_or(|o| o == w.name)).collect();
    // Rounds interleave the writers, so drift on a shared machine hits all alike; every run starts
    // with the page cache's dirty data written back (`sync`), so no writer pays for another's.
    let mut measured: Vec<Vec<Run>> = writers.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (i, w) in writers.iter().enumerate() {
            let out = dir.join(format!("out-{}", w.format));
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).expect("out dir");
            let _ = Command::new("sync").status();
            let output = if w.ours {
                Command::new(std::env::current_exe().expect("exe")).arg("--child").arg(w.format).arg(&data).arg(&out).output()
            } else {
                let Some(py) = python.as_deref() else {
                    eprintln!("skipping {}: no Python venv (ALLUVIUM_PYTHON)", w.name);
                    continue;
                };
                Command::new(py).arg("-c").arg(PYTHON).arg(w.format).arg(&data).arg(&out).output()
            }
            .expect("writer process");
            assert!(output.status.success(), "{} failed: {}", w.name, String::from_utf8_lossy(&output.stderr));
            let r: serde_json::Value = serde_json::from_slice(&output.stdout).expect("writer JSON");
            let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
            measured[i].push(Run {
                seconds: f("seconds"),
                rss: f("peak_rss_mib"),
                written: du(&out) as f64 / 1e6,
                user: f("user_s"),
                system: f("sys_s"),
            });
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let mut results = Vec::new();
    for (w, m) in writers.iter().zip(measured) {
        if m.is_empty() {
            continue;
        }
        let seconds = median(m.iter().map(|x| x.seconds).collect());
        let rss = m.iter().map(|x| x.rss).fold(0.0, f64::max);
        let written = m[0].written;
        let (user, system) = (median(m.iter().map(|x| x.user).collect()), median(m.iter().map(|x| x.system).collect()));
        println!(
            "{:<20} {:>8.1} MB/s {:>8.0} MiB peak RSS {:>7.1} s (median of {}; CPU {user:.1} s user, {system:.1} s sys) {:>8.0} MB on disk",
            w.name,
            input / seconds,
            rss,
            seconds,
            m.len(),
            written
        );
        results.push(serde_json::json!({
            "writer": w.name, "mb_per_s": input / seconds, "peak_rss_mib": rss, "seconds": seconds, "user_s": user, "sys_s": system,
            "runs": m.iter().map(|x| x.seconds).collect::<Vec<_>>(), "input_mb": input, "written_mb": written,
        }));
    }
    let json = target.join("bench/lake_write.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results).unwrap()).expect("results");
    println!("input {input:.0} MB; results in {}", json.display());
}

/// Bytes under `dir`.
fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => du(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}
