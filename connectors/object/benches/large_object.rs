//! A large object through `Hash` (and `Fetch`'s size guard) in bounded memory:
//! `cargo bench -p alluvium-object --bench large_object`.
//!
//! Writes a 2 GiB file of pseudo-random bytes (`BENCH_OBJECT_BYTES` to change), then streams it
//! through the `Hash` stage from local disk (`file://`) and from the S3 test server (`s3://`, when
//! s3s-fs is installed), reporting MB/s and the process's peak RSS during each run (VmHWM, reset
//! before each). `Fetch` with its default 64 MiB `max_object_bytes` must refuse the object as a dead
//! letter before reading it. Target: peak RSS under 256 MiB.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use alluvium_core::arrow::array::StructArray;
use alluvium_core::arrow::datatypes::Schema;
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::types::{ObjectRef, ObjectRefType};
use alluvium_core::{AsyncOperator, TaskContext};
use alluvium_object::{AccessPolicy, Fetch, Hash, ObjectStoreRegistry, StoreConfig};

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn batch(uri: String) -> RecordBatch {
    let refs: StructArray = vec![ObjectRef::new(uri)].into_iter().collect();
    RecordBatch::try_new(Arc::new(Schema::new(vec![ObjectRefType::field("ref", false)])), vec![Arc::new(refs)]).unwrap()
}

fn main() {
    let bytes: u64 = std::env::var("BENCH_OBJECT_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(2 << 30);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.bin");
    {
        let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&path).unwrap());
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut chunk = vec![0u8; 8 << 20];
        let mut left = bytes;
        while left > 0 {
            for w in chunk.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let ctx = TaskContext { pipeline: "bench".into(), stage: "hash".into(), subtask: 0, parallelism: 1, region: 0, epoch: 0 };
    let mut rows = Vec::new();

    let local = Arc::new(ObjectStoreRegistry::new(StoreConfig {
        access: AccessPolicy::default().allow_file_root(dir.path()),
        ..Default::default()
    }));
    let file_uri = format!("file://{}", path.display());
    let mut targets = vec![("file://", local.clone(), file_uri.clone())];

    let s3 = alluvium_integration::S3Server::start();
    if let Some(s3) = &s3 {
        let bucket = s3.bucket();
        std::fs::hard_link(&path, s3.object_path(&bucket, "large.bin"))
            .or_else(|_| std::fs::copy(&path, s3.object_path(&bucket, "large.bin")).map(|_| ()))
            .unwrap();
        let mut s3cfg = StoreConfig::default();
        s3cfg.s3.insert("endpoint".into(), s3.endpoint.clone());
        s3cfg.s3.insert("access_key_id".into(), s3.access_key.clone());
        s3cfg.s3.insert("secret_access_key".into(), s3.secret_key.clone());
        s3cfg.s3.insert("region".into(), "us-east-1".into());
        s3cfg.s3.insert("allow_http".into(), "true".into());
        targets.push((
            "s3:// (s3s-fs on loopback)",
            Arc::new(ObjectStoreRegistry::new(s3cfg)),
            format!("s3://{bucket}/large.bin"),
        ));
    }

    for (name, registry, uri) in targets {
        reset_peak_rss();
        let start = Instant::now();
        let out = rt.block_on(Hash::new(registry.clone()).process(batch(uri.clone()), &ctx)).unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert!(out.failures.is_empty(), "{:?}", out.failures);
        let rss = alluvium_integration::peak_rss_mib();
        rows.push((format!("hash {name}"), bytes as f64 / secs / 1e6, rss));

        reset_peak_rss();
        let out = rt.block_on(Fetch::new(registry).process(batch(uri), &ctx)).unwrap();
        assert_eq!(out.failures.len(), 1, "Fetch refuses an object over max_object_bytes");
        rows.push((format!("fetch {name} (refused: over 64 MiB)"), 0.0, alluvium_integration::peak_rss_mib()));
    }

    println!("\nlarge object: {:.2} GiB", bytes as f64 / (1u64 << 30) as f64);
    println!("{:<44} {:>10} {:>14}", "run", "MB/s", "peak RSS MiB");
    for (name, mbs, rss) in &rows {
        println!("{name:<44} {mbs:>10.0} {rss:>14.1}");
    }
    let worst = rows.iter().map(|r| r.2).fold(0.0, f64::max);
    println!("peak RSS at most {worst:.1} MiB (target < 256 MiB)");
}
