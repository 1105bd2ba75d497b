//! The fault proxy injects each kind of failure, and `object_store`, configured as Alluvium
//! configures it, gets every read and write through them with the right bytes.

use alluvium_core::CheckpointStore;
use alluvium_integration::faults::{Fault, FaultProxy};
use alluvium_integration::S3Server;
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_injected_and_retried_through_with_the_right_bytes() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket();
    let proxy = FaultProxy::start(&s3.endpoint, 0.4, &Fault::ALL, 7);
    let loc = crate::location(&proxy.env(&s3), &format!("s3://{bucket}/data"));
    let body = |i: usize| -> Vec<u8> { (0..20_000 + i * 13).map(|b| (b * 31 + i) as u8).collect() };
    for i in 0..40 {
        loc.store.put(&loc.child(&format!("o{i}")), PutPayload::from(body(i))).await.unwrap();
    }
    for i in 0..40 {
        let got = loc.store.get(&loc.child(&format!("o{i}"))).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], &body(i)[..], "object {i}");
        assert_eq!(std::fs::read(s3.object_path(&bucket, &format!("data/o{i}"))).unwrap(), body(i));
    }
    let listed: Vec<_> = loc.store.list(Some(&loc.child(""))).try_collect().await.unwrap();
    assert_eq!(listed.len(), 40);

    let injected = proxy.injected();
    assert_eq!(injected.len(), Fault::ALL.len(), "every kind was injected: {injected:?}");
    // Every fault but a slow body fails its request, which the client then repeats once.
    let failed = proxy.injected_total() - injected[&Fault::SlowBody];
    assert_eq!(proxy.requests(), 81 + failed, "one retry per failed request: {injected:?}");
}

/// Half the replies lost (the request took effect, the client saw the connection drop and
/// retried): the checkpoint store still claims consecutive epochs and writes every manifest,
/// because a retried create that finds its own bytes counts as written, while a claim by
/// someone else is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_whose_replies_are_lost_are_recognised_as_ours() {
    let Some(s3) = S3Server::start() else { return };
    let bucket = s3.bucket();
    let proxy = FaultProxy::start(&s3.endpoint, 0.5, &[Fault::LostReply], 3);
    let env = proxy.env(&s3);
    let store = CheckpointStore::new(crate::location(&env, &format!("s3://{bucket}/ckpt")));
    let mut epochs = Vec::new();
    for _ in 0..12 {
        epochs.push(store.claim_epoch(0, epochs.last().copied()).await.unwrap());
    }
    assert_eq!(epochs, (0..12).collect::<Vec<u64>>(), "no epoch skipped");
    let lost = proxy.injected()[&Fault::LostReply];
    assert!(lost >= 3, "replies were lost: {lost}");

    // Someone else's claim is still someone else's: a second store sees epoch 0 taken.
    let other = CheckpointStore::new(crate::location(&env, &format!("s3://{bucket}/ckpt")));
    assert_eq!(other.claim_epoch(0, None).await.unwrap(), 12);
}
