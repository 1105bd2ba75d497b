//! S3 Inventory reports as the objects source's listing, on a real S3 server: reports in the
//! layout and formats S3 writes (gzipped CSV with URL-encoded keys, Parquet with all versions),
//! read across data files, resumed mid-report, and the references fetched with their pins.

use std::io::Write;
use std::sync::Arc;

use alluvium_core::arrow::array::{
    Array, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use alluvium_core::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use alluvium_core::types::ObjectRef;
use alluvium_core::{Discovery, Source, Split};
use alluvium_integration::S3Server;
use alluvium_object::{Fetch, ObjectStoreSource};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::common::{bytes_of, fetch, registry};

/// `(uri, etag, version)` of every row the source emits, and the splits it made.
pub(crate) async fn refs_of(
    src: &ObjectStoreSource,
    restore_after: Option<usize>,
) -> (Vec<(String, Option<String>, Option<String>)>, usize) {
    let mut e = src.enumerator(None).await.unwrap();
    let mut splits: Vec<Split> = Vec::new();
    loop {
        if restore_after == Some(splits.len()) {
            e = src.enumerator(Some(e.snapshot())).await.unwrap();
        }
        match e.discover().await.unwrap() {
            Discovery::Splits(s) => splits.extend(s),
            _ => break,
        }
    }
    let mut rows = Vec::new();
    for split in &splits {
        let mut r = src.open(split, None).await.unwrap();
        while let Some(b) = r.next_batch().await.unwrap() {
            let refs = b.column_by_name("ref").unwrap().as_struct();
            let col = |n: &str| refs.column_by_name(n).unwrap().as_string::<i32>().clone();
            let (uri, etag, version) = (col("uri"), col("etag"), col("version"));
            let opt = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
            for i in 0..b.num_rows() {
                rows.push((uri.value(i).to_string(), opt(&etag, i), opt(&version, i)));
            }
        }
    }
    (rows, splits.len())
}

fn gzip(text: &str) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(text.as_bytes()).unwrap();
    g.finish().unwrap()
}

/// A key as S3 Inventory's CSV writes it (form-encoded).
fn encode(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        match b {
            b' ' => out.push('+'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'.' | b'-' | b'_' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Writes `key` as it is (`Path::from` would percent-encode its non-ASCII characters).
async fn put(store: &Arc<dyn ObjectStore>, key: &str, bytes: Vec<u8>) {
    store.put(&Path::parse(key).unwrap(), PutPayload::from(bytes)).await.unwrap();
}

#[tokio::test]
async fn a_csv_inventory_report_lists_the_bucket_in_splits_across_files_and_restores() {
    let Some(s3) = S3Server::start() else { return };
    let (bucket, dest) = (s3.bucket(), s3.bucket());
    let reg = registry(&s3, &s3.secret_key);
    let (store, _) = reg.resolve(&format!("s3://{bucket}/x")).await.unwrap().unwrap();
    let (inv, _) = reg.resolve(&format!("s3://{dest}/x")).await.unwrap().unwrap();
    let mut keys: Vec<String> = (0..1000).map(|i| format!("photos/{i:04}.jpg")).collect();
    keys.extend(["photos/a b/c+d é.jpg".to_string(), "photos/notes.txt".into(), "other/x.jpg".into()]);
    futures::future::join_all(keys.iter().map(|k| put(&store, k, k.as_bytes().to_vec()))).await;
    // The report: the bucket's objects in two gzipped CSV files, fields as S3 writes them.
    let mut lines = Vec::new();
    for k in &keys {
        let meta = store.head(&Path::parse(k).unwrap()).await.unwrap();
        let etag = meta.e_tag.unwrap().trim_matches('"').to_string();
        let modified = meta.last_modified.format("%Y-%m-%dT%H:%M:%S%.3fZ");
        lines.push(format!("\"{bucket}\",\"{}\",\"{}\",\"{modified}\",\"{etag}\"\n", encode(k), meta.size));
    }
    let config = format!("inventory/{bucket}/daily");
    for (i, part) in lines.chunks(600).enumerate() {
        put(&inv, &format!("{config}/data/part-{i}.csv.gz"), gzip(&part.concat())).await;
    }
    let manifest = |files: &[&str]| {
        serde_json::json!({
            "sourceBucket": bucket, "destinationBucket": format!("arn:aws:s3:::{dest}"), "version": "2016-11-30",
            "fileFormat": "CSV", "fileSchema": "Bucket, Key, Size, LastModifiedDate, ETag",
            "files": files.iter().map(|f| serde_json::json!({"key": f, "size": 1, "MD5checksum": "x"})).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes()
    };
    let (p0, p1) = (format!("{config}/data/part-0.csv.gz"), format!("{config}/data/part-1.csv.gz"));
    // An older report (only the first file) and the newest one (both): the newest is read.
    put(&inv, &format!("{config}/2026-11-20T01-00Z/manifest.json"), manifest(&[&p0])).await;
    put(&inv, &format!("{config}/2026-11-21T01-00Z/manifest.json"), manifest(&[&p0, &p1])).await;
    put(&inv, &format!("{config}/2026-11-21T01-00Z/manifest.checksum"), b"x".to_vec()).await;

    let src = ObjectStoreSource::prefix(reg.clone(), format!("s3://{bucket}/photos"))
        .inventory(format!("s3://{dest}/{config}/"))
        .extensions(["jpg"])
        .split_objects(150);
    src.validate().unwrap();
    let expected: Vec<String> =
        keys.iter().filter(|k| k.starts_with("photos/") && k.ends_with(".jpg")).map(|k| format!("s3://{bucket}/{k}")).collect();
    let (rows, splits) = refs_of(&src, None).await;
    assert_eq!(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), expected, "the report's order, filtered");
    assert_eq!(splits, 7, "1001 objects in splits of 150");
    // Restored after 3 splits (mid-way through the first file) and after 5 (in the second).
    for at in [3, 5] {
        let (again, _) = refs_of(&src, Some(at)).await;
        assert_eq!(again, rows, "restored after {at} splits: every object once");
    }
    // The references pin the objects' real ETags, in the form a listing gives: they fetch.
    let odd = rows.iter().find(|r| r.0.contains("c+d")).unwrap().clone();
    let f = Fetch::new(reg.clone());
    let out = fetch(&f, vec![ObjectRef::new(odd.0.clone()).etag(odd.1.clone().unwrap())]).await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(bytes_of(&out)[0], b"photos/a b/c+d \xc3\xa9.jpg".to_vec());

    // A report of another bucket, and an ORC report, are config errors that say what to do.
    let other = ObjectStoreSource::prefix(reg.clone(), "s3://elsewhere/".to_string()).inventory(format!("s3://{dest}/{config}/"));
    let e = other.enumerator(None).await.err().unwrap().to_string();
    assert!(e.contains(&format!("lists bucket `{bucket}`")) && e.contains("set `uri`"), "{e}");
    let orc = format!("{config}/orc/manifest.json");
    put(&inv, &orc, String::from_utf8(manifest(&[])).unwrap().replace("\"CSV\"", "\"ORC\"").into_bytes()).await;
    let src = ObjectStoreSource::prefix(reg, format!("s3://{bucket}/")).inventory(format!("s3://{dest}/{orc}"));
    let e = src.enumerator(None).await.err().unwrap().to_string();
    assert!(e.contains("ORC") && e.contains("CSV or Parquet"), "{e}");
}

/// A Parquet report that includes all versions: each key at its latest version, or as of a
/// time, with version ids on the references; a key deleted by then is not read.
#[tokio::test]
async fn a_parquet_inventory_of_all_versions_reads_the_bucket_as_of_a_time() {
    let Some(s3) = S3Server::start() else { return };
    let (bucket, dest) = (s3.bucket(), s3.bucket());
    let reg = registry(&s3, &s3.secret_key);
    let (inv, _) = reg.resolve(&format!("s3://{dest}/x")).await.unwrap().unwrap();
    // key, version, latest, delete marker, modified (ms)
    let t = |h: i64| 1_790_000_000_000 + h * 3_600_000;
    let versions = [
        ("a.jpg", "a3", true, false, t(30)),
        ("a.jpg", "a2", false, false, t(20)),
        ("a.jpg", "a1", false, false, t(10)),
        ("b.jpg", "b2", true, true, t(25)),
        ("b.jpg", "b1", false, false, t(5)),
        ("c.jpg", "c1", true, false, t(40)),
    ];
    let schema = Arc::new(Schema::new(vec![
        Field::new("bucket", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("version_id", DataType::Utf8, true),
        Field::new("is_latest", DataType::Boolean, true),
        Field::new("is_delete_marker", DataType::Boolean, true),
        Field::new("size", DataType::Int64, true),
        Field::new("last_modified_date", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("e_tag", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![bucket.as_str(); versions.len()])),
            Arc::new(StringArray::from_iter_values(versions.iter().map(|v| v.0))),
            Arc::new(StringArray::from_iter_values(versions.iter().map(|v| v.1))),
            Arc::new(BooleanArray::from_iter(versions.iter().map(|v| Some(v.2)))),
            Arc::new(BooleanArray::from_iter(versions.iter().map(|v| Some(v.3)))),
            Arc::new(Int64Array::from_iter(versions.iter().map(|v| (!v.3).then_some(10)))),
            Arc::new(TimestampMillisecondArray::from_iter_values(versions.iter().map(|v| v.4))),
            Arc::new(StringArray::from_iter(versions.iter().map(|v| (!v.3).then(|| format!("etag-{}", v.1))))),
        ],
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    put(&inv, "all/data/p.parquet", buf).await;
    let manifest = serde_json::json!({
        "sourceBucket": bucket, "destinationBucket": format!("arn:aws:s3:::{dest}"), "fileFormat": "Parquet",
        "fileSchema": "message s3.inventory { required binary bucket (UTF8); … }",
        "files": [{"key": "all/data/p.parquet", "size": 1, "MD5checksum": "x"}],
    });
    put(&inv, "all/2026-11-21T01-00Z/manifest.json", manifest.to_string().into_bytes()).await;
    let read = |as_of: Option<i64>| {
        let mut src = ObjectStoreSource::prefix(reg.clone(), format!("s3://{bucket}/")).inventory(format!("s3://{dest}/all"));
        if let Some(ms) = as_of {
            src = src.as_of(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64));
        }
        async move {
            let (rows, _) = refs_of(&src, None).await;
            rows.into_iter().map(|(uri, etag, v)| (uri.rsplit('/').next().unwrap().to_string(), etag, v)).collect::<Vec<_>>()
        }
    };
    let s = |v: &str| Some(v.to_string());
    let q = |v: &str| Some(format!("\"etag-{v}\""));
    assert_eq!(read(None).await, vec![("a.jpg".into(), q("a3"), s("a3")), ("c.jpg".into(), q("c1"), s("c1"))], "the latest");
    assert_eq!(
        read(Some(t(22))).await,
        vec![("a.jpg".into(), q("a2"), s("a2")), ("b.jpg".into(), q("b1"), s("b1"))],
        "as of hour 22: a2, b before its deletion, c not yet written"
    );
    assert_eq!(read(Some(t(26))).await, vec![("a.jpg".into(), q("a2"), s("a2"))], "b deleted at hour 25");
}
