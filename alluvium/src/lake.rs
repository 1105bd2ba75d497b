//! `[sink]` sections for lake tables: `type = "delta"`, `"iceberg"` and `"lance"`.
//!
//! ```toml
//! [sink]
//! type = "delta"                        # or "lance": the table is its location
//! table = "${ALLUVIUM_OUTPUT}/images"   # a directory or an s3:// URL
//! target_file_bytes = 134217728         # roll data files at this size (128 MiB)
//! orphan_grace = "1h"                   # files of failed attempts are deleted after this (not for
//!                                       # Lance: its own cleanup deletes them after 7 days)
//!
//! [sink]
//! type = "iceberg"
//! table = "default.images"              # namespace.table
//! catalog = "${ALLUVIUM_CATALOG}"       # a SQLite file, postgres://… or http(s):// (REST)
//! warehouse = "${ALLUVIUM_OUTPUT}"      # where new tables' files go (a REST catalog's own)
//! expire_snapshots_every = 50           # commits; by the table's history.expire.* (0: never)
//! [sink.table_properties]               # of a table the sink creates, e.g. keep 1 hour of snapshots:
//! "history.expire.max-snapshot-age-ms" = "3600000"
//! [sink.catalog_properties]             # passed to the catalog client, e.g. REST credentials:
//! token = "${ICEBERG_TOKEN}"            #   a bearer token, or `credential = "id:secret"` (OAuth2),
//! "header.X-API-Key" = "${API_KEY}"     #   or any HTTP header
//! ```

use std::sync::Arc;
use std::time::Duration;

use alluvium_core::sink::Sink;
use alluvium_core::{Error, Result};
use serde::Deserialize;

#[cfg(any(feature = "delta", feature = "iceberg"))]
fn parquet(compression: &Option<String>, row_group_bytes: Option<u64>) -> Result<alluvium_parquet::ParquetFormat> {
    let mut format = alluvium_parquet::ParquetFormat::default();
    if let Some(c) = compression {
        format = format.compression(c).map_err(|e| e.context("key `compression`"))?;
    }
    if let Some(b) = row_group_bytes {
        format = format.row_group_bytes(b as usize);
    }
    Ok(format)
}

fn non_empty(value: &str, key: &str, kind: &str, example: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::config(format!("{kind} sink: `{key}` is empty; set it, for example `{key} = \"{example}\"`")));
    }
    Ok(())
}

/// `type = "delta"`.
#[cfg(feature = "delta")]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaConfig {
    /// The table's location.
    pub table: String,
    /// Parquet compression (default zstd).
    #[serde(default)]
    pub compression: Option<String>,
    /// Roll data files at this many bytes.
    #[serde(default)]
    pub target_file_bytes: Option<u64>,
    /// Parquet row-group size in bytes.
    #[serde(default)]
    pub row_group_bytes: Option<u64>,
    /// Delete files of failed attempts after this long (default 1h).
    #[serde(default, with = "crate::job::opt_duration")]
    pub orphan_grace: Option<Duration>,
}

#[cfg(feature = "delta")]
impl DeltaConfig {
    /// Builds the sink.
    pub fn build(&self) -> Result<Arc<dyn Sink>> {
        non_empty(&self.table, "table", "delta", "./out/images")?;
        let mut c = alluvium_delta::DeltaSinkConfig::new(self.table.clone());
        c.parquet = parquet(&self.compression, self.row_group_bytes)?;
        if let Some(b) = self.target_file_bytes {
            c.target_file_bytes = b.max(1);
        }
        if let Some(g) = self.orphan_grace {
            c.orphan_grace = g;
        }
        Ok(Arc::new(alluvium_delta::DeltaSink::new(c)))
    }
}

/// `type = "iceberg"`.
#[cfg(feature = "iceberg")]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergConfig {
    /// `namespace.table`.
    pub table: String,
    /// The catalog: a SQLite file, a postgres:// URL or a REST http(s):// URL.
    pub catalog: String,
    /// Where new tables' files go.
    pub warehouse: String,
    /// The catalog's name (default `alluvium`).
    #[serde(default)]
    pub catalog_name: Option<String>,
    /// Properties for the catalog client (REST: `token`, `credential`, `header.NAME`, …).
    #[serde(default)]
    pub catalog_properties: std::collections::HashMap<String, String>,
    /// Parquet compression (default zstd).
    #[serde(default)]
    pub compression: Option<String>,
    /// Roll data files at this many bytes.
    #[serde(default)]
    pub target_file_bytes: Option<u64>,
    /// Parquet row-group size in bytes.
    #[serde(default)]
    pub row_group_bytes: Option<u64>,
    /// Delete files of failed attempts after this long (default 1h).
    #[serde(default, with = "crate::job::opt_duration")]
    pub orphan_grace: Option<Duration>,
    /// Expire snapshots (by the table's `history.expire.*` properties) every this many commits
    /// (default 50; 0: never).
    #[serde(default)]
    pub expire_snapshots_every: Option<u64>,
    /// Properties of the table when the sink creates it (`history.expire.max-snapshot-age-ms`,
    /// `write.*`, …); an existing table keeps its own.
    #[serde(default)]
    pub table_properties: std::collections::HashMap<String, String>,
}

#[cfg(feature = "iceberg")]
impl IcebergConfig {
    /// Builds the sink (the catalog is connected on first use).
    pub fn build(&self) -> Result<Arc<dyn Sink>> {
        non_empty(&self.catalog, "catalog", "iceberg", "./warehouse/catalog.db")?;
        non_empty(&self.warehouse, "warehouse", "iceberg", "./warehouse")?;
        let catalog = iceberg_catalog(&self.catalog, &self.warehouse, &self.catalog_name, &self.catalog_properties)?;
        let mut c = alluvium_iceberg::IcebergSinkConfig::new(self.table.clone());
        c.parquet = parquet(&self.compression, self.row_group_bytes)?;
        if let Some(b) = self.target_file_bytes {
            c.target_file_bytes = b.max(1);
        }
        if let Some(g) = self.orphan_grace {
            c.orphan_grace = g;
        }
        if let Some(n) = self.expire_snapshots_every {
            c.expire_snapshots_every = n;
        }
        c.properties.extend(self.table_properties.clone());
        let sink = alluvium_iceberg::IcebergSink::new(c, catalog);
        sink.validate().map_err(|e| e.context("key `table`"))?;
        Ok(Arc::new(sink))
    }
}

/// The Iceberg catalog at `uri` (a `warehouse` may be empty for a reader), connected on first use.
#[cfg(feature = "iceberg")]
pub(crate) fn iceberg_catalog(
    uri: &str,
    warehouse: &str,
    name: &Option<String>,
    properties: &std::collections::HashMap<String, String>,
) -> Result<Arc<alluvium_catalog::IcebergCatalog>> {
    let mut catalog = alluvium_catalog::IcebergCatalogConfig::new(uri, warehouse);
    catalog.kind().map_err(|e| e.context("key `catalog`"))?;
    if let Some(n) = name {
        catalog.name = n.clone();
    }
    catalog.properties.extend(properties.clone());
    Ok(Arc::new(alluvium_catalog::IcebergCatalog::new(catalog)))
}

/// `type = "lance"`.
#[cfg(feature = "lance")]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanceConfig {
    /// The dataset's location.
    pub table: String,
    /// Start a new data file after this many rows (Lance's `max_rows_per_file`).
    #[serde(default)]
    pub max_rows_per_file: Option<usize>,
    /// Not for Lance (an error naming why): Lance names its data files itself, so the sink cannot
    /// tell a failed attempt's files from another writer's in flight; Lance's own cleanup deletes
    /// unreferenced files after 7 days.
    #[serde(default, with = "crate::job::opt_duration")]
    pub orphan_grace: Option<Duration>,
}

#[cfg(feature = "lance")]
impl LanceConfig {
    /// Builds the sink.
    pub fn build(&self) -> Result<Arc<dyn Sink>> {
        non_empty(&self.table, "table", "lance", "./out/images.lance")?;
        let mut c = alluvium_lance::LanceSinkConfig::new(self.table.clone());
        if let Some(n) = self.max_rows_per_file {
            c.max_rows_per_file = n.max(1);
        }
        if self.orphan_grace.is_some() {
            return Err(Error::config(
                "lance sink: `orphan_grace` does not apply to Lance: it names its data files itself, so a failed \
                 attempt's files cannot be told from another writer's still in flight; they are referenced by no \
                 version, and Lance's own cleanup (`cleanup_old_versions`, e.g. from pylance) deletes such files \
                 after 7 days. Remove the key",
            ));
        }
        Ok(Arc::new(alluvium_lance::LanceSink::new(c)))
    }
}
