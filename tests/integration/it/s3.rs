//! The S3 server does what our checkpoint store and file sinks rely on, through `object_store`
//! exactly as Alluvium configures it (`Location::parse` with the `AWS_*` environment).

use alluvium_core::CheckpointStore;
use alluvium_integration::S3Server;
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

#[tokio::test]
async fn conditional_put_rename_and_listing_work_as_the_checkpoint_store_needs() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket();
    let env = s3.env();
    let loc = crate::location(&env, &format!("s3://{bucket}/ckpt"));
    let p = loc.child("a/one.json");
    let create = PutOptions { mode: PutMode::Create, ..Default::default() };
    loc.store.put_opts(&p, PutPayload::from_static(b"1"), create.clone()).await.unwrap();
    let again = loc.store.put_opts(&p, PutPayload::from_static(b"2"), create).await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. })),
        "{again:?}"
    );
    assert_eq!(&loc.store.get(&p).await.unwrap().bytes().await.unwrap()[..], b"1");
    loc.store.rename(&p, &loc.child("b/two.json")).await.unwrap();
    let listed: Vec<_> = loc.store.list(Some(&loc.child("b"))).try_collect().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(std::fs::read(s3.object_path(&bucket, "ckpt/b/two.json")).is_ok());

    // The checkpoint store's epoch claims are exclusive on S3 too.
    let store = CheckpointStore::new(crate::location(&env, &format!("s3://{bucket}/ckpt2")));
    store.probe().await.unwrap();
    assert_eq!(store.claim_epoch(0, None).await.unwrap(), 0);
    assert_eq!(store.claim_epoch(0, None).await.unwrap(), 1);

    // Wrong credentials are refused, and the error does not echo the secret.
    let mut wrong = env.clone();
    wrong.push(("AWS_SECRET_ACCESS_KEY".into(), "wrong-secret-value".into()));
    let bad = crate::location(&wrong, &format!("s3://{bucket}/x"));
    let err = bad.store.put(&bad.child("k"), PutPayload::from_static(b"x")).await.unwrap_err();
    let shown = alluvium_core::Error::from(err).to_string();
    assert!(!shown.contains("wrong-secret-value"), "{shown}");
}
