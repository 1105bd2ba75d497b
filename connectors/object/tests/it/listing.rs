//! What the listing of a local directory leaves out: FIFOs and other non-regular files (never
//! opened), links out of the listing root; and what it makes dead letters of: names that cannot
//! be keys.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alluvium_core::arrow::array::{Array, AsArray};
use alluvium_core::types::ObjectRef;
use alluvium_core::{Discovery, Source};
use alluvium_object::{AccessPolicy, Fetch, ObjectStoreRegistry, ObjectStoreSource, StoreConfig};

use crate::common::*;

/// Long enough for any listing here; a listing that hangs fails the test after it.
const LIMIT: Duration = Duration::from_secs(30);

fn registry_for(root: &Path) -> Arc<ObjectStoreRegistry> {
    let cfg = StoreConfig { access: AccessPolicy::default().allow_file_root(root), ..Default::default() };
    Arc::new(ObjectStoreRegistry::new(cfg))
}

/// A canonical directory `data` in a fresh temporary directory (kept alive by the guard).
fn root() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap().join("data");
    std::fs::create_dir_all(&root).unwrap();
    (dir, root)
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo").arg(path).status().expect("running mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Opens `fifo` for writing on a thread of its own: a read that waits on the FIFO (the defect
/// under test) gets its writer and ends, so the test fails instead of hanging in the runtime's
/// shutdown, which waits for its blocking threads.
fn unblock(fifo: &Path) {
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || {
        let _ = std::fs::OpenOptions::new().write(true).open(fifo);
    });
}

/// The keys (relative to `root`) of the rows the source emits, in order, and the dead letters
/// its readers reject: (uri, reason).
async fn read_all(src: &ObjectStoreSource, root: &Path) -> (Vec<String>, Vec<(String, String)>) {
    let base = format!("file://{}/", root.display());
    let mut e = src.enumerator(None).await.unwrap();
    let (mut keys, mut rejected) = (Vec::new(), Vec::new());
    while let Discovery::Splits(splits) = e.discover().await.unwrap() {
        for split in splits {
            let mut r = src.open(&split, None).await.unwrap();
            while let Some(b) = r.next_batch().await.unwrap() {
                let uri = b.column_by_name("ref").unwrap().as_struct().column_by_name("uri").unwrap().as_string::<i32>().clone();
                keys.extend((0..uri.len()).map(|i| uri.value(i).strip_prefix(&base).unwrap_or(uri.value(i)).to_string()));
                if let Some(bad) = r.rejected() {
                    let uris = bad.records.column_by_name("uri").unwrap().as_string::<i32>().clone();
                    for f in &bad.failures {
                        rejected.push((uris.value(f.row).to_string(), f.message.clone()));
                    }
                }
            }
        }
    }
    (keys, rejected)
}

/// A FIFO among the files is skipped without being opened (opening it waits for a writer
/// forever); the listing ends with the regular files. A fetch of a `file://` ref naming the FIFO
/// is a dead letter, not a read that never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_is_skipped_by_the_listing_and_refused_by_fetch() {
    let (_dir, root) = root();
    std::fs::write(root.join("a.txt"), b"a").unwrap();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/c.txt"), b"c").unwrap();
    std::fs::write(root.join("z.txt"), b"z").unwrap();
    let fifo = root.join("pipe.txt");
    mkfifo(&fifo);
    mkfifo(&root.join("sub/pipe"));
    let reg = registry_for(&root);

    let src = ObjectStoreSource::prefix(reg.clone(), format!("file://{}/", root.display())).split_objects(2);
    let listed = tokio::time::timeout(LIMIT, read_all(&src, &root)).await;
    let Ok((keys, rejected)) = listed else {
        unblock(&fifo);
        unblock(&root.join("sub/pipe"));
        panic!("the listing of a directory with a FIFO did not end within {LIMIT:?}");
    };
    assert_eq!(keys, ["a.txt", "sub/c.txt", "z.txt"], "the regular files only");
    assert!(rejected.is_empty(), "a FIFO is skipped, not a dead letter: {rejected:?}");

    let f = Fetch::new(reg);
    let refs = vec![
        ObjectRef::new(format!("file://{}", root.join("a.txt").display())),
        ObjectRef::new(format!("file://{}", fifo.display())),
    ];
    let Ok(out) = tokio::time::timeout(LIMIT, fetch(&f, refs)).await else {
        unblock(&fifo);
        panic!("a fetch of a FIFO did not end within {LIMIT:?}");
    };
    assert_eq!(bytes_of(&out), vec![b"a".to_vec()]);
    assert!(failure(&out, 1).contains("not a regular file"), "{}", failure(&out, 1));
}

/// A link out of the listing root (to a directory or a file elsewhere) is not followed: none of
/// what lies outside is listed. Links inside the root are followed, each directory once.
#[tokio::test]
async fn links_out_of_the_root_are_not_followed() {
    let (_dir, root) = root();
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = elsewhere.path().canonicalize().unwrap();
    for f in ["secret.txt", "etc/passwd"] {
        std::fs::create_dir_all(outside.join(f).parent().unwrap()).unwrap();
        std::fs::write(outside.join(f), f).unwrap();
    }
    std::fs::write(root.join("a.txt"), b"a").unwrap();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/b.txt"), b"b").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out")).unwrap(); // a directory outside
    std::os::unix::fs::symlink(outside.join("etc"), root.join("sub/etc")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("secret.txt")).unwrap(); // a file outside
    std::os::unix::fs::symlink(root.join("sub"), root.join("z-sub")).unwrap(); // inside: `sub/` read once
    std::os::unix::fs::symlink(root.join("sub/b.txt"), root.join("z.txt")).unwrap(); // a file inside
    std::os::unix::fs::symlink(root.join("nothing"), root.join("dangling")).unwrap();

    let src = ObjectStoreSource::prefix(registry_for(&root), format!("file://{}/", root.display()));
    let (keys, rejected) = tokio::time::timeout(LIMIT, read_all(&src, &root)).await.expect("the listing ends");
    assert_eq!(keys, ["a.txt", "sub/b.txt", "z.txt"], "nothing from outside the root");
    assert!(rejected.is_empty(), "links are skipped, not dead letters: {rejected:?}");
}

/// A file (or directory) whose name is not UTF-8 cannot be an object key: it is a dead letter
/// with its name percent-escaped and the reason, in key order among the objects, not a warning
/// that counts nowhere.
#[tokio::test]
async fn a_name_that_is_not_utf8_is_a_dead_letter_with_its_name_escaped() {
    use std::os::unix::ffi::OsStrExt;
    let (_dir, root) = root();
    std::fs::write(root.join("a.txt"), b"a").unwrap();
    let bad_file = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9 100%.txt"));
    let bad_dir = root.join(std::ffi::OsStr::from_bytes(b"d\xff"));
    if let Err(e) = std::fs::write(&bad_file, b"x").and_then(|()| std::fs::create_dir_all(&bad_dir)) {
        eprintln!("skipped: this filesystem refuses names that are not UTF-8 ({e})");
        return;
    }
    std::fs::write(bad_dir.join("inside.txt"), b"y").unwrap();
    std::fs::write(root.join("z.txt"), b"z").unwrap();

    let src = ObjectStoreSource::prefix(registry_for(&root), format!("file://{}/", root.display()))
        .extensions(["txt"])
        .split_objects(2);
    let (keys, rejected) = tokio::time::timeout(LIMIT, read_all(&src, &root)).await.expect("the listing ends");
    assert_eq!(keys, ["a.txt", "z.txt"]);
    let base = format!("file://{}/", root.display());
    let names: Vec<&str> = rejected.iter().map(|(uri, _)| uri.strip_prefix(&base).unwrap_or(uri)).collect();
    assert_eq!(names, ["caf%E9 100%25.txt", "d%FF/"], "the names with their bytes escaped: {rejected:?}");
    for (uri, why) in &rejected {
        assert!(why.contains("not UTF-8"), "{uri}: {why}");
    }
}
