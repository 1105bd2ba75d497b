//! Integration tests of the runtime: one test binary with modules (fast to build).

mod build_errors;
mod common;
mod panics;
mod runtime;
mod service;
