//! Runtime overhead benchmark: `cargo bench -p alluvium --bench runtime`.
//!
//! The same work three ways, on the same generated rows (`id`, 64-byte `payload`):
//!
//! 1. **bare**: one loop — generate a batch, map it (an FNV-1a hash of every payload into a new
//!    column), encode it to Parquet (zstd) on local disk. No runtime at all.
//! 2. **runtime**: `generate → map → parquet sink` through the pipeline, parallelism 1, no
//!    checkpoint during the run (the interval is longer than the run; one final checkpoint).
//! 3. **runtime + checkpoints every 1 s**: the same with a region checkpoint (manifest written,
//!    files committed) every second.
//!
//! Reported: rows/s (wall clock) and CPU seconds (user + system, from /proc/self/stat). The runtime
//! pipelines stages across cores, so wall-clock throughput can beat the bare loop; CPU seconds
//! show the runtime's true cost. Targets: runtime CPU ≤ bare CPU + 5 %; checkpoints every second
//! cost ≤ 5 % of throughput. Environment: `BENCH_ONLY` (one configuration's name), `BENCH_CHANNEL_BYTES` (the pipeline's
//! channel budget, 64 MiB), `BENCH_ROWS` (default 20,000,000), `BENCH_RUNS` (5; medians are reported).
//! Results are printed as a table and written as JSON to `$CARGO_TARGET_DIR/bench/runtime.json`
//! (or `target/bench/runtime.json`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use alluvium::core::arrow::array::{ArrayRef, StringArray, UInt64Array};
use alluvium::core::arrow::datatypes::{DataType, Field, Schema};
use alluvium::core::arrow::record_batch::RecordBatch;
use alluvium::core::sources::Generate;
use alluvium::core::{Map, Output, Pipeline, Source, Stage};
use alluvium::parquet::parquet_sink;

mod common;

fn fnv(batch: RecordBatch) -> alluvium::Result<Output> {
    let payload = batch.column(1).as_any().downcast_ref::<StringArray>().expect("payload");
    let hashes = UInt64Array::from_iter_values(payload.iter().map(|p| {
        p.unwrap_or_default().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
    }));
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("hash", DataType::UInt64, false));
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols.push(Arc::new(hashes));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?.into())
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let (user, system) = common::cpu_seconds();
    user + system
}

struct Measure {
    wall: Duration,
    cpu: f64,
}

fn measure(f: impl FnOnce()) -> Measure {
    let (c0, t0) = (cpu_seconds(), Instant::now());
    f();
    Measure { wall: t0.elapsed(), cpu: cpu_seconds() - c0 }
}

async fn bare(rows: u64, dir: &std::path::Path) {
    let g = Generate::new(rows).split_rows(rows).payload_bytes(64);
    let mut e = g.enumerator(None).await.unwrap();
    let alluvium::core::Discovery::Splits(splits) = e.discover().await.unwrap() else { unreachable!() };
    let mut reader = g.open(&splits[0], None).await.unwrap();
    let file = std::fs::File::create(dir.join("bare.parquet")).unwrap();
    let mut writer = None;
    while let Some(b) = reader.next_batch().await.unwrap() {
        let out = fnv(b).unwrap().batch;
        let w = writer.get_or_insert_with(|| {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .set_max_row_group_bytes(Some(64 << 20))
                .build();
            parquet::arrow::ArrowWriter::try_new(file.try_clone().unwrap(), out.schema(), Some(props)).unwrap()
        });
        w.write(&out).unwrap();
    }
    writer.unwrap().close().unwrap();
}

async fn pipeline(rows: u64, dir: &std::path::Path, checkpoint: Duration) -> u64 {
    let summary = Pipeline::builder("bench")
        .source(Generate::new(rows).payload_bytes(64).split_rows(rows / 8))
        .then(Stage::new("fnv", Map::new(fnv)))
        .sink(parquet_sink(dir.join("out").to_str().unwrap()).target_file_bytes(1 << 40))
        .checkpoint_every(checkpoint)
        .channel_bytes(std::env::var("BENCH_CHANNEL_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(64 << 20))
        .checkpoint_location(dir.join("ckpt").to_str().unwrap())
        .build()
        .unwrap()
        .run()
        .await
        .unwrap();
    assert_eq!(summary.rows_committed, rows);
    summary.checkpoints
}

fn main() {
    let rows: u64 = std::env::var("BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000_000);
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let configs: [(&str, Option<Duration>); 3] = [
        ("bare loop", None),
        ("runtime", Some(Duration::from_secs(3600))),
        ("runtime + 1 s checkpoints", Some(Duration::from_secs(1))),
    ];
    let only = std::env::var("BENCH_ONLY").ok();
    let configs: Vec<_> = configs.into_iter().filter(|(name, _)| only.as_deref().is_none_or(|o| o == *name)).collect();
    // Rounds interleave the configurations, so slow drift on a shared machine hits all of them alike.
    let mut all: Vec<Vec<(Measure, u64)>> = configs.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (i, (_, checkpoint)) in configs.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let mut checkpoints = 0;
            let m = measure(|| {
                rt.block_on(async {
                    match checkpoint {
                        None => bare(rows, dir.path()).await,
                        Some(c) => checkpoints = pipeline(rows, dir.path(), *c).await,
                    }
                })
            });
            all[i].push((m, checkpoints));
        }
    }
    // Medians of wall time and of CPU time, each on its own: robust to a noisy neighbour.
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut results = Vec::new();
    for ((name, _), runs) in configs.iter().zip(all) {
        let wall = median(runs.iter().map(|(m, _)| m.wall.as_secs_f64()).collect());
        let cpu = median(runs.iter().map(|(m, _)| m.cpu).collect());
        let checkpoints = runs.iter().map(|(_, c)| *c).max().unwrap_or(0);
        results.push((*name, Measure { wall: Duration::from_secs_f64(wall), cpu }, checkpoints));
    }
    if results.len() < 3 {
        for (name, m, cps) in &results {
            println!("{name}: {:.2} s wall, {:.2} s CPU, {cps} checkpoints", m.wall.as_secs_f64(), m.cpu);
        }
        return;
    }
    let base = &results[0].1;
    let nocp = &results[1].1;
    println!("\nruntime benchmark: {rows} rows (id, 64-byte payload) → FNV hash → Parquet (zstd), median of {runs} runs");
    println!(
        "{:<28} {:>12} {:>10} {:>9} {:>12} {:>12}",
        "configuration", "rows/s", "wall s", "CPU s", "CPU vs bare", "checkpoints"
    );
    let mut json = Vec::new();
    for (name, m, cps) in &results {
        let rps = rows as f64 / m.wall.as_secs_f64();
        let cpu_vs = (m.cpu / base.cpu - 1.0) * 100.0;
        println!("{:<28} {:>12.0} {:>10.2} {:>9.2} {:>+11.1}% {:>12}", name, rps, m.wall.as_secs_f64(), m.cpu, cpu_vs, cps);
        json.push(format!(
            "{{\"configuration\":\"{name}\",\"rows\":{rows},\"rows_per_s\":{rps:.0},\"wall_s\":{:.3},\"cpu_s\":{:.2},\"checkpoints\":{cps}}}",
            m.wall.as_secs_f64(),
            m.cpu
        ));
    }
    let cp_cost = (results[2].1.wall.as_secs_f64() / nocp.wall.as_secs_f64() - 1.0) * 100.0;
    let rt_cpu = (nocp.cpu / base.cpu - 1.0) * 100.0;
    println!("runtime CPU overhead over the bare loop: {rt_cpu:+.1}% (target < 5%)");
    println!("throughput cost of checkpoints every second: {cp_cost:+.1}% (target < 5%)");
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let out = std::path::Path::new(&target).join("bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("runtime.json"), format!("[{}]\n", json.join(",\n")));
}
