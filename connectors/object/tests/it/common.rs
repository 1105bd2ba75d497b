use std::sync::Arc;

use alluvium_core::arrow::array::{Array, BinaryArray, StringArray, StructArray};
use alluvium_core::arrow::datatypes::Schema;
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::types::{ObjectRef, ObjectRefType};
use alluvium_core::{AsyncOperator, Output, TaskContext};
use alluvium_object::Fetch;

pub fn batch(refs: Vec<ObjectRef>) -> RecordBatch {
    let col: StructArray = refs.into_iter().collect();
    RecordBatch::try_new(Arc::new(Schema::new(vec![ObjectRefType::field("ref", false)])), vec![Arc::new(col)]).unwrap()
}

pub async fn fetch(f: &Fetch, refs: Vec<ObjectRef>) -> Output {
    let ctx = TaskContext { pipeline: "t".into(), stage: "fetch".into(), subtask: 0, parallelism: 1, region: 0, epoch: 0 };
    f.process(batch(refs), &ctx).await.unwrap()
}

pub fn bytes_of(out: &Output) -> Vec<Vec<u8>> {
    let b = out.batch.column_by_name("bytes").unwrap().as_any().downcast_ref::<BinaryArray>().unwrap();
    (0..b.len()).map(|i| b.value(i).to_vec()).collect()
}

pub fn hashes_of(out: &Output) -> Vec<String> {
    let h = out.batch.column_by_name("content_hash").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    (0..h.len()).map(|i| h.value(i).to_string()).collect()
}

/// The message of the failure of input row `row`.
pub fn failure(out: &Output, row: usize) -> String {
    out.failures
        .iter()
        .find(|f| f.row == row)
        .map(|f| f.message.clone())
        .unwrap_or_else(|| panic!("row {row} did not fail: {:?}", out.failures))
}

/// A registry for the S3 server `s3` with the secret `secret` (a wrong one to test refusals);
/// one retry, so refusals fail fast.
pub fn registry(s3: &alluvium_integration::S3Server, secret: &str) -> std::sync::Arc<alluvium_object::ObjectStoreRegistry> {
    registry_at(&s3.endpoint, &s3.access_key, secret)
}

/// A registry for the S3 server at `endpoint` with these keys; one retry, so refusals fail fast.
pub fn registry_at(endpoint: &str, key: &str, secret: &str) -> std::sync::Arc<alluvium_object::ObjectStoreRegistry> {
    let cfg: alluvium_object::StoreConfig = toml::from_str(&format!(
        "max_retries = 1\nretry_timeout = \"5s\"\n[s3]\nendpoint = '{endpoint}'\naccess_key_id = '{key}'\nsecret_access_key = '{secret}'\nregion = 'us-east-1'\nallow_http = 'true'\n",
    ))
    .unwrap();
    std::sync::Arc::new(alluvium_object::ObjectStoreRegistry::new(cfg))
}
