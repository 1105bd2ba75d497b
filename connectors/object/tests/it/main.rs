//! Object IO against real stores: an S3 server, local files, an HTTP server.

mod common;
mod files;
mod http;
mod s3;
