//! # alluvium-object
//!
//! Object IO: where the bytes behind [`ObjectRef`](alluvium_core::types::ObjectRef)s come from.
//!
//! * [`ObjectStoreRegistry`] — an explicit value (no global registration) that turns a URI into a
//!   store and a path: `s3://`, `gs://`, `az://`/`abfs://`, `http(s)://`, `file://`. Credentials and
//!   endpoints come from [`StoreConfig`] and the usual environment variables; stores are built once
//!   per bucket/host and shared, wrapped in a per-store concurrency limit, with `object_store`'s
//!   retries (exponential backoff with jitter on throttling, 5xx and timeouts).
//! * [`AccessPolicy`] — references from untrusted manifests cannot read local secrets or reach
//!   internal services: `file://` refs are confined to configured roots (no `..` or symlink escapes),
//!   `http(s)://` refs to an allow-list of hosts, and never to loopback, link-local or private
//!   addresses unless allowed.
//! * [`Fetch`] — the stage that turns an ObjectRef column into bytes: streamed, hashed with blake3
//!   while reading, bounded by a maximum object size and a memory budget in bytes, pinned to the
//!   reference's ETag/version. Every failure of an object is a dead letter with a precise reason;
//!   a store that does not answer is waited for, up to `outage_timeout` ([`outage`]).
//!
//! * [`Hash`](struct@Hash) and [`Probe`] — the content hash (streamed, constant memory) and the sniffed content
//!   type and size of each object, without keeping its bytes.
//! * [`RangedReader`] — blocking random access to an object by ranged GETs through one bounded
//!   buffer: the registry is an [`OpenObject`](alluvium_core::OpenObject) for codecs that seek
//!   (video) ([`open`]).
//! * [`ObjectStoreSource`] — every object under a prefix as ObjectRef rows (a bounded listing, an
//!   S3 Inventory report ([`inventory`]), or continuous discovery).
//! * [`ManifestSource`] — the rows of CSV, JSON Lines or Parquet manifests as ObjectRef rows, read
//!   in parallel, with malformed rows as dead letters.
//!
//! Layout: [`config`] (typed settings, validated without IO), [`access`], [`registry`], [`fetch`],
//! [`outage`], [`hash`], [`source`], [`inventory`], [`s3`] (S3 calls beyond `object_store`:
//! versions, tags), [`manifest`].

pub mod access;
pub mod config;
pub mod fetch;
pub mod hash;
pub mod inventory;
pub mod manifest;
pub mod open;
pub mod outage;
pub mod registry;
pub mod s3;
pub mod source;
mod walk;

pub use access::AccessPolicy;
pub use config::StoreConfig;
pub use fetch::Fetch;
pub use hash::{sniff, Hash, Probe};
pub use manifest::{ManifestFormat, ManifestSource};
pub use open::RangedReader;
pub use registry::ObjectStoreRegistry;
pub use source::ObjectStoreSource;
