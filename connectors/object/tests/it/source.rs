//! `ObjectStoreSource` over a real S3 server: globs, key ranges, Hive-style partition columns and
//! `last_modified`, read through the source's own enumerator and readers.

use alluvium_core::arrow::array::{Array, AsArray, RecordBatch};
use alluvium_core::arrow::datatypes::TimestampMicrosecondType;
use alluvium_core::{Discovery, Source};
use alluvium_integration::S3Server;
use alluvium_object::ObjectStoreSource;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::common::registry;

/// Every batch the source emits, split by split.
async fn read_all(src: &ObjectStoreSource) -> Vec<RecordBatch> {
    let mut e = src.enumerator(None).await.unwrap();
    let mut batches = Vec::new();
    while let Discovery::Splits(splits) = e.discover().await.unwrap() {
        for split in splits {
            let mut r = src.open(&split, None).await.unwrap();
            while let Some(b) = r.next_batch().await.unwrap() {
                batches.push(b);
            }
        }
    }
    batches
}

#[tokio::test]
async fn globs_key_ranges_and_partition_columns_select_and_describe_objects() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket();
    let reg = registry(&s3, &s3.secret_key);
    let (store, _) = reg.resolve(&format!("s3://{bucket}/x")).await.unwrap().unwrap();
    let before = chrono_now_us();
    for key in [
        "photos/dt=2026-10-31/country=fr/old.jpg",
        "photos/dt=2026-11-01/country=fr/a.jpg",
        "photos/dt=2026-11-02/country=de/b.jpg",
        "photos/dt=2026-11-02/c.png",
        "photos/dt=2026-11-02/notes.txt",
        "photos/dt=2026-11-03/country=fr/late.jpg",
        "elsewhere/dt=2026-11-01/z.jpg",
    ] {
        store.put(&Path::from(key), PutPayload::from(key.as_bytes().to_vec())).await.unwrap();
    }
    let src = ObjectStoreSource::prefix(reg.clone(), format!("s3://{bucket}/photos/"))
        .include(&["**/*.jpg".into(), "**/*.png".into()])
        .unwrap()
        .exclude(&["**/country=de/**".into()])
        .unwrap()
        .key_range(Some("dt=2026-11-01".into()), Some("dt=2026-11-03".into()))
        .partition_columns(["dt", "country"]);
    let batches = read_all(&src).await;
    let mut rows = Vec::new();
    for b in &batches {
        assert_eq!(b.schema(), src.schema());
        let refs = b.column_by_name("ref").unwrap().as_struct();
        let uri = refs.column_by_name("uri").unwrap().as_string::<i32>();
        let modified = b.column_by_name("last_modified").unwrap().as_primitive::<TimestampMicrosecondType>();
        let dt = b.column_by_name("dt").unwrap().as_string::<i32>();
        let country = b.column_by_name("country").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            assert!(modified.is_valid(i) && modified.value(i) >= before - 5_000_000, "last_modified is the store's");
            let value = |a: &alluvium_core::arrow::array::StringArray| a.is_valid(i).then(|| a.value(i).to_string());
            rows.push((uri.value(i).rsplit('/').next().unwrap().to_string(), value(dt), value(country)));
        }
    }
    rows.sort();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        vec![("a.jpg".into(), s("2026-11-01"), s("fr")), ("c.png".into(), s("2026-11-02"), None)],
        "only .jpg/.png, not country=de, within (dt=2026-11-01, dt=2026-11-03), under photos/"
    );

    let bad = ObjectStoreSource::prefix(reg, "s3://b/").include(&["a[".into()]).unwrap_err().to_string();
    assert!(bad.contains("`a[` is not a glob") && bad.contains("include"), "{bad}");
}

fn chrono_now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

/// A bounded listing on S3 is consumed a split at a time across the store's pages (s3s-fs pages
/// at 1,000 keys), and an enumerator restored from a snapshot asks the store to start after the
/// last key handed out: every key once, in order.
#[tokio::test]
async fn a_streamed_listing_resumes_after_the_last_key_handed_out() {
    use futures::StreamExt;
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket();
    let reg = registry(&s3, &s3.secret_key);
    let (store, _) = reg.resolve(&format!("s3://{bucket}/x")).await.unwrap().unwrap();
    let keys: Vec<String> = (0..1200).map(|i| format!("many/{i:05}.bin")).collect();
    futures::stream::iter(keys.clone())
        .map(|k| {
            let store = store.clone();
            async move { store.put(&Path::from(k), PutPayload::from_static(b"x")).await.unwrap() }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let src = ObjectStoreSource::prefix(reg, format!("s3://{bucket}/many/")).split_objects(250);
    let names = |split: &alluvium_core::Split| -> Vec<String> {
        split
            .payload
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string())
            .collect()
    };
    let mut seen = Vec::new();
    let mut first = src.enumerator(None).await.unwrap();
    for _ in 0..2 {
        let Discovery::Splits(splits) = first.discover().await.unwrap() else { panic!("more splits expected") };
        seen.extend(splits.iter().flat_map(names));
    }
    let mut restored = src.enumerator(Some(first.snapshot())).await.unwrap();
    while let Discovery::Splits(splits) = restored.discover().await.unwrap() {
        seen.extend(splits.iter().flat_map(names));
    }
    let expected: Vec<String> = keys.iter().map(|k| k.trim_start_matches("many/").to_string()).collect();
    assert_eq!(seen.len(), expected.len());
    assert_eq!(seen, expected, "every key once, in order, across pages and a restore");
}

/// User metadata becomes columns (HEAD per object, pinned to the listed ETag); an object deleted
/// or overwritten between listing and reading is rejected with the reason, not lost silently.
#[tokio::test]
async fn user_metadata_becomes_columns_and_vanished_objects_are_rejected() {
    use object_store::{Attribute, Attributes, PutOptions};
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket();
    let reg = registry(&s3, &s3.secret_key);
    let (store, _) = reg.resolve(&format!("s3://{bucket}/x")).await.unwrap().unwrap();
    for (key, owner) in [("m/a.jpg", Some("ana")), ("m/b.jpg", None), ("m/c.jpg", Some("cy")), ("m/d.jpg", Some("di"))] {
        let mut attributes = Attributes::new();
        if let Some(o) = owner {
            attributes.insert(Attribute::Metadata("owner".into()), o.to_string().into());
            attributes.insert(Attribute::Metadata("camera".into()), "x100".into());
        }
        let opts = PutOptions { attributes, ..Default::default() };
        store.put_opts(&Path::from(key), PutPayload::from_static(b"img"), opts).await.unwrap();
    }
    let src = ObjectStoreSource::prefix(reg, format!("s3://{bucket}/m/")).metadata(["owner", "Camera"]);
    src.validate().unwrap();
    let mut e = src.enumerator(None).await.unwrap();
    let Discovery::Splits(splits) = e.discover().await.unwrap() else { panic!("a split") };
    // Between listing and reading: c is deleted, d overwritten (s3s-fs lists no ETags: the size
    // tells).
    store.delete(&Path::from("m/c.jpg")).await.unwrap();
    store.put(&Path::from("m/d.jpg"), PutPayload::from_static(b"a new image")).await.unwrap();
    let mut r = src.open(&splits[0], None).await.unwrap();
    let b = r.next_batch().await.unwrap().unwrap();
    assert_eq!(b.schema(), src.schema());
    let uri = b.column_by_name("ref").unwrap().as_struct().column_by_name("uri").unwrap().as_string::<i32>().clone();
    let col = |n: &str| {
        let c = b.column_by_name(n).unwrap().as_string::<i32>().clone();
        (0..c.len()).map(|i| c.is_valid(i).then(|| c.value(i).to_string())).collect::<Vec<_>>()
    };
    let names: Vec<&str> = (0..uri.len()).map(|i| uri.value(i).rsplit('/').next().unwrap()).collect();
    assert_eq!(names, ["a.jpg", "b.jpg"]);
    assert_eq!(col("owner"), [Some("ana".to_string()), None]);
    assert_eq!(col("camera"), [Some("x100".to_string()), None]);
    let rejected = r.rejected().expect("c and d rejected");
    let why: Vec<&str> = rejected.failures.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(rejected.records.num_rows(), 2);
    assert!(why[0].contains("gone") && why[1].contains("changed"), "{why:?}");
    assert!(r.next_batch().await.unwrap().is_none());
}

/// A local directory is walked in key order (a directory sorts as `name/`, after `name.txt` and
/// `name-x`), split by split, following links once each; a restored enumerator goes on after the
/// last key handed out, and the walk finds what object_store's own listing finds.
#[tokio::test]
async fn a_local_directory_is_listed_in_key_order_as_it_is_walked() {
    use alluvium_object::{AccessPolicy, ObjectStoreRegistry, StoreConfig};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap().join("data");
    let files = ["a.txt", "a/b.txt", "a/z/x.txt", "a-b/c.txt", "a0", "b.txt", "b/a/b/c/d.txt", "c d.txt"];
    for f in files {
        std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
        std::fs::write(root.join(f), f).unwrap();
    }
    std::os::unix::fs::symlink(&root, root.join("a/loop")).unwrap(); // a cycle: walked once
    let cfg = StoreConfig { access: AccessPolicy::default().allow_file_root(&root), ..Default::default() };
    let reg = std::sync::Arc::new(ObjectStoreRegistry::new(cfg));
    let src = ObjectStoreSource::prefix(reg, format!("file://{}/", root.display())).split_objects(3);
    let keys = |split: &alluvium_core::Split| -> Vec<String> {
        let base = format!("file://{}/", root.display());
        split
            .payload
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["uri"].as_str().unwrap().strip_prefix(&base).unwrap().to_string())
            .collect()
    };
    let mut expected: Vec<String> = files.iter().map(|f| f.to_string()).collect();
    expected.sort();
    let mut seen = Vec::new();
    let mut e = src.enumerator(None).await.unwrap();
    let Discovery::Splits(first) = e.discover().await.unwrap() else { panic!("a split") };
    seen.extend(first.iter().flat_map(keys));
    assert_eq!(seen, expected[..3], "the first split before the rest is walked");
    let mut restored = src.enumerator(Some(e.snapshot())).await.unwrap();
    while let Discovery::Splits(splits) = restored.discover().await.unwrap() {
        seen.extend(splits.iter().flat_map(keys));
    }
    assert_eq!(seen, expected, "every file once, in key order, across a restore (the link cycle not followed twice)");
}
