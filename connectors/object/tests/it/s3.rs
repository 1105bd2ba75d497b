//! Fetch from a real S3 server (s3s-fs, SigV4): whole objects, ranges, hashes, pins, limits,
//! missing objects and wrong credentials.

use alluvium_core::types::ObjectRef;
use alluvium_integration::S3Server;
use alluvium_object::Fetch;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::common::*;

#[tokio::test]
async fn fetches_hashes_pins_and_dead_letters_per_row() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket();
    let reg = registry(&s3, &s3.secret_key);
    let (store, _) = reg.resolve(&format!("s3://{bucket}/x")).await.unwrap().unwrap();
    let a: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let put = store.put(&Path::from("a.bin"), PutPayload::from(a.clone())).await.unwrap();
    store.put(&Path::from("big.bin"), PutPayload::from(vec![7u8; 5000])).await.unwrap();
    store.put(&Path::from("changing.bin"), PutPayload::from_static(b"old")).await.unwrap();
    let old_etag = store.head(&Path::from("changing.bin")).await.unwrap().e_tag.unwrap();
    store.put(&Path::from("changing.bin"), PutPayload::from_static(b"new!")).await.unwrap();

    let uri = |k: &str| format!("s3://{bucket}/{k}");
    let big_enough = Fetch::new(reg.clone()).max_object_bytes(200_000);
    let out = fetch(
        &big_enough,
        vec![
            ObjectRef::new(uri("a.bin")).etag(put.e_tag.clone().unwrap()),
            ObjectRef::new(uri("a.bin")).range(1000, 10),
            ObjectRef::new(uri("missing.bin")),
            ObjectRef::new(uri("changing.bin")).etag(old_etag),
        ],
    )
    .await;
    assert_eq!(out.batch.num_rows(), 2);
    assert_eq!(bytes_of(&out), vec![a.clone(), a[1000..1010].to_vec()]);
    assert_eq!(hashes_of(&out)[0], blake3::hash(&a).to_hex().to_string());
    assert_eq!(failure(&out, 2), "object not found");
    assert!(failure(&out, 3).contains("changed since its reference was made"), "{}", failure(&out, 3));

    let small = Fetch::new(reg).max_object_bytes(1000);
    let out = fetch(&small, vec![ObjectRef::new(uri("big.bin")), ObjectRef::new(uri("big.bin")).range(0, 100)]).await;
    assert!(failure(&out, 0).contains("5000 bytes, over max_object_bytes = 1000"), "{}", failure(&out, 0));
    assert_eq!(out.batch.num_rows(), 1, "the 100-byte range of a big object is fine");

    let wrong = Fetch::new(registry(&s3, "not-the-secret-xyz"));
    let out = fetch(&wrong, vec![ObjectRef::new(uri("a.bin"))]).await;
    let msg = failure(&out, 0);
    assert!(msg.contains("access denied") || msg.contains("403"), "{msg}");
    assert!(!msg.contains("not-the-secret-xyz"), "{msg}");
}

#[tokio::test]
async fn a_memory_budget_smaller_than_an_object_still_lets_it_through_alone() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket();
    let reg = registry(&s3, &s3.secret_key);
    let (store, _) = reg.resolve(&format!("s3://{bucket}/x")).await.unwrap().unwrap();
    for i in 0..6 {
        store.put(&Path::from(format!("o{i}")), PutPayload::from(vec![i as u8; 3000])).await.unwrap();
    }
    let f = Fetch::new(reg).memory_budget(1000).concurrency(6);
    let out = fetch(&f, (0..6).map(|i| ObjectRef::new(format!("s3://{bucket}/o{i}"))).collect()).await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(bytes_of(&out).iter().map(|b| b[0]).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5], "input order is kept");
}

#[tokio::test]
async fn hash_streams_and_probe_sniffs_without_keeping_bytes() {
    use alluvium_core::arrow::array::{Array, StringArray, UInt64Array};
    use alluvium_core::{AsyncOperator, TaskContext};
    use alluvium_object::{Hash, Probe};
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket();
    let reg = registry(&s3, &s3.secret_key);
    let (store, _) = reg.resolve(&format!("s3://{bucket}/x")).await.unwrap().unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    store.put(&Path::from("big.bin"), PutPayload::from(big.clone())).await.unwrap();
    store.put(&Path::from("photo"), PutPayload::from_static(b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00rest-of-jpeg")).await.unwrap();
    store.put(&Path::from("text"), PutPayload::from_static(b"just some text")).await.unwrap();
    let uri = |k: &str| format!("s3://{bucket}/{k}");
    let ctx = TaskContext { pipeline: "t".into(), stage: "s".into(), subtask: 0, parallelism: 1, region: 0, epoch: 0 };

    let out = Hash::new(reg.clone())
        .process(
            batch(vec![
                ObjectRef::new(uri("big.bin")),
                ObjectRef::new(uri("big.bin")).range(10, 1000),
                ObjectRef::new(uri("gone")),
            ]),
            &ctx,
        )
        .await
        .unwrap();
    let h = out.batch.column_by_name("content_hash").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
    let sizes = out.batch.column_by_name("size").unwrap().as_any().downcast_ref::<UInt64Array>().unwrap().clone();
    assert_eq!(h.value(0), blake3::hash(&big).to_hex().as_str());
    assert_eq!(h.value(1), blake3::hash(&big[10..1010]).to_hex().as_str());
    assert_eq!(sizes.values().to_vec(), vec![3_000_000, 1000]);
    assert_eq!(failure(&out, 2), "object not found");
    assert!(out.batch.column_by_name("bytes").is_none(), "hash keeps no bytes");

    let out = Probe::new(reg)
        .process(batch(vec![ObjectRef::new(uri("photo")), ObjectRef::new(uri("text")), ObjectRef::new(uri("big.bin"))]), &ctx)
        .await
        .unwrap();
    let types = out.batch.column_by_name("content_type").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
    let sizes = out.batch.column_by_name("size").unwrap().as_any().downcast_ref::<UInt64Array>().unwrap().clone();
    assert_eq!(types.value(0), "image/jpeg");
    assert_eq!(sizes.value(2), 3_000_000, "the full size, though only the head was read");
    assert_eq!(types.len(), 3);
}

/// A ranged reader pinned to an ETag fails, with the reason, when the object is overwritten while
/// it is read, instead of mixing two objects' bytes (s3s-fs ignores If-Match: the ETag it serves
/// is compared).
#[tokio::test]
async fn a_ranged_reader_refuses_an_object_changed_under_it() {
    use std::io::Read;
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket();
    let reg = registry(&s3, &s3.secret_key);
    let uri = format!("s3://{bucket}/v.bin");
    let (store, path) = reg.resolve(&uri).await.unwrap().unwrap();
    let put = store.put(&path, PutPayload::from(vec![1u8; 200_000])).await.unwrap();
    let r = ObjectRef::new(uri).etag(put.e_tag.unwrap()).size(200_000);
    let err = tokio::task::spawn_blocking(move || {
        let mut reader = reg.open_ranged(&r).unwrap().chunk(64 * 1024);
        let mut first = vec![0u8; 64 * 1024];
        reader.read_exact(&mut first).unwrap();
        assert!(first.iter().all(|b| *b == 1));
        let overwrite = store.put(&path, PutPayload::from(vec![2u8; 200_000]));
        tokio::runtime::Handle::current().block_on(overwrite).unwrap();
        reader.read_exact(&mut first).unwrap_err()
    })
    .await
    .unwrap();
    assert!(err.to_string().contains("the object changed since its reference was made"), "{err}");
}
