//! `ManifestSource` over a real S3 server: CSV, JSON Lines and Parquet manifests split across
//! readers, bad rows as rejects with their line (row) numbers, and readers resumed mid-split.

use std::collections::BTreeMap;
use std::sync::Arc;

use alluvium_core::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use alluvium_core::arrow::datatypes::Int64Type;
use alluvium_core::{Discovery, Source, Split};
use alluvium_integration::S3Server;
use alluvium_object::ManifestSource;
use object_store::{ObjectStoreExt, PutPayload};

use crate::common::registry;

/// What a manifest read gives: `uri → label` for the rows, `line (or row) → message` for the
/// rejects, and the splits.
#[derive(Debug, Default)]
struct Read {
    rows: BTreeMap<String, Option<i64>>,
    rejects: BTreeMap<u64, String>,
    splits: usize,
}

impl Read {
    fn add(&mut self, b: &RecordBatch) {
        let uris = b.column_by_name("ref").unwrap().as_struct().column_by_name("uri").unwrap().as_string::<i32>().clone();
        let labels = b.column_by_name("label").map(|c| c.as_primitive::<Int64Type>().clone());
        for i in 0..b.num_rows() {
            let label = labels.as_ref().and_then(|l| l.is_valid(i).then(|| l.value(i)));
            assert!(self.rows.insert(uris.value(i).to_string(), label).is_none(), "{} read twice", uris.value(i));
        }
    }

    fn reject(&mut self, r: alluvium_core::Rejected) {
        let n = r
            .records
            .column_by_name("line")
            .or(r.records.column_by_name("row"))
            .unwrap()
            .as_primitive::<alluvium_core::arrow::datatypes::UInt64Type>()
            .clone();
        for f in r.failures {
            assert!(self.rejects.insert(n.value(f.row), f.message).is_none());
        }
    }
}

/// Reads every split; with `resume`, each split is reopened at its position after its first batch.
async fn read(src: &ManifestSource, resume: bool) -> Read {
    let mut e = src.enumerator(None).await.unwrap();
    let mut out = Read::default();
    let mut splits: Vec<Split> = Vec::new();
    while let Discovery::Splits(s) = e.discover().await.unwrap() {
        splits.extend(s);
    }
    out.splits = splits.len();
    for split in splits {
        let mut r = src.open(&split, None).await.unwrap();
        if resume {
            if let Some(b) = r.next_batch().await.unwrap() {
                out.add(&b);
                if let Some(x) = r.rejected() {
                    out.reject(x);
                }
                let at = r.position();
                r = src.open(&split, Some(&at)).await.unwrap();
            }
        }
        while let Some(b) = r.next_batch().await.unwrap() {
            assert_eq!(b.schema(), src.schema());
            out.add(&b);
            if let Some(x) = r.rejected() {
                out.reject(x);
            }
        }
    }
    out
}

async fn put(s3: &S3Server, bucket: &str, key: &str, body: Vec<u8>) -> String {
    let reg = registry(s3, &s3.secret_key);
    let uri = format!("s3://{bucket}/{key}");
    let (store, path) = reg.resolve(&uri).await.unwrap().unwrap();
    store.put(&path, PutPayload::from(body)).await.unwrap();
    uri
}

/// A CSV manifest of `n` rows (line k + 2 names `img/k.jpg` with label k) with bad lines at known places.
fn csv(n: usize) -> (String, BTreeMap<u64, &'static str>) {
    let mut text = String::from("uri,label,caption\n");
    let mut bad = BTreeMap::new();
    for k in 0..n {
        let line = k as u64 + 2;
        match k % 97 {
            13 => {
                text.push_str(&format!("img/{k}.jpg,{k}\n"));
                bad.insert(line, "incorrect number of fields, expected 3 got 2");
            }
            29 => {
                text.push_str(&format!("img/{k}.jpg,many,\"a, quoted caption\"\n"));
                bad.insert(line, "value 'many' as type 'Int64' for column `label`");
            }
            41 => {
                text.push_str(",7,no uri\n");
                bad.insert(line, "no `uri`");
            }
            _ => text.push_str(&format!("img/{k}.jpg,{k},\"caption {k}, quoted\"\n")),
        }
    }
    (text, bad)
}

#[tokio::test]
async fn csv_manifests_split_by_bytes_keep_line_numbers_and_reject_bad_lines() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket();
    let (text, bad) = csv(5000);
    let uri = put(&s3, &bucket, "sets/m.csv", text.into_bytes()).await;
    let reg = registry(&s3, &s3.secret_key);
    for resume in [false, true] {
        let src = ManifestSource::new(reg.clone(), [uri.clone()])
            .columns(&["label: int64".into(), "caption".into()])
            .unwrap()
            .split_bytes(20_000)
            .batch_size(100);
        let got = read(&src, resume).await;
        assert!(got.splits > 5, "a 150 KB file in 20 KB splits: {}", got.splits);
        assert_eq!(got.rows.len() + bad.len(), 5000, "every line is a row or a reject");
        assert_eq!(got.rejects.keys().collect::<Vec<_>>(), bad.keys().collect::<Vec<_>>(), "rejects at their line numbers");
        for (line, message) in &got.rejects {
            assert!(message.starts_with(&format!("line {line}: ")), "{message}");
            assert!(message.contains(bad[line]), "line {line}: {message} should mention {}", bad[line]);
        }
        let k = 96;
        let first = &got.rows[&format!("s3://{bucket}/sets/img/{k}.jpg")];
        assert_eq!(*first, Some(k), "relative URIs resolve against the manifest's directory");
    }
}

#[tokio::test]
async fn json_lines_and_parquet_manifests_reject_what_does_not_parse_or_convert() {
    let Some(s3) = S3Server::start() else { return };
    let reg = registry(&s3, &s3.secret_key);
    let bucket = s3.bucket();
    let jsonl = [
        r#"{"uri": "s3://x/a.jpg", "label": 1}"#,
        r#"{"uri": "s3://x/b.jpg", "label": "two"}"#,
        "",
        r#"{"uri": "s3://x/c.jpg", "label": 3, "other": true"#,
        r#"{"label": 4}"#,
        r#"{"uri": "/data/e.jpg"}"#,
        r#"{"uri": "http://[bad", "label": 6}"#,
    ]
    .join("\n");
    let uri = put(&s3, &bucket, "m.jsonl", jsonl.into_bytes()).await;
    let src = ManifestSource::new(reg.clone(), [uri]).columns(&["label: int64".into()]).unwrap();
    let got = read(&src, false).await;
    assert_eq!(got.rows, BTreeMap::from([("s3://x/a.jpg".into(), Some(1)), ("file:///data/e.jpg".into(), None)]));
    assert_eq!(got.rejects.keys().copied().collect::<Vec<_>>(), vec![2, 4, 5, 7], "{:?}", got.rejects);

    // Parquet: three row groups of 4 rows; a label that is not a number, a null URI.
    let uris: ArrayRef = Arc::new(StringArray::from_iter((0..12).map(|i| (i != 9).then(|| format!("s3://{bucket}/p/{i}.png")))));
    let labels: ArrayRef =
        Arc::new(StringArray::from_iter_values((0..12).map(|i| if i == 6 { "six".into() } else { i.to_string() })));
    let extra: ArrayRef = Arc::new(Int64Array::from_iter_values(0..12));
    let batch = RecordBatch::try_from_iter([("extra", extra), ("uri", uris), ("label", labels)]).unwrap();
    let mut buf = Vec::new();
    let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(4)).build();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let uri = put(&s3, &bucket, "m.parquet", buf).await;
    for resume in [false, true] {
        let src = ManifestSource::new(reg.clone(), [uri.clone()])
            .columns(&["label: int64".into()])
            .unwrap()
            .split_bytes(1)
            .batch_size(3);
        let got = read(&src, resume).await;
        assert_eq!(got.splits, 3, "a split per row group when they exceed split_bytes");
        assert_eq!(got.rows.len(), 10);
        assert_eq!(got.rows[&format!("s3://{bucket}/p/11.png")], Some(11));
        assert_eq!(got.rejects.keys().copied().collect::<Vec<_>>(), vec![6, 9]);
        assert!(got.rejects[&6].contains("`six` is not a Int64"), "{:?}", got.rejects);
        assert!(got.rejects[&9].contains("no `uri`"), "{:?}", got.rejects);
    }

    let missing = ManifestSource::new(reg.clone(), [format!("s3://{bucket}/m.parquet")]).columns(&["caption".into()]).unwrap();
    let mut e = missing.enumerator(None).await.unwrap();
    let Discovery::Splits(s) = e.discover().await.unwrap() else { panic!() };
    let err = missing.open(&s[0], None).await.err().unwrap().to_string();
    assert!(err.contains("has no column `caption`") && err.contains("extra, uri, label"), "{err}");
}

#[tokio::test]
async fn a_prefix_of_manifests_is_read_file_by_file() {
    let Some(s3) = S3Server::start() else { return };
    let reg = registry(&s3, &s3.secret_key);
    let bucket = s3.bucket();
    for part in 0..3 {
        let body = (0..10).map(|i| format!("s3://x/{part}-{i}.jpg\n")).collect::<String>();
        put(&s3, &bucket, &format!("index/part-{part}.csv"), format!("uri\n{body}").into_bytes()).await;
    }
    put(&s3, &bucket, "index/README.txt", b"not a manifest".to_vec()).await;
    let src = ManifestSource::new(reg, [format!("s3://{bucket}/index/")]);
    let got = read(&src, false).await;
    assert_eq!((got.rows.len(), got.splits, got.rejects.len()), (30, 3, 0));
}
