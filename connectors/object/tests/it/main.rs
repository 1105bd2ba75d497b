//! Object IO against real stores: an S3 server (s3s-fs; moto's for versions and tags), Azurite
//! (Azure), local files (and what a local listing leaves out), an HTTP server.

mod azure;
mod common;
mod files;
mod hops;
mod hostile;
mod http;
mod inventory;
mod listing;
mod manifest;
mod s3;
mod source;
mod versions;
