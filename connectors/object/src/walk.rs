//! A local directory listed in key order, as it is walked: what S3 gives a listing for free.
//!
//! `object_store`'s local listing walks directories in the order the filesystem returns them, so
//! a bounded listing of a local directory would have to be read whole and sorted before the first
//! split. [`sorted`] reads one directory at a time and sorts just its entries, with a directory
//! named as its keys start (`name/`), so the files come out in the byte order of their keys.
//! Memory is the entries of the directories on the current path; a restore starts after a key,
//! and skips whole subtrees that sort before it. Symbolic links are followed, each directory once.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use alluvium_core::{Error, Result};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

/// One step of the walk: a file's key, or a directory (its key ends with `/`) still to read.
struct Pending {
    key: String,
    path: PathBuf,
    dir: bool,
}

/// The files under `root` (a directory) in the byte order of their keys (their paths relative
/// to `root`), after `after` when given, with their metadata as `store` (the filesystem root)
/// lists it.
pub(crate) fn sorted(
    store: Arc<dyn ObjectStore>,
    root: PathBuf,
    after: Option<String>,
) -> BoxStream<'static, Result<ObjectMeta>> {
    let start = vec![Pending { key: String::new(), path: root, dir: true }];
    let keys = futures::stream::try_unfold((start, HashSet::new(), after), |(mut stack, mut seen, after)| async move {
        while let Some(next) = stack.pop() {
            if !next.dir {
                return Ok(Some((next.path, (stack, seen, after))));
            }
            // A subtree whose keys all sort before `after` is skipped whole.
            if let Some(a) = &after {
                if !next.key.is_empty() && next.key.as_str() < a.as_str() && !a.starts_with(&next.key) {
                    continue;
                }
            }
            let (children, id) = tokio::task::spawn_blocking(move || read_sorted(&next.key, &next.path))
                .await
                .map_err(|e| Error::internal(format!("listing a directory: {e}")))??;
            if !seen.insert(id) {
                continue;
            }
            // Last first: the stack pops the smallest key next.
            stack.extend(children.into_iter().rev().filter(|c| c.dir || after.as_deref().is_none_or(|a| c.key.as_str() > a)));
        }
        Ok(None)
    });
    // The metadata as the store's own listing gives it (its ETag is the store's to compute, and
    // fetches compare it), at the cost of a second `stat` per file.
    keys.map_ok(move |path| {
        let store = store.clone();
        async move {
            let location = Path::from_absolute_path(&path)
                .map_err(|e| Error::config(format!("`{}` cannot be an object path: {e}", path.display())))?;
            store.head(&location).await.map_err(|e| Error::from(e).context(format!("listing {}", path.display())))
        }
    })
    .try_buffered(16)
    .boxed()
}

/// The entries of directory `path` (whose key is `key`), sorted by key, and the directory's
/// identity (device, inode) to visit it once.
fn read_sorted(key: &str, path: &std::path::Path) -> Result<(Vec<Pending>, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    let failed = |e: std::io::Error| Error::external(format!("listing `{}`: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(failed)?;
    let mut children = Vec::new();
    for entry in std::fs::read_dir(path).map_err(failed)? {
        let entry = entry.map_err(failed)?;
        let Ok(name) = entry.file_name().into_string() else {
            tracing::warn!(path = %entry.path().display(), "skipping a file whose name is not UTF-8");
            continue;
        };
        // Follows links; a dangling link is not an object.
        let Ok(m) = std::fs::metadata(entry.path()) else { continue };
        let dir = m.is_dir();
        let child = if dir { format!("{key}{name}/") } else { format!("{key}{name}") };
        children.push(Pending { key: child, path: entry.path(), dir });
    }
    children.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((children, (meta.dev(), meta.ino())))
}
