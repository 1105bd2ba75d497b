//! `ObjectStoreSource` over a real S3 server: globs, key ranges, Hive-style partition columns and
//! `last_modified`, read through the source's own enumerator and readers.

use alluvium_core::arrow::array::{Array, AsArray, RecordBatch};
use alluvium_core::arrow::datatypes::TimestampMicrosecondType;
use alluvium_core::{Discovery, Source};
use alluvium_integration::S3Server;
use alluvium_object::{ObjectStoreRegistry, ObjectStoreSource, StoreConfig};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use std::sync::Arc;

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
    let cfg: StoreConfig = toml::from_str(&format!(
        "[s3]\nendpoint = '{}'\naccess_key_id = '{}'\nsecret_access_key = '{}'\nregion = 'us-east-1'\nallow_http = 'true'\n",
        s3.endpoint, s3.access_key, s3.secret_key
    ))
    .unwrap();
    let reg = Arc::new(ObjectStoreRegistry::new(cfg));
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
