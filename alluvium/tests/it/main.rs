//! Tests of the `alluvium` binary, as a child process.

mod cli;
mod lake;
mod library;
mod tables;
#[cfg(feature = "video")]
mod video;
