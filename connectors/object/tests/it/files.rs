//! `file://` references stay inside their roots: no `..` escapes, no symlink escapes.

use std::sync::Arc;

use alluvium_core::types::ObjectRef;
use alluvium_object::{AccessPolicy, Fetch, ObjectStoreRegistry, StoreConfig};

use crate::common::*;

#[tokio::test]
async fn file_refs_are_confined_to_their_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/ok.txt"), b"inside").unwrap();
    std::fs::write(dir.path().join("secret.txt"), b"outside").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt")).unwrap();
    let url = |p: &std::path::Path| format!("file://{}", p.display());

    let cfg = StoreConfig { access: AccessPolicy::default().allow_file_root(&root), ..Default::default() };
    let f = Fetch::new(Arc::new(ObjectStoreRegistry::new(cfg)));
    let out = fetch(
        &f,
        vec![
            ObjectRef::new(url(&root.join("sub/ok.txt"))),
            ObjectRef::new(format!("{}/sub/../../secret.txt", url(&root))),
            ObjectRef::new(url(&root.join("link.txt"))),
            ObjectRef::new(url(&dir.path().join("secret.txt"))),
            ObjectRef::new(url(&root.join("nope.txt"))),
        ],
    )
    .await;
    assert_eq!(bytes_of(&out), vec![b"inside".to_vec()]);
    for row in [1, 2, 3] {
        assert!(failure(&out, row).contains("outside the allowed file_roots"), "row {row}: {}", failure(&out, row));
    }
    assert!(failure(&out, 4).contains("not found"), "{}", failure(&out, 4));

    // No roots configured: no file:// ref at all.
    let none = Fetch::new(Arc::new(ObjectStoreRegistry::default()));
    let out = fetch(&none, vec![ObjectRef::new(url(&root.join("sub/ok.txt")))]).await;
    assert!(failure(&out, 0).contains("no file_roots"), "{}", failure(&out, 0));
}

#[tokio::test]
async fn unsupported_schemes_and_non_uris_are_dead_letters() {
    let f = Fetch::new(Arc::new(ObjectStoreRegistry::default()));
    let out = fetch(&f, vec![ObjectRef::new("ftp://host/x"), ObjectRef::new("not a uri")]).await;
    assert!(failure(&out, 0).contains("not supported"), "{}", failure(&out, 0));
    assert!(failure(&out, 1).contains("not a URI"), "{}", failure(&out, 1));
}
