//! # alluvium-catalog
//!
//! Where lake tables live and how they are named:
//!
//! * Iceberg catalogs: SQL (SQLite as the embedded default, PostgreSQL), REST and Glue;
//! * Delta and Lance tables by URL (local or object storage);
//! * table naming (`namespace.table`), warehouse locations and credentials, resolved from config
//!   and the environment, never logged.
//!
//! Status: this crate is the home of the catalog connectors; they land with the lake sinks.

#![forbid(unsafe_code)]
