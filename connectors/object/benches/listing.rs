//! Listing a large prefix: `cargo bench -p alluvium-object --bench listing`.
//!
//! Puts `BENCH_OBJECTS` (100,000) small objects into the S3 test server (written straight into its
//! directory, with modification times one second apart), then reports:
//! * **time to first split** of a bounded listing (the listing is streamed: this must not grow
//!   with the prefix) and the listing throughput in objects/s, next to a bare `object_store`
//!   listing of the same prefix (the server's own speed: s3s-fs walks its directory for every
//!   page of 1,000 keys, so it, not the source, sets the pace);
//! * the **bytes of the continuous-mode state** once every object was emitted, with a 5-minute
//!   lateness: a watermark plus the objects of the last 5 minutes, not a set of every key.

use std::time::{Duration, Instant, SystemTime};

use alluvium_core::{Discovery, Source};
use alluvium_object::{ObjectStoreRegistry, ObjectStoreSource, StoreConfig};

fn main() {
    let n: usize = std::env::var("BENCH_OBJECTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let Some(s3) = alluvium_integration::S3Server::start() else {
        eprintln!("listing bench: s3s-fs is not installed (ALLUVIUM_S3S_FS); nothing to measure");
        return;
    };
    let bucket = s3.bucket();
    let start = SystemTime::now() - Duration::from_secs(n as u64 + 60);
    let t = Instant::now();
    for k in 0..n {
        let path = s3.object_path(&bucket, &format!("photos/part-{:03}/{k:07}.jpg", k / 1000));
        if k % 1000 == 0 {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        }
        let f = std::fs::File::create(&path).unwrap();
        f.set_modified(start + Duration::from_secs(k as u64)).unwrap();
    }
    println!("created {n} objects in {:.1} s", t.elapsed().as_secs_f64());

    let cfg: StoreConfig = toml::from_str(&format!(
        "[s3]\nendpoint = '{}'\naccess_key_id = '{}'\nsecret_access_key = '{}'\nregion = 'us-east-1'\nallow_http = 'true'\n",
        s3.endpoint, s3.access_key, s3.secret_key
    ))
    .unwrap();
    let registry = std::sync::Arc::new(ObjectStoreRegistry::new(cfg));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let uri = format!("s3://{bucket}/photos/");

    rt.block_on(async {
        // The server's own speed: a bare object_store listing of the prefix, for comparison.
        use futures::StreamExt;
        let (store, prefix) = registry.resolve(&uri).await.unwrap().unwrap();
        let t = Instant::now();
        let mut listing = store.list(Some(&prefix));
        let mut bare = 0;
        let mut bare_first = None;
        while let Some(m) = listing.next().await {
            m.unwrap();
            bare_first.get_or_insert(t.elapsed());
            bare += 1;
        }
        assert_eq!(bare, n);
        println!(
            "the server, bare object_store listing: first object after {:.0} ms, {n} in {:.2} s ({:.0} objects/s)",
            bare_first.unwrap_or_default().as_secs_f64() * 1e3,
            t.elapsed().as_secs_f64(),
            n as f64 / t.elapsed().as_secs_f64()
        );

        let src = ObjectStoreSource::prefix(registry.clone(), uri.clone());
        let t = Instant::now();
        let mut e = src.enumerator(None).await.unwrap();
        let mut first = None;
        let mut objects = 0;
        while let Discovery::Splits(splits) = e.discover().await.unwrap() {
            first.get_or_insert(t.elapsed());
            objects += splits.iter().map(|s| s.payload.as_array().map_or(0, Vec::len)).sum::<usize>();
        }
        let all = t.elapsed();
        assert_eq!(objects, n, "every object listed once");
        println!(
            "bounded listing: first split after {:.0} ms, {n} objects in {:.2} s ({:.0} objects/s)",
            first.unwrap_or_default().as_secs_f64() * 1e3,
            all.as_secs_f64(),
            n as f64 / all.as_secs_f64()
        );

        let src = ObjectStoreSource::prefix(registry, uri).continuous(Duration::from_secs(3600), Duration::from_secs(300));
        let mut e = src.enumerator(None).await.unwrap();
        let t = Instant::now();
        let mut objects = 0;
        while let Discovery::Splits(splits) = e.discover().await.unwrap() {
            objects += splits.iter().map(|s| s.payload.as_array().map_or(0, Vec::len)).sum::<usize>();
        }
        let state = serde_json::to_vec(&e.snapshot()).unwrap().len();
        assert_eq!(objects, n);
        println!(
            "continuous: {n} objects emitted in {:.2} s; checkpointed state {state} bytes ({:.1} bytes per object emitted)",
            t.elapsed().as_secs_f64(),
            state as f64 / n as f64
        );
    });
}
