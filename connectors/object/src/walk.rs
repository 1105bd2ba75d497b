//! A local directory listed in key order, as it is walked: what S3 gives a listing for free.
//!
//! `object_store`'s local listing walks directories in the order the filesystem returns them, so
//! a bounded listing of a local directory would have to be read whole and sorted before the first
//! split. [`sorted`] reads one directory at a time and sorts just its entries, with a directory
//! named as its keys start (`name/`), so the files come out in the byte order of their keys.
//! Memory is the entries of the directories on the current path; a restore starts after a key,
//! and skips whole subtrees that sort before it.
//!
//! What the walk does not list, and why:
//!
//! * **Only regular files are objects.** FIFOs, sockets and devices are skipped without being
//!   opened (opening a FIFO waits for a writer forever), told from the directory entry's type.
//! * **Links stay inside the root.** A symbolic link is followed only when its canonical target
//!   (every link resolved) lies inside the listing root (canonical too); a link out of the root,
//!   or a dangling one, is skipped. Each directory is read once, so a link cycle ends.
//! * **Names must be able to be keys.** An entry whose name is not UTF-8, or holds a control
//!   character, cannot be an object key: it becomes a dead letter ([`Walked::Unreadable`]) under
//!   its name with those bytes (and `%`) percent-escaped, so it is counted and can be found.
//! * Names ending in `#` and digits are `object_store`'s uploads in progress; its own listing
//!   skips them, and so does this one.
//!
//! The skipped entries are counted, and the counts logged (WARN) when the listing ends. A listing
//! dropped mid-way (a stop) also stops the directory read in progress between two entries.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use alluvium_core::{Error, Result};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

/// What the walk found under the root.
pub(crate) enum Walked {
    /// A regular file, with its metadata as the store gives it.
    Object(ObjectMeta),
    /// An entry that cannot be an object (its name cannot be a key): a dead letter.
    Unreadable {
        /// Its path as an object's location reads (no leading `/`), the key's bytes that a key
        /// cannot hold percent-escaped; a directory's ends with `/`.
        location: String,
        /// Why it is not listed.
        why: String,
        /// Last modified, µs since the Unix epoch, when known.
        modified_us: Option<i64>,
    },
}

/// What an entry of a directory is to the walk.
enum Kind {
    /// A directory (or a link to one inside the root), still to read.
    Dir,
    /// A regular file (or a link to one inside the root).
    File,
    /// An entry whose name cannot be a key: a dead letter, never read.
    Unreadable { why: String, modified_us: Option<i64> },
}

/// One step of the walk: a file's key, or a directory (its key ends with `/`) still to read.
struct Pending {
    key: String,
    path: PathBuf,
    kind: Kind,
}

/// What the walk hands on to be looked up: a file, or a dead letter.
enum Step {
    File(PathBuf),
    Unreadable { key: String, why: String, modified_us: Option<i64> },
}

/// The entries a listing left out, by reason.
#[derive(Debug, Default)]
struct Skipped {
    /// FIFOs, sockets, devices (or links to them).
    not_regular: u64,
    /// Links whose target lies outside the listing root.
    links_outside_root: u64,
    /// Links to nothing.
    broken_links: u64,
    /// `object_store`'s uploads in progress (`name#123`).
    uploads_in_progress: u64,
    /// Names that cannot be keys (each a dead letter).
    unreadable_names: u64,
    /// The first few entries left out, for the log.
    examples: Vec<String>,
}

impl Skipped {
    fn note(&mut self, path: &std::path::Path, why: &str) {
        tracing::debug!(path = %path.display(), "listing: {why}");
        if self.examples.len() < 5 {
            self.examples.push(format!("{} ({why})", path.display()));
        }
    }

    fn merge(&mut self, other: Skipped) {
        self.not_regular += other.not_regular;
        self.links_outside_root += other.links_outside_root;
        self.broken_links += other.broken_links;
        self.uploads_in_progress += other.uploads_in_progress;
        self.unreadable_names += other.unreadable_names;
        let room = 5usize.saturating_sub(self.examples.len());
        self.examples.extend(other.examples.into_iter().take(room));
    }

    /// Logs the counts at the end of the listing of `root`, when something was left out.
    fn report(&self, root: &std::path::Path) {
        let total =
            self.not_regular + self.links_outside_root + self.broken_links + self.uploads_in_progress + self.unreadable_names;
        if total == 0 {
            return;
        }
        tracing::warn!(
            root = %root.display(),
            not_regular = self.not_regular,
            links_outside_root = self.links_outside_root,
            broken_links = self.broken_links,
            uploads_in_progress = self.uploads_in_progress,
            unreadable_names = self.unreadable_names,
            examples = ?self.examples,
            "the listing left out {total} entries that are not objects: FIFOs, sockets and devices, links out of the \
             listing root or to nothing, and uploads in progress were skipped; names that cannot be keys became dead \
             letters"
        );
    }
}

/// Set when the listing is dropped: a directory read in progress (on a blocking thread) stops at
/// its next entry.
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The walk's state between two steps.
struct Walk {
    stack: Vec<Pending>,
    /// The directories read, by (device, inode).
    seen: HashSet<(u64, u64)>,
    after: Option<String>,
    /// The root as given (keys are relative to it) and, once read, canonical (links are followed
    /// only into it).
    root: PathBuf,
    canonical: Option<Arc<PathBuf>>,
    skipped: Skipped,
    stop: Stop,
}

/// The files under `root` (a directory) in the byte order of their keys (their paths relative
/// to `root`), after `after` when given, with their metadata as `store` (the filesystem root)
/// lists it; the entries whose names cannot be keys come as [`Walked::Unreadable`], in order.
pub(crate) fn sorted(store: Arc<dyn ObjectStore>, root: PathBuf, after: Option<String>) -> BoxStream<'static, Result<Walked>> {
    // The location of the root as the store's metadata shows it, for the dead letters' paths.
    let root_location = match Path::from_absolute_path(&root) {
        Ok(p) => p.to_string(),
        Err(_) => {
            use std::os::unix::ffi::OsStrExt;
            escape(root.as_os_str().as_bytes()).trim_matches('/').to_string()
        }
    };
    let walk = Walk {
        stack: vec![Pending { key: String::new(), path: root.clone(), kind: Kind::Dir }],
        seen: HashSet::new(),
        after,
        root,
        canonical: None,
        skipped: Skipped::default(),
        stop: Stop(Arc::new(AtomicBool::new(false))),
    };
    let steps = futures::stream::try_unfold(walk, |mut w| async move {
        while let Some(next) = w.stack.pop() {
            let dir = match next {
                Pending { kind: Kind::File, path, .. } => return Ok(Some((Step::File(path), w))),
                Pending { key, kind: Kind::Unreadable { why, modified_us }, .. } => {
                    return Ok(Some((Step::Unreadable { key, why, modified_us }, w)));
                }
                dir => dir,
            };
            // A subtree whose keys all sort before `after` is skipped whole.
            if let Some(a) = &w.after {
                if !dir.key.is_empty() && dir.key.as_str() < a.as_str() && !a.starts_with(&dir.key) {
                    continue;
                }
            }
            let (root, canonical, stop) = (w.root.clone(), w.canonical.clone(), w.stop.0.clone());
            let (listed, canonical) = tokio::task::spawn_blocking(move || -> Result<(Listed, Arc<PathBuf>)> {
                let canonical = match canonical {
                    Some(c) => c,
                    None => Arc::new(std::fs::canonicalize(&root).map_err(|e| {
                        Error::external(format!("listing `{}`: cannot resolve the directory: {e}", root.display()))
                    })?),
                };
                Ok((read_sorted(&dir.key, &dir.path, &canonical, &stop)?, canonical))
            })
            .await
            .map_err(|e| Error::internal(format!("listing a directory: {e}")))??;
            w.canonical = Some(canonical);
            w.skipped.merge(listed.skipped);
            if !w.seen.insert(listed.id) {
                continue;
            }
            // Last first: the stack pops the smallest key next.
            let after = w.after.clone();
            w.stack.extend(
                listed
                    .children
                    .into_iter()
                    .rev()
                    .filter(|c| matches!(c.kind, Kind::Dir) || after.as_deref().is_none_or(|a| c.key.as_str() > a)),
            );
        }
        w.skipped.report(&w.root);
        Ok::<_, Error>(None)
    });
    // The metadata as the store's own listing gives it (its ETag is the store's to compute, and
    // fetches compare it), at the cost of a second `stat` per file. Only regular files get here:
    // the store opens the file to read it.
    steps
        .map_ok(move |step| look_up(store.clone(), root_location.clone(), step))
        .try_buffered(16)
        .try_filter_map(|w| futures::future::ready(Ok(w)))
        .boxed()
}

/// `step` as the listing gives it: a file with its metadata as the store gives it (none when it
/// was deleted since its directory was read), or a dead letter at its location under the root's
/// (`root_location`).
async fn look_up(store: Arc<dyn ObjectStore>, root_location: String, step: Step) -> Result<Option<Walked>> {
    match step {
        Step::Unreadable { key, why, modified_us } => {
            let location = if root_location.is_empty() { key } else { format!("{root_location}/{key}") };
            Ok(Some(Walked::Unreadable { location, why, modified_us }))
        }
        Step::File(path) => {
            let location = Path::from_absolute_path(&path)
                .map_err(|e| Error::config(format!("`{}` cannot be an object path: {e}", path.display())))?;
            match store.head(&location).await {
                Ok(meta) => Ok(Some(Walked::Object(meta))),
                // Deleted since its directory was read: not an object any more.
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(Error::from(e).context(format!("listing {}", path.display()))),
            }
        }
    }
}

/// A directory read: its entries sorted by key, its identity (device, inode) to visit it once,
/// and what it left out.
struct Listed {
    children: Vec<Pending>,
    id: (u64, u64),
    skipped: Skipped,
}

/// The entries of directory `path` (whose key is `key`), sorted by key; links are followed only to
/// targets inside `root` (canonical). Stops between two entries once `stop` is set.
fn read_sorted(key: &str, path: &std::path::Path, root: &std::path::Path, stop: &AtomicBool) -> Result<Listed> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let failed = |e: std::io::Error| Error::external(format!("listing `{}`: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(failed)?;
    let mut children = Vec::new();
    let mut skipped = Skipped::default();
    for entry in std::fs::read_dir(path).map_err(failed)? {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::internal(format!("listing `{}`: the listing was stopped", path.display())));
        }
        let entry = entry.map_err(failed)?;
        let entry_path = entry.path();
        // The type from the directory entry (no `stat` where the filesystem gives it); for
        // a link, its target's, when the target lies inside the root.
        let Ok(mut file_type) = entry.file_type() else { continue }; // gone since listed
        if file_type.is_symlink() {
            let target = match std::fs::canonicalize(&entry_path) {
                Ok(t) => t,
                Err(_) => {
                    skipped.broken_links += 1;
                    skipped.note(&entry_path, "a link to nothing");
                    continue;
                }
            };
            if !target.starts_with(root) {
                skipped.links_outside_root += 1;
                skipped.note(&entry_path, "a link out of the listing root, not followed");
                continue;
            }
            match std::fs::metadata(&target) {
                Ok(m) => file_type = m.file_type(),
                Err(_) => {
                    skipped.broken_links += 1;
                    skipped.note(&entry_path, "a link to nothing");
                    continue;
                }
            }
        }
        let dir = file_type.is_dir();
        if !dir && !file_type.is_file() {
            // A FIFO would block the first read that opens it; sockets and devices are no objects.
            skipped.not_regular += 1;
            skipped.note(&entry_path, "not a regular file (a FIFO, socket or device)");
            continue;
        }
        let raw = entry.file_name();
        let bytes = raw.as_bytes();
        let problem = match std::str::from_utf8(bytes) {
            Err(_) => Some("is not UTF-8"),
            Ok(name) if name.chars().any(|c| c.is_ascii_control()) => Some("holds a control character"),
            Ok(name) if !dir && upload_in_progress(name) => {
                skipped.uploads_in_progress += 1;
                skipped.note(&entry_path, "an upload in progress (`name#digits`)");
                continue;
            }
            Ok(_) => None,
        };
        // A key as the store's metadata will show it; escaped only where it cannot be one.
        let name = match problem {
            None => String::from_utf8_lossy(bytes).into_owned(),
            Some(_) => escape(bytes),
        };
        let child = if dir { format!("{key}{name}/") } else { format!("{key}{name}") };
        let kind = match problem {
            None if dir => Kind::Dir,
            None => Kind::File,
            Some(problem) => {
                skipped.unreadable_names += 1;
                skipped.note(&entry_path, "a name that cannot be a key (a dead letter)");
                let what = if dir { "the directory's name" } else { "the file name" };
                let modified_us = std::fs::metadata(&entry_path).ok().and_then(|m| m.modified().ok()).map(epoch_us);
                Kind::Unreadable {
                    why: format!(
                        "listing: {what} {problem}, so it cannot be an object key (shown with its bytes \
                         percent-escaped: `{name}`); rename it to list it{}",
                        if dir { " and the files under it" } else { "" }
                    ),
                    modified_us,
                }
            }
        };
        children.push(Pending { key: child, path: entry_path, kind });
    }
    children.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(Listed { children, id: (meta.dev(), meta.ino()), skipped })
}

/// Whether `name` is one of `object_store`'s uploads in progress (`name#123`), which its own
/// listing skips and its reads refuse.
fn upload_in_progress(name: &str) -> bool {
    name.split_once('#').is_some_and(|(_, suffix)| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
}

/// `name` as a key can hold it: UTF-8, with the bytes that are not UTF-8, the control characters
/// and `%` percent-escaped (`%FF`), so the escape reads back unambiguously.
pub(crate) fn escape(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' || c.is_ascii_control() {
                out.push_str(&format!("%{:02X}", c as u32));
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `t` in µs since the Unix epoch (negative before it).
fn epoch_us(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_reversibly() {
        assert_eq!(escape(b"plain name.jpg"), "plain name.jpg");
        assert_eq!(escape(b"caf\xe9.jpg"), "caf%E9.jpg");
        assert_eq!(escape(b"100%\x01"), "100%25%01");
        assert_eq!(escape("né.jpg".as_bytes()), "né.jpg");
    }

    #[test]
    fn uploads_in_progress_are_told_apart() {
        assert!(upload_in_progress("a.jpg#12"));
        assert!(!upload_in_progress("a.jpg#"));
        assert!(!upload_in_progress("a#b.jpg"));
        assert!(!upload_in_progress("a.jpg"));
    }
}
