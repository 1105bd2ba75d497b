//! Object IO against real stores: an S3 server, Azurite (Azure), local files, an HTTP server.

mod azure;
mod common;
mod files;
mod http;
mod inventory;
mod manifest;
mod s3;
mod source;
