//! The hostile-reference corpus (`fuzz/hostile/refs.txt`): traversal, `/proc`, encoded dots, NUL,
//! devices, metadata addresses in every spelling, hosts that only look allowed, other buckets and
//! schemes. Every one is refused by the access policy before any IO.

use alluvium_object::{AccessPolicy, ObjectStoreRegistry, StoreConfig};

#[tokio::test]
async fn every_hostile_reference_is_refused() {
    let corpus = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/hostile/refs.txt")).unwrap();
    // The corpus's file root, made real: a file inside, and a link inside that leads out.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("ok.jpg"), b"fine").unwrap();
    std::os::unix::fs::symlink("/etc", root.join("link-to-etc")).unwrap();
    let corpus = corpus.replace("/srv/alluvium-hostile/data", root.to_str().unwrap());
    let policy = AccessPolicy::default().allow_file_root(&root).allow_http_host("images.example.com").allow_bucket("lake");
    let registry = ObjectStoreRegistry::new(StoreConfig { access: policy, ..Default::default() });
    let mut n = 0;
    for uri in corpus.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let resolved = registry.resolve(uri).await.expect("a reference is never a pipeline error");
        assert!(resolved.is_err(), "`{uri}` was not refused");
        n += 1;
    }
    assert!(n >= 25, "{n} references");
    // The policy is not refusing everything: the file inside the root resolves.
    let inside = format!("file://{}/ok.jpg", root.display());
    assert!(registry.resolve(&inside).await.unwrap().is_ok(), "{inside}");
}
