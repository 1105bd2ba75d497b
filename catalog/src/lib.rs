//! Lake catalogs for Alluvium.
//!
//! * **Iceberg catalogs**: the SQL catalog on SQLite (embedded, the default) or PostgreSQL, and the
//!   REST catalog, chosen by the form of [`IcebergCatalogConfig::uri`]:
//!
//!   | `uri` | catalog |
//!   |---|---|
//!   | `/path/catalog.db`, `sqlite:///path/catalog.db` | SQL catalog on SQLite (file created when absent) |
//!   | `postgres://user:pass@host/db`, `postgresql://…` | SQL catalog on PostgreSQL |
//!   | `http://host:8181`, `https://…` | REST catalog |
//!
//!   The SQL catalog uses the same tables as the Java JDBC catalog and pyiceberg's `SqlCatalog`,
//!   so they read what Alluvium writes.
//! * **Storage** for Iceberg file IO on every store Alluvium supports ([`storage`]).
//! * Delta and Lance tables need no catalog: they are named by their location (a directory or an
//!   `s3://` URL), resolved like every other Alluvium location.
//!
//! Connections are made lazily and cached; a failed connection is retried on the next call, so
//! an unreachable catalog fails a region (which retries with backoff), not the process.

pub mod storage;

use std::collections::HashMap;
use std::sync::Arc;

use alluvium_core::error::redact;
use alluvium_core::{Error, Result};
use alluvium_iceberg::CatalogConnector;
use async_trait::async_trait;
use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};

pub use storage::{ObjectStorage, ObjectStorageFactory};

/// Where an Iceberg catalog is and where its tables' files go.
#[derive(Debug, Clone)]
pub struct IcebergCatalogConfig {
    /// The catalog's name (default `alluvium`); readers must use the same name for a SQL catalog.
    pub name: String,
    /// The catalog: a SQLite file, a PostgreSQL URL or a REST URL (see the [crate docs](crate)).
    pub uri: String,
    /// Where new tables' files go: a directory or an `s3://` URL; for a REST catalog, the
    /// warehouse to ask for. Empty: none (enough to read tables).
    pub warehouse: String,
    /// Extra catalog properties (REST credentials, pool sizes).
    pub properties: HashMap<String, String>,
}

/// The kind of catalog a `uri` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogKind {
    /// SQL catalog on SQLite.
    Sqlite,
    /// SQL catalog on PostgreSQL.
    Postgres,
    /// REST catalog.
    Rest,
}

impl IcebergCatalogConfig {
    /// A catalog at `uri` with tables under `warehouse`.
    pub fn new(uri: impl Into<String>, warehouse: impl Into<String>) -> Self {
        Self { name: "alluvium".into(), uri: uri.into(), warehouse: warehouse.into(), properties: HashMap::new() }
    }

    /// What kind of catalog `uri` names.
    pub fn kind(&self) -> Result<CatalogKind> {
        let uri = self.uri.trim();
        if uri.is_empty() {
            return Err(Error::config(
                "the iceberg `catalog` is empty; give a SQLite file path, a postgres:// URL or a REST http(s):// URL",
            ));
        }
        Ok(if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
            CatalogKind::Postgres
        } else if uri.starts_with("http://") || uri.starts_with("https://") {
            CatalogKind::Rest
        } else if uri.starts_with("sqlite:") || !uri.contains("://") {
            CatalogKind::Sqlite
        } else {
            return Err(Error::config(format!(
                "the iceberg `catalog` `{}` is not supported; give a SQLite file path, a postgres:// URL or a REST \
                 http(s):// URL",
                redact(uri)
            )));
        })
    }

    /// The warehouse as a URL (a local directory becomes `file:///abs/dir`, created when absent).
    fn warehouse_url(&self) -> Result<String> {
        let loc = alluvium_core::store::Location::parse(&self.warehouse).map_err(|e| e.context("iceberg `warehouse`"))?;
        Ok(loc.url.as_str().trim_end_matches('/').to_string())
    }

    /// Connects to the catalog.
    pub async fn open(&self) -> Result<Arc<dyn Catalog>> {
        let failed = |e: iceberg::Error| {
            let message = format!("cannot open the iceberg catalog {}: {}", self.describe(), redact(&e.to_string()));
            if alluvium_core::error::is_misconfigured_path(&format!("{e:?}")) {
                return Error::config(format!("{message}; check the `catalog` path and its permissions"));
            }
            Error::external(message).with_retryable(true)
        };
        let mut props = self.properties.clone();
        if !self.warehouse.trim().is_empty() {
            props.insert("warehouse".into(), self.warehouse_url()?);
        }
        match self.kind()? {
            kind @ (CatalogKind::Sqlite | CatalogKind::Postgres) => {
                if kind == CatalogKind::Postgres {
                    self.reachable().await?;
                }
                let uri = if kind == CatalogKind::Sqlite { sqlite_url(&self.uri)? } else { self.uri.clone() };
                props.insert("uri".into(), uri);
                let style = if kind == CatalogKind::Sqlite { SqlBindStyle::QMark } else { SqlBindStyle::DollarNumeric };
                props.insert("sql_bind_style".into(), style.to_string());
                let catalog = SqlCatalogBuilder::default()
                    .with_storage_factory(Arc::new(ObjectStorageFactory))
                    .load(&self.name, props)
                    .await
                    .map_err(failed)?;
                Ok(Arc::new(catalog))
            }
            CatalogKind::Rest => {
                props.insert("uri".into(), self.uri.clone());
                let catalog = RestCatalogBuilder::default()
                    .with_storage_factory(Arc::new(ObjectStorageFactory))
                    .load(&self.name, props)
                    .await
                    .map_err(failed)?;
                Ok(Arc::new(catalog))
            }
        }
    }
}

impl IcebergCatalogConfig {
    /// Fails fast, with the OS's reason, when the PostgreSQL server does not accept connections:
    /// sqlx's pool would otherwise retry quietly for 30 seconds and then say only "timed out".
    async fn reachable(&self) -> Result<()> {
        let Ok(url) = url::Url::parse(&self.uri) else { return Ok(()) };
        // A socket directory in the query (`?host=/run/postgresql`) is left to sqlx.
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else { return Ok(()) };
        let addr = (host.trim_start_matches('[').trim_end_matches(']'), url.port().unwrap_or(5432));
        let failed = |why: String| {
            Error::external(format!("cannot reach the iceberg catalog {}: {why}", self.describe())).with_retryable(true)
        };
        match tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed("no answer within 10 s".into())),
        }
    }
}

/// `sqlite://` URL for a path, in read-write-create mode; the parent folder is created.
fn sqlite_url(uri: &str) -> Result<String> {
    let path = uri.strip_prefix("sqlite://").or_else(|| uri.strip_prefix("sqlite:")).unwrap_or(uri);
    let path = path.split('?').next().unwrap_or(path);
    if path == ":memory:" {
        return Ok("sqlite::memory:".into());
    }
    let p = std::path::Path::new(path);
    if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::config(format!("cannot create the folder of the iceberg catalog `{}`: {e}", p.display())))?;
    }
    Ok(format!("sqlite://{path}?mode=rwc"))
}

/// A [`CatalogConnector`] for an [`IcebergCatalogConfig`]: connects on first use, caches the
/// connection, and tries again after a failure.
pub struct IcebergCatalog {
    config: IcebergCatalogConfig,
    connected: tokio::sync::Mutex<Option<Arc<dyn Catalog>>>,
}

impl IcebergCatalog {
    /// A lazy connection to `config`'s catalog.
    pub fn new(config: IcebergCatalogConfig) -> Self {
        Self { config, connected: tokio::sync::Mutex::new(None) }
    }
}

impl IcebergCatalogConfig {
    /// The catalog for messages: its kind and location, with credentials removed.
    pub fn describe(&self) -> String {
        let kind = match self.kind() {
            Ok(CatalogKind::Sqlite) => "SQLite catalog",
            Ok(CatalogKind::Postgres) => "PostgreSQL catalog",
            Ok(CatalogKind::Rest) => "REST catalog",
            Err(_) => "catalog",
        };
        format!("{kind} `{}`", redact(&self.uri))
    }
}

#[async_trait]
impl CatalogConnector for IcebergCatalog {
    async fn connect(&self) -> Result<Arc<dyn Catalog>> {
        let mut guard = self.connected.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        // Two processes creating the catalog's tables at once race in PostgreSQL's
        // `CREATE TABLE IF NOT EXISTS` (a unique violation on `pg_type`, reported as "duplicate
        // key" or as "type … already exists"): a short retry settles it.
        let mut attempt = 0;
        let c = loop {
            match self.config.open().await {
                Ok(c) => break c,
                Err(e) if attempt < 3 && ["duplicate key", "already exists"].iter().any(|m| e.to_string().contains(m)) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        *guard = Some(c.clone());
        Ok(c)
    }

    fn describe(&self) -> String {
        self.config.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_uri() {
        let k = |u: &str| IcebergCatalogConfig::new(u, "/tmp/w").kind();
        assert_eq!(k("/tmp/c.db").unwrap(), CatalogKind::Sqlite);
        assert_eq!(k("sqlite:///tmp/c.db").unwrap(), CatalogKind::Sqlite);
        assert_eq!(k("postgres://u:p@h/db").unwrap(), CatalogKind::Postgres);
        assert_eq!(k("https://cat.example").unwrap(), CatalogKind::Rest);
        assert!(k("mysql://h/db").unwrap_err().to_string().contains("not supported"));
        assert!(k("").is_err());
        let d = IcebergCatalogConfig::new("postgres://user:secret@h/db", "/w").describe();
        assert!(!d.contains("secret"), "{d}");
    }
}
