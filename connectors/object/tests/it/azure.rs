//! `az://` references against Azurite (Azure's storage emulator, a real server speaking the Blob
//! API with SharedKey signatures).

use std::sync::Arc;

use alluvium_core::types::ObjectRef;
use alluvium_integration::AzuriteServer;
use alluvium_object::{Fetch, ObjectStoreRegistry, StoreConfig};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::common::*;

#[tokio::test]
async fn fetches_from_azure_blob_storage() {
    let Some(az) = AzuriteServer::start() else { return };
    let container = az.container();
    // object_store's emulator mode reads the endpoint from the environment; only Azure tests read it.
    for (k, v) in az.env() {
        std::env::set_var(k, v);
    }
    let mut cfg = StoreConfig::default();
    cfg.azure.insert("use_emulator".into(), "true".into());
    let reg = Arc::new(ObjectStoreRegistry::new(cfg));
    let (store, _) = reg.resolve(&format!("az://{container}/x")).await.unwrap().unwrap();
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 199) as u8).collect();
    store.put(&Path::from("photos/a.bin"), PutPayload::from(body.clone())).await.unwrap();

    let out = fetch(
        &Fetch::new(reg),
        vec![
            ObjectRef::new(format!("az://{container}/photos/a.bin")),
            ObjectRef::new(format!("az://{container}/photos/a.bin")).range(100, 10),
            ObjectRef::new(format!("az://{container}/photos/missing.bin")),
        ],
    )
    .await;
    assert_eq!(bytes_of(&out), vec![body.clone(), body[100..110].to_vec()]);
    assert_eq!(hashes_of(&out)[0], blake3::hash(&body).to_hex().to_string());
    assert_eq!(failure(&out, 2), "object not found");
}
